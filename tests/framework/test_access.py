"""Who may use the broker's own services: the server's user everything, anyone else what a grant gives.

Real second users (a child that calls setuid) and real TCP identities (the
run's key "test", from conftest.py) against a real server.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading

import pytest

import shmbroker as broker
from shmbroker import GrantError, parse_grant
from shmbroker.services.kv import EchoClient, KeyValueClient, ServicesSession

from tests.helpers import Child


# ---- grants ---------------------------------------------------------------------------------


@pytest.mark.parametrize("line, text", [
    ("key:alice topic:prices.* subscribe", "key:alice topic:prices.* subscribe"),
    ("uid:1001 table:orders read,write", "uid:1001 table:orders all"),
    ("uid:0001 table:orders write", "uid:1 table:orders write"),
    ("local service:upper", "local service:upper all"),
    ("* *", "* * all"),
    ("tcp * subscribe,read", "tcp * read,subscribe"),
    ("user:root topic:x publish", "uid:0 topic:x publish"),
    ("group:root table:* read", "gid:0 table:* read"),
])
def test_grants_parse_into_their_plain_form(line, text):
    assert str(parse_grant(line)) == text
    assert parse_grant(text) == parse_grant(line)  # the plain form parses back to the same grant


@pytest.mark.parametrize("line, error", [
    ("key:alice", "expected WHO WHAT"),
    ("key:alice topic:x publish extra", "expected WHO WHAT"),
    ("alice topic:x", "who 'alice'"),
    ("uid:x topic:x", "uid is a number"),
    ("user:no-such-user-here topic:x", "no such user"),
    ("key:alice queue:x", "WHAT is service:NAME, table:NAME, topic:NAME or \\*"),
    ("key:alice topic:", "WHAT is service:NAME, table:NAME, topic:NAME or \\*"),
    ("key:alice topic:a*b", "only at the end"),
    ("key:alice topic:x read", "actions for topic are publish, subscribe or all"),
    ("key:alice table:x publish", "actions for table are read, write or all"),
])
def test_a_bad_grant_says_what_is_wrong(line, error):
    with pytest.raises(GrantError, match=error):
        parse_grant(line)
    with pytest.raises(GrantError):
        broker.Server("/nonexistent/never-bound.sock", grants=[line])


def test_a_grants_file_is_read_a_line_each_and_must_not_be_writable_by_others(tmp_path, other_user):
    path = tmp_path / "grants"
    path.write_text("# who may do what\nkey:alice topic:prices subscribe  # the feed\n\nuid:1001 table:orders\n")
    os.chmod(path, 0o644)
    assert [str(g) for g in broker.load_grants(str(path))] == ["key:alice topic:prices subscribe",
                                                               "uid:1001 table:orders all"]
    path.write_text("key:alice topic:prices subscribe\nkey:bob topic:x read\n")
    with pytest.raises(GrantError, match="line 2: grant 'key:bob topic:x read'"):
        broker.load_grants(str(path))
    for mode in (0o666, 0o646, 0o664):
        os.chmod(path, mode)
        with pytest.raises(GrantError, match="writable by others"):
            broker.load_grants(str(path))
    os.chmod(path, 0o644)
    os.chown(path, *other_user)
    with pytest.raises(GrantError, match=f"belongs to uid {other_user[0]}"):
        broker.load_grants(str(path))


# ---- another local user ----------------------------------------------------------------------


def _try(s: broker.ClientSession, what: str) -> str:
    """One use of a service by a client: "ok", or the class of what it raised. Another user's names
    meet the owner's in the Global namespace only (grants name them without it)."""
    try:
        if what == "table read":
            with KeyValueClient(s).open("Global\\ro") as t:
                assert t.get("k") == b"v"
        elif what == "table write":
            with KeyValueClient(s).open("Global\\ro") as t:
                t.put("k", "changed")
        elif what == "topic publish":
            with s.publisher("Global\\prices") as p:
                p.publish(b"x")
        elif what == "topic subscribe":
            with s.subscriber("Global\\prices"):
                pass
        elif what == "service offer":
            with s.offer("Global\\svc2", lambda call: 0):
                pass
        elif what == "service call":
            with s.link("Global\\svc") as link:
                assert link.send_receive(1) == 42
        elif what == "echo":
            assert EchoClient(s).echo(b"e") == b"e"
        return "ok"
    except broker.PermissionDenied as e:
        assert "may not" in str(e) and "--grant" in str(e), e
        return "PermissionDenied"


USES = ["echo", "table read", "table write", "topic publish", "topic subscribe", "service offer", "service call"]


@pytest.mark.parametrize("grants, allowed", [
    ([], {"echo"}),
    (["uid:{uid} table:ro read", "uid:{uid} topic:prices subscribe", "uid:{uid} service:svc call"],
     {"echo", "table read", "topic subscribe", "service call"}),
    (["gid:{gid} *"], set(USES)),
    (["local table:*", "tcp *"], {"echo", "table read", "table write"}),
])
def test_another_user_reaches_only_what_is_granted(other_user, grants, allowed):
    uid, gid = other_user
    d = tempfile.mkdtemp(prefix="brk-access-", dir="/tmp")
    os.chmod(d, 0o777)
    path = os.path.join(d, "a.sock")
    r, w = os.pipe()
    stop = threading.Event()
    try:
        with broker.Server(path, ServicesSession, grants=[g.format(uid=uid, gid=gid) for g in grants]) as srv:
            os.chmod(path, 0o666)
            ready = threading.Event()

            def provide() -> None:
                with broker.connect(path) as mine, mine.offer("Global\\svc", lambda call: 42) as offer:
                    ready.set()
                    offer.serve_forever(stop, 0.05)

            with broker.connect(path) as owner, KeyValueClient(owner).open("Global\\ro") as table:
                table.put("k", "v")  # the server's own user may do everything
                serving = threading.Thread(target=provide)
                serving.start()
                try:
                    assert ready.wait(10)
                    def stranger() -> None:
                        os.setgid(gid)
                        os.setuid(uid)
                        with broker.connect(path) as s:
                            os.write(w, repr({what: _try(s, what) for what in USES}).encode())

                    assert Child(stranger).join(60) == 0
                    got = eval(os.read(r, 65536).decode())
                finally:
                    stop.set()
                    serving.join(10)
                assert {what for what, result in got.items() if result == "ok"} == allowed, got
                assert table.get("k") == (b"changed" if "table write" in allowed else b"v")
            assert srv.stats()["grants"] == [str(parse_grant(g.format(uid=uid, gid=gid))) for g in grants]
    finally:
        os.close(r)
        os.close(w)
        shutil.rmtree(d, ignore_errors=True)


# ---- a TCP identity -----------------------------------------------------------------------------


@pytest.fixture
def tcp_server(tmp_path):
    """The run's key "test" may subscribe under prices.eu. and nothing else (keys: $BROKER_KEYS)."""
    srv = broker.Server(str(tmp_path / "t.sock"), ServicesSession, tcp="tcp://127.0.0.1:0",
                        grants=["key:test topic:prices.eu.* subscribe"])
    srv.start()
    srv.unix, srv.tcp = str(tmp_path / "t.sock"), f"tcp://127.0.0.1:{srv.bound[1][1]}"
    yield srv
    srv.stop()


def test_a_tcp_identity_reaches_nothing_ungranted(tcp_server):
    with broker.connect(tcp_server.tcp) as s:
        assert EchoClient(s).echo(b"e") == b"e"  # echo is for everyone who got in
        for what in ("table read", "table write", "topic publish", "topic subscribe", "service offer",
                     "service call"):
            assert _try(s, what) == "PermissionDenied", what
        with pytest.raises(broker.PermissionDenied, match="key:test may not subscribe topic 'other.\\*'"):
            s.subscriber("other.*")
        with pytest.raises(broker.PermissionDenied, match="key:test may not subscribe topic 'prices.us.nyc'"):
            s.subscriber("prices.us.nyc")
        with pytest.raises(broker.PermissionDenied):
            s.server_stats()  # the server's own user only


def test_a_prefix_subscriber_gets_only_the_topics_it_is_granted(tcp_server):
    """A TCP peer meets the owner's topics in the Global namespace; grants name them without it."""
    G = "Global\\"
    with broker.connect(tcp_server.unix) as owner, broker.connect(tcp_server.tcp) as s:
        with owner.publisher(G + "prices.us.nyc") as us, s.subscriber(G + "prices.*", capacity=64) as q, \
                owner.publisher(G + "prices.eu.paris") as eu, owner.publisher(G + "prices.eu.rome") as rome, \
                owner.publisher("prices.eu.local") as local:
            for i in range(5):  # topics there before the subscriber (nyc) and made after it (paris, rome)
                us.publish(b"us%d" % i)
                eu.publish(b"eu%d" % i)
                rome.publish(b"rome%d" % i)
                local.publish(b"local%d" % i)  # the owner's Local topic: never the TCP peer's
            got = [q.receive_message(timeout=10) for _ in range(10)]
            assert {m.topic for m in got} == {G + "prices.eu.paris", G + "prices.eu.rome"}
            with pytest.raises(broker.Empty):
                q.receive(timeout=0.3)  # nothing of prices.us.nyc
            assert sorted(t["topic"] for t in s.topics()) == [G + "prices.eu.paris", G + "prices.eu.rome"]
            assert sorted(t["topic"] for t in owner.topics()) == [G + "prices.eu.paris", G + "prices.eu.rome",
                                                                  G + "prices.us.nyc", "prices.eu.local"]
            with s.subscriber(G + "prices.eu.paris") as exact:  # a granted name, subscribed by itself
                eu.publish(b"later")
                assert exact.receive(timeout=10) == b"later"


def test_a_service_registers_the_kind_its_grants_name(monkeypatch):
    """The framework knows no service's kind: topics, links and the tables register theirs, and a
    new service would register its own (here on a copy of the registry, which the test restores)."""
    from shmbroker.framework import access

    assert set(access.ACTIONS) == {"topic", "service", "table"}
    monkeypatch.setattr(access, "ACTIONS", dict(access.ACTIONS))
    with pytest.raises(GrantError, match="WHAT is"):
        parse_grant("key:alice queue:jobs take")
    access.register_kind("queue", ("take", "put"))
    assert str(parse_grant("key:alice queue:jobs take")) == "key:alice queue:jobs take"
    assert str(parse_grant("key:alice queue:jobs")) == "key:alice queue:jobs all"
    access.register_kind("queue", ("put", "take"))  # the same again: nothing changes
    with pytest.raises(ValueError, match="registered already"):
        access.register_kind("queue", ("take",))
    with pytest.raises(ValueError, match="other than 'all'"):
        access.register_kind("other", ("all",))
