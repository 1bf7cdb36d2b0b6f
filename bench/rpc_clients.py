"""Server throughput under many clients: N client processes, each a strict loop of 64 B echo calls
(`send_receive`, a fresh Buffer each, as a user writes it) for DURATION seconds against one
broker.Server in its own process; the total req/s and the calls' p50/p99, for N = 1, 2, 4, 8, on
shared-memory sessions and on socket sessions.

    .venv/bin/python bench/rpc_clients.py [--duration 2] [--clients 1,2,4,8] [--transports shm,socket]
"""
from __future__ import annotations

import argparse
import os
import select
import struct
import sys
import tempfile
import time

from shmbroker.api import Server, connect
from shmbroker.bench.rpc import ECHO, PAYLOAD, SMALL, _Bench
from shmbroker.core.malloc import keep_large_buffers
from shmbroker.framework.client import Buffer

_REPORT = struct.Struct("<Qdd")  # calls, p50 us, p99 us


def _serve(path: str, policy: str, ready_w: int, stop_r: int) -> None:
    keep_large_buffers()
    with Server(path, _Bench, shm_policy=policy):
        os.write(ready_w, b"R")
        os.read(stop_r, 1)


def _client(path: str, transport: str, go_r: int, out_w: int, duration: float) -> None:
    s = connect(path)
    assert s.transport == transport, s.transport
    call, clock = s.send_receive, time.perf_counter_ns
    for _ in range(200):
        call(ECHO, PAYLOAD, Buffer(SMALL))
    os.read(go_r, 1)  # all start together
    lat: list[int] = []
    end = clock() + int(duration * 1e9)
    while True:
        buf = Buffer(SMALL)
        t0 = clock()
        call(ECHO, PAYLOAD, buf)
        t1 = clock()
        lat.append(t1 - t0)
        if t1 >= end:
            break
    assert buf.value == PAYLOAD
    s.close()
    lat.sort()
    os.write(out_w, _REPORT.pack(len(lat), lat[len(lat) // 2] / 1e3, lat[len(lat) * 99 // 100] / 1e3))


def _fork(fn, *args) -> int:  # type: ignore[no-untyped-def]
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn(*args)
            code = 0
        finally:
            os._exit(code)
    return pid


def run(n: int, transport: str, duration: float) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "clients.sock")
        ready_r, ready_w = os.pipe()
        stop_r, stop_w = os.pipe()
        server = _fork(_serve, path, "strict" if transport == "shared memory" else "off", ready_w, stop_r)
        pids: list[int] = []
        try:
            if not select.select([ready_r], [], [], 30)[0]:
                raise RuntimeError("the server did not start")
            os.read(ready_r, 1)
            go_r, go_w = os.pipe()
            out_r, out_w = os.pipe()
            pids = [_fork(_client, path, transport, go_r, out_w, duration) for _ in range(n)]
            time.sleep(0.5)  # connected and warmed up
            os.write(go_w, b"G" * n)
            reports = []
            for _ in range(n):
                reports.append(_REPORT.unpack(os.read(out_r, _REPORT.size)))
            for fd in (go_r, go_w, out_r, out_w):
                os.close(fd)
        finally:
            for pid in pids:
                os.waitpid(pid, 0)
            os.write(stop_w, b"S")
            os.waitpid(server, 0)
            for fd in (ready_r, ready_w, stop_r, stop_w):
                os.close(fd)
    total = sum(r[0] for r in reports) / duration
    return total, max(r[1] for r in reports), max(r[2] for r in reports)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--transports", default="shm,socket")
    a = ap.parse_args()
    print(f"{os.cpu_count()} cores; {a.duration} s of strict 64 B echo calls per client process")
    for t in a.transports.split(","):
        transport = "shared memory" if t == "shm" else "socket"
        one = None
        for n in map(int, a.clients.split(",")):
            total, p50, p99 = run(n, transport, a.duration)
            one = one or total
            print(f"{transport:13} {n} clients: {total / 1e3:7.1f} k req/s ({total / one:.2f}x one), worst client's p50 {p50:.1f} us, p99 {p99:.1f} us", flush=True)


if __name__ == "__main__":
    main()
