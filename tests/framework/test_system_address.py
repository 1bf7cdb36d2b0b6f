"""A system-wide address every local user can reach (issue 16, item 3): Server(system=True) and
`shmbroker serve --system` listen at $BROKER_SYSTEM_DIR/NAME.sock (/run/broker), a bare name finds it
for any user, mode= and group= decide who may connect, policies and grants what each may do; and
`shmbroker serve` takes the listening socket systemd passes (socket activation)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile

import pytest

import shmbroker as broker
from shmbroker import EchoClient, ServicesSession, connect

from tests.helpers import Child
from tests.served import ROOT


@pytest.fixture
def system_dir(monkeypatch):
    parent = tempfile.mkdtemp(prefix="brk-sys-", dir="/tmp")
    os.chmod(parent, 0o755)
    d = os.path.join(parent, "run-broker")  # made by the server, as /run/broker would be
    monkeypatch.setenv("BROKER_SYSTEM_DIR", d)
    yield d
    shutil.rmtree(parent, ignore_errors=True)


def _as_other(uid: int, gid: int, what):
    """what() as the other user, in a child; its outcome ("ok" or the error's class) through a pipe."""
    r, w = os.pipe()

    def child() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        os.environ.pop("XDG_RUNTIME_DIR", None)
        try:
            what()
            os.write(w, b"ok")
        except broker.BrokerError as e:
            os.write(w, f"{type(e).__name__}: {e}".encode()[:4000])

    with Child(child) as kid:
        said = os.read(r, 4096).decode()
        assert kid.join(30) == 0
    os.close(r)
    os.close(w)
    return said


def test_another_user_reaches_a_system_server_by_its_name(system_dir, other_user):
    uid, gid = other_user
    with broker.Server("sysbroker", ServicesSession, system=True) as srv:
        path = os.path.join(system_dir, "sysbroker.sock")
        assert srv.bound == [path]
        st = os.stat(system_dir)
        assert stat.S_IMODE(st.st_mode) == 0o755 and stat.S_IMODE(os.stat(path).st_mode) == 0o666

        def echo_and_publish() -> None:
            with connect("sysbroker") as s:  # a bare name: not in its runtime directory, so the system's
                assert s.address == "sysbroker"
                assert EchoClient(s).echo(b"hi") == b"hi"
                try:
                    s.publisher("Global\\news")
                except broker.PermissionDenied:
                    return  # no grant: refused, as the policy says
                raise AssertionError("published without a grant")

        assert _as_other(uid, gid, echo_and_publish) == "ok"
        with connect("sysbroker") as mine:  # root too (its own runtime directory has no such server)
            assert EchoClient(mine).echo(b"x") == b"x"
    assert not os.path.exists(path)


def test_a_users_own_server_of_the_same_name_comes_first(system_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    with broker.Server("both", system=True) as system, broker.Server("both") as own:
        with connect("both") as s:
            assert s.server_pid == os.getpid()
            assert [x["login_session"] for x in own.sessions()] and not system.sessions()


def test_mode_and_group_decide_who_may_connect(system_dir, other_user):
    uid, gid = other_user

    def try_connect() -> None:
        with connect("guarded") as s:
            EchoClient(s).echo(b"x")

    with broker.Server("guarded", ServicesSession, system=True, mode=0o660, group=0):
        said = _as_other(uid, gid, try_connect)
        assert said.startswith("PermissionDenied") or said.startswith("ServerNotFound"), said
    with broker.Server("guarded", ServicesSession, system=True, mode=0o660, group=gid):
        assert stat.S_IMODE(os.stat(os.path.join(system_dir, "guarded.sock")).st_mode) == 0o660
        assert os.stat(os.path.join(system_dir, "guarded.sock")).st_gid == gid
        assert _as_other(uid, gid, try_connect) == "ok"


def test_system_takes_a_name_and_mode_takes_a_unix_address(tmp_path):
    with pytest.raises(ValueError, match="takes a server name"):
        broker.Server(str(tmp_path / "x.sock"), system=True)
    with pytest.raises(ValueError, match="for a Unix socket address"):
        broker.Server("tcp://127.0.0.1:0", mode=0o600)
    with pytest.raises(ValueError, match="no group named"):
        broker.Server("x", group="no-such-group-here")


def test_broker_serve_takes_the_socket_systemd_passes(tmp_path):
    """Socket activation as systemd does it: the socket bound and listening at fd 3, LISTEN_PID our pid."""
    path = str(tmp_path / "activated.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    launcher = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_PID'] = str(os.getpid()); "
                "os.environ['LISTEN_FDS'] = '1'; "
                "os.execv(sys.executable, [sys.executable, '-m', 'shmbroker', 'serve', '--address', 'ignored'])")
    proc = subprocess.Popen([sys.executable, "-c", launcher, str(listener.fileno())], cwd=ROOT,
                            pass_fds=[listener.fileno()], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    listener.close()  # systemd keeps its copy; here the server's is the only one
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == f"listening on {path}", (line, proc.stderr.read() if proc.poll() is not None else "")
        with connect(path) as s:
            assert EchoClient(s).echo(b"activated") == b"activated"
            assert s.server_pid == os.getpid()  # the kernel names who called listen(): systemd, here us
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert os.path.exists(path)  # systemd's socket: not the server's to remove
    assert not os.path.exists(path + ".lock")


def test_broker_serve_system_mode_and_group(system_dir, other_user):
    uid, gid = other_user
    proc = subprocess.Popen([sys.executable, "-m", "shmbroker", "serve", "--system", "--address", "cli-sys",
                             "--mode", "660", "--group", str(gid)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    path = os.path.join(system_dir, "cli-sys.sock")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"listening on {path}"
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == gid
        with connect("cli-sys") as s:
            assert EchoClient(s).echo(b"y") == b"y"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert not os.path.exists(path)
    bad = subprocess.run([sys.executable, "-m", "shmbroker", "serve", "--mode", "999"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not an octal mode" in bad.stderr
