"""Topics and linked services with objects (issue 17, item 3): publisher and subscriber serializer=,
offer(..., serializer=) and link.call(..., serializer=); every serializer; in place, relayed over a
socket and from another process; a peer's garbage is a DecodeError for that message or call alone."""
from __future__ import annotations

import os
import threading

import pytest

import shmbroker as broker
from shmbroker import Publisher, connect

from tests.helpers import Child

TICKS = [{"n": i, "px": 100.0 + i / 4, "sym": "ACME", "tags": ["a", None]} for i in range(50)]
JUNK = b"\xc1\xff\x00 not what any serializer reads"


def _collect(sub, good: int, bad: int) -> tuple[list, int]:
    """Receive until `good` objects and `bad` DecodeErrors came."""
    got, errors = [], 0
    while len(got) < good or errors < bad:
        try:
            got.append(sub.receive(10))
        except broker.DecodeError:
            errors += 1
    return got, errors


@pytest.mark.parametrize("name", broker.SERIALIZERS)
@pytest.mark.parametrize("way", ["in place", "socket", "another process"])
def test_objects_published_and_received(server, name, way):
    with connect(server.address, socket_only=way == "socket") as s:
        if way == "another process":
            sub = s.subscriber("ticks", serializer=name)
            r, w = os.pipe()

            def publish() -> None:
                with connect(server.address) as other:
                    pub = other.publisher("ticks", serializer=name)
                    for t in TICKS[:10]:
                        pub.publish(t)
                    pub.publish_many(TICKS[10:])
                    other.publisher("ticks").publish(JUNK)  # a raw publisher's garbage, on the same topic
                    os.read(r, 1)  # until the subscriber has it all
                    pub.close()

            with Child(publish) as child:
                got, errors = _collect(sub, len(TICKS), 1)
                os.write(w, b"x")
                assert child.join(30) == 0
            os.close(r)
            os.close(w)
        else:
            pub = s.publisher("ticks", serializer=name)
            raw = s.publisher("ticks")
            sub = s.subscriber("ticks", serializer=name)
            assert sub.in_place == (way == "in place")
            for t in TICKS[:10]:
                pub.publish(t)
            raw.publish(JUNK)
            pub.publish_many(TICKS[10:])
            got, errors = _collect(sub, len(TICKS), 1)
            pub.close()
            raw.close()
        assert got == TICKS and errors == 1  # in order, the garbage one failed alone
        sub.close()


@pytest.mark.parametrize("name", broker.SERIALIZERS)
def test_a_batch_stops_before_an_undecodable_message(server, name):
    with connect(server.address) as s:
        pub = s.publisher("batch", serializer=name)
        sub = s.subscriber("batch", serializer=name)
        pub.publish({"i": 1})
        pub.publish({"i": 2})
        Publisher.publish(pub, JUNK)  # this publisher's raw bytes, not encoded
        pub.publish({"i": 3})
        assert sub.receive_many(10, timeout=5) == [{"i": 1}, {"i": 2}]
        with pytest.raises(broker.DecodeError, match=f"{name} could not decode {len(JUNK)} bytes"):
            sub.receive_many(10, timeout=5)
        assert sub.receive_many(10, timeout=5) == [{"i": 3}]
        Publisher.publish(pub, JUNK)
        pub.publish({"i": 4})
        with pytest.raises(broker.DecodeError):
            sub.receive_message(5)
        m = sub.receive_message(5)
        assert m.value == {"i": 4} and m.seq == 6 and m.topic == "batch"
        pub.publish({"i": 5})
        assert next(iter(sub)) == {"i": 5}
        with pytest.raises(TypeError, match="gives objects"):
            sub.receive(out=bytearray(10))
        pub.close()
        sub.close()


@pytest.mark.parametrize("name", broker.SERIALIZERS)
def test_a_linked_service_with_objects_in_another_process(server, name):
    """The provider runs in another process; garbage either way fails that call alone."""
    ready_r, ready_w = os.pipe()
    stop_r, stop_w = os.pipe()

    def quote(call, order, qty):
        return {"sym": order["sym"], "px": qty * 2.5, "echo": order}

    def junk(call):
        call.reply(JUNK)  # a provider whose reply no serializer reads

    def serve(offer_name, handler, serializer, stop) -> None:
        with connect(server.address) as ps, ps.offer(offer_name, handler, serializer=serializer) as offer:
            os.write(ready_w, b"r")
            offer.serve_forever(stop, 0.05)

    def provide() -> None:
        stop = threading.Event()
        threads = [threading.Thread(target=serve, args=("quote", quote, name, stop)),
                   threading.Thread(target=serve, args=("junk", junk, None, stop))]
        for t in threads:
            t.start()
        os.read(stop_r, 1)
        stop.set()
        for t in threads:
            t.join()

    with Child(provide) as child:
        assert os.read(ready_r, 1) + os.read(ready_r, 1) == b"rr"
        with connect(server.address) as s, s.link("quote") as link, s.link("junk") as bad:
            for i in range(5):
                order = {"sym": "ACME", "n": i, "tags": [None, "x"]}
                assert link.call(0, order, i, serializer=name) == {"sym": "ACME", "px": i * 2.5, "echo": order}
            with pytest.raises(broker.ServiceError, match="could not decode") as e:
                link.call(0, JUNK, b"\x00")  # raw bytes to a provider that decodes
            assert e.value.status == broker.Status.ARGUMENT
            with pytest.raises(broker.DecodeError, match=f"{name} could not decode {len(JUNK)} bytes"):
                bad.call(0, serializer=name)
            assert link.call(0, {"sym": "Z"}, 4, serializer=name)["px"] == 10.0  # both go on
        os.write(stop_w, b"q")
        assert child.join(30) == 0
    for fd in (ready_r, ready_w, stop_r, stop_w):
        os.close(fd)


@pytest.mark.parametrize("name", broker.SERIALIZERS)
def test_the_host_process_publishes_offers_and_calls_objects(tmp_path, name):
    path = str(tmp_path / "host")

    def quote(call, order):
        return {"px": order["qty"] * 2}

    with broker.Server(path) as srv, connect(path) as s:
        sub = s.subscriber("host", serializer=name)
        pub = srv.publisher("host", serializer=name)
        pub.publish({"n": 1})
        pub.publish_many([{"n": 2}, {"n": 3}])
        srv.publish("host", JUNK)  # the host's raw bytes: this subscriber's DecodeError alone
        assert [sub.receive(5) for _ in range(3)] == [{"n": 1}, {"n": 2}, {"n": 3}]
        with pytest.raises(broker.DecodeError):
            sub.receive(5)
        with srv.offer("quote", quote, serializer=name):
            with s.link("quote") as link:
                assert link.call(0, {"qty": 4}, serializer=name) == {"px": 8}
                with pytest.raises(broker.ServiceError, match="could not decode") as e:
                    link.call(0, JUNK)
                assert e.value.status == broker.Status.ARGUMENT
            with srv.link("quote") as host_link:
                assert host_link.call(0, {"qty": 5}, serializer=name) == {"px": 10}
        pub.close()
        sub.close()
