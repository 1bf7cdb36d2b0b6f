"""The federation under faults, with real nats-servers: a node of a 3-node cluster killed mid-traffic,
NATS away while publishers go on (the bounded outbound buffer, then FullTimeout), and the relayed
subscribers' own policies."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import shmbroker as broker
from shmbroker import Federation
from tests.federation.nats_servers import NatsServer, free_port, users
from tests.federation.test_topics import drain, federated, nats_server, quiet, until  # noqa: F401

pytest.importorskip("nats")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    ports = [free_port() for _ in range(3)]
    nodes = [NatsServer(tmp_path, f"n{i + 1}", users("a", "b"), cluster_port=ports[i],
                        routes=[p for j, p in enumerate(ports) if j != i]) for i in range(3)]
    for n in nodes:
        n.start()
    yield nodes
    for n in nodes:
        n.stop()


def routed(nodes: list[NatsServer], timeout: float = 20.0) -> None:
    """Until every node has its two routes (a message then crosses the cluster)."""
    import json
    import urllib.request
    del json, urllib  # (the monitoring port is off: routes show in each node's log instead)
    deadline = time.monotonic() + timeout
    while not all(sum("Route connection created" in line for line in n.log) >= 2 for n in nodes):
        assert time.monotonic() < deadline, "the cluster did not form:\n" + "".join(nodes[0].log[-20:])
        time.sleep(0.05)


@pytest.mark.stress  # a cluster, a node's death and the reconnects: ~10 s
def test_a_nats_node_killed_mid_traffic(tmp_path: Path, cluster: list[NatsServer]) -> None:
    """a publishes through the node it is on, which dies: it reconnects to another. NATS core is at most
    once: what was in flight in the dead node, or published while a subscriber's broker was reconnecting, may
    be lost; nothing else is, nothing twice, nothing out of order."""
    routed(cluster)
    urls = ",".join(n.url for n in cluster)
    a = federated(tmp_path, "a", urls)
    b = federated(tmp_path, "b", urls)
    try:
        with broker.connect(b.address) as sb:
            sub = sb.subscriber("Global\\ticks", capacity=16384)
            n = 4000
            stop = threading.Event()
            failed: list[BaseException] = []

            def publish() -> None:
                try:
                    with broker.connect(a.address) as sa, sa.publisher("Global\\ticks", block_timeout=30) as pub:
                        for i in range(n):
                            pub.publish(b"%d" % i)
                            if i % 10 == 0:
                                time.sleep(0.002)  # (over a second or more: the node dies mid-way)
                            if stop.is_set():
                                return
                except BaseException as e:  # noqa: BLE001 - said below
                    failed.append(e)

            until(lambda: a.stats()["federation"]["connected"] is not None, "a is connected")
            t = threading.Thread(target=publish)
            t.start()
            got = [int(m) for m in drain(sub, 1000)]
            port = int(a.stats()["federation"]["connected"].rsplit(":", 1)[1])
            [node] = [x for x in cluster if x.port == port]
            node.kill()
            deadline = time.monotonic() + 60
            while (not got or got[-1] != n - 1) and time.monotonic() < deadline:
                try:
                    got.append(int(sub.receive(timeout=0.5)))
                except broker.EmptyTimeout:
                    pass
            stop.set()
            t.join(30)
            assert not failed, failed
            assert got and got[-1] == n - 1, "the last message arrived after the reconnect"
            assert got == sorted(set(got)), "in order, none twice"
            # what is lost is lost in the failover: while a broker had no server, or NATS had not yet carried
            # b's interest to a's new server. At most two gaps (a's reconnect and b's), none after both are back
            gaps = [(x, y) for x, y in zip(got, got[1:]) if y != x + 1]
            assert len(gaps) <= 2, f"{n - len(got)} lost in {len(gaps)} gaps: {gaps[:10]}"
            until(lambda: a.stats()["federation"]["reconnects"] >= 1, "a reconnected")
            assert quiet(sub) == []
    finally:
        a.stop()
        b.stop()


def test_while_nats_is_away_the_outbound_buffer_fills_then_publishers_time_out(tmp_path: Path) -> None:
    nats = NatsServer(tmp_path, "n1", users("a", "b")).start()
    a = federated(tmp_path, "a", nats.url, outbound=32)
    b = federated(tmp_path, "b", nats.url)
    try:
        # (a publisher on a socket session: one on shared memory has its own ring before it, 4 MiB by default,
        # which fills first and then makes it wait the same way)
        with broker.connect(a.address, socket_only=True) as sa, broker.connect(b.address) as sb:
            sub = sb.subscriber("Global\\q", capacity=1024)
            pub = sa.publisher("Global\\q", block_timeout=0.5)
            pub.publish(b"0")
            assert drain(sub, 1) == [b"0"]
            nats.kill()
            until(lambda: a.stats()["federation"]["connected"] is None, "a sees NATS gone")
            sent = 1
            with pytest.raises(broker.FullTimeout):
                for i in range(1, 200):
                    pub.publish(b"%d" % i)
                    sent += 1
            assert 32 <= sent - 1 <= 40, sent  # the outbound buffer's 32 (and what the tap had taken)
            nats.start()  # the same port: both brokers reconnect, and what waited goes out
            until(lambda: a.stats()["federation"]["messages_out"] == sent, "a sends what waited once NATS is back")
            until(lambda: b.stats()["federation"]["reconnects"] == 1, "b is back")
            # NATS core is at most once: what a sent before b's subscription was back on the restarted
            # server is lost there (b reconnected first: all of it); what arrives is in order, once
            got = drain(sub, sent - 1, timeout=3)
            assert got == [m for m in [b"%d" % i for i in range(1, sent)] if m in set(got)]
            pub.publish(b"after")
            assert drain(sub, 1) == [b"after"]
            pub.close()
    finally:
        a.stop()
        b.stop()
        nats.stop()


def test_relayed_subscribers_keep_their_policies(tmp_path: Path, nats_server: NatsServer) -> None:
    a, b = (federated(tmp_path, n, nats_server.url) for n in "ab")
    try:
        with broker.connect(a.address) as sa, broker.connect(b.address) as sb:
            drop = sb.subscriber("Global\\p", capacity=10, policy="drop")
            gone = sb.subscriber("Global\\p", capacity=10, policy="disconnect")
            keep = sb.subscriber("Global\\p", capacity=1000)
            with sa.publisher("Global\\p") as pub:
                for i in range(100):
                    pub.publish(b"%d" % i)
            assert drain(keep, 100) == [b"%d" % i for i in range(100)]
            got = drain(drop, 10)
            assert got == [b"%d" % i for i in range(90, 100)] and drop.lost == 90
            with pytest.raises(broker.Disconnected):
                drain(gone, 1)
            assert b.stats()["federation"]["dropped_in"] == 0
    finally:
        a.stop()
        b.stop()
