"""Two real processes on one ring: nothing lost, duplicated or reordered; exact losses; dead peers."""
from __future__ import annotations

import os
import random
import signal
import time

import pytest

import shmbroker as broker
from shmbroker import Broadcast, Ring
from shmbroker.core import shm as _shm

from tests.helpers import Child, check_payload, checksum_payload

N = 1_000_000


def _payloads(seed: int, n: int, lo: int = 12, hi: int = 600) -> list[int]:
    rnd = random.Random(seed)
    return [rnd.randint(lo, hi) for _ in range(n)]


@pytest.mark.stress  # a million records
def test_a_million_random_records_arrive_intact_and_in_order():
    sizes = _payloads(1, N)
    # a pool of prebuilt records keeps the producer fast; the sequence number makes each unique
    pool = {s: checksum_payload(0, s) for s in set(sizes)}
    with Ring.create(capacity=1 << 20) as tx:
        name = tx.name

        def consume() -> None:
            with Ring.open(name) as rx:
                expect = 0
                while expect < N:
                    for data in rx.recv_many(1024, timeout=30):
                        seq = int.from_bytes(data[:8], "little")
                        assert seq == expect, f"got record {seq}, expected {expect}"
                        assert len(data) == sizes[seq], f"record {seq}: {len(data)} bytes, expected {sizes[seq]}"
                        assert data[8:] == pool[len(data)][8:], f"record {seq} damaged"
                        expect += 1
                with pytest.raises(broker.Closed):
                    rx.recv(timeout=30)

        with Child(consume) as child:
            send = tx.send
            for seq, size in enumerate(sizes):
                rec = pool[size]
                send(seq.to_bytes(8, "little") + rec[8:])
            tx.close()
            assert child.join(120) == 0


def test_checksummed_records_across_processes_with_views_and_batches():
    n = 100_000
    sizes = _payloads(2, n, 12, 3000)
    with Ring.create(capacity=1 << 16) as tx:
        name = tx.name

        def consume() -> None:
            with Ring.open(name) as rx:
                for i in range(n):
                    if i % 3 == 0:
                        v = rx.recv_view(timeout=30)
                        assert check_payload(bytes(v)) == i
                        del v
                        rx.release()
                    else:
                        assert check_payload(rx.recv(timeout=30)) == i

        with Child(consume) as child:
            batch = []
            for i, size in enumerate(sizes):
                batch.append(checksum_payload(i, size))
                if len(batch) == 64:
                    tx.send_many(batch, timeout=30)
                    batch = []
            tx.send_many(batch, timeout=30)
            assert child.join(120) == 0


def test_lossy_broadcast_counts_losses_exactly_across_processes():
    n = 300_000
    with Broadcast.create(capacity=1 << 14, lossy=True) as tx:
        name = tx.name
        r, w = os.pipe()

        def slow_consumer() -> None:
            with Broadcast.open(name) as rx:
                os.write(w, b"1")
                got = 0
                last = -1
                for data in rx:  # until Closed
                    seq = check_payload(data)
                    assert seq > last, "sequence went backwards"
                    last = seq
                    got += 1
                    if got % 50 == 0:
                        time.sleep(0.0005)  # fall behind now and then
                assert got + rx.lost == n, f"received {got} + lost {rx.lost} != sent {n}"
                assert rx.lost > 0, "the producer never lapped this consumer: the test proves nothing"

        with Child(slow_consumer) as child:
            assert os.read(r, 1) == b"1"
            for i in range(n):
                tx.send(checksum_payload(i, 40 + i % 200))
            tx.close()
            assert child.join(120) == 0
        os.close(r)
        os.close(w)


def test_lossless_broadcast_fans_out_to_several_processes():
    n = 100_000
    with Broadcast.create(capacity=1 << 14) as tx:
        name = tx.name
        r, w = os.pipe()

        def consumer() -> None:
            with Broadcast.open(name) as rx:
                os.write(w, b"1")
                for i in range(n):
                    assert check_payload(rx.recv(timeout=30)) == i
                with pytest.raises(broker.Closed):
                    rx.recv(timeout=30)

        kids = [Child(consumer) for _ in range(3)]
        try:
            for _ in kids:
                assert os.read(r, 1) == b"1"
            for i in range(n):
                tx.send(checksum_payload(i, 12 + i % 100), timeout=30)
            tx.close()
            assert [k.join(120) for k in kids] == [0, 0, 0]
        finally:
            for k in kids:
                k.kill()
        os.close(r)
        os.close(w)


def test_consumer_reads_what_a_dead_producer_left_then_learns_it_died():
    """The consumer opens a ring whose producer (and creator) has already died."""
    r, w = os.pipe()

    def producer() -> None:
        tx = Ring.create(capacity=1 << 12)
        os.write(w, tx.name.encode().ljust(128))
        for i in range(10):
            tx.send(b"%d" % i)
        os.kill(os.getpid(), signal.SIGKILL)  # dies without closing anything

    child = Child(producer)
    name = os.read(r, 128).decode().strip()
    assert child.join(30) == -signal.SIGKILL
    try:
        with Ring.open(name) as rx:
            assert [rx.recv(timeout=5) for _ in range(10)] == [b"%d" % i for i in range(10)]
            with pytest.raises(broker.PeerGone) as e:
                rx.recv(timeout=5)
            assert isinstance(e.value, ConnectionError) and "died" in str(e.value)
    finally:
        _shm.unlink(name)  # its owner is dead: this is what `shmbroker clean` will do
        os.close(r)
        os.close(w)


def test_blocked_producer_learns_its_consumer_died():
    with Ring.create(capacity=1 << 10) as tx:
        name = tx.name
        r, w = os.pipe()

        def consumer() -> None:
            Ring.open(name)
            os.write(w, b"1")
            time.sleep(60)

        with Child(consumer) as child:
            assert os.read(r, 1) == b"1"
            child.kill()
        with pytest.raises(broker.PeerGone, match="consumer"):
            for _ in range(100):
                tx.send(b"x" * 100, timeout=5)
        os.close(r)
        os.close(w)


def test_receiver_blocked_forever_wakes_when_data_comes_from_another_process():
    with Ring.create(capacity=1 << 12, role="consumer", spin_us=0) as rx:
        name = rx.name

        def late_producer() -> None:
            with Ring.open(name, role="producer") as tx:
                time.sleep(0.3)
                tx.send(b"finally")

        with Child(late_producer) as child:
            assert rx.recv() == b"finally"  # timeout=None: waits as long as the producer lives
            assert child.join(30) == 0
