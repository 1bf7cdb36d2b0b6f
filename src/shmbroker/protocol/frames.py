"""The wire protocol, sans-IO: frames, the handshake, and the client's and the server's state machines.

No sockets, no mmap, no os: bytes in, events out; calls in, bytes out. Both
transports (socket and shared memory) carry exactly these frames, so one codec
and one set of golden tests serve both.

A frame is a 24-byte little-endian header, then `length` bytes of body:

    offset size field
    0      4    magic        b"BRK1"
    4      1    version      PROTOCOL_VERSION
    5      1    type         FrameType
    6      2    flags        FLAG_* (REQUEST: FLAG_ASYNC)
    8      4    length       body bytes (at most the connection's max_frame)
    12     4    reserved     0
    16     8    request id   REQUEST / COMPLETE / CANCEL: the request; else 0

Bodies:

    HELLO     major u16, minor u16, build u32, slots u16, hello flags u8, 0 u8,
              ring capacity u32 (what the client asks for each ring of a shared-memory
              session; 0: the server's default; the server grants within its limits)
    WELCOME   connection id u64, slots u16, 0 u16, max_frame u32
    REFUSE    status i32, reason (UTF-8, the rest)
    REQUEST   function code i32, handle u32, 4 argument descriptors, payloads
    COMPLETE  status i32, write count u8, has error u8, 0 u16,
              writes (index u8, 0 u8 x3, length u32, data), error text (UTF-8, the rest)
    PANIC     reason (UTF-8)
    CANCEL    (empty; the request id says which)
    CLOSE     reason (UTF-8)
    SHM_OFFER   ring capacity u32, segment name (UTF-8, the rest: what it is, for messages); right
                after a WELCOME with WELCOME_SHM_OFFER; the doorbell eventfd and the segment (a
                sealed memfd) ride along, in that order (SCM_RIGHTS)
    SHM_ACCEPT  the 32-byte nonce the client read from the segment's header
    SHM_DECLINE reason (UTF-8); then both sides stay on the socket
    CHALLENGE   the server's 32-byte nonce: over TCP, the answer to HELLO when the server
                wants a key (src/shmbroker/transport/keys.py has the exchange and the proofs)
    AUTH        client nonce (32 bytes), client proof (32 bytes), key name (UTF-8, the rest, 1-64)
    AUTH_OK     the server's proof (32 bytes); right before its WELCOME
    NOTIFY      code i32, data (the rest): the server speaks first (Session.notify); an open session only

An argument descriptor is 16 bytes: kind u8, 0 u8 x3, length u32, value i64.
INT and HANDLE carry their value; READ carries `length` bytes of payload;
WRITE carries none and its max_length in value; READWRITE carries its current
`length` bytes and its max_length in value. Payloads follow the descriptors in
argument order.

Everything is checked before anything is allocated: a header's length against
max_frame before the body is buffered, every count and length against what is
left of the body. A violation is a ProtocolError with a reason; it ends that
connection only.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from shmbroker._errors import BrokerError
from shmbroker.core.native import CODEC as _CODEC

MAGIC = b"BRK1"
PROTOCOL_VERSION = 1
HEADER = struct.Struct("<4sBBHIIQ")
HEADER_SIZE = HEADER.size  # 24
MAX_ARGS = 4
DEFAULT_MAX_FRAME = 64 << 20
MIN_MAX_FRAME = 4096
MAX_TEXT = 4096  # reasons and error texts are cut to this many bytes
MAX_SLOTS = 65535
BIG_FRAME = 64 << 10  # a frame at least this big travels and is gathered whole, never joined (see FrameReader)
SPARE_MAX = 16 << 20  # a client's reader keeps its last big frame's buffer for the next, up to this size

FLAG_ASYNC = 1  # REQUEST: uses one of the session's message slots
HELLO_SHARABLE = 1
HELLO_SOCKET_ONLY = 2
WELCOME_SHM_OFFER = 1  # WELCOME flags: an SHM_OFFER follows
NONCE_BYTES = 32
MAX_SHM_NAME = 255
PROOF_BYTES = 32  # an HMAC-SHA256
MAX_KEY_NAME = 64

_HELLO = struct.Struct("<HHIHBBI")
_WELCOME = struct.Struct("<QHHI")
_STATUS = struct.Struct("<i")
_STATUS_U32 = struct.Struct("<I")
_REQUEST = struct.Struct("<iI")
_ARG = struct.Struct("<BxxxIq")
_COMPLETE = struct.Struct("<iBBH")
_WRITE = struct.Struct("<BxxxI")

assert HEADER_SIZE == 24 and _ARG.size == 16


class ProtocolError(BrokerError):
    """Bytes that are not a valid frame, or a valid frame out of place."""


class FrameType(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    REFUSE = 3
    REQUEST = 4
    COMPLETE = 5
    PANIC = 6
    CANCEL = 7
    CLOSE = 8
    SHM_OFFER = 9  # server: the session's rings (the doorbell and the segment travel with SCM_RIGHTS)
    SHM_ACCEPT = 10  # client: mapped; the segment's nonce, echoed
    SHM_DECLINE = 11  # client: could not map it (the reason); the socket carries the session
    CHALLENGE = 12  # server: prove you hold a key (its nonce)
    AUTH = 13  # client: the key's name, a nonce, the proof
    AUTH_OK = 14  # server: its own proof, before WELCOME
    NOTIFY = 15  # server: a notification the client did not ask for (a code and data)


class ArgKind(enum.IntEnum):
    NONE = 0
    INT = 1
    READ = 2  # a read-only buffer: its bytes travel to the server
    WRITE = 3  # a writable buffer: only its max length travels; the server writes back
    READWRITE = 4  # both
    HANDLE = 5  # a sub-session handle


_FRAME_TYPES = {t.value: t for t in FrameType}
_ARG_KINDS = {k.value: k for k in ArgKind}
_REQUEST_ALL = struct.Struct("<iI" + "BxxxIq" * 4)  # the fixed part of a REQUEST in one unpack
_REQUEST_FRAME = struct.Struct("<4sBBHIIQ" + "iI" + "BxxxIq" * 4)  # header and fixed part in one pack
_COMPLETE_FRAME = struct.Struct("<4sBBHIIQ" + "iBBH")
# plain ints for the hot paths: comparing with an enum member costs an attribute lookup on the enum class
_T_REQUEST, _T_COMPLETE = int(FrameType.REQUEST), int(FrameType.COMPLETE)
_K_NONE, _K_INT, _K_READ, _K_WRITE, _K_READWRITE, _K_HANDLE = (int(k) for k in ArgKind)
_ARG_FIELDS = tuple((i, 2 + 3 * i) for i in range(4))  # (argument, index of its kind in _REQUEST_ALL's fields)


class Status(enum.IntEnum):
    """Completion statuses (after Symbian's KErr* values, which are negative)."""

    OK = 0
    NOT_FOUND = -1
    GENERAL = -2
    CANCELLED = -3
    NO_MEMORY = -4
    NOT_SUPPORTED = -5
    ARGUMENT = -6
    BAD_HANDLE = -8
    OVERFLOW = -9
    VERSION = -10  # the server does not support the client's version
    SERVER_BUSY = -16
    DIED = -13  # the server side failed (an exception in the service)
    TIMED_OUT = -33  # a request that waited at the server for its deadline (a blocked publish, say)
    DISCONNECTED = -36
    PERMISSION_DENIED = -46


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 us an object, on every message
class Arg:
    """One argument of a message as it travels: see the module's docstring."""

    kind: ArgKind = ArgKind.NONE
    value: int = 0  # INT / HANDLE: the value; WRITE / READWRITE: max length
    data: bytes = b""  # READ / READWRITE: the bytes sent

    @property
    def max_length(self) -> int:
        if self.kind in (ArgKind.WRITE, ArgKind.READWRITE):
            return self.value
        return len(self.data)


NO_ARG = Arg()
_PADDING = tuple((NO_ARG,) * (MAX_ARGS - n) for n in range(MAX_ARGS + 1))


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 us an object, on every message
class Hello:
    version: tuple[int, int, int] = (1, 0, 0)
    slots: int = 0
    sharable: bool = False
    socket_only: bool = False
    ring_capacity: int = 0  # asked for each ring of a shared-memory session; 0: the server's default


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 us an object, on every message
class Welcome:
    connection_id: int
    slots: int
    max_frame: int = DEFAULT_MAX_FRAME
    shm_offer: bool = False  # an SHM_OFFER follows


@dataclass(slots=True)
class ShmOffer:
    capacity: int  # of each of the two rings
    name: str  # the segment, in the session's namespace


@dataclass(slots=True)
class ShmAccept:
    nonce: bytes


@dataclass(slots=True)
class ShmDecline:
    reason: str = ""


@dataclass(slots=True)
class Challenge:
    nonce: bytes  # the server's


@dataclass(slots=True)
class Auth:
    nonce: bytes  # the client's
    proof: bytes
    name: str  # the key's


@dataclass(slots=True)
class AuthOk:
    proof: bytes  # the server's


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 us an object, on every message
class Refuse:
    status: int
    reason: str = ""


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 us an object, on every message
class Request:
    request_id: int
    code: int
    args: tuple[Arg, Arg, Arg, Arg] = (NO_ARG, NO_ARG, NO_ARG, NO_ARG)
    handle: int = 0
    asynchronous: bool = False


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 us an object, on every message
class Write:
    """The new content of a writable argument (its length becomes len(data))."""

    index: int
    data: bytes


# a write as an (index, data) pair, as a server hands it to complete(): the data may be a bytearray, or a
# big write's own parts (Message._complete_parts)
WritePair = tuple[int, bytes | bytearray | tuple[bytes, ...]]


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 us an object, on every message
class Complete:
    request_id: int
    status: int = 0
    writes: tuple[Write, ...] = ()
    error: str | None = None


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 us an object, on every message
class Panic:
    reason: str


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 us an object, on every message
class Cancel:
    request_id: int


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~1 us an object, on every message
class Close:
    reason: str = ""


@dataclass(frozen=True)
class Notify:
    """The server speaks first: a code and data for the client's on_notify / notifications()."""

    code: int
    data: bytes = b""


Event = (Hello | Welcome | Refuse | Request | Complete | Panic | Cancel | Close | ShmOffer | ShmAccept | ShmDecline
         | Challenge | Auth | AuthOk | Notify)

# The per-message frames in C (csrc/py/codec.c): it makes these classes' instances itself, their fields
# declared to it here, once (a renamed field fails here, at import). The slots' member descriptors are what
# C wants; mypy sees instance attributes read from the class, hence the ignores.
_CODEC["codec_setup"](tuple(ArgKind(k) for k in range(len(ArgKind))), NO_ARG,
                      (Request.request_id, Request.code, Request.args, Request.handle, Request.asynchronous),  # type: ignore[misc]
                      (Arg.kind, Arg.value, Arg.data), (Complete.request_id, Complete.status, Complete.writes,  # type: ignore[misc]
                                                        Complete.error), (Write.index, Write.data))  # type: ignore[misc]
c_feed, c_encode_request, c_encode_complete = _CODEC["feed"], _CODEC["encode_request"], _CODEC["encode_complete"]
_frame_buffer = _CODEC["frame_buffer"]  # a bytearray of n bytes, not cleared: a big frame is gathered in it
_frame_unused = _CODEC["frame_unused"]  # no view of that bytearray is held any more (its exports)


def _no_feed(view: bytes | bytearray | memoryview, at: int, max_frame: int) -> tuple[list[Event], int]:
    return [], at

# ---- encoding -----------------------------------------------------------------


def text_bytes(s: str) -> bytes:
    """A reason or error text as it travels: UTF-8, cut to MAX_TEXT bytes on a character boundary."""
    return _text(s)


def _text(s: str) -> bytes:
    b = s.encode("utf-8", "replace")[:MAX_TEXT]
    return b.decode("utf-8", "ignore").encode("utf-8")  # never cut a character in two


# A sealed segment's descriptor, passed on a shared-memory session's socket (which carries nothing else
# once the rings carry the session): PASSED_FD, u16 name length, the name (UTF-8); the descriptor rides
# with its first byte (SCM_RIGHTS). The reply or control message that names the segment comes after it.
PASSED_FD = b"BRKD"
_PASSED_LEN = struct.Struct("<H")
MAX_PASSED_NAME = 255


def passed_fd_message(name: str) -> bytes:
    b = name.encode()
    if not 0 < len(b) <= MAX_PASSED_NAME:
        raise ValueError(f"a passed segment's name of {len(b)} bytes")
    return PASSED_FD + _PASSED_LEN.pack(len(b)) + b


def parse_passed_fds(buf: bytearray) -> list[str]:
    """The names of the PASSED_FD messages complete at the head of buf (removed from it); ProtocolError
    for anything else."""
    names = []
    head = len(PASSED_FD) + _PASSED_LEN.size
    while len(buf) >= head:
        if bytes(buf[: len(PASSED_FD)]) != PASSED_FD:
            raise ProtocolError("the server sent something other than a passed descriptor on a shared-memory "
                                "session's socket")
        (n,) = _PASSED_LEN.unpack_from(buf, len(PASSED_FD))
        if not 0 < n <= MAX_PASSED_NAME:
            raise ProtocolError(f"a passed descriptor's name of {n} bytes")
        if len(buf) < head + n:
            break
        names.append(_utf8(memoryview(bytes(buf[head : head + n])), "a passed descriptor's name"))
        del buf[: head + n]
    return names


def _frame(ftype: FrameType, body: bytes, request_id: int = 0, flags: int = 0) -> bytes:
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, ftype, flags, len(body), 0, request_id) + body


def request_frame(request_id: int, code: int, handle: int, asynchronous: bool, args: tuple[Arg, ...] | list[Arg]) -> bytes:
    """A REQUEST frame with exactly four arguments (the hot path: in C, csrc/py/codec.c; the
    reference below takes whatever C leaves to it, errors included)."""
    frame = c_encode_request(request_id, code, handle, asynchronous, args)
    if frame is not NotImplemented:
        return frame  # type: ignore[no-any-return]
    return request_frame_py(request_id, code, handle, asynchronous, args)


def request_frame_py(request_id: int, code: int, handle: int, asynchronous: bool,
                     args: tuple[Arg, ...] | list[Arg]) -> bytes:
    """request_frame in Python: the reference that the C encoder is tested against."""
    parts = request_parts(request_id, code, handle, asynchronous, args)
    return parts[0] + b"".join(parts[1:]) if len(parts) > 1 else parts[0]


def request_parts(request_id: int, code: int, handle: int, asynchronous: bool,
                  args: tuple[Arg, ...] | list[Arg]) -> tuple[bytes, ...]:
    """A REQUEST frame as its parts, never joined: the header and fixed part (bytes), then each
    payload as the caller gave it (bytes or any buffer). A big request goes out this way: the
    socket writes the parts with one sendmsg, the ring copies them straight into its records."""
    if len(args) != MAX_ARGS:
        raise ValueError(f"a request has exactly {MAX_ARGS} argument slots")
    fields: list[int] = []
    payloads: list[bytes] = []
    size = _REQUEST_ALL.size
    for a in args:
        k = a.kind
        if k == _K_READ or k == _K_READWRITE:
            d = a.data
            n = len(d) if type(d) is bytes else memoryview(d).nbytes
            if k == _K_READWRITE:
                if n > a.value:
                    raise ValueError("a READWRITE argument holds more than its max length")
                fields += (k, n, a.value)
            else:
                fields += (k, n, 0)
            if n:
                payloads.append(d)
            size += n
        else:
            fields += (k, 0, a.value)
    head = _REQUEST_FRAME.pack(MAGIC, PROTOCOL_VERSION, _T_REQUEST, FLAG_ASYNC if asynchronous else 0, size, 0,
                               request_id, code, handle, *fields)
    return (head, *payloads)


def complete_frame(request_id: int, status: int, writes: Sequence[Write | WritePair], error: str | None) -> bytes:
    """A COMPLETE frame (the hot path of the server's side: in C, as request_frame). `writes`:
    Write objects or (index, data) pairs."""
    frame = c_encode_complete(request_id, status, writes, None if error is None else _text(error))
    if frame is not NotImplemented:
        return frame  # type: ignore[no-any-return]
    return complete_frame_py(request_id, status, [w if isinstance(w, Write) else Write(*w) for w in writes],  # type: ignore[arg-type]
                             error)  # (a pair's data may be a bytearray, or a big write's parts: as complete_parts takes)


def complete_frame_py(request_id: int, status: int, writes: tuple[Write, ...] | list[Write], error: str | None) -> bytes:
    """complete_frame in Python: the reference for the C encoder."""
    parts = complete_parts(request_id, status, writes, error)
    return parts[0] + b"".join(parts[1:]) if len(parts) > 1 else parts[0]


def _write_size(w: "Write | tuple[int, bytes]") -> int:
    d = w[1] if type(w) is tuple else w.data  # type: ignore[union-attr]
    return sum(map(len, d)) if type(d) is tuple else len(d)


def complete_parts(request_id: int, status: int, writes: tuple[Write, ...] | list[Write],
                   error: str | None) -> tuple[bytes, ...]:
    """A COMPLETE frame as its parts, never joined: the header, then each write's header and data
    (as given), then the error text. A big completion goes out this way (ServerConnection.complete)."""
    if len(writes) > MAX_ARGS:
        raise ValueError("more writes than arguments")
    err = b"" if error is None else _text(error)
    size = _COMPLETE.size + len(err)
    parts: list[bytes] = []
    for w in writes:
        d: bytes | tuple[bytes, ...] = w.data  # or a write given as its own parts (below)
        n = _write_size(w)
        parts.append(_WRITE.pack(w.index, n))
        if isinstance(d, tuple):  # a write given as its own parts (Message._complete_parts)
            parts += [p for p in d if len(p)]
        elif n:
            parts.append(d)
        size += _WRITE.size + n
    head = _COMPLETE_FRAME.pack(MAGIC, PROTOCOL_VERSION, _T_COMPLETE, 0, size, 0, request_id, status, len(writes),
                                error is not None, 0)
    if err:
        parts.append(err)
    return (head, *parts)


def encode(event: Event) -> bytes:
    """The frame for an event. ValueError for an event that cannot be sent."""
    if isinstance(event, Hello):
        major, minor, build = event.version
        flags = (HELLO_SHARABLE if event.sharable else 0) | (HELLO_SOCKET_ONLY if event.socket_only else 0)
        if not 0 <= event.slots <= MAX_SLOTS:
            raise ValueError(f"slots must be from 0 to {MAX_SLOTS}")
        return _frame(FrameType.HELLO, _HELLO.pack(major, minor, build, event.slots, flags, 0, event.ring_capacity))
    if isinstance(event, Welcome):
        return _frame(FrameType.WELCOME, _WELCOME.pack(event.connection_id, event.slots,
                                                       WELCOME_SHM_OFFER if event.shm_offer else 0, event.max_frame))
    if isinstance(event, Refuse):
        return _frame(FrameType.REFUSE, _STATUS.pack(event.status) + _text(event.reason))
    if isinstance(event, Request):
        return request_frame(event.request_id, event.code, event.handle, event.asynchronous, event.args)
    if isinstance(event, Complete):
        return complete_frame(event.request_id, event.status, event.writes, event.error)
    if isinstance(event, Panic):
        return _frame(FrameType.PANIC, _text(event.reason))
    if isinstance(event, Cancel):
        return _frame(FrameType.CANCEL, b"", event.request_id)
    if isinstance(event, Close):
        return _frame(FrameType.CLOSE, _text(event.reason))
    if isinstance(event, Notify):
        if not -0x80000000 <= event.code <= 0x7FFFFFFF:
            raise ValueError(f"a notification's code is a 32-bit signed integer, not {event.code}")
        return _frame(FrameType.NOTIFY, _STATUS.pack(event.code) + bytes(event.data))
    if isinstance(event, ShmOffer):
        name = event.name.encode()
        if not 0 < len(name) <= MAX_SHM_NAME or not 0 < event.capacity < 2**32:
            raise ValueError("an SHM_OFFER needs a name of 1 to 255 bytes and a capacity below 2**32")
        return _frame(FrameType.SHM_OFFER, _STATUS_U32.pack(event.capacity) + name)
    if isinstance(event, ShmAccept):
        if len(event.nonce) != NONCE_BYTES:
            raise ValueError(f"a nonce has {NONCE_BYTES} bytes")
        return _frame(FrameType.SHM_ACCEPT, bytes(event.nonce))
    if isinstance(event, ShmDecline):
        return _frame(FrameType.SHM_DECLINE, _text(event.reason))
    if isinstance(event, Challenge):
        if len(event.nonce) != NONCE_BYTES:
            raise ValueError(f"a nonce has {NONCE_BYTES} bytes")
        return _frame(FrameType.CHALLENGE, bytes(event.nonce))
    if isinstance(event, Auth):
        name = event.name.encode()
        if len(event.nonce) != NONCE_BYTES or len(event.proof) != PROOF_BYTES or not 0 < len(name) <= MAX_KEY_NAME:
            raise ValueError(f"an AUTH needs a {NONCE_BYTES}-byte nonce, a {PROOF_BYTES}-byte proof and a name of "
                             f"1 to {MAX_KEY_NAME} bytes")
        return _frame(FrameType.AUTH, bytes(event.nonce) + bytes(event.proof) + name)
    if isinstance(event, AuthOk):
        if len(event.proof) != PROOF_BYTES:
            raise ValueError(f"a proof has {PROOF_BYTES} bytes")
        return _frame(FrameType.AUTH_OK, bytes(event.proof))
    raise TypeError(f"not a protocol event: {event!r}")


# ---- decoding -----------------------------------------------------------------


def _utf8(body: bytes | memoryview, what: str) -> str:
    if len(body) > MAX_TEXT:
        raise ProtocolError(f"{what} of {len(body)} bytes (at most {MAX_TEXT})")
    try:
        return bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not UTF-8") from None


def _need(body: memoryview, size: int, what: str) -> None:
    if len(body) < size:
        raise ProtocolError(f"{what}: {len(body)} bytes, needs {size}")


def decode_body(ftype: int, flags: int, request_id: int, body: bytes | memoryview) -> Event:
    """The event a frame's body holds. ProtocolError if it is malformed."""
    b = memoryview(body)
    t = _FRAME_TYPES.get(ftype)
    if t is None:
        raise ProtocolError(f"unknown frame type {ftype}")
    if t != FrameType.REQUEST and flags:
        raise ProtocolError(f"{t.name} frame with flags {flags:#x}")
    if t not in (FrameType.REQUEST, FrameType.COMPLETE, FrameType.CANCEL) and request_id:
        raise ProtocolError(f"{t.name} frame with a request id")
    if t == FrameType.HELLO:
        if len(b) != _HELLO.size:
            raise ProtocolError(f"HELLO body of {len(b)} bytes, expected {_HELLO.size}")
        major, minor, build, slots, hflags, zero, capacity = _HELLO.unpack(b)
        if hflags & ~(HELLO_SHARABLE | HELLO_SOCKET_ONLY) or zero:
            raise ProtocolError(f"HELLO with unknown flags {hflags:#x}")
        return Hello((major, minor, build), slots, bool(hflags & HELLO_SHARABLE), bool(hflags & HELLO_SOCKET_ONLY),
                     capacity)
    if t == FrameType.WELCOME:
        if len(b) != _WELCOME.size:
            raise ProtocolError(f"WELCOME body of {len(b)} bytes, expected {_WELCOME.size}")
        cid, slots, wflags, max_frame = _WELCOME.unpack(b)
        if wflags & ~WELCOME_SHM_OFFER:
            raise ProtocolError(f"WELCOME with unknown flags {wflags:#x}")
        if max_frame < MIN_MAX_FRAME:
            raise ProtocolError(f"WELCOME with a max frame of {max_frame} bytes")
        return Welcome(cid, slots, max_frame, bool(wflags & WELCOME_SHM_OFFER))
    if t == FrameType.REFUSE:
        _need(b, _STATUS.size, "REFUSE")
        return Refuse(_STATUS.unpack_from(b)[0], _utf8(b[_STATUS.size :], "REFUSE reason"))
    if t == FrameType.REQUEST:
        return _decode_request(b, flags, request_id)
    if t == FrameType.COMPLETE:
        return _decode_complete(b, request_id)
    if t == FrameType.PANIC:
        return Panic(_utf8(b, "PANIC reason"))
    if t == FrameType.CANCEL:
        if len(b):
            raise ProtocolError("CANCEL with a body")
        return Cancel(request_id)
    if t == FrameType.CLOSE:
        return Close(_utf8(b, "CLOSE reason"))
    if t == FrameType.NOTIFY:
        _need(b, _STATUS.size, "NOTIFY")
        return Notify(_STATUS.unpack_from(b)[0], bytes(b[_STATUS.size:]))
    if t == FrameType.SHM_OFFER:
        _need(b, _STATUS_U32.size, "SHM_OFFER")
        capacity = _STATUS_U32.unpack_from(b)[0]
        name = _utf8(b[_STATUS_U32.size :], "SHM_OFFER name")
        if not 0 < len(name.encode()) <= MAX_SHM_NAME or not capacity:
            raise ProtocolError(f"SHM_OFFER with a name of {len(name)} characters and capacity {capacity}")
        return ShmOffer(capacity, name)
    if t == FrameType.SHM_ACCEPT:
        if len(b) != NONCE_BYTES:
            raise ProtocolError(f"SHM_ACCEPT with a nonce of {len(b)} bytes, expected {NONCE_BYTES}")
        return ShmAccept(bytes(b))
    if t == FrameType.CHALLENGE:
        if len(b) != NONCE_BYTES:
            raise ProtocolError(f"CHALLENGE with a nonce of {len(b)} bytes, expected {NONCE_BYTES}")
        return Challenge(bytes(b))
    if t == FrameType.AUTH:
        _need(b, NONCE_BYTES + PROOF_BYTES + 1, "AUTH")
        key_name = b[NONCE_BYTES + PROOF_BYTES :]
        if len(key_name) > MAX_KEY_NAME:
            raise ProtocolError(f"AUTH with a key name of {len(key_name)} bytes (at most {MAX_KEY_NAME})")
        return Auth(bytes(b[:NONCE_BYTES]), bytes(b[NONCE_BYTES : NONCE_BYTES + PROOF_BYTES]),
                    _utf8(key_name, "AUTH key name"))
    if t == FrameType.AUTH_OK:
        if len(b) != PROOF_BYTES:
            raise ProtocolError(f"AUTH_OK with a proof of {len(b)} bytes, expected {PROOF_BYTES}")
        return AuthOk(bytes(b))
    return ShmDecline(_utf8(b, "SHM_DECLINE reason"))


def _decode_request(b: memoryview, flags: int, request_id: int, views: bool = False) -> Request:
    if flags & ~FLAG_ASYNC:
        raise ProtocolError(f"REQUEST with unknown flags {flags:#x}")
    at = _REQUEST_ALL.size
    size = len(b)
    if size < at:
        raise ProtocolError(f"REQUEST: {size} bytes, needs {at}")
    f = _REQUEST_ALL.unpack_from(b)
    args: list[Arg] = []
    for i, j in _ARG_FIELDS:
        kind, length, value = f[j], f[j + 1], f[j + 2]
        if kind == _K_READ or kind == _K_READWRITE:
            if length > size - at:
                raise ProtocolError(f"argument {i} claims {length} bytes, {size - at} are left")
            data = b[at : at + length] if views else bytes(b[at : at + length])
            if kind == _K_READ:
                args.append(Arg(ArgKind.READ, 0, data))  # type: ignore[arg-type]
            else:
                if not 0 <= length <= value:
                    raise ProtocolError(f"argument {i}: {length} bytes over a max length of {value}")
                args.append(Arg(ArgKind.READWRITE, value, data))  # type: ignore[arg-type]
            at += length
            continue
        k = _ARG_KINDS.get(kind)
        if k is None:
            raise ProtocolError(f"argument {i} of unknown kind {kind}")
        if length:
            raise ProtocolError(f"argument {i} ({k.name}) with a payload length")
        if kind == _K_NONE:
            if value:
                raise ProtocolError(f"argument {i}: NONE with a value")
            args.append(NO_ARG)
            continue
        if kind == _K_WRITE and value < 0:
            raise ProtocolError(f"argument {i}: negative max length")
        if kind == _K_HANDLE and not 0 <= value <= 0xFFFFFFFF:
            raise ProtocolError(f"argument {i}: handle out of range")
        args.append(Arg(k, value))
    if at != size:
        raise ProtocolError(f"REQUEST with {size - at} bytes after its payloads")
    return Request(request_id, f[0], (args[0], args[1], args[2], args[3]), f[1], bool(flags & FLAG_ASYNC))


def _decode_complete(b: memoryview, request_id: int, views: bool = False) -> Complete:
    size = len(b)
    if size < _COMPLETE.size:
        raise ProtocolError(f"COMPLETE: {size} bytes, needs {_COMPLETE.size}")
    status, nwrites, has_error, zero = _COMPLETE.unpack_from(b)
    if nwrites > MAX_ARGS or has_error > 1 or zero:
        raise ProtocolError(f"COMPLETE with {nwrites} writes, error flag {has_error}")
    at = _COMPLETE.size
    writes: tuple[Write, ...] = ()
    if nwrites:
        out = []
        seen = 0
        for _ in range(nwrites):
            if size - at < _WRITE.size:
                raise ProtocolError(f"COMPLETE write: {size - at} bytes, needs {_WRITE.size}")
            index, length = _WRITE.unpack_from(b, at)
            at += _WRITE.size
            if index >= MAX_ARGS or seen & (1 << index):
                raise ProtocolError(f"COMPLETE writes argument {index}")
            seen |= 1 << index
            if length > size - at:
                raise ProtocolError(f"COMPLETE write of {length} bytes, {size - at} are left")
            out.append(Write(index, b[at : at + length] if views else bytes(b[at : at + length])))  # type: ignore[arg-type]
            at += length
        writes = tuple(out)
    if has_error:
        return Complete(request_id, status, writes, _utf8(b[at:], "COMPLETE error"))
    if at != size:
        raise ProtocolError(f"COMPLETE with {size - at} bytes after its writes")
    return Complete(request_id, status, writes, None)


def _decode_one(body: memoryview, ftype: int, flags: int, request_id: int, views: bool = False) -> Event:
    """One whole frame's event (its header checked). views: a REQUEST's payloads and a COMPLETE's
    writes are views of body."""
    if ftype == _T_REQUEST:
        return _decode_request(body, flags, request_id, views)
    if ftype == _T_COMPLETE and not flags:
        return _decode_complete(body, request_id, views)
    return decode_body(ftype, flags, request_id, body)


class FrameReader:
    """Cuts a byte stream into events. Checks each header before it buffers
    the body, so a peer cannot make us hold more than max_frame bytes.

    A frame of BIG_FRAME bytes or more is gathered in one buffer of its exact size, allocated once
    its header is checked (`gathering`): the stream's bytes are copied into it as they come (a
    shared-memory session's ring copies its records straight in: see ServerRings.gather), and a
    REQUEST's payloads (or a COMPLETE's writes) are then read-only views of it, never copied again
    (Message.read_view; a ViewBuffer's value)."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, fast: bool = True) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._feed = c_feed if fast else _no_feed  # fast=False: the Python reference decodes everything
        self.big_frame = BIG_FRAME  # frames from this size on are gathered (the fuzzer makes it small)
        self.gathering: memoryview | None = None  # the big frame being gathered (writable), if any
        self.gathered = 0  # how much of it has come
        self.keep_spare = False  # keep the last big frame's buffer for the next one (a client's reader)
        self._spare: bytearray | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """The events completed by `data` (possibly none). ProtocolError on the first bad frame.

        Frames are decoded in place from `data` (or from the buffered rest of
        an earlier feed followed by `data`): only an incomplete tail is kept."""
        out: list[Event] = []
        if self.gathering is not None:
            big, at = self.gathering, self.gathered
            n = min(len(big) - at, len(data))
            big[at : at + n] = memoryview(data)[:n] if n < len(data) else data
            return self.filled(at + n, memoryview(data)[n:] if n < len(data) else None)
        buf = self._buf
        if buf:
            buf += data
            data, self._buf = buf, bytearray()  # never resized again: views of it may outlive this call
        with memoryview(data) as view:
            at, end = 0, len(view)
            unpack, max_frame = HEADER.unpack_from, self.max_frame
            while end - at >= HEADER_SIZE:
                # C decodes the valid REQUEST and COMPLETE frames; it stops at anything else, which
                # the code below decodes (or rejects, with the reason) one frame at a time
                events, at = self._feed(view, at, max_frame)
                if events:
                    out += events
                if end - at < HEADER_SIZE:
                    break
                magic, version, ftype, flags, length, reserved, request_id = unpack(view, at)
                if magic != MAGIC:
                    raise ProtocolError(f"bad magic {bytes(magic)!r}: not a broker peer")
                if version != PROTOCOL_VERSION:
                    raise ProtocolError(f"protocol version {version}, this side speaks {PROTOCOL_VERSION}")
                if length > max_frame:
                    raise ProtocolError(f"a frame of {length} bytes, over the limit of {max_frame}")
                if reserved:
                    raise ProtocolError("non-zero reserved header field")
                stop = at + HEADER_SIZE + length
                if stop > end:
                    if HEADER_SIZE + length >= self.big_frame:  # gathered whole, in its own buffer
                        big = self.gathering = self._frame(HEADER_SIZE + length)
                        big[: end - at] = view[at:]
                        self.gathered = end - at
                        at = end
                    break
                out.append(_decode_one(view[at + HEADER_SIZE : stop], ftype, flags, request_id))
                at = stop
            if at < end:
                self._buf = bytearray(view[at:])
        return out

    def _frame(self, size: int) -> memoryview:
        """A writable buffer of `size` bytes to gather a big frame in: the spare one, if this reader
        keeps one and nothing refers to it any more (no view of its last frame is held), else a new one."""
        spare = self._spare
        if spare is not None and len(spare) >= size and _frame_unused(spare):  # no view of it is held
            return memoryview(spare)[:size]
        base = _frame_buffer(size)
        if self.keep_spare and size <= SPARE_MAX:
            self._spare = base
        return memoryview(base)

    def room(self) -> memoryview | None:
        """Where the next bytes of the big frame being gathered go (a reader that can read straight
        into it does, then says how many: took), or None when none is being gathered."""
        big = self.gathering
        return None if big is None else big[self.gathered :]

    def took(self, n: int) -> None:
        """n more bytes of the big frame are in, read straight into room(); feed (even of nothing)
        then gives its event once it is whole."""
        self.gathered += n

    def filled(self, at: int, rest: bytes | memoryview | None = None) -> list[Event]:
        """The big frame being gathered has its first `at` bytes now (copied in by the caller, or by
        feed), and `rest` came after it in the stream (only once it is whole). Its event when it is
        whole, and those `rest` completes."""
        big = self.gathering
        assert big is not None
        self.gathered = at
        if at < len(big):
            return []
        self.gathering, self.gathered = None, 0
        magic, version, ftype, flags, length, reserved, request_id = HEADER.unpack_from(big)
        view = big.toreadonly()  # the payloads are views of it: nobody may change them
        out = [_decode_one(view[HEADER_SIZE:], ftype, flags, request_id, True)]
        return out + self.feed(rest) if rest else out

    @property
    def pending(self) -> int:
        """Bytes received but not yet a whole frame."""
        return len(self._buf) + self.gathered


# ---- the two ends ---------------------------------------------------------------


class State(enum.Enum):
    START = "start"  # client: HELLO not sent; server: waiting for it
    HANDSHAKE = "handshake"  # client: HELLO sent, waiting for WELCOME or REFUSE (or a CHALLENGE)
    AUTH = "auth"  # client: AUTH sent, waiting for AUTH_OK or REFUSE; server: CHALLENGE sent, waiting for AUTH
    OPEN = "open"
    CLOSED = "closed"


_OPEN = State.OPEN  # a module global: State.OPEN costs an enum attribute lookup, on every message


@dataclass(slots=True)  # slotted: C reads a server's state and outstanding as declared fields (framework/native.py)
class _Side:
    max_frame: int = DEFAULT_MAX_FRAME
    state: State = State.START
    reader: FrameReader = field(init=False)
    closed_reason: str = ""

    def __post_init__(self) -> None:
        self.reader = FrameReader(self.max_frame)

    def _close(self, reason: str) -> None:
        self.state = State.CLOSED
        self.closed_reason = reason

    def _check_open(self, what: str) -> None:
        if self.state != _OPEN:
            raise ProtocolError(f"{what} while the connection is {self.state.value}")

    def receive(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Events from the other end. ProtocolError closes the connection."""
        reader = self.reader
        if not reader._buf and reader.gathering is None and self.state is _OPEN:
            # the common case: whole REQUEST or COMPLETE frames, all decoded by C in one call
            events, at = reader._feed(data, 0, reader.max_frame)
            if at == len(data):
                on = self._on
                try:
                    for ev in events:
                        on(ev)
                except ProtocolError as e:
                    self._close(f"protocol error: {e}")
                    raise
                return events
        return self._events(self.reader.feed, data)

    def receive_gathered(self, at: int, rest: bytes | None) -> list[Event]:
        """receive() for a big frame's bytes copied straight into reader.gathering by the caller: its
        first `at` bytes are in now, and `rest` (if any) is what came after it in the stream."""
        return self._events(self.reader.filled, at, rest)

    def _events(self, read: Any, *args: Any) -> list[Event]:
        try:
            events: list[Event] = read(*args)
            for ev in events:
                self._on(ev)
        except ProtocolError as e:
            self._close(f"protocol error: {e}")
            raise
        return events

    def _on(self, ev: Event) -> None:
        raise NotImplementedError


class ClientConnection(_Side):
    """The client's end: HELLO, then requests; completions matched to them."""

    __slots__ = ("welcome", "offer_due", "offer", "outstanding", "_next_id", "hello_body", "challenge", "server_proof")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        super().__init__(max_frame)
        self.reader.keep_spare = True  # a client that takes big replies takes them one after another
        self.welcome: Welcome | None = None
        self.offer_due = False  # WELCOME said an SHM_OFFER follows
        self.offer: ShmOffer | None = None
        self.outstanding: dict[int, bool] = {}  # request id -> asynchronous
        self._next_id = 1
        self.hello_body = b""  # what the proofs cover (src/shmbroker/transport/keys.py)
        self.challenge: bytes | None = None  # the server's nonce, once it asked for a key
        self.server_proof: bytes | None = None  # its AUTH_OK, once it answered the AUTH

    def hello(self, hello: Hello) -> bytes:
        if self.state != State.START:
            raise ProtocolError("HELLO twice")
        self.state = State.HANDSHAKE
        frame = encode(hello)
        self.hello_body = frame[HEADER_SIZE:]
        return frame

    def auth(self, nonce: bytes, proof: bytes, name: str) -> bytes:
        """The answer to the server's CHALLENGE."""
        if self.state != State.HANDSHAKE or self.challenge is None or self.server_proof is not None:
            raise ProtocolError("an AUTH without a CHALLENGE to answer")
        self.state = State.AUTH
        return encode(Auth(nonce, proof, name))

    def request(self, code: int, args: Iterable[Arg] = (), handle: int = 0,
                asynchronous: bool = False) -> tuple[int, "bytes | tuple[bytes, ...]"]:
        """A new request: (its id, the frame to send: bytes, or a big one's parts, see request_parts)."""
        self._check_requests()
        rid = self._next_id
        frame = self.request_for(rid, code, args, handle, asynchronous)
        self._next_id += 1
        return rid, frame

    def request_for(self, rid: int, code: int, args: Iterable[Arg] = (), handle: int = 0,
                    asynchronous: bool = False) -> "bytes | tuple[bytes, ...]":
        """request() for an id begun with begin_requests: the frame to send (the id is outstanding from now on)."""
        self._check_requests()
        a = list(args)
        if len(a) > MAX_ARGS:
            raise ValueError(f"at most {MAX_ARGS} arguments")
        if len(a) < MAX_ARGS:
            a += _PADDING[len(a)]
        size = _REQUEST_FRAME.size + len(a[0].data) + len(a[1].data) + len(a[2].data) + len(a[3].data)
        if size - HEADER_SIZE > (self.welcome.max_frame if self.welcome else self.max_frame):
            raise ValueError(f"a request of {size} bytes is over the server's limit")
        frame: bytes | tuple[bytes, ...]
        if size >= BIG_FRAME:  # written from its parts (the arguments' own buffers), never joined
            frame = request_parts(rid, code, handle, asynchronous, a)
        else:
            frame = request_frame(rid, code, handle, asynchronous, a)
        self.outstanding[rid] = asynchronous
        return frame

    def _check_requests(self) -> None:
        if self.state is not _OPEN or self.offer_due or self.offer is not None:
            self._check_open("a request")
            raise ProtocolError("a request before the SHM_OFFER is answered")

    def begin_requests(self, count: int) -> int:
        """The first of `count` consecutive request ids, for requests made elsewhere (the client's C
        call_many books each in `outstanding` as it sends it, or request_for does); request()'s checks."""
        self._check_requests()
        rid = self._next_id
        self._next_id += count
        return rid

    def begin_request(self, asynchronous: bool = False) -> int:
        """The id of a request whose frame is made elsewhere (the client's C call): request()'s
        checks, and the id is outstanding from now on (forget_request if it was never sent)."""
        if self.state is not _OPEN or self.offer_due or self.offer is not None:
            self._check_open("a request")
            raise ProtocolError("a request before the SHM_OFFER is answered")
        rid = self._next_id
        self._next_id += 1
        self.outstanding[rid] = asynchronous
        return rid

    def forget_request(self, request_id: int) -> None:
        """A request begun and never sent, or completed elsewhere (the client's C call read its completion)."""
        self.outstanding.pop(request_id, None)

    def cancel(self, request_id: int) -> bytes:
        self._check_open("a cancel")
        return encode(Cancel(request_id))

    def accept_shm(self, nonce: bytes) -> bytes:
        """The answer to SHM_OFFER: mapped; from now on the rings carry the session."""
        self._answer_offer()
        return encode(ShmAccept(nonce))

    def decline_shm(self, reason: str) -> bytes:
        """The answer to SHM_OFFER: not mapped; the socket carries the session."""
        self._answer_offer()
        return encode(ShmDecline(reason))

    def _answer_offer(self) -> None:
        self._check_open("an answer to SHM_OFFER")
        if self.offer is None or self.outstanding:
            raise ProtocolError("no SHM_OFFER to answer")
        self.offer = None

    def close(self, reason: str = "") -> bytes:
        self._close(reason or "closed by the client")
        return encode(Close(reason))

    def _on(self, ev: Event) -> None:
        if type(ev) is Complete and self.state is _OPEN:  # the common case first
            if self.outstanding.pop(ev.request_id, None) is None:
                raise ProtocolError(f"completion of unknown request {ev.request_id}")
            return
        if self.state == State.AUTH:
            if isinstance(ev, AuthOk):
                self.server_proof = ev.proof
                self.state = State.HANDSHAKE  # its WELCOME (or REFUSE) comes next
                return
            if isinstance(ev, Refuse):
                self._close(ev.reason or f"refused ({ev.status})")
                return
            raise ProtocolError(f"{type(ev).__name__} where AUTH_OK was due")
        if self.state == State.HANDSHAKE:
            if isinstance(ev, Challenge):
                if self.challenge is not None:
                    raise ProtocolError("a second CHALLENGE")
                self.challenge = ev.nonce
                return
            if isinstance(ev, Welcome):
                if self.challenge is not None and self.server_proof is None:
                    raise ProtocolError("WELCOME before the CHALLENGE was answered")
                self.welcome = ev
                self.offer_due = ev.shm_offer
                self.state = _OPEN
                return
            if isinstance(ev, Refuse):
                self._close(ev.reason or f"refused ({ev.status})")
                return
            raise ProtocolError(f"{type(ev).__name__} before WELCOME")
        if self.state != _OPEN:
            raise ProtocolError(f"{type(ev).__name__} on a {self.state.value} connection")
        if isinstance(ev, ShmOffer):
            if not self.offer_due:
                raise ProtocolError("SHM_OFFER that WELCOME did not announce")
            self.offer_due, self.offer = False, ev
            return
        if self.offer_due:
            raise ProtocolError(f"{type(ev).__name__} where the announced SHM_OFFER was due")
        if isinstance(ev, Complete):
            if self.outstanding.pop(ev.request_id, None) is None:
                raise ProtocolError(f"completion of unknown request {ev.request_id}")
            return
        if isinstance(ev, Panic):
            self._close(f"panicked: {ev.reason}")
            return
        if isinstance(ev, Close):
            self._close(ev.reason or "closed by the server")
            return
        if isinstance(ev, Notify):
            return
        raise ProtocolError(f"a server does not send {type(ev).__name__}")


class ServerConnection(_Side):
    """The server's end: waits for HELLO, accepts or refuses, then takes
    requests and completes each exactly once."""

    __slots__ = ("hello_event", "challenged", "auth_event", "offered", "outstanding")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        super().__init__(max_frame)
        self.hello_event: Hello | None = None
        self.challenged: bytes | None = None  # the nonce of the CHALLENGE sent
        self.auth_event: Auth | None = None  # the client's answer to it
        self.offered = False  # an SHM_OFFER awaits its answer
        self.outstanding: dict[int, Request] = {}

    def _on(self, ev: Event) -> None:
        if type(ev) is Request and self.state is _OPEN and not self.offered:  # the common case first
            if ev.request_id == 0 or ev.request_id in self.outstanding:
                raise ProtocolError(f"request id {ev.request_id} reused while outstanding")
            self.outstanding[ev.request_id] = ev
            return
        if self.state == State.START:
            if not isinstance(ev, Hello):
                raise ProtocolError(f"{type(ev).__name__} before HELLO")
            self.hello_event = ev
            self.state = State.HANDSHAKE
            return
        if self.state == State.AUTH:
            if not isinstance(ev, Auth):
                raise ProtocolError(f"{type(ev).__name__} where the answer to CHALLENGE was due")
            self.auth_event = ev
            self.state = State.HANDSHAKE
            return
        if self.state == State.HANDSHAKE:
            raise ProtocolError(f"{type(ev).__name__} before the server answered HELLO")
        if self.state != _OPEN:
            raise ProtocolError(f"{type(ev).__name__} on a {self.state.value} connection")
        if isinstance(ev, (ShmAccept, ShmDecline)):
            if not self.offered:
                raise ProtocolError(f"{type(ev).__name__} without an SHM_OFFER")
            self.offered = False
            return
        if self.offered and not isinstance(ev, Close):
            raise ProtocolError(f"{type(ev).__name__} before the answer to SHM_OFFER")
        if isinstance(ev, Request):
            if ev.request_id == 0 or ev.request_id in self.outstanding:
                raise ProtocolError(f"request id {ev.request_id} reused while outstanding")
            self.outstanding[ev.request_id] = ev
            return
        if isinstance(ev, Cancel):
            return  # the server decides; an unknown id is harmless (already completed)
        if isinstance(ev, Close):
            self._close(ev.reason or "closed by the client")
            return
        raise ProtocolError(f"a client does not send {type(ev).__name__}")

    def challenge(self, nonce: bytes) -> bytes:
        """Ask the client to prove it holds a key (the answer to HELLO, over TCP)."""
        if self.state != State.HANDSHAKE or self.challenged is not None:
            raise ProtocolError("a CHALLENGE without a HELLO to answer")
        self.challenged = nonce
        self.state = State.AUTH
        return encode(Challenge(nonce))

    def accept(self, connection_id: int, slots: int, shm_offer: bool = False, proof: bytes | None = None) -> bytes:
        """WELCOME; after a CHALLENGE, `proof` (the server's) goes ahead of it in an AUTH_OK."""
        if self.state != State.HANDSHAKE:
            raise ProtocolError("accept without HELLO")
        if (self.challenged is not None) != (proof is not None) or (proof is not None and self.auth_event is None):
            raise ProtocolError("a WELCOME after a CHALLENGE needs the answered CHALLENGE and the server's proof")
        self.state = _OPEN
        self.offered = shm_offer
        welcome = encode(Welcome(connection_id, slots, self.max_frame, shm_offer))
        return welcome if proof is None else encode(AuthOk(proof)) + welcome

    @property
    def hello_body(self) -> bytes:
        """The HELLO's body as it travelled (its encoding is canonical): what the proofs cover."""
        return encode(self.hello_event)[HEADER_SIZE:] if self.hello_event is not None else b""

    def offer_shm(self, capacity: int, name: str) -> bytes:
        """The SHM_OFFER that accept(shm_offer=True) announced."""
        if self.state != _OPEN or not self.offered:
            raise ProtocolError("an SHM_OFFER that WELCOME did not announce")
        return encode(ShmOffer(capacity, name))

    def refuse(self, status: int, reason: str) -> bytes:
        if self.state not in (State.HANDSHAKE, State.AUTH):
            raise ProtocolError("refuse without HELLO")
        self._close(reason)
        return encode(Refuse(status, reason))

    def complete(self, request_id: int, status: int = 0, writes: Sequence[Write | WritePair] = (),
                 error: str | None = None) -> "bytes | tuple[bytes, ...]":
        """The completion of an outstanding request; ProtocolError if it is not outstanding (a
        second completion). `writes`: Write objects or (index, data) pairs. A big one (writes of
        BIG_FRAME bytes or more, given as a list) comes as its parts (complete_parts)."""
        self.completing(request_id)
        if type(writes) is list and writes and sum(_write_size(w) for w in writes) >= BIG_FRAME:
            # a big one as its parts (the writes' own bytes): the socket sends them with one sendmsg
            return complete_parts(request_id, status, [w if isinstance(w, Write) else Write(*w) for w in writes],
                                  error)
        frame = c_encode_complete(request_id, status, writes, None if error is None else _text(error))
        if frame is NotImplemented:
            frame = complete_frame(request_id, status, tuple(writes), error)
        return frame  # type: ignore[no-any-return]

    def completing(self, request_id: int) -> None:
        """complete()'s checks and books, for a completion encoded elsewhere (the server's C path)."""
        if self.state is not _OPEN:
            self._check_open("a completion")
        if self.outstanding.pop(request_id, None) is None:
            raise ProtocolError(f"request {request_id} is not outstanding (completed twice?)")

    def panic(self, reason: str) -> bytes:
        self._close(f"panicked: {reason}")
        self.outstanding.clear()
        return encode(Panic(reason))

    def close(self, reason: str = "") -> bytes:
        self._close(reason or "closed by the server")
        self.outstanding.clear()
        return encode(Close(reason))

    def notify(self, code: int, data: bytes = b"") -> bytes:
        """A NOTIFY frame: the server speaks first (an open session only)."""
        self._check_open("a notification")
        return encode(Notify(code, data))
