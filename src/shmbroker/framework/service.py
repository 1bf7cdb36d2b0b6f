"""The interface of a built-in service: what the server needs to know of topics, links, or the next one.

A Server is made with a tuple of service classes (`Server(services=...)`; broker.Server passes the
built-in ones, src/shmbroker/services/__init__.py). For each, the server makes one instance,
`cls(server)`, and from then on:

- dispatches every request whose code is in `cls.codes` (reserved codes, src/shmbroker/protocol/codes.py) to
  `handle(conn, msg)`, on the loop thread, after the server's policies passed it;
- puts `stats()` under `stats_key` in Server.stats() (and so in `shmbroker stat`), and has `metrics()`
  turn that part into Prometheus families;
- in a threaded server's loop: calls `poll()` while it spins (work found without a system call:
  True), and `arm()` before it sleeps (False: work came meanwhile, do not sleep), `disarm()` after;
- calls `close()` once when the server stops.

A service reaches the server through its public face: `server.access` (grants), `server.server_id`,
`server.call_later`, `server.is_async` and the connection it is handed (`conn.peer`, `conn.session`,
`conn.session_key`, `conn.on_rings`, `conn.pass_fd`).
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar


class Service:
    """Subclass it: set `codes` and `stats_key`, implement `handle`; the rest is optional."""

    codes: ClassVar[frozenset[int]] = frozenset()
    stats_key: ClassVar[str] = ""

    def __init__(self, server: Any) -> None:
        self.server = server

    def handle(self, conn: Any, msg: Any) -> None:
        """A request with one of `codes`; complete `msg` exactly once (now or later)."""
        raise NotImplementedError

    def stats(self) -> Any:
        """JSON-able figures, under `stats_key` in Server.stats()."""
        return None

    @staticmethod
    def metrics(stats: Any, family: Callable[[str, str, str], Any]) -> None:
        """Its part of the Prometheus endpoint (framework/metrics.py): from `stats` (what stats() gave),
        `family(name, kind, help).add(value, **labels)` for each figure."""

    def poll(self) -> bool:
        """The loop spins: any work found without a system call? (keep it cheap when idle)"""
        return False

    def arm(self) -> bool:
        """The loop is about to sleep: arrange to be woken (a doorbell); False if work came meanwhile."""
        return True

    def disarm(self) -> None:
        """The loop woke up."""

    def close(self) -> None:
        """The server stops."""


def dispatch_table(services: list[Service]) -> dict[int, Service]:
    """Each reserved code to its service; ValueError if two services claim one code."""
    table: dict[int, Service] = {}
    for s in services:
        for code in type(s).codes:
            if code in table:
                raise ValueError(f"function code {code} is claimed by {type(table[code]).__name__} and "
                                 f"{type(s).__name__}")
            if code >= 0:
                raise ValueError(f"{type(s).__name__} claims function code {code}: a built-in service's codes are "
                                 f"below zero (src/shmbroker/protocol/codes.py)")
            table[code] = s
    return table
