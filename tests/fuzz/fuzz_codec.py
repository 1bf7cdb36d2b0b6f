"""Fuzz target: the C codec (csrc/py/codec.c and csrc/py/server.c) on hostile bytes, against the Python reference.

* feed (what FrameReader and the server's socket path call first): C takes the common REQUEST
  and COMPLETE frames and stops at anything else. What it took must be exactly what the Python
  reference decodes from the same bytes, without an error; where it stopped must be a frame the
  reference rejects, does not have whole, or is of another type.
* take_requests (the server's shared-memory path): a client's records in a real ring, taken by C
  as broker.Message objects booked in the protocol's `outstanding`. Each record is taken whole
  (its requests the reference decodes, ids fresh, codes not the server's own, asynchronous ones
  within the message slots free) or left for Python; a record that C leaves must be one that
  breaks one of those rules.
* encode_request / encode_complete: whatever C encodes is what the Python encoder makes.

The extension is not instrumented for coverage; a segfault or an abort in it still ends the
run with the input kept. Input: byte 0 the mode, byte 1 a parameter, then the bytes.
"""
from __future__ import annotations

import atexit
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fuzzlib  # noqa: E402

with fuzzlib.instrumented(__name__ == "__main__", ["shmbroker.protocol.frames", "shmbroker.core.ring"]):
    from shmbroker.protocol import frames as P
    from shmbroker import Ring
    from shmbroker._errors import BrokerError, Empty
    from shmbroker.core.ring import request_taker
    from shmbroker.framework.native import ConnBase
    from shmbroker.framework.session import CLOSE_SUBSESSION, Message

TARGET = "codec"
Bug = fuzzlib.Bug
_feed = P.c_feed
TAKE_COPY = 4096  # BRK_TAKE_COPY: a bigger record is Python's
MAX_RECORDS = 64


def _reference(data: bytes | memoryview, max_frame: int) -> tuple[list, str | None, int]:
    """The Python reference over data: (events, error or None, bytes left over)."""
    reader = P.FrameReader(max_frame, fast=False)
    try:
        events = reader.feed(data)
    except BrokerError as e:
        return [], str(e), 0
    return events, None, reader.pending


def _check_feed(param: int, mode: int, stream: bytes) -> None:
    max_frame = (P.MIN_MAX_FRAME, 1 << 16, P.DEFAULT_MAX_FRAME)[mode >> 2 & 3 if mode >> 2 & 3 < 3 else 2]
    buf: bytes | bytearray | memoryview = stream
    if mode & 16:
        buf = bytearray(stream)
    elif mode & 32:
        buf = memoryview(b"\xff" + stream)[1:]
    start = param if param < 200 else -(param - 199)  # C treats an offset out of range as the end
    events, at = _feed(buf, start, max_frame)
    begin = start if 0 <= start <= len(stream) else len(stream)
    if not begin <= at <= len(stream):
        raise Bug(f"feed from {start} stopped at {at} of {len(stream)}")
    if begin == len(stream) and (events or at != begin):
        raise Bug("feed from past the end decoded something")
    ref, err, left = _reference(stream[begin:at], max_frame)
    if err is not None or left or ref != events:
        raise Bug(f"C took {events!r} from [{begin}:{at}]; the reference says {ref!r}, error {err!r}, {left} left")
    for ev in events:
        if type(ev) not in (P.Request, P.Complete):
            raise Bug(f"C made a {type(ev).__name__}")
        _check_encoders(ev)
    rest = stream[at:]
    if len(rest) >= P.HEADER_SIZE:
        # C stopped here: the reference must not decode a whole REQUEST / COMPLETE here either
        magic, version, ftype, flags, length, reserved, rid = P.HEADER.unpack_from(rest)
        if ftype in (P.FrameType.REQUEST, P.FrameType.COMPLETE) and len(rest) >= P.HEADER_SIZE + length:
            first, err, _ = _reference(rest[:P.HEADER_SIZE + length], max_frame)
            if err is None:
                raise Bug(f"C stopped at a valid frame the reference decodes: {first!r}")


def _check_encoders(ev: P.Request | P.Complete) -> None:
    if type(ev) is P.Request:
        c = P.c_encode_request(ev.request_id, ev.code, ev.handle, ev.asynchronous, ev.args)
        py = P.request_frame_py(ev.request_id, ev.code, ev.handle, ev.asynchronous, ev.args)
    else:
        err = None if ev.error is None else P._text(ev.error)
        c = P.c_encode_complete(ev.request_id, ev.status, ev.writes, err)
        py = P.complete_frame_py(ev.request_id, ev.status, ev.writes, ev.error)
    if c is NotImplemented or c != py:
        raise Bug(f"{ev!r}: C encodes {c!r}, Python {py!r}")
    again = P.FrameReader(P.DEFAULT_MAX_FRAME, fast=False).feed(c)
    if again != [ev]:
        raise Bug(f"{ev!r} encoded and decoded is {again!r}")


def _hostile_args(b: bytes) -> list[P.Arg]:
    """Four arguments as a careless (or hostile) caller might make them."""
    out = []
    for i in range(4):
        chunk = b[i * 12:(i + 1) * 12].ljust(12, b"\0")
        kind, n, value = chunk[0] % 8, chunk[1] % 40, struct.unpack_from("<q", chunk, 4)[0]
        if chunk[2] & 1:
            value = value * (1 << 40)  # past 64 bits
        data = bytes(chunk[3:4]) * n
        try:
            k = P.ArgKind(kind)
        except ValueError:
            k = kind  # type: ignore[assignment]
        out.append(P.Arg(k, value, data))
    return out


def _check_encode_hostile(param: int, stream: bytes) -> None:
    args = _hostile_args(stream)
    rid = int.from_bytes(stream[48:57].ljust(9, b"\0"), "little") >> (param % 16)
    code = struct.unpack_from("<q", stream[57:65].ljust(8, b"\0"))[0] >> (param % 40)
    handle = int.from_bytes(stream[65:70].ljust(5, b"\0"), "little") >> (param % 9)
    c = P.c_encode_request(rid, code, handle, bool(param & 1), args)
    if c is NotImplemented:
        return
    py = P.request_frame_py(rid, code, handle, bool(param & 1), args)  # what C encodes, Python must too
    if c != py:
        raise Bug(f"C encodes {c!r}, Python {py!r}")
    writes = [(a.value & 7 if a.value >= 0 else 9, a.data) for a in args[: param % 5]]
    err = stream[70:] if param & 2 else None
    c = P.c_encode_complete(rid, code, writes, err)
    if c is not NotImplemented:
        try:
            text = None if err is None else err.decode()
        except UnicodeDecodeError:
            return
        py = P.complete_frame_py(rid, code, [P.Write(i, d) for i, d in writes], text)
        if c != py and P._text(text or "") == (err or b""):
            raise Bug(f"C encodes {c!r}, Python {py!r}")


class _Pair:
    """One ring, made once: the client's side (producer) and the server's (consumer, what C takes from).
    Its name is unlinked at once: nothing is left in /dev/shm whatever happens to this process."""

    def __init__(self) -> None:
        self.tx = Ring.create(capacity=1 << 17)
        try:
            self.rx = Ring.open(self.tx.name)
        except BaseException:
            self.tx.close()
            raise
        self.tx.unlink()
        self.take = request_taker(self.rx)
        atexit.register(self.close)

    def close(self) -> None:
        self.rx.close()
        self.tx.close()


_pair: _Pair | None = None


def _replies(ev: P.Request, max_frame: int) -> int:
    """The most bytes a request's completion can take (the server's bound on what it owes a client)."""
    return P.HEADER_SIZE + P._COMPLETE.size + sum(min(a.value, max_frame) for a in ev.args
                                                  if a.kind in (P.ArgKind.WRITE, P.ArgKind.READWRITE))


def _record_ok(rec: bytes, max_frame: int, taken: set[int], budget: int, reply_budget: int | None
               ) -> tuple[bool, int, int]:
    """(may C take this record, how many asynchronous requests it holds, their replies' most bytes) by
    the reference's rules."""
    if len(rec) > TAKE_COPY:
        return False, 0, 0
    events, err, left = _reference(rec, max_frame)
    if err is not None or left:
        return False, 0, 0
    nasync = replies = 0
    for ev in events:
        if type(ev) is not P.Request or ev.request_id == 0 or ev.code < 0 or ev.code == CLOSE_SUBSESSION:
            return False, 0, 0
        if ev.request_id in taken:
            return False, 0, 0
        taken = taken | {ev.request_id}
        nasync += ev.asynchronous
        replies += _replies(ev, max_frame)
    return nasync <= budget and (reply_budget is None or replies <= reply_budget), nasync, replies


def _check_take(param: int, mode: int, cuts: bytes, stream: bytes) -> None:
    global _pair
    if _pair is None:
        _pair = _Pair()
    max_frame = P.MIN_MAX_FRAME if mode & 16 else P.DEFAULT_MAX_FRAME
    records = [r for r in fuzzlib.chunks(stream, cuts)][:MAX_RECORDS]
    for rec in records:
        _pair.tx.send(rec, timeout=0)
    budget, max_messages = param % 8, (param >> 3) % 8 + 1
    reply_budget = (0, 40, 100, 300, 1000, 5000, 1 << 20, 1 << 62)[mode >> 5]
    conn = ConnBase()  # the books take_requests keeps: the protocol's outstanding, the messages
    conn.proto = P.ServerConnection(max_frame)
    outstanding: dict[int, object] = conn.proto.outstanding
    outstanding[7] = None  # one id already outstanding: a record reusing it is Python's
    messages: dict[int, object] = {}
    conn.messages = messages
    try:
        r = _pair.take(conn, max_frame, CLOSE_SUBSESSION, max_messages, budget, reply_budget)
        if len(r) != 4:
            raise Bug(f"take_requests on a sound ring: outcome {r!r}")
        msgs, nbytes, left, nasync = r
        # the records taken: the first k, whole (those still in the ring are the others)
        rest = _drain()
        k = len(records) - len(rest)
        if rest != records[k:] or sum(map(len, records[:k])) != nbytes:
            raise Bug(f"{nbytes} bytes taken, {len(rest)} records left of {[len(x) for x in records]}")
        expect: list[P.Request] = []
        seen: set[int] = {7}
        used = 0
        left_budget = reply_budget
        for rec in records[:k]:
            ok, a, owe = _record_ok(rec, max_frame, seen, budget - used, left_budget)
            if not ok:
                raise Bug(f"C took record {rec!r}, which the reference does not allow")
            events = _reference(rec, max_frame)[0]
            expect += events
            seen |= {ev.request_id for ev in events}
            used += a
            left_budget = None if left_budget is None else left_budget - owe
        got = [P.Request(m.request_id, m.code, tuple(m._args), m.handle, m.asynchronous) for m in msgs]
        if got != expect or nasync != used:
            raise Bug(f"C took {got!r} ({nasync} asynchronous), the reference decodes {expect!r} ({used})")
        if any(type(m) is not Message or m._conn is not conn or m._done is not False or m._writes is not None
               for m in msgs):
            raise Bug("a Message made by take_requests is not as Python makes them")
        for m in msgs:
            if outstanding.get(m.request_id) is not m or messages.get(m.request_id) is not m:
                raise Bug(f"request {m.request_id} not booked")
        if len(outstanding) != 1 + len(msgs) or len(messages) != len(msgs):
            raise Bug("take_requests booked more than it took")
        if k < len(records):
            full = len(msgs) >= max_messages
            if not left and not full:
                raise Bug(f"C stopped before record {k} and says nothing is left")
            if left and not full and _record_ok(records[k], max_frame, seen, budget - used, left_budget)[0]:
                raise Bug(f"C left record {records[k]!r}, which it may take")
        elif left:
            raise Bug("everything was taken and C says something is left")
    finally:
        _drain()  # an empty ring for the next input


def _drain() -> list[bytes]:
    assert _pair is not None
    out = []
    while True:
        try:
            out.append(_pair.rx.recv(timeout=0))
        except Empty:
            return out


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    mode, param, rest = data[0], data[1], data[2:]
    what = mode & 3
    if what in (0, 1):
        _check_feed(param, mode, rest)
    elif what == 2:
        ncuts = rest[0] % 32 if rest else 0
        _check_take(param, mode, rest[1:1 + ncuts], rest[1 + ncuts:])
    else:
        _check_encode_hostile(param, rest)


def seeds() -> list[bytes]:
    args = (P.Arg(P.ArgKind.INT, -5), P.Arg(P.ArgKind.READ, 0, b"hello"), P.Arg(P.ArgKind.WRITE, 64),
            P.Arg(P.ArgKind.READWRITE, 32, b"rw"))
    r1 = P.request_frame(1, 3, 0, False, args)
    r2 = P.request_frame(2, 4, 17, True, (P.Arg(P.ArgKind.HANDLE, 3),) + (P.NO_ARG,) * 3)
    r3 = P.request_frame(3, 0, 0, False, (P.NO_ARG,) * 4)
    c1 = P.complete_frame(1, 0, [P.Write(2, b"out"), P.Write(3, b"x" * 40)], None)
    c2 = P.complete_frame(2, -6, [], "an error, \u00e9")
    close = P.encode(P.Close("bye"))
    out = [bytes([0, 0]) + r1 + c1 + r2 + c2 + close, bytes([0x11, 5]) + r3 + r1[:30],
           bytes([0x20, 0]) + c2 + c1 + P.encode(P.Cancel(3)) + r3, bytes([8, 0]) + r2 * 3]
    # take_requests: records of one to three frames (cuts at the frames' ends)
    lens = [len(r1), len(r2) + len(r3), len(r1)]
    out.append(bytes([2 | 7 << 5, 0x3F, len(lens)]) + bytes(lens) + r1 + r2 + r3 + P.request_frame(4, 1, 0, True, args))
    out.append(bytes([2 | 3 << 5, 0x07, 2, len(r3), len(close)]) + r3 + close)
    out.append(bytes([2 | 4 << 5, 0x3F, 2, len(r1), len(r1)]) + r1 + r3 + r1)
    out.append(bytes([0x12 | 6 << 5, 0x1F, 0]) + r1)
    out.append(bytes([3, 3]) + bytes(range(90)))
    return out


if __name__ == "__main__":
    fuzzlib.run(TestOneInput)
