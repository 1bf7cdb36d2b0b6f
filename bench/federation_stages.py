"""Where a federated linked call's round trip goes: each stage's median time, from a caller on broker b to
the provider of Global\\echo on broker a and back, next to raw nats-py's request/reply through the same
nats-server. A diagnostic (bench/RESULTS.md, issue 18), not a benchmark of record: the brokers here are
instrumented (each stage's function wrapped to take the time, CLOCK_MONOTONIC, one host).

    .venv/bin/python bench/federation_stages.py [CALLS]

Every party is a process of its own: nats-server, brokers a and b (threaded servers, federated), the
provider (a client of a), the caller (a client of b, this process)."""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

STAGES = [  # (key, what happened then)
    ("b_remote", "broker b took the call from its caller (LinkBroker.remote)"),
    ("b_send", "b's loop publishes it (FederationLink._send_call)"),
    ("b_write", "b wrote it to NATS's socket"),
    ("a_parsed", "broker a's nats-py parsed it"),
    ("a_hand", "a hands it to its provider (host_call_packed)"),
    ("a_done", "the provider's answer is back at a"),
    ("a_respond", "a's loop publishes the answer (FederationLink._respond)"),
    ("a_write", "a wrote it to NATS's socket"),
    ("b_parsed", "b's nats-py parsed it"),
    ("b_answer", "b answers its caller (remote_answer)"),
]


def _broker(address: str, url: str, name: str, out: str) -> None:
    """A federated broker whose stages are timed; its times go to `out` at SIGTERM."""
    import nats.aio.client as nc_mod
    import nats.aio.transport as tr_mod
    import shmbroker.federation as fed
    from shmbroker.api import Server
    from shmbroker.services.links.broker import LinkBroker
    times: dict[str, list[int]] = collections.defaultdict(list)
    ns = time.perf_counter_ns

    def timed(cls: Any, meth: str, key: str) -> None:
        orig = getattr(cls, meth)

        def wrapper(*a: Any, **k: Any) -> Any:
            times[key].append(ns())
            return orig(*a, **k)
        setattr(cls, meth, wrapper)
    timed(fed.FederationLink, "_remote_call", "b_remote")
    timed(fed.FederationLink, "_send_call", "b_send")
    timed(fed.FederationLink, "_respond", "a_respond")
    timed(LinkBroker, "remote_answer", "b_answer")
    hand = LinkBroker.host_call_packed

    def host_call_packed(self: Any, conn: Any, svc: str, code: int, blob: bytes, room: int, done: Any) -> None:
        times["a_hand"].append(ns())

        def answered(*a: Any) -> None:
            times["a_done"].append(ns())
            done(*a)
        hand(self, conn, svc, code, blob, room, answered)
    LinkBroker.host_call_packed = host_call_packed  # type: ignore[method-assign]
    parsed = nc_mod.Client._process_msg

    async def process_msg(self: Any, sid: int, subject: Any, reply: Any, data: Any, headers: Any) -> Any:
        s = subject.decode() if isinstance(subject, (bytes, bytearray, memoryview)) else subject
        if ".s." in s or "_INBOX" in s:
            times[f"{name}_parsed"].append(ns())
        return await parsed(self, sid, subject, reply, data, headers)
    nc_mod.Client._process_msg = process_msg  # type: ignore[method-assign]
    write = tr_mod.TcpTransport.writelines

    def writelines(self: Any, payload: Any) -> Any:
        times[f"{name}_write"].append(ns())
        return write(self, payload)
    tr_mod.TcpTransport.writelines = writelines  # type: ignore[method-assign]
    srv = Server(address, federation=fed.Federation(url, name=name, accept="*"))

    def dump(*_: Any) -> None:
        with open(out, "w") as f:
            json.dump(times, f)
        os._exit(0)
    signal.signal(signal.SIGTERM, dump)
    srv.serve_forever(ready=lambda s: print("ready", flush=True))


def _after(stamps: list[int], start: np.ndarray) -> np.ndarray:
    """For each start, the first stamp at or after it (writes and heartbeats share a stage's list)."""
    arr = np.array(sorted(stamps))
    return arr[np.minimum(np.searchsorted(arr, start), len(arr) - 1)]


def main(calls: int) -> None:
    import shmbroker as broker
    from shmbroker.bench.federation import _port, _rtt_nats, _said, _wait_port, nats_binary
    tmp = tempfile.mkdtemp(prefix="broker-bench-stages-")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        port = _port()
        procs.append(subprocess.Popen([nats_binary(), "-a", "127.0.0.1", "-p", str(port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_port(port, procs[0], "nats-server")
        url = f"nats://127.0.0.1:{port}"
        for name in "ab":
            procs.append(subprocess.Popen([sys.executable, __file__, "--broker", os.path.join(tmp, f"{name}.sock"), url,
                                           name, os.path.join(tmp, f"{name}.json")], stdout=subprocess.PIPE))
            if _said(procs[-1]) != "ready":
                raise RuntimeError(f"broker {name} did not start")
        procs.append(subprocess.Popen([sys.executable, "-m", "shmbroker.bench.federation", "provider",
                                       os.path.join(tmp, "a.sock")], stdout=subprocess.PIPE))
        procs.append(subprocess.Popen([sys.executable, "-m", "shmbroker.bench.federation", "responder", url],
                                      stdout=subprocess.PIPE))
        if _said(procs[-2]) != "ready" or _said(procs[-1]) != "ready":
            raise RuntimeError("the provider or the responder did not start")
        time.sleep(0.5)
        warm = calls // 10
        start, end = [], []
        with broker.connect(os.path.join(tmp, "b.sock")) as s, s.link("Global\\echo") as link:
            for i in range(warm + calls):
                buf = broker.Buffer(64)
                t0 = time.perf_counter_ns()
                link.send_receive(1, b"p" * 64, buf)
                t1 = time.perf_counter_ns()
                if i >= warm:
                    start.append(t0)
                    end.append(t1)
        raw = np.median(_rtt_nats(url, calls, warm)) / 1000
        for p in procs[1:3]:
            p.terminate()
            p.wait(10)
        times: dict[str, list[int]] = {}
        for name in "ab":
            with open(os.path.join(tmp, f"{name}.json")) as f:
                times.update(json.load(f))
        t0s, prev = np.array(start), np.array(start)
        print(f"{calls} calls of 64 B, p50 of each stage's time since the one before (us):")
        print(f"  {'the caller calls':62s}  {'':>7s}  {0:8.0f}")
        for key, what in STAGES:
            at = _after(times.get(key, []), prev)
            print(f"  {what:62s} +{np.median(at - prev) / 1000:7.0f}  {np.median(at - t0s) / 1000:8.0f}")
            prev = at
        ends = np.array(end)
        print(f"  {'the caller has its answer':62s} +{np.median(ends - prev) / 1000:7.0f}  "
              f"{np.median(ends - t0s) / 1000:8.0f}")
        print(f"round trip p50 {np.median(ends - t0s) / 1000:.0f} us; raw nats-py request/reply p50 {raw:.0f} us, "
              f"{os.cpu_count()} cores")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--broker":
        _broker(*sys.argv[2:6])
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
