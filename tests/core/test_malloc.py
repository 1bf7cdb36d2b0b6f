"""keep_large_buffers: large buffers come back without page faults (counted by the kernel, in a child)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from shmbroker import keep_large_buffers

CHILD = r"""
import resource, sys
from shmbroker import keep_large_buffers
if sys.argv[1] == "keep":
    assert keep_large_buffers()
size = 1 << 20
src = bytes(size)
def burst():  # what a large message does: a few large buffers at once (records, the frame, the payload)
    held = [bytearray(src) for _ in range(4)]  # every page written
    del held
burst()  # warm up: the first buffers are fresh memory either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    burst()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin"})  # no MALLOC_* from our environment
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def test_large_buffers_are_reused_instead_of_faulted_in_again():
    default, kept = _faults("default"), _faults("keep")
    pages = 20 * 4 * (1 << 20) // 4096
    assert default >= pages // 2, f"glibc's default should fault most pages in again: {default} faults"
    assert kept < pages // 20, f"with keep_large_buffers the pages should be reused: {kept} faults"


def test_the_threshold_is_checked():
    with pytest.raises(ValueError, match="threshold"):
        keep_large_buffers(0)
