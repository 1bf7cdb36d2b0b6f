"""The client side: connect(), sessions, sub-sessions; synchronous, future-based and asyncio calls."""
from __future__ import annotations

import array
import asyncio
import errno
import json
import logging
import os
import secrets
import select
import socket
import struct
import threading
import weakref
import time
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import _base as _futures_base  # its state names: _Reply keeps Future's fields itself
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, overload

from shmbroker.transport import address as _address
from shmbroker.transport import keys as _keys
from shmbroker.transport.carrier import MANY_ODD as _MANY_ODD
from shmbroker.transport.carrier import MANY_UNUSUAL as _MANY_UNUSUAL
from shmbroker.transport.carrier import TIMEOUT as _RING_TIMEOUT
from shmbroker.transport.carrier import CarrierGone, ClientRings, SocketCarrier
from shmbroker._errors import (
    BadHandle,
    BrokerError,
    SegmentError,
    Panicked,
    PermissionDenied,
    ServerBusy,
    ServerGone,
    ServerNotFound,
    ServiceError,
    StateError,
    Timeout,
    VersionRefused,
)
from shmbroker.core.shm import MEMFD
from shmbroker.protocol.serial import Serializer, serializer as _serializer
from shmbroker.protocol.frames import parse_passed_fds
from shmbroker.protocol.frames import (
    BIG_FRAME,
    NO_ARG,
    Arg,
    ArgKind,
    Challenge,
    ClientConnection,
    Complete,
    Hello,
    Notify,
    Panic,
    ProtocolError,
    Refuse,
    State,
    Status,
    Welcome,
)
from shmbroker.transport.keys import Key
from shmbroker.framework.watch import WATCHER
from shmbroker.framework.native import declare_buffer
from shmbroker.framework.session import CLOSE_SUBSESSION, SERVER_STATS

if TYPE_CHECKING:
    from typing_extensions import Self  # (typing's own from Python 3.11)

log = logging.getLogger("shmbroker.client")

_RECV = 256 * 1024
REPLY_RESERVE = 64  # a COMPLETE's header and its write's, within the server's max frame
NOTIFY_QUEUE = 1024  # notifications kept for notifications() (the oldest go first)
_MAX_FDS = 8  # descriptors accepted with one message (an offer brings three)
_BUSY_POLL_US = 3600e6  # busy_poll: a spin that outlasts any wait (waits still look at the peer in slices)
CALL_WAIT_NS = 100_000_000  # a C call waits this long for its reply before Python looks at the server
_FLUSH_NAP_MIN, _FLUSH_NAP_MAX = 50e-6, 0.002  # a loop's look for room in ring 0: from, doubling to


class Buffer:
    """A writable argument the server fills: up to `max_length` bytes (with
    `initial` content sent to the server, if any). After the call, `value`."""

    __slots__ = ("max_length", "value")  # C reads and writes them (declare_buffer, below)

    def __init__(self, max_length: int, initial: bytes = b"") -> None:
        if len(initial) > max_length:
            raise ValueError("initial content longer than max_length")
        self.max_length = max_length
        self.value = bytes(initial)

    def __repr__(self) -> str:
        return f"Buffer({self.max_length}, {self.value!r})"


class ViewBuffer(Buffer):
    """A Buffer whose value may be a read-only memoryview instead of bytes: a big reply's write is
    then not copied out of the frame it was gathered in (BIG_FRAME and more). For readers that take
    any buffer (a topic subscriber's batches); a plain Buffer's value is always bytes."""

    __slots__ = ()


declare_buffer(Buffer)
_READ, _WRITE, _READWRITE, _INT, _HANDLE = ArgKind.READ, ArgKind.WRITE, ArgKind.READWRITE, ArgKind.INT, ArgKind.HANDLE


def to_arg(a: Any) -> Arg:
    t = type(a)  # the common cases first, by exact type: this runs for every argument of every call
    if t is bytes:
        return Arg(_READ, 0, a)
    if t is str:  # its UTF-8 bytes (Message.text(i) reads it back)
        return Arg(_READ, 0, a.encode())
    if t is Buffer:
        return Arg(_READWRITE if a.value else _WRITE, a.max_length, a.value)
    if a is None:
        return NO_ARG
    if isinstance(a, str):  # a subclass (an enum's, say): its text, as a str's
        return Arg(_READ, 0, str.encode(a))
    if isinstance(a, bool) or not isinstance(a, (int, bytes, bytearray, memoryview, Buffer, SubSession)):
        raise TypeError(f"an argument is an int, bytes, a str, a bytearray, a broker.Buffer or a SubSession, not "
                        f"{type(a).__name__}")
    if isinstance(a, SubSession):
        return Arg(_HANDLE, a.handle)
    if isinstance(a, int):
        if not -(2**63) <= a < 2**63:
            raise OverflowError("an int argument must fit in 64 bits")
        return Arg(_INT, a)
    if isinstance(a, Buffer):
        return Arg(_READWRITE if a.value else _WRITE, a.max_length, a.value)
    if isinstance(a, bytearray):
        return Arg(_READWRITE, len(a), bytes(a))
    if isinstance(a, bytes):  # a subclass (numpy's bytes_, say): its bytes
        return Arg(_READ, 0, bytes(a))
    if a.c_contiguous and a.nbytes >= BIG_FRAME:  # a big memoryview goes out from its own buffer: no copy here
        return Arg(_READ, 0, a if a.ndim == 1 and a.format == "B" else a.cast("B"))  # type: ignore[arg-type]
    return Arg(_READ, 0, bytes(a))


class _Inline:
    """What an unsharable session's synchronous call waits on while it reads
    the socket itself: the part of a Future it needs, without its locks."""

    __slots__ = ("_value", "_error", "_done")

    def __init__(self) -> None:
        self._value = 0
        self._error: BaseException | None = None
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, value: int) -> None:
        self._value, self._done = value, True

    def set_exception(self, error: BaseException | None) -> None:
        self._error, self._done = error, True

    def result(self, timeout: float | None = None) -> int:
        if not self._done:
            raise TimeoutError
        if self._error is not None:
            raise self._error
        return self._value


_COND_LOCK = threading.Lock()  # makes a _Reply's Condition once
_PENDING, _FINISHED = _futures_base.PENDING, _futures_base.FINISHED
_CANCELLED_STATES = (_futures_base.CANCELLED, _futures_base.CANCELLED_AND_NOTIFIED)
_DONE_STATES = (*_CANCELLED_STATES, _FINISHED)


class _StartsReader(list):  # type: ignore[type-arg]
    """A _Reply's waiter list: concurrent.futures.wait() and as_completed()
    register here, and such a waiter needs the reader thread."""

    _session: "ClientSession"

    def append(self, waiter: Any) -> None:
        self._session._background()
        super().append(waiter)


class _Sent(Future):  # type: ignore[type-arg]
    """A request's future when a reader thread completes it: cancel() tells the server (CANCEL)."""

    _session: "ClientSession | None" = None
    _rid = 0

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        if self._session is not None and self._rid:
            self._session._cancel_request(self._rid, self)
        return True


class _Reply(Future):  # type: ignore[type-arg]
    """The future send() returns. On an unsharable session it is completed by
    the session's own thread, which reads the socket whenever it waits (here,
    or in a later call): no reader thread, no hand-over between threads.
    Whatever must see it complete without that thread's help (a callback,
    concurrent.futures.wait, asyncio) starts the reader thread first."""

    def __init__(self, session: "ClientSession") -> None:
        # Future's own fields, except its Condition: that is made when something first needs it (a
        # wait, a callback, a wait from another thread); most replies are settled and read by the
        # session's own thread, and never need it. Creating one costs more than the rest of a call.
        self._cond: threading.Condition | None = None
        self._state = _PENDING
        self._result = None
        self._exception: BaseException | None = None
        self._done_callbacks: list[Any] = []
        self._session = session
        self._waiters = w = _StartsReader()
        w._session = session

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        """Future's Condition, made on first use (under _COND_LOCK: once, whichever thread asks)."""
        c = self._cond
        if c is None:
            with _COND_LOCK:
                c = self._cond
                if c is None:
                    c = self._cond = threading.Condition()
        return c

    def _settle_quietly(self, result: Any, exception: BaseException | None) -> bool:
        """Finish without the Condition while nobody has asked for it: then
        nothing waits on it and no callback is registered (both need it)."""
        with _COND_LOCK:
            if self._cond is not None:
                return False
            if self._state != _PENDING:
                raise InvalidStateError(f"{self._state}: {self!r}")
            self._result, self._exception, self._state = result, exception, _FINISHED
            return True

    def set_result(self, result: Any) -> None:
        if not self._settle_quietly(result, None):
            super().set_result(result)

    def set_exception(self, exception: BaseException | None) -> None:
        if not self._settle_quietly(None, exception):
            super().set_exception(exception)

    def done(self) -> bool:
        return self._state in _DONE_STATES  # a str, read atomically: no lock needed to look

    def _drive(self, timeout: float | None) -> float | None:
        """Read inline until done if this thread may; the timeout left for Future's own wait."""
        s = self._session
        if self.done():
            return timeout
        if threading.get_ident() != s._owner:  # another thread waits: the reader thread must read
            s._background()
            return timeout
        if not s._begin_inline():
            return timeout  # a reader thread reads
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            s._read_inline(self, timeout)
        finally:
            s._end_inline()
        if self.done() or s._reader is None:
            return 0
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def result(self, timeout: float | None = None) -> Any:
        left = self._drive(timeout)
        if self._state == _FINISHED:  # final: read without the Condition
            if self._exception is not None:
                raise self._exception
            return self._result
        return super().result(left)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return super().exception(self._drive(timeout))

    def add_done_callback(self, fn: Any) -> None:
        if not self.done():
            self._session._background()
        super().add_done_callback(fn)

    _rid = 0

    def cancel(self) -> bool:
        """Cancel the request: the server is told (CANCEL), its service hears of it, and the session's
        slot is free at once. False if its answer came already."""
        if not super().cancel():
            return False
        if self._rid:
            self._session._cancel_request(self._rid, self)
        return True


def _settle(fut: Any, outcome: Any) -> None:
    """Give a future its outcome (an int, or an exception to raise). Never
    called with the session's lock held: a future's own lock comes first
    (concurrent.futures.wait holds it while it registers)."""
    try:
        if isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)
    except InvalidStateError:
        pass  # cancelled by its caller meanwhile: nobody wants the outcome


def apply_writes(args: tuple[Any, ...], done: Complete) -> None:
    for w in done.writes:
        target = args[w.index] if w.index < len(args) else None
        if isinstance(target, Buffer):
            d = w.data  # bytes, or a view of a big reply's frame
            target.value = d if type(d) is bytes or type(target) is ViewBuffer else bytes(d)
        elif isinstance(target, bytearray):
            target[:] = w.data


_STATUS_ERRORS = {
    Status.PERMISSION_DENIED: PermissionDenied,
    Status.BAD_HANDLE: BadHandle,
    Status.SERVER_BUSY: ServerBusy,
}


# what a call that failed raises (as against the session's end: ServerGone, Panicked, Timeout...)
_CALL_ERRORS = (ServiceError, PermissionDenied, BadHandle, ServerBusy)


def result_of(done: Complete) -> int:
    """The status of a completion, or the typed error it stands for."""
    if done.status >= 0:
        return done.status
    text = done.error or f"status {done.status}"
    err = _STATUS_ERRORS.get(done.status)  # type: ignore[call-overload]
    if err is not None:
        raise err(text)
    raise ServiceError(done.status, done.error or "")


class _LoopReader:
    """An asyncio loop's watch over a session's descriptor (ClientSession._loop_attach): a copy of it,
    so that the session may close its own at any time, from any thread; the copy goes when the loop
    has stopped watching it (detach: at once on the loop's thread, else through the loop)."""

    def __init__(self, session: "ClientSession", loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.loop = loop
        self.thread = threading.get_ident()
        self.fd = os.dup(fd)
        self.writing = False
        try:
            loop.add_reader(self.fd, session._loop_readable)
        except BaseException:
            os.close(self.fd)
            raise

    def want_write(self, fn: Callable[[], Any] | None) -> None:
        """fn() when the descriptor (a socket) is writable; None: no more."""
        if fn is None:
            if self.writing:
                self.writing = False
                self.loop.remove_writer(self.fd)
        elif not self.writing and self.fd >= 0:
            self.writing = True
            self.loop.add_writer(self.fd, fn)

    def call(self, fn: Callable[[], Any]) -> bool:
        """fn() on the loop's thread (soon); False if the loop is closed (nobody would run it)."""
        if self.loop.is_closed():
            return False
        try:
            self.loop.call_soon_threadsafe(fn)
        except RuntimeError:  # closed just now
            return False
        return True

    def detach(self) -> None:
        if threading.get_ident() == self.thread or not self.call(self._remove):
            self._remove()

    def _remove(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            if not self.loop.is_closed():
                self.loop.remove_reader(fd)
                if self.writing:
                    self.loop.remove_writer(fd)
            self.writing = False
            os.close(fd)


async def _awaited(fut: "Future[Any]", cancel: bool) -> Any:
    """Await a concurrent future on the running loop without blocking it. Its outcome reaches the loop
    at once when the loop's own thread settles it (the loop reads the session), else through
    call_soon_threadsafe (a reader thread settled it). cancel: a cancelled await cancels fut (a request:
    the server is told); without, fut lives on (a subscriber's FETCH, which the next receive takes)."""
    if fut.done():
        return fut.result()
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    me = threading.get_ident()

    def copy() -> None:
        if not waiter.done():
            waiter.set_result(None)

    def done(_: Any) -> None:
        if threading.get_ident() == me:
            copy()
        else:
            try:
                loop.call_soon_threadsafe(copy)
            except RuntimeError:  # the loop is closed: nobody awaits any more
                pass

    fut.add_done_callback(done)
    try:
        await waiter
    except asyncio.CancelledError:
        if cancel:
            fut.cancel()
        raise
    return fut.result(0)


class ClientSession:
    """A session with a server. Unsharable (one thread) unless connect(sharable=True)."""

    def __init__(self, sock: socket.socket, address: str, proto: ClientConnection, welcome: Welcome,
                 sharable: bool, spin_us: float = 50.0, rings: ClientRings | None = None) -> None:
        self._sock = sock
        self.address = address
        self._proto = proto
        self.connection_id = welcome.connection_id
        self.slots = welcome.slots
        self.sharable = sharable
        self._owner = threading.get_ident()
        self._lock = threading.RLock()  # sending and the protocol's books
        self._pending: dict[int, tuple[Any, tuple[Any, ...], bool]] = {}  # a Future or an _Inline
        self._async = 0
        self._reader: threading.Thread | None = None
        self._locals: "weakref.WeakSet[SubSession]" = weakref.WeakSet()  # sub-sessions: close() ends them here too
        self._reading = 0  # the owner thread is reading the socket inline (nested: a count)
        self._handover = False  # start the reader thread once it stops
        self._broken: BaseException | None = None
        self._spin_ns = int(spin_us * 1000)
        self._rings = rings  # the rings, when the session rule allowed shared memory: C's short ways use them
        # what carries the session's frames: the rings, or the socket (transport/carrier.py)
        self._carrier: Any = rings if rings is not None else SocketCarrier(sock, address, self._spin_ns)
        if rings is None:
            self._carrier.reader = proto.reader  # type: ignore[union-attr]  # (the socket's) a big reply is read from the socket straight into its frame
        self.transport = self._carrier.kind
        # the server's process, as the kernel says (Unix sockets): the one that called listen(), so under
        # socket activation the one that made the socket (systemd)
        self.server_pid: int | None = None
        if sock.family == socket.AF_UNIX:
            self.server_pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0] or None
        self.ring_capacity = rings.capacity if rings is not None else None  # of each ring, as the server granted
        self._max_frame = welcome.max_frame  # the server's limit on a frame's body
        self._fd_lock = threading.Lock()  # reading the descriptors the server passes on the socket (_receive_fd)
        self._fd_buf = bytearray()
        self._fd_queue: list[int] = []  # received, their message not complete yet
        self._passed: dict[str, int] = {}  # received and named, not taken yet
        self._on_close: list[Callable[[BaseException], Any]] = []  # on_close(): told once, when the session ends
        self._on_notify: list[Callable[[Notify], Any]] = []
        self._notes: deque[Notify] = deque()
        self._note_cond = threading.Condition(threading.Lock())
        self.notifications_lost = 0
        self._ended = threading.Event()
        self._watched = False  # its socket is watched for the server's hang-up (framework/watch.py)
        self._aread: _LoopReader | None = None  # an asyncio loop reads the session (see _loop_attach)
        self._arm_due = False  # the loop's reader is to look and arm ring 1 again (_rearm)
        self._out: deque[Any] = deque()  # frames the loop's thread wrote that wait for room (_write)
        self._flush_due = False
        self._flush_nap = _FLUSH_NAP_MIN
        if sharable:
            self._start_reader()

    # -- calls -----------------------------------------------------------------------

    def send_receive(self, code: int, *args: Any, timeout: float | None = None, handle: int = 0) -> int:
        """Call function `code` with up to four arguments and wait for its
        completion status (>= 0; errors raise). Writable arguments (bytearray,
        Buffer) hold what the server wrote."""
        self._check_thread()
        if self._rings is not None and timeout is None and not self._pending and self._reader is None:
            done = self._call_rings(code, args, handle)
            if done is not None:
                return done
        if self._begin_inline():  # no reader thread: this thread reads the socket itself
            inline = _Inline()
            try:
                rid = self._submit(code, args, handle, False, inline)
                self._read_inline(inline, timeout)
            finally:
                self._end_inline()
            return self._wait(inline, rid, timeout)
        fut: Future[int] = Future()
        rid = self._submit(code, args, handle, False, fut)
        return self._wait(fut, rid, timeout)

    @overload
    def call(self, code: int, *args: Any, handle: int = 0, timeout: float | None = None,
             serializer: None = None) -> bytes: ...

    @overload
    def call(self, code: int, *args: Any, handle: int = 0, timeout: float | None = None,
             serializer: "str | Serializer") -> Any: ...

    def call(self, code: int, *args: Any, handle: int = 0, timeout: float | None = None,
             serializer: Any = None) -> Any:
        """send_receive that gives the reply as bytes, whatever its length: a writable argument after
        `args` (so at most three of them) that the service fills (message.write(len(args), data), or
        message.reply(data)), as big as a frame may be. A negative status raises, as send_receive's
        does.

        serializer (a name of broker.SERIALIZERS, or an object with encode and decode): each
        argument is an object, sent encoded (the service reads it with message.decode(i, ...)), and
        the reply is decoded into the object returned; DecodeError if the server's reply is not
        what the serializer reads (the session goes on)."""
        if len(args) > 3:
            raise TypeError("call() takes at most three arguments: the fourth carries the reply")
        ser = _serializer(serializer)
        if ser is not None:
            args = tuple(ser.encode(a) for a in args)
        out = Buffer(self._max_frame - REPLY_RESERVE)
        self.send_receive(code, *args, out, handle=handle, timeout=timeout)
        return out.value if ser is None else ser.decode(out.value)

    def send(self, code: int, *args: Any, handle: int = 0) -> "Future[int]":
        """Call asynchronously: a future of the status. Uses one of the
        session's message slots; ServerBusy at once when none is free."""
        self._check_thread()
        if self._async >= self.slots and self._begin_inline():
            try:
                self._read_arrived()  # completions may be waiting in the socket: they free slots
            finally:
                self._end_inline()
        fut: Any = _Reply(self) if self._reader is None else _Sent()
        fut._session = self
        fut._rid = self._submit(code, args, handle, True, fut)
        if fut._state in _CANCELLED_STATES:  # by another thread, before it had its id (not cancelled(): it
            # would make a _Reply's Condition)
            self._cancel_request(fut._rid, fut)
        return fut  # type: ignore[no-any-return]

    def _cancel_request(self, rid: int, fut: Any) -> None:
        """fut was cancelled: tell the server, and free its slot now. The server completes a cancelled
        request (CANCELLED) before it reads the next one, so the slot is free there too when a later
        request comes; that completion is dropped here."""
        with self._lock:
            entry = self._pending.get(rid)
            if entry is None or entry[0] is not fut:
                return  # its answer came meanwhile
            if entry[2]:
                self._async -= 1
                self._pending[rid] = (fut, entry[1], False)
            if self._proto.state == State.OPEN:
                try:
                    self._write(self._proto.cancel(rid))
                except (OSError, BrokerError):
                    pass

    def call_many(self, code: int, argsets: Iterable[Sequence[Any]], *, handle: int = 0,
                  timeout: float | None = None, return_exceptions: bool = False) -> list[Any]:
        """Call function `code` once with each tuple of arguments in `argsets`,
        pipelined: as many calls in flight at once as the session has message
        slots free. Their statuses, in the order of `argsets`; writable
        arguments hold what the server wrote, as with send_receive.

        A call that fails (ServiceError, PermissionDenied, BadHandle,
        ServerBusy): with return_exceptions its error takes its place in the
        list; without, the first such error is raised once every call has
        ended, with the whole list (errors in their places) as its `results`.
        An argument send_receive would refuse (TypeError, ValueError) is raised
        once the calls before it have ended; none after it is sent. Timeout
        when they have not all ended within `timeout` seconds (those in flight
        are cancelled); the session's end (ServerGone, Panicked) at once.

        On a shared-memory session the whole run is one C call in the common
        case (csrc/py/client.c, call_many): requests packed into ring records,
        replies taken as they come."""
        self._check_thread()
        sets = list(argsets)  # our own: C reads it while other threads run
        results: list[Any] = [None] * len(sets)
        deadline = None if timeout is None else time.monotonic() + timeout
        if sets:
            if (self._rings is not None and not self._pending and self._reader is None and not self.sharable
                    and self._begin_inline()):
                try:
                    self._many_rings(code, sets, results, handle, deadline, timeout)
                finally:
                    self._end_inline()
            else:
                self._many_futures(code, sets, results, handle, deadline, timeout)
        try:
            if min(results, default=0) >= 0:  # all ints, none negative: the common case, at C's speed
                return results
        except TypeError:  # an error among them, from the long way
            pass
        first: BaseException | None = None
        for i, r in enumerate(results):
            if type(r) is int and r < 0:
                try:
                    result_of(Complete(0, r))
                except BrokerError as e:
                    r = results[i] = e
            if first is None and isinstance(r, BaseException):
                first = r
        if first is not None and not return_exceptions:
            first.results = results  # type: ignore[attr-defined]
            raise first
        return results

    def _many_rings(self, code: int, sets: list[Any], results: list[Any], handle: int, deadline: float | None,
                    timeout: float | None) -> None:
        """call_many on a shared-memory session, reading the ring inline: C does the common case;
        what it gives back (an unusual request, a reply it did not take) is done here as the long way does it."""
        rings, proto, lock = self._rings, self._proto, self._lock
        assert rings is not None
        n = len(sets)
        with lock:
            if self._broken is not None:
                raise self._broken
            try:
                first = proto.begin_requests(n)
            except ProtocolError:
                if proto.state is not State.CLOSED:
                    raise
                raise ServerGone("the session is closed") from None  # as close() says it
        window = max(1, self.slots)  # nothing else outstanding: every slot is free
        sent = done = 0
        limit = n
        odd: list[bytes] = []
        refused: BaseException | None = None  # an argument send_receive would refuse: raised after those before it
        call = rings.call_many
        outstanding = proto.outstanding
        while True:
            wait = CALL_WAIT_NS if deadline is None else max(0, min(CALL_WAIT_NS,
                                                                      int((deadline - time.monotonic()) * 1e9)))
            sent, done, rc = call(first, code, handle, sets, results, sent, done, limit, window, wait,
                                  self._max_frame, outstanding, odd)
            if rc == 0:  # every one up to limit has its reply
                break
            if rc == _MANY_UNUSUAL:  # the next request is not for C: made here, sent on the ring
                args = sets[sent]
                try:
                    args = sets[sent] = tuple(args)
                    if len(args) > 4:
                        raise TypeError("at most four arguments")
                    with lock:
                        frame = proto.request_for(first + sent, code, map(to_arg, args), handle, True)
                except (TypeError, ValueError, OverflowError, struct.error) as e:
                    refused = e
                    limit = sent  # the calls before it end first
                    continue
                with lock:
                    try:
                        self._write(frame)
                    except (OSError, BrokerError) as e:
                        self._fail(ServerGone(f"the server at {self.address} is gone: {e}"))
                        raise self._broken from e  # type: ignore[misc]
                sent += 1
            elif rc == _MANY_ODD:
                done = self._many_odd(first, sets, results, sent, done, odd)
                odd.clear()
            elif rc == _RING_TIMEOUT:
                if self._broken is not None:
                    raise self._broken
                if deadline is not None and time.monotonic() >= deadline:
                    self._many_cancel(first, results, sent)
                    raise Timeout(f"{n - done} of {n} calls had no answer within {timeout} s")
            else:
                self._ring_failed(rings.call_error((rc,)))  # type: ignore[arg-type]
                raise self._broken  # type: ignore[misc]
        if refused is not None:
            raise refused

    def _many_odd(self, first: int, sets: list[Any], results: list[Any], sent: int, done: int,
                  odd: list[bytes]) -> int:
        """Replies C left to Python (with whatever followed them in their record): taken as the long way
        takes them, with every call in flight waiting for its reply meanwhile. The count of calls done."""
        waiting: dict[int, _Inline] = {}
        with self._lock:
            for i in range(sent):
                if results[i] is None:
                    waiting[i] = inline = _Inline()
                    self._pending[first + i] = (inline, sets[i], False)  # (no slot of send()'s to give back)
        try:
            for data in odd:
                self._received_events(data, None)
            while self._proto.reader.pending and self._broken is None:  # a frame split over records: read on
                try:
                    data = self._carrier.take(None)
                except CarrierGone as e:
                    self._fail(ServerGone(str(e)))
                    break
                if data is not None:
                    self._received_events(data, None)
        finally:
            with self._lock:
                for i, inline in waiting.items():
                    if inline.done():
                        results[i] = inline._value if inline._error is None else inline._error
                        done += 1
                    else:
                        self._pending.pop(first + i, None)
        if self._broken is not None:
            raise self._broken
        return done

    def _many_cancel(self, first: int, results: list[Any], sent: int) -> None:
        """The calls in flight are cancelled: their late replies are dropped, as a timed-out call's are,
        and each holds its message slot until its reply comes (the server frees it only then)."""
        with self._lock:
            for i in range(sent):
                if results[i] is None:
                    self._pending[first + i] = (_Inline(), (), True)  # nobody waits on it
                    self._async += 1
            if self._proto.state != State.OPEN:
                return
            try:
                for i in range(sent):
                    if results[i] is None:
                        self._write(self._proto.cancel(first + i))
            except (OSError, BrokerError):
                pass

    def _many_futures(self, code: int, sets: list[Any], results: list[Any], handle: int, deadline: float | None,
                      timeout: float | None) -> None:
        """call_many the long way (a socket session, a reader thread, calls already outstanding...):
        asynchronous calls in the message slots free now, or one by one when none is."""
        n = len(sets)
        window = self.slots - self._async

        def one_by_one(i: int, args: Any) -> None:  # a synchronous call: it needs no slot
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                results[i] = self.send_receive(code, *args, handle=handle, timeout=left)
            except _CALL_ERRORS as e:
                results[i] = e

        if window <= 0:
            for i, args in enumerate(sets):
                one_by_one(i, args)
            return
        inflight: deque[tuple[int, int, Any]] = deque()

        def reap() -> None:
            i, rid, fut = inflight[0]
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                results[i] = fut.result(left)
            except _CALL_ERRORS as e:
                results[i] = e
            except TimeoutError:
                if self._broken is not None and not fut.done():
                    raise self._broken from None
                with self._lock:  # cancelled: each holds its slot until its late reply comes
                    if self._proto.state == State.OPEN:
                        try:
                            for _, rid, _ in inflight:
                                if rid in self._pending:
                                    self._write(self._proto.cancel(rid))
                        except (OSError, BrokerError):
                            pass
                done = sum(1 for r in results if r is not None)
                raise Timeout(f"{n - done} of {n} calls had no answer within {timeout} s") from None
            inflight.popleft()

        refused: BaseException | None = None
        for i, args in enumerate(sets):
            if len(inflight) >= window:
                reap()
            try:
                args = tuple(args)
                while True:
                    fut: Any = _Reply(self) if self._reader is None else Future()
                    try:
                        rid = self._submit(code, args, handle, True, fut)
                    except ServerBusy:  # (before sending) another thread of a sharable session took the slots
                        if inflight:
                            reap()
                            continue
                        one_by_one(i, args)
                        break
                    inflight.append((i, rid, fut))
                    break
            except (TypeError, ValueError, OverflowError, struct.error) as e:
                refused = e
                break
        while inflight:
            reap()
        if refused is not None:
            raise refused

    # -- asyncio ---------------------------------------------------------------------

    async def asend_receive(self, code: int, *args: Any, handle: int = 0) -> int:
        """send_receive for asyncio: the loop is never blocked while the reply comes (the loop itself
        reads the session: see _loop_attach). Cancelling the await cancels the request (the server is
        told; a cancelled call leaves nothing behind). Needs no message slot, as send_receive."""
        self._loop_attach()
        fut = _Sent()
        fut._session = self
        fut._rid = self._submit(code, args, handle, False, fut)
        return await _awaited(fut, cancel=True)  # type: ignore[no-any-return]

    async def asend(self, code: int, *args: Any, handle: int = 0) -> int:
        """send for asyncio: uses one of the session's message slots (ServerBusy at once when none is free)."""
        self._loop_attach()
        return await _awaited(self.send(code, *args, handle=handle), cancel=True)  # type: ignore[no-any-return]

    async def acall(self, code: int, *args: Any, handle: int = 0) -> bytes:
        """call() for asyncio: the reply as bytes, whatever its length."""
        if len(args) > 3:
            raise TypeError("acall() takes at most three arguments: the fourth carries the reply")
        out = Buffer(self._max_frame - REPLY_RESERVE)
        await self.asend_receive(code, *args, out, handle=handle)
        return out.value

    async def aclose(self) -> None:
        """close() for asyncio (it never waits for the server: the same as close(), awaitable)."""
        self.close()

    async def await_future(self, fut: "Future[Any]", cancel: bool = False) -> Any:
        """Await a future of this session's (send()'s, or a service client's) on the running loop, which
        reads the session meanwhile. cancel: a cancelled await cancels the request too (the server is
        told); without it, the request lives on."""
        self._loop_attach()
        return await _awaited(fut, cancel)

    async def __aenter__(self) -> "ClientSession":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _loop_attach(self) -> None:
        """From now on the running asyncio loop reads this session, when it can: the owner thread's loop, an
        unsharable session. The loop watches a descriptor: a socket session's socket; a shared-memory
        session's bell, the eventfd the server writes when it puts a frame into ring 1 while this side
        sleeps (ring 1's consumer armed: brk_arm), with the socket watched for the server's hang-up by
        the WATCHER thread. Otherwise (a sharable session, a call from another thread, a server that
        passed no bell) the session's reader thread reads it, and the loop hears of each reply from it."""
        loop = asyncio.get_running_loop()
        current = self._aread
        if current is not None and current.loop is loop:
            self._rearm()
            return
        if self._broken is not None:
            raise self._broken
        rings = self._rings
        if (self.sharable or self._reader is not None or threading.get_ident() != self._owner
                or (rings is not None and rings.bell < 0)):
            self._background()
            return
        if current is not None:  # a loop of before (asyncio.run ends its loop; a later one reads on)
            current.detach()
        if rings is not None:
            rings.rx.set_wait_fd(rings.bell)  # ring 1's waits (C's too) sleep on the bell from now on
            self._aread = _LoopReader(self, loop, rings.bell)
            with self._lock:
                self._watch()
        else:
            self._aread = _LoopReader(self, loop, self._sock.fileno())
        loop.call_soon(self._loop_readable)  # what came before

    def _rearm(self) -> None:
        """A read of ring 1 on the loop's thread outside the loop's reader (a synchronous call, a
        receive(timeout=0)) may have taken the bell's arming with it (a wait that ends clears ring 1's
        sleeper flag): the loop's reader looks and arms again, soon."""
        aread = self._aread
        if (aread is not None and self._rings is not None and not self._arm_due
                and threading.get_ident() == aread.thread and not aread.loop.is_closed()):
            self._arm_due = True
            aread.loop.call_soon(self._loop_readable)

    def _loop_readable(self) -> None:
        """The loop's reader: what arrived, dispatched; on a shared-memory session ring 1 armed again."""
        self._arm_due = False
        if self._broken is not None or self._reading or self._aread is None:
            return  # (this thread reads inline: it takes what came)
        rings = self._rings
        if rings is not None:
            try:
                os.read(self._aread.fd, 8)  # the bell's count (non-blocking): rung, heard
            except OSError:
                pass
        while self._broken is None:
            self._read_arrived()
            if rings is None or self._broken is not None:
                return
            try:
                if rings.rx.arm():  # armed, and nothing came meanwhile: the bell rings for the next
                    return
            except BrokerError as e:
                self._ring_failed(e)
                return

    def _loop_hangup(self) -> None:
        if self._broken is None:
            self._read_arrived()
            if self._broken is None:
                self._fail(ServerGone(f"the server at {self.address} is gone (it hung up)"))

    def server_stats(self, timeout: float | None = 10.0, max_bytes: int = 16 << 20) -> dict[str, Any]:
        """The server's statistics (its sessions, their peers, transports, rule
        verdicts and traffic): for a client of the server's own user only
        (PermissionDenied otherwise)."""
        out = Buffer(max_bytes)
        self.send_receive(SERVER_STATS, out, timeout=timeout)
        try:
            data = json.loads(out.value)
        except ValueError as e:
            raise ServerGone(f"the server's statistics are not JSON: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("sessions"), list):
            raise ServerGone("the server's statistics have no sessions")
        return data

    def close(self) -> None:
        """End the session (the server closes its sub-sessions)."""
        with self._lock:
            if self._proto.state == State.OPEN:
                try:
                    self._write(self._proto.close())
                except (OSError, BrokerError):
                    pass
        self._fail(ServerGone("the session is closed"))
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(5)
        for sub in list(self._locals):  # what sub-sessions hold here (rings): a publish after this fails
            try:
                sub._session_ended()
            except Exception:  # noqa: BLE001 - the session ends whatever one of them does
                pass
        with self._fd_lock:
            for fd in self._fd_queue + list(self._passed.values()):
                os.close(fd)
            self._fd_queue, self._passed = [], {}

    # -- what the built-in services' client halves use (src/shmbroker/services/*/client.py) ---------------

    @property
    def max_frame(self) -> int:
        """The largest frame the server takes (its WELCOME said so)."""
        return self._max_frame

    @property
    def spin_ns(self) -> int:
        """How long a wait for a reply spins before it sleeps (connect(spin_us=))."""
        return self._spin_ns

    @property
    def carrier(self) -> ClientRings | None:
        """The session's shared-memory rings, when they carry it (None: the socket does)."""
        return self._rings

    def passed_segment(self, name: str, attach: Callable[[int | None], Any]) -> Any:
        """attach(fd) with the descriptor the server passed for the sealed segment `name` (closed after,
        whatever happens), or attach(None) for a named one."""
        if not name.startswith(MEMFD):
            return attach(None)
        fd = self._receive_fd(name)
        try:
            return attach(fd)
        finally:
            os.close(fd)

    def _receive_fd(self, name: str, timeout: float = 10.0) -> int:
        """The descriptor of the sealed segment `name` that the server passed on this shared-memory
        session's socket, ahead of the message that named it (src/shmbroker/protocol/frames.py, PASSED_FD); ours to
        close. ServerGone if it does not come."""
        with self._fd_lock:
            deadline = time.monotonic() + timeout
            while name not in self._passed:
                left = deadline - time.monotonic()
                if left <= 0 or self._broken is not None or self._rings is None:
                    raise ServerGone(f"the server at {self.address} did not pass the descriptor of {name}")
                if not select.select([self._sock], [], [], left)[0]:
                    continue
                try:
                    data, anc, _flags, _addr = self._sock.recvmsg(
                        4096, socket.CMSG_SPACE(4 * _MAX_FDS), socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
                except BlockingIOError:
                    continue
                except OSError as e:
                    raise ServerGone(f"the server at {self.address} is gone: {e}") from None
                for level, kind, payload in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        got = array.array("i")
                        got.frombytes(payload[: len(payload) - len(payload) % got.itemsize])
                        self._fd_queue.extend(got)
                if not data:
                    raise ServerGone(f"the server at {self.address} closed the session")
                self._fd_buf += data
                try:
                    names = parse_passed_fds(self._fd_buf)
                    for n in names:
                        if not self._fd_queue:
                            raise ProtocolError(f"the passed descriptor of {n} did not come with it")
                        old = self._passed.pop(n, None)
                        if old is not None:
                            os.close(old)
                        self._passed[n] = self._fd_queue.pop(0)
                except ProtocolError as e:
                    raise ServerGone(f"the server at {self.address}: {e}") from None
            return self._passed.pop(name)

    def watch_ring(self, ring: Any) -> None:
        """A ring this process writes without ever waiting for the server (a publisher's): its sends
        fail (Closed) within a tenth of a second of the server's death, seen on a copy of this
        session's socket (Ring.set_alive_fd)."""
        if self._broken is not None:
            raise ServerGone(f"the server at {self.address} is gone")
        ring.set_alive_fd(os.dup(self._sock.fileno()))

    def server_gone(self) -> bool:
        """Is the server gone: the session broke, or its socket hung up?"""
        if self._broken is not None:
            return True
        p = select.poll()
        try:
            p.register(self._sock, select.POLLRDHUP)
        except (OSError, ValueError):
            return True
        return any(ev & (select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL)
                   for _fd, ev in p.poll(0))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Is the session over: closed here, ended by the server, or its server gone (hung up: seen at
        once, even by a session that waits for nothing)?"""
        if self._broken is not None or self._proto.state == State.CLOSED:
            return True
        if self.server_gone():
            self._hangup()
            return True
        return False

    @property
    def close_error(self) -> BaseException | None:
        """Why the session is over (what its calls raise now: ServerGone, Panicked...); None while it lives."""
        if self._broken is None and self.server_gone():
            self._hangup()
        return self._broken

    def on_close(self, callback: Callable[[BaseException], Any]) -> None:
        """Call callback(error) once when the session ends, whatever ends it (close(), the server's close,
        a panic, the server's death: error says which, as close_error). An idle session is told within
        a moment of its server's death: a thread of this process watches the sockets of the sessions
        that asked (one thread for all of them, gone with the last). It runs in that thread, or in
        the one that ended the session; at once, here, if the session is over already."""
        with self._lock:
            if self._broken is None:
                self._on_close.append(callback)
                self._watch()
                return
            error = self._broken
        callback(error)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the session is over (see on_close); False if it still lives after `timeout` s."""
        with self._lock:
            if self._broken is None:
                self._watch()
        return self._ended.wait(timeout) or self.closed

    def _watch(self) -> None:
        if not self._watched:
            self._watched = True
            WATCHER.watch(self, self._sock.fileno())

    def _hangup(self) -> None:
        """The server hung up (the watcher, or closed, saw it): if nobody reads the session, read the
        server's last words here (a PANIC or a CLOSE says why), then end it. A reader sees it itself."""
        aread = self._aread
        if aread is not None and aread.call(self._loop_hangup):
            return  # the loop reads the session: it hears the last words there
        with self._lock:
            if self._broken is not None or self._reading or self._reader is not None:
                return
            self._read_arrived()
            if self._broken is None:
                self._fail(ServerGone(f"the server at {self.address} is gone (it hung up)"))

    # -- machinery ------------------------------------------------------------------

    def _check_thread(self) -> None:
        if not self.sharable and threading.get_ident() != self._owner:
            raise StateError("this session is not sharable: use it from the thread that connected, "
                             "or connect(sharable=True)")

    def _submit(self, code: int, args: tuple[Any, ...], handle: int, asynchronous: bool, fut: Any) -> int:
        """Send the request; `fut` (a Future, or an _Inline) gets its outcome. The request's id."""
        if len(args) > 4:
            raise TypeError("at most four arguments")
        wire = list(map(to_arg, args))
        with self._lock:
            if self._broken is not None:
                raise self._broken
            if asynchronous and self._async >= self.slots:
                raise ServerBusy(f"all {self.slots} message slots of this session are in use")
            try:
                rid, frame = self._proto.request(code, wire, handle, asynchronous)
            except ProtocolError:
                if self._proto.state is not State.CLOSED:
                    raise
                raise ServerGone("the session is closed") from None  # as close() says it
            if asynchronous:  # (taken once the request is made: a refused one takes no slot)
                self._async += 1
            self._pending[rid] = (fut, args, asynchronous)
            try:
                self._write(frame)
                return rid
            except (OSError, BrokerError) as e:
                error = e
        if self._reader is None and self._rings is None:
            self._read_last_words()  # a PANIC or a CLOSE before the break says why it broke
        self._fail(ServerGone(f"the server at {self.address} is gone: {error}"))
        raise self._broken from error  # type: ignore[misc]

    def _read_last_words(self) -> None:
        """The connection broke as this thread wrote to it: what the server sent before it went."""
        try:
            data = self._carrier.take_nowait()
        except CarrierGone:
            return
        if data is not None:
            self._dispatch(data)

    def _call_rings(self, code: int, args: tuple[Any, ...], handle: int) -> int | None:
        """send_receive's short way on a shared-memory session with no reader
        thread and nothing else outstanding: the request written, its reply
        waited for and, in the common case, taken, in one C call (the rings'
        `call`); anything else it gives back is handled as the long way does.
        None: not that case (nothing was sent): take the long way."""
        rings, proto, lock = self._rings, self._proto, self._lock
        assert rings is not None
        inline = _Inline()
        lock.acquire()  # not `with`: it costs twice as much, on every call
        try:
            if (self._reader is not None or self._broken is not None or self._pending or self.sharable
                    or proto.reader.pending):  # a piece of a split frame waits: the long way reads on from it
                return None
            try:
                rid = proto.begin_request(False)
            except ProtocolError:  # closed by another thread just now (close() closes the protocol first)
                if proto.state is not State.CLOSED:
                    raise
                raise ServerGone("the session is closed") from None  # as close() says it
            self._reading += 1  # reading inline: a reader thread waits for _end_inline
            self._pending[rid] = (inline, args, False)
        finally:
            lock.release()
        reading = True
        try:
            # with the GIL held while it sends: atomic against close() from another thread
            r = rings.call(rid, code, handle, args, CALL_WAIT_NS, self._max_frame)
            if type(r) is int:  # the simple completion: its writes are in the Buffers
                lock.acquire()
                try:
                    self._pending.pop(rid, None)
                    proto.outstanding.pop(rid, None)  # forget_request, inline: this runs on every call
                    self._reading -= 1  # _end_inline, inline
                    reading = False
                    if self._handover and not self._reading:
                        self._start_reader()
                finally:
                    lock.release()
                if self._aread is not None:
                    self._rearm()
                return r if r >= 0 else result_of(Complete(rid, r))
            if r is NotImplemented:  # not sent: an argument of another kind, a big frame, a full ring
                with lock:
                    self._pending.pop(rid, None)
                    proto.forget_request(rid)
                return None
            if type(r) is bytes:  # a reply, but not the simple one: as the long way takes it
                self._received_events(r, None)
                self._read_inline(inline, None)
            elif r[0] == _RING_TIMEOUT and len(r) == 1:  # sent, no reply yet: wait as the long way waits
                self._read_inline(inline, None)
            else:
                error = rings.call_error(r)
                if len(r) == 2:  # not sent: the ring is unusable
                    self._fail(ServerGone(f"the server at {self.address} is gone: {error}"))
                else:
                    self._ring_failed(error)  # type: ignore[arg-type]
        finally:
            if reading:
                self._end_inline()
        return self._wait(inline, rid, None)

    def _write(self, frame: "bytes | tuple[bytes, ...]") -> None:
        """A frame to the server, on the session's carrier (with the lock held). On the thread of the loop
        that reads the session it never waits for room: what the carrier does not take now waits in
        _out, in order, and goes as the server reads (_flush_out; a blocking read first sends it all:
        _flush_blocking). Else it waits for room while the server lives (it always reads)."""
        aread = self._aread
        if aread is None or threading.get_ident() != aread.thread or aread.loop.is_closed() or self._reading:
            if self._out:
                self._flush_blocking()
            self._carrier.send(frame)
            return
        if self._out:
            self._out.append(frame)
            return
        rest = self._carrier.send_nowait(frame)
        if rest is not None:
            self._out.append(rest)
            self._flush_soon(aread)

    def _flush_blocking(self) -> None:
        """What waits in _out, sent now, waiting for room (a blocking call is about to wait anyway)."""
        with self._lock:
            while self._out:
                self._carrier.send(self._out.popleft())

    def _flush_soon(self, aread: "_LoopReader") -> None:
        """_out is sent when there is room: a socket's, when the loop says it is writable; a ring's, looked
        at between short sleeps on the loop (a producer waiting for room sleeps on a futex)."""
        if self._rings is None:
            aread.want_write(self._flush_out)
        elif not self._flush_due:
            self._flush_due = True
            aread.loop.call_later(self._flush_nap, self._flush_out)
            self._flush_nap = min(self._flush_nap * 2, _FLUSH_NAP_MAX)

    def _flush_out(self) -> None:
        """The loop's: what waits in _out, as far as the carrier takes it now."""
        self._flush_due = False
        error: BaseException | None = None
        with self._lock:
            aread = self._aread
            if self._broken is not None or aread is None:
                self._out.clear()
                return
            try:
                while self._out:
                    rest = self._carrier.send_nowait(self._out[0])
                    if rest is not None:
                        self._out[0] = rest
                        break
                    self._out.popleft()
            except (OSError, BrokerError) as e:
                error = e
            if error is None:
                if self._out:
                    self._flush_soon(aread)
                else:
                    self._flush_nap = _FLUSH_NAP_MIN
                    aread.want_write(None)
        if error is not None:
            self._fail(ServerGone(f"the server at {self.address} is gone: {error}"))

    def _wait(self, fut: "Future[int] | _Inline", rid: int, timeout: float | None) -> int:
        try:
            return fut.result(timeout)
        except TimeoutError:
            if fut.done():  # settled just now, after the look above (by _fail in another thread, say)
                return fut.result(0)
            broken = self._broken
            if broken is not None:
                # the session ended while this call was read for: _fail is about to settle it with this
                raise broken from None
            with self._lock:
                if self._pending.pop(rid, None) is not None and self._proto.state == State.OPEN:
                    try:
                        self._write(self._proto.cancel(rid))
                    except (OSError, BrokerError):
                        pass
            raise Timeout(f"no answer within {timeout} s") from None

    def _begin_inline(self) -> bool:
        """Unsharable, no reader thread: this (the owner) thread will read the
        socket; decided and announced in one step, so a reader thread cannot
        start meanwhile (_background waits for _end_inline). False: a reader thread reads."""
        with self._lock:
            if self._reader is not None or self.sharable:
                return False
            self._reading += 1  # a count: a done-callback run while reading may wait on another reply
            return True

    def _end_inline(self) -> None:
        with self._lock:
            self._reading -= 1
            if self._handover and not self._reading:
                self._start_reader()
        if self._aread is not None:
            self._rearm()

    def _read_arrived(self) -> None:
        """Inline mode: dispatch what has already arrived, without waiting."""
        take = self._carrier.take_nowait
        while self._broken is None:
            try:
                data = take()
            except CarrierGone as e:
                self._fail(ServerGone(str(e)))
                return
            if data is None:
                return
            self._dispatch(data)

    def _background(self) -> None:
        """From now on a reader thread reads the socket (at once, or when the
        owner thread stops reading inline)."""
        with self._lock:
            if self._reader is not None or self._broken is not None:
                return
            aread = self._aread
            if aread is not None:
                if not aread.loop.is_closed():
                    return  # the loop reads
                self._aread = None
                aread.detach()
            if self._reading:
                self._handover = True
            else:
                self._start_reader()

    def _read_inline(self, fut: Any, timeout: float | None) -> None:
        """Unsharable, no reader thread: read the carrier here until `fut` is done (or the timeout
        passed: then _wait raises Timeout). The carrier spins, then sleeps (transport/carrier.py)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        take = self._carrier.take
        if self._out:  # (a loop's writes wait there: this thread waits now, so they go first)
            try:
                self._flush_blocking()
            except (OSError, BrokerError) as e:
                self._fail(ServerGone(f"the server at {self.address} is gone: {e}"))
                return
        while not fut.done() and self._broken is None:
            try:
                data = take(deadline)
            except CarrierGone as e:
                self._fail(ServerGone(str(e)))
                return
            if data is None:
                return
            self._dispatch(data)

    def _ring_failed(self, e: BrokerError) -> None:
        """A C call on the rings failed: what the carrier says it means ends the session."""
        self._fail(ServerGone(str(self._rings.gone(e))))  # type: ignore[union-attr]

    def _start_reader(self) -> None:
        with self._lock:
            if self._reader is None and self._broken is None:
                self._reader = threading.Thread(target=self._read_loop, name=f"broker-client {self.address}",
                                                daemon=True)
                self._reader.start()

    def _read_loop(self) -> None:
        """The reader thread: from now on only it reads the carrier."""
        take = self._carrier.take
        while self._broken is None:
            try:
                data = take(None)
            except CarrierGone as e:
                self._fail(ServerGone(str(e)))
                return
            if data is not None:
                self._dispatch(data)

    def _dispatch(self, data: bytes | memoryview) -> None:
        """Match completions to their requests; the outcomes are given after the
        lock is released (see _settle)."""
        self._received_events(data, None)

    def _received_events(self, data: bytes | memoryview, events: list[Any] | None) -> None:
        """_dispatch, for `data` or (not None) the events the protocol already made of it."""
        settled: list[tuple[Any, Any]] = []
        failure: BaseException | None = None
        notes: list[Notify] = []
        with self._lock:
            if events is None:
                try:
                    events = self._proto.receive(data)
                except ProtocolError as e:
                    events, failure = [], ServerGone(f"the server sent something invalid: {e}")
            for ev in events:
                if isinstance(ev, Complete):
                    entry = self._pending.pop(ev.request_id, None)
                    if entry is None:
                        continue  # timed out and cancelled: nobody waits
                    fut, args, asynchronous = entry
                    if asynchronous:
                        self._async -= 1
                    apply_writes(args, ev)
                    try:
                        settled.append((fut, result_of(ev)))
                    except BrokerError as e:
                        settled.append((fut, e))
                elif isinstance(ev, Notify):
                    notes.append(ev)
                elif isinstance(ev, Panic):
                    failure = Panicked(ev.reason)
                    break
                else:  # Close
                    failure = ServerGone(f"the server closed the session: {getattr(ev, 'reason', '')}")
                    break
        for fut, outcome in settled:
            _settle(fut, outcome)
        if notes:
            self._notified(notes)
        if failure is not None:
            self._fail(failure)

    def _notified(self, notes: list[Notify]) -> None:
        """What the server said first: to the on_notify callbacks, and to notifications()' queue (bounded:
        the oldest go first, counted in notifications_lost)."""
        with self._note_cond:
            for note in notes:
                if len(self._notes) >= NOTIFY_QUEUE:
                    self._notes.popleft()
                    self.notifications_lost += 1
                self._notes.append(note)
            self._note_cond.notify_all()
            callbacks = list(self._on_notify)
        for note in notes:
            for callback in callbacks:
                try:
                    callback(note)
                except Exception as e:  # noqa: BLE001 - a callback's bug is its own
                    log.warning("an on_notify callback raised %r", e)

    def on_notify(self, callback: Callable[[Notify], Any]) -> None:
        """Call callback(notification) for each notification the server sends (Session.notify on its
        side): notification.code and .data. It runs in the session's reader thread, which this starts:
        an idle session hears its server too."""
        with self._note_cond:
            self._on_notify.append(callback)
        self._background()

    def notifications(self, timeout: float | None = None) -> Iterator[Notify]:
        """The notifications the server sends, as they come (the NOTIFY_QUEUE last ones are kept); the
        iteration ends when the session does, or when none came for `timeout` seconds."""
        self._background()
        while True:
            with self._note_cond:
                if not self._notes:
                    self._note_cond.wait_for(lambda: self._notes or self._broken is not None, timeout)
                if not self._notes:
                    return
                note = self._notes.popleft()
            yield note

    def _fail(self, err: BaseException) -> None:
        """The session is over: every pending request gets the error (outside the lock)."""
        with self._lock:
            tell: list[Callable[[BaseException], Any]] = []
            if self._broken is None:
                self._broken = err
                tell, self._on_close = self._on_close, []
            pending, self._pending = self._pending, {}
            self._async = 0
            aread, self._aread = self._aread, None
            if aread is not None:
                aread.detach()
            self._out.clear()
            if self._watched:
                self._watched = False
                WATCHER.forget(self._sock.fileno())  # before the close: its number may be reused at once
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            if self._rings is not None:
                self._rings.close()  # interrupts a reader thread waiting in it (Closed)
            broken = self._broken
        for fut, _, _ in pending.values():
            _settle(fut, broken)
        self._ended.set()
        with self._note_cond:
            self._note_cond.notify_all()  # notifications() ends
        for callback in tell:
            try:
                callback(broken)
            except Exception as e:  # noqa: BLE001 - a callback's bug is its own; the others are told
                log.warning("a session's on_close callback raised %r", e)


def connect(address: str, version: tuple[int, int, int] = (1, 0, 0), *, slots: int = 4, sharable: bool = False,
            timeout: float = 5.0, socket_only: bool = False, server_uid: int | None = None,
            spin_us: float = 50.0, busy_poll: bool = False, ring_capacity: int | None = None,
            key: "str | Key | bool | None" = None, session_class: type[ClientSession] = ClientSession) -> ClientSession:
    """Open a session with the server at `address` (a name, a Unix socket path, or tcp://host:port).

    spin_us: how long a synchronous call polls for its reply before it sleeps
    (0: sleep at once; a reply within that time saves a sleep and a wake-up).
    busy_poll: poll for replies without ever sleeping (latency mode: the
    waiting thread keeps its core busy); off by default.
    ring_capacity: bytes to ask for each of the two rings of a shared-memory
    session (None: the server's default); the server grants the next power of
    two within its limits (Server(shm_max_capacity=)); the session's
    ring_capacity says what it got. A frame larger than a ring still travels
    (in pieces), so this is about how much may be in flight, not a size limit.

    server_uid: refuse (PermissionDenied) unless the kernel says the server runs as this user (Unix sockets).

    session_class: what to make of the connection (broker.connect makes broker.ClientSession, with the
    built-in services' calls: publisher(), subscriber(), offer(), link(), topics()).

    key (TCP only; a Unix socket's peers are known to the kernel): the key to
    prove this client with, and to make the server prove itself with: a
    keys file's path (its first key), a broker.Key, None (the first key of
    $BROKER_KEYS or ~/.config/broker/keys, if that file is there) or False (no
    key: only a server run with insecure_tcp takes it). With a key, a server
    that does not prove it holds the same key is refused (PermissionDenied)."""
    _not_in_a_loop("connect")
    addr, mine, spin_us = _connect_args(address, spin_us, busy_poll, ring_capacity, key)
    fds: list[int] = []  # descriptors the server passed (the doorbell of an offer)
    sock = socket.socket(addr.family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(addr.target)
    except PermissionError as e:
        sock.close()
        raise PermissionDenied(f"not allowed to reach the server at {address}: {e}") from None
    except (FileNotFoundError, ConnectionRefusedError, socket.timeout, OSError) as e:
        sock.close()
        raise ServerNotFound(f"no server at {address}: {e}") from None
    steps = _handshake(sock, addr.is_unix, address, version, slots, sharable, socket_only, server_uid, spin_us,
                       ring_capacity, mine, fds)
    reply: Any = None
    error: BaseException | None = None
    while True:  # the handshake's I/O, blocking (aconnect does it on the loop)
        try:
            op, data = steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as done:
            proto, rings = done.value
            break
        reply = error = None
        try:
            if op == "send":
                sock.sendall(data)
            else:
                reply = _recv_with_fds(sock, fds) if addr.is_unix else sock.recv(_RECV)
        except BaseException as e:  # noqa: BLE001 - the handshake says what it means
            error = e
    sock.settimeout(None)
    return session_class(sock, address, proto, proto.welcome, sharable, spin_us, rings)


def _not_in_a_loop(what: str) -> None:
    """A call that blocks, made from a thread that runs an asyncio loop, would stall the loop (and a server
    that serves on the same loop would never answer it): StateError at once, naming the async call."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise StateError(f"{what}() blocks, and this thread runs an asyncio event loop: await broker.a{what}(...) "
                     f"instead (or call {what}() from another thread)")


def _connect_args(address: str, spin_us: float, busy_poll: bool, ring_capacity: int | None,
                  key: "str | Key | bool | None") -> tuple[Any, Key | None, float]:
    if not spin_us >= 0:
        raise ValueError("spin_us must be >= 0")
    if ring_capacity is not None and not 1 <= ring_capacity <= 1 << 31:
        raise ValueError("ring_capacity must be from 1 to 2**31 bytes (or None: the server's default)")
    if busy_poll:
        spin_us = _BUSY_POLL_US
    addr = _address.parse_client(address)  # a bare name: this user's server, else the system-wide one
    mine = None if addr.is_unix else _keys.client_key(key)  # KeyFileError before anything is sent
    return addr, mine, spin_us


def _handshake(sock: socket.socket, is_unix: bool, address: str, version: tuple[int, int, int], slots: int,
               sharable: bool, socket_only: bool, server_uid: int | None, spin_us: float,
               ring_capacity: int | None, mine: Key | None, fds: list[int]) -> Any:
    """The handshake on a connected socket, sans-IO: it yields ("send", bytes) and ("recv", None), is sent
    what a recv read (with the descriptors in `fds`) and thrown what an I/O step raised; it returns
    (proto, rings). connect() drives it blocking, aconnect() on the loop. On any failure the socket is
    closed and the error is the one connect() has always raised."""
    rings: ClientRings | None = None
    try:
        if is_unix and server_uid is not None:
            pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            if uid != server_uid:
                raise PermissionDenied(f"the server at {address} runs as uid {uid}, not {server_uid}")
        if not is_unix:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        proto = ClientConnection()
        try:
            yield "send", proto.hello(Hello(tuple(version), slots, sharable, socket_only,  # type: ignore[arg-type]
                                            ring_capacity or 0))
        except (BrokenPipeError, ConnectionResetError):
            pass  # a server that refuses at once (busy) may have closed already: its REFUSE is there to read
        refused: dict[int, type[BrokerError]] = {Status.SERVER_BUSY: ServerBusy, Status.PERMISSION_DENIED: PermissionDenied}
        nonce = b""
        while proto.state in (State.HANDSHAKE, State.AUTH) or proto.offer_due:
            data = yield "recv", None
            if not data:
                raise ServerGone(f"the server at {address} closed the connection during the handshake")
            for ev in proto.receive(data):
                if isinstance(ev, Refuse):
                    what = f"the server at {address} refused the session: {ev.reason}"
                    cls = refused.get(ev.status)
                    raise cls(what) if cls is not None else VersionRefused(what, ev.status)
                if isinstance(ev, Challenge):
                    if mine is None:
                        raise PermissionDenied(
                            f"the server at {address} asks for a key: connect(key=) with a keys file, or set "
                            f"${_keys.KEYS_ENV} (`broker keygen` makes one; the server's operator adds it)")
                    nonce = secrets.token_bytes(_keys.NONCE_BYTES)
                    yield "send", proto.auth(nonce, _keys.client_proof(mine, proto.hello_body, ev.nonce, nonce),
                                             mine.name)
        assert proto.welcome is not None
        if mine is not None:
            if proto.server_proof is None:
                raise PermissionDenied(
                    f"the server at {address} did not ask for key {mine.name!r}, so it cannot prove it is the server "
                    f"that holds it (it runs with --insecure-tcp, or it is another server): connect(key=False) "
                    f"talks to it without a key")
            assert proto.challenge is not None
            if not _keys.check(_keys.server_proof(mine, proto.hello_body, proto.challenge, nonce), proto.server_proof):
                raise PermissionDenied(f"the server at {address} could not prove it holds key {mine.name!r}: "
                                       f"it is not the server that key is for")
        if proto.offer is not None:
            rings, answer = _take_offer(proto, fds, spin_us, address)
            yield "send", answer
        for fd in fds:  # nothing else is expected; never leak what a server sends
            os.close(fd)
        fds.clear()
    except BaseException as e:
        if rings is not None:
            rings.close()
        for fd in fds:
            os.close(fd)
        fds.clear()
        sock.close()
        if isinstance(e, (VersionRefused, PermissionDenied, ServerGone, ServerBusy)) or not isinstance(
                e, (ProtocolError, socket.timeout, OSError)):
            raise
        raise ServerNotFound(f"no broker server at {address}: {e}") from None
    return proto, rings


async def aconnect(address: str, version: tuple[int, int, int] = (1, 0, 0), *, slots: int = 4,
                   sharable: bool = False, timeout: float = 5.0, socket_only: bool = False,
                   server_uid: int | None = None, spin_us: float = 50.0, busy_poll: bool = False,
                   ring_capacity: int | None = None, key: "str | Key | bool | None" = None,
                   session_class: type[ClientSession] = ClientSession) -> ClientSession:
    """connect() for asyncio, with the same arguments: the connection and the handshake go through the
    running loop (never blocking it), so a server that serves on this same loop (serve_async) answers.
    The session's asynchronous calls (asend_receive, acall, aclose...) are read by this loop."""
    addr, mine, spin_us = _connect_args(address, spin_us, busy_poll, ring_capacity, key)
    loop = asyncio.get_running_loop()
    fds: list[int] = []
    sock = socket.socket(addr.family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, addr.target)
    except PermissionError as e:
        sock.close()
        raise PermissionDenied(f"not allowed to reach the server at {address}: {e}") from None
    except (FileNotFoundError, ConnectionRefusedError, TimeoutError, OSError) as e:
        sock.close()
        raise ServerNotFound(f"no server at {address}: {e or 'no answer within ' + str(timeout) + ' s'}") from None
    except BaseException:  # cancelled
        sock.close()
        raise
    steps = _handshake(sock, addr.is_unix, address, version, slots, sharable, socket_only, server_uid, spin_us,
                       ring_capacity, mine, fds)
    reply: Any = None
    error: BaseException | None = None
    deadline = loop.time() + timeout
    try:
        while True:
            try:
                op, data = steps.send(reply) if error is None else steps.throw(error)
            except StopIteration as done:
                proto, rings = done.value
                break
            reply = error = None
            try:
                async with asyncio.timeout_at(deadline):
                    if op == "send":
                        await loop.sock_sendall(sock, data)
                    elif addr.is_unix:
                        reply = await _arecv_with_fds(loop, sock, fds)
                    else:
                        reply = await loop.sock_recv(sock, _RECV)
            except TimeoutError:
                error = socket.timeout(f"no answer within {timeout} s")
            except asyncio.CancelledError:
                steps.close()  # (a generator's close runs its cleanup: the socket closed, descriptors too)
                raise
            except Exception as e:  # noqa: BLE001 - the handshake says what it means
                error = e
    except BaseException:
        if sock.fileno() >= 0:
            sock.close()
        for fd in fds:
            os.close(fd)
        raise
    sock.setblocking(True)
    return session_class(sock, address, proto, proto.welcome, sharable, spin_us, rings)


async def _arecv_with_fds(loop: asyncio.AbstractEventLoop, sock: socket.socket, fds: list[int]) -> bytes:
    """_recv_with_fds on a non-blocking socket, waiting through the loop."""
    while True:
        try:
            return _recv_with_fds(sock, fds)
        except BlockingIOError:
            pass
        ready: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(sock.fileno(), readable)
        try:
            await ready
        finally:
            loop.remove_reader(sock.fileno())


def _recv_with_fds(sock: socket.socket, fds: list[int]) -> bytes:
    """recv that keeps the descriptors the server passes (SCM_RIGHTS); they are ours to close."""
    data, ancillary, _flags, _addr = sock.recvmsg(_RECV, socket.CMSG_SPACE(4 * _MAX_FDS))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(payload[: len(payload) - len(payload) % got.itemsize])
            fds.extend(got)
    return data


def _take_offer(proto: ClientConnection, fds: list[int], spin_us: float,
                address: str) -> "tuple[ClientRings | None, bytes]":
    """Map the rings the server offered and prove it (their nonce: the answer to send), or decline with
    the reason (the socket carries the session)."""
    offer = proto.offer
    assert offer is not None
    try:
        if len(fds) not in (2, 3):
            raise SegmentError(errno.EPROTO, f"the offer came with {len(fds)} descriptors, not a doorbell, a "
                                             f"segment and (a server of this version) ring 1's bell")
        doorbell, segment, bell = fds if len(fds) == 3 else (*fds, -1)
        fds.clear()  # ClientRings owns them now, whatever happens
        rings = ClientRings(offer.name, doorbell, segment, spin_us, address, bell)
        if rings.capacity != offer.capacity:
            rings.close()
            raise SegmentError(errno.EPROTO, f"the offer says rings of {offer.capacity} bytes, the segment has "
                                             f"{rings.capacity}")
    except (BrokerError, OSError, ValueError) as e:  # cannot map it: the socket carries the session
        return None, proto.decline_shm(f"{type(e).__name__}: {e}")
    return rings, proto.accept_shm(rings.nonce)


class SubSession:
    """A handle to a server object, opened through a session (Symbian's RSubSessionBase)."""

    def __init__(self, session: ClientSession, handle: int) -> None:
        self.session = session
        self.handle = handle
        session._locals.add(self)

    def _session_ended(self) -> None:
        """The session was closed: let go of what this holds in this process (a subclass's rings)."""
        self.handle = 0

    @classmethod
    def open(cls, session: ClientSession, code: int, *args: Any, timeout: float | None = None) -> "SubSession":
        """Send `code`; the service opens an object and completes with its handle."""
        handle = session.send_receive(code, *args, timeout=timeout)
        if handle <= 0:
            raise BadHandle(f"function {code} completed with {handle}, not a sub-session handle")
        return cls(session, handle)

    def send_receive(self, code: int, *args: Any, timeout: float | None = None) -> int:
        return self.session.send_receive(code, *args, timeout=timeout, handle=self.handle)

    def send(self, code: int, *args: Any) -> "Future[int]":
        return self.session.send(code, *args, handle=self.handle)

    def close(self) -> None:
        if self.handle:
            h, self.handle = self.handle, 0
            if not self.session.closed and not self.session.server_gone():  # (a dead server closed it already)
                self.session.send_receive(CLOSE_SUBSESSION, handle=h)

    async def asend_receive(self, code: int, *args: Any) -> int:
        return await self.session.asend_receive(code, *args, handle=self.handle)

    async def aclose(self) -> None:
        """close() for asyncio: the server's part awaited."""
        if self.handle:
            h, self.handle = self.handle, 0
            if not self.session.closed and not self.session.server_gone():
                await self.session.asend_receive(CLOSE_SUBSESSION, handle=h)

    async def __aenter__(self) -> "SubSession":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Function:
    """One named function of a session class, for a client: calling it is send_receive(code, ...);
    .call(...) gives the reply as bytes (ClientSession.call). A function with a serializer takes
    objects and gives one back, either way."""

    __slots__ = ("_session", "code", "name", "serializer")

    def __init__(self, session: "ClientSession", name: str, code: int, serializer: Any = None) -> None:
        self._session, self.name, self.code = session, name, code
        self.serializer = _serializer(serializer)

    def __call__(self, *args: Any, timeout: float | None = None) -> Any:
        if self.serializer is not None:
            return self._session.call(self.code, *args, timeout=timeout, serializer=self.serializer)
        return self._session.send_receive(self.code, *args, timeout=timeout)

    def call(self, *args: Any, timeout: float | None = None) -> Any:
        return self._session.call(self.code, *args, timeout=timeout, serializer=self.serializer)

    def __repr__(self) -> str:
        return f"<function {self.name} (code {self.code})>"


class Functions:
    """A session's functions by name (broker.functions): spec is a Session class whose methods
    @broker.function(code) marks (with their serializers), or a {name: code} mapping (serializer=
    for all of them)."""

    def __init__(self, session: "ClientSession", spec: Any, serializer: Any = None) -> None:
        table = getattr(spec, "functions", None) if isinstance(spec, type) else spec
        if not isinstance(table, dict) or not table:
            raise TypeError("functions() takes a Session class with @broker.function methods, or {name: code}")
        sers = dict(getattr(spec, "serializers", {})) if isinstance(spec, type) else {}
        for name, code in table.items():
            if not isinstance(name, str) or not name.isidentifier() or type(code) is not int:
                raise TypeError(f"a function is a name and an int code, not {name!r}: {code!r}")
            setattr(self, name, _Function(session, name, code, sers.get(name, serializer)))


def functions(session: "ClientSession", spec: Any, *, serializer: Any = None) -> Functions:
    """Call a server's functions by name: functions(session, Calc).add(2, 3) is
    session.send_receive(Calc's code for add, 2, 3); .add.call(...) gives the reply as bytes. A
    function the class marks with a serializer (or every one, with serializer=) takes and gives
    objects."""
    return Functions(session, spec, serializer)
