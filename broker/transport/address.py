"""Server addresses: a Unix socket path, a bare name in the user's runtime directory, or tcp://host:port."""
from __future__ import annotations

import os
import re
import socket
import stat
from dataclasses import dataclass

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
    private (0700, ours) directory under /tmp."""
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


def parse(address: str) -> Address:
    """Address from text: 'tcp://host:port', a path (contains '/'), or a bare name."""
    if not isinstance(address, str) or not address:
        raise ValueError(f"bad address {address!r}")
    if address.startswith("tcp://"):
        rest = address[6:]
        host, sep, port = rest.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"bad TCP address {address!r}: use tcp://host:port")
        host = host.strip("[]") or "127.0.0.1"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return Address(family, (host, int(port)), address)
    if "/" in address:
        return Address(socket.AF_UNIX, address, address)
    if not _NAME.match(address):
        raise ValueError(f"bad server name {address!r}: letters, digits, '_', '-', '.'")
    return Address(socket.AF_UNIX, os.path.join(runtime_dir(), f"{address}.sock"), address)
