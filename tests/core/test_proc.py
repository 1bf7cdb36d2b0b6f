"""What the kernel says about a process (src/shmbroker/core/proc.py), with real processes: a strange command
name, a zombie, a reused pid, a fork."""
from __future__ import annotations

import os

from shmbroker.core import proc


def _child(comm: bytes) -> tuple[int, int]:
    """A child named `comm` (as /proc/PID/comm shows it), stopped until it is told to go on; (pid, the
    write end of its pipe: close it to let the child exit)."""
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.close(w)
            os.close(ready_r)
            with open("/proc/self/comm", "wb") as f:
                f.write(comm)
            os.write(ready_w, b"x")
            os.read(r, 1)
        finally:
            os._exit(0)
    os.close(r)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"x"
    os.close(ready_r)
    return pid, w


def test_a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields():
    pid, go = _child(b"a) (b c) 1 2")
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        head = f"{pid} (a) (b c) 1 2) ".encode()  # what a split at the first ')' would misread
        assert stat.startswith(head) and stat[len(head):len(head) + 2] in (b"S ", b"R ")  # (R on a busy machine)
        start = proc.start_time(pid)
        assert start == int(stat[len(head):].split()[19])  # field 22, counted past the name we know
        assert start >= proc.start_time(os.getpid()) > 0  # started after us, in ticks after boot
        assert proc.alive(pid, start) and proc.alive(pid, 0)  # 0: any start time
        assert not proc.alive(pid, start + 1)  # the same pid, another process
    finally:
        os.close(go)
        os.waitpid(pid, 0)


def test_a_zombie_is_dead_and_so_is_a_reaped_child():
    pid, go = _child(b"zombie")
    start = proc.start_time(pid)
    os.close(go)
    siginfo = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    assert siginfo is not None and siginfo.si_pid == pid
    assert os.path.exists(f"/proc/{pid}") and proc.start_time(pid) == start
    assert not proc.alive(pid, start)
    os.waitpid(pid, 0)
    assert not proc.alive(pid, start) and proc.start_time(pid) == 0


def test_no_process_and_no_pid():
    assert not proc.alive(0, 0) and not proc.alive(-1, 0)
    assert proc.start_time("nobody") == 0  # type: ignore[arg-type]  # what a header might hold
    assert proc.alive(os.getpid(), proc.start_time(os.getpid()))


def test_me_is_refreshed_in_a_forked_child():
    parent = proc.me()
    assert parent == (os.getpid(), proc.start_time(os.getpid()))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            me = proc.me()
            ok = me[0] == os.getpid() and me[1] == proc.start_time(os.getpid()) and me != parent
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1) == b"1"
    finally:
        os.close(r)
        os.waitpid(pid, 0)


def test_login_session_is_the_kernels_audit_session():
    try:
        with open("/proc/self/sessionid", "rb") as f:
            expected: int | None = int(f.read())
    except OSError:
        expected = None
    assert proc.login_session() == expected == proc.login_session(os.getpid())
    pid, go = _child(b"other")
    try:
        assert proc.login_session(pid) == expected  # a child keeps its parent's
    finally:
        os.close(go)
        os.waitpid(pid, 0)
    assert proc.login_session(pid) is None  # gone
