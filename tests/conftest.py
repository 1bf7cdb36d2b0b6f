"""Shared fixtures: every test is checked for leaks (segments, child processes, threads).

The suite mirrors the package's layers: tests/core, protocol, transport, framework, services, and
at the top the tests that cross them (the CLI, the layers' checks, hostile clients, the chaos
soak, fuzzing). A test parametrized by how a session travels says it with one vocabulary:
"socket" (a Unix socket carries it), "shm" (a Unix socket, then shared-memory rings), "tcp".
Long runs carry the `stress` marker: `make test-fast` leaves them out, `make test` runs them.
"""
from __future__ import annotations

import os
import threading
import time

import pytest

SHM = "/dev/shm"


def shm_entries() -> set[str]:
    """This run's segments: its own prefix (set in the root conftest.py), so that another test
    run, a benchmark or a broker on the same machine is neither counted nor cleaned up."""
    from shmbroker.core import names as _names

    assert _names.PREFIX.startswith("brk-t"), "the root conftest.py sets this run's prefix before broker is imported"
    return {e for e in os.listdir(SHM) if _names.is_ours(e)}


def children() -> set[int]:
    me = str(os.getpid())
    out = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[1].decode() == me:
            out.add(int(pid))
    return out


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail any test that leaves an entry in /dev/shm, a child process or a thread."""
    shm_before = shm_entries()
    kids_before = children()
    threads_before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        new_shm = shm_entries() - shm_before
        new_kids = children() - kids_before
        new_threads = {t for t in threading.enumerate() if t not in threads_before and t.is_alive()}
        if not (new_shm or new_kids or new_threads) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    for name in new_shm:  # clean up so one leak does not fail every later test
        try:
            os.unlink(os.path.join(SHM, name))
        except OSError:
            pass
    assert not new_shm, f"test left entries in /dev/shm: {sorted(new_shm)}"
    assert not new_kids, f"test left child processes: {sorted(new_kids)}"
    assert not new_threads, f"test left threads: {sorted(t.name for t in new_threads)}"


OTHER_USER = "brk-test"


@pytest.fixture(scope="session")
def other_user() -> tuple[int, int]:
    """(uid, gid) of a real second user, created if needed (the tests run as root)."""
    import pwd
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("needs root to create a second user")
    try:
        pw = pwd.getpwnam(OTHER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER], check=True)
        pw = pwd.getpwnam(OTHER_USER)
    return pw.pw_uid, pw.pw_gid


@pytest.fixture
def server(tmp_path):
    """A broker.Server on a Unix socket in tmp_path, started, with its `address` (modules with a
    parametrized server of their own override this)."""
    import shmbroker as broker

    path = str(tmp_path / "broker.sock")
    srv = broker.Server(path)
    srv.start()
    srv.address = path
    yield srv
    srv.stop()


@pytest.fixture
def shared_dir():
    """A folder in /tmp every user may enter and write (0777): for a server another user connects to."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="brk-shared-", dir="/tmp")
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)
