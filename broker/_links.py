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
the calls made after it offered.

Within one session, both on shared memory, the broker steps out of the path:
a link asks for a private pair (LINK_PAIR) when it opens; the server makes a
segment of two SPSC rings, hands its name to the provider through its
LINK_TAKE (TAKE_PAIR), and, once the provider has attached (LINK_REPLY 0),
gives it to the caller. Then each call is the session's own C call on the
pair (a REQUEST frame into ring 0, the COMPLETE back on ring 1), and the
provider serves its pairs and its relayed calls in one loop (wait_any). A
pair ends with either side: the server unlinks the name and tells the
provider (TAKE_UNPAIR); a provider that gives one up tells the server
(LINK_UNPAIR); a caller whose provider died gets DISCONNECTED and asks again.
Calls too big for a record of the pair, a sharable session's, and callers in
other sessions go relayed.

Function codes (h: the call carries the offer's or the link's handle):

    LINK_OFFER        arg 0 name (UTF-8, 1-200 bytes)            -> an offer handle
    LINK_TAKE     h   arg 0 writable: u64 call id, i32 code, the call's packed arguments
                      (waits while no call is queued)           -> the bytes arg 0 holds
    LINK_REPLY    h   arg 0 int call id, arg 1 int status, arg 2 the packed writes, arg 3 error text
                                                                 -> 0
    LINK_OPEN         arg 0 name                                 -> a link handle
    LINK_CALL     h   arg 0 int code, arg 1 the packed arguments, arg 2 writable (the packed writes)
                                                                 -> the provider's status
    LINK_PAIR     h   (a link's) arg 0 writable: the pair's segment name, once the provider attached
                                                                 -> 0 (NOT_SUPPORTED: why there is none)
    LINK_UNPAIR   h   (an offer's) arg 0 the name of a pair the provider gave up -> 0

Everything is untrusted: the server checks names, handles, ids and lengths;
it does not look into the packed arguments (the provider's side parses them,
each a bad one failing only its call).
"""
from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import struct
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable

from ._errors import BadHandle, BrokerError, Overflow
from ._protocol import NO_ARG, Arg, ArgKind, Status
from ._session import Message, RefObject, refuse

log = logging.getLogger("broker.links")

LINK_OFFER = -24
LINK_TAKE = -25
LINK_REPLY = -26
LINK_OPEN = -27
LINK_CALL = -28
LINK_PAIR = -29
LINK_UNPAIR = -30
LINK_CODES = frozenset({LINK_OFFER, LINK_TAKE, LINK_REPLY, LINK_OPEN, LINK_CALL, LINK_PAIR, LINK_UNPAIR})

MAX_NAME = 200
MAX_ERROR = 4096
TAKE_HEAD = struct.Struct("<QiI")  # call id, the caller's code, what it is (TAKE_CALL or TAKE_PAIR)
# a call to serve; a private pair of rings to attach (the code is 0, the name follows); a pair that ended
# at the broker (its caller closed the link or went: the name follows), to let go
TAKE_CALL, TAKE_PAIR, TAKE_UNPAIR = 0, 1, 2
MAX_PAIRS = 64  # private pairs a provider serves at most (one futex_waitv: broker/_ring.py wait_any)
PAIR_CAPACITY = 256 << 10  # bytes in each ring of a pair; a call or reply bigger than a record goes relayed
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
        # waiting: id, the caller's message (None for TAKE_UNPAIR), its code, the packed arguments, TAKE_*
        self.queue: deque[tuple[int, Message | None, int, bytes, int]] = deque()
        self.running: dict[int, Message] = {}  # taken, not yet replied to
        self.take: Message | None = None  # the provider's waiting LINK_TAKE
        self.served = 0
        self.pairing: dict[int, _Pair] = {}  # pairs handed to the provider, not yet acknowledged
        self.pairs: list[_Pair] = []  # the pairs it serves
        self.paired = 0  # pairs made, ever (their calls are the provider's own books: the server sees none)

    def destroyed(self) -> None:
        self.broker._offer_closed(self)


class _Link(RefObject):
    def __init__(self, broker: "LinkBroker", name: str, conn: Any) -> None:
        super().__init__()
        self.broker, self.name, self.conn = broker, name, conn
        self.calls = 0
        self.pairs: list[_Pair] = []
        self.gone = False

    def destroyed(self) -> None:
        with self.broker._lock:
            self.gone = True
            self.broker.links = [link for link in self.broker.links if link is not self]
        self.broker._end_pairs(self)


class _Pair:
    """A private pair of rings between one link and one offer of the same session: the server
    made the segment and unlinks its name at the end; it maps nothing else of it."""

    def __init__(self, name: str, segment: Any, offer: _Offer, link: _Link, msg: Message) -> None:
        self.name, self.segment, self.offer, self.link = name, segment, offer, link
        self.msg = msg  # the caller's LINK_PAIR, until the provider has answered
        self.told = False  # the provider knows the pair is over

    def end(self) -> None:
        seg, self.segment = self.segment, None
        if seg is not None:
            seg.close()
            try:
                seg.unlink()
            except OSError:
                pass


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
            elif code == LINK_PAIR:
                self._pair(conn, msg)
            elif code == LINK_UNPAIR:
                self._unpair(conn, msg)
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
        self.server.access.check(conn.peer, "service", name, "offer")  # (broker/_access.py)
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
        self.server.access.check(conn.peer, "service", name, "call")
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
            offer.queue.append((next(self._ids), msg, code, blob, TAKE_CALL))
            if offer.take is not None:
                self._hand(offer)

    def _pair(self, conn: Any, msg: Message) -> None:
        """LINK_PAIR: a private pair of rings between this link and the provider, if both are in
        one session on shared memory; the provider attaches (through its LINK_TAKE), then the
        caller gets the segment's name in argument 0. NOT_SUPPORTED says why there is none."""
        link = self._own(conn, msg, _Link)
        if msg.kind(0) not in (ArgKind.WRITE, ArgKind.READWRITE):
            raise LinkError("LINK_PAIR takes a writable argument for the rings' name")
        from . import _names
        from ._ring import make_pair_segment
        self._end_pairs(link)  # one pair a link: a caller asks again only when it lost its pair
        with self._lock:
            offer = self.offers.get(link.name)
            if offer is None:
                msg.complete(Status.NOT_FOUND, f"nobody offers {link.name!r}")
                return
            why = self._no_pair(conn, offer)
            if why:
                msg.complete(Status.NOT_SUPPORTED, why)
                return
            name = _names.segment_name("link", self.server.server_id, conn.session_key)
            try:
                segment = make_pair_segment(name, PAIR_CAPACITY)  # a sealed memfd: its name says so
            except (OSError, ValueError, BrokerError) as e:  # short of memory, say: the calls go relayed
                msg.complete(Status.NO_MEMORY, f"no private rings for {link.name!r}: {e}")
                return
            name = segment.name
            if len(name) > msg.max_length(0):
                segment.close()
                segment.unlink()
                raise LinkError(f"argument 0 is too small for the rings' name ({len(name)} bytes)")
            cid = next(self._ids)
            offer.pairing[cid] = _Pair(name, segment, offer, link, msg)
            offer.queue.append((cid, msg, 0, name.encode(), TAKE_PAIR))
            if offer.take is not None:
                self._hand(offer)

    @staticmethod
    def _no_pair(conn: Any, offer: _Offer) -> str:
        """Why this caller and this provider cannot share rings ("" if they can)."""
        if not conn.on_rings:
            return "the caller's session is not on shared memory"
        if not offer.conn.on_rings:
            return "the provider's session is not on shared memory"
        if conn.session_key is None or conn.session_key != offer.conn.session_key:
            return "the provider is in another session"
        if len(offer.pairs) + len(offer.pairing) >= MAX_PAIRS:
            return f"the provider serves {MAX_PAIRS} private pairs already"
        return ""

    def _unpair(self, conn: Any, msg: Message) -> None:
        """LINK_UNPAIR: the provider gave up one of its pairs (its caller wrote nonsense, or is gone)."""
        offer = self._own(conn, msg, _Offer)
        name = self._bytes(msg, 0).decode(errors="replace")
        with self._lock:
            pair = next((p for p in offer.pairs if p.name == name), None)
            if pair is not None:
                pair.told = True  # (it knows)
        if pair is not None:
            self._end_pair(pair)
        msg.complete(0)

    def _end_pair(self, pair: _Pair) -> None:
        with self._lock:
            offer, link = pair.offer, pair.link
            active = any(p is pair for p in offer.pairs)
            offer.pairs = [p for p in offer.pairs if p is not pair]
            offer.pairing = {cid: p for cid, p in offer.pairing.items() if p is not pair}
            link.pairs = [p for p in link.pairs if p is not pair]
            if active and not pair.told and self.offers.get(offer.name) is offer:
                # the provider holds its side: it is told to let go (it cannot know a caller that never
                # attached is gone)
                pair.told = True
                offer.queue.append((next(self._ids), None, 0, pair.name.encode(), TAKE_UNPAIR))
                if offer.take is not None:
                    self._hand(offer)
        pair.end()
        if not pair.msg.completed and not pair.msg._conn.ended:  # its message slot is freed
            pair.msg.complete(Status.CANCELLED, "the pair was given up")

    def _end_pairs(self, link: _Link) -> None:
        """The link's pair and any it is still waiting for."""
        with self._lock:
            ended = list(link.pairs)
            for offer in self.offers.values():
                ended += [p for p in offer.pairing.values() if p.link is link]
        for pair in ended:
            self._end_pair(pair)

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
            cid, caller, code, blob, what = offer.queue[0]
            if caller is not None and (caller.completed or caller._conn.ended):  # its caller went away meanwhile
                offer.queue.popleft()
                pair = offer.pairing.pop(cid, None)
                if pair is not None:
                    pair.end()
                continue
            data = TAKE_HEAD.pack(cid, code, what) + blob
            if len(data) > take.max_length(0):
                offer.take = None
                take.complete(Status.OVERFLOW, f"a call needs {len(data)} bytes")
                return
            offer.queue.popleft()
            offer.take = None
            if caller is not None:  # (a notice is not answered)
                offer.running[cid] = caller
            pair = offer.pairing.get(cid) if what == TAKE_PAIR else None
            if pair is not None and pair.segment is not None and pair.segment.fd >= 0:
                offer.conn.pass_fd(pair.name, pair.segment.fd)  # the sealed segment, ahead of its name
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
            pair = offer.pairing.pop(cid, None)
        if pair is not None:
            self._paired(offer, pair, caller, msg, status, text)
            return
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

    def _paired(self, offer: _Offer, pair: _Pair, caller: Message | None, msg: Message, status: int,
                text: bytes) -> None:
        """The provider's answer to a pair it was handed: it attached (status 0) or could not. The
        provider's LINK_REPLY completes with 1 if it is to keep the pair, 0 if the pair is void."""
        live = (caller is not None and not caller.completed and not caller._conn.ended and not pair.link.gone
                and pair.segment is not None)
        if status < 0 or not live:
            msg.complete(0)
            if live and caller is not None:
                caller.complete(status, text.decode(errors="replace") or
                                f"the provider of {offer.name!r} could not attach the rings")
            self._end_pair(pair)
            return
        with self._lock:
            offer.pairs.append(pair)
            offer.paired += 1
            pair.link.pairs.append(pair)
        msg.complete(1)
        caller.write(0, pair.name.encode())
        if pair.segment is not None and pair.segment.fd >= 0:
            caller._conn.pass_fd(pair.name, pair.segment.fd)  # the sealed segment, ahead of its name
        caller.complete(0)

    def _offer_closed(self, offer: _Offer) -> None:
        with self._lock:
            if self.offers.get(offer.name) is offer:
                del self.offers[offer.name]
            gone = [m for _, m, _, _, _ in offer.queue if m is not None] + list(offer.running.values())
            offer.queue.clear()
            offer.running.clear()
            take, offer.take = offer.take, None
            pairs = offer.pairs + list(offer.pairing.values())
        for pair in pairs:
            self._end_pair(pair)
        for m in gone:
            if not m.completed:
                m.complete(Status.DISCONNECTED, f"the provider of {offer.name!r} is gone")
        if take is not None and not take.completed:
            take.complete(Status.CANCELLED, "the offer was closed")

    def stats(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"service": name, "provider": o.conn.peer.connection_id, "queued": len(o.queue),
                     "running": len(o.running), "served": o.served, "direct": len(o.pairs),
                     "pairs": o.paired,
                     "callers": sorted({link.conn.peer.connection_id for link in self.links if link.name == name})}
                    for name, o in sorted(self.offers.items())]


# ---- the clients' half ---------------------------------------------------------------------

from . import _proc  # noqa: E402  (after the server's half, which does not need these)
from ._client import _CALL_WAIT_NS, Buffer, ClientSession, SubSession, _apply_writes, _result, _to_arg  # noqa: E402
from ._errors import Closed, Empty, PeerGone, ServiceError, Timeout  # noqa: E402
from ._protocol import (HEADER_SIZE, MAX_TEXT, Complete, FrameReader, ProtocolError, Request, _c_encode_complete,  # noqa: E402
                        _c_feed, complete_frame, request_frame)
from ._carrier import TIMEOUT as _RING_TIMEOUT  # noqa: E402
from ._native import RING as _RING_CALLS  # noqa: E402
from ._ring import Bell, any_waiter, open_pair, session_call, wait_any  # noqa: E402

_fsend, _frecv = _RING_CALLS["send"], _RING_CALLS["recv"]
_RING_EMPTY = 1  # BRK_EMPTY


class LinkedCall:
    """One call to an offered service, as its handler sees it (a Message's reading and writing)."""

    __slots__ = ("code", "_args", "writes")

    def __init__(self, code: int, args: Any) -> None:
        self.code = code
        self._args = args  # four Arg-like objects (kind, value, data), as the protocol's Request has them
        self.writes: dict[int, bytes] = {}

    def _arg(self, i: int) -> Any:
        if type(i) is not int or not 0 <= i < 4:
            raise IndexError(f"argument {i!r} is not 0 to 3")
        return self._args[i]

    def kind(self, i: int) -> int:
        return int(self._arg(i).kind)

    def integer(self, i: int) -> int:
        a = self._arg(i)
        if a.kind != A_INT:
            raise TypeError(f"argument {i} is not an int")
        return a.value  # type: ignore[no-any-return]

    def read(self, i: int) -> bytes:
        a = self._arg(i)
        k = a.kind
        if k != A_READ and k != A_READWRITE:
            raise TypeError(f"argument {i} is not readable")
        return self.writes.get(i, a.data) if self.writes else a.data  # type: ignore[no-any-return]

    def max_length(self, i: int) -> int:
        a = self._arg(i)
        return a.value if a.kind in (A_WRITE, A_READWRITE) else len(a.data)  # type: ignore[no-any-return]

    def write(self, i: int, data: bytes) -> None:
        a = self._arg(i)
        k = a.kind
        if k != A_WRITE and k != A_READWRITE:
            raise TypeError(f"argument {i} is not writable")
        if len(data) > a.value:
            raise Overflow(f"{len(data)} bytes into argument {i} of at most {a.value}")
        self.writes[i] = data if type(data) is bytes else bytes(data)


class _ProvidedPair:
    """The provider's side of a private pair: it reads the calls of one caller from ring 0 and
    writes the replies into ring 1 (the caller's C call reads them; csrc/brk_py.c, call)."""

    def __init__(self, name: str, spin_us: float, max_frame: int, fd: int | None = None) -> None:
        self.tx, self.rx = open_pair(name, spin_us, caller=False, fd=fd)
        self.name = name
        self.max_frame, self.max_record = max_frame, self.tx.max_record
        self.since = time.monotonic()
        tx, rx = self.tx, self.rx
        tx_addr, rx_addr = tx._addr, rx._addr

        def send(frame: bytes) -> None:
            if _fsend(tx_addr, frame):  # no room (the caller gave up on a call and sent more), or the end
                tx.send(frame, timeout=_REPLY_TIMEOUT)
        self.send = send

        def record() -> bytes | None:
            r = _frecv(rx_addr)  # one C call; nothing raised for the common "nothing there"
            if type(r) is bytes:
                return r
            return None if r == _RING_EMPTY else rx.recv(0)  # (recv says what the outcome means)
        self._record = record

    def take(self) -> tuple[int, LinkedCall] | None:
        """The next call (request id, the call), or None when there is none. ProtocolError: the
        caller wrote what is not one whole request; Closed, PeerGone: its end."""
        data = self._record()
        if data is None:
            return None
        events, at = _c_feed(data, 0, self.max_frame)  # the common case in C; the reader says what is wrong
        if at != len(data) or len(events) != 1 or type(events[0]) is not Request:
            events = FrameReader(self.max_frame).feed(data) if at != len(data) else events
            raise ProtocolError("a record that is not one whole request")
        req = events[0]
        return req.request_id, LinkedCall(req.code, req.args)

    def serve_next(self, run: Callable[[LinkedCall], tuple[int, dict[int, bytes], bytes]]) -> bool:
        """take(), run(call) and reply() in one: the synchronous loop's per-call path. False: no call."""
        data = self._record()
        if data is None:
            return False
        events, at = _c_feed(data, 0, self.max_frame)
        if at != len(data) or len(events) != 1 or type(events[0]) is not Request:
            raise ProtocolError("a record that is not one whole request")
        req = events[0]
        status, writes, text = run(LinkedCall(req.code, req.args))
        frame = _c_encode_complete(req.request_id, status, list(writes.items()) if writes else (), text or None)
        if frame is NotImplemented or len(frame) > self.max_record or len(text) > MAX_TEXT:
            self.reply(req.request_id, status, writes, text)  # the long way says what does not fit
        else:
            self.send(frame)
        return True

    def reply(self, rid: int, status: int, writes: dict[int, bytes], text: bytes) -> None:
        frame = _c_encode_complete(rid, status, list(writes.items()) if writes else (), text[:MAX_TEXT] or None)
        if frame is NotImplemented:
            frame = complete_frame(rid, status, list(writes.items()), text.decode(errors="replace") or None)
        if len(frame) > self.max_record:
            frame = complete_frame(rid, int(Status.OVERFLOW), [], f"the reply takes {len(frame)} bytes, more than "
                                                                 f"the link's ring carries ({self.max_record})")
        self.send(frame)

    def gone(self) -> bool:
        """The caller closed its side, or died, or never came."""
        h = self.rx._h
        pid = int(h.hdr.producer_pid)
        if pid == 0:  # not attached yet: the broker tells us (TAKE_UNPAIR) if it never will
            return False
        if pid < 0:  # closed: the wait returns at once for it, and take() raises Closed once it is read
            return True
        return not _proc.alive(pid, int(h.hdr.producer_start))

    def close(self) -> None:
        self.tx.close()
        self.rx.close()


_REPLY_TIMEOUT = 5.0  # seconds a provider waits for room in a caller's reply ring before giving the pair up
_NEVER = threading.Event()  # serve_forever's stop when it has none
_LOOK = 0.5  # seconds a provider's wait lasts at most before it looks at its callers


class Offer(SubSession):
    """A named service this client offers (session.offer(name, handler)): calls come in through
    serve_one() / serve_forever(), which run handler(call) -> status (int >= 0, None for 0).

    Calls come relayed by the broker, or, from a caller in this session on shared memory, over a
    private pair of rings that the broker arranged: the provider serves both in the same loop
    (waiting on all of them at once: broker/_ring.py wait_any)."""

    def __init__(self, session: ClientSession, handle: int, name: str, handler: Callable[[LinkedCall], Any],
                 max_call: int) -> None:
        super().__init__(session, handle)
        self.name, self.handler = name, handler
        self.served = 0
        self._size = max_call + TAKE_HEAD.size
        self._take: Any = None
        self._buf: Buffer | None = None
        self._pairs: list[_ProvidedPair] = []
        self._bell = Bell()  # rung when the relayed take completes (or close() wants the loop out)
        self._next = 0  # the pair looked at first next time: each gets its turn
        self._closing = False

    # -- what comes in ---------------------------------------------------------------------

    def _start_take(self) -> Any:
        if self._take is None:
            self._buf = Buffer(self._size)
            self._take = self.session.send(LINK_TAKE, self._buf, handle=self.handle)
            if self._pairs:  # the loop waits on the rings: the session's reader completes the take
                self._take.add_done_callback(self._ring_bell)
        return self._take

    def _ring_bell(self, _: Any) -> None:
        self._bell.ring()

    def _taken(self, error: ServiceError | None, n: int) -> tuple[int, LinkedCall | None, bytes] | None | str:
        """What the finished LINK_TAKE brought: (call id, the call or None if unreadable, error
        text); None when there is nothing to serve; a bigger buffer next time when a call did not
        fit; (for a pair to attach) its name as a str, with the call id in self._pair_cid."""
        self._take = None
        if error is not None:
            if error.status == Status.OVERFLOW and "needs " in (error.text or ""):
                self._size = max(self._size * 2, int(error.text.split("needs ")[1].split()[0]))
                return None
            raise error
        data = self._buf.value if self._buf is not None else b""
        if n == 0 or len(data) < TAKE_HEAD.size:
            return None
        cid, code, what = TAKE_HEAD.unpack_from(data)
        if what == TAKE_PAIR:
            self._pair_cid = cid
            return data[TAKE_HEAD.size:].decode(errors="replace")
        if what == TAKE_UNPAIR:  # the broker ended one of our pairs: let go of it here (nothing to answer)
            name = data[TAKE_HEAD.size:].decode(errors="replace")
            for pair in [p for p in self._pairs if p.name == name]:
                self._drop(pair, tell=False)
            return None
        try:
            args = [Arg(kind, value, blob) for kind, value, blob in unpack_call(data[TAKE_HEAD.size:])]
            return cid, LinkedCall(code, args + [NO_ARG] * (4 - len(args))), b""
        except ValueError as e:
            return cid, None, f"a call the provider cannot read: {e}".encode()

    def _attach(self, name: str) -> tuple[_ProvidedPair | None, tuple[Any, ...]]:
        """Attach to a pair the broker made: the pair (or None) and the LINK_REPLY's arguments."""
        cid = self._pair_cid
        try:
            spin = self.session._spin_ns / 1000 if self.session._spin_ns else 50.0
            pair = self.session._passed_segment(name, lambda fd: _ProvidedPair(name, spin, self.session._max_frame, fd))
        except (BrokerError, OSError, ValueError) as e:
            return None, (cid, int(Status.GENERAL), b"", f"the provider could not attach the rings: {e}".encode())
        return pair, (cid, 0, b"", b"")

    def _paired(self, pair: _ProvidedPair | None, keep: int) -> None:
        if pair is None:
            return
        if keep != 1 or self._closing or len(self._pairs) >= MAX_PAIRS:
            pair.close()
            return
        self._pairs = self._pairs + [pair]  # a new list: a loop waiting on the old one sees the change

    def _drop(self, pair: _ProvidedPair, tell: bool = True) -> None:
        """Let go of a pair; tell: the broker does not know yet (it ends its side, and unlinks the name)."""
        if pair in self._pairs:
            self._pairs = [p for p in self._pairs if p is not pair]
        pair.close()
        if tell and not self._closing and self.handle and not self.session.closed:
            try:
                self.session.send_receive(LINK_UNPAIR, pair.name.encode(), handle=self.handle)
            except BrokerError:
                pass

    def _next_direct(self) -> tuple[_ProvidedPair, tuple[int, LinkedCall]] | None:
        """A call waiting on one of the pairs (each pair in turn), or None."""
        pairs = self._pairs
        for k in range(len(pairs)):
            pair = pairs[(self._next + k) % len(pairs)] if k or self._next else pairs[0]
            try:
                got = pair.take()
                if got is None:
                    continue
            except (BrokerError, OSError) as e:  # the caller closed, died, or wrote nonsense: its pair ends
                if not isinstance(e, (Closed, PeerGone)):
                    log.warning("link %s: a caller's pair %s ends: %s", self.name, pair.name, e)
                self._drop(pair)
                return None
            self._next = (self._next + k + 1) % max(1, len(pairs))
            return pair, got
        return None

    def _serve_direct(self) -> bool:
        """Serve one call waiting on one of the pairs (each pair in turn): False if none was waiting."""
        pairs = self._pairs
        n = len(pairs)
        for k in range(n):
            pair = pairs[(self._next + k) % n] if n > 1 else pairs[0]
            try:
                if not pair.serve_next(self._run):
                    continue
            except (BrokerError, OSError) as e:  # the caller closed, died, or wrote nonsense: its pair ends
                if not isinstance(e, (Closed, PeerGone)):
                    log.warning("link %s: a caller's pair %s ends: %s", self.name, pair.name, e)
                self._drop(pair)
                return False
            self.served += 1
            if n > 1:
                self._next = (self._next + k + 1) % n
            return True
        return False

    def _look(self) -> None:
        for pair in list(self._pairs):
            if pair.gone():
                self._drop(pair)

    # -- running the handler ----------------------------------------------------------------

    def _run(self, call: LinkedCall | None, text: bytes = b"") -> tuple[int, dict[int, bytes], bytes]:
        if call is None:
            return int(Status.ARGUMENT), {}, text
        try:
            result = self.handler(call)
            if result is None:  # the common outcomes first: this runs for every call
                return 0, call.writes, b""
            if type(result) is int and 0 <= result <= 0x7FFFFFFF:
                return result, call.writes, b""
            if inspect.isawaitable(result):  # an asyncio handler outside an event loop
                result = asyncio.run(_awaited(result))
            return self._outcome(call, result)
        except Exception as e:  # the caller is told; the provider goes on
            return self._failure(e)

    async def _arun(self, call: LinkedCall | None, text: bytes = b"") -> tuple[int, dict[int, bytes], bytes]:
        if call is None:
            return int(Status.ARGUMENT), {}, text
        try:
            result = self.handler(call)
            if inspect.isawaitable(result):
                result = await result
            return self._outcome(call, result)
        except Exception as e:
            return self._failure(e)

    @staticmethod
    def _outcome(call: LinkedCall, result: Any) -> tuple[int, dict[int, bytes], bytes]:
        status = 0 if result is None else int(result)
        if not 0 <= status <= 0x7FFFFFFF:
            raise ValueError(f"a handler's status is 0 to 2**31-1, not {status}")
        return status, call.writes, b""

    @staticmethod
    def _failure(e: Exception) -> tuple[int, dict[int, bytes], bytes]:
        return int(Status.DIED), {}, f"{type(e).__name__}: {e}".encode()[:MAX_ERROR]

    def _reply_direct(self, pair: _ProvidedPair, rid: int, outcome: tuple[int, dict[int, bytes], bytes]) -> None:
        try:
            pair.reply(rid, *outcome)
        except (BrokerError, OSError) as e:
            log.warning("link %s: no reply to a caller's pair %s: %s", self.name, pair.name, e)
            self._drop(pair)
        self.served += 1

    # -- the loops ---------------------------------------------------------------------------

    def _relayed(self, fut: Any, timeout: float | None) -> Any:
        """The finished (or, without pairs, awaited) take's content, as _taken gives it; False
        when the timeout passed."""
        try:
            n, error = fut.result(timeout), None
        except TimeoutError:
            return False
        except ServiceError as e:
            n, error = 0, e
        return self._taken(error, n)

    def serve_one(self, timeout: float | None = None) -> bool:
        """Serve the next call, waiting up to `timeout`: False if none came."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            fut = self._start_take()
            if self._pairs:
                served = self._serve_pairs(fut, deadline)
                if served is not None:
                    return served
                got = self._relayed(fut, 0)  # done, or the pairs are all gone
            else:
                got = self._relayed(fut, None if deadline is None else max(0.0, deadline - time.monotonic()))
                if got is False:
                    return False
            if isinstance(got, str):  # a pair to attach
                pair, reply = self._attach(got)
                self._paired(pair, self.session.send_receive(LINK_REPLY, *reply, handle=self.handle))
                continue
            if got is None or got is False:
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                continue
            cid, call, text = got
            status, writes, text = self._run(call, text)
            self.session.send_receive(LINK_REPLY, cid, status, pack_writes(writes), text, handle=self.handle)
            self.served += 1
            return True

    def _serve_pairs(self, fut: Any, deadline: float | None, stop: threading.Event | None = None) -> bool | None:
        """Serve one call from the pairs (with `stop`, calls until it is set): True; False when
        the deadline passed; None when the relayed take is done (or no pair is left) and the
        caller should look at it."""
        bell, rings, waiter, served, serve = self._bell, None, None, False, self._serve_direct
        look_at = time.monotonic() + _LOOK
        while self._pairs:
            if fut.done():  # a relayed call (or news of a pair) first: under a steady stream of direct
                return None  # calls it would wait for ever otherwise
            if serve():
                if stop is None or stop.is_set():
                    return True
                served = True
                now = time.monotonic()
                if now >= look_at:  # busy or not, the callers that went are noticed
                    self._look()
                    look_at = now + _LOOK
                if deadline is not None and now >= deadline:
                    return True
                continue
            if fut.done():
                return None
            seen = bell.seen
            if fut.done():  # settled before the look at the bell: its ring may have come before too
                return None
            left = _LOOK if deadline is None else min(_LOOK, deadline - time.monotonic())
            if left <= 0:
                return served
            if rings is not self._pairs:  # a pair came or went: wait on the rings there are now
                rings = self._pairs
                waiter = any_waiter([p.rx for p in rings], bell, self._spin())
            try:
                woke = waiter(seen, left)
            except OSError:  # a ring closed meanwhile: look again
                woke = 0
            if woke is None:
                self._look()
        return None

    def _wait(self, rings: list[Any], seen: int, timeout: float) -> int | None:
        try:
            return wait_any(rings, self._bell, seen, timeout, self._spin())
        except (BrokerError, OSError):  # a ring closed meanwhile: look again
            return 0

    def _spin(self) -> float:
        return self.session._spin_ns / 1000 if self.session._spin_ns else 0.0

    async def aserve_forever(self) -> None:
        """serve_forever for asyncio: the handler may be a coroutine function; until the offer ends
        (cancel the task to stop)."""
        look_at = time.monotonic() + _LOOK
        while True:
            fut = self._start_take()
            if self._pairs and not fut.done():  # a finished relayed take first, as in _serve_pairs
                if time.monotonic() >= look_at:
                    self._look()
                    look_at = time.monotonic() + _LOOK
                direct = self._next_direct()
                if direct is not None:
                    pair, (rid, call) = direct
                    self._reply_direct(pair, rid, await self._arun(call))
                    continue
                if not fut.done():
                    seen = self._bell.seen
                    if fut.done():  # settled before the look at the bell: its ring may have come before too
                        continue
                    try:
                        r = await asyncio.to_thread(self._wait, [p.rx for p in self._pairs], seen, _LOOK)
                    except asyncio.CancelledError:
                        self._bell.ring()  # the thread's wait ends at once
                        raise
                    if r is None:
                        self._look()
                    continue
            try:
                n, error = await asyncio.wrap_future(fut), None
            except ServiceError as e:
                if e.status == Status.CANCELLED:
                    return
                n, error = 0, e
            got = self._taken(error, n)
            if isinstance(got, str):
                pair, reply = self._attach(got)
                self._paired(pair, await self.session.asend_receive(LINK_REPLY, *reply, handle=self.handle))
                continue
            if got is None:
                continue
            cid, call, text = got
            status, writes, text = await self._arun(call, text)
            await self.session.asend_receive(LINK_REPLY, cid, status, pack_writes(writes), text, handle=self.handle)
            self.served += 1

    def serve_forever(self, stop: threading.Event | None = None, poll: float = 0.5) -> None:
        """Serve calls until `stop` is set, or the server ends the offer (it stops: CANCELLED); the
        session's end raises ServerGone."""
        while stop is None or not stop.is_set():
            try:
                if self._pairs:  # calls from the pairs one after another, without leaving the loop
                    deadline = time.monotonic() + poll
                    if self._serve_pairs(self._start_take(), deadline, stop or _NEVER) is not None:
                        continue
                self.serve_one(poll)
            except ServiceError as e:
                if e.status == Status.CANCELLED:
                    return
                raise

    def _session_ended(self) -> None:
        self._closing = True
        self._bell.ring()
        for pair in list(self._pairs):
            self._drop(pair, tell=False)
        super()._session_ended()

    def close(self) -> None:
        self._closing = True
        self._bell.ring()
        for pair in list(self._pairs):  # our reply rings close: a caller waiting learns the provider is gone
            self._drop(pair, tell=False)
        fut, self._take = self._take, None
        super().close()
        if fut is not None and not self.session.closed:
            try:
                fut.result(5.0)  # the server ended it with the close
            except (Exception, TimeoutError):
                pass

    def __enter__(self) -> "Offer":
        return self


class _CallerPair:
    """The caller's side of a private pair: its requests into ring 0, the replies from ring 1, each
    call one C call (as a session's on shared memory)."""

    def __init__(self, name: str, spin_us: float, max_frame: int, fd: int | None = None) -> None:
        self.tx, self.rx = open_pair(name, spin_us, caller=True, fd=fd)
        self.name = name
        self.call = session_call(self.tx, self.rx)
        self.reader = FrameReader(max_frame)
        self.max_frame = max_frame

    def close(self) -> None:
        self.tx.close()
        self.rx.close()


class Link(SubSession):
    """A link to a named service (session.link(name)): send_receive() as a session's; the provider's
    writes land in the Buffers and bytearrays passed.

    A link asks the broker for a private pair of rings to the provider when it opens, and again
    after losing one; while it has none (the provider is in another session, or has not answered
    yet), its calls go relayed through the broker."""

    def __init__(self, session: ClientSession, handle: int, name: str) -> None:
        super().__init__(session, handle)
        self.name = name
        self.direct = False  # whether the last call went over the private pair
        self._pair: _CallerPair | None = None
        self._pairing: tuple[Buffer, Any] | None = None
        self._rid = 0
        # ask for a pair (again) at the next chance: on shared memory, and not on a sharable session (a
        # pair is one ring each way, for one thread's calls at a time)
        self._ask = session._rings is not None and not session.sharable
        self._stale = False  # the provider may have changed since the last answer: ask after the next call
        self._ask_pair()

    def _ask_pair(self) -> None:
        if not self._ask or self._pairing is not None or self._pair is not None:
            return
        self._ask = False
        buf = Buffer(512)
        try:
            self._pairing = (buf, self.session.send(LINK_PAIR, buf, handle=self.handle))
        except BrokerError:  # no free message slot, say: the calls go relayed
            self._pairing = None

    def _take_pair(self) -> None:
        buf, fut = self._pairing  # type: ignore[misc]
        self._pairing = None
        try:
            fut.result(0)
            spin = self.session._spin_ns / 1000 if self.session._spin_ns else 50.0
            name = buf.value.decode()
            pair = self.session._passed_segment(name, lambda fd: _CallerPair(name, spin, self.session._max_frame, fd))
            h = pair.rx._h
            pid = int(h.hdr.producer_pid)
            if pid <= 0 or not _proc.alive(pid, int(h.hdr.producer_start)):  # its provider let go meanwhile
                pair.close()
                self._stale = True
                return
            self._pair = pair
        except (BrokerError, OSError, ValueError, UnicodeDecodeError) as e:  # none for us: relayed
            self._pair = None
            if not (isinstance(e, ServiceError) and e.status == Status.NOT_SUPPORTED):
                self._stale = True  # nobody offered it then, or the pair failed: the next provider may be ours

    def _lost_pair(self) -> None:
        pair, self._pair = self._pair, None
        if pair is not None:
            pair.close()
        self._ask = True

    def send_receive(self, code: int, *args: Any, timeout: float | None = None) -> int:  # type: ignore[override]
        pair = self._pair
        if pair is not None and timeout is None:  # the common case first: one C call
            self._rid = rid = self._rid + 1
            r = pair.call(rid, code, 0, args, Buffer, _CALL_WAIT_NS, pair.max_frame)
            if type(r) is int and r >= 0:
                self.direct = True
                return r  # type: ignore[no-any-return]
            r = self._direct(pair, code, args, timeout, rid, r)
            if r is not NotImplemented:
                self.direct = True
                return r  # type: ignore[no-any-return]
        if self._pair is None and self._pairing is not None and self._pairing[1].done():
            self._take_pair()
        if self._pair is not None:
            r = self._direct(self._pair, code, args, timeout)
            if r is not NotImplemented:
                self.direct = True
                return r  # type: ignore[no-any-return]
        self.direct = False
        try:
            status = self._relay(code, args, timeout)
        except ServiceError as e:
            if e.status in (Status.NOT_FOUND, Status.DISCONNECTED):  # the next provider may share our session
                self._stale = True
            raise
        if (self._stale and self._pairing is None and self._pair is None and self.session._rings is not None
                and not self.session.sharable):
            self._stale, self._ask = False, True
        if self._ask:
            self._ask_pair()
        return status

    def _direct(self, pair: _CallerPair, code: int, args: tuple[Any, ...], timeout: float | None,
                rid: int = 0, r: Any = None) -> Any:
        """A call over the pair (or the rest of one, whose C call gave `r`); NotImplemented if it
        must go relayed (a call too big for a record)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not rid:
            self._rid = rid = self._rid + 1
            wait_ns = _CALL_WAIT_NS if timeout is None else max(0, min(_CALL_WAIT_NS, int(timeout * 1e9)))
            r = pair.call(rid, code, 0, args, Buffer, wait_ns, pair.max_frame)
        if type(r) is int:
            return r if r >= 0 else _result(Complete(rid, r))
        if r is NotImplemented:  # an argument C does not take (a bytearray), or a big frame: Python writes it
            if len(args) > 4:
                raise TypeError("at most four arguments")
            frame = request_frame(rid, code, 0, False, [_to_arg(a) for a in args] + [NO_ARG] * (4 - len(args)))
            if len(frame) > pair.tx.max_record or len(frame) - HEADER_SIZE > pair.max_frame:
                return NotImplemented  # relayed: the broker says what is wrong with a frame too big
            try:
                pair.tx.send(frame, timeout=timeout)
            except (BrokerError, OSError) as e:
                return self._gone(e)
            r = None
        elif type(r) is not bytes and not (r[0] == _RING_TIMEOUT and len(r) == 1):
            return self._gone(None)
        while True:  # the reply, as bytes, with the provider watched between slices
            if type(r) is not bytes:
                try:
                    r = pair.rx.recv(None if deadline is None else max(0.0, deadline - time.monotonic()))
                except Timeout:  # EmptyTimeout: a late reply is skipped by its request id
                    raise Timeout(f"no answer from {self.name!r} within {timeout} s") from None
                except (BrokerError, OSError) as e:
                    return self._gone(e)
            try:
                events = pair.reader.feed(r)
            except ProtocolError as e:
                return self._gone(e)
            r = None
            for done in events:
                if isinstance(done, Complete) and done.request_id == rid:
                    _apply_writes(args, done)
                    return _result(done)

    def _gone(self, error: BaseException | None) -> Any:
        self._lost_pair()
        why = "" if error is None or isinstance(error, (PeerGone, Closed)) else f" ({error})"
        raise ServiceError(Status.DISCONNECTED, f"the provider of {self.name!r} is gone{why}")

    def _relay(self, code: int, args: tuple[Any, ...], timeout: float | None) -> int:
        blob, room = pack_call(args, Buffer)
        out = Buffer(room) if room else None
        status = self.session.send_receive(LINK_CALL, code, blob, out, timeout=timeout, handle=self.handle)
        self._relayed_writes(args, out)
        return status

    def _relayed_writes(self, args: tuple[Any, ...], out: Buffer | None) -> None:
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

    def send(self, code: int, *args: Any) -> "Future[int]":  # type: ignore[override]
        """The call without waiting for it: a future of its status, the provider's writes applied to
        the arguments before it completes. It goes through the broker (a pair carries one call at
        a time, in its caller's thread); one of the session's message slots while it runs."""
        blob, room = pack_call(args, Buffer)
        out = Buffer(room) if room else None
        inner = self.session.send(LINK_CALL, code, blob, out, handle=self.handle)
        outer: Future[int] = Future()

        def done(f: Any) -> None:
            if not outer.set_running_or_notify_cancel():  # the caller gave up on it (asyncio cancelled)
                return
            try:
                status = f.result()
                self._relayed_writes(args, out)
            except BaseException as e:  # noqa: BLE001 - the caller's future carries it
                outer.set_exception(e)
                return
            outer.set_result(status)
        inner.add_done_callback(done)
        return outer

    async def asend_receive(self, code: int, *args: Any) -> int:
        """send_receive for asyncio (through the broker, as send())."""
        return await asyncio.wrap_future(self.send(code, *args))

    def _session_ended(self) -> None:
        pair, self._pair = self._pair, None
        if pair is not None:
            pair.close()
        self._pairing = None
        super()._session_ended()

    def close(self) -> None:
        pair, self._pair = self._pair, None
        if pair is not None:
            pair.close()
        fut, self._pairing = (self._pairing or (None, None))[1], None
        super().close()
        if fut is not None and not self.session.closed:
            try:
                fut.result(5.0)  # the server gave it up with the close
            except (Exception, TimeoutError):
                pass

    def __enter__(self) -> "Link":
        return self


async def _awaited(result: Any) -> Any:
    return await result


def open_offer(session: ClientSession, name: str, handler: Callable[[LinkedCall], Any],
               max_call: int = 1 << 20) -> Offer:
    return Offer(session, session.send_receive(LINK_OFFER, name.encode()), name, handler, max_call)


def open_link(session: ClientSession, name: str) -> Link:
    return Link(session, session.send_receive(LINK_OPEN, name.encode()), name)
