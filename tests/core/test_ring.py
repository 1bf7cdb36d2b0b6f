"""The single-producer single-consumer ring through its Python API, in one process."""
from __future__ import annotations

import os
import queue
import select
import threading

import numpy as np
import pytest

import shmbroker as broker
from shmbroker import Ring
from shmbroker.core import names as _names
from shmbroker.core import proc as _proc


@pytest.fixture
def pair():
    tx = Ring.create(capacity=1 << 12)
    rx = Ring.open(tx.name)
    yield tx, rx
    rx.close()
    tx.close()


def test_roundtrip_every_size_up_to_the_maximum(pair):
    tx, rx = pair
    assert tx.max_record == broker.max_record_for(1 << 12) == 2048 - 16
    for n in list(range(0, 80)) + [1000, 2031, 2032]:
        data = bytes((i * 7 + n) & 0xFF for i in range(n))
        tx.send(data)
        assert rx.recv() == data


def test_wraps_many_times_without_loss(pair):
    tx, rx = pair
    for i in range(20000):
        data = i.to_bytes(4, "little") * (i % 97)
        tx.send(data)
        assert rx.recv() == data
    assert tx.stats()["records"] == rx.stats()["records"] == 20000


def test_too_big_is_refused_and_nothing_is_sent(pair):
    tx, rx = pair
    with pytest.raises(broker.TooBig) as e:
        tx.send(b"x" * (tx.max_record + 1))
    assert isinstance(e.value, ValueError)
    assert str(tx.max_record) in str(e.value)
    with pytest.raises(broker.Empty):
        rx.recv(timeout=0)


def test_full_and_empty_errors_are_the_standard_ones(pair):
    tx, rx = pair
    with pytest.raises(queue.Empty):
        rx.recv(timeout=0)
    with pytest.raises(TimeoutError):
        rx.recv(timeout=0.05)
    sent = 0
    with pytest.raises(queue.Full):
        while True:
            tx.send(b"y" * 100, timeout=0)
            sent += 1
    with pytest.raises(broker.FullTimeout) as e:
        tx.send(b"y" * 100, timeout=0.05)
    assert isinstance(e.value, TimeoutError) and isinstance(e.value, queue.Full)
    for _ in range(sent):
        assert rx.recv(timeout=0) == b"y" * 100
    tx.send(b"room again", timeout=0)
    assert rx.recv() == b"room again"


def test_blocked_send_resumes_when_the_consumer_reads(pair):
    tx, rx = pair
    while True:
        try:
            tx.send(b"z" * 500, timeout=0)
        except broker.Full:
            break
    got = []
    t = threading.Thread(target=lambda: got.append(tx.send(b"last", timeout=5)))
    t.start()
    while True:
        data = rx.recv(timeout=5)
        if data == b"last":
            break
    t.join(5)
    assert not t.is_alive() and got == [None]


def test_claim_commit_and_a_shorter_commit(pair):
    tx, rx = pair
    view = tx.claim(10)
    assert len(view) == 10 and not view.readonly
    view[:] = b"0123456789"
    with pytest.raises(broker.Empty):
        rx.recv(timeout=0)  # invisible until committed
    tx.commit(4)
    assert rx.recv() == b"0123"
    with pytest.raises(ValueError):
        view[0]  # revoked at commit


def test_abort_leaves_no_trace(pair):
    tx, rx = pair
    view = tx.claim(100)
    view[:5] = b"ghost"
    tx.abort()
    with pytest.raises(broker.Empty):
        rx.recv(timeout=0)
    tx.send(b"real")
    assert rx.recv() == b"real"
    assert rx.stats()["records"] == 1


def test_out_of_order_calls_are_state_errors(pair):
    tx, rx = pair
    with pytest.raises(broker.StateError):
        tx.commit()
    with pytest.raises(broker.StateError):
        tx.abort()
    tx.claim(8)
    with pytest.raises(broker.StateError):
        tx.claim(8)
    with pytest.raises(broker.StateError):
        tx.send(b"while claimed")
    tx.abort()
    with pytest.raises(broker.StateError):
        rx.send(b"consumers do not send")
    with pytest.raises(broker.StateError):
        tx.recv()
    with pytest.raises(broker.StateError):
        rx.release()


def test_recv_view_is_zero_copy_and_read_only(pair):
    tx, rx = pair
    tx.send(b"in place")
    tx.send(b"next")
    view = rx.recv_view()
    assert view.readonly and bytes(view) == b"in place"
    nxt = rx.recv_view(timeout=0)  # one at a time: the next gives the first back...
    with pytest.raises(ValueError):
        bytes(view)  # ...and revokes it
    assert bytes(nxt) == b"next"
    assert rx.release() is True
    with pytest.raises(ValueError):
        bytes(nxt)  # revoked at release
    with pytest.raises(broker.StateError, match="without recv_view"):
        rx.release()


def test_numpy_in_and_out(pair):
    tx, rx = pair
    a = np.arange(100, dtype=np.float64)
    tx.send(a)
    b = rx.recv_array(np.float64)
    assert b.flags.writeable and np.array_equal(a, b)

    out = tx.claim_array((4, 5), np.int32)
    out[:] = np.arange(20, dtype=np.int32).reshape(4, 5)
    del out
    tx.commit()
    view = rx.recv_array(np.int32, (4, 5), copy=False)
    assert not view.flags.writeable and not view.flags.owndata
    assert view.sum() == sum(range(20))
    del view
    rx.release()

    with pytest.raises(ValueError, match="contiguous"):
        tx.send(np.arange(10)[::2])  # not contiguous: refused, not silently copied
    with pytest.raises(TypeError):
        tx.send("text is not bytes")


def test_recv_into_and_too_small_buffer(pair):
    tx, rx = pair
    tx.send(b"abcdef")
    small = bytearray(3)
    with pytest.raises(broker.TooBig):
        rx.recv_into(small)
    buf = bytearray(16)
    assert rx.recv_into(buf) == 6 and buf[:6] == b"abcdef"


def test_batches(pair):
    tx, rx = pair
    msgs = [bytes([i]) * i for i in range(40)]
    assert tx.send_many(msgs) == 40
    got = []
    while len(got) < 40:
        got += rx.recv_many(16)
    assert got == msgs

    packed = b"".join(msgs)
    lens = np.array([len(m) for m in msgs], dtype=np.uint64)
    tx.send_batch(packed, lens)
    out = bytearray(4096)
    olens = np.zeros(64, dtype=np.uint64)
    n = rx.recv_batch(out, olens)
    assert n == 40 and list(olens[:n]) == list(lens)
    assert bytes(out[: int(lens.sum())]) == packed


def test_send_many_waits_for_room_across_several_calls(pair):
    tx, rx = pair
    msgs = [os.urandom(300) for _ in range(200)]  # many ring-fulls
    got: list[bytes] = []
    t = threading.Thread(target=lambda: [got.extend(rx.recv_many(8, timeout=5)) for _ in range(1000) if len(got) < 200])
    t.start()
    tx.send_many(msgs, timeout=10)
    t.join(10)
    assert got == msgs


def test_iteration_ends_when_the_producer_closes(pair):
    tx, rx = pair
    for i in range(5):
        tx.send(b"%d" % i)
    tx.close()
    assert list(rx) == [b"0", b"1", b"2", b"3", b"4"]
    with pytest.raises(broker.Closed) as e:
        rx.recv()
    assert isinstance(e.value, EOFError)


def test_second_producer_or_consumer_is_refused(pair):
    tx, rx = pair
    with pytest.raises(broker.StateError, match="already has its consumer"):
        Ring.open(tx.name)
    with pytest.raises(broker.StateError, match="already has its producer"):
        Ring.open(tx.name, role="producer")


def test_named_ring_and_open_by_short_name():
    with Ring.create("unit-test-ring", capacity=1 << 10) as tx, Ring.open("unit-test-ring") as rx:
        assert tx.name == f"/{_names.PREFIX}.u{os.geteuid()}.{_names.session_key(_proc.login_session())}.unit-test-ring"
        tx.send(b"by name")
        assert rx.recv() == b"by name"
    with pytest.raises(broker.SegmentError):
        Ring.open("unit-test-ring")  # unlinked by its creator


def test_bad_capacity_and_names():
    for cap in (100, 3000, 1 << 41):
        with pytest.raises(ValueError):
            Ring.create(capacity=cap)
    with pytest.raises(ValueError):
        Ring.create("no/slashes")
    with pytest.raises(ValueError):
        Ring.create(capacity=1 << 12, role="both")


def test_close_is_idempotent_and_closed_rings_refuse_work():
    tx = Ring.create(capacity=1 << 10)
    rx = Ring.open(tx.name)
    rx.close()
    rx.close()
    tx.close()
    assert tx.closed and "closed" in repr(tx)
    with pytest.raises(broker.Closed):
        tx.send(b"x")
    with pytest.raises(broker.Closed):
        rx.recv()
    with pytest.raises(broker.Closed):
        tx.stats()


def test_a_view_outlives_close_safely():
    tx = Ring.create(capacity=1 << 10)
    rx = Ring.open(tx.name)
    tx.send(b"kept")
    view = rx.recv_view()
    arr = np.frombuffer(view, dtype=np.uint8)  # an export: the view cannot be revoked
    rx.close()
    tx.close()
    assert bytes(arr) == b"kept"  # the mapping lives as long as the array
    del arr, view


def test_eventfd_wakeup_polls_with_other_descriptors(pair):
    tx, rx = pair
    fd = rx.fileno()
    tx.set_notify_fd(fd)  # same process: the producer writes the eventfd the consumer polls
    assert rx.arm() is True
    r, _, _ = select.select([fd], [], [], 0)
    assert r == []
    tx.send(b"ding")
    r, _, _ = select.select([fd], [], [], 5)
    assert r == [fd]
    assert rx.recv(timeout=0) == b"ding"
    tx.send(b"already there")
    assert rx.arm() is False  # records waiting: do not sleep
    assert rx.recv(timeout=0) == b"already there"


def test_blocking_recv_sleeps_and_is_woken(pair):
    tx, rx = pair
    rx.spin_us = 0
    got = []
    t = threading.Thread(target=lambda: got.append(rx.recv(timeout=5)))
    t.start()
    import time

    time.sleep(0.05)
    tx.send(b"wake up")
    t.join(5)
    assert got == [b"wake up"]
    assert rx.stats()["sleeps"] >= 1 and tx.stats()["wakeups"] >= 1


def test_stats_count_records_and_bytes(pair):
    tx, rx = pair
    for n in (1, 10, 100):
        tx.send(b"s" * n)
    assert tx.stats()["records"] == 3 and tx.stats()["bytes"] == 111
    assert tx.stats()["backlog_bytes"] > 0
    for _ in range(3):
        rx.recv()
    assert rx.stats()["records"] == 3 and rx.stats()["bytes"] == 111
    assert rx.stats()["backlog_bytes"] == 0


def test_close_from_another_thread_wakes_a_blocked_recv():
    tx = Ring.create(capacity=1 << 10)
    rx = Ring.open(tx.name)
    errors = []

    def reader() -> None:
        try:
            rx.recv()  # blocks: nothing will come
        except broker.Closed as e:
            errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    import time

    time.sleep(0.1)  # let it go to sleep in C
    rx.close()
    t.join(5)
    tx.close()
    assert not t.is_alive() and len(errors) == 1 and "another thread" in str(errors[0])


def test_close_from_another_thread_wakes_a_blocked_send():
    tx = Ring.create(capacity=1 << 10)
    rx = Ring.open(tx.name)
    errors = []

    def writer() -> None:
        try:
            while True:
                tx.send(b"w" * 100)
        except broker.Closed as e:
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    import time

    time.sleep(0.1)
    tx.close()
    t.join(5)
    rx.close()
    assert not t.is_alive() and len(errors) == 1


def test_producer_learns_the_consumer_closed():
    tx = Ring.create(capacity=1 << 10)
    rx = Ring.open(tx.name)
    tx.send(b"read me")
    assert rx.recv() == b"read me"
    rx.close()
    with pytest.raises(broker.PeerGone, match="closed the ring"):
        for _ in range(100):
            tx.send(b"z" * 100, timeout=5)
    tx.close()


def test_send_batch_refuses_lengths_that_are_not_uint64_or_overrun_the_data(pair):
    from array import array

    tx, rx = pair
    with pytest.raises(TypeError, match="uint64"):
        tx.send_batch(b"A", array("B", [0, 1, 0, 0, 0, 0, 0, 0]))  # 8 one-byte items read as one length: 256
    with pytest.raises(TypeError, match="uint64"):
        tx.send_batch(b"AB", np.array([1, 1], dtype=np.int32))
    with pytest.raises(ValueError, match="add up to more"):
        tx.send_batch(b"AB", np.array([1, 2], dtype=np.uint64))
    with pytest.raises(broker.Empty):
        rx.recv(timeout=0)  # nothing was sent by the refused calls
    tx.send_batch(b"ABC", array("Q", [1, 2]))
    assert rx.recv_many() == [b"A", b"BC"]


def test_recv_many_bounds_and_big_records(pair):
    tx, rx = pair
    with pytest.raises(ValueError):
        rx.recv_many(0)
    with pytest.raises(ValueError):
        rx.recv_many(5000)
    tx.send(b"s")
    tx.send(b"b" * 2000)
    assert rx.recv_many(10) == [b"s", b"b" * 2000]


def test_send_many_mixes_buffers_and_reports_a_bad_item(pair):
    tx, rx = pair
    tx.send_many([b"a", bytearray(b"bb"), memoryview(b"ccc"), np.arange(2, dtype=np.uint8)])
    assert rx.recv_many() == [b"a", b"bb", b"ccc", b"\x00\x01"]
    with pytest.raises(TypeError):
        tx.send_many([b"ok", "not bytes"])
    assert rx.recv_many() == [b"ok"]  # what came before the bad item was sent
    with pytest.raises(broker.TooBig):
        tx.send_many([b"x", b"y" * (tx.max_record + 1)])
    assert rx.recv_many() == [b"x"]
    assert tx.send_many([]) == 0
    assert tx.send_many(iter([b"g1", b"g2"])) == 2
    assert rx.recv_many() == [b"g1", b"g2"]
