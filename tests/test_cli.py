"""The broker command line: real subprocesses, real sockets."""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest

import broker

from .helpers import Child


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "broker.cli", *args], capture_output=True, text=True, timeout=60)


def test_version():
    p = run("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"broker {broker.__version__}"


def test_help_lists_the_commands():
    p = run("--help")
    assert p.returncode == 0 and all(c in p.stdout for c in ("serve", "ping", "bench"))


def test_unknown_command_is_an_error():
    p = run("frobnicate")
    assert p.returncode == 2 and "invalid choice" in p.stderr


# ---- broker serve, broker ping ------------------------------------------------------------

SUMMARY = re.compile(r"^(\d+) requests, (\d+) replies, (\d+) errors$", re.M)
TIMES = re.compile(r"^round trip min/p50/p99/max = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms$", re.M)


class Serving:
    """`broker serve ARGS` in a subprocess, once it has said where it listens (`listening`)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "broker.cli", "serve", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, bufsize=0)
        want = 2 if "--tcp" in args else 1
        out = b""
        deadline = time.monotonic() + 20
        while out.count(b"\n") < want:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            chunk = os.read(self.proc.stdout.fileno(), 4096) if ready else b""
            if not chunk:  # it ended, or it took too long
                code, err = self.stop(signal.SIGKILL)
                raise AssertionError(f"broker serve did not start (exit {code}): {err}")
            out += chunk
        self.listening = [line.split()[-1] for line in out.decode().splitlines() if line.startswith("listening on ")]

    def stop(self, sig: int) -> tuple[int, str]:
        """Send `sig` and wait: its exit code and its stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"broker serve did not stop on signal {sig}: {err.decode()}") from None
        return self.proc.returncode, err.decode()


def ping(*args: str) -> tuple[subprocess.CompletedProcess, tuple[int, ...], tuple[float, ...]]:
    """`broker ping ARGS`: the process, (requests, replies, errors), (min, p50, p99, max) if any."""
    p = run("ping", *args)
    counts, times = SUMMARY.search(p.stdout), TIMES.search(p.stdout)
    assert counts, p.stdout + p.stderr
    return p, tuple(map(int, counts.groups())), tuple(map(float, times.groups())) if times else ()


def _use_the_store(address: str) -> None:
    with broker.connect(address) as s, broker.KeyValueClient(s).open("cli") as t:
        assert t.put(b"key", b"value") is True
        assert t.get(b"key") == b"value" and t.count() == 1
        assert t.keys() == [b"key"] and t.delete(b"key") is True
        with pytest.raises(broker.NotFound):
            t.get(b"key")
        assert broker.EchoClient(s).echo(b"x" * 1000) == b"x" * 1000


def test_serve_ping_and_stop_on_sigterm(tmp_path):
    path = str(tmp_path / "cli.sock")
    srv = Serving("--address", path, "--tcp", "tcp://127.0.0.1:0")
    r, w = os.pipe()

    def doomed() -> None:
        broker.connect(path)
        os.write(w, b"1")
        time.sleep(60)  # killed

    try:
        assert srv.listening[0] == path and srv.listening[1].startswith("tcp://127.0.0.1:")
        for address in srv.listening:
            p, counts, (lo, p50, p99, hi) = ping(address, "--count", "5", "--size", "1000", "--interval", "0")
            assert p.returncode == 0 and counts == (5, 5, 0), p.stdout
            assert 0 < lo <= p50 <= p99 <= hi
            assert p.stdout.count(f"1000 bytes from {address}: seq=") == 5
            assert Child(lambda: _use_the_store(address)).join(30) == 0
        with Child(doomed) as kid:
            assert os.read(r, 1) == b"1"
            kid.kill()  # kill -9: the log says it died
        with pytest.raises(broker.VersionRefused):
            broker.connect(path, version=(2, 0, 0))
    finally:
        code, err = srv.stop(signal.SIGTERM)
        os.close(r)
        os.close(w)
    assert code == 0, err
    assert not os.path.exists(path)
    assert re.search(r"connected connection 1 \(pid \d+, uid \d+\): unix shared memory; session rule: shared memory", err), err
    assert re.search(r"disconnected connection 1 \(pid \d+, uid \d+\): closed", err), err
    assert re.search(r"connected connection \d+ \(127\.0\.0\.1:\d+\): tcp socket; session rule: socket", err), err
    assert re.search(r"disconnected connection \d+ \(pid \d+, uid \d+\): died", err), err
    assert re.search(r"refused connection \d+ \(pid \d+, uid \d+\): version 2\.0\.0 is not supported", err), err
    assert "stopped by SIGTERM" in err and "Traceback" not in err


def test_serve_on_the_default_name_stops_on_sigint(tmp_path):
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    srv = Serving(env=env)
    path = str(tmp_path / "broker" / "broker.sock")
    s = None
    try:
        assert srv.listening == [path]
        assert Child(lambda: _use_the_store(path)).join(30) == 0
        s = broker.connect(path)  # in this process, still connected when the server stops
        assert broker.EchoClient(s).length(b"abc") == 3
    finally:
        code, err = srv.stop(signal.SIGINT)
    with pytest.raises(broker.ServerGone):
        broker.EchoClient(s).echo(b"gone")
    s.close()
    assert code == 0, err
    assert not os.path.exists(path)
    assert re.search(r"disconnected connection 2 .*: server stopped", err), err
    assert "stopped by SIGINT" in err and "Traceback" not in err


def test_serve_refuses_an_address_a_live_server_holds(tmp_path):
    path = str(tmp_path / "taken.sock")
    srv = Serving("--address", path)
    try:
        p = run("serve", "--address", path)
        assert p.returncode == 1 and "another server is live" in p.stderr, p.stderr
        assert os.path.exists(path)  # the live server keeps its socket
    finally:
        code, _ = srv.stop(signal.SIGTERM)
    assert code == 0 and not os.path.exists(path)


def test_ping_without_a_server(tmp_path):
    p = run("ping", str(tmp_path / "nobody.sock"), "--count", "1")
    assert p.returncode == 1
    assert p.stderr.startswith(f"broker ping: no server at {tmp_path / 'nobody.sock'}"), p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""


@pytest.mark.parametrize("args", [["--count", "0"], ["--size", "-1"], ["--interval", "x"]])
def test_ping_checks_its_arguments(args):
    p = run("ping", "broker", *args)
    assert p.returncode == 2 and "error: argument" in p.stderr


def test_demo_runs_the_main_job():
    p = run("demo")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "put 1000 entries into the shared table 'orders'" in out
    assert "over TCP sees 1000 entries; order-999 = b'pending 999'" in out
    assert "session rule: socket: TCP never gets shared memory" in out
    assert "connected: unix shared memory; session rule: shared memory: same user" in out
    assert "connected: tcp socket; session rule: socket: TCP never gets shared memory" in out
    assert "unix shared memory" in out.split("broker stat:")[1]  # the stat table's carrier column
    assert "64 B echo round trip, 5000 calls: p50" in out
    assert "4 sessions (* this one)" in out
