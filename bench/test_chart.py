"""`shmbroker bench SUITE --chart FILE` and `shmbroker bench chart JSON`: a real quick run, its chart, redrawn from its JSON."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmbroker.cli", *args], capture_output=True, text=True, timeout=120)


def test_a_bench_draws_its_chart_and_chart_redraws_it_from_the_json(tmp_path):
    """A real (quick) run writes its JSON and its chart; `shmbroker bench chart` draws the same figures
    again from the JSON alone, each transport named as the table names it."""
    pytest.importorskip("matplotlib")
    data, png, svg = tmp_path / "link.json", tmp_path / "link.png", tmp_path / "again.svg"
    p = run("bench", "link", "--quick", "--json", str(data), "--chart", str(png))
    assert p.returncode == 0, p.stderr
    assert f"wrote {png}" in p.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    p = run("bench", "chart", str(data), "--out", str(svg))
    assert p.returncode == 0, p.stderr
    text = svg.read_text()
    result = json.loads(data.read_text())
    assert result["meta"]["suite"] == "link"
    from shmbroker.bench.link import LABELS

    for key, fig in result["figures"].items():
        assert fig["title"] in text
        for transport in fig["results"]:
            assert LABELS.get(transport, transport).replace("&", "&amp;") in text, transport
    again = tmp_path / "again.json"  # several JSONs at once, each chart named after its JSON
    again.write_text(data.read_text())
    p = run("bench", "chart", str(data), str(again), "--out-dir", str(tmp_path / "charts"))
    assert p.returncode == 0, p.stderr
    for name in ("link.png", "again.png"):
        drawn = tmp_path / "charts" / name
        assert f"wrote {drawn}" in p.stdout and drawn.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p = run("bench", "chart", str(data), str(again), "--out", str(tmp_path / "one.png"))
    assert p.returncode == 2 and "--out-dir" in p.stderr and not (tmp_path / "one.png").exists()
    p = run("bench", "chart", str(data), str(tmp_path / "missing.json"), "--out-dir", str(tmp_path / "none"))
    assert p.returncode == 2 and not (tmp_path / "none").exists()  # nothing drawn before every JSON was read
    p = run("bench", "chart", str(tmp_path / "missing.json"))
    assert p.returncode == 2 and "cannot read" in p.stderr and "missing.json" in p.stderr and "Traceback" not in p.stderr
