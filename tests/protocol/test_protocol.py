"""The sans-IO protocol: one golden table drives the encoder and the decoder; bad input is a ProtocolError with a reason."""
from __future__ import annotations

import struct
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from shmbroker.protocol.frames import (
    HEADER_SIZE,
    MAX_TEXT,
    NO_ARG,
    Arg,
    ArgKind,
    Auth,
    AuthOk,
    Cancel,
    Challenge,
    ClientConnection,
    Close,
    Complete,
    FrameReader,
    Hello,
    Panic,
    ProtocolError,
    Refuse,
    Request,
    ServerConnection,
    State,
    Welcome,
    Write,
    encode,
)


def h(s: str) -> bytes:
    return bytes.fromhex(s.replace("|", ""))


# header: magic "BRK1", version 1, type, flags u16, length u32, reserved u32, request id u64
GOLDEN = [
    (Hello((1, 2, 3), 8, True, False),
     "42524b31 01 01 0000 10000000 00000000 0000000000000000 | 0100 0200 03000000 0800 01 00 00000000"),
    (Hello((0, 0, 0), 0, False, True, 1 << 22),
     "42524b31 01 01 0000 10000000 00000000 0000000000000000 | 0000 0000 00000000 0000 02 00 00004000"),
    (Welcome(0x0102030405060708, 8, 65536),
     "42524b31 01 02 0000 10000000 00000000 0000000000000000 | 0807060504030201 0800 0000 00000100"),
    (Refuse(-10, "v2 only"),
     "42524b31 01 03 0000 0b000000 00000000 0000000000000000 | f6ffffff 7632206f6e6c79"),
    (Request(7, 42, (Arg(ArgKind.INT, -1), Arg(ArgKind.READ, 0, b"hi"), Arg(ArgKind.WRITE, 32),
                     Arg(ArgKind.HANDLE, 0x00010002)), 0, False),
     "42524b31 01 04 0000 4a000000 00000000 0700000000000000 | 2a000000 00000000"
     " 01000000 00000000 ffffffffffffffff"
     " 02000000 02000000 0000000000000000"
     " 03000000 00000000 2000000000000000"
     " 05000000 00000000 0200010000000000"
     " 6869"),
    (Request(8, 3, (Arg(ArgKind.READWRITE, 4, b"ab"), NO_ARG, NO_ARG, NO_ARG), 0x00020001, True),
     "42524b31 01 04 0100 4a000000 00000000 0800000000000000 | 03000000 01000200"
     " 04000000 02000000 0400000000000000"
     " 00000000 00000000 0000000000000000"
     " 00000000 00000000 0000000000000000"
     " 00000000 00000000 0000000000000000"
     " 6162"),
    (Complete(7, 0, (Write(2, b"ok"),), None),
     "42524b31 01 05 0000 12000000 00000000 0700000000000000 | 00000000 01 00 0000 02000000 02000000 6f6b"),
    (Complete(9, -13, (), "boom"),
     "42524b31 01 05 0000 0c000000 00000000 0900000000000000 | f3ffffff 00 01 0000 626f6f6d"),
    (Panic("bad"), "42524b31 01 06 0000 03000000 00000000 0000000000000000 | 626164"),
    (Cancel(8), "42524b31 01 07 0000 00000000 00000000 0800000000000000 |"),
    (Close(""), "42524b31 01 08 0000 00000000 00000000 0000000000000000 |"),
    (Challenge(bytes(range(32))),
     "42524b31 01 0c 0000 20000000 00000000 0000000000000000 | " + bytes(range(32)).hex()),
    (Auth(bytes(32), b"\xff" * 32, "al"),
     "42524b31 01 0d 0000 42000000 00000000 0000000000000000 | " + "00" * 32 + "ff" * 32 + "616c"),
    (AuthOk(b"\x11" * 32), "42524b31 01 0e 0000 20000000 00000000 0000000000000000 | " + "11" * 32),
]


@pytest.mark.parametrize("event,wire", GOLDEN, ids=[type(e).__name__ + str(i) for i, (e, _) in enumerate(GOLDEN)])
def test_golden_encode(event, wire):
    assert encode(event) == h(wire)


@pytest.mark.parametrize("event,wire", GOLDEN, ids=[type(e).__name__ + str(i) for i, (e, _) in enumerate(GOLDEN)])
def test_golden_decode(event, wire):
    assert FrameReader().feed(h(wire)) == [event]


def test_frames_arrive_in_any_pieces():
    stream = b"".join(h(w) for _, w in GOLDEN)
    r = FrameReader()
    got = []
    for i in range(0, len(stream), 7):
        got += r.feed(stream[i : i + 7])
    assert got == [e for e, _ in GOLDEN] and r.pending == 0


def corrupt(wire: str, offset: int, value: bytes) -> bytes:
    b = bytearray(h(wire))
    b[offset : offset + len(value)] = value
    return bytes(b)


HELLO = GOLDEN[0][1]
REQ = GOLDEN[4][1]
COMPLETE = GOLDEN[6][1]


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "bad magic"),
        (corrupt(HELLO, 4, b"\x02"), "protocol version 2"),
        (corrupt(HELLO, 5, b"\x63"), "unknown frame type 99"),
        (corrupt(HELLO, 8, struct.pack("<I", 1 << 30)), "over the limit"),
        (corrupt(HELLO, 12, b"\x01"), "reserved"),
        (corrupt(HELLO, 6, b"\x01"), "flags"),
        (corrupt(HELLO, 16, b"\x05"), "request id"),
        (corrupt(HELLO, 8, b"\x0b") [:-1], "HELLO body of 11 bytes"),
        (corrupt(HELLO, 24 + 10, b"\x80"), "unknown flags"),
        (corrupt(REQ, 24 + 8 + 16, b"\x09"), "unknown kind 9"),
        (corrupt(REQ, 24 + 8 + 16 + 4, struct.pack("<I", 1000)), "claims 1000 bytes"),
        (corrupt(REQ, 24 + 8 + 32 + 4, struct.pack("<I", 1)), "with a payload length"),
        (corrupt(REQ, 6, b"\x04"), "unknown flags"),
        (corrupt(GOLDEN[5][1], 24 + 8 + 8, b"\x01\x00\x00\x00\x00\x00\x00\x00"), "over a max length"),
        (h(REQ)[: HEADER_SIZE] + h(REQ)[HEADER_SIZE:][:20], None),  # truncated: waits for the rest
        (corrupt(COMPLETE, 24 + 4, b"\x05"), "5 writes"),
        (corrupt(COMPLETE, 24 + 8, b"\x07"), "writes argument 7"),
        (corrupt(COMPLETE, 24 + 12, struct.pack("<I", 99)), "write of 99 bytes"),
        (corrupt(GOLDEN[8][1], 24, b"\xff"), "not UTF-8"),
        (corrupt(GOLDEN[9][1], 8, b"\x01") + b"x", "CANCEL with a body"),
        (corrupt(GOLDEN[11][1], 8, b"\x1f")[:-1], "CHALLENGE with a nonce of 31 bytes"),
        (corrupt(GOLDEN[12][1], 8, b"\x40")[:-2], "AUTH: 64 bytes, needs 65"),
        (corrupt(GOLDEN[12][1], 8, b"\x81") + b"n" * 63, "key name of 65 bytes"),
        (corrupt(GOLDEN[12][1], 24 + 64, b"\xff"), "AUTH key name is not UTF-8"),
        (corrupt(GOLDEN[13][1], 8, b"\x21") + b"x", "AUTH_OK with a proof of 33 bytes"),
    ],
)
def test_bad_frames_are_protocol_errors_with_a_reason(data, reason):
    r = FrameReader()
    if reason is None:
        assert r.feed(data) == [] and r.pending == len(data)
        return
    with pytest.raises(ProtocolError, match=reason):
        r.feed(data)


def test_oversized_frame_is_refused_before_its_body_arrives():
    r = FrameReader(max_frame=4096)
    header = h(GOLDEN[8][1])[:HEADER_SIZE]
    with pytest.raises(ProtocolError, match="over the limit of 4096"):
        r.feed(header[:8] + struct.pack("<I", 4097) + header[12:])


def test_texts_are_cut_to_the_limit_on_a_character_boundary():
    ev = FrameReader().feed(encode(Panic("é" * MAX_TEXT)))[0]
    assert len(ev.reason.encode()) <= MAX_TEXT and set(ev.reason) == {"é"}


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_events_or_a_protocol_error(data):
    r = FrameReader(max_frame=4096)
    try:
        r.feed(h(HELLO)[:4] + data)
        r.feed(data)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_golden_frames_decode_or_fail_cleanly(data):
    event, wire = data.draw(st.sampled_from(GOLDEN))
    b = bytearray(h(wire))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] = data.draw(st.integers(0, 255))
    try:
        FrameReader().feed(bytes(b))
    except ProtocolError:
        pass


def handshake() -> tuple[ClientConnection, ServerConnection]:
    c, s = ClientConnection(), ServerConnection()
    [hello] = s.receive(c.hello(Hello((1, 0, 0), 2)))
    assert hello.slots == 2 and s.state == State.HANDSHAKE
    [welcome] = c.receive(s.accept(connection_id=5, slots=2))
    assert welcome.connection_id == 5 and c.state == s.state == State.OPEN
    return c, s


def test_request_and_completion_roundtrip():
    c, s = handshake()
    rid, frame = c.request(9, [Arg(ArgKind.READ, data=b"in"), Arg(ArgKind.WRITE, 10)])
    [req] = s.receive(frame)
    assert req.code == 9 and req.args[0].data == b"in" and req.args[1].max_length == 10
    [done] = c.receive(s.complete(rid, 0, [Write(1, b"out")]))
    assert done.writes == (Write(1, b"out"),) and not c.outstanding and not s.outstanding


def test_a_second_completion_is_refused():
    c, s = handshake()
    rid, frame = c.request(1)
    s.receive(frame)
    s.complete(rid)
    with pytest.raises(ProtocolError, match="not outstanding"):
        s.complete(rid)


def test_out_of_place_frames_end_the_connection():
    c, s = ClientConnection(), ServerConnection()
    with pytest.raises(ProtocolError, match="before HELLO"):
        s.receive(encode(Request(1, 1)))
    assert s.state == State.CLOSED and "protocol error" in s.closed_reason

    c, s = handshake()
    with pytest.raises(ProtocolError, match="unknown request 77"):
        c.receive(encode(Complete(77)))
    c, s = handshake()
    rid, frame = c.request(1)
    s.receive(frame)
    with pytest.raises(ProtocolError, match="reused"):
        s.receive(frame)
    c, s = handshake()
    with pytest.raises(ProtocolError, match="does not send"):
        s.receive(encode(Welcome(1, 1)))


def test_the_key_exchange_in_order():
    """HELLO, CHALLENGE, AUTH, then AUTH_OK with WELCOME; the proofs cover the HELLO as it travelled."""
    c, s = ClientConnection(), ServerConnection()
    s.receive(c.hello(Hello((1, 0, 0), 3)))
    assert s.hello_body == c.hello_body and len(c.hello_body) == 16
    [ch] = c.receive(s.challenge(b"n" * 32))
    assert ch == Challenge(b"n" * 32) and c.challenge == b"n" * 32 and s.state == State.AUTH
    [auth] = s.receive(c.auth(b"c" * 32, b"p" * 32, "alice"))
    assert auth == Auth(b"c" * 32, b"p" * 32, "alice") and s.auth_event == auth and c.state == State.AUTH
    with pytest.raises(ProtocolError, match="needs the answered CHALLENGE and the server's proof"):
        s.accept(1, 3)  # no proof: a WELCOME without AUTH_OK would let the client take an impostor
    ok, welcome = c.receive(s.accept(1, 3, proof=b"s" * 32))
    assert ok == AuthOk(b"s" * 32) and c.server_proof == b"s" * 32 and welcome.connection_id == 1
    assert c.state == s.state == State.OPEN


@pytest.mark.parametrize("case, error", [
    ("welcome before the auth", "WELCOME before the CHALLENGE was answered"),
    ("a second challenge", "a second CHALLENGE"),
    ("auth_ok without auth", "AuthOk before WELCOME"),
    ("welcome in place of auth_ok", "Welcome where AUTH_OK was due"),
    ("auth to a client", "Auth before WELCOME"),
])
def test_key_frames_out_of_place_end_the_client(case, error):
    c = ClientConnection()
    c.hello(Hello())
    if case == "welcome before the auth":
        c.receive(encode(Challenge(bytes(32))))
        frames = encode(Welcome(1, 1))
    elif case == "a second challenge":
        frames = encode(Challenge(bytes(32))) * 2
    elif case == "auth_ok without auth":
        frames = encode(AuthOk(bytes(32)))
    elif case == "welcome in place of auth_ok":
        c.receive(encode(Challenge(bytes(32))))
        c.auth(bytes(32), bytes(32), "k")
        frames = encode(Welcome(1, 1))
    else:
        frames = encode(Auth(bytes(32), bytes(32), "k"))
    with pytest.raises(ProtocolError, match=error):
        c.receive(frames)
    assert c.state == State.CLOSED


@pytest.mark.parametrize("case, error", [
    ("auth before hello", "Auth before HELLO"),
    ("auth without a challenge", "Auth before the server answered HELLO"),
    ("a request in place of auth", "Request where the answer to CHALLENGE was due"),
    ("auth_ok from a client", "AuthOk where the answer to CHALLENGE was due"),
])
def test_key_frames_out_of_place_end_the_server(case, error):
    s = ServerConnection()
    if case != "auth before hello":
        s.receive(encode(Hello()))
    if case in ("a request in place of auth", "auth_ok from a client"):
        s.challenge(bytes(32))
    frame = {"a request in place of auth": encode(Request(1, 1)),
             "auth_ok from a client": encode(AuthOk(bytes(32)))}.get(case, encode(Auth(bytes(32), bytes(32), "k")))
    with pytest.raises(ProtocolError, match=error):
        s.receive(frame)
    assert s.state == State.CLOSED


def test_refusal_and_panic_close_the_client():
    c, s = ClientConnection(), ServerConnection()
    s.receive(c.hello(Hello((9, 0, 0))))
    [ref] = c.receive(s.refuse(-10, "version 9 is not supported"))
    assert ref.status == -10 and c.state == State.CLOSED and "version 9" in c.closed_reason
    c, s = handshake()
    c.receive(s.panic("bad descriptor"))
    assert c.state == State.CLOSED and "bad descriptor" in c.closed_reason
    with pytest.raises(ProtocolError):
        c.request(1)


def test_requests_over_the_servers_limit_are_refused_before_sending():
    c, s = ClientConnection(), ServerConnection(max_frame=4096)
    s.receive(c.hello(Hello()))
    c.receive(s.accept(1, 0))
    with pytest.raises(ValueError, match="over the server's limit"):
        c.request(1, [Arg(ArgKind.READ, data=b"x" * 5000)])
    assert not c.outstanding


PROTOCOL = sorted(p.name for p in (Path(__file__).resolve().parents[2] / "src" / "shmbroker" / "protocol").glob("*.py"))


@pytest.mark.parametrize("module", PROTOCOL)
def test_the_protocol_layer_does_no_io(module):
    """Sans-IO: no sockets, no mmap, no os, no threads in the protocol layer (src/shmbroker/protocol/)."""
    import ast

    src = (Path(__file__).resolve().parents[2] / "src" / "shmbroker" / "protocol" / module).read_text()
    imported = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add((node.module or "").split(".")[0])
    assert not imported & {"socket", "mmap", "os", "select", "selectors", "threading", "asyncio", "posix_ipc"}
