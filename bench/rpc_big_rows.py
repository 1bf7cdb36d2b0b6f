"""The rpc harness's big-request figures alone (`shmbroker bench rpc` runs them among the others):
the 1 MiB and 64 KiB request round trips, p50, on every transport, interleaved, ROUNDS times.

    .venv/bin/python bench/rpc_big_rows.py [ROUNDS]
"""
from __future__ import annotations

import sys
import tempfile

from shmbroker.bench import rpc

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 2
TRANSPORTS = ("shm", "framework", "unix", "pipe")

with tempfile.TemporaryDirectory() as tmp:
    for size, count in ((1 << 20, 500), (rpc.BIG, 3000)):
        rows: dict[str, list[float]] = {t: [] for t in TRANSPORTS}
        for _ in range(ROUNDS):
            for t in TRANSPORTS:
                rows[t].append(rpc._latency(tmp, t, count, size)["p50"])
        print(f"{size} B request round trip p50 (us): " + "  ".join(
            f"{rpc.LABELS[t]} {' / '.join(f'{v:.1f}' for v in vs)}" for t, vs in rows.items()))
        print("  shm / best baseline: " + " / ".join(
            f"{s / min(u, p):.2f}" for s, u, p in zip(rows["shm"], rows["unix"], rows["pipe"])))
