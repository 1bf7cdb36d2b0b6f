"""Who may use the broker's own services: topics, key-value tables, linked services.

The server's own user (a Unix peer with the server's uid) may do everything.
Anyone else, another local user or a TCP identity, may do only what a grant
gives. A grant is one line:

    WHO  WHAT  [ACTIONS]

    WHO      uid:N, user:NAME, gid:N, group:NAME (the peer's primary group), key:NAME
             (a TCP peer that proved that key), broker:NAME (another host's broker in
             the federation, src/shmbroker/federation: only this names one), local (any Unix
             peer), tcp (any TCP peer), * (anyone on this host or over TCP)
    WHAT     topic:NAME, table:NAME, service:NAME (a linked service), or * (all of
             them); a NAME that ends in "*" is a prefix ("prices.*"; "*" alone: all)
    ACTIONS  a comma-separated list; topic: publish, subscribe; table: read, write;
             service: offer, call; "all" (the default): every action of the kind

    key:alice topic:prices.* subscribe
    uid:1001  table:orders   read,write
    group:ops *

Grants come from Server(grants=[...]) (lines or Grant), `shmbroker serve --grant
LINE` and `--grants FILE` (a line each, "#" starts a comment; the file must
not be writable by anyone but its owner, who must be the server's user or root).
A request a grant does not cover completes with PERMISSION_DENIED and a reason
that names the missing grant; it ends only that request.
"""
from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from shmbroker._errors import PermissionDenied

if TYPE_CHECKING:
    from shmbroker.framework.session import Peer

# What a grant may name, and the actions of each: every service that checks grants registers its own
# kind when it is imported (register_kind): topics "topic", links "service", the key-value tables "table".
ACTIONS: dict[str, frozenset[str]] = {}


def register_kind(kind: str, actions: Iterable[str]) -> None:
    """A kind of name grants may cover (WHAT = kind:NAME) and its actions; a service's, once."""
    actions = frozenset(actions)
    if not kind.isidentifier() or not actions or "all" in actions:
        raise ValueError(f"a grant kind is a word with actions other than 'all': {kind!r} {sorted(actions)}")
    if ACTIONS.get(kind, actions) != actions:
        raise ValueError(f"grant kind {kind!r} is registered already, with {sorted(ACTIONS[kind])}")
    ACTIONS[kind] = actions


class GrantError(ValueError):
    """A grant that does not parse, or a grants file that cannot be trusted."""


@dataclass(frozen=True)
class Grant:
    """WHO may do ACTIONS on the names of a kind that PATTERN matches (see the module's text)."""

    who: str  # "uid:N", "gid:N", "key:NAME", "local", "tcp" or "*" (user: and group: are resolved)
    kind: str  # "topic", "table", "service" or "*"
    pattern: str  # a name, or a prefix ending in "*"
    actions: frozenset[str]

    def __str__(self) -> str:
        what = "*" if self.kind == "*" and self.pattern == "*" else f"{self.kind}:{self.pattern}"
        every = set().union(*(ACTIONS[k] for k in (ACTIONS if self.kind == "*" else (self.kind,))))
        return f"{self.who} {what} {'all' if self.actions >= every else ','.join(sorted(self.actions))}"

    def covers(self, peer: Peer) -> bool:
        who = self.who
        if peer.transport == "federation":  # another host's broker: only a grant that names it
            return who == peer.identity
        if who == "*":
            return True
        if who == "local":
            return peer.transport == "unix"
        if who == "tcp":
            return peer.transport == "tcp"
        kind, _, value = who.partition(":")
        if kind == "key":
            return peer.identity == who
        if peer.transport != "unix":
            return False
        return (kind == "uid" and peer.uid == int(value)) or (kind == "gid" and peer.gid == int(value))

    def matches(self, kind: str, name: str) -> bool:
        return (self.kind == "*" or self.kind == kind) and _match(self.pattern, name)

    def overlaps(self, kind: str, prefix: str) -> bool:
        """Could a name that starts with `prefix` match? (for a prefix subscriber)"""
        if not (self.kind == "*" or self.kind == kind):
            return False
        if self.pattern.endswith("*"):
            mine = self.pattern[:-1]
            return mine.startswith(prefix) or prefix.startswith(mine)
        return self.pattern.startswith(prefix)


def _match(pattern: str, name: str) -> bool:
    return name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern


def _who(text: str) -> str:
    if text in ("*", "local", "tcp"):
        return text
    kind, sep, value = text.partition(":")
    if not sep or not value:
        raise GrantError(f"who {text!r}: use uid:N, user:NAME, gid:N, group:NAME, key:NAME, broker:NAME, local, tcp or *")
    if kind in ("uid", "gid"):
        if not value.isdigit():
            raise GrantError(f"who {text!r}: {kind} is a number")
        return f"{kind}:{int(value)}"
    if kind == "user":
        try:
            return f"uid:{pwd.getpwnam(value).pw_uid}"
        except KeyError:
            raise GrantError(f"who {text!r}: no such user") from None
    if kind == "group":
        try:
            return f"gid:{grp.getgrnam(value).gr_gid}"
        except KeyError:
            raise GrantError(f"who {text!r}: no such group") from None
    if kind == "key":
        return text
    if kind == "broker":
        if len(value) > 64 or not all(c.isalnum() or c in "-_" for c in value):
            raise GrantError(f"who {text!r}: a broker's name is letters, digits, '-' and '_'")
        return text
    raise GrantError(f"who {text!r}: use uid:N, user:NAME, gid:N, group:NAME, key:NAME, broker:NAME, local, tcp or *")


def parse_grant(line: str) -> Grant:
    """A grant from its line; GrantError with the reason otherwise."""
    parts = line.split()
    if not 2 <= len(parts) <= 3:
        raise GrantError(f"grant {line!r}: expected WHO WHAT [ACTIONS], as in 'key:alice topic:prices.* subscribe'")
    who = _who(parts[0])
    if parts[1] == "*":
        kind, pattern = "*", "*"
    else:
        kind, sep, pattern = parts[1].partition(":")
        if not sep or kind not in ACTIONS or not pattern:
            raise GrantError(f"grant {line!r}: WHAT is {', '.join(f'{k}:NAME' for k in sorted(ACTIONS))} or *")
        if "*" in pattern[:-1]:
            raise GrantError(f"grant {line!r}: '*' only at the end of a name (a prefix)")
    every = frozenset().union(*(ACTIONS[k] for k in (ACTIONS if kind == "*" else (kind,))))
    words = frozenset(parts[2].split(",")) if len(parts) == 3 else frozenset({"all"})
    if "all" in words:
        words = (words - {"all"}) | every
    if not words or not words <= every:
        raise GrantError(f"grant {line!r}: actions for {'any kind' if kind == '*' else kind} are "
                         f"{', '.join(sorted(every))} or all")
    return Grant(who, kind, pattern, words)


def load_grants(path: str) -> list[Grant]:
    """The grants of a file, a line each; it must belong to this user or root and be writable by nobody else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise GrantError(f"cannot open the grants file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise GrantError(f"{path} is not a regular file")
        if st.st_uid not in (0, os.geteuid()):
            raise GrantError(f"{path} belongs to uid {st.st_uid}: a grants file must be this user's or root's")
        if st.st_mode & 0o022:
            raise GrantError(f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}): chmod go-w {path}")
        with os.fdopen(os.dup(fd), "r", encoding="utf-8") as f:
            text = f.read(1 << 20)
    finally:
        os.close(fd)
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line:
            try:
                out.append(parse_grant(line))
            except GrantError as e:
                raise GrantError(f"{path}, line {number}: {e}") from None
    return out


class Access:
    """The grants of one server, and the checks the services make with them."""

    def __init__(self, grants: Iterable[Grant | str] = (), owner_uid: int | None = None) -> None:
        if isinstance(grants, (str, Grant)):
            grants = [grants]
        self.grants = tuple(g if isinstance(g, Grant) else parse_grant(g) for g in grants)
        self.owner_uid = os.geteuid() if owner_uid is None else owner_uid

    def owner(self, peer: Peer) -> bool:
        return peer.transport == "unix" and peer.uid == self.owner_uid

    def allows(self, peer: Peer, kind: str, name: str, action: str) -> bool:
        if peer.transport == "unix" and peer.uid == self.owner_uid:
            return True
        return any(action in g.actions and g.matches(kind, name) and g.covers(peer) for g in self.grants)

    def allows_some(self, peer: Peer, kind: str, prefix: str, action: str) -> bool:
        """May the peer `action` some name that starts with `prefix`?"""
        if self.owner(peer):
            return True
        return any(action in g.actions and g.overlaps(kind, prefix) and g.covers(peer) for g in self.grants)

    def check(self, peer: Peer, kind: str, name: str, action: str) -> None:
        """PermissionDenied (the request completes with PERMISSION_DENIED), with the grant it lacks."""
        if not self.allows(peer, kind, name, action):
            raise PermissionDenied(self.denied(peer, kind, name, action))

    def denied(self, peer: Peer, kind: str, name: str, *actions: str) -> str:
        """The reason a refused request gets: who, what it may not do, and the grant that would let it."""
        who = peer.identity or (f"uid {peer.uid}" if peer.uid is not None else "a plain TCP peer")
        grantee = peer.identity or (f"uid:{peer.uid}" if peer.uid is not None else "tcp")
        return (f"{who} may not {' or '.join(actions)} {kind} {name!r}: only the server's user (uid "
                f"{self.owner_uid}) and what a grant gives (shmbroker serve --grant '{grantee} {kind}:{name} "
                f"{actions[0]}')")
