"""Benchmarks of the ring's single-process paths (pytest-benchmark), and a
smoke run of `shmbroker bench ring`.

With the project's default addopts (--benchmark-disable) every benchmark runs
its body once, as an ordinary test; `pytest bench --benchmark-enable` times
them. Either way the data must round-trip intact. Nothing here asserts a
duration: the machines are small and shared.
"""
from __future__ import annotations

import json
import os
import random
from array import array

import pytest

from shmbroker import Ring
from shmbroker.bench import ring as _bench_ring
from shmbroker.core import names as _names

PAYLOAD = bytes(range(64))
BATCH = 1024
BIG = 64 << 10


@pytest.fixture
def ring_pair():
    """A producer and a consumer of one ring, both in this process."""
    with Ring.create(capacity=1 << 22) as tx, Ring.open(tx.name) as rx:
        yield tx, rx


def test_send_recv_64_bytes(benchmark, ring_pair):
    tx, rx = ring_pair
    send, recv = tx.send, rx.recv

    def one() -> bytes:
        send(PAYLOAD)
        return recv()

    assert benchmark(one) == PAYLOAD
    assert rx.stats()["backlog_bytes"] == 0  # nothing left over


def test_send_batch_recv_batch_1024_x_64_bytes(benchmark, ring_pair):
    tx, rx = ring_pair
    rnd = random.Random(1)
    packed = rnd.randbytes(64 * BATCH)  # every record different
    lens = array("Q", [64]) * BATCH
    out = bytearray(len(packed))
    out_lens = array("Q", [0]) * BATCH

    def batch() -> int:
        tx.send_batch(packed, lens)
        return rx.recv_batch(out, out_lens)

    assert benchmark(batch) == BATCH
    assert list(out_lens) == [64] * BATCH
    assert out == packed
    assert rx.stats()["backlog_bytes"] == 0


def test_claim_commit_recv_view_release_64_kib(benchmark):
    block = random.Random(2).randbytes(BIG)
    with Ring.create(capacity=1 << 20) as tx, Ring.open(tx.name) as rx:

        def zero_copy() -> tuple[int, bytes, bytes, bool]:
            view = tx.claim(BIG)
            view[:] = block  # the producer writes its record in place
            tx.commit()
            got = rx.recv_view()
            seen = (len(got), bytes(got[:32]), bytes(got[-32:]))  # the consumer looks at both ends
            del got
            return (*seen, rx.release())

        n, head, tail, intact = benchmark(zero_copy)
        assert (n, head, tail, intact) == (BIG, block[:32], block[-32:], True)
        # and once more, comparing every byte
        view = tx.claim(BIG)
        view[:] = block
        tx.commit()
        got = rx.recv_view()
        assert got == block
        del got
        assert rx.release()


# ---- the two-process benchmark, scaled far down -------------------------------------

FIGURES = {"small_per_call", "small_batch", "small_many", "bulk_64k_into", "bulk_64k_bytes",
           "bulk_1m_into", "bulk_1m_bytes", "rtt_spin", "rtt_sleep", "rtt_default"}


def _children() -> set[int]:
    me, out = str(os.getpid()), set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[1].decode() == me:
                    out.add(int(pid))
        except (OSError, IndexError):
            pass
    return out


def _segments() -> set[str]:
    return {e for e in os.listdir("/dev/shm") if e.startswith(f"{_names.PREFIX}.")}


def test_bench_ring_smoke_run_writes_every_figure(tmp_path, capsys):
    shm_before, kids_before = _segments(), _children()
    path = tmp_path / "out" / "ring.json"  # the parent directory does not exist yet
    assert _bench_ring.run(json_path=str(path), quick=True, scale=0.01) == 0
    printed = capsys.readouterr()
    assert "ring/best" in printed.out and "targets met" in printed.out
    assert "[ 1/" in printed.err  # progress went to stderr

    data = json.loads(path.read_text())
    meta = data["meta"]
    assert meta["cores"] >= 1 and meta["python"] and meta["date"] and meta["repeats"] == 3
    figures = data["figures"]
    assert set(figures) == FIGURES
    for key, fig in figures.items():
        for t in ("ring", "pipe", "unix"):
            res = fig["results"][t]
            if fig["unit"] == "us":
                assert res["samples"] > 0, (key, t)
                assert 0 < res["p50"] <= res["p99"] <= res["p99.9"], (key, t, res)
                if key == "rtt_default":  # every run between two fresh processes, each one's figures kept
                    assert res["fresh_runs"] == len(res["runs"]) >= 3, (t, res["fresh_runs"])
                    assert res["p50_min"] <= res["p50"] <= res["p50_max"], (t, res)
                    assert {r["p50"] for r in res["runs"]} >= {res["p50_min"], res["p50_max"]}, (t, res)
                    assert all(r["ring_spin_us"] == 50.0 for r in res["runs"] if t == "ring"), "not the defaults"
            else:
                assert res["median"] > 0, (key, t)
                assert len(res["repetitions"]) == 3, (key, t)
                for rep in res["repetitions"]:
                    assert rep["value"] > 0 and rep["messages_timed"] > 0 and rep["seconds"] > 0, (key, t, rep)
        ratios = fig["ratio"].values() if isinstance(fig["ratio"], dict) else [fig["ratio"]]
        assert all(r > 0 for r in ratios), (key, fig["ratio"])
        if fig["target"] is not None:
            assert isinstance(fig["target"]["met"], bool)
    assert figures["small_many"]["baselines_from"] == "small_batch"

    assert _segments() - shm_before == set(), "the benchmark left segments in /dev/shm"
    assert _children() - kids_before == set(), "the benchmark left child processes"


def test_scale_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("BROKER_BENCH_SCALE", "0.5")
    assert _bench_ring._scale(False, None) == 0.5
    assert _bench_ring._scale(True, None) == pytest.approx(0.05)
    assert _bench_ring._scale(False, 2.0) == 2.0  # an explicit scale wins
    monkeypatch.setenv("BROKER_BENCH_SCALE", "0")
    with pytest.raises(ValueError):
        _bench_ring._scale(False, None)
