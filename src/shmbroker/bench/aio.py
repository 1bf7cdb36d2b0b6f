"""`shmbroker bench aio`: the asyncio client's calls, publishes and receives against the sync client's, side by side.

A broker.Server in a forked child (the rpc benchmark's, serving its echo and the built-in topics and
linked services), a provider of the linked service "echo" in a second child (serve_forever); the
measured client here, on a shared-memory session and on a socket session. Each row is a rate (higher
is better), sync and asyncio in one run, in turn, REPEATS times (the figures are the medians):

* call: sequential 64 B echo round trips (send_receive / await asend_receive);
* call x16: 16 callers at once (sync: call_many with 16 in flight; asyncio: 16 tasks gathered);
* publish+receive: a publisher and a subscriber of the same session, 64 B messages, in batches of
  100 published then 100 received (on shared memory the subscriber reads the publisher's ring in
  place; on a socket session every message is relayed by the broker);
* link call: sequential calls of the linked service (sync: over the private pair of rings on shared
  memory, relayed on a socket; asyncio: relayed by the broker on both).
"""
from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time
from typing import Any, Callable

from shmbroker.api import aconnect, connect
from shmbroker.bench import ring as _bench_ring
from shmbroker.bench.link import _provider
from shmbroker.bench.ring import _child, _machine, _scale
from shmbroker.bench.show import Progress, Table
from shmbroker.bench.rpc import ECHO, PAYLOAD, SMALL, _server
from shmbroker.framework.client import Buffer

TRANSPORTS = ("shm", "socket")
ROWS = ("call", "call16", "pubsub", "link")
LABELS = {"call": "call", "call16": "call x16 in flight", "pubsub": "publish+receive", "link": "link call"}
WAYS = ("sync", "asyncio")
REPEATS = 3
BATCH = 100  # publish+receive: published, then received, this many at a time
CONCURRENT = 16


def _sync(s: Any, row: str, n: int) -> float:
    """n operations of `row` with the sync client: their rate a second."""
    t0 = time.perf_counter()
    if row == "call":
        for _ in range(n):
            s.send_receive(ECHO, PAYLOAD, Buffer(SMALL))
    elif row == "call16":
        s.call_many(ECHO, [(PAYLOAD, Buffer(SMALL)) for _ in range(n)])
    elif row == "pubsub":
        pub, sub = s.publisher("bench-aio"), s.subscriber("bench-aio")
        t0 = time.perf_counter()
        for _ in range(n // BATCH):
            for _ in range(BATCH):
                pub.publish(PAYLOAD)
            for _ in range(BATCH):
                sub.receive()
        n = n // BATCH * BATCH
        dt = time.perf_counter() - t0
        pub.close()
        sub.close()
        return n / dt
    else:
        with s.link("echo") as link:
            for _ in range(50):  # the first calls may go relayed while the pair is made
                link.send_receive(ECHO, PAYLOAD, Buffer(SMALL))
            t0 = time.perf_counter()
            for _ in range(n):
                link.send_receive(ECHO, PAYLOAD, Buffer(SMALL))
            return n / (time.perf_counter() - t0)
    return n / (time.perf_counter() - t0)


async def _async(s: Any, row: str, n: int) -> float:
    """n operations of `row` with the asyncio client: their rate a second."""
    t0 = time.perf_counter()
    if row == "call":
        for _ in range(n):
            await s.asend_receive(ECHO, PAYLOAD, Buffer(SMALL))
    elif row == "call16":
        async def caller(k: int) -> None:
            for _ in range(k):
                await s.asend_receive(ECHO, PAYLOAD, Buffer(SMALL))
        n = n // CONCURRENT * CONCURRENT
        await asyncio.gather(*(caller(n // CONCURRENT) for _ in range(CONCURRENT)))
    elif row == "pubsub":
        pub, sub = await s.apublisher("bench-aio"), await s.asubscriber("bench-aio")
        t0 = time.perf_counter()
        for _ in range(n // BATCH):
            for _ in range(BATCH):
                await pub.apublish(PAYLOAD)
            for _ in range(BATCH):
                await sub.areceive()
        n = n // BATCH * BATCH
        dt = time.perf_counter() - t0
        await pub.aclose()
        await sub.aclose()
        return n / dt
    else:
        async with await s.alink("echo") as link:
            for _ in range(50):
                await link.asend_receive(ECHO, PAYLOAD, Buffer(SMALL))
            t0 = time.perf_counter()
            for _ in range(n):
                await link.asend_receive(ECHO, PAYLOAD, Buffer(SMALL))
            return n / (time.perf_counter() - t0)
    return n / (time.perf_counter() - t0)


def _measure(path: str, transport: str, way: str, row: str, n: int) -> tuple[float, str]:
    opts: dict[str, Any] = {"socket_only": transport == "socket", "slots": CONCURRENT}
    if way == "sync":
        with connect(path, **opts) as s:
            return _sync(s, row, n), s.transport

    async def main() -> tuple[float, str]:
        async with await aconnect(path, **opts) as s:
            return await _async(s, row, n), s.transport
    return asyncio.run(main())


def bench(quick: bool = False, scale: float | None = None) -> dict[str, Any]:
    factor = _scale(quick, scale)
    counts = {"call": 20_000, "call16": 40_000, "pubsub": 100_000, "link": 10_000}
    repeats = 1 if quick else REPEATS
    plan = [(t, r, w) for _ in range(repeats) for t in TRANSPORTS for r in ROWS for w in WAYS]
    progress = Progress(len(plan))
    result: dict[str, Any] = {"meta": {**_machine(), "quick": quick, "scale": factor, "repeats": repeats},
                              "figures": {}}
    runs: dict[tuple[str, str, str], list[float]] = {}
    seen: dict[str, str] = {}
    tmpdir = tempfile.mkdtemp(prefix="broker-bench-aio-")
    ready_r = ready_w = stop_r = stop_w = -1
    try:
        with _server(tmpdir, 50.0, "strict") as path:
            ready_r, ready_w = os.pipe()
            stop_r, stop_w = os.pipe()
            with _child(_provider, path, ready_w, stop_r, (ready_r, stop_w)):
                if os.read(ready_r, 1) != b"p":
                    raise RuntimeError("the provider did not start")
                for transport, row, way in plan:
                    n = max(int(counts[row] * factor), 2 * BATCH)
                    progress.start(f"{LABELS[row]} - {transport} - {way}")
                    rate, seen[transport] = _measure(path, transport, way, row, n)
                    runs.setdefault((transport, row, way), []).append(rate)
                    progress.end(f"{rate / 1000:.1f} k/s")
                os.close(stop_w)
                stop_w = -1
    finally:
        for fd in (ready_r, ready_w, stop_r, stop_w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(tmpdir, ignore_errors=True)
    for (transport, row, way), rates in runs.items():
        fig = result["figures"].setdefault(f"{row}_{transport}", {
            "title": f"{LABELS[row]} ({seen[transport]})", "unit": "k/s", "results": {}})
        fig["results"][way] = {"median": statistics.median(rates) / 1000, "runs": [r / 1000 for r in rates]}
    result["meta"]["loadavg_end"] = list(os.getloadavg())
    result["meta"]["seconds"] = round(time.monotonic() - progress.t0, 1)
    return result


def table(result: dict[str, Any]) -> Table:
    above = _bench_ring.header_lines("aio", result["meta"], "k/s")
    rows: list[tuple[str, ...]] = [("figure", "unit", "sync", "asyncio", "asyncio/sync", "runs (sync; asyncio)")]
    for fig in result["figures"].values():
        res: dict[str, Any] = fig["results"]
        s, a = res["sync"]["median"], res["asyncio"]["median"]
        fmt: Callable[[list[float]], str] = lambda rs: ", ".join(f"{r:.1f}" for r in rs)
        rows.append((fig["title"], "k/s (higher)", f"{s:.1f}", f"{a:.1f}", f"{a / s:.2f}x",
                     f"{fmt(res['sync']['runs'])}; {fmt(res['asyncio']['runs'])}"))
    below = ["", "call: sequential 64 B echo round trips; call x16: 16 in flight (sync: call_many; asyncio: 16 "
              "tasks); publish+receive: one session's publisher and subscriber, 100 published then 100 received; "
              "link call: a linked service in another process (sync on shared memory: its private pair; asyncio: "
              "through the broker)"]
    return Table(above, rows, below)


def run(json_path: str | None = None, quick: bool = False, scale: float | None = None) -> int:
    return _bench_ring.report(bench, table, json_path, quick, scale, None, "aio")
