"""Big requests (64 KiB and more): written from the arguments' own buffers, gathered whole, read in place.

A big REQUEST goes out as its parts (request_parts: the head, then each payload as the caller gave
it): the rings copy them straight into records (Ring.send_stream), the socket writes them with
sendmsg. The server gathers the frame in one buffer of its exact size (FrameReader.gathering; on
rings, Ring.recv_stream copies the records straight in) and the service reads the payloads in place
(Message.read_view) or copies them once where it wants them (Message.read_into). Real servers,
real sessions on both carriers, and the reader itself against its reference.
"""
from __future__ import annotations

import os
import random

import numpy as np
import pytest

import shmbroker as broker
from shmbroker.core.ring import Ring
from shmbroker.framework.client import ViewBuffer
from shmbroker.protocol import frames as P
from shmbroker.transport.carrier import RECV_BYTES, STREAM_CHUNK
from tests.helpers import wait_for

VIEW, READ, INTO, TWO, KINDS, REPLY = 1, 2, 3, 4, 5, 6
SIZES = [P.BIG_FRAME - 200, P.BIG_FRAME, STREAM_CHUNK + 1, (1 << 20) + 3, (3 << 20) + 17]


class Reader(broker.Session):
    """Each code reads argument 0 its own way and answers with what it saw."""

    def service(self, m: broker.Message) -> None:
        if m.code == VIEW:  # in place: a read-only view; its bytes written back to the Buffer
            v = m.read_view(0)
            assert v.readonly
            m.write(1, v)
            m.complete(len(v))
        elif m.code == READ:  # bytes, from an offset, of a size
            m.write(1, m.read(0, 5, 1000))
            m.complete(len(m.read(0)))
        elif m.code == INTO:  # copied once into the service's own buffer, at an offset of the argument
            out = bytearray(m.length(0))
            n = m.read_into(0, out, 3)
            m.write(1, bytes(out[:n]))
            m.complete(n)
        elif m.code == TWO:  # two big arguments in one request: each arrives whole, in order
            m.write(2, m.read_view(1))
            m.complete(len(m.read_view(0)) * 1000 + (m.read_view(0) == m.read_view(1)))
        elif m.code == REPLY:  # a big reply: arg 0 its size, arg 2 a seed of its content
            m.write(1, _payload(m.integer(0), m.integer(2)))
            m.complete(0)
        elif m.code == KINDS:  # what Message.args says: bytes, whatever the frame's size
            a = m.args
            m.complete(int(type(a[0]) is bytes and a[0] == m.read(0)))
        else:
            super().service(m)


@pytest.fixture(params=["shared memory", "socket"])
def session(request, tmp_path):
    srv = broker.Server(str(tmp_path / "big.sock"), Reader, shm_policy="strict" if request.param == "shared memory" else "off")
    srv.start()
    s = broker.connect(str(tmp_path / "big.sock"))
    assert s.transport == request.param
    yield s
    s.close()
    srv.stop()


def _payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.mark.parametrize("size", SIZES)
def test_a_big_argument_arrives_whole_whichever_way_the_service_reads_it(session, size):
    data = _payload(size, size)
    b = broker.Buffer(size)
    assert session.send_receive(VIEW, data, b) == size and b.value == data
    b = broker.Buffer(1000)
    assert session.send_receive(READ, data, b) == size and b.value == data[5:1005]
    b = broker.Buffer(size)
    assert session.send_receive(INTO, data, b) == size - 3 and b.value == data[3:]
    assert session.send_receive(KINDS, data) == 1


def test_two_big_arguments_and_small_ones_between_them_keep_their_order(session):
    data = _payload(300_000, 1)
    for i in range(3):
        b = broker.Buffer(len(data))
        assert session.send_receive(TWO, data, data, b) == 300_000 * 1000 + 1 and b.value == data
        small = broker.Buffer(16)
        assert session.send_receive(VIEW, b"small %d" % i, small) == len(b"small 0") and small.value == b"small %d" % i


def test_a_big_memoryview_of_any_shape_goes_out_from_its_own_buffer(session):
    arr = np.arange(200_000, dtype=np.float64).reshape(400, 500)  # 1.6 MB, 2-D, format "d"
    b = broker.Buffer(arr.nbytes)
    assert session.send_receive(VIEW, memoryview(arr), b) == arr.nbytes
    assert np.array_equal(np.frombuffer(b.value, np.float64).reshape(400, 500), arr)
    strided = memoryview(arr[:, ::2])  # not contiguous: copied into bytes first, as before
    b = broker.Buffer(arr.nbytes // 2)
    assert session.send_receive(VIEW, strided, b) == arr.nbytes // 2
    assert np.array_equal(np.frombuffer(b.value, np.float64).reshape(400, 250), arr[:, ::2])


def test_big_requests_in_flight_together_each_get_their_own_answer(session):
    datas = [_payload(200_000 + i, i) for i in range(3)]
    bufs = [broker.Buffer(len(d)) for d in datas]
    futs = [session.send(VIEW, d, b) for d, b in zip(datas, bufs)]
    assert [f.result(30) for f in futs] == [len(d) for d in datas]
    assert [b.value for b in bufs] == datas


@pytest.mark.parametrize("size", [1000, P.BIG_FRAME, (1 << 20) + 7])
def test_a_big_reply_is_bytes_in_a_buffer_and_a_view_of_its_frame_in_a_view_buffer(session, size):
    b = broker.Buffer(size)
    assert session.send_receive(REPLY, size, b, 1) == 0
    assert type(b.value) is bytes and b.value == _payload(size, 1)
    vb = ViewBuffer(size)
    assert session.send_receive(REPLY, size, vb, 2) == 0 and vb.value == _payload(size, 2)
    if size > RECV_BYTES and session.transport == "socket":  # more than one read: gathered, read in place
        assert type(vb.value) is memoryview and vb.value.readonly


def test_a_view_of_a_big_reply_that_is_still_held_is_never_overwritten_by_the_next(session):
    """A client's reader reuses its last big frame's buffer only when nothing refers to it any more."""
    size = 300_000
    first = ViewBuffer(size)
    assert session.send_receive(REPLY, size, first, 1) == 0
    held = first.value
    for seed in range(2, 6):  # more big replies while `held` is kept, then after it is let go
        b = ViewBuffer(size)
        assert session.send_receive(REPLY, size, b, seed) == 0 and b.value == _payload(size, seed)
        assert held == _payload(size, 1)
        if seed == 3:
            del held, first
            held = bytes(_payload(size, 1))  # (the same check goes on, on a copy)


def test_big_and_small_replies_that_wait_for_a_slow_reader_arrive_whole_and_in_order(tmp_path):
    """A socket client that does not read while eight replies, big and small, are made: what the
    socket does not take waits in the server (big parts as they are, small frames joined) and goes
    out in order once the client reads; every reply whole."""
    srv = broker.Server(str(tmp_path / "slow.sock"), Reader, shm_policy="off")
    srv.start()
    try:
        s = broker.connect(str(tmp_path / "slow.sock"), slots=8, sharable=False)
        sizes = [600_000, 10, 100, 70_000, 1, 900_000, 5, 2_000_000]  # the last can never fit a socket buffer
        bufs = [broker.Buffer(n) for n in sizes]
        futs = [s.send(REPLY, n, b, seed) for seed, (n, b) in enumerate(zip(sizes, bufs))]
        # the server makes them all while nobody reads, and what the socket does not take waits in it
        wait_for(lambda: [(x["completions"], x["queued_bytes"] > 0) for x in srv.stats()["sessions"]] == [(8, True)])
        assert [f.result(30) for f in futs] == [0] * 8
        assert [b.value for b in bufs] == [_payload(n, seed) for seed, n in enumerate(sizes)]
        s.close()
    finally:
        srv.stop()


# ---- the reader: a big frame gathered whole, however the stream is cut ----------------------------


def _stream() -> tuple[bytes, list[P.Request]]:
    """Small and big requests back to back, and the events they are."""
    reqs = []
    out = b""
    for rid, size in enumerate([10, 100_000, 0, P.BIG_FRAME, 70_000, 5], 1):
        args = (P.Arg(P.ArgKind.READ, 0, _payload(size, rid)), P.Arg(P.ArgKind.INT, rid),
                P.Arg(P.ArgKind.READWRITE, size + 9, _payload(size // 3, -rid)), P.NO_ARG)
        out += P.request_frame(rid, 7, 0, False, args)
        reqs.append(P.Request(rid, 7, args, 0, False))
    return out, reqs


@pytest.mark.parametrize("seed", range(20))
def test_the_reader_gathers_a_big_frame_however_the_stream_is_cut(seed):
    stream, want = _stream()
    rnd = random.Random(seed)
    cuts = sorted(rnd.sample(range(1, len(stream)), rnd.randrange(1, 40)))
    reader = P.FrameReader()
    got: list = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)]):
        got += reader.feed(stream[a:b])
        assert reader.pending <= P.HEADER_SIZE + reader.max_frame
    assert got == want and reader.pending == 0 and reader.gathering is None
    start = 0
    for ev in got:  # a big frame cut by a read is gathered: its payloads are views of its one buffer
        end = start + P.HEADER_SIZE + P._REQUEST_ALL.size + len(ev.args[0].data) + len(ev.args[2].data)
        gathered = end - start >= P.BIG_FRAME and any(start + P.HEADER_SIZE <= c < end for c in cuts)
        if gathered:
            assert type(ev.args[0].data) is memoryview and ev.args[0].data.readonly
            assert ev.args[0].data.obj is ev.args[2].data.obj
        else:  # decoded where it lay, whole in one read: its payloads copied out of that read
            assert type(ev.args[0].data) is bytes
        start = end


def test_a_big_frame_s_buffer_is_exactly_its_size_and_a_bad_one_ends_the_connection():
    conn = P.ServerConnection()
    conn.receive(P.encode(P.Hello((1, 0, 0), 4)))
    conn.accept(1, 4)
    frame = P.request_frame(1, 3, 0, False, (P.Arg(P.ArgKind.READ, 0, b"x" * 100_000),) + (P.NO_ARG,) * 3)
    assert conn.receive(frame[:30]) == []
    assert len(conn.reader.gathering) == len(frame) and conn.reader.pending == 30
    # the rest, with its last descriptor's payload claimed longer than the frame: refused when whole
    bad = bytearray(frame)
    bad[P.HEADER_SIZE + 8 + 4 : P.HEADER_SIZE + 8 + 8] = (100_001).to_bytes(4, "little")
    with pytest.raises(P.ProtocolError, match="claims 100001 bytes"):
        conn.receive(bytes(bad[30:]))
    assert conn.state is P.State.CLOSED


def test_a_header_over_max_frame_is_refused_before_anything_is_allocated():
    reader = P.FrameReader(max_frame=1 << 20)
    head = P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, int(P.FrameType.REQUEST), 0, (1 << 20) + 1, 0, 1)
    with pytest.raises(P.ProtocolError, match="over the limit"):
        reader.feed(head)
    assert reader.gathering is None


# ---- the rings' stream calls -------------------------------------------------------------------


@pytest.fixture
def ring():
    name = f"bigstream{os.getpid()}"
    tx = Ring.create(name, capacity=1 << 16)
    rx = Ring.open(name)
    yield tx, rx
    rx.close()
    tx.close()


def test_send_stream_writes_the_parts_as_one_stream_in_chunks_and_recv_stream_gathers_it(ring):
    tx, rx = ring
    parts = (b"head" * 10, bytearray(_payload(9000, 1)), memoryview(np.arange(3000, dtype=np.int32)), b"", b"tail")
    whole = b"".join(bytes(memoryview(p).cast("B")) for p in parts)
    tx.send_stream(parts, 4096)
    assert len(whole) == 21044
    records = rx.recv_many(100, timeout=0)
    assert [len(r) for r in records] == [4096] * 5 + [564] and b"".join(records) == whole
    tx.send_stream(parts, 4096)
    target = bytearray(len(whole) - 100)  # the stream goes on past it: the last record's rest comes back
    at, rest = rx.recv_stream(target, 0)
    assert (at, bytes(target) + rest) == (len(target), whole)
    assert rx.recv_stream(bytearray(10), 0) == (0, None)  # nothing there now


def test_send_stream_waits_for_room_and_goes_on_where_it_stopped(ring):
    tx, rx = ring
    data = _payload(300_000, 2)  # over four times the ring: written as the reader takes it
    got = bytearray(len(data))
    with broker_thread(lambda: tx.send_stream((data,), 8192, timeout=30)) as t:
        at = 0
        while at < len(got):
            at, rest = rx.recv_stream(got, at)
            assert rest is None
    assert t.error is None and bytes(got) == data


def test_the_stream_calls_refuse_what_is_not_theirs(ring):
    tx, rx = ring
    with pytest.raises(ValueError, match="at most 8 buffers"):
        tx.send_stream((b"x",) * 9, 100)
    with pytest.raises(TypeError):
        tx.send_stream((b"x", 5), 100)
    with pytest.raises(BufferError, match="not writable"):
        rx.recv_stream(b"read-only", 0)
    with pytest.raises(ValueError, match="outside the target"):
        rx.recv_stream(bytearray(4), 5)


class broker_thread:
    """Run fn in a thread for the block; .error is what it raised."""

    def __init__(self, fn):
        import threading

        self.error: BaseException | None = None

        def run() -> None:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - reported to the test
                self.error = e

        self.t = threading.Thread(target=run)

    def __enter__(self) -> "broker_thread":
        self.t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.t.join(30)
        assert not self.t.is_alive()


# ---- a client that stops halfway through a big frame ---------------------------------------------


def test_a_client_that_stalls_then_dies_halfway_through_a_big_frame_ends_only_its_own_session(tmp_path):
    """Part of a 1 MiB request on its rings, then the client stalls (its gathered part waits, counted
    in its stats; another session is served meanwhile), then dies (its session ends, nothing else)."""
    from tests.helpers import Child

    path = str(tmp_path / "half.sock")
    srv = broker.Server(path, Reader, shm_policy="strict")
    srv.start()
    r, w = os.pipe()
    try:
        def half() -> None:
            s = broker.connect(path)
            assert s.transport == "shared memory"
            rid = s._proto.begin_request(False)
            parts = P.request_parts(rid, VIEW, 0, False, (P.Arg(P.ArgKind.READ, 0, _payload(1 << 20, 3)),
                                                          P.Arg(P.ArgKind.WRITE, 1 << 20), P.NO_ARG, P.NO_ARG))
            s._carrier.tx.send(b"".join(parts)[:300_000])  # one record: the head and part of the payload
            os.read(r, 1)
            os._exit(0)  # dies: no CLOSE, its rings simply stop

        with Child(half) as child:
            wait_for(lambda: [x["partial_frame_bytes"] for x in srv.stats()["sessions"]] == [300_000])
            other = broker.connect(path)
            data = _payload(200_000, 4)
            b = broker.Buffer(len(data))
            assert other.send_receive(VIEW, data, b) == len(data) and b.value == data
            assert sorted(x["partial_frame_bytes"] for x in srv.stats()["sessions"]) == [0, 300_000]
            os.write(w, b"G")
            assert child.join(30) == 0
            wait_for(lambda: len(srv.stats()["sessions"]) == 1)
            assert other.send_receive(VIEW, data, b) == len(data) and b.value == data
            other.close()
    finally:
        os.close(r)
        os.close(w)
        srv.stop()


def test_a_kept_frame_buffer_counts_as_unused_only_when_no_view_of_it_is_held():
    b = P._frame_buffer(1000)
    assert type(b) is bytearray and len(b) == 1000 and P._frame_unused(b)
    v = memoryview(b)[10:20].toreadonly()
    assert not P._frame_unused(b)
    w = v[2:4]  # a view of a view holds it too
    del v
    assert not P._frame_unused(b)
    del w
    assert P._frame_unused(b)
    with pytest.raises(TypeError):
        P._frame_unused(b"bytes")
