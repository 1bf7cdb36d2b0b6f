"""Nearest-rank percentiles (src/shmbroker/bench/stats.py): numpy's selection, the textbook's ranks."""
from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest

from shmbroker.bench.stats import latency_stats, percentiles, rank

PS = (0, 1, 10, 25, 50, 90, 99, 99.9, 99.99, 100, 33.3, 12.5, 66.7, 0.1)


def textbook(s: list[int], p: float) -> int:
    """The ceil(p/100 * n)-th smallest of sorted s, counted in fractions (p as written), at least the first."""
    return s[max(1, math.ceil(Fraction(str(p)) * len(s) / 100)) - 1]


def test_percentiles_are_the_nearest_rank_and_numpy_inverted_cdf_where_its_floats_can_tell():
    """Against the textbook on shuffled samples of every size to 300 and some large ones; and equal to
    np.percentile(method="inverted_cdf") wherever p/100 * n is not a whole number (where it is, numpy's
    binary p/100 may land one rank up: the next test)."""
    rng = random.Random(17)
    ps = PS + tuple(round(rng.uniform(0, 100), rng.choice((0, 1, 2, 3))) for _ in range(30))
    agreed = 0
    for n in [*range(1, 301), 999, 1000, 1001, 2000, 10_000, 100_001]:
        samples = [rng.randrange(1 << 40) for _ in range(n)]
        got = percentiles(samples, ps)
        ordered = sorted(samples)
        assert got == [textbook(ordered, p) for p in ps], n
        apart = [(p, v) for p, v in zip(ps, got) if Fraction(str(p)) * n % 100]
        assert [v for _, v in apart] == list(np.percentile(samples, [p for p, _ in apart], method="inverted_cdf"))
        agreed += len(apart)
    assert agreed > 5_000


def test_a_whole_rank_is_that_rank_where_np_percentile_goes_one_up():
    samples = list(range(1, 1001))  # the k-th smallest is k
    assert percentiles(samples, (99.9, 50, 99, 100, 0)) == [999, 500, 990, 1000, 1]
    assert np.percentile(samples, 99.9, method="inverted_cdf") == 1000  # 0.999 * 1000 > 999 in binary
    assert rank(1000, 99.9) == 999 and rank(1, 0) == 1 and rank(7, 100) == 7
    with pytest.raises(ValueError):
        rank(0, 50)
    with pytest.raises(ValueError):
        rank(10, 100.5)


def test_latency_stats_in_microseconds():
    ns = [5000, 1000, 3000, 2000, 4000] * 200  # 1000 samples, 1-5 us
    s = latency_stats(ns)
    assert s == {"samples": 1000, "min": 1.0, "p50": 3.0, "p90": 5.0, "p99": 5.0, "p99.9": 5.0, "max": 5.0,
                 "mean": 3.0}
    assert all(type(v) in (int, float) for v in s.values())  # JSON-able, numpy's types left behind
