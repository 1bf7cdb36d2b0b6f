"""A smoke run of `shmbroker bench pubsub`: every figure, every transport, every message checked, nothing left behind."""
from __future__ import annotations

import glob
import json
import os
import tempfile
import threading

from shmbroker.bench import pubsub as _bench_pubsub
from shmbroker.core import names as _names


def test_bench_pubsub_smoke_run_writes_every_figure(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BROKER_BENCH_SCALE", "0.01")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its working directory here: not another run's
    shm_before = {e for e in os.listdir("/dev/shm") if _names.is_ours(e)}
    iox_before = set(os.listdir("/dev/shm")) - shm_before  # iceoryx2's segments: none of a run's may stay
    threads_before = set(threading.enumerate())
    path = tmp_path / "pubsub.json"
    assert _bench_pubsub.run(json_path=str(path), quick=True) == 0
    printed = capsys.readouterr()
    assert "target for broker" in printed.out and "broker relay" in printed.out
    data = json.loads(path.read_text())
    figures = data["figures"]
    assert set(figures) == {"one_64", "one_64_ba", "one_64_np", "fan_64", "batch_64", "one_64k", "one_1m",
                            "one_1m_ba", "one_1m_np", "zc_1m", "lat_64"}
    want = {"broker", "relay", "queue"} | ({"zmq"} if _bench_pubsub.zmq is not None else set()) | (
        {"iceoryx2"} if _bench_pubsub.iox2 is not None else set())
    for key, fig in figures.items():
        assert set(fig["results"]) == ({"broker"} if key == "zc_1m" else want), key  # zero-copy: broker's own
        for t, res in fig["results"].items():
            assert res["count"] > 0, (key, t)
            if fig["unit"] == "us":
                assert 0 < res["p50"] <= res["p99"], (key, t, res)
            else:
                assert res["value"] > 0, (key, t, res)
    assert {k for k, f in figures.items() if "target" in f} == {"one_64", "batch_64", "zc_1m"}
    assert {e for e in os.listdir("/dev/shm") if _names.is_ours(e)} == shm_before
    # nothing of a run stays, iceoryx2's included, except the one segment iceoryx2 keeps per host by design
    # (its global management segment, shared by every iceoryx2 process: removing it is not ours to do)
    left = {e for e in set(os.listdir("/dev/shm")) - shm_before - iox_before
            if not (e.startswith("iox2_") and e.endswith(".global_mgmt"))}
    assert left == set()
    assert not glob.glob(os.path.join(tempfile.gettempdir(), "broker-bench-pubsub-*"))
    assert {t for t in threading.enumerate() if t.is_alive()} - threads_before == set()
