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

import broker
from broker import connect
from broker._protocol import HEADER, Hello, encode

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


STEPS = ["at once", "half a HELLO", "right after HELLO", "after WELCOME", "after the shared-memory offer"]


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.parametrize("step", STEPS)
def test_a_client_reset_at_any_step_of_the_handshake_ends_only_its_connection(served, transport, step):
    srv, addresses = served
    if step == "after the shared-memory offer" and transport == "tcp":
        pytest.skip("TCP never gets shared memory")
    hello = encode(Hello((1, 0, 0), 4))
    for _ in range(ROUNDS):
        s = _raw(addresses[transport])
        if step == "half a HELLO":
            s.sendall(hello[: len(hello) // 2])
        elif step != "at once":
            s.sendall(hello)
        if step in ("after WELCOME", "after the shared-memory offer"):
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
    from .helpers import Child

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
    res = subprocess.run([sys.executable, "-m", "broker.cli", "serve", "--address", str(path)],
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
