"""Every shared-memory name broker uses is built here, and only here."""
from __future__ import annotations

import os
import re
import secrets

_PART = re.compile(r"^[A-Za-z0-9_-]{1,48}$")
_PREFIX = re.compile(r"^[a-z][a-z0-9-]{0,23}$")


def _prefix() -> str:
    """The product prefix: BROKER_SHM_PREFIX from the environment, else "brk".

    Another prefix is another world of names: a server sweeps, `shmbroker clean`
    removes and the test suite's leak check counts only its own prefix's
    segments, so two test runs (or two deployments) on one machine never touch
    each other's. Processes that share a ring by its short name need the same
    prefix (the full names a server hands out are opened as they are). Read
    once, at import."""
    value = os.environ.get("BROKER_SHM_PREFIX") or "brk"  # unset or empty: the default
    if not _PREFIX.match(value):
        raise ValueError(f"BROKER_SHM_PREFIX={value!r}: use a lower-case letter, then up to 23 lower-case letters, "
                         f"digits or '-'")
    return value


PREFIX = _prefix()
# NAME_MAX is 255 for /dev/shm entries; stay well under it.
_MAX_LEN = 200


def _part(value: str, what: str) -> str:
    if not isinstance(value, str) or not _PART.match(value):
        raise ValueError(f"{what} {value!r}: use 1 to 48 letters, digits, '_' or '-'")
    return value


def segment_name(purpose: str, server_id: str | None = None, session_key: str | None = None) -> str:
    """A fresh name: product prefix, server id, session key, purpose, random part.

    Without a server (a standalone ring) the server id is this process ("p" and
    its pid) and the session key is "local".
    """
    sid = _part(server_id if server_id is not None else f"p{os.getpid()}", "server id")
    key = _part(session_key if session_key is not None else "local", "session key")
    return f"/{PREFIX}.{sid}.{key}.{_part(purpose, 'purpose')}.{secrets.token_hex(8)}"


LOCAL, GLOBAL = "Local\\", "Global\\"  # the two namespaces of the names users choose (DESIGN.md, section 3)


def session_key(sessionid: int | None) -> str:
    """The login session's part of a name: "s" and the audit session id; "sx" where it is unset or the
    kernel has none (unset matches only unset, as in the session rule)."""
    return "sx" if sessionid is None or sessionid == AUDIT_SID_UNSET else f"s{sessionid}"


AUDIT_SID_UNSET = 0xFFFFFFFF


def ring_part(name: str) -> str:
    """A ring's name as the user gave it, checked: `Local\\name` is `name` (a ring is shared memory, so it
    lives in its creator's login session); a `Global\\` ring cannot be."""
    if not isinstance(name, str):
        raise TypeError(f"a ring's name is a str, not {type(name).__name__}")
    if name.startswith(GLOBAL):
        raise ValueError(f"{name!r}: a ring is shared memory, which never leaves its creator's login session: "
                         f"a Global\\ name is for the broker's topics and services, which cross sessions")
    if name.startswith(LOCAL):
        name = name[len(LOCAL):]
    return _part(name, "ring name")


def user_name(name: str, sessionid: int | None = None) -> str:
    """The segment name for a ring a user names: per effective uid and per login session (this
    process's, or `sessionid`'s), so neither another user nor another login session of the same user
    ever meets it."""
    from shmbroker.core import proc as _proc

    sid = _proc.login_session() if sessionid is None else sessionid
    return f"/{PREFIX}.u{os.geteuid()}.{session_key(sid)}.{ring_part(name)}"


def user_ring_elsewhere(name: str) -> list[tuple[str, str]]:
    """This user's rings of this name in other login sessions: (segment name, session key)."""
    part = ring_part(name)
    head = f"{PREFIX}.u{os.geteuid()}."
    found = []
    try:
        entries = os.listdir("/dev/shm")
    except FileNotFoundError:
        return []
    for e in entries:
        if e.startswith(head) and e.endswith(f".{part}"):
            key = e[len(head):-len(part) - 1]
            if re.fullmatch(r"s(x|[0-9]{1,10})", key):
                found.append(("/" + e, key))
    return sorted(found)


def user_ring_session(segment: str) -> str | None:
    """The session key of a user ring's segment name (None: not a user ring's name)."""
    m = re.fullmatch(rf"/{re.escape(PREFIX)}\.u[0-9]+\.(s(?:x|[0-9]{{1,10}}))\.[A-Za-z0-9_-]{{1,48}}", segment)
    return m.group(1) if m else None


def resolve(name: str) -> str:
    """A name as given to open(): a full segment name, or a user's short name."""
    if name.startswith(f"/{PREFIX}."):
        if len(name) > _MAX_LEN or "/" in name[1:] or "\0" in name:
            raise ValueError(f"bad segment name {name!r}")
        return name
    return user_name(name)


def is_ours(entry: str) -> bool:
    """Is a /dev/shm entry (without the leading slash) one of broker's?"""
    return entry.startswith(f"{PREFIX}.")
