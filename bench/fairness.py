"""Fairness: what a socket-session client gets of a broker that shared-memory publishers flood.

    .venv/bin/python bench/fairness.py [--seconds 5] [--runs 3] [--json FILE]

The load of issue 13, item 8: three shared-memory publishers publish 64 B messages as fast as they
can on one topic, a subscriber in another session has them relayed (policy drop), and a socket-session
client publishes 64 B messages on another topic, one call at a time (the loop a user writes:
`pub.publish(data)`). Each client is a process of its own; the server is a thread of this one, as an
embedding application runs it. Two placements:

* free: every process on every CPU (the machine's two cores are oversubscribed: six busy processes);
* server's own CPU: the server and the socket client pinned to CPU 0, the publishers and the subscriber
  to CPU 1, so that the socket client waits only for the server's loop, not for a core.

Prints messages per second for each publisher and the subscriber's batches, per run, and the socket
client's rate against the median shared-memory publisher's. bench/RESULTS.md has the figures.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from typing import Any

import shmbroker as broker
from shmbroker import connect

PAYLOAD = b"x" * 64
N_SHM = 3


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _shm_publisher(addr: str, stop: Any, counts: Any, i: int, cpu: int | None) -> None:
    _pin(cpu)
    with connect(addr, timeout=30) as c:
        pub = c.publisher("load")
        n = 0
        while not stop.is_set():
            for _ in range(1000):
                pub.publish(PAYLOAD)
            n += 1000
        counts[i] = n
        pub.close()


def _subscriber(addr: str, stop: Any, counts: Any, i: int, cpu: int | None) -> None:
    _pin(cpu)
    with connect(addr, timeout=30, socket_only=True) as c:
        sub = c.subscriber("load", policy="drop", capacity=4096)
        n = 0
        while not stop.is_set():
            n += len(sub.receive_many(1024, timeout=0.1))
        counts[i] = n
        sub.close()


def _socket_publisher(addr: str, stop: Any, counts: Any, i: int, cpu: int | None) -> None:
    _pin(cpu)
    with connect(addr, timeout=30, socket_only=True) as c:
        pub = c.publisher("calls")
        n = 0
        while not stop.is_set():
            pub.publish(PAYLOAD)
            n += 1
        counts[i] = n
        pub.close()


def run(seconds: float, pinned: bool) -> dict[str, Any]:
    where = tempfile.mkdtemp(prefix="brk-fair-")
    path = os.path.join(where, "fair.sock")
    before = os.sched_getaffinity(0)
    if pinned:
        os.sched_setaffinity(0, {0})  # the server's thread starts here and stays
    try:
        with broker.Server(path):
            os.sched_setaffinity(0, before)
            stop = mp.Event()
            counts = mp.Array("q", N_SHM + 2)
            other = 1 if pinned else None
            procs = [mp.Process(target=_shm_publisher, args=(path, stop, counts, i, other)) for i in range(N_SHM)]
            procs.append(mp.Process(target=_subscriber, args=(path, stop, counts, N_SHM, other)))
            procs.append(mp.Process(target=_socket_publisher,
                                    args=(path, stop, counts, N_SHM + 1, 0 if pinned else None)))
            for p in procs:
                p.start()
            time.sleep(seconds)
            stop.set()
            for p in procs:
                p.join(60)
                if p.exitcode != 0:
                    raise RuntimeError(f"a client process failed (exit {p.exitcode})")
    finally:
        os.sched_setaffinity(0, before)
        try:
            os.rmdir(where)
        except OSError:
            pass
    shm = [counts[i] / seconds for i in range(N_SHM)]
    sock = counts[N_SHM + 1] / seconds
    return {"placement": "server's own CPU" if pinned else "free", "shm_publishers_per_s": shm,
            "relayed_per_s": counts[N_SHM] / seconds, "socket_publisher_per_s": sock,
            "socket_vs_median_shm": sock / statistics.median(shm) if min(shm) else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", help="write the runs here")
    a = ap.parse_args()
    rows = []
    for pinned in (False, True):
        for r in range(a.runs):
            row = run(a.seconds, pinned)
            rows.append(row)
            print(f"{row['placement']:17s} run {r + 1}: socket publisher {row['socket_publisher_per_s']:9.0f}/s; "
                  f"shm publishers {', '.join(f'{x:,.0f}' for x in row['shm_publishers_per_s'])}/s; "
                  f"relayed {row['relayed_per_s']:,.0f}/s", flush=True)
    for placement in ("free", "server's own CPU"):
        socks = [r["socket_publisher_per_s"] for r in rows if r["placement"] == placement]
        print(f"{placement}: socket publisher median {statistics.median(socks):,.0f}/s over {len(socks)} runs "
              f"({os.cpu_count()} CPUs)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cpus": os.cpu_count(), "seconds": a.seconds, "runs": rows}, f, indent=1)


if __name__ == "__main__":
    main()
