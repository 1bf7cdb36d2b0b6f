"""A smoke run of `shmbroker bench rpc`, and a single-process micro-benchmark of a
framework round trip (pytest-benchmark).

With the project's default addopts (--benchmark-disable) the benchmark runs
its body once, as an ordinary test; `pytest bench --benchmark-enable` times
it. Nothing here asserts a duration: the machines are small and shared.
"""
from __future__ import annotations

import glob
import json
import os
import tempfile
import threading

import pytest

import shmbroker as broker
from shmbroker.bench import rpc as _bench_rpc
from shmbroker.core import names as _names
from shmbroker.cli import main

FIGURES = {"rtt_64", "strict_64", "pipelined_64", "many_64", "rtt_64_gap", "rtt_1m", "rtt_64k"}
TRANSPORTS = _bench_rpc.TRANSPORTS  # every one must have a result in every figure
assert {"shm", "busy", "framework", "nospin", "unix", "pipe"} <= set(TRANSPORTS)


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


def _leftovers() -> tuple[set[str], set[str]]:
    """(/dev/shm entries, the benchmark's temporary directories)."""
    shm = {e for e in os.listdir("/dev/shm") if _names.is_ours(e)}
    return shm, set(glob.glob(os.path.join(tempfile.gettempdir(), "broker-bench-rpc-*")))


def test_bench_rpc_smoke_run_writes_every_figure(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BROKER_BENCH_SCALE", "0.01")  # with --quick: 1/1000 of the counts, the minimums
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its working directory here: not another run's
    before, kids_before, threads_before = _leftovers(), _children(), set(threading.enumerate())
    path = tmp_path / "out" / "rpc.json"  # the parent directory does not exist yet
    assert _bench_rpc.run(json_path=str(path), quick=True) == 0
    printed = capsys.readouterr()
    assert "shm/best" in printed.out and "targets met" in printed.out and "shm busy" in printed.out
    assert "[ 1/78]" in printed.err  # progress went to stderr

    data = json.loads(path.read_text())
    meta = data["meta"]
    assert meta["cores"] >= 1 and meta["python"] and meta["date"] and meta["repeats"] == 3
    assert meta["quick"] is True and meta["scale"] == pytest.approx(0.001)
    assert len(meta["loadavg_start"]) == 3 and "git" in meta
    figures = data["figures"]
    assert set(figures) == FIGURES
    for key, fig in figures.items():
        for t in TRANSPORTS:
            res = fig["results"][t]
            if fig["unit"] == "us":
                assert res["samples"] >= 50, (key, t)
                assert 0 < res["min"] <= res["p50"] <= res["p99"] <= res["p99.9"] <= res["max"], (key, t, res)
            else:
                assert res["median"] > 0 and len(res["repetitions"]) == 3, (key, t)
                for rep in res["repetitions"]:
                    assert rep["value"] > 0 and rep["requests_timed"] > 0 and rep["seconds"] > 0, (key, t, rep)
        ratios = fig["ratio"].values() if isinstance(fig["ratio"], dict) else [fig["ratio"]]
        assert all(r is not None and r > 0 for r in ratios), (key, fig["ratio"])
    targets = data["targets"]
    assert [t["figure"] for t in targets] == ["rtt_64", "rtt_64", "pipelined_64", "many_64", "rtt_64_gap"]
    for t in targets:
        assert t["measured"] > 0 and isinstance(t["met"], bool) and t["text"]
        assert t in figures[t["figure"]]["targets"]
        assert f"{t['text']}: {'met' if t['met'] else 'NOT met'}" in printed.out

    assert _leftovers() == before, "the benchmark left /dev/shm entries or its temporary directory"
    assert _children() - kids_before == set(), "the benchmark left child processes"
    assert {t for t in threading.enumerate() if t.is_alive()} - threads_before == set(), "the benchmark left threads"


def test_cli_has_the_rpc_suite(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "rpc", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--json" in out and "--quick" in out


@pytest.fixture
def in_process_session():
    """A server on its background thread and a session with it, both in this process."""
    with tempfile.TemporaryDirectory(prefix="brk-rpc-") as d:
        with broker.Server(os.path.join(d, "rpc.sock"), _bench_rpc._Bench) as srv:
            s = broker.connect(os.path.join(d, "rpc.sock"))
            try:
                yield s
            finally:
                s.close()
        assert srv.sessions() == []


def test_in_process_round_trip_64_bytes(benchmark, in_process_session):
    s = in_process_session
    payload = os.urandom(64)

    def one() -> tuple[int, bytes]:
        out = broker.Buffer(64)
        status = s.send_receive(_bench_rpc.ECHO, payload, out)
        return status, out.value

    assert benchmark(one) == (0, payload)
    assert s.send_receive(_bench_rpc.SINK, payload * 1024) == 64 * 1024  # and the other function, once
