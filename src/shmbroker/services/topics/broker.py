"""Topics at the server: TopicBroker, publishers, subscribers, queues, relaying (the design: src/shmbroker/services/topics/__init__.py)."""
from __future__ import annotations

import itertools
import json
import logging
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from shmbroker.core import names as _names
from shmbroker._errors import BadHandle, BrokerError, Closed, Disconnected, Empty, Full, FullTimeout, Overflow, PeerGone, StateError
from shmbroker.protocol.codes import (TOPIC_CODES, TOPIC_DIRECT, TOPIC_FETCH, TOPIC_LIST, TOPIC_PUBLISH,  # noqa: F401
                                   TOPIC_PUBLISH_MANY, TOPIC_PUBLISHER, TOPIC_SUBSCRIBER)
from shmbroker.protocol.frames import ArgKind, Status
from shmbroker.core.native import RING as _RING_CALLS
from shmbroker.core.native import lib as _lib
from shmbroker.core.ring import Broadcast
from shmbroker.framework.access import register_kind
from shmbroker.framework.service import Service
from shmbroker.services.topics.wire import (POLICIES, MAX_TOPIC_NAME, MAX_OPTIONS, MAX_CAPACITY, MAX_HISTORY, MAX_META,
                                        DEFAULT_QUEUE_CAPACITY, DEFAULT_BLOCK_TIMEOUT, DEFAULT_RING_CAPACITY, MAX_RING_CAPACITY, RING_CONSUMERS, RELAY_BATCH,
                                        BATCH_HEAD, RECORD_HEAD, MAX_MESSAGE, RING_GONE, TOPIC_OF, RING_ADD, MESSAGE_HEAD, TABLE_ENTRY, Assembler, split_record)
from shmbroker.framework.session import Message, RefObject, refuse
from shmbroker.framework.namespace import GLOBAL, Name, qualify
from shmbroker.services.topics.client import _encode
from shmbroker.framework.namespace import owner_of as _owner_of

log = logging.getLogger("shmbroker.topics")


def _bare_name(shown: str) -> str:
    """A topic's name without its namespace (what grants match)."""
    return shown[len(GLOBAL):] if shown.startswith(GLOBAL) else shown


def _bare(topic: "Topic") -> str:
    return _bare_name(topic.name)


def _qualify(name: str, peer: Any) -> Name:
    try:
        return qualify(name, peer)
    except ValueError as e:
        raise TopicError(str(e)) from None
_trecv_batch = _RING_CALLS["topic_recv_batch"]  # whole messages of a ring, many in one C call (csrc/py/ring.c)
_RING_EMPTY, _BATCH_MAX = _lib.BRK_EMPTY, _lib.BRK_PY_BATCH_MAX
_tpack = _RING_CALLS["topic_pack"]  # a FETCH's reply packed from a subscriber's queue, in C
register_kind("topic", ("publish", "subscribe"))  # what grants say of topics (framework/access.py)


def _drop_oldest(sub: "ServerSubscriber") -> bool:
    """Drop the oldest message of a subscriber's queue, not a control item before it (a TOPIC_OF the
    messages after it need): True if there was one. TOPIC_OFs that no queued message needs any more go
    too, their publishers to be announced again (so the queue never fills with them)."""
    queue = sub.queue
    if queue and queue[0].seq:
        queue.popleft()
        return True
    for i, item in enumerate(queue):
        if item.seq:
            del queue[i]
            needed = {x.publisher for x in queue if x.seq}
            for x in [x for x in queue if not x.seq and x.meta == TOPIC_OF and x.publisher not in needed]:
                queue.remove(x)
                sub.announced.discard(x.publisher)
            return True
    return False


# A blocking subscriber's queue of big messages is bounded in bytes too, not only by its capacity in
# messages: the relay reads a ring no further while a queue holds this much (the ring fills and its
# publisher waits, as the capacity makes it). Without it a subscriber of capacity 4096 let the server
# read 4 GiB of 1 MiB messages ahead of it, each into fresh pages: the relay of 1 MiB ran at 40-170
# messages a second against 260-280 with a queue of 16 (bench/profile_relay.py 1048576). Only a queue
# whose first message is RELAY_BIG bytes or more is summed: a queue of small ones stays cheap to look at.
RELAY_QUEUE_BYTES = 16 << 20
RELAY_BIG = 64 << 10


class TopicError(ValueError):
    """A request the topic service refuses (its status is ARGUMENT)."""


class _Item(NamedTuple):
    """A message in a subscriber's queue (a tuple: C packs a FETCH's reply from them, topic_pack)."""

    publisher: int
    seq: int
    meta: bytes
    data: bytes

    @property
    def size(self) -> int:
        return MESSAGE_HEAD.size + len(self.meta) + len(self.data)


def _text(arg: bytes, what: str, limit: int) -> str:
    try:
        text = arg.decode()
    except UnicodeDecodeError:
        raise TopicError(f"the {what} is not UTF-8") from None
    if not 1 <= len(arg) <= limit:
        raise TopicError(f"a {what} is 1 to {limit} bytes, not {len(arg)}")
    return text


def _options(raw: bytes, allowed: dict[str, Callable[[Any], Any]]) -> dict[str, Any]:
    """A client's options (untrusted JSON, MAX_OPTIONS bytes at most), each through its check in `allowed`.

    Checked by hand, not by msgspec Structs: this runs in every server, so msgspec would be a fourth
    required dependency for eight options whose checks are a line each (a power of two, a bool that is
    not an int, an int that is not a bool) and whose errors already name the option, its range and the
    value given (tests/services/test_topics.py: test_untrusted_topic_requests_fail_alone)."""
    if not raw:
        return {}
    if len(raw) > MAX_OPTIONS:
        raise TopicError(f"options are at most {MAX_OPTIONS} bytes")
    try:
        opts = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise TopicError(f"options are not JSON: {e}") from None
    if not isinstance(opts, dict):
        raise TopicError("options are a JSON object")
    out = {}
    for key, value in opts.items():
        check = allowed.get(key)
        if check is None:
            raise TopicError(f"unknown option {key!r}; known: {', '.join(sorted(allowed))}")
        out[key] = check(value)
    return out


def _int_in(lo: int, hi: int, what: str) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if type(v) is not int or not lo <= v <= hi:
            raise TopicError(f"{what} is an integer from {lo} to {hi}, not {v!r}")
        return v
    return check


def _seconds(v: Any) -> float:
    if type(v) not in (int, float) or not 0 <= v <= 3600:
        raise TopicError(f"block_timeout is 0 to 3600 seconds, not {v!r}")
    return float(v)


def _policy(v: Any) -> str:
    if v not in POLICIES:
        raise TopicError(f"policy is one of {', '.join(POLICIES)}, not {v!r}")
    return str(v)


def _flag(v: Any) -> bool:
    if type(v) is not bool:
        raise TopicError(f"a flag is true or false, not {v!r}")
    return v


def _ring_capacity(v: Any) -> int:
    if type(v) is not int or not 1 << 16 <= v <= MAX_RING_CAPACITY or v & (v - 1):
        raise TopicError(f"ring_capacity is a power of two from 64 KiB to {MAX_RING_CAPACITY >> 20} MiB, not {v!r}")
    return v


PUBLISHER_OPTIONS = {"history": _int_in(0, MAX_HISTORY, "history"), "block_timeout": _seconds, "ring": _flag,
                     "ring_capacity": _ring_capacity}
SUBSCRIBER_OPTIONS = {"capacity": _int_in(1, MAX_CAPACITY, "capacity"), "policy": _policy,
                      "history": _int_in(0, MAX_HISTORY, "history"), "direct": _flag}


class ServerPublisher(RefObject):
    """A publisher's end at the server: a sub-session of its session."""

    def __init__(self, broker: "TopicBroker", topic: "Topic", ident: int, conn: Any, history: int,
                 block_timeout: float) -> None:
        super().__init__()
        self.broker, self.topic, self.id, self.conn = broker, topic, ident, conn
        self.history, self.block_timeout = history, block_timeout
        self.seq = 0  # the last sequence number given
        self.published = 0
        self.held: deque[tuple[Message, list[tuple[bytes, bytes]], float]] = deque()  # waiting for room, in order
        self.timer = False  # a deadline timer is set for the oldest held publish
        self.closed = False
        # a ring publisher (its session is on shared memory): it writes its own broadcast ring, which
        # direct subscribers read in place; the server reads it too (relay) only for the others
        self.ring_name: str | None = None
        self.segment: Any = None  # the ring's segment: the server made it, and unlinks it at the end
        self.relay: Broadcast | None = None
        # a relayed message travels in one FETCH reply: one bigger than a frame is never delivered, so
        # the server does not gather it (a publisher announcing gigabytes only harms itself)
        self.assembler = Assembler(max(1, broker.server.max_frame - BATCH_HEAD.size - MESSAGE_HEAD.size - MAX_META))
        self.armed = False
        self.corrupt = 0
        self.readers = 0  # direct subscribers given the ring (each takes one of its RING_CONSUMERS slots)

    def destroyed(self) -> None:
        self.broker._publisher_closed(self)


class ServerSubscriber(RefObject):
    """A subscriber's end at the server: its queue, its policy, its waiting FETCH."""

    def __init__(self, broker: "TopicBroker", topic: "Topic | None", ident: int, conn: Any, capacity: int,
                 policy: str) -> None:
        super().__init__()
        self.broker, self.topic, self.id, self.conn = broker, topic, ident, conn
        self.capacity, self.policy = capacity, policy
        self.queue: deque[_Item] = deque()
        self.lost = 0  # dropped for this subscriber and not yet told
        self.lost_total = 0
        self.delivered = 0
        self.fetch: Message | None = None  # the FETCH waiting for a message
        self.fetch_max = 0
        self.gone: str | None = None  # disconnected by policy: why
        self.direct = False  # reads the rings of the publishers that were there when it subscribed, in place
        self.rings: set[int] = set()  # those publishers' ids: the server relays it only the others
        self.handover: set[int] = set()  # ring publishers it was told of (RING_ADD), still relayed to it
        self.pattern: str | None = None  # a prefix subscriber's name ("prices.*"), else None
        self.pattern_key = ""  # ...and the prefix of the topics' keys it matches (framework/namespace.py)
        self.attached: list[Topic] = [topic] if topic is not None else []  # the topics it is subscribed to
        self.announced: set[int] = set()  # a prefix subscriber: publishers whose topic it was told
        self.wake: Callable[[], None] | None = None  # a host subscriber's: called (lock held) when items come
        self.topic_of: dict[int, str] = {}  # a host prefix subscriber: publisher id -> its topic's name

    def destroyed(self) -> None:
        self.broker._subscriber_closed(self)


@dataclass
class Topic:
    name: str  # as its sessions name it: `x` (Local), `Global\\x` (framework/namespace.py)
    key: str = ""  # unique server-wide (Name.key): the topics' dict is keyed by it
    namespace: str = "Local"
    owner: str | None = None  # a Local topic's login session
    publishers: dict[int, ServerPublisher] = field(default_factory=dict)
    subscribers: dict[int, ServerSubscriber] = field(default_factory=dict)
    history: deque[_Item] = field(default_factory=deque)
    history_len: int = 0
    published: int = 0
    dropped: int = 0
    disconnected: int = 0
    timed_out: int = 0


class TopicBroker(Service):
    """The server's topics. Every method runs on the server's loop thread (requests, session ends,
    timers); stats() may run anywhere, under the lock."""

    codes = TOPIC_CODES
    stats_key = "topics"

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.topics: dict[str, Topic] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.relays: list[ServerPublisher] = []  # ring publishers whose ring the server reads (for relay subscribers)
        self.patterns: dict[int, ServerSubscriber] = {}  # prefix subscribers, by id

    # -- requests -----------------------------------------------------------------------

    def handle(self, conn: Any, msg: Message) -> None:
        """A request with one of TOPIC_CODES."""
        try:
            code = msg.code
            if code == TOPIC_PUBLISH:
                self._publish(conn, msg, [(self._read(msg, 0), self._read(msg, 1, MAX_META))])
            elif code == TOPIC_FETCH:
                self._fetch(conn, msg)
            elif code == TOPIC_PUBLISH_MANY:
                self._publish(conn, msg, self._unpack(msg))
            elif code == TOPIC_PUBLISHER:
                self._open_publisher(conn, msg)
            elif code == TOPIC_SUBSCRIBER:
                self._open_subscriber(conn, msg)
            elif code == TOPIC_LIST:
                self._list(conn, msg)
            elif code == TOPIC_DIRECT:
                self._direct(conn, msg)
        except Exception as e:  # it ends only this request
            refuse(conn, msg, e, TopicError)

    @staticmethod
    def _read(msg: Message, i: int, limit: int | None = None) -> bytes:
        if msg.kind(i) == ArgKind.NONE:
            return b""
        if msg.kind(i) not in (ArgKind.READ, ArgKind.READWRITE):
            raise TopicError(f"argument {i} is bytes")
        data = msg.read(i)
        if limit is not None and len(data) > limit:
            raise TopicError(f"argument {i} is at most {limit} bytes")
        return data

    def _own(self, conn: Any, msg: Message, kind: type) -> Any:
        obj = conn.session.subsession(msg)  # BadHandle for anything that is not this session's
        if not isinstance(obj, kind):
            raise BadHandle(f"handle {msg.handle} is not a {kind.__name__.lower()}")
        return obj

    def _topic(self, n: Name) -> Topic:
        topic = self.topics.get(n.key)
        if topic is None:
            topic = self.topics[n.key] = Topic(n.shown, n.key, n.namespace, n.owner)
            allows = self.server.access.allows
            for sub in self.patterns.values():  # the prefix subscribers it matches are subscribed to it
                if (sub.gone is None and n.key.startswith(sub.pattern_key)
                        and allows(sub.conn.peer, "topic", n.name, "subscribe")):  # (and a grant lets read)
                    self._attach(sub, topic)
        return topic

    @staticmethod
    def _attach(sub: ServerSubscriber, topic: Topic) -> None:
        topic.subscribers[sub.id] = sub
        sub.attached.append(topic)

    def _open_publisher(self, conn: Any, msg: Message) -> None:
        name = _text(self._read(msg, 0), "topic name", MAX_TOPIC_NAME)
        if name.endswith("*"):
            raise TopicError(f"a topic name that ends in '*' is a subscriber's prefix, not a topic: {name!r}")
        n = _qualify(name, conn.peer)
        self.server.access.check(conn.peer, "topic", n.name, "publish")
        opts = _options(self._read(msg, 1), PUBLISHER_OPTIONS)
        ring = opts.get("ring", False) and conn.on_rings and not self.server.is_async
        if ring and msg.kind(2) not in (ArgKind.WRITE, ArgKind.READWRITE):
            raise TopicError("a ring publisher takes a writable argument 2 for its ring's name")
        with self._lock:
            topic = self._topic(n)
            pub = ServerPublisher(self, topic, next(self._ids), conn, opts.get("history", 0),
                            opts.get("block_timeout", DEFAULT_BLOCK_TIMEOUT))
            if ring:
                try:
                    self._make_ring(pub, conn, opts.get("ring_capacity", DEFAULT_RING_CAPACITY))
                except (BrokerError, OSError, ValueError) as e:  # a full /dev/shm, say: it publishes by calls
                    log.warning("topic %s: no ring for a publisher of %s: %s", name, conn.peer, e)
            try:
                if pub.ring_name is not None:
                    msg.write(2, pub.ring_name.encode())
                    if pub.segment is not None and pub.segment.fd >= 0 and not conn.pass_fd(pub.ring_name,
                                                                                              pub.segment.fd):
                        raise TopicError("the client's socket did not take its ring's descriptor")
                handle = conn.session.open_subsession(pub)
            except BaseException as e:
                self._drop_ring(pub)
                self._forget_if_empty(topic)
                if isinstance(e, Overflow):
                    raise TopicError(f"argument 2 is too small for the ring's name ({len(pub.ring_name or '')} "
                                     f"bytes)") from None
                raise
            topic.publishers[pub.id] = pub
            self._set_history(topic)
            if pub.ring_name is not None:
                # the subscribers already there get it through the server, which reads it from its first
                # record; the direct ones of its session are told of the ring, ahead of its first message,
                # and take it in place from where they join (TOPIC_DIRECT)
                self._update_relay(topic)
                for sub in topic.subscribers.values():
                    if (sub.direct and sub.gone is None and sub.conn.session_key == conn.session_key
                            and pub.readers < RING_CONSUMERS - 1):
                        pub.readers += 1
                        sub.handover.add(pub.id)
                        self._pass_ring(sub.conn, pub)
                        self._control(sub, _Item(pub.id, 0, RING_ADD, pub.ring_name.encode()))
        msg.complete(handle)

    # -- the host process's own publishers (Server.publisher / publish, src/shmbroker/api.py) --------------

    def host_publisher(self, conn: Any, name: str, history: int = 0,
                       block_timeout: float = DEFAULT_BLOCK_TIMEOUT) -> ServerPublisher:
        """A publisher of the process that embeds the server, on `name` in its namespace (conn: the host's
        connection-like object): no session, no socket, its messages go into the subscribers' queues
        at once. Close it with host_close."""
        if name.endswith("*"):
            raise TopicError(f"a topic name that ends in '*' is a subscriber's prefix, not a topic: {name!r}")
        n = _qualify(name, conn.peer)
        with self._lock:
            topic = self._topic(n)
            pub = ServerPublisher(self, topic, next(self._ids), conn, history, block_timeout)
            pub.open()
            topic.publishers[pub.id] = pub
            self._set_history(topic)
        return pub

    def host_publish(self, pub: ServerPublisher, messages: list[Any], timeout: float | None,
                     may_wait: bool, raw: bool = False) -> None:
        """Deliver a host publisher's messages (what a client's publish() takes: bytes-like, numpy): at
        once when every blocking subscriber has room, else (may_wait: not from the server's loop, which
        makes the room) once they have, within `timeout` (its block_timeout if None); Full /
        FullTimeout when not."""
        if pub.closed:
            raise StateError("the publisher is closed")
        # (payload, meta), as a client's publish makes them; raw: made already (the federation's)
        items = list(messages) if raw else [_encode(m) for m in messages]
        wait = pub.block_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            with self._lock:
                if self._room(pub.topic, len(items), pub.id):
                    self._deliver(pub, items)
                    return
                if not may_wait or time.monotonic() >= deadline:
                    pub.topic.timed_out += len(items)
                    slow = [s.id for s in pub.topic.subscribers.values()
                            if s.policy == "block" and len(s.queue) + len(items) > s.capacity]
                    what = f"no room for {len(items)} message(s): subscriber(s) {', '.join(map(str, slow))} " \
                           f"did not keep up"
                    if may_wait and wait > 0:
                        raise FullTimeout(f"{what} within {wait:g} s")
                    raise Full(what + (" (the server's own loop cannot wait for them)" if not may_wait else ""))
            time.sleep(0.0005)  # the loop makes the room, as its subscribers fetch

    def host_close(self, pub: ServerPublisher) -> None:
        if not pub.closed:
            pub.close()

    # -- the host process's own subscribers (the federation's tap, src/shmbroker/federation) ----------------

    def host_subscriber(self, conn: Any, name: str, wake: Callable[[], None], *,
                        capacity: int = DEFAULT_QUEUE_CAPACITY, policy: str = "block") -> ServerSubscriber:
        """A subscriber of the process that embeds the server on `name` (a topic, or a prefix `x*`, in
        conn's namespace or `Global\\`): relayed, never direct. wake() is called on the server's loop,
        with the lock held, when its queue gets items: it must only signal the thread that then calls
        host_take(). Close it with host_unsubscribe()."""
        if policy not in POLICIES:
            raise TopicError(f"policy must be one of {sorted(POLICIES)}, not {policy!r}")
        if not 1 <= capacity <= MAX_CAPACITY:
            raise TopicError(f"capacity must be 1 to {MAX_CAPACITY}, not {capacity}")
        n = _qualify(name, conn.peer)
        with self._lock:
            if name.endswith("*"):
                sub = ServerSubscriber(self, None, next(self._ids), conn, capacity, policy)
                sub.pattern, sub.pattern_key = n.shown, n.key[:-1]
                for pub in [p for p in self.relays if p.topic.key.startswith(sub.pattern_key)]:
                    self._relay_from(pub, catch_up=True)
                for topic in [t for t in self.topics.values() if t.key.startswith(sub.pattern_key)]:
                    self._attach(sub, topic)
                self.patterns[sub.id] = sub
            else:
                topic = self._topic(n)
                for pub in [p for p in self.relays if p.topic is topic]:
                    self._relay_from(pub, catch_up=True)
                topic = self._topic(n)
                sub = ServerSubscriber(self, topic, next(self._ids), conn, capacity, policy)
                topic.subscribers[sub.id] = sub
            sub.wake = wake
            sub.open()
            for topic in sub.attached:
                self._update_relay(topic)
        return sub

    def host_take(self, sub: ServerSubscriber, most: int) -> tuple[list[tuple[str, int, int, bytes, bytes]], int]:
        """Up to `most` of a host subscriber's messages, as (topic name, publisher id, sequence number,
        meta, payload), and how many were dropped for it since the last take; the room this makes lets
        held publishes go. Disconnected when its policy ended it."""
        out: list[tuple[str, int, int, bytes, bytes]] = []
        with self._lock:
            if sub.gone is not None:
                raise Disconnected(sub.gone)
            queue, names = sub.queue, sub.topic_of
            while queue and len(out) < most:
                item = queue.popleft()
                if item.meta == TOPIC_OF:
                    names[item.publisher] = item.data.decode()
                    continue
                if item.seq == 0 and item.meta in (RING_GONE, RING_ADD):
                    continue
                name = sub.topic.name if sub.topic is not None else names.get(item.publisher, "")
                out.append((name, item.publisher, item.seq, item.meta, item.data))
            lost, sub.lost = sub.lost, 0
            sub.delivered += len(out)
            for topic in list(sub.attached):
                self._made_room(topic)
        return out, lost

    def has_readers(self, conn: Any, name: str) -> bool:
        """Does anyone but a host subscriber (the federation's tap) read topic `name` (in conn's namespace or
        Global\\) now: a subscriber of it, or a prefix subscriber it matches?"""
        n = _qualify(name, conn.peer)
        with self._lock:
            topic = self.topics.get(n.key)
            if topic is not None and any(s.wake is None for s in topic.subscribers.values()):
                return True
            return any(s.wake is None and s.gone is None and n.key.startswith(s.pattern_key)
                       for s in self.patterns.values())

    def host_unsubscribe(self, sub: ServerSubscriber) -> None:
        if sub.refs > 0:
            sub.close()

    def _direct(self, conn: Any, msg: Message) -> None:
        """TOPIC_DIRECT: the subscriber reads publisher arg 0's ring in place from sequence arg 1 on."""
        sub = self._own(conn, msg, ServerSubscriber)
        if msg.kind(0) != ArgKind.INT or msg.kind(1) != ArgKind.INT:
            raise TopicError("TOPIC_DIRECT takes a publisher id and a sequence number (ints)")
        pid, seq = msg.integer(0), msg.integer(1)
        with self._lock:
            if pid in sub.handover:
                sub.handover.discard(pid)
                topic = sub.topic
                pub = topic.publishers.get(pid)
                if seq <= 0:  # it could not join: relayed on
                    if pub is not None and pub.readers > 0:
                        pub.readers -= 1
                else:
                    sub.rings.add(pid)
                    kept = deque(i for i in sub.queue if not (i.publisher == pid and i.seq >= seq))
                    sub.queue = kept  # what it reads in place is not relayed too
                    self._update_relay(topic)
                    self._made_room(topic)
        msg.complete(0)

    def _make_ring(self, pub: ServerPublisher, conn: Any, capacity: int) -> None:
        """A sealed memfd (src/shmbroker/core/shm.py: nobody can truncate it under a reader); its descriptor goes to
        the publisher and each direct subscriber on their sockets (_Conn.pass_fd), the server keeps it
        until the publisher closes."""
        name = _names.segment_name("topic", self.server.server_id, conn.session_key)
        pub.segment = Broadcast.make_segment(name, capacity, max_consumers=RING_CONSUMERS, sealed=True)
        pub.ring_name = pub.segment.name

    @staticmethod
    def _pass_ring(conn: Any, pub: ServerPublisher) -> None:
        """The publisher ring's descriptor to a direct subscriber's client, ahead of the name (a subscriber
        that does not get it cannot join, and says so: TOPIC_DIRECT 0, relayed)."""
        if pub.segment is not None and pub.segment.fd >= 0 and pub.ring_name is not None:
            conn.pass_fd(pub.ring_name, pub.segment.fd)

    def _drop_ring(self, pub: ServerPublisher) -> None:
        """The ring's end at the server: no more relaying from it, and its name unlinked (the
        publisher and direct subscribers keep their mappings until they close them)."""
        if pub.relay is not None:
            self._end_relay(pub)
        if pub.segment is not None:
            seg, pub.segment = pub.segment, None
            seg.close()
            try:
                seg.unlink()
            except OSError:
                pass

    def _open_subscriber(self, conn: Any, msg: Message) -> None:
        name = _text(self._read(msg, 0), "topic name", MAX_TOPIC_NAME)
        opts = _options(self._read(msg, 1), SUBSCRIBER_OPTIONS)
        access = self.server.access
        n = _qualify(name, conn.peer)
        if name.endswith("*"):
            if not access.allows_some(conn.peer, "topic", n.name[:-1], "subscribe"):
                access.check(conn.peer, "topic", n.name, "subscribe")  # (raises: no grant reaches under it)
            self._open_prefix(conn, msg, n, opts)
            return
        access.check(conn.peer, "topic", n.name, "subscribe")
        with self._lock:
            topic = self._topic(n)
            for pub in [p for p in self.relays if p.topic is topic]:
                # what its ring holds was published before this subscriber came: to the others (and the
                # history) first, so that this one starts after it (a blocking subscriber may go over its
                # capacity for it, up to twice its capacity: see _relay_from)
                self._relay_from(pub, catch_up=True)
            topic = self._topic(n)  # (the catch-up may have ended a relay and forgotten the topic)
            sub = ServerSubscriber(self, topic, next(self._ids), conn, opts.get("capacity", DEFAULT_QUEUE_CAPACITY),
                             opts.get("policy", "block"))
            want = opts.get("history", 0)
            # direct: it reads the publishers' rings in place; only a blocking subscriber without history on
            # a shared-memory session of a threaded server (a ring is lossless: its producer waits for it)
            sub.direct = (opts.get("direct", False) and conn.on_rings and sub.policy == "block" and not want
                          and not self.server.is_async and msg.kind(2) in (ArgKind.WRITE, ArgKind.READWRITE))
            if want:
                for item in list(topic.history)[-want:][-sub.capacity:]:
                    sub.queue.append(item)
            if sub.direct:  # the rings of the publishers there now: it joins them before subscribe() returns
                # only its own session's rings (the session rule: no segment mapped outside its session)
                # and only while the ring has a slot for it: one is kept for the server's own relay, and a
                # ring with all its slots promised is relayed to this subscriber instead
                rings = {p.id: p.ring_name for p in topic.publishers.values()
                         if p.ring_name is not None and p.conn.session_key == conn.session_key
                         and p.readers < RING_CONSUMERS - 1}
                try:
                    msg.write(2, json.dumps(rings).encode())
                except Overflow:
                    rings = {}
                    sub.direct = False  # its buffer is too small for the names: everything is relayed to it
                sub.rings = set(rings)
                for pid in sub.rings:
                    topic.publishers[pid].readers += 1
                    self._pass_ring(conn, topic.publishers[pid])
            handle = conn.session.open_subsession(sub)
            topic.subscribers[sub.id] = sub
            self._update_relay(topic)
        msg.complete(handle)

    def _open_prefix(self, conn: Any, msg: Message, n: Name, opts: dict[str, Any]) -> None:
        """A subscriber to every topic of n's namespace whose name starts with n's name (less its '*'),
        now and later: relayed."""
        with self._lock:
            sub = ServerSubscriber(self, None, next(self._ids), conn, opts.get("capacity", DEFAULT_QUEUE_CAPACITY),
                             opts.get("policy", "block"))
            sub.pattern = n.shown
            sub.pattern_key = prefix = n.key[:-1]
            want = opts.get("history", 0)
            for pub in [p for p in self.relays if p.topic.key.startswith(prefix)]:
                self._relay_from(pub, catch_up=True)  # as a subscriber of that topic starts after it
            allows, peer = self.server.access.allows, conn.peer
            for topic in [t for t in self.topics.values()  # (those still there, and a grant lets it read)
                          if t.key.startswith(prefix) and allows(peer, "topic", _bare(t), "subscribe")]:
                if want:
                    for item in list(topic.history)[-want:]:
                        self._enqueue_for(sub, topic, item)
                self._attach(sub, topic)
            while len(sub.queue) > sub.capacity and _drop_oldest(sub):  # (history of several topics:
                pass  # the newest of it)
            handle = conn.session.open_subsession(sub)
            self.patterns[sub.id] = sub
            for topic in sub.attached:
                self._update_relay(topic)
        msg.complete(handle)

    def _enqueue_for(self, sub: ServerSubscriber, topic: Topic, item: "_Item") -> None:
        """An item into a prefix subscriber's queue, after the name of its publisher's topic the first time."""
        if item.publisher not in sub.announced:
            sub.announced.add(item.publisher)
            sub.queue.append(_Item(item.publisher, 0, TOPIC_OF, topic.name.encode()))
        sub.queue.append(item)

    def _set_history(self, topic: Topic) -> None:
        topic.history_len = max((p.history for p in topic.publishers.values()), default=0)
        while len(topic.history) > topic.history_len:
            topic.history.popleft()

    def _unpack(self, msg: Message) -> list[tuple[bytes, bytes]]:
        data, table = self._read(msg, 0), self._read(msg, 1)
        if len(table) < 4:
            raise TopicError("the batch's table is too short")
        (n,) = struct.unpack_from("<I", table)
        end = 4 + n * TABLE_ENTRY.size
        if n == 0 or end > len(table):
            raise TopicError(f"the batch's table does not hold {n} entries")
        items, at, mat = [], 0, end
        for i in range(n):
            size, msize = TABLE_ENTRY.unpack_from(table, 4 + i * TABLE_ENTRY.size)
            if msize > MAX_META or at + size > len(data) or mat + msize > len(table):
                raise TopicError(f"entry {i} of the batch goes past its end")
            items.append((data[at:at + size], table[mat:mat + msize]))
            at += size
            mat += msize
        if at != len(data) or mat != len(table):
            raise TopicError("the batch has bytes its table does not account for")
        return items

    # -- publishing ------------------------------------------------------------------------

    def _publish(self, conn: Any, msg: Message, items: list[tuple[bytes, bytes]]) -> None:
        pub = self._own(conn, msg, ServerPublisher)
        deadline = time.monotonic() + pub.block_timeout
        with self._lock:
            small = min((s.capacity for s in pub.topic.subscribers.values()
                         if s.policy == "block" and s.gone is None and pub.id not in s.rings), default=len(items))
            if len(items) > small:  # it would wait for room that never comes
                msg.complete(Status.ARGUMENT, f"a batch of {len(items)} is more than a blocking subscriber's "
                                              f"capacity ({small}): publish it in parts")
                return
            if pub.held or not self._room(pub.topic, len(items), pub.id):
                pub.held.append((msg, items, deadline))  # after those already waiting: the publisher's order
                if not pub.timer:
                    pub.timer = True
                    self.server.call_later(pub.block_timeout, lambda: self._expire(pub))
                return
            self._deliver(pub, items)
        msg.complete(len(items) if msg.code == TOPIC_PUBLISH_MANY else 0)

    @staticmethod
    def _space(topic: Topic, pub: int, times: int = 1) -> int | None:
        """How many more messages every blocking subscriber publisher `pub`'s messages go to can take
        (within `times` its capacity), or None when there is no such subscriber. A queue of big
        messages is full at RELAY_QUEUE_BYTES too (see there)."""
        room = None
        for s in topic.subscribers.values():
            if s.policy == "block" and s.gone is None and pub not in s.rings:
                q = s.queue
                n = s.capacity * times - len(q)
                if q and len(q[0].data) >= RELAY_BIG and sum(len(i.data) for i in q) >= RELAY_QUEUE_BYTES * times:
                    n = 0
                room = n if room is None or n < room else room
        return room

    @staticmethod
    def _room(topic: Topic, n: int, pub: int = 0, times: int = 1) -> bool:
        """Every blocking subscriber publisher `pub`'s messages go to can take n more (within `times`
        its capacity; a subscriber that reads pub's ring in place is not one of them)."""
        return all(len(s.queue) + n <= s.capacity * times for s in topic.subscribers.values()
                   if s.policy == "block" and s.gone is None and pub not in s.rings)

    def _control(self, sub: ServerSubscriber, item: _Item) -> None:
        sub.queue.append(item)
        if sub.fetch is not None:
            self._answer(sub)
        elif sub.wake is not None:
            sub.wake()

    def _deliver(self, pub: ServerPublisher, items: list[tuple[bytes, bytes]], seqs: list[int] | None = None) -> None:
        """Into every subscriber's queue (with the lock held), as each one's policy says. seqs: ring
        records' own sequence numbers (the publisher numbered them), one per item."""
        made = []
        for i, (data, meta) in enumerate(items):
            pub.seq = seqs[i] if seqs is not None else pub.seq + 1
            made.append(_Item(pub.id, pub.seq, meta, data))
        self._deliver_made(pub, made)

    def _deliver_made(self, pub: ServerPublisher, made: list[_Item]) -> None:
        """_deliver of items already made (their publisher's sequence numbers in them)."""
        topic = pub.topic
        if made:
            pub.seq = made[-1].seq
        pub.published += len(made)
        answered = False
        topic.published += len(made)
        if topic.history_len:
            topic.history.extend(made)
            while len(topic.history) > topic.history_len:
                topic.history.popleft()
        for sub in list(topic.subscribers.values()):
            if sub.gone is not None or pub.id in sub.rings:
                continue
            if sub.pattern is None and len(sub.queue) + len(made) <= sub.capacity:
                sub.queue.extend(made)  # room for all of them: what the loop below does, at once
                made_for: list[_Item] | tuple[()] = ()
            else:
                made_for = made
            for item in made_for:
                if len(sub.queue) >= sub.capacity:
                    if sub.policy == "drop":
                        if _drop_oldest(sub):  # (a queue of control items only: nothing is dropped)
                            sub.lost += 1
                            sub.lost_total += 1
                            topic.dropped += 1
                    elif sub.policy == "disconnect":
                        self._disconnect(sub, f"disconnected by policy: {sub.capacity} messages waited unread")
                        break
                if sub.pattern is None:
                    sub.queue.append(item)
                else:
                    self._enqueue_for(sub, topic, item)
            if sub.fetch is not None and sub.queue:
                self._answer(sub)
                answered = True
            elif sub.wake is not None and sub.queue:
                sub.wake()  # a host subscriber takes them in its own thread (host_take), which makes the room
        if answered:
            self._retry(topic)  # the answers made room: held publishes may go

    def _disconnect(self, sub: ServerSubscriber, why: str) -> None:
        sub.gone = why
        sub.queue.clear()
        for topic in sub.attached:
            topic.disconnected += 1
            topic.subscribers.pop(sub.id, None)
        self.patterns.pop(sub.id, None)
        if sub.fetch is not None:
            fetch, sub.fetch = sub.fetch, None
            fetch.complete(Status.DISCONNECTED, why)

    def _made_room(self, topic: Topic) -> None:
        """A blocking subscriber has room again (it fetched, or it is gone): held publishes may go,
        and the relayed rings the server stopped reading are read on (their publishers may be waiting
        for room in them, so no doorbell would ring). With the lock held."""
        self._retry(topic)
        for pub in [p for p in self.relays if p.topic is topic]:
            self._relay_from(pub)

    def _retry(self, topic: Topic) -> None:
        """Held publishes that now fit, oldest first per publisher (with the lock held)."""
        for pub in list(topic.publishers.values()):
            while pub.held and self._room(topic, len(pub.held[0][1]), pub.id):
                msg, items, _ = pub.held.popleft()
                self._deliver(pub, items)
                msg.complete(len(items) if msg.code == TOPIC_PUBLISH_MANY else 0)

    def _expire(self, pub: ServerPublisher) -> None:
        """A held publish's deadline: it fails, and nobody got it (one timer a publisher at a time)."""
        now = time.monotonic()
        with self._lock:
            pub.timer = False
            while pub.held and pub.held[0][2] <= now:
                msg, items, _ = pub.held.popleft()
                pub.topic.timed_out += len(items)
                slow = [s.id for s in pub.topic.subscribers.values()
                        if s.policy == "block" and len(s.queue) + len(items) > s.capacity]
                msg.complete(Status.TIMED_OUT, f"no room within {pub.block_timeout:g} s: subscriber(s) "
                                               f"{', '.join(map(str, slow))} did not keep up")
            # the rest wait on: a later publish of theirs came after
            if pub.held:
                pub.timer = True
                self.server.call_later(max(0.0, pub.held[0][2] - now), lambda: self._expire(pub))

    # -- fetching ------------------------------------------------------------------------

    def _fetch(self, conn: Any, msg: Message) -> None:
        sub = self._own(conn, msg, ServerSubscriber)
        if msg.kind(0) not in (ArgKind.WRITE, ArgKind.READWRITE) or msg.kind(1) != ArgKind.INT:
            raise TopicError("FETCH takes a writable argument and an int")
        most = msg.integer(1)
        if most < 1:
            raise TopicError("FETCH takes at least 1 message")
        with self._lock:
            if sub.gone is not None:
                msg.complete(Status.DISCONNECTED, sub.gone)
                return
            if sub.fetch is not None:  # one FETCH at a time: the older one ends empty
                old, sub.fetch = sub.fetch, None
                old.complete(0)
            sub.fetch, sub.fetch_max = msg, most
            if sub.queue or sub.lost:
                self._answer(sub)
                for topic in list(sub.attached):
                    self._made_room(topic)

    def _answer(self, sub: ServerSubscriber) -> None:
        """The waiting FETCH gets what is queued, as much as fits (with the lock held)."""
        msg = sub.fetch
        assert msg is not None
        queue = sub.queue
        # BATCH_HEAD, then a MESSAGE_HEAD, meta and data per message, as many as fit: packed by C
        # (a socket session's answer with big payloads: as parts, those payloads not copied again)
        big = RELAY_BIG if not msg.connection.on_rings else 0
        data, n, first = _tpack(queue, sub.fetch_max, msg.max_length(0) - BATCH_HEAD.size, sub.lost, big)
        if not n and first:  # the first never fits this buffer: say how big one must be
            sub.fetch = None
            msg.complete(Status.OVERFLOW, f"a message needs {first + BATCH_HEAD.size} bytes")
            return
        pop = queue.popleft
        for _ in range(n):
            pop()
        sub.fetch = None
        sub.lost = 0
        sub.delivered += n
        try:
            if type(data) is tuple:
                msg._complete_parts(n, 0, data)
                return
            msg.write(0, data)
        except Overflow as e:  # (cannot happen: the sizes were counted)
            msg.complete(Status.OVERFLOW, str(e))
            return
        msg.complete(n)

    # -- ends ------------------------------------------------------------------------------

    def _publisher_closed(self, pub: ServerPublisher) -> None:
        with self._lock:
            pub.closed = True
            topic = pub.topic
            relay, pub.relay = pub.relay, None
            self._drop_ring(pub)  # its name unlinked; the relay, if any, reads on below
            if relay is not None:
                # what it wrote before it went still reaches the relay subscribers, as they make room:
                # the server reads the ring to its end, then lets go (_relay_from)
                pub.relay = relay
                self._relay_from(pub)
            if pub.ring_name is not None:
                for sub in topic.subscribers.values():
                    if pub.id in sub.rings or pub.id in sub.handover:  # it reads what is left, then closes
                        self._control(sub, _Item(pub.id, 0, RING_GONE, b""))  # its end (pub.id stays in
                                                                               # sub.rings: no duplicates)
            topic.publishers.pop(pub.id, None)
            while pub.held:  # the session is ending, or the client closed it while a publish waited
                msg, _, _ = pub.held.popleft()
                if not msg.completed:
                    msg.complete(Status.CANCELLED, "the publisher was closed")
            self._set_history(topic)
            self._forget_if_empty(topic)

    def _subscriber_closed(self, sub: ServerSubscriber) -> None:
        with self._lock:
            self.patterns.pop(sub.id, None)
            for topic in sub.attached:
                topic.subscribers.pop(sub.id, None)
            for pid in sub.rings | sub.handover:  # its slots in those rings are free again (or soon: a dead
                pub = sub.topic.publishers.get(pid)  # type: ignore[union-attr]  # one's is reclaimed by the next subscriber that needs it; a prefix subscriber, topic None, reads no rings)
                if pub is not None and pub.readers > 0:
                    pub.readers -= 1
            sub.rings, sub.handover = set(), set()
            if sub.fetch is not None:
                fetch, sub.fetch = sub.fetch, None
                if not fetch.completed:
                    fetch.complete(Status.CANCELLED, "the subscriber was closed")
            sub.queue.clear()
            attached, sub.attached = sub.attached, []
            for topic in attached:
                self._update_relay(topic)
                self._made_room(topic)  # a blocking subscriber is gone (this also ends the relay of a
                self._forget_if_empty(topic)  # closed publisher nobody needs now)

    def _forget_if_empty(self, topic: Topic) -> None:
        """A topic nobody publishes to and nobody but prefix subscribers reads is forgotten (made again,
        and found by the prefixes again, when someone comes back to it)."""
        if topic.publishers or any(s.pattern is None for s in topic.subscribers.values()):
            return
        if any(p.topic is topic for p in self.relays):  # a closed publisher's rest is still relayed to them:
            return  # forgotten when that ends (_end_relay)
        if self.topics.get(topic.key) is topic:
            del self.topics[topic.key]
        for sub in topic.subscribers.values():
            sub.attached = [t for t in sub.attached if t is not topic]
        topic.subscribers.clear()

    # -- relaying from publisher rings ----------------------------------------------------

    def _update_relay(self, topic: Topic) -> None:
        """The server reads a ring publisher's ring while someone needs it relayed: a subscriber that
        is not direct, or the topic's history (with the lock held)."""
        for pub in topic.publishers.values():
            if pub.ring_name is None or pub.closed:
                continue
            need = topic.history_len > 0 or any(pub.id not in s.rings and s.gone is None
                                                for s in topic.subscribers.values())
            if need and pub.relay is None:
                try:
                    seg = pub.segment
                    pub.relay = Broadcast.open(pub.ring_name, spin_us=0,  # from its next record on
                                               fd=seg.fd if seg is not None and seg.fd >= 0 else None)
                except (BrokerError, OSError) as e:
                    log.warning("topic %s: cannot relay publisher %d's ring: %s", topic.name, pub.id, e)
                    continue
                self.relays.append(pub)
            elif not need and pub.relay is not None:
                self._end_relay(pub)  # nobody it is relayed to is left

    def _end_relay(self, pub: ServerPublisher) -> None:
        self.relays[:] = [p for p in self.relays if p is not pub]
        if pub.closed:  # its rest is relayed: its direct subscribers read it to the end themselves
            for sub in pub.topic.subscribers.values():
                sub.rings.discard(pub.id)
        ring, pub.relay = pub.relay, None
        if ring is not None:
            if pub.armed:
                pub.armed = False
                ring.disarm_doorbell()
            ring.close()
        if pub.closed:
            self._forget_if_empty(pub.topic)

    def poll(self) -> bool:
        """The server loop's look at the relayed rings: True if it relayed something."""
        if not self.relays:
            return False
        did = False
        with self._lock:
            for pub in list(self.relays):
                did = self._relay_from(pub) or did
        return did

    def _relay_from(self, pub: ServerPublisher, catch_up: bool = False) -> bool:
        """Records of a ring publisher to the relay subscribers, while the blocking ones have room
        (else the ring fills and the publisher waits, as a blocking subscriber wants); with the lock
        held. catch_up: what the ring holds now, room or not (a subscriber is joining; the publisher
        may go on writing meanwhile: at most as many records as the bytes now waiting can hold)."""
        ring = pub.relay
        if ring is None:
            return False
        topic = pub.topic
        if pub.closed and not any(pub.id not in s.rings and s.gone is None for s in topic.subscribers.values()):
            self._end_relay(pub)  # a closed publisher's rest is for nobody now
            return False
        n = 0
        most = RELAY_BATCH
        if catch_up:
            most = ring.backlog() // 16 + 1  # a record takes 16 bytes at least
        # a catch-up goes over a blocking subscriber's capacity, but at most to twice it: past that the
        # joiner gets the rest of the ring too (messages from just before it came), rather than a
        # stalled subscriber's queue growing by a ring at every subscribe
        asm = pub.assembler
        while n < most:
            space = self._space(topic, pub.id, 2 if catch_up else 1)
            if space is not None and space < 1:
                break  # a blocking subscriber is full: the ring fills, and its publisher waits
            if asm.complete:  # whole messages, many in one C call, delivered together (one answer each)
                want = min(most - n, space if space is not None else most, _BATCH_MAX)
                got, last, rc = _trecv_batch(ring.address, asm.seq, want, _Item, pub.id)
                if got:  # each an _Item already, made by C
                    n += len(got)
                    asm.seq = last
                    self._deliver_made(pub, got)
                    continue
                if rc == _RING_EMPTY and not pub.closed:
                    break
                # anything else (a fragment, an odd record, the ring's end): one record the long way
            try:
                rec = ring.recv(timeout=0)
            except Empty:
                if pub.closed:  # its session closed it (its process closed the ring first) or died: no more
                    self._end_relay(pub)
                break
            except (Closed, PeerGone):  # its publisher closed it or died, and all it wrote was read
                self._end_relay(pub)
                break
            except BrokerError as e:  # scribbled on, or the server's slot evicted: nothing more from it
                log.warning("topic %s: publisher %d's ring, relayed no more: %s", topic.name, pub.id, e)
                pub.corrupt += 1
                self._end_relay(pub)
                break
            n += 1
            try:
                msg = asm.feed(rec)
            except ValueError:
                pub.corrupt += 1  # a buggy or hostile publisher harms only its own messages
                continue
            if msg is not None:
                seq, meta, payload = msg
                self._deliver(pub, [(payload, meta)], [seq])
        return n > 0

    def arm(self) -> bool:
        """Before the server sleeps: be woken by every relayed ring that can be read now (its
        publisher rings its session's doorbell). False: records wait, do not sleep."""
        with self._lock:
            for pub in self.relays:
                if pub.armed or pub.relay is None or not self._room(pub.topic, 1, pub.id):
                    continue  # blocked on a subscriber's room: its FETCH wakes the server
                ready = pub.relay.arm_doorbell()  # counted from here on, whatever it says
                pub.armed = True
                if not ready:
                    return False
        return True

    def disarm(self) -> None:
        with self._lock:
            for pub in self.relays:
                if pub.armed and pub.relay is not None:
                    pub.armed = False
                    pub.relay.disarm_doorbell()

    # -- statistics ----------------------------------------------------------------------

    @staticmethod
    def metrics(stats: Any, fam: Callable[[str, str, str], Any]) -> None:
        """Its figures for the Prometheus endpoint (framework/metrics.py)."""
        for t in stats or []:
            name = t.get("topic")
            fam("broker_topic_published_total", "counter",
                "Messages published (a ring publisher's: those the server relayed).").add(t.get("published"), topic=name)
            fam("broker_topic_dropped_total", "counter", "Messages the drop policy dropped.").add(t.get("dropped"),
                                                                                                   topic=name)
            fam("broker_topic_timed_out_total", "counter", "Publishes that waited for room in vain.").add(
                t.get("timed_out"), topic=name)
            fam("broker_topic_disconnected_total", "counter", "Subscribers the disconnect policy closed.").add(
                t.get("disconnected"), topic=name)
            fam("broker_topic_publishers", "gauge", "Publishers on the topic.").add(len(t.get("publishers", [])),
                                                                                     topic=name)
            fam("broker_topic_subscribers", "gauge", "Subscribers on the topic.").add(len(t.get("subscribers", [])),
                                                                                       topic=name)
            for q in t.get("subscribers", []):
                lab = {"topic": name, "subscriber": q.get("id"), "policy": q.get("policy"),
                       "direct": str(bool(q.get("direct"))).lower()}
                fam("broker_subscriber_lost_total", "counter", "Messages lost to a subscriber (drop policy).").add(
                    q.get("lost"), **lab)
                fam("broker_subscriber_delivered_total", "counter", "Messages relayed to a subscriber.").add(
                    q.get("delivered"), **lab)
                fam("broker_subscriber_queued", "gauge", "Messages waiting in a subscriber's queue.").add(
                    q.get("queued"), **lab)

    def stats(self) -> list[dict[str, Any]]:
        """Each topic: its publishers and subscribers (with their sessions' connection ids) and counters."""
        with self._lock:
            return [{"topic": t.name, "namespace": t.namespace, "owner": t.owner,
                     "published": t.published, "dropped": t.dropped,
                     "draining": sum(1 for p in self.relays if p.closed and p.topic is t),
                     "disconnected": t.disconnected, "timed_out": t.timed_out, "history": len(t.history),
                     "publishers": [{"id": p.id, "connection_id": p.conn.peer.connection_id,
                                     "published": p.published, "waiting": len(p.held), "ring": p.ring_name,
                                     "relayed": p.relay is not None, "corrupt": p.corrupt}
                                    for p in t.publishers.values()],
                     "subscribers": [{"id": s.id, "connection_id": s.conn.peer.connection_id, "policy": s.policy,
                                      "capacity": s.capacity, "queued": len(s.queue), "delivered": s.delivered,
                                      "lost": s.lost_total, "direct": s.direct, "pattern": s.pattern}
                                     for s in t.subscribers.values()]}
                    for t in sorted(self.topics.values(), key=lambda t: (t.namespace, t.owner or "", t.name))]

    def _list(self, conn: Any, msg: Message) -> None:
        """TOPIC_LIST: the topics this peer sees (the Global ones and its own login session's Local ones)
        and may publish to or subscribe to (every one of those, for the server's user)."""
        topics, access, peer = self.stats(), self.server.access, conn.peer
        mine = _owner_of(peer)
        topics = [t for t in topics if t["owner"] in (None, mine)]
        if not access.owner(peer):
            topics = [t for t in topics if access.allows(peer, "topic", _bare_name(t["topic"]), "subscribe")
                      or access.allows(peer, "topic", _bare_name(t["topic"]), "publish")]
        data = json.dumps(topics, sort_keys=True).encode()
        try:
            msg.write(0, data)
        except Overflow:
            msg.complete(Status.OVERFLOW, f"the list takes {len(data)} bytes")
            return
        msg.complete(len(data))
