"""The session rule as the server applies it: every session's decision, with its
reason, in the connected event, the log and the statistics; the policy from the
argument, the environment and `shmbroker serve --shm-policy`.

Clients are real processes (forked children), one of them a real second user.
The rule itself (every branch, namespaces, audit sessions, reused pids) is
tested in test_identity.py; here, that the server asks it the right question.
A session the rule allows travels on its rings (test_shm_sessions.py); the
others on their sockets.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

import shmbroker as broker
from shmbroker import connect

from tests.helpers import Child


class Echo(broker.Session):
    def service(self, m: broker.Message) -> None:
        m.complete(len(m.read(0)))


def _serve(tmp_path, **kw):
    events: list[broker.SessionEvent] = []
    srv = broker.Server(str(tmp_path / "rule.sock"), Echo, tcp="tcp://127.0.0.1:0", on_event=events.append, **kw)
    srv.start()
    return srv, events


def _client(address: str, **kw) -> None:
    with connect(address, **kw) as s:
        assert s.send_receive(1, b"four") == 4


def _run(fn) -> None:
    assert Child(fn).join(60) == 0, "the client process failed (traceback above)"


def _connected(events: list[broker.SessionEvent]) -> list[broker.SessionEvent]:
    return [e for e in events if e.kind == "connected"]


def test_same_user_and_session_may_share_memory(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="shmbroker.server")
    srv, events = _serve(tmp_path)
    try:
        with connect(str(tmp_path / "rule.sock")) as s:  # this process: same user, same everything
            assert s.send_receive(1, b"ab") == 2
            [row] = srv.sessions()
            assert row["shm_allowed"] is True and row["transport"] == "shared memory" and s.transport == "shared memory"
            assert row["rule"].startswith("shared memory: same user") and "(policy strict)" in row["rule"]
        [ev] = _connected(events)
        assert isinstance(ev.decision, broker.Decision) and ev.decision.shm and ev.decision.policy == "strict"
        assert ev.peer.facts is not None and ev.peer.facts.pid == os.getpid() and ev.peer.facts.inspected
        assert "session rule: shared memory: same user" in ev.reason
        assert any("session rule: shared memory: same user" in r.getMessage() for r in caplog.records)
    finally:
        srv.stop()


@pytest.mark.parametrize("case,expected", [
    ("tcp", "TCP never gets shared memory"),
    ("socket_only", "the client asked for sockets only"),
])
def test_tcp_and_a_client_asking_for_sockets_get_the_socket(tmp_path, case, expected):
    srv, events = _serve(tmp_path)
    try:
        if case == "tcp":
            address, kw = f"tcp://127.0.0.1:{srv.bound[1][1]}", {}
        else:
            address, kw = str(tmp_path / "rule.sock"), {"socket_only": True}
        _run(lambda: _client(address, **kw))
        [ev] = _connected(events)
        assert not ev.decision.shm and expected in ev.decision.reason, ev.decision
    finally:
        srv.stop()


def test_a_different_user_gets_the_socket(other_user):
    uid, gid = other_user
    d = tempfile.mkdtemp(prefix="brk-rule-", dir="/tmp")  # reachable by the other user
    os.chmod(d, 0o777)
    path = os.path.join(d, "rule.sock")
    events: list[broker.SessionEvent] = []
    try:
        with broker.Server(path, Echo, on_event=events.append):
            os.chmod(path, 0o666)

            def stranger() -> None:
                os.setgid(gid)
                os.setuid(uid)
                _client(path)

            _run(stranger)
            _run(lambda: _client(path))  # and the same user, for contrast
        first, second = _connected(events)
        assert not first.decision.shm and f"different effective uid (client {uid}, server {os.geteuid()})" \
            in first.decision.reason, first.decision
        assert first.peer.uid == uid
        assert second.decision.shm, second.decision
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_the_policy_comes_from_the_argument_or_the_environment(tmp_path, monkeypatch):
    srv, events = _serve(tmp_path, shm_policy="off")
    try:
        _run(lambda: _client(str(tmp_path / "rule.sock")))
        [ev] = _connected(events)
        assert not ev.decision.shm and ev.decision.policy == "off" and "policy off" in ev.decision.reason
    finally:
        srv.stop()

    monkeypatch.setenv("BROKER_SHM_POLICY", "same-user")
    srv, events = _serve(tmp_path)
    try:
        assert srv.shm_policy == "same-user"
        _run(lambda: _client(str(tmp_path / "rule.sock")))
        [ev] = _connected(events)
        assert ev.decision.shm and ev.decision.policy == "same-user" and "login session not checked" in ev.decision.reason
    finally:
        srv.stop()

    monkeypatch.setenv("BROKER_SHM_POLICY", "sometimes")
    with pytest.raises(broker.PolicyError, match="sometimes.*strict, same-user, off"):
        broker.Server(str(tmp_path / "never.sock"), Echo)
    with pytest.raises(ValueError, match="use one of"):
        broker.Server(str(tmp_path / "never.sock"), Echo, shm_policy="always")
    assert not os.path.exists(tmp_path / "never.sock")


def test_broker_serve_takes_the_policy_and_refuses_a_bad_one(tmp_path):
    path = str(tmp_path / "cli.sock")
    bad = subprocess.run([sys.executable, "-m", "shmbroker.cli", "serve", "--address", path, "--shm-policy", "nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr and not os.path.exists(path)

    p = subprocess.Popen([sys.executable, "-m", "shmbroker.cli", "serve", "--address", path, "--shm-policy", "off"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().startswith("listening on")
        _run(lambda: _client(path))
        p.terminate()
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert "session rule: socket: policy off" in err, err
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
