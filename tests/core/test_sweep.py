"""Segments whose creator died: found by sweep(), removed by `shmbroker clean` and by a server that starts.

Real processes: a child creates a ring and is killed with SIGKILL, so its
segment stays in /dev/shm with a dead creator in its header.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import posix_ipc
import pytest

import shmbroker as broker
from shmbroker.core import names as _names

from tests.helpers import Child

SHM = "/dev/shm"


def _orphan(become: tuple[int, int] | None = None) -> str:
    """A ring segment whose creator (a child, as `become` = (uid, gid) if given) was killed: its name."""
    r, w = os.pipe()

    def make() -> None:
        os.close(r)
        if become:
            os.setgid(become[1])
            os.setuid(become[0])
        ring = broker.Ring.create(capacity=1 << 12)
        os.write(w, ring.name.encode() + b"\n")
        time.sleep(60)  # killed long before

    child = Child(make)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        name = f.readline().decode().strip()
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    assert name.startswith(f"/{_names.PREFIX}.") and os.path.exists(SHM + name), name
    return name


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmbroker.cli", *args], capture_output=True, text=True, timeout=60)


def test_sweep_finds_only_dead_creators_and_clean_removes_them():
    orphan = _orphan()
    with broker.Ring.create(capacity=1 << 12) as live:  # this process lives: never swept
        found = dict(broker.sweep(remove=False))
        assert orphan in found and "is gone" in found[orphan] and live.name not in found
        assert os.path.exists(SHM + orphan)  # a dry run removes nothing

        dry = _cli("clean", "--dry-run")
        assert dry.returncode == 0 and f"would remove {orphan}" in dry.stdout and os.path.exists(SHM + orphan)

        done = _cli("clean")
        assert done.returncode == 0, done.stderr
        assert f"removed {orphan}: its creator (pid" in done.stdout and live.name not in done.stdout
        assert not os.path.exists(SHM + orphan) and os.path.exists(SHM + live.name)
        again = _cli("clean")
        assert again.returncode == 0 and "0 segments removed" in again.stdout


def test_a_segment_that_is_not_a_broker_header_is_left_alone():
    name = f"/{_names.PREFIX}.test.garbage.x." + os.urandom(4).hex()
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=4096)
    try:
        os.write(shm.fd, os.urandom(4096))  # not a formatted header: no creator to ask
        shm.close_fd()
        assert name not in dict(broker.sweep())
        assert os.path.exists(SHM + name)
    finally:
        posix_ipc.unlink_shared_memory(name)


def test_another_users_segment_is_not_judged(other_user):
    """A root sweep leaves another user's segments alone, even with a dead creator."""
    uid, gid = other_user
    name = _orphan(become=(uid, gid))
    try:
        assert os.stat(SHM + name).st_uid == uid
        assert name not in dict(broker.sweep())
        assert os.path.exists(SHM + name)
    finally:
        posix_ipc.unlink_shared_memory(name)


@pytest.mark.parametrize("mode", ["thread", "asyncio"])
def test_a_starting_server_sweeps(tmp_path, caplog, mode):
    import asyncio
    import logging

    caplog.set_level(logging.INFO, logger="shmbroker.server")
    orphan = _orphan()
    srv = broker.Server(str(tmp_path / "s.sock"), broker.Session)
    if mode == "thread":
        with srv:
            pass
    else:
        async def main() -> None:
            task = asyncio.get_running_loop().create_task(srv.serve_async())
            await asyncio.sleep(0.05)
            srv.stop()
            await task
        asyncio.run(main())
    assert not os.path.exists(SHM + orphan)
    assert any(f"removed {orphan}" in r.getMessage() for r in caplog.records)


def _with_prefix(prefix: str, *args: str) -> subprocess.CompletedProcess:
    """python -c/-m ARGS in a process whose segments are named PREFIX.*"""
    env = {**os.environ, "BROKER_SHM_PREFIX": prefix}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60, env=env)


def test_another_prefix_is_another_world():
    """Two test runs (or deployments) on one machine, each with its own BROKER_SHM_PREFIX: neither
    sweeps nor cleans the other's segments, even those whose creator died."""
    other = f"{_names.PREFIX}-other"
    made = _with_prefix(other, "-c", "import shmbroker as broker, os; r = broker.Ring.create(capacity=1 << 12); "
                                     "print(r.name, flush=True); os._exit(0)")  # dies without cleaning up
    assert made.returncode == 0, made.stderr
    name = made.stdout.strip()
    assert name.startswith(f"/{other}.") and os.path.exists(SHM + name), name
    try:
        assert name not in dict(broker.sweep(remove=False))  # ours does not even look
        ours = _cli("clean")
        assert ours.returncode == 0 and name not in ours.stdout and os.path.exists(SHM + name)
        theirs = _with_prefix(other, "-m", "shmbroker.cli", "clean")
        assert theirs.returncode == 0 and f"removed {name}" in theirs.stdout, theirs.stdout + theirs.stderr
        assert not os.path.exists(SHM + name)
    finally:
        if os.path.exists(SHM + name):
            posix_ipc.unlink_shared_memory(name)


@pytest.mark.parametrize("bad", ["Brk", "brk.x", "1brk", "brk/x", "b" * 25])
def test_a_bad_prefix_is_refused_with_its_rule(bad):
    res = _with_prefix(bad, "-c", "import shmbroker as broker")
    assert res.returncode != 0 and "BROKER_SHM_PREFIX" in res.stderr and "lower-case letter" in res.stderr, res.stderr
