"""The C codec (csrc/py/codec.c and csrc/py/server.c) against the Python reference in src/shmbroker/protocol/frames.py.

C encodes and decodes the common REQUEST and COMPLETE frames and leaves
everything else to the reference. These tests hold the two to the same
bytes, the same events and the same errors, on random and on mutated frames.
"""
from __future__ import annotations

import struct

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from shmbroker.protocol.frames import (
    MAX_TEXT,
    NO_ARG,
    Arg,
    ArgKind,
    Complete,
    FrameReader,
    ProtocolError,
    Request,
    Write,
    c_encode_complete,
    c_encode_request,
    complete_frame,
    complete_frame_py,
    encode,
    request_frame,
    request_frame_py,
)

I64 = st.integers(-(2**63), 2**63 - 1)


@st.composite
def args(draw: st.DrawFn) -> Arg:
    kind = draw(st.sampled_from(list(ArgKind)))
    if kind == ArgKind.NONE:
        return NO_ARG
    if kind == ArgKind.INT:
        return Arg(kind, draw(I64))
    if kind == ArgKind.HANDLE:
        return Arg(kind, draw(st.integers(0, 2**32 - 1)))
    if kind == ArgKind.WRITE:
        return Arg(kind, draw(st.integers(0, 2**31)))
    data = draw(st.binary(max_size=70))
    if kind == ArgKind.READ:
        return Arg(kind, 0, data)
    return Arg(kind, len(data) + draw(st.integers(0, 100)), data)


requests = st.builds(
    Request,
    st.integers(1, 2**64 - 1),
    st.integers(-(2**31), 2**31 - 1),
    st.tuples(args(), args(), args(), args()),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
writes = st.lists(st.integers(0, 3), unique=True, max_size=4).flatmap(
    lambda idx: st.tuples(*[st.builds(Write, st.just(i), st.binary(max_size=70)) for i in idx]))
completes = st.builds(
    Complete,
    st.integers(1, 2**64 - 1),
    st.integers(-(2**31), 2**31 - 1),
    writes,
    st.one_of(st.none(), st.text(max_size=40)),
)


def py_request(r: Request) -> bytes:
    return request_frame_py(r.request_id, r.code, r.handle, r.asynchronous, r.args)


def py_complete(c: Complete) -> bytes:
    return complete_frame_py(c.request_id, c.status, c.writes, c.error)


def reference(data: bytes, max_frame: int = 1 << 20) -> list:
    return FrameReader(max_frame, fast=False).feed(data)


@settings(max_examples=400, deadline=None)
@given(requests)
def test_requests_encode_to_the_reference_bytes_and_decode_back(r):
    wire = request_frame(r.request_id, r.code, r.handle, r.asynchronous, r.args)
    assert wire == py_request(r)
    [got] = FrameReader().feed(wire)
    assert got == r == reference(wire)[0]
    assert type(got) is Request and all(type(a) is Arg for a in got.args)
    assert all(type(a.kind) is ArgKind for a in got.args)  # the enum, as the reference gives it


@pytest.mark.stress  # property-based, thousands of cases
@settings(max_examples=400, deadline=None)
@given(completes)
def test_completions_encode_to_the_reference_bytes_and_decode_back(c):
    wire = complete_frame(c.request_id, c.status, c.writes, c.error)
    assert wire == py_complete(c)
    [got] = FrameReader().feed(wire)
    assert got == reference(wire)[0]
    assert got.request_id == c.request_id and got.status == c.status and got.writes == c.writes
    assert type(got) is Complete and all(type(w) is Write for w in got.writes)


@pytest.mark.stress  # property-based, thousands of cases
@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(requests, completes), min_size=1, max_size=6), st.data())
def test_a_stream_cut_anywhere_gives_the_reference_events(events, data):
    wire = b"".join(py_request(e) if isinstance(e, Request) else py_complete(e) for e in events)
    cut = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=4)))
    fast, got = FrameReader(1 << 20), []
    for a, b in zip([0, *cut], [*cut, len(wire)]):
        got += fast.feed(wire[a:b])
    assert got == reference(wire) and not fast.pending


def outcome(reader: FrameReader, data: bytes) -> object:
    try:
        return reader.feed(data)
    except ProtocolError as e:
        return f"ProtocolError: {e}"


@pytest.mark.stress  # property-based, thousands of cases
@settings(max_examples=600, deadline=None)
@given(st.one_of(requests, completes), st.data())
def test_mutated_frames_give_the_reference_events_or_the_same_error(ev, data):
    b = bytearray(py_request(ev) if isinstance(ev, Request) else py_complete(ev))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):  # and cut
        del b[data.draw(st.integers(0, len(b))):]
    assert outcome(FrameReader(4096), bytes(b)) == outcome(FrameReader(4096, fast=False), bytes(b))


def test_the_encoders_leave_what_they_do_not_take_to_the_reference():
    # each of these is refused by the reference with its own error
    with pytest.raises(ValueError, match="exactly 4"):
        request_frame(1, 2, 0, False, [NO_ARG])
    with pytest.raises(ValueError, match="max length"):
        request_frame(1, 2, 0, False, [Arg(ArgKind.READWRITE, 1, b"ab"), NO_ARG, NO_ARG, NO_ARG])
    with pytest.raises(struct.error):
        request_frame(1, 2**31, 0, False, [NO_ARG] * 4)
    with pytest.raises(ValueError, match="more writes"):
        complete_frame(1, 0, [Write(0, b"")] * 5, None)
    # and these it encodes exactly as the reference does
    odd = [Arg(ArgKind.READ, 0, bytearray(b"x")), NO_ARG, NO_ARG, NO_ARG]  # a bytearray payload
    assert request_frame(1, 2, 0, False, odd) == request_frame_py(1, 2, 0, False, odd)
    long_error = "é" * MAX_TEXT
    assert complete_frame(1, -2, [], long_error) == complete_frame_py(1, -2, [], long_error)


def test_a_bad_frame_after_good_ones_keeps_the_good_ones_for_nobody():
    """The whole feed fails, as the reference's does: the connection ends."""
    good = py_request(Request(1, 2))
    bad = bytearray(good)
    bad[0] = ord("X")
    with pytest.raises(ProtocolError, match="bad magic"):
        FrameReader().feed(good + bytes(bad))
    rest = encode(Complete(3, 0))
    assert FrameReader().feed(good + rest) == reference(good + rest)


def test_the_c_encoders_take_only_args_and_writes_and_run_no_python_code():
    """C reads an Arg's and a Write's fields as declared slots, so no Python code runs while it holds
    the list (a regression: an item whose attribute emptied the list left C reading freed items).
    Anything else, a subclass or a look-alike, is the Python encoder's (NotImplemented)."""
    looked: list = []

    class LookAlike:
        value, data = 0, b""

        @property
        def kind(self):
            looked.append("kind")
            return ArgKind.INT

    class SubArg(Arg):
        __slots__ = ()

        @property
        def kind(self):  # type: ignore[override]
            looked.append("kind")
            return ArgKind.INT

    class LookAlikeWrite:
        data = b"x"

        @property
        def index(self):
            looked.append("index")
            return 0

    for odd in (LookAlike(), SubArg.__new__(SubArg)):
        assert c_encode_request(1, 2, 0, False, [odd, NO_ARG, NO_ARG, NO_ARG]) is NotImplemented
    assert c_encode_complete(1, 0, [LookAlikeWrite(), Write(1, b"y")], None) is NotImplemented
    assert looked == []
    assert c_encode_request(1, 2, 0, False, [Arg(ArgKind.INT, 5), NO_ARG, NO_ARG, NO_ARG]).startswith(b"BRK1")
    assert c_encode_complete(1, 0, [Write(1, b"y"), (2, b"z")], None).startswith(b"BRK1")
