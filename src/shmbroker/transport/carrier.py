"""A session's carriers: the socket, or a pair of rings in shared memory when the session rule allows it.

A client session talks to its carrier only (ClientSession._carrier): `send(frame)`, `take(deadline)`
(what came, waiting until the deadline: None when it passed; CarrierGone when the other end went
away or the carrier broke), `take_nowait()`, `close()`, and `kind` ("socket" or "shared memory").
SocketCarrier is the socket's; ClientRings the rings' (DESIGN.md sections 3 and 4), which also
makes a whole call in one C call (`call`, `call_many`).

A server's connection writes to its carrier only (_Conn.carrier): `write(frame)` (True: all of
it went; False: some waits, to go with `flush()` once there is room: the socket writable, or
ring 1 read), `queue(frame)` (after what waits, sent by the next flush), `flush()` (True when
nothing waits), `pending_bytes` (what waits: the server bounds it), `last_word()` (what waits, as
far as it goes now, never blocking or raising), `close()` and `kind`. Both raise CarrierGone with
the reason the session ends. ServerSocket is the socket's, ServerRings the rings'.

Ring 0 carries the client's frames to the server, ring 1 the server's to the
client. Each record is a piece of the same byte stream the socket would carry
(the protocol's FrameReader does not care where a frame was cut), so a frame
larger than a ring's biggest record is split, never refused. The server
creates the segment, a memfd sealed against shrinking (src/shmbroker/core/shm.py: no
client can truncate it under the server), and owns it; the segment and an
eventfd (ring 0's consumer doorbell) go to the client over the Unix socket
with SCM_RIGHTS. The server sleeps on the doorbell among its other
descriptors, and never blocks on a client's ring: what does not fit in ring 1
waits in memory and is retried. The client sleeps on ring 1's futex.
"""
from __future__ import annotations

import hmac
import os
import select
import socket
import time
from collections import deque
from itertools import islice
from typing import Any

from shmbroker._errors import BrokerError, Closed, Empty, Full, PeerGone
from shmbroker.core.ring import (FULL, MANY_ODD as MANY_ODD, MANY_UNUSUAL as MANY_UNUSUAL, TIMEOUT as TIMEOUT, completer, open_session_rings, request_taker, session_call,
                    session_call_many, session_rings)

SESSION_RING_CAPACITY = 1 << 20  # of each ring; a record is at most half of it
# A big frame's records: small enough that the server copies one out while the client writes the next
# (the two copies overlap, on two cores), big enough that a record's own cost stays small.
STREAM_CHUNK = 128 << 10
RECV_BYTES = 256 * 1024  # a socket carrier's read: at most this much at a time
_BIG_PIECE = 64 << 10  # a server socket's waiting output: pieces this big are queued as they are, not joined
_IOV = 64  # pieces in one sendmsg
_DONTWAIT = socket.MSG_DONTWAIT
_ns = time.perf_counter_ns
_yield = os.sched_yield


def send_parts(sock: socket.socket, parts: "tuple[bytes, ...]") -> None:
    """sendall() for a big frame's parts: gather writes (sendmsg), the parts never joined."""
    views: list[bytes | memoryview] = [p if type(p) is bytes else memoryview(p).cast("B") for p in parts]
    while views:
        n = sock.sendmsg(views)
        while n:
            first = views[0]
            if n >= len(first):
                n -= len(first)
                del views[0]
            else:
                views[0] = memoryview(first)[n:]
                n = 0


class CarrierGone(BrokerError):
    """The other end went away, or the carrier broke: the session is over (the text says which:
    on the server's side, "died: ..." or "protocol error: ...", the reason it ends with)."""


class SocketCarrier:
    """The socket carries the session's frames (the client's end).

    take() spins then sleeps: for spin_ns, non-blocking reads (a reply that comes within that time
    costs no sleep and no wake-up), yielding the CPU between tries; then a blocking read, or, with a
    deadline, poll() for what is left of it. The socket itself stays blocking, so no read pays for
    switching its mode. What take() returns is a view of the carrier's buffer, good until the next take."""

    kind = "socket"

    def __init__(self, sock: socket.socket, address: str, spin_ns: int) -> None:
        self.sock = sock
        self.address = address
        self.spin_ns = spin_ns
        self._buf = bytearray(RECV_BYTES)  # reused: a fresh bytes per read costs an allocation and faults
        self._view = memoryview(self._buf)
        # the session's FrameReader: while it gathers a big frame, reads go straight into that frame
        # (its room()), and take() gives an empty view (feeding it to the protocol completes the frame)
        self.reader: Any = None
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)

    def send(self, frame: "bytes | tuple[bytes, ...]") -> None:
        """A frame, or a big frame's parts (written together, never joined: sendmsg)."""
        if isinstance(frame, tuple):
            send_parts(self.sock, frame)
        else:
            self.sock.sendall(frame)

    def send_nowait(self, frame: "bytes | memoryview | tuple[bytes, ...]") -> memoryview | None:
        """As much of the frame as the socket takes now, never waiting: None when all of it went, else
        what is left (to send when the socket is writable again). OSError when the connection broke."""
        view = memoryview(b"".join(frame) if isinstance(frame, tuple) else frame).cast("B")
        at, n = 0, len(view)
        while at < n:
            try:
                at += self.sock.send(view[at:], _DONTWAIT)
            except BlockingIOError:
                return view[at:]
        return None

    def _got(self, n: "int | OSError", room: memoryview | None = None) -> memoryview:
        if isinstance(n, OSError):
            raise CarrierGone(f"the connection to {self.address} broke: {n}")
        if not n:
            raise CarrierGone(f"the server at {self.address} closed the connection")
        if room is not None:  # read straight into the big frame being gathered
            self.reader.took(n)
            return self._view[:0]
        return self._view[:n]

    def _target(self) -> tuple[Any, memoryview | None]:
        room = self.reader.room() if self.reader is not None else None
        return (self._buf, None) if room is None else (room, room)

    def take_nowait(self) -> memoryview | None:
        buf, room = self._target()
        try:
            n = self.sock.recv_into(buf, 0, _DONTWAIT)
        except BlockingIOError:
            return None
        except OSError as e:
            n = e  # type: ignore[assignment]
        return self._got(n, room)

    def take(self, deadline: float | None) -> memoryview | None:
        sock = self.sock
        buf, room = self._target()
        while True:
            n = -1
            try:
                if self.spin_ns:
                    spin = self.spin_ns
                    if deadline is not None:
                        spin = min(spin, max(0, int((deadline - time.monotonic()) * 1e9)))
                    end = _ns() + spin
                    while True:
                        try:
                            n = sock.recv_into(buf, 0, _DONTWAIT)
                            break
                        except BlockingIOError:
                            if _ns() > end:
                                break
                            _yield()  # the server may be waiting for this CPU
                if n < 0:
                    if deadline is not None:
                        left = deadline - time.monotonic()
                        if left <= 0 or not self._poll.poll(left * 1000.0):
                            return None
                        n = sock.recv_into(buf, 0, _DONTWAIT)
                    else:
                        n = sock.recv_into(buf)
            except BlockingIOError:
                continue  # poll() said readable, yet nothing: look again
            except OSError as e:
                n = e  # type: ignore[assignment]
            return self._got(n, room)

    def close(self) -> None:
        """The session closes the socket itself (it is also the death signal of a ring session)."""


class ServerSocket:
    """The server's end of a socket session's output. A frame goes out at once if the socket takes
    it; what it does not take waits in memory (`out`), sent in order by flush() when the socket is
    writable again. The socket is non-blocking (the server's loop never waits on a client).

    A frame may be a big one's parts (a tuple: ServerConnection.complete): they go out with one
    sendmsg. What waits is a queue of pieces: small frames joined in a bytearray, each big part
    kept as it is (never copied), sent by flush() with one sendmsg for many pieces."""

    kind = "socket"

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out: deque[Any] = deque()  # what waits to go out: bytearrays of small frames, big parts
        self.pending_bytes = 0  # their size

    def write(self, frame: "bytes | bytearray | memoryview | tuple[bytes, ...]") -> bool:
        if self.out:
            self.queue(frame)  # after what waits
            return False
        try:
            if isinstance(frame, tuple):
                n = self.sock.sendmsg(frame)
                size = sum(map(len, frame))
            else:
                n = self.sock.send(frame)
                size = len(frame)
        except BlockingIOError:
            n, size = 0, -1
        except OSError as e:
            raise CarrierGone(f"died: {e}") from None
        if n == size:
            return True
        parts = frame if isinstance(frame, tuple) else (frame,)
        for p in parts:  # what the socket did not take
            k = len(p)
            if n >= k:
                n -= k
                continue
            self._piece(memoryview(p)[n:] if n else p)
            n = 0
        return False

    def queue(self, frame: "bytes | bytearray | memoryview | tuple[bytes, ...]") -> None:
        if type(frame) is tuple:
            for p in frame:
                self._piece(p)
        else:
            self._piece(frame)

    def _piece(self, p: Any) -> None:
        n = len(p)
        out = self.out
        if n < _BIG_PIECE:  # small: joined with the small ones before it
            if out and type(out[-1]) is bytearray:
                out[-1] += p
            else:
                out.append(bytearray(p))
        else:  # big: queued as it is (the bytes of a message nobody changes: no copy)
            out.append(p)
        self.pending_bytes += n

    def flush(self) -> bool:
        out, sock = self.out, self.sock
        while out:
            try:
                n = sock.send(out[0]) if len(out) == 1 else sock.sendmsg(list(islice(out, _IOV)))
            except BlockingIOError:
                return False
            except OSError as e:
                raise CarrierGone(f"died: {e}") from None
            self.pending_bytes -= n
            while n:
                first = out[0]
                k = len(first)
                if n >= k:
                    out.popleft()
                    n -= k
                elif type(first) is bytearray:
                    del first[:n]
                    n = 0
                else:
                    out[0] = memoryview(first)[n:]
                    n = 0
        return True

    def last_word(self) -> None:
        if self.out:
            try:
                self.sock.sendmsg(list(islice(self.out, _IOV)))
            except OSError:
                pass

    def close(self) -> None:
        """The connection closes the socket itself (it carried the handshake, and carries the death signal)."""
        self.out.clear()
        self.pending_bytes = 0


class ServerRings:
    """The server's side: consumer of ring 0, producer of ring 1."""

    kind = "shared memory"

    def __init__(self, name: str, capacity: int = SESSION_RING_CAPACITY, spin_us: float = 0.0) -> None:
        self.rx, self.tx, self.nonce, self.segment = session_rings(name, capacity, spin_us)  # segment: its fd
        self.name = self.rx.name
        self.capacity = capacity
        try:
            self.doorbell = self.rx.fileno()  # an eventfd: the client writes it when we sleep
            # ring 1's bell: an eventfd we write when we put a frame into ring 1 while the client sleeps
            # on it (its asyncio loop watches it: ClientSession._loop_attach); closed with the ring
            self.bell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.tx.keep_fd(self.bell)
            self.tx.set_notify_fd(self.bell)
        except BaseException:
            self.close()
            raise
        self._chunk = self.tx.max_record
        self.pending: deque[bytes] = deque()  # pieces that did not fit in ring 1 yet
        self.pending_bytes = 0  # their size: the server bounds it (Server(max_queued=))
        # Something to read now? One C call, no system call (a spinning server looks often);
        # truthy for an error too, which read() then raises.
        self.ready = self.rx.poller()
        self._batch = self.rx.batcher()
        self._send1 = self.tx.sender()
        self.take = request_taker(self.rx)  # the common requests, made Messages by C
        self.put = completer(self.tx)  # a completion, encoded straight into ring 1 by C

    def proof(self, nonce: bytes) -> bool:
        """Did the client read the segment? (the nonce it echoed is the one we wrote)"""
        return hmac.compare_digest(nonce, self.nonce)

    def mapped(self) -> None:
        """Both sides have mapped it: let go of its descriptor, so nobody else ever gets it."""
        self.rx.unlink()
        self.segment = -1

    def write(self, frame: bytes) -> bool:
        """A frame for the client; True if it is all in the ring, False if some waits (flush later).
        CarrierGone if the client is gone or broke ring 1."""
        try:
            return self._write(frame)
        except BrokerError as e:
            raise self.gone(e) from None

    @staticmethod
    def gone(e: BrokerError) -> CarrierGone:
        """What a ring's failure means for the session: the client died or closed its side, or it
        scribbled on ring 1 (Corrupt: a buggy or hostile peer ends only its own session)."""
        if isinstance(e, (PeerGone, Closed)):
            return CarrierGone("died")
        return CarrierGone(f"protocol error: {e}")

    def queue(self, frame: bytes) -> None:
        self._split(memoryview(frame))

    def _write(self, frame: bytes) -> bool:
        if self.pending:
            self._split(memoryview(frame))
            return self._flush()
        if len(frame) <= self._chunk:  # the common case: one record
            rc = self._send1(frame)
            if rc == 0:
                return True
            if rc == FULL:
                self.pending.append(frame)
                self.pending_bytes += len(frame)
                return False
            self.tx.send(frame, 0)  # raises what the outcome means (PeerGone, Corrupt...)
            return True
        view = memoryview(frame)
        send, step = self.tx.send, self._chunk
        for at in range(0, len(view), step):
            try:
                send(view[at : at + step], 0)
            except Full:
                self._split(view[at:])
                return False
        return True

    def _split(self, view: memoryview) -> None:
        step = self._chunk
        self.pending.extend(bytes(view[at : at + step]) for at in range(0, len(view), step))
        self.pending_bytes += len(view)

    def flush(self) -> bool:
        """Move what waits into ring 1 while it fits; True when nothing is left. CarrierGone as write."""
        try:
            return self._flush()
        except BrokerError as e:
            raise self.gone(e) from None

    def _flush(self) -> bool:
        pending, send = self.pending, self.tx.send
        while pending:
            try:
                send(pending[0], 0)
            except Full:
                return False
            self.pending_bytes -= len(pending.popleft())
        return True

    def last_word(self) -> None:
        try:
            self._flush()  # as far as it fits
        except BrokerError:
            pass

    def gather(self, target: bytearray, at: int) -> tuple[int, bytes | None]:
        """A big frame's records copied straight into target from byte `at` on (see
        FrameReader.gathering): Ring.recv_stream. PeerGone, Closed and Corrupt as read()."""
        return self.rx.recv_stream(target, at)

    def read(self) -> list[bytes]:
        """What the client wrote, or [] (nothing now). PeerGone if the client
        died, Closed if it closed its side."""
        r = self._batch()
        if type(r) is list:
            return r
        try:  # nothing there, or an error: the wrapper says which
            return self.rx.recv_many(timeout=0)
        except Empty:
            return []

    def arm(self) -> bool:
        """Before sleeping on the doorbell: True if armed (the client will ring
        it), False if records are already there (read them first). While the
        server is not armed, the client's writes make no system call."""
        return self.rx.arm()

    def clear_doorbell(self) -> None:
        try:
            os.read(self.doorbell, 8)
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        for ring in (getattr(self, "rx", None), getattr(self, "tx", None)):
            if ring is not None:
                ring.close()  # rx's close also unlinks the name if it is still there


class ClientRings:
    """The client's side: producer of ring 0, consumer of ring 1."""

    kind = "shared memory"

    def __init__(self, name: str, doorbell: int, segment: int, spin_us: float, address: str = "",
                 bell: int = -1) -> None:
        """From the descriptors the offer brought (ours to close, all of them, whatever happens here):
        ring 0's doorbell, the segment and, from a server that gives one, ring 1's bell (an eventfd the
        server writes when this side sleeps on it: an asyncio loop watches it; -1: none)."""
        self.address = address  # the server's, for what a failure says
        self.bell = bell  # ours to close
        try:
            self.tx, self.rx, self.nonce = open_session_rings(segment, name, spin_us)
        except BaseException:
            os.close(doorbell)
            if bell >= 0:
                os.close(bell)
            raise
        finally:
            os.close(segment)  # mapped twice: the descriptor is not needed any more
        self.doorbell = doorbell  # ours to close
        self.capacity = self.tx.capacity
        self.tx.set_notify_fd(doorbell)
        self._chunk = self.tx.max_record
        self._batch = self.rx.batcher()
        self.call = session_call(self.tx, self.rx)  # a synchronous call's round trip in one C call
        self.call_many = session_call_many(self.tx, self.rx)  # pipelined calls, their round trips in C

    def call_error(self, outcome: tuple[int, ...]) -> BaseException:
        """The exception for call()'s (outcome,) (after sending) or (outcome, 0) (before)."""
        if len(outcome) == 2:
            return self.tx._failed(outcome[0], f"send on {self.tx.name}")
        return self.rx._failed(outcome[0], f"recv on {self.rx.name}")

    def send(self, frame: "bytes | tuple[bytes, ...]") -> None:
        """Write a frame, waiting for room while the server lives (it never stops reading). A big
        frame's parts are copied straight into records of STREAM_CHUNK bytes, never joined."""
        if isinstance(frame, tuple):
            self.tx.send_stream(frame, STREAM_CHUNK)
            return
        if len(frame) <= self._chunk:  # the common case: one record
            self.tx.send(frame)
            return
        view = memoryview(frame)
        send, step = self.tx.send, self._chunk
        for at in range(0, len(view), step):
            send(view[at : at + step])

    def send_nowait(self, frame: "bytes | memoryview | tuple[bytes, ...]") -> memoryview | None:
        """As much of the frame as ring 0 has room for now, in records, never waiting: None when all of
        it went, else what is left (the server reads ring 0, then there is room for it)."""
        view = memoryview(b"".join(frame) if isinstance(frame, tuple) else frame).cast("B")
        send, step = self.tx.send, self._chunk
        for at in range(0, len(view), step):
            try:
                send(view[at : at + step], 0)
            except Full:
                return view[at:]
        return None

    def recv(self, timeout: float | None) -> bytes:
        return self.rx.recv(timeout)

    def recv_all(self, timeout: float | None) -> bytes:
        """recv, and with it whatever else is already there, as one piece of the stream."""
        first = self.rx.recv(timeout)
        more = self._batch()
        if type(more) is not list:
            return first  # nothing more (or an error, which the next recv raises)
        more.insert(0, first)
        return b"".join(more)

    def gone(self, e: BaseException) -> CarrierGone:
        """What a failed read or write of the rings means for the session."""
        if isinstance(e, PeerGone):
            return CarrierGone(f"the server at {self.address} is gone: {e}")
        if isinstance(e, Closed):
            return CarrierGone(f"the server at {self.address} closed the session")
        return CarrierGone(f"the server's ring is unusable: {e}")  # Corrupt, or anything impossible

    def take(self, deadline: float | None) -> bytes | None:
        """What came, and with it whatever else is already there (recv_all); None at the deadline."""
        try:
            return self.recv_all(None if deadline is None else max(0.0, deadline - time.monotonic()))
        except Empty:  # EmptyTimeout too: the deadline passed
            return None
        except BrokerError as e:
            raise self.gone(e) from None

    def take_nowait(self) -> bytes | None:
        try:
            return self.rx.recv(0)
        except Empty:
            return None
        except BrokerError as e:
            raise self.gone(e) from None

    def close(self) -> None:
        for ring in (self.tx, self.rx):
            ring.close()
        if self.doorbell >= 0:
            os.close(self.doorbell)
            self.doorbell = -1
        if self.bell >= 0:
            os.close(self.bell)
            self.bell = -1

