"""Two services that ship with the broker: echo, and a key-value store of named tables shared between sessions.

They serve the tests, the README, `shmbroker serve` / `shmbroker ping` and the
benchmarks, and show the framework's model end to end: function codes, typed
arguments, sub-sessions on reference-counted objects in a named container,
and untrusted input answered with a status, never a crash.

Function codes (echo in 1-15, key-value in 16-31, so a Policy can guard each
range; "h" marks a call that carries a table handle):

    LENGTH          arg 0 bytes                      -> len(arg 0)
    ECHO            arg 0 bytes, arg 1 writable      -> arg 0 written into arg 1; len(arg 0)
    OPEN_TABLE      arg 0 name (UTF-8, 1-64 bytes)   -> a sub-session handle on the table of that
                                                        name, created empty if nobody has it open
    PUT         h   arg 0 key, arg 1 value           -> 1 (a new key) or 0 (a value replaced)
    GET         h   arg 0 key, arg 1 writable        -> the value's length; the value is in arg 1
    DELETE      h   arg 0 key                        -> 1 (deleted) or 0 (there was no such key)
    COUNT       h   -                                -> the number of entries
    KEYS        h   arg 0 writable, arg 1 "after"    -> how many keys arg 0 holds: the next keys
                    (bytes, optional)                   in byte order after "after", each a u16
                                                        little-endian length then its bytes
    closing a table handle is the framework's CLOSE_SUBSESSION (SubSession.close())

A table lives while some sub-session has it open: it dies (its entries with it)
when the last one closes, or when the session holding it ends, cleanly or by
its process's death. Keys are 1 to `max_key` bytes, values 0 to `max_value`;
a table holds at most `max_entries` entries and `max_table_bytes` of keys and
values; a store at most `max_tables` tables (`KeyValueLimits`).

Errors (negative statuses; the client wrappers raise the typed exception):
ARGUMENT (an argument of the wrong kind, an empty or too long key or name, a
value too big: `InvalidArgument`), NOT_FOUND (GET of an absent key:
`NotFound`, also a KeyError), NO_MEMORY (a full table or store:
`LimitReached`), OVERFLOW (the writable argument is too small:
`BufferTooSmall`), BAD_HANDLE (no table of this session: `broker.BadHandle`).
Each ends only its own request.
"""
from __future__ import annotations

from shmbroker.services.kv.wire import (  # noqa: F401
    COUNT,
    DELETE,
    ECHO,
    ECHO_CODES,
    GET,
    KEYS,
    KEY_LEN,
    KV_CODES,
    LENGTH,
    MAX_TABLE_NAME,
    OPEN_TABLE,
    PUT,
    VALUE_CEILING,
)
from shmbroker.services.kv.server import (  # noqa: F401
    EchoSession,
    KeyValueLimits,
    KeyValueSession,
    KeyValueStore,
    ServicesSession,
    SharedTable,
)
from shmbroker.services.kv.client import (  # noqa: F401
    BufferTooSmall,
    EchoClient,
    InvalidArgument,
    KeyValueClient,
    LimitReached,
    NotFound,
    Table,
)

__all__ = ["COUNT", "DELETE", "ECHO", "ECHO_CODES", "GET", "KEYS", "KEY_LEN", "KV_CODES", "LENGTH", "MAX_TABLE_NAME",
           "OPEN_TABLE", "PUT", "VALUE_CEILING", "EchoSession", "KeyValueLimits", "KeyValueSession", "KeyValueStore",
           "ServicesSession", "SharedTable", "BufferTooSmall", "EchoClient", "InvalidArgument", "KeyValueClient",
           "LimitReached", "NotFound", "Table"]
