"""A request/reply that reads like Python (issue 17, item 3): functions by name (@broker.function and
broker.functions), a reply as bytes of any length (ClientSession.call), str arguments."""
from __future__ import annotations

import pytest

import shmbroker as broker
from shmbroker import connect


class Calc(broker.Session):
    @broker.function(1)
    def add(self, m: broker.Message) -> None:
        m.complete(m.integer(0) + m.integer(1))

    @broker.function(2)
    def greet(self, m: broker.Message) -> None:
        m.write(1, f"hello, {m.text(0)}".encode())
        m.complete(0)

    @broker.function(3)
    def blob(self, m: broker.Message) -> None:
        m.write(1, bytes(range(256)) * (m.integer(0) // 256))
        m.complete(0)


@pytest.fixture(params=["socket", "shm", "tcp"])
def calc(request, tmp_path):
    path = str(tmp_path / "c")
    srv = broker.Server(path, Calc, tcp="tcp://127.0.0.1:0", shm_policy="strict" if request.param == "shm" else "off")
    with srv:
        srv.address = f"tcp://127.0.0.1:{srv.bound[1][1]}" if request.param == "tcp" else path
        yield srv


def test_functions_by_name_and_replies_of_any_length(calc):
    with connect(calc.address) as s:
        f = broker.functions(s, Calc)
        assert Calc.functions == {"add": 1, "greet": 2, "blob": 3}
        assert f.add(2, 3) == 5
        assert f.greet.call("Ada") == b"hello, Ada"  # a str argument: its UTF-8 bytes
        assert f.greet.call("Zoë") == "hello, Zoë".encode()
        big = f.blob.call(3 << 20)  # 3 MiB: no Buffer sized beforehand
        assert big == bytes(range(256)) * (3 << 12)
        assert s.call(2, "Bob") == b"hello, Bob"
        by_map = broker.functions(s, {"plus": 1})
        assert by_map.plus(40, 2) == 42 and repr(by_map.plus) == "<function plus (code 1)>"
        with pytest.raises(broker.ServiceError, match="function 9 is not supported"):
            s.send_receive(9)
        with pytest.raises(broker.ServiceError, match="not UTF-8"):
            f.greet.call(b"\xff")


def test_what_is_refused_says_so():
    with pytest.raises(ValueError, match="both function 1"):
        class Twice(broker.Session):
            @broker.function(1)
            def a(self, m): ...

            @broker.function(1)
            def b(self, m): ...
    with pytest.raises(ValueError, match="below 0 is the broker's"):
        broker.function(-3)
    with pytest.raises(TypeError, match="@broker.function"):
        broker.functions(None, broker.Session)  # type: ignore[arg-type]


def test_call_keeps_the_fourth_argument_for_the_reply(calc):
    with connect(calc.address) as s, pytest.raises(TypeError, match="at most three"):
        s.call(2, 1, 2, 3, 4)
