"""Publish/subscribe topics, the client's side: session.publisher(topic) and session.subscriber(topic).

Both are sub-sessions of a session (SubSession): the server's TopicBroker
(src/shmbroker/services/topics/broker.py) keeps each topic's publishers, subscribers, queues and
history. A Publisher's publish() is one call (it waits at the server while a
blocking subscriber's queue is full, up to the publisher's block_timeout,
then raises FullTimeout and nobody got the message); publish_many() sends a
batch in one call. A Subscriber keeps one FETCH outstanding (one of the
session's message slots) so the next batch is on its way while the last one
is read; receive() returns bytes, or a numpy array (shape and dtype as
published, read-only, over the received bytes without another copy).
"""
from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import re
import struct
import time
from collections import deque
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any, Iterable, Iterator, NamedTuple, NoReturn, TypeVar, overload

import numpy as np

from shmbroker.framework.client import Buffer, ClientSession, SubSession, ViewBuffer
from shmbroker.framework.session import CLOSE_SUBSESSION
from shmbroker._errors import (BrokerError, Closed, Disconnected, Empty, EmptyTimeout, Evicted, Full, FullTimeout, PeerGone,
                      ServerGone, ServiceError, StateError, TooBig)
from shmbroker.protocol.frames import Status
from shmbroker.protocol.serial import DecodeError
from shmbroker.protocol.serial import serializer as _serializer
from shmbroker.core.native import RING_FULL as _RING_FULL
from shmbroker.core.native import lib as _lib
from shmbroker.core.native import RING as _RING_CALLS
from shmbroker.core.ring import Broadcast
if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from numpy.typing import DTypeLike, NDArray

    _S = TypeVar("_S", bound=np.generic)  # an array's scalar type, as a dtype argument names it

from shmbroker.services.topics.wire import (MAX_META, RECORD_HEAD, RING_ADD, RING_GONE, TABLE_ENTRY, TOPIC_OF,
                      Assembler, split_record,
                      TOPIC_DIRECT, TOPIC_FETCH, TOPIC_LIST, TOPIC_PUBLISH, TOPIC_PUBLISH_MANY, TOPIC_PUBLISHER,
                      TOPIC_SUBSCRIBER)

_PLAIN = RECORD_HEAD.pack
_HEAD_SIZE = RECORD_HEAD.size
_UNPACK = functools.partial(RECORD_HEAD.unpack_from, offset=0)
_WAIT_SLICE = 0.01  # a direct subscriber waits on a ring this long at a time, then looks at its FETCH
_FETCH_EVERY = 256  # a direct subscriber looks at its FETCH at least every this many messages
# asyncio's looks at a broadcast ring (whose waiters sleep on a futex no loop can watch): between looks
# that found nothing, sleeps on the loop from _NAP_MIN, doubled each time, up to _NAP_MAX
_NAP_MIN, _NAP_MAX = 50e-6, 0.002
_tsend, _tsend_many = _RING_CALLS["topic_send"], _RING_CALLS["topic_send_many"]  # csrc/py/ring.c: plain messages
_trecv, _trecv_many = _RING_CALLS["topic_recv"], _RING_CALLS["topic_recv_many"]

_tpublish = _RING_CALLS["topic_publish"]  # any payload kind, straight from the caller's buffer into the ring
_trecv_into = _RING_CALLS["topic_recv_into"]
_tfrag_start, _trecv_frags = _RING_CALLS["topic_frag_start"], _RING_CALLS["topic_recv_frags"]
_RING_EMPTY = _lib.BRK_EMPTY
_tunpack = _RING_CALLS["topic_unpack"]  # a relayed batch read in C (csrc/py/ring.c)


def _assembler() -> Assembler:
    """A direct subscriber's books of one publisher's ring: a message in fragments is put together by C
    in one destination of its whole size (topic_recv_frags), read once from the ring."""
    return Assembler(start=_tfrag_start)
_RING_TOOBIG = _lib.BRK_TOOBIG

# The meta of a numpy array: a marker, u8 (nd1) or u16 (nd2) length + the dtype, u8 ndim, ndim x u64 shape.
# nd1: the dtype as dtype.str ("<f8"), for every dtype that string describes; nd2: its descr as JSON
# (numpy.lib.format's), for those it does not: structured dtypes, which dtype.str turns into "|V12".
_ARRAY = b"nd1"
_ARRAY_DESCR = b"nd2"
_MAX_DIMS = 32
_DTYPE_STR = re.compile(rb"[<>|=]?[A-Za-z][0-9]{0,12}(\[[A-Za-z0-9]{1,8}\])?")
_CACHE = 256  # dtypes and metas remembered each way (a publisher's, a subscriber's): most programs use a few


def _dtype_bytes(dt: np.dtype) -> bytes:
    """The dtype part of an array's meta (marker and length included)."""
    s: bytes = dt.str.encode()  # (numpy's stubs type dtype.str Any before Python 3.11)
    if np.dtype(dt.str) == dt and len(s) <= 255:
        return _ARRAY + bytes([len(s)]) + s
    if dt.hasobject:
        raise TypeError("an array of Python objects cannot be published: its bytes are pointers")
    descr = np.lib.format.dtype_to_descr(dt)
    d = json.dumps(descr, separators=(",", ":")).encode()
    if not _sound_descr(json.loads(d), 0):  # what every receiver would refuse is refused here, at once
        raise TypeError(f"dtype {dt} cannot be published: its description is not one a receiver takes "
                        f"(field titles, or nesting over 8 deep)")
    if len(d) > MAX_META - 512:
        raise TypeError(f"dtype {dt} is too long to describe in a message's meta ({len(d)} bytes)")
    return _ARRAY_DESCR + struct.pack("<H", len(d)) + d


@functools.lru_cache(maxsize=_CACHE)
def _array_meta(dt: np.dtype, shape: tuple[int, ...]) -> bytes:
    if dt.hasobject:
        raise TypeError("an array of Python objects cannot be published: its bytes are pointers")
    if len(shape) > _MAX_DIMS:
        raise TypeError(f"an array of {len(shape)} dimensions cannot be published (at most {_MAX_DIMS})")
    return _dtype_bytes(dt) + bytes([len(shape)]) + struct.pack(f"<{len(shape)}Q", *shape)


class Received(NamedTuple):
    """One message as a subscriber got it: which publisher (its id at the server), its sequence
    number there (from 1, in publishing order), the value (bytes or a numpy array) and its topic
    (the subscriber's own, or for a prefix subscriber, "prices.*", the one it was published to)."""

    publisher: int
    seq: int
    value: bytes | np.ndarray
    topic: str = ""


_frombuffer = np.frombuffer


def _payload(data: Any) -> tuple[Any, bytes]:
    """(buffer, meta) of what publish() takes: the caller's own buffer, and the meta (b"" for
    bytes-like; an array's dtype and shape). A memoryview that is not C-contiguous is made so; an
    array that is not is left to the caller (_publish_ring, _encode), who finds out at no cost when
    it is one."""
    t = type(data)
    if t is bytes or t is bytearray:
        return data, b""
    if t is np.ndarray or isinstance(data, np.ndarray):
        return data, _array_meta(data.dtype, data.shape)
    if isinstance(data, (bytes, bytearray)):
        return data, b""
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"publish() takes bytes, a bytes-like object or a numpy array, not {t.__name__}") from None
    return (view if view.c_contiguous else view.tobytes()), b""


def _encode(data: Any) -> tuple[bytes, bytes]:
    """(payload as bytes, meta) of what publish() takes, for the calls that carry it in a frame."""
    buf, meta = _payload(data)
    return (buf if type(buf) is bytes else _flat(buf).tobytes()), meta


def _flat(x: Any) -> memoryview:
    """x's bytes as a flat memoryview, without a copy when x is C-contiguous (arrays of any shape,
    zero-size and 0-d ones too, which memoryview.cast refuses)."""
    if isinstance(x, np.ndarray):
        return memoryview(np.ascontiguousarray(x).reshape(-1).view(np.uint8))  # type: ignore[arg-type, unused-ignore]  # (numpy's stubs: ndarray.__buffer__ on Python 3.12+ only)
    v = memoryview(x)
    return v if v.format == "B" and v.ndim == 1 else memoryview(np.frombuffer(v, np.uint8) if v.c_contiguous  # type: ignore[arg-type, unused-ignore]  # (as above)
                                                                else np.frombuffer(v.tobytes(), np.uint8))


def _decode(data: Any, meta: bytes) -> Any:
    """The value of a message: its payload (bytes, or any buffer), or for an array's meta a numpy
    array over it (read-only when the payload is). ServerGone for a meta that is not sound."""
    if not meta:
        return data
    dtype, shape, nbytes = _meta_array(meta)
    if nbytes != (len(data) if type(data) is bytes else memoryview(data).nbytes):
        raise ServerGone("an array message whose shape and dtype do not match its bytes")
    try:
        a = np.frombuffer(data, dtype)
        return a if len(shape) == 1 else a.reshape(shape)  # (frombuffer's is 1-d already)
    except ValueError as e:  # numpy's own limits (a zero-size array with a dimension too big, say)
        raise ServerGone(f"an array message numpy cannot make: {e}") from None


@functools.lru_cache(maxsize=_CACHE)
def _meta_array(meta: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, bytes) of an array's meta; ServerGone if it is not sound (and not remembered)."""
    if meta.startswith(_ARRAY) and len(meta) >= 5:
        n = meta[3]
        dt, at = meta[4:4 + n], 4 + n
        # only what dtype.str of an array is ("<f8", "|S5", "<M8[ns]"...): numpy parses anything else
        # (commas, parentheses) with ast.literal_eval, which raises SyntaxError and more on junk
        if not _DTYPE_STR.fullmatch(dt):
            raise ServerGone(f"a message with an unknown dtype {dt!r}")
        try:
            dtype = np.dtype(dt.decode())
        except (TypeError, ValueError, UnicodeDecodeError):
            raise ServerGone(f"a message with an unknown dtype {dt!r}") from None
    elif meta.startswith(_ARRAY_DESCR) and len(meta) >= 6:
        (n,) = struct.unpack_from("<H", meta, 3)
        dt, at = meta[5:5 + n], 5 + n
        try:  # JSON of the shape a descr has (_sound_descr), then numpy's own reader of a descr
            descr = json.loads(dt)
            if not _sound_descr(descr, 0):
                raise ValueError("not a descr")
            dtype = np.lib.format.descr_to_dtype(_lists_to_tuples(descr))
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError, UnicodeDecodeError):
            raise ServerGone(f"a message with an unknown dtype {dt[:64]!r}") from None
    else:
        raise ServerGone(f"a message with an unknown meta ({meta[:8]!r})")
    if at >= len(meta):
        raise ServerGone("a message with a cut array meta")
    ndim = meta[at]
    if len(meta) != at + 1 + 8 * ndim:
        raise ServerGone("a message with a cut array meta")
    if ndim > _MAX_DIMS:
        raise ServerGone(f"an array message of {ndim} dimensions (at most {_MAX_DIMS})")
    shape = struct.unpack_from(f"<{ndim}Q", meta, at + 1)
    # the publisher is untrusted: a dtype that frombuffer cannot take (no bytes, a sub-array, Python
    # objects), or a shape whose product is counted exactly (never modulo 2**64), is a bad message
    if dtype.hasobject or dtype.itemsize == 0 or dtype.subdtype is not None:
        raise ServerGone(f"an array message of dtype {dtype} cannot be received")
    return dtype, shape, math.prod(shape) * dtype.itemsize


def _sound_descr(d: Any, depth: int) -> bool:
    """Is d (from an untrusted publisher's JSON) what dtype_to_descr makes: a format string numpy reads
    without evaluating anything (_DTYPE_STR), or a list of [name, format(, shape)] fields, at most 8
    deep? numpy parses any other string with ast.literal_eval."""
    if isinstance(d, str):
        return _DTYPE_STR.fullmatch(d.encode()) is not None
    if not isinstance(d, list) or depth >= 8 or len(d) > 1024:
        return False
    for f in d:
        if not isinstance(f, list) or len(f) not in (2, 3) or not isinstance(f[0], str) or len(f[0]) > 255:
            return False
        if not _sound_descr(f[1], depth + 1):
            return False
        if len(f) == 3 and not (isinstance(f[2], list) and len(f[2]) <= _MAX_DIMS and
                                all(type(x) is int and 0 <= x < 1 << 31 for x in f[2])):
            return False
    return True


def _lists_to_tuples(descr: Any) -> Any:
    """A descr as JSON brought it: its fields' [name, format(, shape)] lists become the tuples numpy
    expects (a field's format may itself be a descr: a nested structure)."""
    if isinstance(descr, list):
        return [tuple(_lists_to_tuples(x) if isinstance(x, list) and i == 1 else
                      (tuple(x) if isinstance(x, list) else x) for i, x in enumerate(f))
                if isinstance(f, list) else f for f in descr]
    return descr


def _options(**opts: Any) -> bytes:
    return json.dumps({k: v for k, v in opts.items() if v is not None}).encode()


class Publisher(SubSession):
    """A publisher on a topic (session.publisher(topic)): publish(), publish_many(), close().

    On a shared-memory session it writes its own broadcast ring (`ring` is its name), which
    subscribers of the session read in place; elsewhere each publish is a call to the server."""

    def __init__(self, session: ClientSession, handle: int, topic: str, ring: Broadcast | None = None,
                 block_timeout: float = 5.0) -> None:
        super().__init__(session, handle)
        self.topic = topic
        self.serializer: Any = None  # objects both ways when set (_use)
        self._ring = ring
        self.ring = ring.name if ring is not None else None
        self.block_timeout = block_timeout
        self._seq = 0
        self._loan: tuple[Any, ...] | None = None  # what loan() lent: see commit()
        if ring is not None:  # the common message (bytes in one record, no meta): one C call
            self._addr = ring._addr
            self._small = ring.max_record - RECORD_HEAD.size
        # the last array's kind and meta, as (dtype, shape, meta): a stream of arrays of one kind gets its
        # meta without _array_meta's cache (a dtype with field names, which can be renamed in place, never)
        self._array: tuple[Any, tuple[int, ...], bytes] = (None, (), b"")

    def _records(self, data: Any) -> list[bytes]:
        """A message as its ring's records (fragments when it is bigger than one)."""
        payload, meta = _encode(data)
        self._seq += 1
        return split_record(self._seq, meta, payload, self._ring.max_record)  # type: ignore[union-attr]

    def _publish_ring(self, ring: Broadcast, data: Any, timeout: float | None) -> None:
        """publish() on the ring: C writes the message from the caller's buffer straight into its
        records (fragments when it is bigger than one), waiting here for room when there is none."""
        known = self._array
        if type(data) is np.ndarray and data.dtype is known[0] and data.shape == known[1]:
            buf, meta = data, known[2]  # an array of the same kind as the last one
        else:
            buf, meta = _payload(data)
            if type(data) is np.ndarray and data.dtype.names is None:
                self._array = (data.dtype, data.shape, meta)
        self._seq += 1
        try:
            r = _tpublish(self._addr, self._seq, buf, meta, 0)
        except (BufferError, ValueError):  # an array that is not C-contiguous: in order, then from there
            if not isinstance(buf, np.ndarray) or buf.flags.c_contiguous:
                self._seq -= 1
                raise
            buf = np.ascontiguousarray(buf)
            r = _tpublish(self._addr, self._seq, buf, meta, 0)
        if not r:
            return
        wait = self.block_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        h = None
        while r:
            rc, k, need = r
            try:
                if rc != _RING_FULL:
                    if rc == _RING_TOOBIG:
                        raise TooBig(f"a message of {memoryview(buf).nbytes} bytes (meta {len(meta)}) does not fit "  # type: ignore[arg-type, unused-ignore]  # (as in _flat)
                                     f"{self.topic!r}'s ring (records of {ring.max_record} bytes)")
                    raise ring._failed(rc, f"publish on {ring.name}")
                h = h or ring.need("producer")
                ring.wait_room(h, need, wait, deadline)
            except BaseException as e:
                self._publish_failed(e, k)
                raise
            r = _tpublish(self._addr, self._seq, buf, meta, k)

    def _publish_failed(self, e: BaseException, k: int) -> None:
        """A ring publish (publish or apublish) that failed: its number back if nothing of it was written
        (the next one's), and the ring's end told when it is full or closed (those raise)."""
        if not k:
            self._seq -= 1
        if isinstance(e, Full):
            self._ring_full(e)
        if isinstance(e, Closed):
            self._ring_closed(e)

    def _ring_closed(self, e: Closed) -> NoReturn:
        """A send on the ring failed as closed: the server is gone (its session's socket hung up:
        Ring.set_alive_fd), or another thread closed this publisher."""
        if self.session.server_gone():
            raise ServerGone(f"the server of {self.topic!r} is gone: nothing published since") from None
        raise e

    def _ring_full(self, e: BrokerError) -> None:
        raise FullTimeout(f"no room in {self.topic!r}'s ring within {self.block_timeout:g} s: a subscriber "
                          f"did not keep up") from None

    def _cut_short(self, base: int, n: int, before: int = 0) -> None:
        """A ring publisher's batch stopped after n messages (after `before` that went first):
        FullTimeout saying so (its `published`); the sequence numbers of those that did not go
        are given again."""
        self._seq = base + n
        err = FullTimeout(f"no room in {self.topic!r}'s ring within {self.block_timeout:g} s: {before + n} of "
                          f"the batch went")
        err.published = before + n  # type: ignore[attr-defined]
        raise err from None

    def publish(self, data: Any, *, timeout: float | None = None) -> None:
        """Publish one message: bytes-like or a numpy array. FullTimeout if a blocking subscriber had no
        room within the publisher's block_timeout (nobody got it)."""
        ring = self._ring
        if ring is not None:
            if type(data) is bytes and len(data) <= self._small:
                self._seq += 1
                if not _tsend(self._addr, self._seq, data):  # header and data written into the ring in C
                    return
                self._seq -= 1  # no room (or the ring's end): the way that waits, still without a copy in Python
            self._publish_ring(ring, data, timeout)  # any other payload kind: one copy, in C
            return
        payload, meta = _encode(data)
        try:
            self.session.send_receive(TOPIC_PUBLISH, payload, meta, timeout=timeout, handle=self.handle)
        except ServiceError as e:
            _raise_full(e)

    def _use(self, serializer: Any) -> None:
        """publish() and publish_many() take objects, encoded by serializer (open_publisher)."""
        ser = self.serializer = _serializer(serializer)
        if ser is None:
            return
        encode, raw, raw_many = ser.encode, Publisher.publish, Publisher.publish_many

        def publish(obj: Any, *, timeout: float | None = None) -> None:
            raw(self, encode(obj), timeout=timeout)

        def publish_many(objs: Iterable[Any], *, timeout: float | None = None) -> int:
            return raw_many(self, [encode(o) for o in objs], timeout=timeout)
        publish.__doc__ = "Publish one object, encoded by this publisher's serializer (as Publisher.publish)."
        publish_many.__doc__ = "Publish several objects, each encoded (as Publisher.publish_many)."
        self.publish = publish  # type: ignore[method-assign, assignment]
        self.publish_many = publish_many  # type: ignore[method-assign, assignment]

    async def apublish(self, data: Any, *, timeout: float | None = None) -> None:
        """publish() for asyncio, never blocking the loop: a relayed publish is awaited as the session's
        asend_receive; a ring publisher writes at once when its ring has room, and while it has none
        (a blocking subscriber behind) it looks again between short sleeps on the loop (a broadcast
        ring's producer sleeps on a futex, which a loop cannot watch), up to block_timeout (then
        FullTimeout, as publish())."""
        ring = self._ring
        if ring is None:
            payload, meta = _encode(data)
            try:
                await self.session.asend_receive(TOPIC_PUBLISH, payload, meta, handle=self.handle)
            except ServiceError as e:
                _raise_full(e)
            return
        if type(data) is bytes and len(data) <= self._small:
            self._seq += 1
            if not _tsend(self._addr, self._seq, data):
                return
            self._seq -= 1
        buf, meta = _payload(data)
        if isinstance(buf, np.ndarray) and not buf.flags.c_contiguous:
            buf = np.ascontiguousarray(buf)
        self._seq += 1
        try:
            r = _tpublish(self._addr, self._seq, buf, meta, 0)
        except BaseException:
            self._seq -= 1
            raise
        deadline = time.monotonic() + (self.block_timeout if timeout is None else timeout)
        nap = _NAP_MIN
        h = None
        while r:
            rc, k, need = r
            try:
                if rc != _RING_FULL:
                    if rc == _RING_TOOBIG:
                        raise TooBig(f"a message of {memoryview(buf).nbytes} bytes (meta {len(meta)}) does not fit "
                                     f"{self.topic!r}'s ring (records of {ring.max_record} bytes)")
                    raise ring._failed(rc, f"publish on {ring.name}")
                if time.monotonic() >= deadline:
                    raise Full(f"{ring.name}: no room for {need} bytes")
                if self.session.server_gone():
                    raise Closed(f"{ring.name}: the server is gone")
                h = h or ring.need("producer")
                ring._check_consumers(h)  # a dead lossless consumer is evicted, as a waiting publish() does
                await asyncio.sleep(nap)
                nap = min(nap * 2, _NAP_MAX)
                if self._ring is not ring:
                    raise Closed(f"{ring.name} was closed while waiting for room")
            except BaseException as e:
                self._publish_failed(e, k)
                raise
            r = _tpublish(self._addr, self._seq, buf, meta, k)

    def publish_many(self, items: Iterable[Any], *, timeout: float | None = None) -> int:
        """Publish several in one call, in their order: all of them, or none (FullTimeout); a ring
        publisher's FullTimeout comes after a first part went (its `published` says how many)."""
        ring = self._ring
        if ring is not None:
            try:
                return self._publish_many_ring(ring, items, timeout)
            except Closed as e:
                self._ring_closed(e)
        encoded = [_encode(x) for x in items]
        if not encoded:
            return 0
        table = [struct.pack("<I", len(encoded))]
        table += [TABLE_ENTRY.pack(len(p), len(m)) for p, m in encoded]
        table += [m for _, m in encoded]
        try:
            return self.session.send_receive(TOPIC_PUBLISH_MANY, b"".join(p for p, _ in encoded), b"".join(table),
                                             timeout=timeout, handle=self.handle)
        except ServiceError as e:
            _raise_full(e)
            raise  # (not reached)

    def _publish_many_ring(self, ring: Broadcast, items: Iterable[Any], timeout: float | None) -> int:
        items = items if type(items) is list else list(items)
        small, base = self._small, self._seq
        went: int  # (what C's topic_send_many says it sent)
        went, rc = _tsend_many(self._addr, items, base + 1, 0)  # the plain ones, until one is not (or no room)
        if rc == _RING_FULL:  # wait for room (up to the deadline: FullTimeout), then on in C
            wait = self.block_timeout if timeout is None else timeout
            deadline = time.monotonic() + wait
            h = ring.need("producer")
            while rc == _RING_FULL:
                try:
                    ring.wait_room(h, _HEAD_SIZE + len(items[went]), wait, deadline)
                except Full:
                    self._cut_short(base, went)
                more, rc = _tsend_many(self._addr, items, base + 1, went)
                went += more
        if not rc:
            self._seq = base + went
            return went
        self._seq = base + went
        rest = items[went:]
        if all(type(x) is bytes and len(x) <= small for x in rest):
            first = self._seq + 1
            self._seq += len(rest)
            msgs = [[_PLAIN(first + i, 0, 0, 0) + x] for i, x in enumerate(rest)]
        else:
            msgs = [self._records(x) for x in rest]
        base += went
        if all(len(m) == 1 for m in msgs):
            recs = [m[0] for m in msgs]
            try:
                return went + ring.send_many(recs, self.block_timeout if timeout is None else timeout)
            except Full as e:
                self._cut_short(base, getattr(e, "sent", 0), went)
        for n, m in enumerate(msgs):  # one has fragments: one by one
            try:
                for rec in m:
                    ring.send(rec, self.block_timeout if timeout is None else timeout)
            except Full:
                self._cut_short(base, n, went)
        return went + len(msgs)

    # -- zero-copy: the next message built in place --------------------------------------------

    def loan(self, n: int, *, timeout: float | None = None) -> memoryview:
        """A writable buffer of n bytes for the next message: write the payload into it, then
        commit() publishes it (abort() drops it). On a shared-memory session it lies in the
        publisher's ring, so nothing is copied on the way to subscribers of the session that
        read it in place (receive_view); a message too big for one record of the ring, and a
        publisher on a socket, get a local buffer that commit() publishes as publish() does.
        One loan at a time; do not touch the buffer after commit() or abort()."""
        return self._lend(int(n), b"", timeout)

    @overload
    def loan_array(self, shape: int | tuple[int, ...], *, timeout: float | None = None) -> NDArray[np.uint8]: ...
    @overload
    def loan_array(self, shape: int | tuple[int, ...], dtype: type[_S] | np.dtype[_S], *,
                   timeout: float | None = None) -> NDArray[_S]: ...
    @overload
    def loan_array(self, shape: int | tuple[int, ...], dtype: DTypeLike, *, timeout: float | None = None) -> NDArray[Any]: ...

    def loan_array(self, shape: int | tuple[int, ...], dtype: Any = np.uint8, *,
                   timeout: float | None = None) -> np.ndarray:
        """loan() as a writable numpy array of `shape` and `dtype`; subscribers get an array of the
        same shape and dtype."""
        dt = np.dtype(dtype)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if dt.hasobject:
            raise TypeError("an array of Python objects cannot be published: its bytes are pointers")
        _, meta = _encode(np.empty((0,) * len(shape), dt))  # the meta of this dtype and rank...
        count = int(np.prod(shape, dtype=np.uint64))
        meta = meta[:len(meta) - 8 * len(shape)] + struct.pack(f"<{len(shape)}Q", *shape)  # ...with this shape
        view = self._lend(count * dt.itemsize, meta, timeout)
        return np.frombuffer(view, dtype=dt, count=count).reshape(shape)

    def _lend(self, n: int, meta: bytes, timeout: float | None) -> memoryview:
        if self._loan is not None:
            raise StateError(f"{self.topic!r}: commit() or abort() the last loan first")
        if n < 0:
            raise ValueError(f"a loan of {n} bytes")
        ring = self._ring
        if not self.handle:
            raise ServerGone(f"the publisher on {self.topic!r} is closed")
        head = _HEAD_SIZE + len(meta)
        if ring is not None and head + n <= ring.max_record:
            wait = self.block_timeout if timeout is None else timeout
            try:
                rec = ring.claim(head + n, wait)
            except Full as e:
                self._ring_full(e)
            except Closed as e:
                self._ring_closed(e)
            rec[:_HEAD_SIZE] = _PLAIN(self._seq + 1, len(meta), 0, 0)
            rec[_HEAD_SIZE:head] = meta
            self._loan = ("ring", head, n, meta)
            return rec[head:]
        buf = bytearray(n)
        self._loan = ("copy", buf, n, meta, timeout)
        return memoryview(buf)

    def commit(self, n: int | None = None) -> None:
        """Publish the loaned message with its first n bytes (default: all of them; an array's loan
        is published whole)."""
        loan = self._loan
        if loan is None:
            raise StateError(f"{self.topic!r}: commit() without loan()")
        size, meta = loan[2], loan[3]
        k = size if n is None or meta else int(n)
        if not 0 <= k <= size:
            raise ValueError(f"commit of {k} bytes, but {size} were lent")
        self._loan = None
        if loan[0] == "ring":
            self._seq += 1
            self._ring.commit(loan[1] + k)  # type: ignore[union-attr]
            return
        data = bytes(loan[1][:k])
        self.publish(_decode(data, meta) if meta else data, timeout=loan[4])

    def abort(self) -> None:
        """Drop the loaned message: nobody sees it."""
        loan, self._loan = self._loan, None
        if loan is None:
            raise StateError(f"{self.topic!r}: abort() without loan()")
        if loan[0] == "ring" and self._ring is not None:
            self._ring.abort()

    def _session_ended(self) -> None:
        ring, self._ring = self._ring, None
        if ring is not None:
            ring.close()  # its subscribers read what is left, then its end
        self._loan = None
        super()._session_ended()

    def close(self) -> None:
        ring, self._ring = self._ring, None
        if ring is not None:
            if self._loan is not None and self._loan[0] == "ring":
                ring.abort()
            ring.close()  # its subscribers read what is left, then its end
        self._loan = None
        super().close()

    async def aclose(self) -> None:
        """close() for asyncio: the server's part awaited."""
        ring, self._ring = self._ring, None
        if ring is not None:
            if self._loan is not None and self._loan[0] == "ring":
                ring.abort()
            ring.close()
        self._loan = None
        await super().aclose()

    def __enter__(self) -> "Publisher":
        return self

    async def __aenter__(self) -> "Publisher":
        return self


def _on_a_loop() -> bool:
    """Does this thread run an asyncio loop (where nothing may wait for the server)?"""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _raise_full(e: ServiceError) -> None:
    if e.status == Status.TIMED_OUT:
        raise FullTimeout(e.text or str(e)) from None
    raise e


class Subscriber(SubSession):
    """A subscriber on a topic (session.subscriber(topic)): receive(), receive_many(), iteration,
    areceive(); `lost` counts, exactly, the messages the "drop" policy dropped for it."""

    def __init__(self, session: ClientSession, handle: int, topic: str, buffer_size: int, batch: int) -> None:
        super().__init__(session, handle)
        self.topic = topic
        self.serializer: Any = None  # objects both ways when set (_use)
        self.lost = 0
        self.corrupt = 0  # records of publisher rings that could not be read (a buggy publisher's)
        self.last_error = ""
        self._size = buffer_size
        self._batch = batch
        self._items: deque[Received] = deque()
        self._fetch: Any = None
        self._buf: Buffer | None = None
        self._gone: str | None = None
        self._rings: dict[int, Broadcast] = {}  # publisher id -> its ring, read in place (a direct subscriber)
        self._since = 0  # messages since the FETCH was last looked at
        self._assemblers: dict[int, Assembler] = {}
        self._leaving: set[int] = set()  # publishers gone: their rings are read to the end, then closed
        self._turn = 0
        self._held: Broadcast | None = None  # the ring whose record receive_view() lent out
        self._lent: memoryview | None = None  # the view of it lent (revoked by release())
        self._fast: tuple[int, Assembler] | None = None  # the one ring read in place, and its books (_refast)
        # the last array meta read in place, as (meta, dtype, shape, bytes, one-dimensional): a stream of
        # arrays of one kind is decoded without _meta_array's cache or _decode's checks each time
        self._array: tuple[bytes, Any, tuple[int, ...], int, bool] = (b"", None, (), -1, True)
        self._topics: dict[int, str] = {}  # a prefix subscriber: each publisher's topic (TOPIC_OF)
        # rings of publishers that came after this subscriber (RING_ADD): joined, while their messages
        # still come relayed too, until the ring gives the one after the last relayed (the handover);
        # the value is a message read in place too early, held until the relayed ones catch up
        self._handover: dict[int, Received | None] = {}
        self._last: dict[int, int] = {}  # during a handover: the last relayed sequence number
        self._direct_only: set[int] = set()  # handed over: their relayed copies (in flight) are dropped

    @property
    def in_place(self) -> bool:
        """Does it read some publisher's ring in place now (a direct subscriber of its own session)?"""
        return bool(self._rings)

    def _refast(self) -> None:
        """receive()'s shortest way is open while exactly one ring is read in place and it is not ending."""
        self._fast = None
        if len(self._rings) == 1 and not self._leaving and not self._handover:
            for pub, ring in self._rings.items():
                self._fast = (ring._addr, self._assemblers.setdefault(pub, _assembler()))

    # -- objects: a subscriber with a serializer (open_subscriber) ------------------------------

    def _use(self, serializer: Any) -> None:
        """receive(), receive_many(), receive_message(), iteration and areceive() give objects decoded
        by serializer; the zero-copy and raw calls (receive_view, receive_into, receive_array) still
        give the bytes as they came."""
        ser = self.serializer = _serializer(serializer)
        if ser is None:
            return
        self._later: deque[Received] = deque()  # taken by a receive_many, given after an undecodable one
        self.receive = self._receive_object  # type: ignore[method-assign]
        self.receive_message = self._receive_object_message  # type: ignore[method-assign]
        self.receive_many = self._receive_objects  # type: ignore[method-assign]
        self.areceive = self._areceive_object  # type: ignore[method-assign]

    def _object(self, value: Any) -> Any:
        ser = self.serializer
        assert ser is not None
        return ser.decode(value if type(value) is bytes else _flat(value))

    def _next_received(self, timeout: float | None) -> Received:
        return self._later.popleft() if self._later else Subscriber.receive_message(self, timeout)

    def _receive_object_message(self, timeout: float | None = None) -> Received:
        """receive_message() with the value decoded: DecodeError if a publisher's bytes are not what
        the serializer reads (that message is taken; the next receive gives the next one)."""
        msg = self._next_received(timeout)
        return msg._replace(value=self._object(msg.value))

    def _receive_object(self, timeout: float | None = None, *, out: Any = None) -> Any:
        """The next message's object (DecodeError, for that message alone, if it cannot be decoded)."""
        if out is not None:
            raise TypeError("receive(out=) copies bytes: a subscriber with a serializer gives objects "
                            "(receive_into() still copies the bytes)")
        if self._later:
            return self._object(self._later.popleft().value)
        value = Subscriber.receive(self, timeout)  # (its shortest way: one C call)
        return self.serializer.decode(value) if type(value) is bytes else self._object(value)

    def _receive_objects(self, max_messages: int = 1024, timeout: float | None = None) -> list[Any]:
        """What has arrived (at least one, waiting as receive does), decoded. An undecodable message
        ends the batch before it; the next receive raises its DecodeError, then goes on after it."""
        got = [self._next_received(timeout)]
        while len(got) < max_messages:
            if self._later:
                got.append(self._later.popleft())
            elif self._items:
                got.append(self._items.popleft())
            else:
                msg = self._from_rings() if self._rings else None
                if msg is None:
                    break
                got.append(msg)
        out: list[Any] = []
        for i, msg in enumerate(got):
            try:
                out.append(self._object(msg.value))
            except DecodeError:
                if not out:
                    self._later.extendleft(reversed(got[i + 1:]))
                    raise
                self._later.extendleft(reversed(got[i:]))
                break
        return out

    async def _areceive_object(self) -> Any:
        if self._later:
            return self._object(self._later.popleft().value)
        return self._object(await Subscriber.areceive(self))

    def _start(self) -> None:
        if self._fetch is None and self.handle:
            self._buf = ViewBuffer(self._size)  # a big batch is read where it was gathered: no copy
            self._fetch = self.session.send(TOPIC_FETCH, self._buf, self._batch, handle=self.handle)

    def _take(self, timeout: float | None) -> bool:
        """Wait for the outstanding FETCH: True when it brought messages (or losses)."""
        if self._gone is not None:
            raise Disconnected(self._gone)
        if not self.handle:
            raise ServerGone(f"the subscriber on {self.topic!r} is closed")
        self._start()
        fut = self._fetch
        try:
            n = fut.result(timeout)
        except TimeoutError:
            if fut.done():
                return self._take(0)
            return False
        except ServiceError as e:
            self._fetch = None
            if e.status == Status.DISCONNECTED:
                self._gone = e.text or str(e)
                raise Disconnected(self._gone) from None
            if e.status == Status.OVERFLOW:  # one message is bigger than the buffer: a bigger one
                need = int((e.text or "").split("needs ")[-1].split()[0]) if "needs " in (e.text or "") else 0
                limit = self.session.max_frame
                if self._size >= limit:
                    raise ServerGone(f"a message on {self.topic!r} is bigger than a frame may be ({limit})") from None
                self._size = min(max(self._size * 2, need), limit)
                return self._take(timeout)
            raise
        self._fetch = None
        buf = self._buf
        assert buf is not None
        self._unpack(buf.value, n)
        self._start()  # the next batch comes while this one is read
        return True

    def _unpack(self, data: bytes, n: int) -> None:
        """A relayed batch (a FETCH's reply) into _items. C reads it (topic_unpack), every length checked,
        and makes the common messages' Received itself; the rest is read here."""
        try:
            lost, items, plain = _tunpack(data, n, Received, self.topic)
        except ValueError as e:  # the server sent what it never sends: the session cannot be trusted on
            raise ServerGone(str(e)) from None
        self.lost += lost
        if plain and not self._direct_only and not self._handover and not self._topics:
            self._items.extend(items)  # the common batch: no meta, no control, no handover, one topic
            return
        for item in items:
            if type(item) is Received:
                pub, seq, payload, meta = item[0], item[1], item[2], b""
            else:
                pub, seq, meta, payload = item
            if seq == 0:  # a control message: a publisher's ring to read, or its end
                self._on_control(pub, meta, payload)  # type: ignore[arg-type]  # (a control message's payload: bytes)
                continue
            if self._direct_only and pub in self._direct_only:
                continue  # read in place: this relayed copy was on its way before the handover
            try:
                value = _decode(payload, meta)
            except ServerGone as e:  # a publisher's bad message: it alone is skipped (and counted)
                self.corrupt += 1
                self.last_error = str(e)
                continue
            if self._handover and pub in self._handover:
                if seq <= self._last.get(pub, 0):
                    continue
                self._last[pub] = seq
                self._items.append(Received(pub, seq, value, self.topic))
                held = self._handover[pub]
                if held is not None and held.seq <= seq + 1:  # the ring's next is the relay's next: over
                    if held.seq == seq + 1:
                        self._items.append(held)
                    self._handed_over(pub, held.seq if held.seq == seq + 1 else seq + 1)
                continue
            self._items.append(Received(pub, seq, value, self._topics.get(pub, self.topic)))

    def _on_control(self, pub: int, what: bytes, data: bytes) -> None:
        if what == TOPIC_OF:  # (a prefix subscriber) the topic of this publisher's messages (one name a
            self._topics[pub] = data.decode(errors="replace")  # publisher, kept: it is not sent again)
        elif what == RING_ADD:  # a publisher that came after this subscriber: its ring, read in place
            try:
                name = data.decode()
                ring = self.session.passed_segment(name, lambda fd: Broadcast.open(name, fd=fd))
            except (BrokerError, OSError, ValueError, UnicodeDecodeError):  # gone already, no slot...: relayed
                self._tell_direct(pub, 0)
                return
            self._rings[pub] = ring
            self._handover[pub] = None
            self._last.setdefault(pub, 0)
            self._refast()
        elif what == RING_GONE:
            if pub in self._rings:
                self._leaving.add(pub)
                self._refast()
        else:
            raise ServerGone(f"an unknown control message {what!r} on {self.topic!r}")

    def _tell_direct(self, pub: int, seq: int) -> None:
        try:
            if _on_a_loop():  # (areceive's) never wait on the loop: the answer says nothing we need
                self.session.send(TOPIC_DIRECT, pub, seq, handle=self.handle)
                return
            self.session.send_receive(TOPIC_DIRECT, pub, seq, handle=self.handle)
        except BrokerError:  # the server relays on: its copies are dropped here (or the session is over)
            pass

    def _handed_over(self, pub: int, seq: int) -> None:
        """From seq on, pub's messages are read in place only."""
        self._handover.pop(pub, None)
        self._last.pop(pub, None)
        self._direct_only.add(pub)
        self._tell_direct(pub, seq)
        self._refast()

    def _from_rings(self) -> Received | None:
        """A message read in place from one of the publishers' rings (in turn), or None."""
        rings = list(self._rings.items())
        for k in range(len(rings)):
            pub, ring = rings[(self._turn + k) % len(rings)]
            if self._handover and self._handover.get(pub) is not None:
                continue  # one read too early waits for the relayed ones before it
            asm = self._assemblers.setdefault(pub, _assembler())
            while True:
                msg = None
                if asm.frag is not None:  # a message in fragments: C copies the rest into its one destination
                    rc = _trecv_frags(ring._addr, asm.frag)
                    if rc == 0:
                        msg = asm.finish()
                    elif rc == _RING_EMPTY:
                        break  # the rest later
                    # else: the next record is not its next fragment (or the ring's end): read below
                try:
                    if msg is None:
                        rec = ring.recv(timeout=0)
                        msg = asm.feed(rec)
                except Empty:
                    if pub in self._leaving:
                        self._close_ring(pub)
                    break
                except (PeerGone, Closed, Evicted):  # its publisher died or left, and all it wrote was read
                    self._close_ring(pub)
                    break
                except ValueError as e:  # a buggy publisher: its bad record is skipped
                    self.corrupt += 1
                    self.last_error = f"publisher {pub}'s ring on {self.topic!r}: {e}"
                    continue
                if msg is None:
                    continue  # a fragment: the rest of its message follows
                seq, meta, payload = msg
                try:
                    got = Received(pub, seq, _decode(payload, meta), self.topic)
                except ServerGone as e:  # a publisher's bad message: skipped and counted
                    self.corrupt += 1
                    self.last_error = str(e)
                    continue
                if self._handover and pub in self._handover:
                    last = self._last.get(pub, 0)
                    if seq <= last:
                        continue  # it came relayed already
                    if seq > last + 1:
                        self._handover[pub] = got  # the relayed ones before it are still on their way
                        break
                    self._handed_over(pub, seq)
                self._turn += k + 1
                return got
        return None

    def _close_ring(self, pub: int) -> None:
        ring = self._rings.pop(pub, None)
        self._assemblers.pop(pub, None)
        self._leaving.discard(pub)
        if pub in self._handover:  # ended before the handover: everything of it comes relayed
            del self._handover[pub]
            self._last.pop(pub, None)
        # (pub stays in _direct_only: a relayed copy from before the handover may still be unread)
        self._refast()
        if ring is not None:
            ring.close()

    def receive_message(self, timeout: float | None = None) -> Received:
        """The next message with its publisher and sequence number; EmptyTimeout if none came in time
        (timeout None: wait; 0: only what has arrived); Disconnected if the broker's policy dropped
        this subscriber."""
        if self._held is not None:
            self.release()
        if not self._rings:
            while not self._items:
                if not self._take(timeout):
                    raise EmptyTimeout(f"no message on {self.topic!r} within {timeout} s")
                if self._rings:
                    break
            if self._items:
                return self._items.popleft()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._items:
                return self._items.popleft()
            got = self._from_rings()
            if got is not None:
                return got
            if self._take(0):  # relayed messages (from publishers that call), or news of rings
                continue
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise EmptyTimeout(f"no message on {self.topic!r} within {timeout} s")
            readable = [p for p in self._rings if self._handover.get(p) is None]
            if not readable:  # no ring, or every ring holds a message waiting for relayed ones: the FETCH
                slice_ = left if not self._rings else _WAIT_SLICE if left is None else min(left, _WAIT_SLICE)
                if not self._take(slice_):
                    if not self._rings:
                        raise EmptyTimeout(f"no message on {self.topic!r} within {timeout} s")
                continue
            ring = self._rings[readable[0]] if len(self._rings) == 1 else None
            wait = _WAIT_SLICE if left is None else min(_WAIT_SLICE, left)
            if ring is not None:
                try:
                    ring.wait(wait)  # a futex sleep on the one ring, woken by its next record
                except (PeerGone, Closed, Evicted):
                    pass  # _from_rings closes it
            else:
                time.sleep(min(wait, 0.0005))  # several rings: a short nap between looks

    @overload
    def receive(self, timeout: float | None = None, *, out: None = None) -> bytes | np.ndarray: ...
    @overload
    def receive(self, timeout: float | None = None, *, out: WriteableBuffer | np.ndarray) -> memoryview | np.ndarray: ...

    def receive(self, timeout: float | None = None, *, out: Any = None) -> bytes | memoryview | np.ndarray:
        """The next message's value (bytes or a numpy array); as receive_message. With `out` (a writable
        buffer: a bytearray, a numpy array...), the payload is copied into it, once, and the value is
        a view of `out`: a memoryview of its first bytes, or a numpy array over them for an array message
        (ValueError if `out` is too small: the message stays next)."""
        if out is not None:
            n, meta = self._into(out, timeout)
            view = _flat(out)[:n]
            return _decode(view, meta) if meta else view
        if self._held is not None:  # (as _begin, inline: the hot path)
            self.release()
        self._since += 1
        if self._since >= _FETCH_EVERY and self._rings:  # relayed messages are not kept waiting behind a busy ring
            self._since = 0
            self._take(0)
        fast = self._fast
        if fast is not None and not self._items:  # the shortest way: one C call
            asm = fast[1]
            if asm._parts is None and asm.frag is None:  # no message half-way (Assembler.complete, inline)
                r = _trecv(fast[0], asm.seq)
                if type(r) is tuple:
                    asm.seq = r[0]
                    if len(r) == 2:
                        return r[1]  # type: ignore[no-any-return]  # (C's: the payload, bytes)
                    data, meta = r[1], r[2]  # a whole message with meta: a numpy array over the bytes C made
                    known = self._array
                    if meta == known[0] and len(data) == known[3]:  # the same kind as the last one
                        a = _frombuffer(data, known[1])
                        return a if known[4] else a.reshape(known[2])
                    try:
                        value: np.ndarray = _decode(data, meta)
                        dtype, shape, nbytes = _meta_array(meta)  # (sound: _decode took it)
                        self._array = (meta, dtype, shape, nbytes, len(shape) == 1)
                        return value
                    except ServerGone as e:  # a publisher's bad message: skipped and counted
                        self.corrupt += 1
                        self.last_error = str(e)
        # anything else (a message in fragments or with meta, several rings, relayed ones): the long way
        return Subscriber.receive_message(self, timeout).value

    def _begin(self) -> None:
        """What every receive does first: give back a view lent, and, every _FETCH_EVERY messages of a
        subscriber that reads rings in place, look at its FETCH (relayed messages and news of rings are
        not kept waiting behind a busy ring)."""
        if self._held is not None:
            self.release()
        self._since += 1
        if self._since >= _FETCH_EVERY and self._rings:
            self._since = 0
            self._take(0)

    def receive_into(self, buf: Any, timeout: float | None = None) -> int:
        """The next message's payload copied into buf (any writable C-contiguous buffer: a bytearray, a
        numpy array's own memory...), once; its size in bytes. From a ring this subscriber reads in
        place, straight from the ring. ValueError if buf is smaller than the message, which then stays
        next. An array message's bytes come as they are: receive(out=buf) gives them their shape."""
        return self._into(buf, timeout)[0]

    def receive_array(self, timeout: float | None = None) -> np.ndarray:
        """The next message as a numpy array: an array message with its dtype and shape, any other as
        uint8 (read-only, over the bytes received, no copy after them)."""
        value = Subscriber.receive(self, timeout)
        return value if isinstance(value, np.ndarray) else np.frombuffer(value, np.uint8)

    def _into(self, buf: Any, timeout: float | None) -> tuple[int, bytes]:
        """(bytes, meta) of the next message, its payload copied into buf."""
        if not memoryview(buf).c_contiguous or memoryview(buf).readonly:
            raise ValueError("a message is received into a writable, C-contiguous buffer")
        self._begin()
        fast = self._fast
        if fast is not None and not self._items and fast[1].complete:  # straight from the ring, in C
            r = _trecv_into(fast[0], fast[1].seq, buf)
            if type(r) is tuple:
                if len(r) == 3:
                    fast[1].seq = r[0]
                    return r[1], r[2]
                raise ValueError(f"the next message on {self.topic!r} has {r[1]} bytes, more than the "
                                 f"{memoryview(buf).nbytes} of the buffer given")
        msg = Subscriber.receive_message(self, timeout)
        value = msg.value
        src = _flat(value)
        meta = _array_meta(value.dtype, value.shape) if isinstance(value, np.ndarray) else b""
        dst = _flat(buf)
        if src.nbytes > dst.nbytes:
            self._items.appendleft(msg)
            raise ValueError(f"the next message on {self.topic!r} has {src.nbytes} bytes, more than the "
                             f"{dst.nbytes} of the buffer given")
        dst[:src.nbytes] = src
        return src.nbytes, meta

    def receive_view(self, timeout: float | None = None) -> memoryview | np.ndarray:
        """The next message without a copy where it can be: a read-only memoryview (or numpy array)
        over the publisher's ring itself when this subscriber reads the ring in place. The message
        stays there, and the publisher never writes over it, until release() or the next receive,
        which revoke the memoryview (any later use raises ValueError). A numpy array, or a slice or
        array made from the view, cannot be revoked: while one is alive the next receive (and
        release()) raises ViewInUse, so drop it (del) first, or receive a copy instead. A relayed
        message, or one in fragments, is viewed over the bytes that brought it. As receive()
        otherwise."""
        self._begin()
        if not self._items and len(self._rings) == 1 and not self._leaving and not self._handover:
            for pub, ring in self._rings.items():
                try:
                    rec = ring.recv_view(timeout=0)
                except BrokerError:  # Empty, or its end: the long way says what it means
                    break
                if len(rec) >= _HEAD_SIZE:
                    seq, mlen, more, k = _UNPACK(rec)
                    asm = self._assemblers.get(pub)
                    if asm is None:
                        asm = self._assemblers[pub] = _assembler()
                    if not (more or k) and seq > asm.seq and asm.complete and _HEAD_SIZE + mlen <= len(rec):
                        meta = bytes(rec[_HEAD_SIZE:_HEAD_SIZE + mlen])
                        bad = ""
                        try:
                            value: memoryview | np.ndarray = _decode(rec[_HEAD_SIZE + mlen:], meta)
                        except ServerGone as e:
                            bad = str(e)  # (released below: the traceback holds a slice of the record)
                        if bad:
                            self.corrupt += 1
                            self.last_error = bad
                            del rec
                            ring.release()
                            break
                        asm.seq = seq
                        self._held = ring
                        if type(value) is memoryview:
                            self._lent = value
                        return value
                copy = bytes(rec)  # anything else (a fragment, an odd record): read as receive() reads it
                del rec
                ring.release()
                self._push_front(pub, copy)
                break
        got = Subscriber.receive_message(self, timeout).value
        return memoryview(got).toreadonly() if isinstance(got, bytes) else got

    def release(self) -> None:
        """Give back what receive_view() lent (a no-op when it lent nothing from a ring), revoking the
        memoryview. ViewInUse while something made from it (a numpy array, a slice) is alive: the
        message stays held until that is dropped."""
        ring = self._held
        if ring is None:
            return
        lent, self._lent = self._lent, None
        if lent is not None:
            try:
                lent.release()
            except BufferError:
                pass  # an array or a view of it holds it: the ring's release says so
            del lent
        if not ring.closed:
            ring.release()  # ViewInUse: still held, and so is self._held
        self._held = None

    def _push_front(self, pub: int, rec: bytes) -> None:
        """A record taken out of a ring by receive_view that it does not lend: fed as _from_rings would."""
        asm = self._assemblers.setdefault(pub, _assembler())
        try:
            msg = asm.feed(rec)
        except ValueError as e:
            self.corrupt += 1
            self.last_error = f"publisher {pub}'s ring on {self.topic!r}: {e}"
            return
        if msg is not None:
            seq, meta, payload = msg
            try:
                self._items.appendleft(Received(pub, seq, _decode(payload, meta), self.topic))
            except ServerGone as e:
                self.corrupt += 1
                self.last_error = str(e)

    def receive_many(self, max_messages: int = 1024, timeout: float | None = None) -> list[bytes | np.ndarray]:
        """What has arrived, at least one (waiting as receive does), at most max_messages values."""
        if (not self._items and len(self._rings) == 1 and not self._leaving and self._held is None
                and not self._handover):
            for pub, ring in self._rings.items():  # the common case, in C: the plain messages already there
                asm = self._assemblers.get(pub)
                if asm is not None and asm.complete:
                    got, seq, _ = _trecv_many(ring.address, max(1, min(max_messages, 4096)), asm.seq)
                    if got:
                        asm.seq = seq
                        self._since += len(got)
                        if self._since >= _FETCH_EVERY:  # as receive() does
                            self._since = 0
                            self._take(0)
                        return got  # type: ignore[no-any-return]
        out = [Subscriber.receive(self, timeout)]
        while len(out) < max_messages:
            if self._items:
                out.append(self._items.popleft().value)
                continue
            got = self._from_rings() if self._rings else None
            if got is None:
                break
            out.append(got.value)
        return out

    def __iter__(self) -> Iterator[bytes | np.ndarray]:
        return self

    def __next__(self) -> bytes | np.ndarray:
        try:
            return self.receive()
        except (Disconnected, ServerGone):
            raise StopIteration from None

    async def areceive(self) -> Any:
        """receive() for asyncio, never blocking the loop. What the FETCH brings (relayed messages, the
        news of a ring) is awaited through the loop; a publisher's ring read in place (a publisher of
        this session) is looked at between short sleeps on the loop, from 50 us doubling to 2 ms while
        nothing comes (its readers sleep on a futex, which a loop cannot watch). A cancelled areceive
        takes nothing: the next receive gets the message, and the FETCH stays the subscriber's."""
        fetched: "asyncio.Future[Any] | None" = None
        nap = _NAP_MIN
        try:
            while True:
                try:
                    return self.receive(timeout=0)
                except EmptyTimeout:
                    pass
                fut = self._fetch
                if fut is None:  # (receive made one, unless the subscriber is over: it says so)
                    self._take(0)
                    continue
                if fetched is None or fetched.done():
                    fetched = asyncio.ensure_future(self.session.await_future(fut))
                if not self._rings:
                    await asyncio.wait((fetched,))
                    continue
                await asyncio.wait((fetched,), timeout=nap)
                nap = min(nap * 2, _NAP_MAX)
        finally:
            if fetched is not None and not fetched.done():
                fetched.cancel()  # (only the waiting: the FETCH lives on)

    def __aiter__(self) -> "Subscriber":
        return self

    async def __anext__(self) -> Any:
        """async for: as areceive(), ending when the subscriber or its session is over."""
        try:
            return await self.areceive()
        except (Disconnected, ServerGone):
            raise StopAsyncIteration from None

    def _drop_lent(self) -> None:
        """Revoke the view receive_view() lent, where nothing made from it holds it (its ring then
        leaves when that goes: Broadcast.close)."""
        lent, self._held, self._fast, self._lent = self._lent, None, None, None
        if lent is not None:
            try:
                lent.release()
            except BufferError:
                pass

    def _session_ended(self) -> None:
        self._drop_lent()
        for pub in list(self._rings):
            self._close_ring(pub)
        super()._session_ended()

    def close(self) -> None:
        self._drop_lent()  # its ring closes below
        for pub in list(self._rings):
            self._close_ring(pub)
        fut, self._fetch = self._fetch, None
        try:
            super().close()
        finally:
            if fut is not None and not self.session.closed:
                try:
                    fut.result(5.0)  # the server ended it (CANCELLED) with the close: nothing is left behind
                except (BrokerError, TimeoutError, CancelledError):
                    pass

    async def aclose(self) -> None:
        """close() for asyncio: the server's part awaited, and the end of the FETCH it ends."""
        self._held = self._fast = None
        for pub in list(self._rings):
            self._close_ring(pub)
        fut, self._fetch = self._fetch, None
        try:
            await super().aclose()
        finally:
            if fut is not None and not self.session.closed:
                try:
                    await asyncio.wait_for(self.session.await_future(fut), 5.0)
                except (BrokerError, TimeoutError, CancelledError):
                    pass

    async def __aenter__(self) -> "Subscriber":
        return self

    def __enter__(self) -> "Subscriber":
        return self


def open_publisher(session: ClientSession, topic: str, *, history: int = 0, block_timeout: float = 5.0,
                   ring_capacity: int | None = None, serializer: Any = None) -> Publisher:
    _serializer(serializer)  # an unknown name or a missing package: before anything is opened
    pub = _open_publisher(session, topic, history, block_timeout, ring_capacity)
    pub._use(serializer)
    return pub


def _open_publisher(session: ClientSession, topic: str, history: int, block_timeout: float,
                    ring_capacity: int | None) -> Publisher:
    if session.transport != "shared memory":
        handle = session.send_receive(TOPIC_PUBLISHER, topic.encode(), _options(history=history,
                                                                                block_timeout=block_timeout))
        return Publisher(session, handle, topic, None, block_timeout)
    name = Buffer(256)
    handle = session.send_receive(TOPIC_PUBLISHER, topic.encode(),
                                  _options(history=history, block_timeout=block_timeout, ring=True,
                                           ring_capacity=ring_capacity), name)
    try:
        ring = _publisher_ring(session, name)
    except BaseException:
        try:
            session.send_receive(CLOSE_SUBSESSION, handle=handle)
        except BrokerError:
            pass
        raise
    return Publisher(session, handle, topic, ring, block_timeout)


async def aopen_publisher(session: ClientSession, topic: str, *, history: int = 0, block_timeout: float = 5.0,
                          ring_capacity: int | None = None) -> Publisher:
    """open_publisher for asyncio: its calls to the server awaited (the ring's descriptor, passed ahead
    of the reply, is read at once)."""
    if session.transport != "shared memory":
        handle = await session.asend_receive(TOPIC_PUBLISHER, topic.encode(),
                                             _options(history=history, block_timeout=block_timeout))
        return Publisher(session, handle, topic, None, block_timeout)
    name = Buffer(256)
    handle = await session.asend_receive(TOPIC_PUBLISHER, topic.encode(),
                                         _options(history=history, block_timeout=block_timeout, ring=True,
                                                  ring_capacity=ring_capacity), name)
    try:
        ring = _publisher_ring(session, name)
    except BaseException:
        try:
            await session.asend_receive(CLOSE_SUBSESSION, handle=handle)
        except BrokerError:
            pass
        raise
    return Publisher(session, handle, topic, ring, block_timeout)


def _publisher_ring(session: ClientSession, name: Buffer) -> Broadcast | None:
    """The ring the server made a publisher (its name in `name`; None if it made none), attached as its
    producer; closed again if that fails."""
    ring = None
    if name.value:
        try:
            ring_name = name.value.decode()
            ring = session.passed_segment(ring_name, lambda fd: Broadcast.attach_producer(ring_name, fd=fd))
            # a relaying server's doorbell: its session's, a copy that lives and dies with the ring (the
            # session may end first, and its descriptor's number be reused)
            fd = os.dup(session.carrier.doorbell)  # type: ignore[union-attr]
            ring.keep_fd(fd)
            ring.set_notify_fd(fd)
            session.watch_ring(ring)  # its server's death interrupts it: the next publish says so
        except BaseException:
            if ring is not None:
                ring.close()
            raise
    return ring


async def aopen_subscriber(session: ClientSession, topic: str, *, capacity: int = 1024, policy: str = "block",
                           history: int = 0, buffer_size: int = 1 << 20, batch: int = 1024) -> Subscriber:
    """open_subscriber for asyncio: its call to the server awaited."""
    direct = session.transport == "shared memory" and policy == "block" and not history and not topic.endswith("*")
    if not direct:
        handle = await session.asend_receive(TOPIC_SUBSCRIBER, topic.encode(),
                                             _options(capacity=capacity, policy=policy, history=history))
        return Subscriber(session, handle, topic, buffer_size, batch)
    names = Buffer(64 << 10)
    handle = await session.asend_receive(TOPIC_SUBSCRIBER, topic.encode(),
                                         _options(capacity=capacity, policy=policy, history=history, direct=True),
                                         names)
    sub = Subscriber(session, handle, topic, buffer_size, batch)
    try:
        _direct_rings(session, sub, names)
    except (ValueError, TypeError, BrokerError, OSError) as e:
        await sub.aclose()
        raise ServerGone(f"the server's ring names for {topic!r} are unusable: {e}") from None
    return sub


def _direct_rings(session: ClientSession, sub: Subscriber, names: Buffer) -> None:
    rings = json.loads(names.value) if names.value else {}
    if not isinstance(rings, dict):
        raise ValueError("not an object")
    for pub, name in rings.items():  # the rings of the publishers there now, read in place from here on
        sub._rings[int(pub)] = session.passed_segment(str(name), lambda fd: Broadcast.open(str(name), fd=fd))
    sub._refast()


async def alist_topics(session: ClientSession, max_bytes: int = 16 << 20) -> list[dict[str, Any]]:
    out = Buffer(max_bytes)
    await session.asend_receive(TOPIC_LIST, out)
    return _topic_list(out)


def open_subscriber(session: ClientSession, topic: str, *, capacity: int = 1024, policy: str = "block",
                    history: int = 0, buffer_size: int = 1 << 20, batch: int = 1024,
                    serializer: Any = None) -> Subscriber:
    _serializer(serializer)  # an unknown name or a missing package: before anything is opened
    sub = _open_subscriber(session, topic, capacity, policy, history, buffer_size, batch)
    sub._use(serializer)
    return sub


def _open_subscriber(session: ClientSession, topic: str, capacity: int, policy: str, history: int,
                     buffer_size: int, batch: int) -> Subscriber:
    direct = session.transport == "shared memory" and policy == "block" and not history and not topic.endswith("*")
    if not direct:
        handle = session.send_receive(TOPIC_SUBSCRIBER, topic.encode(),
                                      _options(capacity=capacity, policy=policy, history=history))
        return Subscriber(session, handle, topic, buffer_size, batch)
    names = Buffer(64 << 10)
    handle = session.send_receive(TOPIC_SUBSCRIBER, topic.encode(),
                                  _options(capacity=capacity, policy=policy, history=history, direct=True), names)
    sub = Subscriber(session, handle, topic, buffer_size, batch)
    try:
        rings = json.loads(names.value) if names.value else {}
        if not isinstance(rings, dict):
            raise ValueError("not an object")
        for pub, name in rings.items():  # the rings of the publishers there now, read in place from here on
            sub._rings[int(pub)] = session.passed_segment(str(name), lambda fd: Broadcast.open(str(name), fd=fd))
        sub._refast()
    except (ValueError, TypeError, BrokerError, OSError) as e:
        sub.close()
        raise ServerGone(f"the server's ring names for {topic!r} are unusable: {e}") from None
    return sub


def list_topics(session: ClientSession, max_bytes: int = 16 << 20) -> list[dict[str, Any]]:
    out = Buffer(max_bytes)
    session.send_receive(TOPIC_LIST, out)
    return _topic_list(out)


def _topic_list(out: Buffer) -> list[dict[str, Any]]:
    try:
        data = json.loads(out.value)
    except ValueError as e:
        raise ServerGone(f"the server's topic list is not JSON: {e}") from None
    if not isinstance(data, list):
        raise ServerGone("the server's topic list is not a list")
    return data
