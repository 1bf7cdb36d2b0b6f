"""Builds as a user meets them (issue 17, item 1): clang with warnings as errors, a manylinux wheel made the
standard way (pip wheel, then auditwheel repair), and that wheel installed into a fresh virtual environment
and used from the repository's root, where the src/ layout keeps the source tree from shadowing it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A round trip through a named ring and the framework: the installed extension works, not just imports.
USE = """
import os, sys, shmbroker
where = os.path.dirname(shmbroker.__file__)
assert "site-packages" in where, where
with shmbroker.Ring.create("wheel-probe", capacity=1 << 16) as tx, shmbroker.Ring.open("wheel-probe") as rx:
    tx.send(b"hello")
    assert rx.recv() == b"hello"
print("ok", where)
"""


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.stress  # a compile of every source
def test_clang_builds_it_with_warnings_as_errors(tmp_path: Path) -> None:
    assert shutil.which("clang"), "clang is missing: .ci/deps.sh installs it"
    env = dict(os.environ, CC="clang", BROKER_WERROR="1")
    done = run([sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"),
                "--build-temp", str(tmp_path / "tmp")], cwd=ROOT, env=env)
    assert "clang" in done.stdout + done.stderr
    [so] = list((tmp_path / "lib").rglob("_brk*.so"))
    probe = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('shmbroker._brk', sys.argv[1]);"
             "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m);"
             "print(m.ffi.sizeof('brk_ring') if hasattr(m.lib, 'brk_claim') else 'no lib')")
    out = run([sys.executable, "-c", probe, str(so)]).stdout.strip()
    assert out.isdigit() and int(out) > 0, out


@pytest.mark.stress  # a wheel, a fresh venv and its installs: about a minute
def test_the_manylinux_wheel_installs_and_runs_from_the_repository_root(tmp_path: Path) -> None:
    run(["make", "wheel", f"DIST={tmp_path / 'dist'}", f"WHEEL_PY={sys.executable}"], cwd=ROOT)
    wheels = list((tmp_path / "dist").glob("*.whl"))
    assert len(wheels) == 1, wheels
    [wheel] = wheels
    assert "manylinux" in wheel.name and "linux_x86_64" not in wheel.name.replace("manylinux", ""), wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Name: shmbroker" in meta and "License-Expression: MIT" in meta, meta[:800]
    assert any(n.startswith("shmbroker/_brk") and n.endswith(".so") for n in names)
    assert not any(n.startswith(("tests/", "broker/")) for n in names)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)])
    # from the repository's root: the source tree must not shadow the installed package
    out = run([str(venv / "bin" / "python"), "-c", USE], cwd=ROOT).stdout
    assert out.startswith("ok "), out
    out = run([str(venv / "bin" / "shmbroker"), "--help"], cwd=ROOT).stdout
    assert "serve" in out
