"""A smoke run of `shmbroker bench federation`: its rows against raw nats-py, every message delivered on both
sides, its targets, nothing left behind (no process, no segment, no folder)."""
from __future__ import annotations

import glob
import json
import os
import tempfile

import pytest

from shmbroker.bench import federation as _bench_fed
from shmbroker.core import names as _names

pytest.importorskip("nats")


@pytest.mark.stress  # a nats-server, two brokers and their clients: ~30 s
def test_bench_federation_smoke_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BROKER_BENCH_SCALE", "0.2")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    shm_before = {e for e in os.listdir("/dev/shm") if _names.is_ours(e)}
    path = tmp_path / "federation.json"
    assert _bench_fed.run(json_path=str(path), quick=True) == 0
    out = capsys.readouterr().out
    assert "raw nats-py" in out and "broker/nats" in out
    figs = json.loads(path.read_text())["figures"]
    for key in ("rate_64", "rate_64k", "latency_64"):
        for col in ("broker", "nats"):
            res = figs[key]["results"][col]
            assert res["received"] == res["sent"], (key, col, res)  # nothing lost on the way, either side
    for key in ("rate_64", "rate_64k"):
        assert all(figs[key]["results"][c]["value"] > 0 for c in ("broker", "nats"))
        assert figs[key]["target"]["value"] == 0.8 and isinstance(figs[key]["target"]["met"], bool)
    for key in ("rtt_64", "rtt_64_embedded"):  # client processes; processes that embed their brokers
        rtt = figs[key]
        assert 0 < rtt["results"]["broker"]["p50"] <= rtt["results"]["broker"]["p99"]
        assert rtt["target"]["value"] == 1.3
        assert len(rtt["ratios"]) == 2 and rtt["ratio"] in rtt["ratios"]  # (quick: two rounds, the lower middle)
    assert "embedded" in out
    assert {e for e in os.listdir("/dev/shm") if _names.is_ours(e)} == shm_before
    assert not glob.glob(os.path.join(tempfile.gettempdir(), "broker-bench-federation-*"))
    assert not glob.glob("/tmp/broker-bench-embedded-*")  # (the embedding children's own)


@pytest.mark.stress  # a nats-server, two instrumented brokers and their clients: ~15 s
def test_federation_stages_shows_every_stage_of_a_call():
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, os.path.join(root, "bench", "federation_stages.py"), "200"],
                         capture_output=True, text=True, timeout=120, cwd=root)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    stages = [line for line in lines if line.startswith("  ")]
    assert len(stages) == 12, run.stdout  # the call, the ten stages, the answer
    cumulative = [float(line.split()[-1]) for line in stages]
    assert cumulative == sorted(cumulative) and cumulative[-1] > 0, run.stdout  # each stage after the one before
    assert lines[-1].startswith("round trip p50 ") and "raw nats-py" in lines[-1]
    assert not glob.glob(os.path.join(tempfile.gettempdir(), "broker-bench-stages-*"))
