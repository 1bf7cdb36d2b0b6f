"""Fuzz target: the ring reader on hostile memory (csrc/ring/brk_ring.c through src/shmbroker/core/ring.py).

A real ring in shared memory (broker.Ring, or a lossless or lossy broadcast.Broadcast), used
by its producer and consumer while the input scribbles over its segment as a peer with write
access would: the segment's header, the ring's control block (positions, pids, wait words),
the broadcast slots, the records. Every call must then return what a ring may give (a record
no longer than max_record, whose bytes are somewhere in the ring's data area) or raise a
BrokerError (Corrupt, Empty, Full, PeerGone, Evicted, SegmentError...); never crash, hang or
read outside the ring. Opening the scribbled segment again (a second consumer) is tried too.

Input: byte 0 the ring (kind, capacity), then operations, each an opcode byte and its operands.
Every segment is closed and unlinked at the end of the input, whatever happened.
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fuzzlib  # noqa: E402

with fuzzlib.instrumented(__name__ == "__main__", ["shmbroker.core.ring", "shmbroker.core.shm"]):
    from shmbroker import Broadcast, Ring
    from shmbroker._errors import BrokerError
    from shmbroker.core.ring import ffi

TARGET = "ring"
Bug = fuzzlib.Bug
SEG_HDR = ffi.sizeof("struct brk_seg_hdr")
RING_HDR = ffi.sizeof("struct brk_ring_hdr")
SLOT = ffi.sizeof("struct brk_slot")
CAPACITIES = (256, 512, 1024, 4096)
MAX_OPS = 48

# opcodes (the low 3 bits of an operation's byte)
SEND, RECV, SCRIBBLE, DRAIN, VIEW, MANY, REOPEN, SEND_MORE = range(8)


class _Fuzz:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def byte(self) -> int:
        if self.at >= len(self.data):
            return 0
        self.at += 1
        return self.data[self.at - 1]

    def take(self, n: int) -> bytes:
        out = self.data[self.at:self.at + n]
        self.at += len(out)
        return out

    def more(self) -> bool:
        return self.at < len(self.data)


class _Case:
    """One ring, its producer and consumer, and what the input does to them."""

    def __init__(self, kind: int, capacity: int) -> None:
        self.kind = kind
        if kind == 0:
            self.tx = Ring.create(capacity=capacity)
            self.rx = self._guard(lambda: Ring.open(self.tx.name, timeout=0))
        else:
            self.tx = Broadcast.create(capacity=capacity, lossy=kind == 2, max_consumers=4)
            self.rx = self._guard(lambda: Broadcast.open(self.tx.name, timeout=0))
        self.mem = self.tx._res.view  # the whole segment, writable: the hostile peer's view of it
        h = self.tx._h
        self.data_off = SEG_HDR + int(h.hdr.data_offset)
        self.capacity = int(h.capacity)
        self.max_record = int(h.max_record)
        self.extra: list = []

    def _guard(self, fn):  # noqa: ANN001, ANN202
        try:
            return fn()
        except BaseException:
            self.tx.close()
            raise

    def close(self) -> None:
        for side in self.extra + [self.rx, self.tx]:
            side.close()

    def area(self) -> bytes:
        return bytes(self.mem[self.data_off:self.data_off + self.capacity])

    def check(self, rec: bytes | memoryview, area: bytes) -> None:
        rec = bytes(rec)
        if len(rec) > self.max_record:
            raise Bug(f"a record of {len(rec)} bytes from a ring whose records hold {self.max_record}")
        if rec and rec not in area:
            raise Bug(f"a record of {len(rec)} bytes that is nowhere in the ring's data area")

    def scribble(self, f: _Fuzz) -> None:
        where, off = f.byte(), f.byte() | f.byte() << 8
        n = f.byte() % 16 + 1
        junk = f.take(n)
        region = where & 3
        if region == 0:  # the segment's header
            base, size = 0, SEG_HDR
        elif region == 1:  # the ring's control block (and, for a broadcast, its slots)
            base, size = SEG_HDR, self.data_off - SEG_HDR
        elif region == 2:  # the positions and the first records: where it hurts
            base, size = (SEG_HDR + 128, 256 + 64) if where & 4 else (self.data_off, 64)
        else:  # anywhere in the records
            base, size = self.data_off, self.capacity
        at = base + off % size
        junk = junk[:len(self.mem) - at]
        held = None
        if where & 8:  # while the consumer holds a record it peeked (recv_view): released after
            try:
                held = self.rx.recv_view(timeout=0)
            except BrokerError:
                pass
        self.mem[at:at + len(junk)] = junk
        if held is not None:
            held.release()
            try:
                self.rx.release()
            except BrokerError:
                pass

    def recv(self, how: int, area: bytes) -> bool:
        """One read; False once the ring has nothing (more) to give."""
        rx = self.rx
        try:
            if how == 0:
                self.check(rx.recv(timeout=0), area)
            elif how == 1:
                v = rx.recv_view(timeout=0)
                try:
                    self.check(v, area)
                finally:
                    v.release()
                    rx.release()
            elif how == 2:
                for rec in rx.recv_many(8, timeout=0):
                    self.check(rec, area)
            elif how == 3:
                buf = bytearray(self.max_record)
                n = rx.recv_into(buf, timeout=0)
                self.check(buf[:n], area)
            else:
                a = rx.recv_array(np.uint8, timeout=0)
                self.check(a.tobytes(), area)
            return True
        except BrokerError:
            return False

    def send(self, n: int, fill: int) -> None:
        try:
            self.tx.send(bytes([fill]) * n, timeout=0)
        except BrokerError:
            pass

    def reopen(self) -> None:
        """Another consumer attaches to the scribbled segment: a clear error, or a side that reads sanely."""
        try:
            side = Ring.open(self.tx.name, timeout=0) if self.kind == 0 else Broadcast.open(self.tx.name, timeout=0)
        except BrokerError:
            return
        self.extra.append(side)
        area = self.area()
        for _ in range(4):
            try:
                self.check(side.recv(timeout=0), area)
            except BrokerError:
                break


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    f = _Fuzz(data)
    first = f.byte()
    case = _Case(first % 3, CAPACITIES[first >> 2 & 3])
    try:
        for _ in range(MAX_OPS):
            if not f.more():
                break
            op = f.byte()
            code = op & 7
            if code == SEND:
                case.send(f.byte() % (case.max_record + 1), op >> 3)
            elif code == SEND_MORE:
                for i in range(op >> 3 & 7):
                    case.send(f.byte() % 96, i)
            elif code == RECV:
                case.recv(op >> 3 & 7, case.area())
            elif code == SCRIBBLE:
                case.scribble(f)
            elif code in (DRAIN, VIEW, MANY):
                how = {DRAIN: 0, VIEW: 1, MANY: 2}[code] if not op & 8 else (op >> 4) % 5
                area = case.area()
                for _ in range(case.capacity // 16 + 2):  # more than the ring can hold: it must end
                    if not case.recv(how, area):
                        break
                else:
                    raise Bug(f"more records than a ring of {case.capacity} bytes can hold")
            elif code == REOPEN:
                case.reopen()
    finally:
        case.close()


def seeds() -> list[bytes]:
    out = []
    for kind in range(3):
        for cap in (0, 3):
            first = kind | cap << 2
            # fill, read some, wrap around, scribble the tail / head / a length / a type, read it all
            ops = bytes([SEND | 1 << 3, 40, SEND_MORE | 7 << 3, 10, 20, 30, 40, 50, 60, 70, RECV, RECV | 1 << 3,
                         SEND_MORE | 7 << 3, 90, 80, 70, 60, 50, 40, 30, DRAIN])
            tail = SCRIBBLE, 2 | 4, 128, 0, 7, 0x10, 0, 0, 0, 0, 0, 0, 0
            out.append(bytes([first]) + ops + bytes([SEND, 33, SEND, 60]) + bytes(tail) + bytes([DRAIN]))
            length = SCRIBBLE, 2, 0, 0, 3, 0xFF, 0x0F, 0, 0
            out.append(bytes([first, SEND, 10, SEND, 20, SEND, 30]) + bytes(length) + bytes([MANY, VIEW, REOPEN]))
            rtype = SCRIBBLE, 3, 4, 0, 3, 0x50, 0x50, 0x41, 0x44
            out.append(bytes([first, SEND, 100, SEND, 5]) + bytes(rtype) + bytes([DRAIN | 8 | 3 << 4, REOPEN]))
            header = SCRIBBLE, 0, 8, 0, 3, 9, 9, 9, 9
            out.append(bytes([first, SEND, 7]) + bytes(header) + bytes([REOPEN, DRAIN]))
    return out


if __name__ == "__main__":
    fuzzlib.run(TestOneInput)
