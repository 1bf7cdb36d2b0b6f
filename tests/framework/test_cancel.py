"""Cancel end to end (issue 16, item 6): a cancelled future or a timed-out call reaches the service
(Message.cancelled, on_cancel, an async service's task cancelled), the request completes with
CANCELLED, and its slot is free: cancelled calls to a hung service never use up the slots."""
from __future__ import annotations

import asyncio
import threading

import pytest

import shmbroker as broker
from shmbroker import connect

from tests.helpers import wait_for

HANG, HANG_WITH_CALLBACK, ECHO_LEN, HANG_ASYNC = 1, 2, 3, 4


class Hung(broker.Session):
    """A service that never completes HANG by itself."""

    held: list[broker.Message] = []
    told: list[tuple[int, bool]] = []  # (request's argument, cancelled) as the callback saw it

    def service(self, m: broker.Message) -> None:
        if m.code == HANG:
            Hung.held.append(m)
        elif m.code == HANG_WITH_CALLBACK:
            Hung.held.append(m)

            def stop(msg: broker.Message) -> None:
                Hung.told.append((msg.integer(0), msg.cancelled))
                msg.complete(broker.Status.CANCELLED, "stopped on the client's word")

            m.on_cancel(stop)
        elif m.code == ECHO_LEN:
            m.complete(len(m.read(0)))
        else:
            super().service(m)


@pytest.fixture(params=["socket", "shm", "tcp"])
def hung(request, tmp_path):
    Hung.held, Hung.told = [], []
    srv = broker.Server(str(tmp_path / "hung"), Hung, tcp="tcp://127.0.0.1:0",
                        shm_policy="strict" if request.param == "shm" else "off")
    with srv:
        srv.address = (f"tcp://127.0.0.1:{srv.bound[1][1]}" if request.param == "tcp"
                       else str(tmp_path / "hung"))
        srv.transport = request.param
        yield srv


def test_cancelled_futures_never_use_up_the_slots(hung):
    with connect(hung.address, slots=4) as s:
        assert s.transport == ("shared memory" if hung.transport == "shm" else "socket")
        for round_ in range(10):  # 40 requests the service never completes, 4 slots
            futs = [s.send(HANG, round_) for _ in range(4)]
            with pytest.raises(broker.ServerBusy):
                s.send(HANG, round_)  # all four slots are held
            assert all(f.cancel() for f in futs)
            assert all(f.cancelled() for f in futs)
        assert s.send_receive(ECHO_LEN, b"abc") == 3  # the session works on
        wait_for(lambda: len(Hung.held) == 40)
        assert all(m.cancelled and m.completed for m in Hung.held)
        Hung.held[0].complete(5)  # the service's late answer is dropped, no error
        (me,) = [x for x in hung.sessions() if x["peer"].connection_id == s.connection_id]
        assert me["cancels"] == 40


def test_a_cancel_reaches_the_services_callback(hung):
    with connect(hung.address, slots=2) as s:
        f = s.send(HANG_WITH_CALLBACK, 7)
        wait_for(lambda: len(Hung.held) == 1)
        assert not Hung.held[0].cancelled
        assert f.cancel()
        wait_for(lambda: Hung.told == [(7, True)])
        with pytest.raises(broker.Timeout):  # a synchronous call that times out cancels too
            s.send_receive(HANG_WITH_CALLBACK, 8, timeout=0.2)
        wait_for(lambda: Hung.told == [(7, True), (8, True)])
        assert s.send_receive(ECHO_LEN, b"ab") == 2
        # a callback registered after the cancel runs at once
        late: list[bool] = []
        Hung.held[0].on_cancel(lambda m: late.append(m.cancelled))
        assert late == [True]


def test_a_future_whose_answer_came_is_not_cancelled(hung):
    with connect(hung.address) as s:
        f = s.send(ECHO_LEN, b"xy")
        assert f.result(10) == 2
        assert not f.cancel()
        assert s.send_receive(ECHO_LEN, b"") == 0


def test_an_asyncio_wait_for_that_times_out_cancels_the_request(hung):
    async def main() -> None:
        async with await broker.aconnect(hung.address, slots=2) as s:
            for _ in range(5):
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(s.asend(HANG), 0.05)
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(s.asend_receive(HANG), 0.05)
            assert await s.asend(ECHO_LEN, b"abcd") == 4  # no slot was lost

    asyncio.run(main())
    wait_for(lambda: len(Hung.held) == 10 and all(m.cancelled for m in Hung.held))


class AsyncHung(broker.Session):
    started: list[int] = []
    cancelled: list[int] = []

    async def service(self, m: broker.Message) -> None:
        if m.code == HANG_ASYNC:
            AsyncHung.started.append(m.integer(0))
            try:
                await asyncio.Event().wait()  # forever
            except asyncio.CancelledError:
                AsyncHung.cancelled.append(m.integer(0))
                raise
        else:
            m.complete(len(m.read(0)))


def test_a_cancel_cancels_an_async_services_task(tmp_path):
    path = str(tmp_path / "async")
    AsyncHung.started, AsyncHung.cancelled = [], []
    srv = broker.Server(path, AsyncHung)
    ready = threading.Event()

    def run() -> None:
        async def main() -> None:
            task = asyncio.create_task(srv.serve_async())
            await asyncio.sleep(0)
            ready.set()
            await task

        asyncio.run(main())

    t = threading.Thread(target=run)
    t.start()
    try:
        assert ready.wait(30)
        wait_for(lambda: __import__("os").path.exists(path))
        with connect(path, slots=2) as s:
            for i in range(6):
                f = s.send(HANG_ASYNC, i)
                wait_for(lambda i=i: i in AsyncHung.started)
                assert f.cancel()
                wait_for(lambda i=i: i in AsyncHung.cancelled)  # the coroutine heard it
            assert s.send_receive(ECHO_LEN, b"abc") == 3
    finally:
        srv.stop()
        t.join(30)
    assert AsyncHung.cancelled == list(range(6))
