"""broker: a shared-memory message broker for one Linux host, used from Python."""
from ._errors import (
    BrokerError,
    Closed,
    Corrupt,
    Empty,
    EmptyTimeout,
    Evicted,
    Full,
    FullTimeout,
    PeerGone,
    SegmentError,
    StateError,
    Timeout,
    TooBig,
)
from ._ring import DEFAULT_CAPACITY, Broadcast, Ring, max_record_for
from ._version import __version__

__all__ = [
    "BrokerError",
    "Broadcast",
    "Closed",
    "Corrupt",
    "DEFAULT_CAPACITY",
    "Empty",
    "EmptyTimeout",
    "Evicted",
    "Full",
    "FullTimeout",
    "PeerGone",
    "Ring",
    "SegmentError",
    "StateError",
    "Timeout",
    "TooBig",
    "__version__",
    "max_record_for",
]
