"""broker.Message's read() and write(): the C base class's common case against the Python methods in full.

MessageBase (csrc/py/server.c) takes a whole readable argument and the whole
content of a writable one from bytes, and sends every other case to
Message._read / Message._write. Each case here runs both ways on fresh
messages and must give the same result or the same error, and leave the
message in the same state.
"""
from __future__ import annotations

import contextlib
import threading

import pytest

import shmbroker as broker
from shmbroker.protocol.frames import NO_ARG, Arg, ArgKind
from shmbroker.core.native import SERVER
from shmbroker.framework.native import ConnBase, ring_batch
from shmbroker.framework.session import Message


class _Conn:
    lock = threading.RLock()


def _message(done: bool = False) -> Message:
    args = (Arg(ArgKind.READ, 0, b"hello"), Arg(ArgKind.WRITE, 8), Arg(ArgKind.READWRITE, 6, b"abc"),
            Arg(ArgKind.INT, 42))
    m = Message(_Conn(), 7, 3, args, 0, False)
    if done:
        m._done = True
    return m


def _outcome(fn, *a, **k):
    try:
        return ("ok", fn(*a, **k))
    except Exception as e:  # the type and the text must match
        return (type(e).__name__, str(e))


READS = [(0,), (2,), (3,), (1,), (4,), (-1,), (True,), (0, 1), (0, 1, 2), (2, 0, None), (0, 9)]
WRITES = [(1, b"12345678"), (1, b"123456789"), (1, b""), (2, b"xyz"), (2, b"abcdefg"), (0, b"no"),
          (3, b"no"), (1, bytearray(b"ba")), (1, memoryview(b"mv")), (1, b"tail", 2), (2, b"Z", 1), (5, b"x"),
          (-1, b"x"), (1, "str")]


@pytest.mark.parametrize("args", READS)
@pytest.mark.parametrize("written", [False, True])
def test_read_gives_what_the_python_read_gives(args, written):
    fast, slow = _message(), _message()
    if written:
        for m in (fast, slow):
            m._write(2, b"new")
    assert _outcome(fast.read, *args) == _outcome(slow._read, *args)


@pytest.mark.parametrize("args", WRITES)
@pytest.mark.parametrize("done", [False, True])
def test_write_gives_what_the_python_write_gives_and_leaves_the_same_state(args, done):
    fast, slow = _message(done), _message(done)
    assert _outcome(fast.write, *args) == _outcome(slow._write, *args)
    assert fast._writes == slow._writes and fast._done == slow._done
    for i in (0, 2):
        assert _outcome(fast.read, i) == _outcome(slow._read, i)


def test_the_fast_write_makes_the_content_the_service_and_the_client_see():
    m = _message()
    m.write(1, b"first")
    m.write(1, b"second")  # the whole content again: the last one wins
    assert m._writes == {1: b"second"} and m.length(1) == 6 and m.read(2) == b"abc"
    m.write(2, b"rw")
    assert m.read(2) == b"rw"  # a READWRITE argument reads what was written
    with pytest.raises(broker.Overflow):
        m.write(1, b"x" * 9)
    assert m._writes == {1: b"second", 2: b"rw"}  # nothing written by the refused one


def test_messages_are_collected_with_their_cycles():
    """Message -> its connection -> the connection's books -> the Message: the C base class takes part in the
    cycle collector, so none of these outlives its last outside reference."""
    import gc
    import weakref

    class Conn:
        lock = threading.RLock()

    refs = []
    for _ in range(100):
        c = Conn()
        m = Message(c, 1, 2, (NO_ARG,) * 4, 0, False)
        c.books = {1: m}
        refs.append(weakref.ref(c))
        del c, m
    gc.collect()
    assert all(r() is None for r in refs)


def test_the_first_complete_of_a_process_may_take_the_python_way():
    """A regression: the C complete() looked up the Python method's name before it had made it, when the
    first completion of a process was one for the Python way (an asynchronous message): a segfault."""
    import subprocess
    import sys

    code = (
        "import threading\n"
        "from shmbroker.protocol.frames import NO_ARG\n"
        "from shmbroker.framework.session import Message\n"
        "class Proto:\n"
        "    state = None\n"
        "class Conn:\n"
        "    lock = threading.RLock()\n"
        "    ended = True\n"
        "    proto = Proto()\n"
        "m = Message(Conn(), 1, 2, (NO_ARG,) * 4, 0, True)\n"
        "m.complete(0)\n"  # the Python way: the connection has ended, nothing to send
        "assert m.completed\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr[-2000:])


# ---- complete() into a batch (RingBatch): C against the Python way ---------------------------------


class _BatchConn(ConnBase):
    """What complete() uses of a shared-memory connection while on_ring serves a batch: the books
    C keeps (ConnBase, as the server's _Conn)."""

    def __init__(self, rid: int, asynchronous: bool) -> None:
        from shmbroker.protocol.frames import Request, ServerConnection, State

        self.lock = threading.RLock()
        self.proto = ServerConnection()
        self.proto.state = State.OPEN
        self.proto.outstanding[rid] = Request(rid, 3, (), 0, asynchronous)
        self.ended = False
        self.ring_put = self.ring_pending = None
        self.messages: dict[int, Message] = {}
        self.completions = self.bytes_out = 0
        self.async_outstanding = 1 if asynchronous else 0
        self.ring_batch = ring_batch()

    def _send(self, frame: bytes) -> None:  # as _Conn._send with a batch being served
        self.ring_batch.append(frame)

    def books(self) -> tuple[object, ...]:
        data, completions, nasync = self.ring_batch.take()
        return (data, self.completions + completions, self.async_outstanding - nasync, sorted(self.messages),
                sorted(self.proto.outstanding))


COMPLETES = [((), {}), ((0,), {}), ((5,), {}), ((-3,), {}), ((0, None), {}), ((-2, "it went wrong"), {}),
             ((2**31,), {}), (("x",), {}), ((), {"status": 1})]


@pytest.mark.parametrize("asynchronous", [False, True])
@pytest.mark.parametrize("writes", [None, {1: b"out"}, {2: b"rw", 1: b""}, {1: bytearray(b"ba")}])
@pytest.mark.parametrize("call", COMPLETES)
def test_complete_into_a_batch_gives_what_the_python_way_gives(call, writes, asynchronous):
    out = []
    for way in ("complete", "_complete"):
        conn = _BatchConn(7, asynchronous)
        m = Message(conn, 7, 3, (), 0, asynchronous)
        conn.messages[7] = m
        m._writes = dict(writes) if writes else None
        a, k = call
        first = _outcome(getattr(m, way), *a, **k)
        again = _outcome(getattr(m, way), *a, **k)  # exactly once
        out.append((first, again, m._done, conn.books()))
    assert out[0] == out[1]


def test_complete_into_a_batch_of_a_gone_client_says_nothing():
    conn = _BatchConn(7, True)
    m = Message(conn, 7, 3, (), 0, True)
    conn.messages[7] = m
    conn.ended = True
    m.complete(0)
    assert m._done and conn.books() == (None, 0, 1, [7], [7])


@contextlib.contextmanager
def _python_way_raises():
    """C's fallback for complete() (declared once, at import) made to raise meanwhile: proof that C
    took a case itself."""
    def python_way(self, *a, **k):
        raise AssertionError("the Python way was taken")

    _declare_complete(python_way)
    try:
        yield
    finally:
        _declare_complete(Message._complete)


def _declare_complete(fn):
    from shmbroker.protocol.frames import ServerConnection, State

    SERVER["server_setup"](Message, (Message._read, Message._write, fn, Message._send_completion),
                           ServerConnection.state, ServerConnection.outstanding, State.OPEN)


def test_the_python_way_is_what_c_falls_back_on():
    conn = _BatchConn(7, False)
    m = Message(conn, 7, 3, (), 0, False)
    with _python_way_raises(), pytest.raises(AssertionError, match="the Python way was taken"):
        m.complete(0, "an error text is for Python")  # not C's case: the declared fallback runs
    m.complete(0, "an error text is for Python")  # restored
    assert m._done


def test_complete_into_a_batch_is_c_for_the_common_case():
    for asynchronous in (False, True):
        conn = _BatchConn(7, asynchronous)
        m = Message(conn, 7, 3, (), 0, asynchronous)
        conn.messages[7] = m
        m._writes = {1: b"out"}
        with _python_way_raises():
            m.complete(5)
        data, completions, outstanding, messages, books = conn.books()
        assert (completions, outstanding, messages, books) == (1, 0, [], [])
        assert data is not None and data[:4] == b"BRK1" and data.endswith(b"out")
