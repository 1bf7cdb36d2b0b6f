"""A named ring as a user meets it (issue 17, item 5): Ring.open waits for the ring to appear, and a
ring its creator left when it was killed is taken over by the next Ring.create at once."""
from __future__ import annotations

import errno
import os
import signal
import threading

import pytest

import shmbroker as broker
from shmbroker import Broadcast, Ring

from tests.helpers import Child


def test_open_waits_for_the_ring_to_appear():
    made: list[Ring] = []
    later = threading.Timer(0.3, lambda: made.append(Ring.create("appears", capacity=1 << 12)))
    later.start()
    try:
        with Ring.open("appears", timeout=30) as rx:  # there only after 0.3 s
            later.join()
            made[0].send(b"here")
            assert rx.recv(5) == b"here"
    finally:
        later.join()
        for ring in made:
            ring.close()
    with pytest.raises(broker.SegmentError) as e:
        Ring.open("never-made", timeout=0.1)
    assert e.value.errno == errno.ENOENT


@pytest.mark.parametrize("kind", [Ring, Broadcast])
def test_a_killed_creators_ring_is_taken_over_at_once(kind):
    r, w = os.pipe()

    def creator() -> None:
        kind.create("orphan", capacity=1 << 12)  # never closed: killed below
        os.write(w, b"1")
        signal.pause()

    kid = Child(creator)
    try:
        assert os.read(r, 1) == b"1"
        with pytest.raises(broker.SegmentError, match=r"already exists: its creator \(pid \d+\) is alive"):
            kind.create("orphan", capacity=1 << 12)
    finally:
        kid.kill()
    with kind.create("orphan", capacity=1 << 12) as ring:  # its creator is dead: taken over, no `shmbroker clean`
        assert ring.name.endswith(".orphan")
    os.close(r)
    os.close(w)
