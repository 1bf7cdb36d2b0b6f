"""The framework's C types (a connection's books, a Message's fields, a batch) and its declared fields.

csrc/py/server.c keeps, on every message of a shared-memory session, the
books that broker/framework/server.py's _Conn and broker.Message read in
Python: _Conn subclasses ConnBase and Message subclasses MessageBase, so the
fields both sides use are declared once, as those types' members. What else
C reads (the protocol's state and outstanding requests, declared as the
slotted fields themselves) and the Python methods it falls back on are handed
over by declare(), once, at import: a renamed field fails there, never on a
message.
"""
from __future__ import annotations

from typing import Any, Callable

from broker.core.native import CLIENT, SERVER

ConnBase: type = SERVER["conn_base"]()  # a connection's books: lock, proto, messages, ring_*, ended, counts
MessageBase: type = SERVER["message_base"]()  # broker.Message's fields; read(), write(), complete() in C
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
