"""The server: listens, makes a session per connection, dispatches messages, keeps the books.

One thread multiplexes every connection with a selector: the listening sockets,
each session's socket and a wake-up socket for completions made on other
threads. Services run on that thread, one message at a time (like Symbian's
active scheduler); a service that completes later, from any thread, just calls
message.complete().
"""
from __future__ import annotations

import array
import asyncio
import dataclasses
import errno
import functools
import heapq
import inspect
import itertools
import json
import logging
import os
import queue
import secrets
import selectors
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from shmbroker.transport import address as _address
from shmbroker.transport import keys as _keys
from shmbroker.core import names as _names
from shmbroker.transport.carrier import SESSION_RING_CAPACITY as SHM_CAPACITY
from shmbroker.transport.carrier import CarrierGone, ServerRings, ServerSocket
from shmbroker._errors import (AddressInUse, BadHandle, BrokerError, Closed, Overflow, PeerGone, PermissionDenied,
                            ServerBusy, StateError)
from shmbroker.framework.access import Access
from shmbroker.transport.identity import Decision, Facts, decide, local_facts, peer_facts, policy_from
from shmbroker.core.ring import sweep
from shmbroker.framework.native import ConnBase, ring_batch, serve_messages
from shmbroker.protocol.serial import DecodeError
from shmbroker.protocol.frames import (
    DEFAULT_MAX_FRAME,
    Auth,
    Cancel,
    Close,
    Event,
    Hello,
    ProtocolError,
    Refuse,
    Request,
    ServerConnection,
    ShmAccept,
    ShmDecline,
    State,
    Status,
    Write,
    encode,
    passed_fd_message,
)
from shmbroker.framework.service import Service, dispatch_table
from shmbroker.framework.driven import DrivenLoop
from shmbroker.framework.logins import Logins
from shmbroker.framework.namespace import owner_of
from shmbroker.framework.session import SERVING, CLOSE_SUBSESSION, SERVER_STATS, Message, Peer, Policy, RefObject, Session, SessionEvent, find_policy

if TYPE_CHECKING:
    from typing_extensions import Self  # (typing's own from Python 3.11)

log = logging.getLogger("shmbroker.server")
_OPEN = State.OPEN
_RECV = 256 * 1024
SHM_MIN_CAPACITY = 64 << 10  # the least a client may ask for each ring of its session
SHM_MAX_CAPACITY = 64 << 20  # the most, unless Server(shm_max_capacity=) says otherwise
SELECT_GAP_NS = 50_000  # a spinning loop with only ring sessions calls the selector this often
_NO_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)  # accept's "not now"
ACCEPT_BACKOFF = (0.05, 1.0)  # out of descriptors: stop accepting this long, doubling up to the second


# A turn of the server takes the records waiting in a session's ring 0 until it has this many messages
# (a record is taken whole): about one record of a pipelining client (call_many packs 25 small requests
# into one), whose completions then go back while the client writes the next. Taking all that waits
# (256) made the two sides take turns instead of overlapping: 64 B call_many, 0.45 M/s against 0.86 M/s.
TAKE_MESSAGES = 16
# ...and a turn handles at most this many of a connection's events (requests) read the long way (a
# socket's 256 KiB recv may hold thousands): the rest waits for its next turn, after every other ready
# connection had its own; meanwhile the connection is not read.
TURN_EVENTS = 64
LONG_TURN_NS = 200_000  # a turn that took longer yields the CPU once (a client may share it)


class Refused(BrokerError):
    """Raised by new_session() to refuse a client: `status` and the reason it gets."""

    def __init__(self, reason: str, status: int = Status.VERSION) -> None:
        super().__init__(reason)
        self.status = int(status)


def _peer_key(peer: Peer) -> str:
    """Whose connection it is, for the per-user bounds: the uid over Unix, the host over TCP."""
    return f"uid {peer.uid}" if peer.transport == "unix" else f"host {peer.address[0] if peer.address else '?'}"


def _peer(sock: socket.socket, cid: int) -> Peer:
    if sock.family == socket.AF_UNIX:
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return Peer(cid, "unix", pid, uid, gid, facts=peer_facts(sock))
    host, port = sock.getpeername()[:2]
    return Peer(cid, "tcp", address=(host, port))


class _Conn(ConnBase):
    """One accepted connection: its protocol state, its session, its output (its carrier).

    The books C keeps on every message (lock, proto, messages, ring_batch, ring_put, ring_pending,
    ended, completions, async_outstanding, bytes_out) are ConnBase's members (csrc/py/server.c);
    the rest are ordinary attributes."""

    def __init__(self, server: "Server", sock: socket.socket, peer: Peer) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.proto = ServerConnection(server.max_frame)
        self.session: Any = None
        self.decision: Decision | None = None  # the session rule's verdict, made at HELLO
        self.requests = self.completions = self.bytes_in = self.bytes_out = 0  # statistics
        self.cancels = 0  # requests the client cancelled while they were outstanding
        self.logged_in = False  # counted in its login session's connections (server._logins)
        self._early: list[bytes] = []  # notifications made while the client's answer to the rings was due
        self.slots = 0
        self.async_outstanding = 0
        self.messages: dict[int, Message] = {}
        self.lock = threading.RLock()
        self.ended = False
        # the output: the socket's, then the rings' once they carry the session (transport/carrier.py)
        self.carrier: ServerSocket | ServerRings = ServerSocket(sock)
        self.ring_put: Any = None  # ring 1's completer, for C's complete() (once the rings carry the session)
        self.ring_pending: Any = None  # ...and what waits for room in ring 1 (C writes only when nothing does)
        self.client_closed = False
        self.panicked: str | None = None
        self.inbuf = bytearray(_RECV)  # reused: a fresh 256 KiB bytes per recv costs an mmap and a fault
        self.batching = False  # the loop thread is handling a batch of a socket session's requests: _send queues
        self.ring_batch: Any = None  # the same on rings: a RingBatch, collecting the completions made meanwhile
        self._batch: Any = None  # this connection's RingBatch, once it is on rings
        self.session_key: str | None = None  # the session rule's key, when shared memory was allowed
        self.rings: ServerRings | None = None  # offered or in use
        self._take: Callable[[int, int], Any] | None = None  # on rings, in a threaded server without policies: see on_ring
        self.on_rings = False  # the rings carry the session (after the client's proof)
        self._connected: tuple[Any, Decision] | None = None  # the event waits for the answer to an offer
        self.key = _peer_key(peer)  # whose it is, for the per-user bounds
        # The output's bound (Server(max_queued=)): what waits to go out, counted in the user's total;
        # at the bound the connection is not read (paused) and what was read is held, not handled.
        self.counted = 0
        self.paused = False  # set by any thread; the loop thread stops and starts the reading
        self.reading = True  # the loop watches its socket (or its doorbell) for input
        self.held: list[Any] | None = None  # events read but not handled yet: the output was at its bound
        self.stalled_since: float | None = None  # at its own bound since (time.monotonic())
        self.watching = 0  # the selector events its socket is registered for (threaded loop)
        self.handshaking = False  # counted among the connections without a HELLO yet
        self._nonce = b""  # TCP with keys: the CHALLENGE's
        self._proof: bytes | None = None  # ...and the server's proof, once the client proved its key

    # -- input (loop thread) --------------------------------------------------

    def on_readable(self) -> None:
        if (self.paused or self.held is not None) and not self.on_rings:
            return  # its replies wait to go out, or its requests their turn: the rest waits in its socket
        try:
            n = self.sock.recv_into(self.inbuf)
        except (ConnectionResetError, OSError):
            n = 0
        data = memoryview(self.inbuf)[:n]
        if not n:
            if self.on_rings:
                self.on_ring(drain=True)  # its last frames (a CLOSE) may still wait in the ring: they say how it ended
            self.end("closed" if self.client_closed else "died")
            return
        if self.on_rings:  # the socket is only the death signal now
            self._close_with("protocol error: a frame on the socket of a shared-memory session")
            return
        self._on_data(data)

    def on_ring(self, rang: bool = True, drain: bool = False) -> None:
        """The doorbell rang, or (rang=False) a spin found work: what the client wrote to ring 0
        (one batch; drain: everything, until the ring is empty)."""
        rings = self.rings
        if rings is None or self.ended or ((self.paused or self.held is not None) and not drain):
            return
        if rang:
            rings.clear_doorbell()
        proto = self.proto
        take = self._take
        if take is not None and not drain and not proto.reader.pending and proto.state is _OPEN and not proto.offered:
            # the common requests, made Messages by C straight from the ring (one batch per turn)
            # asynchronous ones: as many as message slots are free; replies: as many as fit under the bound
            r = take(self.slots - self.async_outstanding, self.server.max_queued - self.counted)
            if len(r) == 4:
                msgs, nbytes, left, nasync = r
                if nasync:
                    with self.lock:  # a completion in another thread gives slots back meanwhile
                        self.async_outstanding += nasync
                if msgs:
                    self.bytes_in += nbytes
                    self.requests += len(msgs)
                    self._serve(msgs)
                if not left or self.ended:
                    return
            # something else waits (or an error, which the long way says): the long way takes it
        reader = proto.reader
        while not self.ended:
            big = reader.gathering  # a big frame on its way: its records are copied straight into it
            try:
                if big is None:
                    records: list[bytes] | tuple[memoryview, ...] = rings.read()
                else:
                    at, rest = rings.gather(big, reader.gathered)
                    records = () if at == reader.gathered and rest is None else (big,)  # (): nothing came
            except PeerGone:
                self.end("died")
                return
            except Closed:
                self.end("closed" if self.client_closed else "died")
                return
            except BrokerError as e:  # Corrupt: a buggy or hostile peer ends only its own session
                self._close_with(f"protocol error: {e}")
                return
            if not records:
                # a threaded server spins unarmed and arms every ring before it sleeps (_arm_rings);
                # inside asyncio there is no spin: arm now, and read again if records came meanwhile
                if self.server._aloop is None or rings.arm():
                    return
                continue
            lock = self.lock
            if big is None:
                data = records[0] if len(records) == 1 else b"".join(records)
                self.bytes_in += len(data)
                lock.acquire()  # not `with`: it costs twice as much, on every batch
                try:
                    events: list[Event] | ProtocolError = self.proto.receive(data)
                except ProtocolError as e:
                    events = e
                finally:
                    lock.release()
            else:
                self.bytes_in += at - reader.gathered + (len(rest) if rest else 0)
                lock.acquire()
                try:
                    events = self.proto.receive_gathered(at, rest)
                except ProtocolError as e:
                    events = e
                finally:
                    lock.release()
            if type(events) is not list:
                self._close_with(f"protocol error: {events}")
                return
            if len(events) == 1 and self.held is None and not self.paused:  # its completion goes into ring 1 as it is made
                self._one_event(events[0])
            else:  # the completions made meanwhile go into ring 1 together, as one record
                self._in_one_record(self._handle, events)
            if self.ended or self.paused:
                return
            if self.server._aloop is None and not drain:
                return  # the threaded loop comes back at once if there is more (it spins, or arms first)

    def _on_data(self, data: bytes | memoryview) -> None:
        self.bytes_in += len(data)
        try:
            with self.lock:
                events = self.proto.receive(data)
        except ProtocolError as e:
            self._close_with(f"protocol error: {e}")
            return
        self._batched(events)

    def _batched(self, events: list[Any]) -> None:
        """Handle events of a socket session: the completions they make go out together, in one send,
        after the last."""
        self.batching = True
        try:
            self._handle(events)
        finally:
            with self.lock:
                self.batching = False
                if self.carrier.pending_bytes:
                    self._flush()

    def _handle(self, events: list[Any]) -> None:
        if self.held is not None:  # older events wait for the output to drain: these go after them
            self.held.extend(events)
            return
        srv = self.server
        for i, ev in enumerate(events):
            if self.ended:
                return
            if self.paused:  # the output reached its bound: the rest waits for it to drain
                self.held = list(events[i:])
                return
            if i:
                batch = self.ring_batch
                n = self.counted + len(batch) if batch is not None else self.carrier.pending_bytes
                if i >= TURN_EVENTS or n >= srv.max_queued or \
                        n - self.counted + srv._queued.get(self.key, 0) >= srv.max_queued_per_user:
                    # its share of this turn is taken, or this batch's completions reached a bound (they go
                    # out, and count, first): the rest in its next turn
                    self.held = list(events[i:])
                    srv._next_turn(self)
                    return
            self._one_event(ev)

    def _resume(self) -> None:
        """(loop thread) Its next turn, or its output below its bound again: handle what was held (a turn's
        share of it), then read again."""
        if self.ended or self.paused:
            return
        held, self.held = self.held, None
        if held:
            if self.on_rings:
                self._in_one_record(self._handle, held)
            else:
                self._batched(held)
        if not self.ended and not self.paused and self.held is None and not self.reading:
            self.server._read_again(self)

    def _account(self) -> None:
        """After what waits to go out changed (lock held, any thread): keep the user's total; at the bound
        stop reading (Server(max_queued=, max_queued_per_user=)); below half of it, read again."""
        q = self.carrier.pending_bytes
        d = q - self.counted
        if not d:
            return
        self.counted = q
        srv = self.server
        total = srv._queued_add(self.key, d)
        if d > 0:
            if not self.ended and (q >= srv.max_queued or total >= srv.max_queued_per_user) and (
                    not self.paused or (q >= srv.max_queued and self.stalled_since is None)):
                self.paused = True  # seen at once by the loop thread's _handle; the reading stops on it
                srv._call_soon(functools.partial(srv._pause, self))
        elif self.paused and q <= srv.max_queued // 2 and total < srv.max_queued_per_user // 2:
            srv._call_soon(functools.partial(srv._unpause, self))
        elif srv._paused and d < 0 and total < srv.max_queued_per_user // 2:
            srv._call_soon(functools.partial(srv._unpause_user, self.key))

    def _one_event(self, ev: Any) -> None:
        if type(ev) is Request:
            self.on_request(ev)
        else:
            self._on_event(ev)

    def _on_event(self, ev: Any) -> None:
        if isinstance(ev, Hello):
            self.on_hello(ev)
        elif isinstance(ev, Auth):
            self.on_auth(ev)
        elif isinstance(ev, (ShmAccept, ShmDecline)):
            self.on_shm_answer(ev)
        elif isinstance(ev, Close):
            self.client_closed = True
            self.end("closed")
        elif isinstance(ev, Cancel):
            self.on_cancel(ev.request_id)

    def notify(self, code: int, data: bytes = b"") -> None:
        """Send the client a notification it did not ask for (any thread): Session.notify."""
        data = bytes(data)
        if len(data) > self.server.max_frame - 4:
            raise ValueError(f"a notification of {len(data)} bytes is more than the server's max frame")
        with self.lock:
            if self.ended or self.proto.state != State.OPEN:
                raise StateError(f"the session of {self.peer} is over")
            if self.paused:  # its output is at its bound (Server(max_queued=)): the client does not read it
                raise ServerBusy(f"{self.peer} is not reading: {self.carrier.pending_bytes} bytes wait for it "
                                 f"already")
            frame = self.proto.notify(code, data)
            if self.rings is not None and not self.on_rings:
                # rings offered, the answer not read yet: the client will read the rings or the socket,
                # which is not known yet; it goes where the answer says (on_shm_answer)
                if len(self._early) >= 1024:
                    raise ServerBusy(f"{self.peer} has not taken its rings yet: 1024 notifications wait already")
                self._early.append(frame)
                return
            self._send(frame)

    def on_cancel(self, rid: int) -> None:
        """The client cancelled a request (Future.cancel(), a call that timed out): the service hears of it
        (Message.on_cancel, an async service's task cancelled), and the request completes with
        CANCELLED now, whatever the service does later: its slot is free for the client's next one.
        A request already complete (the CANCEL crossed its answer) or unknown is no error."""
        msg = self.messages.get(rid)
        if msg is None or msg._done:
            return
        self.cancels += 1
        for callback in msg._cancelled():
            try:
                callback(msg)
            except Exception as e:  # a bug in the service's callback: the request is cancelled all the same
                self.server.counters["service_errors"] += 1
                log.error("an on_cancel callback of %s raised %r", self.peer, e, exc_info=e)
        if not msg._done:
            try:
                msg.complete(Status.CANCELLED, "cancelled by the client")
            except StateError:  # completed by another thread just now
                pass

    def on_hello(self, hello: Hello) -> None:
        srv = self.server
        if self.peer.transport == "tcp" and srv.keys is not None and self._proof is None:
            self._nonce = secrets.token_bytes(_keys.NONCE_BYTES)  # prove your key first (keys.py)
            self._send(self.proto.challenge(self._nonce))
            return  # still handshaking: the deadline and the caps cover the AUTH too
        srv._handshake_over(self)
        try:
            if len(srv._conns_open) >= srv.max_sessions:
                raise Refused(f"the server has its maximum of {srv.max_sessions} sessions", Status.SERVER_BUSY)
            if hello.sharable and not srv.allow_sharable:
                raise Refused("this server does not allow sharable sessions", Status.NOT_SUPPORTED)
            session = srv.new_session(hello.version, self.peer)
        except Refused as r:
            self._send(self.proto.refuse(r.status, str(r)))
            srv._event(SessionEvent("refused", self.peer, str(r)))
            self.end("refused", quiet=True)
            return
        self.session = session
        try:
            session._connection = self  # Session.notify speaks through it
        except AttributeError:  # a session object of the application's that takes no attributes
            pass
        self.slots = min(hello.slots, srv.max_slots)
        self.decision = d = srv._decide(self.peer, hello.socket_only)
        srv._conns_open.add(self)
        if d.shm:
            try:
                key = self.session_key = f"u{self.peer.uid}-{getattr(self.peer.facts, 'sessionid', None)}"
                self.rings = ServerRings(_names.segment_name("session", srv.server_id, key),
                                         srv.ring_capacity_for(hello.ring_capacity))
            except (BrokerError, OSError, ValueError) as e:  # a full /dev/shm, say: the socket carries it
                self.decision = d = Decision(False, f"shared memory allowed but unavailable: {e}", d.policy)
        self._send(self.proto.accept(self.peer.connection_id, self.slots, shm_offer=self.rings is not None,
                                     proof=self._proof))
        if self.rings is None:
            self._connected_event()
            return
        self._connected = (session, d)
        srv._offered(self)
        with self.lock:
            self._flush()  # the WELCOME first: the offer carries a descriptor, so it goes by itself
            offer = self.proto.offer_shm(self.rings.capacity, self.rings.name)
            try:
                sent = self.sock.sendmsg([offer], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                    array.array("i", [self.rings.doorbell, self.rings.segment, self.rings.bell]))])
            except OSError as e:  # the reason now: Python unbinds `e` when this block ends
                self.server._call_soon(functools.partial(self.end, f"died: {e}"))
                return
            self.bytes_out += len(offer)
            if sent < len(offer):
                self.carrier.queue(offer[sent:])
                self.server._want_write(self)

    def on_auth(self, ev: Auth) -> None:
        """The answer to the CHALLENGE: a key this server holds, proven; else refused (PERMISSION_DENIED)."""
        srv = self.server
        key = srv.keys.get(ev.name) if srv.keys is not None else None
        hello = self.proto.hello_body
        if key is None or not _keys.check(_keys.client_proof(key, hello, self._nonce, ev.nonce), ev.proof):
            srv.counters["auth_failures"] += 1
            why = "no such key" if key is None else "a wrong proof"
            log.warning("connection %s: authentication failed for key %r: %s", self.peer, ev.name, why)
            srv._handshake_over(self)
            # the client learns only that it failed: not whether the name is known
            self._send(self.proto.refuse(Status.PERMISSION_DENIED, "authentication failed: this server does not "
                                                                   "hold that key, or the proof is wrong"))
            srv._event(SessionEvent("refused", self.peer, f"authentication failed for key {ev.name!r}: {why}"))
            self.end("refused", quiet=True)
            return
        self.peer = dataclasses.replace(self.peer, identity=f"key:{key.name}")
        self._proof = _keys.server_proof(key, hello, self._nonce, ev.nonce)
        assert self.proto.hello_event is not None
        self.on_hello(self.proto.hello_event)

    def on_shm_answer(self, ev: ShmAccept | ShmDecline) -> None:
        """The client mapped the rings (and proves it) or could not."""
        rings, (session, d) = self.rings, self._connected or (None, None)
        assert rings is not None and d is not None
        self.server._offers.pop(self, None)
        if isinstance(ev, ShmAccept):
            if not rings.proof(ev.nonce):
                self._close_with("protocol error: the nonce does not match the segment's")
                return
            rings.mapped()  # unlinked: both sides have it, nobody else ever will
            with self.lock:
                self.carrier.last_word()  # the socket carries nothing more now (what waited there: best effort)
                self.carrier = rings
                self.ring_put, self.ring_pending = rings.put, rings.pending  # for C's complete()
                self.on_rings = True
                early, self._early = self._early, []
                for frame in early:  # notifications made while the answer was due: on the rings
                    self._send(frame)
            self._batch = ring_batch()
            srv = self.server
            if srv._aloop is None and not srv.policies:  # C may take the common requests (see on_ring)
                self._take = functools.partial(rings.take, self, self.proto.reader.max_frame, CLOSE_SUBSESSION,
                                               TAKE_MESSAGES)
            self.server._watch_rings(self)
        else:
            self.rings = None
            rings.close()
            self.decision = Decision(False, f"the client could not map the segment: {ev.reason}", d.policy)
            with self.lock:
                early, self._early = self._early, []
                for frame in early:  # on the socket, which carries the session
                    self._send(frame)
        self._connected_event()
        if self.on_rings:
            self.on_ring()  # requests may already wait in ring 0

    def _connected_event(self) -> None:
        d = self.decision
        assert d is not None
        carrier = self.carrier.kind
        log.info("session %s: %s; session rule: %s", self.peer, carrier, d)
        self.server._event(SessionEvent("connected", self.peer, f"{self.peer.transport} {carrier}; session rule: {d}",
                                        self.session, d))
        self.logged_in = True
        login = self.server._logins.connected(self.peer)
        if login is not None:  # the first connection from its login session
            self.server._event(SessionEvent("logon", self.peer, f"login session {login['login_session']}",
                                            self.session, d, login))

    def _serve(self, msgs: list[Message]) -> None:
        """Messages C made (take_requests): code >= 0, no policy to check; already in the books (their
        slots too, if asynchronous). What on_request does for each from session.service on, in C
        (serve_messages); the completions of several go into ring 1 together, as one record."""
        token = SERVING.set(self.session)
        try:
            if len(msgs) == 1:  # its completion goes straight into ring 1
                serve_messages(self, msgs, self.session.service, self.failed, self._returned)
            else:
                self._in_one_record(serve_messages, self, msgs, self.session.service, self.failed, self._returned)
        finally:
            SERVING.reset(token)

    def _returned(self, msg: Message, result: Any) -> None:
        """What a service returned, when not None: an awaitable needs serve_async()."""
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            msg.complete(Status.NOT_SUPPORTED, "an async service needs the server to run with serve_async()")

    def _in_one_record(self, fn: Callable[..., None], *args: Any) -> None:
        """fn(*args) (which stops when the session ends); the completions made meanwhile go into
        ring 1 together, as one record (C's and _send's go into ring_batch)."""
        batch = self.ring_batch = self._batch
        try:
            fn(*args)
        finally:
            with self.lock:
                self.ring_batch = None
                data, completions, nasync = batch.take()
                self.completions += completions  # those C made into the batch (see Message.complete)
                self.async_outstanding -= nasync
                if data is not None:
                    self._send(data)

    def on_request(self, req: Request) -> None:
        msg = Message(self, req.request_id, req.code, req.args, req.handle, req.asynchronous)
        if req.asynchronous:
            if self.async_outstanding >= self.slots:
                msg.complete(Status.SERVER_BUSY, f"all {self.slots} message slots are in use")
                return
            with self.lock:  # a completion in another thread gives a slot back meanwhile
                self.async_outstanding += 1
        self.messages[req.request_id] = msg
        self.requests += 1
        srv, session = self.server, self.session
        if req.code == CLOSE_SUBSESSION:  # always allowed: a client may always give back what it holds
            try:
                session.close_subsession(req.handle)
                msg.complete(Status.OK)
            except BadHandle as e:
                msg.complete(Status.BAD_HANDLE, str(e))
            return
        # the server's policies cover every other code, the broker's own services' too (topics, links,
        # stats): a server can keep, say, TOPIC_LIST or LINK_OFFER to some users
        policy = find_policy(srv.policies, req.code) if srv.policies else None
        if policy is not None and not policy.allows(self.peer, msg, srv.uid):
            if policy.panic:
                msg.panic(f"function {req.code} is not allowed for {self.peer}")
            else:
                msg.complete(Status.PERMISSION_DENIED, f"function {req.code} is not allowed for {self.peer}")
            return
        if req.code < 0:
            if req.code == SERVER_STATS:
                self._stats(msg)
                return
            service = srv._dispatch.get(req.code)
            if service is not None:  # the broker's own services, for every session (framework/service.py)
                service.handle(self, msg)
                return
        token = SERVING.set(session)  # an async service's task copies it with the context
        try:
            result = session.service(msg)
            if result is not None and inspect.isawaitable(result):
                loop = srv._aloop
                if loop is None:
                    if inspect.iscoroutine(result):
                        result.close()
                    msg.complete(Status.NOT_SUPPORTED, "an async service needs the server to run with serve_async()")
                    return
                task = loop.create_task(self._await_service(result, msg))
                msg.on_cancel(lambda _m, task=task: task.cancel())  # type: ignore[misc]  # a CANCEL cancels the coroutine (mypy cannot type a lambda's default)
        except Exception as e:
            self.failed(msg, e)
        finally:
            SERVING.reset(token)

    def _stats(self, msg: Message) -> None:
        """SERVER_STATS: the server's statistics as JSON into argument 0, for a peer of the server's own user."""
        srv = self.server
        if self.peer.uid is None or self.peer.uid != srv.uid:
            msg.complete(Status.PERMISSION_DENIED, f"statistics are for the server's own user (uid {srv.uid}) only")
            return
        data = json.dumps(srv.stats(), sort_keys=True).encode()
        try:
            msg.write(0, data)
        except (Overflow, BrokerError) as e:
            msg.complete(Status.OVERFLOW, f"the statistics take {len(data)} bytes: {e}")
            return
        msg.complete(len(data))

    async def _await_service(self, awaitable: Any, msg: Message) -> None:
        try:
            await awaitable
        except asyncio.CancelledError:  # the client cancelled it (on_cancel), or the server stops
            if not msg.completed:
                msg.complete(Status.CANCELLED, "cancelled")
        except Exception as e:
            self.failed(msg, e)

    def failed(self, msg: Message, e: Exception) -> None:
        """A service raised: the client gets the error as a status and text; the server goes on."""
        if isinstance(e, BadHandle):
            status = Status.BAD_HANDLE
        elif isinstance(e, Overflow):
            status = Status.OVERFLOW
        elif isinstance(e, PermissionDenied):  # a grant it lacks (src/shmbroker/framework/access.py)
            status = Status.PERMISSION_DENIED
        elif isinstance(e, ServerBusy):  # a limit of the server's: the sub-session index full (IndexFull)
            status = Status.SERVER_BUSY
        elif isinstance(e, DecodeError):  # the client's bytes, not what its serializer reads (message.decode)
            status = Status.ARGUMENT
        else:
            status = Status.DIED
            log.warning("service of function %d for %s raised %r", msg.code, self.peer, e, exc_info=e)
        if not msg.completed:
            text = str(e) if status != Status.DIED else f"{type(e).__name__}: {e}"
            msg.complete(status, text)

    # -- output (any thread) ----------------------------------------------------

    def panic(self, reason: str) -> None:
        with self.lock:
            if self.ended or self.proto.state != State.OPEN:
                return
            self.panicked = reason  # whatever ends the session now (its socket closing first, say), this is why
            self._send(self.proto.panic(reason))
        self.server._call_soon(lambda: self.end(f"panicked: {reason}"))

    def _close_with(self, reason: str) -> None:
        with self.lock:
            if not self.ended and self.proto.state == State.OPEN:
                frame = self.proto.close(reason)
                self._send(frame)
                if self.rings is not None and not self.on_rings:
                    # rings offered, the client's answer not read yet: a client that took them reads
                    # only them from now on, so the reason goes there too (each side reads one copy)
                    try:
                        self.rings.write(frame)
                    except CarrierGone:
                        pass
        self.end(reason)

    def _send(self, frame: "bytes | tuple[bytes, ...]") -> None:
        """A frame to the client, through the carrier (any thread). What does not go out at once waits,
        counted against the bounds; while the loop serves a batch, frames go out together after it.
        A big frame may come as its parts (a tuple): a socket sends them as they are, rings take it joined."""
        lock = self.lock
        lock.acquire()  # not `with`: it costs twice as much, on every message
        try:
            if type(frame) is tuple and self.on_rings:
                frame = b"".join(frame)
            batch = self.ring_batch
            if batch is not None:  # on_ring is serving a batch: its completions go into ring 1 together
                batch.append(frame)
                return
            self.bytes_out += len(frame) if type(frame) is not tuple else sum(map(len, frame))
            if self.ended:
                return
            if self.batching:  # _batched is serving a socket batch: sent together, after the last
                self.carrier.queue(frame)  # type: ignore[arg-type]  # (rings take it joined, above: parts reach only a socket)
                return
            if not self.carrier.write(frame):  # type: ignore[arg-type]  # (as queue)
                self.server._want_write(self)
                self._account()
            elif self.counted:
                self._account()
        except CarrierGone as e:
            self.server._call_soon(functools.partial(self.end, str(e)))
        finally:
            lock.release()

    def pass_fd(self, name: str, fd: int) -> bool:
        """A sealed segment's descriptor to this shared-memory session's client (SCM_RIGHTS), ahead of the
        reply or control message that names it: its socket carries nothing else once the rings carry the
        session (PASSED_FD). A client that does not take them (its socket full) is closed: False."""
        if not self.on_rings or self.ended:
            return False
        data = passed_fd_message(name)
        try:
            sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        except OSError as e:
            sent, why = -1, str(e)
        else:
            why = "a short write"
        if sent != len(data):
            self.server._call_soon(functools.partial(
                self._close_with, f"protocol error: its socket does not take the descriptors passed to it ({why})"))
            return False
        return True

    def _flush(self) -> bool:
        """What waits for the carrier, as far as it goes now (any thread); True when nothing is left.
        The loop calls it when the socket is writable, or to retry ring 1."""
        with self.lock:
            if self.ended:
                return True
            try:
                done = self.carrier.flush()
            except CarrierGone as e:
                self.server._call_soon(functools.partial(self.end, str(e)))
                return True
            finally:
                if self.carrier.pending_bytes or self.counted:
                    self._account()
            if not done:
                self.server._want_write(self)
            return done

    # -- the end ------------------------------------------------------------------

    def end(self, reason: str, quiet: bool = False) -> None:
        """Close the connection and the session: its sub-sessions, its pending messages."""
        with self.lock:
            if self.ended:
                return
            if self.panicked is not None:
                reason = f"panicked: {self.panicked}"
            self.carrier.last_word()  # a last word still waiting (a refusal, a close): best effort, never blocking
            self.ended = True
            self._take = None  # it holds this connection: no cycle left behind
            self.ring_put = self.ring_pending = None
            self.held = None
        srv = self.server
        if self.counted:
            srv._queued_add(self.key, -self.counted)
            self.counted = 0
        srv._forget(self)
        self.carrier.close()
        if self.rings is not None:
            self.rings.close()  # the client reads what is there, then Closed; gone before the socket closes
        try:
            self.sock.close()
        except OSError:
            pass
        session = self.session
        if session is not None:
            for obj in session.objects.clear():
                if isinstance(obj, RefObject):
                    try:
                        obj.close()
                    except Exception as e:  # a bug in a sub-session's destroyed(): the others close, the server goes on
                        srv.counters["service_errors"] += 1
                        log.error("closing %s of %s raised %r", type(obj).__name__, self.peer, e, exc_info=e)
            for obj in session._release_unopened():  # added to a container and never opened: gone with it
                try:
                    obj.destroyed()
                except Exception as e:
                    srv.counters["service_errors"] += 1
                    log.error("destroying %s of %s raised %r", type(obj).__name__, self.peer, e, exc_info=e)
            try:
                session.closed(reason)
            except Exception as e:
                log.warning("%s.closed() raised %r", type(session).__name__, e)
        if not quiet:
            srv._event(SessionEvent("disconnected", self.peer, reason, session))
        if self.logged_in:
            self.logged_in = False
            login = srv._logins.disconnected(self.peer)
            if login is not None:  # its login session's last connection
                srv._event(SessionEvent("logoff", self.peer, f"login session {login['login_session']}", session,
                                        None, login))


def _group_id(group: "str | int") -> int:
    """A group's id, from its name or its number."""
    if isinstance(group, int):
        return group
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise ValueError(f"no group named {group!r}") from None


def _clear_stale_socket(path: str) -> None:
    """Before binding `path`: remove a stale socket there (its server gone), and nothing else.

    Only a socket owned by this user whose listener is gone is removed; a live server, another
    user's socket, a regular file, a directory or a symlink (even to a socket) is an error that
    names what is there: `shmbroker serve --address` never deletes what it did not make."""
    import stat

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise BrokerError(f"{path} is a symbolic link: not removed; give the server another address")
    if not stat.S_ISSOCK(st.st_mode):
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "regular file" if stat.S_ISREG(st.st_mode) else "file"
        raise BrokerError(f"{path} exists and is a {kind}, not a socket: not removed; give the server another address")
    if st.st_uid != os.geteuid():
        raise BrokerError(f"{path} is a socket of uid {st.st_uid}, not ours: not removed")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # stale: its server is gone
        return
    except FileNotFoundError:
        return
    finally:
        probe.close()
    raise AddressInUse(f"another server is live at {path}")


class Server:
    """A named server: `with Server("name", MySession) as srv: ...` serves in a background thread.

    session: a Session subclass (or any callable(server, peer) -> Session).
    version: what the server supports; a client asking for a higher version,
    or another major version, is refused (override new_session to decide otherwise).
    spin_us: after serving, the loop polls this long for more before it sleeps
    (0: sleep at once); a request within that time costs no wake-up. It
    spins only after activity, so an idle server uses no CPU.
    busy_poll: poll without ever sleeping (latency mode: one core stays busy,
    idle or not); off by default.
    """

    def __init__(self, address: str, session: Callable[[Any, Peer], Session] = Session, *,
                 tcp: str | None = None, version: tuple[int, int, int] = (1, 0, 0), max_sessions: int = 1024,
                 max_slots: int = 255, allow_sharable: bool = True, policies: tuple[Policy, ...] = (),
                 max_frame: int = DEFAULT_MAX_FRAME, on_event: Callable[[SessionEvent], None] | None = None,
                 spin_us: float = 50.0, shm_policy: str | None = None, shm_capacity: int = SHM_CAPACITY,
                 shm_max_capacity: int = SHM_MAX_CAPACITY, busy_poll: bool = False,
                 offer_timeout: float = 10.0, metrics: int | None = None, metrics_host: str = "127.0.0.1",
                 max_queued: int = 8 << 20, max_queued_per_user: int = 64 << 20, stall_timeout: float = 30.0,
                 handshake_timeout: float = 10.0, max_handshakes: int = 256,
                 max_handshakes_per_user: int = 32, keys: Any = None, insecure_tcp: bool = False,
                 grants: Any = (), services: tuple[type[Service], ...] = (), system: bool = False,
                 mode: int | None = None, group: "str | int | None" = None,
                 listen_socket: socket.socket | None = None) -> None:
        if system and not isinstance(address, str) or system and "/" in address:
            raise ValueError(f"system=True takes a server name (it listens at {_address.system_dir()}/NAME.sock), "
                             f"not {address!r}")
        self.addresses = [_address.parse_system(address) if system else _address.parse(address)] + (
            [_address.parse(tcp)] if tcp else [])
        if not self.addresses[0].is_unix and (system or mode is not None or group is not None or listen_socket):
            raise ValueError("system, mode, group and listen_socket are for a Unix socket address")
        # who may reach the Unix socket: a system-wide server's is every local user's (0666) unless mode
        # and group say otherwise; the policies and grants then decide what each may do
        self.system = system
        self.mode = mode if mode is not None else (0o666 if system else None)
        self.group = _group_id(group) if group is not None else None
        self._activated = listen_socket  # socket activation: systemd bound it (the address is only its name)
        # TCP is authenticated (src/shmbroker/transport/keys.py): a client proves it holds one of `keys` (a keys file,
        # default $BROKER_KEYS or ~/.config/broker/keys, or Keys), and the server proves it holds it
        # too; plain TCP only with insecure_tcp, with a warning. None: no TCP, or plain TCP.
        self.insecure_tcp = bool(insecure_tcp) and tcp is not None
        self.keys: dict[str, _keys.Key] | None = None
        if tcp is not None and not insecure_tcp:
            try:
                self.keys = _keys.server_keys(keys)
            except _keys.KeyFileError as e:
                raise _keys.KeyFileError(f"TCP is authenticated: {e}; or pass insecure_tcp=True (`shmbroker serve "
                                         f"--insecure-tcp`) for plain TCP that anyone who reaches it may use") from None
        # Who may use the broker's own services (topics, tables, linked services): the server's own
        # user always; another user or a TCP identity only what a grant gives (src/shmbroker/framework/access.py).
        self.access = Access(grants, os.geteuid())
        self.session_factory = session
        self.version = version
        self.max_sessions = max_sessions
        self.max_slots = max_slots
        self.allow_sharable = allow_sharable
        self.policies = tuple(policies)
        self.max_frame = max_frame
        if not spin_us >= 0:
            raise ValueError("spin_us must be >= 0")
        self.spin_ns = int(spin_us * 1000)  # after serving, poll this long before sleeping (0: sleep at once)
        self.busy_poll = bool(busy_poll)  # never sleep: the lowest latency, a core always busy
        self.offer_timeout = offer_timeout  # seconds a client has to answer SHM_OFFER, its segment reserved meanwhile
        # What one client may hold of the server (DESIGN.md section 8). Its replies waiting to go out:
        # at max_queued bytes (or its user's connections together at max_queued_per_user) it is not
        # read until half is gone; still at its own bound after stall_timeout seconds, it is disconnected.
        # A connection has handshake_timeout seconds to send its HELLO; at most max_handshakes
        # connections (max_handshakes_per_user of one uid, or of one host over TCP) may be without one.
        for what, v in (("max_queued", max_queued), ("max_queued_per_user", max_queued_per_user),
                        ("max_handshakes", max_handshakes), ("max_handshakes_per_user", max_handshakes_per_user)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{what} must be a positive integer, not {v!r}")
        for what, t in (("stall_timeout", stall_timeout), ("handshake_timeout", handshake_timeout)):
            if not t > 0:
                raise ValueError(f"{what} must be > 0 seconds, not {t!r}")
        self.max_queued = max_queued
        self.max_queued_per_user = max_queued_per_user
        self.stall_timeout = stall_timeout
        self.handshake_timeout = handshake_timeout
        self.max_handshakes = max_handshakes
        self.max_handshakes_per_user = max_handshakes_per_user
        self._queued: dict[str, int] = {}  # each user's bytes waiting to go out, all its connections together
        self._queued_lock = threading.Lock()
        self._paused: set[_Conn] = set()  # not read now: their output is at its bound
        self._later: list[_Conn] = []  # connections whose events wait for their next turn (TURN_EVENTS)
        self.turns = 0  # of the threaded loop: each ready connection gets a bounded share of one
        self._handshaking: dict[str, int] = {}  # each user's connections without a HELLO yet
        self._backoff = 0.0  # out of descriptors: the listeners are off for this long (0: they are on)
        self._reserve_fd = -1  # kept free, to accept and refuse a client when descriptors run out
        self.counters = {"accept_errors": 0, "refused_busy": 0, "handshake_timeouts": 0, "stalled": 0,
                         "paused": 0, "auth_failures": 0, "service_errors": 0}  # what stats() shows of the bounds at work
        self._offers: dict[_Conn, float] = {}  # sessions whose offer awaits its answer: their deadline
        self.shm_policy = policy_from(shm_policy)  # "strict", "same-user", "off"; default $BROKER_SHM_POLICY, else strict
        self._facts: Facts | None = None  # this process's kernel facts, read at the first session
        for what, v in (("shm_capacity", shm_capacity), ("shm_max_capacity", shm_max_capacity)):
            if not SHM_MIN_CAPACITY <= v <= 1 << 31 or v & (v - 1):
                raise ValueError(f"{what} must be a power of two from {SHM_MIN_CAPACITY} to 2**31, not {v}")
        if shm_capacity > shm_max_capacity:
            raise ValueError(f"shm_capacity {shm_capacity} is over shm_max_capacity {shm_max_capacity}")
        self.shm_capacity = shm_capacity  # of each of a session's two rings, unless the client asks
        self.shm_max_capacity = shm_max_capacity  # the most a client may ask for (its /dev/shm is reserved)
        self.server_id = f"s{os.getpid()}"  # in the names of its segments
        if metrics is not None and not 0 <= metrics <= 65535:
            raise ValueError(f"metrics is a TCP port (0: one the kernel picks), not {metrics}")
        if metrics is not None:
            from shmbroker.framework.metrics import require

            require()  # ImportError now, saying what to install, rather than when serving starts
        self._metrics_at = None if metrics is None else (metrics_host, metrics)
        self.metrics: Any = None  # the Prometheus endpoint (src/shmbroker/framework/metrics.py) while serving, if asked for
        self._pending_rings: set[_Conn] = set()  # ring 1 was full: retry soon
        self._ring_conns: set[_Conn] = set()  # sessions on rings (threaded loop: spun on, armed before sleeping)
        self._rings_polled: tuple[tuple[_Conn, ServerRings, Callable[[], Any]], ...] = ()  # what _poll_rings looks at
        self.uid = os.geteuid()
        self._on_event = [on_event] if on_event else []
        self._events: queue.Queue[SessionEvent] | None = None
        self._ids = itertools.count(1)
        self._sel: selectors.BaseSelector | None = None
        self._listeners: list[socket.socket] = []
        self._bound_paths: dict[str, tuple[int, int]] = {}  # the sockets we made: (device, inode)
        self._locks: list[_address.AddressLock] = []  # held while serving: the Unix addresses are ours
        self._conns: set[_Conn] = set()
        self._conns_open: set[_Conn] = set()
        self._logins = Logins()  # the login sessions with connections now: logon, logoff, their facts
        self._soon: list[Callable[[], None]] = []
        self._soon_lock = threading.Lock()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []  # a heap: (when, order, fn)
        self._timer_order = itertools.count()
        # the built-in services (framework/service.py): one of each class, its codes dispatched to it
        self.services: list[Service] = [cls(self) for cls in services]
        self._dispatch = dispatch_table(self.services)
        self._polls = tuple(s.poll for s in self.services if type(s).poll is not Service.poll)
        self._poll_errors: set[tuple[str, str, str]] = set()  # (service, hook, error) logged by _poll_failed
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[None] | None = None
        self._driven: DrivenLoop | None = None  # an asyncio loop the threaded loop runs (framework/driven.py)
        self.bound: list[Any] = []

    # -- policy hooks ---------------------------------------------------------------

    def new_session(self, version: tuple[int, int, int], peer: Peer) -> Session:
        """Make the session for a client that asked for `version`; raise Refused to refuse it."""
        if version[0] != self.version[0] or tuple(version) > tuple(self.version):
            v = ".".join(map(str, version))
            raise Refused(f"version {v} is not supported (the server is {'.'.join(map(str, self.version))})")
        return self.session_factory(self, peer)

    # -- the session rule -------------------------------------------------------------

    def ring_capacity_for(self, asked: int) -> int:
        """What a session's rings get when its client asks for `asked` bytes each (0: the default):
        the next power of two, within SHM_MIN_CAPACITY and shm_max_capacity."""
        if asked <= 0:
            return self.shm_capacity
        return min(max(1 << (asked - 1).bit_length(), SHM_MIN_CAPACITY), self.shm_max_capacity)

    def _decide(self, peer: Peer, socket_only: bool) -> Decision:
        """Shared memory or socket for a new session, and why (DESIGN.md section 3)."""
        if self._facts is None:
            self._facts = local_facts()
        client = peer.facts
        if client is None:  # TCP: there is nothing to inspect
            client = Facts.foreign(f"a {peer.transport} peer")
        return decide(self._facts, client, policy=self.shm_policy, transport=peer.transport,
                      client_socket_only=socket_only)

    # -- events -------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[SessionEvent], None]) -> None:
        """Call callback(event) on the server's thread for every session event."""
        self._on_event.append(callback)

    def events(self, timeout: float | None = None) -> Iterator[SessionEvent]:
        """An iterator over session events from this call on; each next() blocks
        for the next event (at most `timeout` seconds, then the iteration ends)."""
        if self._events is None:
            self._events = queue.Queue()  # now, not at the first next(): nothing is missed
        q = self._events

        def gen() -> Iterator[SessionEvent]:
            while True:
                try:
                    yield q.get(timeout=timeout)
                except queue.Empty:
                    return
        return gen()

    def _event(self, ev: SessionEvent) -> None:
        log.info("session %s: %s %s", ev.kind, ev.peer, ev.reason)
        if self._events is not None:
            self._events.put(ev)
        for cb in self._on_event:
            try:
                cb(ev)
            except Exception as e:
                log.warning("session event callback raised %r", e)

    # -- lifecycle ---------------------------------------------------------------------

    def _listen(self) -> None:
        for addr in self.addresses:
            if addr.is_unix and self._activated is not None:  # systemd's socket: bound, listening, its own
                s = self._activated
                self._listeners.append(s)
                s.setblocking(False)
                self.bound.append(s.getsockname())
                continue
            if addr.is_unix:
                path = str(addr.target)
                if self.system:
                    _address.make_system_dir()
                self._locks.append(_address.AddressLock(path))  # AddressInUse: another server has it
                _clear_stale_socket(path)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._listeners.append(s)  # closed with the others if anything below fails
                try:
                    s.bind(path)
                except OSError as e:
                    raise _address.bind_error(e, path) from e
                if self.group is not None:
                    os.chown(path, -1, self.group)
                if self.mode is not None:
                    os.chmod(path, self.mode)
                st = os.lstat(path)
                self._bound_paths[path] = (st.st_dev, st.st_ino)
            else:
                s = socket.socket(addr.family, socket.SOCK_STREAM)
                self._listeners.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(addr.target)
                except OSError as e:
                    raise _address.bind_error(e, str(addr)) from e
            s.listen(512)
            s.setblocking(False)
            self.bound.append(s.getsockname())
            if not addr.is_unix and self.insecure_tcp:
                host, port = self.bound[-1][:2]
                log.warning("plain TCP on %s:%s (insecure_tcp): whoever reaches it gets a session, with no "
                            "identity; use keys instead", host, port)

    def start(self) -> Self:
        """Serve in a background thread (the embedding case)."""
        if self._thread is not None:
            raise StateError("the server is already running")
        self._setup()
        self._thread = threading.Thread(target=self._loop, name=f"broker-server {self.addresses[0]}", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self, ready: Callable[[Self], None] | None = None) -> None:
        """Serve in this thread until stop() (from another thread or a signal handler).
        ready(server), if given, runs once the addresses are bound (`server.bound`)."""
        self._setup()
        if ready is not None:
            try:
                ready(self)
            except BaseException:
                self._shutdown()
                raise
        self._loop()

    def _sweep(self) -> None:
        """Remove segments whose creator died (a crashed server's, a killed client's)."""
        try:
            for name, why in sweep():
                log.info("removed %s: %s", name, why)
        except OSError as e:  # never a reason not to serve
            log.warning("sweeping /dev/shm failed: %s", e)

    def _setup(self) -> None:
        self._sweep()
        self._stopping = False
        self._open_reserve()
        self._sel = selectors.DefaultSelector()
        try:
            self._listen()
        except BaseException:
            self._close_listeners()
            self._sel.close()
            self._sel = None
            self.bound = []
            raise
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        for s in self._listeners:
            self._sel.register(s, selectors.EVENT_READ, ("listen", s))
        try:
            self._start_metrics()
        except OSError:
            self._shutdown()
            raise

    def _start_metrics(self) -> None:
        if self._metrics_at is not None and self.metrics is None:
            from shmbroker.framework.metrics import MetricsEndpoint
            self.metrics = MetricsEndpoint(self.stats, *self._metrics_at, exporters=self._exporters())

    def _exporters(self) -> list[tuple[str, Callable[[Any, Any], None]]]:
        """(Server.stats() key, fill(stats[key], fam)) for the metrics endpoint: each service's."""
        return [(s.stats_key, type(s).metrics) for s in self.services]

    def asyncio_loop(self) -> asyncio.AbstractEventLoop:
        """An asyncio loop on the server's own thread, for work that needs one (the federation's NATS
        connection): serve_async's running loop; with the threaded loop, an asyncio loop it runs a step at a
        time on its thread (framework/driven.py), made at the first call, after the server is set up."""
        if self._aloop is not None:
            return self._aloop
        if self._driven is None:
            if self._sel is None:
                raise StateError("the server's asyncio loop is there once it is set up (start, serve_forever)")
            self._driven = DrivenLoop()
            self._sel.register(self._driven.fileno(), selectors.EVENT_READ, ("aio", None))
        return self._driven.loop

    def _close_driven(self) -> None:
        driven, self._driven = self._driven, None
        if driven is None:
            return
        if self._sel is not None:
            try:
                self._sel.unregister(driven.fileno())
            except (KeyError, ValueError, OSError):
                pass
        driven.close()

    async def serve_async(self) -> None:
        """Serve inside the running asyncio loop until stop(); services run on
        the loop, and may be coroutines (async def service)."""
        loop = asyncio.get_running_loop()
        if self._thread is not None or self._sel is not None or self._aloop is not None:
            raise StateError("the server is already running")
        self._sweep()
        self._stopping = False
        self._listen()
        self._open_reserve()
        self._aloop = loop
        self._done = loop.create_future()
        for s in self._listeners:
            loop.add_reader(s, self._accept, s)
        try:
            self._start_metrics()
            await self._done
        finally:
            for s in self._listeners:
                loop.remove_reader(s)
            self._shutdown()
            self._aloop = self._done = None

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful: no new sessions; each session is told and closed; everything is released."""
        loop, done = self._aloop, self._done
        if loop is not None and done is not None:
            def finish() -> None:
                if not done.done():
                    done.set_result(None)
            loop.call_soon_threadsafe(finish)
            return
        if self._sel is None:
            return
        self._stopping = True
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _close_listeners(self) -> None:
        for s, addr in zip(self._listeners, self.addresses):
            try:
                s.close()
            finally:
                if addr.is_unix:
                    path = str(addr.target)
                    try:
                        st = os.lstat(path)
                        if (st.st_dev, st.st_ino) == self._bound_paths.pop(path, None):
                            os.unlink(path)  # ours still: whatever replaced it since is left alone
                    except FileNotFoundError:
                        pass
        self._listeners = []
        for lock in self._locks:
            lock.release()  # after the socket is gone: a starter that takes it finds the path free
        self._locks = []

    def _loop(self) -> None:
        sel = self._sel
        assert sel is not None
        try:
            spin_ns, ns = self.spin_ns, time.perf_counter_ns
            ready: list[Any] = []
            busy = False
            next_select = 0  # when the spin calls the selector next
            while not self._stopping:
                later, self._later = self._later, []  # their turn comes after this turn's ready ones
                turn = ns()
                self.turns += 1
                driven, step = self._driven, False
                # what waits for room in a ring is retried soon; an offer's deadline is looked at often
                idle = 0.0 if later else 0.001 if self._pending_rings else 0.05 if self._offers else 1.0
                if self._timers:
                    idle = max(0.0, min(idle, self._timers[0][0] - time.monotonic()))
                if driven is not None:  # its timers are the server's too; a callback ready: no sleep
                    idle = min(idle, driven.wait())
                ready = []
                was_busy, busy = busy, False
                if self.busy_poll or (was_busy and spin_ns):  # spin then sleep: more is likely to come soon
                    now = ns()
                    end = now + spin_ns if not self.busy_poll else 1 << 62
                    if self._timers:  # a timer due meanwhile ends the spin
                        end = min(end, now + max(0, int((self._timers[0][0] - time.monotonic()) * 1e9)))
                    # Rings are looked at without a system call, every turn. The selector (sockets,
                    # listeners, the wake-up pipe) costs a system call, ~3 us here: every turn
                    # while socket sessions spin too, else every SELECT_GAP_NS.
                    # (a driven asyncio loop's sockets too: NATS's, which must be read as fast as it sends,
                    # or NATS drops this server as a slow consumer)
                    gap = 0 if len(self._conns) > len(self._ring_conns) or driven is not None else SELECT_GAP_NS
                    if gap == 0:
                        next_select = now
                    polls = self._polls
                    while True:
                        worked = bool(self._rings_polled) and self._poll_rings()
                        for poll in polls:
                            try:
                                if poll():
                                    worked = True
                            except Exception as e:  # a service's bug: it is logged, the server goes on
                                self._poll_failed(poll, e)
                        # the selector at least every gap, however busy the rings are: a new
                        # connection or a client's death is not kept waiting by a flood on a ring
                        if now >= next_select:
                            ready = sel.select(0)
                            next_select = now + gap
                            if ready:
                                busy = busy or worked
                                break
                        if driven is not None and driven.wait() <= 0.0:
                            worked = True  # (stepped below, in this turn)
                        if worked:
                            busy = True
                            break
                        now = ns()
                        if now >= end or self._stopping:
                            break
                        os.sched_yield()  # a client may be waiting for this CPU
                if not ready and not busy:
                    # every ring armed (its client rings the doorbell; a publisher's topic ring rings its
                    # session's): sleep
                    if self._arm_rings() and self._arm_services():
                        ready = sel.select(timeout=idle)
                    else:
                        busy = True  # records came as we armed: served, spin again
                        if not spin_ns:  # no spin to read a relayed ring in: read it, and the sockets, now
                            for poll in self._polls:
                                try:
                                    poll()
                                except Exception as e:
                                    self._poll_failed(poll, e)
                            ready = sel.select(0)
                    for s in self.services:
                        try:
                            s.disarm()
                        except Exception as e:
                            self._poll_failed(s.disarm, e)
                busy = busy or bool(ready) or bool(later)
                for key, mask in ready:
                    kind, obj = key.data
                    if kind == "ring":
                        obj.on_ring()
                    elif kind == "aio":
                        step = True
                    elif kind == "listen":
                        self._accept(obj)
                    elif kind == "wake":
                        self._drain_wake()
                    else:
                        if mask & selectors.EVENT_WRITE:
                            obj._flush()
                            self._watch(obj)
                        if mask & selectors.EVENT_READ and not obj.ended:
                            obj.on_readable()
                for conn in later:
                    conn._resume()
                if driven is not None and (step or driven.wait() <= 0.0):
                    try:
                        driven.step()
                    except Exception as e:  # a callback's bug: logged (as asyncio does), the server goes on
                        self._poll_failed(driven.step, e)
                    step = True
                self._run_soon()
                if self._pending_rings:
                    self._flush_rings()
                if self._offers:
                    self._expire_offers()
                if self._timers:
                    self._run_timers()
                if ns() - turn > LONG_TURN_NS and not step:
                    # a long turn: a client on this CPU may be waiting to send the next request (not after a
                    # step of the driven loop: NATS's socket is not left to fill meanwhile)
                    os.sched_yield()
        finally:
            self._shutdown()

    def _arm_services(self) -> bool:
        """Every service armed before the loop sleeps (False: one has work now, do not sleep). A service
        whose arm() raises is counted and logged (_poll_failed) and the loop may sleep: it is not kept
        spinning by a bug."""
        armed = True
        for s in self.services:
            try:
                if not s.arm():
                    armed = False
                    break
            except Exception as e:
                self._poll_failed(s.arm, e)
        return armed

    def _poll_failed(self, hook: Any, e: Exception) -> None:
        """A service's loop hook (poll, arm, disarm) raised: counted (stats()'s service_errors), logged
        with its traceback the first time for each service, hook and kind of error; the loop and every
        session go on."""
        self.counters["service_errors"] += 1
        key = (getattr(hook, "__self__", hook).__class__.__name__, getattr(hook, "__name__", "?"), type(e).__name__)
        if key not in self._poll_errors:
            self._poll_errors.add(key)
            log.error("%s.%s() raised %r: the server goes on (further errors of this kind are only counted)",
                      key[0], key[1], e, exc_info=e)

    def _shutdown(self) -> None:
        for conn in list(self._conns):
            for msg in list(conn.messages.values()):
                if not msg.completed:
                    try:
                        msg.complete(Status.CANCELLED, "the server is stopping")
                    except StateError:
                        pass
            conn._close_with("server stopped")
        self._close_listeners()
        if self._reserve_fd >= 0:
            os.close(self._reserve_fd)
            self._reserve_fd = -1
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._wake_r = self._wake_w = None
        if self._sel is not None:
            self._sel.close()
        self._sel = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        for service in self.services:
            try:
                service.close()
            except Exception as e:
                log.warning("%s.close() raised %r", type(service).__name__, e)
        self._close_driven()

    def service(self, key: str) -> Any:
        """The built-in service whose statistics are under `key` ("topics", "services"...)."""
        for s in self.services:
            if s.stats_key == key:
                return s
        raise KeyError(f"this server has no service {key!r}: it has {[s.stats_key for s in self.services]}")

    @property
    def is_async(self) -> bool:
        """Serving inside an asyncio loop (serve_async): services may await, and rings are not spun."""
        return self._aloop is not None

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(64):
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.counters["accept_errors"] += 1
                if e.errno in _NO_DESCRIPTORS:
                    self._out_of_descriptors(listener, e)
                else:
                    log.warning("accept failed: %s", e)
                return
            self._backoff = 0.0
            try:
                sock.setblocking(False)
                if sock.family != socket.AF_UNIX:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                peer = _peer(sock, next(self._ids))
            except OSError as e:  # reset between its connect and our accept (ENOTCONN, ECONNRESET): gone
                log.info("a connection ended before it was accepted: %s", e)
                sock.close()
                continue
            key = _peer_key(peer)
            mine = self._handshaking.get(key, 0)
            if mine >= self.max_handshakes_per_user or self._handshaking_total() >= self.max_handshakes:
                self._refuse_busy(sock, f"too many connections without a HELLO ({mine} of {key}; "
                                        f"{self._handshaking_total()} in all)")
                continue
            conn = _Conn(self, sock, peer)
            self._conns.add(conn)
            conn.handshaking = True
            self._handshaking[key] = mine + 1
            self.call_later(self.handshake_timeout, functools.partial(self._handshake_expired, conn))
            if self._aloop is not None:
                self._aloop.add_reader(sock, conn.on_readable)
            else:
                self._watch(conn)

    # -- what one client may hold: handshakes, descriptors, output (loop thread) ---------------

    def _handshaking_total(self) -> int:
        return sum(self._handshaking.values())

    def _handshake_over(self, conn: _Conn) -> None:
        if conn.handshaking:
            conn.handshaking = False
            n = self._handshaking.get(conn.key, 0) - 1
            if n > 0:
                self._handshaking[conn.key] = n
            else:
                self._handshaking.pop(conn.key, None)

    def _handshake_expired(self, conn: _Conn) -> None:
        if conn.handshaking and not conn.ended:
            self.counters["handshake_timeouts"] += 1
            conn.end(f"protocol error: no HELLO within {self.handshake_timeout:g} s")

    def _refuse_busy(self, sock: socket.socket, reason: str) -> None:
        """Tell a client at once that the server is busy, and close: it gets ServerBusy, not a time-out."""
        self.counters["refused_busy"] += 1
        log.info("refused a connection: %s", reason)
        try:
            sock.setblocking(False)
            try:
                sock.recv(4096)  # its HELLO, if there: closing on unread bytes would reset what we send
            except OSError:
                pass
            sock.send(encode(Refuse(Status.SERVER_BUSY, f"the server is busy: {reason}")))
        except OSError:
            pass
        finally:
            sock.close()

    def _open_reserve(self) -> None:
        if self._reserve_fd < 0:
            try:
                self._reserve_fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._reserve_fd = -1

    def _out_of_descriptors(self, listener: socket.socket, e: OSError) -> None:
        """accept failed for want of descriptors: the listener stays readable, so without care the loop
        would spin on it while its clients time out. The reserve descriptor, given up for a moment, lets
        each waiting client be accepted and told the server is busy; when even that fails, the listeners
        are off for a while (ACCEPT_BACKOFF), and the log says so."""
        for _ in range(64):
            if self._reserve_fd < 0:
                break
            os.close(self._reserve_fd)
            self._reserve_fd = -1
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                self._open_reserve()
                return  # every waiting client was told: nothing left to spin on
            except OSError:
                self._open_reserve()
                break
            self._refuse_busy(sock, f"it is out of file descriptors ({e.strerror})")
            self._open_reserve()
        else:
            return  # more wait: the next turn tells them
        delay = self._backoff = min(max(self._backoff * 2, ACCEPT_BACKOFF[0]), ACCEPT_BACKOFF[1])
        log.warning("accept failed: %s; not accepting new connections for %.2f s", e.strerror, delay)
        for s in self._listeners:
            self._unwatch(s)
        self.call_later(delay, self._listen_again)

    def _unwatch(self, fd: Any) -> None:
        """Stop watching a descriptor (or socket) for input, whichever loop serves, if it is watched."""
        try:
            if self._aloop is not None:
                self._aloop.remove_reader(fd)
            elif self._sel is not None:
                self._sel.unregister(fd)
        except (KeyError, ValueError, OSError):
            pass

    def _listen_again(self) -> None:
        self._open_reserve()
        for s in self._listeners:
            try:
                if self._aloop is not None:
                    self._aloop.add_reader(s, self._accept, s)
                elif self._sel is not None:
                    self._sel.register(s, selectors.EVENT_READ, ("listen", s))
            except (KeyError, ValueError, OSError):
                pass

    def _watch(self, conn: _Conn) -> None:
        """(threaded loop) Watch a connection's socket for what it needs now: input unless it is paused (a
        shared-memory session's socket always: it is how its death is seen), output while some waits."""
        sel = self._sel
        if conn.ended or sel is None:
            return
        want = (selectors.EVENT_READ if conn.reading or conn.on_rings else 0) | (
            selectors.EVENT_WRITE if not conn.on_rings and conn.carrier.pending_bytes else 0)
        if want == conn.watching:
            return
        try:
            if not conn.watching:
                sel.register(conn.sock, want, ("conn", conn))
            elif not want:
                sel.unregister(conn.sock)
            else:
                sel.modify(conn.sock, want, ("conn", conn))
        except (KeyError, ValueError, OSError):
            return
        conn.watching = want

    def _queued_add(self, key: str, d: int) -> int:
        """A user's bytes waiting to go out changed by d (any thread): the new total."""
        with self._queued_lock:
            t = self._queued.get(key, 0) + d
            if t > 0:
                self._queued[key] = t
            else:
                self._queued.pop(key, None)
            return t

    def _pause(self, conn: _Conn) -> None:
        """Its output is at a bound: stop reading it. At its own bound, it has stall_timeout to read."""
        if conn.ended or not conn.paused:
            return
        if conn.reading:
            conn.reading = False
            self._paused.add(conn)
            self.counters["paused"] += 1
            rings = conn.rings
            if conn.on_rings and rings is not None:
                self._ring_conns.discard(conn)
                self._rings_polled = tuple(e for e in self._rings_polled if e[0] is not conn)
                self._unwatch(rings.doorbell)
            elif self._aloop is not None:
                self._aloop.remove_reader(conn.sock)
            else:
                self._watch(conn)
            log.info("session %s: %d bytes wait to go out: not read until half of them are gone",
                     conn.peer, conn.counted)
        if conn.stalled_since is None and conn.counted >= self.max_queued:
            since = conn.stalled_since = time.monotonic()
            self.call_later(self.stall_timeout, functools.partial(self._stall_expired, conn, since))

    def _stall_expired(self, conn: _Conn, since: float) -> None:
        if conn.ended or conn.stalled_since != since or not conn.paused:
            return
        if conn.counted < self.max_queued // 2:  # its own output drained: what holds it is its user's other
            conn.stalled_since = None
            return
        self.counters["stalled"] += 1
        conn.end(f"stalled: {conn.counted} bytes of its replies waited to go out for over "
                 f"{self.stall_timeout:g} s (max_queued {self.max_queued})")

    def _unpause(self, conn: _Conn) -> None:
        """Its output drained below half its bound (and its user's): handle what was held, read again."""
        if conn.ended or not conn.paused:
            return
        if conn.counted > self.max_queued // 2 or self._queued.get(conn.key, 0) >= self.max_queued_per_user // 2:
            return
        conn.paused = False
        conn.stalled_since = None
        self._paused.discard(conn)
        conn._resume()

    def _next_turn(self, conn: _Conn) -> None:
        """(loop thread) conn's held events, in its next turn: after every other ready connection had one."""
        if self._aloop is not None:
            self._aloop.call_soon(conn._resume)
        else:
            self._later.append(conn)

    def _unpause_user(self, key: str) -> None:
        for conn in [c for c in self._paused if c.key == key]:
            self._unpause(conn)

    def _read_again(self, conn: _Conn) -> None:
        conn.reading = True
        if conn.on_rings and conn.rings is not None:
            self._watch_rings(conn)  # records that came meanwhile: the spin, or the arming before a sleep, sees them
        elif self._aloop is not None:
            self._aloop.add_reader(conn.sock, conn.on_readable)
        else:
            self._watch(conn)

    def _poll_rings(self) -> bool:
        """Serve every ring session with something to read; True if any had."""
        served = False
        for conn, _rings, ready in self._rings_polled:  # _rings: keeps what ready() looks at alive
            if ready():  # an error is truthy too: on_ring finds out what it is and ends the session
                conn.on_ring(False)
                served = True
        return served

    def _arm_rings(self) -> bool:
        """Before sleeping: arm every ring session's doorbell; False if one had records (now served)."""
        armed = True
        for conn in list(self._ring_conns):
            rings = conn.rings
            try:
                ok = rings is None or rings.arm()
            except BrokerError:
                ok = False
            if not ok:
                conn.on_ring(False)
                armed = False
        return armed

    def _offered(self, conn: _Conn) -> None:
        """An offer went out: its answer is due within offer_timeout, or the session ends."""
        if self._aloop is not None:
            self._aloop.call_later(self.offer_timeout, self._offer_expired, conn)
        else:
            self._offers[conn] = time.monotonic() + self.offer_timeout

    def _offer_expired(self, conn: _Conn) -> None:
        if conn.proto.offered and not conn.ended:
            conn._close_with(f"protocol error: no answer to SHM_OFFER within {self.offer_timeout:g} s")

    def _expire_offers(self) -> None:
        now = time.monotonic()
        for conn, deadline in list(self._offers.items()):
            if conn.ended or not conn.proto.offered:
                self._offers.pop(conn, None)
            elif now >= deadline:
                self._offers.pop(conn, None)
                self._offer_expired(conn)

    def _watch_rings(self, conn: _Conn) -> None:
        """Poll the session's doorbell with everything else."""
        assert conn.rings is not None
        if self._aloop is None:
            self._ring_conns.add(conn)
            self._rings_polled = self._rings_polled + ((conn, conn.rings, conn.rings.ready),)
        fd = conn.rings.doorbell
        if self._aloop is not None:
            self._aloop.add_reader(fd, conn.on_ring)
        elif self._sel is not None:
            self._sel.register(fd, selectors.EVENT_READ, ("ring", conn))

    def _rings_pending(self, conn: _Conn) -> None:
        """Ring 1 of `conn` was full: retry soon (any thread); conn._flush asks again while some waits."""
        if self._aloop is not None:
            self._aloop.call_soon_threadsafe(self._aloop.call_later, 0.001, conn._flush)
            return
        with self._soon_lock:
            self._pending_rings.add(conn)
        if threading.current_thread() is not self._thread:
            self._wake()

    def _flush_rings(self) -> None:
        with self._soon_lock:
            todo, self._pending_rings = self._pending_rings, set()
        for conn in todo:
            conn._flush()

    def _forget(self, conn: _Conn) -> None:
        self._handshake_over(conn)
        self._paused.discard(conn)
        self._conns.discard(conn)
        self._conns_open.discard(conn)
        self._pending_rings.discard(conn)
        self._ring_conns.discard(conn)
        self._rings_polled = tuple(e for e in self._rings_polled if e[0] is not conn)
        self._offers.pop(conn, None)
        if conn.on_rings and conn.rings is not None:
            self._unwatch(conn.rings.doorbell)
        if self._aloop is not None:
            try:
                self._aloop.remove_reader(conn.sock)
                self._aloop.remove_writer(conn.sock)
            except (ValueError, OSError):
                pass
        elif self._sel is not None and conn.watching:
            conn.watching = 0
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass

    # -- cross-thread ------------------------------------------------------------------

    def _wake(self) -> None:
        w = self._wake_w
        if w is not None:
            try:
                w.send(b"\0")
            except (BlockingIOError, OSError):
                pass

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """fn() on the server's loop thread after `delay` seconds (from the loop thread only)."""
        if self._aloop is not None:
            self._aloop.call_later(delay, fn)
            return
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_order), fn))

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            try:
                fn()
            except Exception as e:  # a timer's failure is logged; the server goes on
                log.warning("a timer raised %r", e)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """fn() on the server's loop thread, soon (from any thread)."""
        self._call_soon(fn)

    def _call_soon(self, fn: Callable[[], None]) -> None:
        if self._aloop is not None:
            self._aloop.call_soon_threadsafe(fn)
            return
        with self._soon_lock:
            self._soon.append(fn)
        self._wake()

    def _run_soon(self) -> None:
        with self._soon_lock:
            todo, self._soon = self._soon, []
        for fn in todo:
            fn()

    def _want_write(self, conn: _Conn) -> None:
        """Some of conn's output waits (any thread): flush it when there is room again, the socket
        writable or, for the rings, soon."""
        if conn.on_rings:
            self._rings_pending(conn)
            return
        loop = self._aloop
        if loop is not None:
            def writable() -> None:
                conn._flush()
                if not conn.carrier.pending_bytes or conn.ended:
                    loop.remove_writer(conn.sock)

            def arm_async() -> None:
                if not conn.ended:
                    loop.add_writer(conn.sock, writable)
            loop.call_soon_threadsafe(arm_async)
            return

        def arm() -> None:
            self._watch(conn)
        if threading.current_thread() is self._thread:
            arm()
        else:
            self._call_soon(arm)

    # -- statistics ------------------------------------------------------------------------

    def sessions(self) -> list[dict[str, Any]]:
        """The live sessions: peer, transport and the rule's verdict, traffic, outstanding requests, sub-sessions."""
        return [
            {"peer": c.peer, "identity": c.peer.identity, "outstanding": len(c.messages), "slots": c.slots,
             "subsessions": len(c.session.objects) if c.session is not None else 0,
             "transport": c.carrier.kind,
             "ring_capacity": r.capacity if c.on_rings and r is not None else None,
             "shm_allowed": bool(c.decision and c.decision.shm),
             "rule": str(c.decision) if c.decision else "",
             "requests": c.requests, "completions": c.completions, "cancels": c.cancels, "bytes_in": c.bytes_in, "bytes_out": c.bytes_out,
             "queued_bytes": c.counted, "paused": c.paused,
             "partial_frame_bytes": c.proto.reader.pending, "login_session": owner_of(c.peer)}
            for c, r in ((c, c.rings) for c in sorted(self._conns_open, key=lambda c: c.peer.connection_id))
        ]

    def login_sessions(self) -> list[dict[str, Any]]:
        """The login sessions with connections now, as the kernel describes them: login_session (the key,
        its Local namespace), user, uid, session_id, tty, seat (and logind's display, remote_host...),
        connections (their ids). A TCP peer's is its identity's."""
        return self._logins.list()

    def stats(self) -> dict[str, Any]:
        """sessions() and the server's own facts, as JSON-able data (what `shmbroker stat` shows)."""
        rows = []
        for row in self.sessions():
            p = row.pop("peer")
            rows.append({"connection_id": p.connection_id, "connection": p.transport, "pid": p.pid, "uid": p.uid,
                         "gid": p.gid, "address": list(p.address) if p.address else None, **row})
        where = [b if isinstance(b, str) else f"tcp://{b[0]}:{b[1]}" for b in self.bound]
        bounds = {**self.counters, "queued_bytes": sum(self._queued.values()), "paused_now": len(self._paused),
                  "handshaking_now": self._handshaking_total(), "max_queued": self.max_queued,
                  "max_queued_per_user": self.max_queued_per_user, "stall_timeout": self.stall_timeout,
                  "handshake_timeout": self.handshake_timeout, "max_handshakes": self.max_handshakes,
                  "max_handshakes_per_user": self.max_handshakes_per_user}
        return {"pid": os.getpid(), "uid": self.uid, "addresses": where,
                "tcp": None if len(self.addresses) < 2 else ("insecure" if self.insecure_tcp else "keys"),
                "keys": sorted(self.keys) if self.keys is not None else [],
                "grants": [str(g) for g in self.access.grants],
                "shm_policy": self.shm_policy, "sessions": rows, "login_sessions": self.login_sessions(),
                "bounds": bounds,
                **{s.stats_key: s.stats() for s in self.services}}
