"""Linked services (src/shmbroker/services/links): a provider process offers a named service, callers in other
processes call it through the broker; the provider's death, a new provider, bad requests."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

from typing import Iterator

import pytest

import shmbroker as broker
from shmbroker import Buffer, connect
from shmbroker.protocol.codes import LINK_CALL, LINK_OFFER, LINK_REPLY, LINK_TAKE
from shmbroker.services.links.wire import pack_call, pack_writes, unpack_call

from tests.helpers import Child, in_child, wait_for

UPPER, FAIL, SLOW, ADD, PAUSE, BIG = 1, 2, 3, 4, 5, 6


def handler(call) -> int | None:
    if call.code == UPPER:
        data = call.read(0)
        call.write(1, data.upper())
        return len(data)
    if call.code == FAIL:
        raise ValueError("it failed on purpose")
    if call.code == SLOW:
        time.sleep(30)
        return 0
    if call.code == ADD:
        return call.integer(0) + call.integer(1)
    if call.code == PAUSE:
        time.sleep(0.5)
        return 0
    if call.code == BIG:  # a big argument: in place (a read-only view) and as bytes, the same
        view = call.read_view(0)
        data = call.read(0)
        assert view.readonly and type(data) is bytes and view == data
        call.write(1, data[-16:])
        return len(view)
    return None


@contextlib.contextmanager
def _provided(address: str, name: str) -> Iterator[Child]:
    """A provider process of `name` for the block (killed after it)."""
    ready_r, ready_w = os.pipe()
    prov = _provider(address, name, ready_w)
    try:
        assert os.read(ready_r, 1) == b"p"
        yield prov
    finally:
        prov.kill()
        os.close(ready_r)
        os.close(ready_w)


def _provider(address: str, name: str, ready_w: int) -> Child:
    def run() -> None:
        with connect(address) as s, s.offer(name, handler) as offer:
            os.write(ready_w, b"p")
            offer.serve_forever()
    return Child(run)


@pytest.mark.parametrize("socket_only", [False, True])
def test_a_linked_service_is_called_through_the_broker(server, socket_only):
    with _provided(server.address, "upper") as prov:

        def caller() -> None:
            with connect(server.address, socket_only=socket_only) as s, s.link("upper") as link:
                out = Buffer(16)
                assert link.send_receive(UPPER, b"hello", out) == 5 and out.value == b"HELLO"
                rw = bytearray(b"0123456789")
                assert link.send_receive(UPPER, b"ab", rw) == 2 and rw == b"AB"
                assert link.send_receive(ADD, 40, 2) == 42
                with pytest.raises(broker.ServiceError, match="ValueError: it failed on purpose") as e:
                    link.send_receive(FAIL)
                assert e.value.status == broker.Status.DIED
                with pytest.raises(broker.ServiceError, match="not an int"):
                    link.send_receive(ADD, b"x", 2)  # the handler's TypeError, as its caller sees it
                assert link.send_receive(99) == 0
                paths = []
                for i in range(200):  # and many in a row
                    assert link.send_receive(ADD, i, 1) == i + 1
                    paths.append(link.direct)
                # in one session on shared memory the broker steps out after pairing the two (the
                # first call may still go relayed); over a socket every call is relayed
                assert paths == [not socket_only] * 200

        in_child(caller)
        [svc] = server.stats()["services"]
        assert svc["service"] == "upper" and svc["queued"] == 0 and svc["direct"] == 0  # the caller has gone
        if socket_only:
            assert svc["served"] >= 206 and svc["pairs"] == 0
        else:
            assert svc["served"] <= 1 and svc["pairs"] == 1


@pytest.mark.parametrize("socket_only", [False, True])
def test_a_big_argument_reaches_a_linked_service_whole_relayed_or_direct(server, socket_only):
    data = os.urandom((1 << 20) + 5)
    with _provided(server.address, "big") as prov:

        def caller() -> None:
            with connect(server.address, socket_only=socket_only) as s, s.link("big") as link:
                for _ in range(3):  # the first may go relayed, the next direct (in one session, on shm)
                    out = Buffer(16)
                    assert link.send_receive(BIG, data, out) == len(data) and out.value == data[-16:]

        in_child(caller)
        assert prov.status is None  # the provider serves on


def test_nobody_offers_it_then_the_provider_dies_then_a_new_one_offers_it(server):
    ready_r, ready_w = os.pipe()
    with connect(server.address, sharable=True) as s, s.link("svc") as link:
        with pytest.raises(broker.ServiceError, match="nobody offers 'svc'") as e:
            link.send_receive(ADD, 1, 2)
        assert e.value.status == broker.Status.NOT_FOUND
        prov = _provider(server.address, "svc", ready_w)
        try:
            assert os.read(ready_r, 1) == b"p"
            assert link.send_receive(ADD, 1, 2) == 3
            outcome: dict[str, object] = {}

            def slow_call() -> None:
                try:
                    link.send_receive(SLOW)
                except broker.BrokerError as err:
                    outcome["error"] = err

            t = threading.Thread(target=slow_call)
            t.start()
            wait_for(lambda: server.stats()["services"][0]["running"] == 1)
            os.kill(prov.pid, signal.SIGKILL)  # mid-call
            prov.join(10)
            t.join(10)
            err = outcome.get("error")
            assert isinstance(err, broker.ServiceError) and err.status == broker.Status.DISCONNECTED
            assert "the provider of 'svc' is gone" in str(err)
            wait_for(lambda: server.stats()["services"] == [])
            prov = _provider(server.address, "svc", ready_w)  # a new provider: the same link reaches it
            assert os.read(ready_r, 1) == b"p"
            assert link.send_receive(ADD, 20, 22) == 42
        finally:
            prov.kill()
            os.close(ready_r)
            os.close(ready_w)


def test_a_caller_that_dies_mid_call_leaves_the_provider_serving(server):
    with _provided(server.address, "busy") as prov:
        doomed = Child(lambda: connect(server.address).link("busy").send_receive(PAUSE))
        wait_for(lambda: server.stats()["services"][0]["running"] == 1)
        doomed.kill()  # while the provider runs its call
        in_child(lambda: _call_add(server.address, "busy"))  # the provider finishes it, then serves this one
        wait_for(lambda: server.stats()["services"][0]["served"] == 2)


def _call_add(address: str, name: str) -> None:
    with connect(address) as s, s.link(name) as link:
        assert link.send_receive(ADD, 1, 1) == 2


def test_untrusted_link_requests_fail_alone(server):
    with connect(server.address) as s:
        offer = s.offer("u", handler)
        with pytest.raises(broker.ServiceError, match="offered already"):
            s.offer("u", handler)
        link = s.link("u")
        for code, args, text in [
            (LINK_OFFER, (b"",), "1 to 200 bytes"),
            (LINK_OFFER, (b"\xff",), "UTF-8"),
        ]:
            with pytest.raises(broker.ServiceError, match=text):
                s.send_receive(code, *args)
        with pytest.raises(broker.BadHandle):
            s.send_receive(LINK_TAKE, Buffer(64), handle=link.handle)  # a link is not an offer
        with pytest.raises(broker.BadHandle):
            s.send_receive(LINK_CALL, 1, b"", None, handle=offer.handle)
        with pytest.raises(broker.ServiceError, match="takes the code"):
            s.send_receive(LINK_CALL, b"x", b"", None, handle=link.handle)
        assert s.send_receive(LINK_REPLY, 12345, 0, b"", b"", handle=offer.handle) == 0  # an unknown id: ignored
        # a call whose packed arguments are garbage: its caller learns it, the provider goes on
        fut = s.send(LINK_CALL, ADD, b"\xff\xff", None, handle=link.handle)
        assert offer.serve_one(5)
        with pytest.raises(broker.ServiceError, match="cannot read") as e:
            fut.result(5)
        assert e.value.status == broker.Status.ARGUMENT
        fut = s.send(LINK_CALL, ADD, pack_call((2, 3), Buffer)[0], None, handle=link.handle)
        assert offer.serve_one(5) and fut.result(5) == 5
        # a provider that writes into a call that has nothing writable: its caller is told, the server goes on
        fut = s.send(LINK_CALL, ADD, pack_call((2, 3), Buffer)[0], None, handle=link.handle)
        take = offer._start_take()
        assert take.result(5) > 0
        offer._take = None
        cid = int.from_bytes(offer._buf.value[:8], "little")
        assert s.send_receive(LINK_REPLY, cid, 0, pack_writes({1: b"x"}), b"", handle=offer.handle) == 0
        with pytest.raises(broker.ServiceError, match="not writable") as e:
            fut.result(5)
        assert e.value.status == broker.Status.ARGUMENT
        offer.close()
        link.close()
    with pytest.raises(ValueError):
        unpack_call(b"\x09" + bytes(12))


def test_an_asyncio_provider(server):
    import asyncio

    ready_r, ready_w = os.pipe()

    def provider() -> None:
        async def upper(call) -> int:
            await asyncio.sleep(0)
            call.write(1, call.read(0).upper())
            return 7

        async def main() -> None:
            async with await broker.aconnect(server.address) as s:
                offer = await s.aoffer("aupper", upper)
                os.write(ready_w, b"p")
                task = asyncio.ensure_future(offer.aserve_forever())
                await asyncio.sleep(30)
                task.cancel()

        asyncio.run(main())

    prov = Child(provider)
    try:
        assert os.read(ready_r, 1) == b"p"

        def caller() -> None:
            with connect(server.address) as s, s.link("aupper") as link:
                out = Buffer(8)
                for _ in range(20):
                    assert link.send_receive(1, b"abc", out) == 7 and out.value == b"ABC"
                assert link.direct  # the asyncio loop serves the private pair too

        in_child(caller)
        # and an async handler served by the plain serve_one: run to completion there
        with connect(server.address, sharable=True) as s:
            async def lower(call) -> int:
                call.write(1, call.read(0).lower())
                return 1
            offer = s.offer("alower", lower)
            link = s.link("alower")
            blob, room = pack_call((b"ABC", Buffer(8)), Buffer)
            fut = s.send(LINK_CALL, 1, blob, Buffer(room), handle=link.handle)  # a link's call, made by hand
            assert offer.serve_one(5) and fut.result(5) == 1
            offer.close()
            link.close()
    finally:
        prov.kill()
        os.close(ready_r)
        os.close(ready_w)


def _pair_maps(pid: int | str = "self") -> list[str]:
    """The private pairs of rings (link segments) a process maps."""
    with open(f"/proc/{pid}/maps") as f:
        return sorted({line.split()[-2] if line.rstrip().endswith("(deleted)") else line.split()[-1]
                       for line in f if ".link." in line})


def _until_direct(link, *args) -> int:
    """Calls until one goes over the private pair (the first after pairing may go relayed)."""
    for i in range(20):
        link.send_receive(ADD, 1, 1)
        if link.direct:
            return i
    raise AssertionError("the link never got its private pair")


def test_a_direct_pair_fails_its_call_when_the_provider_dies_and_the_next_provider_gets_one(server):
    """In one session the broker steps out of the path; kill -9 of the provider mid-call fails that
    call DISCONNECTED, the link goes back to the broker (NOT_FOUND while nobody offers), and a new
    provider's calls go over a new pair. Nothing is left in /dev/shm (the autouse fixture checks)."""
    ready_r, ready_w = os.pipe()
    prov = _provider(server.address, "svc", ready_w)
    try:
        assert os.read(ready_r, 1) == b"p"
        with connect(server.address) as s, s.link("svc") as link:
            _until_direct(link)
            assert link.send_receive(ADD, 40, 2) == 42 and link.direct
            [svc] = server.stats()["services"]
            assert svc["direct"] == 1 and svc["pairs"] == 1
            first = _pair_maps()
            assert len(first) == 1 and _pair_maps(prov.pid) == first  # both ends map the pair
            served_before = svc["served"]
            killer = threading.Timer(0.3, os.kill, (prov.pid, signal.SIGKILL))
            killer.start()
            with pytest.raises(broker.ServiceError, match="the provider of 'svc' is gone") as e:
                link.send_receive(SLOW)  # the provider sleeps in it, then dies
            killer.join()
            prov.join(10)
            assert e.value.status == broker.Status.DISCONNECTED
            assert server.stats()["services"] == [] or server.stats()["services"][0]["served"] == served_before
            wait_for(lambda: server.stats()["services"] == [])
            # the caller let its side go, and the server (in this process) its segment, just after
            wait_for(lambda: _pair_maps() == [])
            with pytest.raises(broker.ServiceError) as e:
                link.send_receive(ADD, 1, 2)
            assert e.value.status == broker.Status.NOT_FOUND
            prov = _provider(server.address, "svc", ready_w)
            assert os.read(ready_r, 1) == b"p"
            _until_direct(link)
            second = _pair_maps()
            assert len(second) == 1 and second != first
            assert link.send_receive(ADD, 20, 22) == 42 and link.direct
            assert server.stats()["services"][0]["pairs"] == 1
    finally:
        prov.kill()
        os.close(ready_r)
        os.close(ready_w)


def test_a_caller_killed_mid_call_on_its_pair_leaves_the_provider_serving(server):
    ready_r, ready_w = os.pipe()
    prov = _provider(server.address, "busy", ready_w)
    go_r, go_w = os.pipe()
    try:
        assert os.read(ready_r, 1) == b"p"

        def doomed() -> None:
            with connect(server.address) as s, s.link("busy") as link:
                _until_direct(link)
                os.write(go_w, b"g")
                link.send_receive(PAUSE)  # killed in here

        kid = Child(doomed)
        assert os.read(go_r, 1) == b"g"
        wait_for(lambda: len(_pair_maps(prov.pid)) == 1)
        time.sleep(0.1)  # into the provider's handler
        kid.kill()
        wait_for(lambda: server.stats()["services"][0]["direct"] == 0)  # the broker ended the pair
        wait_for(lambda: _pair_maps(prov.pid) == [], timeout=10)  # and the provider let it go
        in_child(lambda: _until_direct(connect(server.address).link("busy")))  # it serves the next caller
        assert server.stats()["services"][0]["pairs"] == 2
    finally:
        prov.kill()
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)


def test_a_caller_writing_garbage_into_its_pair_ends_only_its_pair(server):
    with _provided(server.address, "g") as prov:
        with connect(server.address) as s, s.link("g") as bad, s.link("g") as good:
            _until_direct(bad)
            _until_direct(good)
            assert len(_pair_maps(prov.pid)) == 2
            bad._pair.tx.send(b"BRK1 this is not a request frame at all")
            with pytest.raises(broker.ServiceError) as e:
                bad.send_receive(ADD, 1, 2)  # its pair ends: the provider closed its side
            assert e.value.status == broker.Status.DISCONNECTED
            wait_for(lambda: len(_pair_maps(prov.pid)) == 1)
            wait_for(lambda: server.stats()["services"][0]["direct"] == 1)  # the provider told the broker
            for i in range(50):
                assert good.send_receive(ADD, i, 1) == i + 1 and good.direct
            assert bad.send_receive(ADD, 2, 2) == 4  # relayed, and then it asks for a new pair
            _until_direct(bad)


def test_a_caller_in_another_session_is_relayed_and_maps_no_pair(tmp_path, other_user):
    """A different user gets a socket session, so its calls are relayed; a same-session caller of
    the same provider at the same time goes over its pair. Only the two ends map a pair."""
    import shutil
    import tempfile

    uid, gid = other_user
    d = tempfile.mkdtemp(prefix="brk-link-", dir="/tmp")
    os.chmod(d, 0o777)
    path = os.path.join(d, "l.sock")
    ready_r, ready_w = os.pipe()
    r, w = os.pipe()
    try:
        with broker.Server(path, grants=[f"uid:{uid} service:x call"]) as srv:  # another user: granted
            os.chmod(path, 0o666)
            prov = _provider(path, "Global\\x", ready_w)  # another user: a Global name
            try:
                assert os.read(ready_r, 1) == b"p"

                def stranger() -> None:
                    os.setgid(gid)
                    os.setuid(uid)
                    with connect(path) as s, s.link("Global\\x") as link:
                        paths = []
                        for i in range(100):
                            assert link.send_receive(ADD, i, 1) == i + 1
                            paths.append(link.direct)
                        maps = _pair_maps()
                        os.write(w, repr((s.transport, any(paths), maps)).encode())

                kid = Child(stranger)
                with connect(path) as s, s.link("Global\\x") as link:
                    _until_direct(link)
                    assert kid.join(60) == 0
                    transport, any_direct, maps = eval(os.read(w and r, 4096).decode())
                    assert transport == "socket" and not any_direct and maps == []
                    assert len(_pair_maps()) == 1 and len(_pair_maps(prov.pid)) == 1  # (the server's is ours too)
                    [svc] = srv.stats()["services"]
                    assert svc["direct"] == 1 and svc["served"] >= 100
            finally:
                prov.kill()
    finally:
        for fd in (ready_r, ready_w, r, w):
            os.close(fd)
        shutil.rmtree(d, ignore_errors=True)


def test_a_servers_policies_cover_the_broker_own_services(tmp_path):
    """Policies apply to the topic and link codes as to any other: here nobody may list topics or
    offer a service, while publishing and linking stay open."""
    from shmbroker.protocol.codes import LINK_OFFER
    from shmbroker.protocol.codes import TOPIC_LIST

    path = str(tmp_path / "p.sock")
    deny = (broker.Policy(range(TOPIC_LIST, TOPIC_LIST + 1), broker.NOT_SUPPORTED),
            broker.Policy(range(LINK_OFFER, LINK_OFFER + 1), broker.NOT_SUPPORTED))
    with broker.Server(path, policies=deny), connect(path) as s:
        with pytest.raises(broker.PermissionDenied):
            s.topics()
        with pytest.raises(broker.PermissionDenied):
            s.offer("svc", handler)
        with s.publisher("t") as pub, s.subscriber("t") as sub:
            pub.publish(b"x")
            assert sub.receive(5) == b"x"
        with s.link("svc") as link, pytest.raises(broker.ServiceError) as e:
            link.send_receive(ADD, 1, 2)
        assert e.value.status == broker.Status.NOT_FOUND


@pytest.mark.stress  # 1.6 s
def test_a_link_on_a_sharable_session_is_relayed_and_an_idle_one_keeps_its_pair(server):
    """A pair is one ring each way, for one thread at a time: a sharable session's link is relayed.
    An unsharable one that waits (the provider looks at its pairs meanwhile) still gets its pair."""
    with _provided(server.address, "idle") as prov:
        with connect(server.address, sharable=True) as s, s.link("idle") as link:
            for i in range(20):
                assert link.send_receive(ADD, i, 1) == i + 1 and not link.direct
        assert server.stats()["services"][0]["pairs"] == 0
        with connect(server.address) as s, s.link("idle") as link:
            time.sleep(1.5)  # three of the provider's looks at its pairs while the caller has not attached
            assert link.send_receive(ADD, 1, 1) == 2
            _until_direct(link)
            assert link.send_receive(ADD, 2, 2) == 4 and link.direct


def test_a_pair_the_caller_never_used_is_let_go_when_its_link_closes(server):
    """The broker tells the provider of a pair that ended before its caller attached (TAKE_UNPAIR)."""
    with _provided(server.address, "unused") as prov:
        with connect(server.address) as s:
            link = s.link("unused")  # it asks for a pair at once; the provider attaches
            wait_for(lambda: len(_pair_maps(prov.pid)) == 1)
            link.close()  # without a call: the caller never attached
            wait_for(lambda: _pair_maps(prov.pid) == [], timeout=10)
            assert server.stats()["services"][0]["direct"] == 0


@pytest.mark.stress  # 4 s
def test_relayed_calls_are_served_while_a_pair_keeps_the_provider_busy(server):
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    prov = _provider(server.address, "busy2", ready_w)
    try:
        assert os.read(ready_r, 1) == b"p"

        def hammer() -> None:  # direct calls, one after another, for a few seconds
            with connect(server.address) as s, s.link("busy2") as link:
                _until_direct(link)
                os.write(go_w, b"g")
                end = time.monotonic() + 4
                while time.monotonic() < end:
                    link.send_receive(ADD, 1, 1)

        kids = [Child(hammer) for _ in range(2)]  # two of them: there is always a direct call waiting
        for _ in kids:
            assert os.read(go_r, 1) == b"g"
        with connect(server.address, socket_only=True) as s, s.link("busy2") as link:
            for i in range(20):
                assert link.send_receive(ADD, i, 2, timeout=3) == i + 2 and not link.direct
        assert [kid.join(30) for kid in kids] == [0, 0]
    finally:
        prov.kill()
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)


def test_a_call_over_the_frame_limit_goes_to_the_broker_which_refuses_it(tmp_path):
    path = str(tmp_path / "small.sock")
    ready_r, ready_w = os.pipe()
    with broker.Server(path, max_frame=8192):
        prov = _provider(path, "small", ready_w)
        try:
            assert os.read(ready_r, 1) == b"p"
            with connect(path) as s, s.link("small") as link:
                _until_direct(link)
                with pytest.raises(ValueError, match="over the server's limit"):  # as a session's call says
                    link.send_receive(UPPER, b"x" * 20000, Buffer(16))
                assert link.send_receive(ADD, 1, 2) == 3 and link.direct  # the pair is fine
        finally:
            prov.kill()
            os.close(ready_r)
            os.close(ready_w)


def test_a_links_send_and_asend_receive_do_not_wait(server):
    """link.send() returns a future at once (several may be in flight); asend_receive() for asyncio."""
    import asyncio

    with _provided(server.address, "later") as prov:
        with connect(server.address) as s, s.link("later") as link:
            outs = [Buffer(16) for _ in range(3)]
            futs = [link.send(UPPER, b"abc%d" % i, out) for i, out in enumerate(outs)]
            assert [f.result(10) for f in futs] == [4, 4, 4]
            assert [o.value for o in outs] == [b"ABC0", b"ABC1", b"ABC2"]  # the writes, applied
            with pytest.raises(broker.ServiceError, match="failed on purpose"):
                link.send(FAIL).result(10)
            assert asyncio.run(link.asend_receive(ADD, 20, 22)) == 42
