"""`shmbroker bench pubsub`: topics against multiprocessing.Queue and pyzmq PUB/SUB over ipc://, in one run.

One publisher (this process) and 1 or 4 subscribers (forked children), for
each transport in turn:

- broker: a broker.Server in this process; the publisher and the subscribers
  on shared-memory sessions, so the publisher writes its own ring and the
  subscribers read it in place (the server is not in the path);
- relay: the same, but the subscribers on socket sessions (as a subscriber
  of another session is): the server reads the ring and relays;
- queue: one multiprocessing.Queue per subscriber, the publisher puts each
  message into each;
- zmq: a pyzmq PUB socket bound to ipc://, SUB sockets connected to it (no
  high-water mark: nothing dropped), if pyzmq is installed;
- iceoryx2: its Python binding's publish-subscribe of byte slices in shared
  memory (loan a sample, copy in, send; receive, copy out, give it back;
  nothing dropped), if iceoryx2 is installed.

Messages one per call are made in the publisher's loop as a user's program
makes them (bytes built each time; a bytearray or a numpy array refilled),
one row per payload kind; batches are made before the clock runs. The
relayed rows ("broker relay") stand beside the direct ones ("broker").

Rates are measured at each subscriber, from its first message to its last
(the slowest subscriber's for fan-out); latencies from the publisher's
perf_counter_ns (carried in the message) to the subscriber's, the publisher
sleeping 100 us (time.sleep: ~150 us here) between messages. Every subscriber checks it got every message, in order.
"""
from __future__ import annotations

import os
import struct
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from multiprocessing import Queue
from typing import Any, Callable

import numpy as np

from shmbroker.bench import ring as _bench_ring
from shmbroker.bench.ring import _child, _machine, _scale
from shmbroker.bench.show import Progress, Table
from shmbroker.bench.stats import latency_stats

try:  # a benchmark extra: pip install 'shmbroker[bench]'
    import zmq
except ImportError:  # pragma: no cover - the table says it is missing
    zmq = None  # type: ignore[assignment]
try:  # a benchmark extra too: iceoryx2's Python binding (shared memory, zero-copy by design)
    import ctypes

    import iceoryx2 as iox2
except ImportError:  # pragma: no cover - the table says it is missing
    iox2 = None

TRANSPORTS = ("broker", "relay", "queue", "zmq", "iceoryx2")
LABELS = {"broker": "broker", "relay": "broker relay", "queue": "mp.Queue", "zmq": "pyzmq ipc",
          "iceoryx2": "iceoryx2"}
_STAMP = struct.Struct("<QQ")  # a message's sequence number and the publisher's perf_counter_ns
_SEQ = struct.Struct("<Q")
_END = b"end"
_now_ns = time.perf_counter_ns


@dataclass
class Figure:
    key: str
    title: str
    unit: str  # "msgs/s", "GB/s" or "us"
    size: int
    subscribers: int
    count: int  # messages at scale 1
    batch: int = 1
    gap_us: float = 0.0  # latency: the publisher's pause between messages
    target: tuple[str, float] | None = None  # (op, value) for the broker column (issue 5)
    zero_copy: bool = False  # broker only: loan()/commit() and receive_view(), the payload built in place
    kind: str = "bytes"  # the payload as the publisher's loop makes it: bytes, bytearray or numpy (see _maker)


def _figures() -> list[Figure]:
    # One per call: the publisher's loop makes each message as a user's would (_maker), and every
    # subscriber receives each one and checks its number.
    return [
        Figure("one_64", "64 B one per call, bytes, 1 subscriber", "msgs/s", 64, 1, 300_000, target=(">=", 2e6)),
        Figure("one_64_ba", "64 B one per call, bytearray, 1 subscriber", "msgs/s", 64, 1, 300_000,
               kind="bytearray"),
        Figure("one_64_np", "64 B one per call, numpy, 1 subscriber", "msgs/s", 64, 1, 300_000, kind="numpy"),
        Figure("fan_64", "64 B one per call, 4 subscribers", "msgs/s", 64, 4, 100_000),
        Figure("batch_64", "64 B in batches of 1000, 1 subscriber", "msgs/s", 64, 1, 1_000_000, batch=1000,
               target=(">=", 10e6)),
        Figure("one_64k", "64 KiB, bytes, 1 subscriber", "GB/s", 64 << 10, 1, 10_000),
        Figure("one_1m", "1 MiB, bytes, 1 subscriber", "GB/s", 1 << 20, 1, 1_000),
        Figure("one_1m_ba", "1 MiB, bytearray, 1 subscriber", "GB/s", 1 << 20, 1, 1_000, kind="bytearray"),
        Figure("one_1m_np", "1 MiB, numpy, 1 subscriber", "GB/s", 1 << 20, 1, 1_000, kind="numpy"),
        Figure("zc_1m", "1 MiB lent in place, only a 16 B stamp written and read (loan / receive_view)", "GB/s",
               1 << 20, 1, 20_000, target=(">=", 25.0), zero_copy=True),
        Figure("lat_64", "64 B latency, a sleep of 100 us between", "us", 64, 1, 3_000, gap_us=100.0),
    ]


# ---- the transports: (publish, publish_many, close) in the parent; receive in a child ----


class _Broker:
    def __init__(self, relay: bool, zero_copy: int = 0) -> None:
        from shmbroker.api import connect
        from shmbroker.api import Server

        self.dir = tempfile.mkdtemp(prefix="broker-bench-pubsub-")
        self.path = os.path.join(self.dir, "b.sock")
        self.server = Server(self.path).start()
        self.session = connect(self.path)
        # zero-copy: a ring whose records hold a 1 MiB message whole, so that it is lent in place
        self.pub = self.session.publisher("bench", block_timeout=60, ring_capacity=(8 << 20) if zero_copy else None)
        self.relay = relay
        self.zero_copy = zero_copy
        self.connect = connect

    def subscriber(self, i: int) -> Any:  # in the child (after the fork)
        s = self.connect(self.path, socket_only=self.relay)
        return s, s.subscriber("bench", capacity=4096)

    def receive(self, end: Any) -> Callable[[], Any]:
        return end[1].receive_view if self.zero_copy else end[1].receive  # type: ignore[no-any-return]  # a view: the next call releases it

    def receive_many(self, end: Any) -> Callable[[], list[Any]]:
        return lambda: end[1].receive_many(4096)

    def publish(self) -> Callable[[Any], Any]:
        if not self.zero_copy:
            return self.pub.publish
        loan, commit, size = self.pub.loan, self.pub.commit, self.zero_copy

        def publish(head: bytes) -> None:  # a writer that builds its message of `size` bytes in the ring:
            buf = loan(size)               # here only its first bytes, the stamp
            buf[:len(head)] = head
            commit()
        return publish

    def publish_many(self) -> Callable[[list[Any]], Any]:
        return self.pub.publish_many

    def close(self) -> None:
        import shutil

        self.pub.close()
        self.session.close()
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class _Queue:
    def __init__(self, n: int) -> None:
        self.queues: list[Any] = [Queue() for _ in range(n)]

    def subscriber(self, i: int) -> Any:
        return self.queues[i]

    def receive(self, q: Any) -> Callable[[], Any]:
        return q.get  # type: ignore[no-any-return]  # (the peers' own calls, untyped here: the same below)

    def receive_many(self, q: Any) -> Callable[[], list[Any]]:
        return q.get  # type: ignore[no-any-return]

    def publish(self) -> Callable[[Any], Any]:
        qs = self.queues
        if len(qs) == 1:
            return qs[0].put  # type: ignore[no-any-return]
        return lambda m: [q.put(m) for q in qs]

    def publish_many(self) -> Callable[[list[Any]], Any]:
        return self.publish()  # a list is one item: the fairest batch a Queue has

    def close(self) -> None:
        for q in self.queues:
            q.close()
            q.join_thread()


class _Zmq:
    def __init__(self, n: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="broker-bench-pubsub-")
        self.addr = f"ipc://{self.dir}/z"
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.SNDHWM, 0)  # no high-water mark: nothing is dropped
        self.sock.bind(self.addr)
        self.n = n

    def subscriber(self, i: int) -> Any:
        ctx = zmq.Context()
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.RCVHWM, 0)
        s.setsockopt(zmq.SUBSCRIBE, b"")
        s.connect(self.addr)
        return ctx, s

    def receive(self, end: Any) -> Callable[[], Any]:
        return end[1].recv  # type: ignore[no-any-return]

    def receive_many(self, end: Any) -> Callable[[], list[Any]]:
        return end[1].recv_multipart  # type: ignore[no-any-return]

    def publish(self) -> Callable[[Any], Any]:
        return self.sock.send

    def publish_many(self) -> Callable[[list[Any]], Any]:
        return self.sock.send_multipart

    def close(self) -> None:
        import shutil

        self.sock.close(linger=0)
        self.ctx.term()
        shutil.rmtree(self.dir, ignore_errors=True)


class _Iceoryx2:
    """iceoryx2's publish-subscribe of byte slices, as its Python binding is meant to be used: the
    publisher loans a sample of the message's size, copies the message in and sends it; a
    subscriber receives a sample, copies its payload out to bytes and gives the sample back. Nothing
    is dropped (no safe overflow: a publisher retries until delivered, as a blocking subscriber
    wants); an empty receive yields the CPU and looks again (the binding has no blocking receive)."""

    def __init__(self, n: int, size: int) -> None:
        iox2.set_log_level_from_env_or(iox2.LogLevel.Error)
        self.name = f"broker-bench/pubsub-{os.getpid()}-{time.monotonic_ns()}"
        self.size = size
        self.node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        self.service = self._service(self.node)
        self.pub = (self.service.publisher_builder().initial_max_slice_len(max(size, 64))
                    .allocation_strategy(iox2.AllocationStrategy.PowerOfTwo)
                    .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered).create())

    def _service(self, node: Any) -> Any:
        return (node.service_builder(iox2.ServiceName.new(self.name)).publish_subscribe(iox2.Slice[ctypes.c_uint8])
                .enable_safe_overflow(False).subscriber_max_buffer_size(1024).history_size(0).max_publishers(1)
                .max_subscribers(8).open_or_create())

    def subscriber(self, i: int) -> Any:  # in the child (after the fork): its own node
        node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        return node, self._service(node).subscriber_builder().create()

    def receive(self, end: Any) -> Callable[[], Any]:
        sub, idle = end[1], os.sched_yield

        def receive() -> bytes:
            while True:
                s = sub.receive()
                if s is not None:
                    data = bytes(s.payload().as_memory_view())
                    s.delete()  # the sample goes back to the publisher's pool
                    return data
                idle()
        return receive

    def receive_many(self, end: Any) -> Callable[[], list[Any]]:
        one, sub = self.receive(end), end[1]

        def receive_many() -> list[bytes]:
            got = [one()]
            while len(got) < 4096 and (s := sub.receive()) is not None:
                got.append(bytes(s.payload().as_memory_view()))
                s.delete()
            return got
        return receive_many

    def publish(self) -> Callable[[Any], Any]:
        pub = self.pub
        loan, move, char = pub.loan_slice_uninit, ctypes.memmove, ctypes.c_char

        def publish(data: Any) -> None:
            src: bytes | ctypes.Array[ctypes.c_char]
            if type(data) is bytes:
                n, src = len(data), data
            else:  # a bytearray or an array: its own memory, no copy before the one into the sample
                view = memoryview(data).cast("B")
                n, src = view.nbytes, (char * view.nbytes).from_buffer(view)
            sample = loan(n)
            move(sample.payload_ptr, src, n)
            sample.assume_init().send()
        return publish

    def publish_many(self) -> Callable[[list[Any]], Any]:
        one = self.publish()
        return lambda items: [one(x) for x in items]

    def close(self) -> None:
        for x in (self.pub, self.service, self.node):
            delete = getattr(x, "delete", None)
            if delete is not None:
                delete()


def _maker(fig: Figure, transport: str) -> Callable[[int], Any]:
    """The publisher's loop body: message k of fig.size bytes, its number and a 0 stamp first, made as
    a user's loop makes it. bytes: a new bytes each time; bytearray and numpy: one buffer, refilled
    (a multiprocessing.Queue pickles later, in a thread: it gets a new one each time)."""
    pad = b"\0" * (fig.size - _STAMP.size)
    pack = _STAMP.pack
    if fig.kind == "bytes":
        return lambda k: pack(k, 0) + pad
    fresh = transport == "queue"
    if fig.kind == "bytearray":
        buf = bytearray(fig.size)
        into = _STAMP.pack_into

        def make_ba(k: int) -> Any:
            b = bytearray(fig.size) if fresh else buf
            into(b, 0, k, 0)
            return b
        return make_ba
    arr = np.zeros(fig.size // 8, np.uint64)

    def make_np(k: int) -> Any:
        a = np.zeros(fig.size // 8, np.uint64) if fresh else arr
        a[0] = k
        return a
    return make_np


def _make(transport: str, n: int, zero_copy: int = 0, size: int = 64) -> Any:
    if transport in ("broker", "relay"):
        return _Broker(transport == "relay", zero_copy)
    if transport == "queue":
        return _Queue(n)
    if transport == "iceoryx2":
        return _Iceoryx2(n, size)
    return _Zmq(n)


# ---- one figure on one transport -------------------------------------------------------------


def _subscriber(t: Any, i: int, fig: Figure, count: int, ready_w: int, out_w: int) -> None:
    """Child: receive until the end marker; report (rate or latencies) through out_w."""
    end = t.subscriber(i)
    many = fig.batch > 1
    recv = t.receive_many(end) if many else t.receive(end)
    os.write(ready_w, b"r")
    # the publisher sends hellos until every subscriber has seen one (pyzmq's late joiners)
    while True:
        m = recv()
        if many:  # the first messages can come in the same batch as the last hellos (a relay under load)
            m = [x for x in m if bytes(x[:5]) != b"hello"]
            if m:
                break
        elif bytes(m[:5]) != b"hello":
            break
    lat: list[float]
    got, t0, lat = 0, 0, []
    seq_expect = 0
    if not many and not fig.gap_us and len(m) >= 8 and (type(m) is np.ndarray or bytes(m[:3]) != _END):
        # one per call: each message's number checked with one unpack, so that the subscriber's own
        # work costs less than the transport it measures (the same for every transport)
        seq_of = _SEQ.unpack_from
        t0 = _now_ns()
        while True:
            if len(m) < 8 or seq_of(m)[0] != seq_expect:
                if bytes(m[:3]) == _END:
                    break
                raise AssertionError(f"subscriber {i}: message {seq_of(m)[0] if len(m) >= 8 else m!r}, "
                                     f"want {seq_expect}")
            seq_expect += 1
            m = recv()
        got = seq_expect
    while True:
        items = m if many else [m]
        if many and len(items) > 1 and not fig.gap_us:
            # a batch: every message's number checked at once (numpy over the joined messages), so
            # that the check costs the subscriber less than the transport it measures
            joined = b"".join(items)
            if len(joined) == len(items) * fig.size and joined[:3] != _END and joined[-fig.size:][:3] != _END:
                seqs = np.frombuffer(joined, dtype=np.uint64).reshape(len(items), fig.size // 8)[:, 0]
                if not (seqs == np.arange(seq_expect, seq_expect + len(items), dtype=np.uint64)).all():
                    raise AssertionError(f"subscriber {i}: a batch out of order from message {seq_expect}")
                if got == 0:
                    t0 = _now_ns()
                seq_expect += len(items)
                got += len(items)
                m = recv()
                continue
        for item in items:
            b = bytes(item[:_STAMP.size]) if len(item) >= _STAMP.size else bytes(item)
            if b[:3] == _END:
                t1 = _now_ns()
                rate = (got - 1) / max((t1 - t0) / 1e9, 1e-9) if got > 1 else 0.0
                os.write(out_w, struct.pack("<dI", rate, len(lat)) + struct.pack(f"<{len(lat)}d", *lat)
                         + struct.pack("<Q", got))
                if isinstance(end, tuple) and hasattr(end[0], "term"):
                    end[1].close(linger=0)
                    end[0].term()
                elif isinstance(end, tuple) and hasattr(end[1], "delete"):  # iceoryx2's subscriber (its node
                    end[1].delete()                                         # goes with the process)
                return
            seq, stamp = _STAMP.unpack_from(b)
            if seq != seq_expect:
                raise AssertionError(f"subscriber {i}: message {seq}, want {seq_expect}")
            seq_expect += 1
            if got == 0:
                t0 = _now_ns()
            got += 1
            if fig.gap_us:
                lat.append((_now_ns() - stamp) / 1e3)
        m = recv()


def _run(transport: str, fig: Figure, count: int) -> dict[str, Any]:
    t = _make(transport, fig.subscribers, fig.size if fig.zero_copy else 0, fig.size)
    ready_r, ready_w = os.pipe()
    pipes = [os.pipe() for _ in range(fig.subscribers)]
    try:
        with ExitStack() as kids:  # each child reaped (killed first if this fails)
            for i in range(fig.subscribers):
                kids.enter_context(_child(_subscriber, t, i, fig, count, ready_w, pipes[i][1]))
            for k, (r, w) in enumerate(pipes):  # the children have them: a subscriber that dies is an EOF here
                os.close(w)
                pipes[k] = (r, -1)
            for _ in range(fig.subscribers):
                if not os.read(ready_r, 1):
                    raise RuntimeError("a subscriber ended before it was ready")
            publish = t.publish_many() if fig.batch > 1 else t.publish()
            # zero-copy: only the message's head is handed over; the publisher lends the whole size
            pad = b"\0" * ((0 if fig.zero_copy else fig.size) - _STAMP.size)
            hello = b"hello" + b"\0" * max(0, (_STAMP.size if fig.zero_copy else fig.size) - 5)
            # hellos for 0.2 s, so that every subscriber is surely listening (pyzmq's late joiners)
            t_end = time.monotonic() + 0.2
            while time.monotonic() < t_end:
                publish([hello] * fig.batch if fig.batch > 1 else hello)
                time.sleep(0.01)
            seq = 0
            if fig.batch > 1:
                # made before the clock runs (the same for every transport): making 64 B messages
                # in Python would cost the publisher more than sending them
                batches = [[_STAMP.pack(b * fig.batch + k, 0) + pad for k in range(fig.batch)]
                           for b in range(count // fig.batch)]
                for batch in batches:
                    publish(batch)
                    seq += fig.batch
                publish([_END + pad])
            elif not fig.gap_us and not fig.zero_copy:  # each message made in the loop, as a user's
                make = _maker(fig, transport)
                for k in range(count):
                    publish(make(k))
                seq = count
                publish(_END + pad)
            else:
                gap = fig.gap_us / 1e6
                for _ in range(count):
                    if gap:
                        # a sleep, not a busy wait: a publisher spinning on its CPU would hold up the
                        # subscriber the kernel wakes on that CPU (see csrc/ring/brk_ring.c, brk_woke_at)
                        time.sleep(gap)
                    publish(_STAMP.pack(seq, _now_ns()) + pad)
                    seq += 1
                publish(_END + pad)
            reports = []
            for r, _ in pipes:
                rate, n = struct.unpack("<dI", _read(r, 12))
                lat = list(struct.unpack(f"<{n}d", _read(r, 8 * n))) if n else []
                (got,) = struct.unpack("<Q", _read(r, 8))
                if got != seq:
                    raise AssertionError(f"{transport}: a subscriber got {got} of {seq}")
                reports.append((rate, lat))
    finally:
        t.close()
        for fd in (ready_r, ready_w, *[fd for p in pipes for fd in p if fd >= 0]):
            os.close(fd)
    if fig.unit == "us":
        return {**latency_stats([int(x * 1e3) for x in reports[0][1]]), "count": seq}
    rate = min(r for r, _ in reports)
    value = rate * fig.size / 1e9 if fig.unit == "GB/s" else rate
    return {"value": value, "rates": [r for r, _ in reports], "count": seq}


def _read(fd: int, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            raise RuntimeError("a subscriber ended without its report")
        out += chunk
    return out


def bench(quick: bool = False, scale: float | None = None) -> dict[str, Any]:
    factor = _scale(quick, scale)
    figs = _figures()
    transports = [t for t in TRANSPORTS if (t != "zmq" or zmq is not None) and (t != "iceoryx2" or iox2 is not None)]
    progress = Progress(sum(1 if f.zero_copy else len(transports) for f in figs))
    out: dict[str, Any] = {"meta": {**_machine(), "quick": quick, "scale": factor, "repeats": 1,
                                    "zmq": zmq.__version__ if zmq is not None else None,
                                    "iceoryx2": _version("iceoryx2") if iox2 is not None else None}, "figures": {}}
    for fig in figs:
        entry: dict[str, Any] = {"title": fig.title, "unit": fig.unit, "results": {}}
        for t in (["broker"] if fig.zero_copy else transports):
            count = max(int(fig.count * factor) // fig.batch * fig.batch, fig.batch * 10 if fig.batch > 1 else 200)
            progress.start(f"{fig.title} - {LABELS[t]}")
            res = _run(t, fig, count)
            entry["results"][t] = res
            progress.end(f"p50 {res['p50']:.1f} us" if fig.unit == "us" else f"{_fmt(res['value'], fig.unit)}")
        if fig.target is not None:
            op, value = fig.target
            got = entry["results"]["broker"]["value"]
            entry["target"] = {"op": op, "value": value, "measured": got, "met": got >= value}
        out["figures"][fig.key] = entry
    out["meta"]["loadavg_end"] = list(os.getloadavg())
    out["meta"]["seconds"] = round(time.monotonic() - progress.t0, 1)
    return out


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _fmt(value: float, unit: str) -> str:
    if unit == "msgs/s":
        return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value / 1e3:.1f} k"
    return f"{value:.2f}"


def table(result: dict[str, Any]) -> Table:
    above = _bench_ring.header_lines("pubsub", result["meta"], "msgs/s")
    transports = [t for t in TRANSPORTS if any(t in f["results"] for f in result["figures"].values())]
    rows: list[tuple[str, ...]] = [("figure", "unit", *(LABELS[t] for t in transports), "target for broker")]
    for fig in result["figures"].values():
        res = fig["results"]
        tgt = fig.get("target")
        ttext = (f"{tgt['op']} {_fmt(tgt['value'], fig['unit'])}: {'met' if tgt['met'] else 'NOT met'}"
                 if tgt else "")
        if fig["unit"] == "us":
            for m in ("p50", "p99"):
                rows.append((f"{fig['title']} {m}", "us (lower)",
                             *(f"{res[t][m]:.1f}" if t in res else "-" for t in transports), ""))
        else:
            rows.append((fig["title"], fig["unit"], *(_fmt(res[t]["value"], fig["unit"]) if t in res else "-"
                                                      for t in transports), ttext))
    lines = ["", "broker: publisher and subscribers on shared-memory sessions (the subscribers read the "
              "publisher's ring in place);",
              "broker relay: the subscribers on socket sessions (the server relays); rates at the slowest "
              "subscriber"]
    if "zmq" not in transports:
        lines.append("pyzmq is not installed: pip install 'shmbroker[bench]' for its column")
    if "iceoryx2" not in transports:
        lines.append("iceoryx2 is not installed: pip install 'shmbroker[bench]' for its column")
    return Table(above, rows, lines)


def run(json_path: str | None = None, quick: bool = False, scale: float | None = None,
        chart_path: str | None = None) -> int:
    """`shmbroker bench pubsub`: print the table, optionally write JSON; the exit code."""
    return _bench_ring.report(bench, table, json_path, quick, scale, chart_path, "pubsub")

