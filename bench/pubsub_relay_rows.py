"""The relayed rows of `shmbroker bench pubsub` alone (a subscriber on a socket session), fewer messages than a full run.

    .venv/bin/python bench/pubsub_relay_rows.py

Prints each figure's rate as JSON (msgs/s, or GB/s for 64 KiB and 1 MiB): for before/after comparisons of the
relay (bench/RESULTS.md).
"""
import json
from shmbroker.bench import pubsub as p
out = {}
for f in p._figures():
    if f.key in ("one_64", "one_64_np", "fan_64", "batch_64", "one_64k", "one_1m"):
        out[f.key] = p._run("relay", f, min(f.count, 100_000) if f.size < 1 << 16 else min(f.count, 2000))["value"]
print(json.dumps({k: round(v, 3) if v < 100 else round(v) for k, v in out.items()}))
