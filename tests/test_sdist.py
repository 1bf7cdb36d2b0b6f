"""The sdist holds what a user needs to build and test it (issue 17, item 1): the license, the C
sources, the docs, and the tests with their conftest and helpers."""
from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.stress  # a build
def test_the_sdist_ships_the_license_the_sources_the_docs_and_the_tests(tmp_path):
    done = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [sdist] = list(tmp_path.glob("*.tar.gz"))
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    need = {"LICENSE", "README.md", "pyproject.toml", "setup.py", "conftest.py", "tests/conftest.py",
            "tests/helpers.py", "tests/served.py", "docs/DESIGN.md", "docs/ARCHITECTURE.md", "src/shmbroker/py.typed"}
    need |= {str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*") if p.suffix in (".c", ".h")}
    need |= {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")}
    assert need <= names, sorted(need - names)
    assert not [n for n in names if "__pycache__" in n or n.endswith((".so", ".pyc"))]
