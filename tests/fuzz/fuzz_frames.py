"""Fuzz target: the Python frame decoder (src/shmbroker/protocol/frames.py) on a hostile byte stream.

FrameReader.feed (fast=True: C takes the common frames first; fast=False: the Python reference
alone), ServerConnection / ClientConnection.receive in each of their states, and decode_body.
The only acceptable failure for bad bytes is a BrokerError (ProtocolError); anything else
(IndexError, struct.error, UnicodeDecodeError, a plain ValueError...) is a bug, and so is:
the fast and the reference readers disagreeing, the result depending on how the stream was
cut into reads, a connection not CLOSED after a ProtocolError, an event that does not survive
encode() and decode again.

Input: byte 0 the mode (low 3 bits: what is fed; bit 3: the smallest max_frame, and frames of 40 bytes
or more gathered whole), byte 1 how many
cut bytes follow (mod 16), the cuts (fuzzlib.chunks), then the stream.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fuzzlib  # noqa: E402

with fuzzlib.instrumented(__name__ == "__main__", ["shmbroker.protocol.frames"]):
    from shmbroker.protocol import frames as P
    from shmbroker._errors import BrokerError

TARGET = "frames"
Bug = fuzzlib.Bug
EVENT_TYPES = (P.Hello, P.Welcome, P.Refuse, P.Request, P.Complete, P.Panic, P.Cancel, P.Close, P.ShmOffer,
               P.ShmAccept, P.ShmDecline, P.Challenge, P.Auth, P.AuthOk)
STATES = 7  # of each side below
NONCE, PROOF = bytes(range(32)), bytes(range(32, 64))
SMALL_BIG = 40  # with the smallest max_frame, frames from 40 bytes on are gathered whole (FrameReader.big_frame)


def _reader_outcome(reader: P.FrameReader, pieces: list[bytes]) -> tuple[list, tuple[str, str] | None]:
    events: list = []
    for piece in pieces:
        try:
            events += reader.feed(piece)
        except BrokerError as e:
            return events, (type(e).__name__, str(e))
        if reader.pending > reader.max_frame + P.HEADER_SIZE:
            raise Bug(f"the reader holds {reader.pending} bytes, over max_frame {reader.max_frame} and a header")
    return events, None


def _roundtrip(ev: object, max_frame: int) -> None:
    """An event a reader made is one encode() sends, and decodes back to itself."""
    if not isinstance(ev, EVENT_TYPES):
        raise Bug(f"the reader made {type(ev).__name__}, not an event")
    frame = P.encode(ev)  # type: ignore[arg-type]
    again = P.FrameReader(max_frame, fast=False).feed(frame)
    if again != [ev]:
        raise Bug(f"{ev!r} encodes to {frame!r}, which decodes to {again!r}")


def _reader(max_frame: int, fast: bool) -> P.FrameReader:
    r = P.FrameReader(max_frame, fast=fast)
    if max_frame == P.MIN_MAX_FRAME:
        r.big_frame = SMALL_BIG  # so that fuzzed streams reach the gathering of big frames
    return r


def _readers(stream: bytes, pieces: list[bytes], max_frame: int) -> None:
    fast = _reader_outcome(_reader(max_frame, True), pieces)
    slow = _reader_outcome(_reader(max_frame, False), pieces)
    whole = _reader_outcome(_reader(max_frame, False), [stream])
    if fast != slow:
        raise Bug(f"fast and reference readers differ: {fast!r} / {slow!r}")
    # a feed that raises drops the events of that same call (the connection ends there): with the
    # whole stream in one feed, fewer of them may come out before the same error
    if slow[1] != whole[1] or (slow[0] != whole[0] if slow[1] is None else whole[0] != slow[0][:len(whole[0])]):
        raise Bug(f"the outcome depends on how the stream is cut: {slow!r} / {whole!r}")
    for ev in slow[0]:
        _roundtrip(ev, max_frame)


def _server(state: int, max_frame: int) -> P.ServerConnection:
    conn = P.ServerConnection(max_frame)
    if state == 0:
        return conn  # START: waiting for HELLO
    conn.receive(P.encode(P.Hello((1, 0, 0), 4)))
    if state == 1:
        return conn  # HANDSHAKE: HELLO in, not answered
    if state in (5, 6):
        conn.challenge(NONCE)  # AUTH: waiting for the client's proof (TCP with keys)
        if state == 6:
            conn.receive(P.encode(P.Auth(NONCE, PROOF, "alice")))  # HANDSHAKE again: proven, not answered
        return conn
    conn.accept(7, 4, shm_offer=state == 3)
    if state == 3:
        conn.offer_shm(4096, "/brk-fuzz")  # OPEN, waiting for SHM_ACCEPT / SHM_DECLINE
    if state == 4:  # OPEN with requests outstanding (ids 1 and 2)
        conn.receive(P.request_frame(1, 5, 0, False, (P.NO_ARG,) * 4) + P.request_frame(2, 6, 0, True, (P.NO_ARG,) * 4))
    return conn


def _client(state: int, max_frame: int) -> P.ClientConnection:
    conn = P.ClientConnection(max_frame)
    if state == 0:
        return conn  # START: HELLO not sent
    conn.hello(P.Hello((1, 0, 0), 4))
    if state == 1:
        return conn  # HANDSHAKE: waiting for WELCOME
    if state in (5, 6):
        conn.receive(P.encode(P.Challenge(NONCE)))  # HANDSHAKE, asked for a key
        if state == 6:
            conn.auth(NONCE, PROOF, "alice")  # AUTH: waiting for AUTH_OK
        return conn
    conn.receive(P.encode(P.Welcome(7, 4, max_frame, shm_offer=state in (3, 4))))
    if state == 4:
        conn.receive(P.encode(P.ShmOffer(4096, "/brk-fuzz")))  # an offer to answer
    if state == 2:  # OPEN with requests outstanding (ids 1 to 3)
        for code in (1, 2, 3):
            conn.request(code, (P.Arg(P.ArgKind.WRITE, 16),))
    return conn


def _connection(conn: P._Side, pieces: list[bytes], max_frame: int) -> None:
    if max_frame == P.MIN_MAX_FRAME:
        conn.reader.big_frame = SMALL_BIG
    for piece in pieces:
        before = conn.state
        # as the server reads: a view of its receive buffer, which the next read overwrites
        inbuf = bytearray(piece)
        try:
            events = conn.receive(memoryview(inbuf))
        except BrokerError:
            if conn.state is not P.State.CLOSED:
                raise Bug(f"a ProtocolError left the connection {conn.state} (was {before})") from None
            return
        seen = repr(events)
        inbuf[:] = b"\xa5" * len(inbuf)
        if repr(events) != seen:
            raise Bug(f"events still point into the receive buffer: {seen} became {events!r}")
        for ev in events:
            _roundtrip(ev, max_frame)


def _decode_body(stream: bytes) -> None:
    if len(stream) < 11:
        return
    ftype, flags, rid, body = stream[0], int.from_bytes(stream[1:3], "little"), int.from_bytes(stream[3:11], "little"), stream[11:]
    try:
        ev = P.decode_body(ftype, flags, rid, body)
    except BrokerError:
        return
    _roundtrip(ev, P.DEFAULT_MAX_FRAME)


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    mode, ncuts = data[0], data[1] % 16
    cuts, stream = data[2:2 + ncuts], data[2 + ncuts:]
    pieces = fuzzlib.chunks(stream, cuts)
    max_frame = P.MIN_MAX_FRAME if mode & 8 else P.DEFAULT_MAX_FRAME
    what, state = mode & 7, (mode >> 4) % STATES
    if what in (0, 1):
        _readers(stream, pieces, max_frame)
    elif what in (2, 3):
        _connection(_server(state, max_frame), pieces, max_frame)
    elif what in (4, 5):
        _connection(_client(state, max_frame), pieces, max_frame)
    else:
        _decode_body(stream)


def seeds() -> list[bytes]:
    """Valid inputs from the real encoders: a handful of streams for each mode."""
    args = (P.Arg(P.ArgKind.INT, -5), P.Arg(P.ArgKind.READ, 0, b"hello"), P.Arg(P.ArgKind.WRITE, 64),
            P.Arg(P.ArgKind.READWRITE, 32, b"rw"))
    hello = P.encode(P.Hello((1, 0, 0), 8, sharable=True, ring_capacity=1 << 16))
    welcome = P.encode(P.Welcome(9, 8, 1 << 20, shm_offer=True))
    offer = P.encode(P.ShmOffer(1 << 16, "/brk-seg"))
    req = P.request_frame(1, 3, 0, False, args) + P.request_frame(2, 4, 17, True, (P.Arg(P.ArgKind.HANDLE, 3),) + (P.NO_ARG,) * 3)
    comp = P.complete_frame(1, 0, [P.Write(2, b"out")], None) + P.complete_frame(2, -6, [], "an error, \u00e9")
    other = (P.encode(P.Refuse(-10, "version")) + P.encode(P.Panic("boom")) + P.encode(P.Cancel(5))
             + P.encode(P.Close("bye")) + P.encode(P.ShmAccept(bytes(range(32)))) + P.encode(P.ShmDecline("no"))
             + P.encode(P.Challenge(NONCE)) + P.encode(P.Auth(NONCE, PROOF, "key-\u00e9")) + P.encode(P.AuthOk(PROOF)))
    out = [bytes([0, 0]) + hello + req + comp + other, bytes([1, 3, 5, 30, 200]) + req + comp,
           bytes([8, 0]) + req]
    for state in range(STATES):
        out.append(bytes([2 | state << 4, 0]) + (hello if state == 0 else b"")
                   + (P.encode(P.Auth(NONCE, PROOF, "bob")) if state == 5 else b"") + req + P.encode(P.Cancel(1))
                   + P.encode(P.ShmAccept(bytes(32))) + P.encode(P.Close("done")))
        out.append(bytes([4 | state << 4, 2, 10, 40]) + (P.encode(P.AuthOk(PROOF)) if state == 6 else b"")
                   + welcome + offer + comp + P.encode(P.Close("x")))
    out.append(bytes([6, 0]) + bytes([4, 1, 0]) + (5).to_bytes(8, "little") + req[24:24 + 72 + 7])
    return out


if __name__ == "__main__":
    fuzzlib.run(TestOneInput)
