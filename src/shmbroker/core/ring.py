"""The Python face of the C rings; with core/native.py (its fast-call tables), the only module that imports the extension.

Return codes become exceptions here; shared memory becomes memoryviews and
numpy arrays here. Two kinds of ring:

* `Ring`: one producer, one consumer (a session's requests or replies);
* `Broadcast`: one producer, many consumers, lossless or lossy (topics).

Each object is one side of one ring in this process. Blocking calls wait in C
with the GIL released, in slices, so that between slices a dead peer is noticed
and Ctrl-C is handled.
"""
from __future__ import annotations

import errno
import functools
import logging
import os
import time
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, TypeVar, overload

import numpy as np

from shmbroker.core import names as _names
from shmbroker.core import proc as _proc
from shmbroker.core import shm as _shm
from shmbroker._brk import ffi, lib
from shmbroker.core.native import CLIENT, RING, SERVER
from shmbroker._errors import (
    BrokerError,
    Closed,
    Corrupt,
    Empty,
    EmptyTimeout,
    Evicted,
    Full,
    FullTimeout,
    OtherSession,
    PeerGone,
    SegmentError,
    StateError,
    Timeout,
    TooBig,
    ViewInUse,
)

if TYPE_CHECKING:
    from typing_extensions import Self  # (typing's own from Python 3.11)
    from numpy.typing import DTypeLike, NDArray

    _S = TypeVar("_S", bound=np.generic)  # an array's scalar type, as a dtype argument names it

__all__ = ["Ring", "Broadcast", "DEFAULT_CAPACITY", "max_record_for", "FULL", "TIMEOUT"]

DEFAULT_CAPACITY = 1 << 20
_SLICE = 0.1  # seconds a blocking call waits in C before looking at the peer
_BATCH_RECORDS = 4096

# send(ring_addr, data) -> outcome; recv(ring_addr) -> bytes | outcome;
# recv_wait(ring_addr, timeout_ns) -> bytes | outcome; recv_many(ring_addr, max)
# -> list[bytes] | outcome; wait_data / wait_space -> outcome; ready(ring_addr)
# -> bool | outcome. The waits (and long copies) are the only calls that let
# go of the GIL (see src/shmbroker/_build.py).
_FAST = RING
_fsend, _frecv, _frecv_wait = _FAST["send"], _FAST["recv"], _FAST["recv_wait"]
_frecv_many, _fwait_data, _fwait_space = _FAST["recv_many"], _FAST["wait_data"], _FAST["wait_space"]
_fsend_many, _fready = _FAST["send_many"], _FAST["ready"]
_fsend_stream, _frecv_stream = _FAST["send_stream"], _FAST["recv_stream"]
_BATCH_MAX = lib.BRK_PY_BATCH_MAX
_unpack = ffi.unpack
_from_buffer = ffi.from_buffer

_OK = lib.BRK_OK
FULL = lib.BRK_FULL  # the outcome of a sender() call that found no room
TIMEOUT = lib.BRK_TIMEOUT  # the outcome of a wait that ended with nothing
_EMPTY = lib.BRK_EMPTY
_FULL = lib.BRK_FULL
_TOOBIG = lib.BRK_TOOBIG
_CORRUPT = lib.BRK_CORRUPT
_LAPPED = lib.BRK_LAPPED
_TIMEOUT = lib.BRK_TIMEOUT
_EVICTED = lib.BRK_EVICTED
_BUSY = lib.BRK_BUSY
_LOST = lib.BRK_LOST
log = logging.getLogger("shmbroker.ring")
_NOTREADY = lib.BRK_NOTREADY
_BADSEG = lib.BRK_BADSEG
_CLOSED = lib.BRK_CLOSED
_INTERRUPTED = lib.BRK_INTERRUPTED


def max_record_for(capacity: int) -> int:
    """The largest record a ring of `capacity` bytes carries."""
    return capacity // 2 - lib.BRK_REC_HDR


def _error(rc: int, what: str) -> BrokerError:
    """The exception for a C return code."""
    if rc < 0:
        return BrokerError(f"{what}: {os.strerror(-rc)} (errno {-rc})")
    if rc == _CORRUPT:
        return Corrupt(f"{what}: the ring's shared memory is corrupt (a position, length or header out of bounds)")
    if rc == _BADSEG:
        return SegmentError(22, f"{what}: not a broker segment of ABI version {lib.BRK_ABI_VERSION}, or damaged")
    if rc == _NOTREADY:
        return SegmentError(11, f"{what}: the segment's creator has not finished setting it up")
    if rc == _EVICTED:
        return Evicted(f"{what}: this consumer was evicted by the producer")
    if rc == _CLOSED:
        return Closed(f"{what}: the producer closed the ring and everything has been read")
    if rc == lib.BRK_INTERRUPTED:
        return Closed(f"{what}: the ring was closed by another thread while waiting")
    if rc == _TOOBIG:
        return TooBig(f"{what}: record too big")
    if rc == _BUSY:
        return StateError(f"{what}: a claimed or peeked record is still outstanding")
    if rc == _FULL:
        return Full(f"{what}: ring full")
    if rc == _EMPTY:
        return Empty(f"{what}: ring empty")
    if rc == _TIMEOUT:
        return Timeout(f"{what}: timed out")
    return BrokerError(f"{what}: unexpected outcome {rc}")


def _slice_ns(deadline: float | None) -> int | None:
    """Nanoseconds for the next wait slice; None once the deadline has passed."""
    if deadline is None:
        return int(_SLICE * 1e9)
    left = deadline - time.monotonic()
    if left <= 0:
        return None
    return int(min(left, _SLICE) * 1e9)


def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError("timeout must be >= 0 or None")
    return time.monotonic() + timeout


class _Resources:
    """What one side holds: the mapping, cffi's pointer into it and the handle.
    Freed by close() or, if the object is forgotten, by a finalizer; only in
    the process that opened it (a forked child must not close its parent's side)."""

    def __init__(self, mapping: _shm.Mapping) -> None:
        self.pid = os.getpid()
        self.mapping = mapping
        self.base = _from_buffer(mapping.mm)
        self.addr = int(ffi.cast("uintptr_t", self.base))
        self.view = memoryview(mapping.mm)
        self.handle = ffi.new("brk_ring *")
        self.handle.efd_notify = self.handle.efd_wait = -1
        self.fds: list[int] = []
        # The array a consumer's recv_view() lent is built on, while its record is held: every view,
        # slice or array made from the lent view keeps it alive (_RingSide.recv_view).
        self.lease: weakref.ref[np.ndarray] | None = None
        self.closing = False  # closed for Python, still attached until the lent view is dropped

    def close(self) -> None:
        if self.pid != os.getpid() or self.handle is None:
            return
        owner = self.lease() if self.lease is not None else None
        if owner is not None:
            # Something made from a lent view is still alive: the record stays held (the producer
            # never writes over it) and this side leaves the ring only when that goes.
            self.closing = True
            if self.handle.busy:
                lib.brk_interrupt(self.handle)  # another thread's wait ends now (Closed), as below
            weakref.finalize(owner, self.close)
            return
        h = self.handle
        if h.busy:
            # Another thread waits in C without the GIL: wake it (it raises
            # Closed) and unmap nothing until it is out.
            lib.brk_interrupt(h)
            deadline = time.monotonic() + 10
            while h.busy:
                if time.monotonic() > deadline:
                    raise StateError(f"{self.mapping.name}: a call in another thread did not end; not closed")
                time.sleep(0.001)
        lib.brk_ring_detach(h)
        for fd in self.fds:
            lib.brk_close_fd(fd)
        self.fds = []
        self.handle = None
        ffi.release(self.base)
        self.view.release()  # slices taken from it stay valid and keep the mapping alive
        self.mapping.close()  # unmaps now, or when the last view dies
        self.mapping.unlink()


def _make_segment(specs: Sequence[tuple[int, int, int, int]], name: str, sealed: bool = False) -> _shm.Mapping:
    n = len(specs)
    sp = ffi.new("brk_ring_spec[]", n)
    for i, (kind, flags, capacity, consumers) in enumerate(specs):
        sp[i].kind, sp[i].flags, sp[i].capacity, sp[i].max_consumers = kind, flags, capacity, consumers
    offs = ffi.new("uint64_t[]", lib.BRK_MAX_RINGS)
    sizes = ffi.new("uint64_t[]", lib.BRK_MAX_RINGS)
    total = ffi.new("uint64_t *")
    rc = lib.brk_seg_layout(sp, n, offs, sizes, total)
    if rc:
        raise ValueError(
            f"bad ring layout {list(specs)}: capacity must be a power of two from "
            f"{lib.BRK_MIN_CAPACITY} to 2**40, consumers from 1 to {lib.BRK_MAX_CONSUMERS}"
        )
    mapping = _shm.create_sealed(name, total[0]) if sealed else _shm.create(name, total[0])
    try:
        base = _from_buffer(mapping.mm)
        pid, start = _proc.me()
        rc = lib.brk_seg_format(base, total[0], sp, n, pid, start, os.urandom(lib.BRK_NONCE_BYTES))
        ffi.release(base)
        if rc:
            raise _error(rc, f"formatting {name}")
    except BaseException:
        mapping.close()
        mapping.unlink()
        raise
    return mapping


def _make_named(specs: Sequence[tuple[int, int, int, int]], name: str) -> _shm.Mapping:
    """_make_segment of a name a user chose: a segment left there by a creator that died (killed, say)
    is taken over at once; a live one's is an error that says whose it is."""
    try:
        return _make_segment(specs, name)
    except SegmentError as e:
        if e.errno != errno.EEXIST:
            raise
    try:
        old = _shm.open_existing(name)
    except SegmentError:  # gone meanwhile, or not ours to judge: try once more, and say what that says
        return _make_segment(specs, name)
    try:
        rc, hdr = _seg_header(old)
    finally:
        old.close()
    pid, start = (int(hdr.creator_pid), int(hdr.creator_start)) if rc == 0 else (0, 0)
    if rc == 0 and _proc.alive(pid, start):
        raise SegmentError(errno.EEXIST, f"{name} already exists: its creator (pid {pid}) is alive")
    if rc == _NOTREADY:
        raise SegmentError(errno.EEXIST, f"{name} already exists, and its creator is still making it")
    log.info("%s: taking over a ring its creator (pid %d) left when it died", name, pid)
    _shm.unlink(name)
    return _make_segment(specs, name)


def _open_segment(name: str, timeout: float) -> _shm.Mapping:
    """Map an existing segment, waiting up to `timeout` for it to appear and for its creator to finish
    formatting it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            mapping = _shm.open_existing(name)
        except SegmentError as e:
            if e.errno != errno.ENOENT or time.monotonic() >= deadline:
                raise
            time.sleep(0.002)  # not there yet: its creator may be about to make it
            continue
        rc, _hdr = _seg_header(mapping)
        if rc == 0:
            return mapping
        mapping.close()
        if rc != _NOTREADY or time.monotonic() >= deadline:
            raise _error(rc, f"opening {name}")
        time.sleep(0.001)


def _open_passed(fd: int, name: str) -> _shm.Mapping:
    """Map a sealed segment whose descriptor the server passed (the caller still owns `fd`); its creator
    formatted it before passing it."""
    mapping = _shm.open_fd(fd, name)
    rc, _hdr = _seg_header(mapping)
    if rc:
        mapping.close()
        raise _error(rc, f"opening {name}")
    return mapping


def _attach_segment(name: str, fd: int | None, timeout: float) -> _shm.Mapping:
    """By the descriptor passed (a sealed segment), or else by its name."""
    return _open_passed(fd, name) if fd is not None else _open_named(name, timeout)


def _session_text(key: str) -> str:
    return "unset" if key == "sx" else key[1:]


def _open_named(name: str, timeout: float) -> _shm.Mapping:
    """A segment by the name given to open(): a user's ring only from its own login session. Its name
    carries its creator's session; while the creator lives, the kernel's word on its session must agree
    (a name could be made up). A server's segments (full names it hands out) are the session rule's."""
    seg = _names.resolve(name)
    theirs = _names.user_ring_session(seg)
    if theirs is None:
        return _open_segment(seg, timeout)
    mine = _names.session_key(_proc.login_session())

    def refuse(where: str) -> OtherSession:
        return OtherSession(errno.EACCES, f"ring {name!r} lives in login session {where}, and this process is in "
                                          f"login session {_session_text(mine)}: shared memory is never shared "
                                          f"across login sessions (use the broker's topics, which cross them)")

    if theirs != mine:
        raise refuse(_session_text(theirs))
    if not name.startswith("/") and not os.path.exists(_shm.SHM_DIR + seg):
        elsewhere = _names.user_ring_elsewhere(name)  # not here, but in another login session: say so now
        if elsewhere:
            raise refuse(" and ".join(_session_text(k) for _, k in elsewhere))
    mapping = _open_segment(seg, timeout)
    rc, hdr = _seg_header(mapping)
    pid, start = int(hdr.creator_pid), int(hdr.creator_start)
    if rc == 0 and _proc.alive(pid, start):
        creator = _proc.login_session(pid)
        if creator is not None and _names.session_key(creator) != mine:
            mapping.close()
            raise refuse(f"{_session_text(_names.session_key(creator))} (its creator, pid {pid}, is there)")
    return mapping


def _seg_header(mapping: _shm.Mapping) -> tuple[int, Any]:
    """brk_seg_check's outcome and the header it copied out (valid when the outcome is 0)."""
    hdr = ffi.new("struct brk_seg_hdr *")
    base = _from_buffer(mapping.mm)
    try:
        return lib.brk_seg_check(base, mapping.size, hdr), hdr
    finally:
        ffi.release(base)


def _nonce(mapping: _shm.Mapping) -> bytes:
    rc, hdr = _seg_header(mapping)
    if rc:
        raise _error(rc, f"reading {mapping.name}")
    return bytes(ffi.buffer(hdr.nonce, lib.BRK_NONCE_BYTES))


def session_rings(name: str, capacity: int, spin_us: float = 50.0) -> tuple["Ring", "Ring", bytes, int]:
    """The server's side of a session's segment, a sealed memfd (src/shmbroker/core/shm.py): two rings, 0 carrying
    requests (we consume) and 1 replies (we produce), the segment's nonce, and its descriptor to pass
    to the client (closed by the first ring's unlink() or close())."""
    seg = _make_segment([(lib.BRK_KIND_SPSC, 0, capacity, 0)] * 2, name, sealed=True)
    try:
        nonce = _nonce(seg)
        rx = Ring(seg, 0, lib.BRK_ROLE_CONSUMER, spin_us)
    except BaseException:
        seg.close()
        seg.unlink()
        raise
    try:
        tx = Ring(seg.remap(), 1, lib.BRK_ROLE_PRODUCER, spin_us)
    except BaseException:
        rx.close()
        raise
    return rx, tx, nonce, seg.fd


def _one_cpu() -> bool:
    """This process may run on one CPU only (a one-vCPU machine, or pinned): its ring waits
    yield between looks from the start instead of spinning first."""
    try:
        return len(os.sched_getaffinity(0)) <= 1
    except OSError:
        return False


def session_call(tx: "Ring", rx: "Ring") -> Callable[..., Any]:
    """A client's whole synchronous call in C on its session's two rings (csrc/py/client.c, call):
    fn(rid, code, handle, args, wait_ns, max_frame) -> int | bytes | NotImplemented |
    (outcome,) | (outcome, 0). Keep both Rings alive while using it."""
    tx.need("producer")
    rx.need("consumer")
    return functools.partial(CLIENT["call"], tx._addr, rx._addr)


def session_call_many(tx: "Ring", rx: "Ring") -> Callable[..., Any]:
    """A client's pipelined calls in C on its session's two rings (csrc/py/client.c, call_many):
    fn(first_rid, code, handle, argsets, results, sent, done, limit, window, wait_ns,
    max_frame, outstanding, odd) -> (sent, done, outcome). Keep both Rings alive while using it."""
    tx.need("producer")
    rx.need("consumer")
    return functools.partial(CLIENT["call_many"], tx._addr, rx._addr)


MANY_UNUSUAL = lib.BRK_MANY_UNUSUAL  # call_many's outcome: the next request is not for C
MANY_ODD = lib.BRK_MANY_ODD  # call_many's outcome: a reply C did not take, and what followed it, are in `odd`

def request_taker(rx: "Ring") -> Callable[..., Any]:
    """The server's ring 0 as C takes its requests (csrc/py/server.c, take_requests):
    fn(conn, max_frame, close_code, max_messages, async_budget, reply_budget). Keep rx alive."""
    rx.need("consumer")
    return functools.partial(SERVER["take_requests"], rx._addr)


def completer(tx: "Ring") -> Callable[..., Any]:
    """The server's ring 1 as C writes completions into it (csrc/py/server.c, put_complete):
    fn(rid, status, writes, error_bytes). Keep tx alive."""
    tx.need("producer")
    return functools.partial(SERVER["put_complete"], tx._addr)


def open_session_rings(fd: int, name: str, spin_us: float = 50.0) -> tuple["Ring", "Ring", bytes]:
    """The client's side, from the sealed segment's descriptor the server passed (the caller still
    owns `fd`): (requests producer, replies consumer, the segment's nonce)."""
    first = _open_passed(fd, name)
    try:
        nonce = _nonce(first)
        tx = Ring(first, 0, lib.BRK_ROLE_PRODUCER, spin_us)
    except BaseException:
        first.close()
        raise
    try:
        rx = Ring(_shm.open_fd(fd, name), 1, lib.BRK_ROLE_CONSUMER, spin_us)
    except BaseException:
        tx.close()
        raise
    return tx, rx, nonce


def make_pair_segment(name: str, capacity: int) -> _shm.Mapping:
    """A linked service's private pair of rings (src/shmbroker/services/links), a sealed memfd: ring 0 carries a
    caller's requests to the provider, ring 1 the replies back. The caller of this (the server) keeps
    the mapping only to pass its descriptor (mapping.fd) to both and to let go of it at the pair's end;
    it attaches to neither ring."""
    return _make_segment([(lib.BRK_KIND_SPSC, 0, capacity, 0)] * 2, name, sealed=True)


def open_pair(name: str, spin_us: float, caller: bool, fd: int | None = None) -> tuple["Ring", "Ring"]:
    """(tx, rx) on a pair made by make_pair_segment (by the descriptor passed, else by name): the
    caller produces ring 0 and consumes ring 1, the provider the other way round."""
    first = _attach_segment(name, fd, 1.0)
    try:
        tx = Ring(first, 0 if caller else 1, lib.BRK_ROLE_PRODUCER, spin_us)
    except BaseException:
        first.close()
        raise
    try:
        rx = Ring(_attach_segment(name, fd, 1.0), 1 if caller else 0, lib.BRK_ROLE_CONSUMER, spin_us)
    except BaseException:
        tx.close()
        raise
    return tx, rx


class Bell:
    """A word that another thread of this process rings to end a wait_any() early."""

    def __init__(self) -> None:
        self._word = ffi.new("uint32_t *")
        self._addr = int(ffi.cast("uintptr_t", self._word))

    @property
    def seen(self) -> int:
        """The word now: pass it to wait_any, which returns as soon as the word moves on."""
        return int(self._word[0])

    def ring(self) -> None:
        lib.brk_bell_ring(self._word)


WAIT_ANY_MAX = lib.BRK_WAIT_ANY_MAX


def any_waiter(rings: Sequence["Ring"], bell: Bell | None, spin_us: float = 50.0) -> Callable[[int, float], int | None]:
    """wait_any over fixed rings and bell, as one closure: fn(seen, timeout) (a loop's per-call wait).
    Keep the rings alive while using it; a ring closed meanwhile makes it raise OSError."""
    if len(rings) > WAIT_ANY_MAX:
        raise ValueError(f"wait_any waits on at most {WAIT_ANY_MAX} rings")
    for r in rings:
        r.need("consumer")
    addrs, bell_addr, spin_ns, fn = tuple(r._addr for r in rings), 0 if bell is None else bell._addr, \
        int(spin_us * 1000), _FAST["wait_any"]

    def wait(seen: int, timeout: float) -> int | None:
        return fn(addrs, bell_addr, seen, spin_ns, int(timeout * 1e9) if timeout > 0 else 0)  # type: ignore[no-any-return]
    return wait


def wait_any(rings: Sequence["Ring"], bell: Bell | None, seen: int, timeout: float, spin_us: float = 50.0) -> int | None:
    """Wait, spinning for spin_us then asleep (one futex_waitv), until one of `rings` (this
    process's consumer sides of SPSC rings) has something to look at, or the bell moves on
    from `seen`: the ring's index, len(rings) for the bell, None when `timeout` passed."""
    if len(rings) > WAIT_ANY_MAX:
        raise ValueError(f"wait_any waits on at most {WAIT_ANY_MAX} rings")
    for r in rings:
        r.need("consumer")
    which: int | None = _FAST["wait_any"](tuple(r._addr for r in rings), 0 if bell is None else bell._addr, seen,
                                          int(spin_us * 1000), max(0, int(timeout * 1e9)))
    return which


def sweep(remove: bool = True) -> list[tuple[str, str]]:
    """broker's segments in /dev/shm whose creator is dead, as (name, why);
    unlinked unless remove=False. Only this user's segments are judged (the
    header names the creator: pid and start time, so a reused pid is not
    taken for it); one not yet formatted, or that cannot be read, is left alone."""
    found: list[tuple[str, str]] = []
    for name in _shm.entries():
        try:
            mapping = _shm.open_existing(name)
        except SegmentError:
            continue  # another user's, gone meanwhile, or not a sane segment: not ours to judge
        try:
            rc, hdr = _seg_header(mapping)
        finally:
            mapping.close()
        if rc != 0:
            continue  # being formatted (or never will be): no creator to ask
        pid, start = int(hdr.creator_pid), int(hdr.creator_start)
        if _proc.alive(pid, start):
            continue
        if remove and not _shm.unlink(name):
            continue  # someone else removed it first
        found.append((name, f"its creator (pid {pid}) is gone"))
    return found


class _RingSide:
    """One side of one ring. Subclasses add the kind-specific parts."""

    _kind = 0

    def __init__(self, mapping: _shm.Mapping, index: int, role: int, spin_us: float) -> None:
        self._res = _Resources(mapping)
        self._finalizer = weakref.finalize(self, self._res.close)
        h = self._res.handle
        pid, start = _proc.me()
        try:
            rc = lib.brk_ring_attach(h, self._res.base, mapping.size, index, role, pid, start)
            if rc == -errno.EBUSY:
                side = "producer" if role == lib.BRK_ROLE_PRODUCER else "consumer"
                raise StateError(f"{mapping.name} already has its {side}")
            if rc:
                raise _error(rc, f"attaching to {mapping.name}")
            if h.kind != self._kind:
                raise SegmentError(22, f"{mapping.name} holds a {_KIND_NAMES.get(h.kind, '?')} ring, not a {type(self).__name__}")
        except BaseException:
            self._finalizer()
            raise
        h.spin_ns = int(spin_us * 1000)
        if _one_cpu():  # the other side can only answer while we do not spin: yield at once (brk_ring.c)
            h.pure_spin_ns = 0
        self._h = h
        self._addr = int(ffi.cast("uintptr_t", h))
        self.name = mapping.name
        self.role = "producer" if role == lib.BRK_ROLE_PRODUCER else "consumer"
        self.capacity = int(h.capacity)
        self.max_record = int(h.max_record)
        self._view: memoryview | None = None
        self._claim: memoryview | None = None
        self._claim_len = 0
        # The per-message calls are closures over the handle's address: one
        # Python call and one fast C call, no attribute lookups.
        addr = self._addr
        if role == lib.BRK_ROLE_PRODUCER:
            send_slow = self._send_slow

            def send(data: Any, timeout: float | None = None) -> None:
                rc = _fsend(addr, data)
                if rc:
                    send_slow(rc, data, timeout)

            send.__doc__ = _RingSide.send.__doc__
            self.send = send  # type: ignore[method-assign]
            self.recv = self._not_consumer  # type: ignore[method-assign]
        else:
            recv_slow = self._recv_slow
            slice_ns = int(_SLICE * 1e9)

            def recv(timeout: float | None = None) -> bytes:
                # timeout None: one C call that reads, or spins then sleeps for a slice
                r = _frecv_wait(addr, slice_ns) if timeout is None else _frecv(addr)
                if type(r) is bytes:
                    return r
                return recv_slow(r, timeout)

            recv.__doc__ = _RingSide.recv.__doc__
            self.recv = recv  # type: ignore[method-assign]
            self.send = self._not_producer  # type: ignore[method-assign]

    # -- common ------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.role
        return f"<{type(self).__name__} {self.name} {state} capacity={self.capacity}>"

    @property
    def closed(self) -> bool:
        return self._res.handle is None or self._res.closing

    def close(self) -> None:
        """Detach this side; the creator also removes the name from /dev/shm.

        Safe to call twice. The view recv_view() lent is revoked; if something made
        from it (a slice, a numpy array) is still alive, its record stays held and
        this side leaves the ring only when that is dropped, so that nothing ever
        shows a record written later. A claim still held stays writable but is
        never published."""
        view, self._view, self._claim = self._view, None, None
        if view is not None:
            _revoke(view)
            del view
        self._finalizer()

    def unlink(self) -> None:
        """Remove the segment's name now (its creator only; the mappings stay valid)."""
        if self._res.handle is not None:
            self._res.mapping.unlink()

    def _failed(self, rc: int, what: str) -> BrokerError:
        """The error for a call's outcome; Closed if another thread closed this
        side between our calls (the C side then finds the handle detached)."""
        if self._res.handle is None or self._res.closing:
            return Closed(f"{what}: {self.name} was closed by another thread")
        return _error(rc, what)

    def _live(self) -> Any:
        h = self._res.handle
        if h is None or self._res.closing:
            raise Closed(f"{self.name} is closed")
        return h

    def _not_producer(self, *a: object, **k: object) -> Any:
        raise StateError(f"{self.name}: this is the consumer side; only the producer sends")

    def _not_consumer(self, *a: object, **k: object) -> Any:
        raise StateError(f"{self.name}: this is the producer side; only a consumer receives")

    @property
    def address(self) -> int:
        """The ring's handle as an address, for the fast calls (core/native.py RING) that take one."""
        return self._addr

    @property
    def handle(self) -> Any:
        """The ring's cffi handle (brk_ring_t *), for C calls through lib."""
        return self._h

    def keep_fd(self, fd: int) -> None:
        """A descriptor this ring's side owns from now on: closed with it."""
        self._res.fds.append(fd)

    def need(self, role: str) -> Any:
        h = self._live()
        if self.role != role:
            raise StateError(f"{self.name}: only the {role} side can do that")
        return h

    @property
    def spin_us(self) -> float:
        return int(self._live().spin_ns) / 1000

    @spin_us.setter
    def spin_us(self, value: float) -> None:
        self._live().spin_ns = int(value * 1000)

    def stats(self) -> dict[str, int]:
        """Counters of this side, in this process."""
        h = self._live()
        backlog = lib.brk_backlog(h)
        return {
            "records": int(h.records),
            "bytes": int(h.bytes),
            "lost": int(h.lost),
            "laps": int(h.laps),
            "sleeps": int(h.sleeps),
            "wakeups": int(h.wakeups),
            "full_waits": int(h.full_waits),
            "shared_cpu_waits": int(h.shared_cpu_waits),
            "backlog_bytes": int(backlog) if backlog >= 0 else -1,
        }

    def fileno(self) -> int:
        """An eventfd this side sleeps on (created on first use): poll it with
        other descriptors after `arm()` returns True. The other side needs the
        same eventfd (inherited or passed over a Unix socket) as its notify fd."""
        h = self._live()
        if h.kind == lib.BRK_KIND_BCAST and self.role == "consumer":
            raise StateError("broadcast consumers sleep on a futex they share; fileno() and arm() are for Ring")
        if h.efd_wait < 0:
            fd = lib.brk_eventfd()
            if fd < 0:
                raise _error(fd, "eventfd")
            self._res.fds.append(fd)
            h.efd_wait = fd
        return int(h.efd_wait)

    def set_notify_fd(self, fd: int) -> None:
        """The eventfd the other side sleeps on (see fileno); we write it to wake it."""
        self._live().efd_notify = fd

    def set_alive_fd(self, fd: int) -> None:
        """(Producer) A descriptor that hangs up when the reader's process dies (a session's socket;
        this side owns it now, and closes it with the ring): a tenth of a second after that, every
        send fails (Closed), even one that found room (csrc/ring/brk_ring.c, brk_alive)."""
        self._res.fds.append(fd)
        self._live().alive_fd1 = fd + 1

    def set_wait_fd(self, fd: int) -> None:
        """Sleep on this eventfd instead of the futex (the caller keeps ownership)."""
        self._live().efd_wait = fd

    # -- producer ------------------------------------------------------------

    def send(self, data: Any, timeout: float | None = None) -> None:
        """Copy one record in: bytes or any C-contiguous buffer (numpy arrays too).

        timeout None waits for room as long as the consumer lives, 0 raises Full at
        once, otherwise FullTimeout when the deadline passes."""
        raise StateError(f"{self.name}: only the producer sends")  # replaced per instance in __init__

    def _send_slow(self, rc: int, data: Any, timeout: float | None) -> None:
        h = self.need("producer")
        n = len(data) if type(data) is bytes else memoryview(data).nbytes
        deadline = _deadline(timeout)
        while rc:
            if rc == _FULL:
                self.wait_room(h, n, timeout, deadline)
                rc = _fsend(self._addr, data)
                continue
            if rc == _TOOBIG:
                raise TooBig(f"{self.name}: a record of {n} bytes exceeds this ring's maximum of {self.max_record}")
            raise self._failed(rc, f"send on {self.name}")

    def wait_room(self, h: Any, n: int, timeout: float | None, deadline: float | None) -> None:
        if timeout == 0:
            raise Full(f"{self.name}: no room for {n} bytes")
        while True:
            ns = _slice_ns(deadline)
            if ns is None:
                raise FullTimeout(f"{self.name}: no room for {n} bytes within {timeout} s")
            rc = _fwait_space(self._addr, n, ns)
            if rc == _OK:
                return
            if rc == _INTERRUPTED:
                raise Closed(f"{self.name} was closed by another thread while waiting")
            if rc != _TIMEOUT:
                raise self._failed(rc, f"waiting for room in {self.name}")
            self._check_consumers(h)

    def send_stream(self, parts: tuple[Any, ...], chunk: int, timeout: float | None = None) -> None:
        """Write the concatenation of `parts` (up to 8 C-contiguous buffers) as consecutive records of up
        to `chunk` bytes, each copied straight from the parts (a big frame's head and arguments, never
        joined). Waits for room like send(); a FullTimeout leaves part of the stream written."""
        h = self.need("producer")
        deadline = _deadline(timeout)
        at = 0
        while True:
            r = _fsend_stream(self._addr, parts, at, chunk)
            if r == 0:
                return
            rc, at, need = r
            if rc != _FULL:
                raise self._failed(rc, f"send on {self.name}")
            self.wait_room(h, need, timeout, deadline)

    def _check_consumers(self, h: Any) -> None:
        """Called while a producer waits for room."""

    def send_many(self, messages: Iterable[Any], timeout: float | None = None) -> int:
        """Send every message (bytes or C-contiguous buffers) with as few
        publications as room allows, waiting for room like send(); returns
        the count (on Full, its `sent` says how many went). One C call per
        256 messages; no per-message Python work."""
        h = self.need("producer")
        msgs = messages if isinstance(messages, (list, tuple)) else list(messages)
        deadline = _deadline(timeout)
        done = 0
        while done < len(msgs):
            sent, rc = _fsend_many(self._addr, msgs, done)
            done += sent
            if rc == _OK:
                continue
            n = len(msgs[done]) if type(msgs[done]) is bytes else memoryview(msgs[done]).nbytes
            if rc == _FULL:
                try:
                    self.wait_room(h, n, timeout, deadline)
                except Full as e:
                    e.sent = done  # type: ignore[attr-defined]  # the first `sent` went
                    raise
                continue
            if rc == _TOOBIG:
                raise TooBig(f"{self.name}: message {done} has {n} bytes, over the maximum of {self.max_record}")
            raise _error(rc, f"send_many on {self.name}")
        return len(msgs)

    def send_batch(self, data: Any, lens: Any, timeout: float | None = None) -> None:
        """Send len(lens) records packed back to back in `data` (a buffer), the
        i-th lens[i] bytes long. `lens` is a buffer of unsigned 64-bit integers
        (a numpy uint64 array, array('Q')). No per-record Python work."""
        h = self.need("producer")
        buf = _as_buffer(data)
        lp = _lengths(lens)
        total_n = len(lp)
        done = 0
        offset = 0
        deadline = _deadline(timeout)
        while done < total_n:
            rc = lib.brk_send_many(h, buf + offset, len(buf) - offset, lp + done, total_n - done)
            if rc == _OK:
                done += int(h.count)
                offset += int(h.count_bytes)
                continue
            if rc == _FULL:
                self.wait_room(h, int(lp[done]), timeout, deadline)
                continue
            if rc == _TOOBIG:
                raise TooBig(f"{self.name}: record {done} has {lp[done]} bytes, over the maximum of {self.max_record}")
            if rc == -22 and done == 0 and offset == 0:
                raise ValueError(f"the lengths add up to more than the {len(buf)} bytes of data")
            raise _error(rc, f"send_batch on {self.name}")

    def claim(self, n: int, timeout: float | None = None) -> memoryview:
        """Reserve room for a record of up to n bytes and return it as a
        writable memoryview into the ring; commit() publishes it, abort()
        forgets it. Nothing is visible to consumers before commit()."""
        h = self.need("producer")
        deadline = _deadline(timeout)
        while True:
            rc = lib.brk_claim(h, n)
            if rc == _OK:
                break
            if rc == _FULL:
                self.wait_room(h, n, timeout, deadline)
                continue
            if rc == _TOOBIG:
                raise TooBig(f"{self.name}: cannot claim {n} bytes, the maximum is {self.max_record}")
            raise _error(rc, f"claim on {self.name}")
        off = int(ffi.cast("uintptr_t", h.wptr)) - self._res.addr
        self._claim = self._res.view[off : off + n]
        self._claim_len = n
        return self._claim

    @overload
    def claim_array(self, shape: int | tuple[int, ...], *, timeout: float | None = None) -> NDArray[np.uint8]: ...
    @overload
    def claim_array(self, shape: int | tuple[int, ...], dtype: type[_S] | np.dtype[_S],
                    timeout: float | None = None) -> NDArray[_S]: ...
    @overload
    def claim_array(self, shape: int | tuple[int, ...], dtype: DTypeLike, timeout: float | None = None) -> NDArray[Any]: ...

    def claim_array(self, shape: int | tuple[int, ...], dtype: Any = np.uint8, timeout: float | None = None) -> np.ndarray:
        """claim() as a writable numpy array of `shape` and `dtype`, built in place."""
        dt = np.dtype(dtype)
        count = int(np.prod(shape))
        view = self.claim(count * dt.itemsize, timeout)
        return np.frombuffer(view, dtype=dt, count=count).reshape(shape)

    def commit(self, n: int | None = None) -> None:
        """Publish the claimed record with n bytes (default: all that was claimed)."""
        h = self.need("producer")
        if self._claim is None:
            raise StateError(f"{self.name}: commit() without claim()")
        length = self._claim_len if n is None else n
        if not 0 <= length <= self._claim_len:
            raise ValueError(f"commit of {length} bytes, but {self._claim_len} were claimed")
        _revoke(self._claim)
        self._claim = None
        rc = lib.brk_commit(h, length)
        if rc:
            raise _error(rc, f"commit on {self.name}")

    def abort(self) -> None:
        """Forget the claimed record; consumers never see it."""
        h = self.need("producer")
        if self._claim is None:
            raise StateError(f"{self.name}: abort() without claim()")
        _revoke(self._claim)
        self._claim = None
        lib.brk_abort(h)

    # -- consumer ------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> bytes:
        """The next record as bytes. timeout None waits while the producer
        lives, 0 raises Empty at once, otherwise EmptyTimeout at the deadline;
        Closed once the producer has closed and everything is read."""
        raise StateError(f"{self.name}: only a consumer receives")  # replaced per instance in __init__

    def _recv_slow(self, r: Any, timeout: float | None) -> bytes:
        h = self.need("consumer")
        deadline = _deadline(timeout)
        addr = self._addr
        while True:
            if type(r) is bytes:
                return r
            if r == _EMPTY or r == _TIMEOUT:
                r = self._waiting(h, timeout, deadline, lambda ns: _frecv_wait(addr, ns))
                continue
            if r == _LAPPED:  # lapped again and again by a very fast lossy producer
                if deadline is not None and time.monotonic() > deadline:
                    raise EmptyTimeout(f"{self.name}: lapped by the producer until the deadline")
                r = _frecv(addr)
                continue
            if r == _BUSY and self._res.lease is not None:  # recv_view's record: give it back first
                self._give_back(h)
                r = _frecv(addr)
                continue
            raise self._failed(r, f"recv on {self.name}")

    def _waiting(self, h: Any, timeout: float | None, deadline: float | None, call: Any) -> Any:
        """Call `call(slice_ns)` (a fast-call wait) until it returns anything
        but BRK_EMPTY/BRK_TIMEOUT, looking at the producer between slices."""
        if timeout == 0:
            raise Empty(f"{self.name}: nothing to read")
        while True:
            ns = _slice_ns(deadline)
            if ns is None:
                raise EmptyTimeout(f"{self.name}: nothing to read within {timeout} s")
            r = call(ns)
            if type(r) is int:
                if r == _TIMEOUT or r == _EMPTY:
                    self._check_producer(h)
                    continue
                if r == _INTERRUPTED:
                    raise Closed(f"{self.name} was closed by another thread while waiting")
            return r

    def _wait_data(self, h: Any, timeout: float | None, deadline: float | None) -> None:
        """Wait until there is something to look at (data, closure, eviction)."""
        addr = self._addr
        rc = self._waiting(h, timeout, deadline, lambda ns: _fwait_data(addr, ns))
        if rc:
            raise self._failed(rc, f"waiting on {self.name}")

    def _check_producer(self, h: Any) -> None:
        pid = int(h.hdr.producer_pid)
        if pid > 0 and not _proc.alive(pid, int(h.hdr.producer_start)):
            # a last look: records it committed before dying are still ours
            if lib.brk_backlog(h) == 0:
                raise PeerGone(f"{self.name}: the producer (pid {pid}) died")

    def recv_into(self, buffer: Any, timeout: float | None = None) -> int:
        """Copy the next record into a writable buffer; returns its length.
        TooBig (the record stays unread) if the buffer is too small."""
        h = self.need("consumer")
        if self._res.lease is not None:
            self._give_back(h)
        dst = ffi.from_buffer(buffer, require_writable=True)
        deadline = _deadline(timeout)
        rc = lib.brk_recv(h, dst, len(dst))
        while True:
            if rc == _OK or rc == _LOST:
                return int(h.rlen)
            if rc == _EMPTY:
                self._wait_data(h, timeout, deadline)
                rc = lib.brk_recv(h, dst, len(dst))
                continue
            if rc == _TOOBIG:
                raise TooBig(f"{self.name}: the next record has {h.rlen} bytes, the buffer {len(dst)}")
            raise _error(rc, f"recv_into on {self.name}")

    def recv_view(self, timeout: float | None = None) -> memoryview:
        """The next record in place, as a read-only memoryview: no copy.

        The record stays this consumer's, and the producer never writes over it,
        until release() or the next receive gives it back; that revokes the view
        (any later use raises ValueError). A slice, a memoryview or a numpy array
        made from the view cannot be revoked, so it keeps the record held: the
        next receive (or release()) then raises ViewInUse, and succeeds once it
        is dropped. On a lossy Broadcast the producer never waits: it may write
        over a held record, and release() says so (False)."""
        h = self.need("consumer")
        if self._res.lease is not None:
            self._give_back(h)
        deadline = _deadline(timeout)
        rc = lib.brk_peek(h)
        while rc == _EMPTY:
            self._wait_data(h, timeout, deadline)
            rc = lib.brk_peek(h)
        if rc not in (_OK, _LOST):
            raise _error(rc, f"recv_view on {self.name}")
        off = int(ffi.cast("uintptr_t", h.rptr)) - self._res.addr
        # The view's exporter is an array of its own, over the record and read-only for good (its
        # base is read-only): every view, slice or array made from the view holds it, so while it
        # lives something can still read the record (the lease), and when it dies nothing can.
        owner = np.frombuffer(self._res.view[off : off + int(h.rlen)].toreadonly(), np.uint8)
        self._res.lease = weakref.ref(owner)
        self._view = view = memoryview(owner)  # type: ignore[arg-type]  # (numpy exports a buffer)
        return view

    def release(self) -> bool:
        """Give the viewed record back to the ring, revoking the view. True if
        its bytes stayed intact while held; False if a lossy producer overwrote
        them meanwhile (what was read may be torn). ViewInUse while a slice or
        an array made from the view is alive (the record stays held)."""
        return self._give_back(self.need("consumer"))

    def _give_back(self, h: Any) -> bool:
        view, self._view = self._view, None
        if view is not None:
            _revoke(view)
            del view
        lease = self._res.lease
        if lease is None:
            raise StateError(f"{self.name}: release() without recv_view()")
        if lease() is not None:
            raise ViewInUse(f"{self.name}: the view recv_view() lent is still in use (a slice, memoryview or "
                            f"numpy array made from it is alive), so its record is still held: drop it (del) "
                            f"before the next receive, or use recv(), which copies")
        self._res.lease = None
        rc = lib.brk_release(h)
        if rc == _OK:
            return True
        if rc == _LAPPED:
            return False
        raise _error(rc, f"release on {self.name}")

    @overload
    def recv_array(self, *, shape: int | tuple[int, ...] | None = None, timeout: float | None = None,
                   copy: bool = True) -> NDArray[np.uint8]: ...
    @overload
    def recv_array(self, dtype: type[_S] | np.dtype[_S], shape: int | tuple[int, ...] | None = None,
                   timeout: float | None = None, copy: bool = True) -> NDArray[_S]: ...
    @overload
    def recv_array(self, dtype: DTypeLike, shape: int | tuple[int, ...] | None = None,
                   timeout: float | None = None, copy: bool = True) -> NDArray[Any]: ...

    def recv_array(self, dtype: Any = np.uint8, shape: int | tuple[int, ...] | None = None,
                   timeout: float | None = None, copy: bool = True) -> np.ndarray:
        """The next record as a numpy array. copy=True: a writable array of its
        own (one copy, out of the ring). copy=False: a read-only array over the
        ring itself; its record stays held while the array (or anything made
        from it) lives, so drop it before the next receive (else ViewInUse)."""
        dt = np.dtype(dtype)
        view = self.recv_view(timeout)
        if len(view) % dt.itemsize:
            self.release()
            raise ValueError(f"a record of {len(view)} bytes is not a whole number of {dt} items")
        if not copy:
            arr = np.frombuffer(view, dtype=dt)
            return arr.reshape(shape) if shape is not None else arr
        out = np.empty(len(view) // dt.itemsize, dtype=dt)
        out.view(np.uint8)[:] = np.frombuffer(view, dtype=np.uint8)
        del view
        if not self.release():
            return self.recv_array(dt, shape, timeout, copy)
        return out.reshape(shape) if shape is not None else out

    def recv_many(self, max_records: int = _BATCH_RECORDS, timeout: float | None = None) -> list[bytes]:
        """At least one record (waiting as recv does) and up to max_records
        (at most 4096) of those already there, in one C call."""
        h = self.need("consumer")
        if not 1 <= max_records <= _BATCH_MAX:
            raise ValueError(f"max_records must be from 1 to {_BATCH_MAX}")
        if self._res.lease is not None:
            self._give_back(h)
        addr = self._addr
        deadline = _deadline(timeout)
        while True:
            r = _frecv_many(addr, max_records)
            if type(r) is list:
                return r
            if r == _EMPTY:
                self._wait_data(h, timeout, deadline)
                continue
            if r == _TOOBIG:  # the next record is bigger than the batch buffer
                return [self.recv(timeout=0)]
            if r == _LAPPED:
                continue
            raise _error(r, f"recv_many on {self.name}")

    def recv_stream(self, target: Any, at: int) -> tuple[int, bytes | None]:
        """The records already here copied straight into `target` (a writable buffer) from byte `at` on,
        until it is full or no record is here now: (where target's filled part ends, the bytes of the
        last record past its end or None). Never waits."""
        h = self.need("consumer")
        if self._res.lease is not None:
            self._give_back(h)
        r = _frecv_stream(self._addr, target, at)
        if type(r) is int:
            raise self._failed(r, f"recv on {self.name}")
        return r  # type: ignore[no-any-return]

    def recv_batch(self, out: Any, lens: Any, timeout: float | None = None) -> int:
        """Copy records back to back into the writable buffer `out`, their
        lengths into `lens` (a writable buffer of uint64); returns how many (at
        least one, waiting as recv does). No per-record Python work."""
        h = self.need("consumer")
        if self._res.lease is not None:
            self._give_back(h)
        dst = ffi.from_buffer(out, require_writable=True)
        lp = _lengths(lens)
        if memoryview(lens).readonly:
            raise TypeError("recv_batch needs a writable buffer for the lengths")
        if len(lp) == 0:
            raise ValueError("recv_batch needs room for at least one length")
        deadline = _deadline(timeout)
        rc = lib.brk_recv_many(h, dst, len(dst), lp, len(lp))
        while True:
            if rc == _OK or rc == _LOST:
                return int(h.count)
            if rc == _EMPTY:
                self._wait_data(h, timeout, deadline)
                rc = lib.brk_recv_many(h, dst, len(dst), lp, len(lp))
                continue
            if rc == _TOOBIG:
                raise TooBig(f"{self.name}: the next record does not fit in {len(dst)} bytes")
            raise _error(rc, f"recv_batch on {self.name}")

    def wait(self, timeout: float | None = None) -> bool:
        """Consumer: wait until there is something to read; False on timeout."""
        h = self.need("consumer")
        try:
            self._wait_data(h, timeout, _deadline(timeout))
        except (EmptyTimeout, Empty):
            return False
        return True

    def ready(self) -> bool:
        """Consumer: is there something to look at (a record, or the producer's
        end) right now? One short look, never a wait; for a poller that spins."""
        if self.role != "consumer":
            self.need("consumer")
        r = _fready(self._addr)
        if type(r) is bool:
            return r
        self.need("consumer")  # Closed if it was closed
        raise _error(r, f"ready on {self.name}")

    def poller(self) -> Callable[[], Any]:
        """Consumer: ready() as one C call with no arguments, for a loop that
        spins over many rings: truthy when there is something to look at, or
        an error to find out about (recv then raises it). The caller keeps this
        Ring alive for as long as it uses the poller."""
        self.need("consumer")
        return functools.partial(_fready, self._addr)

    def sender(self) -> Callable[[Any], int]:
        """Producer: send(data, timeout=0) as one C call: 0 when the record is
        in, else an int outcome (BRK_FULL: no room now; anything else: call
        send, which says what). Keep this Ring alive while using it."""
        self.need("producer")
        return functools.partial(_fsend, self._addr)

    def batcher(self, max_records: int = _BATCH_RECORDS) -> Callable[[], Any]:
        """Consumer: recv_many(max_records, timeout=0) as one C call with no
        arguments: a list of the records there (never empty), or an int
        outcome when there are none or something is wrong (then call
        recv_many, which says what). Keep this Ring alive while using it."""
        self.need("consumer")
        if not 1 <= max_records <= _BATCH_MAX:
            raise ValueError(f"max_records must be from 1 to {_BATCH_MAX}")
        return functools.partial(_frecv_many, self._addr, max_records)

    def arm(self) -> bool:
        """Consumer: announce that we will sleep on fileno(). True: poll it;
        False: records are already waiting, read them first."""
        h = self.need("consumer")
        self.fileno()
        rc = lib.brk_arm(h)
        if rc < 0:
            raise _error(rc, f"arm on {self.name}")
        return rc == _OK

    def __iter__(self) -> "_RingSide":
        return self

    def __next__(self) -> bytes:
        try:
            return self.recv()
        except Closed:
            raise StopIteration from None


def _as_buffer(data: Any) -> Any:
    try:
        return _from_buffer(data)
    except (TypeError, BufferError, ValueError) as e:
        raise TypeError(f"send takes bytes or a C-contiguous buffer, not {type(data).__name__}: {e}") from None


_UINT64_FORMATS = {"Q", "<Q", "=Q", "@Q", "L", "<L", "=L", "@L"}


def _lengths(lens: Any) -> Any:
    """A uint64_t[] over a caller's buffer of record lengths, refusing any
    buffer whose items are not unsigned 64-bit integers (reading it as such
    would make up lengths)."""
    mv = memoryview(lens)
    if mv.itemsize != 8 or mv.format not in _UINT64_FORMATS or not mv.c_contiguous:
        raise TypeError(f"record lengths must be a contiguous buffer of uint64 (numpy uint64, array('Q')), "
                        f"not format {mv.format!r} of {mv.itemsize}-byte items")
    return ffi.from_buffer("uint64_t[]", mv)


def _revoke(view: memoryview) -> None:
    """Make a handed-out view unusable where Python allows it (no exports hang off it)."""
    try:
        view.release()
    except BufferError:
        pass  # a numpy array or memoryview still uses it: the mapping stays valid underneath


_KIND_NAMES = {lib.BRK_KIND_SPSC: "single-consumer", lib.BRK_KIND_BCAST: "broadcast"}
_ROLES = {"producer": lib.BRK_ROLE_PRODUCER, "consumer": lib.BRK_ROLE_CONSUMER}


def _role(role: str) -> int:
    try:
        return _ROLES[role]
    except KeyError:
        raise ValueError(f"role must be 'producer' or 'consumer', not {role!r}") from None


class Ring(_RingSide):
    """A single-producer, single-consumer ring of variable-length records in named shared memory.

    >>> with Ring.create(capacity=1 << 16) as tx, Ring.open(tx.name) as rx:
    ...     tx.send(b"hello")
    ...     rx.recv()
    b'hello'
    """

    _kind = lib.BRK_KIND_SPSC

    @classmethod
    def create(cls, name: str | None = None, capacity: int = DEFAULT_CAPACITY, *, role: str = "producer",
               spin_us: float = 50.0) -> "Ring":
        """A new ring; this process owns its segment and unlinks it at close().
        `name` (letters, digits, '_', '-') makes it findable by that name for
        this user; without one the name is generated (see .name)."""
        side = _role(role)  # check every argument before creating anything
        seg = _names.user_name(name) if name else _names.segment_name("ring")
        mapping = _make_named([(lib.BRK_KIND_SPSC, 0, capacity, 0)], seg)
        return cls(mapping, 0, side, spin_us)

    @classmethod
    def open(cls, name: str, *, role: str = "consumer", spin_us: float = 50.0, timeout: float = 1.0) -> "Ring":
        """Attach to the other side of an existing ring."""
        side = _role(role)
        mapping = _open_named(name, timeout)
        return cls(mapping, 0, side, spin_us)

    def _check_consumers(self, h: Any) -> None:
        pid = int(h.hdr.consumer_pid)
        if pid > 0:
            self._had_consumer = True
            if not _proc.alive(pid, int(h.hdr.consumer_start)):
                raise PeerGone(f"{self.name}: the consumer (pid {pid}) died")
        elif getattr(self, "_had_consumer", False) or int(h.hdr.head) != 0:  # a consumer was there and left
            raise PeerGone(f"{self.name}: the consumer closed the ring; nobody will make room")



class Broadcast(_RingSide):
    """One producer, many consumers: every consumer sees every record.

    Lossless (default): the producer waits for the slowest consumer (and a
    consumer that died is evicted). Lossy: the producer never waits; a consumer
    that falls a whole ring behind skips to the oldest record still there and
    counts exactly how many it lost (`lost`, `last_lost`)."""

    _kind = lib.BRK_KIND_BCAST

    @classmethod
    def create(cls, name: str | None = None, capacity: int = DEFAULT_CAPACITY, *, max_consumers: int = 16,
               lossy: bool = False, spin_us: float = 50.0) -> "Broadcast":
        """A new broadcast ring with this process as its producer."""
        seg = _names.user_name(name) if name else _names.segment_name("bcast")
        flags = lib.BRK_FLAG_LOSSY if lossy else 0
        mapping = _make_named([(lib.BRK_KIND_BCAST, flags, capacity, max_consumers)], seg)
        return cls(mapping, 0, lib.BRK_ROLE_PRODUCER, spin_us)

    @staticmethod
    def make_segment(name: str, capacity: int = DEFAULT_CAPACITY, *, max_consumers: int = 16,
                     lossy: bool = False, sealed: bool = False) -> _shm.Mapping:
        """A new broadcast ring's segment that nobody is attached to yet (a server makes it for a
        publisher, which attaches with attach_producer; the caller unlinks it). sealed: a sealed memfd,
        whose descriptor (mapping.fd) is passed to whoever attaches (src/shmbroker/core/shm.py)."""
        flags = lib.BRK_FLAG_LOSSY if lossy else 0
        return _make_segment([(lib.BRK_KIND_BCAST, flags, capacity, max_consumers)], name, sealed)

    @classmethod
    def attach_producer(cls, name: str, *, spin_us: float = 50.0, timeout: float = 1.0,
                        fd: int | None = None) -> "Broadcast":
        """Be the producer of an existing broadcast ring that has none (see make_segment): by the
        descriptor passed (fd, still the caller's), else by name."""
        return cls(_attach_segment(name, fd, timeout), 0, lib.BRK_ROLE_PRODUCER, spin_us)

    @classmethod
    def open(cls, name: str, *, spin_us: float = 50.0, timeout: float = 1.0, fd: int | None = None) -> "Broadcast":
        """Join an existing broadcast ring as a consumer, starting with the next record (by the
        descriptor passed, fd, still the caller's; else by name)."""
        mapping = _attach_segment(name, fd, timeout)
        self = cls(mapping, 0, lib.BRK_ROLE_CONSUMER, spin_us)
        pid, start = _proc.me()
        rc = lib.brk_bcast_join(self._h, pid, start)
        for _ in range(10):
            if rc == -errno.ENOSPC and self._free_dead_slots():  # but some slots are dead consumers': freed
                rc = lib.brk_bcast_join(self._h, pid, start)
                continue
            if rc not in (-11, _LAPPED):  # EAGAIN (evicted while joining), or lapped by a fast lossy producer
                break
            rc = lib.brk_bcast_join(self._h, pid, start)
        if rc:
            slots = int(self._h.max_consumers)
            self.close()
            if rc == -errno.ENOSPC:
                raise StateError(f"{self.name}: all {slots} consumer slots are taken")
            raise _error(rc, f"joining {self.name}")
        return self

    def _free_dead_slots(self) -> bool:
        """Evict and free the slots of consumers that died (as a waiting producer does): True if any."""
        h = self._live()
        freed = False
        for c in self.consumers():
            state = c["state"]
            if (state in (lib.BRK_SLOT_ACTIVE, lib.BRK_SLOT_EVICTED) and c["pid"] > 0
                    and not _proc.alive(c["pid"], c["start"])):
                if state == lib.BRK_SLOT_ACTIVE:
                    lib.brk_bcast_evict(h, c["slot"])
                freed = lib.brk_bcast_reclaim(h, c["slot"]) == 0 or freed
        return freed

    @property
    def lossy(self) -> bool:
        return bool(self._live().flags & lib.BRK_FLAG_LOSSY)

    @property
    def lost(self) -> int:
        """Records this consumer lost in all (lossy rings only)."""
        return int(self._live().lost)

    @property
    def last_lost(self) -> int:
        """Records lost just before the last record received."""
        return int(self._live().last_lost)

    def consumers(self) -> list[dict[str, int]]:
        """The occupied consumer slots: slot, state, pid, head position."""
        h = self._live()
        st, pid, start, head = ffi.new("uint32_t *"), ffi.new("int32_t *"), ffi.new("uint64_t *"), ffi.new("uint64_t *")
        out = []
        for i in range(int(h.max_consumers)):
            lib.brk_bcast_slot_info(h, i, st, pid, start, head)
            state = int(st[0]) & lib.BRK_SLOT_MASK
            if state != lib.BRK_SLOT_FREE:
                out.append({"slot": i, "state": state, "word": int(st[0]), "pid": int(pid[0]),
                            "start": int(start[0]), "head": int(head[0])})
        return out

    def backlog(self) -> int:
        """Consumer: bytes written and not yet read by this consumer (records and their headers)."""
        return max(0, int(lib.brk_backlog(self.need("consumer"))))

    def arm_doorbell(self) -> bool:
        """Consumer: count this consumer as a sleeper that the producer wakes through its notify
        eventfd (set_notify_fd in the producer's process; a server relaying the ring polls it
        with its other descriptors). True: sleep; False: records are already waiting. Either way
        it stays counted until disarm_doorbell()."""
        h = self.need("consumer")
        rc = lib.brk_arm(h)
        if rc < 0:
            raise _error(rc, f"arm on {self.name}")
        return rc == _OK

    def disarm_doorbell(self) -> None:
        """Undo one arm_doorbell()."""
        rc = lib.brk_disarm(self.need("consumer"))
        if rc < 0:
            raise _error(rc, f"disarm on {self.name}")

    def evict(self, slot: int) -> bool:
        """Producer: remove a consumer; it gets Evicted on its next call."""
        h = self.need("producer")
        return lib.brk_bcast_evict(h, slot) == _OK

    def _check_consumers(self, h: Any) -> None:
        """A lossless producer waiting for room evicts consumers that died
        (joined or joining) and frees the slots of evicted ones that died. A
        joiner that died before writing its pid is known by its slot staying
        the same JOINING word for two looks in a row."""
        stuck: set[tuple[int, int]] = getattr(self, "_joining_seen", set())
        now_stuck: set[tuple[int, int]] = set()
        for c in self.consumers():
            dead = c["pid"] > 0 and not _proc.alive(c["pid"], c["start"])
            if c["state"] == lib.BRK_SLOT_JOINING and c["pid"] <= 0:
                now_stuck.add((c["slot"], c["word"]))
                dead = (c["slot"], c["word"]) in stuck
            if dead and c["state"] in (lib.BRK_SLOT_ACTIVE, lib.BRK_SLOT_JOINING):
                lib.brk_bcast_evict(h, c["slot"])
                lib.brk_bcast_reclaim(h, c["slot"])
            elif dead and c["state"] == lib.BRK_SLOT_EVICTED:
                lib.brk_bcast_reclaim(h, c["slot"])
        self._joining_seen = now_stuck
