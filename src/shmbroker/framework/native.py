"""The framework's C types (a connection's books, a Message's fields, a batch) and its declared fields.

csrc/py/server.c keeps, on every message of a shared-memory session, the
books that src/shmbroker/framework/server.py's _Conn and broker.Message read in
Python: _Conn subclasses ConnBase and Message subclasses MessageBase, so the
fields both sides use are declared once, as those types' members. What else
C reads (the protocol's state and outstanding requests, declared as the
slotted fields themselves) and the Python methods it falls back on are handed
over by declare(), once, at import: a renamed field fails there, never on a
message.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Literal

from shmbroker.core.native import CLIENT, SERVER

if TYPE_CHECKING:  # the C types as mypy sees them: their members (csrc/py/server.c) and methods
    from shmbroker.protocol.frames import Arg

    class ConnBase:
        """A connection's books (src/shmbroker/framework/server.py's _Conn)."""

        lock: Any
        proto: Any
        messages: dict[int, Any]
        ring_batch: Any
        ring_put: Any
        ring_pending: Any
        ended: bool
        completions: int
        async_outstanding: int
        bytes_out: int

    class MessageBase:
        """broker.Message's fields, and the methods C takes the common case of."""

        __slots__ = ("_conn", "request_id", "code", "handle", "asynchronous", "_args", "_writes", "_done", "_cancel")
        _conn: Any
        request_id: int
        code: int
        handle: int
        asynchronous: bool
        _args: tuple[Arg, ...]
        _writes: dict[int, bytes | bytearray] | None  # argument -> its new content
        _done: bool
        _cancel: list[Callable[[Any], Any]] | Literal[True] | None  # on_cancel's callbacks; True once cancelled

        def read(self, i: int, offset: int = 0, size: int | None = None) -> bytes: ...
        def write(self, i: int, data: bytes | bytearray | memoryview, offset: int = 0) -> None: ...
        def complete(self, status: int = 0, error: str | None = None) -> None: ...
else:
    ConnBase = SERVER["conn_base"]()  # a connection's books: lock, proto, messages, ring_*, ended, counts
    MessageBase = SERVER["message_base"]()  # broker.Message's fields; read(), write(), complete() in C
ring_batch: Callable[[], Any] = SERVER["ring_batch"]  # a connection's RingBatch: append, take, len
serve_messages: Callable[..., None] = SERVER["serve_messages"]  # the server's turn over C's Messages


def declare(message: type, proto: type, open_state: Any) -> None:
    """Hand C what it reads besides its own types: Message (the class take_requests makes) and its
    Python ways (_read, _write, _complete, _send_completion), the protocol's state and outstanding
    fields (ServerConnection's slots) and the state they must be in (State.OPEN)."""
    SERVER["server_setup"](message, (message._read, message._write, message._complete,  # type: ignore[attr-defined]
                                     message._send_completion), proto.state, proto.outstanding,  # type: ignore[attr-defined]
                           open_state)


def declare_buffer(buffer: type) -> None:
    """Hand C broker.Buffer's fields (its slots max_length and value): a client's call in C
    (csrc/py/client.c) reads a Buffer argument's and writes its reply's value there."""
    CLIENT["client_setup"]((buffer.max_length, buffer.value))  # type: ignore[attr-defined]
