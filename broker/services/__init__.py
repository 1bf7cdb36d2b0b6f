"""The broker's own services, each behind the framework's Service interface (broker/framework/service.py).

kv: echo and key-value tables (sessions of the Session class you give a Server); topics: publish/
subscribe; links: linked services. `broker.services.ECHO`, `.PUT`...: the key-value service's
function codes, as they have always been reachable.
"""
from broker.services.kv import (
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
