"""How an unsharable session reads its socket: inline (no reader thread) or, once
something needs completions without the owner thread's help, from a reader thread.

Real server, real sockets. The server runs in this process (a background thread),
so its held messages can be completed by the test; most clients run here too, so
their threads can be counted. Whatever could hang for good (a deadlock) runs in
a forked child, whose join is bounded. The session's private `_reading` and
`_handover` are read only to know *when* the owner thread is waiting inline.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import os
import random
import select
import struct
import threading
import time

import pytest

import shmbroker as broker
from shmbroker import Session, connect

from tests.helpers import Child

pytestmark = pytest.mark.timeout(60)

ECHO_LEN, HOLD, RAISE, LATER = 1, 2, 3, 4
T = 5.0  # every wait is bounded: a bug fails a test, it never hangs the run


class Svc(Session):
    def service(self, m: broker.Message) -> None:
        if m.code == ECHO_LEN:
            m.complete(len(m.read(0)))
        elif m.code == HOLD:  # completed by the test (release), or at teardown
            srv = self.server
            with srv.held_cond:
                srv.held.append(m)
                srv.held_cond.notify_all()
        elif m.code == RAISE:
            raise ValueError("the service failed on purpose")
        elif m.code == LATER:  # completed soon, from another thread, with no help from the client
            threading.Timer(0.02, m.complete, args=(42,)).start()
        else:
            super().service(m)


def _new_server(tmp_path, name: str = "modes.sock", **kw) -> broker.Server:
    srv = broker.Server(str(tmp_path / name), Svc, tcp="tcp://127.0.0.1:0", **kw)
    srv.held = []
    srv.held_cond = threading.Condition()
    return srv


@contextlib.contextmanager
def running(tmp_path, transport: str, **kw):
    """transport (the carrier; the suite's one vocabulary, tests/conftest.py): "shm" (a Unix socket, and
    the session rule gives it shared memory), "socket" (a Unix socket, policy off: it carries the
    session) or "tcp"."""
    if transport == "socket":
        kw.setdefault("shm_policy", "off")
    srv = _new_server(tmp_path, **kw)
    srv.start()
    try:
        srv.address = str(tmp_path / "modes.sock") if transport != "tcp" else f"tcp://127.0.0.1:{srv.bound[1][1]}"
        yield srv
    finally:
        for m in list(srv.held):
            if not m.completed:
                try:
                    m.complete(0)
                except broker.StateError:
                    pass
        srv.stop()


@pytest.fixture(params=["shm", "socket", "tcp"])
def server(request, tmp_path):
    with running(tmp_path, request.param) as srv:
        srv.transport = request.param
        yield srv


@pytest.fixture(autouse=True)
def thread_errors():
    """Every exception that escapes a thread (the reader thread above all) fails the test."""
    errors: list[BaseException] = []
    old = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    try:
        yield errors
    finally:
        threading.excepthook = old
    assert not errors, f"a thread raised: {errors!r}"


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("broker-client") and t.is_alive()]


def wait_for(cond, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(0.002)


def wait_held(srv, n: int) -> None:
    with srv.held_cond:
        assert srv.held_cond.wait_for(lambda: len(srv.held) >= n, 5), f"the server holds {len(srv.held)}, not {n}"


def wait_arrived(srv) -> None:
    """The server has completed everything of its (one) session; give the bytes time to land."""
    wait_for(lambda: srv.sessions() and srv.sessions()[0]["outstanding"] == 0, what="no outstanding request")
    time.sleep(0.05)


def in_child(fn, timeout: float = 15.0) -> None:
    kid = Child(fn)
    try:
        assert kid.join(timeout) == 0, "the client process failed (traceback above)"
    finally:
        kid.kill()


# -- 1. inline: no reader thread ---------------------------------------------------------


@pytest.mark.parametrize("order", ["oldest first", "newest first", "shuffled"])
def test_inline_futures_any_reaping_order_and_no_reader_thread(server, order):
    sizes = [3, 1, 4, 15, 9, 26]
    with connect(server.address, slots=len(sizes) + 1) as s:
        for round_ in range(3):
            futs = [(s.send(ECHO_LEN, b"x" * (n + round_)), n + round_) for n in sizes]
            bad = s.send(RAISE)
            if order == "newest first":
                futs.reverse()
            elif order == "shuffled":
                random.Random(round_).shuffle(futs)
            assert [f.result(5) for f, _ in futs] == [n for _, n in futs]
            assert all(f.exception(5) is None for f, _ in futs)
            err = bad.exception(5)
            assert isinstance(err, broker.ServiceError) and "failed on purpose" in str(err)
            with pytest.raises(broker.ServiceError, match="failed on purpose"):
                bad.result(0)
        assert s.send_receive(ECHO_LEN, b"sync", timeout=T) == 4
        assert readers() == [], "an unsharable session started a reader thread for send() and result()"
    assert readers() == []


def test_the_carrier_is_the_one_the_parameter_names(server):
    with connect(server.address) as s:
        assert s.transport == ("shared memory" if server.transport == "shm" else "socket")
        assert s.send_receive(ECHO_LEN, b"abc", timeout=T) == 3


def test_a_future_settled_inline_is_a_whole_future_without_its_condition(server):
    """send()'s future makes Future's Condition only when something needs it; until then (and after)
    it behaves as any concurrent.futures.Future."""
    with connect(server.address, slots=8) as s:
        f = s.send(ECHO_LEN, b"abcd")
        assert f.result(5) == 4 and f.done()
        assert f._cond is None, "settled and read by its own thread: no Condition was needed"
        assert not f.running() and not f.cancelled() and f.exception(0) is None  # these take it, made now
        assert f._cond is not None
        g = s.send(RAISE)
        err = g.exception(5)
        assert isinstance(err, broker.ServiceError) and "on purpose" in str(err)
        with pytest.raises(broker.ServiceError):
            g.result(0)  # settled without the Condition, raised without it
        h = s.send(ECHO_LEN, b"xy")
        assert h.cancel() and h.cancelled()  # cancel() before its completion: the completion is dropped
        with pytest.raises(cf.CancelledError):
            h.result(0)
        assert s.send_receive(ECHO_LEN, b"abc", timeout=T) == 3  # the session goes on
        assert readers() == [], "none of this needed a reader thread"
        k = s.send(ECHO_LEN, b"xyz")
        k.result(5)
        got = []
        k.add_done_callback(got.append)  # done: runs at once
        done, pending = cf.wait([k], timeout=0)  # wait() registers a waiter: from now on a reader thread reads
        assert got == [k] and done == {k} and not pending
        assert list(cf.as_completed([k], timeout=1)) == [k]
        assert s.send(ECHO_LEN, b"12345").result(5) == 5


def test_a_later_send_receive_completes_earlier_futures(server):
    with connect(server.address) as s:
        f1, f2 = s.send(ECHO_LEN, b"ab"), s.send(LATER)
        assert s.send_receive(ECHO_LEN, b"abc", timeout=T) == 3
        assert f1.done() and f1.result(0) == 2  # read and dispatched by the synchronous call
        assert f2.result(5) == 42  # completed by the server's timer thread, read here
        assert readers() == []


def test_inline_result_timeout_leaves_the_future_usable(server):
    with connect(server.address) as s:
        f = s.send(HOLD)
        wait_held(server, 1)
        with pytest.raises(cf.TimeoutError):
            f.result(0.05)
        assert not f.done()
        server.held[0].complete(4)
        assert f.result(5) == 4
        assert readers() == []


def test_a_callback_on_a_done_future_runs_at_once_without_a_reader(server):
    with connect(server.address) as s:
        f = s.send(ECHO_LEN, b"abcde")
        assert f.result(5) == 5
        seen = []
        f.add_done_callback(lambda fut: seen.append((fut.result(0), threading.get_ident())))
        assert seen == [(5, threading.get_ident())]
        assert readers() == []


def test_send_reads_arrived_completions_before_refusing(server):
    with connect(server.address, slots=2) as s:
        f1, f2 = s.send(ECHO_LEN, b"a"), s.send(ECHO_LEN, b"bb")
        wait_arrived(server)  # their completions wait in the socket, unread
        f3 = s.send(ECHO_LEN, b"ccc")  # the slots are free: no ServerBusy
        assert f1.done() and f2.done()
        assert [f3.result(5), f2.result(5), f1.result(5)] == [3, 2, 1]
        assert readers() == []


def test_server_busy_only_while_the_slots_are_held(server):
    with connect(server.address, slots=2) as s:
        f1, f2 = s.send(HOLD), s.send(HOLD)
        wait_held(server, 2)
        with pytest.raises(broker.ServerBusy):
            s.send(ECHO_LEN, b"x")
        assert s.send_receive(ECHO_LEN, b"sync", timeout=T) == 4  # a synchronous call takes no slot
        with pytest.raises(broker.ServerBusy):
            s.send(ECHO_LEN, b"x")  # the synchronous call read everything: still two held
        server.held[0].complete(5)
        server.held[1].complete(6)
        wait_arrived(server)
        f3 = s.send(ECHO_LEN, b"xyz")  # read what had come: slots free
        assert [f2.result(5), f1.result(5), f3.result(5)] == [6, 5, 3]
        assert readers() == []


# -- 2. what switches to a reader thread ---------------------------------------------


def test_add_done_callback_fires_without_the_owner(server):
    with connect(server.address) as s:
        f = s.send(HOLD)
        wait_held(server, 1)
        assert readers() == []
        fired = threading.Event()
        seen = []

        def cb(fut):
            seen.append((fut.result(0), threading.current_thread().name))
            fired.set()

        f.add_done_callback(cb)
        assert len(readers()) == 1
        server.held[0].complete(17)
        assert fired.wait(5), "the callback never fired"  # nobody called result()
        assert seen[0][0] == 17 and seen[0][1].startswith("broker-client")
        assert s.send_receive(ECHO_LEN, b"after", timeout=T) == 5
        assert s.send(ECHO_LEN, b"xy").result(5) == 2
        assert f.result(0) == 17
    assert readers() == [], "close() left the reader thread"


def _wait_flavours(address: str, how: str, arrived: bool, rounds: int) -> None:
    """Runs in a child: a hang ends the child (with every thread's stack on stderr), not the run."""
    import faulthandler

    sizes = [2, 7, 1, 8]
    for r in range(rounds):
        faulthandler.dump_traceback_later(3, exit=True)  # a round takes milliseconds: 3 s is a hang
        with connect(address, slots=8) as s:
            if arrived:
                futs = [s.send(ECHO_LEN, b"q" * n) for n in sizes]
                expect = sizes
                time.sleep(0.003)  # the completions are in the socket, unread
            else:
                futs = [s.send(LATER) for _ in sizes]
                expect = [42] * len(sizes)
                assert not any(f.done() for f in futs)
            if how == "wait":
                done, not_done = cf.wait(futs, timeout=5)
                assert not not_done and done == set(futs), f"round {r}: {len(not_done)} not done"
            else:
                got = list(cf.as_completed(futs, timeout=5))
                assert len(got) == len(futs) and set(got) == set(futs)
            assert [f.result(0) for f in futs] == expect
            assert s.send_receive(ECHO_LEN, b"abc", timeout=T) == 3
        faulthandler.cancel_dump_traceback_later()
        assert readers() == [], "close() left the reader thread"


@pytest.mark.parametrize("how", ["wait", "as_completed"])
def test_concurrent_futures_wait_on_pending_send_futures(server, how):
    in_child(lambda: _wait_flavours(server.address, how, arrived=False, rounds=3))


@pytest.mark.stress  # 0.4-0.9 s each, six times
@pytest.mark.parametrize("how", ["wait", "as_completed"])
def test_concurrent_futures_wait_when_completions_already_arrived(server, how):
    # repeated: the reader thread starts inside wait(), which holds every future's lock
    in_child(lambda: _wait_flavours(server.address, how, arrived=True, rounds=80))


def test_result_from_another_thread(server):
    with connect(server.address) as s:
        f = s.send(HOLD)
        wait_held(server, 1)
        got = []
        t = threading.Thread(target=lambda: got.append(f.result(5)))
        t.start()
        wait_for(lambda: readers(), what="the reader thread")  # the other thread cannot read inline
        server.held[0].complete(23)
        t.join(10)
        assert not t.is_alive() and got == [23]
        assert s.send_receive(ECHO_LEN, b"owner", timeout=T) == 5
        assert s.send(ECHO_LEN, b"o").result(5) == 1
    assert readers() == []


def test_result_from_another_thread_while_the_owner_reads_inline(server):
    with connect(server.address) as s:
        fa, fb = s.send(HOLD), s.send(HOLD)
        wait_held(server, 2)
        got = []
        other = threading.Thread(target=lambda: got.append(fa.result(5)))

        def conductor():
            try:
                wait_for(lambda: s._reading > 0, what="the owner reading inline")
                other.start()
                wait_for(lambda: s._handover, what="the hand-over request")
                assert readers() == []  # not while the owner reads: it reads for both
                server.held[0].complete(7)
                other.join(5)
            finally:
                server.held[1].complete(8)

        c = threading.Thread(target=conductor)
        c.start()
        try:
            assert fb.result(10) == 8
        finally:
            c.join(10)
        assert got == [7]
        assert len(readers()) == 1  # handed over once the owner stopped reading
        assert s.send_receive(ECHO_LEN, b"after", timeout=T) == 5
    assert readers() == []


def test_asyncio_switches_to_the_reader_thread(server):
    with connect(server.address, slots=8) as s:
        early = s.send(ECHO_LEN, b"12")  # an inline future from before the loop
        assert readers() == []

        async def main():
            assert await asyncio.wait_for(asyncio.wrap_future(early), 5) == 2
            results = await asyncio.wait_for(asyncio.gather(*(s.asend(ECHO_LEN, b"q" * i) for i in range(6))), 5)
            assert results == list(range(6))
            assert await asyncio.wait_for(s.asend_receive(ECHO_LEN, b"abc"), 5) == 3
            task = asyncio.ensure_future(s.asend_receive(HOLD))
            deadline = time.monotonic() + 5
            while not server.held:
                assert time.monotonic() < deadline, "HOLD never reached the server"
                await asyncio.sleep(0.005)
            assert not task.done()
            server.held[0].complete(11)
            assert await asyncio.wait_for(task, 5) == 11
            assert await asyncio.wait_for(s.asend(LATER), 5) == 42

        asyncio.run(main())
        assert len(readers()) == 1
        assert s.send_receive(ECHO_LEN, b"after", timeout=T) == 5
        assert s.send(ECHO_LEN, b"xyz").result(5) == 3
    assert readers() == []


# -- 3. a callback that calls the session, nested inline reading ---------------------------


def test_callback_on_the_owner_thread_calls_send_receive(server):
    """A callback registered (from another thread) while the owner reads inline runs on
    the owner thread, inside its read; it calls the session again: a nested inline read."""
    with connect(server.address, slots=4) as s:
        owner = threading.get_ident()
        fa, fb = s.send(HOLD), s.send(HOLD)
        wait_held(server, 2)
        seen: list = []
        cb_done = threading.Event()

        def cb(fut):
            try:
                seen.append(("thread is owner", threading.get_ident() == owner))
                seen.append(("value", fut.result(0)))
                seen.append(("nested send_receive", s.send_receive(ECHO_LEN, b"nested", timeout=T)))
                seen.append(("nested send", s.send(ECHO_LEN, b"xy").result(5)))
            except BaseException as e:  # noqa: BLE001 - reported below
                seen.append(("raised", e))
            finally:
                cb_done.set()

        def conductor():
            try:
                wait_for(lambda: s._reading > 0, what="the owner reading inline")
                fa.add_done_callback(cb)  # the owner is reading: it will run cb
                server.held[0].complete(7)
                cb_done.wait(5)
            finally:
                server.held[1].complete(8)

        c = threading.Thread(target=conductor)
        c.start()
        try:
            assert fb.result(10) == 8
        finally:
            c.join(10)
        assert seen == [("thread is owner", True), ("value", 7), ("nested send_receive", 6), ("nested send", 2)]
        assert fa.result(0) == 7
        assert len(readers()) == 1  # the callback asked for the reader: started after the read
        assert s.send_receive(ECHO_LEN, b"after", timeout=T) == 5
    assert readers() == []


# -- 4. cancelled futures ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["inline", "switched", "sharable"])
def test_a_cancelled_future_does_not_break_the_session(server, mode, thread_errors):
    with connect(server.address, slots=2, sharable=mode == "sharable") as s:
        if mode == "switched":
            first = s.send(ECHO_LEN, b"1")
            first.add_done_callback(lambda fut: None)  # starts the reader thread
        f = s.send(HOLD)
        wait_held(server, 1)
        called = []
        if mode != "inline":
            f.add_done_callback(lambda fut: called.append(fut.cancelled()))
        assert f.cancel() and f.cancelled()
        server.held[0].complete(99)  # the completion arrives for a cancelled future
        assert s.send_receive(ECHO_LEN, b"abc", timeout=T) == 3  # read after the cancelled one's
        with pytest.raises(cf.CancelledError):
            f.result(1)
        g, h = s.send(ECHO_LEN, b"de"), s.send(ECHO_LEN, b"f")  # both slots are free again
        assert (g.result(5), h.result(5)) == (2, 1)
        if mode == "inline":
            assert readers() == []
        else:
            assert called == [True]
            assert len(readers()) == 1 and readers()[0].is_alive()  # the reader survived the cancelled one
        assert s.send_receive(ECHO_LEN, b"last", timeout=T) == 4
    assert readers() == [] and not thread_errors


# -- 5. spin_us --------------------------------------------------------------------------------

DEFAULT = object()


@pytest.mark.parametrize("transport", ["shm", "tcp"])
@pytest.mark.parametrize("client_spin,server_spin", [(DEFAULT, DEFAULT), (0, 0), (0, DEFAULT), (DEFAULT, 0)],
                         ids=["default-default", "0-0", "client0", "server0"])
def test_spin_settings_give_the_same_results(tmp_path, transport, client_spin, server_spin):
    skw = {} if server_spin is DEFAULT else {"spin_us": server_spin}
    ckw = {} if client_spin is DEFAULT else {"spin_us": client_spin}
    with running(tmp_path, transport, **skw) as srv:
        with connect(srv.address, **ckw) as s:
            for i in (0, 1, 100, 70_000):
                assert s.send_receive(ECHO_LEN, b"z" * i, timeout=T) == i
            with pytest.raises(broker.Timeout):
                s.send_receive(HOLD, timeout=0.05)
            assert s.send_receive(ECHO_LEN, b"usable", timeout=T) == 6
            f = s.send(HOLD)
            with pytest.raises(cf.TimeoutError):
                f.result(0.05)
            wait_held(srv, 2)
            srv.held[0].complete(1)  # the timed-out synchronous call's: nobody waits for it
            srv.held[1].complete(2)
            assert f.result(5) == 2
            assert s.send_receive(ECHO_LEN, b"again", timeout=T) == 5
            assert [s.send(ECHO_LEN, b"k" * n).result(5) for n in range(3)] == [0, 1, 2]
            assert readers() == []


@pytest.mark.parametrize("bad", [-1, -0.001, float("nan")])
def test_negative_spin_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="spin_us"):
        broker.Server(str(tmp_path / "neg.sock"), Svc, spin_us=bad)
    assert not os.path.exists(tmp_path / "neg.sock")
    with running(tmp_path, "shm") as srv:
        fds = len(os.listdir("/proc/self/fd"))
        with pytest.raises(ValueError, match="spin_us"):
            connect(srv.address, spin_us=bad)
        # its socket was closed (the server's end of it, in this process too, once the server sees it)
        wait_for(lambda: len(os.listdir("/proc/self/fd")) <= fds, what="no file descriptor left")
        with connect(srv.address) as s:
            assert s.send_receive(ECHO_LEN, b"ok", timeout=T) == 2


@pytest.mark.parametrize("timeout", [0.05, 0.00001, 0])
def test_timeout_shorter_than_the_spin(server, timeout):
    with connect(server.address) as s:  # default spin: 50 us
        with pytest.raises(broker.Timeout):
            s.send_receive(HOLD, timeout=timeout)
        f = s.send(HOLD)
        with pytest.raises(cf.TimeoutError):
            f.result(timeout)
        assert s.send_receive(ECHO_LEN, b"still", timeout=T) == 5
        wait_held(server, 2)
        server.held[1].complete(3)
        assert f.result(5) == 3
        assert readers() == []


# -- 6. the server goes away while the owner waits inline -------------------------------------


@pytest.mark.parametrize("transport", ["shm", "tcp"])
@pytest.mark.parametrize("wait_in", ["result", "exception", "send_receive"])
def test_server_gone_while_waiting_inline(tmp_path, transport, wait_in):
    path = str(tmp_path / "gone.sock")
    r, w = os.pipe()

    def serve() -> None:
        srv = _new_server(tmp_path, "gone.sock")
        srv.start()
        os.write(w, struct.pack("<H", srv.bound[1][1]))
        time.sleep(60)  # killed

    try:
        with Child(serve) as kid:
            assert select.select([r], [], [], 10)[0], "the server process did not start"
            port = struct.unpack("<H", os.read(r, 2))[0]
            s = connect(path if transport == "shm" else f"tcp://127.0.0.1:{port}")
            assert s.send_receive(ECHO_LEN, b"up", timeout=T) == 2
            f = s.send(HOLD)

            def killer():
                try:
                    wait_for(lambda: s._reading > 0, what="the owner reading inline")
                finally:
                    kid.kill()

            t = threading.Thread(target=killer)
            t.start()
            try:
                if wait_in == "result":
                    with pytest.raises(broker.ServerGone):
                        f.result(10)
                elif wait_in == "exception":
                    assert isinstance(f.exception(10), broker.ServerGone)
                else:
                    with pytest.raises(broker.ServerGone):
                        s.send_receive(HOLD, timeout=10)
                    assert isinstance(f.exception(0), broker.ServerGone)
            finally:
                t.join(10)
            assert readers() == []
            with pytest.raises(broker.ServerGone):
                s.send_receive(ECHO_LEN, b"x", timeout=5)
            with pytest.raises(broker.ServerGone):
                s.send(ECHO_LEN, b"x")
            s.close()
            assert s.closed and readers() == []
    finally:
        os.close(r)
        os.close(w)
