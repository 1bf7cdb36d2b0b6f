"""Coverage-guided fuzzing (atheris) of what the broker reads from its peers (DESIGN.md section 8).

Four targets in tests/fuzz/ (each a script; see its docstring): the Python frame decoder, the C
codec, the ring reader on hostile memory, the topic and link record assemblers. Each runs here
in a child process, so that a crash in C fails its test with the input kept, not this process:

* test_replay: every input of the target's seed corpus (tests/fuzz/corpus/<target>) and every
  crasher ever found (tests/fuzz/crashers/<target>), once each, no fuzzing: the bugs stay fixed.
* test_fuzz_bounded: a few seconds of fuzzing from the corpus (part of every run of the suite).
* test_fuzz_long: a minute each; run with `pytest -m fuzz_long tests/test_fuzz.py`.

The fuzzer's new inputs go to a temporary directory, never into the repository. A failing run
names the input it kept (crash-*, timeout-*, oom-*) and prints it in base64: add it to
tests/fuzz/crashers/<target>/ with the fix, and test_replay keeps it fixed.
"""
from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "tests" / "fuzz"
TARGETS = ["frames", "codec", "ring", "assemblers"]
BOUNDED_SECONDS = 3
LONG_SECONDS = 60
# libFuzzer's flags for every run: a stuck input (a hang) and a runaway one (memory) are failures too
FLAGS = ["-timeout=20", "-rss_limit_mb=2048", "-max_len=4096", "-print_final_stats=1"]


def _files(target: str, kind: str) -> list[Path]:
    d = FUZZ / kind / target
    return sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")) if d.is_dir() else []


def _run(target: str, args: list[str], tmp_path: Path, limit: float, instrument: bool = True) -> tuple[int, str]:
    """The target's script in a child: (its exit status, what it printed). Output goes to a file, not a
    pipe, so that nothing the child leaves behind can keep this waiting."""
    log = tmp_path / f"{target}.log"
    env = {k: v for k, v in os.environ.items() if k != "BROKER_FUZZ_NO_INSTRUMENT"}
    if not instrument:
        env["BROKER_FUZZ_NO_INSTRUMENT"] = "1"
    with open(log, "w+") as out:
        proc = subprocess.run([sys.executable, str(FUZZ / f"fuzz_{target}.py"), *FLAGS, *args], stdout=out,
                              stderr=subprocess.STDOUT, cwd=ROOT, timeout=limit, env=env)
        out.seek(0)
        return proc.returncode, out.read()


# what libFuzzer names the inputs it keeps (-artifact_prefix): a crash, a hang, runaway memory, a leak
ARTIFACTS = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")


def _kept(artifacts: Path) -> list[Path]:
    return sorted(p for p in artifacts.iterdir() if p.name.startswith(ARTIFACTS)) if artifacts.is_dir() else []


def _failure(target: str, output: str, artifacts: Path) -> str:
    """The message of a failed run, with each input libFuzzer kept in base64, read from the file: the
    file lives in pytest's temporary directory, which later runs delete, and libFuzzer prints an
    input's "Base64:" line only for inputs of at most 256 bytes (none for an oom-* input it dumps
    from its memory thread while a longer one ran)."""
    kept = []
    for p in _kept(artifacts):
        data = p.read_bytes()
        kept.append(f"{p} ({len(data)} bytes, base64: {base64.b64encode(data).decode() or '(empty)'})")
    shown = "\n  ".join(kept) if kept else "none"
    return (f"fuzz target {target} failed; input kept:\n  {shown}\n(to keep it: base64 -d > "
            f"tests/fuzz/crashers/{target}/<what-it-does>, with the fix.)\n{output[-4000:]}")


def _fuzz(target: str, seconds: int, tmp_path: Path) -> None:
    seeds = _files(target, "corpus")
    assert seeds, f"no seed corpus in tests/fuzz/corpus/{target} (tests/fuzz/make_corpus.py writes it)"
    work, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    work.mkdir()
    artifacts.mkdir()
    # the first directory gets the new inputs; the repository's corpus is only read
    rc, out = _run(target, [f"-max_total_time={seconds}", f"-artifact_prefix={artifacts}/", str(work),
                            str(FUZZ / "corpus" / target)], tmp_path, seconds + 300)
    assert rc == 0 and not _kept(artifacts), _failure(target, out, artifacts)
    done = re.search(r"^Done (\d+) runs in (\d+) second", out, re.M)
    stats = re.findall(r"^#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/\S+ .*exec/s: (\d+)", out, re.M)
    assert done and stats, f"no libFuzzer statistics in the output:\n{out[-3000:]}"
    runs, secs = int(done[1]), int(done[2])
    _, cov, ft, corp, rate = stats[-1]
    # it really fuzzed: every seed was run, and many more inputs besides
    assert runs > 10 * len(seeds), f"only {runs} inputs in {secs} s:\n{out[-3000:]}"
    assert int(cov) > 0 and int(corp) >= 1, stats[-1]
    print(f"\nfuzz {target}: {runs} inputs in {secs} s ({rate} exec/s), coverage {cov} edges / {ft} features, "
          f"corpus {len(seeds)} -> {corp}")


@pytest.mark.parametrize("target", TARGETS)
def test_replay(target, tmp_path):
    """The seed corpus and every crasher found, once each: each is handled as the target's rules say."""
    inputs = _files(target, "corpus") + _files(target, "crashers")
    assert inputs, target
    rc, out = _run(target, [f"-artifact_prefix={tmp_path}/", *map(str, inputs)], tmp_path, 300, instrument=False)
    assert rc == 0, _failure(target, out, tmp_path)
    ran = re.findall(r"^Executed (\S+) in", out, re.M)
    assert sorted(ran) == sorted(map(str, inputs)), out[-3000:]


@pytest.mark.stress  # seconds of fuzzing per target
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_bounded(target, tmp_path):
    _fuzz(target, BOUNDED_SECONDS, tmp_path)


@pytest.mark.fuzz_long
@pytest.mark.timeout(LONG_SECONDS + 600)
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_long(target, tmp_path, request):
    markexpr = request.config.getoption("markexpr") or ""
    if "fuzz_long" not in markexpr or "not fuzz_long" in markexpr:
        pytest.skip("a minute per target: run with `pytest -m fuzz_long tests/test_fuzz.py`")
    _fuzz(target, LONG_SECONDS, tmp_path)
