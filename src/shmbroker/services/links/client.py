"""Linked services at the clients: Offer (a provider) and Link (a caller); the design: src/shmbroker/services/links/__init__.py."""
from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

from shmbroker._errors import BrokerError, Closed, Overflow, PeerGone, ServiceError, Timeout
from shmbroker.core import proc as _proc
from shmbroker.core.native import RING as _RING_CALLS
from shmbroker.core.native import RING_EMPTY as _RING_EMPTY
from shmbroker.core.ring import Bell, any_waiter, open_pair, session_call, wait_any
from shmbroker.framework.client import CALL_WAIT_NS, Buffer, ClientSession, SubSession, apply_writes, result_of, to_arg
from shmbroker.protocol.codes import LINK_CALL, LINK_OFFER, LINK_OPEN, LINK_PAIR, LINK_REPLY, LINK_TAKE, LINK_UNPAIR
from shmbroker.protocol.serial import DecodeError
from shmbroker.protocol.serial import serializer as _serializer
from shmbroker.protocol.frames import (HEADER_SIZE, MAX_TEXT, NO_ARG, Arg, Complete, FrameReader, ProtocolError, Request,
                                    Status, c_encode_complete, c_feed, complete_frame, request_frame)
from shmbroker.services.links.wire import (A_INT, A_READ, A_READWRITE, A_WRITE, MAX_ERROR, MAX_PAIRS, TAKE_HEAD,
                                        TAKE_PAIR, TAKE_UNPAIR, pack_call, pack_writes, unpack_call, unpack_writes)
from shmbroker.transport.carrier import TIMEOUT as _RING_TIMEOUT

log = logging.getLogger("shmbroker.links")

_fsend, _frecv = _RING_CALLS["send"], _RING_CALLS["recv"]


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
        d = self.writes.get(i, a.data) if self.writes else a.data
        return d if type(d) is bytes else bytes(d)  # (a big call's argument is a view of its frame)

    def read_view(self, i: int) -> memoryview:
        """A read-only view of a readable argument: no copy (see broker.Message.read_view)."""
        a = self._arg(i)
        if a.kind != A_READ and a.kind != A_READWRITE:
            raise TypeError(f"argument {i} is not readable")
        d = self.writes.get(i, a.data) if self.writes else a.data
        return d if type(d) is memoryview else memoryview(d).toreadonly()

    def max_length(self, i: int) -> int:
        a = self._arg(i)
        return a.value if a.kind in (A_WRITE, A_READWRITE) else len(a.data)

    def write(self, i: int, data: bytes) -> None:
        a = self._arg(i)
        k = a.kind
        if k != A_WRITE and k != A_READWRITE:
            raise TypeError(f"argument {i} is not writable")
        if len(data) > a.value:
            raise Overflow(f"{len(data)} bytes into argument {i} of at most {a.value}")
        self.writes[i] = data if type(data) is bytes else bytes(data)

    def decode(self, i: int, serializer: Any) -> Any:
        """A readable argument as the object the caller's serializer made of it (link.call(...,
        serializer=)); DecodeError (a ValueError: the call fails with ARGUMENT) when it is not."""
        ser = _serializer(serializer)
        if ser is None:
            raise ValueError("decode() needs a serializer")
        return ser.decode(self.read_view(i))

    def reply(self, obj: Any, serializer: Any = None) -> None:
        """Write obj (bytes, or any object with a serializer) into the reply argument: the last
        writable one, where link.call() takes its reply."""
        ser = _serializer(serializer)
        self.write(self._reply_arg(), ser.encode(obj) if ser is not None else obj)

    def _reply_arg(self) -> int:
        for i in range(3, -1, -1):
            if self._args[i].kind in (A_WRITE, A_READWRITE):
                return i
        raise TypeError("this call has no writable argument for a reply")


def serialized_handler(handler: Callable[..., Any], spec: Any) -> Callable[[LinkedCall], Any]:
    """An offer's handler that takes objects: handler(call, *decoded arguments) -> an object, written
    encoded as the reply (every argument before the reply's is decoded; one the serializer cannot
    read fails that call alone, with ARGUMENT)."""
    ser = _serializer(spec)
    if ser is None:
        return handler

    def run(call: LinkedCall) -> Any:
        last = call._reply_arg()
        objs = [ser.decode(call.read_view(i)) for i in range(last)]
        result = handler(call, *objs)
        if inspect.isawaitable(result):
            async def finish() -> int:
                call.reply(await result, ser)
                return 0
            return finish()
        call.reply(result, ser)
        return 0
    return run


class _ProvidedPair:
    """The provider's side of a private pair: it reads the calls of one caller from ring 0 and
    writes the replies into ring 1 (the caller's C call reads them; csrc/py/client.c, call)."""

    def __init__(self, name: str, spin_us: float, max_frame: int, fd: int | None = None) -> None:
        self.tx, self.rx = open_pair(name, spin_us, caller=False, fd=fd)
        self.name = name
        self.max_frame, self.max_record = max_frame, self.tx.max_record
        self.since = time.monotonic()
        tx, rx = self.tx, self.rx
        tx_addr, rx_addr = tx.address, rx.address

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
        events, at = c_feed(data, 0, self.max_frame)  # the common case in C; the reader says what is wrong
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
        events, at = c_feed(data, 0, self.max_frame)
        if at != len(data) or len(events) != 1 or type(events[0]) is not Request:
            raise ProtocolError("a record that is not one whole request")
        req = events[0]
        status, writes, text = run(LinkedCall(req.code, req.args))
        frame = c_encode_complete(req.request_id, status, list(writes.items()) if writes else (), text or None)
        if frame is NotImplemented or len(frame) > self.max_record or len(text) > MAX_TEXT:
            self.reply(req.request_id, status, writes, text)  # the long way says what does not fit
        else:
            self.send(frame)
        return True

    def reply(self, rid: int, status: int, writes: dict[int, bytes], text: bytes) -> None:
        frame = c_encode_complete(rid, status, list(writes.items()) if writes else (), text[:MAX_TEXT] or None)
        if frame is NotImplemented:
            frame = complete_frame(rid, status, list(writes.items()), text.decode(errors="replace") or None)
        if len(frame) > self.max_record:
            frame = complete_frame(rid, int(Status.OVERFLOW), [], f"the reply takes {len(frame)} bytes, more than "
                                                                 f"the link's ring carries ({self.max_record})")
        self.send(frame)

    def gone(self) -> bool:
        """The caller closed its side, or died, or never came."""
        h = self.rx.handle
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
    (waiting on all of them at once: src/shmbroker/core/ring.py wait_any)."""

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
            args = [Arg(kind, value, blob) for kind, value, blob in unpack_call(data[TAKE_HEAD.size:])]  # type: ignore[arg-type]  # (an int kind: ArgKind is an IntEnum)
            return cid, LinkedCall(code, args + [NO_ARG] * (4 - len(args))), b""
        except ValueError as e:
            return cid, None, f"a call the provider cannot read: {e}".encode()

    def _attach(self, name: str) -> tuple[_ProvidedPair | None, tuple[Any, ...]]:
        """Attach to a pair the broker made: the pair (or None) and the LINK_REPLY's arguments."""
        cid = self._pair_cid
        try:
            spin = self.session.spin_ns / 1000 if self.session.spin_ns else 50.0
            pair = self.session.passed_segment(name, lambda fd: _ProvidedPair(name, spin, self.session.max_frame, fd))
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
        status = Status.ARGUMENT if isinstance(e, DecodeError) else Status.DIED  # the caller's bytes, or the handler
        return int(status), {}, f"{type(e).__name__}: {e}".encode()[:MAX_ERROR]

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
                woke = waiter(seen, left)  # type: ignore[misc]  # (made above on the first pass: rings starts None)
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
        return self.session.spin_ns / 1000 if self.session.spin_ns else 0.0

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
                attached, reply = self._attach(got)
                self._paired(attached, await self.session.asend_receive(LINK_REPLY, *reply, handle=self.handle))
                continue
            if got is None:
                continue
            cid, taken, text = got
            status, writes, text = await self._arun(taken, text)
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
        self._ask = session.carrier is not None and not session.sharable
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
            spin = self.session.spin_ns / 1000 if self.session.spin_ns else 50.0
            name = buf.value.decode()
            pair = self.session.passed_segment(name, lambda fd: _CallerPair(name, spin, self.session.max_frame, fd))
            h = pair.rx.handle
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

    def send_receive(self, code: int, *args: Any, timeout: float | None = None) -> int:
        pair = self._pair
        if pair is not None and timeout is None:  # the common case first: one C call
            self._rid = rid = self._rid + 1
            r = pair.call(rid, code, 0, args, CALL_WAIT_NS, pair.max_frame)
            if type(r) is int and r >= 0:
                self.direct = True
                return r
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
        if (self._stale and self._pairing is None and self._pair is None and self.session.carrier is not None
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
            wait_ns = CALL_WAIT_NS if timeout is None else max(0, min(CALL_WAIT_NS, int(timeout * 1e9)))
            r = pair.call(rid, code, 0, args, wait_ns, pair.max_frame)
        if type(r) is int:
            return r if r >= 0 else result_of(Complete(rid, r))
        if r is NotImplemented:  # an argument C does not take (a bytearray), or a big frame: Python writes it
            if len(args) > 4:
                raise TypeError("at most four arguments")
            frame = request_frame(rid, code, 0, False, [to_arg(a) for a in args] + [NO_ARG] * (4 - len(args)))
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
                    apply_writes(args, done)
                    return result_of(done)

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

    def call(self, code: int, *args: Any, timeout: float | None = None, serializer: Any = None,
             reply_size: int = 1 << 20) -> Any:
        """send_receive that gives the reply (what the provider writes into a writable argument after
        `args`, at most reply_size bytes: call.reply(...)) as bytes, or with a serializer (a name
        of broker.SERIALIZERS, or an object with encode and decode) takes objects as arguments and
        gives the reply decoded; DecodeError if the provider's reply is not what it reads."""
        if len(args) > 3:
            raise TypeError("call() takes at most three arguments: the fourth carries the reply")
        ser = _serializer(serializer)
        if ser is not None:
            args = tuple(ser.encode(a) for a in args)
        out = Buffer(reply_size)
        self.send_receive(code, *args, out, timeout=timeout)
        return out.value if ser is None else ser.decode(out.value)

    def send(self, code: int, *args: Any) -> "Future[int]":
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
        """send_receive for asyncio, never blocking the loop: through the broker (a private pair's calls
        are C calls that wait on a futex), the provider's writes applied to the arguments, the same typed
        errors as send_receive (ServiceError: DISCONNECTED when the provider went, NOT_FOUND when
        nobody offers it; ServerGone...). A cancelled await cancels the call: the broker is told, and
        the session's slot is free at once."""
        blob, room = pack_call(args, Buffer)
        out = Buffer(room) if room else None
        status = await self.session.asend_receive(LINK_CALL, code, blob, out, handle=self.handle)
        self._relayed_writes(args, out)
        return status

    async def aclose(self) -> None:
        """close() for asyncio: the server's part awaited."""
        pair, self._pair = self._pair, None
        if pair is not None:
            pair.close()
        fut, self._pairing = (self._pairing or (None, None))[1], None
        await super().aclose()
        if fut is not None and not self.session.closed:
            try:
                await asyncio.wait_for(self.session.await_future(fut), 5.0)
            except (Exception, TimeoutError):
                pass

    async def __aenter__(self) -> "Link":
        return self

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


def open_offer(session: ClientSession, name: str, handler: Callable[..., Any],
               max_call: int = 1 << 20, serializer: Any = None) -> Offer:
    handler = serialized_handler(handler, serializer)
    return Offer(session, session.send_receive(LINK_OFFER, name.encode()), name, handler, max_call)


def open_link(session: ClientSession, name: str) -> Link:
    return Link(session, session.send_receive(LINK_OPEN, name.encode()), name)



async def aopen_offer(session: ClientSession, name: str, handler: Callable[[LinkedCall], Any],
                      max_call: int = 1 << 20) -> Offer:
    return Offer(session, await session.asend_receive(LINK_OFFER, name.encode()), name, handler, max_call)


async def aopen_link(session: ClientSession, name: str) -> Link:
    return Link(session, await session.asend_receive(LINK_OPEN, name.encode()), name)
