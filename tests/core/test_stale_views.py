"""A view recv_view() lent must never show another record's bytes (issue 17, item 4).

The rule under test: the record a view lies on stays the consumer's (the producer never writes
over it) for as long as anything made from the view lives: the view itself, a slice of it, a numpy
array over it. The next receive (or release()) revokes the view (any later use raises ValueError)
and gives the record back; when something made from it is still alive it cannot be revoked, so
that receive raises ViewInUse instead and the record stays, until the user drops it.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import shmbroker as broker
from shmbroker import Broadcast, Ring

from tests.helpers import Child

RECORD = 100  # bytes per record: a 4 KiB ring holds a few dozen


def _kinds():
    return [pytest.param(Ring, id="ring"), pytest.param(Broadcast, id="broadcast")]


def _open(kind, capacity=1 << 12):
    tx = kind.create(capacity=capacity)
    rx = kind.open(tx.name)
    return tx, rx


def _fill(tx) -> int:
    """Send distinct records until the ring has no room; how many went."""
    n = 0
    while True:
        try:
            tx.send(bytes([0x80 | (n & 0x7F)]) * RECORD, timeout=0)
        except broker.Full:
            return n
        n += 1


@pytest.mark.parametrize("kind", _kinds())
def test_a_view_kept_past_the_next_receive_raises(kind):
    tx, rx = _open(kind)
    try:
        tx.send(b"A" * RECORD)
        tx.send(b"B" * RECORD)
        view = rx.recv_view()
        assert bytes(view) == b"A" * RECORD
        assert rx.recv() == b"B" * RECORD  # the next receive gives the viewed record back...
        for _ in range(3):
            _fill(tx)  # ...and the producer wraps the ring over it, again and again
            while rx.stats()["backlog_bytes"]:
                rx.recv_many(timeout=0)
        with pytest.raises(ValueError):
            bytes(view)  # ...so the view is revoked: it never shows what came later
    finally:
        rx.close()
        tx.close()


@pytest.mark.parametrize("kind", _kinds())
@pytest.mark.parametrize("made", ["slice", "memoryview", "numpy"])
def test_what_is_made_from_a_view_keeps_its_record(kind, made):
    """A slice or an array of the view cannot be revoked: the record stays the consumer's, the
    producer finds the ring full rather than write over it, and the next receive says why."""
    tx, rx = _open(kind)
    try:
        tx.send(b"A" * RECORD)
        view = rx.recv_view()
        kept = {"slice": lambda: view[10:], "memoryview": lambda: memoryview(view),
                "numpy": lambda: np.frombuffer(view, np.uint8)}[made]()
        before = bytes(kept)
        sent = _fill(tx)
        assert sent > 0  # the rest of the ring was free
        with pytest.raises(broker.ViewInUse, match="still in use"):
            rx.recv(timeout=0)
        with pytest.raises(broker.ViewInUse):
            rx.release()
        assert isinstance(broker.ViewInUse("x"), broker.StateError)
        with pytest.raises(broker.Full):
            tx.send(b"C" * RECORD, timeout=0)  # the record under the view is not overwritten
        assert bytes(kept) == before
        del kept, view
        got = [rx.recv(timeout=0) for _ in range(sent)]  # dropped: the next receive gives it back
        assert got == [bytes([0x80 | (i & 0x7F)]) * RECORD for i in range(sent)]
        tx.send(b"C" * RECORD, timeout=0)  # room again: no deadlock
        assert rx.recv(timeout=0) == b"C" * RECORD
    finally:
        rx.close()
        tx.close()


@pytest.mark.parametrize("kind", _kinds())
def test_a_numpy_view_is_read_only_and_never_sees_new_bytes(kind):
    tx, rx = _open(kind)
    try:
        tx.send(np.arange(10, dtype=np.int64))
        a = rx.recv_array(np.int64, copy=False)
        assert not a.flags.writeable
        with pytest.raises(ValueError):
            a.flags.writeable = True  # over a read-only buffer: numpy refuses
        with pytest.raises(ValueError):
            a[0] = 7
        _fill(tx)
        with pytest.raises(broker.ViewInUse):
            rx.recv_view(timeout=0)
        assert a.tolist() == list(range(10))
        b = a.reshape(2, 5)  # a view of the view: it keeps the record too
        del a
        with pytest.raises(broker.ViewInUse):
            rx.recv(timeout=0)
        assert b.sum() == 45
        del b
        assert rx.recv(timeout=0)[:1] == b"\x80"
    finally:
        rx.close()
        tx.close()


@pytest.mark.parametrize("kind", _kinds())
def test_the_producer_in_another_process_waits_for_a_held_view(kind):
    """A producer process sends more than the ring holds while this consumer holds a view; it waits
    (the record is never overwritten), and once the view is dropped every record arrives in order."""
    count = 500
    tx = kind.create(capacity=1 << 12)
    rx = kind.open(tx.name)
    r, w = os.pipe()

    def produce():
        os.close(r)
        tx.send(b"first".ljust(RECORD, b"."))
        for i in range(count):
            tx.send(i.to_bytes(4, "little") * (RECORD // 4), timeout=60)
        os.write(w, b"done")

    try:
        with Child(produce) as child:
            os.close(w)
            view = rx.recv_view(timeout=30)
            arr = np.frombuffer(view, np.uint8)  # an export: the view cannot be revoked
            first = bytes(view)
            while rx.stats()["backlog_bytes"] < (1 << 12) - 2 * (RECORD + 32):
                os.sched_yield()  # wait until the child filled the ring and waits for room
            assert bytes(arr) == first == b"first".ljust(RECORD, b".")
            with pytest.raises(broker.ViewInUse):
                rx.recv(timeout=0)
            del arr, view
            got = [rx.recv(timeout=30) for _ in range(count)]
            assert got == [i.to_bytes(4, "little") * (RECORD // 4) for i in range(count)]
            assert os.read(r, 4) == b"done"
            assert child.join(30) == 0
    finally:
        os.close(r)
        rx.close()
        tx.close()


def test_close_with_a_view_still_in_use_keeps_its_record_until_it_is_dropped():
    """Closing a consumer whose view an array still holds must not let the producer write over it:
    the consumer leaves the ring when the array goes."""
    tx = Broadcast.create(capacity=1 << 12)
    rx = Broadcast.open(tx.name)
    try:
        tx.send(b"A" * RECORD)
        a = rx.recv_array(copy=False)
        rx.close()
        assert rx.closed
        with pytest.raises(broker.Closed):
            rx.recv(timeout=0)
        _fill(tx)
        assert bytes(a) == b"A" * RECORD
        with pytest.raises(broker.Full):
            tx.send(b"C" * RECORD, timeout=0)
        del a  # now the consumer leaves: the producer has nobody to wait for
        for _ in range(100):
            tx.send(b"C" * RECORD, timeout=0)
    finally:
        rx.close()
        tx.close()

