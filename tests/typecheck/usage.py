"""The public API as a user's code uses it, checked by mypy --strict (tests/test_typing.py).

Never run, only checked: assert_type(call, T) fails the check unless the call's type is exactly T, Any
included, so a call that goes back to returning Any, or to another type, fails it; a value assigned to
an annotated variable must fit it. What the calls do is the README's (tests/test_readme.py runs it)."""
from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any, Iterator

import numpy as np
import numpy.typing as npt
from typing_extensions import assert_type

import shmbroker as broker

Value = bytes | np.ndarray  # a message's value: bytes, or a numpy array for an array message


class Upper(broker.Session):
    @broker.function(1)
    def upper(self, m: broker.Message) -> None:
        data = assert_type(m.read(0), bytes)
        m.write(1, data.upper())
        m.complete(0)

    @broker.function(2)
    def add(self, m: broker.Message) -> None:
        total = assert_type(m.integer(0), int) + m.integer(1)
        text = assert_type(m.text(0), str)
        who = assert_type(m.peer, broker.Peer)
        assert_type(m.session, broker.Session)
        m.complete(total + len(text) + (who.pid or 0))


def handler(call: broker.LinkedCall) -> int:
    assert_type(call.read(0), bytes)
    assert_type(call.integer(1), int)
    call.write(1, call.read(0).upper())
    return 0


def sessions() -> None:
    policy = broker.Policy(range(1, 3), broker.SAME_USER)
    with broker.Server("typing-usage", Upper, policies=[policy]) as srv:
        assert_type(srv, broker.Server)
        srv.publish("ticks", b"t")
        with srv.publisher("ticks") as host_publisher:
            host_publisher.publish(b"t")
        events = assert_type(srv.events(timeout=0), Iterator[broker.SessionEvent])
        assert_type(next(events).kind, str)
        with broker.connect("typing-usage", slots=8) as session:
            assert_type(session, broker.ClientSession)
            out = broker.Buffer(64)
            assert_type(session.send_receive(1, b"hello", out), int)
            assert_type(out.value, bytes)
            assert_type(session.call(1, b"hello"), bytes)
            fut = assert_type(session.send(1, b"async", broker.Buffer(64)), Future[int])
            assert_type(fut.result(5), int)
            with broker.SubSession.open(session, 2) as sub_session:
                assert_type(sub_session, broker.SubSession)
                assert_type(sub_session.send_receive(1), int)
            assert_type(broker.functions(session, Upper), broker.Functions)


def topics(session: broker.ClientSession) -> None:
    with session.publisher("prices", history=4) as publisher, session.subscriber("prices", policy="drop") as sub:
        assert_type(publisher, broker.Publisher)
        assert_type(sub, broker.Subscriber)
        assert_type(session.publisher("prices"), broker.Publisher)
        assert_type(session.subscriber("prices"), broker.Subscriber)
        publisher.publish(b"tick")
        publisher.publish(np.arange(8, dtype=np.float64))
        assert_type(publisher.publish_many([b"a", b"b"]), int)
        assert_type(publisher.loan(16), memoryview)
        publisher.abort()
        assert_type(publisher.loan_array(4, np.float64), npt.NDArray[np.float64])
        assert_type(publisher.loan_array((2, 2)), npt.NDArray[np.uint8])
        assert_type(publisher.loan_array(4, "<f4"), npt.NDArray[Any])  # a dtype by name: its scalar unknown
        publisher.abort()
        assert_type(sub.receive(timeout=1.0), Value)
        assert_type(sub.receive(timeout=1.0, out=bytearray(64)), memoryview | np.ndarray)
        message = assert_type(sub.receive_message(timeout=1.0), broker.Received)
        assert_type(message.seq, int)
        assert_type(message.value, Value)
        assert_type(sub.receive_view(timeout=0), memoryview | np.ndarray)
        sub.release()
        assert_type(sub.receive_many(16, timeout=0), list[Value])
        assert_type(sub.receive_array(timeout=0), np.ndarray)
        for item in sub:
            assert_type(item, Value)
        assert_type(session.topics(), list[dict[str, Any]])  # JSON


def links(session: broker.ClientSession, stop: threading.Event) -> None:
    with session.offer("upper", handler) as offer, session.link("upper") as link:
        assert_type(offer, broker.Offer)
        assert_type(link, broker.Link)
        assert_type(session.offer("upper", handler), broker.Offer)
        assert_type(session.link("upper"), broker.Link)
        assert_type(offer.serve_one(timeout=0), bool)
        out = broker.Buffer(64)
        assert_type(link.send_receive(1, b"abc", out), int)
        assert_type(link.send(1, b"abc", broker.Buffer(64)), Future[int])
        offer.serve_forever(stop, 0.05)


def rings() -> None:
    with broker.Ring.create("typing-usage", capacity=1 << 16) as tx, broker.Ring.open("typing-usage") as rx:
        assert_type(tx, broker.Ring)
        assert_type(rx, broker.Ring)
        tx.send(b"hello")
        tx.send(np.arange(8, dtype=np.float64))
        claimed = assert_type(tx.claim(8), memoryview)
        claimed[:5] = b"built"
        tx.commit(5)
        assert_type(tx.claim_array(4, np.int32), npt.NDArray[np.int32])
        tx.abort()
        assert_type(rx.recv(timeout=1.0), bytes)
        assert_type(rx.recv_array(np.float64), npt.NDArray[np.float64])
        assert_type(rx.recv_array(np.dtype(np.int16)), npt.NDArray[np.int16])
        assert_type(rx.recv_array(copy=False), npt.NDArray[np.uint8])
        rx.release()
        assert_type(rx.recv_view(timeout=0), memoryview)
        rx.release()
        assert_type(rx.recv_many(), list[bytes])
        for record in rx:
            assert_type(record, bytes)
    with broker.Broadcast.create("typing-bcast", capacity=1 << 16) as btx, broker.Broadcast.open("typing-bcast") as brx:
        assert_type(btx, broker.Broadcast)
        assert_type(brx, broker.Broadcast)
        assert_type(brx.lost, int)
        btx.send(b"x")
        assert_type(brx.recv(timeout=0), bytes)


def key_value(session: broker.ClientSession) -> None:
    with broker.KeyValueClient(session).open("table") as table:
        assert_type(table, broker.Table)
        assert_type(table.put("k", b"v"), bool)
        assert_type(table.get("k"), bytes)
        assert_type(table.keys(), list[bytes])
    assert_type(broker.EchoClient(session).echo(b"x"), bytes)


async def asynchronous(session: broker.ClientSession) -> None:
    assert_type(await session.asend_receive(1, b"hello", broker.Buffer(64)), int)


def errors() -> None:
    try:
        rings()
    except broker.Full as e:
        full: broker.BrokerError = e  # Full is a BrokerError and a queue.Full
        assert full
    except broker.EmptyTimeout as e:
        timed_out: TimeoutError = e
        assert timed_out
