"""A broker killed under its clients: each of them learns it (ServerGone), a shared-memory publisher
too, which writes its own ring and never waits for the server (issue 13, item 6)."""
from __future__ import annotations

import os
import time

import pytest

import shmbroker as broker
from shmbroker import connect
from shmbroker.core import names as _names

from tests.served import serve


@pytest.fixture
def where(tmp_path):
    return str(tmp_path)


@pytest.mark.parametrize("how", ["publish", "publish_many", "loan"])
def test_a_ring_publisher_learns_its_broker_was_killed(where, how):
    with serve(where, tcp=False) as srv:
        with connect(srv.unix, timeout=30) as c:
            assert c.transport == "shared memory"
            pub = c.publisher("ticks")
            assert pub.ring is not None
            pub.publish(b"first")  # no subscriber: the ring never fills, only the broker's death can stop it
            srv.kill()
            end = time.monotonic() + 60
            with pytest.raises(broker.ServerGone, match="is gone"):
                while time.monotonic() < end:  # a bound: it fails below if ServerGone never came
                    for _ in range(1000):
                        if how == "publish":
                            pub.publish(b"tick")
                        elif how == "publish_many":
                            pub.publish_many([b"a", b"b", b"c"])
                        else:
                            view = pub.loan(8)
                            view[:] = b"12345678"
                            pub.commit()
            with pytest.raises(broker.ServerGone):  # and it stays so
                pub.publish(b"again")
            pub.close()  # no error: there is nothing left to close at the server
        # the killed broker left nothing in /dev/shm: its segments were sealed memfds, gone with their last user
        assert not [n for n in os.listdir("/dev/shm") if _names.is_ours(n)]
