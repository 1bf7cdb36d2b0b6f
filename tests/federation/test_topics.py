"""Global\\ topics across brokers federated over a real nats-server (issue 18): every message once on every
broker, in each publisher's order; no echo; Local names stay home; the default denies; NATS's own
authentication and permissions decide who a remote broker is."""
from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

import shmbroker as broker
from shmbroker import BrokerError, Federation
from tests.federation.nats_servers import NatsServer, users

pytest.importorskip("nats")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    srv = NatsServer(tmp_path, "n1", users("a", "b", "c")).start()
    yield srv
    srv.stop()


def federated(tmp_path: Path, name: str, url: str, accept: Any = "*", **kw: Any) -> broker.Server:
    fed = Federation(url, name=name, user=name, password=f"pw-{name}", accept=accept, **kw)
    srv = broker.Server(str(tmp_path / f"{name}.sock"), federation=fed)
    srv.start()
    srv.address = str(tmp_path / f"{name}.sock")  # type: ignore[attr-defined]
    return srv


def until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def drain(sub: Any, want: int, timeout: float = 30.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        try:
            got.append(sub.receive(timeout=0.5))
        except broker.EmptyTimeout:
            pass
    return got


def quiet(sub: Any, wait: float = 0.5) -> list[Any]:
    """What else arrives within `wait` (nothing, when no message is duplicated or leaked)."""
    extra = []
    try:
        while True:
            extra.append(sub.receive(timeout=wait))
    except broker.EmptyTimeout:
        return extra


def raw_nats(url: str, user: str, fn: Callable[[Any], Any]) -> Any:
    """Run fn(connection) in a raw nats-py client (a coroutine function), as user `user`."""
    import nats

    async def main() -> Any:
        errors: list[Exception] = []

        async def err(e: Exception) -> None:
            errors.append(e)

        nc = await nats.connect(url, user=user, password=f"pw-{user}", error_cb=err, allow_reconnect=False)
        try:
            return await fn(nc), errors
        finally:
            await nc.close()
    return asyncio.run(main())


def test_a_global_topic_reaches_every_broker_once_in_each_publishers_order(tmp_path: Path,
                                                                         nats_server: NatsServer) -> None:
    a, b, c = (federated(tmp_path, n, nats_server.url) for n in "abc")
    try:
        # each runs its federation on its server's own thread (Server.asyncio_loop): no thread of its own
        servers = {srv._thread.ident for srv in (a, b, c)}  # type: ignore[union-attr]
        assert {t.ident for t in threading.enumerate() if t.name.startswith("broker-")} == servers
        with broker.connect(a.address) as sa, broker.connect(b.address) as sb, broker.connect(c.address) as sc:
            subs = {"a": sa.subscriber("Global\\news", capacity=8192),
                    "b": sb.subscriber("Global\\news", capacity=8192),
                    "c": sc.subscriber("Global\\news", capacity=8192)}
            pb, pc = sb.publisher("Global\\news"), sc.publisher("Global\\news")
            n = 1500
            for i in range(n):  # two publishers on two brokers, interleaved
                pb.publish(b"b%d" % i)
                pc.publish(b"c%d" % i)
            for where, sub in subs.items():
                got = drain(sub, 2 * n)
                assert len(got) == 2 * n, (where, len(got))
                assert [m for m in got if m.startswith(b"b")] == [b"b%d" % i for i in range(n)], where
                assert [m for m in got if m.startswith(b"c")] == [b"c%d" % i for i in range(n)], where
                assert quiet(sub) == [], where  # each once: no echo from the other brokers
            for srv in (b, c):
                assert srv.stats()["federation"]["messages_out"] == n
            assert a.stats()["federation"]["messages_out"] == 0  # it relays back none of what it got
            assert a.stats()["federation"]["messages_in"] == 2 * n
    finally:
        for srv in (a, b, c):
            srv.stop()


def test_numpy_arrays_cross_with_their_dtype_and_shape(tmp_path: Path, nats_server: NatsServer) -> None:
    a, b = (federated(tmp_path, n, nats_server.url) for n in "ab")
    try:
        with broker.connect(a.address) as sa, broker.connect(b.address) as sb:
            sub = sa.subscriber("Global\\frames")
            arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
            rec = np.array([(1, 2.5)], dtype=[("id", "<i4"), ("x", "<f8")])
            with sb.publisher("Global\\frames") as pub:
                pub.publish(arr)
                pub.publish(rec)
            got = drain(sub, 2)
            assert got[0].dtype == arr.dtype and got[0].shape == arr.shape and (got[0] == arr).all()
            assert got[1].dtype == rec.dtype and got[1].tolist() == rec.tolist()
    finally:
        a.stop()
        b.stop()


def test_local_names_never_leave_the_host(tmp_path: Path, nats_server: NatsServer) -> None:
    a, b = (federated(tmp_path, n, nats_server.url) for n in "ab")
    seen: list[str] = []

    async def watch(nc: Any) -> None:  # a third party on NATS: sees every broker subject there is
        async def cb(msg: Any) -> None:
            seen.append(msg.subject)
        await nc.subscribe("brkfed.>", cb=cb)
        await nc.flush()

        def publish() -> None:  # a blocking client: off the loop
            with broker.connect(b.address) as sb:
                with sb.publisher("news") as local, sb.publisher("Local\\news2") as local2, \
                        sb.publisher("Global\\news") as glob:
                    for i in range(50):
                        local.publish(b"L%d" % i)
                        local2.publish(b"L%d" % i)
                    glob.publish(b"the one")
        await asyncio.to_thread(publish)
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)

    try:
        with broker.connect(a.address) as sa:
            sub = sa.subscriber("news")
            raw_nats(nats_server.url, "c", watch)
            assert seen == ["brkfed.b.t." + "news".encode().hex()], seen  # only the Global one crossed
            assert quiet(sub) == []
        assert b.stats()["federation"]["messages_out"] == 1
    finally:
        a.stop()
        b.stop()


def test_the_default_denies_a_broker_not_accepted(tmp_path: Path, nats_server: NatsServer) -> None:
    a = federated(tmp_path, "a", nats_server.url, accept=["c"])  # takes c's messages, not b's
    b = federated(tmp_path, "b", nats_server.url, accept=())     # takes nobody's
    c = federated(tmp_path, "c", nats_server.url, accept="*")
    try:
        with broker.connect(a.address) as sa, broker.connect(b.address) as sb, broker.connect(c.address) as sc:
            sub_a, sub_b = sa.subscriber("Global\\t"), sb.subscriber("Global\\t")
            sub_c = sc.subscriber("Global\\t")
            sb.publisher("Global\\t").publish(b"from b")
            sc.publisher("Global\\t").publish(b"from c")
            assert drain(sub_a, 1) == [b"from c"] and quiet(sub_a) == []
            assert drain(sub_b, 1) == [b"from b"] and quiet(sub_b) == []  # its own only
            assert sorted(drain(sub_c, 2)) == [b"from b", b"from c"]
            until(lambda: a.stats()["federation"]["denied"] == 1, "a counts b's message as denied")
            assert b.stats()["federation"]["denied"] == 1
    finally:
        for srv in (a, b, c):
            srv.stop()


def test_a_broker_without_credentials_is_refused(tmp_path: Path, nats_server: NatsServer) -> None:
    for fed in (Federation(nats_server.url, name="a", accept="*", connect_timeout=3),
                Federation(nats_server.url, name="a", user="a", password="wrong", accept="*", connect_timeout=3)):
        srv = broker.Server(str(tmp_path / "a.sock"), federation=fed)
        with pytest.raises(BrokerError, match="cannot join NATS.*(uthorization|ermission)"):
            srv.start()
        assert not (tmp_path / "a.sock").exists()  # it did not start serving


def test_an_origin_is_the_nats_servers_word_not_the_senders(tmp_path: Path, nats_server: NatsServer) -> None:
    """User a may publish only under brkfed.a: its claim to be b is refused by NATS, never delivered."""
    b = federated(tmp_path, "b", nats_server.url, accept=["a"])
    topic_hex = "t".encode().hex()
    try:
        with broker.connect(b.address) as sb:
            sub = sb.subscriber("Global\\t")

            async def spoof(nc: Any) -> None:
                from shmbroker.federation import HEAD
                await nc.publish(f"brkfed.c.t.{topic_hex}", HEAD.pack(1, 1, 0, 0, 7) + b"spoofed")
                await nc.publish(f"brkfed.a.t.{topic_hex}", HEAD.pack(1, 1, 0, 0, 6) + b"honest")
                await nc.flush()
                await asyncio.sleep(0.3)

            _, errors = raw_nats(nats_server.url, "a", spoof)
            assert any("ermission" in str(e) for e in errors), errors
            assert drain(sub, 1) == [b"honest"] and quiet(sub) == []
    finally:
        b.stop()


def test_malformed_messages_are_counted_and_dropped_alone(tmp_path: Path, nats_server: NatsServer) -> None:
    b = federated(tmp_path, "b", nats_server.url, accept=["a"])
    try:
        with broker.connect(b.address) as sb:
            sub = sb.subscriber("Global\\t")

            async def garbage(nc: Any) -> None:
                from shmbroker.federation import HEAD
                t = "t".encode().hex()
                await nc.publish(f"brkfed.a.t.{t}", b"")                            # no head
                await nc.publish(f"brkfed.a.t.{t}", HEAD.pack(1, 1, 0, 999, 1) + b"x")  # meta past the end
                await nc.publish("brkfed.a.t.zz", HEAD.pack(1, 1, 0, 0, 1) + b"x")  # not hex
                await nc.publish("brkfed.a.t." + b"\xff".hex(), HEAD.pack(1, 1, 0, 0, 0))  # not UTF-8
                await nc.publish("brkfed.a.x.y", b"?")                              # not a topic subject
                await nc.publish(f"brkfed.a.t.{t}", HEAD.pack(1, 2, 0, 0, 4) + b"fine")
                await nc.flush()

            raw_nats(nats_server.url, "a", garbage)
            assert drain(sub, 1) == [b"fine"] and quiet(sub) == []
            until(lambda: b.stats()["federation"]["malformed"] >= 4, "the malformed ones are counted")

    finally:
        b.stop()


def test_a_batch_of_many_and_a_message_bigger_than_natss_max_payload_cross_whole(
        tmp_path: Path, nats_server: NatsServer) -> None:
    """Small messages go many to a NATS message; one of 3 MiB (NATS's max_payload is 1 MiB) goes in parts."""
    a, b = (federated(tmp_path, n, nats_server.url) for n in "ab")
    try:
        with broker.connect(a.address) as sa, broker.connect(b.address) as sb:
            sub = sb.subscriber("Global\\big", capacity=4096)
            big = bytes(range(256)) * (3 * 4096)
            with sa.publisher("Global\\big") as pub:
                pub.publish_many([b"s%d" % i for i in range(1000)])
                pub.publish(big)
                pub.publish(b"after")
            got = drain(sub, 1002)
            assert got[:1000] == [b"s%d" % i for i in range(1000)]
            assert got[1000] == big and got[1001] == b"after"
            assert quiet(sub) == []
    finally:
        a.stop()
        b.stop()


def test_the_metrics_endpoint_and_stat_show_the_federation_link(tmp_path: Path, nats_server: NatsServer) -> None:
    from tests.framework.test_metrics import _scrape

    fed = Federation(nats_server.url, name="a", user="a", password="pw-a", accept="*")
    a = broker.Server(str(tmp_path / "a.sock"), federation=fed, metrics=0)
    a.start()
    b = federated(tmp_path, "b", nats_server.url)
    try:
        with broker.connect(str(tmp_path / "a.sock")) as sa, broker.connect(b.address) as sb:
            sub = sb.subscriber("Global\\m")
            with sa.publisher("Global\\m") as pub:
                pub.publish_many([b"x" * 10] * 5)
            assert len(drain(sub, 5)) == 5
        until(lambda: _scrape(a).get('broker_federation_messages_out_total{broker="a"}') == 5.0, "5 out")
        got = _scrape(a)
        assert got['broker_federation_connected{broker="a"}'] == 1.0
        assert got['broker_federation_bytes_out_total{broker="a"}'] == 50.0
        assert got['broker_federation_messages_in_total{broker="a"}'] == 0.0
    finally:
        a.stop()
        b.stop()


def test_a_remote_broker_cannot_make_this_one_keep_topics_nobody_reads(tmp_path: Path, nats_server: NatsServer) -> None:
    """Messages to Global topics nobody here reads make nothing here (counted unread); a read one still
    arrives; the host publishers of topics read once are let go when there are many."""
    a, b = (federated(tmp_path, n, nats_server.url) for n in "ab")
    try:
        with broker.connect(a.address) as sa, broker.connect(b.address) as sb:
            sub = sb.subscriber("Global\\wanted")
            with sa.publisher("Global\\wanted") as wanted:
                for i in range(300):
                    with sa.publisher(f"Global\\spam{i}") as spam:
                        spam.publish(b"x")
                wanted.publish(b"yes")
            assert drain(sub, 1) == [b"yes"]
            until(lambda: b.stats()["federation"]["unread"] == 300, "b counts the 300 it has no reader for")
            names = {t["topic"] for t in b.stats()["topics"]}
            assert not [n for n in names if "spam" in n], sorted(names)[:5]
    finally:
        a.stop()
        b.stop()


def test_a_broker_that_goes_in_the_middle_of_a_big_message_leaves_nothing_behind(tmp_path: Path,
                                                                                 nats_server: NatsServer) -> None:
    """Broker a (a raw NATS client with a's credentials, speaking the federation's protocol) sends the first
    part of a big message to Global\\big, then goes silent: b drops the part it held once a is known gone
    (nothing kept for a dead broker), delivers nothing of it, and its subscriber goes on with what comes
    next; `shmbroker stat` names the brokers heard."""
    from shmbroker.federation import HEAD, MORE
    b = federated(tmp_path, "b", nats_server.url, heartbeat=0.5)  # (a is gone 1.5 s after its last beat)
    try:
        with broker.connect(b.address) as s, s.subscriber("Global\\big") as sub:
            subject = "brkfed.a.t." + "big".encode().hex()

            async def first_part_then_silence(nc: Any) -> None:
                await nc.publish("brkfed.a.hb", b"run1")
                await nc.publish(subject, HEAD.pack(7, 1, MORE, 0, 1000) + b"x" * 1000)
                await nc.flush()
            raw_nats(nats_server.url, "a", first_part_then_silence)
            until(lambda: b.federation is not None and "a" in b.federation._parts, "b holds a's first part")
            stat = b.stats()["federation"]
            assert stat["brokers"] == ["a"]
            until(lambda: b.federation is not None and not b.federation._parts, "b lets a's part go")
            stat = b.stats()["federation"]
            assert stat["cut_short"] == 1 and stat["brokers_gone"] == 1 and stat["brokers"] == []
            assert quiet(sub) == []

            async def whole(nc: Any) -> None:  # a, back: a message in one piece arrives whole
                await nc.publish("brkfed.a.hb", b"run2")
                await nc.publish(subject, HEAD.pack(7, 2, 0, 0, 5) + b"hello")
                await nc.flush()
            raw_nats(nats_server.url, "a", whole)
            assert drain(sub, 1) == [b"hello"]
    finally:
        b.stop()
