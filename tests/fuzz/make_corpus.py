"""Write each target's seed corpus (its seeds(): valid inputs from the real encoders) into
tests/fuzz/corpus/<target>/seed-NN. Run by hand after a change of a target's input layout:
    .venv/bin/python tests/fuzz/make_corpus.py
"""
from __future__ import annotations

import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fuzzlib  # noqa: E402

TARGETS = ["fuzz_frames", "fuzz_codec", "fuzz_ring", "fuzz_assemblers"]


def main() -> None:
    for name in TARGETS:
        mod = importlib.import_module(name)
        d = os.path.join(fuzzlib.CORPUS, mod.TARGET)
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            if f.startswith("seed-"):
                os.unlink(os.path.join(d, f))
        for i, data in enumerate(mod.seeds()):
            with open(os.path.join(d, f"seed-{i:02d}"), "wb") as f:
                f.write(data)
        print(f"{mod.TARGET}: {len(mod.seeds())} seeds")


if __name__ == "__main__":
    main()
