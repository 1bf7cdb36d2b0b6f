"""A broker server in a process of its own (tests/bounds_server.py): its addresses, its events, its
log, its memory; and `where`, a folder another user can reach."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any, Iterator

from shmbroker import connect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Served:
    """The server process: its addresses, its events as they come, its memory."""

    def __init__(self, proc: subprocess.Popen, ready: dict[str, Any]) -> None:
        self.proc = proc
        self.pid = ready["pid"]
        bound = ready["ready"]
        self.unix = bound[0]
        self.tcp = f"tcp://{bound[1][0]}:{bound[1][1]}" if len(bound) > 1 else None
        self.killed = False
        self.events: list[dict[str, Any]] = []
        self.log: list[str] = []  # its stderr: the log's warnings
        self._readers = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=self._read_log, daemon=True)]
        for t in self._readers:
            t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def address(self, transport: str) -> str:
        return self.tcp if transport == "tcp" else self.unix  # type: ignore[return-value]

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def stats(self) -> dict[str, Any]:
        with connect(self.unix, timeout=30, socket_only=True) as c:
            return c.server_stats()

    def disconnected(self, word: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == "disconnected" and word in e["reason"]]

    def kill(self) -> None:
        """kill -9, now: the server dies as a crash would end it."""
        self.killed = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for t in self._readers:
                t.join(10)


@contextlib.contextmanager
def serve(where: str, tcp: bool = True, nofile: int | None = None, services: bool = False,
          **server: Any) -> Iterator[Served]:
    cfg = {"address": os.path.join(where, "bounds.sock"), "tcp": "tcp://127.0.0.1:0" if tcp else None,
           "nofile": nofile, "services": services, "server": server}
    proc = subprocess.Popen([sys.executable, "-m", "tests.bounds_server", json.dumps(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(30)
        raise AssertionError(f"the server did not start (exit {proc.returncode})")
    s = Served(proc, json.loads(line))
    try:
        yield s
    finally:
        s.close()
    assert s.killed or proc.returncode == 0, f"the server exited with {proc.returncode}"
