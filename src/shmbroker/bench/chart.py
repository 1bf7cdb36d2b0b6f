"""Charts of a benchmark's JSON (`shmbroker bench SUITE --chart FILE`, `shmbroker bench chart JSON...`): the standing at a glance.

One panel per figure of the run, one bar per transport: the broker's in blue, the
IPC it is measured against in grey. A rate (msgs/s, req/s, GB/s) is one bar, longer
is better; a latency is its p50 bar with the p99 drawn over it as a thin one, shorter
is better. The title says the suite, the commit, the machine's cores and the date,
from the JSON's meta. matplotlib draws it (a benchmark extra: pip install 'shmbroker[bench]').
"""
from __future__ import annotations

import math
import os
from typing import Any

# the IPC each suite is measured against; every other column is one of the broker's own
BASELINES = {"pipe": "multiprocessing.Pipe", "unix": "AF_UNIX", "queue": "mp.Queue", "zmq": "pyzmq",
             "iceoryx2": "iceoryx2"}
_BROKER, _BASE = "#1f5fa8", "#9a9a9a"


def _rate(res: dict[str, Any]) -> float | None:
    for k in ("value", "median"):
        v = res.get(k)
        if isinstance(v, (int, float)):
            return float(v)
    return None


def _fmt(v: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g} {unit}"
    return f"{v:.3g}"


def chart(result: dict[str, Any], path: str, suite: str = "", labels: dict[str, str] | None = None) -> str:
    """Draw `result` (a bench's JSON) into `path` (.png or .svg); the path written. labels: the
    transports' names as the suite's table shows them."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("charts need matplotlib: pip install 'shmbroker[bench]'") from None
    matplotlib.use("Agg")  # no display: a file
    matplotlib.rcParams["svg.fonttype"] = "none"  # an SVG keeps its text as text (searchable, smaller)
    import matplotlib.pyplot as plt

    figures = [(k, f) for k, f in result.get("figures", {}).items() if f.get("results")]
    if not figures:
        raise ValueError("the JSON holds no figures with results: is it a `shmbroker bench ... --json` file?")
    cols = min(3, len(figures))
    rows = math.ceil(len(figures) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 0.45 + 2.5 * rows), squeeze=False)
    for ax, (_, f) in zip(axes.flat, figures):
        res = f["results"]
        names = [t for t in res if isinstance(res[t], dict) and ("p50" in res[t] or _rate(res[t]) is not None)]
        shown = [(labels or {}).get(t) or BASELINES.get(t, t) for t in names]
        colors = [_BASE if t in BASELINES else _BROKER for t in names]
        ys = range(len(names))
        latency = all("p50" in res[t] for t in names)
        if latency:
            p50 = [res[t]["p50"] for t in names]
            bars = ax.barh(ys, p50, color=colors)
            p99 = [res[t].get("p99", p) for t, p in zip(names, p50)]
            ax.barh(ys, p99, height=0.15, color="black", alpha=0.6)
            ax.set_xlabel(f"{f['unit']}: p50 (bar), p99 (line); shorter is better", fontsize=8)
        else:
            bars = ax.barh(ys, [_rate(res[t]) or 0.0 for t in names], color=colors)
            ax.set_xlabel(f"{f['unit']}; longer is better", fontsize=8)
        ax.bar_label(bars, labels=[_fmt(b.get_width()) for b in bars], fontsize=7, padding=2)
        widest = max([b.get_width() for b in bars] + (p99 if latency else []) + [1e-9])
        ax.set_xlim(0, widest * 1.2)  # room for the labels
        ax.set_yticks(list(ys), shown, fontsize=8)
        ax.invert_yaxis()
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(f["title"], fontsize=9)
    for ax in list(axes.flat)[len(figures):]:
        ax.axis("off")
    meta = result.get("meta", {})
    fig.suptitle(f"shmbroker bench {suite or meta.get('suite', '')}: {meta.get('git', '?')}, {meta.get('cores', '?')} "
                 f"cores, {str(meta.get('date', ''))[:16]}", fontsize=10)
    fig.tight_layout()
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def suite_labels(suite: str) -> dict[str, str]:
    """The transports' names in the tables of suite (ring, rpc, link, pubsub), if it is one."""
    import importlib

    try:
        return dict(getattr(importlib.import_module(f"shmbroker.bench.{suite}"), "LABELS", {}))
    except ImportError:
        return {}


def run(json_paths: str | list[str], out: str | None = None, out_dir: str | None = None) -> int:
    """`shmbroker bench chart JSON... [--out FILE | --out-dir DIR]`: the chart of each JSON a bench wrote
    (JSON's name with .png, beside it or in DIR; FILE for a single JSON); the exit code."""
    import json
    import sys

    paths = [json_paths] if isinstance(json_paths, str) else list(json_paths)
    if out and len(paths) != 1:
        print("shmbroker bench chart: --out names the chart of one JSON; use --out-dir for several", file=sys.stderr)
        return 2
    results = []
    for json_path in paths:  # every file read before any chart is drawn: a typo costs no half-done run
        try:
            with open(json_path) as f:
                results.append((json_path, json.load(f)))
        except (OSError, ValueError) as e:
            print(f"shmbroker bench chart: cannot read {json_path}: {e}", file=sys.stderr)
            return 2
    for json_path, result in results:
        suite = str(result.get("meta", {}).get("suite") or os.path.splitext(os.path.basename(json_path))[0])
        name = os.path.splitext(os.path.basename(json_path))[0] + ".png"
        path = out or os.path.join(out_dir or os.path.dirname(json_path), name)
        print(f"wrote {chart(result, path, suite, suite_labels(suite))}")
    return 0
