"""`broker bench link`: a linked service's round trip against a shared-memory session's, in one run.

A broker.Server in a forked child (the rpc benchmark's, serving its echo);
a provider of the linked service "echo" in a second child (serve_forever,
the same echo: argument 0 written into argument 1); the measured caller here.
Rows: the caller linked to the provider on a shared-memory session (both in
one session: the broker pairs them with a private pair of rings and steps out
of the path: caller -> provider -> caller) and on a socket session (the broker
relays every call: caller -> server -> provider -> server -> caller), and the
caller calling the server's own echo on a shared-memory session (one hop each
way), the baseline of issue 5's target (a linked-service round trip within
1.2x of it).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

from . import _bench_ring
from ._bench_ring import _child, _latency_stats, _machine, _Progress, _scale
from ._bench_rpc import ECHO, PAYLOAD, SMALL, _server
from ._client import Buffer, connect

COLUMNS = ("link_shm", "link_socket", "session_shm")
LABELS = {"link_shm": "link (shm)", "link_socket": "link (socket)", "session_shm": "session (shm)"}
TARGET = 1.2  # issue 5: a linked-service round trip within 1.2x of a shared-memory session's


def _provider(path: str, ready_w: int, stop_r: int, parents: tuple[int, ...]) -> None:
    """Child: offer "echo" until the parent closes its end of stop_r's pipe."""
    import select
    import threading

    for fd in parents:  # the parent's ends: else the pipe never ends
        os.close(fd)

    stop = threading.Event()

    def echo(call: Any) -> int:
        call.write(1, call.read(0))
        return 0

    def watch() -> None:
        select.select([stop_r], [], [])
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    with connect(path) as s, s.offer("echo", echo) as offer:
        os.write(ready_w, b"p")
        offer.serve_forever(stop, poll=0.05)


def _rounds(call: Any, count: int, warmup: int) -> list[int]:
    out, clock = [], time.perf_counter_ns
    for _ in range(warmup + count):
        buf = Buffer(SMALL)
        t0 = clock()
        call(ECHO, PAYLOAD, buf)
        out.append(clock() - t0)
    if buf.value != PAYLOAD:
        raise AssertionError(f"echo gave {buf.value!r:.40}")
    return out[warmup:]


def bench(quick: bool = False, scale: float | None = None) -> dict[str, Any]:
    factor = _scale(quick, scale)
    count = max(int(10_000 * factor), 200)
    warmup = max(count // 10, 20)
    progress = _Progress(len(COLUMNS))
    result: dict[str, Any] = {"meta": {**_machine(), "quick": quick, "scale": factor, "repeats": 1},
                              "figures": {}}
    tmpdir = tempfile.mkdtemp(prefix="broker-bench-link-")
    ready_r = ready_w = stop_r = stop_w = -1
    res: dict[str, Any] = {}
    try:
        with _server(tmpdir, 50.0, "strict") as path:
            ready_r, ready_w = os.pipe()  # made after the server's fork: it must not hold them
            stop_r, stop_w = os.pipe()
            with _child(_provider, path, ready_w, stop_r, (ready_r, stop_w)):
                if os.read(ready_r, 1) != b"p":
                    raise RuntimeError("the provider did not start")
                for col in COLUMNS:
                    progress.start(f"64 B round trip - {LABELS[col]}")
                    with connect(path, socket_only=(col == "link_socket")) as s:
                        if col == "session_shm":
                            ns = _rounds(s.send_receive, count, warmup)
                        else:
                            with s.link("echo") as link:
                                ns = _rounds(link.send_receive, count, warmup)
                        res[col] = {**_latency_stats(ns), "transport": s.transport}
                    progress.end(f"p50 {res[col]['p50']:.1f} us")
                os.close(stop_w)  # the provider stops
                stop_w = -1
    finally:
        for fd in (ready_r, ready_w, stop_r, stop_w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(tmpdir, ignore_errors=True)
    ratio = res["link_shm"]["p50"] / res["session_shm"]["p50"]
    result["figures"]["rtt_64"] = {"title": "64 B round trip", "unit": "us", "results": res, "ratio": ratio,
                                   "target": {"op": "<=", "value": TARGET, "measured": ratio,
                                              "met": ratio <= TARGET}}
    result["meta"]["loadavg_end"] = list(os.getloadavg())
    result["meta"]["seconds"] = round(time.monotonic() - progress.t0, 1)
    return result


def table(result: dict[str, Any]) -> str:
    lines = _bench_ring.header_lines("link", result["meta"], "us")
    fig = result["figures"]["rtt_64"]
    res = fig["results"]
    rows: list[tuple[str, ...]] = [("figure", "unit", *(LABELS[c] for c in COLUMNS), "link/session", "target")]
    t = fig["target"]
    for m in ("p50", "p99", "p99.9"):
        rows.append((f"64 B round trip {m}", "us (lower)", *(f"{res[c][m]:.1f}" for c in COLUMNS),
                     f"{res['link_shm'][m] / res['session_shm'][m]:.2f}x",
                     f"<= {TARGET}x: {'met' if t['met'] else 'NOT met'}" if m == "p50" else ""))
    lines += _bench_ring.render_rows(rows)
    lines += ["", "link (shm): caller -> provider -> caller over their private pair of rings; link (socket): "
              "caller -> broker -> provider -> broker -> caller; session: the caller and the broker's own echo"]
    return "\n".join(lines)


def run(json_path: str | None = None, quick: bool = False, scale: float | None = None) -> int:
    return _bench_ring.report(bench, table, json_path, quick, scale)
