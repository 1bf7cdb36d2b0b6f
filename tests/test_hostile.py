"""Hostile clients: whatever one does to its own connection, the server keeps serving everyone else.

Real sockets, a real server (a thread of this process), real resets (SO_LINGER 0: the kernel sends
RST, as when a client is killed mid-handshake). Each case is repeated, because the server's
failure used to depend on where in its work the reset landed.
"""
from __future__ import annotations

import array
import os
import socket
import struct

import pytest

import shmbroker as broker
from shmbroker import connect
from shmbroker.protocol.frames import HEADER, Hello, encode

from tests.helpers import raw_hello

ROUNDS = 20
ECHO = 1


class Echo(broker.Session):
    def service(self, m: broker.Message) -> None:
        m.complete(len(m.read(0)))


@pytest.fixture
def served(tmp_path):
    path = str(tmp_path / "hostile.sock")
    srv = broker.Server(path, Echo, tcp="tcp://127.0.0.1:0")
    srv.start()
    try:
        yield srv, {"unix": path, "tcp": f"tcp://127.0.0.1:{srv.bound[1][1]}"}
    finally:
        srv.stop()


def _raw(address: str) -> socket.socket:
    if address.startswith("tcp://"):
        host, port = address[6:].rsplit(":", 1)
        return socket.create_connection((host, int(port)), timeout=10)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(address)
    return s


def _reset(s: socket.socket) -> None:
    """Close with RST instead of FIN."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def _read_frame(s: socket.socket) -> bytes:
    """One whole frame (its header gives the body's length), closing any descriptor that came with it."""
    data = b""
    while len(data) < HEADER.size or len(data) < HEADER.size + HEADER.unpack_from(data)[4]:
        want = HEADER.size - len(data) if len(data) < HEADER.size else HEADER.size + HEADER.unpack_from(data)[4] - len(data)
        msg, anc, _, _ = s.recvmsg(want, socket.CMSG_SPACE(16))
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                for fd in array.array("i", payload[: len(payload) - len(payload) % 4]):
                    os.close(fd)
        if not msg:
            break
        data += msg
    return data


STEPS = ["at once", "half a HELLO", "right after HELLO", "after the CHALLENGE", "after the AUTH", "after WELCOME",
         "after the shared-memory offer"]


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.parametrize("step", STEPS)
def test_a_client_reset_at_any_step_of_the_handshake_ends_only_its_connection(served, transport, step):
    from shmbroker.transport import keys as _keys
    from shmbroker.protocol.frames import Auth, ClientConnection, decode_body

    srv, addresses = served
    if step == "after the shared-memory offer" and transport == "tcp":
        pytest.skip("TCP never gets shared memory")
    if step in ("after the CHALLENGE", "after the AUTH") and transport == "unix":
        pytest.skip("a Unix peer is known to the kernel: no key to prove")
    hello = encode(Hello((1, 0, 0), 4))
    key = _keys.client_key(None)  # the run's (conftest.py): TCP clients prove it
    for _ in range(ROUNDS):
        s = _raw(addresses[transport])
        if step == "half a HELLO":
            s.sendall(hello[: len(hello) // 2])
        elif step == "after WELCOME" and transport == "tcp":
            raw_hello(s, ClientConnection(), Hello((1, 0, 0), 4))  # the key proven both ways, then WELCOME
        elif step != "at once":
            s.sendall(hello)
        if step in ("after the CHALLENGE", "after the AUTH"):
            frame = _read_frame(s)
            challenge = decode_body(frame[5], 0, 0, frame[HEADER.size:])
            if step == "after the AUTH":  # a good proof, and gone before the server's AUTH_OK
                nonce = os.urandom(32)
                s.sendall(encode(Auth(nonce, _keys.client_proof(key, hello[HEADER.size:], challenge.nonce, nonce),
                                      key.name)))
        if step == "after WELCOME" and transport == "unix" or step == "after the shared-memory offer":
            assert _read_frame(s), "no WELCOME"
        if step == "after the shared-memory offer":
            assert _read_frame(s), "no SHM_OFFER"
        _reset(s)
    # the server lives and serves: a real client of each kind, and the threads are still there
    for address in addresses.values():
        with connect(address, timeout=10) as c:
            assert c.send_receive(ECHO, b"alive") == 5
    assert srv._thread is not None and srv._thread.is_alive()


# ---- the server's own address ------------------------------------------------------------------


def _stale_socket(path: str) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # the name stays, nobody listens: what a killed server leaves


@pytest.mark.parametrize("what", ["regular file", "symlink to a file", "symlink to a stale socket", "directory"])
def test_the_server_never_removes_what_it_did_not_make(tmp_path, what):
    path = str(tmp_path / "addr")
    target = tmp_path / "target"
    if what == "regular file":
        with open(path, "w") as f:
            f.write("precious")
    elif what == "directory":
        os.mkdir(path)
    else:
        if what.endswith("a file"):
            target.write_text("precious")
        else:
            _stale_socket(str(target))
        os.symlink(target, path)
    with pytest.raises(broker.BrokerError, match="not removed") as e:
        broker.Server(path, Echo).start()
    assert path in str(e.value)
    assert os.path.lexists(path)
    if what == "regular file":
        assert open(path).read() == "precious"
    if what.startswith("symlink"):
        assert os.path.islink(path) and os.path.lexists(target)


def test_a_stale_socket_of_ours_is_replaced_and_a_live_one_refused(tmp_path):
    path = str(tmp_path / "addr")
    _stale_socket(path)
    with broker.Server(path, Echo) as first:  # started by `with`
        with connect(path, timeout=10) as c:
            assert c.send_receive(ECHO, b"x") == 1
        with pytest.raises(broker.BrokerError, match="another server is live"):
            broker.Server(path, Echo).start()
        with connect(path, timeout=10) as c:  # the live one was left alone
            assert c.send_receive(ECHO, b"yy") == 2
    assert not os.path.lexists(path)  # its own socket: removed when it stopped


def test_another_users_stale_socket_is_not_removed(other_user):
    from tests.helpers import Child

    import shutil
    import tempfile

    uid, gid = other_user
    d = tempfile.mkdtemp(prefix="brk-hostile-", dir="/tmp")  # reachable by the other user
    try:
        os.chmod(d, 0o777)
        path = os.path.join(d, "addr")

        def make() -> None:
            os.setgid(gid)
            os.setuid(uid)
            _stale_socket(path)

        assert Child(make).join(30) == 0
        assert os.lstat(path).st_uid == uid
        with pytest.raises(broker.BrokerError, match=f"uid {uid}, not ours"):
            broker.Server(path, Echo).start()
        assert os.path.lexists(path)
    finally:
        shutil.rmtree(d)


def test_a_server_that_stops_leaves_a_socket_someone_else_put_there(tmp_path):
    path = str(tmp_path / "addr")
    srv = broker.Server(path, Echo)
    srv.start()
    try:
        os.unlink(path)
        _stale_socket(path)  # another program's, made while we ran
    finally:
        srv.stop()
    assert os.path.lexists(path)


def test_broker_serve_refuses_an_address_that_is_a_file(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "notes.txt"
    path.write_text("precious")
    res = subprocess.run([sys.executable, "-m", "shmbroker.cli", "serve", "--address", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and f"{path} exists and is a regular file, not a socket: not removed" in res.stderr, \
        res.stderr
    assert path.read_text() == "precious"


def test_no_deferred_callback_captures_an_exception_variable():
    """`except E as e: later(lambda: ... e ...)` fails when the callback runs: Python unbinds `e` at
    the end of the block (NameError: cannot access free variable 'e'). In the server loop that
    killed the server the first time a client reset during its shared-memory offer."""
    import ast
    import pathlib

    found = []
    for path in sorted(pathlib.Path(broker.__file__).parent.glob("*.py")):
        for handler in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(handler, ast.ExceptHandler) and handler.name):
                continue
            for fn in ast.walk(handler):
                if isinstance(fn, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef)):
                    if any(isinstance(n, ast.Name) and n.id == handler.name for n in ast.walk(fn)):
                        found.append(f"{path.name}:{fn.lineno}")
    assert not found, f"closures over an except block's exception variable: {found}"


# ---- truncating shared memory (issue 13, item 2) ---------------------------------------------------


def _sealed_spans(pid: int | str, kind: str) -> list[str]:
    from shmbroker.core import names as _names

    with open(f"/proc/{pid}/maps") as f:
        return [line.split()[0] for line in f if f"/memfd:{_names.PREFIX}." in line and f".{kind}." in line]


def _truncate_all(pid: int | str, kind: str) -> int:
    """ftruncate every `kind` segment `pid` maps, through /proc/PID/map_files/; how many were refused
    (EPERM). AssertionError if one went through."""
    refused = 0
    for span in _sealed_spans(pid, kind):
        fd = os.open(f"/proc/{pid}/map_files/{span}", os.O_RDWR)
        try:
            os.ftruncate(fd, 0)
        except PermissionError:
            refused += 1
        else:
            raise AssertionError(f"ftruncate of /proc/{pid}/map_files/{span} ({kind}) went through")
        finally:
            os.close(fd)
    return refused


def test_no_client_can_truncate_its_session_segment(tmp_path):
    """The SIGBUS attack: a same-user client ftruncate()s its session's segment, through the
    descriptor the offer brought, through its own /proc/self/map_files/ or the server's. Every route
    is refused (EPERM: the memfd is sealed against shrinking), and the server, in its own process, goes
    on serving the attacker and everyone else. Before the seals, the server died of SIGBUS."""
    import fcntl
    import sys

    from tests.bounds_server import ECHO as SERVED_ECHO
    from tests.helpers import Child
    from tests.served import serve

    with serve(str(tmp_path), tcp=False) as srv:
        def attacker() -> None:
            # 1. the descriptor as it arrives with the offer (a raw client)
            s = _raw(srv.unix)
            s.sendall(encode(Hello((1, 0, 0), 4)))
            fds: list[int] = []
            got = b""
            while len(fds) < 3 and len(got) < 1 << 16:
                msg, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(16))
                assert msg, "no SHM_OFFER"
                got += msg
                for level, kind, payload in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds += array.array("i", payload[: len(payload) - len(payload) % 4])
            assert len(fds) == 3, fds  # ring 0's doorbell, the segment, ring 1's bell
            assert fcntl.fcntl(fds[1], fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK
            for size in (0, 4096):
                try:
                    os.ftruncate(fds[1], size)
                except PermissionError:
                    pass
                else:
                    raise AssertionError(f"ftruncate({size}) of the offered segment went through")
            for fd in fds:
                os.close(fd)
            s.close()
            # 2. a session that took the offer: its mappings, reopened through map_files, ours and the server's
            with connect(srv.unix, timeout=30) as c:
                assert c.transport == "shared memory"
                assert c.send_receive(SERVED_ECHO, b"before") == 6
                refused = _truncate_all("self", "session") + _truncate_all(srv.pid, "session")
                assert refused >= 4, refused  # two mappings on each side
                assert c.send_receive(SERVED_ECHO, b"after!!") == 7
            sys.stdout.flush()

        assert Child(attacker).join(60) == 0
        assert srv.proc.poll() is None, "the server died"
        with connect(srv.unix, timeout=30) as c:
            assert c.send_receive(SERVED_ECHO, b"alive") == 5


def test_no_peer_can_truncate_a_publisher_ring_or_a_link_pair(tmp_path):
    """The same attack on the other segments the broker makes: a publisher's ring (mapped by the
    publisher, a direct subscriber and the server's relay) and a linked service's private pair
    (mapped by provider and caller). All sealed: every truncation is refused, everyone goes on."""
    import sys

    from tests.helpers import Child
    from tests.served import serve

    with serve(str(tmp_path), tcp=False) as srv:
        ready_r, ready_w = os.pipe()

        def provider() -> None:
            with connect(srv.unix, timeout=30) as s, s.offer("upper", lambda call: 7) as offer:
                os.write(ready_w, b"p")
                offer.serve_forever()

        prov = Child(provider)
        try:
            assert os.read(ready_r, 1) == b"p"

            def attacker() -> None:
                with connect(srv.unix, timeout=30) as c, connect(srv.unix, timeout=30) as d:
                    pub = c.publisher("t")
                    relayed = d.subscriber("t", policy="drop")  # the server relays it: it maps the ring too
                    direct = c.subscriber("t")
                    pub.publish(b"one")
                    assert direct.receive(timeout=30) == b"one" and relayed.receive(timeout=30) == b"one"
                    with c.link("upper") as link:
                        for _ in range(20):  # the private pair comes after the first calls
                            assert link.send_receive(1) == 7
                        refused = {k: _truncate_all("self", k) + _truncate_all(srv.pid, k) + _truncate_all(prov.pid, k)
                                   for k in ("topic", "link")}
                        assert refused["topic"] >= 2 and refused["link"] >= 2, refused
                        assert link.send_receive(1) == 7
                    pub.publish(b"two")
                    assert direct.receive(timeout=30) == b"two" and relayed.receive(timeout=30) == b"two"
                sys.stdout.flush()

            assert Child(attacker).join(90) == 0
            assert srv.proc.poll() is None, "the server died"
        finally:
            prov.kill()
            os.close(ready_r)
            os.close(ready_w)
