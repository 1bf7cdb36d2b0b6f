"""One contract for the client's carriers (transport/carrier.py): the socket's and the rings'.

Each is taken from a real session with a real server, and driven by hand with the protocol's own
frames: what it sends arrives, what comes is taken whole (in pieces if need be), a deadline gives
None, and the server's end gives CarrierGone with the reason.
"""
from __future__ import annotations

import time

import pytest

import shmbroker as broker
from shmbroker.protocol.frames import Arg, ArgKind, Complete, request_frame
from shmbroker.transport.carrier import CarrierGone, ClientRings, SocketCarrier

ECHO = 2


class Echo(broker.Session):
    def service(self, m: broker.Message) -> None:
        m.write(1, m.read(0))
        m.complete(len(m.read(0)))


@pytest.fixture(params=["socket", "shm", "tcp"])
def carried(request, tmp_path):
    """(server, session, its carrier) for each way a session travels."""
    path = str(tmp_path / "c.sock")
    srv = broker.Server(path, Echo, tcp="tcp://127.0.0.1:0", shm_policy="off" if request.param == "socket" else None)
    srv.start()
    address = f"tcp://127.0.0.1:{srv.bound[1][1]}" if request.param == "tcp" else path
    s = broker.connect(address)
    kind = {"socket": SocketCarrier, "tcp": SocketCarrier, "shm": ClientRings}[request.param]
    assert isinstance(s._carrier, kind) and s.transport == s._carrier.kind
    yield srv, s, s._carrier
    s.close()
    srv.stop()


def _ask(s: broker.ClientSession, payload: bytes) -> int:
    """A REQUEST frame made by hand, booked in the session's protocol (as send() would), its id."""
    rid = s._proto.begin_request(False)
    frame = request_frame(rid, ECHO, 0, False, (Arg(ArgKind.READ, 0, payload), Arg(ArgKind.WRITE, len(payload)),
                                                Arg(), Arg()))
    s._carrier.send(frame)
    return rid


def _take_completion(s: broker.ClientSession, deadline: float) -> Complete:
    while True:
        data = s._carrier.take(deadline)
        assert data is not None, "nothing came before the deadline"
        events = s._proto.receive(bytes(data))
        if events:
            [ev] = events
            return ev


@pytest.mark.parametrize("size", [10, 100_000, 3 << 20])
def test_what_a_carrier_sends_arrives_and_the_reply_is_taken_whole(carried, size):
    _, s, _ = carried
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    rid = _ask(s, payload)
    ev = _take_completion(s, time.monotonic() + 30)
    assert ev.request_id == rid and ev.status == size and ev.writes[0].data == payload


def test_a_deadline_gives_none_and_take_nowait_nothing(carried):
    _, s, carrier = carried
    assert carrier.take_nowait() is None
    t0 = time.monotonic()
    assert carrier.take(t0 + 0.05) is None
    assert carrier.take(t0 - 1) is None  # a deadline already past: only what is there


def test_the_servers_end_is_carrier_gone_with_the_reason(carried):
    srv, s, carrier = carried
    srv.stop()
    with pytest.raises(CarrierGone) as e:
        deadline = time.monotonic() + 10
        while carrier.take(deadline) is not None:  # the server's CLOSE, then the end
            pass
        pytest.fail("the carrier never saw the server go")
    assert s.address in str(e.value) or "ring" in str(e.value), str(e.value)


def test_a_server_socket_sends_parts_and_frames_in_order_whatever_the_socket_takes():
    """ServerSocket with a small send buffer: frames and big frames' parts (tuples), written and
    queued in any order, arrive as one stream in order; what waits is counted and flushed."""
    import random
    import socket

    from shmbroker.transport.carrier import ServerSocket

    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        a.setblocking(False)
        out = ServerSocket(a)
        rnd = random.Random(5)
        want = bytearray()
        got = bytearray()
        for i in range(200):
            if i % 3 == 0:
                frame = tuple(rnd.randbytes(rnd.choice([3, 100, 70_000, 200_000])) for _ in range(rnd.randrange(1, 4)))
                want += b"".join(frame)
            else:
                frame = rnd.randbytes(rnd.randrange(1, 500))
                want += frame
            (out.write if i % 2 else out.queue)(frame)
            assert out.pending_bytes == sum(len(p) for p in out.out)
            if i % 7 == 0:  # the reader takes some now and then; the writer flushes
                b.setblocking(False)
                try:
                    while True:
                        got += b.recv(1 << 20)
                except BlockingIOError:
                    pass
                out.flush()
        b.setblocking(True)
        while len(got) < len(want):
            out.flush()
            got += b.recv(1 << 20)
        assert out.flush() and out.pending_bytes == 0
        assert bytes(got) == bytes(want)
    finally:
        a.close()
        b.close()
