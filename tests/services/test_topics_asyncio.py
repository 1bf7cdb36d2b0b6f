"""Topics under asyncio (issue 17, item 2): areceive() where the publisher and the subscriber share one
shared-memory session (the subscriber then reads the publisher's ring in place), and a cancelled
areceive() that leaves the subscriber closable."""
from __future__ import annotations

import asyncio

from shmbroker import connect


import pytest


@pytest.mark.parametrize("first", ["publisher", "subscriber"])
def test_areceive_after_a_sync_receive_in_one_shared_memory_session(server, first):
    """The subscriber reads the publisher's ring in place (from the start, or after the news of the
    ring that a sync receive() takes): areceive() must read the ring too, not only wait on the FETCH."""
    with connect(server.address) as s:
        assert s.transport == "shared memory"
        if first == "publisher":
            pub = s.publisher("t")
            sub = s.subscriber("t")
        else:
            sub = s.subscriber("t")
            pub = s.publisher("t")
        pub.publish(b"1")
        assert sub.receive(timeout=10) == b"1"
        pub.publish(b"2")

        async def main() -> bytes:
            return await asyncio.wait_for(sub.areceive(), 10)

        assert asyncio.run(main()) == b"2"
        assert sub.in_place
        pub.close()
        sub.close()


def test_close_after_a_cancelled_areceive(server):
    with connect(server.address) as s:
        sub = s.subscriber("t")

        async def main() -> None:
            task = asyncio.ensure_future(sub.areceive())
            await asyncio.sleep(0.05)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

        asyncio.run(main())
        sub.close()  # not CancelledError: the FETCH lives on until the close ends it
        assert s.topics() == []  # the session is usable, and the close reached the server
