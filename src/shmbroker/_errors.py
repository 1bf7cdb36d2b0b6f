"""The exception hierarchy: everything broker raises is a BrokerError."""
from __future__ import annotations

import errno
import queue


class BrokerError(Exception):
    """Root of every error broker raises."""


class Timeout(BrokerError, TimeoutError):
    """A blocking call ran out of time."""


class Full(BrokerError, queue.Full):
    """No room: the ring is full (non-blocking call, or the deadline passed)."""


class Empty(BrokerError, queue.Empty):
    """Nothing to read (non-blocking call, or the deadline passed)."""


class FullTimeout(Full, Timeout):
    """A blocking send found no room before its deadline."""


class EmptyTimeout(Empty, Timeout):
    """A blocking receive found nothing before its deadline."""


class TooBig(BrokerError, ValueError):
    """A record larger than the ring's maximum, or than the buffer given."""


class Corrupt(BrokerError):
    """The shared memory holds something this side cannot have written or
    accepted: a position, a length or a header out of bounds. The ring is no
    longer usable; close it."""


class SegmentError(BrokerError, OSError):
    """A segment could not be created, opened, checked or mapped."""


class OtherSession(SegmentError, PermissionError):
    """A named ring of another login session: shared memory never crosses login sessions (the
    session rule, DESIGN.md section 3), so a ring's name lives in its creator's session only."""


class PeerGone(BrokerError, ConnectionError):
    """The process at the other end died."""


class Closed(BrokerError, EOFError):
    """The ring is over for this side: the producer closed it and every
    record has been read, or this side was closed (perhaps by another thread
    while the call waited)."""


class Evicted(BrokerError, ConnectionError):
    """This broadcast consumer was removed by the producer."""


class StateError(BrokerError, RuntimeError):
    """A call out of order: a second claim, a commit without a claim, a
    consumer call on the producer side, a closed ring."""


class ViewInUse(StateError):
    """The view a zero-copy receive lent (recv_view, receive_view, recv_array(copy=False)) is still in
    use: something made from it (a slice, a numpy array) is alive, so it cannot be revoked and its
    record stays lent. Drop it (del) before the next receive, or receive a copy instead."""


class BadHandle(BrokerError, LookupError):
    """A sub-session handle that names no live object of this session: never
    issued, forged, or already closed (stale)."""


class ServerNotFound(BrokerError, ConnectionRefusedError):
    """Nothing listens at the address (or it refused the connection)."""


class VersionRefused(BrokerError, ConnectionRefusedError):
    """The server does not support the version the client asked for, or refused the session."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class ServerBusy(BrokerError):
    """No free message slot (asynchronous requests), the server has too many sessions, or the
    session has too many sub-sessions open."""


class IndexFull(ServerBusy, OverflowError):
    """Server side: the session's sub-session index is full (the client gets ServerBusy with this text)."""


class AddressInUse(BrokerError, OSError):
    """Another server is live at this address (or is starting there): a server that loses a start-up
    race gets this, whatever step it lost at."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EADDRINUSE, message)

    def __str__(self) -> str:
        return str(self.strerror)


class PermissionDenied(BrokerError, PermissionError):
    """The server's security policy refused this request, or the server is not who the client required."""


class Panicked(BrokerError, ConnectionError):
    """The server panicked this client: the session is over; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"panicked by the server: {reason}")
        self.reason = reason


class ServerGone(BrokerError, ConnectionResetError):
    """The connection to the server broke (the server stopped or died)."""


class Disconnected(BrokerError, ConnectionError):
    """A subscriber the broker disconnected, by its policy ("disconnect": it fell too far behind)."""


class ServiceError(BrokerError):
    """The service completed the request with an error: `status` (negative)
    and the server's text."""

    def __init__(self, status: int, text: str = "") -> None:
        super().__init__(f"status {status}" + (f": {text}" if text else ""))
        self.status = status
        self.text = text


class Overflow(BrokerError, OverflowError):
    """Server side: a write past the client buffer's maximum length."""
