"""The 1 MiB rows of `shmbroker bench pubsub` on the broker alone, with the publisher's ring of a given size.

    .venv/bin/python bench/pubsub_ring_size.py [CAPACITY ...]   # bytes; default: 4, 16 and 64 MiB

It runs the harness's own figures (src/shmbroker/bench/pubsub.py, _run) with the publisher opened with
ring_capacity=CAPACITY, 1000 messages each, and prints GB/s per figure: what bounds the 1 MiB rows
at the default ring (bench/RESULTS.md).
"""
from __future__ import annotations

import json
import sys

from shmbroker.bench import pubsub as p


def main(capacities: list[int]) -> None:
    orig = p._Broker.__init__
    for cap in capacities:
        def init(self, relay, zero_copy=0, _cap=cap):  # the same broker transport, its publisher's ring resized
            orig(self, relay, zero_copy)
            self.pub.close()
            self.pub = self.session.publisher("bench", block_timeout=60, ring_capacity=_cap)
        p._Broker.__init__ = init
        try:
            out = {f.key: round(p._run("broker", f, 1000)["value"], 2)
                   for f in p._figures() if f.key in ("one_1m", "one_1m_ba", "one_1m_np")}
        finally:
            p._Broker.__init__ = orig
        print(json.dumps({"ring_capacity": cap, "GB/s": out}), flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [4 << 20, 16 << 20, 64 << 20])
