"""What the TCP key proof costs: connect, one echo, close, against the same on plain TCP.

Two servers side by side in a child process (one with keys, one with insecure_tcp), the client in
this one; runs interleaved, so both see the same machine. The proof adds one round trip and two
HMAC-SHA256 on each side; the calls after it are the same frames on the same socket.

    .venv/bin/python bench/tcp_handshake.py [--rounds 2000]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import shmbroker as broker
from shmbroker.services.kv import EchoClient, ServicesSession


def _connects(address: str, key: object, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        with broker.connect(address, key=key) as s:
            EchoClient(s).echo(b"x")
        out.append((time.perf_counter_ns() - t0) / 1e3)
    return out


def _calls(address: str, key: object, n: int) -> list[float]:
    out = []
    with broker.connect(address, key=key) as s:
        echo = EchoClient(s)
        for _ in range(n):
            t0 = time.perf_counter_ns()
            echo.echo(b"x" * 64)
            out.append((time.perf_counter_ns() - t0) / 1e3)
    return out


def _servers(d: str, keys: str, ports_w: int, stop_r: int) -> None:
    """In a child process: both servers, their ports to the parent, until it says stop."""
    with broker.Server(os.path.join(d, "k.sock"), ServicesSession, tcp="tcp://127.0.0.1:0", keys=keys) as ks, \
            broker.Server(os.path.join(d, "p.sock"), ServicesSession, tcp="tcp://127.0.0.1:0",
                          insecure_tcp=True) as ps:
        os.write(ports_w, f"{ks.bound[1][1]} {ps.bound[1][1]}".encode())
        os.read(stop_r, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        keys = os.path.join(d, "keys")
        broker.new_key(keys, "bench")
        ports_r, ports_w = os.pipe()
        stop_r, stop_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the broker: another process, as a user has it
            try:
                _servers(d, keys, ports_w, stop_r)
            finally:
                os._exit(0)
        try:
            kp, pp = os.read(ports_r, 64).decode().split()
            keyed, plain = f"tcp://127.0.0.1:{kp}", f"tcp://127.0.0.1:{pp}"
            res: dict[str, list[float]] = {"connect keys": [], "connect plain": [], "call keys": [],
                                           "call plain": []}
            step = max(args.rounds // 10, 1)
            for _ in range(10):  # interleaved
                res["connect keys"] += _connects(keyed, keys, step)
                res["connect plain"] += _connects(plain, False, step)
                res["call keys"] += _calls(keyed, keys, step)
                res["call plain"] += _calls(plain, False, step)
        finally:
            os.write(stop_w, b"s")
            os.waitpid(pid, 0)
    print(f"{os.cpu_count()} cores; {args.rounds} of each, interleaved in 10 blocks; microseconds")
    print(f"{'':22} {'p50':>8} {'p99':>8}")
    for name, xs in res.items():
        xs.sort()
        print(f"{name:22} {statistics.median(xs):8.1f} {xs[int(len(xs) * 0.99)]:8.1f}")
    for what in ("connect", "call"):
        k, p = statistics.median(res[f"{what} keys"]), statistics.median(res[f"{what} plain"])
        print(f"{what}: keys / plain = {k / p:.2f}")


if __name__ == "__main__":
    main()
