"""What the kernel says about a process: its start time, and whether it still lives."""
from __future__ import annotations

import os


def start_time(pid: int) -> int:
    """Start time of `pid` in clock ticks after boot (field 22 of /proc/PID/stat); 0 if unknown.

    A pid can be reused; the pair (pid, start time) names one process for good.
    """
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            stat = f.read()
    except (OSError, ValueError):
        return 0
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    rest = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
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
    st = start_time(pid)
    if st == 0 or (start and st != start):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
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
