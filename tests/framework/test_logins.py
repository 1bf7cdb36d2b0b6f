"""Login sessions as the broker sees them (issue 16, item 5): logon at a login session's first
connection, logoff when its last goes (closed or killed), what the kernel says of each (user,
audit session, tty, seat), and `shmbroker stat --by-session`. Real users, real audit sessions."""
from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time

import pytest

import shmbroker as broker
from shmbroker import connect

from tests.helpers import Child, wait_for
from tests.served import ROOT
from tests.transport.test_identity import new_login_session, require_audit_sessions


def _kinds(events: list[broker.SessionEvent]) -> list[str]:
    return [e.kind for e in events]


def test_logon_at_the_first_connection_and_logoff_at_the_last(tmp_path):
    events: list[broker.SessionEvent] = []
    path = str(tmp_path / "s")
    with broker.Server(path, on_event=events.append) as srv:
        a = connect(path)
        wait_for(lambda: _kinds(events) == ["connected", "logon"])
        login = events[1].login
        me = pwd.getpwuid(os.geteuid()).pw_name
        assert login["user"] == me and login["uid"] == os.geteuid() and login["connections"] == [a.connection_id]
        b = connect(path)  # the same login session: no second logon
        wait_for(lambda: len(srv.login_sessions()) == 1 and len(srv.login_sessions()[0]["connections"]) == 2)
        assert _kinds(events) == ["connected", "logon", "connected"]
        a.close()
        wait_for(lambda: _kinds(events)[-1] == "disconnected")
        assert "logoff" not in _kinds(events)
        b.close()
        wait_for(lambda: _kinds(events)[-2:] == ["disconnected", "logoff"])
        assert events[-1].login["login_session"] == login["login_session"] and srv.login_sessions() == []


def test_a_killed_client_is_its_login_sessions_logoff(tmp_path):
    events: list[broker.SessionEvent] = []
    path = str(tmp_path / "s")
    r, w = os.pipe()

    def client() -> None:
        connect(path)
        os.write(w, b"1")
        time.sleep(120)  # until it is killed

    with broker.Server(path, on_event=events.append):
        kid = Child(client)
        try:
            assert os.read(r, 1) == b"1"
            wait_for(lambda: "logon" in _kinds(events))
        finally:
            kid.kill()
        wait_for(lambda: _kinds(events)[-1:] == ["logoff"])
    os.close(r)
    os.close(w)


def test_another_user_and_another_login_session_each_log_on(shared_dir, other_user):
    require_audit_sessions()
    uid, gid = other_user
    path = os.path.join(shared_dir, "s")
    events: list[broker.SessionEvent] = []
    r, w = os.pipe()
    go_r, go_w = os.pipe()

    def stranger() -> None:
        os.setgid(gid)
        os.setuid(uid)
        with connect(path):
            os.write(w, b"u")
            os.read(go_r, 1)

    def other_session() -> None:
        before, after, _ = new_login_session()
        if after == before:
            os.write(w, b"x")
            return
        with connect(path):
            os.write(w, b"s")
            os.read(go_r, 1)

    with broker.Server(path, on_event=events.append) as srv, connect(path) as mine:
        os.chmod(path, 0o666)
        kids = [Child(stranger), Child(other_session)]
        try:
            said = {os.read(r, 1), os.read(r, 1)}
            if b"x" in said:
                pytest.skip("writing /proc/self/loginuid did not start a new audit session")
            wait_for(lambda: len(srv.login_sessions()) == 3)
            logins = {x["login_session"]: x for x in srv.login_sessions()}
            users = sorted(x["user"] for x in logins.values())
            assert users == sorted([pwd.getpwuid(0).pw_name, pwd.getpwuid(0).pw_name, pwd.getpwuid(uid).pw_name])
            sids = {x["session_id"] for x in logins.values() if x["uid"] == 0}
            assert len(sids) == 2  # the test's own (perhaps unset: None) and the new audit session's
            assert [e.kind for e in events].count("logon") == 3

            out = subprocess.run([sys.executable, "-m", "shmbroker", "stat", path, "--by-session", "--interval", "0"],
                                 cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            heads = [line for line in out.stdout.splitlines() if line.startswith("login session (")]
            assert len(heads) == 3, out.stdout
            assert any(f"user {pwd.getpwuid(uid).pw_name}, session " in h for h in heads), heads
            new_sid = next(s for s in sids if s is not None)
            assert any(f"session {new_sid}" in h for h in heads), heads
            mine_head = next(i for i, line in enumerate(out.stdout.splitlines()) if "2 connections" in line)
            assert mine_head >= 0  # the test's own login session: this client and the stat's
        finally:
            for _ in kids:
                os.write(go_w, b"g")
            for k in kids:
                assert k.join(30) == 0
        wait_for(lambda: [e.kind for e in events].count("logoff") == 2)
    for fd in (r, w, go_r, go_w):
        os.close(fd)
