"""The process that embeds a Server publishes, offers and calls without being a client of itself
(issue 16, item 4): Server.publish / publisher, Server.offer, Server.link. No session, no socket."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import shmbroker as broker
from shmbroker import connect

from tests.helpers import Child, wait_for

SHOUT = 1


@pytest.fixture(params=["socket", "shm", "tcp"])
def embedded(request, tmp_path):
    path = str(tmp_path / "e")
    srv = broker.Server(path, tcp="tcp://127.0.0.1:0", shm_policy="strict" if request.param == "shm" else "off",
                        grants=["key:test topic:* subscribe", "key:test service:* call"])
    with srv:
        srv.address = f"tcp://127.0.0.1:{srv.bound[1][1]}" if request.param == "tcp" else path
        srv.transport = request.param
        yield srv


def _name(srv, name: str) -> str:
    """A TCP peer meets the host's names in the Global namespace only."""
    return "Global\\" + name if srv.transport == "tcp" else name


def test_the_host_publishes_to_every_kind_of_subscriber(embedded):
    topic = _name(embedded, "ticks")
    with connect(embedded.address) as s, s.subscriber(topic) as sub:
        embedded.publish(topic, b"bytes")
        embedded.publish(topic, bytearray(b"bytearray"))
        embedded.publish(topic, np.arange(4, dtype=np.int32))
        with embedded.publisher(topic, history=2) as pub:
            assert pub.publish_many([b"a", b"b"]) == 2
            got = [sub.receive(10) for _ in range(5)]
            with s.subscriber(topic, history=2) as late:  # the host publisher's history
                assert [late.receive(10) for _ in range(2)] == [b"a", b"b"]
        assert got[:2] == [b"bytes", b"bytearray"] and got[3:] == [b"a", b"b"]
        assert isinstance(got[2], np.ndarray) and got[2].dtype == np.int32 and list(got[2]) == [0, 1, 2, 3]
        assert len(embedded.sessions()) == 1  # the client's: the host has no session


def test_a_host_publish_waits_for_a_full_blocking_subscriber_and_gives_up(embedded):
    topic = _name(embedded, "slow")
    with connect(embedded.address) as s, s.subscriber(topic, capacity=4) as sub:
        with embedded.publisher(topic, block_timeout=0.2) as pub:
            for i in range(4):
                pub.publish(b"%d" % i)
            with pytest.raises(broker.FullTimeout, match="did not keep up"):
                pub.publish(b"no room")
            done: list[str] = []
            waiting = threading.Thread(target=lambda: (pub.publish(b"room made", timeout=30), done.append("ok")))
            waiting.start()  # it waits until the subscriber reads
            assert [sub.receive(10) for _ in range(4)] == [b"0", b"1", b"2", b"3"]
            assert sub.receive(30) == b"room made"
            waiting.join(30)
            assert done == ["ok"]


class Host(broker.Session):
    def service(self, m: broker.Message) -> None:  # runs in the server's loop: it may not wait for room
        try:
            self.server.publish("full", b"x", timeout=30)
            m.complete(0)
        except broker.Full as e:
            m.complete(broker.Status.GENERAL, str(e))


def test_a_host_publish_from_the_servers_loop_never_waits(tmp_path):
    path = str(tmp_path / "h")
    with broker.Server(path, Host) as srv, connect(path) as s, s.subscriber("full", capacity=1):
        srv.publish("full", b"fills it")
        with pytest.raises(broker.ServiceError, match="the server's own loop cannot wait"):
            s.send_receive(1)


def _shout(call) -> int:
    if call.integer(0) < 0:
        raise ValueError("negative")
    call.write(2, call.read(1).upper())
    return call.integer(0)


def test_the_hosts_service_is_called_by_clients_and_by_the_host(embedded):
    name = _name(embedded, "shout")
    with embedded.offer(name, _shout):
        with connect(embedded.address) as s, s.link(name) as link:
            out = broker.Buffer(16)
            assert link.send_receive(SHOUT, 7, b"hey", out) == 7 and out.value == b"HEY"
            with pytest.raises(broker.ServiceError, match="ValueError: negative"):
                link.send_receive(SHOUT, -1, b"x", broker.Buffer(4))
        out = broker.Buffer(16)
        assert embedded.link(name).send_receive(SHOUT, 3, b"me", out) == 3 and out.value == b"ME"
        with pytest.raises(ValueError, match="offered already"):
            embedded.offer(name, _shout)
        [svc] = [v for v in embedded.stats()["services"] if v["service"] == name]
        assert svc["provider"] == 0 and svc["served"] == 2  # connection 0: the host; the failed call not served
    with pytest.raises(broker.ServiceError, match="nobody offers"):
        embedded.link(name).send_receive(SHOUT, 1)


def test_the_host_calls_a_clients_service_and_hears_its_death(tmp_path):
    path = str(tmp_path / "c")
    r, w = os.pipe()

    def provider() -> None:
        with connect(path) as c, c.offer("upper", _shout) as offer:
            os.write(w, b"p")
            offer.serve_forever()

    with broker.Server(path) as srv:
        kid = Child(provider)
        try:
            assert os.read(r, 1) == b"p"
            out = bytearray(b"abc")
            assert srv.link("upper").send_receive(SHOUT, 5, b"abc", out) == 5 and out == b"ABC"
        finally:
            kid.kill()
        wait_for(lambda: not srv.stats()["services"])
        with pytest.raises(broker.ServiceError, match="nobody offers"):
            srv.link("upper").send_receive(SHOUT, 1, b"x")
    for fd in (r, w):
        os.close(fd)
