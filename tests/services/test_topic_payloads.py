"""Every payload kind through a topic, on every path: what was published is what arrives.

bytes, bytearray, memoryview (any format, contiguous or not), numpy arrays (any dtype, structured
ones included, any order, any rank) and messages bigger than a ring record (fragments), to a direct
subscriber (it reads the publisher's ring in place), to a relayed one (another session: the server
relays the ring over its socket) and from a publisher on a socket (no ring: each publish is a
call). On a ring, C writes the message from the caller's buffer straight into the ring
(topic_publish, csrc/py/ring.c); receive_into and receive(out=) copy it straight out again.
"""
from __future__ import annotations

import json
import struct
import threading

import hypothesis.strategies as st
import numpy as np
from hypothesis import given, settings
import pytest

import shmbroker as broker
from shmbroker import connect
from shmbroker.services.topics import client as topics_client

STRUCT = np.dtype([("a", "<i4"), ("b", "<f8")])
NESTED = np.dtype([("id", "<u2"), ("pos", [("x", "<f4"), ("y", "<f4")]), ("tag", "S3"), ("v", "<i2", (2, 3))])
PADDED = np.dtype({"names": ["a", "b"], "formats": ["<i4", "<f8"], "offsets": [0, 8], "itemsize": 24})


def _payloads() -> list[object]:
    rng = np.random.default_rng(7)
    base = bytes(range(256)) * 300  # 76.8 KiB: more than a record of the small rings below
    arr = np.zeros(5, STRUCT)
    arr["a"], arr["b"] = range(5), np.linspace(0, 1, 5)
    nested = np.zeros((2, 2), NESTED)
    nested["id"], nested["tag"] = [[1, 2], [3, 4]], b"ab"
    nested["pos"]["y"] = 2.5
    nested["v"] = np.arange(6).reshape(2, 3)
    return [
        b"plain bytes", b"", bytearray(b"a bytearray"), memoryview(b"a memoryview"),
        memoryview(np.arange(6, dtype=np.int32)),  # a memoryview of format "i": its bytes
        memoryview(b"0123456789")[::2],  # not contiguous: its items, in order
        base, bytearray(base), memoryview(base)[1000:],  # fragments
        np.arange(12, dtype=np.float64).reshape(3, 4), np.zeros((2, 0, 5), np.int16), np.array(7, np.uint8),
        np.arange(10, dtype=">i4")[::2], np.asfortranarray(rng.random((30, 40))), arr, nested,
        np.zeros(3, PADDED), rng.random(40_000),  # 320 KB: fragments of an array
        np.array(["x", "yz"], dtype="<U2"), np.arange(4).astype("<M8[ns]"),
    ]


def _as_published(x: object) -> object:
    """What a subscriber gets for x: bytes for anything bytes-like, the array as it is."""
    if isinstance(x, np.ndarray):
        return x
    return memoryview(x).tobytes()  # type: ignore[arg-type]


def _same(sent: object, got: object) -> bool:
    want = _as_published(sent)
    if isinstance(want, np.ndarray):
        return (isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape
                and got.tobytes() == np.ascontiguousarray(want).tobytes())
    return type(got) is bytes and got == want


PATHS = ["direct", "relayed", "socket publisher"]


def _pair(server: broker.Server, path: str, stack: list) -> tuple:
    """(publisher, subscriber) for one path; the publisher's ring holds records of at most 32 KiB."""
    a = connect(server.address, socket_only=path == "socket publisher")
    b = connect(server.address, sharable=True, socket_only=path == "relayed")
    stack += [b, a]
    pub = a.publisher("kinds", ring_capacity=1 << 16, block_timeout=30)
    sub = b.subscriber("kinds", capacity=8)
    assert (pub.ring is None) == (path == "socket publisher")
    assert bool(sub._rings) == (path == "direct")
    return pub, sub


@pytest.mark.parametrize("path", PATHS)
def test_every_payload_kind_arrives_as_it_was_published(server, path):
    payloads = _payloads()
    stack: list = []
    try:
        pub, sub = _pair(server, path, stack)
        got: list = []
        reader = threading.Thread(target=lambda: got.extend(sub.receive(30) for _ in payloads))
        reader.start()  # the ring holds less than some of them: the reader reads while they are written
        for x in payloads:
            pub.publish(x)
        reader.join(60)
        assert len(got) == len(payloads)
        bad = [(i, type(x).__name__) for i, (x, y) in enumerate(zip(payloads, got)) if not _same(x, y)]
        assert not bad, f"changed on the way: {bad}"
        assert got[14].dtype == STRUCT  # a structured dtype, not |V12
        sub.close()
        pub.close()
    finally:
        for s in stack:
            s.close()


@pytest.mark.parametrize("path", PATHS)
def test_a_stream_of_arrays_whose_kind_changes_arrives_each_as_it_was_published(server, path):
    """Publisher and subscriber remember the last array's kind (its meta): a change of dtype, of shape,
    of byte order, or a structured dtype's fields renamed in place, is never taken for the last kind."""
    s = np.zeros(2, np.dtype([("a", "<i4"), ("b", "<f8")]))  # its own dtype object: renamed below
    same = [np.arange(8.0), np.arange(8.0) + 1]
    stream = [*same, np.arange(6, dtype="<i4").reshape(2, 3), *same, np.arange(8.0).reshape(4, 2),
              np.arange(8.0).reshape(2, 4), np.arange(8, dtype=">f8"), np.arange(8.0), s, s, "rename", s, s, *same]
    stack: list = []
    try:
        pub, sub = _pair(server, path, stack)
        sent = []
        got: list = []
        reader = threading.Thread(target=lambda: got.extend(sub.receive(30) for _ in range(len(stream) - 1)))
        reader.start()  # (the subscriber's capacity is 8)
        for x in stream:
            if isinstance(x, str):  # the same dtype object, its fields renamed: a new kind all the same
                s.dtype.names = ("c", "d")
                continue
            sent.append((x.dtype.descr, x.shape, x.tobytes()))
            pub.publish(x)
        reader.join(60)
        assert [(g.dtype.descr, g.shape, g.tobytes()) for g in got] == sent
        assert got[-3].dtype.names == ("c", "d") and got[-5].dtype.names == ("a", "b")
        sub.close()
        pub.close()
    finally:
        for x in stack:
            x.close()


@pytest.mark.parametrize("path", PATHS)
def test_receive_into_and_receive_out_copy_into_the_callers_buffer(server, path):
    stack: list = []
    try:
        pub, sub = _pair(server, path, stack)
        arr = np.arange(20, dtype=np.float32).reshape(4, 5)
        pub.publish(b"x" * 100)
        pub.publish(arr)
        pub.publish(b"y" * 50_000)  # fragments on a ring
        pub.publish(bytearray(b"last"))
        small = bytearray(10)
        with pytest.raises(ValueError, match="100 bytes"):
            sub.receive_into(small, timeout=10)
        buf = bytearray(64 << 10)
        assert sub.receive_into(buf, timeout=10) == 100 and buf[:100] == b"x" * 100  # the one refused above
        out = np.empty(64, np.float32)
        got = sub.receive(10, out=out)
        assert isinstance(got, np.ndarray) and got.shape == (4, 5) and np.array_equal(got, arr)
        assert np.shares_memory(got, out)  # a view of the buffer given: no copy after the one into it
        view = sub.receive(10, out=buf)
        assert isinstance(view, memoryview) and view == b"y" * 50_000
        assert sub.receive_array(10).tobytes() == b"last"
        sub.close()
        pub.close()
    finally:
        for s in stack:
            s.close()


def test_a_ring_publish_is_c_from_the_callers_buffer(server, monkeypatch):
    """publish() of anything but small bytes on a ring goes through topic_publish only: none of the
    Python encoding (the payload as bytes, the records as bytes) runs."""
    def boom(*a, **k):
        raise AssertionError("the Python way was taken")

    monkeypatch.setattr(topics_client, "split_record", boom)
    monkeypatch.setattr(topics_client, "_encode", boom)
    with connect(server.address) as a, connect(server.address) as b:
        pub = a.publisher("c", ring_capacity=1 << 20)  # records of 512 KiB: each goes whole, read after
        sub = b.subscriber("c")
        assert pub.ring is not None
        for x in (bytearray(b"ba"), memoryview(b"mv"), np.arange(3), bytearray(100_000), np.zeros(2, STRUCT)):
            pub.publish(x)
            assert _same(x, sub.receive(10))
        sub.close()
        pub.close()


def test_a_full_ring_times_out_a_publish_that_nobody_gets_and_the_next_one_goes(server):
    with connect(server.address) as a, connect(server.address, sharable=True) as b:
        pub = a.publisher("full", ring_capacity=1 << 16, block_timeout=0.2)
        sub = b.subscriber("full", capacity=4)
        assert sub._rings  # direct: it does not read yet, and the ring fills
        first = bytearray(20_000)
        sent = 0
        with pytest.raises(broker.FullTimeout):
            while True:
                pub.publish(first)
                sent += 1
        assert sent >= 1
        got = [sub.receive(5) for _ in range(sent)]
        assert got == [bytes(first)] * sent
        pub.publish(np.arange(3))  # its sequence number follows on: nothing waits for a lost one
        assert np.array_equal(sub.receive(5), np.arange(3))
        sub.close()
        pub.close()


def _nd2(descr: str) -> bytes:
    """An array meta with this JSON descr and no dimensions."""
    return b"nd2" + struct.pack("<H", len(descr)) + descr.encode() + b"\x00"


@pytest.mark.parametrize("meta", [
    b"nd2" + struct.pack("<H", 5) + b"[[1,2" + b"\x01" + struct.pack("<Q", 1),  # not JSON
    b"nd2" + struct.pack("<H", 7) + b'"<zz9"' + b"\x00" + b"\x00",  # not a dtype
    b"nd2" + struct.pack("<H", 8) + b'[["a",5' + b"]" + b"\x00",  # a field without a format
    b"nd2" + struct.pack("<H", 600) + b"[" * 600 + b"\x00",  # deep
    b"nd2" + struct.pack("<H", 40) + json.dumps([["a", "|O"]]).encode().ljust(40) + b"\x00",  # objects
    _nd2(json.dumps([["a", "(1, [2] * 9**9)"]])),  # a format numpy would evaluate
    _nd2(json.dumps("[('a', '<f8')]")),  # the same, as a whole descr
    _nd2('[["a","<f8",[2147483648]]]'),  # a field too big
    _nd2('[["a",' * 20 + '"<f8"' + "]]" * 20),  # too deep
    b"nd2" + struct.pack("<H", 2000),  # cut
    b"nd9",  # unknown
])
def test_an_array_meta_that_is_not_sound_is_refused_not_trusted(meta):
    with pytest.raises(broker.ServerGone):
        topics_client._decode(b"\x00" * 8, meta)


def test_a_sound_descr_meta_is_read():
    got = topics_client._decode(b"\x01\x00\x00\x00" + b"\x00" * 8, _nd2('[["a","<i4"],["b","<f8"]]'))
    assert got.dtype == STRUCT and got.shape == () and got["a"] == 1


def test_fragments_are_put_together_by_c_in_one_destination_and_a_cut_message_is_dropped(server, monkeypatch):
    """A direct subscriber puts a message in fragments together in C (topic_recv_frags), straight from
    the ring into one bytes of the message's size; a message whose publisher timed out half-way is
    dropped when the next one starts, and the next one arrives whole."""
    calls = []
    real = topics_client._trecv_frags

    def counted(addr, frag):
        calls.append(frag[3] is not None)
        return real(addr, frag)

    monkeypatch.setattr(topics_client, "_trecv_frags", counted)
    with connect(server.address) as a, connect(server.address, sharable=True) as b:
        pub = a.publisher("frags", ring_capacity=1 << 16, block_timeout=0.3)  # records of 32 KiB at most
        sub = b.subscriber("frags", capacity=4)
        assert sub._rings  # direct
        first = bytes(range(256)) * 400  # 100 KiB: four fragments, more than the ring holds
        with pytest.raises(broker.FullTimeout):
            pub.publish(first)  # nobody reads: it stops half-way
        whole = np.arange(30_000, dtype=np.float64)  # 240 KB in fragments, read while written
        got: list = []
        reader = threading.Thread(target=lambda: got.append(sub.receive(10)))
        reader.start()
        pub.block_timeout = 10
        pub.publish(whole)
        reader.join(20)
        assert len(got) == 1 and isinstance(got[0], np.ndarray) and np.array_equal(got[0], whole)
        assert calls, "the fragments were not put together by C"
        [asm] = sub._assemblers.values()
        assert asm.dropped == 1 and asm.complete  # the message cut short, dropped when the next began
        sub.close()
        pub.close()


def test_a_dtype_no_receiver_would_take_is_refused_by_the_publisher(server):
    titled = np.dtype({"names": ["a"], "formats": ["<i4"], "titles": ["the a"]})
    with connect(server.address) as a:
        pub = a.publisher("titled")
        with pytest.raises(TypeError, match="cannot be published"):
            pub.publish(np.zeros(2, titled))
        pub.publish(np.zeros(2, STRUCT))  # the publisher goes on
        pub.close()


def _unpack_reference(data: bytes, n: int) -> tuple[int, list[tuple[int, int, bytes, bytes]]]:
    """A relayed batch read the way the wire defines it (services/topics/wire.py), for topic_unpack."""
    from shmbroker.services.topics.wire import BATCH_HEAD, MAX_META, MESSAGE_HEAD

    if len(data) < BATCH_HEAD.size:
        raise ValueError("short")
    (lost,) = BATCH_HEAD.unpack_from(data)
    at, out = BATCH_HEAD.size, []
    for _ in range(n):
        if at + MESSAGE_HEAD.size > len(data):
            raise ValueError("cut")
        pub, seq, mlen, dlen = MESSAGE_HEAD.unpack_from(data, at)
        at += MESSAGE_HEAD.size
        if mlen > MAX_META or at + mlen + dlen > len(data):
            raise ValueError("past")
        out.append((pub, seq, data[at:at + mlen], data[at + mlen:at + mlen + dlen]))
        at += mlen + dlen
    if at != len(data):
        raise ValueError("after")
    return lost, out


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 3), st.binary(max_size=12), st.binary(max_size=40)),
                max_size=6), st.integers(0, 2**64 - 1), st.integers(-1, 2), st.binary(max_size=30), st.integers(0, 60))
def test_a_relayed_batch_is_read_by_c_as_the_wire_defines_it(msgs, lost, extra_n, junk, cut):
    """topic_unpack against the reference, on sound batches, cut ones, ones with junk after them and
    wrong counts: the same messages (each the kind the client reads), or an error for the same input."""
    from shmbroker.services.topics.wire import BATCH_HEAD, MESSAGE_HEAD

    data = BATCH_HEAD.pack(lost) + b"".join(MESSAGE_HEAD.pack(p, s, len(m), len(d)) + m + d for p, s, m, d in msgs)
    for blob in (data, data + junk, data[:max(0, len(data) - cut)]):
        n = max(0, len(msgs) + extra_n)
        try:
            want = _unpack_reference(blob, n)
        except ValueError:
            want = None
        try:
            got_lost, items, plain = topics_client._tunpack(blob, n, topics_client.Received, "t")
        except ValueError:
            assert want is None, (blob, n)
            continue
        assert want is not None, (blob, n)
        got = [(i[0], i[1], b"", i[2]) if type(i) is topics_client.Received else i for i in items]
        assert (got_lost, got) == want
        assert plain == all(not m and s for _, s, m, _ in want[1])
        assert all(i[3] == "t" for i in items if type(i) is topics_client.Received)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.binary(max_size=10), st.binary(max_size=50)),
                max_size=8), st.integers(1, 10), st.integers(-30, 400), st.integers(0, 2**64 - 1))
def test_a_fetch_reply_packed_by_c_is_what_the_reader_reads(items, most, room, lost):
    """topic_pack (the server's answer to a FETCH) against the wire: the first items that fit in room,
    at most `most`, read back by the reference; `first` is the size of the first one left out for room."""
    from collections import deque

    from shmbroker.services.topics.broker import _Item
    from shmbroker.services.topics.wire import MESSAGE_HEAD

    queue = deque(_Item(*x) for x in items)
    data, n, first = topics_client._RING_CALLS["topic_pack"](queue, most, room, lost)
    assert len(queue) == len(items)  # C leaves the queue as it is: the server drops what went
    fit, used = 0, 0
    for p, s, m, d in items[:most]:
        size = MESSAGE_HEAD.size + len(m) + len(d)
        if used + size > room:
            break
        fit, used = fit + 1, used + size
    assert n == fit
    left_out = fit < min(most, len(items))
    assert first == (MESSAGE_HEAD.size + len(items[fit][2]) + len(items[fit][3]) if left_out else 0)
    assert _unpack_reference(data, n) == (lost, [tuple(x) for x in items[:n]])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.binary(max_size=10), st.binary(max_size=50)),
                max_size=8), st.integers(1, 10), st.integers(-30, 400), st.integers(0, 2**64 - 1), st.integers(1, 40))
def test_a_fetch_reply_packed_as_parts_is_the_same_bytes_and_leaves_big_payloads_uncopied(items, most, room, lost, big):
    """topic_pack with `big`: when a payload of `big` bytes or more goes, the answer is a tuple of parts,
    those payloads the queued bytes themselves, and the parts joined are exactly the packed bytes."""
    from collections import deque

    from shmbroker.services.topics.broker import _Item

    pack = topics_client._RING_CALLS["topic_pack"]
    queue = deque(_Item(*x) for x in items)
    whole, n, first = pack(queue, most, room, lost)
    parts, n2, first2 = pack(queue, most, room, lost, big)
    assert (n2, first2) == (n, first)
    if any(len(x[3]) >= big for x in items[:n]):
        assert type(parts) is tuple and b"".join(parts) == whole
        ids = {id(p) for p in parts}
        assert all(id(queue[i].data) in ids for i in range(n) if len(queue[i].data) >= big)
    else:
        assert parts == whole
