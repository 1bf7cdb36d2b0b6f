"""Serializers (src/shmbroker/protocol/serial.py): every built-in name, objects of one's own, a peer's garbage."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import shmbroker as broker

DATA = {"id": 7, "name": "Zoë", "items": [1, 2.5, None, True], "nested": {"k": [b"raw".hex()]}}
GARBAGE = [b"", b"\xc1", b"\x92\x01", b"\xff" * 7, b"\x80\x05\x95garbage", b'{"a": ', b"\xdd\xff\xff\xff\xff"]


@pytest.mark.parametrize("name", broker.SERIALIZERS)
def test_every_name_round_trips(name):
    ser = broker.serializer(name)
    data = ser.encode(DATA)
    assert type(data) is bytes and data
    assert ser.decode(data) == DATA
    assert ser.decode(memoryview(data)) == DATA  # a view of the bytes too (a message read in place)
    assert broker.serializer(name) is ser  # made once


@pytest.mark.parametrize("name", broker.SERIALIZERS)
def test_a_peers_garbage_is_a_decode_error(name):
    ser = broker.serializer(name)
    failed = 0
    for junk in GARBAGE:
        try:
            ser.decode(junk)
        except broker.DecodeError as e:
            assert isinstance(e, ValueError) and isinstance(e, broker.BrokerError)
            assert name in str(e) and f"{len(junk)} bytes" in str(e)
            failed += 1
    assert failed >= len(GARBAGE) - 1  # (a byte string may happen to be valid for one of them)
    deep = b"\x91" * 100_000 + b"\xc0"  # an array in an array... 100,000 deep: a hostile nesting
    if name in ("msgspec", "msgpack"):
        with pytest.raises(broker.DecodeError):
            ser.decode(deep)
    with pytest.raises(broker.DecodeError):
        broker.serializer("json").decode(b"[" * 100_000)


def test_objects_of_ones_own_and_what_is_refused():
    class Upper:
        def encode(self, obj):
            return obj.upper().encode()

        def decode(self, data):
            return bytes(data).decode("ascii")

    ser = broker.serializer(Upper())
    assert ser.decode(ser.encode("abc")) == "ABC"
    with pytest.raises(broker.DecodeError, match="Upper could not decode"):
        ser.decode(b"\xff")
    assert isinstance(Upper(), broker.Serializer)
    assert broker.serializer(None) is None
    with pytest.raises(ValueError, match="'msgspec', 'msgpack', 'json', 'pickle'"):
        broker.serializer("yaml")
    with pytest.raises(TypeError, match="encode"):
        broker.serializer(object())
    with pytest.raises(TypeError, match="msgspec cannot encode object"):
        broker.serializer("msgspec").encode(object())


@pytest.mark.parametrize("name", ["msgspec", "msgpack"])
def test_a_missing_package_names_the_extra(name):
    """A process where the package cannot be imported (as if not installed) is told what to install."""
    code = (f"import sys; sys.modules[{name!r}] = None\n"
            "import shmbroker as broker\n"
            "try:\n"
            f"    broker.serializer({name!r})\n"
            "except ImportError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr
    assert f'pip install "broker[{name}]"' in out.stdout


def test_json_is_utf8_and_compact():
    assert broker.serializer("json").encode({"a": "é"}) == json.dumps({"a": "é"}, separators=(",", ":"),
                                                                       ensure_ascii=False).encode()
