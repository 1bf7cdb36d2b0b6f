"""Brokers on several hosts, federated over NATS (issue 18): `Global\\` topics published on any broker reach
their subscribers on every broker.

A broker joins with `Server(..., federation=Federation("nats://host:4222", name="host-a", accept=["host-b"]))`
(or `shmbroker serve --federate`). What crosses hosts, and how:

- Only `Global\\` names. A Local name never leaves its host: it is a login session's own.
- Each broker publishes its `Global\\` topics' messages on the subject `brkfed.NAME.t.HEX` (NAME: its own
  name; HEX: the topic's name, hex-encoded, so any name makes a valid subject), and subscribes to
  `brkfed.*.t.>`. A NATS deployment with authorization grants each broker's user publish rights on
  `brkfed.NAME.>` only: then the NAME in a subject is the NATS server's word, not the sender's claim, and it
  is what the accepting side's policy names.
- The default denies: messages from a broker that `accept` does not name are dropped (and counted).
- No echo loops: NATS does not echo a connection's own messages to it (no_echo), the subject names the
  origin, and what the federation publishes locally is never tapped back out.
- Order: one NATS connection per broker, so each publisher's messages arrive in its order, each once.
- Back-pressure: NATS core has none across hosts. Outbound, the federation's tap is a blocking subscriber
  of `Global\\*` with a bounded queue (`outbound` messages): while NATS is slow or away the queue fills, and
  then the local publishers wait, and fail with FullTimeout after their block_timeout, as with any slow
  blocking subscriber. Inbound, messages go to the local subscribers with their own policies; a remote
  message a full blocking subscriber has no room for within `inbound_timeout` is dropped and counted
  (`dropped_in`), since the remote publisher cannot be made to wait.
"""
from __future__ import annotations

import asyncio
import logging
import os
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from shmbroker._errors import BrokerError, Disconnected, Full, FullTimeout
from shmbroker.framework.driven import run_until
from shmbroker.framework.namespace import GLOBAL
from shmbroker.framework.session import Peer
from shmbroker.protocol.frames import Status

log = logging.getLogger("broker.federation")

PREFIX = "brkfed"
# A topic's NATS message holds one or more of its messages, each: HEAD (the origin publisher's id, its
# sequence number, flags, the meta's length, the data's length), the meta, the data. A message bigger than
# NATS's max_payload travels in parts (MORE: the next record goes on with the same message).
HEAD = struct.Struct("<QQBHI")
MORE = 1
BATCH_BYTES = 256 << 10  # what one NATS message holds at most of a batch (and what a part holds at most)
CALL = struct.Struct("<iI")  # a call's code, and the room the caller has for the writes; the packed arguments follow
ANSWER = struct.Struct("<iH")  # the status, the error text's length; the text and the packed writes follow
QUEUE = "brkfed"  # the queue group of a service's providers: NATS gives each call to one of them
NOT_HERE = "not here"  # a provider's broker whose provider just went: the caller's broker asks again
TAKEN_AFTER = 0.002  # s: a call running longer at a provider's broker is said to be there (T)
UNTAKEN_GRACE = 0.5  # s: when a broker goes, a call that no broker said it took this long after it was sent was its
MAX_SEEN = 4096  # brokers whose heartbeats are kept
MAX_SERVING = 1024  # calls from other brokers running here at once; more are answered SERVER_BUSY
MAX_NAME = 64
TAKE = 256  # messages taken from the tap at once
MAX_PUBLISHERS = 4096  # host publishers for other brokers' topics kept before those nobody reads are let go


def _check_name(name: str) -> str:
    if not (0 < len(name) <= MAX_NAME) or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"a federation name is 1 to {MAX_NAME} letters, digits, '-' or '_', not {name!r}")
    return name


@dataclass
class Federation:
    """How a broker joins a federation: the NATS servers, its name, whom it accepts, and NATS's own
    authentication (user and password, a token, an nkey seed file, a credentials file, TLS)."""

    servers: str | Sequence[str]
    name: str = ""
    accept: Iterable[str] = ()  # the brokers whose messages it takes; "*": any (the default denies)
    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkeys_seed: str | None = None  # a file
    credentials: str | None = None  # a .creds file (JWT and nkey)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    outbound: int = 8192  # messages the tap holds while NATS is slow or away
    call_timeout: float = 30.0  # a call to another broker's service: TIMED_OUT after this
    heartbeat: float = 1.0  # each broker says it lives this often; three missed, and its calls here end
    inbound_timeout: float = 1.0
    connect_timeout: float = 5.0
    accepted: frozenset[str] = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        if isinstance(self.servers, str):
            self.servers = [s.strip() for s in self.servers.split(",") if s.strip()]
        self.servers = list(self.servers)
        if not self.servers:
            raise ValueError("a federation needs at least one NATS server (nats://host:port)")
        for s in self.servers:
            if not s.startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ValueError(f"a NATS server is nats://host:port (or tls://...), not {s!r}")
        self.name = _check_name(self.name or os.uname().nodename.split(".")[0].replace(".", "-"))
        accept = [self.accept] if isinstance(self.accept, str) else list(self.accept)
        self.accepted = frozenset("*" if a == "*" else _check_name(a) for a in accept)
        if not 1 <= self.outbound <= 1 << 20:
            raise ValueError(f"outbound must be 1 to {1 << 20} messages, not {self.outbound}")

    def accepts(self, origin: str) -> bool:
        return "*" in self.accepted or origin in self.accepted

    def _tls(self) -> Any:
        if not (self.tls_ca or self.tls_cert):
            return None
        import ssl
        ctx = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        return ctx

    def _options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"servers": self.servers, "name": f"broker {self.name}", "no_echo": True,
                                "connect_timeout": self.connect_timeout, "max_reconnect_attempts": -1,
                                "reconnect_time_wait": 0.1, "allow_reconnect": True}
        for k in ("user", "password", "token", "nkeys_seed"):
            if getattr(self, k) is not None:
                opts[k] = getattr(self, k)
        if self.credentials is not None:
            opts["user_credentials"] = self.credentials
        tls = self._tls()
        if tls is not None:
            opts["tls"] = tls
        return opts


def metrics(stats: Any, fam: Any) -> None:
    """The federation link's figures for the Prometheus endpoint (framework/metrics.py)."""
    if not stats:
        return
    lab = {"broker": stats.get("name")}
    fam("broker_federation_connected", "gauge", "1 while the federation's NATS connection is up.").add(
        1 if stats.get("connected") else 0, **lab)
    for key, help_text in (("reconnects", "Reconnections to NATS."),
                           ("messages_out", "Global topic messages sent to the other brokers."),
                           ("bytes_out", "Their payload bytes."),
                           ("messages_in", "Global topic messages from the other brokers, delivered here."),
                           ("bytes_in", "Their payload bytes."),
                           ("dropped_in", "Messages from other brokers a full blocking subscriber had no room for."),
                           ("denied", "Messages and calls from brokers `accept` does not name."),
                           ("malformed", "Unreadable messages and calls from NATS."),
                           ("brokers_gone", "Other brokers that stopped, restarted or went silent."),
                           ("cut_short", "Big messages whose broker went before their last part."),
                           ("calls_out", "Calls from here to other brokers' services."),
                           ("calls_failed", "Of those, the ones that failed."),
                           ("calls_in", "Calls from other brokers to services here.")):
        fam(f"broker_federation_{key}_total", "counter", help_text).add(stats.get(key), **lab)
    fam("broker_federation_outbound_queued", "gauge", "Messages waiting for NATS (the outbound bound).").add(
        stats.get("outbound_queued"), **lab)


def _logged(task: asyncio.Task[None]) -> None:
    e = None if task.cancelled() else task.exception()
    if e is not None:  # NATS's: reconnecting with its buffer full, closed; the caller's broker times it out
        log.info("federation: publish: %s: %s", type(e).__name__, e)


def _subject(origin: str, topic: str) -> str:
    return f"{PREFIX}.{origin}.t.{topic.encode().hex()}"


def _service_subject(origin: str, service: str) -> str:
    return f"{PREFIX}.{origin}.s.{service.encode().hex()}"


def _answer(status: int, text: str = "", writes: bytes = b"") -> bytes:
    """R, then the answer: what a provider's broker says last on a call's reply subject."""
    t = text.encode()[:4000]
    return b"R" + ANSWER.pack(int(status), len(t)) + t + writes


@dataclass
class _Pending:
    """A call of a caller here to another broker's provider, until its answer."""

    caller: Any
    service: str
    payload: bytes  # what is published: CALL, then the packed arguments (again, if its provider just went)
    room: int
    deadline: float  # the loop's time: TIMED_OUT then
    sent: float = 0.0  # the loop's time it was published (the last time, if its provider just went)
    timer: asyncio.TimerHandle | None = None
    provider: str | None = None  # the broker that took it (its T), and which run of that broker
    incarnation: str = ""


class FederationLink:
    """A running federation of one Server: one NATS connection on an asyncio loop on the server's own thread:
    the server's running loop under serve_async() (astart), else one that the threaded server's loop steps
    (start; Server.asyncio_loop, framework/driven.py). Either way a message or a call never changes threads."""

    def __init__(self, server: Any, host: Any, config: Federation) -> None:
        self.server, self.host, self.config = server, host, config
        self.topics = server.service("topics")
        self.links = server.service("services")
        self.stats: dict[str, Any] = {"name": config.name, "connected": None, "reconnects": 0, "disconnects": 0,
                                      "messages_out": 0, "bytes_out": 0, "messages_in": 0, "bytes_in": 0,
                                      "dropped_in": 0, "unread": 0, "denied": 0, "malformed": 0, "errors": 0,
                                      "calls_out": 0, "calls_in": 0, "calls_failed": 0, "services": [],
                                      "brokers_gone": 0, "cut_short": 0}
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # (start() or astart() sets it)
        self._task: asyncio.Future[None] | None = None  # astart's: _main on the server's loop
        self._nc: Any = None
        self._tap: Any = None
        self._wake = asyncio.Event()
        self._pubs: dict[str, Any] = {}  # topic -> the host publisher that republishes it here
        self._own: set[int] = set()  # those publishers' ids: never tapped back out
        self._parts: dict[str, tuple[tuple[str, int, int], list[bytes]]] = {}  # a broker's big message, so far
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._stop: asyncio.Future[None] | None = None
        self._offers_changed = asyncio.Event()
        self.incarnation = os.urandom(6).hex()  # this run of this broker: a restarted one has another
        self._inbox = ""
        self._tokens = 0
        self._pending: dict[str, _Pending] = {}
        self._seen: dict[str, tuple[float, str]] = {}  # broker -> when it last said it lives, and its run
        self._served: dict[str, Any] = {}  # a Global service offered here -> its queue subscription
        self._serving = 0
        self._publishing: set[asyncio.Task[None]] = set()  # publishes under way (a task each)
        self._closing = False
        self._refusals: dict[tuple[str, str, str, str], str | None] = {}

    # -- life -------------------------------------------------------------------------------------

    @staticmethod
    def _need_nats() -> None:
        try:
            import nats  # noqa: F401
        except ImportError:
            raise ImportError("the federation needs nats-py: pip install 'shmbroker[federation]'") from None

    def _refused(self) -> BrokerError:
        return BrokerError(f"federation: cannot join NATS at {', '.join(self.config.servers)}: {self._failed}")

    def start(self) -> None:
        """On the threaded server's own thread: its loop runs this one's asyncio loop a step at a time
        (Server.asyncio_loop, framework/driven.py), so that no message or call changes threads. Connects to
        NATS here, within connect_timeout (a refusal, e.g. bad credentials, raises here), then relays."""
        self._need_nats()
        self._loop = self.server.asyncio_loop()
        self._task = self._loop.create_task(self._main())
        try:
            run_until(self._loop, self._started(), self.config.connect_timeout + 5)
        except asyncio.TimeoutError:
            pass
        if not self._ready.is_set():
            self._failed = (self._task.exception() if self._task.done() and not self._task.cancelled() else None) \
                or TimeoutError(f"no connection within {self.config.connect_timeout:g} s")
            self._task.cancel()
            raise self._refused() from self._failed

    async def _started(self) -> None:
        while not self._ready.is_set() and not self._task.done():  # type: ignore[union-attr]
            await asyncio.sleep(0.005)

    async def astart(self) -> None:
        """On the running loop (the server's, which serve_async() runs): connect, then relay as its task."""
        self._need_nats()
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.ensure_future(self._main())
        await self._started()
        if self._task.done():
            self._failed = self._task.exception() or RuntimeError("it ended")
            raise self._refused() from self._failed

    def close(self) -> None:
        """Stop relaying: say bye, close the NATS connection. On the threaded server, when its loop has
        ended, this runs the asyncio loop until that is done; on the server's running loop (serve_async),
        the task ends soon after (aclose() waits for it)."""
        stop, loop, task = self._stop, self._loop, self._task

        def finish() -> None:
            if stop is not None and not stop.done():
                stop.set_result(None)
        if loop is not None and not loop.is_closed() and task is not None:
            if loop.is_running():
                loop.call_soon_threadsafe(finish)
            else:
                finish()
                try:
                    run_until(loop, asyncio.shield(task), 10)
                except BaseException as e:  # noqa: BLE001 - closing anyway; _main logs its own end
                    log.debug("federation %s: closing: %r", self.config.name, e)
        self._unhook()

    async def aclose(self) -> None:
        self.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 10)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - logged by _main's own end
                pass

    def _unhook(self) -> None:
        self.links.remote = self.links.watch = None
        if self._tap is not None:
            self.topics.host_unsubscribe(self._tap)
            self._tap = None
        for pub in self._pubs.values():
            self.topics.host_close(pub)
        self._pubs.clear()

    async def _main(self) -> None:
        import nats
        cfg = self.config
        self._stop = self._loop.create_future()
        first = True

        async def disconnected() -> None:
            self.stats["disconnects"] += 1
            self.stats["connected"] = None

        async def reconnected() -> None:
            self.stats["reconnects"] += 1
            self.stats["connected"] = self._nc.connected_url.netloc if self._nc.connected_url else None
            self._wake.set()

        async def error(e: Exception) -> None:
            self.stats["errors"] += 1
            if first:
                raise e
            log.warning("federation %s: NATS: %s", cfg.name, e)

        opts = cfg._options()
        # the first connect: once, within connect_timeout, so that bad credentials fail start()
        self._nc = await nats.connect(**opts, error_cb=error, disconnected_cb=disconnected,
                                      reconnected_cb=reconnected)
        first = False
        try:
            self.stats["connected"] = self._nc.connected_url.netloc if self._nc.connected_url else None
            await self._nc.subscribe(f"{PREFIX}.*.t.>", cb=self._inbound, pending_msgs_limit=65536)
            self._inbox = f"_INBOX.{PREFIX}.{cfg.name}.{self.incarnation}"
            await self._nc.subscribe(self._inbox + ".*", cb=self._replies, pending_msgs_limit=65536)
            await self._nc.subscribe(f"{PREFIX}.*.hb", cb=self._heartbeat)
            await self._nc.flush(timeout=cfg.connect_timeout)
            loop = self._loop
            self._tap = self.topics.host_subscriber(self.host, GLOBAL + "*",
                                                    lambda: loop.call_soon_threadsafe(self._wake.set),
                                                    capacity=cfg.outbound, policy="block")
            self.links.watch = lambda: loop.call_soon_threadsafe(self._offers_changed.set)
            self.links.remote = self._remote_call
            self._offers_changed.set()
            self._ready.set()
            tasks = [asyncio.ensure_future(self._outbound()), asyncio.ensure_future(self._offers()),
                     asyncio.ensure_future(self._beat())]
            await self._stop
            self.links.remote = self.links.watch = None
            for token in list(self._pending):
                self._finish(token, Status.DISCONNECTED, "the federation is closing")
            try:  # the others end our calls at once, not after three heartbeats
                await self._nc.publish(f"{PREFIX}.{cfg.name}.hb", b"bye " + self.incarnation.encode())
            except Exception:  # noqa: BLE001 - NATS is away: they time us out instead
                pass
            self._closing = True  # the loops end at this; the heartbeat's sleep is cancelled
            self._offers_changed.set()
            self._wake.set()
            tasks[2].cancel()
            # (not a flush of _offers: nats-py would later answer its cancelled PING's PONG, InvalidStateError)
            _, left = await asyncio.wait(tasks, timeout=3)
            for t in left:
                t.cancel()
            try:  # what was published goes out (the bye too); then close (a drain would wait for every callback)
                await self._nc.flush(timeout=2)
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        finally:
            if not self._nc.is_closed:
                await self._nc.close()

    # -- out: the tap's messages to NATS ---------------------------------------------------------

    def _records(self, got: list[tuple[str, int, int, bytes, bytes]]) -> list[tuple[str, bytes, int, int]]:
        """The tap's messages as NATS messages: (subject, payload, messages, bytes of data), in order, the
        consecutive ones of one topic together up to BATCH_BYTES, a bigger one in parts."""
        name, out = self.config.name, []
        limit = max(4096, min(BATCH_BYTES, int(getattr(self._nc, "max_payload", 1 << 20) or (1 << 20)) - 1024))
        subject, size, count, nbytes = "", 0, 0, 0
        parts: list[bytes] = []
        for topic, pub, seq, meta, data in got:
            if pub in self._own or not topic.startswith(GLOBAL):
                continue  # came from another broker: not sent back out
            subj = _subject(name, topic[len(GLOBAL):])
            rec = HEAD.size + len(meta) + len(data)
            if parts and (subj != subject or size + rec > limit):
                out.append((subject, b"".join(parts), count, nbytes))
                parts, size, count, nbytes = [], 0, 0, 0
            subject = subj
            if rec <= limit:
                parts += [HEAD.pack(pub, seq, 0, len(meta), len(data)), meta, bytes(data)]
                size, count, nbytes = size + rec, count + 1, nbytes + len(data)
                continue
            view, room = memoryview(data), limit - HEAD.size - len(meta)  # in parts: the meta with each
            for at in range(0, len(data), room):
                chunk = view[at:at + room]
                more = MORE if at + room < len(data) else 0
                out.append((subj, b"".join([HEAD.pack(pub, seq, more, len(meta), len(chunk)), meta, bytes(chunk)]),
                            0 if more else 1, len(chunk)))
        if parts:
            out.append((subject, b"".join(parts), count, nbytes))
        return out

    async def _outbound(self) -> None:
        """The tap's messages to NATS, in their order. A message taken from the tap is sent, or kept and
        sent again (NATS away, its outbound buffer full) until it is: the tap is the bound, not this."""
        nc, name, stats = self._nc, self.config.name, self.stats
        unsent: list[tuple[str, bytes, int, int]] = []
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            while True:
                if not unsent:
                    try:
                        got, _lost = self.topics.host_take(self._tap, TAKE)
                    except Disconnected:  # (a blocking tap is never disconnected)
                        return
                    if not got:
                        break
                    unsent = self._records(got)
                    unsent.reverse()  # (popped from the end: the oldest first)
                if not nc.is_connected:
                    break  # the tap fills meanwhile; reconnected() wakes this again
                try:
                    while unsent:
                        subject, payload, count, nbytes = unsent[-1]
                        await nc.publish(subject, payload)
                        unsent.pop()
                        stats["messages_out"] += count
                        stats["bytes_out"] += nbytes
                except Exception as e:  # noqa: BLE001 - NATS's: reconnecting, buffer full; sent again later
                    log.info("federation %s: publish: %s (sent again)", name, e)
                    await asyncio.sleep(0.05)
                    self._wake.set()
                    break
                await asyncio.sleep(0)

    # -- in: NATS's messages to the local subscribers --------------------------------------------

    async def _inbound(self, msg: Any) -> None:
        stats = self.stats
        parts = msg.subject.split(".")
        if len(parts) != 4 or parts[2] != "t":
            stats["malformed"] += 1
            return
        origin = parts[1]
        if origin == self.config.name:
            return
        try:
            topic = bytes.fromhex(parts[3]).decode()
            if not topic:
                raise ValueError("no topic")
        except (ValueError, UnicodeDecodeError):
            stats["malformed"] += 1
            return
        if self._refusal(origin, "topic", topic, "publish") is not None:
            stats["denied"] += 1
            return
        data, at, items, nbytes = memoryview(msg.data), 0, [], 0
        if not data:
            stats["malformed"] += 1
            return
        key = origin  # (one connection each: a big message's parts come one after the other, nothing between)
        while at < len(data):
            try:
                pub_id, seq, flags, meta_len, data_len = HEAD.unpack_from(data, at)
                end = at + HEAD.size + meta_len + data_len
                if end > len(data) or flags & ~MORE:
                    raise ValueError("cut short")
            except (ValueError, struct.error):
                stats["malformed"] += 1  # the rest of this NATS message is unreadable: what came before goes on
                self._parts.pop(key, None)
                break
            meta = bytes(data[at + HEAD.size:at + HEAD.size + meta_len])
            chunk = data[at + HEAD.size + meta_len:end]
            at = end
            held = self._parts.get(key)
            if held is not None and held[0] != (topic, pub_id, seq):
                stats["malformed"] += 1  # a part whose message did not go on: that message is lost
                held = None
            if flags & MORE or held is not None:
                held = held or ((topic, pub_id, seq), [])
                held[1].append(bytes(chunk))
                if sum(map(len, held[1])) > self.server.max_frame:  # (bounded as a relayed message is)
                    stats["malformed"] += 1
                    self._parts.pop(key, None)
                    continue
                if flags & MORE:
                    self._parts[key] = held
                    continue
                self._parts.pop(key, None)
                payload = b"".join(held[1])
            else:
                payload = bytes(chunk)
            items.append((payload, meta))
            nbytes += len(payload)
        if not items:
            return
        pub = self._pubs.get(topic)
        if pub is None:
            if not self.topics.has_readers(self.host, GLOBAL + topic):
                stats["unread"] += len(items)  # nobody here reads it: nothing is made for it (a remote broker
                return  # cannot make this one keep a topic, a publisher and a queue per name it sends)
            if len(self._pubs) >= MAX_PUBLISHERS:  # the topics nobody reads any more let theirs go
                for name in [t for t in self._pubs if not self.topics.has_readers(self.host, GLOBAL + t)]:
                    gone = self._pubs.pop(name)
                    self._own.discard(gone.id)
                    self.topics.host_close(gone)
            try:
                pub = self.topics.host_publisher(self.host, GLOBAL + topic)
            except (BrokerError, ValueError) as e:
                stats["malformed"] += 1
                log.warning("federation: %s's topic %r refused: %s", origin, topic, e)
                return
            self._pubs[topic] = pub
            self._own.add(pub.id)
        try:
            self.topics.host_publish(pub, items, 0, False, raw=True)  # at once when there is room for all
        except Full:
            for item in items:  # a blocking subscriber is full: one at a time, waiting off this loop (in order)
                try:
                    await self._loop.run_in_executor(None, self.topics.host_publish, pub, [item],
                                                     self.config.inbound_timeout, True, True)
                except (Full, FullTimeout):
                    stats["dropped_in"] += 1
                    nbytes -= len(item[0])
                    continue
                stats["messages_in"] += 1
            stats["bytes_in"] += nbytes
            return
        stats["messages_in"] += len(items)
        stats["bytes_in"] += nbytes

    def _refusal(self, origin: str, kind: str, name: str, action: str) -> str | None:
        """Why broker `origin` may not `action` Global `name` here (None: it may): `accept` names it, or a
        grant names it (broker:ORIGIN); nothing else does, not even a grant to `*`. Kept: grants do not change."""
        if self.config.accepts(origin):
            return None
        key = (origin, kind, name, action)
        if key not in self._refusals:
            if len(self._refusals) > 65536:
                self._refusals.clear()
            peer = Peer(0, "federation", identity=f"broker:{origin}")
            access = self.server.access
            self._refusals[key] = (None if access.allows(peer, kind, name, action) else
                                   f"broker {self.config.name}: " + access.denied(peer, kind, name, action)
                                   + f" or --federation-accept {origin}")
        return self._refusals[key]

    # -- linked services: calls here to other brokers' providers, and theirs to ours -------------------

    def _remote_call(self, name: Any, caller: Any, code: int, blob: bytes, room: int) -> None:
        """LinkBroker.remote, on the server's thread (or a host thread): a call to Global `name` nobody here
        offers. It is published from the loop, at its next step: no task, no thread."""
        loop = self._loop
        if loop.is_closed() or self._stop is None or self._stop.done():
            self.links.remote_answer(caller, Status.DISCONNECTED, "the federation is closed", b"")
            return
        self.stats["calls_out"] += 1
        pending = _Pending(caller, name.name, CALL.pack(code, room) + blob, room,
                           loop.time() + self.config.call_timeout)
        loop.call_soon_threadsafe(self._send_call, pending)

    def _send_call(self, pending: _Pending) -> None:
        """Publish a call, with a reply subject of its own (a token); its answer comes to _replies."""
        loop = self._loop
        self._tokens += 1
        token = str(self._tokens)
        self._pending[token] = pending
        pending.sent = loop.time()
        pending.timer = loop.call_at(pending.deadline, self._finish, token, Status.TIMED_OUT,
                                     f"no answer from Global\\{pending.service} within {self.config.call_timeout:g} s")
        task = loop.create_task(self._nc.publish(_service_subject(self.config.name, pending.service), pending.payload,
                                                 reply=f"{self._inbox}.{token}"))
        self._publishing.add(task)  # (the loop holds its tasks weakly: one waiting on a flush is kept here)
        task.add_done_callback(self._publishing.discard)
        task.add_done_callback(lambda t: self._published(t, token))

    def _resend(self, token: str) -> None:
        pending = self._pending.pop(token, None)
        if pending is None:
            return  # it ended meanwhile (closing, its timeout)
        if pending.timer is not None:
            pending.timer.cancel()
        self._send_call(pending)

    def _published(self, task: asyncio.Task[None], token: str) -> None:
        e = None if task.cancelled() else task.exception()
        if e is not None:  # NATS's: closed, draining, its outbound buffer full
            self._finish(token, Status.DISCONNECTED, f"the federation cannot reach NATS: {type(e).__name__}: {e}")

    def _finish(self, token: str, status: int, text: str = "", writes: bytes = b"") -> None:
        """A call's end: its answer (or error) to its caller here, once."""
        pending = self._pending.pop(token, None)
        if pending is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        if status < 0:
            self.stats["calls_failed"] += 1
        self.links.remote_answer(pending.caller, status, text, writes)

    def _answered(self, token: str, pending: _Pending, data: bytes) -> None:
        """R: the provider's broker's answer (a provider that just went there: publish it again, for
        another provider, while there is time)."""
        if data == _answer(Status.NOT_FOUND, NOT_HERE)[1:] and self._loop.time() < pending.deadline - 0.05:
            pending.provider = None  # (it stays pending meanwhile: closing or its timeout still end it)
            self._loop.call_later(0.02, self._resend, token)  # NATS gives it to another one
            return
        try:
            status, n = ANSWER.unpack_from(data)
            if ANSWER.size + n > len(data):
                raise ValueError("cut short")
        except (ValueError, struct.error) as e:
            self.stats["malformed"] += 1
            self._finish(token, Status.GENERAL, f"an unreadable answer from another broker: {e}")
            return
        text = bytes(data[ANSWER.size:ANSWER.size + n]).decode(errors="replace")
        writes = bytes(data[ANSWER.size + n:])
        if len(writes) > pending.room:
            status, text, writes = Status.OVERFLOW, f"the remote provider's writes take {len(writes)} bytes", b""
        self._finish(token, status, text, writes)

    async def _replies(self, msg: Any) -> None:
        """What comes back on a call's reply subject: T (the broker that took it, when the call runs longer
        than TAKEN_AFTER there), then R (its answer); NATS's own 503 when nobody serves it."""
        token = msg.subject.rsplit(".", 1)[-1]
        pending = self._pending.get(token)
        if pending is None:
            return
        data = msg.data
        if msg.headers and msg.headers.get("Status") == "503":
            self._finish(token, Status.NOT_FOUND, f"nobody offers Global\\{pending.service} on any broker")
        elif data[:1] == b"R":
            self._answered(token, pending, bytes(data[1:]))
        elif data[:1] == b"T":
            try:
                provider, incarnation = bytes(data[1:]).decode().split(" ")
                _check_name(provider)
            except ValueError:
                self.stats["malformed"] += 1
                return
            pending.provider, pending.incarnation = provider, incarnation
            self._seen[provider] = (self._loop.time(), incarnation)  # (it lives: it just took the call)
        else:
            self.stats["malformed"] += 1

    async def _heartbeat(self, msg: Any) -> None:
        parts = msg.subject.split(".")
        if len(parts) != 3:
            return
        who, said = parts[1], bytes(msg.data).decode(errors="replace")
        try:
            _check_name(who)
        except ValueError:
            self.stats["malformed"] += 1
            return
        if who == self.config.name:
            return
        if said.startswith("bye "):
            self._seen.pop(who, None)
            self._gone(who, "its broker stopped")
            return
        before = self._seen.get(who)
        if before is None and len(self._seen) >= MAX_SEEN:
            return  # (bounded: past it, a new name is looked at once one goes)
        self._seen[who] = (self._loop.time(), said)
        if before is not None and before[1] != said:  # it restarted: what its last run took is lost
            self._gone(who, f"broker {who} restarted", incarnation=said)

    async def _beat(self) -> None:
        """Say this broker lives; a broker that stopped saying so for three beats is gone (_gone)."""
        every = self.config.heartbeat
        subject, me = f"{PREFIX}.{self.config.name}.hb", self.incarnation.encode()
        while not self._closing:
            try:
                await self._nc.publish(subject, me)
            except Exception:  # noqa: BLE001 - reconnecting: NATS buffers it, or it is lost, as a beat may be
                pass
            now = self._loop.time()
            for who, (when, _run) in list(self._seen.items()):
                if now - when > 3 * every:
                    del self._seen[who]
                    self._gone(who, f"broker {who} is gone (no heartbeat for {3 * every:g} s)")
            await asyncio.sleep(every)

    def _gone(self, who: str, why: str, incarnation: str | None = None) -> None:
        """Broker `who` stopped, restarted or went silent: the calls it said it took (T) end now with
        DISCONNECTED. One it took in its last TAKEN_AFTER said nothing yet: so each call no broker said it
        took ends too, once UNTAKEN_GRACE has passed since it was sent and still no broker says it has it
        (a live one says so after TAKEN_AFTER)."""
        self.stats["brokers_gone"] += 1
        if self._parts.pop(who, None) is not None:  # a big message it was sending in parts: it never ends
            self.stats["cut_short"] += 1
        for token, p in list(self._pending.items()):
            if p.provider == who and (incarnation is None or p.incarnation != incarnation):
                self._finish(token, Status.DISCONNECTED, f"Global\\{p.service}: {why}")
        now = self._loop.time()
        for token, p in self._pending.items():
            if p.provider is None:
                self._loop.call_at(max(now, p.sent + UNTAKEN_GRACE), self._untaken, token, p, who)

    def _untaken(self, token: str, pending: _Pending, who: str) -> None:
        if self._pending.get(token) is pending and pending.provider is None:
            self._finish(token, Status.DISCONNECTED,
                         f"Global\\{pending.service}: broker {who} went while the call was on its way, and no "
                         f"other broker says it took it")

    async def _offers(self) -> None:
        """Keeps a queue subscription for each Global service offered here, and only those."""
        while not self._closing:
            await self._offers_changed.wait()
            self._offers_changed.clear()
            if self._closing:
                return
            want = self.links.global_offers()
            for name in [n for n in self._served if n not in want]:
                sub = self._served.pop(name)
                try:
                    await sub.unsubscribe()
                except Exception as e:  # noqa: BLE001 - gone with the connection anyway
                    log.debug("unsubscribe %s: %s", name, e)
            for name in sorted(want - set(self._served)):
                subject = f"{PREFIX}.*.s.{name.encode().hex()}"
                self._served[name] = await self._nc.subscribe(subject, queue=QUEUE, cb=self._request)
            try:  # (the NATS server has them once it answered this: only then are they said served)
                await self._nc.flush(timeout=5)
            except Exception:  # noqa: BLE001 - reconnecting: NATS resubscribes them
                pass
            self.stats["services"] = sorted(self._served)

    async def _request(self, msg: Any) -> None:
        """A call from another broker: handed to the provider here at once (no task: the next call is read
        meanwhile); its answer is published when it comes (_respond), with a T first if it takes long."""
        stats = self.stats
        reply = msg.reply
        parts = msg.subject.split(".")
        if not reply:
            stats["malformed"] += 1
            return
        if len(parts) != 4 or parts[2] != "s":
            stats["malformed"] += 1
            await msg.respond(_answer(Status.ARGUMENT, "not a service subject"))
            return
        if self._serving >= MAX_SERVING:
            await msg.respond(_answer(Status.SERVER_BUSY, f"broker {self.config.name} runs {MAX_SERVING} calls already"))
            return
        origin = parts[1]
        data = msg.data
        try:
            service = bytes.fromhex(parts[3]).decode()
            code, room = CALL.unpack_from(data)
        except (ValueError, UnicodeDecodeError, struct.error):
            stats["malformed"] += 1
            await msg.respond(_answer(Status.ARGUMENT, "an unreadable call"))
            return
        why = self._refusal(origin, "service", service, "call")
        if why is not None:
            stats["denied"] += 1
            await msg.respond(_answer(Status.PERMISSION_DENIED, why))
            return
        if room > self.server.max_frame:
            await msg.respond(_answer(Status.ARGUMENT, f"room for {room} bytes of writes: more than a frame"))
            return
        stats["calls_in"] += 1
        if service not in self.links.global_offers():  # it went: another provider takes it (see _answered)
            await msg.respond(_answer(Status.NOT_FOUND, NOT_HERE))
            return
        loop = self._loop
        self._serving += 1
        # a quick answer needs no T; a call still running after TAKEN_AFTER says who has it (T), so that its
        # caller's broker watches this one's heartbeats from then on
        taken = loop.call_later(TAKEN_AFTER, self._publish, reply, f"T{self.config.name} {self.incarnation}".encode())
        answered = [False]  # (once: the provider's answer, or the time out)
        timers = [taken]
        timers.append(loop.call_later(self.config.call_timeout, self._respond, reply, timers, answered,
                                      Status.TIMED_OUT, "the provider did not answer in time", b""))

        def done(status: int, text: str, written: bytes) -> None:  # (the thread that answers: the server's)
            loop.call_soon_threadsafe(self._respond, reply, timers, answered, status, text, written)
        self.links.host_call_packed(self.host, GLOBAL + service, code, bytes(data[CALL.size:]), room, done)

    def _respond(self, reply: str, timers: list[asyncio.TimerHandle], answered: list[bool], status: int, text: str,
                 written: bytes) -> None:
        """A call from another broker answered (or timed out): once, on the loop."""
        if answered[0] or self._loop.is_closed():
            return
        answered[0] = True
        for timer in timers:  # (T, and the time out)
            timer.cancel()
        self._serving -= 1
        self._publish(reply, _answer(status, text, written))

    def _publish(self, subject: str, payload: bytes) -> None:
        """Publish from a callback on the loop (a task's first step runs in the same step of the loop)."""
        if self._nc is None or self._nc.is_closed:
            return
        task = self._loop.create_task(self._nc.publish(subject, payload))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)
        task.add_done_callback(_logged)

    def snapshot(self) -> dict[str, Any]:
        return dict(self.stats, servers=list(self.config.servers), accept=sorted(self.config.accepted),
                    outbound_queued=len(self._tap.queue) if self._tap is not None else 0,
                    brokers=sorted(self._seen)[:64])
