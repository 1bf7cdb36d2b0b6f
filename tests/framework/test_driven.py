"""The threaded server's own asyncio loop (Server.asyncio_loop, framework/driven.py): callbacks, timers,
tasks and sockets run on the server's thread, the server keeps serving its sessions meanwhile, and
nothing is left when it stops."""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

import shmbroker as broker
from shmbroker._errors import StateError


def _wait(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("not within the time")
        time.sleep(0.005)


def test_callbacks_timers_tasks_and_sockets_run_on_the_server_thread(tmp_path):
    srv = broker.Server(str(tmp_path / "s.sock"))
    with pytest.raises(StateError):
        srv.asyncio_loop()  # not set up yet
    threads_before = {t.ident for t in threading.enumerate()}
    srv.start()
    try:
        loop = srv.asyncio_loop()
        assert srv.asyncio_loop() is loop
        seen: dict[str, object] = {}
        server_thread = srv._thread.ident

        def soon() -> None:
            seen["soon"] = threading.get_ident()

        loop.call_soon_threadsafe(soon)
        t0 = time.monotonic()
        loop.call_soon_threadsafe(lambda: loop.call_later(0.2, lambda: seen.setdefault("later", time.monotonic() - t0)))
        a, b = socket.socketpair()

        async def echo() -> bytes:  # a task that waits on a socket of this loop
            reader, writer = await asyncio.open_connection(sock=a)
            data = await reader.readexactly(5)
            writer.write(data.upper())
            await writer.drain()
            writer.close()
            seen["task"] = threading.get_ident()
            return data

        fut = asyncio.run_coroutine_threadsafe(echo(), loop)
        b.sendall(b"hello")
        b.settimeout(10)
        assert b.recv(5) == b"HELLO"
        assert fut.result(10) == b"hello"
        _wait(lambda: "later" in seen)
        assert seen["soon"] == seen["task"] == server_thread
        assert seen["later"] >= 0.2  # a timer is not run early (the loop never sleeps past it)
        b.close()
        # the sessions are served meanwhile, on the same thread
        with broker.connect(str(tmp_path / "s.sock")) as s, s.publisher("t") as pub, s.subscriber("t") as sub:
            pub.publish(b"x")
            assert bytes(sub.receive(timeout=5)) == b"x"
        # no thread was made for it
        assert {t.ident for t in threading.enumerate()} - threads_before == {server_thread}
    finally:
        srv.stop()
    assert loop.is_closed()


def test_a_failing_callback_is_logged_and_the_server_goes_on(tmp_path, caplog):
    srv = broker.Server(str(tmp_path / "s.sock"))
    srv.start()
    try:
        loop = srv.asyncio_loop()
        ran = threading.Event()

        def boom() -> None:
            raise RuntimeError("a callback's bug")
        loop.call_soon_threadsafe(boom)
        loop.call_soon_threadsafe(ran.set)
        assert ran.wait(10)
        with broker.connect(str(tmp_path / "s.sock")) as s, s.publisher("t") as pub, s.subscriber("t") as sub:
            pub.publish(b"y")
            assert bytes(sub.receive(timeout=5)) == b"y"
    finally:
        srv.stop()


def test_tasks_left_running_are_cancelled_when_the_server_stops(tmp_path):
    srv = broker.Server(str(tmp_path / "s.sock"))
    srv.start()
    cancelled = threading.Event()
    try:
        loop = srv.asyncio_loop()

        async def forever() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise
        asyncio.run_coroutine_threadsafe(forever(), loop)
        time.sleep(0.1)
    finally:
        srv.stop()
    assert cancelled.is_set()
    assert loop.is_closed()
