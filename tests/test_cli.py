"""The broker command line: real subprocesses, real sockets."""
from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

import shmbroker as broker
from shmbroker import connect

from tests.helpers import Child, wait_for


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmbroker.cli", *args], capture_output=True, text=True, timeout=60)


def test_version():
    p = run("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"broker {broker.__version__}"


def test_help_lists_the_commands():
    p = run("--help")
    assert p.returncode == 0 and all(c in p.stdout for c in ("serve", "ping", "bench"))


def test_unknown_command_is_an_error():
    p = run("frobnicate")
    assert p.returncode == 2 and "invalid choice" in p.stderr


# ---- shmbroker serve, shmbroker ping ------------------------------------------------------------

SUMMARY = re.compile(r"^(\d+) requests, (\d+) replies, (\d+) errors$", re.M)
TIMES = re.compile(r"^round trip min/p50/p99/max = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms$", re.M)


class Serving:
    """`shmbroker serve ARGS` in a subprocess, once it has said where it listens (`listening`)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "shmbroker.cli", "serve", *args], stdout=subprocess.PIPE,
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
                raise AssertionError(f"shmbroker serve did not start (exit {code}): {err}")
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
            raise AssertionError(f"shmbroker serve did not stop on signal {sig}: {err.decode()}") from None
        return self.proc.returncode, err.decode()


def ping(*args: str) -> tuple[subprocess.CompletedProcess, tuple[int, ...], tuple[float, ...]]:
    """`shmbroker ping ARGS`: the process, (requests, replies, errors), (min, p50, p99, max) if any."""
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
    # TCP clients prove the run's key "test" ($BROKER_KEYS, conftest.py), which may use the table "cli"
    srv = Serving("--address", path, "--tcp", "tcp://127.0.0.1:0", "--grant", "key:test table:cli")
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
    assert re.search(r"connected connection \d+ \(127\.0\.0\.1:\d+, key:test\): tcp socket; session rule: socket",
                     err), err
    assert "TCP clients prove one of 1 key: test" in err and "grant: key:test table:cli all" in err, err
    assert re.search(r"disconnected connection \d+ \(pid \d+, uid \d+\): died", err), err
    assert re.search(r"refused connection \d+ \(pid \d+, uid \d+\): version 2\.0\.0 is not supported", err), err
    assert "stopped by SIGTERM" in err and "Traceback" not in err


@pytest.mark.stress  # subprocesses: a second each
def test_keygen_makes_a_private_keys_file_and_adds_to_it(tmp_path):
    path = str(tmp_path / "conf" / "keys")
    for name in ("alice", "bob"):
        p = run("keygen", "--file", path, "--name", name)
        assert p.returncode == 0 and f"added key {name!r} to {path}" in p.stdout, p.stderr
    assert os.stat(path).st_mode & 0o777 == 0o600 and list(broker.load_keys(path)) == ["alice", "bob"]
    p = run("keygen", "--file", path, "--name", "alice")
    assert p.returncode == 1 and "already has a key named 'alice'" in p.stderr
    os.chmod(path, 0o644)
    p = run("keygen", "--file", path, "--name", "carol")
    assert p.returncode == 1 and "chmod 600" in p.stderr


def test_serve_on_tcp_without_keys_says_how_to_make_them(tmp_path):
    env = dict(os.environ, BROKER_KEYS=str(tmp_path / "no-keys"))
    p = subprocess.run([sys.executable, "-m", "shmbroker.cli", "serve", "--address", str(tmp_path / "s.sock"), "--tcp",
                        "tcp://127.0.0.1:0"], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 2, p.stderr
    assert "no keys file at" in p.stderr and "broker keygen" in p.stderr and "--insecure-tcp" in p.stderr
    p = run("serve", "--address", str(tmp_path / "s.sock"), "--grant", "key:x queue:y")
    assert p.returncode == 2 and "WHAT is service:NAME, table:NAME, topic:NAME or *" in p.stderr


@pytest.mark.stress  # subprocesses: a second each
def test_insecure_tcp_warns_and_its_clients_say_so_too(tmp_path):
    path = str(tmp_path / "plain.sock")
    srv = Serving("--address", path, "--tcp", "tcp://127.0.0.1:0", "--insecure-tcp")
    try:
        tcp = srv.listening[1]
        p = run("ping", tcp, "--count", "1")  # it holds the run's key: the server must prove it, and cannot
        assert p.returncode == 1 and "did not ask for key 'test'" in p.stderr, p.stderr
        p, counts, _ = ping(tcp, "--count", "2", "--interval", "0", "--insecure-tcp")
        assert p.returncode == 0 and counts == (2, 2, 0)
        p = run("stat", path, "--interval", "0")
        assert "tcp INSECURE (no keys)" in p.stdout, p.stdout
    finally:
        code, err = srv.stop(signal.SIGTERM)
    assert code == 0 and "WARNING: plain TCP on tcp://127.0.0.1:0 (--insecure-tcp)" in err, err


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
        assert p.returncode == 3 and "another server is live" in p.stderr, p.stderr  # its own exit code
        assert os.path.exists(path)  # the live server keeps its socket
    finally:
        code, _ = srv.stop(signal.SIGTERM)
    assert code == 0 and not os.path.exists(path)


def test_ping_without_a_server(tmp_path):
    p = run("ping", str(tmp_path / "nobody.sock"), "--count", "1")
    assert p.returncode == 1
    assert p.stderr.startswith(f"shmbroker ping: no server at {tmp_path / 'nobody.sock'}"), p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""


@pytest.mark.parametrize("args", [["--count", "0"], ["--size", "-1"], ["--interval", "x"]])
def test_ping_checks_its_arguments(args):
    p = run("ping", "broker", *args)
    assert p.returncode == 2 and "error: argument" in p.stderr


@pytest.mark.stress  # seconds: whole commands
def test_demo_runs_the_main_job():
    p = run("demo")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "put 1000 entries into the shared table 'orders'" in out
    assert "over TCP sees 1000 entries; order-999 = b'pending 999'" in out
    assert "session rule: socket: TCP never gets shared memory" in out
    assert "connected: unix shared memory; session rule: shared memory: same user" in out
    assert "connected: tcp socket; session rule: socket: TCP never gets shared memory" in out
    assert "unix shared memory" in out.split("shmbroker stat:")[1]  # the stat table's carrier column
    assert "64 B echo round trip, 5000 calls: p50" in out
    assert "offers the linked service 'upper'" in out
    assert "(shared memory) calls 'upper': b'LINKED'" in out and "(socket) calls 'upper': b'LINKED'" in out
    assert "published 200000 messages of 64 B to 'prices'" in out
    assert "(shared memory) reads the publisher's ring in place: 200000 messages" in out
    assert "(socket) gets it relayed by the broker: 200000 messages" in out and "lost 0" in out
    assert "4 sessions (* this one)" in out


# ---- shmbroker pub, shmbroker sub, and the topics in shmbroker stat ----------------------------------------


def _sub_proc(address: str, *args: str) -> subprocess.Popen:
    """`shmbroker sub` in a subprocess, once it says it subscribed."""
    proc = subprocess.Popen([sys.executable, "-m", "shmbroker.cli", "sub", *args, "--address", address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    line = b""
    deadline = time.monotonic() + 20
    while b"subscribed to" not in line:
        ready, _, _ = select.select([proc.stderr], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(proc.stderr.fileno(), 4096) if ready else b""
        if not chunk:
            proc.kill()
            raise AssertionError(f"shmbroker sub did not subscribe: {line!r}")
        line += chunk
    proc.first_err = line  # type: ignore[attr-defined]
    return proc


def test_pub_lines_from_stdin_reach_sub(tmp_path):
    address = str(tmp_path / "b.sock")
    with broker.Server(address) as srv:
        sub = _sub_proc(address, "news", "--count", "3")
        try:
            p = subprocess.run([sys.executable, "-m", "shmbroker.cli", "pub", "news", "--address", address],
                               input=b"one\ntwo\nthr\xffee\n", capture_output=True, timeout=60)
            assert p.returncode == 0 and b"3 messages to 'news'" in p.stderr
            out, err = sub.communicate(timeout=30)
            assert sub.returncode == 0
            assert out.decode().splitlines() == ["one", "two", "thr\\xffee"]
            assert "3 messages (12 bytes) from 'news'" in err.decode() and "lost 0" in err.decode()
        finally:
            sub.kill()
        assert srv.stats()["topics"] == []


@pytest.mark.stress  # seconds: whole commands
def test_pub_generates_a_load_and_sub_counts_it_with_its_losses(tmp_path):
    address = str(tmp_path / "b.sock")
    with broker.Server(address, tcp="tcp://127.0.0.1:0", grants=["key:test topic:load subscribe"]) as srv:
        tcp = f"tcp://127.0.0.1:{srv.bound[1][1]}"
        load = "Global\\load"  # a TCP subscriber and local ones: the Global namespace
        counting = _sub_proc(address, load, "--count", "2000", "--quiet")
        dropping = _sub_proc(tcp, load, "--quiet", "--policy", "drop", "--capacity", "10")
        try:
            st = run("stat", address)
            assert st.returncode == 0 and "load" in st.stdout and "drop" in st.stdout, st.stdout
            p = run("pub", load, "--address", address, "--count", "2000", "--size", "100")
            assert p.returncode == 0 and "2000 messages of 100 B to 'Global\\\\load'" in p.stderr, p.stderr
            out, err = counting.communicate(timeout=30)
            assert counting.returncode == 0 and out == b""
            assert "2000 messages (200000 bytes) from 'Global\\\\load'" in err.decode() and "lost 0" in err.decode()

            def accounted() -> bool:  # at the server: every message sent to the dropping one, or dropped
                return any(q["policy"] == "drop" and q["delivered"] + q["lost"] == 2000 and q["queued"] == 0
                           for t in srv.stats()["topics"] for q in t["subscribers"])
            deadline = time.monotonic() + 20
            while not accounted():
                assert time.monotonic() < deadline, srv.stats()["topics"]
                time.sleep(0.01)
            time.sleep(1.0)  # its last batch reaches it
        finally:
            counting.kill()
            dropping.send_signal(signal.SIGINT)  # it stops at SIGINT with its summary
            _, derr = dropping.communicate(timeout=30)
        summary = derr.decode().strip().splitlines()[-1]
        got, lost = re.search(r"(\d+) messages .* lost (\d+)", summary).groups()  # type: ignore[union-attr]
        assert int(got) + int(lost) == 2000, summary  # what it kept and what it lost, exactly
        assert dropping.returncode == 0


def test_pub_and_sub_say_what_is_wrong():
    p = run("pub", "x", "--address", "/nonexistent/dir/sock")
    assert p.returncode == 1 and p.stderr.startswith("shmbroker pub:")
    p = run("sub", "x", "--address", "/nonexistent/dir/sock")
    assert p.returncode == 1 and p.stderr.startswith("shmbroker sub:")
    p = run("sub", "x", "--policy", "sometimes")
    assert p.returncode == 2 and "invalid choice" in p.stderr


def test_serve_with_metrics_answers_prometheus(tmp_path):
    import socket
    import urllib.request

    with socket.socket() as probe:  # a free port (the server binds it right after)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    srv = Serving("--address", str(tmp_path / "b.sock"), "--metrics", str(port))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        assert 'broker_sessions{transport="shared memory"} 0' in text
    finally:
        code, err = srv.stop(signal.SIGTERM)
    assert code == 0 and f"metrics on http://127.0.0.1:{port}/metrics" in err


@pytest.mark.stress  # subprocesses: a second each
def test_stat_lists_the_linked_services_with_their_callers_and_pairs(tmp_path):
    address = str(tmp_path / "l.sock")
    with broker.Server(address) as srv, connect(address) as s, connect(address, socket_only=True) as t:
        offer = s.offer("upper", lambda call: 3)
        relayed = t.link("upper")
        fut = relayed.send(1)
        assert offer.serve_one(5) and fut.result(5) == 3
        direct = s.link("upper")  # same session: a private pair, once the provider has attached it
        offer.serve_one(0.5)
        wait_for(lambda: srv.stats()["services"][0]["direct"] == 1)
        st = run("stat", address)
        assert st.returncode == 0, st.stderr
        line = [ln for ln in st.stdout.splitlines() if ln.startswith("upper")]
        assert line and " 1 / 1 " in line[0], st.stdout  # one pair now, one made
        assert line[0].rstrip().endswith(", ".join(map(str, sorted([s.connection_id, t.connection_id])))), st.stdout
        for x in (direct, relayed, offer):
            x.close()


@pytest.mark.stress  # seconds: whole commands
def test_stat_gives_the_rates_between_two_looks(tmp_path):
    import threading

    address = str(tmp_path / "r.sock")
    with broker.Server(address) as srv, connect(address) as s:
        pub = s.publisher("ticks")
        sub = s.subscriber("ticks", policy="drop", capacity=10)  # relayed, and it never reads: drops
        stop = threading.Event()

        def ticking() -> None:
            while not stop.is_set():
                pub.publish(b"t")
                time.sleep(0.001)

        t = threading.Thread(target=ticking)
        t.start()
        try:
            st = run("stat", address, "--interval", "1")
        finally:
            stop.set()
            t.join()
        assert st.returncode == 0, st.stderr
        [line] = [ln for ln in st.stdout.splitlines() if ln.startswith("ticks")]
        assert line.split()[1].startswith("Local(uid=") and int(line.split()[3]) > 0, line  # messages came
        one_look = run("stat", address, "--interval", "0")  # between the two looks
        [line] = [ln for ln in one_look.stdout.splitlines() if ln.startswith("ticks")]
        assert line.split()[3] == "-"
        sub.close()
        pub.close()


@pytest.mark.stress  # seconds: whole commands
def test_serve_takes_the_bounds_of_what_a_client_may_hold(tmp_path):
    address = str(tmp_path / "b.sock")
    srv = Serving("--address", address, "--max-queued", "1048576", "--max-queued-per-user", "4194304",
                  "--stall-timeout", "7.5", "--handshake-timeout", "2")
    try:
        with broker.connect(address) as s:
            bounds = s.server_stats()["bounds"]
        assert (bounds["max_queued"], bounds["max_queued_per_user"], bounds["stall_timeout"],
                bounds["handshake_timeout"]) == (1 << 20, 4 << 20, 7.5, 2.0), bounds
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        silent.settimeout(30)
        silent.connect(address)
        try:
            assert silent.recv(16) == b""  # no HELLO within 2 s: closed
        finally:
            silent.close()
    finally:
        code, err = srv.stop(signal.SIGTERM)
    assert code == 0, err
    p = run("serve", "--address", address, "--max-queued", "0")
    assert p.returncode == 2 and "--max-queued: 0 is below 1" in p.stderr, p.stderr



@pytest.mark.stress  # seconds: whole commands
def test_serve_takes_its_log_level_spin_busy_poll_and_metrics_host(tmp_path):
    path = str(tmp_path / "o.sock")
    srv = Serving("--address", path, "--log-level", "INFO", "--spin-us", "0", "--busy-poll", "--metrics", "0",
                  "--metrics-host", "127.0.0.1")
    try:
        p = run("ping", "--address", path, "--count", "3", "--interval", "0")  # --address, as serve takes it
        assert p.returncode == 0, p.stderr
        both = run("stat", path, "--address", str(tmp_path / "other.sock"))
        assert both.returncode == 2 and "two addresses" in both.stderr
    finally:
        code, err = srv.stop(signal.SIGTERM)
    assert code == 0, err
    assert re.search(r"broker\.server INFO: session connection \d+ .*: socket|shared memory", err), err
    assert "metrics on http://127.0.0.1:" in err


def test_a_services_exception_is_logged_with_its_traceback(tmp_path, caplog):
    class Raising(broker.Session):
        def service(self, m: broker.Message) -> None:
            raise KeyError("deep inside")

    path = str(tmp_path / "r.sock")
    with caplog.at_level("WARNING", logger="shmbroker.server"), broker.Server(path, Raising), \
            broker.connect(path) as s:
        with pytest.raises(broker.ServiceError, match="KeyError"):
            s.send_receive(1)
    [rec] = [r for r in caplog.records if "raised" in r.getMessage()]
    assert rec.exc_info is not None and rec.exc_info[0] is KeyError


def test_zmq_style_addresses(tmp_path):
    ipc = f"ipc://{tmp_path / 'z.sock'}"
    with broker.Server(ipc, broker.ServicesSession, tcp="tcp://*:0", insecure_tcp=True) as srv:
        host, port = srv.bound[1][:2]
        assert host == "0.0.0.0"  # every interface, as pyzmq's tcp://*
        with broker.connect(ipc) as a, broker.connect(f"tcp://*:{port}", key=False) as b:  # ...reached here
            assert broker.EchoClient(a).echo(b"i") == b"i" and b.transport == "socket"
    with pytest.raises(ValueError, match="does not resolve"):
        broker.Server(str(tmp_path / "n.sock"), tcp="tcp://no-such-host.invalid:0", insecure_tcp=True).start()
    assert not os.path.exists(tmp_path / "n.sock") and not os.path.exists(tmp_path / "n.sock.lock")
