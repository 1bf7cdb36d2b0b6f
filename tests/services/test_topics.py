"""Publish/subscribe topics (src/shmbroker/services/topics/broker.py, src/shmbroker/services/topics/client.py), with real processes.

The server runs here (its books are checked); publishers and subscribers run in
forked children, on shared-memory sessions unless a test says otherwise, and
report what they received through pipes.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import struct
import tempfile
import threading
import time

import numpy as np
import pytest

import shmbroker as broker
from shmbroker import connect
from shmbroker.protocol.codes import TOPIC_FETCH, TOPIC_PUBLISH, TOPIC_PUBLISH_MANY, TOPIC_PUBLISHER, TOPIC_SUBSCRIBER

from tests.helpers import Child, wait_for


def _topic(srv: broker.Server, name: str) -> dict:
    [t] = [t for t in srv.stats()["topics"] if t["topic"] == name]
    return t


def _report(w: int, obj: object) -> None:
    data = json.dumps(obj).encode()
    os.write(w, struct.pack("<I", len(data)) + data)


def _read_report(r: int) -> object:
    head = b""
    while len(head) < 4:
        chunk = os.read(r, 4 - len(head))
        assert chunk, "the child closed its pipe without a report"
        head += chunk
    (n,) = struct.unpack("<I", head)
    data = b""
    while len(data) < n:
        data += os.read(r, n - len(data))
    return json.loads(data)


def _subscriber_child(address: str, topic: str, count: int, w: int, ready_w: int, **opts) -> Child:
    def run() -> None:
        with connect(address, slots=4) as s, s.subscriber(topic, **opts) as sub:
            os.write(ready_w, b"r")
            got = [sub.receive_message(30) for _ in range(count)]
            _report(w, {"transport": s.transport, "lost": sub.lost,
                        "got": [[m.publisher, m.seq, m.value.decode()] for m in got]})
    return Child(run)


def test_fan_out_to_several_subscriber_processes_in_order(server):
    n, subs = 2000, 3
    pipes = [os.pipe() for _ in range(subs)]  # one each: a report is bigger than a pipe writes at once
    ready_r, ready_w = os.pipe()
    kids = [_subscriber_child(server.address, "fan", n, w, ready_w) for _, w in pipes]
    try:
        for _ in kids:
            assert os.read(ready_r, 1) == b"r"
        wait_for(lambda: len(_topic(server, "fan")["subscribers"]) == subs)

        def publisher() -> None:
            with connect(server.address) as s, s.publisher("fan") as pub:
                for i in range(0, n, 100):  # singles and batches
                    if i % 200:
                        pub.publish_many([b"m%d" % j for j in range(i, i + 100)])
                    else:
                        for j in range(i, i + 100):
                            pub.publish(b"m%d" % j)

        assert Child(publisher).join(60) == 0
        reports = [_read_report(r) for r, _ in pipes]
        for rep in reports:
            assert rep["transport"] == "shared memory" and rep["lost"] == 0
            assert [m[2] for m in rep["got"]] == [f"m{j}" for j in range(n)]
            assert [m[1] for m in rep["got"]] == list(range(1, n + 1))
        for k in kids:
            assert k.join(30) == 0
        assert server.stats()["topics"] == []  # everyone left: the topic is forgotten
    finally:
        for k in kids:
            k.kill()
        for fd in [fd for p in pipes for fd in p] + [ready_r, ready_w]:
            os.close(fd)


def test_many_publishers_keep_their_own_order_and_nothing_is_lost(server):
    n, pubs = 500, 3
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    sub = _subscriber_child(server.address, "many", n * pubs, w, ready_w, capacity=64)  # small: publishers block
    try:
        assert os.read(ready_r, 1) == b"r"
        wait_for(lambda: len(_topic(server, "many")["subscribers"]) == 1)

        def publisher(k: int) -> None:
            with connect(server.address) as s, s.publisher("many", block_timeout=60) as pub:
                for j in range(n):
                    pub.publish(f"p{k}-{j}".encode())

        kids = [Child(lambda k=k: publisher(k)) for k in range(pubs)]
        for k in kids:
            assert k.join(60) == 0
        rep = _read_report(r)
        assert rep["lost"] == 0
        by_pub: dict[int, list[tuple[int, str]]] = {}
        for pid, seq, value in rep["got"]:
            by_pub.setdefault(pid, []).append((seq, value))
        assert len(by_pub) == pubs
        for items in by_pub.values():
            assert [s for s, _ in items] == list(range(1, n + 1))  # each publisher's order
            k = items[0][1].split("-")[0]
            assert [v for _, v in items] == [f"{k}-{j}" for j in range(n)]
        assert sub.join(30) == 0
    finally:
        sub.kill()
        for fd in (r, w, ready_r, ready_w):
            os.close(fd)


def test_the_drop_policy_counts_every_loss_exactly(server):
    with connect(server.address) as a, connect(server.address) as b:
        sub = b.subscriber("drop", policy="drop", capacity=50)
        keep = b.subscriber("drop", capacity=5000)  # a blocking one that keeps up: it sees everything
        with a.publisher("drop") as pub:
            for i in range(1000):
                pub.publish(b"%d" % i)
        wait_for(lambda: _topic(server, "drop")["published"] == 1000)  # (a ring publisher's are relayed as
        got = []                                                          # the server reads its ring)
        while True:
            try:
                got.append(sub.receive_message(0.2))
            except broker.EmptyTimeout:
                break
        assert len(got) + sub.lost == 1000 and sub.lost == 950
        assert [m.seq for m in got] == list(range(951, 1001))  # the newest stay
        assert len(keep.receive_many(5000, timeout=1)) == 1000 and keep.lost == 0
        t = _topic(server, "drop")
        assert t["dropped"] == 950 and {s["policy"]: s["lost"] for s in t["subscribers"]} == {"drop": 950, "block": 0}
        sub.close()
        keep.close()


def test_a_subscriber_disconnected_by_policy_learns_why_and_the_others_go_on(server):
    with connect(server.address) as a, connect(server.address) as b:
        slow = b.subscriber("disc", policy="disconnect", capacity=10)
        other = b.subscriber("disc", capacity=100)
        pub = a.publisher("disc")
        for i in range(11):
            pub.publish(b"%d" % i)
        wait_for(lambda: _topic(server, "disc")["disconnected"] == 1)
        with pytest.raises(broker.Disconnected, match="disconnected by policy: 10 messages waited unread"):
            slow.receive(1)
        with pytest.raises(broker.Disconnected):
            slow.receive(1)  # and it stays so
        assert other.receive_many(100, timeout=1) == [b"%d" % i for i in range(11)]
        pub.publish(b"more")
        assert other.receive(1) == b"more"
        t = _topic(server, "disc")
        assert t["disconnected"] == 1 and [s["policy"] for s in t["subscribers"]] == ["block"]
        slow.close()
        other.close()
        pub.close()
    assert server.stats()["topics"] == []  # a topic with nobody left is forgotten


def test_a_blocked_publish_times_out_and_nobody_gets_it(server):
    """A publisher that calls (a socket session): its publish waits at the server."""
    with connect(server.address, socket_only=True) as a, connect(server.address) as b:
        blocking = b.subscriber("full", capacity=3)
        fast = b.subscriber("full", policy="drop", capacity=100)
        pub = a.publisher("full", block_timeout=0.3)
        for i in range(3):
            pub.publish(b"%d" % i)
        t0 = time.monotonic()
        with pytest.raises(broker.FullTimeout, match="no room within 0.3 s"):
            pub.publish(b"never")
        assert time.monotonic() - t0 < 10
        assert blocking.receive_many(10, timeout=1) == [b"0", b"1", b"2"]
        assert fast.receive_many(10, timeout=1) == [b"0", b"1", b"2"]  # "never" reached nobody
        pub.publish(b"3")  # room again
        assert blocking.receive(1) == b"3" and fast.receive(1) == b"3"
        assert _topic(server, "full")["timed_out"] == 1
        for x in (blocking, fast, pub):
            x.close()


def test_a_blocked_publish_goes_through_when_the_subscriber_reads(server):
    r, w = os.pipe()

    def reader() -> None:
        with connect(server.address) as s, s.subscriber("slow", capacity=2) as sub:
            os.write(w, b"r")
            got = []
            for _ in range(20):
                time.sleep(0.01)  # slower than the publisher
                got.append(sub.receive(30))
            _report(w, [g.decode() for g in got])

    kid = Child(reader)
    try:
        assert os.read(r, 1) == b"r"
        wait_for(lambda: "slow" in [t["topic"] for t in server.stats()["topics"]])
        seen = {"queued": 0, "waiting": 0}
        done = threading.Event()

        def watch() -> None:  # the server's books while the publisher runs
            while not done.is_set():
                for t in server.stats()["topics"]:
                    for p in t["publishers"]:
                        seen["waiting"] = max(seen["waiting"], p["waiting"])
                    for q in t["subscribers"]:
                        seen["queued"] = max(seen["queued"], q["queued"])
                time.sleep(0.001)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with connect(server.address, socket_only=True) as s, s.publisher("slow", block_timeout=30) as pub:
                for i in range(20):
                    pub.publish(b"%d" % i)  # waits at the server whenever the reader's queue is full
        finally:
            done.set()
            watcher.join()
        assert seen["queued"] <= 2 and seen["waiting"] == 1  # held, never over the subscriber's capacity
        assert _read_report(r) == [str(i) for i in range(20)]
        assert kid.join(30) == 0
    finally:
        kid.kill()
        os.close(r)
        os.close(w)


def test_history_for_late_joiners(server):
    with connect(server.address) as a, connect(server.address) as b:
        pub = a.publisher("hist", history=5)
        for i in range(20):
            pub.publish(b"%d" % i)
        late = b.subscriber("hist", history=3)
        assert late.receive_many(10, timeout=1) == [b"17", b"18", b"19"]
        all_of_it = b.subscriber("hist", history=100)  # asks for more than is kept: what is kept
        assert all_of_it.receive_many(10, timeout=1) == [b"%d" % i for i in range(15, 20)]
        none = b.subscriber("hist")
        pub.publish(b"new")
        assert none.receive_many(10, timeout=1) == [b"new"]
        for x in (late, all_of_it, none, pub):
            x.close()


def test_numpy_arrays_travel_with_their_shape_and_dtype(server):
    with connect(server.address) as a, connect(server.address) as b:
        sub = b.subscriber("arrays")
        pub = a.publisher("arrays")
        arrays = [np.arange(12, dtype=np.float64).reshape(3, 4), np.zeros((2, 0, 5), np.int16),
                  np.array(7, np.uint8), np.arange(10, dtype=">i4")[::2], np.ones(100_000, np.float32)]
        for x in arrays:
            pub.publish(x)
        pub.publish_many(arrays[:2] + [b"raw"])
        got = [sub.receive(5) for _ in range(8)]  # (relayed as the server reads the ring: one by one)
        for x, y in zip(arrays + arrays[:2], got):
            assert isinstance(y, np.ndarray) and y.dtype == x.dtype and y.shape == x.shape and np.array_equal(x, y)
            assert not y.flags.writeable  # a view over the received bytes
        assert got[-1] == b"raw"
        with pytest.raises(TypeError, match="Python objects"):
            pub.publish(np.array([object()]))
        with pytest.raises(TypeError, match="takes bytes"):
            pub.publish("text")
        sub.close()
        pub.close()


def test_a_message_bigger_than_the_subscribers_buffer_is_fetched_with_a_bigger_one(server):
    with connect(server.address) as a, connect(server.address) as b:
        sub = b.subscriber("big", buffer_size=4096)
        pub = a.publisher("big")
        big = os.urandom(3 << 20)
        pub.publish(b"small")
        pub.publish(big)
        assert sub.receive(2) == b"small" and sub.receive(2) == big
        sub.close()
        pub.close()


def test_a_subscriber_in_another_session_gets_every_message_over_its_socket(server, other_user):
    """A different user: the session rule gives it the socket; the broker relays the topic to it,
    same order, nothing lost, and it maps no segment at all."""
    uid, gid = other_user
    d = tempfile.mkdtemp(prefix="brk-topic-", dir="/tmp")
    os.chmod(d, 0o777)
    path = os.path.join(d, "t.sock")
    n = 3000
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    try:
        with broker.Server(path, grants=[f"uid:{uid} topic:* subscribe"]) as srv:  # another user: granted
            os.chmod(path, 0o666)

            def stranger() -> None:
                os.setgid(gid)
                os.setuid(uid)
                with connect(path) as s, s.subscriber("Global\\x", capacity=256) as sub:  # another user: a Global name
                    os.write(ready_w, b"r")
                    got = [sub.receive_message(30) for _ in range(n)]
                    with open("/proc/self/maps") as f:
                        maps = [line for line in f if "/dev/shm/" in line or "/memfd:" in line]
                    _report(w, {"transport": s.transport, "seqs": [m.seq for m in got],
                                "ok": all(m.value == b"%d" % i for i, m in enumerate(got)), "maps": maps})

            kid = Child(stranger)
            try:
                assert os.read(ready_r, 1) == b"r"
                with connect(path) as s, s.publisher("Global\\x", block_timeout=30) as pub:
                    assert s.transport == "shared memory"
                    for i in range(0, n, 50):
                        pub.publish_many([b"%d" % j for j in range(i, i + 50)])
                rep = _read_report(r)
                assert rep["transport"] == "socket" and rep["ok"] and rep["seqs"] == list(range(1, n + 1))
                assert rep["maps"] == []
                assert kid.join(30) == 0
            finally:
                kid.kill()
    finally:
        for fd in (r, w, ready_r, ready_w):
            os.close(fd)
        shutil.rmtree(d, ignore_errors=True)


def test_tcp_subscribers_and_asyncio(server, tmp_path):
    srv = broker.Server(str(tmp_path / "tcp.sock"), tcp="tcp://127.0.0.1:0", grants=["key:test topic:net subscribe"])
    with srv:
        address = f"tcp://127.0.0.1:{srv.bound[1][1]}"
        with connect(address) as t, connect(str(tmp_path / "tcp.sock")) as u:
            assert t.transport == "socket"
            sub = t.subscriber("Global\\net")  # a TCP peer has a Local namespace of its own
            pub = u.publisher("Global\\net")

            async def main() -> list:
                out = []
                for i in range(5):
                    pub.publish(b"%d" % i)
                    out.append(await sub.areceive())
                return out

            assert asyncio.run(main()) == [b"%d" % i for i in range(5)]
            sub.close()
            pub.close()


def test_kill_9_of_a_publisher_and_of_a_subscriber_mid_traffic(server):
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()

    def flood() -> None:
        with connect(server.address) as s, s.publisher("k", block_timeout=60) as pub:
            os.write(ready_w, b"p")
            i = 0
            while True:
                pub.publish(b"%d" % i)
                i += 1

    def doomed_reader() -> None:
        with connect(server.address) as s, s.subscriber("k", capacity=8) as sub:
            os.write(ready_w, b"s")
            while True:
                sub.receive(30)
                time.sleep(0.001)

    with connect(server.address) as me:
        survivor = me.subscriber("k", policy="drop", capacity=100)
        pub_kid, sub_kid = Child(flood), Child(doomed_reader)
        try:
            assert sorted(os.read(ready_r, 1) + os.read(ready_r, 1)) == sorted(b"ps")
            survivor.receive(10)
            wait_for(lambda: _topic(server, "k")["published"] > 200)
            os.kill(sub_kid.pid, signal.SIGKILL)  # a blocking subscriber dies: the publisher is not stuck
            sub_kid.join(10)
            wait_for(lambda: len(_topic(server, "k")["subscribers"]) == 1)
            before = _topic(server, "k")["published"]
            try:
                wait_for(lambda: _topic(server, "k")["published"] > before + 200)
            except AssertionError:
                raise AssertionError(f"{before} then {_topic(server, 'k')}") from None
            assert _topic(server, "k")["draining"] == 0
            os.kill(pub_kid.pid, signal.SIGKILL)
            pub_kid.join(10)
            wait_for(lambda: _topic(server, "k")["publishers"] == [])
            try:
                wait_for(lambda: _topic(server, "k")["draining"] == 0)  # what it wrote before it died, relayed
            except AssertionError:
                rel = [(p.id, p.closed, p.relay and p.relay.backlog(), p.armed) for p in server.service("topics").relays]
                raise AssertionError(f"{_topic(server, 'k')} {rel}") from None
            with me.publisher("k") as pub:  # the topic still works
                pub.publish(b"after")
                deadline = time.monotonic() + 5
                while survivor.receive(max(0.01, deadline - time.monotonic())) != b"after":
                    pass
            t = _topic(server, "k")
            assert [s["policy"] for s in t["subscribers"]] == ["drop"] and t["publishers"] == []
        finally:
            pub_kid.kill()
            sub_kid.kill()
            survivor.close()
    for fd in (r, w, ready_r, ready_w):
        os.close(fd)


def test_untrusted_topic_requests_fail_alone(server):
    with connect(server.address) as s:
        pub = s.publisher("u")
        sub = s.subscriber("u")
        bad = [
            (TOPIC_PUBLISHER, (b"",), "1 to 200 bytes"),
            (TOPIC_PUBLISHER, (b"x" * 201,), "1 to 200 bytes"),
            (TOPIC_PUBLISHER, (b"\xff",), "not UTF-8"),
            (TOPIC_PUBLISHER, (b"ok", b"{"), "not JSON"),
            (TOPIC_PUBLISHER, (b"ok", b"[]"), "a JSON object"),
            (TOPIC_PUBLISHER, (b"ok", b'{"nope": 1}'), "unknown option"),
            (TOPIC_SUBSCRIBER, (b"ok", b'{"policy": "sometimes"}'), "policy is one of"),
            (TOPIC_SUBSCRIBER, (b"ok", b'{"capacity": 0}'), "capacity is an integer"),
            (TOPIC_SUBSCRIBER, (b"ok", b'{"capacity": true}'), "capacity is an integer"),
            (TOPIC_SUBSCRIBER, (b"ok", b'{"history": 1.5}'), "history is an integer"),
            (TOPIC_SUBSCRIBER, (b"ok", b'{"direct": 1}'), "a flag is true or false"),
            (TOPIC_PUBLISHER, (b"ok", b'{"block_timeout": 3601}'), "block_timeout is 0 to 3600 seconds"),
            (TOPIC_PUBLISHER, (b"ok", b'{"block_timeout": "1"}'), "block_timeout is 0 to 3600 seconds"),
            (TOPIC_PUBLISHER, (b"ok", b'{"ring_capacity": 98304}'), "ring_capacity is a power of two"),
            (TOPIC_PUBLISHER, (b"ok", b'{"ring": null}'), "a flag is true or false"),
            (TOPIC_PUBLISHER, (b"ok", b"[" * 5000 + b"]" * 5000), "not JSON|options are at most"),
        ]
        for code, args, text in bad:
            with pytest.raises(broker.ServiceError, match=text) as e:
                s.send_receive(code, *args)
            assert e.value.status == broker.Status.ARGUMENT
        with pytest.raises(broker.BadHandle):
            s.send_receive(TOPIC_PUBLISH, b"x", handle=sub.handle)  # a subscriber is not a publisher
        with pytest.raises(broker.BadHandle):
            s.send_receive(TOPIC_FETCH, broker.Buffer(64), 1, handle=pub.handle)
        with pytest.raises(broker.BadHandle):
            s.send_receive(TOPIC_PUBLISH, b"x", handle=12345)
        for table in (b"", b"\x05\x00\x00\x00", struct.pack("<III", 1, 10, 0), struct.pack("<III", 1, 1, 0) + b"z",
                      struct.pack("<I", 0)):
            with pytest.raises(broker.ServiceError) as e:
                s.send_receive(TOPIC_PUBLISH_MANY, b"abc", table, handle=pub.handle)
            assert e.value.status == broker.Status.ARGUMENT
        with pytest.raises(broker.ServiceError, match="writable argument and an int"):
            s.send_receive(TOPIC_FETCH, b"x", 1, handle=sub.handle)
        with pytest.raises(broker.ServiceError, match="at least 1"):
            s.send_receive(TOPIC_FETCH, broker.Buffer(64), 0, handle=sub.handle)
        pub.publish(b"fine")  # the session goes on
        assert sub.receive(1) == b"fine"
        assert s.topics()[0]["topic"] == "u"
        pub.close()
        sub.close()


def test_a_relay_that_never_runs_dry_does_not_keep_the_server_from_its_sockets(server):
    """A ring publisher flooding a topic that the server relays (a drop subscriber): the relay
    always has work, and still the server accepts a new client, serves it and notices a death."""
    go_r, go_w = os.pipe()

    def flood() -> None:
        with connect(server.address) as s, s.publisher("flood") as pub:
            os.write(go_w, b"g")
            while True:
                pub.publish(b"x" * 64)

    with connect(server.address) as me:
        sub = me.subscriber("flood", policy="drop", capacity=10)
        kid = Child(flood)
        try:
            assert os.read(go_r, 1) == b"g"
            wait_for(lambda: _topic(server, "flood")["published"] > 50_000)  # the relay is busy
            doomed = Child(lambda: (connect(server.address), time.sleep(60)))
            try:
                wait_for(lambda: len(server.sessions()) == 3)  # me, the flood, the new one: connected
            finally:
                doomed.kill()
            wait_for(lambda: len(server.sessions()) == 2)  # its death noticed
            assert sub.receive(5) == b"x" * 64
        finally:
            kid.kill()
            sub.close()
            os.close(go_r)
            os.close(go_w)


def test_a_subscriber_of_the_same_session_reads_the_publishers_ring_in_place(server):
    """A publisher on a shared-memory session writes its own ring; a blocking subscriber of the same
    session that comes after it maps that ring and reads it: the server relays nothing."""
    r, w = os.pipe()
    go_r, go_w = os.pipe()  # the reader stays subscribed until the server's table has been read
    with connect(server.address) as a:
        pub = a.publisher("direct")
        assert pub.ring is not None and ".topic." in pub.ring

        def reader() -> None:
            with connect(server.address) as s, s.subscriber("direct") as sub:
                assert sub._rings, "the subscriber joined the publisher's ring"
                os.write(w, b"r")
                got = [sub.receive_message(30) for _ in range(5000)]
                with open("/proc/self/maps") as f:
                    mapped = any(pub.ring[1:] in line for line in f)
                _report(w, {"ok": [m.value for m in got] == [b"%d" % i for i in range(5000)],
                            "seqs": [m.seq for m in got] == list(range(1, 5001)), "mapped": mapped})
                os.read(go_r, 1)

        kid = Child(reader)
        try:
            assert os.read(r, 1) == b"r"
            for i in range(0, 5000, 100):
                pub.publish_many([b"%d" % j for j in range(i, i + 100)])
            assert _read_report(r) == {"ok": True, "seqs": True, "mapped": True}
            t = _topic(server, "direct")
            assert [(s["direct"], s["delivered"]) for s in t["subscribers"]] == [(True, 0)]
            assert t["publishers"][0]["relayed"] is False  # the data never went through the server
            os.write(go_w, b"g")
            assert kid.join(30) == 0
        finally:
            kid.kill()
            pub.close()
            for fd in (r, w, go_r, go_w):
                os.close(fd)


def test_messages_bigger_than_a_ring_record_go_in_fragments(server):
    with connect(server.address) as a, connect(server.address, sharable=True) as b, \
            connect(server.address, socket_only=True, sharable=True) as c:
        pub = a.publisher("frag", ring_capacity=1 << 16, block_timeout=30)  # records of at most 32 KiB
        direct = b.subscriber("frag", capacity=4)
        relayed = c.subscriber("frag", capacity=4)
        assert direct._rings and not relayed._rings
        bigs = [os.urandom(n) for n in (10, 200_000, 32_700, 70_000, 5)]
        got_d: list[bytes] = []
        got_r: list[bytes] = []
        import threading as _t

        def read(sub, out) -> None:
            for _ in bigs:
                out.append(sub.receive(30))

        # the ring holds less than one of them: the readers read while the publisher writes
        readers = [_t.Thread(target=read, args=(direct, got_d)), _t.Thread(target=read, args=(relayed, got_r))]
        for t in readers:
            t.start()
        for x in bigs:
            pub.publish(x)
        for t in readers:
            t.join(60)
        assert got_d == bigs and got_r == bigs
        for x in (direct, relayed, pub):
            x.close()


def test_a_ring_publishers_batch_that_finds_no_room_says_how_many_went(server):
    with connect(server.address) as a, connect(server.address) as b:
        pub = a.publisher("cut", ring_capacity=1 << 16, block_timeout=0.2)
        sub = b.subscriber("cut")  # direct, and it does not read yet: the ring fills
        assert sub._rings
        with pytest.raises(broker.FullTimeout, match="of the batch went") as e:
            pub.publish_many([b"%05d" % i for i in range(10_000)])
        went = e.value.published
        assert 0 < went < 10_000
        with pytest.raises(broker.FullTimeout):
            pub.publish(b"one more")  # still full
        got = [sub.receive_message(5) for _ in range(went)]
        assert [m.value for m in got] == [b"%05d" % i for i in range(went)]
        assert [m.seq for m in got] == list(range(1, went + 1))
        pub.publish(b"after")
        last = sub.receive_message(5)
        assert (last.value, last.seq) == (b"after", went + 1)  # no number lost to the ones that did not go
        sub.close()
        pub.close()


def test_a_subscriber_of_another_login_session_never_maps_a_ring(tmp_path):
    """Under policy same-user a process of another login session gets shared memory with the server,
    but a publisher's ring belongs to the publisher's session: that subscriber gets it relayed."""
    from tests.transport.test_identity import new_login_session, require_audit_sessions

    require_audit_sessions()
    path = str(tmp_path / "s.sock")
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    sub_r, sub_w = os.pipe()
    with broker.Server(path, shm_policy="same-user") as srv, connect(path) as a:
        def other_session() -> None:  # forked before the ring exists: it inherits no mapping of it
            before, after, _ = new_login_session()
            if after == before:
                _report(w, {"skip": True})
                return
            os.read(sub_r, 1)  # the publisher is there now
            with connect(path) as s, s.subscriber("Global\\k") as sub:  # another login session: a Global name
                _report(w, {"transport": s.transport, "rings": len(sub._rings)})
                os.read(go_r, 1)
                got = [sub.receive(30) for _ in range(100)]
                with open("/proc/self/maps") as f:
                    mapped = [line for line in f if ".topic." in line]
                _report(w, {"ok": got == [b"%d" % i for i in range(100)], "mapped": mapped})

        kid = Child(other_session)
        pub = a.publisher("Global\\k")
        try:
            assert pub.ring is not None
            os.write(sub_w, b"s")
            first = _read_report(r)
            if first.get("skip"):
                pytest.skip("writing /proc/self/loginuid did not start a new audit session")
            assert first == {"transport": "shared memory", "rings": 0}
            os.write(go_w, b"g")
            for i in range(100):
                pub.publish(b"%d" % i)
            assert _read_report(r) == {"ok": True, "mapped": []}
            assert kid.join(30) == 0
        finally:
            kid.kill()
            pub.close()
            for fd in (r, w, go_r, go_w, sub_r, sub_w):
                os.close(fd)


def test_a_server_that_does_not_spin_still_relays_rings(tmp_path):
    path = str(tmp_path / "s.sock")
    with broker.Server(path, spin_us=0) as srv, connect(path) as a, connect(path, socket_only=True) as b:
        pub = a.publisher("nospin")
        sub = b.subscriber("nospin")  # relayed from the ring
        for i in range(500):
            pub.publish(b"%d" % i)
        assert [sub.receive(10) for _ in range(500)] == [b"%d" % i for i in range(500)]
        assert b.server_stats()["sessions"]  # the socket session is served meanwhile
        sub.close()
        pub.close()


def test_requests_the_topic_service_chokes_on_end_only_themselves(server):
    with connect(server.address) as s:
        deep = b"[" * 1000 + b"]" * 1000
        with pytest.raises(broker.ServiceError, match="not JSON"):
            s.send_receive(TOPIC_PUBLISHER, b"x", deep)
        with pytest.raises(broker.ServiceError, match="too small for the ring's name"):
            s.send_receive(TOPIC_PUBLISHER, b"x", b'{"ring": true}', broker.Buffer(4))
        with s.publisher("still") as pub:  # the server goes on
            pub.publish(b"ok")


@pytest.mark.parametrize("view", [False, True])
def test_a_direct_subscriber_is_not_kept_from_relayed_messages_by_a_busy_ring(server, view):
    """Messages of a publisher that calls (a socket session) reach a direct subscriber while the ring it
    reads in place is never empty: it looks at what is relayed to it every few hundred messages. (The
    subscriber is a process of its own: in this one, the server's thread would wait for the GIL.)"""
    n = 30_000
    go_r, go_w = os.pipe()
    r, w = os.pipe()
    with connect(server.address) as a, connect(server.address, socket_only=True) as c:
        ring_pub = a.publisher("mixed", block_timeout=30)

        def reader() -> None:
            with connect(server.address) as b, b.subscriber("mixed", capacity=8) as sub:
                _report(w, {"direct": bool(sub._rings)})
                os.read(go_r, 1)
                got = [bytes(sub.receive_view(10)) if view else sub.receive(10) for _ in range(n + 1)]
                _report(w, {"index": got.index(b"called"),
                            "order": [g for g in got if g != b"called"] == [b"r%d" % i for i in range(n)]})

        kid = Child(reader)
        try:
            assert _read_report(r) == {"direct": True}
            for i in range(n):  # the ring is full of them before the subscriber reads one
                ring_pub.publish(b"r%d" % i)
            with c.publisher("mixed") as call_pub:
                call_pub.publish(b"called")
                os.write(go_w, b"g")
                rep = _read_report(r)
            assert rep["order"] and rep["index"] < n // 2, rep
            assert kid.join(30) == 0
        finally:
            kid.kill()
            ring_pub.close()
    for fd in (go_r, go_w, r, w):
        os.close(fd)


def test_a_batch_bigger_than_a_blocking_subscribers_capacity_is_refused_at_once(server):
    with connect(server.address, socket_only=True) as a, connect(server.address) as b:
        sub = b.subscriber("cap", capacity=3)
        pub = a.publisher("cap", block_timeout=30)
        t0 = time.monotonic()
        with pytest.raises(broker.ServiceError, match="publish it in parts") as e:
            pub.publish_many([b"1", b"2", b"3", b"4"])
        assert e.value.status == broker.Status.ARGUMENT and time.monotonic() - t0 < 10
        pub.publish_many([b"1", b"2", b"3"])
        assert sub.receive_many(10, timeout=5) == [b"1", b"2", b"3"]
        sub.close()
        pub.close()


def _inside(view, ring) -> bool:
    """Whether a buffer's bytes lie in a ring's own mapping (nothing was copied out of it)."""
    addr = np.frombuffer(view, np.uint8).ctypes.data
    start = ring._res.addr
    return start <= addr < start + ring._res.mapping.size


def test_loan_builds_a_message_in_the_ring_and_receive_view_reads_it_in_place(server):
    """Zero-copy within a session: loan() lends room in the publisher's own ring, receive_view()
    lends the record itself to a direct subscriber; a relayed subscriber gets the same messages
    with the same numbers; an aborted loan is seen by nobody and takes no number."""
    with connect(server.address) as s:
        pub = s.publisher("zc")
        sub = s.subscriber("zc")
        relay = s.subscriber("zc", policy="drop")  # not a direct reader: the server relays to it
        assert pub.ring is not None and len(sub._rings) == 1 and not relay._rings
        buf = pub.loan(5)
        assert _inside(buf, pub._ring)
        buf[:] = b"hello"
        pub.commit()
        pub.loan(10)[:3] = b"abc"
        pub.commit(3)  # only the bytes written
        pub.loan(4)
        with pytest.raises(broker.StateError, match="last loan first"):
            pub.loan(1)
        pub.abort()
        with pytest.raises(broker.StateError, match="without loan"):
            pub.commit()
        arr = pub.loan_array((2, 3), np.float32)
        arr[:] = np.arange(6, dtype=np.float32).reshape(2, 3)
        pub.commit()
        pub.publish(b"plain")

        v = sub.receive_view(5)
        assert isinstance(v, memoryview) and v.readonly and bytes(v) == b"hello"
        assert _inside(v, next(iter(sub._rings.values())))  # the subscriber's view is the ring's record
        assert bytes(sub.receive_view(5)) == b"abc"  # the next one releases the last
        got = sub.receive_view(5)
        assert got.dtype == np.float32 and got.shape == (2, 3) and not got.flags.writeable
        assert (got == np.arange(6).reshape(2, 3)).all()
        with pytest.raises(broker.ViewInUse):
            sub.release()  # the array holds its record (it cannot be revoked)...
        del got
        sub.release()  # ...until it is dropped
        assert sub.receive(5) == b"plain"
        seen = [relay.receive_message(5) for _ in range(4)]
        assert [m.seq for m in seen] == [1, 2, 3, 4]  # the aborted loan took no number
        assert [bytes(m.value) if isinstance(m.value, bytes) else m.value.tolist() for m in seen] == \
            [b"hello", b"abc", [[0, 1, 2], [3, 4, 5]], b"plain"]
        # bigger than a record of the ring: lent from a local buffer, published in fragments
        big = pub.loan(pub._ring.max_record + 100)  # two records: they fit the ring together
        assert not _inside(big, pub._ring)
        big[:2], big[-2:] = b"<<", b">>"
        pub.commit()
        v = sub.receive_view(5)
        assert len(v) == pub._ring.max_record + 100 and bytes(v[:2]) == b"<<" and bytes(v[-2:]) == b">>"
        sub.release()
        relay.close()
        sub.close()
        pub.close()


def test_a_loan_on_a_socket_session_is_published_as_publish_does(server):
    with connect(server.address, socket_only=True) as s, connect(server.address) as t:
        pub = s.publisher("sock")
        sub = t.subscriber("sock")
        assert pub.ring is None
        pub.loan(3)[:] = b"xyz"
        pub.commit()
        a = pub.loan_array(4, np.int64)
        a[:] = [1, 2, 3, 4]
        pub.commit()
        assert bytes(sub.receive_view(5)) == b"xyz"
        assert sub.receive_view(5).tolist() == [1, 2, 3, 4]
        sub.release()
        pub.close()
        sub.close()


def test_a_publisher_of_a_closed_session_fails_loudly(server):
    """After its session was closed a publisher's publish() and loan() raise (before, a ring publisher
    went on writing a ring nobody would read)."""
    s = connect(server.address)
    pub = s.publisher("late")
    assert pub.ring is not None
    s.close()
    with pytest.raises(broker.ServerGone):
        pub.publish(b"x")
    with pytest.raises(broker.ServerGone):
        pub.loan(4)
    with pytest.raises(broker.ServerGone):
        pub.publish_many([b"a", b"b"])
    pub.close()


def test_the_assembler_refuses_a_message_announced_bigger_than_its_limit():
    """The server gathers a relayed ring's fragments only up to the frame limit: a record announcing
    more is a bad record (counted), not gigabytes held in memory."""
    from shmbroker.services.topics.wire import RECORD_HEAD, Assembler, split_record

    asm = Assembler(max_message=1000)
    with pytest.raises(ValueError, match="bad record"):
        asm.feed(RECORD_HEAD.pack(1, 0, 5000, 0) + b"x" * 10)  # 10 here, 5000 to come
    recs = split_record(2, b"", b"y" * 900, 256)
    out = [asm.feed(r) for r in recs]
    assert out[-1] == (2, b"", b"y" * 900) and all(o is None for o in out[:-1])
    with pytest.raises(ValueError, match="bad record"):
        asm.feed(split_record(3, b"", b"z" * 1001, 256)[0])


def test_subscribers_beyond_a_rings_slots_are_relayed_and_dead_ones_slots_come_back(server, monkeypatch):
    """A ring has a fixed number of reader slots: the server gives it to as many direct subscribers
    as it has slots for (one kept for its own relay), relays it to the others, and a subscriber that
    died leaves its slot to the next one."""
    from shmbroker.services.topics import broker as _topics

    monkeypatch.setattr(_topics, "RING_CONSUMERS", 4)  # rings made from now on: 4 slots
    with connect(server.address) as s:
        pub = s.publisher("slots")
        subs = [s.subscriber("slots") for _ in range(5)]
        assert [bool(x._rings) for x in subs] == [True, True, True, False, False]  # 3 direct, 2 relayed
        pub.publish_many([b"%d" % i for i in range(50)])
        for x in subs:  # every one of them gets every message, read in place or relayed
            got: list = []
            while len(got) < 50:
                got += x.receive_many(100, timeout=5)
            assert got == [b"%d" % i for i in range(50)]
        for x in subs:
            x.close()

        def doomed() -> None:  # a direct subscriber that dies without leaving its slot
            with connect(server.address) as t:
                sub = t.subscriber("slots")
                assert sub._rings
                os.kill(os.getpid(), signal.SIGKILL)

        relayed = s.subscriber("slots", policy="drop")  # relayed: the server's own reader takes a slot
        pub.publish(b"before")
        assert relayed.receive(5) == b"before"
        assert Child(doomed).join(30) == -signal.SIGKILL
        wait_for(lambda: len(_topic(server, "slots")["subscribers"]) == 1)  # the server saw it end
        # 4 slots: the server's reader, the dead one's, and room for 2; the server promises 3, so the
        # third of these finds the dead one's slot and frees it
        again = [s.subscriber("slots") for _ in range(3)]
        assert all(x._rings for x in again)
        pub.publish(b"after")
        assert all(x.receive(5) == b"after" for x in again) and relayed.receive(5) == b"after"
        for x in again:
            x.close()
        relayed.close()
        pub.close()


def test_a_prefix_subscriber_gets_every_matching_topic_now_and_later(server):
    """subscriber("prices.*"): the topics whose names start with "prices.", those there and those made
    after it, each message with its topic; other topics not; a publisher's name cannot end in '*'."""
    with connect(server.address) as s, connect(server.address, socket_only=True) as t:
        eu = s.publisher("prices.eu")  # a ring publisher (its ring relayed to the prefix subscriber)
        sub = t.subscriber("prices.*", capacity=100)
        alls = s.subscriber("*", policy="drop")
        us = t.publisher("prices.us")  # made after the subscriber: it is subscribed to it too
        other = s.publisher("volumes.eu")
        eu.publish(b"e1")
        us.publish(b"u1")
        other.publish(b"v1")
        eu.publish(b"e2")
        got = [sub.receive_message(5) for _ in range(3)]
        assert sorted((m.topic, m.value) for m in got) == [("prices.eu", b"e1"), ("prices.eu", b"e2"),
                                                          ("prices.us", b"u1")]
        assert [m.value for m in got if m.topic == "prices.eu"] == [b"e1", b"e2"]  # per publisher, in order
        with pytest.raises(broker.EmptyTimeout):
            sub.receive_message(0.3)  # nothing of volumes.eu
        every = sorted((m.topic, m.value) for m in (alls.receive_message(5) for _ in range(4)))
        assert every == [("prices.eu", b"e1"), ("prices.eu", b"e2"), ("prices.us", b"u1"), ("volumes.eu", b"v1")]
        [eu_stats] = [x for x in s.topics() if x["topic"] == "prices.eu"]
        assert sorted(x["pattern"] or "" for x in eu_stats["subscribers"]) == ["*", "prices.*"]
        with pytest.raises(broker.ServiceError, match="prefix"):
            s.publisher("prices.*")
        for x in (eu, us, other):
            x.close()
        sub.close()
        alls.close()
    wait_for(lambda: server.stats()["topics"] == [])  # nothing kept once everyone is gone


def test_subscribing_again_and_again_does_not_grow_a_stalled_subscribers_queue_past_twice_its_capacity(server):
    """Each subscriber that joins makes the server read a ring publisher's ring up to now for the
    others (so the joiner starts after it); for a stalled blocking subscriber that is bounded."""
    with connect(server.address) as a, connect(server.address, socket_only=True) as b, \
            connect(server.address, socket_only=True) as c:
        pub = a.publisher("stall", block_timeout=0.2)
        stalled = b.subscriber("stall", capacity=10)  # relayed; it reads nothing
        for round_ in range(5):
            for i in range(50):  # into the ring until the relay holds it up
                try:
                    pub.publish(b"%d-%d" % (round_, i), timeout=0.05)
                except broker.FullTimeout:
                    break
            c.subscriber("stall", policy="drop").close()  # a joiner: the catch-up
            assert max(x["queued"] for x in _topic(server, "stall")["subscribers"]) <= 20  # 2x its capacity
        got = stalled.receive_many(100, timeout=5)
        assert got and got[0] == b"0-0"  # in order, from the first
        stalled.close()
        pub.close()


def test_a_stalled_subscribers_queue_of_big_messages_is_bounded_in_bytes_too(server):
    """A blocking relayed subscriber of capacity 4096 that reads nothing: of 1 MiB messages the relay
    queues about RELAY_QUEUE_BYTES for it, not 4096 (4 GiB); then the ring fills and the publisher
    waits, as the capacity makes it. Nothing is lost: it gets every message, in order, once it reads."""
    from shmbroker.services.topics.broker import RELAY_QUEUE_BYTES

    big = 1 << 20
    with connect(server.address) as a, connect(server.address, socket_only=True) as b:
        pub = a.publisher("bigstall", block_timeout=0.3)
        assert pub.ring is not None
        stalled = b.subscriber("bigstall", capacity=4096)
        sent = 0
        while sent < 200:  # until the relay holds it up (else 200 MiB would be queued)
            try:
                pub.publish(sent.to_bytes(4, "little") * (big // 4))
            except broker.FullTimeout:
                break
            sent += 1
        assert sent < 200
        [q] = [x["queued"] for x in _topic(server, "bigstall")["subscribers"]]
        assert q * big <= RELAY_QUEUE_BYTES + 64 * big  # at most one relay batch over the bound
        for i in range(sent):
            m = stalled.receive(10)
            assert len(m) == big and m[:4] == i.to_bytes(4, "little")
        stalled.close()
        pub.close()


@pytest.mark.parametrize("publishers", [1, 2])
def test_a_direct_subscriber_takes_over_the_rings_of_publishers_that_come_after_it(server, publishers):
    """Publishers of the same session that come after a direct subscriber: their messages come relayed
    until the subscriber has joined their rings and the ring gives the next one, then in place only;
    every message once, in order per publisher, under the blocking policy's flow control."""
    n, first = 5000, 100
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    with connect(server.address) as s:
        sub = s.subscriber("late", capacity=64)
        assert sub._rings == {}  # nobody publishes yet

        def publish(k: int) -> None:
            with connect(server.address) as p, p.publisher("late", block_timeout=30) as pub:
                assert pub.ring is not None
                for i in range(first):  # these before the subscriber has joined the ring
                    pub.publish(b"%d:%d" % (k, i))
                os.write(ready_w, b"p")
                os.read(go_r, 1)
                for i in range(first, n):
                    pub.publish(b"%d:%d" % (k, i))

        kids = [Child(lambda k=k: publish(k)) for k in range(publishers)]
        try:
            for _ in kids:
                os.read(ready_r, 1)
            got: dict[int, list[int]] = {k: [] for k in range(publishers)}

            def take() -> None:
                k, i = sub.receive(10).split(b":")
                got[int(k)].append(int(i))
            for _ in range(publishers):
                take()  # the first relayed batch brought the news of the rings: joined now
            assert len(sub._handover) == publishers
            os.write(go_w, b"g" * publishers)
            for _ in range(n * publishers - publishers):
                take()
            assert got == {k: list(range(n)) for k in range(publishers)}  # once each, in order
            assert sub._handover == {} and len(sub._direct_only) == publishers  # read in place at the end
            with pytest.raises(broker.EmptyTimeout):
                sub.receive(0.3)  # and nothing twice
            for kid in kids:
                assert kid.join(30) == 0
        finally:
            for kid in kids:
                kid.kill()
            for fd in (ready_r, ready_w, go_r, go_w):
                os.close(fd)
        sub.close()


def test_a_prefix_subscriber_gets_the_rest_of_a_closed_ring_publisher_and_its_topics_under_drop(server):
    """What a ring publisher wrote before it closed still reaches a prefix subscriber (the topic is not
    forgotten while that is relayed); under "drop" the topic names survive the drops."""
    with connect(server.address) as a, connect(server.address, socket_only=True) as b:
        sub = b.subscriber("rest.*", capacity=300)  # blocking: the server relays 300, then waits for room
        pub = a.publisher("rest.one")
        assert pub.ring is not None
        pub.publish_many([b"%d" % i for i in range(1500)])  # into the ring: the relay holds the rest back
        wait_for(lambda: _topic(server, "rest.one")["subscribers"][0]["queued"] >= 300)
        pub.close()  # with 1200 still in its ring
        got = []
        while len(got) < 1500:
            got += [m.value for m in [sub.receive_message(5)]]
        assert got == [b"%d" % i for i in range(1500)]
        sub.close()
        lossy = b.subscriber("drop.*", policy="drop", capacity=5)
        pubs = [a.publisher(f"drop.{k}") for k in range(3)]
        for i in range(40):
            for k, p in enumerate(pubs):
                p.publish(b"%d" % k)
        seen = []
        while True:
            try:
                m = lossy.receive_message(0.5)
            except broker.EmptyTimeout:
                break
            seen.append((m.topic, m.value))
        assert seen and all(t == "drop." + v.decode() for t, v in seen)  # each with its own topic
        assert lossy.lost + len(seen) == 120  # and the count of what was dropped is exact
        for p in pubs:
            p.close()
        lossy.close()


def test_a_subscriber_that_comes_while_a_closed_publishers_rest_is_relayed_gets_the_next_publishers(server):
    """A topic read only by a prefix subscriber, a closed ring publisher's rest still being relayed: an
    exact subscriber that comes then is subscribed to the topic the next publisher publishes to."""
    with connect(server.address) as a, connect(server.address, socket_only=True) as b:
        stalled = b.subscriber("gone*", capacity=5)  # blocking, reads nothing yet: the relay waits
        first = a.publisher("gone")
        first.publish_many([b"%d" % i for i in range(8)])
        wait_for(lambda: _topic(server, "gone")["subscribers"][0]["queued"] >= 5)
        first.close()  # 3 left in its ring, relayed as the prefix subscriber makes room
        late = b.subscriber("gone", policy="drop", capacity=100)  # its catch-up reads the ring to its end
        second = a.publisher("gone")
        second.publish(b"next")
        got = []
        while len(got) < 9:  # (the blocking one holds the relay of both rings until it reads)
            got.append(stalled.receive(5))
        assert got == [b"%d" % i for i in range(8)] + [b"next"]
        # subscribed to the topic that is there, not a forgotten one: it gets "next" (after the rest of the
        # first ring that the bounded catch-up left to it too)
        early = []
        while (m := late.receive(5)) != b"next":
            early.append(m)
        assert early == [b"%d" % i for i in range(8 - len(early), 8)]
        for x in (second, late, stalled):
            x.close()


@pytest.mark.stress  # churn: a second
def test_a_dropping_prefix_subscriber_stays_bounded_and_exact_under_publisher_churn(server):
    with connect(server.address) as a, connect(server.address, socket_only=True) as b:
        sub = b.subscriber("churn.*", policy="drop", capacity=3)
        for k in range(60):  # a publisher a message, each on a topic of its own, nobody reading
            with a.publisher(f"churn.{k}") as p:
                p.publish(b"%d" % k)
        [prefix] = server.service("topics").patterns.values()  # (its topics are forgotten: the server's own books)
        assert len(prefix.queue) <= 6  # three messages and their topics' names, not a name for every publisher
        seen = []
        while True:
            try:
                m = sub.receive_message(0.5)
            except broker.EmptyTimeout:
                break
            seen.append(m)
        assert len(seen) + sub.lost == 60  # what it got and what was dropped, exactly
        assert all(m.topic == "churn." + m.value.decode() for m in seen)
        sub.close()
