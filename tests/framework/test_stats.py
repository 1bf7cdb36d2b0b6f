"""The server's statistics over the wire: `ClientSession.server_stats()` and `shmbroker stat`.

Real processes: sessions held by forked children, `shmbroker stat` run as a
subprocess, and a real second user who must not see them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

import shmbroker as broker
from shmbroker import Buffer, connect

from tests.helpers import Child


class Echo(broker.Session):
    def service(self, m: broker.Message) -> None:
        m.write(1, m.read(0))
        m.complete(0)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmbroker.cli", *args], capture_output=True, text=True, timeout=60)


def _holder(path: str, ready_w: int, go_r: int, requests: int) -> None:
    """Child: a session that made `requests` round trips of 10 bytes and stays open until told."""
    with connect(path) as s:
        for _ in range(requests):
            out = Buffer(16)
            s.send_receive(1, b"0123456789", out)
            assert out.value == b"0123456789"
        os.write(ready_w, str(s.connection_id).encode() + b"\n")
        os.read(go_r, 1)


@pytest.mark.stress  # a second
def test_stat_shows_every_session_with_its_traffic_and_rule(tmp_path):
    path = str(tmp_path / "st.sock")
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    with broker.Server(path, Echo, tcp="tcp://127.0.0.1:0") as srv:
        child = Child(lambda: _holder(path, ready_w, go_r, 3))
        try:
            with os.fdopen(os.dup(ready_r), "rb") as f:
                cid = int(f.readline())
            p = _cli("stat", path, "--json")
            assert p.returncode == 0, p.stderr
            data = json.loads(p.stdout)
            assert data["pid"] == os.getpid() and data["uid"] == os.geteuid() and data["shm_policy"] == "strict"
            assert path in data["addresses"] and any(a.startswith("tcp://127.0.0.1:") for a in data["addresses"])
            rows = {r["connection_id"]: r for r in data["sessions"]}
            held = rows[cid]
            assert held["pid"] == child.pid and held["uid"] == os.geteuid() and held["connection"] == "unix"
            assert held["requests"] == 3 and held["completions"] == 3 and held["outstanding"] == 0
            # 3 requests of 24 + 8 + 64 bytes of header and descriptors + 10 of payload, after the 40-byte
            # HELLO and the 56-byte SHM_ACCEPT: the same frames on either carrier
            assert held["bytes_in"] == 40 + 56 + 3 * (24 + 72 + 10)
            assert held["bytes_out"] > 3 * 10 and held["transport"] == "shared memory"
            assert held["shm_allowed"] is True and held["rule"].startswith("shared memory: same user")
            assert len(rows) == 2  # and the stat command's own session, which asked for sockets only
            [own] = [r for r in rows.values() if r["connection_id"] != cid]
            assert own["shm_allowed"] is False and "asked for sockets only" in own["rule"]

            table = _cli("stat", path)
            assert table.returncode == 0, table.stderr
            assert "session rule" in table.stdout and f"pid {child.pid} uid" in table.stdout
            assert "2 sessions (* this one)" in table.stdout

            in_process = {r["peer"].connection_id: r for r in srv.sessions()}
            assert in_process[cid]["requests"] == 3
        finally:
            os.write(go_w, b"x")
            assert child.join(30) == 0
            for fd in (ready_r, ready_w, go_r, go_w):
                os.close(fd)


def test_statistics_are_for_the_servers_own_user_only(tmp_path, other_user):
    uid, gid = other_user
    d = tempfile.mkdtemp(prefix="brk-stat-", dir="/tmp")
    os.chmod(d, 0o777)
    path = os.path.join(d, "st.sock")
    try:
        with broker.Server(path, Echo, tcp="tcp://127.0.0.1:0") as srv:
            os.chmod(path, 0o666)
            tcp = f"tcp://127.0.0.1:{srv.bound[1][1]}"

            def stranger() -> None:
                os.setgid(gid)
                os.setuid(uid)
                with connect(path) as s:
                    with pytest.raises(broker.PermissionDenied, match="own user"):
                        s.server_stats()
                    out = Buffer(4)
                    assert s.send_receive(1, b"ok", out) == 0 and out.value == b"ok"  # the session goes on

            def over_tcp() -> None:
                with connect(tcp) as s:
                    with pytest.raises(broker.PermissionDenied):
                        s.server_stats()

            for fn in (stranger, over_tcp):
                assert Child(fn).join(60) == 0
            p = _cli("stat", tcp)
            assert p.returncode == 1 and "own user" in p.stderr
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_a_buffer_too_small_for_the_statistics_is_an_overflow(tmp_path):
    path = str(tmp_path / "st.sock")
    with broker.Server(path, Echo):
        with connect(path) as s:
            with pytest.raises(broker.ServiceError) as e:
                s.server_stats(max_bytes=8)
            assert e.value.status == broker.Status.OVERFLOW and "bytes" in str(e.value)
            assert s.server_stats()["sessions"][0]["requests"] == 2  # the refused one counts too


def test_stat_without_a_server(tmp_path):
    p = _cli("stat", str(tmp_path / "nobody.sock"))
    assert p.returncode == 1 and "no server at" in p.stderr
