"""The exception hierarchy: everything broker raises is a BrokerError."""
from __future__ import annotations

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


class PeerGone(BrokerError, ConnectionError):
    """The process at the other end died."""


class Closed(BrokerError, EOFError):
    """The ring is over for this side: the producer closed it and every
    record has been read, or this side was closed (perhaps by another thread
    while the call waited)."""


class Evicted(BrokerError, ConnectionError):
    """This broadcast consumer was removed by the producer."""


class MessagesLost(BrokerError):
    """A lossy consumer was lapped: `count` records were skipped."""

    def __init__(self, count: int) -> None:
        super().__init__(f"{count} record(s) lost: the producer lapped this consumer")
        self.count = count


class StateError(BrokerError, RuntimeError):
    """A call out of order: a second claim, a commit without a claim, a
    consumer call on the producer side, a closed ring."""


class BadHandle(BrokerError, LookupError):
    """A sub-session handle that names no live object of this session: never
    issued, forged, or already closed (stale)."""
