"""The asyncio client (issue 17, item 2): broker.aconnect and the sessions' a* calls, against a server in
a process of its own (tests/served.py) over shared memory, a socket session and TCP, and against
serve_async on the test's own loop. Cancellation at every await, many tasks under load, a loop that is
never blocked (a ticker counts while a call waits), a server's death while awaiting, no leaks."""
from __future__ import annotations

import asyncio
import os
import select
import threading
import time

import pytest

import shmbroker as broker
from shmbroker import Buffer, connect
from shmbroker.services import ECHO, LENGTH
from tests.helpers import Child
from tests.served import serve

TRANSPORTS = ["shm", "socket", "tcp"]
RELEASE = b"go"  # a slow provider answers once it reads this, or after _PATIENCE seconds
_PATIENCE = 30.0
GRANTS = ["key:test * all"]  # the TCP clients' (the run's key: conftest.py)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serve(str(tmp_path_factory.mktemp("aio")), services=True, grants=GRANTS) as srv:
        yield srv


def _address(srv, transport: str) -> tuple[str, dict]:
    if transport == "tcp":
        return srv.tcp, {}
    return srv.unix, {"socket_only": transport == "socket"}


def _expect(transport: str) -> str:
    return "shared memory" if transport == "shm" else "socket"


class SlowProvider:
    """A linked service in a child process: "slow" answers 7 once the test writes RELEASE to its pipe
    (or after _PATIENCE s), after upper-casing its argument into its second; "fast" answers at once."""

    def __init__(self, address: str, name: str) -> None:
        self.name = name
        ready_r, ready_w = os.pipe()
        self._go_r, self._go_w = os.pipe()
        go_r = self._go_r

        def handler(call) -> int:
            if call.code == 1:
                ready = select.select([go_r], [], [], _PATIENCE)[0]
                if ready:
                    os.read(go_r, len(RELEASE))
            call.write(1, call.read(0).upper())
            return 7

        def run() -> None:
            stop = threading.Event()
            with connect(address) as s, s.offer(name, handler) as offer:
                os.write(ready_w, b"r")
                offer.serve_forever(stop, 0.05)

        self.child = Child(run)
        os.close(ready_w)
        assert os.read(ready_r, 1) == b"r"
        os.close(ready_r)

    def release(self) -> None:
        os.write(self._go_w, RELEASE)

    def close(self) -> None:
        self.child.kill()
        os.close(self._go_r)
        os.close(self._go_w)


@pytest.fixture
def provider(served, request):
    p = SlowProvider(served.unix, f"Global\\slow-{request.node.name}"[:60])  # TCP callers' too
    yield p
    p.close()


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


# ---- connect() on a loop; aconnect to serve_async on the same loop ---------------------------------

def test_connect_on_a_running_loop_says_aconnect_at_once(served):
    async def main() -> None:
        with pytest.raises(broker.StateError, match=r"aconnect"):
            connect(served.unix)
        with pytest.raises(broker.StateError, match=r"aconnect"):
            connect("/nonexistent/nobody.sock")  # not ServerNotFound after a wait: the loop is never stalled

    _run(main())


class Calc(broker.Session):
    @broker.function(1)
    def add(self, m: broker.Message) -> None:
        m.complete(m.integer(0) + m.integer(1))

    @broker.function(2)
    async def later(self, m: broker.Message) -> None:
        await asyncio.sleep(0)
        m.write(1, m.read(0)[::-1])
        m.complete(0)


@pytest.mark.parametrize("transport", ["shm", "socket"])
def test_aconnect_to_serve_async_on_the_same_loop(tmp_path, transport):
    path = str(tmp_path / "same.sock")

    async def main() -> None:
        srv = broker.Server(path, Calc)
        task = asyncio.create_task(srv.serve_async())
        try:
            while not os.path.exists(path):
                await asyncio.sleep(0.001)
            with pytest.raises(broker.StateError, match=r"aconnect"):  # at once: not ServerNotFound after 2 s
                connect(path)
            async with await broker.aconnect(path, socket_only=transport == "socket") as s:
                assert s.transport == _expect(transport)
                assert await s.asend_receive(1, 2, 3) == 5
                assert await s.acall(2, b"abc") == b"cba"
                assert await asyncio.gather(*(s.asend_receive(1, i, i) for i in range(50))) == [
                    2 * i for i in range(50)]
                sub = await s.asubscriber("t")
                pub = await s.apublisher("t")
                for i in range(20):
                    await pub.apublish(b"%d" % i)
                assert [await sub.areceive() for _ in range(20)] == [b"%d" % i for i in range(20)]
                for i in range(20, 40):
                    await pub.apublish(b"%d" % i)
                    assert await sub.areceive() == b"%d" % i
                await pub.aclose()
                await sub.aclose()
                assert await s.atopics() == []
        finally:
            srv.stop()
            await task

    _run(main())


# ---- every basic operation, on each transport ------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_basics(served, provider, transport):
    address, opts = _address(served, transport)

    async def main() -> None:
        async with await broker.aconnect(address, **opts) as s:
            assert s.transport == _expect(transport)
            assert await s.asend_receive(LENGTH, b"hello") == 5
            assert await s.asend(LENGTH, b"hi") == 2
            out = Buffer(16)
            assert await s.asend_receive(ECHO, b"echo", out) >= 0 and out.value == b"echo"
            # topics: a subscriber of this session and one of another session, on the same loop
            async with await broker.aconnect(address, **opts) as other:
                subs = [await s.asubscriber("basics"), await other.asubscriber("basics")]
                pub = await s.apublisher("basics")
                assert (pub.ring is not None) == (transport == "shm")
                for i in range(100):
                    await pub.apublish(b"m%d" % i)
                await pub.apublish(b"end")
                for sub in subs:
                    got = []
                    async for message in sub:
                        if message == b"end":
                            break
                        got.append(message)
                    assert got == [b"m%d" % i for i in range(100)]
                for i in range(30):  # one by one: on shared memory the subscriber of the publisher's session
                    await pub.apublish(b"n%d" % i)  # takes over its ring, and tells the server so (not waiting)
                    assert [await sub.areceive() for sub in subs] == [b"n%d" % i] * 2
                assert [sub.in_place for sub in subs] == [transport == "shm"] * 2  # (one login session: both)
                for sub in subs:
                    await sub.aclose()
                await pub.aclose()
            # a linked service in another process, through the broker
            async with await s.alink(provider.name) as link:
                out = Buffer(8)
                assert await link.asend_receive(2, b"abc", out) == 7 and out.value == b"ABC"
            async with await s.alink("nobody offers this") as nobody:
                with pytest.raises(broker.ServiceError) as e:
                    await nobody.asend_receive(2, b"x")
                assert e.value.status == broker.Status.NOT_FOUND
        assert s.closed
        with pytest.raises(broker.ServerGone):
            await s.asend_receive(LENGTH, b"after")

    _run(main())


# ---- cancellation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_cancelled_call_frees_its_slot_and_the_session_goes_on(served, provider, transport):
    address, opts = _address(served, transport)

    async def main() -> None:
        async with await broker.aconnect(address, slots=2, **opts) as s:
            link = await s.alink(provider.name)
            for _ in range(6):  # three times the slots: a slot a cancelled call kept would make ServerBusy
                for slow, call in ((True, lambda: link.asend_receive(1, b"x", Buffer(4))),
                                   (False, lambda: s.asend(ECHO, b"y", Buffer(4))),
                                   (False, lambda: s.asend_receive(LENGTH, b"z"))):
                    task = asyncio.ensure_future(call())
                    await asyncio.sleep(0)
                    task.cancel()
                    try:
                        await task
                        assert not slow, "the slow call was answered before its release"
                    except asyncio.CancelledError:
                        pass  # (a fast call may have had its answer already)
                with pytest.raises(asyncio.TimeoutError):  # cancelled by wait_for while it waits
                    await asyncio.wait_for(link.asend_receive(1, b"x", Buffer(4)), 0.01)
            # the slow provider's held calls are cancelled at the broker: their slots come back once the
            # broker says so (CANCELLED), and the session goes on
            deadline = time.monotonic() + 10
            while s._async and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
            assert await asyncio.gather(*(s.asend(LENGTH, b"%d" % i) for i in range(2))) == [1, 1]
            out = Buffer(8)
            for _ in range(12):  # the slow calls above that reached the provider are let go
                provider.release()
            assert await link.asend_receive(2, b"ok", out) == 7 and out.value == b"OK"
            # areceive cancelled: nothing lost, the subscriber goes on
            sub = await s.asubscriber("cancel")
            pub = await s.apublisher("cancel")
            for i in range(5):
                task = asyncio.ensure_future(sub.areceive())
                await asyncio.sleep(0.001)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                await pub.apublish(b"%d" % i)
                assert await sub.areceive() == b"%d" % i
            await link.aclose()
            await pub.aclose()
            await sub.aclose()
        assert s.closed

    _run(main())


def test_a_cancelled_aconnect_leaves_nothing(served):
    async def main() -> None:
        for transport in TRANSPORTS:
            address, opts = _address(served, transport)
            for step in range(6):  # cancelled at each of its first awaits in turn
                task = asyncio.ensure_future(broker.aconnect(address, **opts))
                for _ in range(step):
                    await asyncio.sleep(0)
                task.cancel()
                try:
                    s = await task
                except asyncio.CancelledError:
                    continue
                await s.aclose()  # it was done before the cancel came

    fds = len(os.listdir("/proc/self/fd"))
    _run(main())
    assert len(os.listdir("/proc/self/fd")) <= fds  # (the leak fixture checks segments and threads)


def test_close_during_an_areceive_ends_it(served):
    async def main() -> None:
        s = await broker.aconnect(served.unix)
        sub = await s.asubscriber("closing")
        task = asyncio.ensure_future(sub.areceive())
        await asyncio.sleep(0.01)
        await s.aclose()
        with pytest.raises((broker.ServerGone, broker.Disconnected)):
            await asyncio.wait_for(task, 30)

    _run(main())


# ---- load --------------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_many_tasks_under_load_each_message_once_and_in_order(served, transport):
    address, opts = _address(served, transport)
    tasks, calls, messages = 20, 50, 2000

    async def caller(s, k: int) -> list[int]:
        return [await s.asend_receive(LENGTH, b"x" * ((k * calls + i) % 97)) for i in range(calls)]

    async def main() -> None:
        async with await broker.aconnect(address, slots=8, **opts) as s, \
                await broker.aconnect(address, **opts) as other:
            got = await asyncio.gather(*(caller(s, k) for k in range(tasks)))
            assert got == [[(k * calls + i) % 97 for i in range(calls)] for k in range(tasks)]
            pubs = [await s.apublisher("load"), await other.apublisher("load")]
            subs = [await s.asubscriber("load"), await other.asubscriber("load")]

            async def publish(n: int) -> None:
                for i in range(messages):
                    await pubs[n].apublish(b"%d:%d" % (n, i))

            async def receive(sub) -> dict[int, list[int]]:
                seen: dict[int, list[int]] = {0: [], 1: []}
                for _ in range(2 * messages):
                    who, i = (await sub.areceive()).split(b":")
                    seen[int(who)].append(int(i))
                return seen

            results = await asyncio.gather(publish(0), publish(1), *(receive(sub) for sub in subs))
            for seen in results[2:]:
                assert seen == {0: list(range(messages)), 1: list(range(messages))}
            for x in pubs + subs:
                await x.aclose()

    _run(main())


# ---- the loop is never blocked -----------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_loop_ticks_while_a_call_waits(served, provider, transport):
    """A ticker task counts while a call waits on a slow service: the test releases the service only
    after 50 ticks. A call that blocked the loop would hold the ticker at 0 until the service gave up
    waiting (after _PATIENCE s), and the count would say so."""
    address, opts = _address(served, transport)

    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1
                if ticks == 50:
                    provider.release()

        async with await broker.aconnect(address, **opts) as s:
            link = await s.alink(provider.name)
            tick = asyncio.ensure_future(ticker())
            try:
                assert await link.asend_receive(1, b"abc", Buffer(4)) == 7
                assert ticks >= 50  # released by the ticker, not by the provider's patience
                # and a subscriber that waits for a message (read in place on shared memory)
                sub = await s.asubscriber("tick")
                pub = await s.apublisher("tick")
                before = ticks
                waiting = asyncio.ensure_future(sub.areceive())
                while ticks < before + 20:
                    await asyncio.sleep(0.001)
                assert not waiting.done()
                await pub.apublish(b"now")
                assert await waiting == b"now"
            finally:
                tick.cancel()
            await link.aclose()
            await pub.aclose()
            await sub.aclose()

    _run(main())


# ---- the server's death while awaiting -------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_servers_death_while_awaiting_is_server_gone(tmp_path, transport):
    with serve(str(tmp_path), services=True, grants=GRANTS) as srv:
        p = SlowProvider(srv.unix, "Global\\dies")
        address, opts = _address(srv, transport)

        async def main() -> None:
            s = await broker.aconnect(address, **opts)
            link = await s.alink("Global\\dies")
            sub = await s.asubscriber("dies")
            call = asyncio.ensure_future(link.asend_receive(1, b"x", Buffer(4)))
            receive = asyncio.ensure_future(sub.areceive())
            await asyncio.sleep(0.05)
            srv.kill()
            with pytest.raises(broker.ServerGone):
                await asyncio.wait_for(call, 30)
            with pytest.raises((broker.ServerGone, broker.Disconnected)):
                await asyncio.wait_for(receive, 30)
            assert s.closed
            with pytest.raises(broker.ServerGone):
                await s.asend_receive(LENGTH, b"x")
            await s.aclose()

        try:
            _run(main())
        finally:
            p.close()


def test_a_session_read_by_a_loop_goes_on_after_it(served):
    """asyncio.run ends its loop: the session's sync calls go on after it, and a later loop reads it."""
    with connect(served.unix) as s:
        assert _run(s.asend_receive(LENGTH, b"abc")) == 3
        assert s.send_receive(LENGTH, b"abcd") == 4
        assert _run(s.asend_receive(LENGTH, b"ab")) == 2
        assert s.send_receive(LENGTH, b"a") == 1


@pytest.mark.parametrize("way", ["sharable", "no bell"])
def test_the_reader_thread_where_the_loop_cannot_read(served, way):
    """A sharable session, and a shared-memory session whose server passed no bell (a server of before),
    are read by the session's reader thread; the loop hears of each reply from it, and is not blocked."""
    async def main(s) -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        tick = asyncio.ensure_future(ticker())
        try:
            assert await asyncio.gather(*(s.asend_receive(LENGTH, b"x" * i) for i in range(50))) == list(range(50))
            sub = await s.asubscriber("fallback")
            pub = await s.apublisher("fallback")
            for i in range(20):
                await pub.apublish(b"%d" % i)
            assert [await sub.areceive() for _ in range(20)] == [b"%d" % i for i in range(20)]
            await pub.aclose()
            await sub.aclose()
        finally:
            tick.cancel()
        assert ticks > 0
        assert any(t.name.startswith("broker-client") for t in threading.enumerate())  # the reader thread

    with connect(served.unix, sharable=way == "sharable") as s:
        if way == "no bell":
            os.close(s.carrier.bell)
            s.carrier.bell = -1
        _run(main(s))


class Sink(broker.Session):
    def service(self, m: broker.Message) -> None:
        m.complete(len(m.read_view(0)))


@pytest.mark.parametrize("transport", ["shm", "socket"])
def test_requests_bigger_than_the_carrier_to_serve_async_on_the_same_loop(tmp_path, transport):
    """A 4 MiB request (ring 0 holds 1 MiB; a socket's buffer less) and 3000 requests at once to a server
    on the same loop: the client's writes never wait for room on the loop (the server could not make
    any), they wait their turn in order. In a child: a loop that blocked would hang there, not here."""
    path = str(tmp_path / "big.sock")

    def client() -> None:
        async def main() -> None:
            srv = broker.Server(path, Sink)
            task = asyncio.create_task(srv.serve_async())
            await asyncio.sleep(0)
            try:
                async with await broker.aconnect(path, socket_only=transport == "socket") as s:
                    assert s.transport == _expect(transport)
                    assert await s.asend_receive(1, b"x" * (4 << 20)) == 4 << 20
                    sizes = [1000 + i % 7 for i in range(3000)]
                    assert await asyncio.gather(*(s.asend_receive(1, b"y" * n) for n in sizes)) == sizes
                    assert await s.asend_receive(1, b"z" * (3 << 20)) == 3 << 20
            finally:
                srv.stop()
                await task

        asyncio.run(main())

    assert Child(client).join(120) == 0
