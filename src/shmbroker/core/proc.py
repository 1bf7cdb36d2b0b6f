"""What the kernel says about a process: its start time, and whether it still lives.

Read from /proc by hand rather than through psutil: this is the bottom layer, and psutil would be a
fourth required dependency (a compiled one) of every install for these few lines; the segment
headers hold a start time as the kernel's clock ticks, compared exactly, where psutil gives
seconds since the epoch as a float (boot time plus ticks over the clock rate); and psutil has no
audit login session, so /proc would be read here anyway. tests/core/test_proc.py holds the cases
(a command name with spaces and parentheses, a zombie, a reused pid, a fork).
"""
from __future__ import annotations

import os


def read_stat(base: str) -> tuple[bytes, int]:
    """(state, start time) of the process at `base` (/proc/PID) from one read of its stat: fields 3 and 22.
    Raises OSError (gone, not ours to read) or ValueError (unreadable)."""
    with open(f"{base}/stat", "rb") as f:
        stat = f.read()
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    rest = stat[stat.rfind(b")") + 2 :].split()
    try:
        return rest[0], int(rest[19])
    except IndexError:
        raise ValueError(f"{base}/stat has {len(rest) + 2} fields") from None


def _stat(pid: int | str) -> tuple[bytes, int]:
    """(state, start time) of a process; (b"", 0) if unknown."""
    try:
        return read_stat(f"/proc/{pid}")
    except (OSError, ValueError):
        return b"", 0


def start_time(pid: int) -> int:
    """Start time of `pid` in clock ticks after boot (field 22 of /proc/PID/stat); 0 if unknown.

    A pid can be reused; the pair (pid, start time) names one process for good.
    """
    try:
        return _stat(int(pid))[1]
    except ValueError:
        return 0


MY_PID = os.getpid()
MY_START = start_time(MY_PID)


def me() -> tuple[int, int]:
    """(pid, start time) of this process; refreshed after a fork."""
    global MY_PID, MY_START
    pid = os.getpid()
    if pid != MY_PID:
        MY_PID, MY_START = pid, start_time(pid)
    return MY_PID, MY_START


def alive(pid: int, start: int) -> bool:
    """Does the process (pid, start) still run? A zombie counts as dead."""
    if pid <= 0:
        return False
    state, st = _stat(int(pid))  # one read: the state is that of the process the start time names
    if st == 0 or (start and st != start):
        return False
    return state not in (b"Z", b"X")


def login_session(pid: int | str = "self") -> int | None:
    """The kernel's audit login session id of a process (/proc/PID/sessionid: 4294967295 when no login
    claimed it), or None where the kernel has none, or the process is gone."""
    try:
        with open(f"/proc/{pid}/sessionid", "rb") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
