"""Linked services on the wire: their function codes, the packed calls and writes, the limits.

Shared by the broker's half (broker.py) and the clients' (client.py); the whole design is in
src/shmbroker/services/links/__init__.py.
"""
from __future__ import annotations

import struct
from typing import Any

from shmbroker.protocol.codes import (LINK_CALL, LINK_CODES, LINK_OFFER, LINK_OPEN, LINK_PAIR,  # noqa: F401
                                   LINK_REPLY, LINK_TAKE, LINK_UNPAIR)


MAX_SERVICE_NAME = 200
MAX_ERROR = 4096
TAKE_HEAD = struct.Struct("<QiI")  # call id, the caller's code, what it is (TAKE_CALL or TAKE_PAIR)
# a call to serve; a private pair of rings to attach (the code is 0, the name follows); a pair that ended
# at the broker (its caller closed the link or went: the name follows), to let go
TAKE_CALL, TAKE_PAIR, TAKE_UNPAIR = 0, 1, 2
MAX_PAIRS = 64  # private pairs a provider serves at most (one futex_waitv: src/shmbroker/core/ring.py wait_any)
PAIR_CAPACITY = 256 << 10  # bytes in each ring of a pair; a call or reply bigger than a record goes relayed
ARG_HEAD = struct.Struct("<BqI")  # kind, value (an int's, or a writable's max length), bytes that follow
WRITE_HEAD = struct.Struct("<BI")  # argument index, bytes that follow

# packed argument kinds
A_NONE, A_INT, A_READ, A_WRITE, A_READWRITE = range(5)


class LinkError(ValueError):
    """A request the link service refuses (ARGUMENT)."""


def pack_call(args: tuple[Any, ...], buffer_type: type[Any]) -> tuple[bytes, int]:
    """The caller's arguments as one blob, and the room its writes may need."""
    if len(args) > 4:
        raise TypeError("at most four arguments")
    parts, room = [], 0
    for a in args:
        if a is None:
            parts.append(ARG_HEAD.pack(A_NONE, 0, 0))
        elif type(a) is int:
            parts.append(ARG_HEAD.pack(A_INT, a, 0))
        elif isinstance(a, (bytes, memoryview)):
            data = bytes(a)
            parts += [ARG_HEAD.pack(A_READ, 0, len(data)), data]
        elif isinstance(a, buffer_type):
            data = a.value
            parts += [ARG_HEAD.pack(A_READWRITE if data else A_WRITE, a.max_length, len(data)), data]
            room += WRITE_HEAD.size + a.max_length
        elif isinstance(a, bytearray):
            parts += [ARG_HEAD.pack(A_READWRITE, 1 << 30, len(a)), bytes(a)]
            room += WRITE_HEAD.size + (1 << 20)
        else:
            raise TypeError(f"an argument is an int, bytes, a Buffer, a bytearray or None, not {type(a).__name__}")
    return b"".join(parts), room


def unpack_call(blob: bytes) -> list[tuple[int, int, bytes]]:
    """(kind, value, data) of each argument; ValueError if the blob is not a packed call."""
    out: list[tuple[int, int, bytes]] = []
    at = 0
    while at < len(blob):
        if len(out) == 4 or at + ARG_HEAD.size > len(blob):
            raise ValueError("a packed call with more than four arguments, or one cut short")
        kind, value, n = ARG_HEAD.unpack_from(blob, at)
        at += ARG_HEAD.size
        if kind > A_READWRITE or at + n > len(blob) or (kind in (A_NONE, A_INT) and n):
            raise ValueError(f"a packed argument of kind {kind} and {n} bytes")
        out.append((kind, value, blob[at:at + n]))
        at += n
    return out


def pack_writes(writes: dict[int, bytes]) -> bytes:
    return b"".join(WRITE_HEAD.pack(i, len(d)) + d for i, d in sorted(writes.items()))


def unpack_writes(blob: bytes) -> dict[int, bytes]:
    out, at = {}, 0
    while at < len(blob):
        if at + WRITE_HEAD.size > len(blob):
            raise ValueError("packed writes cut short")
        i, n = WRITE_HEAD.unpack_from(blob, at)
        at += WRITE_HEAD.size
        if i > 3 or at + n > len(blob) or i in out:
            raise ValueError("a packed write out of place")
        out[i] = blob[at:at + n]
        at += n
    return out

