"""The broker's own services: topics and links behind the framework's Service interface, and kv.

topics/ (publish/subscribe) and links/ (linked services) are Services (src/shmbroker/framework/service.py)
that every broker.Server has (src/shmbroker/api.py BUILTIN), on reserved codes (src/shmbroker/protocol/codes.py).
kv.py (echo and key-value tables) is a Session class instead, on application codes 1-31, so that
a server opts into it (`Server(address, ServicesSession)`) and a Policy can guard it like any
application's codes. `broker.services.ECHO`, `.PUT`...: its function codes.
"""
from shmbroker.services.kv import (
    COUNT,
    DELETE,
    ECHO,
    ECHO_CODES,
    GET,
    KEYS,
    KV_CODES,
    LENGTH,
    MAX_TABLE_NAME,
    OPEN_TABLE,
    PUT,
    VALUE_CEILING,
)

__all__ = ["COUNT", "DELETE", "ECHO", "ECHO_CODES", "GET", "KEYS", "KV_CODES", "LENGTH", "MAX_TABLE_NAME", "OPEN_TABLE",
           "PUT", "VALUE_CEILING"]
