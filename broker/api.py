"""The Python API: the framework and the built-in services put together (pyzmq's sugar over its backend).

The framework (broker/framework) knows no service: a Server dispatches reserved codes to the services
it is given, and a ClientSession sends frames. Here, broker.Server is a Server with the built-in
services (BUILTIN), and broker.connect() makes a ClientSession with their calls: publisher(),
subscriber(), offer(), link(), topics(). A new built-in service is a folder under broker/services
and a line in BUILTIN (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from broker.framework import client as _client
from broker.framework import server as _server
from broker.framework.service import Service
from broker.services.links.broker import LinkBroker
from broker.services.links.client import open_link, open_offer
from broker.services.topics.broker import TopicBroker
from broker.services.topics.client import list_topics, open_publisher, open_subscriber

BUILTIN: tuple[type[Service], ...] = (TopicBroker, LinkBroker)


class Server(_server.Server):
    __doc__ = _server.Server.__doc__

    def __init__(self, address: str, session: Any = _server.Session, *,
                 services: tuple[type[Service], ...] = BUILTIN, **options: Any) -> None:
        super().__init__(address, session, services=services, **options)


# what help() and an editor show: the framework's whole signature, with the built-in services as the default
_signature = inspect.signature(_server.Server.__init__)
Server.__init__.__signature__ = _signature.replace(  # type: ignore[attr-defined]
    parameters=[p.replace(default=BUILTIN) if p.name == "services" else p for p in _signature.parameters.values()])


class ClientSession(_client.ClientSession):
    __doc__ = _client.ClientSession.__doc__

    def publisher(self, topic: str, *, history: int = 0, block_timeout: float = 5.0,
                  ring_capacity: int | None = None) -> Any:
        """A publisher on `topic` (a sub-session; broker/services/topics/client.py): publish(), publish_many().
        history: the topic keeps this many of the last messages for subscribers that join later;
        block_timeout: how long a publish may wait for room (at the server for a blocking
        subscriber's, or in its ring); ring_capacity: bytes of the broadcast ring a publisher on a
        shared-memory session writes (a power of two, 64 KiB to 256 MiB; 4 MiB by default)."""
        return open_publisher(self, topic, history=history, block_timeout=block_timeout,
                              ring_capacity=ring_capacity)

    def subscriber(self, topic: str, *, capacity: int = 1024, policy: str = "block", history: int = 0,
                   buffer_size: int = 1 << 20, batch: int = 1024) -> Any:
        """A subscriber on `topic` (a sub-session; broker/services/topics/client.py): receive(), receive_many(),
        iteration. capacity: messages its queue at the server holds; policy for a full queue:
        "block" (publishers wait), "drop" (the oldest is dropped and counted in `lost`) or
        "disconnect" (this subscriber is closed: Disconnected); history: up to this many of the
        topic's last messages first. It keeps one FETCH outstanding: one of the session's slots."""
        return open_subscriber(self, topic, capacity=capacity, policy=policy, history=history,
                               buffer_size=buffer_size, batch=batch)

    def offer(self, name: str, handler: Callable[[Any], Any], *, max_call: int = 1 << 20) -> Any:
        """Offer a named service (broker/services/links): other clients call it through session.link(name);
        each call runs handler(call) -> status in this client's serve_one() / serve_forever()."""
        return open_offer(self, name, handler, max_call)

    def link(self, name: str) -> Any:
        """A link to the service offered as `name`: send_receive() as a session's."""
        return open_link(self, name)

    def topics(self) -> list[dict[str, Any]]:
        """The server's topics: publishers, subscribers (with their policies, queues, losses), counters."""
        return list_topics(self)


@functools.wraps(_client.connect)
def connect(address: str, *args: Any, **options: Any) -> ClientSession:
    options.setdefault("session_class", ClientSession)
    return _client.connect(address, *args, **options)  # type: ignore[return-value]


_signature = inspect.signature(_client.connect)
connect.__signature__ = _signature.replace(  # type: ignore[attr-defined]
    parameters=[p.replace(default=ClientSession) if p.name == "session_class" else p
                for p in _signature.parameters.values()])
