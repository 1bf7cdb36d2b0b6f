"""The broadcast ring: one producer, many consumers, lossless or lossy."""
from __future__ import annotations

import os
import time

import pytest

import shmbroker as broker
from shmbroker import Broadcast

from tests.helpers import Child


def test_every_consumer_sees_every_record():
    with Broadcast.create(capacity=1 << 12) as tx:
        consumers = [Broadcast.open(tx.name) for _ in range(3)]
        try:
            for i in range(500):
                tx.send(b"%d" % i)
                for c in consumers:
                    assert c.recv(timeout=0) == b"%d" % i
            assert len(tx.consumers()) == 3
        finally:
            for c in consumers:
                c.close()
        assert tx.consumers() == []


def test_lossless_producer_waits_for_the_slowest_consumer():
    with Broadcast.create(capacity=1 << 10) as tx, Broadcast.open(tx.name) as fast, Broadcast.open(tx.name) as slow:
        sent = 0
        with pytest.raises(broker.Full):
            while True:
                tx.send(b"r%05d" % sent, timeout=0)
                sent += 1
                fast.recv(timeout=0)  # the fast one keeps up
        for i in range(sent):
            assert slow.recv(timeout=0) == b"r%05d" % i
        tx.send(b"after", timeout=0)
        assert fast.recv(timeout=0) == b"after" and slow.recv(timeout=0) == b"after"


def test_a_late_joiner_starts_with_the_next_record():
    with Broadcast.create(capacity=1 << 12) as tx:
        tx.send(b"before")
        with Broadcast.open(tx.name) as late:
            tx.send(b"after")
            assert late.recv(timeout=0) == b"after"


def test_without_consumers_the_producer_never_blocks():
    with Broadcast.create(capacity=1 << 10) as tx:
        for i in range(10000):
            tx.send(b"nobody listens %d" % i, timeout=0)


def test_lossy_counts_every_lost_record_exactly():
    with Broadcast.create(capacity=1 << 10, lossy=True) as tx, Broadcast.open(tx.name) as rx:
        assert tx.lossy
        got = []
        for i in range(5000):
            tx.send(i.to_bytes(4, "little") * (1 + i % 5), timeout=0)  # never blocks
            if i % 300 == 299:  # read a few now and then, fall behind in between
                for _ in range(3):
                    got.append(int.from_bytes(rx.recv(timeout=0)[:4], "little"))
        tx.close()
        for data in rx:
            got.append(int.from_bytes(data[:4], "little"))
        assert got == sorted(got) and len(set(got)) == len(got)
        assert len(got) + rx.lost == 5000
        assert rx.stats()["laps"] >= 1


def test_lossy_reports_loss_before_a_record():
    with Broadcast.create(capacity=1 << 10, lossy=True) as tx, Broadcast.open(tx.name) as rx:
        for i in range(200):
            tx.send(b"%04d" % i + b"." * 20)
        first = rx.recv(timeout=0)
        assert rx.last_lost == int(first[:4]) and rx.lost == rx.last_lost > 0
        second = rx.recv(timeout=0)
        assert int(second[:4]) == int(first[:4]) + 1 and rx.last_lost == 0


def test_lossy_view_overwritten_while_held_is_reported():
    with Broadcast.create(capacity=1 << 10, lossy=True) as tx, Broadcast.open(tx.name) as rx:
        tx.send(b"A" * 100)
        view = rx.recv_view()
        assert bytes(view) == b"A" * 100
        for _ in range(50):
            tx.send(b"B" * 100)  # laps the held record
        assert rx.release() is False
        rest = list(iter(lambda: rx.recv(timeout=0) if rx.stats()["backlog_bytes"] else None, None))
        assert rx.lost + len(rest) == 51  # the torn "A" record counts as lost, once


def test_evicted_consumer_learns_why():
    with Broadcast.create(capacity=1 << 10) as tx, Broadcast.open(tx.name) as rx:
        slot = tx.consumers()[0]["slot"]
        assert tx.evict(slot)
        with pytest.raises(broker.Evicted) as e:
            rx.recv(timeout=0)
        assert isinstance(e.value, ConnectionError)
        with Broadcast.open(tx.name) as again:  # the slot is free for someone else
            tx.send(b"x")
            assert again.recv(timeout=0) == b"x"


def test_all_slots_taken():
    with Broadcast.create(capacity=1 << 10, max_consumers=2) as tx:
        a, b = Broadcast.open(tx.name), Broadcast.open(tx.name)
        try:
            with pytest.raises(broker.StateError, match="all 2 consumer slots"):
                Broadcast.open(tx.name)
        finally:
            a.close()
            b.close()


def test_a_dead_consumer_does_not_block_the_producer_forever():
    with Broadcast.create(capacity=1 << 10) as tx:
        name = tx.name

        def joiner() -> None:
            Broadcast.open(name)
            time.sleep(60)

        with Child(joiner) as child:
            deadline = time.monotonic() + 10
            while not tx.consumers():
                assert time.monotonic() < deadline
                time.sleep(0.01)
            child.kill()  # SIGKILL: its slot stays ACTIVE in shared memory
        for i in range(200):  # more than a ring-full: needs the dead one evicted
            tx.send(b"%d" % i + b"-" * 50, timeout=5)
        assert tx.consumers() == [] or all(c["state"] != 2 for c in tx.consumers())


def test_ring_kinds_do_not_mix():
    with Broadcast.create(capacity=1 << 10) as tx:
        with pytest.raises(broker.SegmentError, match="broadcast"):
            broker.Ring.open(tx.name)
    with broker.Ring.create(capacity=1 << 10) as tx:
        with pytest.raises(broker.SegmentError, match="single-consumer"):
            Broadcast.open(tx.name)


def test_consumer_in_another_process_reads_everything():
    with Broadcast.create(capacity=1 << 14) as tx:
        name = tx.name
        ready_r, ready_w = os.pipe()

        def consume() -> None:
            with Broadcast.open(name) as rx:
                os.write(ready_w, b"1")
                for i in range(20000):
                    assert rx.recv(timeout=10) == b"%d" % i
                with pytest.raises(broker.Closed):
                    rx.recv(timeout=10)

        with Child(consume) as child:
            assert os.read(ready_r, 1) == b"1"
            for i in range(20000):
                tx.send(b"%d" % i, timeout=10)
            tx.close()
            assert child.join(30) == 0
        os.close(ready_r)
        os.close(ready_w)


def test_lossy_abort_never_lowers_the_overwrite_mark():
    """A claim announces the bytes it may overwrite; aborting it must not let a
    consumer holding an overwritten record believe it intact."""
    with Broadcast.create(capacity=1 << 10, lossy=True) as tx, Broadcast.open(tx.name) as rx:
        tx.send(b"A" * 100)  # [0, 120)
        view = rx.recv_view()
        for _ in range(7):
            tx.send(b"B" * 100)  # tail = 960
        claim = tx.claim(400)  # pads to 1024: writes over [0, 416) of the ring, where A is
        claim[:] = b"X" * 400
        tx.abort()
        tx.send(b"C" * 8)  # a small record at 960 must not lower the mark
        assert bytes(view[:4]) == b"XXXX"  # A really was overwritten
        del view
        assert rx.release() is False


def test_lossy_joiner_lapped_before_its_first_record_counts_exactly():
    with Broadcast.create(capacity=1 << 10, lossy=True) as tx:
        for i in range(1000):
            tx.send(i.to_bytes(4, "little") * 5)
        with Broadcast.open(tx.name) as rx:  # joins at record 1000
            for i in range(1000, 1100):  # laps it several times
                tx.send(i.to_bytes(4, "little") * 5)
            first = int.from_bytes(rx.recv(timeout=0)[:4], "little")
            assert rx.last_lost == first - 1000 > 0
            rest = 0
            while True:
                try:
                    rx.recv(timeout=0)
                    rest += 1
                except broker.Empty:
                    break
            assert 1 + rest + rx.lost == 100


def test_lossy_batch_longer_than_a_lap_is_not_corruption():
    with Broadcast.create(capacity=1 << 10, lossy=True) as tx, Broadcast.open(tx.name) as rx:
        msgs = [i.to_bytes(4, "little") * 10 for i in range(100)]  # ~5 ring-fulls in one call
        tx.send_many(msgs)
        got = []
        while True:
            try:
                got.append(int.from_bytes(rx.recv(timeout=0)[:4], "little"))
            except broker.Empty:
                break
        assert got == list(range(100 - len(got), 100))
        assert len(got) + rx.lost == 100


def test_a_joiner_that_died_before_writing_its_pid_is_evicted():
    from tests.core.test_corruption import SEG_HDR, scribble
    from shmbroker.core.ring import ffi

    with Broadcast.create(capacity=1 << 10) as tx:
        slot_off = SEG_HDR + ffi.sizeof("struct brk_ring_hdr")  # slot 0, state word first
        scribble(tx.name, [(slot_off, ((1 << 8) | 1).to_bytes(4, "little"))])  # JOINING, pid 0
        assert tx.consumers()[0]["state"] == 1
        for i in range(100):  # more than a ring-full: waits until the stuck slot is evicted
            tx.send(b"%03d" % i + b"." * 40, timeout=5)
        assert tx.consumers() == []


def test_lossy_scribbled_reserve_is_corruption_not_an_endless_loop():
    from tests.core.test_corruption import ring_off, scribble, u64

    with Broadcast.create(capacity=1 << 10, lossy=True) as tx, Broadcast.open(tx.name) as rx:
        tx.send(b"x" * 10)
        scribble(tx.name, [(ring_off("reserve"), u64(1 << 40))])
        with pytest.raises(broker.Corrupt):
            rx.recv(timeout=1)
