"""Some rows of `shmbroker bench pubsub` alone, on one transport: for quick before/after comparisons.

    .venv/bin/python bench/pubsub_rows.py one_64,one_1m_ba [broker|relay|queue|zmq|iceoryx2]

It runs the harness's own figures (src/shmbroker/bench/pubsub.py, _run), 1000 messages for the 1 MiB ones and the
figure's full count for the others, and prints each figure's rate as JSON (msgs/s, or GB/s).
"""
from __future__ import annotations

import json
import sys

from shmbroker.bench import pubsub as p


def main(keys: list[str], transport: str) -> None:
    out = {}
    for f in p._figures():
        if f.key in keys:
            out[f.key] = p._run(transport, f, f.count if f.size < 1 << 20 else 1000)["value"]
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1].split(","), sys.argv[2] if len(sys.argv) > 2 else "broker")
