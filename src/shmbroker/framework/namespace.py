"""The two namespaces of the names users choose (topics, linked services, containers' objects).

As in the Remote Desktop Services guidelines: `Local\\name` lives in its creator's login session,
and only that session sees it; `Global\\name` is everyone's (subject to the server's grants). An
unqualified name is Local: two users, or two login sessions of one user, who run the same program
on one broker never collide. A Unix peer's login session is what the kernel says (its uid and audit
session id, the session rule's facts); a TCP peer, which has none, has a namespace of its own per
identity (its key's name; plain TCP: one for all of them). Only Global names ever leave the host.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LOCAL = "Local\\"
GLOBAL = "Global\\"
_UNSET = 0xFFFFFFFF


@dataclass(frozen=True)
class Name:
    """A name as the server keeps it."""

    key: str  # unique server-wide: "G\\name", or "L\\owner\\name"
    name: str  # without its namespace
    namespace: str  # "Local" or "Global"
    owner: str | None  # Local: whose login session ("uid 0, session 3"); Global: None

    @property
    def shown(self) -> str:
        """As the sessions that see it name it: `name` (Local), `Global\\name`."""
        return self.name if self.owner is not None else GLOBAL + self.name

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "namespace": self.namespace, "owner": self.owner}


def owner_of(peer: Any) -> str:
    """The Local namespace a peer's names go into: its login session (Unix), its identity (TCP)."""
    if peer.transport == "unix":
        facts = peer.facts
        sid = getattr(facts, "sessionid", None)
        session = "none" if sid is None else "unset" if sid == _UNSET else str(sid)  # none: not inspected
        return f"uid {peer.uid}, session {session}"
    return f"tcp {peer.identity or 'plain'}"


def qualify(text: str, peer: Any) -> Name:
    """The Name `text` stands for, given by `peer`: Global\\x, Local\\x or x (Local)."""
    if text.startswith(GLOBAL):
        bare = text[len(GLOBAL):]
        if not bare:
            raise ValueError("a Global\\ name needs a name after the prefix")
        return Name("G\\" + bare, bare, "Global", None)
    bare = text[len(LOCAL):] if text.startswith(LOCAL) else text
    if not bare:
        raise ValueError("a Local\\ name needs a name after the prefix")
    owner = owner_of(peer)
    return Name(f"L\\{owner}\\{bare}", bare, "Local", owner)
