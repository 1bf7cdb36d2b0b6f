"""Server addresses: a Unix socket path, a bare name in the user's runtime directory, or tcp://host:port."""
from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import stat
from dataclasses import dataclass

from shmbroker._errors import AddressInUse, BrokerError

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Address:
    family: int  # socket.AF_UNIX or AF_INET / AF_INET6
    target: str | tuple[str, int]  # the path, or (host, port)
    text: str  # as the user wrote it

    @property
    def is_unix(self) -> bool:
        return self.family == socket.AF_UNIX

    def __str__(self) -> str:
        return self.text


def runtime_dir() -> str:
    """This user's directory for broker sockets: $XDG_RUNTIME_DIR/broker, else a
    private (0700, ours) directory under /tmp.

    Not platformdirs' user_runtime_dir: on Linux it is $XDG_RUNTIME_DIR, else /run/user/UID
    whether or not that exists (it does not where no login manager made it: containers, CI, su,
    cron, root here), so the fallback and the check of what we find would stay here anyway, and
    the transport layer would need a fourth required dependency for one environment lookup."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        path = os.path.join(base, "broker")
    else:
        path = f"/tmp/broker-{os.geteuid()}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise PermissionError(f"{path} is not a private directory of this user: refusing to use it")
    return path


SYSTEM_DIR_ENV = "BROKER_SYSTEM_DIR"


def system_dir() -> str:
    """Where system-wide servers listen, for every local user: /run/broker ($BROKER_SYSTEM_DIR)."""
    return os.environ.get(SYSTEM_DIR_ENV) or "/run/broker"


def system_path(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"bad server name {name!r}: letters, digits, '_', '-', '.'")
    return os.path.join(system_dir(), f"{name}.sock")


def make_system_dir() -> str:
    """The system directory, made if missing (0755: every user may reach the sockets in it, and only
    its owner may add or remove one); refused if others may write to it."""
    path = system_dir()
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) & 0o022:
        raise PermissionError(f"{path} must be a directory that only its owner may write to")
    return path


def parse_system(name: str) -> Address:
    """A server name in the system directory (Server(system=True), shmbroker serve --system)."""
    return Address(socket.AF_UNIX, system_path(name), name)


def parse_client(address: str) -> Address:
    """The address a client connects to: as parse(), except that a bare name with no server in this
    user's runtime directory is looked for in the system directory (a system-wide server's)."""
    addr = parse(address)
    if not addr.is_unix and isinstance(addr.target, tuple) and addr.target[0] in ("0.0.0.0", "::"):  # "every interface": this host, to a client
        addr = Address(addr.family, ("127.0.0.1" if addr.family == socket.AF_INET else "::1", addr.target[1]),
                       address)
    if addr.is_unix and "/" not in address and not os.path.exists(str(addr.target)):
        system = system_path(address)
        if os.path.exists(system):
            return Address(socket.AF_UNIX, system, address)
    return addr


def parse(address: str) -> Address:
    """Address from text: 'tcp://host:port', a path (contains '/'), or a bare name."""
    if not isinstance(address, str) or not address:
        raise ValueError(f"bad address {address!r}")
    if address.startswith("ipc://"):  # as pyzmq writes a Unix socket's path
        path = address[6:]
        if not path:
            raise ValueError(f"bad address {address!r}: ipc://PATH")
        return Address(socket.AF_UNIX, path, address)
    if address.startswith("tcp://"):
        rest = address[6:]
        host, sep, port = rest.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"bad TCP address {address!r}: use tcp://host:port")
        host = host.strip("[]") or "127.0.0.1"
        if host == "*":  # as pyzmq writes every interface (a client reaches this host's)
            host = "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return Address(family, (host, int(port)), address)
    if "/" in address:
        return Address(socket.AF_UNIX, address, address)
    if not _NAME.match(address):
        raise ValueError(f"bad server name {address!r}: letters, digits, '_', '-', '.'")
    return Address(socket.AF_UNIX, os.path.join(runtime_dir(), f"{address}.sock"), address)


class AddressLock:
    """The lock a live server holds on its Unix address for as long as it serves: PATH.lock, flock'ed.

    Whoever holds it owns the address: a socket left at the path is stale (its server died, and the
    kernel let the lock go with it), and every other server that tries to start there gets
    AddressInUse at once, whatever step it was at. Without it, a starter could see a rival's socket
    bound but not yet listening, take it for stale and remove it: two servers, one unreachable.
    The lock file is removed by its holder while it still holds it; a taker checks after locking
    that the file it locked is still the one at the path (else it locked a removed file: again)."""

    def __init__(self, path: str) -> None:
        self.path = f"{path}.lock"
        self.fd = -1
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                st = os.fstat(fd)
                if st.st_uid != os.geteuid():
                    raise BrokerError(f"{self.path} belongs to uid {st.st_uid}, not to us: another user's server "
                                      f"has this address")
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise AddressInUse(f"another server is live at {path} (it holds {self.path})") from None
                try:
                    now = os.lstat(self.path)
                except FileNotFoundError:
                    now = None
            except BaseException:
                os.close(fd)
                raise
            if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                self.fd = fd
                return
            os.close(fd)  # its holder removed it as we locked it: take the new one
        raise AddressInUse(f"could not take {self.path}: it keeps being replaced")

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            os.unlink(self.path)  # while still held: a taker that locks the removed file tries again
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = -1


def bind_error(e: OSError, where: str) -> Exception:
    """What a failed bind means: another server at the address (AddressInUse), a host name that does
    not resolve (ValueError, saying which), or the OSError as it is."""
    if e.errno == errno.EADDRINUSE:
        return AddressInUse(f"another server is live at {where}")
    if isinstance(e, socket.gaierror):
        return ValueError(f"cannot listen at {where}: the host does not resolve ({e.strerror})")
    return e
