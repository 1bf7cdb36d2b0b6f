"""Global\\ linked services across brokers federated over a real nats-server (issue 18): calls with their
four typed arguments and write-backs, the local provider first, a queue group over several providers,
and the same typed errors as locally (NOT_FOUND, TIMED_OUT, DISCONNECTED, PERMISSION_DENIED)."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import shmbroker as broker
from shmbroker import ServiceError
from shmbroker.protocol.frames import Status
from tests.federation.nats_servers import NatsServer
from tests.federation.test_topics import drain, federated, nats_server, quiet, raw_nats, until  # noqa: F401

pytest.importorskip("nats")
ROOT = Path(__file__).resolve().parents[2]


class Provider:
    """A client offering `name` from a thread: handler(call) per call."""

    def __init__(self, address: str, name: str, handler: Callable[[Any], Any]) -> None:
        self.stop, self.ready = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, args=(address, name, handler))
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self, address: str, name: str, handler: Callable[[Any], Any]) -> None:
        with broker.connect(address) as s, s.offer(name, handler) as offer:
            self.ready.set()
            offer.serve_forever(self.stop, 0.05)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def upper(call: Any) -> int:
    call.write(1, call.read(0).upper())
    return call.integer(2) + 1


def test_a_call_crosses_with_its_typed_arguments_and_write_backs(tmp_path: Path, nats_server: NatsServer) -> None:
    p, c = federated(tmp_path, "a", nats_server.url), federated(tmp_path, "b", nats_server.url)
    prov = Provider(p.address, "Global\\upper", upper)
    try:
        until(lambda: p.stats()["federation"]["services"] == ["upper"], "p serves it on NATS")
        with broker.connect(c.address) as s, s.link("Global\\upper") as link:
            for i in range(50):
                out = broker.Buffer(64)
                assert link.send_receive(1, b"abc%d" % i, out, i) == i + 1
                assert out.value == b"ABC%d" % i
            out = bytearray(8)
            assert link.send_receive(1, b"xy", out, 0) == 1 and out[:2] == b"XY"
            small = broker.Buffer(2)
            with pytest.raises(ServiceError) as e:  # the writes do not fit the caller's buffer: as locally
                link.send_receive(1, b"abcdef", small, 0)
            assert e.value.status == Status.DIED and "Overflow" in str(e.value)  # the handler raised it
        assert c.stats()["federation"]["calls_out"] >= 51 and p.stats()["federation"]["calls_in"] >= 51
    finally:
        prov.close()
        p.stop()
        c.stop()


def test_the_process_that_embeds_a_broker_calls_and_offers_across_brokers(tmp_path: Path,
                                                                         nats_server: NatsServer) -> None:
    """Server.link and Server.offer, the embedding process's own: a host link on b calls a client's offer on
    a and a host offer on a, with the write-backs and the typed errors; not from the server's own loop."""
    p, c = federated(tmp_path, "a", nats_server.url), federated(tmp_path, "b", nats_server.url)
    prov = Provider(p.address, "Global\\upper", upper)

    def host_lower(call: Any) -> int:  # the host process's own service on a
        call.write(1, call.read(0).lower())
        return 7
    offer = p.offer("Global\\lower", host_lower)
    try:
        until(lambda: p.stats()["federation"]["services"] == ["lower", "upper"], "p serves both on NATS")
        link, low = c.link("Global\\upper"), c.link("Global\\lower")
        for i in range(20):
            out = broker.Buffer(64)
            assert link.send_receive(1, b"abc%d" % i, out, i) == i + 1 and out.value == b"ABC%d" % i
            out = bytearray(16)
            assert low.send_receive(1, b"XyZ%d" % i, out) == 7 and bytes(out).startswith(b"xyz%d" % i)
        assert c.link("Global\\lower").call(1, b"QQ", reply_size=8) == b"qq"
        with pytest.raises(ServiceError) as e:
            c.link("Global\\nobody").send_receive(1, b"x")
        assert e.value.status == Status.NOT_FOUND
        with pytest.raises(ServiceError) as e:  # a Local name never leaves the host
            c.link("upper").send_receive(1, b"x")
        assert e.value.status == Status.NOT_FOUND

        def slow(call: Any) -> int:
            time.sleep(1.5)
            return 0
        slow_offer = p.offer("Global\\slow", slow)
        until(lambda: "slow" in p.stats()["federation"]["services"], "p serves slow")
        with pytest.raises(ServiceError) as e:
            c.link("Global\\slow").send_receive(1, b"x", timeout=0.3)
        assert e.value.status == Status.TIMED_OUT
        slow_offer.close()
        # from the server's own loop a host call cannot wait for another broker: a clear error, not a hang
        seen: list[BaseException] = []

        def on_loop() -> None:
            try:
                c.link("Global\\lower").send_receive(1, b"x")
            except BaseException as err:  # noqa: BLE001 - looked at below
                seen.append(err)
        c.call_soon(on_loop)
        until(lambda: bool(seen), "the loop's call refused")
        assert isinstance(seen[0], broker.StateError) and "another broker" in str(seen[0])
    finally:
        offer.close()
        prov.close()
        p.stop()
        c.stop()


def test_the_local_provider_comes_first_and_a_queue_group_spreads_the_rest(tmp_path: Path,
                                                                           nats_server: NatsServer) -> None:
    a, b, c = (federated(tmp_path, n, nats_server.url) for n in "abc")
    served = {"a": 0, "b": 0, "c": 0}

    def who(name: str) -> Callable[[Any], int]:
        def handler(call: Any) -> int:
            served[name] += 1
            call.write(0, name.encode())
            return 0
        return handler

    provs = [Provider(a.address, "Global\\who", who("a")), Provider(b.address, "Global\\who", who("b"))]
    try:
        until(lambda: all(s.stats()["federation"]["services"] == ["who"] for s in (a, b)), "both serve it")
        with broker.connect(c.address) as s, s.link("Global\\who") as link:
            for _ in range(200):
                out = broker.Buffer(8)
                link.send_receive(1, out)
                assert out.value in (b"a", b"b")
        assert served["a"] + served["b"] == 200 and served["a"] > 0 and served["b"] > 0, served
        with broker.connect(a.address) as s, s.link("Global\\who") as link:  # a has its own: it comes first
            for _ in range(50):
                out = broker.Buffer(8)
                link.send_receive(1, out)
                assert out.value == b"a"
    finally:
        for prov in provs:
            prov.close()
        for srv in (a, b, c):
            srv.stop()


def test_typed_errors_nobody_a_timeout_a_denial_and_local_names(tmp_path: Path, nats_server: NatsServer) -> None:
    p = federated(tmp_path, "a", nats_server.url, accept=["b"], call_timeout=1.0)
    c = federated(tmp_path, "b", nats_server.url, call_timeout=1.0)
    d = federated(tmp_path, "c", nats_server.url, call_timeout=1.0)  # p does not accept c
    release = threading.Event()

    def slow(call: Any) -> int:
        release.wait(10)
        return 0

    provs = [Provider(p.address, "Global\\slow", slow), Provider(p.address, "Global\\fine", lambda call: 7),
             Provider(p.address, "local", lambda call: 7)]
    try:
        until(lambda: p.stats()["federation"]["services"] == ["fine", "slow"], "p serves them")
        with broker.connect(c.address) as s:
            with s.link("Global\\nobody") as link, pytest.raises(ServiceError) as e:
                link.send_receive(1)
            assert e.value.status == Status.NOT_FOUND and "any broker" in str(e.value)
            with s.link("Global\\slow") as link, pytest.raises(ServiceError) as e:
                link.send_receive(1)
            assert e.value.status == Status.TIMED_OUT
            release.set()
            with s.link("local") as link, pytest.raises(ServiceError) as e:  # a Local name never leaves
                link.send_receive(1)
            assert e.value.status == Status.NOT_FOUND
            with s.link("Global\\fine") as link:
                assert link.send_receive(1) == 7
        with broker.connect(d.address) as s, s.link("Global\\fine") as link, \
                pytest.raises(broker.PermissionDenied, match="broker:c may not call service 'fine'.*--grant 'broker:c service:fine call'"):
            link.send_receive(1)
        assert p.stats()["federation"]["denied"] == 1
    finally:
        release.set()
        for prov in provs:
            prov.close()
        for srv in (p, c, d):
            srv.stop()


PROVIDER = """
import sys, time, shmbroker as broker
def handler(call):
    if call.integer(0) == 1:
        print("busy", flush=True)
        time.sleep(60)
    call.write(1, b"%s")
    return 0
with broker.connect(sys.argv[1]) as s, s.offer("Global\\\\svc", handler) as offer:
    print("ready", flush=True)
    offer.serve_forever()
"""


def test_a_provider_dies_its_callers_get_disconnected_and_the_next_provider_serves(
        tmp_path: Path, nats_server: NatsServer) -> None:
    p1, p2, c = (federated(tmp_path, n, nats_server.url) for n in "abc")
    procs = []
    try:
        for srv, tag in ((p1, "p1"), (p2, "p2")):
            proc = subprocess.Popen([sys.executable, "-c", PROVIDER % tag, srv.address], stdout=subprocess.PIPE,
                                    text=True, cwd=ROOT)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            procs.append(proc)
        until(lambda: all(s.stats()["federation"]["services"] == ["svc"] for s in (p1, p2)), "both serve it")
        with broker.connect(c.address, sharable=True) as s, s.link("Global\\svc") as link:
            # a call that stays with the provider it reached; that provider is killed
            errors: list[BaseException] = []

            def stuck() -> None:
                try:
                    link.send_receive(1, 1, broker.Buffer(8))
                except BaseException as e:  # noqa: BLE001 - looked at below
                    errors.append(e)
            t = threading.Thread(target=stuck)
            t.start()
            busy = [p for p in procs if _said(p, "busy", 10)]
            assert len(busy) == 1
            busy[0].send_signal(signal.SIGKILL)
            busy[0].wait(10)
            t.join(20)
            assert len(errors) == 1 and isinstance(errors[0], ServiceError), errors
            assert errors[0].status == Status.DISCONNECTED
            left = "p2" if busy[0] is procs[0] else "p1"
            for _ in range(20):  # the rest go to the provider that is left
                out = broker.Buffer(8)
                assert link.send_receive(1, 0, out) == 0 and out.value == left.encode()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        for srv in (p1, p2, c):
            srv.stop()


def _said(proc: subprocess.Popen[str], word: str, timeout: float) -> bool:
    """Did the process print `word` within `timeout` (the one that got the call does; the other says nothing)."""
    import selectors
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            return False
        return proc.stdout.readline().strip() == word
    finally:
        sel.close()


def test_malformed_calls_are_answered_and_change_nothing(tmp_path: Path, nats_server: NatsServer) -> None:
    p = federated(tmp_path, "a", nats_server.url)
    prov = Provider(p.address, "Global\\fine", lambda call: 7)
    try:
        until(lambda: p.stats()["federation"]["services"] == ["fine"], "p serves it")
        from shmbroker.federation import ANSWER, CALL

        async def garbage(nc: Any) -> list[Any]:
            hexed = "fine".encode().hex()
            out: list[Any] = []
            for payload in (b"", b"\x01", CALL.pack(1, 1 << 31), CALL.pack(1, 0) + b"\xff" * 7,
                            CALL.pack(1, 0)):
                inbox = nc.new_inbox()
                sub = await nc.subscribe(inbox)
                await nc.publish(f"brkfed.b.s.{hexed}", payload, reply=inbox)
                while True:  # T (who took it) may come first; R is the answer
                    reply = await sub.next_msg(timeout=5)
                    if reply.data[:1] == b"T":  # (a call running longer than 2 ms there: a loaded machine)
                        assert reply.data[1:].decode().split(" ")[0] == "a"
                        continue
                    assert reply.data[:1] == b"R"
                    out.append(ANSWER.unpack_from(reply.data, 1)[0])
                    break
                await sub.unsubscribe()
            return out

        got, _ = raw_nats(nats_server.url, "b", garbage)
        # the first three are refused before a provider sees them; the fourth's arguments are nonsense to the
        # provider a's broker gave it to; the last is a good call
        assert got == [Status.ARGUMENT] * 4 + [7], got
        assert p.stats()["federation"]["malformed"] >= 2
    finally:
        prov.close()
        p.stop()


SLOW = """
import sys, time, shmbroker as broker
def handler(call):
    print("busy", flush=True)
    time.sleep(120)
    return 0
with broker.connect(sys.argv[1]) as s, s.offer("Global\\\\slow", handler) as offer:
    print("ready", flush=True)
    try:
        offer.serve_forever()
    except broker.BrokerError:
        pass
"""


def test_a_broker_killed_mid_call_ends_its_callers_calls_with_disconnected(tmp_path: Path,
                                                                          nats_server: NatsServer) -> None:
    """broker a runs as `shmbroker serve --federate` and is killed while it runs b's caller's call: b learns
    it from a's missed heartbeats, long before the call's timeout, and says DISCONNECTED."""
    secret = tmp_path / "pw"
    secret.write_text("pw-a\n")
    secret.chmod(0o600)
    a_sock = str(tmp_path / "a.sock")
    a = subprocess.Popen([sys.executable, "-m", "shmbroker", "serve", "--address", a_sock, "--federate", nats_server.url,
                          "--federation-name", "a", "--federation-accept", "b", "--nats-user", "a",
                          "--nats-password-file", str(secret)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=ROOT)
    b = federated(tmp_path, "b", nats_server.url, call_timeout=300, heartbeat=0.2)
    provider = None
    try:
        assert a.stdout is not None and a.stdout.readline().startswith("listening on"), a.stderr
        provider = subprocess.Popen([sys.executable, "-c", SLOW, a_sock], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert provider.stdout is not None and provider.stdout.readline().strip() == "ready"
        stat = subprocess.run([sys.executable, "-m", "shmbroker", "stat", a_sock, "--interval", "0"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert "federation: broker a on NATS 127.0.0.1:" in stat.stdout, stat.stdout + stat.stderr
        until(lambda: "served here: slow" in subprocess.run(
            [sys.executable, "-m", "shmbroker", "stat", a_sock, "--interval", "0"], cwd=ROOT, capture_output=True,
            text=True, timeout=60).stdout, "a serves Global\\slow on NATS")
        with broker.connect(b.address, sharable=True) as s, s.link("Global\\slow") as link:
            errors: list[BaseException] = []

            def call() -> None:
                try:
                    link.send_receive(1)
                except BaseException as e:  # noqa: BLE001 - looked at below
                    errors.append(e)
            t = threading.Thread(target=call)
            t.start()
            assert _said(provider, "busy", 20)
            # a's broker said it has the call (T: a call running longer than 2 ms there), so b watches a
            until(lambda: b.federation is not None and any(p.provider == "a" for p in b.federation._pending.values()),
                  "b knows a took the call")
            a.send_signal(signal.SIGKILL)
            a.wait(10)
            t.join(60)
            assert not t.is_alive()
            assert len(errors) == 1 and isinstance(errors[0], ServiceError), errors
            assert errors[0].status == Status.DISCONNECTED and "broker a is gone" in str(errors[0])
        assert b.federation is not None and b.federation._pending == {}  # nothing is left of the call
    finally:
        for proc in (a, provider):
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(10)
                for f in (proc.stdout, proc.stderr):
                    if f is not None:
                        f.close()
        b.stop()
        from shmbroker.core.ring import sweep
        sweep()  # the killed broker's segments: their creator is dead


def test_under_serve_async_the_federation_runs_on_the_servers_own_loop(tmp_path: Path,
                                                                       nats_server: NatsServer) -> None:
    """A host process that embeds a Server with one argument (federation=) and serves it with serve_async():
    the NATS connection is a task of that loop, no thread of its own; topics and calls cross both ways."""
    b = federated(tmp_path, "b", nats_server.url)
    a_sock = str(tmp_path / "a.sock")
    a = broker.Server(a_sock, federation=broker.Federation(nats_server.url, name="a", user="a", password="pw-a",
                                                           accept="*"))

    def host_upper(call: Any) -> int:  # the host process's own service on a
        call.write(1, call.read(0).upper())
        return 0

    async def main() -> None:
        serving = asyncio.ensure_future(a.serve_async())
        while not a.bound or a.federation is None:
            assert not serving.done(), serving
            await asyncio.sleep(0.01)
        assert not [t.name for t in threading.enumerate() if t.name.startswith("broker-federation a")]
        offer = a.offer("Global\\upper", host_upper)
        while a.federation.stats["services"] != ["upper"]:
            await asyncio.sleep(0.01)

        def clients() -> None:  # blocking clients: in a thread, as another process would be
            with broker.connect(a_sock) as sa, broker.connect(b.address) as sb:
                on_b, on_a = sb.subscriber("Global\\t"), sa.subscriber("Global\\t")
                sa.publisher("Global\\t").publish(b"from a")
                sb.publisher("Global\\t").publish(b"from b")
                assert sorted([on_b.receive(timeout=10), on_b.receive(timeout=10)]) == [b"from a", b"from b"]
                assert sorted([on_a.receive(timeout=10), on_a.receive(timeout=10)]) == [b"from a", b"from b"]
                with sb.link("Global\\upper") as link:
                    out = broker.Buffer(16)
                    assert link.send_receive(1, b"abc", out) == 0 and out.value == b"ABC"
        await asyncio.to_thread(clients)
        offer.close()
        a.stop()
        await serving

    try:
        asyncio.run(main())
        assert a.federation is None
    finally:
        b.stop()


def test_grants_name_remote_brokers_explicitly_and_nothing_else_lets_them_in(tmp_path: Path,
                                                                          nats_server: NatsServer) -> None:
    """broker a takes from b what its grants name (broker:b ...), and nothing from c; a grant to `*` covers
    this host's peers, never another host's broker."""
    fed = broker.Federation(nats_server.url, name="a", user="a", password="pw-a")  # accept nobody wholesale
    a = broker.Server(str(tmp_path / "a.sock"), federation=fed,
                      grants=["broker:b topic:prices.* publish", "broker:b service:upper call", "* service:open call"])
    a.start()
    b, c = federated(tmp_path, "b", nats_server.url), federated(tmp_path, "c", nats_server.url)
    provs = [Provider(str(tmp_path / "a.sock"), "Global\\upper", upper),
             Provider(str(tmp_path / "a.sock"), "Global\\open", lambda call: 5)]
    try:
        until(lambda: a.federation is not None and a.federation.stats["services"] == ["open", "upper"], "a serves")
        with broker.connect(str(tmp_path / "a.sock")) as sa:
            prices, news = sa.subscriber("Global\\prices.eur"), sa.subscriber("Global\\news")
            for srv in (b, c):
                with broker.connect(srv.address) as s:
                    s.publisher("Global\\prices.eur").publish(b"from " + srv.federation.config.name.encode())
                    s.publisher("Global\\news").publish(b"news")
                    with s.link("Global\\upper") as link:
                        out = broker.Buffer(8)
                        if srv is b:
                            assert link.send_receive(1, b"ok", out, 0) == 1 and out.value == b"OK"
                        else:
                            with pytest.raises(broker.PermissionDenied, match="broker:c service:upper call"):
                                link.send_receive(1, b"no", out, 0)
                    with s.link("Global\\open") as link, pytest.raises(broker.PermissionDenied):
                        link.send_receive(1)  # `*` is not another host's broker
            assert drain(prices, 1) == [b"from b"] and quiet(prices) == []
            assert quiet(news) == []
            assert a.stats()["federation"]["denied"] >= 5
    finally:
        for prov in provs:
            prov.close()
        for srv in (a, b, c):
            srv.stop()


@pytest.mark.parametrize("how", ["silent", "bye"])
def test_a_broker_that_goes_before_it_says_it_took_a_call_ends_that_call(tmp_path: Path, nats_server: NatsServer,
                                                                         how: str) -> None:
    """Broker a (here a raw NATS client with a's credentials, speaking the federation's protocol) takes b's
    caller's call and goes within the call's first 2 ms, before it says T: it stops beating, or says bye.
    The call ends with DISCONNECTED once a is known to be gone, long before its 300 s timeout."""
    b = federated(tmp_path, "b", nats_server.url, call_timeout=300, heartbeat=0.2)
    took = threading.Event()
    gone = threading.Event()
    stop = threading.Event()

    async def fake_a(nc: Any) -> None:
        async def on_call(msg: Any) -> None:  # takes it, says nothing (no T, no R)
            took.set()
        await nc.subscribe("brkfed.*.s." + "slow".encode().hex(), queue="brkfed", cb=on_call)
        await nc.flush()
        while not took.is_set() and not stop.is_set():  # beats while it lives
            await nc.publish("brkfed.a.hb", b"run1")
            await asyncio.sleep(0.05)
        if how == "bye":
            await nc.publish("brkfed.a.hb", b"bye run1")
            await nc.flush()
        gone.set()
        while not stop.is_set():  # (connected, silent)
            await asyncio.sleep(0.05)
    peer = threading.Thread(target=raw_nats, args=(nats_server.url, "a", fake_a))
    peer.start()
    try:
        until(lambda: b.federation is not None and "a" in b.federation._seen, "b has heard a's heartbeat")
        with broker.connect(b.address) as s, s.link("Global\\slow") as link:
            with pytest.raises(ServiceError) as e:
                link.send_receive(1, b"x", timeout=30)  # (without the rule: TIMED_OUT after these 30 s)
            assert took.is_set() and gone.is_set()
            assert e.value.status == Status.DISCONNECTED, e.value
            assert "broker a went while the call was on its way" in str(e.value)
        assert b.federation is not None and b.federation._pending == {}
    finally:
        stop.set()
        peer.join(10)
        b.stop()


def test_a_call_that_reached_a_broker_whose_provider_just_went_is_asked_again(tmp_path: Path,
                                                                               nats_server: NatsServer) -> None:
    """Broker a (a raw NATS client with a's credentials, speaking the federation's protocol) says "not here"
    to the first delivery of b's caller's call, as a broker whose provider went just then says; b publishes
    the call again, and the answer to the second delivery is the caller's."""
    from shmbroker.federation import _answer
    b = federated(tmp_path, "b", nats_server.url)
    deliveries: list[bytes] = []
    stop = threading.Event()
    ready = threading.Event()

    async def fake_a(nc: Any) -> None:
        async def on_call(msg: Any) -> None:
            deliveries.append(bytes(msg.data))
            if len(deliveries) == 1:
                await msg.respond(_answer(Status.NOT_FOUND, "not here"))
            else:
                await msg.respond(_answer(5, "", b""))
        await nc.subscribe("brkfed.*.s." + "moving".encode().hex(), queue="brkfed", cb=on_call)
        await nc.flush()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
    peer = threading.Thread(target=raw_nats, args=(nats_server.url, "a", fake_a))
    peer.start()
    try:
        assert ready.wait(10)
        with broker.connect(b.address) as s, s.link("Global\\moving") as link:
            assert link.send_receive(3, b"payload") == 5
        assert len(deliveries) == 2 and deliveries[0] == deliveries[1]  # the same call, published again
        assert b.federation is not None and b.federation._pending == {}
    finally:
        stop.set()
        peer.join(10)
        b.stop()
