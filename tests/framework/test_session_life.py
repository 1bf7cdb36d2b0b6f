"""A session's life (issue 16, items 7 to 9): an idle client learns its server's death; the errors of
full indexes, over-closes and start-up races are typed; a server starts on demand, one of many."""
from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import shmbroker as broker
from shmbroker import connect
from shmbroker.protocol.handles import ObjectIndex

from tests.helpers import wait_for
from tests.served import ROOT, serve

TRANSPORTS = ["socket", "shm", "tcp"]


def _connect(srv, transport: str) -> broker.ClientSession:
    return connect(srv.address(transport), timeout=30, socket_only=transport == "socket")


def _watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "broker-client-watch"]


# ---- item 7: an idle client learns that its server died -----------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_idle_client_is_told_when_its_server_is_killed(tmp_path, transport):
    with serve(str(tmp_path)) as srv:
        s = _connect(srv, transport)
        assert s.transport == ("shared memory" if transport == "shm" else "socket")
        told: list[BaseException] = []
        s.on_close(told.append)
        assert not s.closed and s.close_error is None and len(_watch_threads()) == 1
        srv.kill()
        assert s.wait_closed(30)  # a bound, not a measure: it fails only if the death is never seen
        assert s.closed
        assert len(told) == 1 and isinstance(told[0], broker.ServerGone)
        assert s.close_error is told[0]
        with pytest.raises(broker.ServerGone):
            s.send_receive(1)
        s.close()
        s.on_close(told.append)  # over already: told at once
        assert len(told) == 2 and told[1] is told[0]
    wait_for(lambda: not _watch_threads())  # the watcher ends with the last session it watched


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_closed_turns_true_without_a_call_or_a_watcher(tmp_path, transport):
    with serve(str(tmp_path)) as srv:
        s = _connect(srv, transport)
        assert not s.closed
        srv.kill()
        wait_for(lambda: s.closed)  # the socket's hang-up is looked at by `closed` itself
        assert isinstance(s.close_error, broker.ServerGone) and not _watch_threads()
        with pytest.raises(broker.ServerGone):
            s.send_receive(1)
        s.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_graceful_stop_tells_an_idle_client_why(tmp_path, transport):
    with serve(str(tmp_path)) as srv:
        s = _connect(srv, transport)
        told: list[BaseException] = []
        s.on_close(told.append)
        srv.close()  # SIGTERM: the server stops, and says so to every session
        assert s.wait_closed(30)
        assert "server stopped" in str(told[0]), told
        s.close()


def test_close_tells_the_callbacks_and_a_raising_callback_hurts_nobody(tmp_path):
    with broker.Server(str(tmp_path / "s")) as srv:
        s = connect(str(tmp_path / "s"))
        told: list[BaseException] = []

        def bad(e: BaseException) -> None:
            raise RuntimeError("a bug in a callback")

        s.on_close(bad)
        s.on_close(told.append)
        s.close()
        assert s.closed and len(told) == 1 and "closed" in str(told[0])
        assert s.wait_closed(0)
        wait_for(lambda: srv.sessions() == [])
    wait_for(lambda: not _watch_threads())


def test_many_watched_sessions_share_one_thread_and_each_is_told(tmp_path):
    with serve(str(tmp_path)) as srv:
        sessions = [_connect(srv, t) for t in TRANSPORTS * 3]
        told: list[int] = []
        for i, s in enumerate(sessions):
            s.on_close(lambda e, i=i: told.append(i))
        assert len(_watch_threads()) == 1
        sessions[0].close()  # one closed here: the others are still watched
        assert told == [0] and not sessions[1].closed
        srv.kill()
        for s in sessions:
            assert s.wait_closed(30)
        assert sorted(told) == list(range(len(sessions)))
        for s in sessions:
            s.close()
    wait_for(lambda: not _watch_threads())


# ---- item 8: typed errors -------------------------------------------------------------------------------

OPEN, OPEN_UNCLAIMED, ADD_ONLY = 1, 2, 3
DESTROYED: list[str] = []


class Thing(broker.RefObject):
    def destroyed(self) -> None:
        DESTROYED.append(self.name or "?")


class Small(broker.Session):
    """A session whose index holds two sub-sessions."""

    def __init__(self, server, peer) -> None:
        super().__init__(server, peer)
        self.objects = ObjectIndex(limit=2)

    def service(self, m: broker.Message) -> None:
        name = m.read(0).decode()
        if m.code == OPEN:
            try:
                obj = self.server.things.find(name)
            except broker.BadHandle:
                obj = self.server.things.add(name, Thing())
            m.complete(self.open_subsession(obj))
        elif m.code == ADD_ONLY:  # added, never opened: it must not outlive this session
            self.server.things.add(name, Thing())
            m.complete(0)
        else:
            super().service(m)


@pytest.fixture
def small(tmp_path):
    srv = broker.Server(str(tmp_path / "small"), Small)
    srv.things = broker.Container("things")
    DESTROYED.clear()
    with srv:
        yield srv


def test_a_full_sub_session_index_is_server_busy(small):
    with connect(small.addresses[0].text) as s:
        a = broker.SubSession.open(s, OPEN, b"a")
        broker.SubSession.open(s, OPEN, b"b")
        with pytest.raises(broker.ServerBusy, match="at most 2 sub-sessions") as e:
            broker.SubSession.open(s, OPEN, b"c")
        assert not isinstance(e.value, broker.ServiceError)  # not DIED with an OverflowError's text
        a.close()
        broker.SubSession.open(s, OPEN, b"d")  # a slot came back
    # "c" was added and could not be opened; "a" was closed; the session's end took "b" and "d"
    wait_for(lambda: len(small.things) == 0)
    assert sorted(DESTROYED) == ["a", "b", "c", "d"]


def test_an_object_added_and_never_opened_dies_with_its_session(small):
    with connect(small.addresses[0].text) as s, connect(small.addresses[0].text) as other:
        s.send_receive(ADD_ONLY, b"lonely")
        held = broker.SubSession.open(s, OPEN, b"shared")
        broker.SubSession.open(other, OPEN, b"shared")  # another session's reference keeps it
        assert small.things.names() == ["lonely", "shared"]
        held.close()
        s.close()
        wait_for(lambda: small.things.names() == ["shared"])
        assert DESTROYED == ["lonely"]
    wait_for(lambda: len(small.things) == 0)
    assert DESTROYED == ["lonely", "shared"]


def test_a_ref_object_closed_more_often_than_opened_is_an_error():
    obj = Thing()
    obj.open()
    obj.close()
    with pytest.raises(broker.StateError, match="closed more often than it was opened"):
        obj.close()
    assert obj.refs == 0 and DESTROYED.count("?") == 1


def _start_one(path: str, go: "multiprocessing.synchronize.Event", out: "multiprocessing.Queue") -> None:
    go.wait(30)
    try:
        srv = broker.Server(path)
        srv.start()
    except Exception as e:  # noqa: BLE001 - reported to the test as it is
        out.put(("lost", type(e).__name__, isinstance(e, broker.AddressInUse), str(e)))
        return
    out.put(("won", os.getpid()))
    time.sleep(1.0)  # hold the address while the others try
    srv.stop()


@pytest.mark.parametrize("round_", range(3))
def test_one_server_wins_a_start_up_race_and_the_others_get_address_in_use(tmp_path, round_):
    path = str(tmp_path / "race.sock")
    ctx = multiprocessing.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_start_one, args=(path, go, out)) for _ in range(8)]
    for p in procs:
        p.start()
    go.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    won = [r for r in results if r[0] == "won"]
    lost = [r for r in results if r[0] == "lost"]
    assert len(won) == 1, results
    assert all(r[1] == "AddressInUse" and r[2] and "another server is live" in r[3] for r in lost), lost
    assert not os.path.exists(path) and not os.path.exists(path + ".lock")


def test_a_tcp_port_in_use_is_address_in_use(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        srv = broker.Server(str(tmp_path / "t"), tcp=f"tcp://127.0.0.1:{port}", insecure_tcp=True)
        with pytest.raises(broker.AddressInUse) as e:
            srv.start()
        assert isinstance(e.value, OSError) and e.value.errno == 98
    assert not os.path.exists(str(tmp_path / "t")) and not os.path.exists(str(tmp_path / "t.lock"))


def test_broker_serve_says_address_in_use_with_its_own_exit_code(tmp_path):
    path = str(tmp_path / "busy")
    with broker.Server(path):
        done = subprocess.run([sys.executable, "-m", "shmbroker", "serve", "--address", path], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done
    assert "another server is live" in done.stderr


def test_a_stale_socket_and_lock_file_of_a_killed_server_are_taken_over(tmp_path):
    path = str(tmp_path / "stale")
    proc = subprocess.Popen([sys.executable, "-m", "shmbroker", "serve", "--address", path], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None and "listening on" in proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait(30)
        proc.stdout.close()  # type: ignore[union-attr]
    assert os.path.exists(path) and os.path.exists(path + ".lock")  # left by the killed server
    with broker.Server(path), connect(path) as s:
        assert s.server_pid == os.getpid()


# ---- item 9: start on demand ------------------------------------------------------------------------------


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _stop_server(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: _gone(pid))


def _connect_started(path: str, go: "multiprocessing.synchronize.Event", out: "multiprocessing.Queue") -> None:
    go.wait(30)
    try:
        with connect(path, start=True, start_timeout=60) as s:
            out.put((s.server_pid, s.send_receive(broker.services.ECHO, b"hi", broker.Buffer(8))))
    except Exception as e:  # noqa: BLE001 - reported to the test as it is
        out.put((None, repr(e)))


def _servers_at(path: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"serve" in argv and path.encode() in argv and not _gone(int(pid)):
                found.append(int(pid))
    return found


def test_many_clients_start_one_server_on_demand(tmp_path):
    path = str(tmp_path / "ondemand.sock")
    ctx = multiprocessing.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_connect_started, args=(path, go, out)) for _ in range(8)]
    for p in procs:
        p.start()
    go.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    pids = {r[0] for r in results}
    try:
        assert len(pids) == 1 and None not in pids, results
        assert all(r[1] == 2 for r in results), results  # each echoed through it
        (pid,) = pids
        wait_for(lambda: _servers_at(path) == [pid])  # the losers' servers exited; one serves
        with connect(path) as s:  # and a later client finds it without starting anything
            assert s.server_pid == pid
    finally:
        for pid in pids:
            if pid:
                _stop_server(pid)
    assert not os.path.exists(path) and not os.path.exists(path + ".lock")


def test_start_with_a_callable(tmp_path):
    path = str(tmp_path / "inproc")
    started: list[broker.Server] = []

    def start(address: str) -> None:
        started.append(broker.Server(address).start())

    try:
        with connect(path, start=start) as s:
            assert s.server_pid == os.getpid() and len(started) == 1
        with connect(path, start=start):  # there already: not started again
            assert len(started) == 1
    finally:
        for srv in started:
            srv.stop()


def test_a_start_that_fails_says_why(tmp_path):
    path = str(tmp_path / "never")
    with pytest.raises(broker.ServerNotFound, match="could not start one \\(exit 7\\): it broke"):
        connect(path, start=[sys.executable, "-c", "import sys; sys.stderr.write('it broke'); sys.exit(7)"])
    with pytest.raises(ValueError, match="on this host"):
        connect("tcp://127.0.0.1:1", start=True)
    with pytest.raises(TypeError, match="start must be"):
        connect(path, start="yes")
