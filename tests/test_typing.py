"""The package is typed (issue 17, item 6): mypy --strict finds nothing in it, the public API as a user's
code uses it (tests/typecheck/usage.py) has the types it promises, never Any, and the stub of the
compiled module (src/shmbroker/_brk.pyi) declares exactly what its C header does. Checked with the real mypy
(the test extra has it), as pyproject.toml's [tool.mypy] configures it."""
from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
USAGE = ROOT / "tests" / "typecheck" / "usage.py"

needs_mypy = pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed "
                                "(pip install 'shmbroker[test]')")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for this module's runs (the package is analysed once), none left in the tree."""
    return tmp_path_factory.mktemp("mypy-cache")


def _mypy(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@needs_mypy
def test_mypy_strict_finds_nothing_in_the_package(cache: Path) -> None:
    done = _mypy(cache, "--strict", "-p", "shmbroker")
    assert done.returncode == 0, f"mypy --strict -p shmbroker:\n{done.stdout}{done.stderr}"
    assert "Success: no issues found" in done.stdout, done.stdout


@needs_mypy
def test_the_public_api_has_the_types_it_promises_never_any(cache: Path) -> None:
    # the package's own findings are the test above's: here only what a user's code sees of it
    done = _mypy(cache, "--strict", "--follow-imports=silent", str(USAGE))
    assert done.returncode == 0, f"mypy --strict {USAGE.relative_to(ROOT)}:\n{done.stdout}{done.stderr}"


@needs_mypy
def test_a_call_that_returned_any_would_fail_the_usage_check(cache: Path, tmp_path: Path) -> None:
    """The check above can fail: a call whose type is not what assert_type says (here Any: call_many's
    statuses, and a str where a Publisher is promised) is reported, each on its line."""
    code = USAGE.read_text() + (
        "\n\ndef wrong(session: broker.ClientSession, anything: Any) -> None:\n"
        "    assert_type(session.call_many(1, [(b'x',)]), list[int])\n"
        "    assert_type(session.publisher('x'), str)\n"
        "    assert_type(anything, broker.Publisher)\n")
    lines = len(code.splitlines())
    bad = tmp_path / "usage_wrong.py"
    bad.write_text(code)
    done = _mypy(cache, "--strict", "--follow-imports=silent", str(bad))
    assert done.returncode == 1, done.stdout + done.stderr
    found = {int(m.group(1)) for m in re.finditer(r"usage_wrong\.py:(\d+): error: .*\[assert-type\]", done.stdout)}
    assert found == {lines - 2, lines - 1, lines}, done.stdout


def _stub_lib() -> dict[str, int | None]:
    """src/shmbroker/_brk.pyi's lib: each name, with its function's C parameter count (None: a constant)."""
    tree = ast.parse((ROOT / "src" / "shmbroker" / "_brk.pyi").read_text())
    [lib] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "_Lib"]
    out: dict[str, int | None] = {}
    for node in lib.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = None
        elif isinstance(node, ast.FunctionDef):
            out[node.name] = len(node.args.args) - 1  # less self
    return out


def _header_lib() -> dict[str, int | None]:
    """What cffi's cdef makes lib of (src/shmbroker/_build.py): the ring header's #defines and functions, and the
    method tables."""
    header = (ROOT / "csrc" / "ring" / "brk_ring.h").read_text()
    text = re.sub(r"/\*.*?\*/", "", header, flags=re.S)
    out: dict[str, int | None] = {name: None for name in re.findall(r"^#define\s+(BRK_\w+)", text, flags=re.M)}
    for name, params in re.findall(r"^[\w\s\*]*?\b(brk_\w+)\s*\(([^)]*)\)\s*;", text, flags=re.M):
        params = params.strip()
        out[name] = 0 if params in ("", "void") else params.count(",") + 1
    build = ast.parse((ROOT / "src" / "shmbroker" / "_build.py").read_text())
    [tables] = [n.value for n in build.body if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "TABLES" for t in n.targets)]
    for table in ast.literal_eval(tables):
        out[table] = 1  # const void *TABLE(int i)
    return out


def test_the_compiled_modules_stub_declares_what_its_header_does() -> None:
    header, stub = _header_lib(), _stub_lib()
    assert len(header) > 60, sorted(header)  # the header was read (its #defines and functions)
    assert set(stub) - set(header) == set(), "in src/shmbroker/_brk.pyi, not in the header"
    assert set(header) - set(stub) == set(), "in the header, not in src/shmbroker/_brk.pyi"
    assert {n: c for n, c in stub.items() if c != header[n]} == {}, "parameter counts that differ"


def test_the_compiled_modules_stub_matches_the_built_module() -> None:
    """What the stub names is there in the module the build made, each a constant or a function as said."""
    from shmbroker import _brk

    for name, params in _stub_lib().items():
        value = getattr(_brk.lib, name)
        assert isinstance(value, int) if params is None else callable(value), name
