"""`shmbroker bench ring`: the shared-memory ring against multiprocessing.Pipe and an AF_UNIX socketpair.

Each between two processes, in one run.

Every measurement forks one child. One-way figures: the child produces, the
parent consumes and times from the first message it receives to the last, so
the child's start-up is not measured. Ping-pong figures: the parent pings,
the child echoes, the parent times each round trip with perf_counter_ns.
Throughput figures are repeated REPEATS times, the transports interleaved
(ring, Pipe, AF_UNIX, then rotated), and the median is reported.

Cleanup: every child leaves through os._exit and is waited for; a child still
running when the parent fails or is interrupted is killed first. Every /dev/shm
segment is created by the parent inside try/finally, so it is unlinked even
on Ctrl-C. See bench/README.md for the method.
"""
from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import signal
import socket
import statistics
import struct
import sys
import threading
import time
import traceback
from array import array
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import Pipe
from typing import Any, Callable, Iterator, NoReturn

from shmbroker.bench.show import Progress, Table, close_all
from shmbroker.bench.stats import latency_stats
from shmbroker.core.ring import Ring
from shmbroker._version import __version__

TRANSPORTS = ("ring", "pipe", "unix")
LABELS = {"ring": "ring", "pipe": "Pipe", "unix": "AF_UNIX"}
BASELINES = ("pipe", "unix")
REPEATS = 3
FRESH_RUNS = 8  # the defaults' round trip: runs, each in two new processes
SMALL = 64
BATCH = 1024  # records per batch call, for the ring and the baselines alike
CHUNK = 1 << 18  # bytes per recv() when the AF_UNIX baseline parses a stream
PAYLOAD = bytes(range(SMALL))
_HDR = struct.Struct("<I")  # the AF_UNIX baseline's length prefix
_WAITALL = socket.MSG_WAITALL
_now = time.perf_counter


# ---- processes -------------------------------------------------------------


@contextmanager
def _child(fn: Callable[..., object], *args: Any) -> Iterator[int]:
    """Run fn(*args) in a forked child for the duration of the block.

    The child leaves through os._exit (0 if fn returned, 1 if it raised). On a
    normal exit from the block the child is waited for and must have exited 0;
    if the block raises (Ctrl-C included) the child is killed and reaped."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            fn(*args)
            code = 0
        except KeyboardInterrupt:
            pass
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    ok = False
    try:
        yield pid
        ok = True
    finally:
        code = _reap(pid, 30.0 if ok else 0.0)
    if code != 0:
        raise RuntimeError(f"benchmark child {pid} exited with status {code}")


def _reap(pid: int, timeout: float) -> int:
    """Wait up to `timeout` s for the child, then kill it; its exit code."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        time.sleep(0.002)


# ---- transports --------------------------------------------------------------
# A link is both ends of one transport, made in the parent before the fork:
# child_end() runs in the child, parent_end() in the parent after the fork.


class _RingLink:
    """One-way: a ring the parent consumes. Two-way: a ping ring and a pong ring."""

    def __init__(self, capacity: int, two_way: bool = False, spin_us: float = 50.0) -> None:
        self.spin_us = spin_us
        self.rings: list[Ring] = []
        try:
            if two_way:
                self.rings.append(Ring.create(capacity=capacity, spin_us=spin_us))
            self.rings.append(Ring.create(capacity=capacity, role="consumer", spin_us=spin_us))
        except BaseException:
            self.close()
            raise

    def child_end(self) -> Any:
        if len(self.rings) == 1:
            return Ring.open(self.rings[0].name, role="producer", spin_us=self.spin_us)
        ping, pong = self.rings
        return (Ring.open(ping.name, role="consumer", spin_us=self.spin_us),
                Ring.open(pong.name, role="producer", spin_us=self.spin_us))

    def parent_end(self) -> Any:
        return self.rings[0] if len(self.rings) == 1 else tuple(self.rings)

    def close(self) -> None:
        for r in self.rings:
            r.close()


class _PairLink:
    """Two connected ends (a Pipe's, a socketpair's): the parent keeps the first, the child the second."""

    def __init__(self, ends: tuple[Any, Any]) -> None:
        self.parent, self.child = ends

    def child_end(self) -> Any:
        self.parent.close()
        return self.child

    def parent_end(self) -> Any:
        self.child.close()
        return self.parent

    def close(self) -> None:
        self.parent.close()
        self.child.close()


def _link(transport: str, capacity: int, two_way: bool = False, spin_us: float = 50.0) -> Any:
    if transport == "ring":
        return _RingLink(capacity, two_way, spin_us)
    if transport == "pipe":  # one-way: (reader, writer) over an os.pipe; two-way: a socketpair
        return _PairLink(Pipe(duplex=two_way))
    return _PairLink(socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM))  # default buffer sizes


def _in_child(link: Any, fn: Callable[..., object], *args: Any) -> None:
    end = link.child_end()
    fn(end, *args)
    for r in end if isinstance(end, tuple) else (end,):
        if isinstance(r, Ring):
            r.close()


def _across(link: Any, child_fn: Callable[..., object], parent_fn: Callable[..., Any], *args: Any) -> Any:
    """child_fn(child_end, *args) in a forked child while parent_fn(parent_end, *args) runs here."""
    try:
        gc.collect()
        with _child(_in_child, link, child_fn, *args):
            return parent_fn(link.parent_end(), *args)
    finally:
        link.close()


def _short(got: int, want: int) -> NoReturn:
    raise EOFError(f"short read: {got} of {want} bytes (peer gone?)")


_PAYLOADS: dict[int, bytes] = {SMALL: PAYLOAD}


def _payload(size: int) -> bytes:
    if size not in _PAYLOADS:
        _PAYLOADS[size] = (PAYLOAD * (size // SMALL + 1))[:size]
    return _PAYLOADS[size]


def _framed(size: int, times: int = 1) -> bytes:
    """`times` length-prefixed messages, as the AF_UNIX baseline (and the batched Pipe) carry them."""
    return (_HDR.pack(size) + _payload(size)) * times


# ---- one-way: senders run in the child, receivers in the parent --------------------
# A sender is (end, size) -> (put, records per put). A receiver is (end, size)
# -> (get, batched, sample): get() takes one message per call (batched False:
# the ring's and the baselines' own methods, unwrapped, on the hot path) or a
# batch and returns its record count (batched True); sample(last get() result)
# is the bytes that must equal the payload.


def _produce(end: Any, count: int, size: int, sender: Callable[..., Any]) -> None:
    put, per = sender(end, size)
    for _ in range(count // per):
        put()


def _consume(end: Any, count: int, size: int, receiver: Callable[..., Any]) -> tuple[int, float]:
    """(messages timed, seconds): from the return of the first receive call to the return of the last."""
    get, batched, sample = receiver(end, size)
    if batched:
        got = first = last = get()
        t0 = _now()
        while got < count:
            got += get()
        t1 = _now()
        if got != count:
            raise AssertionError(f"received {got} records, {count} were sent")
        timed = got - first
    else:
        last = get()
        t0 = _now()
        for _ in range(count - 1):
            last = get()
        t1 = _now()
        timed = count - 1
    data = bytes(sample(last))
    if data != _payload(SMALL if batched else size):
        raise AssertionError(f"benchmark data damaged: got {data[:16]!r}..., want {PAYLOAD[:16]!r}...")
    return timed, t1 - t0


def _same(x: Any) -> Any:
    return x


def _s_ring(tx: Ring, size: int) -> tuple[Callable[..., Any], int]:
    return partial(tx.send, _payload(size)), 1


def _s_pipe(w: Any, size: int) -> tuple[Callable[..., Any], int]:
    return partial(w.send_bytes, _payload(size)), 1


def _s_unix(s: socket.socket, size: int) -> tuple[Callable[..., Any], int]:
    return partial(s.sendall, _framed(size)), 1  # framed once, up front: no per-message work


def _s_ring_batch(tx: Ring, size: int) -> tuple[Callable[..., Any], int]:
    return partial(tx.send_batch, PAYLOAD * BATCH, array("Q", [SMALL]) * BATCH), BATCH


def _s_ring_many(tx: Ring, size: int) -> tuple[Callable[..., Any], int]:
    return partial(tx.send_many, [PAYLOAD] * BATCH), BATCH


def _s_pipe_framed(w: Any, size: int) -> tuple[Callable[..., Any], int]:
    return partial(w.send_bytes, _framed(SMALL, BATCH)), BATCH


def _s_unix_framed(s: socket.socket, size: int) -> tuple[Callable[..., Any], int]:
    return partial(s.sendall, _framed(SMALL, BATCH)), BATCH


def _r_ring(rx: Ring, size: int) -> tuple[Callable[..., Any], bool, Callable[..., Any]]:
    return rx.recv, False, _same


def _r_ring_into(rx: Ring, size: int) -> tuple[Callable[..., Any], bool, Callable[..., Any]]:
    buf = bytearray(size)
    return partial(rx.recv_into, buf), False, lambda _: buf


def _r_pipe(r: Any, size: int) -> tuple[Callable[..., Any], bool, Callable[..., Any]]:
    return r.recv_bytes, False, _same


def _r_pipe_into(r: Any, size: int) -> tuple[Callable[..., Any], bool, Callable[..., Any]]:
    buf = bytearray(size)
    return partial(r.recv_bytes_into, buf), False, lambda _: buf


def _r_unix(s: socket.socket, size: int) -> tuple[Callable[..., Any], bool, Callable[..., Any]]:
    return _unix_reader(s), False, _same


def _r_unix_into(s: socket.socket, size: int) -> tuple[Callable[..., Any], bool, Callable[..., Any]]:
    buf = bytearray(size)
    return _unix_reader(s, buf), False, lambda _: buf


def _unix_reader(s: socket.socket, buf: bytearray | None = None) -> Callable[[], Any]:
    """One length-prefixed message: into `buf` (returns its length) or as bytes."""
    recv, into, unpack = s.recv, s.recv_into, _HDR.unpack

    def read() -> bytes:
        h = recv(4, _WAITALL)
        if len(h) != 4:
            _short(len(h), 4)
        k = unpack(h)[0]
        m = recv(k, _WAITALL)
        if len(m) != k:
            _short(len(m), k)
        return m

    def read_into() -> int:
        h = recv(4, _WAITALL)
        if len(h) != 4:
            _short(len(h), 4)
        k = unpack(h)[0]
        assert buf is not None
        got = into(buf, k, _WAITALL)
        if got != k:
            _short(got, k)
        return got

    return read if buf is None else read_into


def _r_ring_batch(rx: Ring, size: int) -> tuple[Callable[..., Any], bool, Callable[..., Any]]:
    out, lens = bytearray(SMALL * BATCH), array("Q", [0]) * BATCH

    def sample(_: int) -> bytes:
        if lens[0] != SMALL:
            raise AssertionError(f"recv_batch: a record of {lens[0]} bytes, {SMALL} were sent")
        return bytes(out[:SMALL])

    return partial(rx.recv_batch, out, lens), True, sample


def _r_ring_many(rx: Ring, size: int) -> tuple[Callable[..., Any], bool, Callable[..., Any]]:
    recv_many = rx.recv_many
    last: list[bytes] = []

    def get() -> int:
        nonlocal last
        last = recv_many(BATCH)
        return len(last)

    return get, True, lambda _: last[-1]


def _parse(data: bytes, out: list[bytes]) -> int:
    """Append the whole length-prefixed messages at the start of `data` to
    `out`; return where the first incomplete one starts."""
    unpack, append = _HDR.unpack_from, out.append
    o, end = 0, len(data)
    while o + 4 <= end:
        e = o + 4 + unpack(data, o)[0]
        if e > end:
            break
        append(data[o + 4 : e])
        o = e
    return o


def _r_pipe_framed(r: Any, size: int) -> tuple[Callable[..., Any], bool, Callable[..., Any]]:
    recv, last = r.recv_bytes, [b""]

    def get() -> int:
        nonlocal last
        last = []
        if _parse(recv(), last) != len(_framed(SMALL, BATCH)):
            raise AssertionError("Pipe: a batch that is not whole messages")
        return len(last)

    return get, True, lambda _: last[-1]


def _r_unix_framed(s: socket.socket, size: int) -> tuple[Callable[..., Any], bool, Callable[..., Any]]:
    """256 KiB recv() chunks; a message cut at the end of one is completed from the next."""
    recv, rest, last = s.recv, b"", [b""]

    def get() -> int:
        nonlocal rest, last
        data = recv(CHUNK)
        if not data:
            _short(0, CHUNK)
        if rest:
            data = rest + data
        msgs: list[bytes] = []
        rest = data[_parse(data, msgs):]
        last = msgs or last
        return len(msgs)

    def sample(_: int) -> bytes:
        if rest:
            raise AssertionError(f"AF_UNIX: {len(rest)} bytes left over")
        return last[-1]

    return get, True, sample


# ---- ping-pong -----------------------------------------------------------------


def _ends(transport: str, end: Any) -> tuple[Callable[[bytes], Any], Callable[[], bytes]]:
    """(send, recv) of one end of a two-way link."""
    if transport == "ring":
        tx, rx = end if isinstance(end, tuple) else (end, end)
        return tx.send, rx.recv
    if transport == "pipe":
        return end.send_bytes, end.recv_bytes
    sendall, pack = end.sendall, _HDR.pack
    return (lambda m: sendall(pack(len(m)) + m)), _unix_reader(end)


def _echo(transport: str) -> Callable[..., None]:
    def echo(end: Any, rounds: int, gap: float) -> None:
        if transport == "ring":
            end = (end[1], end[0])  # the child sends on pong, receives on ping
        send, recv = _ends(transport, end)
        for _ in range(rounds):
            send(recv())
    return echo


def _ping(transport: str, warmup: int) -> Callable[..., list[int]]:
    def ping(end: Any, rounds: int, gap: float) -> list[int]:
        send, recv = _ends(transport, end)
        clock, sleep, out = time.perf_counter_ns, time.sleep, []
        m = PAYLOAD
        for _ in range(rounds):
            if gap:
                sleep(gap)
            t0 = clock()
            send(m)
            m = recv()
            t1 = clock()
            out.append(t1 - t0)
        if m != PAYLOAD:
            raise AssertionError(f"ping-pong data damaged: {m[:16]!r}...")
        return out[warmup:]
    return ping


# ---- the figures -----------------------------------------------------------------


@dataclass
class Figure:
    key: str
    title: str
    unit: str  # msgs/s, GB/s or us
    size: int = SMALL
    capacity: int = 1 << 22
    counts: dict[str, int] = field(default_factory=dict)  # per transport, at scale 1
    runs: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # transport: (sender, receiver)
    batched: bool = False  # counts are whole batches of BATCH records
    baselines_from: str | None = None  # share another figure's baseline numbers
    target: float | None = None  # the target for the ring
    # ping-pong only
    gap: float = 0.0
    spin_us: float = 50.0
    metrics: tuple[str, ...] = ()
    fresh: int = 0  # > 0: that many runs, each between two new processes (see _fresh_latency)


_BULK = {"ring": (_s_ring, _r_ring_into), "pipe": (_s_pipe, _r_pipe_into), "unix": (_s_unix, _r_unix_into)}
_BULK_BYTES = {"ring": (_s_ring, _r_ring), "pipe": (_s_pipe, _r_pipe), "unix": (_s_unix, _r_unix)}


def _figures() -> list[Figure]:
    kib64, mib = 64 << 10, 1 << 20
    return [
        Figure("small_per_call", "64 B one-way, 1 msg per call", "msgs/s",
               counts={"ring": 3_000_000, "pipe": 500_000, "unix": 500_000},
               runs={"ring": (_s_ring, _r_ring), "pipe": (_s_pipe, _r_pipe), "unix": (_s_unix, _r_unix)}, target=3e6),
        Figure("small_batch", f"64 B one-way, send_batch/recv_batch x{BATCH}", "msgs/s",
               counts={"ring": 24_000_000, "pipe": 4_000_000, "unix": 4_000_000},
               runs={"ring": (_s_ring_batch, _r_ring_batch), "pipe": (_s_pipe_framed, _r_pipe_framed),
                     "unix": (_s_unix_framed, _r_unix_framed)}, batched=True, target=12e6),
        Figure("small_many", f"64 B one-way, send_many/recv_many x{BATCH}", "msgs/s",
               counts={"ring": 5_000_000}, runs={"ring": (_s_ring_many, _r_ring_many)},
               batched=True, baselines_from="small_batch", target=12e6),
        Figure("bulk_64k_into", "64 KiB one-way, recv_into buffer", "GB/s", kib64, 1 << 23,
               counts={"ring": 120_000, "pipe": 50_000, "unix": 100_000},
               runs=_BULK),
        Figure("bulk_64k_bytes", "64 KiB one-way, recv -> bytes", "GB/s", kib64, 1 << 23,
               counts={"ring": 150_000, "pipe": 50_000, "unix": 100_000},
               runs=_BULK_BYTES),
        Figure("bulk_1m_into", "1 MiB one-way, recv_into buffer", "GB/s", mib, 1 << 23,
               counts={"ring": 8_000, "pipe": 3_000, "unix": 8_000},
               runs=_BULK, target=25.0),
        Figure("bulk_1m_bytes", "1 MiB one-way, recv -> bytes", "GB/s", mib, 1 << 23,
               counts={"ring": 8_000, "pipe": 3_000, "unix": 8_000},
               runs=_BULK_BYTES),
        Figure("rtt_spin", "64 B round trip, receiver spinning", "us",
               counts={t: 20_000 for t in TRANSPORTS}, spin_us=1e7, target=1.5,
               metrics=("p50", "p99", "p99.9")),
        Figure("rtt_sleep", "64 B round trip, receiver sleeping (1 ms gaps)", "us",
               counts={t: 3_000 for t in TRANSPORTS}, gap=0.001, target=14.0,
               metrics=("p50", "p99", "p99.9")),
        # What a user gets: Ring.create/open with their defaults, send, recv(), in two processes
        # that have done nothing before. Once, how the first exchanges went could decide the rest
        # (both sides asleep for good: 14-50 us instead of ~1 us), so: many fresh pairs, the
        # slowest run's p50 as well as the median one's.
        Figure("rtt_default", f"64 B round trip, defaults, {FRESH_RUNS} fresh process pairs", "us",
               counts={t: 5_000 for t in TRANSPORTS}, target=5.0, fresh=FRESH_RUNS,
               metrics=("p50", "p99", "p99.9")),
    ]


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "msgs/s":
        return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value / 1e3:.0f} k"
    return f"{value:.2f}"


# ---- running ---------------------------------------------------------------------


def _scale(quick: bool, scale: float | None) -> float:
    if scale is None:
        scale = float(os.environ.get("BROKER_BENCH_SCALE", "1"))
    if not scale > 0:
        raise ValueError(f"the benchmark scale must be > 0, not {scale}")
    return scale * (0.1 if quick else 1.0)


def _count(fig: Figure, transport: str, scale: float) -> int:
    n = int(fig.counts[transport] * scale)
    if fig.unit == "us":
        return max(n, 50)
    if fig.batched:
        return max(-(-n // BATCH), 16) * BATCH  # whole batches, enough that the first receive is not all
    return max(n, 2_000 if fig.size == SMALL else 20)


def _measure(fig: Figure, transport: str, count: int) -> tuple[float, dict[str, Any]]:
    """One throughput repetition: (figure value, record for the JSON)."""
    sender, receiver = fig.runs[transport]
    link = _link(transport, fig.capacity)
    msgs, secs = _across(link, partial(_produce, sender=sender), partial(_consume, receiver=receiver),
                         count, fig.size)
    secs = max(secs, 1e-9)
    rate = msgs / secs
    value = rate * fig.size / 1e9 if fig.unit == "GB/s" else rate
    return value, {"value": value, "messages_timed": msgs, "seconds": secs, "msgs_per_s": rate,
                   "bytes_per_s": rate * fig.size}


def _latency(fig: Figure, transport: str, count: int) -> dict[str, Any]:
    warmup = max(count // 10, 10)
    link = _link(transport, 1 << 20, two_way=True, spin_us=fig.spin_us)
    ns = _across(link, _echo(transport), _ping(transport, warmup), warmup + count, fig.gap)
    return {**latency_stats(ns), "warmup": warmup, "gap_s": fig.gap,
            "ring_spin_us": fig.spin_us if transport == "ring" else None}


def _in_fresh_process(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """fn(*args) in a new child process (which forks its own peer); its result, through a pipe."""
    r, w = os.pipe()

    def child() -> None:
        os.close(r)
        data = json.dumps(fn(*args)).encode()
        while data:
            data = data[os.write(w, data):]

    try:
        with _child(child):
            os.close(w)
            w = -1
            chunks = []
            while chunk := os.read(r, 1 << 16):
                chunks.append(chunk)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    return json.loads(b"".join(chunks))  # type: ignore[no-any-return]


def _fresh_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs of a fresh-process figure: each metric's median over the runs, the spread of p50."""
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in ("min", "p50", "p90", "p99", "p99.9",
                                                                              "max", "mean")}
    p50s = sorted(r["p50"] for r in runs)
    return {**out, "samples": sum(r["samples"] for r in runs), "p50_min": p50s[0], "p50_max": p50s[-1],
            "fresh_runs": len(runs), "runs": runs}


def _ratio(fig: Figure, results: dict[str, Any], metric: str) -> float | None:
    ring = results["ring"][metric]
    base = [results[t][metric] for t in BASELINES if t in results]
    if not base:
        return None
    best = min(base) if fig.unit == "us" else max(base)
    return ring / best if best > 0 else None


def _target(fig: Figure, value: float) -> dict[str, Any] | None:
    if fig.target is None:
        return None
    op = "<=" if fig.unit == "us" else ">="
    met = value <= fig.target if op == "<=" else value >= fig.target
    metric = "p50" if fig.unit == "us" else "median"
    return {"metric": metric, "op": op, "value": fig.target, "unit": fig.unit, "met": met}


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)), "cpu_model": cpu,
            "python": platform.python_version(), "implementation": platform.python_implementation(),
            "kernel": platform.release(), "broker": __version__, "git": _git_head(),
            "loadavg_start": list(os.getloadavg())}


def _git_head() -> str | None:
    """The commit of the source tree being measured (+ "-dirty"), if it is a git checkout."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("-dirty" if dirty else "")) or None


def bench(quick: bool = False, scale: float | None = None) -> dict[str, Any]:
    """Run every figure; the JSON-able result (see run)."""
    factor = _scale(quick, scale)
    figs = _figures()
    fresh = max(3, round(FRESH_RUNS * min(factor * 10, 1.0)))
    steps = sum(len(f.runs) * REPEATS if f.unit != "us" else len(TRANSPORTS) * (fresh if f.fresh else 1)
                for f in figs)
    progress = Progress(steps)
    out: dict[str, Any] = {"meta": {**_machine(), "quick": quick, "scale": factor, "repeats": REPEATS,
                                    "batch": BATCH}, "figures": {}}
    for fig in figs:
        entry: dict[str, Any] = {"title": fig.title, "unit": fig.unit, "size": fig.size,
                                 "better": "lower" if fig.unit == "us" else "higher", "results": {}}
        results = entry["results"]
        if fig.unit == "us" and fig.fresh:
            runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TRANSPORTS}
            n_runs = max(3, round(fig.fresh * min(factor * 10, 1.0)))  # --quick keeps a few
            for k in range(n_runs):  # the transports interleaved, run by run
                for t in TRANSPORTS:
                    progress.start(f"{fig.title} - {LABELS[t]} - run {k + 1}/{n_runs}")
                    runs[t].append(_in_fresh_process(_latency, fig, t, _count(fig, t, factor)))
                    progress.end(f"p50 {runs[t][-1]['p50']:.2f} us")
            for t in TRANSPORTS:
                results[t] = _fresh_summary(runs[t])
            entry["ratio"] = {m: _ratio(fig, results, m) for m in (*fig.metrics, "p50_max")}
            entry["target"] = _target(fig, results["ring"]["p50_max"])
            if entry["target"]:
                entry["target"]["metric"] = "p50 of the slowest run"
        elif fig.unit == "us":
            for t in TRANSPORTS:
                progress.start(f"{fig.title} - {LABELS[t]}")
                results[t] = _latency(fig, t, _count(fig, t, factor))
                progress.end(f"p50 {results[t]['p50']:.2f} us, p99.9 {results[t]['p99.9']:.2f} us")
            entry["ratio"] = {m: _ratio(fig, results, m) for m in fig.metrics}
            entry["target"] = _target(fig, results["ring"]["p50"])
        else:
            entry["capacity"] = fig.capacity if "ring" in fig.runs else None
            reps: dict[str, list[dict[str, Any]]] = {t: [] for t in fig.runs}
            order = list(fig.runs)
            for rep in range(REPEATS):
                for t in order[rep % len(order):] + order[: rep % len(order)]:
                    n = _count(fig, t, factor)
                    progress.start(f"{fig.title} - {LABELS[t]} - rep {rep + 1}/{REPEATS}")
                    value, record = _measure(fig, t, n)
                    reps[t].append({**record, "count": n})
                    progress.end(f"{_fmt(value, fig.unit)} {fig.unit}")
            for t, rs in reps.items():
                values = [r["value"] for r in rs]
                results[t] = {"median": statistics.median(values), "min": min(values), "max": max(values),
                              "count": rs[0]["count"], "repetitions": rs}
            if fig.baselines_from:
                entry["baselines_from"] = fig.baselines_from
                for t in BASELINES:
                    results[t] = out["figures"][fig.baselines_from]["results"][t]
            entry["ratio"] = _ratio(fig, results, "median")
            entry["target"] = _target(fig, results["ring"]["median"])
        out["figures"][fig.key] = entry
    out["meta"]["loadavg_end"] = list(os.getloadavg())
    out["meta"]["seconds"] = round(time.monotonic() - progress.t0, 1)
    return out


def header_lines(suite: str, m: dict[str, Any], counted: str) -> list[str]:
    """The lines above a benchmark table: what ran, on what, how loaded."""
    return [
        f"shmbroker bench {suite} (broker {m['broker']}, git {m.get('git') or '?'}) - {m['date']}",
        f"{m['cores']} cores ({m['cores_usable']} usable), {m['cpu_model']}, "
        f"{m['implementation']} {m['python']}, Linux {m['kernel']}",
        f"load average {m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end; "
        f"{counted}: median of {m['repeats']} runs; scale {m['scale']:g}" + (" (--quick)" if m["quick"] else ""),
        "",
    ]


def table(result: dict[str, Any]) -> Table:
    """The human-readable table of a bench() result."""
    above = header_lines("ring", result["meta"], "throughput")
    head = ("figure", "unit", "ring", "Pipe", "AF_UNIX", "ring/best", "target for ring")
    rows: list[tuple[str, ...]] = [head]
    for fig in result["figures"].values():
        unit, res = fig["unit"], fig["results"]
        if unit == "us":
            fresh = "p50_max" in res["ring"]
            for metric in ("p50", "p99", "p99.9"):
                tgt = fig["target"] if metric == "p50" and not fresh else None
                rows.append((f"{fig['title']} {metric}" + (" (median run)" if fresh else ""), "us (lower)",
                             *(_fmt(res[t][metric], unit) for t in TRANSPORTS), _ratio_s(fig["ratio"][metric]),
                             _target_s(tgt)))
            if fresh:
                rows.append((f"{fig['title']} p50, fastest - slowest run", "us (lower)",
                             *(f"{res[t]['p50_min']:.2f} - {res[t]['p50_max']:.2f}" for t in TRANSPORTS),
                             _ratio_s(fig["ratio"]["p50_max"]), _target_s(fig["target"])))
        else:
            shared = " *" if fig.get("baselines_from") else ""
            rows.append((fig["title"], unit, _fmt(res["ring"]["median"], unit),
                         *(_fmt(res[t]["median"], unit) + shared for t in BASELINES), _ratio_s(fig["ratio"]),
                         _target_s(fig["target"])))
    lines = ["", "* the same baseline runs as the send_batch row (the fairest batching Pipe and AF_UNIX have:",
              f"  {BATCH} length-prefixed messages per send, parsed back into a list of bytes on receipt)",
              "ring/best: the ring's figure over the best baseline's (throughput: >1 is better; "
              "latency: <1 is better)"]
    met = [(f["title"], f["target"]) for f in result["figures"].values() if f["target"]]
    n_met = sum(t["met"] for _, t in met)
    lines.append(f"targets met: {n_met} of {len(met)}")
    return Table(above, rows, lines)


def _ratio_s(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def _target_s(t: dict[str, Any] | None) -> str:
    if not t:
        return ""
    v = _fmt(t["value"], t["unit"]) if t["unit"] == "msgs/s" else f"{t['value']:g}"
    return f"{t['op']} {v} {t['unit']}: {'met' if t['met'] else 'NOT met'}"


def report(bench_fn: Callable[..., dict[str, Any]], table_fn: Callable[[dict[str, Any]], Table],
           json_path: str | None, quick: bool, scale: float | None, chart_path: str | None = None,
           suite: str = "") -> int:
    """Run a benchmark, print its table, optionally write its JSON and its chart (src/shmbroker/bench/chart.py);
    the exit code (130 when interrupted by Ctrl-C or SIGTERM, after cleaning up)."""
    old = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C, so the finally blocks still reap and clean up
        old = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = bench_fn(quick=quick, scale=scale)
    except KeyboardInterrupt:
        close_all()
        print("\ninterrupted; child processes, sockets and shared memory cleaned up", file=sys.stderr)
        return 130
    finally:
        close_all()  # the progress bar, if a run cut short left it on the terminal
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    table_fn(result).show()
    if suite:
        result.setdefault("meta", {})["suite"] = suite
    if json_path:
        parent = os.path.dirname(os.path.abspath(json_path))
        os.makedirs(parent, exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        print(f"\nwrote {json_path}")
    if chart_path:
        from shmbroker.bench.chart import chart, suite_labels

        print(f"wrote {chart(result, chart_path, suite, suite_labels(suite))}")
    return 0


def run(json_path: str | None = None, quick: bool = False, scale: float | None = None,
        chart_path: str | None = None) -> int:
    """`shmbroker bench ring`: print the table, optionally write JSON; the exit code.

    scale multiplies every message and sample count (default: the environment
    variable BROKER_BENCH_SCALE, else 1); quick multiplies it by 0.1."""
    return report(bench, table, json_path, quick, scale, chart_path, "ring")
