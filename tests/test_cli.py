"""The broker command line."""
from __future__ import annotations

import subprocess
import sys

import broker


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "broker.cli", *args], capture_output=True, text=True, timeout=60)


def test_version():
    p = run("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"broker {broker.__version__}"


def test_help_lists_bench():
    p = run("--help")
    assert p.returncode == 0 and "bench" in p.stdout


def test_unknown_command_is_an_error():
    p = run("frobnicate")
    assert p.returncode == 2 and "invalid choice" in p.stderr
