"""Topics on the wire: the function codes, a FETCH's batch, a publisher ring's records, the limits.

Shared by the broker's half (broker.py) and the clients' (client.py); the design is in
src/shmbroker/services/topics/__init__.py.
"""
from __future__ import annotations

import struct
from typing import Any

from shmbroker.core.native import lib

from shmbroker.protocol.codes import (TOPIC_CODES as TOPIC_CODES, TOPIC_DIRECT as TOPIC_DIRECT,  # re-exported
                                   TOPIC_FETCH as TOPIC_FETCH, TOPIC_LIST as TOPIC_LIST, TOPIC_PUBLISH as TOPIC_PUBLISH,
                                   TOPIC_PUBLISH_MANY as TOPIC_PUBLISH_MANY, TOPIC_PUBLISHER as TOPIC_PUBLISHER,
                                   TOPIC_SUBSCRIBER as TOPIC_SUBSCRIBER)

POLICIES = ("block", "drop", "disconnect")
MAX_TOPIC_NAME = 200
MAX_OPTIONS = 4096
MAX_CAPACITY = 1 << 20  # messages in one subscriber's queue
MAX_HISTORY = 1 << 16
MAX_META = lib.BRK_TOPIC_META  # a message's meta at most: a numpy array's dtype and shape
DEFAULT_QUEUE_CAPACITY = 1024
DEFAULT_BLOCK_TIMEOUT = 5.0

DEFAULT_RING_CAPACITY = 1 << 22  # a ring publisher's broadcast ring, bytes
MAX_RING_CAPACITY = 1 << 28
RING_CONSUMERS = 64  # direct subscribers (and the server's relay) one publisher ring takes
# records the server relays from one publisher ring per turn: a turn with three publishers flooding took
# 2.8 ms at 256, and a socket session's request waited for it (issue 13, item 8)
RELAY_BATCH = 64

BATCH_HEAD = struct.Struct("<Q")
# A publisher ring's record: sequence, meta length, payload bytes still to come in the records after
# this one, fragment number (0: a message's first record, which holds the meta); then meta, payload.
RECORD_HEAD = struct.Struct("<QIII")
assert RECORD_HEAD.size == lib.BRK_TOPIC_HEAD  # csrc/ring/brk_ring.h: C writes and reads these records too
MAX_MESSAGE = 1 << 34  # the most payload a message may announce
RING_GONE = b"-ring"  # a control message (sequence 0) to a direct subscriber: that publisher's ring ended
TOPIC_OF = b"-topic"  # a control message to a prefix subscriber: that publisher's topic name follows
RING_ADD = b"+ring"  # a control message to a direct subscriber: a new publisher's ring to read (its name)
MESSAGE_HEAD = struct.Struct("<IQII")
TABLE_ENTRY = struct.Struct("<II")  # a PUBLISH_MANY entry: payload length, meta length (metas follow the table)



def split_record(seq: int, meta: bytes, payload: bytes, max_record: int) -> list[bytes]:
    """A message as a publisher ring's records: one, or fragments of at most max_record bytes each."""
    head = RECORD_HEAD.size
    first = max_record - head - len(meta)
    if first < 0 or max_record <= head:  # (no room for a fragment's payload: it would never end)
        raise ValueError(f"the ring's records ({max_record} bytes) cannot hold a message's header")
    if len(payload) <= first:
        return [RECORD_HEAD.pack(seq, len(meta), 0, 0) + meta + payload]
    view = memoryview(payload)
    out = [RECORD_HEAD.pack(seq, len(meta), len(payload) - first, 0) + meta + view[:first]]
    at, room, k = first, max_record - head, 1
    while at < len(payload):
        chunk = view[at:at + room]
        at += len(chunk)
        out.append(RECORD_HEAD.pack(seq, 0, len(payload) - at, k) + chunk)
        k += 1
    return out


class Assembler:
    """A publisher ring's records back into messages. Records are untrusted: a bad one is a
    ValueError (the caller counts it); a message whose fragments stop short is dropped when the
    next message starts; a reader that joined in the middle of one skips its fragments."""

    # A message in fragments up to this size is put together in one destination of its whole size (with
    # start, below); a bigger one is kept as its parts, as they come: a bad publisher's announcement of
    # gigabytes makes nobody allocate them at once.
    ONE_PIECE = 256 << 20

    def __init__(self, max_message: int = MAX_MESSAGE, start: Any = None) -> None:
        self.max_message = max_message  # the most payload a message may have: more is a bad record
        self.seq = 0  # the last message's sequence number
        self.dropped = 0  # messages whose fragments did not all come
        self._parts: list[bytes] | None = None
        # start(first, total) -> bytes: a message's destination, its first part in, which C fills with the
        # rest (topic_recv_frags); then _frag is [seq, next fragment, bytes to come, destination, bytes in]
        self._start = start
        self.frag: list[Any] | None = None
        self._meta = b""
        self._pseq = 0
        self._more = 0
        self._next = 0

    @property
    def complete(self) -> bool:
        """No message is half-way: a record that starts and ends one may be taken as it is."""
        return self._parts is None and self.frag is None

    def finish(self) -> tuple[int, bytes, bytes]:
        """(sequence, meta, payload) of the message C put together in `frag` (all of it came)."""
        assert self.frag is not None and not self.frag[2]
        seq, payload = self.frag[0], self.frag[3]
        self.frag = None
        self.seq = seq
        return seq, self._meta, payload

    def _to_parts(self) -> None:
        """A message put together in one piece goes on as parts (a record C did not take: Python reads it)."""
        if self.frag is not None:
            seq, k, more, dest, at = self.frag
            self.frag = None
            self._parts, self._pseq, self._next, self._more = [dest[:at]], seq, k, more

    def feed(self, rec: bytes) -> tuple[int, bytes, bytes] | None:
        """(sequence, meta, payload) when rec ends a message, else None."""
        head = RECORD_HEAD.size
        if len(rec) < head:
            raise ValueError("a record shorter than its header")
        seq, mlen, more, k = RECORD_HEAD.unpack_from(rec)
        if self.frag is not None:
            self._to_parts()
        if k:  # a continuation
            if self._parts is None:
                return None  # of a message that began before this reader joined
            if seq != self._pseq or k != self._next or mlen or self._more - (len(rec) - head) != more:
                self._parts = None
                self.dropped += 1
                raise ValueError(f"fragment {k} of message {seq} does not follow")
            self._parts.append(rec[head:])
            self._more, self._next = more, k + 1
            if more:
                return None
            msg = (seq, self._meta, b"".join(self._parts))
            self._parts = None
            self.seq = seq
            return msg
        if self._parts is not None:  # the last one stopped short (its publisher timed out, or died)
            self._parts = None
            self.dropped += 1
        if (mlen > MAX_META or head + mlen > len(rec) or more > self.max_message - (len(rec) - head - mlen)
                or seq <= self.seq):
            raise ValueError(f"a bad record (sequence {seq}, meta {mlen} bytes, {more} to come)")
        meta, body = rec[head:head + mlen], rec[head + mlen:]
        if not more:
            self.seq = seq
            return seq, meta, body
        self._meta = meta
        if self._start is not None and len(body) + more <= self.ONE_PIECE:
            self.frag = [seq, 1, more, self._start(body, len(body) + more), len(body)]
            return None
        self._parts, self._pseq, self._more, self._next = [body], seq, more, 1
        return None
