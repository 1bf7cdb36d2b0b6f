"""Echo and key-value tables at the client: EchoClient, KeyValueClient, Table, and the errors they raise."""
from __future__ import annotations

from typing import Any

from shmbroker.framework.client import Buffer, ClientSession, SubSession
from shmbroker._errors import BadHandle, ServiceError
from shmbroker.protocol.frames import Status

from shmbroker.services.kv.wire import COUNT, DELETE, ECHO, GET, KEYS, LENGTH, OPEN_TABLE, PUT, VALUE_CEILING, KEY_LEN

# ---- errors the client wrappers raise -------------------------------------------------


class InvalidArgument(ServiceError, ValueError):
    """ARGUMENT: an argument of the wrong kind, an empty or too long key or name, a value too big."""


class NotFound(ServiceError, KeyError):
    """NOT_FOUND: GET of a key the table does not hold."""

    def __str__(self) -> str:  # KeyError's would quote the message
        return ServiceError.__str__(self)


class LimitReached(ServiceError):
    """NO_MEMORY: the table has its maximum of entries or bytes, or the store its maximum of tables."""


class BufferTooSmall(ServiceError, OverflowError):
    """OVERFLOW: the writable argument cannot hold the answer."""


_TYPED: dict[int, type[ServiceError]] = {
    Status.ARGUMENT: InvalidArgument,
    Status.NOT_FOUND: NotFound,
    Status.NO_MEMORY: LimitReached,
    Status.OVERFLOW: BufferTooSmall,
}


def _call(session: ClientSession, code: int, *args: Any, handle: int = 0, timeout: float | None = None) -> int:
    """send_receive, with the services' statuses raised as their typed errors."""
    try:
        return session.send_receive(code, *args, timeout=timeout, handle=handle)
    except ServiceError as e:
        typed = _TYPED.get(e.status)
        if typed is None or type(e) is not ServiceError:
            raise
        raise typed(e.status, e.text) from None


# ---- client side -----------------------------------------------------------------------------


def _b(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


class EchoClient:
    """The echo service through a session: `EchoClient(broker.connect(address)).echo(b"hi")`."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session

    def echo(self, data: bytes, timeout: float | None = None) -> bytes:
        """What the server sent back of `data`."""
        out = Buffer(len(data))
        _call(self.session, ECHO, data, out, timeout=timeout)
        return out.value

    def length(self, data: bytes, timeout: float | None = None) -> int:
        """len(data), as the server counted it."""
        return _call(self.session, LENGTH, data, timeout=timeout)


class Table(SubSession):
    """A table opened through KeyValueClient.open(): a sub-session; close() (or `with`) lets it go."""

    def __init__(self, session: ClientSession, handle: int, name: str) -> None:
        super().__init__(session, handle)
        self.name = name

    def __enter__(self) -> "Table":
        return self

    def __repr__(self) -> str:
        return f"Table({self.name!r}, handle={self.handle:#x})"

    def _call(self, code: int, *args: Any, timeout: float | None = None) -> int:
        if not self.handle:
            raise BadHandle(f"table {self.name!r} is closed")
        return _call(self.session, code, *args, handle=self.handle, timeout=timeout)

    def put(self, key: bytes | str, value: bytes | str, timeout: float | None = None) -> bool:
        """Store `value` under `key`: True if the key is new, False if its value was replaced."""
        return bool(self._call(PUT, _b(key), _b(value), timeout=timeout))

    def get(self, key: bytes | str, max_length: int = VALUE_CEILING, timeout: float | None = None) -> bytes:
        """The value of `key`; NotFound (a KeyError) if there is none, BufferTooSmall past max_length."""
        out = Buffer(max_length)
        self._call(GET, _b(key), out, timeout=timeout)
        return out.value

    def delete(self, key: bytes | str, timeout: float | None = None) -> bool:
        """Remove `key`: True if it was there."""
        return bool(self._call(DELETE, _b(key), timeout=timeout))

    def count(self, timeout: float | None = None) -> int:
        """The number of entries."""
        return self._call(COUNT, timeout=timeout)

    def __len__(self) -> int:
        return self.count()

    def keys(self, page: int = 64 * 1024, timeout: float | None = None) -> list[bytes]:
        """Every key in byte order, fetched `page` bytes at a time."""
        keys: list[bytes] = []
        after: bytes | None = None
        while True:
            out = Buffer(page)
            n = self._call(KEYS, out, after, timeout=timeout)
            if not n:
                return keys
            data, at = out.value, 0
            for _ in range(n):
                (size,) = KEY_LEN.unpack_from(data, at)
                keys.append(data[at + 2 : at + 2 + size])
                at += 2 + size
            after = keys[-1]


class KeyValueClient:
    """The key-value service through a session: `KeyValueClient(session).open("orders")` is a Table."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session

    def open(self, name: str, timeout: float | None = None) -> Table:
        """Open the table `name` (created empty if no session has it open); close it when done."""
        handle = _call(self.session, OPEN_TABLE, _b(name), timeout=timeout)
        if handle <= 0:
            raise BadHandle(f"OPEN_TABLE completed with {handle}, not a sub-session handle")
        return Table(self.session, handle, name)
