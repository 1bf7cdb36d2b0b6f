"""A smoke run of `shmbroker bench aio`: its rows, both ways on both transports, nothing left behind."""
from __future__ import annotations

import glob
import json
import os
import tempfile

from shmbroker.bench import aio as _bench_aio
from shmbroker.core import names as _names


def test_bench_aio_smoke_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BROKER_BENCH_SCALE", "0.01")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    shm_before = {e for e in os.listdir("/dev/shm") if _names.is_ours(e)}
    path = tmp_path / "aio.json"
    assert _bench_aio.run(json_path=str(path), quick=True) == 0
    assert "asyncio/sync" in capsys.readouterr().out
    figures = json.loads(path.read_text())["figures"]
    assert set(figures) == {f"{r}_{t}" for r in _bench_aio.ROWS for t in _bench_aio.TRANSPORTS}
    for name, fig in figures.items():
        assert ("shared memory" if name.endswith("_shm") else "socket") in fig["title"]
        for way in _bench_aio.WAYS:
            assert fig["results"][way]["median"] > 0
    assert {e for e in os.listdir("/dev/shm") if _names.is_ours(e)} == shm_before
    assert not glob.glob(os.path.join(tempfile.gettempdir(), "broker-bench-aio-*"))
