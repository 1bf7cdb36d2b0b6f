"""A subscriber's receive_view() over its publisher's ring never shows another message (issue 17, item 4).

A direct subscriber (same session, shared memory) reads the publisher's ring in place. The view it
lends is revoked by the next receive; a slice or an array made from it keeps the record (the
publisher waits for room, up to its block_timeout) and the next receive raises ViewInUse until it
is dropped.
"""
from __future__ import annotations

import numpy as np
import pytest

import shmbroker as broker
from shmbroker import connect

RING = 64 << 10  # the publisher's ring: a few hundred 100-byte messages wrap it


def _pair(s):
    pub = s.publisher("views", ring_capacity=RING, block_timeout=0.2)
    sub = s.subscriber("views")
    assert pub.ring is not None and sub.in_place
    return pub, sub


def _flood(pub, n: int) -> int:
    """Publish up to n distinct messages; how many went before the ring had no room."""
    for i in range(n):
        try:
            pub.publish(i.to_bytes(4, "little") * 25)
        except broker.Full:
            return i
    return n


def test_a_view_kept_past_the_next_receive_raises(server):
    with connect(server.address) as s:
        pub, sub = _pair(s)
        pub.publish(b"A" * 100)
        pub.publish(b"B" * 100)
        view = sub.receive_view(5)
        assert bytes(view) == b"A" * 100
        assert sub.receive(5) == b"B" * 100  # releases the view...
        for _ in range(5):  # ...and the ring wraps over its record
            assert _flood(pub, 200) == 200
            got = []
            while len(got) < 200:
                got += sub.receive_many(200, timeout=5)
        with pytest.raises(ValueError):
            bytes(view)  # revoked: it never shows a later message
        sub.close()
        pub.close()


@pytest.mark.parametrize("made", ["slice", "numpy"])
def test_what_is_made_from_a_view_keeps_its_message(server, made):
    with connect(server.address) as s:
        pub, sub = _pair(s)
        if made == "numpy":
            pub.publish(np.arange(25, dtype=np.int32))
        else:
            pub.publish(b"A" * 100)
        value = sub.receive_view(5)
        kept = value[1:] if made == "slice" else value.reshape(5, 5)
        del value
        before = bytes(memoryview(np.ascontiguousarray(kept)).cast("B")) if made == "numpy" else bytes(kept)
        went = _flood(pub, 10_000)
        assert 0 < went < 10_000  # the publisher found its ring full: the held record stays
        with pytest.raises(broker.ViewInUse, match="still in use"):
            sub.receive(0)
        with pytest.raises(broker.ViewInUse):
            sub.release()
        now = bytes(memoryview(np.ascontiguousarray(kept)).cast("B")) if made == "numpy" else bytes(kept)
        assert now == before
        del kept
        got = 0
        while got < went:
            got += len(sub.receive_many(1000, timeout=5))
        assert got == went
        pub.publish(b"after")  # room again: nobody waits for anybody
        assert sub.receive(5) == b"after"
        sub.close()
        pub.close()


def test_a_subscriber_closed_while_an_array_holds_its_view(server):
    with connect(server.address) as s:
        pub, sub = _pair(s)
        pub.publish(np.arange(25, dtype=np.int32))
        a = sub.receive_view(5)
        sub.close()
        _flood(pub, 10_000)
        assert a.tolist() == list(range(25))
        del a
        pub.close()
