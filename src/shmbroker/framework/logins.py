"""Login sessions as the broker sees them (the guidelines' WTSQuerySessionInformation, and their
logon and logoff notifications): the first connection from a login session is its logon, the last
one gone its logoff. What is known of one comes from the kernel (the peer's uid and audit session id,
its controlling terminal) and, where systemd-logind runs, from /run/systemd/sessions/ID (seat, tty,
display); never from the client's word."""
from __future__ import annotations

import pwd
import threading
from typing import Any

from shmbroker.framework.namespace import owner_of

_UNSET = 0xFFFFFFFF


def _tty(pid: int | None) -> str | None:
    """The process's controlling terminal (field 7 of /proc/PID/stat), by its usual name."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            nr = int(f.read().rsplit(b")", 1)[1].split()[4])
    except (OSError, ValueError, IndexError):
        return None
    if nr == 0:
        return None
    major, minor = (nr >> 8) & 0xFFF, (nr & 0xFF) | ((nr >> 12) & 0xFFF00)
    if 136 <= major <= 143:
        return f"pts/{(major - 136) * 256 + minor}"
    if major == 4:
        return f"tty{minor}" if minor < 64 else f"ttyS{minor - 64}"
    return f"{major}:{minor}"


def _logind(sid: int | None) -> dict[str, str]:
    """systemd-logind's record of the session, where there is one."""
    if sid is None or sid == _UNSET:
        return {}
    out: dict[str, str] = {}
    try:
        with open(f"/run/systemd/sessions/{int(sid)}") as f:
            for line in f:
                k, sep, v = line.rstrip("\n").partition("=")
                if sep and k in ("SEAT", "TTY", "DISPLAY", "REMOTE_HOST", "SERVICE", "TYPE", "CLASS"):
                    out[k.lower()] = v
    except OSError:
        pass
    return out


def login_facts(peer: Any) -> dict[str, Any]:
    """What the kernel says of a peer's login session: its key (its Local namespace), the user,
    the audit session id, the terminal and, from logind, the seat."""
    key = owner_of(peer)
    facts: dict[str, Any] = {"login_session": key, "transport": peer.transport, "uid": peer.uid, "user": None,
                             "session_id": None, "tty": None, "seat": None}
    if peer.transport != "unix":
        facts["identity"] = peer.identity
        return facts
    if peer.uid is not None:
        try:
            facts["user"] = pwd.getpwuid(peer.uid).pw_name
        except KeyError:
            pass
    sid = getattr(peer.facts, "sessionid", None)
    facts["session_id"] = None if sid is None or sid == _UNSET else sid
    logind = _logind(sid)
    facts["tty"] = logind.get("tty") or _tty(peer.pid)
    facts["seat"] = logind.get("seat") or None
    for k in ("display", "remote_host", "service", "type", "class"):
        if logind.get(k):
            facts[k] = logind[k]
    return facts


class Logins:
    """The login sessions that have connections now: logon at the first, logoff when the last goes."""

    def __init__(self) -> None:
        self._live: dict[str, dict[str, Any]] = {}  # key -> facts and "connections" (ids)
        self._lock = threading.Lock()

    def connected(self, peer: Any) -> dict[str, Any] | None:
        """A connection began: its login session's facts if that is a logon (its first), else None."""
        key = owner_of(peer)
        with self._lock:
            return self._connected(key, peer)

    def _connected(self, key: str, peer: Any) -> dict[str, Any] | None:
        entry = self._live.get(key)
        if entry is None:
            entry = self._live[key] = login_facts(peer)
            entry["connections"] = {peer.connection_id}
            return dict(entry, connections=[peer.connection_id])
        entry["connections"].add(peer.connection_id)
        return None

    def disconnected(self, peer: Any) -> dict[str, Any] | None:
        """A connection ended: its login session's facts if that is a logoff (its last), else None."""
        key = owner_of(peer)
        with self._lock:
            return self._disconnected(key, peer)

    def _disconnected(self, key: str, peer: Any) -> dict[str, Any] | None:
        entry = self._live.get(key)
        if entry is None or peer.connection_id not in entry["connections"]:
            return None
        entry["connections"].discard(peer.connection_id)
        if entry["connections"]:
            return None
        del self._live[key]
        return dict(entry, connections=[])

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e, connections=sorted(e["connections"])) for _, e in sorted(self._live.items())]
