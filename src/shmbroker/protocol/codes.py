"""Every function code the framework and the broker's own services reserve: one table.

A function code is a signed 32-bit integer. Codes from 0 up belong to the server's Session class (the
application's: the built-in key-value service uses 1-31). Codes below 0 belong to the broker:

    -1 .. -15    the framework (every server)
    -16 .. -23   topics (src/shmbroker/services/topics)
    -24 .. -31   linked services (src/shmbroker/services/links)
    -32 .. -255  free for the next built-in service: take the next block of eight here

A server dispatches a reserved code to the service that declares it (Service.codes); two services
declaring one code is an error when the server is made. Each service documents its codes' arguments
in its own module.
"""
from __future__ import annotations

# the framework
CLOSE_SUBSESSION = -1  # the handle: close that sub-session (always allowed: a client may give back what it holds)
SERVER_STATS = -2  # arg 0: a writable buffer for the server's statistics as JSON; same user as the server only
FRAMEWORK_CODES = frozenset({CLOSE_SUBSESSION, SERVER_STATS})

# topics
TOPIC_PUBLISHER = -16
TOPIC_PUBLISH = -17
TOPIC_PUBLISH_MANY = -18
TOPIC_SUBSCRIBER = -19
TOPIC_FETCH = -20
TOPIC_LIST = -21
TOPIC_DIRECT = -22
TOPIC_CODES = frozenset({TOPIC_PUBLISHER, TOPIC_PUBLISH, TOPIC_PUBLISH_MANY, TOPIC_SUBSCRIBER, TOPIC_FETCH,
                         TOPIC_LIST, TOPIC_DIRECT})

# linked services
LINK_OFFER = -24
LINK_TAKE = -25
LINK_REPLY = -26
LINK_OPEN = -27
LINK_CALL = -28
LINK_PAIR = -29
LINK_UNPAIR = -30
LINK_CODES = frozenset({LINK_OFFER, LINK_TAKE, LINK_REPLY, LINK_OPEN, LINK_CALL, LINK_PAIR, LINK_UNPAIR})

RESERVED = FRAMEWORK_CODES | TOPIC_CODES | LINK_CODES
assert len(RESERVED) == len(FRAMEWORK_CODES) + len(TOPIC_CODES) + len(LINK_CODES)  # no code in two blocks
assert all(-255 <= c < 0 for c in RESERVED)
