"""The server speaks first (issue 16, item 4): Session.notify reaches the client's on_notify callbacks
and notifications(), on every carrier, an idle client's too; a client may not send one."""
from __future__ import annotations

import socket
import threading

import pytest

import shmbroker as broker
from shmbroker import connect
from shmbroker.protocol.frames import ClientConnection, FrameType, Hello, _frame

from tests.helpers import raw_hello, wait_for

PING = 1


class Chatty(broker.Session):
    live: list["Chatty"] = []

    def __init__(self, server, peer) -> None:
        super().__init__(server, peer)
        Chatty.live.append(self)

    def service(self, m: broker.Message) -> None:
        self.notify(9, b"before the answer")  # it comes before the completion, in order
        m.complete(PING)


@pytest.fixture(params=["socket", "shm", "tcp"])
def chatty(request, tmp_path):
    Chatty.live = []
    path = str(tmp_path / "n")
    srv = broker.Server(path, Chatty, tcp="tcp://127.0.0.1:0", shm_policy="strict" if request.param == "shm" else "off")
    with srv:
        srv.address = f"tcp://127.0.0.1:{srv.bound[1][1]}" if request.param == "tcp" else path
        srv.transport = request.param
        yield srv


def test_an_idle_client_hears_its_server(chatty):
    with connect(chatty.address) as s:
        assert s.transport == ("shared memory" if chatty.transport == "shm" else "socket")
        got: list[broker.Notification] = []
        s.on_notify(got.append)
        (server_side,) = Chatty.live
        server_side.notify(1, b"hello")  # at once after the connect: the rings' answer may still be due
        server_side.notify(2, bytes(range(256)) * 100)
        wait_for(lambda: len(got) == 2)
        assert got == [broker.Notification(1, b"hello"), broker.Notification(2, bytes(range(256)) * 100)]
        assert s.send_receive(PING) == PING
        wait_for(lambda: len(got) == 3)
        assert got[2] == broker.Notification(9, b"before the answer")
        it = s.notifications(timeout=5)
        assert [next(it).code for _ in range(3)] == [1, 2, 9]  # the iterator sees them too
        threading.Thread(target=lambda: server_side.notify(3, b"from another thread")).start()
        assert next(it) == broker.Notification(3, b"from another thread")
    wait_for(lambda: not chatty.sessions())  # the server has seen the close
    with pytest.raises(broker.StateError):
        server_side.notify(4)  # the session is over


def test_notifications_end_with_the_session_and_are_bounded(chatty):
    n = broker.framework.client.NOTIFY_QUEUE
    s = connect(chatty.address)
    assert s.send_receive(PING) == PING  # (its notification 9 first)
    (server_side,) = Chatty.live
    heard: list[broker.Notification] = []
    s.on_notify(heard.append)
    for i in range(n + 10):
        server_side.notify(i)
    wait_for(lambda: len(heard) == n + 10)  # every one reached the callback
    assert s.notifications_lost == 11  # the queue kept the last n: 9, then 0 to 9 went
    it = s.notifications(timeout=10)
    assert next(it).code == 10
    s.close()
    rest = list(it)  # what is left, then the end: the session is over
    assert [x.code for x in rest] == list(range(11, n + 10))


def test_a_client_may_not_send_a_notification(tmp_path):
    path = str(tmp_path / "n")
    events: list[broker.SessionEvent] = []
    with broker.Server(path, on_event=events.append):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        proto = ClientConnection()
        raw_hello(sock, proto, Hello((1, 0, 0), socket_only=True))
        sock.sendall(_frame(FrameType.NOTIFY, b"\0\0\0\0"))
        wait_for(lambda: any(e.kind == "disconnected" and "does not send Notify" in e.reason for e in events))
        sock.close()


def test_a_client_that_never_reads_cannot_make_notifications_pile_up(tmp_path):
    """Notifications are output no request paces: at the connection's bound, notify() says ServerBusy,
    and the stall timeout disconnects the client; the server serves on."""
    Chatty.live = []
    path = str(tmp_path / "n")
    events: list[broker.SessionEvent] = []
    with broker.Server(path, Chatty, max_queued=256 << 10, stall_timeout=1.0, on_event=events.append):
        sock = socket.socket(socket.AF_UNIX)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(path)
        raw_hello(sock, ClientConnection(), Hello((1, 0, 0), socket_only=True))  # then it never reads
        wait_for(lambda: len(Chatty.live) == 1)
        (server_side,) = Chatty.live
        sent, busy = 0, None
        for _ in range(10_000):  # 640 MiB if nothing stopped it
            try:
                server_side.notify(1, b"x" * (64 << 10))
                sent += 1
            except broker.ServerBusy as e:
                busy = e
                break
        assert busy is not None and "is not reading" in str(busy), sent
        assert sent < 64  # about its bound's worth (plus what the kernel's buffers took)
        wait_for(lambda: any(e.kind == "disconnected" and "stall" in e.reason for e in events))
        with connect(path) as s:  # the server serves on
            assert s.send_receive(PING) == PING
        sock.close()
