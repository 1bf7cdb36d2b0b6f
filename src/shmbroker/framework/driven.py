"""An asyncio event loop that the threaded server's own loop runs, on the server's thread, a step at a time.

The federation (src/shmbroker/federation) speaks NATS through nats-py, which needs asyncio. Under
`serve_async` it simply runs on the server's running loop. The threaded server (`start`, `serve_forever`,
`shmbroker serve`) has a selector loop of its own that spins on the rings; rather than give the asyncio
work a second thread, with a hand-off (a wake-up through a pipe, and the GIL passed between two threads)
each way on every message and call, the server's loop drives the asyncio loop itself:

- the asyncio loop has a selector of its own (epoll), whose descriptor the server's selector watches:
  it is readable when any of the asyncio loop's sockets is (NATS's, its wake-up pipe);
- a step is `loop.stop(); loop.run_forever()`, which asyncio documents as one poll of its I/O with no wait,
  then the callbacks that are ready, then a return;
- the server takes a step when that descriptor is readable, when a callback is ready, or when an asyncio
  timer is due, and never sleeps past the next timer (`wait()`).

What is ready and when the next timer is due are read from the loop's `_ready` and `_scheduled`: the
base event loop's own, in every CPython since 3.4. If a Python lacks them, `wait()` says 1 ms and the
server steps that often, which is slower, but still correct.
"""
from __future__ import annotations

import asyncio
import selectors
import threading
from typing import Any

FALLBACK_WAIT = 0.001  # s: how often to step a loop whose ready callbacks and timers cannot be read
NO_TIMER = 3600.0
MAX_STEPS = 8  # steps taken at once while callbacks are still ready (a chain: a task that wakes another)


class DrivenLoop:
    """An asyncio loop that another loop runs: call step() on the thread that owns it."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.loop = asyncio.SelectorEventLoop(self.selector)
        self.thread: int | None = None  # the thread that steps it (set by the first step)

    def fileno(self) -> int:
        """Readable when one of the loop's descriptors is: the owner's selector watches it."""
        return self.selector.fileno()

    def on_thread(self) -> bool:
        """Whether the caller is on the thread that steps the loop (then loop.call_soon is enough)."""
        return self.thread == threading.get_ident()

    def step(self) -> None:
        """Run what is ready now, without waiting: one turn of the loop, and more turns (up to MAX_STEPS) while
        the callbacks of one make others ready (a task that wakes another), all in one run_forever (its
        setting up costs as much as a turn)."""
        loop = self.loop
        if loop.is_closed() or loop.is_running():
            return
        self.thread = threading.get_ident()
        turns = [1]

        def last() -> None:  # the last callback of a turn: another turn if callbacks came meanwhile, else stop
            if getattr(loop, "_ready", ()) and turns[0] < MAX_STEPS:
                turns[0] += 1
                loop.call_soon(last)
            else:
                loop.stop()
        loop.call_soon(last)
        loop.run_forever()

    def wait(self) -> float:
        """Seconds until the loop has work without any I/O: 0 with a callback ready, else until its next
        timer (NO_TIMER when it has none)."""
        loop: Any = self.loop
        ready, scheduled = getattr(loop, "_ready", None), getattr(loop, "_scheduled", None)
        if ready is None or scheduled is None:
            return FALLBACK_WAIT
        if ready:
            return 0.0
        if scheduled:
            due: float = scheduled[0].when() - loop.time()
            return max(0.0, due)
        return NO_TIMER

    def close(self, timeout: float = 3.0) -> None:
        """Cancel what is left (nats-py's own tasks after its connection closed), then close the loop."""
        loop = self.loop
        if loop.is_closed():
            return
        left = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in left:
            t.cancel()
        if left:
            try:
                run_until(loop, asyncio.gather(*left, return_exceptions=True), timeout)
            except (asyncio.TimeoutError, RuntimeError):
                pass
        try:
            run_until(loop, loop.shutdown_asyncgens(), timeout)
        except (asyncio.TimeoutError, RuntimeError):
            pass
        loop.close()


def run_until(loop: asyncio.AbstractEventLoop, aw: Any, timeout: float) -> Any:
    """Run `loop` on this thread until `aw` is done (at most `timeout` seconds, else TimeoutError): a driven
    loop's start and end, while nobody steps it. In a thread that runs an asyncio loop of its own (an asyncio
    program that starts a threaded server), in a short-lived thread instead."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        here = True
    else:
        here = False
    if here:
        return loop.run_until_complete(asyncio.wait_for(aw, timeout))
    out: list[Any] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            out.append(loop.run_until_complete(asyncio.wait_for(aw, timeout)))
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            failed.append(e)
    t = threading.Thread(target=run, name="broker-driven-loop")
    t.start()
    t.join()
    if failed:
        raise failed[0]
    return out[0]
