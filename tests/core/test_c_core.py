"""The C test program csrc/ring/tests/ring_test.c, built plain, under ASan+UBSan, and under TSan.

Each build is made once per session into a temporary directory; each mode of
the program is one test. The program prints one line per check and ends with
"N passed, M failed". Some checks are regressions of defects found in
csrc/ring/brk_ring.c; their names say which.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc" / "ring"
SOURCES = [CSRC / "tests" / "ring_test.c", CSRC / "brk_ring.c"]
COMMON = ["-std=c11", "-Wall", "-Wextra", "-Werror", f"-I{CSRC}", "-pthread"]

FLAVOURS: dict[str, dict] = {
    "plain": {"cflags": ["-O2"], "scale": 1, "packages": None},
    "asan": {
        "cflags": ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"],
        "scale": 10,
        "packages": "libasan8 and libubsan1",
    },
    # -Wno-tsan: GCC warns that TSan does not model atomic_thread_fence, and
    # -Werror would make that an error. The fences brk_ring.c relies on guard
    # the lossy seqlock reads and evictions, which the threads mode leaves out.
    "tsan": {"cflags": ["-O1", "-g", "-fsanitize=thread", "-Wno-tsan"], "scale": 10, "packages": "libtsan2"},
}

RUN_TIMEOUT = 300  # seconds per run of the program
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$")


def _compile(flavour: str, out: Path, sources: list[Path]) -> subprocess.CompletedProcess:
    cmd = ["gcc", *COMMON, *FLAVOURS[flavour]["cflags"], *map(str, sources), "-o", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT)


def _build(flavour: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (Debian package: gcc)")
    d = tmp_path_factory.mktemp(f"ring_test_{flavour}")
    packages = FLAVOURS[flavour]["packages"]
    if packages:
        # Can this gcc build and link anything with the sanitizer at all?
        probe = d / "probe.c"
        probe.write_text("#include <pthread.h>\nint main(void) { return 0; }\n")
        res = _compile(flavour, d / "probe", [probe])
        if res.returncode != 0:
            pytest.skip(f"gcc cannot build with -fsanitize for '{flavour}' here; install the Debian package(s) "
                        f"{packages}: {res.stderr.strip()[-500:]}")
    binary = d / f"ring_test_{flavour}"
    res = _compile(flavour, binary, SOURCES)
    assert res.returncode == 0, f"building ring_test ({flavour}) failed:\n{res.stdout}\n{res.stderr}"
    return binary


@pytest.fixture(scope="session")
def ring_test_plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build("plain", tmp_path_factory)


@pytest.fixture(scope="session")
def ring_test_asan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build("asan", tmp_path_factory)


@pytest.fixture(scope="session")
def ring_test_tsan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build("tsan", tmp_path_factory)


def _env(flavour: str) -> dict[str, str]:
    env = dict(os.environ)
    env["BRK_TEST_SCALE"] = str(FLAVOURS[flavour]["scale"])
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=1"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    env["TSAN_OPTIONS"] = "halt_on_error=1"
    return env


def _run(cmd: list[str], env: dict[str, str]) -> tuple[int | None, str, str]:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT, cwd=ROOT)
        return res.returncode, res.stdout, res.stderr
    except subprocess.TimeoutExpired as e:
        # subprocess.run killed the program; its forked children die with it (PR_SET_PDEATHSIG)
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return None, out, err + f"\n[killed after {RUN_TIMEOUT} s]"


def _run_mode(flavour: str, binary: Path, mode: str) -> None:
    env = _env(flavour)
    cmd = [str(binary), mode]
    rc, out, err = _run(cmd, env)
    if flavour == "tsan" and rc != 0 and "unexpected memory mapping" in out + err:
        # TSan's shadow layout does not fit some kernels' ASLR (large mmap_rnd_bits):
        # the known workaround is to run with address-space randomization off.
        cmd = ["setarch", platform.machine(), "-R", *cmd]
        rc, out, err = _run(cmd, env)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    failed = [ln for ln in lines if ln.startswith("FAIL")]
    report = (
        f"$ BRK_TEST_SCALE={env['BRK_TEST_SCALE']} {' '.join(cmd)}\nexit status: {rc}\n"
        + ("failed checks:\n" + "\n".join(failed) + "\n" if failed else "")
        + f"--- stdout ---\n{out}\n--- stderr ---\n{err}"
    )
    assert rc == 0, report
    assert lines, report
    m = SUMMARY.match(lines[-1])
    assert m and m.group(2) == "0", report
    assert int(m.group(1)) > 0, report


CASES = [pytest.param("plain", m, id=f"plain-{m}", marks=[pytest.mark.stress] if m == "procs" else [])
         for m in ("unit", "corrupt", "procs", "wakeup")]  # procs: 7 s
# the sanitizer builds take seconds each: stress (make test runs them, make test-fast leaves them out)
CASES += [pytest.param("asan", m, id=f"asan-{m}", marks=pytest.mark.stress) for m in ("unit", "corrupt", "procs", "wakeup")]
CASES += [pytest.param("tsan", "threads", id="tsan-threads", marks=pytest.mark.stress)]


@pytest.mark.timeout(RUN_TIMEOUT * 2 + 120)  # two runs at most (the TSan retry), plus the build
@pytest.mark.parametrize(("flavour", "mode"), CASES)
def test_ring_test(flavour: str, mode: str, request: pytest.FixtureRequest) -> None:
    binary = request.getfixturevalue(f"ring_test_{flavour}")
    _run_mode(flavour, binary, mode)


def test_the_ring_compiles_with_kernel_headers_older_than_futex_waitv(tmp_path: Path) -> None:
    """Headers before Linux 5.16 lack futex_waitv's struct and FUTEX_32: brk_ring.c defines them (and
    falls back at run time on ENOSYS), so such a build image still compiles it, warnings as errors."""
    header = Path("/usr/include/linux/futex.h")
    if shutil.which("gcc") is None or not header.exists():
        pytest.skip("needs gcc and the kernel headers")
    text = header.read_text()
    start = text.index("#define FUTEX_32")
    end = text.index("};", text.index("struct futex_waitv {")) + 2
    (tmp_path / "linux").mkdir()
    (tmp_path / "linux" / "futex.h").write_text(text[:start] + text[end:])  # as a 5.15 header has it
    cmd = ["gcc", "-fsyntax-only", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{tmp_path}", f"-I{CSRC}",
           str(CSRC / "brk_ring.c")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
