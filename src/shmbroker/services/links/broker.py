"""Linked services at the server: LinkBroker (the design: src/shmbroker/services/links/__init__.py)."""
from __future__ import annotations

import inspect
import itertools
import threading
from collections import deque
from typing import Any, Callable

from shmbroker._errors import BadHandle, BrokerError, Overflow, StateError
from shmbroker.protocol.codes import (LINK_CALL, LINK_CODES, LINK_OFFER, LINK_OPEN, LINK_PAIR,  # noqa: F401
                                   LINK_REPLY, LINK_TAKE, LINK_UNPAIR)
from shmbroker.protocol.frames import NO_ARG, Arg, ArgKind, Status
from shmbroker.framework.access import register_kind
from shmbroker.framework.service import Service
from shmbroker.framework.namespace import Name, qualify
from shmbroker.framework.session import Message, RefObject, refuse

from shmbroker.services.links.wire import (LinkError, MAX_ERROR, MAX_SERVICE_NAME, MAX_PAIRS, PAIR_CAPACITY, TAKE_CALL, TAKE_HEAD, TAKE_PAIR,
                                         TAKE_UNPAIR, pack_call, pack_writes, unpack_call, unpack_writes)
from shmbroker.protocol.serial import DecodeError
from shmbroker.services.links.client import LinkedCall

register_kind("service", ("offer", "call"))  # what grants say of linked services (framework/access.py)

# ---- the server's half ---------------------------------------------------------------------


class _Offer(RefObject):
    name: str  # its Name's key (RefObject's, a container's, may be None)

    def __init__(self, broker: "LinkBroker", n: Name, conn: Any) -> None:
        super().__init__()
        self.broker, self.name, self.conn = broker, n.key, conn  # name: unique server-wide (namespace.py)
        self.qname = n
        self.shown = n.shown  # as its session names it
        self.handler: Callable[[Any], Any] | None = None  # a host process's service (host_offer): run at once
        # waiting: id, the caller's message (None for TAKE_UNPAIR), its code, the packed arguments, TAKE_*
        self.queue: deque[tuple[int, Message | _HostCaller | None, int, bytes, int]] = deque()
        self.running: dict[int, Message | _HostCaller] = {}  # taken, not yet replied to
        self.take: Message | None = None  # the provider's waiting LINK_TAKE
        self.served = 0
        self.pairing: dict[int, _Pair] = {}  # pairs handed to the provider, not yet acknowledged
        self.pairs: list[_Pair] = []  # the pairs it serves
        self.paired = 0  # pairs made, ever (their calls are the provider's own books: the server sees none)

    def destroyed(self) -> None:
        self.broker._offer_closed(self)


class _HostCaller:
    """The host process's call as the broker's books hold a caller's Message: completed, connection,
    kind, max_length, write, complete (the provider's answer lands here)."""

    def __init__(self, conn: Any, room: int, on_done: Callable[[int, str, bytes], None] | None = None) -> None:
        self.connection, self.room = conn, room
        self.on_done = on_done  # (status, text, packed writes), from the thread that completes it
        self.done = threading.Event()
        self.status, self.text, self.written = 0, "", b""
        self._lock = threading.Lock()

    @property
    def completed(self) -> bool:
        return self.done.is_set()

    def kind(self, i: int) -> ArgKind:
        return ArgKind.WRITE if i == 2 and self.room else ArgKind.NONE

    def max_length(self, i: int) -> int:
        return self.room if i == 2 else 0

    def write(self, i: int, data: bytes) -> None:
        if i != 2 or len(data) > self.room:
            raise Overflow(f"{len(data)} bytes into argument {i} of at most {self.room if i == 2 else 0}")
        self.written = bytes(data)

    def complete(self, status: int = 0, error: str | None = None) -> None:
        with self._lock:
            if self.done.is_set():
                return
            self.status, self.text = int(status), error or ""
            self.done.set()
        if self.on_done is not None:
            self.on_done(self.status, self.text, self.written)


class _Link(RefObject):
    def __init__(self, broker: "LinkBroker", n: Name, conn: Any) -> None:
        super().__init__()
        self.broker, self.name, self.conn = broker, n.key, conn  # name: unique server-wide (namespace.py)
        self.qname = n
        self.shown = n.shown  # as its session names it
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


class LinkBroker(Service):
    """The server's linked services: on the loop thread; stats() under the lock."""

    codes = LINK_CODES
    stats_key = "services"  # (their name in Server.stats() and the metrics since the first release)

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.offers: dict[str, _Offer] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.links: list[_Link] = []
        # the federation's (src/shmbroker/federation): a Global call nobody here offers goes to remote(name, caller,
        # code, packed arguments, room for the writes), which answers through remote_answer(); watch() is
        # called (it must only signal) when a Global offer comes or goes
        self.remote: Callable[[Name, Any, int, bytes, int], None] | None = None
        self.watch: Callable[[], None] | None = None

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

    def _name(self, msg: Message, conn: Any) -> Name:
        """The service's name, in its namespace (framework/namespace.py: unqualified is Local)."""
        raw = self._bytes(msg, 0)
        if not 1 <= len(raw) <= MAX_SERVICE_NAME:
            raise LinkError(f"a service name is 1 to {MAX_SERVICE_NAME} bytes, not {len(raw)}")
        try:
            return qualify(raw.decode(), conn.peer)
        except UnicodeDecodeError:
            raise LinkError("a service name is UTF-8") from None
        except ValueError as e:
            raise LinkError(str(e)) from None

    @staticmethod
    def _own(conn: Any, msg: Message, kind: type) -> Any:
        obj = conn.session.subsession(msg)
        if not isinstance(obj, kind):
            raise BadHandle(f"handle {msg.handle} is not a {'service offer' if kind is _Offer else 'link'}")
        return obj

    def _offer(self, conn: Any, msg: Message) -> None:
        n = self._name(msg, conn)
        self.server.access.check(conn.peer, "service", n.name, "offer")  # (src/shmbroker/framework/access.py)
        with self._lock:
            if n.key in self.offers:
                msg.complete(Status.ARGUMENT, f"{n.shown!r} is offered already (connection "
                                              f"{self.offers[n.key].conn.peer.connection_id})")
                return
            offer = _Offer(self, n, conn)
            handle = conn.session.open_subsession(offer)
            self.offers[n.key] = offer
        msg.complete(handle)
        self._watched(n)

    def _open(self, conn: Any, msg: Message) -> None:
        n = self._name(msg, conn)
        self.server.access.check(conn.peer, "service", n.name, "call")
        link = _Link(self, n, conn)
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
        remote = self.remote if link.qname.namespace == "Global" else None
        with self._lock:
            offer = self.offers.get(link.name)
            if offer is None and remote is None:
                msg.complete(Status.NOT_FOUND, f"nobody offers {link.shown!r}")
                return
            link.calls += 1
            if offer is not None and offer.handler is None:  # (queued under the lock: the offer may close)
                offer.queue.append((next(self._ids), msg, code, blob, TAKE_CALL))
                if offer.take is not None:
                    self._hand(offer)
                return
        if offer is None:  # Global, and federated: another broker's provider answers (remote_answer)
            assert remote is not None
            room = msg.max_length(2) if msg.kind(2) in (ArgKind.WRITE, ArgKind.READWRITE) else 0
            remote(link.qname, msg, code, blob, room)
            return
        self._run_host(offer, msg, code, blob)  # the host process's own service: run here, now

    # -- the host process's own services and calls (Server.offer / link, src/shmbroker/api.py) ----------------

    def host_offer(self, conn: Any, name: str, handler: Callable[[LinkedCall], Any]) -> _Offer:
        """Offer `name` (in its namespace) from the process that embeds the server: each call runs
        handler(call) at once, in the thread that made it (the server's loop, for a client's call), with
        no socket and no queue. Close it with host_close."""
        try:
            n = qualify(name, conn.peer)
        except ValueError as e:
            raise LinkError(str(e)) from None
        with self._lock:
            if n.key in self.offers:
                raise LinkError(f"{n.shown!r} is offered already (connection {self.offers[n.key].conn.peer.connection_id})")
            offer = _Offer(self, n, conn)
            offer.handler = handler
            offer.open()
            self.offers[n.key] = offer
        self._watched(n)
        return offer

    def host_close(self, offer: _Offer) -> None:
        if offer.refs:
            offer.close()

    def _run_host(self, offer: _Offer, caller: Any, code: int, blob: bytes) -> None:
        """A call to a host offer: the handler, then the caller's completion (its writes packed)."""
        try:
            args = [Arg(kind, value, data) for kind, value, data in unpack_call(blob)]  # type: ignore[arg-type]  # (an int kind: ArgKind is an IntEnum)
        except ValueError as e:
            caller.complete(Status.ARGUMENT, f"a call {offer.shown!r} cannot read: {e}")
            return
        call = LinkedCall(code, args + [NO_ARG] * (4 - len(args)))
        try:
            result = offer.handler(call)  # type: ignore[misc]
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise TypeError("a host process's linked service runs synchronously: give a plain function")
            status = 0 if result is None else int(result)
            if not 0 <= status <= 0x7FFFFFFF:
                raise ValueError(f"a handler returns a status from 0 to 2**31-1 (or raises), not {status}")
        except Exception as e:  # the caller is told; the server goes on
            bad = isinstance(e, DecodeError)  # the caller's bytes, not what the offer's serializer reads
            caller.complete(Status.ARGUMENT if bad else Status.DIED, f"{type(e).__name__}: {e}")
            return
        offer.served += 1
        self._answer(offer.shown, caller, status, pack_writes(call.writes) if call.writes else b"")

    @staticmethod
    def _answer(shown: str, caller: Any, status: int, writes: bytes) -> None:
        """A provider's answer to its caller: its packed writes into the caller's argument 2, then the status."""
        if writes:
            if caller.kind(2) not in (ArgKind.WRITE, ArgKind.READWRITE):
                caller.complete(Status.ARGUMENT, f"the provider of {shown!r} wrote into arguments that "
                                                 "are not writable")
                return
            try:
                caller.write(2, writes)
            except Overflow:
                caller.complete(Status.OVERFLOW, f"the provider's writes take {len(writes)} bytes")
                return
        caller.complete(status)

    def host_call(self, conn: Any, name: str, code: int, args: tuple[Any, ...], buffer_type: type,
                  timeout: float | None, may_wait: bool) -> tuple[int, str, dict[int, bytes]]:
        """A call from the host process to the service offered as `name`: (status, error text, writes).
        A host offer runs at once; a client's is queued for it as its callers' are, and waited for
        (not from the server's loop, which hands it over)."""
        try:
            n = qualify(name, conn.peer)
        except ValueError as e:
            raise LinkError(str(e)) from None
        blob, room = pack_call(args, buffer_type)
        caller = _HostCaller(conn, room)
        remote = self.remote if n.namespace == "Global" else None
        with self._lock:
            offer = self.offers.get(n.key)
            if offer is None and remote is None:
                return int(Status.NOT_FOUND), f"nobody offers {n.shown!r}", {}
            if offer is not None and offer.handler is None:
                if not may_wait:
                    raise StateError(f"{n.shown!r} is a client's service: the server's own loop cannot wait for it")
                offer.queue.append((next(self._ids), caller, code, blob, TAKE_CALL))
                if offer.take is not None:
                    self._hand(offer)
        if offer is None:  # Global, and federated: another broker's provider answers (remote_answer)
            assert remote is not None
            if not may_wait:
                raise StateError(f"{n.shown!r} is offered on another broker: the server's own loop cannot wait for it")
            remote(n, caller, code, blob, room)
        elif offer.handler is not None:
            self._run_host(offer, caller, code, blob)
        if not caller.done.wait(timeout):
            caller.complete(Status.TIMED_OUT, f"no answer from {n.shown!r} within {timeout} s")  # (skipped if queued)
        try:
            writes = unpack_writes(caller.written) if caller.written else {}
        except ValueError as e:
            return int(Status.GENERAL), f"the provider of {n.shown!r} sent unreadable writes: {e}", {}
        return caller.status, caller.text, writes

    def _pair(self, conn: Any, msg: Message) -> None:
        """LINK_PAIR: a private pair of rings between this link and the provider, if both are in
        one session on shared memory; the provider attaches (through its LINK_TAKE), then the
        caller gets the segment's name in argument 0. NOT_SUPPORTED says why there is none."""
        link = self._own(conn, msg, _Link)
        if msg.kind(0) not in (ArgKind.WRITE, ArgKind.READWRITE):
            raise LinkError("LINK_PAIR takes a writable argument for the rings' name")
        from shmbroker.core import names as _names
        from shmbroker.core.ring import make_pair_segment
        self._end_pairs(link)  # one pair a link: a caller asks again only when it lost its pair
        with self._lock:
            offer = self.offers.get(link.name)
            if offer is None:
                msg.complete(Status.NOT_FOUND, f"nobody offers {link.shown!r}")
                return
            why = self._no_pair(conn, offer)
            if why:
                msg.complete(Status.NOT_SUPPORTED, why)
                return
            name = _names.segment_name("link", self.server.server_id, conn.session_key)
            try:
                segment = make_pair_segment(name, PAIR_CAPACITY)  # a sealed memfd: its name says so
            except (OSError, ValueError, BrokerError) as e:  # short of memory, say: the calls go relayed
                msg.complete(Status.NO_MEMORY, f"no private rings for {link.shown!r}: {e}")
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
        if not pair.msg.completed and not pair.msg.connection.ended:  # its message slot is freed
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
            if caller is not None and (caller.completed or caller.connection.ended):  # its caller went away meanwhile
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
        self._answer(offer.shown, caller, status, writes)

    def _paired(self, offer: _Offer, pair: _Pair, caller: Message | _HostCaller | None, msg: Message, status: int,
                text: bytes) -> None:
        """The provider's answer to a pair it was handed: it attached (status 0) or could not. The
        provider's LINK_REPLY completes with 1 if it is to keep the pair, 0 if the pair is void."""
        live = (caller is not None and not caller.completed and not caller.connection.ended and not pair.link.gone
                and pair.segment is not None)
        if status < 0 or not live or caller is None:  # (live: caller is not None)
            msg.complete(0)
            if live and caller is not None:
                caller.complete(status, text.decode(errors="replace") or
                                f"the provider of {offer.shown!r} could not attach the rings")
            self._end_pair(pair)
            return
        with self._lock:
            offer.pairs.append(pair)
            offer.paired += 1
            pair.link.pairs.append(pair)
        msg.complete(1)
        caller.write(0, pair.name.encode())
        if pair.segment is not None and pair.segment.fd >= 0:
            caller.connection.pass_fd(pair.name, pair.segment.fd)  # the sealed segment, ahead of its name
        caller.complete(0)

    # -- the federation's half (src/shmbroker/federation) -----------------------------------------------------

    def _watched(self, n: Name) -> None:
        if n.namespace == "Global" and self.watch is not None:
            self.watch()

    def global_offers(self) -> set[str]:
        """The bare names of the Global services offered here."""
        with self._lock:
            return {o.qname.name for o in self.offers.values() if o.qname.namespace == "Global"}

    def remote_answer(self, caller: Any, status: int, text: str, writes: bytes) -> None:
        """Another broker's answer to a caller here (from any thread): on the server's loop, as a
        provider's answer, unless the caller went away meanwhile (cancelled, timed out, disconnected)."""
        def answer() -> None:
            if caller.completed or caller.connection.ended:
                return
            if status < 0:
                caller.complete(status, text or None)
                return
            self._answer("a remote service", caller, status, writes)
        self.server.call_soon(answer)

    def host_call_packed(self, conn: Any, name: str, code: int, blob: bytes, room: int,
                         done: Callable[[int, str, bytes], None]) -> None:
        """A call already packed (another broker's caller's, through the federation) to the service offered
        here as `name`: done(status, text, packed writes) once answered, from the thread that answers (the
        server's loop, or this one for a host offer). Never waits."""
        try:
            n = qualify(name, conn.peer)
        except ValueError as e:
            done(int(Status.ARGUMENT), str(e), b"")
            return
        caller = _HostCaller(conn, room, done)
        with self._lock:
            offer = self.offers.get(n.key)
            if offer is None:
                caller.complete(Status.NOT_FOUND, f"nobody offers {n.shown!r} here")
                return
            offer_client = offer.handler is None
            if offer_client:
                offer.queue.append((next(self._ids), caller, code, blob, TAKE_CALL))
                if offer.take is not None:
                    self._hand(offer)
        if not offer_client:
            self._run_host(offer, caller, code, blob)

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
                m.complete(Status.DISCONNECTED, f"the provider of {offer.shown!r} is gone")
        if take is not None and not take.completed:
            take.complete(Status.CANCELLED, "the offer was closed")
        self._watched(offer.qname)

    @staticmethod
    def metrics(stats: Any, fam: Callable[[str, str, str], Any]) -> None:
        """Its figures for the Prometheus endpoint (framework/metrics.py)."""
        for v in stats or []:
            lab = {"service": v.get("service")}
            fam("broker_service_served_total", "counter", "Calls a linked service's provider answered.").add(
                v.get("served"), **lab)
            fam("broker_service_running", "gauge", "Calls the provider is running.").add(v.get("running"), **lab)
            fam("broker_service_queued", "gauge", "Calls waiting for the provider.").add(v.get("queued"), **lab)
            fam("broker_service_callers", "gauge", "Sessions with a link to the service.").add(
                len(v.get("callers", [])), **lab)
            fam("broker_service_pairs", "gauge", "Private pairs of rings between a caller and the provider now "
                "(their calls bypass the broker).").add(v.get("direct", 0), **lab)
            fam("broker_service_pairs_made_total", "counter", "Private pairs of rings made for the service.").add(
                v.get("pairs", 0), **lab)

    def stats(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"service": o.shown, "namespace": o.qname.namespace, "owner": o.qname.owner,
                     "provider": o.conn.peer.connection_id, "queued": len(o.queue),
                     "running": len(o.running), "served": o.served, "direct": len(o.pairs),
                     "pairs": o.paired,
                     "callers": sorted({link.conn.peer.connection_id for link in self.links if link.name == name})}
                    for name, o in sorted(self.offers.items())]


