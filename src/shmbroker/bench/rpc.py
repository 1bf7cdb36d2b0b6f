"""`shmbroker bench rpc`: the framework's request/response against a raw AF_UNIX socket and a Pipe.

broker.Server and a
client session over a Unix socket against a raw AF_UNIX stream socketpair
with 4-byte length framing and a multiprocessing.Pipe, each between two
processes, in one run.

Every measurement forks one child: the framework's server (a broker.Server
serving in its background thread) or the baselines' echoer. The parent is the
measured client. Latency figures time each round trip with perf_counter_ns;
request-rate figures time a fixed number of requests after a warm-up, are
repeated REPEATS times with the transports interleaved (framework, AF_UNIX,
Pipe, then rotated), and report the median.

Cleanup: every child leaves through os._exit and is waited for (killed first
if the parent fails or is interrupted). The server's socket lives in a
temporary directory the parent removes in `finally`; the server child stops
when the parent closes its control pipe. See bench/README.md for the method.
"""
from __future__ import annotations

import gc
import os
import select
import shutil
import statistics
import struct
import tempfile
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from shmbroker.bench import ring as _bench_ring
from shmbroker.bench.ring import _child, _ends, _link, _machine, _PairLink, _ratio_s, _scale
from shmbroker.bench.show import Progress, Table
from shmbroker.bench.stats import latency_stats
from shmbroker.api import connect
from shmbroker.framework.client import Buffer
from shmbroker.core.malloc import keep_large_buffers
from shmbroker.api import Server
from shmbroker.framework.session import Message, Session

TRANSPORTS = ("shm", "busy", "framework", "nospin", "unix", "pipe")
LABELS = {"shm": "fw shm", "busy": "shm busy", "framework": "framework", "nospin": "fw spin 0", "unix": "AF_UNIX",
          "pipe": "Pipe"}
# the framework three ways: a shared-memory session (the session rule allows it here), a socket session
# with the defaults (spin then sleep, 50 us), and a socket session with spin_us=0 on both sides
# (and "busy": a shared-memory session with busy_poll on both sides: they poll and never sleep)
FRAMEWORKS = ("shm", "busy", "framework", "nospin")
SPIN_US = {"shm": 50.0, "busy": 50.0, "framework": 50.0, "nospin": 0.0}
POLICY = {"shm": "strict", "busy": "strict", "framework": "off", "nospin": "off"}
BUSY_POLL = {"busy": True}
SHM = ("shm", "busy")
BASELINES = ("unix", "pipe")
REPEATS = 3
SMALL = 64
BIG = 64 << 10
WINDOW = 32  # requests in flight in the pipelined figure
SLOTS = 64  # the pipelined framework session's message slots
PAYLOAD = bytes(range(SMALL))
BIG_PAYLOAD = (PAYLOAD * (BIG // SMALL))[:BIG]
_LEN = struct.Struct("<I")  # the baselines' reply to a big request: its length
_now = time.perf_counter

# the benchmark service's function codes
SINK = 1  # arg 0 READ: complete with its length (read in place: Message.read_view)
ECHO = 2  # arg 0 READ, arg 1 a Buffer: write arg 0 into arg 1, complete with 0


class _Bench(Session):
    def service(self, m: Message) -> None:
        if m.code == ECHO:
            m.write(1, m.read(0))
            m.complete(0)
        elif m.code == SINK:  # read in place, as a service that takes a big argument does (no copy)
            m.complete(len(m.read_view(0)))
        else:
            super().service(m)


# ---- the framework's server in a child ---------------------------------------------


def _serve(path: str, ready_w: int, ctl_r: int, parent_fds: tuple[int, ...], spin_us: float, policy: str,
           busy_poll: bool = False) -> None:
    """Child: serve at `path` until the parent closes its end of the control pipe."""
    for fd in parent_fds:
        os.close(fd)
    keep_large_buffers()  # as `shmbroker serve` does (see malloc.py); the measured client process does not
    srv = Server(path, _Bench, spin_us=spin_us, shm_policy=policy, busy_poll=busy_poll)
    srv.start()
    try:
        os.write(ready_w, b"R")
        while os.read(ctl_r, 16):
            pass
    finally:
        srv.stop()


@contextmanager
def _server(tmpdir: str, spin_us: float, policy: str, busy_poll: bool = False) -> Iterator[str]:
    """A broker.Server in a forked child for the duration of the block; its address."""
    path = os.path.join(tmpdir, "rpc.sock")
    ready_r, ready_w = os.pipe()
    ctl_r, ctl_w = os.pipe()
    fds = {ready_r, ready_w, ctl_r, ctl_w}
    try:
        gc.collect()
        with _child(_serve, path, ready_w, ctl_r, (ready_r, ctl_w), spin_us, policy, busy_poll):
            for fd in (ready_w, ctl_r):
                os.close(fd)
                fds.discard(fd)
            r, _, _ = select.select([ready_r], [], [], 30.0)
            if not r or os.read(ready_r, 1) != b"R":
                raise RuntimeError("the benchmark's server child did not start")
            try:
                yield path
            finally:
                os.close(ctl_w)  # the child stops its server and exits
                fds.discard(ctl_w)
    finally:
        for fd in fds:
            os.close(fd)
        try:
            os.unlink(path)  # normally the server removed it; not if it was killed
        except FileNotFoundError:
            pass


def _framework(tmpdir: str, transport: str, fn: Callable[..., Any], *args: Any, slots: int = 4) -> Any:
    """fn(session, *args) in this process against a server in a child (both with the transport's spin)."""
    spin, busy = SPIN_US[transport], BUSY_POLL.get(transport, False)
    with _server(tmpdir, spin, POLICY[transport], busy) as path:
        s = connect(path, slots=slots, spin_us=spin, busy_poll=busy)
        if s.transport != ("shared memory" if transport in SHM else "socket"):
            s.close()
            raise RuntimeError(f"the {LABELS[transport]} session travels on {s.transport}")
        try:
            return fn(s, *args)
        finally:
            s.close()


def _baseline(transport: str, child_fn: Callable[..., None], parent_fn: Callable[..., Any], *args: Any) -> Any:
    """parent_fn(send, recv, *args) here while child_fn(send, recv, *args) runs in a child."""
    link: _PairLink = _link(transport, 0, two_way=True)
    try:
        gc.collect()
        with _child(_child_side, link, transport, child_fn, *args):
            return parent_fn(*_ends(transport, link.parent_end()), *args)
    finally:
        link.close()


def _child_side(link: _PairLink, transport: str, fn: Callable[..., None], *args: Any) -> None:
    fn(*_ends(transport, link.child_end()), *args)


def _echo(send: Callable[[bytes], Any], recv: Callable[[], bytes], rounds: int, *rest: Any) -> None:
    for _ in range(rounds):
        send(recv())


def _sink(send: Callable[[bytes], Any], recv: Callable[[], bytes], rounds: int, *rest: Any) -> None:
    pack = _LEN.pack
    for _ in range(rounds):
        send(pack(len(recv())))


def _check(got: Any, want: Any, what: str) -> None:
    if got != want:
        raise AssertionError(f"{what}: got {got!r:.60}, want {want!r:.60}")


# ---- round-trip latency (figures 1 and 4) --------------------------------------------


def _payload(size: int) -> bytes:
    return BIG_PAYLOAD if size == BIG else (PAYLOAD * (size // SMALL + 1))[:size]


def _lat_framework(s: Any, rounds: int, warmup: int, size: int, gap: float = 0.0) -> list[int]:
    clock, call, out, sleep = time.perf_counter_ns, s.send_receive, [], time.sleep
    if size == SMALL:
        for _ in range(rounds):
            buf = Buffer(SMALL)  # a fresh one each time: a Buffer with content would travel as READWRITE
            if gap:
                sleep(gap)  # idle between requests: both sides stop spinning and sleep
            t0 = clock()
            status = call(ECHO, PAYLOAD, buf)
            t1 = clock()
            out.append(t1 - t0)
        _check((status, buf.value), (0, PAYLOAD), "framework echo")
    else:
        data = _payload(size)
        for _ in range(rounds):
            if gap:
                sleep(gap)
            t0 = clock()
            status = call(SINK, data)
            t1 = clock()
            out.append(t1 - t0)
        _check(status, size, f"framework {size}-byte request")
    return out[warmup:]


def _lat_baseline(send: Callable[[bytes], Any], recv: Callable[[], bytes], rounds: int, warmup: int,
                  size: int, gap: float = 0.0) -> list[int]:
    clock, out, sleep = time.perf_counter_ns, [], time.sleep
    m = PAYLOAD if size == SMALL else _payload(size)
    for _ in range(rounds):
        if gap:
            sleep(gap)
        t0 = clock()
        send(m)
        r = recv()
        t1 = clock()
        out.append(t1 - t0)
    _check(r, PAYLOAD if size == SMALL else _LEN.pack(size), f"{size}-byte round trip")
    return out[warmup:]


def _latency(tmpdir: str, transport: str, count: int, size: int, gap: float = 0.0) -> dict[str, Any]:
    warmup = max(count // 10, 10)
    rounds = warmup + count
    if transport in FRAMEWORKS:
        ns = _framework(tmpdir, transport, _lat_framework, rounds, warmup, size, gap)
    else:
        ns = _baseline(transport, _echo if size == SMALL else _sink, _lat_baseline, rounds, warmup, size, gap)
    return {**latency_stats(ns), "warmup": warmup}


# ---- request rates (figures 2 and 3) ---------------------------------------------------


def _strict_framework(s: Any, total: int, warmup: int) -> tuple[int, float]:
    call = s.send_receive
    for _ in range(warmup):
        call(ECHO, PAYLOAD, Buffer(SMALL))
    t0 = _now()
    for _ in range(total - warmup):
        buf = Buffer(SMALL)
        status = call(ECHO, PAYLOAD, buf)
    t1 = _now()
    _check((status, buf.value), (0, PAYLOAD), "framework echo")
    return total - warmup, t1 - t0


def _strict_baseline(send: Callable[[bytes], Any], recv: Callable[[], bytes], total: int, warmup: int) -> tuple[int, float]:
    for _ in range(warmup):
        send(PAYLOAD)
        recv()
    t0 = _now()
    for _ in range(total - warmup):
        send(PAYLOAD)
        r = recv()
    t1 = _now()
    _check(r, PAYLOAD, "echo")
    return total - warmup, t1 - t0


def _window(issue: Callable[[], None], reap: Callable[[], Any], total: int, warmup: int) -> tuple[int, float, Any]:
    """Keep WINDOW requests in flight: issue WINDOW, then reap the oldest reply
    and issue one more until `total` are issued, then reap the rest. Timed from
    after the `warmup`-th reply to the last: (replies timed, seconds, last reply)."""
    sent = 0
    for _ in range(min(WINDOW, total)):
        issue()
        sent += 1
    for _ in range(warmup):
        reap()
        if sent < total:
            issue()
            sent += 1
    reaped, last = warmup, None
    t0 = _now()
    while sent < total:
        last = reap()
        issue()
        sent += 1
        reaped += 1
    while reaped < total:
        last = reap()
        reaped += 1
    t1 = _now()
    return total - warmup, t1 - t0, last


def _pipelined_framework(s: Any, total: int, warmup: int) -> tuple[int, float]:
    send = s.send
    inflight: deque[tuple[Any, Buffer]] = deque()

    def issue() -> None:
        buf = Buffer(SMALL)
        inflight.append((send(ECHO, PAYLOAD, buf), buf))

    def reap() -> Any:
        fut, buf = inflight.popleft()
        return fut.result(), buf

    n, secs, (status, buf) = _window(issue, reap, total, warmup)
    _check((status, buf.value), (0, PAYLOAD), "framework pipelined echo")
    return n, secs


def _pipelined_baseline(send: Callable[[bytes], Any], recv: Callable[[], bytes], total: int,
                        warmup: int) -> tuple[int, float]:
    n, secs, last = _window(lambda: send(PAYLOAD), recv, total, warmup)
    _check(last, PAYLOAD, "pipelined echo")
    return n, secs


def _many_framework(s: Any, total: int, warmup: int) -> tuple[int, float]:
    """call_many: the session's WINDOW slots in flight, in one call (timed after a warm-up call)."""
    sets = [(PAYLOAD, Buffer(SMALL)) for _ in range(total)]
    s.call_many(ECHO, sets[:warmup])
    t0 = _now()
    statuses = s.call_many(ECHO, sets[warmup:])
    t1 = _now()
    _check((statuses[-1], len(statuses), sets[-1][1].value), (0, total - warmup, PAYLOAD), "call_many echo")
    return total - warmup, t1 - t0


def _many_baseline(send: Callable[[bytes], Any], recv: Callable[[], bytes], total: int,
                   warmup: int) -> tuple[int, float]:
    """The baselines' batch: WINDOW requests written, then their WINDOW replies read."""
    def bursts(n: int) -> bytes:
        last = b""
        while n > 0:
            k = min(WINDOW, n)
            for _ in range(k):
                send(PAYLOAD)
            for _ in range(k):
                last = recv()
            n -= k
        return last

    bursts(warmup)
    t0 = _now()
    last = bursts(total - warmup)
    t1 = _now()
    _check(last, PAYLOAD, "burst echo")
    return total - warmup, t1 - t0


_FRAMEWORK_RATE = {"strict": (_strict_framework, 4), "window": (_pipelined_framework, SLOTS),
                   "many": (_many_framework, WINDOW)}  # (the client's procedure, its session's slots)
_BASELINE_RATE = {"strict": _strict_baseline, "window": _pipelined_baseline, "many": _many_baseline}


def _rate(tmpdir: str, transport: str, mode: str, total: int) -> tuple[float, dict[str, Any]]:
    warmup = max(total // 10, 10)
    if transport in FRAMEWORKS:
        fn, slots = _FRAMEWORK_RATE[mode]
        n, secs = _framework(tmpdir, transport, fn, total, warmup, slots=slots)
    else:
        n, secs = _baseline(transport, _echo, _BASELINE_RATE[mode], total, warmup)
    secs = max(secs, 1e-9)
    return n / secs, {"value": n / secs, "requests_timed": n, "seconds": secs, "warmup": warmup}


# ---- the figures -------------------------------------------------------------------------


@dataclass
class Figure:
    key: str
    title: str
    unit: str  # "us" (latency) or "req/s"
    size: int = SMALL
    counts: dict[str, int] = field(default_factory=dict)  # per transport, at scale 1
    mode: str = "strict"  # a rate's procedure: strict ping-pong, a window of send()s, or call_many (bursts)
    metrics: tuple[str, ...] = ()  # latency: the percentiles in the table
    gap: float = 0.0  # latency: seconds idle before each request


def _figures() -> list[Figure]:
    return [
        Figure("rtt_64", "64 B echo round trip", "us", counts={t: 20_000 for t in TRANSPORTS},
               metrics=("p50", "p99", "p99.9")),
        Figure("strict_64", "64 B strict ping-pong", "req/s",
               counts={"shm": 50_000, "busy": 50_000, "framework": 20_000, "nospin": 10_000, "unix": 30_000,
                       "pipe": 30_000}),
        Figure("pipelined_64", f"64 B pipelined, window {WINDOW}", "req/s",
               counts={"shm": 100_000, "busy": 100_000, "framework": 60_000, "nospin": 30_000, "unix": 300_000,
                       "pipe": 200_000},
               mode="window"),
        Figure("many_64", f"64 B call_many, {WINDOW} in flight", "req/s",
               counts={"shm": 500_000, "busy": 500_000, "framework": 200_000, "nospin": 100_000, "unix": 300_000,
                       "pipe": 200_000},
               mode="many"),
        Figure("rtt_64_gap", "64 B echo round trip, 1 ms idle gaps", "us", counts={t: 2_000 for t in TRANSPORTS},
               metrics=("p50", "p99"), gap=0.001),
        Figure("rtt_1m", "1 MiB request round trip", "us", 1 << 20, counts={t: 500 for t in TRANSPORTS},
               metrics=("p50",)),
        Figure("rtt_64k", "64 KiB request round trip", "us", BIG, counts={t: 5_000 for t in TRANSPORTS},
               metrics=("p50",)),
    ]


def _count(fig: Figure, transport: str, scale: float) -> int:
    n = int(fig.counts[transport] * scale)
    return max(n, 50 if fig.unit == "us" else 200)


def _ratio(fig: Figure, results: dict[str, Any], metric: str) -> float | None:
    """The shared-memory session's figure over the best baseline's (lower latency, higher rate)."""
    base = [results[t][metric] for t in BASELINES if t in results]
    best = min(base) if fig.unit == "us" else max(base)
    return results["shm"][metric] / best if best > 0 else None


def _targets(figs: dict[str, Any]) -> list[dict[str, Any]]:
    """The issues' targets: the framework against raw AF_UNIX and against itself (issue 3), and the
    shared-memory session's absolute figures on this 2-core machine (issue 4)."""
    rtt = figs["rtt_64"]["results"]
    rates = {k: figs[k]["results"]["framework"]["median"] for k in ("strict_64", "pipelined_64")}
    r1 = rtt["framework"]["p50"] / rtt["unix"]["p50"]
    r2 = rates["pipelined_64"] / rates["strict_64"]
    spin = rtt["busy"]["p50"]
    gap = figs["rtt_64_gap"]["results"]["shm"]["p50"]
    piped = figs["many_64"]["results"]["shm"]["median"]
    return [
        {"figure": "rtt_64", "what": "framework 64 B round trip p50 / raw AF_UNIX p50", "op": "<=", "value": 1.3,
         "measured": r1, "met": r1 <= 1.3, "text": f"socket <= 1.3x AF_UNIX ({r1:.2f}x)"},
        {"figure": "rtt_64", "what": "shared-memory session 64 B round trip p50, both sides spinning (us)",
         "op": "<=", "value": 4.0, "measured": spin, "met": spin <= 4.0, "text": f"shm busy <= 4 us ({spin:.1f})"},
        {"figure": "pipelined_64", "what": "framework pipelined req/s / framework strict ping-pong req/s",
         "op": ">=", "value": 2.0, "measured": r2, "met": r2 >= 2.0, "text": f"socket >= 2x its strict ({r2:.2f}x)"},
        {"figure": "many_64", "what": "shared-memory session pipelined 64 B req/s (call_many)", "op": ">=",
         "value": 1e6,
         "measured": piped, "met": piped >= 1e6, "text": f"shm >= 1 M ({_fmt(piped, 'req/s')})"},
        {"figure": "rtt_64_gap", "what": "shared-memory session 64 B round trip p50 after 1 ms idle (us)",
         "op": "<=", "value": 15.0, "measured": gap, "met": gap <= 15.0, "text": f"shm <= 15 us ({gap:.1f})"},
    ]


def bench(quick: bool = False, scale: float | None = None) -> dict[str, Any]:
    """Run every figure; the JSON-able result (see run)."""
    factor = _scale(quick, scale)
    figs = _figures()
    steps = sum(len(TRANSPORTS) * (1 if f.unit == "us" else REPEATS) for f in figs)
    progress = Progress(steps)
    out: dict[str, Any] = {"meta": {**_machine(), "quick": quick, "scale": factor, "repeats": REPEATS,
                                    "window": WINDOW, "slots": SLOTS}, "figures": {}}
    tmpdir = tempfile.mkdtemp(prefix="broker-bench-rpc-")
    try:
        for fig in figs:
            entry: dict[str, Any] = {"title": fig.title, "unit": fig.unit, "size": fig.size, "gap": fig.gap,
                                     "metrics": list(fig.metrics),
                                     "better": "lower" if fig.unit == "us" else "higher", "results": {}}
            results = entry["results"]
            if fig.unit == "us":
                for t in TRANSPORTS:
                    n = _count(fig, t, factor)
                    progress.start(f"{fig.title} - {LABELS[t]}")
                    results[t] = {**_latency(tmpdir, t, n, fig.size, fig.gap), "count": n}
                    progress.end(f"p50 {results[t]['p50']:.1f} us, p99.9 {results[t]['p99.9']:.1f} us")
                entry["ratio"] = {m: _ratio(fig, results, m) for m in ("p50", "p90", "p99", "p99.9")}
            else:
                reps: dict[str, list[dict[str, Any]]] = {t: [] for t in TRANSPORTS}
                order = list(TRANSPORTS)
                for rep in range(REPEATS):
                    for t in order[rep % len(order):] + order[: rep % len(order)]:
                        n = _count(fig, t, factor)
                        progress.start(f"{fig.title} - {LABELS[t]} - rep {rep + 1}/{REPEATS}")
                        value, record = _rate(tmpdir, t, fig.mode, n)
                        reps[t].append({**record, "count": n})
                        progress.end(f"{_fmt(value, fig.unit)} {fig.unit}")
                for t, rs in reps.items():
                    values = [r["value"] for r in rs]
                    results[t] = {"median": statistics.median(values), "min": min(values), "max": max(values),
                                  "count": rs[0]["count"], "repetitions": rs}
                entry["ratio"] = _ratio(fig, results, "median")
                if fig.mode != "strict":
                    entry["window"], entry["slots"] = WINDOW, SLOTS if fig.mode == "window" else WINDOW
            out["figures"][fig.key] = entry
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    out["targets"] = _targets(out["figures"])
    for t in out["targets"]:
        out["figures"][t["figure"]].setdefault("targets", []).append(t)
    out["meta"]["loadavg_end"] = list(os.getloadavg())
    out["meta"]["seconds"] = round(time.monotonic() - progress.t0, 1)
    return out


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "req/s":
        return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value / 1e3:.1f} k"
    return f"{value:.1f}"


def _target_s(ts: list[dict[str, Any]] | None) -> str:
    return "; ".join(f"{t['text']}: {'met' if t['met'] else 'NOT met'}" for t in ts or ())


def table(result: dict[str, Any]) -> Table:
    """The human-readable table of a bench() result."""
    above = _bench_ring.header_lines("rpc", result["meta"], "req/s")
    head = ("figure", "unit", *(LABELS[t] for t in TRANSPORTS), "shm/best", "targets")
    rows: list[tuple[str, ...]] = [head]
    for key, fig in result["figures"].items():
        unit, res = fig["unit"], fig["results"]
        if unit == "us":
            metrics = tuple(fig.get("metrics") or ("p50",))
            for metric in metrics:
                rows.append((f"{fig['title']} {metric}", "us (lower)", *(_fmt(res[t][metric], unit) for t in TRANSPORTS),
                             _ratio_s(fig["ratio"][metric]), _target_s(fig.get("targets") if metric == "p50" else None)))
        else:
            rows.append((fig["title"], "req/s", *(_fmt(res[t]["median"], unit) for t in TRANSPORTS),
                         _ratio_s(fig["ratio"]), _target_s(fig.get("targets"))))
    lines = ["",
              "fw shm: a shared-memory session with the defaults (client and server spin 50 us before they sleep);",
              "shm busy: the same with busy_poll on both sides (they never sleep); framework: a socket session",
              "with the defaults; fw spin 0: a socket session, spin_us=0 on both",
              "shm/best: fw shm's figure over the best baseline's (req/s: >1 is better; latency: <1 is better)",
              f"64 KiB: the request carries 64 KiB, the reply its length; pipelined: {WINDOW} requests in flight "
              f"(framework: send() futures, slots={SLOTS})",
              f"call_many: the framework's batch call on a session of {WINDOW} slots (as many in flight); "
              f"the baselines write {WINDOW} requests, then read their {WINDOW} replies"]
    met = result["targets"]
    lines.append(f"targets met: {sum(t['met'] for t in met)} of {len(met)}")
    return Table(above, rows, lines)


def run(json_path: str | None = None, quick: bool = False, scale: float | None = None,
        chart_path: str | None = None) -> int:
    """`shmbroker bench rpc`: print the table, optionally write JSON; the exit code.

    scale multiplies every request and sample count (default: the environment
    variable BROKER_BENCH_SCALE, else 1); quick multiplies it by 0.1."""
    return _bench_ring.report(bench, table, json_path, quick, scale, chart_path, "rpc")
