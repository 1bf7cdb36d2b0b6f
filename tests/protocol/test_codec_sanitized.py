"""The extension's C (the codec, the rings' fast calls, the client's call, the server's take and put, the
topics' publish and receive of every payload kind, the big frames' stream calls) built under ASan+UBSan, running the codec's, the
protocol's, the shared-memory sessions', the framework's and the topic payloads' tests in a child interpreter.

CPython itself is not built with the sanitizers, so the child preloads their
runtimes, and leak checking is off (the interpreter keeps objects until exit
on purpose). Any out-of-bounds access or undefined behaviour in csrc/ on
those paths aborts the child, and the test fails with the sanitizer's report.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SANITIZE = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all", "-O1", "-g", "-Werror"]
TESTS = ["tests/protocol/test_codec.py", "tests/protocol/test_protocol.py", "tests/transport/test_shm_sessions.py", "tests/framework/test_framework.py",
         "tests/framework/test_message.py", "tests/services/test_topic_payloads.py", "tests/framework/test_big_frames.py"]

pytestmark = pytest.mark.stress  # a build with ASan and UBSan, then a suite under them: 45 s

BUILD = r"""
import os, sys
sys.path.insert(0, os.path.join({root!r}, "src"))
import cffi
from shmbroker import _build
ffi = cffi.FFI()
_build.configure(ffi, os.path.join({root!r}, "csrc"), relative=False, extra_compile_args={flags!r},
                 extra_link_args={flags!r}[:1])
print(ffi.compile(tmpdir={out!r}))
"""


def _runtime(name: str) -> str | None:
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.timeout(600)
def test_the_extension_under_asan_and_ubsan(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (Debian package: gcc)")
    asan, ubsan = _runtime("libasan.so"), _runtime("libubsan.so")
    if not asan or not ubsan:
        pytest.skip("gcc has no sanitizer runtimes here (Debian packages libasan8 and libubsan1)")
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "src" / "shmbroker", tree / "shmbroker", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    shutil.copytree(ROOT / "tests", tree / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    out = tmp_path / "build"
    build = subprocess.run([sys.executable, "-c", BUILD.format(root=str(ROOT), flags=SANITIZE, out=str(out))],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-3000:]
    built = Path(build.stdout.strip().splitlines()[-1])
    shutil.copy(built, tree / "shmbroker" / built.name)
    env = {**os.environ, "PYTHONPATH": str(tree), "LD_PRELOAD": f"{asan} {ubsan}",
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1", "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
    probe = subprocess.run([sys.executable, "-c", "import shmbroker._brk as b; print(b.__file__)"], env=env,
                           capture_output=True, text=True, timeout=60, cwd=tree)
    assert probe.stdout.strip() == str(tree / "shmbroker" / built.name), probe.stdout + probe.stderr
    # Output to files, not pipes: a forked child of a failed test that outlives its run cannot keep
    # this waiting for the pipes' end. Each test has its own time limit, far inside ours.
    with open(tmp_path / "out.txt", "w+") as out, open(tmp_path / "err.txt", "w+") as err:
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-o", "timeout=120",
                              *TESTS], env=env, stdout=out, stderr=err, text=True, timeout=500, cwd=tree)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    assert run.returncode == 0, (stdout[-3000:], stderr[-3000:])
    assert " passed" in stdout and "ERROR: AddressSanitizer" not in stderr
