"""Shared-memory segments: named POSIX shared memory, and sealed memfds passed over a Unix socket.

Named: created with O_CREAT|O_EXCL, 0600, space reserved; opened checked; mapped, unlinked, swept.

Why sealed memfds: a peer that can open a segment's file (by its name, or through
/proc/<pid>/map_files/) can ftruncate it, and every process that then touches the lost pages dies of
SIGBUS, the server included; posix_fallocate does not prevent it. A memfd sealed with F_SEAL_SHRINK
(and GROW, and SEAL) cannot be made smaller by anyone, its creator included, through any descriptor:
the cause is gone, for the server and for every peer that maps it, however it reads the memory (a
SIGBUS guard could only cover the server's own C reads, never a numpy view a subscriber holds). And
a memfd has no name to squat, guess or leave behind: it ends with its last descriptor and mapping.
"""
from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat

import posix_ipc

from shmbroker.core import names as _names
from shmbroker._errors import SegmentError

SHM_DIR = "/dev/shm"
MAX_SEGMENT = 1 << 40
MEMFD = "memfd:"  # a sealed segment's name starts so (it is no name in /dev/shm: the rest says what it is)
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


class Mapping:
    """One mapped segment. The mmap object is the only thing that unmaps it,
    and it refuses while any memoryview into it is alive, so a view never
    outlives its memory."""

    def __init__(self, name: str, mm: mmap.mmap, size: int, owner: bool, fd: int = -1) -> None:
        self.name = name
        self.mm = mm
        self.size = size
        self.owner = owner
        self.fd = fd  # a sealed memfd's descriptor, kept to be passed to a peer; -1: none (or a named segment)

    @property
    def sealed(self) -> bool:
        return self.name.startswith(MEMFD)

    def remap(self) -> "Mapping":
        """Another mapping of the same memory (a second ring's): from the descriptor, or the name."""
        if self.fd >= 0:
            return Mapping(self.name, _map(self.fd, self.size), self.size, owner=False)
        return open_existing(self.name)

    def unlink(self) -> None:
        """Remove the name (owner only), or let go of a memfd's descriptor: nobody else can open it
        from here on; the mappings stay valid until unmapped."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.owner:
            self.owner = False
            if not self.sealed:
                unlink(self.name)

    def close(self) -> bool:
        """Unmap if nothing points into the mapping; True if unmapped. A
        mapping still in use is unmapped by the last view's release."""
        if self.fd >= 0 and not self.owner:
            os.close(self.fd)
            self.fd = -1
        try:
            self.mm.close()
            return True
        except BufferError:
            return False


def unlink(name: str) -> bool:
    try:
        posix_ipc.unlink_shared_memory(name)
        return True
    except posix_ipc.ExistentialError:
        return False


def _map(fd: int, size: int) -> mmap.mmap:
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def create(name: str, size: int) -> Mapping:
    """Create and map a new segment of `size` bytes that only this user can open."""
    if not 0 < size <= MAX_SEGMENT:
        raise SegmentError(errno.EINVAL, f"segment size {size} out of range")
    try:
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=0)
    except posix_ipc.ExistentialError as e:
        raise SegmentError(errno.EEXIST, f"shared memory {name} already exists") from e
    except posix_ipc.PermissionsError as e:
        raise SegmentError(errno.EACCES, f"cannot create shared memory {name}: {e}") from e
    fd = shm.fd
    try:
        os.fchmod(fd, 0o600)  # exact mode whatever the umask
        os.ftruncate(fd, size)
        try:
            # Reserve the pages now: a full /dev/shm is an error here, never a SIGBUS later.
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            raise SegmentError(
                e.errno, f"cannot reserve {size} bytes in {SHM_DIR} for {name}: {os.strerror(e.errno or 0)}"
            ) from e
        _check_fd(fd, name, size)
        mm = _map(fd, size)
    except BaseException:
        shm.close_fd()
        unlink(name)
        raise
    shm.close_fd()
    return Mapping(name, mm, size, owner=True)


def create_sealed(name: str, size: int) -> Mapping:
    """Create and map a new memfd of `size` bytes, sealed against shrinking and growing: its descriptor
    (mapping.fd) is what a peer gets, over a Unix socket (SCM_RIGHTS), and open_fd() maps it."""
    if not 0 < size <= MAX_SEGMENT:
        raise SegmentError(errno.EINVAL, f"segment size {size} out of range")
    full = MEMFD + name.lstrip("/")
    fd = os.memfd_create(full[len(MEMFD):], os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, size)
        try:
            os.posix_fallocate(fd, 0, size)  # shmem like /dev/shm: short of memory is an error now
        except OSError as e:
            raise SegmentError(e.errno, f"cannot reserve {size} bytes of shared memory for {full}: "
                                        f"{os.strerror(e.errno or 0)}") from e
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        mm = _map(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return Mapping(full, mm, size, owner=True, fd=fd)


def open_fd(fd: int, name: str) -> Mapping:
    """Map a segment whose descriptor a peer passed (the caller still owns `fd`): it must be a memfd
    sealed against shrinking (else that peer, or any, could truncate it under us: SIGBUS), ours, of
    a sane size."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as e:
        raise SegmentError(errno.EPERM, f"{name}: the descriptor passed is not a sealed segment ({e})") from None
    if not seals & fcntl.F_SEAL_SHRINK:
        raise SegmentError(errno.EPERM, f"{name}: the segment passed is not sealed against shrinking: whoever can "
                                        f"reach it could truncate it under us")
    size = _check_fd(fd, name, None)
    return Mapping(name, _map(fd, size), size, owner=False)


def _check_fd(fd: int, name: str, size: int | None) -> int:
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        raise SegmentError(errno.EPERM, f"shared memory {name} belongs to uid {st.st_uid}, not to us ({os.geteuid()})")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise SegmentError(errno.EPERM, f"shared memory {name} is open to other users (mode {stat.S_IMODE(st.st_mode):o})")
    if size is not None and st.st_size != size:
        raise SegmentError(errno.EINVAL, f"shared memory {name} has {st.st_size} bytes, expected {size}")
    if not 256 <= st.st_size <= MAX_SEGMENT:
        raise SegmentError(errno.EINVAL, f"shared memory {name} has an impossible size ({st.st_size} bytes)")
    return st.st_size


def open_existing(name: str) -> Mapping:
    """Open and map a segment someone else created: ours, private, of a sane size."""
    try:
        shm = posix_ipc.SharedMemory(name)
    except posix_ipc.ExistentialError as e:
        raise SegmentError(errno.ENOENT, f"no shared memory named {name}") from e
    except posix_ipc.PermissionsError as e:
        raise SegmentError(errno.EACCES, f"cannot open shared memory {name}: {e}") from e
    try:
        size = _check_fd(shm.fd, name, None)
        mm = _map(shm.fd, size)
    finally:
        shm.close_fd()
    return Mapping(name, mm, size, owner=False)


def entries() -> list[str]:
    """broker's entries in /dev/shm, as segment names."""
    try:
        return sorted("/" + e for e in os.listdir(SHM_DIR) if _names.is_ours(e))
    except FileNotFoundError:
        return []
