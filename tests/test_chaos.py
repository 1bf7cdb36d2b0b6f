"""A chaos soak (issue 13): clients under mixed load, one of them killed with SIGKILL every 50 ms.

The load: echo callers, key-value table users, ring publishers on a topic with a blocking direct
subscriber that is never killed (the witness), dropping subscribers relayed over their sockets, a
linked service's providers and callers. Every CHAOS_KILL_MS (50) a random client other than the
witness is killed with SIGKILL and another of its kind takes its place, for CHAOS_SECONDS (10).
Afterwards:

* no acknowledged message lost under `block`, none duplicated, none out of order: every message a
  publisher's publish() returned for reached the witness, each publisher's in sequence;
* nothing of the broker's in /dev/shm; the server's descriptors back to where they were, its RSS
  within 64 MiB of where it was, and it still serves;
* every killed client's sessions were seen to end; the time from the kill to the server's event
  (death detection) is printed with p50/p99/max (a figure, not a check).

`CHAOS_SECONDS=60 .venv/bin/python -m pytest -s tests/test_chaos.py` runs it longer.
"""
from __future__ import annotations

import json
import mmap
import os
import random
import select
import signal
import struct
import time
import zlib

import pytest

import shmbroker as broker
from shmbroker import connect
from shmbroker.core import names as _names

from tests.helpers import Child, wait_for
from tests.served import serve

SECONDS = float(os.environ.get("CHAOS_SECONDS", "10"))
KILL_EVERY = float(os.environ.get("CHAOS_KILL_MS", "50")) / 1000
SLOTS = 4096  # publishers over the whole run (each takes a slot of the acknowledged-sequence table)
TOPIC = "chaos.block"
MSG = struct.Struct("<IQI")  # publisher slot, sequence, crc32 of the two


def _message(slot: int, seq: int) -> bytes:
    head = struct.pack("<IQ", slot, seq)
    return head + struct.pack("<I", zlib.crc32(head)) + b"." * 48


def _caller(address: str) -> None:
    with connect(address, timeout=30) as s:
        echo = broker.EchoClient(s)
        while True:
            data = os.urandom(random.randint(1, 4096))
            assert echo.echo(data) == data


def _table(address: str) -> None:
    with connect(address, timeout=30, socket_only=random.random() < 0.5) as s:
        with broker.KeyValueClient(s).open("chaos") as t:
            while True:
                k = b"k%d" % random.randint(0, 99)
                v = os.urandom(32)
                t.put(k, v)
                got = t.get(k)
                assert len(got) == 32  # (another client may have written it since)


def _publisher(address: str, slot: int, acked: mmap.mmap) -> None:
    with connect(address, timeout=30) as s:
        pub = s.publisher(TOPIC, block_timeout=2.0)
        seq = 0
        while True:
            try:
                pub.publish(_message(slot, seq + 1))
            except broker.FullTimeout:
                continue  # the witness is behind: not acknowledged, the same sequence again
            seq += 1
            struct.pack_into("<Q", acked, 8 * slot, seq)  # after publish() returned: acknowledged


def _dropper(address: str) -> None:
    with connect(address, timeout=30, socket_only=True) as s, s.subscriber(TOPIC, policy="drop") as sub:
        while True:
            try:
                sub.receive_many(256, timeout=1)
            except broker.EmptyTimeout:
                pass


def _provider(address: str) -> None:
    """One provider at a time offers the service: the others wait for it to die (and be seen dead)."""
    with connect(address, timeout=30) as s:
        while True:
            try:
                offer = s.offer("chaos.svc", lambda call: len(call.read(0)))
            except broker.ServiceError:  # offered already
                time.sleep(0.02)
                continue
            with offer:
                offer.serve_forever()


def _link_caller(address: str) -> None:
    with connect(address, timeout=30) as s:
        while True:
            try:
                with s.link("chaos.svc") as link:
                    for _ in range(1000):
                        data = os.urandom(random.randint(1, 512))
                        assert link.send_receive(1, data) == len(data)
            except broker.BrokerError:
                time.sleep(0.01)  # no provider now (killed): another comes


def _witness(address: str, ready_w: int, stop_r: int, report_w: int) -> None:
    """The blocking subscriber nobody kills: each publisher's messages in sequence, none twice."""
    last: dict[int, int] = {}
    errors: list[str] = []
    got = 0
    with connect(address, timeout=30) as s, s.subscriber(TOPIC, capacity=4096) as sub:
        os.write(ready_w, b"w")
        want: dict[int, int] | None = None
        deadline = None
        while True:
            if want is None and select.select([stop_r], [], [], 0)[0]:
                want = json.loads(os.read(stop_r, 1 << 20))  # the acknowledged sequences: drain up to them
                deadline = time.monotonic() + 60
            if want is not None and (all(last.get(int(k), 0) >= v for k, v in want.items())
                                     or time.monotonic() > deadline):
                break
            try:
                batch = sub.receive_many(1024, timeout=0.1)
            except broker.EmptyTimeout:
                continue
            for data in batch:
                slot, seq, crc = MSG.unpack_from(data)
                if zlib.crc32(data[:12]) != crc:
                    errors.append(f"a damaged message from slot {slot}")
                    continue
                if seq != last.get(slot, 0) + 1:
                    errors.append(f"slot {slot}: sequence {seq} after {last.get(slot, 0)}")
                last[slot] = max(seq, last.get(slot, 0))
                got += 1
    os.write(report_w, json.dumps({"last": last, "errors": errors[:20], "got": got}).encode())


KINDS = ("caller", "table", "publisher", "dropper", "provider", "link_caller")


@pytest.mark.stress
def test_chaos_soak_kill_9_every_50_ms(tmp_path):
    acked = mmap.mmap(-1, 8 * SLOTS)  # shared with every child forked after this
    slots = iter(range(SLOTS))
    with serve(str(tmp_path), tcp=False, services=True) as srv:
        address = srv.unix
        ready_r, ready_w = os.pipe()
        stop_r, stop_w = os.pipe()
        report_r, report_w = os.pipe()
        witness = Child(lambda: _witness(address, ready_w, stop_r, report_w))
        assert os.read(ready_r, 1) == b"w"
        time.sleep(0.2)
        fds_before = len(os.listdir(f"/proc/{srv.pid}/fd"))
        rss_before = srv.rss()

        def spawn(kind: str) -> Child:
            if kind == "publisher":
                slot = next(slots)
                return Child(lambda: _publisher(address, slot, acked))
            return Child(lambda: {"caller": _caller, "table": _table, "dropper": _dropper, "provider": _provider,
                                  "link_caller": _link_caller}[kind](address))

        workers = [(kind, spawn(kind)) for kind in KINDS for _ in range(2)]
        kills: list[tuple[int, float]] = []
        failed: list[tuple[str, int]] = []  # clients that ended by themselves (an error: traceback above)
        end = time.monotonic() + SECONDS
        try:
            while time.monotonic() < end:
                time.sleep(KILL_EVERY)
                i = random.randrange(len(workers))
                kind, victim = workers[i]
                os.kill(victim.pid, signal.SIGKILL)
                kills.append((victim.pid, time.monotonic()))
                if victim.kill() != -signal.SIGKILL:  # reaped; had it ended by itself?
                    failed.append((kind, victim.status))
                workers[i] = (kind, spawn(kind))
            assert witness.status is None, "the witness died"
        finally:
            for kind, w in workers:
                if w.kill() != -signal.SIGKILL:
                    failed.append((kind, w.status))
        want = {str(k): struct.unpack_from("<Q", acked, 8 * k)[0] for k in range(SLOTS)}
        want = {k: v for k, v in want.items() if v}
        os.write(stop_w, json.dumps(want).encode())
        assert select.select([report_r], [], [], 90)[0], "the witness did not report"
        report = json.loads(os.read(report_r, 1 << 20))
        assert witness.join(30) == 0
        for fd in (ready_r, ready_w, stop_r, stop_w, report_r, report_w):
            os.close(fd)

        assert not failed, f"clients that failed by themselves (kind, exit code): {failed}"
        # no acknowledged message lost, none twice, none out of order
        assert not report["errors"], report["errors"]
        short = {k: (report["last"].get(k, 0), v) for k, v in want.items() if report["last"].get(k, 0) < v}
        assert not short, f"acknowledged messages that never reached the witness (got, acknowledged): {short}"

        # every killed client's sessions were seen to end; how long it took
        wait_for(lambda: not srv.stats()["sessions"][1:], timeout=60)  # (stats' own session is the one left)
        connected = {e["pid"] for e in srv.events if e.get("event") == "connected"}
        detect = []
        for pid, t in kills:
            if pid not in connected:
                continue  # killed before its first session
            ends = [e["t"] for e in srv.events if e.get("event") == "disconnected" and e["pid"] == pid]
            assert ends, f"the death of client {pid} was never seen"
            detect.append(max(0.0, min(ends) - t))
        detect.sort()
        assert not [n for n in os.listdir("/dev/shm") if _names.is_ours(n)], "segments left in /dev/shm"
        wait_for(lambda: len(os.listdir(f"/proc/{srv.pid}/fd")) <= fds_before + 2, timeout=30)
        grew = srv.rss() - rss_before
        assert grew < 64 << 20, f"the server's RSS grew by {grew >> 20} MiB"
        with connect(address, timeout=30) as s:
            assert broker.EchoClient(s).echo(b"still here") == b"still here"
        p = lambda q: detect[min(len(detect) - 1, int(q * len(detect)))] * 1000  # noqa: E731
        print(f"\nchaos: {SECONDS:g} s, {len(kills)} clients killed ({len(detect)} with sessions), "
              f"{report['got']} messages checked by the witness from {len(want)} publishers, none lost or "
              f"duplicated; death detection p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, max {detect[-1] * 1000:.1f} ms; "
              f"server RSS +{grew >> 20} MiB, descriptors {fds_before} -> {len(os.listdir(f'/proc/{srv.pid}/fd'))}")
        assert len(detect) > SECONDS / KILL_EVERY / 4, f"only {len(detect)} of {len(kills)} kills hit a session"
