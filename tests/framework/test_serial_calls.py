"""Calls with objects (issue 17, item 3): ClientSession.call(..., serializer=), @broker.function(code,
serializer=), message.decode/reply; every serializer, on every carrier, with the client in another
process; a peer's garbage fails that call alone."""
from __future__ import annotations

import pytest

import shmbroker as broker
from shmbroker import connect

from tests.helpers import in_child

ORDER = {"who": "Zoë", "items": [1, 2, 3], "note": None}


class Shop(broker.Session):
    serializer_name = "json"

    @broker.function(1)
    def echo_raw(self, m: broker.Message) -> None:  # the reply is whatever bytes the client sent
        m.reply(m.read(0))

    @broker.function(2)
    def by_hand(self, m: broker.Message) -> None:  # message.decode / message.reply, serializer named per call
        name = m.text(0)
        order = m.decode(1, name)
        m.reply({"total": sum(order["items"]), "who": order["who"]}, name)

    @broker.function(4)
    def junk(self, m: broker.Message) -> None:  # a server whose reply no serializer reads
        m.reply(b"\xc1\xff\x00garbage")


def _shop(name: str) -> type[broker.Session]:
    class Typed(Shop):
        @broker.function(3, serializer=name)
        def total(self, m: broker.Message, order: dict, extra: int) -> dict:
            return {"total": sum(order["items"]) + extra, "who": order["who"]}
    return Typed


@pytest.fixture(params=["socket", "shm", "tcp"])
def carrier(request):
    return request.param


@pytest.mark.parametrize("name", broker.SERIALIZERS)
def test_calls_with_objects_from_another_process(tmp_path, carrier, name):
    cls = _shop(name)
    path = str(tmp_path / "shop")
    srv = broker.Server(path, cls, tcp="tcp://127.0.0.1:0", shm_policy="off" if carrier != "shm" else "strict")
    with srv:
        address = f"tcp://127.0.0.1:{srv.bound[1][1]}" if carrier == "tcp" else path

        def client() -> None:
            with connect(address) as s:
                assert s.transport == ("shared memory" if carrier == "shm" else "socket")
                f = broker.functions(s, cls)
                assert f.total(ORDER, 10) == {"total": 16, "who": "Zoë"}  # objects both ways
                assert f.total.call(ORDER, 0) == {"total": 6, "who": "Zoë"}
                got = s.call(2, name, s_encode(name, ORDER))
                assert broker.serializer(name).decode(got) == {"total": 6, "who": "Zoë"}
                assert s.call(3, ORDER, 1, serializer=name) == {"total": 7, "who": "Zoë"}
                # garbage from this client: that call fails (ARGUMENT), the session goes on
                with pytest.raises(broker.ServiceError, match="could not decode") as e:
                    s.call(3, b"\xc1\xff\x00garbage", b"\xc1", serializer=None)
                assert e.value.status == broker.Status.ARGUMENT
                with pytest.raises(broker.ServiceError, match="could not decode") as e:
                    s.call(2, name, b"\xc1\xff\x00garbage")  # message.decode's DecodeError: ARGUMENT too
                assert e.value.status == broker.Status.ARGUMENT
                # garbage from the server: DecodeError here, for that call alone
                with pytest.raises(broker.DecodeError, match=f"{name} could not decode"):
                    s.call(4, serializer=name)
                assert s.call(1, [1, "two"], serializer=name) == [1, "two"]
                assert f.total(ORDER, 2) == {"total": 8, "who": "Zoë"}
        in_child(client)


def s_encode(name: str, obj: object) -> bytes:
    return broker.serializer(name).encode(obj)


def test_pickle_only_by_name_and_objects_it_alone_carries(tmp_path):
    """Pickle carries what the others cannot (a set, a tuple as a tuple), when asked for by name."""
    path = str(tmp_path / "p")
    with broker.Server(path, _shop("pickle")), connect(path) as s:
        got = s.call(1, {1, 2}, serializer="pickle")  # echo_raw: the reply is the request's bytes
        assert got == {1, 2}
        with pytest.raises(TypeError, match="msgspec cannot encode set|json cannot encode set"):
            s.call(1, {1, 2}, serializer="json")


def test_a_function_that_takes_objects_refuses_a_class_it_cannot_serve():
    with pytest.raises(ValueError, match="serializer must be one of"):
        class Bad(broker.Session):
            @broker.function(1, serializer="yaml")
            def f(self, m): ...
