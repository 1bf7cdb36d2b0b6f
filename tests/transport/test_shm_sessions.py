"""Sessions on shared memory: the rings the session rule allows, with real processes.

What the contract suite (test_framework.py, parameter "shm") does not show:
the segment's life (named only until both sides mapped it, mapped by no one
outside the session), frames bigger than a ring's record, a client killed with
SIGKILL, a client that cannot map the segment, and a cell on the socket that
never sees a segment at all.
"""
from __future__ import annotations

import os
import resource
import shutil
import signal
import tempfile
import time

import pytest

import shmbroker as broker
from shmbroker import Buffer, connect
from shmbroker.core import names as _names

from tests.helpers import Child, wait_for

ECHO, HOLD = 1, 2


class Echo(broker.Session):
    def service(self, m: broker.Message) -> None:
        if m.code == ECHO:
            data = m.read(0)
            m.write(1, data)
            m.complete(len(data))
        elif m.code == HOLD:
            pass  # never completed: its client is killed
        else:
            super().service(m)


class _Never:
    """A reply nobody sends: the session's own reader reads until the session ends."""

    def done(self) -> bool:
        return False


def _is_session_map(line: str) -> bool:
    """A line of /proc/PID/maps that maps a session's segment (a sealed memfd: /memfd:NAME (deleted))."""
    return f"/memfd:{_names.PREFIX}." in line and ".session." in line


def _session_maps(pid: int | str = "self") -> list[str]:
    """The session segments a process maps (/proc/PID/maps)."""
    with open(f"/proc/{pid}/maps") as f:
        return [line.split()[-2] if line.rstrip().endswith("(deleted)") else line.split()[-1]
                for line in f if _is_session_map(line)]


def _run(fn) -> None:
    assert Child(fn).join(60) == 0, "the client process failed (traceback above)"


def test_a_same_user_session_travels_on_its_rings_and_its_segment_has_no_name(tmp_path):
    path = str(tmp_path / "s.sock")
    events: list[broker.SessionEvent] = []
    with broker.Server(path, Echo, on_event=events.append) as srv:
        def client() -> None:
            with connect(path) as s:
                assert s.transport == "shared memory"
                big = os.urandom(3 << 20)  # bigger than a record (half of a 1 MiB ring): split, never refused
                out = Buffer(len(big))
                assert s.send_receive(ECHO, big, out) == len(big) and out.value == big
                small = Buffer(8)
                assert s.send_receive(ECHO, b"ping", small) == 4 and small.value == b"ping"
                mine = _session_maps()
                assert mine, "the client maps its session's segment"
                assert not [e for e in os.listdir("/dev/shm") if e.startswith(f"{_names.PREFIX}.") and ".session." in e], \
                    "the name is gone once both sides mapped it"
                os.write(w, mine[0].encode() + b"\n")
                os.read(go_r, 1)

        r, w = os.pipe()
        go_r, go_w = os.pipe()
        child = Child(client)
        with os.fdopen(os.dup(r), "rb") as f:
            segment = f.readline().decode().strip()
        assert segment in _session_maps(), "the server maps it too"
        [row] = srv.sessions()
        assert row["transport"] == "shared memory" and row["requests"] == 2
        os.write(go_w, b"g")
        assert child.join(30) == 0
        for fd in (r, w, go_r, go_w):
            os.close(fd)
        deadline = time.monotonic() + 5
        while _session_maps() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _session_maps() == [], "the server unmaps a session's segment when it ends"
    [ev] = [e for e in events if e.kind == "connected"]
    assert ev.reason.startswith("unix shared memory; session rule: shared memory: same user")


def test_a_killed_client_ends_only_its_session(tmp_path):
    path = str(tmp_path / "s.sock")
    events: list[broker.SessionEvent] = []
    with broker.Server(path, Echo, on_event=events.append) as srv:
        r, w = os.pipe()

        def doomed() -> None:
            s = connect(path, slots=4)
            s.send(HOLD)
            s.send(ECHO, b"x" * 100_000, Buffer(100_000))
            os.write(w, b"r")
            time.sleep(60)

        child = Child(doomed)
        os.read(r, 1)
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        deadline = time.monotonic() + 1.0  # the bound: gone within a second, its event said

        def said() -> bool:
            return any(e.kind == "disconnected" and e.reason == "died" for e in events)
        while (srv.sessions() or _session_maps() or not said()) and time.monotonic() < deadline:
            time.sleep(0.005)  # (the event comes last in the session's end: after its books are cleared)
        assert srv.sessions() == [] and _session_maps() == []
        assert said(), events
        _run(lambda: _echo_ok(path))  # the server serves the others
        os.close(r)
        os.close(w)


def _echo_ok(path: str) -> None:
    with connect(path) as s:
        out = Buffer(8)
        assert s.transport == "shared memory" and s.send_receive(ECHO, b"alive", out) == 5 and out.value == b"alive"


def test_a_client_that_cannot_map_the_segment_declines_and_keeps_the_socket(tmp_path):
    """A real failure: the child has no descriptor left for the segment (RLIMIT_NOFILE)."""
    path = str(tmp_path / "s.sock")
    events: list[broker.SessionEvent] = []
    with broker.Server(path, Echo, on_event=events.append):
        def starved() -> None:
            open_now = len(os.listdir("/proc/self/fd")) - 1  # less listdir's own
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 1, open_now + 1))  # the socket, nothing more
            with connect(path) as s:
                assert s.transport == "socket"
                out = Buffer(8)
                assert s.send_receive(ECHO, b"still", out) == 5 and out.value == b"still"

        _run(starved)
    [ev] = [e for e in events if e.kind == "connected"]
    assert ev.reason.startswith("unix socket") and not ev.decision.shm
    assert "could not map the segment" in ev.decision.reason, ev.decision


def test_socket_cells_never_see_a_segment(tmp_path, other_user):
    """A different user, TCP, policy off, a client asking for sockets: no session
    segment exists, and neither side maps one, while traffic flows."""
    uid, gid = other_user
    d = tempfile.mkdtemp(prefix="brk-cells-", dir="/tmp")
    os.chmod(d, 0o777)
    path = os.path.join(d, "s.sock")
    try:
        with broker.Server(path, Echo, tcp="tcp://127.0.0.1:0") as srv:
            os.chmod(path, 0o666)
            tcp = f"tcp://127.0.0.1:{srv.bound[1][1]}"

            def cell(address: str, become: tuple[int, int] | None = None, **kw) -> None:
                if become:
                    os.setgid(become[1])
                    os.setuid(become[0])
                with connect(address, **kw) as s:
                    assert s.transport == "socket"
                    for i in range(50):
                        out = Buffer(16)
                        assert s.send_receive(ECHO, b"%d" % i, out) == len(b"%d" % i)
                    assert _session_maps() == [], "the client maps no segment"
                    os.write(w, b"r")
                    os.read(go_r, 1)

            for args, kw in [((path, (uid, gid)), {}), ((tcp,), {}), ((path,), {"socket_only": True})]:
                r, w = os.pipe()
                go_r, go_w = os.pipe()
                child = Child(lambda: cell(*args, **kw))
                os.read(r, 1)
                assert _session_maps() == [], "the server maps no segment for a socket session"
                assert not [e for e in os.listdir("/dev/shm") if _names.is_ours(e) and ".session." in e]
                [row] = srv.sessions()
                assert row["transport"] == "socket"
                os.write(go_w, b"g")
                assert child.join(30) == 0
                for fd in (r, w, go_r, go_w):
                    os.close(fd)
                deadline = time.monotonic() + 5
                while srv.sessions() and time.monotonic() < deadline:
                    time.sleep(0.01)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_a_client_that_scribbles_on_its_ring_ends_only_its_own_session(tmp_path):
    """Untrusted shared memory: the client sets ring 0's producer position to
    something impossible; the server refuses it (Corrupt), ends that session
    with the reason, and serves the others."""
    path = str(tmp_path / "s.sock")
    events: list[broker.SessionEvent] = []
    with broker.Server(path, Echo, on_event=events.append):
        def scribbler() -> None:
            s = connect(path)
            assert s.transport == "shared memory"
            out = Buffer(4)
            assert s.send_receive(ECHO, b"ok", out) == 2
            s._rings.tx._h.hdr.tail = 1 << 62  # the position the server reads, out of all bounds
            os.write(s._rings.doorbell, (1).to_bytes(8, "little"))  # and ring, as a write would
            # no request after it (a write would put the true position back): read until the server's answer
            s._read_inline(_Never(), 10)
            assert isinstance(s._broken, broker.ServerGone) and "corrupt" in str(s._broken), s._broken
            with pytest.raises(broker.ServerGone, match="corrupt"):
                s.send_receive(ECHO, b"more", Buffer(8))  # and every later call says why
            s.close()

        _run(scribbler)
        _run(lambda: _echo_ok(path))
    [ended] = [e for e in events if e.kind == "disconnected" and "corrupt" in e.reason]
    assert ended.reason.startswith(f"protocol error: recv_many on memfd:{_names.PREFIX}.")


def _carrier_in_child(path: str, prepare, want: str) -> None:
    """Child: prepare() (a namespace, a login session), then a session that must travel on `want`."""
    problem = prepare()
    if problem:
        os._exit(77)  # the kernel cannot do it here: the parent skips
    with connect(path) as s:
        assert s.transport == want, s.transport
        out = Buffer(8)
        assert s.send_receive(ECHO, b"cell", out) == 4 and out.value == b"cell"
        if want == "socket":
            assert _session_maps() == []


def _cell(path: str, prepare, want: str) -> None:
    code = Child(lambda: _carrier_in_child(path, prepare, want)).join(60)
    if code == 77:
        pytest.skip("this kernel cannot set up the cell")
    assert code == 0, "the client process failed (traceback above)"


def test_a_client_in_its_own_ipc_and_mount_namespace_gets_the_socket(tmp_path):
    from tests.transport.test_identity import CLONE_NEWIPC, CLONE_NEWNS, private_shm_namespace, require_unshare

    require_unshare(CLONE_NEWNS | CLONE_NEWIPC)
    path = str(tmp_path / "s.sock")
    events: list[broker.SessionEvent] = []
    with broker.Server(path, Echo, on_event=events.append):
        _cell(path, lambda: private_shm_namespace() or "", "socket")
        assert not [e for e in os.listdir("/dev/shm") if _names.is_ours(e) and ".session." in e]
    [ev] = [e for e in events if e.kind == "connected"]
    assert ev.reason.startswith("unix socket") and "different mount and ipc namespaces" in ev.decision.reason


def test_another_login_session_gets_the_socket_unless_the_policy_is_same_user(tmp_path):
    from tests.transport.test_identity import new_login_session, require_audit_sessions

    require_audit_sessions()

    def login() -> str:
        before, after, problem = new_login_session()
        return "" if after != before else (problem or "unchanged")

    for policy, want, reason in [("strict", "socket", "different login session"),
                                 ("same-user", "shared memory", "login session not checked")]:
        path = str(tmp_path / f"{policy}.sock")
        events: list[broker.SessionEvent] = []
        with broker.Server(path, Echo, on_event=events.append, shm_policy=policy):
            _cell(path, login, want)
        [ev] = [e for e in events if e.kind == "connected"]
        assert reason in ev.decision.reason and ev.reason.startswith(f"unix {want}"), ev.reason


@pytest.mark.parametrize("policy", ["strict", "off"])  # shared memory, and the socket
def test_busy_poll_mode_gives_the_same_results_and_stops(tmp_path, policy):
    path = str(tmp_path / "s.sock")
    srv = broker.Server(path, Echo, busy_poll=True, shm_policy=policy)
    srv.start()
    try:
        def client() -> None:
            with connect(path, busy_poll=True) as s:
                assert s.transport == ("shared memory" if policy == "strict" else "socket")
                for i in range(200):
                    out = Buffer(8)
                    assert s.send_receive(ECHO, b"%d" % i, out) == len(b"%d" % i) and out.value == b"%d" % i
                fs = [s.send(ECHO, b"f%d" % i, Buffer(8)) for i in range(4)]
                assert [f.result(10) for f in fs] == [2, 2, 2, 2]
                with pytest.raises(broker.Timeout):
                    s.send_receive(HOLD, timeout=0.05)  # a deadline still ends a busy wait

        _run(client)
    finally:
        thread = srv._thread
        srv.stop()  # a busy-polling loop still sees the stop
        assert thread is not None and not thread.is_alive()


def test_an_offer_nobody_answers_ends_the_session_and_frees_its_segment(tmp_path):
    """A raw client takes the offer (and its doorbell) and never answers: its
    segment, named and reserved meanwhile, must not outlive offer_timeout."""
    import socket

    from shmbroker.protocol.frames import ClientConnection, Hello

    path = str(tmp_path / "s.sock")
    events: list[broker.SessionEvent] = []
    with broker.Server(path, Echo, on_event=events.append, offer_timeout=0.2):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(path)
        proto = ClientConnection()
        sock.sendall(proto.hello(Hello((1, 0, 0), 1)))
        fds: list[int] = []
        while proto.offer is None:
            data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(16))
            for _level, _kind, payload in anc:
                fds += list(memoryview(payload).cast("i"))
            proto.receive(data)
        import fcntl

        assert len(fds) == 3 and fcntl.fcntl(fds[1], fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK  # a sealed memfd
        seg = os.readlink(f"/proc/self/fd/{fds[1]}")
        assert seg.startswith("/memfd:") and proto.offer.name.startswith("memfd:")
        assert not [e for e in os.listdir("/dev/shm") if _names.is_ours(e) and ".session." in e]  # no name
        for fd in fds:
            os.close(fd)
        rest = b""
        while True:  # silence: the server closes the session with the reason, then the connection
            chunk = sock.recv(4096)
            if not chunk:
                break
            rest += chunk
        sock.close()
        assert b"no answer to SHM_OFFER" in rest
        held = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                if os.path.exists(f"/proc/self/fd/{fd}")]
        assert seg not in held, "the server still holds the segment of an offer that expired"
    [ev] = [e for e in events if e.kind == "disconnected"]
    assert "no answer to SHM_OFFER within 0.2 s" in ev.reason


def _segment_size(pid: int | str = "self") -> int:
    """Bytes of the one session segment a process maps (from /proc/PID/maps)."""
    with open(f"/proc/{pid}/maps") as f:
        spans = [line.split()[0] for line in f if _is_session_map(line)]
    sizes = {int(b, 16) - int(a, 16) for a, b in (s.split("-") for s in spans)}
    assert len(sizes) == 1, spans
    return sizes.pop()


@pytest.mark.parametrize("asked,granted", [
    (None, 1 << 20),  # the server's default
    (4 << 20, 4 << 20),
    (3 << 20, 4 << 20),  # the next power of two
    (1, 64 << 10),  # at least SHM_MIN_CAPACITY
    (1 << 31, 8 << 20),  # at most the server's shm_max_capacity
])
def test_the_client_asks_for_a_ring_size_and_the_server_grants_within_its_limits(tmp_path, asked, granted):
    path = str(tmp_path / "s.sock")
    with broker.Server(path, Echo, shm_max_capacity=8 << 20) as srv:
        def client() -> None:
            with connect(path, ring_capacity=asked) as s:
                assert s.transport == "shared memory" and s.ring_capacity == granted
                big = os.urandom(granted + 12345)  # more than a ring: still one call, in pieces
                out = Buffer(len(big))
                assert s.send_receive(ECHO, big, out) == len(big) and out.value == big
                [row] = s.server_stats()["sessions"]  # the server's word (this is a forked child)
                assert row["ring_capacity"] == granted and row["transport"] == "shared memory"
                size = _segment_size()
                assert 2 * granted < size < 2 * granted + (1 << 20), f"a {size}-byte segment for two rings of {granted}"
        _run(client)


def test_ring_size_limits_are_checked():
    with pytest.raises(ValueError, match="power of two"):
        broker.Server("/nonexistent/x.sock", Echo, shm_capacity=3 << 20)
    with pytest.raises(ValueError, match="over shm_max_capacity"):
        broker.Server("/nonexistent/x.sock", Echo, shm_capacity=4 << 20, shm_max_capacity=2 << 20)
    with pytest.raises(ValueError, match="ring_capacity"):
        connect("/nonexistent/x.sock", ring_capacity=0)


class Statuses(broker.Session):
    """Completions of every shape the client's C call sees: plain, with writes, negative without text,
    with an error text, writes into an argument that is not a Buffer, and one held until released."""

    held: list[broker.Message] = []

    def service(self, m: broker.Message) -> None:
        if m.code == 1:  # status only
            m.complete(m.integer(0) if m.kind(0) == broker.ArgKind.INT else 7)
        elif m.code == 2:  # negative, no text
            m.complete(m.integer(0))
        elif m.code == 3:  # negative, with text
            m.complete(-2, "it went wrong")
        elif m.code == 4:  # writes into each writable argument
            for i in range(4):
                if m.kind(i) in (broker.ArgKind.WRITE, broker.ArgKind.READWRITE):
                    m.write(i, f"arg{i}".encode() * (i + 1))
            m.complete(0)
        elif m.code == 5:  # a reply bigger than the C call copies out: taken by Python
            m.write(1, m.read(0))
            m.complete(len(m.read(0)))
        elif m.code == 6:
            Statuses.held.append(m)
        else:
            super().service(m)


def test_the_c_call_gives_what_the_long_way_gives_for_every_kind_of_completion(tmp_path):
    path = str(tmp_path / "s.sock")
    with broker.Server(path, Statuses) as srv, connect(path) as s, connect(path, socket_only=True) as sock:
        assert s.transport == "shared memory" and sock.transport == "socket"
        for c in (s, sock):
            assert c.send_receive(1, 41) == 41 and c.send_receive(1) == 7 and c.send_receive(1, None, 3) == 7
            with pytest.raises(broker.ServiceError, match="32-bit signed") as e:
                c.send_receive(1, 2**40)  # a status out of range: the service fails, the client is told
            assert e.value.status == broker.Status.DIED
            with pytest.raises(broker.BadHandle):
                c.send_receive(2, int(broker.Status.BAD_HANDLE))  # a typed error, with no text
            with pytest.raises(broker.PermissionDenied):
                c.send_receive(2, int(broker.Status.PERMISSION_DENIED))
            with pytest.raises(broker.ServiceError) as e:
                c.send_receive(2, -77)
            assert e.value.status == -77
            with pytest.raises(broker.ServiceError, match="it went wrong"):
                c.send_receive(3)
            a, b, ba = Buffer(16), Buffer(16, b"old"), bytearray(16)
            assert c.send_receive(4, a, 5, b, ba) == 0  # a bytearray target: the long way applies it
            assert (a.value, b.value, bytes(ba)) == (b"arg0", b"arg2arg2arg2", b"arg3arg3arg3arg3")
            big = os.urandom(10000)
            out = Buffer(len(big))
            assert c.send_receive(5, big, out) == len(big) and out.value == big
            with pytest.raises(TypeError, match="bool"):
                c.send_receive(1, True)  # not an argument, on either way
        assert srv.sessions()[0]["requests"] == srv.sessions()[1]["requests"]


def test_close_from_another_thread_ends_a_call_waiting_in_c(tmp_path):
    import threading

    path = str(tmp_path / "s.sock")
    Statuses.held = []
    with broker.Server(path, Statuses), connect(path) as s:
        assert s.transport == "shared memory"
        threading.Timer(0.2, s.close).start()
        t0 = time.monotonic()
        with pytest.raises(broker.ServerGone, match="closed"):
            s.send_receive(6)  # held by the server: only the close ends it
        assert time.monotonic() - t0 < 5


def test_simple_calls_on_shared_memory_never_take_the_long_way(tmp_path, monkeypatch):
    """ints, bytes, None and Buffers: the C call takes them; anything else (a bytearray) the long way."""
    import shmbroker.framework.client as client

    def long_way(a):
        raise AssertionError(f"the long way was taken for {a!r}")

    path = str(tmp_path / "s.sock")
    with broker.Server(path, Statuses), connect(path) as s:
        assert s.transport == "shared memory"
        monkeypatch.setattr(client, "to_arg", long_way)
        out = Buffer(16)
        for i in range(100):
            assert s.send_receive(1, i) == i and s.send_receive(4, out, None, b"x") == 0
        assert out.value == b"arg0"
        with pytest.raises(AssertionError, match="the long way was taken for bytearray"):
            s.send_receive(4, bytearray(16))


@pytest.mark.stress  # a close at every moment: 3 s
def test_a_close_from_another_thread_at_any_moment_ends_calls_with_server_gone(tmp_path):
    """Whenever the close lands (before a call, while C sends, while it waits), the call raises
    ServerGone, never a Timeout or a ProtocolError (two races found by review)."""
    import random
    import threading

    path = str(tmp_path / "s.sock")
    with broker.Server(path, Echo):
        def client() -> None:
            import sys

            sys.setswitchinterval(1e-6)  # threads switch as often as they can: the races show
            rng = random.Random(4)
            seen: dict[str, int] = {}
            for _ in range(300):
                s = connect(path)
                assert s.transport == "shared memory"
                closer = threading.Timer(rng.random() * 0.002, s.close)
                closer.start()
                try:
                    while True:
                        s.send_receive(ECHO, b"ping", Buffer(8))
                except Exception as e:
                    key = f"{type(e).__name__}: {e}"
                    seen[key] = seen.get(key, 0) + 1
                closer.join()
            assert set(seen) == {"ServerGone: the session is closed"}, seen
        _run(client)


# ---- pipelined calls (call_many) and asynchronous requests on the rings ------------------------


def test_call_many_gives_what_the_long_way_gives_for_every_kind_of_completion(tmp_path):
    """The same pipelined calls on a shared-memory session (C, both ends) and on a socket session
    (the long way, both ends) give the same results, errors in the same places."""
    path = str(tmp_path / "s.sock")
    with broker.Server(path, Statuses) as srv, connect(path, slots=16) as s, \
            connect(path, slots=16, socket_only=True) as sock:
        assert s.transport == "shared memory" and sock.transport == "socket"
        outcomes = []
        for c in (s, sock):
            got = [c.call_many(1, [(i,) for i in range(3000)])]
            got.append(c.call_many(2, [(-77,), (int(broker.Status.BAD_HANDLE),), (5,)], return_exceptions=True))
            got.append(c.call_many(3, [()] * 3, return_exceptions=True))  # error texts: C leaves them to Python
            sets = [(Buffer(16), i, Buffer(16, b"old"), bytearray(16)) for i in range(50)]
            got.append(c.call_many(4, sets))  # a bytearray target: the long way applies it, in C's run
            got.append([(a.value, b.value, bytes(ba)) for a, _, b, ba in sets])
            bigs = [os.urandom(n) for n in (10, 100_000, 10, 700_000, 10) * 4]  # over C's copy, over a record
            outs = [Buffer(len(b)) for b in bigs]
            got.append(c.call_many(5, zip(bigs, outs)))
            assert [o.value for o in outs] == bigs
            outcomes.append([[(type(r).__name__, r if type(r) in (int, tuple) else str(r)) for r in g] for g in got])
        assert outcomes[0] == outcomes[1]
        assert outcomes[0][0] == [("int", i) for i in range(3000)]
        assert outcomes[0][1] == [("ServiceError", "status -77"), ("BadHandle", "status -8"), ("int", 5)]
        assert outcomes[0][2] == [("ServiceError", "status -2: it went wrong")] * 3
        rows = srv.sessions()
        assert rows[0]["requests"] == rows[1]["requests"] == rows[0]["completions"] == rows[1]["completions"]
        assert rows[0]["outstanding"] == rows[1]["outstanding"] == 0


def test_pipelined_calls_on_shared_memory_never_take_the_long_way(tmp_path, monkeypatch):
    """call_many of ints, bytes and Buffers: written, taken, served, completed and read in C at both
    ends; the Python ways (the client's frames and reader, the server's decoder) are never used."""
    import shmbroker.framework.client as client
    import shmbroker.framework.server as server

    def long_way(*a):
        raise AssertionError(f"the long way was taken for {a!r}")

    path = str(tmp_path / "s.sock")
    with broker.Server(path, Echo) as srv, connect(path, slots=32) as s:
        assert s.transport == "shared memory"
        monkeypatch.setattr(client, "to_arg", long_way)
        monkeypatch.setattr(client.ClientSession, "_received_events", long_way)
        served_long: list[int] = []
        on_request = server._Conn.on_request
        monkeypatch.setattr(server._Conn, "on_request", lambda self, req: (served_long.append(req.code),
                                                                            on_request(self, req)))
        payloads = [os.urandom(i % 200) for i in range(20_000)]
        outs = [Buffer(200) for _ in payloads]
        assert s.call_many(ECHO, zip(payloads, outs)) == [len(p) for p in payloads]
        assert [o.value for o in outs] == payloads
        assert served_long == []
        [row] = srv.sessions()
        assert row["requests"] == row["completions"] == 20_000 and row["outstanding"] == 0
        [conn] = srv._conns_open
        assert conn.async_outstanding == 0  # every slot the batches took came back


class Holder(broker.Session):
    held: list[broker.Message] = []

    def service(self, m: broker.Message) -> None:
        Holder.held.append(m)


@pytest.mark.parametrize("one_record", [False, True])
def test_asynchronous_requests_beyond_the_slots_are_refused_on_the_rings(tmp_path, one_record):
    """A client that ignores its slots on a shared-memory session: C takes as many asynchronous
    requests as there are slots free and leaves the rest to Python, which refuses them (SERVER_BUSY)
    without giving a slot away; a completion gives the slot back."""
    from shmbroker.protocol.frames import Complete

    path = str(tmp_path / "s.sock")
    Holder.held = []
    with broker.Server(path, Holder) as srv, connect(path, slots=2) as s:
        assert s.transport == "shared memory"
        frames = [s._proto.request(9, asynchronous=True)[1] for _ in range(5)]
        if one_record:
            s._rings.send(b"".join(frames))
        else:
            for f in frames:
                s._rings.send(f)
        statuses: list[int] = []
        while len(statuses) < 3:
            statuses += [ev.status for ev in s._proto.receive(s._rings.recv(5.0)) if isinstance(ev, Complete)]
        assert statuses == [broker.Status.SERVER_BUSY] * 3 and len(Holder.held) == 2
        [conn] = srv._conns_open
        assert conn.async_outstanding == 2
        Holder.held[0].complete(1)
        wait_for(lambda: conn.async_outstanding == 1)
        rid, frame = s._proto.request(9, asynchronous=True)
        s._rings.send(frame)
        wait_for(lambda: len(Holder.held) == 3)  # the freed slot was taken again, not refused
        for m in Holder.held[1:]:
            m.complete(2)
        wait_for(lambda: conn.async_outstanding == 0)


class Mixed(broker.Session):
    """Services that fail in each way a service can, for the server's C turn (serve_messages)."""

    def service(self, m: broker.Message):
        n = m.integer(0)
        if n % 3 == 1:
            raise ValueError(f"no {n}")
        if n % 3 == 2:
            async def later() -> None:
                m.complete(n)
            return later()  # a coroutine: this server runs no event loop
        m.complete(n)
        return None


def test_the_servers_c_turn_handles_what_services_raise_and_return(tmp_path, caplog, monkeypatch):
    """What on_request does on the long way, the C turn does for the Messages C made: an exception
    becomes a DIED status with its text (and a log line), a coroutine NOT_SUPPORTED."""
    import shmbroker.framework.server as server

    path = str(tmp_path / "s.sock")
    with broker.Server(path, Mixed) as srv, connect(path, slots=32) as s:
        assert s.transport == "shared memory"
        long_way: list[int] = []
        on_request = server._Conn.on_request
        monkeypatch.setattr(server._Conn, "on_request", lambda self, req: (long_way.append(req.code),
                                                                            on_request(self, req)))
        got = s.call_many(1, [(i,) for i in range(300)], return_exceptions=True)
        assert long_way == []
        want = []
        for i in range(300):
            if i % 3 == 0:
                want.append(("int", i))
            elif i % 3 == 1:
                want.append(("ServiceError", f"status {int(broker.Status.DIED)}: ValueError: no {i}"))
            else:
                want.append(("ServiceError", f"status {int(broker.Status.NOT_SUPPORTED)}: "
                                             "an async service needs the server to run with serve_async()"))
        assert [(type(r).__name__, r if type(r) is int else str(r)) for r in got] == want
        assert any("raised ValueError('no 1')" in r.getMessage() for r in caplog.records)
        [row] = srv.sessions()
        assert row["outstanding"] == 0 and row["completions"] == 300

