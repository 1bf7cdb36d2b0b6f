"""Every shared-memory name broker uses is built here, and only here."""
from __future__ import annotations

import os
import re
import secrets

_PART = re.compile(r"^[A-Za-z0-9_-]{1,48}$")
_PREFIX = re.compile(r"^[a-z][a-z0-9-]{0,23}$")


def _prefix() -> str:
    """The product prefix: BROKER_SHM_PREFIX from the environment, else "brk".

    Another prefix is another world of names: a server sweeps, `broker clean`
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


def user_name(name: str) -> str:
    """The segment name for a ring a user names: per effective uid, so two users' rings of the same name never meet."""
    return f"/{PREFIX}.u{os.geteuid()}.{_part(name, 'ring name')}"


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
