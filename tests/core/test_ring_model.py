"""Hypothesis drives each ring against a model that knows the byte layout.

The model keeps every record and pad with its position, so it predicts not
only contents but exactly when the ring is full, when a consumer is empty,
when a lossy consumer was lapped and how many records it lost.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import shmbroker as broker

CAP = 1024
HDR = 16
MAXREC = CAP // 2 - HDR
sizes = st.integers(min_value=0, max_value=MAXREC)
small = st.integers(min_value=0, max_value=120)


def rec_size(n: int) -> int:
    return HDR + ((n + 7) & ~7)


@dataclass
class Layout:
    """Where the producer puts records: tail, seq, records [(start, end, seq, data)]."""

    tail: int = 0
    seq: int = 0
    records: deque = field(default_factory=deque)  # data records, oldest first
    oldest: int = 0  # lossy: the oldest position not overwritten

    def place(self, n: int) -> tuple[int, int]:
        """(start of the record, end) for a payload of n bytes at the tail."""
        size = rec_size(n)
        contig = CAP - self.tail % CAP
        start = self.tail + (contig if size > contig else 0)
        return start, start + size

    def commit(self, start: int, n: int, data: bytes) -> None:
        end = start + rec_size(n)
        self.records.append((start, end, self.seq, data))
        self.seq += 1
        self.tail = end

    def lossy_advance(self, end: int) -> None:
        """Mirror of brk_lossy_room: oldest moves past whatever [.., end) overwrites."""
        while end > self.oldest + CAP:
            nxt = [r for r in self.records if r[0] >= self.oldest]
            first = nxt[0] if nxt else None
            contig = CAP - self.oldest % CAP
            if first is not None and first[0] == self.oldest:
                self.oldest = first[1]
            else:  # a pad (explicit or implicit) up to the end of the ring
                self.oldest += contig


class SpscMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tx = broker.Ring.create(capacity=CAP)
        self.rx = broker.Ring.open(self.tx.name)
        self.m = Layout()
        self.head = 0  # consumer's released position
        self.queue: deque = deque()
        self.claim: tuple[int, int] | None = None  # (start, claimed n)
        self.viewing: bytes | None = None

    def teardown(self) -> None:
        self.rx.close()
        self.tx.close()

    def fits(self, n: int) -> bool:
        return self.m.place(n)[1] - self.head <= CAP

    @precondition(lambda self: self.claim is None)
    @rule(n=sizes)
    def send(self, n: int) -> None:
        data = bytes([self.m.seq & 0xFF]) * n
        if self.fits(n):
            self.tx.send(data, timeout=0)
            start, _ = self.m.place(n)
            self.m.commit(start, n, data)
            self.queue.append(data)
        else:
            try:
                self.tx.send(data, timeout=0)
            except broker.Full:
                return
            raise AssertionError(f"send of {n} bytes should have found the ring full")

    @precondition(lambda self: self.claim is None)
    @rule(ns=st.lists(small, min_size=1, max_size=12))
    def send_many(self, ns: list[int]) -> None:
        msgs = [bytes([(self.m.seq + i) & 0xFF]) * n for i, n in enumerate(ns)]
        # exactly the prefix that fits goes in; the rest would block
        fit = 0
        saved = (self.m.tail, self.m.seq, len(self.m.records))
        for n, data in zip(ns, msgs):
            if not self.fits(n):
                break
            start, _ = self.m.place(n)
            self.m.commit(start, n, data)
            fit += 1
        self.m.tail, self.m.seq = saved[0], saved[1]
        while len(self.m.records) > saved[2]:
            self.m.records.pop()
        if fit < len(ns):
            return  # send_many would wait for room; covered by the threaded tests
        self.tx.send_many(msgs, timeout=0)
        for n, data in zip(ns, msgs):
            start, _ = self.m.place(n)
            self.m.commit(start, n, data)
            self.queue.append(data)

    @precondition(lambda self: self.claim is None)
    @rule(n=sizes)
    def claim(self, n: int) -> None:
        if not self.fits(n):
            try:
                self.tx.claim(n, timeout=0)
            except broker.Full:
                return
            raise AssertionError("claim should have found the ring full")
        view = self.tx.claim(n, timeout=0)
        view[:] = bytes([0xC1]) * n
        self.claim = (self.m.place(n)[0], n)

    @precondition(lambda self: self.claim is not None)
    @rule(frac=st.floats(min_value=0, max_value=1))
    def commit(self, frac: float) -> None:
        start, n = self.claim
        k = int(n * frac)
        self.tx.commit(k)
        self.m.commit(start, k, bytes([0xC1]) * k)
        self.queue.append(bytes([0xC1]) * k)
        self.claim = None

    @precondition(lambda self: self.claim is not None)
    @rule()
    def abort(self) -> None:
        self.tx.abort()
        self.claim = None

    def _consumed(self) -> None:
        start, end, _, _ = self.m.records.popleft()
        self.head = end

    @precondition(lambda self: self.viewing is None)
    @rule()
    def recv(self) -> None:
        if not self.queue:
            try:
                self.rx.recv(timeout=0)
            except broker.Empty:
                return
            raise AssertionError("recv should have found the ring empty")
        assert self.rx.recv(timeout=0) == self.queue.popleft()
        self._consumed()

    @precondition(lambda self: self.viewing is None)
    @rule(k=st.integers(min_value=1, max_value=20))
    def recv_many(self, k: int) -> None:
        if not self.queue:
            return
        got = self.rx.recv_many(k, timeout=0)
        assert 1 <= len(got) <= min(k, len(self.queue))
        for data in got:
            assert data == self.queue.popleft()
            self._consumed()

    @precondition(lambda self: self.viewing is None and self.queue)
    @rule()
    def view(self) -> None:
        v = self.rx.recv_view(timeout=0)
        self.viewing = bytes(v)
        assert self.viewing == self.queue[0]

    @precondition(lambda self: self.viewing is not None)
    @rule()
    def release(self) -> None:
        assert self.rx.release() is True
        self.queue.popleft()
        self._consumed()
        self.viewing = None

    @invariant()
    def counters_agree(self) -> None:
        consumed = self.rx.stats()["records"]
        assert self.tx.stats()["records"] == consumed + len(self.queue)


class BroadcastMachine(RuleBasedStateMachine):
    """One producer, two consumers; lossless or lossy chosen per run."""

    def __init__(self) -> None:
        super().__init__()
        self.lossy = False
        self.tx = None

    @precondition(lambda self: self.tx is None)
    @rule(lossy=st.booleans())
    def start(self, lossy: bool) -> None:
        self.lossy = lossy
        self.tx = broker.Broadcast.create(capacity=CAP, lossy=lossy, max_consumers=4)
        self.rx = [broker.Broadcast.open(self.tx.name) for _ in range(2)]
        self.m = Layout()
        self.heads = [0, 0]  # released position per consumer
        self.next = [0, 0]  # index into all_records of each consumer's next record
        self.expect = [0, 0]  # next seq each consumer expects
        self.lost = [0, 0]
        self.all: list = []  # every committed record, in order

    def teardown(self) -> None:
        if self.tx is not None:
            for c in self.rx:
                c.close()
            self.tx.close()

    @precondition(lambda self: self.tx is not None)
    @rule(n=sizes)
    def send(self, n: int) -> None:
        data = self.m.seq.to_bytes(4, "little") * (n // 4) + b"+" * (n % 4)
        start, end = self.m.place(n)
        if self.lossy:
            self.m.lossy_advance(end)
            self.tx.send(data, timeout=0)
        else:
            if end - min(self.heads) > CAP:
                try:
                    self.tx.send(data, timeout=0)
                except broker.Full:
                    return
                raise AssertionError("lossless broadcast should be full")
            self.tx.send(data, timeout=0)
        self.m.commit(start, n, data)
        self.all.append((start, end, self.m.seq - 1, data))

    @precondition(lambda self: self.tx is not None)
    @rule(who=st.integers(0, 1))
    def recv(self, who: int) -> None:
        c = self.rx[who]
        i = self.next[who]
        if self.lossy and i < len(self.all) and self.m.tail - self.all[i][0] > CAP:
            # lapped: the consumer restarts at the oldest record still there
            while self.all[i][0] < self.m.oldest:
                i += 1
        if i >= len(self.all):
            try:
                c.recv(timeout=0)
            except broker.Empty:
                return
            raise AssertionError("consumer should be empty")
        start, end, seq, data = self.all[i]
        assert c.recv(timeout=0) == data
        self.lost[who] += seq - self.expect[who]
        assert c.lost == self.lost[who]
        assert c.last_lost == seq - self.expect[who]
        self.expect[who] = seq + 1
        self.next[who] = i + 1
        self.heads[who] = end


TestSpscModel = pytest.mark.stress(SpscMachine.TestCase)  # 150 random runs of 60 steps: seconds
TestSpscModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestBroadcastModel = pytest.mark.stress(BroadcastMachine.TestCase)
TestBroadcastModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
