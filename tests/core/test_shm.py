"""Named shared memory: created private and reserved, opened only when it is ours and sane."""
from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import posix_ipc
import pytest

import shmbroker as broker
from shmbroker import Ring
from shmbroker.core import names as _names
from shmbroker.core import proc as _proc
from shmbroker.core import shm as _shm

from tests.helpers import Child


def test_segment_is_private_to_its_user_and_sized_as_declared():
    with Ring.create(capacity=1 << 12) as tx:
        st = os.stat("/dev/shm" + tx.name)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.geteuid()
        assert st.st_size % 4096 == 0 and st.st_size > 1 << 12
        assert st.st_blocks * 512 >= st.st_size  # reserved up front, not sparse
        assert tx.name in _shm.entries()
    assert tx.name not in _shm.entries()


def test_mode_is_exact_whatever_the_umask():
    old = os.umask(0o777)
    try:
        with Ring.create(capacity=1 << 10) as tx:
            assert stat.S_IMODE(os.stat("/dev/shm" + tx.name).st_mode) == 0o600
    finally:
        os.umask(old)


def test_creating_over_an_existing_name_is_refused():
    with Ring.create("dup-test", capacity=1 << 10):
        with pytest.raises(broker.SegmentError) as e:
            Ring.create("dup-test", capacity=1 << 10)
        assert e.value.errno == errno.EEXIST


def test_a_segment_of_another_user_is_refused(other_user):
    uid, gid = other_user
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()

    def as_other_user() -> None:
        os.setgid(gid)
        os.setuid(uid)
        with Ring.create("other-user-ring", capacity=1 << 10) as tx:
            os.write(w1, tx.name.encode().ljust(64))
            os.read(r2, 1)  # keep it until the parent has tried

    with Child(as_other_user) as kid:
        name = os.read(r1, 64).decode().strip()
        assert name == f"/{_names.PREFIX}.u{uid}.{_names.session_key(_proc.login_session())}.other-user-ring"
        with pytest.raises(broker.SegmentError, match=f"belongs to uid {uid}") as e:
            Ring.open(name)
        assert isinstance(e.value, OSError) and e.value.errno == errno.EPERM
        os.write(w2, b"1")
        assert kid.join(30) == 0
    for fd in (r1, w1, r2, w2):
        os.close(fd)


def test_a_segment_open_to_others_is_refused():
    with Ring.create(capacity=1 << 10) as tx:
        os.chmod("/dev/shm" + tx.name, 0o644)
        with pytest.raises(broker.SegmentError, match="open to other users"):
            Ring.open(tx.name)


def test_an_unformatted_segment_is_waited_for_then_refused():
    name = f"/{_names.PREFIX}.test.unformatted"
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=8192)
    shm.close_fd()
    try:
        with pytest.raises(broker.SegmentError, match="not finished"):
            Ring.open(name, timeout=0.1)
    finally:
        _shm.unlink(name)


def test_a_segment_too_small_to_be_ours_is_refused():
    name = f"/{_names.PREFIX}.test.tiny"
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=100)
    shm.close_fd()
    try:
        with pytest.raises(broker.SegmentError, match="impossible size"):
            Ring.open(name)
    finally:
        _shm.unlink(name)


def test_missing_segment():
    with pytest.raises(broker.SegmentError) as e:
        Ring.open(f"/{_names.PREFIX}.test.does-not-exist")
    assert e.value.errno == errno.ENOENT


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare(1)")
def test_full_dev_shm_is_an_error_at_creation_not_a_sigbus_later():
    """In a private mount namespace, /dev/shm is a 64 KiB tmpfs: a 1 MiB ring cannot be reserved."""
    code = textwrap.dedent(
        """
        import errno, os, shmbroker as broker
        try:
            broker.Ring.create(capacity=1 << 20)
        except broker.SegmentError as e:
            assert e.errno == errno.ENOSPC, e
            assert "/dev/shm" in str(e), e
            print("refused:", e)
        else:
            raise SystemExit("a ring bigger than /dev/shm was created")
        assert [e for e in os.listdir("/dev/shm")] == [], "the failed segment was left behind"
        with broker.Ring.create(capacity=1 << 12) as tx, broker.Ring.open(tx.name) as rx:
            tx.send(b"small fits"); assert rx.recv() == b"small fits"
        print("ok")
        """
    )
    script = f"mount -t tmpfs -o size=64k tmpfs /dev/shm && exec {sys.executable} -c '{code}'"
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    if p.returncode != 0 and "Operation not permitted" in p.stderr:
        pytest.skip(f"this sandbox does not allow mount namespaces: {p.stderr.strip()}")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "refused:" in p.stdout and p.stdout.strip().endswith("ok")
