"""The Service interface (src/shmbroker/framework/service.py): a server made with a service of its own
dispatches that service's codes to it, shows its statistics and metrics, and calls its hooks."""
from __future__ import annotations

import time
import urllib.request

import pytest

import shmbroker as broker
from shmbroker.api import BUILTIN
from shmbroker.framework.service import Service
from shmbroker.protocol.codes import RESERVED, TOPIC_LIST

COUNT = -40  # a code of the free block (src/shmbroker/protocol/codes.py)


class Counter(Service):
    """The smallest built-in service: COUNT adds arg 0 to a total and completes with it."""

    codes = frozenset({COUNT})
    stats_key = "counter"

    def __init__(self, server) -> None:
        super().__init__(server)
        self.total = 0
        self.closed = False

    def handle(self, conn, msg) -> None:
        self.total += msg.integer(0)
        msg.complete(self.total)

    def stats(self):
        return {"total": self.total}

    @staticmethod
    def metrics(stats, fam) -> None:
        fam("broker_counter_total", "counter", "The sum of what COUNT was given.").add(stats["total"])

    def close(self) -> None:
        self.closed = True


def test_a_service_of_its_own_is_dispatched_to_shown_and_closed(tmp_path):
    assert COUNT not in RESERVED
    srv = broker.Server(str(tmp_path / "svc.sock"), services=BUILTIN + (Counter,), metrics=0)
    with srv:
        with broker.connect(str(tmp_path / "svc.sock")) as s:
            assert s.send_receive(COUNT, 5) == 5 and s.send_receive(COUNT, 7) == 12
            assert s.topics() == []  # the built-in ones are still there
            with pytest.raises(broker.ServiceError):
                s.send_receive(-41)  # nobody's code: the session's service() says NOT_SUPPORTED
        counter = srv.service("counter")
        assert srv.stats()["counter"] == {"total": 12} and "topics" in srv.stats()
        host, port = srv.metrics.address
        text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()
        assert "broker_counter_total 12" in text and "broker_sessions" in text
    assert counter.closed


def test_a_server_without_services_has_only_the_framework(tmp_path):
    from shmbroker.framework.server import Server

    with Server(str(tmp_path / "bare.sock")) as srv, broker.connect(str(tmp_path / "bare.sock")) as s:
        with pytest.raises(broker.ServiceError):
            s.send_receive(TOPIC_LIST, broker.Buffer(64))
        assert "topics" not in srv.stats()
        with pytest.raises(KeyError, match="no service 'topics'"):
            srv.service("topics")


def test_two_services_cannot_claim_one_code_and_a_service_code_is_below_zero(tmp_path):
    class Thief(Counter):
        codes = frozenset({TOPIC_LIST})

    with pytest.raises(ValueError, match="claimed by TopicBroker and Thief"):
        broker.Server(str(tmp_path / "x.sock"), services=BUILTIN + (Thief,))

    class Positive(Counter):
        codes = frozenset({7})

    with pytest.raises(ValueError, match="below zero"):
        broker.Server(str(tmp_path / "y.sock"), services=(Positive,))


def test_the_api_shows_the_frameworks_whole_signature_with_the_builtin_defaults(tmp_path):
    import inspect

    server = inspect.signature(broker.Server).parameters
    assert {"tcp", "keys", "grants", "max_queued"} <= set(server) and server["services"].default == BUILTIN
    assert inspect.signature(broker.connect).parameters["session_class"].default is broker.ClientSession
    with broker.Server(str(tmp_path / "api.sock")), broker.connect(str(tmp_path / "api.sock")) as s:
        assert type(s) is broker.ClientSession and s.topics() == []


class Faulty(Counter):
    """A service whose poll hook has a bug: it raises every time the loop looks."""

    stats_key = "faulty"
    polled = 0

    def poll(self) -> bool:
        Faulty.polled += 1
        raise ValueError("a bug in a service's poll")


def test_a_service_whose_poll_raises_is_logged_and_the_server_serves_on(tmp_path, caplog):
    path = str(tmp_path / "faulty.sock")
    with broker.Server(path, services=BUILTIN + (Faulty,), spin_us=200) as srv:
        with broker.connect(path) as s:
            for i in range(50):  # each call makes the loop spin, and look at the service, again
                assert s.send_receive(COUNT, 1) == i + 1
            assert s.topics() == []
        errors = srv.stats()["bounds"]["service_errors"]
        assert Faulty.polled > 0 and errors == Faulty.polled
    logged = [r for r in caplog.records if "Faulty.poll() raised" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None  # once, with its traceback


class FaultyArm(Counter):
    """A service whose arm and disarm hooks have bugs: they raise every time the loop would sleep."""

    stats_key = "faulty_arm"

    def arm(self) -> bool:
        raise ValueError("a bug in a service's arm")

    def disarm(self) -> None:
        raise KeyError("a bug in a service's disarm")


def test_a_service_whose_arm_and_disarm_raise_is_logged_and_the_server_sleeps_and_serves(tmp_path, caplog):
    path = str(tmp_path / "faulty_arm.sock")
    with broker.Server(path, services=BUILTIN + (FaultyArm,)) as srv:
        with broker.connect(path) as s:
            for i in range(20):
                time.sleep(0.005)  # idle: the loop arms everything and sleeps between calls
                assert s.send_receive(COUNT, 1) == i + 1
        errors = srv.stats()["bounds"]["service_errors"]
        assert errors >= 2
    logged = {r.getMessage().split("(")[0] for r in caplog.records if "FaultyArm." in r.getMessage()}
    assert logged == {"FaultyArm.arm", "FaultyArm.disarm"}  # each once


class _Brittle(broker.RefObject):
    """A sub-session's object whose destroyed() has a bug."""

    destroyed_ok: list[str] = []

    def __init__(self, fails: bool, name: str) -> None:
        super().__init__()
        self.fails, self.label = fails, name

    def destroyed(self) -> None:
        if self.fails:
            raise RuntimeError("a bug in destroyed()")
        _Brittle.destroyed_ok.append(self.label)


class _Opens(broker.Session):
    def service(self, m: broker.Message) -> None:
        if m.code == 1:  # arg 0: 1 = an object whose destroyed() raises
            m.complete(self.open_subsession(_Brittle(bool(m.integer(0)), f"obj{m.integer(1)}")))
        elif m.code == 2:
            m.complete(7)
        else:
            super().service(m)


def test_a_sub_session_whose_destroyed_raises_ends_alone(tmp_path, caplog):
    """A client that goes with sub-sessions open: one whose object's destroyed() raises is counted and
    logged; the others close, and the server serves the next client."""
    path = str(tmp_path / "brittle.sock")
    _Brittle.destroyed_ok.clear()
    with broker.Server(path, _Opens) as srv:
        with broker.connect(path) as s:
            for i, fails in enumerate((0, 1, 0)):
                assert s.send_receive(1, fails, i) > 0
        deadline = time.monotonic() + 10
        while srv.sessions() and time.monotonic() < deadline:
            time.sleep(0.01)
        with broker.connect(path) as s:  # the server goes on
            assert s.send_receive(2) == 7
        assert srv.stats()["bounds"]["service_errors"] == 1
    assert sorted(_Brittle.destroyed_ok) == ["obj0", "obj2"]
    assert any("closing _Brittle" in r.getMessage() and r.exc_info for r in caplog.records)
