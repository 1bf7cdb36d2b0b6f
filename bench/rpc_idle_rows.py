"""The rpc harness's idle figure alone (`shmbroker bench rpc` runs it among the others): a 64 B echo
round trip after 1 ms idle, p50 and p99, on a shared-memory session and the raw baselines,
interleaved, ROUNDS times.

    .venv/bin/python bench/rpc_idle_rows.py [ROUNDS]
"""
from __future__ import annotations

import sys
import tempfile

from shmbroker.bench import rpc

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
TRANSPORTS = ("shm", "unix", "pipe")

with tempfile.TemporaryDirectory() as tmp:
    rows: dict[str, list[tuple[float, float]]] = {t: [] for t in TRANSPORTS}
    for _ in range(ROUNDS):
        for t in TRANSPORTS:
            r = rpc._latency(tmp, t, 2000, rpc.SMALL, 0.001)
            rows[t].append((r["p50"], r["p99"]))
    for t, vs in rows.items():
        print(f"{rpc.LABELS[t]:8} p50 " + " / ".join(f"{a:.1f}" for a, _ in vs) + "   p99 " + " / ".join(f"{b:.1f}" for _, b in vs))
    print("shm / AF_UNIX p50: " + " / ".join(f"{s[0] / u[0]:.2f}" for s, u in zip(rows["shm"], rows["unix"])))
