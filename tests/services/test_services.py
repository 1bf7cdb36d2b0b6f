"""The built-in services (echo, key-value) over real sockets, Unix and TCP, clients in separate processes.

The server runs in this process (a background thread) so that its store can be
checked; the clients run in forked children.
"""
from __future__ import annotations

import os
import struct
import time

import pytest

import shmbroker as broker
from shmbroker import Buffer, EchoClient, KeyValueClient, KeyValueLimits, KeyValueStore, ServicesSession, connect
from shmbroker import services as svc

from tests.helpers import Child, in_child, wait_for

LIMITS = KeyValueLimits(max_key=32, max_value=1000, max_entries=5, max_table_bytes=2000, max_tables=3)


@pytest.fixture(params=["shm", "tcp"])
def server(request, tmp_path):
    events: list[broker.SessionEvent] = []
    store = KeyValueStore(LIMITS)
    path = str(tmp_path / "svc.sock")
    # the TCP client proves the run's key "test" (conftest.py); the grant lets it use every table
    srv = broker.Server(path, ServicesSession.factory(store), tcp="tcp://127.0.0.1:0", on_event=events.append,
                        grants=["key:test table:*"])
    srv.start()
    srv.address = path if request.param == "shm" else f"tcp://127.0.0.1:{srv.bound[1][1]}"
    srv.store = store
    srv.recorded = events
    yield srv
    srv.stop()


def test_echo_round_trip(server):
    def client() -> None:
        with connect(server.address) as s:
            echo = EchoClient(s)
            for data in (b"", b"x", bytes(range(256)) * 4, os.urandom(1 << 20)):
                assert echo.echo(data) == data
                assert echo.length(data) == len(data)
            out = Buffer(16)
            assert s.send_receive(svc.ECHO, b"hello", out) == 5 and out.value == b"hello"
            with pytest.raises(broker.ServiceError, match="does not fit") as e:
                s.send_receive(svc.ECHO, b"too long", Buffer(3))
            assert e.value.status == broker.Status.OVERFLOW
            with pytest.raises(broker.ServiceError) as e:
                s.send_receive(svc.LENGTH, 7)  # an int where bytes belong
            assert e.value.status == broker.Status.ARGUMENT
            assert echo.echo(b"still fine") == b"still fine"

    in_child(client)


def test_two_processes_share_one_table(server):
    r, w = os.pipe()
    r2, w2 = os.pipe()

    def writer() -> None:
        with connect(server.address) as s, KeyValueClient(s).open("shared") as t:
            assert t.put(b"a", b"1") is True
            assert t.put("b", "two") is True
            assert t.put(b"a", b"one") is False  # replaced
            assert t.count() == 2
            os.write(w, b"1")
            assert os.read(r2, 1) == b"2"  # the other process has changed it
            assert t.keys() == [b"a", b"c"] and t.get(b"c") == b"3"
            with pytest.raises(broker.NotFound):
                t.get(b"b")

    def reader() -> None:
        with connect(server.address) as s, KeyValueClient(s).open("shared") as t:
            assert t.get(b"a") == b"one" and t.get("b") == b"two"
            assert t.delete(b"b") is True and t.delete(b"b") is False
            assert t.put(b"c", b"3") is True
            assert len(t) == 2

    with Child(writer) as kid:
        assert os.read(r, 1) == b"1"
        table = server.store.table("shared")
        assert table.refs == 1 and len(table) == 2
        in_child(reader)
        assert table.refs == 1  # the reader's reference is gone, the writer's stays
        os.write(w2, b"2")
        assert kid.join(30) == 0
    wait_for(lambda: server.store.names() == [])
    assert len(table) == 0 and table.bytes == 0
    for fd in (r, w, r2, w2):
        os.close(fd)


def test_a_table_dies_with_its_last_subsession(server):
    r, w = os.pipe()
    go_r, go_w = os.pipe()

    def client() -> None:
        with connect(server.address) as s:
            kv = KeyValueClient(s)
            first, second = kv.open("t"), kv.open("t")  # two sub-sessions on one table
            first.put(b"k", b"v")
            assert second.get(b"k") == b"v"
            first.close()
            os.write(w, b"1")
            assert os.read(go_r, 1) == b"1"
            stale = second.handle
            second.close()
            os.write(w, b"2")
            assert os.read(go_r, 1) == b"2"
            with kv.open("t") as again:  # a new, empty table under the old name
                assert again.count() == 0
                with pytest.raises(broker.BadHandle):
                    first.count()  # closed on this side
                with pytest.raises(broker.BadHandle):
                    s.send_receive(svc.COUNT, handle=stale)  # stale on the server

    with Child(client) as kid:
        assert os.read(r, 1) == b"1"
        table = server.store.table("t")
        assert table.refs == 1 and server.store.names() == ["t"]
        os.write(go_w, b"1")
        assert os.read(r, 1) == b"2"
        assert server.store.names() == [] and table.refs == 0 and len(table) == 0
        os.write(go_w, b"2")
        assert kid.join(30) == 0
    wait_for(lambda: server.store.names() == [])
    for fd in (r, w, go_r, go_w):
        os.close(fd)


def test_a_table_dies_when_its_last_holder_is_killed(server):
    r, w = os.pipe()

    def holder() -> None:
        s = connect(server.address)
        t = KeyValueClient(s).open("held")
        t.put(b"k", b"v")
        os.write(w, b"1")
        time.sleep(60)  # killed while holding it

    with Child(holder) as kid:
        assert os.read(r, 1) == b"1"

        def visitor() -> None:
            with connect(server.address) as s, KeyValueClient(s).open("held") as t:
                assert t.get(b"k") == b"v"

        in_child(visitor)
        table = server.store.table("held")
        assert table.refs == 1
        kid.kill()  # kill -9
    wait_for(lambda: server.store.names() == [])
    assert table.refs == 0 and len(table) == 0
    wait_for(lambda: any(ev.kind == "disconnected" and ev.reason == "died" for ev in server.recorded))
    in_child(lambda: _fresh_table(server.address, "held"))
    os.close(r)
    os.close(w)


def _fresh_table(address: str, name: str) -> None:
    with connect(address) as s, KeyValueClient(s).open(name) as t:
        assert t.count() == 0


def test_bad_input_ends_only_that_request(server):
    def client() -> None:
        with connect(server.address) as s:
            kv = KeyValueClient(s)
            t = kv.open("limits")

            def refused(exc, status, fn, *args):
                with pytest.raises(exc) as e:
                    fn(*args)
                assert e.value.status == status, e.value
                assert t.count() >= 0  # the session goes on after every refusal
                return str(e.value)

            A = broker.Status.ARGUMENT
            assert "over the limit of 32" in refused(broker.InvalidArgument, A, t.put, b"k" * 33, b"v")
            assert "empty" in refused(broker.InvalidArgument, A, t.put, b"", b"v")
            assert "over the limit of 1000" in refused(broker.InvalidArgument, A, t.put, b"k", b"v" * 1001)
            refused(broker.InvalidArgument, A, t.get, b"k" * 33)
            refused(broker.ServiceError, A, t.send_receive, svc.PUT, 5, b"v")  # an int key
            refused(broker.ServiceError, A, t.send_receive, svc.GET, b"k", b"not writable")
            refused(broker.ServiceError, A, t.send_receive, svc.KEYS)  # no buffer for the keys
            assert "no key" in refused(broker.NotFound, broker.Status.NOT_FOUND, t.get, b"missing")
            with pytest.raises(KeyError):
                t.get(b"missing")  # a NotFound is also a KeyError
            for i in range(5):
                assert t.put(f"k{i}", b"x" * 10) is True
            assert "maximum of 5 entries" in refused(broker.LimitReached, broker.Status.NO_MEMORY, t.put, b"k5", b"x")
            assert t.put(b"k0", b"replaced") is False  # replacing needs no new entry
            assert t.put(b"k1", b"x" * 1000) is False  # 1048 bytes in the table
            assert "maximum of 2000" in refused(broker.LimitReached, broker.Status.NO_MEMORY, t.put, b"k2", b"x" * 1000)
            assert "holds 4" in refused(broker.BufferTooSmall, broker.Status.OVERFLOW, t.get, b"k0", 4)
            assert t.get(b"k0", 8) == b"replaced"  # an exact fit
            assert "the next key" in refused(broker.BufferTooSmall, broker.Status.OVERFLOW, t.keys, 3)
            # names: too long, not UTF-8, unprintable, empty
            for name in (b"n" * 65, b"\xff\xfe", b"a\nb", b""):
                refused(broker.ServiceError, A, s.send_receive, svc.OPEN_TABLE, name)
            # handles: forged, zero, stale, and a table call without one
            for bad in (0x7FFF0001, t.handle + 1):
                with pytest.raises(broker.BadHandle):
                    s.send_receive(svc.COUNT, handle=bad)
            with pytest.raises(broker.BadHandle):
                s.send_receive(svc.PUT, b"k", b"v")
            with pytest.raises(broker.ServiceError, match="not supported"):
                t.send_receive(svc.KV_CODES[-1])
            kv.open("second").close()
            extra = [kv.open(f"x{i}") for i in range(2)]  # 3 tables open: the store's maximum
            assert "maximum of 3 tables" in refused(broker.LimitReached, broker.Status.NO_MEMORY, kv.open, "x9")
            assert kv.open("limits").count() == 5  # opening an open table needs no new one
            h = extra[0].handle
            extra[0].close()
            with pytest.raises(broker.BadHandle):
                s.send_receive(svc.COUNT, handle=h)
            assert EchoClient(s).echo(b"after all that") == b"after all that"

    in_child(client)
    in_child(lambda: _fresh_table(server.address, "limits"))  # the server goes on, and let the table go
    assert not any(ev.kind == "disconnected" and ev.reason not in ("closed",) for ev in server.recorded)


def test_keys_come_in_pages_in_byte_order(server):
    def client() -> None:
        with connect(server.address) as s, KeyValueClient(s).open("k") as t:
            keys = [b"\x00", b"b" * 32, b"a", b"ab", b"\xff"]
            for k in keys:
                t.put(k, b"")
            assert t.keys() == sorted(keys)
            assert t.keys(page=36) == sorted(keys)  # one long key a page at most
            out = Buffer(8)
            n = t.send_receive(svc.KEYS, out, b"a")  # after b"a": b"ab" fits, b"b"*32 does not
            assert n == 1 and out.value == struct.pack("<H", 2) + b"ab"
            assert t.send_receive(svc.KEYS, Buffer(8), b"\xff") == 0  # nothing after the last

    in_child(client)


def test_the_session_class_alone_gets_a_store_per_server(tmp_path):
    path = str(tmp_path / "alone.sock")
    with broker.Server(path, ServicesSession) as srv:
        in_child(lambda: _put_and_hold_nothing(path))
        store = KeyValueStore.for_server(srv)
        assert store.limits == KeyValueLimits() and store.names() == []
        assert KeyValueStore.for_server(srv) is store


def _put_and_hold_nothing(path: str) -> None:
    with connect(path) as s, KeyValueClient(s).open("t") as t:
        assert t.put(b"k", b"v" * 100_000) and t.get(b"k") == b"v" * 100_000


class Mixed(ServicesSession):
    """The services with one more function of its own, which opens a sub-session that is no table."""

    OPEN_OTHER = 40

    def service(self, m: broker.Message) -> None:
        if m.code == self.OPEN_OTHER:
            m.complete(self.open_subsession(object()))
        else:
            super().service(m)


def test_a_handle_to_something_else_is_no_table(tmp_path):
    path = str(tmp_path / "mixed.sock")

    def client() -> None:
        with connect(path) as s:
            other = broker.SubSession.open(s, Mixed.OPEN_OTHER)
            for code in (svc.COUNT, svc.GET):
                with pytest.raises(broker.BadHandle, match="not a table"):
                    other.send_receive(code, b"k", Buffer(8))
            with pytest.raises(broker.ServiceError, match="not supported"):
                s.send_receive(99)  # past every class in the chain
            with KeyValueClient(s).open("t") as t:
                assert t.put(b"k", b"v") and EchoClient(s).echo(b"e") == b"e"

    with broker.Server(path, Mixed):
        in_child(client)
