"""Local\\ and Global\\ names (issue 16, item 2): an unqualified name is Local, its creator's login
session's; two users, two login sessions of one user, or a TCP peer and a local one, who use the
same name never meet unless they say Global\\. stats() and `shmbroker stat` show each name's namespace.
Real users (setuid in a child), real audit sessions (a child writes /proc/self/loginuid), TCP."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import shmbroker as broker
from shmbroker import KeyValueClient, ServicesSession, connect

from tests.helpers import Child
from tests.served import ROOT
from tests.transport.test_identity import new_login_session, require_audit_sessions


def _report(w: int, obj: object) -> None:
    os.write(w, (json.dumps(obj) + "\n").encode())


def _read(r: int) -> object:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(r, 65536)
        assert chunk, "the child said nothing"
        data += chunk
    return json.loads(data)


def _as(uid: int, gid: int):
    def become() -> None:
        os.setgid(gid)
        os.setuid(uid)
    return become


def _in_other(path: str, become, grants_ok: bool = True):
    """A child that becomes someone else (another user, another login session), then publishes on
    `orders` and on `Global\\orders`, offers `Local\\calc` and `Global\\calc`, and opens the table `t`."""
    r, w = os.pipe()
    go_r, go_w = os.pipe()

    def child() -> None:
        skip = become()
        if skip:
            _report(w, {"skip": skip})
            return
        with connect(path) as s:
            with s.subscriber("orders") as local, s.subscriber("Global\\orders") as glob:
                _report(w, {"ready": True})
                os.read(go_r, 1)
                got_global = glob.receive(30)
                try:
                    got_local = local.receive(0.5)
                except broker.Empty:
                    got_local = None
                t = KeyValueClient(s).open("t")
                try:
                    seen = t.get(b"k")
                except KeyError:
                    seen = None
                t.close()
                _report(w, {"global": got_global.decode(), "local": got_local and got_local.decode(),
                            "table": seen and seen.decode(),
                            "topics": sorted((x["topic"], x["namespace"]) for x in s.topics())})
                os.read(go_r, 1)  # its subscribers stay until the parent has looked at the server's topics

    kid = Child(child)
    return kid, (r, w, go_r, go_w)


def _run_against(path: str, kid: Child, fds) -> dict:
    r, w, go_r, go_w = fds
    try:
        first = _read(r)
        if first.get("skip"):
            kid.join(30)
            pytest.skip(first["skip"])
        with connect(path) as me, me.publisher("orders") as local, me.publisher("Global\\orders") as glob, \
                KeyValueClient(me).open("t") as t:
            t.put(b"k", b"mine")
            local.publish(b"local: mine only")
            os.write(go_w, b"g")
            glob.publish(b"global: everyone's")
            rep = _read(r)
            topics = {(x["topic"], x["namespace"], x["owner"]) for x in me.server_stats()["topics"]}
            os.write(go_w, b"g")
        assert kid.join(30) == 0
        rep["server_topics"] = sorted(topics, key=str)
        return rep
    finally:
        kid.kill()
        for fd in fds:
            os.close(fd)


def test_two_users_with_the_same_names_meet_only_in_global(shared_dir, other_user):
    uid, gid = other_user
    path = os.path.join(shared_dir, "ns.sock")
    with broker.Server(path, ServicesSession, grants=[f"uid:{uid} topic:orders subscribe",
                                                     f"uid:{uid} table:t"]) as srv:
        os.chmod(path, 0o666)
        kid, fds = _in_other(path, _as(uid, gid))
        rep = _run_against(path, kid, fds)
    assert rep["global"] == "global: everyone's"
    assert rep["local"] is None  # its own `orders` is not mine
    assert rep["table"] is None  # nor is its table `t`
    assert rep["topics"] == [["Global\\orders", "Global"], ["orders", "Local"]]  # its own and the Global one
    mine = f"uid {os.geteuid()}"
    owners = {(topic, ns, owner.split(",")[0] if owner else None) for topic, ns, owner in rep["server_topics"]}
    assert owners == {("Global\\orders", "Global", None), ("orders", "Local", mine), ("orders", "Local", f"uid {uid}")}


def test_two_login_sessions_of_one_user_meet_only_in_global(shared_dir):
    require_audit_sessions()
    path = os.path.join(shared_dir, "ns.sock")

    def new_session() -> str | None:
        before, after, problem = new_login_session()
        return None if after != before else f"no new audit session ({problem or 'unchanged'})"

    with broker.Server(path, ServicesSession, shm_policy="same-user") as srv:
        kid, fds = _in_other(path, new_session)
        rep = _run_against(path, kid, fds)
    assert rep["global"] == "global: everyone's" and rep["local"] is None and rep["table"] is None
    sessions = {owner for _, ns, owner in rep["server_topics"] if ns == "Local"}
    assert len(sessions) == 2  # one `orders` per login session, the same user's


def test_a_tcp_peer_has_its_own_local_namespace(tmp_path):
    srv = broker.Server(str(tmp_path / "s"), tcp="tcp://127.0.0.1:0", grants=["key:test service:calc offer"])
    with srv, connect(str(tmp_path / "s")) as local, connect(f"tcp://127.0.0.1:{srv.bound[1][1]}") as remote:
        with local.offer("calc", lambda call: 1) as mine, remote.offer("calc", lambda call: 2) as theirs:
            # the same unqualified name, offered twice: two services, no "offered already"
            names = sorted((v["service"], v["namespace"], v["owner"]) for v in srv.stats()["services"])
            assert names == [("calc", "Local", "tcp key:test"), ("calc", "Local", f"uid {os.geteuid()}, session "
                                                                                 f"{_session()}")]
            with pytest.raises(broker.ServiceError, match="'Global\\\\\\\\calc' is offered already|offered already"):
                with local.offer("Global\\calc", lambda call: 3), remote.offer("Global\\calc", lambda call: 4):
                    pass
            assert mine.handle and theirs.handle


def _session() -> str:
    from shmbroker.core import proc

    sid = proc.login_session()
    return "none" if sid is None else "unset" if sid == 0xFFFFFFFF else str(sid)


def test_local_and_plain_names_are_one_and_global_needs_a_name(tmp_path):
    with broker.Server(str(tmp_path / "s")), connect(str(tmp_path / "s")) as s:
        with s.publisher("Local\\a") as pub, s.subscriber("a") as sub:
            pub.publish(b"same")
            assert sub.receive(10) == b"same"
        with pytest.raises(broker.ServiceError, match="needs a name after the prefix"):
            s.publisher("Global\\")


def test_broker_stat_shows_each_names_namespace(tmp_path):
    path = str(tmp_path / "s")
    with broker.Server(path), connect(path) as s, s.publisher("plain"), s.publisher("Global\\shared"):
        out = subprocess.run([sys.executable, "-m", "shmbroker", "stat", path, "--interval", "0"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    plain = next(line for line in lines if line.startswith("plain "))
    shared = next(line for line in lines if line.startswith("Global\\shared "))
    assert f" Local(uid={os.geteuid()},session={_session()}) " in plain
    assert " Global " in shared
