"""Linked services: one client offers a named request/response service, others call it through the broker.

    provider:  offer = session.offer("upper", handler)   # handler(call) -> status (int >= 0, or None: 0)
               offer.serve_forever()                     # or serve_one(timeout), in the provider's thread
    caller:    link = session.link("upper")
               link.send_receive(code, b"abc", out)      # as a session's: ints, bytes, Buffers, bytearrays

The broker relays (this module's two halves: LinkBroker at the server,
Offer and Link at the clients). A call travels as one blob: the caller packs
its code and arguments (pack_call), the server hands the blob to the current
provider of the name through the provider's long-poll LINK_TAKE, the
provider's handler runs on a LinkedCall (read, integer, write, ...), and the
provider's LINK_REPLY carries the status and the writes back to the caller's
waiting request. A call to a name nobody offers fails at once (NOT_FOUND); a
provider that closes or dies fails its queued and running calls
(DISCONNECTED, "the provider of ... is gone"); a new provider of the name gets
the calls made after it offered. Within one session the broker's private
pair of rings between the two sides (stepping out of the path) is the next
step of issue 5; this relay is what calls across sessions take.

Function codes (h: the call carries the offer's or the link's handle):

    LINK_OFFER        arg 0 name (UTF-8, 1-200 bytes)            -> an offer handle
    LINK_TAKE     h   arg 0 writable: u64 call id, i32 code, the call's packed arguments
                      (waits while no call is queued)           -> the bytes arg 0 holds
    LINK_REPLY    h   arg 0 int call id, arg 1 int status, arg 2 the packed writes, arg 3 error text
                                                                 -> 0
    LINK_OPEN         arg 0 name                                 -> a link handle
    LINK_CALL     h   arg 0 int code, arg 1 the packed arguments, arg 2 writable (the packed writes)
                                                                 -> the provider's status

Everything is untrusted: the server checks names, handles, ids and lengths;
it does not look into the packed arguments (the provider's side parses them,
each a bad one failing only its call).
"""
from __future__ import annotations

import asyncio
import inspect
import itertools
import struct
import threading
from collections import deque
from typing import Any, Callable

from ._errors import BadHandle, Overflow
from ._protocol import ArgKind, Status
from ._session import Message, RefObject, refuse

LINK_OFFER = -24
LINK_TAKE = -25
LINK_REPLY = -26
LINK_OPEN = -27
LINK_CALL = -28
LINK_CODES = frozenset({LINK_OFFER, LINK_TAKE, LINK_REPLY, LINK_OPEN, LINK_CALL})

MAX_NAME = 200
MAX_ERROR = 4096
TAKE_HEAD = struct.Struct("<Qi")  # call id, the caller's code
ARG_HEAD = struct.Struct("<BqI")  # kind, value (an int's, or a writable's max length), bytes that follow
WRITE_HEAD = struct.Struct("<BI")  # argument index, bytes that follow

# packed argument kinds
A_NONE, A_INT, A_READ, A_WRITE, A_READWRITE = range(5)


class LinkError(ValueError):
    """A request the link service refuses (ARGUMENT)."""


def pack_call(args: tuple[Any, ...], buffer_type: type) -> tuple[bytes, int]:
    """The caller's arguments as one blob, and the room its writes may need."""
    if len(args) > 4:
        raise TypeError("at most four arguments")
    parts, room = [], 0
    for a in args:
        if a is None:
            parts.append(ARG_HEAD.pack(A_NONE, 0, 0))
        elif type(a) is int:
            parts.append(ARG_HEAD.pack(A_INT, a, 0))
        elif isinstance(a, (bytes, memoryview)):
            data = bytes(a)
            parts += [ARG_HEAD.pack(A_READ, 0, len(data)), data]
        elif isinstance(a, buffer_type):
            data = a.value
            parts += [ARG_HEAD.pack(A_READWRITE if data else A_WRITE, a.max_length, len(data)), data]
            room += WRITE_HEAD.size + a.max_length
        elif isinstance(a, bytearray):
            parts += [ARG_HEAD.pack(A_READWRITE, 1 << 30, len(a)), bytes(a)]
            room += WRITE_HEAD.size + (1 << 20)
        else:
            raise TypeError(f"an argument is an int, bytes, a Buffer, a bytearray or None, not {type(a).__name__}")
    return b"".join(parts), room


def unpack_call(blob: bytes) -> list[tuple[int, int, bytes]]:
    """(kind, value, data) of each argument; ValueError if the blob is not a packed call."""
    out, at = [], 0
    while at < len(blob):
        if len(out) == 4 or at + ARG_HEAD.size > len(blob):
            raise ValueError("a packed call with more than four arguments, or one cut short")
        kind, value, n = ARG_HEAD.unpack_from(blob, at)
        at += ARG_HEAD.size
        if kind > A_READWRITE or at + n > len(blob) or (kind in (A_NONE, A_INT) and n):
            raise ValueError(f"a packed argument of kind {kind} and {n} bytes")
        out.append((kind, value, blob[at:at + n]))
        at += n
    return out


def pack_writes(writes: dict[int, bytes]) -> bytes:
    return b"".join(WRITE_HEAD.pack(i, len(d)) + d for i, d in sorted(writes.items()))


def unpack_writes(blob: bytes) -> dict[int, bytes]:
    out, at = {}, 0
    while at < len(blob):
        if at + WRITE_HEAD.size > len(blob):
            raise ValueError("packed writes cut short")
        i, n = WRITE_HEAD.unpack_from(blob, at)
        at += WRITE_HEAD.size
        if i > 3 or at + n > len(blob) or i in out:
            raise ValueError("a packed write out of place")
        out[i] = blob[at:at + n]
        at += n
    return out


# ---- the server's half ---------------------------------------------------------------------


class _Offer(RefObject):
    def __init__(self, broker: "LinkBroker", name: str, conn: Any) -> None:
        super().__init__()
        self.broker, self.name, self.conn = broker, name, conn
        self.queue: deque[tuple[int, Message, int, bytes]] = deque()  # calls waiting: id, caller's message, code
        self.running: dict[int, Message] = {}  # taken, not yet replied to
        self.take: Message | None = None  # the provider's waiting LINK_TAKE
        self.served = 0

    def destroyed(self) -> None:
        self.broker._offer_closed(self)


class _Link(RefObject):
    def __init__(self, broker: "LinkBroker", name: str, conn: Any) -> None:
        super().__init__()
        self.broker, self.name, self.conn = broker, name, conn
        self.calls = 0

    def destroyed(self) -> None:
        with self.broker._lock:
            self.broker.links = [link for link in self.broker.links if link is not self]


class LinkBroker:
    """The server's linked services (srv.links): on the loop thread; stats() under the lock."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.offers: dict[str, _Offer] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.links: list[_Link] = []

    def handle(self, conn: Any, msg: Message) -> None:
        try:
            code = msg.code
            if code == LINK_CALL:
                self._call(conn, msg)
            elif code == LINK_TAKE:
                self._take(conn, msg)
            elif code == LINK_REPLY:
                self._reply(conn, msg)
            elif code == LINK_OFFER:
                self._offer(conn, msg)
            elif code == LINK_OPEN:
                self._open(conn, msg)
        except Exception as e:  # it ends only this request
            refuse(conn, msg, e, LinkError)

    @staticmethod
    def _bytes(msg: Message, i: int) -> bytes:
        if msg.kind(i) == ArgKind.NONE:
            return b""
        if msg.kind(i) not in (ArgKind.READ, ArgKind.READWRITE):
            raise LinkError(f"argument {i} is bytes")
        return msg.read(i)

    def _name(self, msg: Message) -> str:
        raw = self._bytes(msg, 0)
        if not 1 <= len(raw) <= MAX_NAME:
            raise LinkError(f"a service name is 1 to {MAX_NAME} bytes, not {len(raw)}")
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise LinkError("a service name is UTF-8") from None

    @staticmethod
    def _own(conn: Any, msg: Message, kind: type) -> Any:
        obj = conn.session.subsession(msg)
        if not isinstance(obj, kind):
            raise BadHandle(f"handle {msg.handle} is not a {'service offer' if kind is _Offer else 'link'}")
        return obj

    def _offer(self, conn: Any, msg: Message) -> None:
        name = self._name(msg)
        with self._lock:
            if name in self.offers:
                msg.complete(Status.ARGUMENT, f"{name!r} is offered already (connection "
                                              f"{self.offers[name].conn.peer.connection_id})")
                return
            offer = _Offer(self, name, conn)
            handle = conn.session.open_subsession(offer)
            self.offers[name] = offer
        msg.complete(handle)

    def _open(self, conn: Any, msg: Message) -> None:
        name = self._name(msg)
        link = _Link(self, name, conn)
        handle = conn.session.open_subsession(link)
        with self._lock:
            self.links.append(link)
        msg.complete(handle)

    def _call(self, conn: Any, msg: Message) -> None:
        link = self._own(conn, msg, _Link)
        if msg.kind(0) != ArgKind.INT or msg.kind(2) not in (ArgKind.WRITE, ArgKind.READWRITE, ArgKind.NONE):
            raise LinkError("LINK_CALL takes the code (int), the packed arguments and a writable argument")
        code, blob = msg.integer(0), self._bytes(msg, 1)
        if not -0x80000000 <= code <= 0x7FFFFFFF:
            raise LinkError("the code is 32 bits")
        with self._lock:
            offer = self.offers.get(link.name)
            if offer is None:
                msg.complete(Status.NOT_FOUND, f"nobody offers {link.name!r}")
                return
            link.calls += 1
            offer.queue.append((next(self._ids), msg, code, blob))
            if offer.take is not None:
                self._hand(offer)

    def _take(self, conn: Any, msg: Message) -> None:
        offer = self._own(conn, msg, _Offer)
        if msg.kind(0) not in (ArgKind.WRITE, ArgKind.READWRITE):
            raise LinkError("LINK_TAKE takes a writable argument")
        with self._lock:
            if offer.take is not None:  # one at a time: the older one ends empty
                old, offer.take = offer.take, None
                old.complete(0)
            offer.take = msg
            if offer.queue:
                self._hand(offer)

    def _hand(self, offer: _Offer) -> None:
        """The waiting LINK_TAKE gets the oldest queued call (with the lock held)."""
        take = offer.take
        assert take is not None
        while offer.queue:
            cid, caller, code, blob = offer.queue[0]
            if caller.completed or caller._conn.ended:  # its caller went away meanwhile
                offer.queue.popleft()
                continue
            data = TAKE_HEAD.pack(cid, code) + blob
            if len(data) > take.max_length(0):
                offer.take = None
                take.complete(Status.OVERFLOW, f"a call needs {len(data)} bytes")
                return
            offer.queue.popleft()
            offer.take = None
            offer.running[cid] = caller
            take.write(0, data)
            take.complete(len(data))
            return

    def _reply(self, conn: Any, msg: Message) -> None:
        offer = self._own(conn, msg, _Offer)
        if msg.kind(0) != ArgKind.INT or msg.kind(1) != ArgKind.INT:
            raise LinkError("LINK_REPLY takes the call id and the status (ints)")
        cid, status = msg.integer(0), msg.integer(1)
        writes, text = self._bytes(msg, 2), self._bytes(msg, 3)[:MAX_ERROR]
        if not -0x80000000 <= status <= 0x7FFFFFFF:
            raise LinkError("the status is 32 bits")
        with self._lock:
            caller = offer.running.pop(cid, None)
        msg.complete(0)
        if caller is None or caller.completed:
            return  # not one of its calls, or its caller is gone: nothing to tell
        offer.served += 1
        if status < 0:
            caller.complete(status, text.decode(errors="replace") or None)
            return
        if writes:
            if caller.kind(2) not in (ArgKind.WRITE, ArgKind.READWRITE):
                caller.complete(Status.ARGUMENT, f"the provider of {offer.name!r} wrote into arguments that "
                                                 "are not writable")
                return
            try:
                caller.write(2, writes)
            except Overflow:
                caller.complete(Status.OVERFLOW, f"the provider's writes take {len(writes)} bytes")
                return
        caller.complete(status)

    def _offer_closed(self, offer: _Offer) -> None:
        with self._lock:
            if self.offers.get(offer.name) is offer:
                del self.offers[offer.name]
            gone = [m for _, m, _, _ in offer.queue] + list(offer.running.values())
            offer.queue.clear()
            offer.running.clear()
            take, offer.take = offer.take, None
        for m in gone:
            if not m.completed:
                m.complete(Status.DISCONNECTED, f"the provider of {offer.name!r} is gone")
        if take is not None and not take.completed:
            take.complete(Status.CANCELLED, "the offer was closed")

    def stats(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"service": name, "provider": o.conn.peer.connection_id, "queued": len(o.queue),
                     "running": len(o.running), "served": o.served,
                     "callers": sorted({link.conn.peer.connection_id for link in self.links if link.name == name})}
                    for name, o in sorted(self.offers.items())]


# ---- the clients' half ---------------------------------------------------------------------

from ._client import Buffer, ClientSession, SubSession  # noqa: E402  (after the server's half, which does not need it)
from ._errors import ServiceError  # noqa: E402


class LinkedCall:
    """One call to an offered service, as its handler sees it (a Message's reading and writing)."""

    def __init__(self, code: int, args: list[tuple[int, int, bytes]]) -> None:
        self.code = code
        self._args = args + [(A_NONE, 0, b"")] * (4 - len(args))
        self.writes: dict[int, bytes] = {}

    def _arg(self, i: int) -> tuple[int, int, bytes]:
        if type(i) is not int or not 0 <= i < 4:
            raise IndexError(f"argument {i!r} is not 0 to 3")
        return self._args[i]

    def kind(self, i: int) -> int:
        return self._arg(i)[0]

    def integer(self, i: int) -> int:
        kind, value, _ = self._arg(i)
        if kind != A_INT:
            raise TypeError(f"argument {i} is not an int")
        return value

    def read(self, i: int) -> bytes:
        kind, _, data = self._arg(i)
        if kind not in (A_READ, A_READWRITE):
            raise TypeError(f"argument {i} is not readable")
        return self.writes.get(i, data)

    def max_length(self, i: int) -> int:
        kind, value, data = self._arg(i)
        return value if kind in (A_WRITE, A_READWRITE) else len(data)

    def write(self, i: int, data: bytes) -> None:
        kind, value, _ = self._arg(i)
        if kind not in (A_WRITE, A_READWRITE):
            raise TypeError(f"argument {i} is not writable")
        if len(data) > value:
            raise Overflow(f"{len(data)} bytes into argument {i} of at most {value}")
        self.writes[i] = bytes(data)


class Offer(SubSession):
    """A named service this client offers (session.offer(name, handler)): calls come in through
    serve_one() / serve_forever(), which run handler(call) -> status (int >= 0, None for 0)."""

    def __init__(self, session: ClientSession, handle: int, name: str, handler: Callable[[LinkedCall], Any],
                 max_call: int) -> None:
        super().__init__(session, handle)
        self.name, self.handler = name, handler
        self.served = 0
        self._size = max_call + TAKE_HEAD.size
        self._take: Any = None
        self._buf: Buffer | None = None

    def _start_take(self) -> Any:
        if self._take is None:
            self._buf = Buffer(self._size)
            self._take = self.session.send(LINK_TAKE, self._buf, handle=self.handle)
        return self._take

    def _taken(self, error: ServiceError | None, n: int) -> tuple[int, LinkedCall | None, bytes] | None:
        """What the finished LINK_TAKE brought: (call id, the call or None if unreadable, error text);
        None when there is nothing to serve; a bigger buffer next time when a call did not fit."""
        self._take = None
        if error is not None:
            if error.status == Status.OVERFLOW and "needs " in (error.text or ""):
                self._size = max(self._size * 2, int(error.text.split("needs ")[1].split()[0]))
                return None
            raise error
        data = self._buf.value if self._buf is not None else b""
        if n == 0 or len(data) < TAKE_HEAD.size:
            return None
        cid, code = TAKE_HEAD.unpack_from(data)
        try:
            return cid, LinkedCall(code, unpack_call(data[TAKE_HEAD.size:])), b""
        except ValueError as e:
            return cid, None, f"a call the provider cannot read: {e}".encode()

    @staticmethod
    def _outcome(call: LinkedCall, result: Any) -> tuple[int, bytes, bytes]:
        status = 0 if result is None else int(result)
        if not 0 <= status <= 0x7FFFFFFF:
            raise ValueError(f"a handler's status is 0 to 2**31-1, not {status}")
        return status, pack_writes(call.writes), b""

    @staticmethod
    def _failure(e: Exception) -> tuple[int, bytes, bytes]:
        return int(Status.DIED), b"", f"{type(e).__name__}: {e}".encode()[:MAX_ERROR]

    def serve_one(self, timeout: float | None = None) -> bool:
        """Serve the next call, waiting up to `timeout`: False if none came."""
        fut = self._start_take()
        try:
            n, error = fut.result(timeout), None
        except TimeoutError:
            return False
        except ServiceError as e:
            n, error = 0, e
        got = self._taken(error, n)
        if got is None:
            return False
        cid, call, text = got
        if call is None:
            status, writes = int(Status.ARGUMENT), b""
        else:
            try:
                result = self.handler(call)
                if inspect.isawaitable(result):  # an asyncio handler outside an event loop
                    result = asyncio.run(_awaited(result))
                status, writes, text = self._outcome(call, result)
            except Exception as e:  # the caller is told; the provider goes on
                status, writes, text = self._failure(e)
        self.session.send_receive(LINK_REPLY, cid, status, writes, text, handle=self.handle)
        self.served += 1
        return True

    async def aserve_forever(self) -> None:
        """serve_forever for asyncio: the handler may be a coroutine function; until the offer ends
        (cancel the task to stop)."""
        while True:
            fut = self._start_take()
            try:
                n, error = await asyncio.wrap_future(fut), None
            except ServiceError as e:
                if e.status == Status.CANCELLED:
                    return
                n, error = 0, e
            got = self._taken(error, n)
            if got is None:
                continue
            cid, call, text = got
            if call is None:
                status, writes = int(Status.ARGUMENT), b""
            else:
                try:
                    result = self.handler(call)
                    if inspect.isawaitable(result):
                        result = await result
                    status, writes, text = self._outcome(call, result)
                except Exception as e:
                    status, writes, text = self._failure(e)
            await self.session.asend_receive(LINK_REPLY, cid, status, writes, text, handle=self.handle)
            self.served += 1

    def serve_forever(self, stop: threading.Event | None = None, poll: float = 0.5) -> None:
        """Serve calls until `stop` is set, or the server ends the offer (it stops: CANCELLED); the
        session's end raises ServerGone."""
        while stop is None or not stop.is_set():
            try:
                self.serve_one(poll)
            except ServiceError as e:
                if e.status == Status.CANCELLED:
                    return
                raise

    def close(self) -> None:
        fut, self._take = self._take, None
        super().close()
        if fut is not None and not self.session.closed:
            try:
                fut.result(5.0)  # the server ended it with the close
            except (Exception, TimeoutError):
                pass

    def __enter__(self) -> "Offer":
        return self


class Link(SubSession):
    """A link to a named service (session.link(name)): send_receive() as a session's; the provider's
    writes land in the Buffers and bytearrays passed."""

    def __init__(self, session: ClientSession, handle: int, name: str) -> None:
        super().__init__(session, handle)
        self.name = name

    def send_receive(self, code: int, *args: Any, timeout: float | None = None) -> int:  # type: ignore[override]
        blob, room = pack_call(args, Buffer)
        out = Buffer(room) if room else None
        status = self.session.send_receive(LINK_CALL, code, blob, out, timeout=timeout, handle=self.handle)
        if out is not None and out.value:
            try:
                writes = unpack_writes(out.value)
            except ValueError as e:
                raise ServiceError(Status.GENERAL, f"the provider of {self.name!r} sent unreadable writes: {e}")
            for i, data in writes.items():
                target = args[i] if i < len(args) else None
                if isinstance(target, Buffer):
                    target.value = data
                elif isinstance(target, bytearray):
                    target[:] = data
        return status

    def __enter__(self) -> "Link":
        return self


async def _awaited(result: Any) -> Any:
    return await result


def open_offer(session: ClientSession, name: str, handler: Callable[[LinkedCall], Any],
               max_call: int = 1 << 20) -> Offer:
    return Offer(session, session.send_receive(LINK_OFFER, name.encode()), name, handler, max_call)


def open_link(session: ClientSession, name: str) -> Link:
    return Link(session, session.send_receive(LINK_OPEN, name.encode()), name)
