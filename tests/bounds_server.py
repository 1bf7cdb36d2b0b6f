"""A broker server in a process of its own, for the tests of what one client may hold of it.

    python -m tests.bounds_server CONFIG_JSON

CONFIG_JSON: {"address": path, "tcp": "tcp://127.0.0.1:0" or null, "nofile": descriptor limit or null,
"services": true for the built-in echo and key-value services instead, "server": keyword arguments
of broker.Server}. It prints one JSON line per session event ({"event": kind, "reason": ..., "uid":
..., "pid": the client's, "t": time.monotonic() when the server saw it}), after a first line
{"ready": [bound addresses]}, and serves until SIGTERM. Its services: BIG (1) writes arg 1 bytes
into the writable arg 0; ECHO (2) returns the length of arg 0.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import sys
import threading
import time

import shmbroker as broker

BIG, ECHO = 1, 2
_BLOCK = bytes(range(256)) * 4096  # 1 MiB


class Services(broker.Session):
    def service(self, m: broker.Message) -> None:
        if m.code == BIG:
            n = m.integer(1)
            m.write(0, _BLOCK[:n] if n <= len(_BLOCK) else bytes(n))
            m.complete(n)
        elif m.code == ECHO:
            m.complete(len(m.read(0)))
        else:
            m.complete(broker.Status.NOT_SUPPORTED)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    if cfg.get("nofile"):
        resource.setrlimit(resource.RLIMIT_NOFILE, (cfg["nofile"], cfg["nofile"]))
    lock = threading.Lock()

    def emit(obj: dict) -> None:
        with lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    def on_event(ev: broker.SessionEvent) -> None:
        emit({"event": ev.kind, "reason": ev.reason, "uid": ev.peer.uid, "transport": ev.peer.transport,
              "pid": ev.peer.pid, "t": time.monotonic()})

    session = broker.ServicesSession.factory(broker.KeyValueStore()) if cfg.get("services") else Services
    srv = broker.Server(cfg["address"], session, tcp=cfg.get("tcp"), on_event=on_event, **cfg.get("server", {}))
    signal.signal(signal.SIGTERM, lambda *_: srv.stop())
    srv.serve_forever(ready=lambda s: emit({"ready": [b if isinstance(b, str) else list(b) for b in s.bound],
                                            "pid": os.getpid()}))


if __name__ == "__main__":
    main()
