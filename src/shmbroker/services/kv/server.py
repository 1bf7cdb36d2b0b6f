"""Echo and key-value tables at the server: the store, its tables, and the Session classes that serve them."""
from __future__ import annotations

import bisect
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable

from shmbroker.framework.access import Access, register_kind
from shmbroker._errors import BadHandle
from shmbroker.protocol.frames import ArgKind, Status
from shmbroker.framework.session import Container, Message, Peer, RefObject, Session
from shmbroker.framework.namespace import GLOBAL, LOCAL, Name, qualify

from shmbroker.services.kv.wire import (COUNT, DELETE, ECHO, GET, KEY_LEN, KEYS, KV_CODES, LENGTH, MAX_TABLE_NAME, OPEN_TABLE,
                                     PUT, VALUE_CEILING)

register_kind("table", ("read", "write"))  # what grants say of the tables (framework/access.py)

# ---- server side: limits, tables, the store ------------------------------------------------


@dataclass(frozen=True)
class KeyValueLimits:
    """What one KeyValueStore accepts from its (untrusted) clients."""

    max_key: int = 1024  # bytes
    max_value: int = 1 << 20  # bytes
    max_entries: int = 10_000  # per table
    max_table_bytes: int = 64 << 20  # keys and values of one table
    max_tables: int = 1024  # open at once in the store

    def __post_init__(self) -> None:
        if not 1 <= self.max_key <= 0xFFFF:
            raise ValueError("max_key must be from 1 to 65535 bytes")
        if not 0 <= self.max_value <= VALUE_CEILING:
            raise ValueError(f"max_value must be from 0 to {VALUE_CEILING} bytes")
        if min(self.max_entries, self.max_table_bytes, self.max_tables) < 1:
            raise ValueError("max_entries, max_table_bytes and max_tables must be positive")


class _Reject(Exception):
    """Inside a service: complete the message with this status and text."""

    def __init__(self, status: Status, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def _show(key: bytes) -> str:
    text = repr(key)
    return text if len(text) <= 60 else text[:57] + "..."


class SharedTable(RefObject):
    """A named table of a KeyValueStore (server side), shared by every sub-session that opened it."""

    def __init__(self, store: "KeyValueStore") -> None:
        super().__init__()
        self.store = store
        self.qname: Name | None = None  # its name in its namespace (framework/namespace.py)
        self.bytes = 0  # keys and values held
        self._entries: dict[bytes, bytes] = {}
        self._sorted: list[bytes] | None = None  # the keys in order, until the next change
        self._lock = threading.Lock()

    @property
    def shown(self) -> str:
        return self.qname.shown if self.qname is not None else self.name or ""

    def close(self) -> None:
        # under the store's lock: a concurrent OPEN_TABLE never finds a table its last holder is destroying
        with self.store._lock:
            super().close()

    def destroyed(self) -> None:
        with self._lock:
            self._entries.clear()
            self._sorted = None
            self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: bytes, value: bytes) -> bool:
        limits = self.store.limits
        with self._lock:
            old = self._entries.get(key)
            if old is None and len(self._entries) >= limits.max_entries:
                raise _Reject(Status.NO_MEMORY, f"table {self.shown!r} is full: it has its maximum of "
                                                f"{limits.max_entries} entries")
            size = self.bytes + len(value) + (len(key) if old is None else -len(old))
            if size > limits.max_table_bytes:
                raise _Reject(Status.NO_MEMORY, f"table {self.shown!r} is full: {size} bytes would exceed "
                                                f"its maximum of {limits.max_table_bytes}")
            self._entries[key] = value
            self.bytes = size
            if old is None:
                self._sorted = None
            return old is None

    def get(self, key: bytes) -> bytes | None:
        with self._lock:
            return self._entries.get(key)

    def delete(self, key: bytes) -> bool:
        with self._lock:
            value = self._entries.pop(key, None)
            if value is None:
                return False
            self.bytes -= len(key) + len(value)
            self._sorted = None
            return True

    def keys_after(self, after: bytes | None) -> list[bytes]:
        """The keys in byte order, those after `after` only if it is given."""
        with self._lock:
            if self._sorted is None:
                self._sorted = sorted(self._entries)
            keys = self._sorted
        return keys if after is None else keys[bisect.bisect_right(keys, after):]


_stores: "weakref.WeakKeyDictionary[Any, KeyValueStore]" = weakref.WeakKeyDictionary()
_stores_lock = threading.Lock()


class KeyValueStore:
    """Server side: the open tables (a broker.Container of SharedTables) and the limits they keep.

    One store usually serves one server: `KeyValueSession.factory(store)`, or
    the store `for_server(server)` makes when the session class is given alone.
    """

    def __init__(self, limits: KeyValueLimits | None = None, name: str = "tables") -> None:
        self.limits = limits or KeyValueLimits()
        self.tables = Container(name)
        self._lock = threading.RLock()

    @classmethod
    def for_server(cls, server: Any) -> "KeyValueStore":
        """The store of `server` (made with default limits at the first call)."""
        with _stores_lock:
            store = _stores.get(server)
            if store is None:
                store = _stores[server] = cls()
            return store

    def open(self, session: Session, name: str) -> int:
        """Open the table `name` (created if nobody has it open) as a sub-session of `session`: its handle.
        `name` is in a namespace (framework/namespace.py): `Global\\x` is everyone's, `x` the session's
        login session's own."""
        if len(session.objects) >= session.objects.limit:  # checked first: a refused open must not count a reference
            raise _Reject(Status.NO_MEMORY, f"a session can have at most {session.objects.limit} sub-sessions open")
        try:
            n = qualify(name, session.peer)
        except ValueError as e:
            raise _Reject(Status.ARGUMENT, str(e)) from None
        with self._lock:
            try:
                table = self.tables.find(n.key)
            except BadHandle:
                if len(self.tables) >= self.limits.max_tables:
                    raise _Reject(Status.NO_MEMORY, f"the store has its maximum of {self.limits.max_tables} "
                                                    "tables open") from None
                table = SharedTable(self)
                table.qname = n
                self.tables.add(n.key, table)
            assert isinstance(table, SharedTable)
            return session.open_subsession(table)

    def table(self, name: str) -> SharedTable:
        """The open table `name` as its sessions name it (`x`, `Global\\x`); BadHandle (a LookupError) if no
        session has it open, or if several login sessions have a Local table of that name."""
        found = [t for t in self._tables() if t.qname is not None and t.qname.shown == name]
        if len(found) != 1:
            raise BadHandle(f"{self.tables.name} has {'no' if not found else len(found)} open tables named {name!r}")
        return found[0]

    def _tables(self) -> list[SharedTable]:
        return [self.tables.find(k) for k in self.tables.names()]  # type: ignore[misc]

    def names(self) -> list[str]:
        """The names of the open tables, as their sessions name them (`x` for a Local one, `Global\\x`)."""
        return sorted(t.qname.shown if t.qname is not None else (t.name or "") for t in self._tables())


# ---- server side: the sessions --------------------------------------------------------------


def _read(m: Message, i: int, what: str, limit: int, *, empty: bool = False) -> bytes:
    kind = m.kind(i)
    if kind != ArgKind.READ and kind != ArgKind.READWRITE:
        raise _Reject(Status.ARGUMENT, f"argument {i} ({what}) must be bytes, not {kind.name}")
    data = m.read(i)
    if not data and not empty:
        raise _Reject(Status.ARGUMENT, f"the {what} is empty")
    if len(data) > limit:
        raise _Reject(Status.ARGUMENT, f"the {what} has {len(data)} bytes, over the limit of {limit}")
    return data


def _room(m: Message, i: int, what: str) -> int:
    """The max length of writable argument i."""
    kind = m.kind(i)
    if kind != ArgKind.WRITE and kind != ArgKind.READWRITE:
        raise _Reject(Status.ARGUMENT, f"argument {i} ({what}) must be writable (a broker.Buffer), not {kind.name}")
    return m.max_length(i)


class EchoSession(Session):
    """LENGTH and ECHO; everything else goes on to the next class (NOT_SUPPORTED at the end)."""

    def service(self, m: Message) -> None:
        code = m.code
        if code != LENGTH and code != ECHO:
            super().service(m)
            return
        try:
            data = _read(m, 0, "payload", VALUE_CEILING, empty=True)
            if code == ECHO:
                room = _room(m, 1, "reply")
                if len(data) > room:
                    raise _Reject(Status.OVERFLOW, f"an echo of {len(data)} bytes does not fit argument 1 "
                                                   f"(max length {room})")
                m.write(1, data)
        except _Reject as r:
            m.complete(r.status, r.text)
            return
        m.complete(len(data))


class KeyValueSession(Session):
    """OPEN_TABLE and the table calls on a KeyValueStore; other codes go on to the next class."""

    def __init__(self, server: Any, peer: Peer, store: KeyValueStore | None = None) -> None:
        super().__init__(server, peer)
        self.store = store if store is not None else KeyValueStore.for_server(server)
        # who may read and write which tables: the server's grants (src/shmbroker/framework/access.py)
        self.access: Access = getattr(server, "access", None) or Access()
        self._all = self.access.owner(peer)  # the server's own user: every table, no lookups

    @classmethod
    def factory(cls, store: KeyValueStore) -> Callable[[Any, Peer], "KeyValueSession"]:
        """A session factory for broker.Server whose sessions share `store`."""
        def make(server: Any, peer: Peer) -> "KeyValueSession":
            return cls(server, peer, store)
        return make

    def service(self, m: Message) -> None:
        if m.code not in KV_CODES:
            super().service(m)
            return
        try:
            m.complete(self._kv(m))
        except _Reject as r:
            m.complete(r.status, r.text)

    def _table(self, m: Message, action: str) -> SharedTable:
        try:
            obj = self.subsession(m)
        except BadHandle as e:
            raise _Reject(Status.BAD_HANDLE, str(e)) from None
        if not isinstance(obj, SharedTable) or obj.store is not self.store:
            raise _Reject(Status.BAD_HANDLE, f"handle {m.handle:#010x} is not a table of this session")
        self._may(obj.qname.name if obj.qname is not None else obj.name or "", action)
        return obj

    def _may(self, name: str, *actions: str) -> None:
        """PERMISSION_DENIED unless a grant gives this peer one of `actions` on table `name`."""
        if self._all or any(self.access.allows(self.peer, "table", name, a) for a in actions):
            return
        raise _Reject(Status.PERMISSION_DENIED, self.access.denied(self.peer, "table", name, *actions))

    def _kv(self, m: Message) -> int:
        limits, code = self.store.limits, m.code
        if code == OPEN_TABLE:
            raw = _read(m, 0, "table name", MAX_TABLE_NAME)
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise _Reject(Status.ARGUMENT, f"the table name {_show(raw)} is not UTF-8") from None
            if not name.isprintable():
                raise _Reject(Status.ARGUMENT, f"the table name {name!r} has unprintable characters")
            self._may(name[len(GLOBAL):] if name.startswith(GLOBAL) else name[len(LOCAL):] if name.startswith(LOCAL)
                      else name, "read", "write")  # grants name tables without their namespace
            return self.store.open(self, name)
        if code == COUNT:
            return len(self._table(m, "read"))
        if code == KEYS:
            table = self._table(m, "read")
            room = _room(m, 0, "keys")
            after = None if m.kind(1) == ArgKind.NONE else _read(m, 1, "key to start after", limits.max_key, empty=True)
            return self._keys(m, table.keys_after(after), room)
        if code not in (PUT, GET, DELETE):
            raise _Reject(Status.NOT_SUPPORTED, f"function {code} is not supported")
        table = self._table(m, "read" if code == GET else "write")
        key = _read(m, 0, "key", limits.max_key)
        if code == PUT:
            return int(table.put(key, _read(m, 1, "value", limits.max_value, empty=True)))
        if code == DELETE:
            return int(table.delete(key))
        room = _room(m, 1, "value")
        value = table.get(key)
        if value is None:
            raise _Reject(Status.NOT_FOUND, f"table {table.shown!r} has no key {_show(key)}")
        if len(value) > room:
            raise _Reject(Status.OVERFLOW, f"the value of {_show(key)} has {len(value)} bytes: argument 1 "
                                           f"holds {room}")
        m.write(1, value)
        return len(value)

    @staticmethod
    def _keys(m: Message, keys: list[bytes], room: int) -> int:
        out: list[bytes] = []
        used = 0
        for key in keys:
            size = KEY_LEN.size + len(key)
            if used + size > room:
                break
            out += (KEY_LEN.pack(len(key)), key)
            used += size
        if keys and not out:
            raise _Reject(Status.OVERFLOW, f"the next key needs {KEY_LEN.size + len(keys[0])} bytes: "
                                           f"argument 0 holds {room}")
        m.write(0, b"".join(out))
        return len(out) // 2


class ServicesSession(KeyValueSession, EchoSession):
    """Both services in one session: what `shmbroker serve` runs."""
