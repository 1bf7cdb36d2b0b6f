"""Named POSIX shared memory: create (O_CREAT|O_EXCL, 0600, space reserved), open (checked), map, unlink, sweep."""
from __future__ import annotations

import errno
import mmap
import os
import stat

import posix_ipc

from . import _names
from ._errors import SegmentError

SHM_DIR = "/dev/shm"
MAX_SEGMENT = 1 << 40


class Mapping:
    """One mapped segment. The mmap object is the only thing that unmaps it,
    and it refuses while any memoryview into it is alive, so a view never
    outlives its memory."""

    def __init__(self, name: str, mm: mmap.mmap, size: int, owner: bool) -> None:
        self.name = name
        self.mm = mm
        self.size = size
        self.owner = owner

    def unlink(self) -> None:
        """Remove the name (owner only); mappings stay valid until unmapped."""
        if self.owner:
            self.owner = False
            unlink(self.name)

    def close(self) -> bool:
        """Unmap if nothing points into the mapping; True if unmapped. A
        mapping still in use is unmapped by the last view's release."""
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
