"""Another process scribbles over a ring; the reader reports corruption and survives."""
from __future__ import annotations

import mmap
import random
import struct

import posix_ipc
import pytest

import shmbroker as broker
from shmbroker import Broadcast, Ring
from shmbroker.core.ring import ffi

from tests.helpers import Child

SEG_HDR = ffi.sizeof("struct brk_seg_hdr")


def scribble(name: str, writes: list[tuple[int, bytes]]) -> None:
    """In a separate process: map the segment by name and write bytes at offsets."""

    def run() -> None:
        shm = posix_ipc.SharedMemory(name)
        mm = mmap.mmap(shm.fd, 0)
        shm.close_fd()
        for off, data in writes:
            mm[off : off + len(data)] = data
        mm.close()

    assert Child(run).join(30) == 0


def ring_off(field: str) -> int:
    """Offset in the segment of a field of the first ring's header (the ring starts after the segment header)."""
    return SEG_HDR + ffi.offsetof("struct brk_ring_hdr", field)


def data_off(ring) -> int:
    return SEG_HDR + int(ring._h.hdr.data_offset)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v & (2**64 - 1))


@pytest.fixture
def pair():
    tx = Ring.create(capacity=1 << 12)
    rx = Ring.open(tx.name)
    yield tx, rx
    rx.close()
    tx.close()


def still_works() -> None:
    """The process that saw corruption carries on with other rings."""
    with Ring.create(capacity=1 << 10) as tx, Ring.open(tx.name) as rx:
        tx.send(b"alive")
        assert rx.recv(timeout=1) == b"alive"


@pytest.mark.parametrize(
    "what,value",
    [
        ("tail far beyond head", lambda ring: [(ring_off("tail"), u64(1 << 40))]),
        ("tail behind head", lambda ring: [(ring_off("tail"), u64(2**64 - 8))]),
        ("tail not aligned", lambda ring: [(ring_off("tail"), u64(33))]),
        ("length larger than the ring", lambda ring: [(data_off(ring), struct.pack("<I", 1 << 30))]),
        ("length past the end", lambda ring: [(data_off(ring), struct.pack("<I", 4000))]),
        ("length past what was committed", lambda ring: [(data_off(ring), struct.pack("<I", 1000))]),
        ("unknown record type", lambda ring: [(data_off(ring) + 4, struct.pack("<I", 0xDEADBEEF))]),
        ("pad that does not reach the end", lambda ring: [(data_off(ring) + 4, struct.pack("<I", 0x44415050))]),
        ("sequence number", lambda ring: [(data_off(ring) + 8, u64(77))]),
    ],
)
def test_reader_reports_corruption(pair, what, value):
    tx, rx = pair
    tx.send(b"first record")
    tx.send(b"second")
    scribble(tx.name, value(tx))
    with pytest.raises(broker.Corrupt):
        rx.recv(timeout=0)
    still_works()


def test_producer_reports_a_scribbled_head(pair):
    tx, rx = pair
    scribble(tx.name, [(ring_off("head"), u64(1 << 50))])
    with pytest.raises(broker.Corrupt):
        for _ in range(100):  # the producer looks at head once its cached room runs out
            tx.send(b"x" * 200, timeout=0)
    still_works()


def test_scribbled_configuration_does_not_affect_attached_sides(pair):
    tx, rx = pair
    scribble(tx.name, [(ring_off("capacity"), u64(1 << 30)), (ring_off("data_offset"), u64(12345))])
    tx.send(b"unaffected")  # both sides copied and checked the configuration at attach
    assert rx.recv(timeout=0) == b"unaffected"


@pytest.mark.parametrize(
    "field,value",
    [("magic", u64(0x1234)), ("abi_version", struct.pack("<I", 99)), ("total_size", u64(1 << 20))],
)
def test_opening_a_damaged_segment_is_a_clear_error(field, value):
    with Ring.create(capacity=1 << 10) as tx:
        scribble(tx.name, [(ffi.offsetof("struct brk_seg_hdr", field), value)])
        with pytest.raises(broker.SegmentError, match="not a broker segment"):
            Ring.open(tx.name)


def test_opening_a_tampered_ring_layout_is_refused():
    with Ring.create(capacity=1 << 10) as tx:
        scribble(tx.name, [(ring_off("capacity"), u64(1 << 11))])
        with pytest.raises(broker.SegmentError):
            Ring.open(tx.name)


def test_broadcast_consumer_with_a_scribbled_cursor_is_evicted_not_the_topic():
    with Broadcast.create(capacity=1 << 10) as tx, Broadcast.open(tx.name) as good, Broadcast.open(tx.name) as bad:
        slot = next(c["slot"] for c in tx.consumers() if c["head"] == 0 and c["slot"] == 1)
        slot_off = SEG_HDR + ffi.sizeof("struct brk_ring_hdr") + slot * ffi.sizeof("struct brk_slot")
        scribble(tx.name, [(slot_off + ffi.offsetof("struct brk_slot", "head"), u64(1 << 45))])
        for i in range(100):  # several ring-fulls: the producer has to look at the cursors
            tx.send(b"%03d" % i + b"-" * 40, timeout=1)
            assert good.recv(timeout=1) == b"%03d" % i + b"-" * 40
        with pytest.raises(broker.Evicted):
            bad.recv(timeout=0)


def test_lossy_scribbled_oldest_is_corruption():
    with Broadcast.create(capacity=1 << 10, lossy=True) as tx, Broadcast.open(tx.name) as rx:
        for i in range(100):
            tx.send(b"%03d" % i + b"." * 40)  # laps the consumer
        scribble(tx.name, [(ring_off("oldest"), u64(3))])
        with pytest.raises(broker.Corrupt):
            rx.recv(timeout=0)


@pytest.mark.stress  # random scribbles: 2 s
def test_random_scribbles_never_crash_or_hang_the_reader():
    """Thousands of rounds of random bytes over the control block and the data."""
    rnd = random.Random(7)
    outcomes = {"data": 0, "empty": 0, "corrupt": 0}
    for round_ in range(300):
        with Ring.create(capacity=1 << 12) as tx, Ring.open(tx.name) as rx:
            for i in range(rnd.randint(0, 12)):
                tx.send(bytes([i]) * rnd.randint(0, 200), timeout=0)  # at most 12 * 216 bytes
            size = SEG_HDR + int(tx._h.hdr.data_offset) + (1 << 12)
            writes = []
            for _ in range(rnd.randint(1, 6)):
                # bias towards the positions and the first records
                off = rnd.choice([ring_off("tail"), ring_off("head"), data_off(tx), rnd.randrange(SEG_HDR, size - 8)])
                off += rnd.randrange(0, 16)
                writes.append((off, rnd.randbytes(rnd.choice([1, 4, 8]))))
            scribble(tx.name, writes)
            for _ in range(20):
                try:
                    data = rx.recv(timeout=0)
                    assert len(data) <= rx.max_record
                    outcomes["data"] += 1
                except broker.Empty:
                    outcomes["empty"] += 1
                    break
                except broker.Corrupt:
                    outcomes["corrupt"] += 1
                    break
    assert outcomes["corrupt"] > 30 and outcomes["data"] > 30, outcomes
    still_works()
