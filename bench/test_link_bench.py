"""A smoke run of `shmbroker bench link`: its rows, its target, nothing left behind."""
from __future__ import annotations

import glob
import json
import os
import tempfile

from shmbroker.bench import link as _bench_link
from shmbroker.core import names as _names


def test_bench_link_smoke_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BROKER_BENCH_SCALE", "0.01")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its working directory here: not another run's
    shm_before = {e for e in os.listdir("/dev/shm") if _names.is_ours(e)}
    path = tmp_path / "link.json"
    assert _bench_link.run(json_path=str(path), quick=True) == 0
    assert "link/session" in capsys.readouterr().out
    fig = json.loads(path.read_text())["figures"]["rtt_64"]
    assert set(fig["results"]) == set(_bench_link.COLUMNS)
    assert fig["results"]["link_shm"]["transport"] == "shared memory"
    assert fig["results"]["link_socket"]["transport"] == "socket"
    for res in fig["results"].values():
        assert 0 < res["p50"] <= res["p99"]
    assert fig["target"]["value"] == 1.2 and isinstance(fig["target"]["met"], bool)
    assert {e for e in os.listdir("/dev/shm") if _names.is_ours(e)} == shm_before
    assert not glob.glob(os.path.join(tempfile.gettempdir(), "broker-bench-link-*"))
