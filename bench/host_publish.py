"""The host process's own publish (Server.publish, no session) against a client publisher of the same
process (a session to itself: over its socket, "socket"; over shared memory with its own ring,
"client"), 64 B messages to one subscriber in another process, which reads them as they come.

    .venv/bin/python bench/host_publish.py [N]

Prints msgs/s for each, interleaved twice (the machine swings between two speeds)."""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import tempfile
import time

import shmbroker as broker

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000


def subscriber(path: str, topic: str, ready, done) -> None:
    with broker.connect(path) as s, s.subscriber(topic, capacity=4096) as sub:
        ready.set()
        for _ in range(N):
            sub.receive(60)
        done.set()


def run(srv: broker.Server, path: str, how: str) -> float:
    ctx = mp.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    kid = ctx.Process(target=subscriber, args=(path, how, ready, done))
    kid.start()
    ready.wait(60)
    msg = b"x" * 64
    if how == "host":
        pub = srv.publisher(how, block_timeout=60)
        t = time.perf_counter()
        for _ in range(N):
            pub.publish(msg)
    else:
        c = broker.connect(path, socket_only=how == "socket")
        pub = c.publisher(how, block_timeout=60)
        t = time.perf_counter()
        for _ in range(N):
            pub.publish(msg)
    done.wait(120)
    dt = time.perf_counter() - t
    pub.close()
    if how != "host":
        c.close()
    kid.join(60)
    return N / dt


def main() -> None:
    path = os.path.join(tempfile.mkdtemp(), "hp")
    with broker.Server(path) as srv:
        for _ in range(2):
            for how in ("host", "socket", "client"):
                print(f"{how:7s} {run(srv, path, how) / 1e3:8.0f} k msgs/s  ({os.cpu_count()} CPUs, N={N})",
                      flush=True)


if __name__ == "__main__":
    main()
