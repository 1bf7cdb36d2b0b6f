"""Echo and key-value tables on the wire: their function codes (application codes 1-31) and limits."""
from __future__ import annotations

import struct


# ---- function codes -------------------------------------------------------------------

LENGTH = 1
ECHO = 2
ECHO_CODES = range(1, 16)

OPEN_TABLE = 16
PUT = 17
GET = 18
DELETE = 19
COUNT = 20
KEYS = 21
KV_CODES = range(16, 32)

MAX_TABLE_NAME = 64  # bytes of a table name (UTF-8)
VALUE_CEILING = 16 << 20  # no store holds a larger value: a client's default GET buffer
KEY_LEN = struct.Struct("<H")  # KEYS: the length before each key
