"""The defaults' 64 B round trip (Ring.create/open, send, recv()) where the wait strategy matters.

    .venv/bin/python bench/wait_scenarios.py [--runs 5] [--samples 5000]

Four scenarios on this machine, each run between two fresh processes (a new pinger forks a new
echoer), AF_UNIX beside the ring in the same minutes: both processes free on every CPU; both
pinned to one CPU (one vCPU, `taskset -c 0`); one CPU hog beside them; two hogs. The hogs are
busy loops in child processes, started before and killed after each scenario. Prints each
run's p50 and the median run's p50/p99, per transport. A waiter whose peer last ran on its own
CPU yields (and, just after waking that peer, sleeps); one whose peer runs elsewhere spins
(csrc/ring/brk_ring.c, brk_plan): the pinned and loaded rows are what that rule is for, the free row
what it must not break. bench/RESULTS.md has the figures; see bench/README.md for the method of
the round trips themselves (shmbroker bench ring).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import statistics
import sys
from typing import Any

from shmbroker.bench import ring as b

SCENARIOS = ("free", "pinned to one CPU", "1 CPU hog beside", "2 CPU hogs beside")


def _hogs(n: int) -> list[int]:
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - a busy loop until killed, or until this process dies
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            while True:
                pass
        pids.append(pid)
    return pids


def _pinned(cpu: int | None, transport: str, samples: int) -> dict[str, Any]:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # the echoer it forks inherits it
    fig = next(f for f in b._figures() if f.key == "rtt_default")
    return b._latency(fig, transport, samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--samples", type=int, default=5000)
    a = ap.parse_args()
    cpu0 = min(os.sched_getaffinity(0))
    print(f"{os.cpu_count()} cores; {a.runs} fresh runs of {a.samples} round trips per scenario and transport")
    for scenario in SCENARIOS:
        hogs = _hogs(2 if scenario.startswith("2") else 1 if scenario.startswith("1") else 0)
        try:
            runs: dict[str, list[dict[str, Any]]] = {"ring": [], "unix": []}
            for _ in range(a.runs):
                for t in runs:
                    pin = cpu0 if scenario.startswith("pinned") else None
                    runs[t].append(b._in_fresh_process(_pinned, pin, t, a.samples))
        finally:
            for pid in hogs:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        for t, rs in runs.items():
            p50s = ", ".join(f"{r['p50']:.1f}" for r in rs)
            print(f"{scenario:18}  {b.LABELS[t]:7}  p50 of each run (us): {p50s:45}  median run: p50 "
                  f"{statistics.median(r['p50'] for r in rs):.1f}, p99 {statistics.median(r['p99'] for r in rs):.1f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
