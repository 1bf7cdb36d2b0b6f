"""The server side of the model: peers, messages, sessions, policies, events, reference-counted objects."""
from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass, field
import inspect
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

from shmbroker._errors import BadHandle, BrokerError, Overflow, StateError
from shmbroker.protocol.codes import CLOSE_SUBSESSION as CLOSE_SUBSESSION, SERVER_STATS as SERVER_STATS  # the framework's own codes
from shmbroker.protocol.handles import ObjectIndex
from shmbroker.protocol.serial import DecodeError, serializer as _serializer
from shmbroker.protocol.frames import Arg, ArgKind, ServerConnection, State, Status, complete_frame, text_bytes
from shmbroker.framework.native import MessageBase, declare

if TYPE_CHECKING:
    _F = TypeVar("_F", bound=Callable[..., Any])  # a method @function marks, as it is

_OPEN = State.OPEN
_K_READ, _K_WRITE, _K_READWRITE = int(ArgKind.READ), int(ArgKind.WRITE), int(ArgKind.READWRITE)

# The session whose request the server is serving (set by the server around session.service; an async
# service's task inherits it): what a Container.add is charged to until its object is opened.
SERVING: contextvars.ContextVar["Session | None"] = contextvars.ContextVar("broker_serving", default=None)



@dataclass(frozen=True)
class Peer:
    """Who is at the other end, as the kernel says (never as the client says)."""

    connection_id: int
    transport: str  # "unix" or "tcp"
    pid: int | None = None  # Unix sockets: SO_PEERCRED
    uid: int | None = None
    gid: int | None = None
    address: tuple[str, int] | None = None  # TCP: the peer's address
    identity: str | None = None  # TCP: "key:NAME" once it proved it holds that key (None: plain TCP, or Unix)
    facts: Any = field(default=None, compare=False, repr=False)  # Unix: _identity.Facts, what the kernel said at accept

    def __str__(self) -> str:
        if self.transport == "unix":
            return f"connection {self.connection_id} (pid {self.pid}, uid {self.uid})"
        if not self.address:
            return f"connection {self.connection_id} (?)"
        who = f", {self.identity}" if self.identity else ""
        return f"connection {self.connection_id} ({self.address[0]}:{self.address[1]}{who})"


class Message(MessageBase):
    """One request: a function code and four arguments (Symbian's RMessage2).

    complete() must be called exactly once, from any thread, now or later.

    The fields (_conn, request_id, code, handle, asynchronous, _args, _writes,
    _done) live in the C base class (csrc/py/server.c), which also takes the
    common case of read(), write() and complete(); _read, _write and
    _complete below are those methods in full, and every other case goes to
    them.
    """

    __slots__ = ()

    def __init__(self, conn: Any, request_id: int, code: int, args: tuple[Arg, ...], handle: int,
                 asynchronous: bool) -> None:
        self._conn = conn  # its lock (conn.lock) also guards this message's writes and its completion
        self.request_id = request_id
        self.code = code
        self.handle = handle
        self.asynchronous = asynchronous
        self._args = args
        self._writes: dict[int, bytes | bytearray] | None = None  # argument -> its new content
        self._done = False

    @property
    def session(self) -> "Session":
        session: Session = self._conn.session
        return session

    @property
    def peer(self) -> Peer:
        peer: Peer = self._conn.peer
        return peer

    @property
    def connection(self) -> Any:
        """The connection it came on (the server's books for it: ended, peer, pass_fd...)."""
        return self._conn

    @property
    def args(self) -> tuple[Any, Any, Any, Any]:
        """Each argument as Python sees it: an int, bytes (read), a handle (int), or None."""
        out: list[Any] = []
        for a in self._args:
            if a.kind in (ArgKind.INT, ArgKind.HANDLE):
                out.append(a.value)
            elif a.kind in (ArgKind.READ, ArgKind.READWRITE):
                out.append(a.data if type(a.data) is bytes else bytes(a.data))  # (a big frame's: a view)
            else:
                out.append(None)
        return out[0], out[1], out[2], out[3]

    def _arg(self, i: int) -> Arg:
        if not 0 <= i < len(self._args):
            raise IndexError(f"argument {i}: a message has 4")
        return self._args[i]

    def kind(self, i: int) -> ArgKind:
        return self._arg(i).kind

    def integer(self, i: int) -> int:
        a = self._arg(i)
        if a.kind != ArgKind.INT:
            raise BrokerError(f"argument {i} is {a.kind.name}, not INT")
        return a.value

    def length(self, i: int) -> int:
        """Current length of a buffer argument (after any write)."""
        if self._writes and i in self._writes:
            return len(self._writes[i])
        a = self._arg(i)
        return len(a.data)

    def max_length(self, i: int) -> int:
        """Largest length a buffer argument can hold."""
        return self._arg(i).max_length

    def _read(self, i: int, offset: int = 0, size: int | None = None) -> bytes:
        """read(): bytes of a readable buffer argument from `offset`."""
        data = self._readable(i, offset)
        if offset == 0 and size is None and type(data) is bytes:
            return data
        part = data[offset:] if size is None else data[offset : offset + size]
        return part if type(part) is bytes else bytes(part)

    def _readable(self, i: int, offset: int) -> "bytes | memoryview":
        """A readable argument's content (bytes, or a view of the big frame it came in), offset checked."""
        if not 0 <= i < 4:
            raise IndexError(f"argument {i}: a message has 4")
        a = self._args[i]
        kind = a.kind
        if kind != _K_READ and kind != _K_READWRITE:
            raise BrokerError(f"argument {i} is {a.kind.name}: nothing to read")
        w = self._writes
        data = bytes(w[i]) if w and i in w else a.data
        if not 0 <= offset <= len(data):
            raise Overflow(f"read at offset {offset} of a {len(data)}-byte argument")
        return data

    def read_view(self, i: int, offset: int = 0, size: int | None = None) -> memoryview:
        """A read-only view of a readable argument's bytes from `offset`: no copy. A big argument
        (a request of 64 KiB or more) is read where it was gathered, straight from the session's
        ring or socket; the view stays good after complete(), for as long as it is held."""
        data = self._readable(i, offset)
        view = memoryview(data).toreadonly() if type(data) is not memoryview else data
        return view[offset:] if size is None else view[offset : offset + size]

    def read_into(self, i: int, buffer: Any, offset: int = 0) -> int:
        """Copy a readable argument's bytes from `offset` into `buffer` (any writable buffer: a
        bytearray, a numpy array, a mmap...): one copy. Returns how many: all that is left of the
        argument from `offset`, or as many as fit."""
        data = self._readable(i, offset)
        with memoryview(buffer) as out, out.cast("B") as dst:
            n = min(len(data) - offset, dst.nbytes)
            dst[:n] = memoryview(data)[offset : offset + n]
        return n

    def _write(self, i: int, data: bytes | bytearray | memoryview, offset: int = 0) -> None:
        """write(): into the client's writable argument at `offset`; its length
        becomes offset + len(data). Overflow past its max length (nothing written)."""
        if not 0 <= i < 4:
            raise IndexError(f"argument {i}: a message has 4")
        a = self._args[i]
        kind = a.kind
        if kind != _K_WRITE and kind != _K_READWRITE:
            raise BrokerError(f"argument {i} is {a.kind.name}: not writable")
        data = bytes(data)  # the caller's buffer may change after this call
        if offset < 0 or offset + len(data) > a.value:  # value: a writable argument's max length
            raise Overflow(f"writing {len(data)} bytes at {offset} into argument {i} of max length {a.max_length}")
        lock = self._conn.lock
        lock.acquire()  # not `with`: it costs twice as much, on every message
        try:
            if self._done:
                if self._cancel is True:
                    return  # the client cancelled it, and the framework completed it: nobody reads this
                raise StateError("the message is already complete")
            writes = self._writes
            if writes is None:
                writes = self._writes = {}
            if offset == 0:  # the whole new content
                writes[i] = data
                return
            old = writes.get(i)
            buf = bytearray(a.data if a.kind == ArgKind.READWRITE else b"") if old is None else bytearray(old)
            if offset > len(buf):
                raise Overflow(f"write at offset {offset} beyond the argument's length {len(buf)}")
            buf[offset:] = data
            writes[i] = buf
        finally:
            lock.release()

    def _complete_parts(self, status: int, i: int, parts: tuple[bytes, ...]) -> None:
        """write(i, b"".join(parts)) then complete(status), without joining them on a socket session:
        the completion goes out as its parts (the services' own big answers: a topic's relayed batch).
        The parts must not change afterwards."""
        if self._conn.on_rings:  # a ring record is a copy anyway
            self.write(i, b"".join(parts))
            self.complete(status)
            return
        a = self._arg(i)
        if a.kind != _K_WRITE and a.kind != _K_READWRITE:
            raise BrokerError(f"argument {i} is {a.kind.name}: not writable")
        size = sum(map(len, parts))
        if size > a.value:
            raise Overflow(f"writing {size} bytes into argument {i} of max length {a.max_length}")
        lock = self._conn.lock
        lock.acquire()
        try:
            if self._done:
                raise StateError("the message is already complete")
            self._writes = {i: parts}  # type: ignore[dict-item]  # (its parts, sent as they are: its whole new content, what any earlier write said is replaced)
        finally:
            lock.release()
        self.complete(status)

    @staticmethod
    def _send_completion(conn: Any, rid: int, status: int, writes: Any) -> None:
        """The C complete()'s way out when ring 1 has no room now (the frame waits in memory)."""
        conn._send(complete_frame(rid, status, writes, None))

    def _complete(self, status: int = 0, error: str | None = None) -> None:
        """complete() (the C base class takes its common case): finish the request with `status`
        (0 or a positive result; negative: an error the client sees); exactly once."""
        if type(status) is not int:
            status = int(status)
        if not -0x80000000 <= status <= 0x7FFFFFFF:  # checked before anything: a bad status completes nothing
            raise ValueError(f"a status is a 32-bit signed integer, not {status}")
        conn = self._conn
        lock = conn.lock
        lock.acquire()  # not `with`: it costs twice as much, on every message
        try:
            if self._done:
                if self._cancel is True:
                    return  # the client cancelled it, and the framework completed it (CANCELLED)
                raise StateError(f"request {self.request_id} is already complete")
            self._done = True
            proto = conn.proto
            if conn.ended or proto.state is not _OPEN:
                return  # the client is gone: nobody to tell
            rid = self.request_id
            # only a message that took a slot gives one back (a SERVER_BUSY refusal took none)
            if conn.messages.pop(rid, None) is not None and self.asynchronous:
                conn.async_outstanding -= 1
            conn.completions += 1
            w = self._writes
            writes = sorted(w.items()) if w else ()
            put = conn.ring_put
            if put is not None and conn.ring_batch is None and not conn.ring_pending:
                # straight into ring 1, encoded by C; the long way if it cannot (no room, or it will not take it)
                proto.completing(rid)
                n = put(rid, status, writes, None if error is None else text_bytes(error))
                if type(n) is int:
                    conn.bytes_out += n
                else:
                    conn._send(complete_frame(rid, status, writes, error))
                return
            conn._send(proto.complete(rid, status, writes, error))
        finally:
            lock.release()

    def text(self, i: int) -> str:
        """A readable argument as text (a client's str argument travels as its UTF-8 bytes)."""
        try:
            return self.read(i).decode()
        except UnicodeDecodeError as e:
            raise ValueError(f"argument {i} is not UTF-8: {e}") from None

    def decode(self, i: int, serializer: Any) -> Any:
        """A readable argument as the object a client's serializer made of it (ClientSession.call(...,
        serializer=)): serializer is a name ("msgspec", "msgpack", "json", "pickle") or an object with
        decode. DecodeError (a ValueError) when its bytes are not what the serializer reads: the
        client's bytes are untrusted, and only this request fails."""
        ser = _serializer(serializer)
        if ser is None:
            raise ValueError("decode() needs a serializer")
        return ser.decode(self.read_view(i))

    def reply(self, obj: Any, serializer: Any = None, status: int = 0) -> None:
        """Write obj (bytes, or any object with a serializer) into the reply argument, the last
        writable one (where ClientSession.call's reply goes), and complete with status."""
        i = self._reply_arg()
        ser = _serializer(serializer)
        self.write(i, ser.encode(obj) if ser is not None else obj)
        self.complete(status)

    def _reply_arg(self) -> int:
        for i in range(len(self._args) - 1, -1, -1):
            if self._args[i].kind in (ArgKind.WRITE, ArgKind.READWRITE):
                return i
        raise BrokerError("this request has no writable argument for a reply")

    @property
    def completed(self) -> bool:
        return self._done

    @property
    def cancelled(self) -> bool:
        """Did the client cancel this request (Future.cancel(), a call's timeout)? Then the framework has
        completed it with CANCELLED (after the on_cancel callbacks), and whatever the service still
        writes or completes is dropped."""
        return self._cancel is True

    def on_cancel(self, callback: Callable[["Message"], Any]) -> None:
        """Call callback(message) in the server's loop if the client cancels this request: the service's
        chance to stop its work, or to complete the message itself (with CANCELLED, or whatever it has
        so far). If it does not, the framework completes it with CANCELLED right after. At once, here,
        if the request is cancelled already. An async service's task is cancelled (CancelledError)."""
        lock = self._conn.lock
        with lock:
            c = self._cancel
            if c is not True:
                if c is None:
                    self._cancel = [callback]
                else:
                    c.append(callback)
                return
        callback(self)

    def _cancelled(self) -> list[Callable[["Message"], Any]]:
        """The client cancelled it (the server's loop): mark it so; the callbacks to call."""
        with self._conn.lock:
            c = self._cancel
            self._cancel = True
        return c if type(c) is list else []

    def panic(self, reason: str) -> None:
        """End the client's session: its pending and next calls raise Panicked(reason)."""
        with self._conn.lock:
            self._done = True
        self._conn.panic(reason)


# The server's C (take_requests) makes Messages, their fields set without __init__; complete() in C
# reads the protocol's state and outstanding requests, and falls back on the Python ways above.
declare(Message, ServerConnection, _OPEN)


def refuse(conn: Any, msg: "Message", e: Exception, argument_error: type) -> None:
    """A broker service's request that raised: argument_error is ARGUMENT, BadHandle BAD_HANDLE, anything
    else what a service's exception is (conn.failed); it ends only this request."""
    if isinstance(e, argument_error):
        msg.complete(Status.ARGUMENT, str(e))
    elif isinstance(e, BadHandle):
        msg.complete(Status.BAD_HANDLE, str(e))
    elif not msg.completed:
        conn.failed(msg, e)


def function(code: int, *, serializer: Any = None) -> Callable[[_F], _F]:
    """Mark a Session method as the function `code`: the default service() calls it with the message,
    and a client calls it by name (broker.functions(session, TheClass).name(...)).

    With a serializer (a name of broker.SERIALIZERS, or an object with encode and decode), the
    function takes objects and returns one: service() calls method(message, *decoded arguments)
    (every argument before the reply's) and writes what it returns, encoded, as the reply
    (message.reply); a client's broker.functions(...).name(*objects) gives it back decoded. An
    argument the serializer cannot decode fails that request alone (ARGUMENT, DecodeError's text)."""
    if type(code) is not int or not 0 <= code <= 0x7FFFFFFF:
        raise ValueError(f"a function's code is an int from 0 to 2**31-1 (below 0 is the broker's), not {code!r}")
    _serializer(serializer)  # an unknown name, or a missing package, fails here, at the class

    def mark(method: _F) -> _F:
        method.__broker_code__ = code  # type: ignore[attr-defined]
        method.__broker_serializer__ = serializer  # type: ignore[attr-defined]
        return method
    return mark


def _call_serialized(method: Callable[..., Any], m: Message, spec: Any) -> Any:
    """A function with a serializer: its arguments decoded, its result the encoded reply."""
    ser = _serializer(spec)
    assert ser is not None
    try:
        last = m._reply_arg()
        objs = [ser.decode(m.read_view(i)) for i in range(last)]
    except (DecodeError, BrokerError) as e:
        m.complete(Status.ARGUMENT, str(e))
        return None
    result = method(m, *objs)
    if inspect.isawaitable(result):
        async def finish() -> None:
            value = await result
            if not m.completed:
                m.reply(value, ser)
        return finish()
    if not m.completed:
        m.reply(result, ser)
    return None


class Session:
    """Subclass this and implement service(message), or mark methods with @broker.function(code); the
    server makes one per accepted connection. `objects` holds the session's sub-sessions."""

    functions: dict[str, int] = {}  # name -> code of the @function methods (made per subclass)
    serializers: dict[str, Any] = {}  # name -> the serializer of those that have one
    _by_code: dict[int, str] = {}
    _connection: Any  # the server's connection, once it accepted the session (notify speaks through it)

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        table = dict(getattr(cls, "functions", {}))
        sers = dict(getattr(cls, "serializers", {}))
        for name, value in vars(cls).items():
            code = getattr(value, "__broker_code__", None)
            if code is not None:
                if code in table.values() and table.get(name) != code:
                    other = next(n for n, c in table.items() if c == code)
                    raise ValueError(f"{cls.__name__}: {name} and {other} are both function {code}")
                table[name] = code
                spec = getattr(value, "__broker_serializer__", None)
                if spec is not None:
                    sers[name] = spec
                else:
                    sers.pop(name, None)
        cls.functions = table
        cls.serializers = sers
        cls._by_code = {c: n for n, c in table.items()}

    def __init__(self, server: Any, peer: Peer) -> None:
        self.server = server
        self.peer = peer
        self.objects = ObjectIndex()

    @property
    def _unopened(self) -> dict[int, RefObject]:
        """The objects this session added to containers and nobody opened yet (see Container.add)."""
        try:
            return self.__dict__["_unopened_objects"]  # type: ignore[no-any-return]
        except KeyError:
            return self.__dict__.setdefault("_unopened_objects", {})  # type: ignore[no-any-return]

    def _release_unopened(self) -> list[RefObject]:
        """At the session's end: the objects it added and nobody opened leave their containers."""
        left = self.__dict__.pop("_unopened_objects", None)
        gone = []
        for obj in (left or {}).values():
            obj._added_by = None
            if obj.container is not None and obj.container._drop_unopened(obj):
                gone.append(obj)
        return gone

    def service(self, message: Message) -> Any:
        name = self._by_code.get(message.code)
        if name is not None:
            spec = self.serializers.get(name)
            if spec is not None:
                return _call_serialized(getattr(self, name), message, spec)
            return getattr(self, name)(message)
        message.complete(Status.NOT_SUPPORTED, f"function {message.code} is not supported")

    def subsession(self, message: Message) -> Any:
        """The object named by the message's handle; BadHandle (the client gets it) otherwise."""
        return self.objects.get(message.handle)

    def open_subsession(self, obj: Any) -> int:
        """Store obj as a sub-session of this session; its handle (complete the message with it)."""
        handle = self.objects.add(obj)  # first: when the index is full, no reference was taken
        if isinstance(obj, RefObject):
            obj.open()
        return handle

    def close_subsession(self, handle: int) -> None:
        obj = self.objects.remove(handle)
        if isinstance(obj, RefObject):
            obj.close()

    def closed(self, reason: str) -> None:
        """Called once when the session ends, after its sub-sessions are closed."""

    def notify(self, code: int, data: bytes = b"") -> None:
        """Speak first (the guidelines' WTSSendMessage): send this session's client a notification, a code
        and data, which its on_notify callbacks and notifications() get. From any thread; StateError
        once the session is over; ServerBusy while its output is at its bound (a client that does not
        read: what waits for it stays bounded, and it is disconnected after stall_timeout)."""
        conn = self.__dict__.get("_connection")
        if conn is None:
            raise StateError("this session has no connection yet")
        conn.notify(code, data)


# ---- security policies ------------------------------------------------------------

ALWAYS_PASS = "always pass"
NOT_SUPPORTED = "not supported"
SAME_USER = "same user"


@dataclass(frozen=True)
class Policy:
    """What to check for a range of function codes, on the kernel's word about the peer.

    check: ALWAYS_PASS, NOT_SUPPORTED, SAME_USER (as the server), `uids` /
    `gids` / `identities` (in a set; a TCP peer's identity, "key:NAME", takes
    the place of a uid), or a callable(peer, message) -> bool. On failure the
    request completes with PERMISSION_DENIED, or the client is panicked."""

    codes: range
    check: Any = ALWAYS_PASS
    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()
    panic: bool = False
    identities: frozenset[str] = frozenset()

    def allows(self, peer: Peer, message: Message, server_uid: int) -> bool:
        if self.uids or self.gids or self.identities:  # a set given: membership decides
            return ((peer.uid is not None and peer.uid in self.uids) or (peer.gid is not None and peer.gid in self.gids)
                    or (peer.identity is not None and peer.identity in self.identities))
        if self.check == ALWAYS_PASS:
            return True
        if self.check == NOT_SUPPORTED:
            return False
        if self.check == SAME_USER:
            return peer.uid is not None and peer.uid == server_uid
        if callable(self.check):
            return bool(self.check(peer, message))
        raise ValueError(f"unknown policy check {self.check!r}")


def find_policy(policies: Iterable[Policy], code: int) -> Policy | None:
    for p in policies:
        if code in p.codes:
            return p
    return None


# ---- events -----------------------------------------------------------------------


@dataclass(frozen=True)
class SessionEvent:
    """A session connected, was refused, or disconnected (closed, died, panicked, protocol error, server
    stopped); or a login session's first connection came (logon) or its last went (logoff)."""

    kind: str  # "connected" | "refused" | "disconnected" | "logon" | "logoff"
    peer: Peer
    reason: str = ""
    session: Any = field(default=None, compare=False)
    decision: Any = field(default=None, compare=False)  # connected: the session rule's _identity.Decision
    login: Any = field(default=None, compare=False)  # logon / logoff: the login session's facts (framework/logins.py)


# ---- reference-counted objects and named containers ------------------------------


class RefObject:
    """A server object several sessions can share; it dies (destroyed()) with its last reference."""

    def __init__(self) -> None:
        self.refs = 0
        self.container: "Container | None" = None
        self.name: str | None = None
        self._lock = threading.Lock()
        self._added_by: "Session | None" = None  # added to a container while serving it, not opened yet

    def open(self) -> None:
        with self._lock:
            self.refs += 1
            adder, self._added_by = self._added_by, None
        if adder is not None:
            adder._unopened.pop(id(self), None)

    def close(self) -> None:
        with self._lock:
            if self.refs <= 0:
                raise StateError(f"{type(self).__name__} {self.name or ''} closed more often than it was opened")
            self.refs -= 1
            last = self.refs == 0
        if last:
            if self.container is not None:
                self.container._forget(self)
            self.destroyed()

    def destroyed(self) -> None:
        """Called when the last reference is closed."""


class Container:
    """Named RefObjects with unique names, shared between sessions (Symbian's CObjectCon)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._objects: dict[str, RefObject] = {}
        self._lock = threading.Lock()

    def add(self, name: str, obj: RefObject) -> RefObject:
        """Add obj under name. Added while serving a session's request and not opened (no sub-session
        holds it) by the time that session ends, it is removed then, and destroyed()."""
        with self._lock:
            if name in self._objects:
                raise StateError(f"{self.name} already has an object named {name!r}")
            obj.container, obj.name = self, name
            self._objects[name] = obj
        session = SERVING.get()
        if session is not None and obj.refs == 0:
            obj._added_by = session
            session._unopened[id(obj)] = obj
        return obj

    def _drop_unopened(self, obj: RefObject) -> bool:
        """Remove obj if it was never opened (its adder's session ended): True if it was removed."""
        with self._lock:
            if obj.refs != 0 or self._objects.get(obj.name or "") is not obj:
                return False
            del self._objects[obj.name or ""]
        return True

    def find(self, name: str) -> RefObject:
        with self._lock:
            try:
                return self._objects[name]
            except KeyError:
                raise BadHandle(f"{self.name} has no object named {name!r}") from None

    def _forget(self, obj: RefObject) -> None:
        with self._lock:
            if obj.name is not None and self._objects.get(obj.name) is obj:
                del self._objects[obj.name]

    def __len__(self) -> int:
        return len(self._objects)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._objects)
