"""Latency figures: nearest-rank percentiles of samples, with numpy.

The p-th percentile is the nearest rank: the ceil(p/100 * n)-th smallest of n samples, a sample that
was measured (no interpolation). numpy selects it (np.partition, no full sort); the rank is counted
in exact decimal arithmetic, not taken from np.percentile(method="inverted_cdf"), which has the same
definition but works out p/100 * n in binary floating point and so, whenever p/100 * n is a whole
number that 0.999 or the like cannot hold exactly, lands a rank too high: the p99.9 of 1000 samples
would be their maximum (tests/test_bench_stats.py).
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

import numpy as np


def rank(n: int, p: float) -> int:
    """The nearest rank (1..n) of the p-th percentile of n samples; p as written (99.9 is 999/10)."""
    if n <= 0:
        raise ValueError("no samples")
    if not 0 <= p <= 100:
        raise ValueError(f"a percentile is from 0 to 100, not {p}")
    return min(n, max(1, math.ceil(Fraction(str(p)) * n / 100)))


def percentiles(samples: Sequence[float] | np.ndarray, ps: Sequence[float]) -> list[float]:
    """The nearest-rank percentiles `ps` of `samples` (in any order), in the order of `ps`."""
    a = np.asarray(samples)
    at = [rank(len(a), p) - 1 for p in ps]
    chosen = np.partition(a, sorted(set(at)))
    return [chosen[i].item() for i in at]


def latency_stats(ns: Sequence[int] | np.ndarray) -> dict[str, float]:
    """A latency run's figures in microseconds from its samples in nanoseconds: min, p50, p90, p99,
    p99.9, max, mean, and how many samples."""
    a = np.asarray(ns, dtype=np.int64)
    p50, p90, p99, p999 = (v / 1000 for v in percentiles(a, (50, 90, 99, 99.9)))
    return {"samples": len(a), "min": int(a.min()) / 1000, "p50": p50, "p90": p90, "p99": p99, "p99.9": p999,
            "max": int(a.max()) / 1000, "mean": float(a.mean()) / 1000}
