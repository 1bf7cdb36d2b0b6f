"""Serializers: Python objects to bytes and back, for topics and calls that opt in (serializer=).

The wire carries bytes; a serializer is what a publisher, a subscriber, a caller or a function
uses at its own end to send and receive objects. The default is none (bytes and numpy arrays as
they are). The built-in names:

* "msgspec": MessagePack through msgspec (the fastest; `pip install shmbroker[msgspec]`);
* "msgpack": MessagePack through msgpack (`pip install shmbroker[msgpack]`);
* "json": the standard library's json (UTF-8);
* "pickle": the standard library's pickle. Only when asked for by name, and only between peers
  you trust: unpickling runs whatever code the bytes ask for, so a hostile peer owns the process.

Any object with `encode(obj) -> bytes` and `decode(bytes) -> obj` is a serializer too. Bytes from
a peer are untrusted: whatever a decoder raises on them becomes DecodeError (a ValueError) for
that one message or call, never an error of the session.
"""
from __future__ import annotations

import json
import pickle
from typing import Any, Protocol, runtime_checkable

from shmbroker._errors import BrokerError

__all__ = ["Serializer", "DecodeError", "serializer", "NAMES"]

NAMES = ("msgspec", "msgpack", "json", "pickle")


class DecodeError(BrokerError, ValueError):
    """A peer's bytes that the serializer could not decode: that message or call fails, nothing else."""


@runtime_checkable
class Serializer(Protocol):
    """What serializer= takes besides a name: encode(obj) -> bytes, decode(bytes) -> obj."""

    def encode(self, obj: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


class _Checked:
    """A serializer whose decode turns whatever goes wrong with a peer's bytes into DecodeError."""

    __slots__ = ("name", "_encode", "_decode")

    def __init__(self, name: str, encode: Any, decode: Any) -> None:
        self.name, self._encode, self._decode = name, encode, decode

    def encode(self, obj: Any) -> bytes:
        try:
            out = self._encode(obj)
        except DecodeError:
            raise
        except Exception as e:
            raise TypeError(f"{self.name} cannot encode {type(obj).__name__}: {e}") from e
        if type(out) is not bytes:
            out = bytes(out)
        return out

    def decode(self, data: Any) -> Any:
        try:
            return self._decode(data)
        except Exception as e:  # untrusted bytes: any failure of the decoder is this message's alone
            n = memoryview(data).nbytes if not isinstance(data, (bytes, bytearray)) else len(data)
            raise DecodeError(f"{self.name} could not decode {n} bytes from the peer: "
                              f"{type(e).__name__}: {e}") from None

    def __repr__(self) -> str:
        return f"<serializer {self.name}>"


def _missing(name: str, e: ImportError) -> ImportError:
    return ImportError(f'serializer="{name}" needs the {name} package: pip install "broker[{name}]" '
                       f"(or pip install {name}); {e}")


def _msgspec() -> _Checked:
    try:
        import msgspec
    except ImportError as e:
        raise _missing("msgspec", e) from None
    enc, dec = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()
    return _Checked("msgspec", enc.encode, dec.decode)


def _msgpack() -> _Checked:
    try:
        import msgpack  # type: ignore[import-untyped]
    except ImportError as e:
        raise _missing("msgpack", e) from None

    def decode(data: Any) -> Any:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    return _Checked("msgpack", lambda o: msgpack.packb(o, use_bin_type=True), decode)


def _json() -> _Checked:
    def encode(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    def decode(data: Any) -> Any:
        return json.loads(data if isinstance(data, (bytes, bytearray)) else bytes(data))
    return _Checked("json", encode, decode)


def _pickle() -> _Checked:
    def decode(data: Any) -> Any:
        return pickle.loads(data)  # noqa: S301 (asked for by name: documented as unsafe)
    return _Checked("pickle", lambda o: pickle.dumps(o, protocol=pickle.HIGHEST_PROTOCOL), decode)


_MAKERS = {"msgspec": _msgspec, "msgpack": _msgpack, "json": _json, "pickle": _pickle}
_MADE: dict[str, _Checked] = {}


def serializer(spec: Any) -> _Checked | None:
    """The serializer for serializer=: None (raw bytes, the default), a name of NAMES, or an object
    with encode and decode (its decode's failures become DecodeError too). ImportError naming the
    extra to install when the name's package is missing; ValueError for an unknown name."""
    if spec is None:
        return None
    if isinstance(spec, _Checked):
        return spec
    if isinstance(spec, str):
        made = _MADE.get(spec)
        if made is None:
            maker = _MAKERS.get(spec)
            if maker is None:
                raise ValueError(f"serializer must be one of {', '.join(map(repr, NAMES))}, or an object with "
                                 f"encode and decode, not {spec!r}")
            made = _MADE[spec] = maker()
        return made
    encode, decode = getattr(spec, "encode", None), getattr(spec, "decode", None)
    if not callable(encode) or not callable(decode):
        raise TypeError(f"a serializer is a name ({', '.join(NAMES)}) or has encode(obj) -> bytes and "
                        f"decode(bytes) -> obj; {type(spec).__name__} has not")
    return _Checked(type(spec).__name__, encode, decode)
