"""One thread per process that watches client sessions' sockets for the server's hang-up.

A session that waits for nothing reads nothing, so on its own it learns that its server died only at
its next call. A session with an on_close callback (or a wait_closed) is watched here: the thread
polls the sessions' sockets for POLLRDHUP (never for data: it takes nothing from them) and tells a
session whose server hung up (`session._hangup()`), which reads the server's last words and ends.
The thread starts with the first watched session and ends with the last, so a process that watches
nothing has no thread.
"""
from __future__ import annotations

import os
import select
import threading
import weakref
from typing import Any

_HUP = select.POLLRDHUP | select.POLLHUP | select.POLLERR


class _Watcher:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[int, weakref.ref[Any]] = {}  # fd -> session
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1

    def watch(self, session: Any, fd: int) -> None:
        def gone(ref: weakref.ref[Any], fd: int = fd) -> None:  # the session was dropped without close()
            with self._lock:
                if self._watched.get(fd) is ref:
                    del self._watched[fd]

        with self._lock:
            self._watched[fd] = weakref.ref(session, gone)
            if self._thread is None:
                self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
                self._thread = threading.Thread(target=self._run, name="broker-client-watch", daemon=True)
                self._thread.start()
            else:
                self._poke()

    def forget(self, fd: int) -> None:
        """Before the session closes fd (with fd still open: never poll a number that may be reused)."""
        with self._lock:
            if self._watched.pop(fd, None) is not None and self._thread is not None:
                self._poke()

    def _poke(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:  # already poked
            pass

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._watched:  # the last one was forgotten: the thread ends (a new watch starts one)
                    os.close(self._wake_r)
                    os.close(self._wake_w)
                    self._wake_r = self._wake_w = -1
                    self._thread = None
                    return
                p = select.poll()
                p.register(self._wake_r, select.POLLIN)
                for fd in self._watched:
                    p.register(fd, select.POLLRDHUP)
                wake = self._wake_r
            hung: list[Any] = []
            for fd, ev in p.poll():
                if fd == wake:
                    try:
                        os.read(wake, 4096)
                    except BlockingIOError:
                        pass
                    continue
                with self._lock:  # still the same session's socket? (forget() comes before a close)
                    ref = self._watched.get(fd)
                    if ref is not None and ev & select.POLLNVAL:  # closed under us (its session dropped)
                        del self._watched[fd]
                        continue
                    if ref is None or not ev & _HUP:
                        continue
                    session = ref()
                    del self._watched[fd]
                if session is not None:
                    hung.append(session)
            for session in hung:
                try:
                    session._hangup()
                except Exception:  # noqa: BLE001 - one session's end must not stop the watching of others
                    pass


WATCHER = _Watcher()
