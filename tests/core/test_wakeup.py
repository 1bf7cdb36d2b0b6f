"""Sleep/wake hand-offs between two processes: with no spinning every wait really sleeps, so a lost wake-up shows as a timeout."""
from __future__ import annotations

import json
import os

import pytest

from shmbroker import Ring

from tests.helpers import Child

ROUNDS = 3000


def _pingpong(use_eventfd: bool) -> None:
    ping = Ring.create(capacity=1 << 12, spin_us=0)  # parent -> child
    pong = Ring.create(capacity=1 << 12, role="consumer", spin_us=0)  # child -> parent
    efd_child = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    efd_parent = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    names = ping.name, pong.name

    def child() -> None:
        with Ring.open(names[0], spin_us=0) as rx, Ring.open(names[1], role="producer", spin_us=0) as tx:
            if use_eventfd:
                rx.set_wait_fd(efd_child)
                tx.set_notify_fd(efd_parent)
            for i in range(ROUNDS):
                data = rx.recv(timeout=5)  # a lost wake-up would time out here
                assert data == i.to_bytes(4, "little"), (data, i)
                tx.send(data)
            # how often a side really sleeps depends on scheduling; hundreds of real
            # sleep/wake hand-offs are what makes the test mean something
            assert rx.stats()["sleeps"] >= ROUNDS // 10, "the child hardly slept: nothing was tested"

    try:
        if use_eventfd:
            ping.set_notify_fd(efd_child)
            pong.set_wait_fd(efd_parent)
        with Child(child) as kid:
            for i in range(ROUNDS):
                ping.send(i.to_bytes(4, "little"))
                assert pong.recv(timeout=5) == i.to_bytes(4, "little")
            assert kid.join(60) == 0
        assert pong.stats()["sleeps"] >= ROUNDS // 10
        assert ping.stats()["wakeups"] >= ROUNDS // 10
    finally:
        ping.close()
        pong.close()
        os.close(efd_child)
        os.close(efd_parent)


@pytest.mark.parametrize("mechanism", ["futex", "eventfd"])
def test_thousands_of_sleep_wake_handoffs_never_hang(mechanism):
    _pingpong(mechanism == "eventfd")


def test_producer_sleeping_on_a_full_ring_is_woken_by_the_consumer():
    with Ring.create(capacity=1 << 10, spin_us=0) as tx:
        name = tx.name

        def consumer() -> None:
            with Ring.open(name, spin_us=0) as rx:
                for i in range(20000):
                    assert rx.recv(timeout=5) == i.to_bytes(4, "little") * 25

        with Child(consumer) as kid:
            for i in range(20000):
                tx.send(i.to_bytes(4, "little") * 25, timeout=5)  # the ring holds ~9 of these
            assert kid.join(60) == 0
        assert tx.stats()["full_waits"] > 0, "the producer never waited: nothing was tested"


def _pinned_pingpong(parent_cpu: int, child_cpu: int, rounds: int = 2000) -> tuple[dict, dict]:
    """A ping-pong with the defaults (spin_us 50) between this process pinned to parent_cpu and a
    child pinned to child_cpu; the stats of each side's receiving ring."""
    was = os.sched_getaffinity(0)
    r, w = os.pipe()
    ping = Ring.create(capacity=1 << 12)
    pong = Ring.create(capacity=1 << 12, role="consumer")
    names = ping.name, pong.name

    def child() -> None:
        os.sched_setaffinity(0, {child_cpu})
        with Ring.open(names[0]) as rx, Ring.open(names[1], role="producer") as tx:
            for _ in range(rounds):
                tx.send(rx.recv(timeout=30))
            os.write(w, json.dumps(rx.stats()).encode())

    try:
        os.sched_setaffinity(0, {parent_cpu})
        with Child(child) as kid:
            for i in range(rounds):
                ping.send(i.to_bytes(4, "little"))
                assert pong.recv(timeout=30) == i.to_bytes(4, "little")
            assert kid.join(60) == 0
        child_stats = json.loads(os.read(r, 4096))
        return pong.stats(), child_stats
    finally:
        os.sched_setaffinity(0, was)
        ping.close()
        pong.close()
        os.close(r)
        os.close(w)


def test_a_waiter_yields_to_a_peer_on_its_own_cpu():
    """Both processes on one CPU (pinned, or a one-vCPU machine): each side's hint is the other's
    CPU, so every wait yields from the start instead of spinning in the way of the peer."""
    cpu = min(os.sched_getaffinity(0))
    mine, theirs = _pinned_pingpong(cpu, cpu)
    assert mine["shared_cpu_waits"] > 0 and theirs["shared_cpu_waits"] > 0, (mine, theirs)


def test_a_waiter_spins_for_a_peer_on_another_cpu():
    """On two CPUs no wait is planned as a shared CPU's, whatever happened before: once, both sides
    of a default round trip could fall asleep for good (each woke the other, then slept at once)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    mine, theirs = _pinned_pingpong(cpus[0], cpus[1])
    assert mine["shared_cpu_waits"] == 0 and theirs["shared_cpu_waits"] == 0, (mine, theirs)
