"""The Python API: the framework and the built-in services put together (pyzmq's sugar over its backend).

The framework (src/shmbroker/framework) knows no service: a Server dispatches reserved codes to the services
it is given, and a ClientSession sends frames. Here, broker.Server is a Server with the built-in
services (BUILTIN), and broker.connect() makes a ClientSession with their calls: publisher(),
subscriber(), offer(), link(), topics(). A new built-in service is a folder under src/shmbroker/services
and a line in BUILTIN (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import os
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from shmbroker._errors import ServerNotFound, ServiceError
from shmbroker.framework.session import Peer, Session
from shmbroker.transport.identity import local_facts
from shmbroker.transport import address as _address

from shmbroker.framework import client as _client
from shmbroker.framework import server as _server
from shmbroker.framework.service import Service
from shmbroker.federation import Federation, FederationLink
from shmbroker.federation import metrics as federation_metrics
from shmbroker.services.links.broker import LinkBroker
from shmbroker.protocol.serial import serializer as _serializer
from shmbroker.services.links.client import (Link, LinkedCall, Offer, aopen_link, aopen_offer, open_link, open_offer,
                                          serialized_handler)
from shmbroker.services.topics.broker import TopicBroker
from shmbroker.services.topics.client import (Publisher, Subscriber, alist_topics, aopen_publisher, aopen_subscriber,
                                            list_topics, open_publisher, open_subscriber)

if TYPE_CHECKING:
    from typing_extensions import Self  # (typing's own from Python 3.11)

BUILTIN: tuple[type[Service], ...] = (TopicBroker, LinkBroker)


class _HostConn:
    """The process that embeds the server, as the built-in services see a connection: its own peer
    (connection id 0, this process's kernel facts: its names are its own login session's), no
    session, no socket, no rings."""

    session = None
    session_key = None
    on_rings = False
    ended = False

    def __init__(self) -> None:
        self.peer = Peer(0, "unix", os.getpid(), os.geteuid(), os.getegid(), facts=local_facts())

    def pass_fd(self, name: str, fd: int) -> bool:
        return False


class _Closing:
    """close() at the end of a with block."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HostPublisher(_Closing):
    """A publisher of the host process (Server.publisher): publish() puts the message straight into the
    subscribers' queues, with no socket and no copy into a ring."""

    def __init__(self, server: "Server", topic: str, history: int, block_timeout: float,
                 serializer: Any = None) -> None:
        self._server, self.topic = server, topic
        self.serializer = _serializer(serializer)
        self._topics: TopicBroker = server.service("topics")
        self._pub = self._topics.host_publisher(server._host(), topic, history, block_timeout)

    def publish(self, data: Any, *, timeout: float | None = None) -> None:
        """As a client's publish(): bytes, any bytes-like object or a numpy array (an object, with a
        serializer). Where a blocking subscriber is full it waits up to `timeout` (block_timeout) for
        room, then FullTimeout; from the server's own loop (a service), which makes that room, Full at
        once."""
        if self.serializer is not None:
            data = self.serializer.encode(data)
        self._topics.host_publish(self._pub, [data], timeout, self._server._may_wait())

    def publish_many(self, messages: Any, *, timeout: float | None = None) -> int:
        items = list(messages) if self.serializer is None else [self.serializer.encode(m) for m in messages]
        self._topics.host_publish(self._pub, items, timeout, self._server._may_wait())
        return len(items)

    def close(self) -> None:
        self._topics.host_close(self._pub)


class HostOffer(_Closing):
    """A linked service of the host process (Server.offer): its handler runs for each call at once."""

    def __init__(self, server: "Server", name: str, handler: Callable[..., Any], serializer: Any = None) -> None:
        self._links: LinkBroker = server.service("services")
        self.name = name
        self._offer = self._links.host_offer(server._host(), name, serialized_handler(handler, serializer))

    def close(self) -> None:
        self._links.host_close(self._offer)


class HostLink(_Closing):
    """The host process's link to a linked service (Server.link): send_receive() as a session's."""

    def __init__(self, server: "Server", name: str) -> None:
        self._server, self.name = server, name
        self._links: LinkBroker = server.service("services")

    def send_receive(self, code: int, *args: Any, timeout: float | None = 10.0) -> int:
        """Call it: the status (the provider's writes applied to Buffer and bytearray arguments), or the
        typed error (ServiceError with the status and text; DISCONNECTED if its provider went, NOT_FOUND
        if nobody offers it, TIMED_OUT after `timeout`)."""
        status, text, writes = self._links.host_call(self._server._host(), self.name, code, args, _client.Buffer,
                                                     timeout, self._server._may_wait())
        for i, data in writes.items():
            target = args[i] if i < len(args) else None
            if isinstance(target, _client.Buffer):
                target.value = data
            elif isinstance(target, bytearray):
                target[:] = data
        if status < 0:
            raise ServiceError(status, text)
        return status

    def call(self, code: int, *args: Any, timeout: float | None = 10.0, serializer: Any = None,
             reply_size: int = 1 << 20) -> Any:
        """As a client's link.call(): the reply as bytes, or objects both ways with a serializer."""
        if len(args) > 3:
            raise TypeError("call() takes at most three arguments: the fourth carries the reply")
        ser = _serializer(serializer)
        if ser is not None:
            args = tuple(ser.encode(a) for a in args)
        out = _client.Buffer(reply_size)
        self.send_receive(code, *args, out, timeout=timeout)
        return out.value if ser is None else ser.decode(out.value)

    def close(self) -> None:
        """Nothing to give back: the host holds no sub-session."""


class Server(_server.Server):
    __doc__ = _server.Server.__doc__

    def __init__(self, address: str, session: Any = Session, *,
                 services: tuple[type[Service], ...] = BUILTIN, federation: "Federation | str | None" = None,
                 **options: Any) -> None:
        if isinstance(federation, str):
            federation = Federation(federation)
        if federation is not None and not isinstance(federation, Federation):
            raise TypeError(f"federation is a broker.Federation or a nats:// URL, not {federation!r}")
        super().__init__(address, session, services=services, **options)
        self._host_conn: _HostConn | None = None
        self._host_pubs: dict[str, HostPublisher] = {}
        self.federation_config = federation
        self.federation: FederationLink | None = None

    # -- the federation (src/shmbroker/federation): Global\ names across hosts, over NATS ------------------

    def _join(self) -> None:
        if self.federation_config is not None and self.federation is None:
            link = FederationLink(self, self._host(), self.federation_config)
            link.start()
            self.federation = link

    def _leave(self) -> None:
        link, self.federation = self.federation, None
        if link is not None:
            link.close()

    def _setup(self) -> None:
        super()._setup()
        try:
            self._join()
        except BaseException:
            self._shutdown()
            raise

    async def serve_async(self) -> None:
        """As the framework's; with a federation, it runs on this loop too (its NATS connection a task here)."""
        link = None
        if self.federation_config is not None and self.federation is None:
            link = FederationLink(self, self._host(), self.federation_config)
            await link.astart()
            self.federation = link
        try:
            await super().serve_async()  # (its end, _shutdown, stops the federation: _leave)
        finally:
            self._leave()
            if link is not None:
                await link.aclose()

    def _exporters(self) -> list[tuple[str, Callable[[Any, Any], None]]]:
        return super()._exporters() + [("federation", federation_metrics)]

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        if self.federation is not None:
            out["federation"] = self.federation.snapshot()
        return out

    # -- the host process itself (an embedder): topics and linked services without being a client ----

    def _host(self) -> _HostConn:
        if self._host_conn is None:
            self._host_conn = _HostConn()
        return self._host_conn

    def _may_wait(self) -> bool:
        """May this thread wait for the server's loop? Not the loop's own thread (threaded or asyncio)."""
        if self._thread is not None and threading.current_thread() is self._thread:
            return False
        if self._aloop is not None:
            try:
                return asyncio.get_running_loop() is not self._aloop
            except RuntimeError:
                return True
        return True

    def publisher(self, topic: str, *, history: int = 0, block_timeout: float = 5.0,
                  serializer: Any = None) -> HostPublisher:
        """A publisher of this process on `topic` (its namespace: `Global\\x`, or this process's own login
        session's): its messages go into the subscribers' queues at once, with no socket to itself;
        with a serializer, publish() takes objects."""
        return HostPublisher(self, topic, history, block_timeout, serializer)

    def publish(self, topic: str, data: Any, *, timeout: float | None = None) -> None:
        """publisher(topic).publish(data), its publisher kept for the next publish on the topic (stop()
        closes them)."""
        pub = self._host_pubs.get(topic)
        if pub is None:
            pub = self._host_pubs[topic] = self.publisher(topic)
        pub.publish(data, timeout=timeout)

    def offer(self, name: str, handler: Callable[..., Any], *, serializer: Any = None) -> HostOffer:
        """Offer a linked service from this process: handler(call) -> status runs for each call at once
        (a client's call: in the server's loop, so keep it short), call being what a client's offer's
        handler gets (read, write, integer...); with a serializer, handler(call, *objects) -> an
        object, as a client's offer."""
        return HostOffer(self, name, handler, serializer)

    def link(self, name: str) -> HostLink:
        """A link of this process to the service offered as `name`, by a client or by this process."""
        return HostLink(self, name)

    def _shutdown(self) -> None:
        self._leave()
        for pub in self._host_pubs.values():
            pub.close()
        self._host_pubs.clear()
        super()._shutdown()


# what help() and an editor show: the framework's whole signature, with the built-in services as the default
_signature = inspect.signature(_server.Server.__init__)
Server.__init__.__signature__ = _signature.replace(  # type: ignore[attr-defined]
    parameters=[p.replace(default=BUILTIN) if p.name == "services" else p for p in _signature.parameters.values()])


class ClientSession(_client.ClientSession):
    __doc__ = _client.ClientSession.__doc__

    def publisher(self, topic: str, *, history: int = 0, block_timeout: float = 5.0,
                  ring_capacity: int | None = None, serializer: Any = None) -> Publisher:
        """A publisher on `topic` (a sub-session; src/shmbroker/services/topics/client.py): publish(), publish_many().
        history: the topic keeps this many of the last messages for subscribers that join later;
        block_timeout: how long a publish may wait for room (at the server for a blocking
        subscriber's, or in its ring); ring_capacity: bytes of the broadcast ring a publisher on a
        shared-memory session writes (a power of two, 64 KiB to 256 MiB; 4 MiB by default);
        serializer: publish() takes objects, encoded by it (a name of broker.SERIALIZERS, or an
        object with encode and decode; default None: bytes and numpy arrays as they are)."""
        return open_publisher(self, topic, history=history, block_timeout=block_timeout,
                              ring_capacity=ring_capacity, serializer=serializer)

    def subscriber(self, topic: str, *, capacity: int = 1024, policy: str = "block", history: int = 0,
                   buffer_size: int = 1 << 20, batch: int = 1024, serializer: Any = None) -> Subscriber:
        """A subscriber on `topic` (a sub-session; src/shmbroker/services/topics/client.py): receive(), receive_many(),
        iteration. capacity: messages its queue at the server holds; policy for a full queue:
        "block" (publishers wait), "drop" (the oldest is dropped and counted in `lost`) or
        "disconnect" (this subscriber is closed: Disconnected); history: up to this many of the
        topic's last messages first. It keeps one FETCH outstanding: one of the session's slots.
        serializer: receive() gives objects decoded by it (DecodeError, for that message alone,
        when a publisher's bytes are not what it reads)."""
        return open_subscriber(self, topic, capacity=capacity, policy=policy, history=history,
                               buffer_size=buffer_size, batch=batch, serializer=serializer)

    def offer(self, name: str, handler: Callable[..., Any], *, max_call: int = 1 << 20,
              serializer: Any = None) -> Offer:
        """Offer a named service (src/shmbroker/services/links): other clients call it through session.link(name);
        each call runs handler(call) -> status in this client's serve_one() / serve_forever().
        serializer (a name of broker.SERIALIZERS, or an object with encode and decode): handler(call,
        *objects) -> an object instead, the caller's link.call(code, *objects, serializer=) reply."""
        return open_offer(self, name, handler, max_call, serializer)

    def link(self, name: str) -> Link:
        """A link to the service offered as `name`: send_receive() as a session's, and call() for a
        reply as bytes or, with a serializer, objects both ways."""
        return open_link(self, name)

    def topics(self) -> list[dict[str, Any]]:
        """The server's topics: publishers, subscribers (with their policies, queues, losses), counters."""
        return list_topics(self)

    # -- asyncio: the same, awaited on the running loop (broker.aconnect) ------------------------------

    async def apublisher(self, topic: str, *, history: int = 0, block_timeout: float = 5.0,
                         ring_capacity: int | None = None) -> Any:
        """publisher() for asyncio: its apublish() never blocks the loop."""
        return await aopen_publisher(self, topic, history=history, block_timeout=block_timeout,
                                     ring_capacity=ring_capacity)

    async def asubscriber(self, topic: str, *, capacity: int = 1024, policy: str = "block", history: int = 0,
                          buffer_size: int = 1 << 20, batch: int = 1024) -> Any:
        """subscriber() for asyncio: `await sub.areceive()`, `async for message in sub`."""
        return await aopen_subscriber(self, topic, capacity=capacity, policy=policy, history=history,
                                      buffer_size=buffer_size, batch=batch)

    async def aoffer(self, name: str, handler: Callable[[Any], Any], *, max_call: int = 1 << 20) -> Any:
        """offer() for asyncio: serve it with `await offer.aserve_forever()` (the handler may be async def)."""
        return await aopen_offer(self, name, handler, max_call)

    async def alink(self, name: str) -> Any:
        """link() for asyncio: `await link.asend_receive(code, ...)`."""
        return await aopen_link(self, name)

    async def atopics(self) -> list[dict[str, Any]]:
        """topics() for asyncio."""
        return await alist_topics(self)


EXIT_IN_USE = 3  # what `shmbroker serve` returns when another server is live at its address (src/shmbroker/cli.py)


def start_server(address: str, start: "bool | Sequence[str] | Callable[[str], Any]" = True,
                 timeout: float = 10.0) -> None:
    """Start a server at `address` as connect(start=) does, and return once it was started or another
    server is live there (a start-up race lost is not an error: the winner serves).

    start: True runs `python -m shmbroker serve --address ADDRESS --detach` (the built-in services,
    in the background, in a session of its own); a list of strings is a command that starts one and
    returns; a callable is called with the address."""
    if callable(start):
        start(address)
        return
    if start is True:
        cmd = [sys.executable, "-m", "shmbroker", "serve", "--address", address, "--detach",
               "--detach-timeout", str(timeout)]
    elif isinstance(start, (list, tuple)) and start and all(isinstance(a, str) for a in start):
        cmd = list(start)
    else:
        raise TypeError(f"start must be True, a command (a list of strings) or a callable, not {start!r}")
    try:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout + 5)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ServerNotFound(f"no server at {address}, and starting one failed: {e}") from None
    if done.returncode not in (0, EXIT_IN_USE):
        said = (done.stderr or done.stdout).decode(errors="replace").strip()
        raise ServerNotFound(f"no server at {address}, and `{' '.join(cmd)}` could not start one "
                             f"(exit {done.returncode})" + (f": {said[-2000:]}" if said else ""))


@functools.wraps(_client.connect)
def connect(address: str, *args: Any, start: "bool | Sequence[str] | Callable[[str], Any] | None" = None,
            start_timeout: float = 10.0, **options: Any) -> ClientSession:
    options.setdefault("session_class", ClientSession)
    if start is None or start is False:
        return _client.connect(address, *args, **options)  # type: ignore[return-value]
    if not _address.parse(address).is_unix:
        raise ValueError(f"start= starts a server on this host: give a name or a Unix socket path, not {address!r}")
    try:
        return _client.connect(address, *args, **options)  # type: ignore[return-value]
    except ServerNotFound:
        pass
    deadline = time.monotonic() + start_timeout
    start_server(address, start, start_timeout)
    while True:  # the winner of a race may still be binding its address
        try:
            return _client.connect(address, *args, **options)  # type: ignore[return-value]
        except ServerNotFound:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


_signature = inspect.signature(_client.connect)
connect.__signature__ = _signature.replace(  # type: ignore[attr-defined]
    parameters=[p.replace(default=ClientSession) if p.name == "session_class" else p
                for p in _signature.parameters.values()] + [
        inspect.Parameter("start", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("start_timeout", inspect.Parameter.KEYWORD_ONLY, default=10.0)])
connect.__doc__ = (_client.connect.__doc__ or "") + """

    start (on this host: a name or a Unix socket path): when no server answers, start one and connect
    to it, as a Symbian client starts its server. True runs `shmbroker serve --address ADDRESS --detach`
    (the built-in services, in the background); a list of strings is a command that starts one and
    returns; a callable is called with the address. When many clients start one at once, exactly one
    server wins the address (its lock, src/shmbroker/transport/address.py) and every client connects to it.
    start_timeout: seconds to wait for it."""


async def aconnect(address: str, *args: Any, start: "bool | Sequence[str] | Callable[[str], Any] | None" = None,
                   start_timeout: float = 10.0, **options: Any) -> ClientSession:
    """connect() for asyncio, with the same arguments: `async with await broker.aconnect(address) as s`.
    The connection and its handshake go through the running loop, never blocking it, so a server that
    serves on the same loop (serve_async) answers it; the session's async calls (asend_receive, acall,
    apublisher, asubscriber, alink, aclose...) are read by this loop. start=: as connect's (the
    starting command runs in a thread, awaited: it is a process to wait for)."""
    options.setdefault("session_class", ClientSession)
    if start is None or start is False:
        return await _client.aconnect(address, *args, **options)  # type: ignore[return-value]
    if not _address.parse(address).is_unix:
        raise ValueError(f"start= starts a server on this host: give a name or a Unix socket path, not {address!r}")
    try:
        return await _client.aconnect(address, *args, **options)  # type: ignore[return-value]
    except ServerNotFound:
        pass
    loop = asyncio.get_running_loop()
    deadline = loop.time() + start_timeout
    await asyncio.to_thread(start_server, address, start, start_timeout)
    while True:
        try:
            return await _client.aconnect(address, *args, **options)  # type: ignore[return-value]
        except ServerNotFound:
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(0.01)
