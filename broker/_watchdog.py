"""A shared-memory session's watchdog: its server's death, seen where nothing else looks.

A ring publisher writes into its own ring without a system call; nothing it does would notice its
server die (a publisher went on for 20 s, 53 M messages, into a killed broker). One thread per
session that has such a ring sleeps in poll() on the session's socket, which is only the death
signal once the rings carry the session. At its hang-up it interrupts every ring it watches: their
next send fails in C (BRK_INTERRUPTED, one flag of the process's own ring handle read per send),
and the publisher raises ServerGone. The thread costs nothing while the server lives, and ends with
the session.
"""
from __future__ import annotations

import os
import select
import threading
from typing import Any

_HUNG_UP = select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL


class Watchdog:
    """Watches one session's socket (a copy of its descriptor: the session may close its own first)."""

    def __init__(self, sock_fd: int, name: str) -> None:
        self._fd = os.dup(sock_fd)
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._lock = threading.Lock()  # held while a ring is interrupted: its owner closes it only after unwatch
        self._rings: set[Any] = set()
        self.fired = False
        self._thread = threading.Thread(target=self._run, name=f"broker-watchdog {name}", daemon=True)
        self._thread.start()

    def watch(self, ring: Any) -> bool:
        """Interrupt `ring` (its interrupt()) when the server goes; False if it is gone already."""
        with self._lock:
            if self.fired:
                return False
            self._rings.add(ring)
            return True

    def unwatch(self, ring: Any) -> None:
        """Before the ring closes: never touched again from here."""
        with self._lock:
            self._rings.discard(ring)

    def _run(self) -> None:
        p = select.poll()
        p.register(self._fd, select.POLLRDHUP)  # not POLLIN: the server writes nothing on it, and EOF is RDHUP
        p.register(self._stop_r, select.POLLIN)
        while True:
            for fd, ev in p.poll():
                if fd == self._stop_r:
                    return
                if ev & _HUNG_UP:
                    with self._lock:
                        self.fired = True
                        for ring in self._rings:
                            ring.interrupt()
                    return

    def close(self) -> None:
        if self._stop_w < 0:
            return
        try:
            os.write(self._stop_w, b"!")
        except OSError:
            pass
        if self._thread is not threading.current_thread():
            self._thread.join(10)
        for fd in (self._fd, self._stop_r, self._stop_w):
            os.close(fd)
        self._fd = self._stop_r = self._stop_w = -1
