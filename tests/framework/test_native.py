"""C reads and writes Python fields only as declared: a C type's members, or slotted fields handed over once.

csrc/py/server.c keeps a connection's books in ConnBase (the server's _Conn subclasses it) and a
Message's fields in MessageBase; csrc/py/codec.c and csrc/py/client.c read and write the protocol's
events and broker.Buffer through the slotted fields frames.py and client.py declare at import. So a
renamed field fails at import, never on a message. These tests hold that: the C names no Python
field, a declaration that is not a slot is refused, and the books C keeps are the ones Python sees.
"""
from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

import shmbroker as broker
from shmbroker.core.native import CLIENT, CODEC, SERVER
from shmbroker.framework.native import ConnBase, MessageBase
from shmbroker.framework.server import _Conn
from shmbroker.framework.session import Message
from shmbroker.protocol.frames import NO_ARG, Arg, ArgKind, Complete, Request, ServerConnection, State, Write

CSRC = Path(__file__).resolve().parents[2] / "csrc"
# the lookups by name the C API offers; the one use allowed is a lock's own interface (threading's)
BY_NAME = re.compile(r"PyObject_(Generic)?(Get|Set)Attr(String)?\s*\(|PyUnicode_InternFromString|"
                     r"PyObject_CallMethod|PyObject_VectorcallMethod")
ALLOWED = {('PyObject_GetAttrString(lock, "acquire")',), ('PyObject_GetAttrString(lock, "release")',)}


def test_the_c_looks_up_no_python_field_by_name():
    found = []
    for path in sorted(CSRC.rglob("*.[ch]")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if BY_NAME.search(line) and not any(a[0] in line for a in ALLOWED):
                found.append(f"{path.relative_to(CSRC)}:{n}: {line.strip()}")
    assert not found, "C looks a field up by its name:\n" + "\n".join(found)


def test_a_declaration_that_is_not_a_slot_is_refused_at_once():
    kinds = tuple(ArgKind(k) for k in range(len(ArgKind)))
    request = (Request.request_id, Request.code, Request.args, Request.handle, Request.asynchronous)
    with pytest.raises(TypeError, match="a tuple of 3 fields"):
        CODEC["codec_setup"](kinds, NO_ARG, request, (Arg.kind, Arg.value), (Complete.request_id,
                             Complete.status, Complete.writes, Complete.error), (Write.index, Write.data))
    with pytest.raises(TypeError, match="member descriptor"):
        CODEC["codec_setup"](kinds, NO_ARG, request, (Arg.kind, Arg.value, Arg.max_length), (Complete.request_id,
                             Complete.status, Complete.writes, Complete.error), (Write.index, Write.data))
    with pytest.raises(TypeError, match="not all of"):
        CODEC["codec_setup"](kinds, NO_ARG, request, (Arg.kind, Arg.value, Write.data), (Complete.request_id,
                             Complete.status, Complete.writes, Complete.error), (Write.index, Write.data))
    with pytest.raises(TypeError, match="member descriptor"):
        CLIENT["client_setup"]((broker.Buffer.max_length, broker.Buffer.__repr__))
    slow = (Message._read, Message._write, Message._complete, Message._send_completion)
    with pytest.raises(TypeError, match="member descriptor"):
        SERVER["server_setup"](Message, slow, ServerConnection.state, ServerConnection.receive, State.OPEN)
    with pytest.raises(TypeError):
        SERVER["server_setup"](dict, slow, ServerConnection.state, ServerConnection.outstanding, State.OPEN)
    # what import declared still holds: the codec decodes, a Buffer is filled in C
    assert CODEC["feed"](broker.protocol.frames.request_frame(1, 2, 0, False, [Arg(ArgKind.INT, 5)] + [NO_ARG] * 3),
                         0, 1 << 20)[0][0].args[0].value == 5


def test_the_protocol_and_the_buffer_are_slotted():
    """Their fields are the ones declared: an attribute that is not one is an error, not a new field C
    would never see."""
    with pytest.raises(AttributeError):
        ServerConnection().stat = State.OPEN  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        broker.Buffer(4).valeu = b"x"  # type: ignore[attr-defined]


def test_the_books_c_keeps_are_the_ones_python_sees():
    """ConnBase's members are plain attributes to Python (the server's _Conn reads and writes them),
    typed as C keeps them."""
    assert issubclass(_Conn, ConnBase) and issubclass(Message, MessageBase)
    c = ConnBase()
    with pytest.raises(AttributeError):
        c.proto  # noqa: B018  (unset until the connection sets it)
    lock = threading.RLock()
    c.lock = lock
    c.ended, c.completions, c.async_outstanding, c.bytes_out = False, 3, 1, 1 << 40
    c.completions += 1
    assert (c.lock, c.ended, c.completions, c.async_outstanding, c.bytes_out) == (lock, False, 4, 1, 1 << 40)
    with pytest.raises(TypeError):
        c.ended = 1  # a bool, as C keeps it
    with pytest.raises(AttributeError):
        del c.lock
