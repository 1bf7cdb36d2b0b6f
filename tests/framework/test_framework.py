"""The client/server framework over real sockets (Unix and TCP), clients in separate processes.

The server runs in this process (a background thread) so that its books can be
checked; every client runs in a forked child. The transport parameter is the
contract: the shared-memory transport (issue 4) becomes a third value.
"""
from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest

import shmbroker as broker
from shmbroker import Buffer, Policy, RefObject, Session, SubSession, connect

from tests.helpers import Child, in_child, raw_hello, wait_for

ECHO_LEN, REVERSE, RAISE, OPEN_SHARED, SUB_ADD, PANIC, LATER, OVERFLOW, SECRET, GUARDED, HOLD, TWICE = range(1, 13)


class Counter(RefObject):
    destroyed_names: list[str] = []

    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    def destroyed(self) -> None:
        Counter.destroyed_names.append(self.name or "?")


class Service(Session):
    held: list[broker.Message] = []

    def service(self, m: broker.Message) -> None:
        if m.code == ECHO_LEN:
            m.complete(len(m.read(0)))
        elif m.code == REVERSE:
            m.write(1, m.read(0)[::-1])
            m.complete(0)
        elif m.code == RAISE:
            raise ValueError("the service failed on purpose")
        elif m.code == OPEN_SHARED:
            name = m.read(0).decode()
            try:
                obj = self.server.counters.find(name)
            except broker.BadHandle:
                obj = self.server.counters.add(name, Counter())
            m.complete(self.open_subsession(obj))
        elif m.code == SUB_ADD:
            obj = self.subsession(m)
            obj.value += m.integer(0)
            m.complete(obj.value)
        elif m.code == PANIC:
            m.panic("asked for it")
        elif m.code == LATER:
            threading.Timer(0.05, m.complete, args=(42,)).start()  # completed later, from another thread
        elif m.code == OVERFLOW:
            m.write(0, b"x" * (m.max_length(0) + 1))
        elif m.code in (SECRET, GUARDED):
            m.complete(1)
        elif m.code == HOLD:
            Service.held.append(m)  # completed by the test, or never
        elif m.code == TWICE:
            m.complete(5)
            m.complete(6)  # raises StateError: the client still sees 5
        else:
            super().service(m)


POLICIES = (Policy(range(SECRET, SECRET + 1), uids=frozenset({4242})),
            Policy(range(GUARDED, GUARDED + 1), uids=frozenset({4242}), panic=True))


@pytest.fixture(params=["socket", "tcp", "shm"])
def server(request, tmp_path):
    """socket: a Unix socket carries the session (policy off); tcp: TCP; shm: the
    session's rings (same user, same session: the rule allows it)."""
    events: list[broker.SessionEvent] = []
    srv = broker.Server(str(tmp_path / "srv.sock"), Service, tcp="tcp://127.0.0.1:0", policies=POLICIES,
                        on_event=events.append, shm_policy="strict" if request.param == "shm" else "off")
    srv.counters = broker.Container("counters")
    srv.start()
    srv.address = f"tcp://127.0.0.1:{srv.bound[1][1]}" if request.param == "tcp" else str(tmp_path / "srv.sock")
    srv.transport = request.param
    srv.only_raw_clients = False  # set by a test whose clients all speak the raw protocol on the socket
    srv.recorded = events
    Service.held = []
    Counter.destroyed_names = []
    yield srv
    carriers = {e.reason.split(";")[0] for e in events if e.kind == "connected"}
    want = {"socket": "unix socket", "tcp": "tcp socket", "shm": "unix shared memory"}[request.param]
    assert carriers <= {want, "unix socket"}, carriers  # a test's own raw or socket-only client may add "unix socket"
    assert not carriers or want in carriers or srv.only_raw_clients, carriers
    for m in Service.held:
        if not m.completed:
            try:
                m.complete(0)
            except broker.StateError:
                pass
    srv.stop()


def test_round_trips_arguments_and_write_back(server):
    def client() -> None:
        with connect(server.address) as s:
            assert s.send_receive(ECHO_LEN, b"hello") == 5
            out = Buffer(16)
            assert s.send_receive(REVERSE, b"abc", out) == 0 and out.value == b"cba"
            rw = bytearray(b"0123456789")
            s.send_receive(REVERSE, b"xy", rw)
            assert rw == b"yx"  # a bytearray is read-write: its new content and length
            assert s.send_receive(ECHO_LEN, b"z" * 1_000_000) == 1_000_000
            assert s.send(LATER).result(5) == 42
            assert s.send_receive(TWICE) == 5

    in_child(client)


def test_subclasses_of_bytes_and_str_are_arguments_as_their_bases_are(server):
    """numpy's bytes_ and str_ and an enum's str are bytes and str: sent as such, not refused (an
    AttributeError before)."""
    import enum

    import numpy as np

    class Colour(str, enum.Enum):
        RED = "red"

    def client() -> None:
        with connect(server.address) as s:
            assert s.send_receive(ECHO_LEN, np.bytes_(b"abcd")) == 4
            assert s.send_receive(ECHO_LEN, np.str_("h\u00e9")) == 3  # its UTF-8 bytes
            out = Buffer(8)
            assert s.send_receive(REVERSE, Colour.RED, out) == 0 and out.value == b"der"
            with pytest.raises(TypeError):
                s.send_receive(ECHO_LEN, 1.5)

    in_child(client)


def test_errors_are_typed_and_end_nothing(server):
    def client() -> None:
        with connect(server.address) as s:
            with pytest.raises(broker.ServiceError, match="failed on purpose") as e:
                s.send_receive(RAISE)
            assert e.value.status == broker.Status.DIED
            with pytest.raises(broker.ServiceError, match="not supported"):
                s.send_receive(999)
            with pytest.raises(broker.ServiceError) as e:
                s.send_receive(OVERFLOW, Buffer(4))
            assert e.value.status == broker.Status.OVERFLOW
            with pytest.raises(broker.PermissionDenied):
                s.send_receive(SECRET)
            assert s.send_receive(ECHO_LEN, b"still fine") == 10

    in_child(client)


def test_a_failing_policy_can_panic_the_client(server):
    def client() -> None:
        s = connect(server.address)
        with pytest.raises(broker.Panicked, match="not allowed") as e:
            s.send_receive(GUARDED)
        assert "not allowed" in e.value.reason
        with pytest.raises(broker.Panicked):
            s.send_receive(ECHO_LEN, b"next")  # the session is over
        s.close()

    in_child(client)
    wait_for(lambda: any(ev.kind == "disconnected" and "panicked" in ev.reason for ev in server.recorded))


def test_panic_ends_the_session_with_its_reason(server):
    def client() -> None:
        s = connect(server.address)
        with pytest.raises(broker.Panicked, match="asked for it"):
            s.send_receive(PANIC)
        s.close()

    in_child(client)


def test_shared_objects_are_reference_counted_across_sessions(server):
    r, w = os.pipe()

    def holder() -> None:
        with connect(server.address) as s:
            sub = SubSession.open(s, OPEN_SHARED, b"shared")
            assert sub.send_receive(SUB_ADD, 10) == 10
            os.write(w, b"1")
            time.sleep(60)  # killed while holding it

    with Child(holder) as kid:
        assert os.read(r, 1) == b"1"

        def other() -> None:
            with connect(server.address) as s:
                sub = SubSession.open(s, OPEN_SHARED, b"shared")
                assert sub.send_receive(SUB_ADD, 5) == 15  # the same object
                h = sub.handle
                sub.close()
                with pytest.raises(broker.BadHandle):
                    s.send_receive(SUB_ADD, 1, handle=h)  # closed: stale

        in_child(other)
        obj = server.counters.find("shared")
        assert obj.refs == 1
        kid.kill()  # kill -9 while it holds the object
    wait_for(lambda: len(server.counters) == 0)
    assert Counter.destroyed_names == ["shared"] and obj.refs == 0
    wait_for(lambda: any(ev.kind == "disconnected" and ev.reason == "died" for ev in server.recorded))
    os.close(r)
    os.close(w)


def test_forged_and_stale_handles_are_bad_handles(server):
    def client() -> None:
        with connect(server.address) as s:
            sub = SubSession.open(s, OPEN_SHARED, b"h")
            h = sub.handle
            sub.close()
            for bad in (h, h + 1, 0x7FFF0001, 0):
                with pytest.raises(broker.BadHandle):
                    s.send_receive(SUB_ADD, 1, handle=bad)
            assert s.send_receive(ECHO_LEN, b"ok") == 2

    in_child(client)


def test_message_slots(server):
    def client() -> None:
        with connect(server.address, slots=2) as s:
            f1, f2 = s.send(HOLD), s.send(HOLD)
            with pytest.raises(broker.ServerBusy):
                s.send(HOLD)  # refused at once, no round trip
            assert s.send_receive(ECHO_LEN, b"sync") == 4  # a synchronous call never runs out
            os.write(w, b"1")
            assert f1.result(10) == 7 and f2.result(10) == 7
            assert s.send(ECHO_LEN, b"again").result(5) == 5  # slots are free again

    r, w = os.pipe()
    with Child(client) as kid:
        assert os.read(r, 1) == b"1"
        for m in Service.held:
            m.complete(7)
        assert kid.join(30) == 0
    os.close(r)
    os.close(w)


def test_server_caps_slots_and_refuses_versions(server):
    def client() -> None:
        with pytest.raises(broker.VersionRefused, match="version 2.0.0 is not supported"):
            connect(server.address, version=(2, 0, 0))
        with pytest.raises(broker.VersionRefused):
            connect(server.address, version=(1, 1, 0))
        with connect(server.address, slots=10_000) as s:
            assert s.slots == 255

    in_child(client)
    assert any(ev.kind == "refused" for ev in server.recorded)


def test_server_not_found_and_server_identity(server, tmp_path):
    def client() -> None:
        with pytest.raises(broker.ServerNotFound):
            connect(str(tmp_path / "nobody.sock"))
        with pytest.raises(broker.ServerNotFound):
            connect("tcp://127.0.0.1:1")
        if server.transport in ("socket", "shm"):
            with pytest.raises(broker.PermissionDenied, match="runs as uid"):
                connect(server.address, server_uid=os.geteuid() + 1)
            with connect(server.address, server_uid=os.geteuid()) as s:
                assert s.send_receive(ECHO_LEN, b"x") == 1

    in_child(client)


def test_client_death_with_outstanding_requests_and_subsessions(server):
    r, w = os.pipe()

    def doomed() -> None:
        s = connect(server.address, slots=4)
        SubSession.open(s, OPEN_SHARED, b"a")
        SubSession.open(s, OPEN_SHARED, b"b")
        s.send(HOLD)
        s.send(HOLD)
        os.write(w, b"1")
        time.sleep(60)

    with Child(doomed) as kid:
        assert os.read(r, 1) == b"1"
        wait_for(lambda: len(Service.held) == 2)
        assert server.sessions()[0]["subsessions"] == 2 and server.sessions()[0]["outstanding"] == 2
        kid.kill()
    wait_for(lambda: not server.sessions() and len(server.counters) == 0)
    assert sorted(Counter.destroyed_names) == ["a", "b"]
    died = [ev for ev in server.recorded if ev.kind == "disconnected"]
    assert died and died[-1].reason == "died"
    for m in Service.held:  # completing for a dead client is harmless
        m.complete(0)
    in_child(lambda: connect(server.address).close())  # the server goes on
    os.close(r)
    os.close(w)


def raw_socket(server) -> socket.socket:
    if server.transport in ("socket", "shm"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(server.address)
    else:
        s = socket.create_connection(("127.0.0.1", server.bound[1][1]))
    s.settimeout(5)
    return s


HELLO = bytes.fromhex(
    "42524b31 01 01 0000 10000000 00000000 0000000000000000 0100 0000 00000000 0400 00 00 00000000".replace(" ", ""))


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b"GET / HTTP/1.1\r\n\r\n" + b"\0" * 16, "bad magic"),
        (HELLO[:5] + b"\x63" + HELLO[6:], "unknown frame type"),
        (HELLO[:8] + struct.pack("<I", 1 << 31) + HELLO[12:], "over the limit"),
        (HELLO + HELLO, "before the server answered"),
    ],
)
def test_bad_input_ends_only_the_offending_connection(server, payload, reason):
    good = Child(lambda: _long_client(server.address))
    try:
        bad = raw_socket(server)
        bad.sendall(payload)
        data = b""
        try:
            while True:
                chunk = bad.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        bad.close()
        wait_for(lambda: any(reason in ev.reason for ev in server.recorded if ev.kind == "disconnected"))
        assert good.join(60) == 0  # the other client kept working throughout
    finally:
        good.kill()


def _long_client(address: str) -> None:
    with connect(address) as s:
        for i in range(200):
            assert s.send_receive(ECHO_LEN, b"x" * i) == i
            time.sleep(0.001)


def test_truncated_frame_then_disconnect(server):
    bad = raw_socket(server)
    bad.sendall(HELLO[:30])
    bad.close()
    in_child(lambda: _long_client(server.address))


def test_a_request_before_hello_is_a_protocol_error(server):
    bad = raw_socket(server)
    bad.sendall(broker.protocol.frames.encode(broker.protocol.frames.Request(1, 5)))
    assert bad.recv(100) == b""  # the server closed the connection
    bad.close()
    wait_for(lambda: any("before HELLO" in ev.reason for ev in server.recorded))


@pytest.mark.stress  # hundreds of sessions
def test_many_sessions_from_a_few_processes(server):
    per, procs = 125, 4
    fds_before = len(os.listdir("/proc/self/fd"))

    def many() -> None:
        sessions = [connect(server.address) for _ in range(per)]
        for round_ in range(3):
            for i, s in enumerate(sessions):
                assert s.send_receive(ECHO_LEN, b"y" * (i % 50)) == i % 50
        os.write(w, b"1")
        os.read(r2, 1)
        for s in sessions:
            s.close()

    r, w = os.pipe()
    r2, w2 = os.pipe()
    kids = [Child(many) for _ in range(procs)]
    try:
        for _ in kids:
            assert os.read(r, 1) == b"1"
        assert len(server.sessions()) == per * procs
        os.write(w2, b"x" * procs)
        assert [k.join(120) for k in kids] == [0] * procs
    finally:
        for k in kids:
            k.kill()
    wait_for(lambda: not server.sessions())
    for fd in (r, w, r2, w2):
        os.close(fd)
    wait_for(lambda: len(os.listdir("/proc/self/fd")) <= fds_before)


def test_sharable_session_from_many_threads(server):
    def client() -> None:
        with connect(server.address, sharable=True) as s:
            errors = []

            def worker(k: int) -> None:
                try:
                    for i in range(200):
                        assert s.send_receive(ECHO_LEN, b"t" * ((k + i) % 30)) == (k + i) % 30
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)

            threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, errors
        with connect(server.address) as s:  # unsharable: another thread is refused
            caught = []
            t = threading.Thread(target=lambda: caught.append(_try(lambda: s.send_receive(ECHO_LEN, b""))))
            t.start()
            t.join()
            assert isinstance(caught[0], broker.StateError)

    in_child(client)


def _try(fn):
    try:
        return fn()
    except BaseException as e:  # noqa: BLE001
        return e


def test_asyncio_flavour(server):
    import asyncio

    def client() -> None:
        async def main() -> None:
            async with await broker.aconnect(server.address, slots=8) as s:
                results = await asyncio.gather(*(s.asend(ECHO_LEN, b"q" * i) for i in range(8)))
                assert results == list(range(8))
                assert await s.asend_receive(LATER) == 42

        asyncio.run(main())

    in_child(client)


def test_graceful_stop_cancels_in_flight_and_releases_everything(tmp_path):
    path = str(tmp_path / "stop.sock")
    srv = broker.Server(path, Service)
    srv.counters = broker.Container("counters")
    srv.start()
    Service.held = []
    r, w = os.pipe()

    def client() -> None:
        s = connect(path)
        SubSession.open(s, OPEN_SHARED, b"z")
        f = s.send(HOLD)
        os.write(w, b"1")
        with pytest.raises((broker.ServiceError, broker.ServerGone)):
            f.result(10)
        with pytest.raises(broker.ServerGone):
            s.send_receive(ECHO_LEN, b"")

    with Child(client) as kid:
        assert os.read(r, 1) == b"1"
        wait_for(lambda: len(Service.held) == 1)
        srv.stop()
        assert kid.join(30) == 0
    assert len(srv.counters) == 0 and not os.path.exists(path)
    with pytest.raises(broker.ServerNotFound):
        connect(path)
    os.close(r)
    os.close(w)


def test_a_live_server_keeps_its_address_and_a_stale_socket_is_taken_over(tmp_path):
    path = str(tmp_path / "one.sock")
    with broker.Server(path, Service):
        with pytest.raises(broker.BrokerError, match="another server is live"):
            broker.Server(path, Service).start()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # a socket file nobody listens on
    stale.close()
    srv = broker.Server(path, Service)
    srv.counters = broker.Container("c")
    with srv:
        with connect(path) as s:
            assert s.send_receive(ECHO_LEN, b"abc") == 3


class AsyncService(Session):
    async def service(self, m: broker.Message) -> None:
        import asyncio

        if m.code == ECHO_LEN:
            await asyncio.sleep(0.001)  # really asynchronous: other sessions are served meanwhile
            m.complete(len(m.read(0)))
        elif m.code == RAISE:
            await asyncio.sleep(0)
            raise KeyError("async failure")
        else:
            m.complete(broker.Status.NOT_SUPPORTED)


def test_server_inside_a_running_asyncio_loop(tmp_path):
    import asyncio

    path = str(tmp_path / "aio.sock")
    events: list[broker.SessionEvent] = []

    def client() -> None:
        sessions = [connect(path) for _ in range(3)]
        for i in range(50):
            for s in sessions:
                assert s.send_receive(ECHO_LEN, b"a" * i) == i
        with pytest.raises(broker.ServiceError, match="async failure"):
            sessions[0].send_receive(RAISE)
        for s in sessions:
            s.close()

    async def main() -> None:
        srv = broker.Server(path, AsyncService, on_event=events.append)
        task = asyncio.create_task(srv.serve_async())
        while not os.path.exists(path):
            await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        kids = [Child(client) for _ in range(2)]
        try:
            codes = [await loop.run_in_executor(None, k.join, 60) for k in kids]
        finally:
            for k in kids:
                k.kill()
        assert codes == [0, 0]
        srv.stop()
        await asyncio.wait_for(task, 10)
        assert not os.path.exists(path)

    asyncio.run(main())
    assert sum(ev.kind == "connected" for ev in events) == 6
    assert sum(ev.kind == "disconnected" and ev.reason == "closed" for ev in events) == 6


def test_async_service_in_a_threaded_server_is_refused_clearly(tmp_path):
    path = str(tmp_path / "t.sock")
    with broker.Server(path, AsyncService):
        def client() -> None:
            with connect(path) as s:
                with pytest.raises(broker.ServiceError, match="serve_async"):
                    s.send_receive(ECHO_LEN, b"x")

        in_child(client)


def test_same_user_policy_with_a_real_second_user(other_user):
    import shutil
    import tempfile

    uid, gid = other_user
    d = tempfile.mkdtemp(prefix="brk-policy-", dir="/tmp")  # reachable by the other user
    os.chmod(d, 0o777)
    path = os.path.join(d, "p.sock")
    srv = broker.Server(path, Service, policies=(Policy(range(ECHO_LEN, ECHO_LEN + 1), broker.SAME_USER),))
    srv.counters = broker.Container("c")
    try:
        _policy_run(srv, path, uid, gid)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _policy_run(srv, path: str, uid: int, gid: int) -> None:
    with srv:
        os.chmod(path, 0o666)  # let the other user connect at all: the policy is what refuses it

        def stranger() -> None:
            os.setgid(gid)
            os.setuid(uid)
            with connect(path) as s:
                with pytest.raises(broker.PermissionDenied):
                    s.send_receive(ECHO_LEN, b"x")
                assert s.send_receive(REVERSE, b"ab", Buffer(4)) == 0  # other codes are not guarded

        in_child(stranger)
        in_child(lambda: _same_user_ok(path))


def _same_user_ok(path: str) -> None:
    with connect(path) as s:
        assert s.send_receive(ECHO_LEN, b"xyz") == 3


def test_session_events_iterator(tmp_path):
    path = str(tmp_path / "ev.sock")
    srv = broker.Server(path, Service)
    srv.counters = broker.Container("c")
    it = srv.events(timeout=10)
    with srv:
        in_child(lambda: connect(path).close())
        first, logon, second, logoff = next(it), next(it), next(it), next(it)
    assert (first.kind, logon.kind, second.kind, logoff.kind) == ("connected", "logon", "disconnected", "logoff")
    assert first.peer.pid is not None and first.peer.uid == os.geteuid() and second.reason == "closed"


def test_a_busy_refusal_does_not_free_a_slot(server):
    """A client that ignores its slots: the refusal must not hand it an extra slot."""
    from shmbroker.protocol.frames import ClientConnection, Hello

    server.only_raw_clients = True
    sock = raw_socket(server)
    proto = ClientConnection()
    raw_hello(sock, proto, Hello((1, 0, 0), slots=1, socket_only=True))  # this test speaks on the socket
    statuses = {}
    for _ in range(4):  # one is held, the next three are refused
        rid, frame = proto.request(HOLD, asynchronous=True)
        sock.sendall(frame)
    while len(statuses) < 3:
        for ev in proto.receive(sock.recv(4096)):
            statuses[ev.request_id] = ev.status
    assert sorted(statuses.values()) == [broker.Status.SERVER_BUSY] * 3
    rid, frame = proto.request(HOLD, asynchronous=True)
    sock.sendall(frame)  # the slot is still taken: refused too, not held
    [ev] = proto.receive(sock.recv(4096))
    assert ev.status == broker.Status.SERVER_BUSY and len(Service.held) == 1
    sock.close()


# ---- call_many: pipelined calls, the same on every transport ----------------------------------


def test_call_many_gives_every_status_in_order_with_its_writes(server):
    def client() -> None:
        with connect(server.address, slots=8) as s:
            assert s.call_many(ECHO_LEN, []) == []
            sizes = [i % 300 for i in range(2000)]
            assert s.call_many(ECHO_LEN, [(b"z" * n,) for n in sizes]) == sizes
            outs = [Buffer(64) for _ in range(500)]
            words = [os.urandom(1 + i % 40) for i in range(500)]
            assert s.call_many(REVERSE, zip(words, outs)) == [0] * 500  # any iterable of sequences
            assert [o.value for o in outs] == [w[::-1] for w in words]
            # kinds C leaves to Python, mixed with those it takes: a bytearray, a list, a frame bigger
            # than a ring record (split), a big reply
            rw = bytearray(b"0123456789")
            big = os.urandom(3 << 20)
            big_out = Buffer(len(big))
            mixed = [(b"ab", Buffer(8)), (b"xy", rw), [b"cd", Buffer(8)], (big, big_out), (b"e", Buffer(8))]
            assert s.call_many(REVERSE, mixed) == [0] * 5
            assert mixed[0][1].value == b"ba" and rw == b"yx" and mixed[2][1].value == b"dc"
            assert big_out.value == big[::-1] and mixed[4][1].value == b"e"
            assert s.send_receive(ECHO_LEN, b"after") == 5  # the session goes on as before

    in_child(client)


def test_call_many_errors_take_their_places(server):
    def client() -> None:
        with connect(server.address, slots=4) as s:
            assert s.call_many(ECHO_LEN, [(b"abc",), (b"de",), (b"f",)]) == [3, 2, 1]
            got = s.call_many(RAISE, [()] * 3, return_exceptions=True)
            assert [type(e) for e in got] == [broker.ServiceError] * 3
            assert all("on purpose" in str(e) for e in got)
            with pytest.raises(broker.ServiceError, match="on purpose") as info:
                s.call_many(RAISE, [()] * 2)
            assert [type(e) for e in info.value.results] == [broker.ServiceError] * 2
            got = s.call_many(999, [()] * 2, return_exceptions=True)  # unknown code: NOT_SUPPORTED
            assert all(isinstance(e, broker.ServiceError) for e in got)
            assert s.send_receive(ECHO_LEN, b"still") == 5

    in_child(client)


def test_call_many_mixes_statuses_and_errors_of_one_function(server):
    """SUB_ADD on a sub-session handle that is valid for some calls and not for others: the
    failures (BadHandle) sit between the successes, and the rest are not lost."""
    def client() -> None:
        with connect(server.address, slots=8) as s:
            h = s.send_receive(OPEN_SHARED, b"many")
            sets = [(1,)] * 10
            with pytest.raises(broker.BadHandle) as info:
                s.call_many(SUB_ADD, sets, handle=h + 1)
            assert len(info.value.results) == 10
            assert s.call_many(SUB_ADD, sets, handle=h) == list(range(1, 11))

    in_child(client)


def test_call_many_refuses_a_bad_argument_after_the_calls_before_it(server):
    def client() -> None:
        with connect(server.address) as s:
            with pytest.raises(TypeError):
                s.call_many(ECHO_LEN, [(b"a",), (b"bb",), (object(),), (b"ccc",)])
            with pytest.raises(TypeError, match="at most four"):
                s.call_many(ECHO_LEN, [(1, 2, 3, 4, 5)])
            os.write(w, b"1")
            assert os.read(go_r, 1) == b"2"
            assert s.send_receive(ECHO_LEN, b"ok") == 2

    r, w = os.pipe()
    go_r, go_w = os.pipe()
    with Child(client) as kid:
        assert os.read(r, 1) == b"1"
        [row] = server.sessions()
        assert row["requests"] == 2  # the two before the bad one were served; none after it was sent
        os.write(go_w, b"2")
        assert kid.join(30) == 0
    for fd in (r, w, go_r, go_w):
        os.close(fd)


def test_call_many_times_out_and_cancels_what_is_in_flight(server):
    def client() -> None:
        with connect(server.address, slots=4) as s:
            t0 = time.monotonic()
            with pytest.raises(broker.Timeout, match="within 0.3 s"):
                s.call_many(HOLD, [()] * 3, timeout=0.3)
            assert time.monotonic() - t0 < 10
            assert s.send_receive(ECHO_LEN, b"later") == 5  # the session goes on
            assert s.call_many(ECHO_LEN, [(b"x",)] * 20) == [1] * 20  # and its slots came back

    in_child(client)


def test_call_many_with_every_slot_taken_goes_one_by_one(server):
    def client() -> None:
        with connect(server.address, slots=2) as s:
            held = [s.send(HOLD), s.send(HOLD)]
            os.write(w, b"1")
            assert s.call_many(ECHO_LEN, [(b"ab",)] * 5) == [2] * 5
            assert [f.result(10) for f in held] == [7, 7]

    r, w = os.pipe()
    with Child(client) as kid:
        assert os.read(r, 1) == b"1"
        wait_for(lambda: len(Service.held) == 2)
        for m in list(Service.held):
            m.complete(7)
        assert kid.join(30) == 0
    os.close(r)
    os.close(w)


def test_call_many_ends_with_the_session_on_a_panic(server):
    def client() -> None:
        with connect(server.address, slots=4) as s:
            with pytest.raises(broker.Panicked, match="asked for it"):
                s.call_many(PANIC, [()] * 6)
            with pytest.raises(broker.Panicked):
                s.send_receive(ECHO_LEN, b"x")

    in_child(client)


def test_call_many_on_a_sharable_session_from_two_threads(server):
    def client() -> None:
        with connect(server.address, slots=8, sharable=True) as s:
            got: dict[int, list[int]] = {}

            def run(k: int) -> None:
                got[k] = s.call_many(ECHO_LEN, [(b"q" * (k + j),) for j in range(300)])

            ts = [threading.Thread(target=run, args=(k,)) for k in (1, 2)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            assert got == {k: [k + j for j in range(300)] for k in (1, 2)}

    in_child(client)
