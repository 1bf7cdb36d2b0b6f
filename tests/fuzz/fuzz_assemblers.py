"""Fuzz target: the topic and link record assemblers, on what a hostile peer sends.

* topics.Assembler (the server relaying a ring publisher's records; a direct subscriber reading
  one in place): a sequence of records, each whole or a fragment of a message. A bad record is a
  ValueError (documented: the caller counts it and goes on); a message it gives back has the
  payload its first record announced, its sequence number above the last one's.
* the same records in a real broadcast ring, read by the subscriber's C fast path (topic_recv,
  topic_recv_many, csrc/py/ring.c) with the Assembler taking what C leaves: the messages are the
  ones the Assembler alone makes from the same records.
* pubsub._decode (a subscriber decoding a publisher's message: numpy meta): ServerGone, the
  error the subscriber catches and counts, or a value.
* TopicBroker._unpack (the server reading a client's PUBLISH_MANY batch): TopicError.
* links.unpack_call / unpack_writes (a provider reading a caller's packed arguments, a caller
  reading the provider's writes): ValueError; what they return re-packs to the same bytes.

Input: byte 0 the mode, then the bytes (records: fuzzlib.chunks, the cuts first).
"""
from __future__ import annotations

import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fuzzlib  # noqa: E402

with fuzzlib.instrumented(__name__ == "__main__", ["shmbroker.services.topics.wire", "shmbroker.services.topics.broker",
                                                    "shmbroker.services.topics.client", "shmbroker.services.links.wire"]):
    import numpy as np

    from shmbroker.services.links import wire as L
    from shmbroker.services.topics import client as S
    from shmbroker.services.topics import broker as T
    from shmbroker._errors import BrokerError, ServerGone
    from shmbroker.protocol.frames import Arg, ArgKind
    from shmbroker.core.ring import Broadcast
    from shmbroker.framework.session import Message

TARGET = "assemblers"
Bug = fuzzlib.Bug
HEAD = T.RECORD_HEAD.size
MAX_RECORDS = 48


def _records(data: bytes) -> list[bytes]:
    n = data[0] % 32 if data else 0
    return fuzzlib.chunks(data[1 + n:], data[1:1 + n])[:MAX_RECORDS]


def _assemble(records: list[bytes], max_message: int) -> list[tuple[int, bytes, bytes]]:
    asm = T.Assembler(max_message)
    out = []
    for rec in records:
        first = T.RECORD_HEAD.unpack_from(rec) if len(rec) >= HEAD else None
        last = asm.seq
        try:
            msg = asm.feed(rec)
        except ValueError:
            if asm._parts is not None and first is not None and first[3] == 0:
                raise Bug("a bad first record left a message half-way") from None
            continue
        if msg is None:
            continue
        seq, meta, payload = msg
        if seq <= last or asm.seq != seq or not asm.complete:
            raise Bug(f"message {seq} after {last} (assembler at {asm.seq}, complete {asm.complete})")
        if len(meta) > T.MAX_META or len(payload) > max_message:
            raise Bug(f"a message of {len(meta)} bytes of meta and {len(payload)} of payload")
        out.append(msg)
    return out


def _check_assembler(data: bytes) -> None:
    records = _records(data)
    got = _assemble(records, T.MAX_MESSAGE if data[:1] < b"\x80" else 64)
    # what split_record makes is assembled back as it was
    for seq, meta, payload in got:
        for size in (HEAD + len(meta) + 1, HEAD + len(meta) + 7, HEAD + len(meta) + 64):
            again = _assemble(T.split_record(seq, meta, payload, size), T.MAX_MESSAGE)
            if again != [(seq, meta, payload)]:
                raise Bug(f"split_record then Assembler: {again!r}, not {(seq, meta, payload)!r}")
        if payload:  # records too small for any payload: refused, not fragments without end
            try:
                T.split_record(seq, meta, payload, HEAD + len(meta) if not meta else HEAD)
            except ValueError:
                continue
            raise Bug(f"split_record into records of {HEAD} bytes")


_ring: tuple[Broadcast, Broadcast] | None = None


def _topic_ring() -> tuple[Broadcast, Broadcast]:
    """One lossless broadcast ring (a ring publisher's), made once, its name unlinked at once."""
    global _ring
    if _ring is None:
        tx = Broadcast.create(capacity=1 << 16, max_consumers=2)
        try:
            rx = Broadcast.open(tx.name, timeout=0)
        except BaseException:
            tx.close()
            raise
        tx.unlink()
        _ring = tx, rx
    return _ring


def _check_topic_recv(data: bytes) -> None:
    """The subscriber's fast path in C and the Assembler, as Subscriber.receive() uses them."""
    tx, rx = _topic_ring()
    records = [r for r in _records(data) if len(r) <= tx.max_record]
    for rec in records:
        tx.send(rec, timeout=0)
    many = data[:1] >= b"\x80"
    # half the inputs: fragments put together by C (topic_recv_frags) as a direct subscriber does
    frags = len(data) > 1 and data[1] & 1
    asm = T.Assembler(start=S._tfrag_start) if frags else T.Assembler()
    got = []
    for _ in range(2 * len(records) + 1):
        if asm.frag is not None:
            rc = S._trecv_frags(rx._addr, asm.frag)
            if rc == 0:
                got.append(asm.finish())
                continue
            if rc == S._RING_EMPTY:
                break
            # the next record is not its next fragment: Python reads it below
        if asm.complete:  # no message half-way: C may take plain ones
            if many:
                msgs, seq, _ = S._trecv_many(rx._addr, 3, asm.seq)
                if msgs:
                    if seq <= asm.seq:
                        raise Bug(f"topic_recv_many moved the sequence from {asm.seq} to {seq}")
                    got += [(None, b"", m) for m in msgs]
                    asm.seq = seq
                    continue
            else:
                r = S._trecv(rx._addr, asm.seq)
                if type(r) is tuple:
                    if r[0] <= asm.seq:
                        raise Bug(f"topic_recv gave sequence {r[0]} after {asm.seq}")
                    got.append((r[0], r[2] if len(r) == 3 else b"", r[1]))  # (a whole message with meta: 3)
                    asm.seq = r[0]
                    continue
        try:
            rec = rx.recv(timeout=0)
        except BrokerError:
            break
        try:
            msg = asm.feed(rec)
        except ValueError:
            continue
        if msg is not None:
            got.append(msg)
    expect = _assemble(records, T.MAX_MESSAGE)
    if [(m[1], m[2]) for m in got] != [(m[1], m[2]) for m in expect] or any(
            g[0] is not None and g[0] != e[0] for g, e in zip(got, expect)):
        raise Bug(f"C and the Assembler read {got!r}; the Assembler alone {expect!r}")


def _check_decode(data: bytes) -> None:
    """A message's meta (a numpy array's dtype and shape, or nothing) and its payload."""
    if len(data) < 3:
        return
    n = int.from_bytes(data[1:3], "little") % 1024
    meta, payload = data[3:3 + n], data[3 + n:]
    if data[0] & 3:  # most of them claim to be arrays: a dtype string (nd1) or a JSON descr (nd2)
        meta = (b"nd2" if data[0] & 3 == 2 else b"nd1") + meta
    try:
        value = S._decode(payload, meta)
    except ServerGone:
        return
    if isinstance(value, np.ndarray):
        if value.nbytes != len(payload) or value.dtype.hasobject:
            raise Bug(f"an array of {value.nbytes} bytes from a payload of {len(payload)}")
    elif value != payload:
        raise Bug("a message without meta is not its payload")


def _check_publish_many(data: bytes) -> None:
    """The server's reading of a PUBLISH_MANY batch, the data and the table as a client sends them."""
    n = int.from_bytes(data[:2].ljust(2, b"\0"), "little") % (len(data) + 1)
    payloads, table = data[2:2 + n], data[2 + n:]
    msg = Message(None, 1, T.TOPIC_PUBLISH_MANY, (Arg(ArgKind.READ, 0, payloads), Arg(ArgKind.READ, 0, table),
                                                   Arg(), Arg()), 1, False)
    try:
        items = T.TopicBroker(None)._unpack(msg)
    except T.TopicError:
        return
    if b"".join(p for p, _ in items) != payloads or not items:
        raise Bug("the batch's items are not its payloads")
    if any(len(m) > T.MAX_META for _, m in items):
        raise Bug("an item's meta over MAX_META")


def _check_links(data: bytes) -> None:
    blob = data[1:]
    try:
        args = L.unpack_call(blob)
    except ValueError:
        pass
    else:
        if len(args) > 4:
            raise Bug(f"{len(args)} arguments")
        again = b"".join(L.ARG_HEAD.pack(k, v, len(d)) + d for k, v, d in args)
        if again != blob:
            raise Bug(f"unpack_call: {args!r} re-packs to other bytes")
    try:
        writes = L.unpack_writes(blob)
    except ValueError:
        return
    if any(not 0 <= i <= 3 for i in writes) or sum(L.WRITE_HEAD.size + len(d) for d in writes.values()) != len(blob):
        raise Bug(f"unpack_writes: {writes!r} does not account for the blob")


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 6, data[1:]
    if mode == 0:
        _check_assembler(rest)
    elif mode == 1:
        _check_topic_recv(rest)
    elif mode == 2:
        _check_decode(rest)
    elif mode == 3:
        _check_publish_many(rest)
    else:
        _check_links(rest)


def seeds() -> list[bytes]:
    def recs(records: list[bytes], flag: int = 0) -> bytes:
        cuts = [len(r) for r in records[:-1]]
        assert all(c < 256 for c in cuts) and len(cuts) < 32
        return bytes([len(cuts) | flag]) + bytes(cuts) + b"".join(records)

    plain = T.split_record(1, b"", b"hello", 100) + T.split_record(2, b"m", b"x" * 20, 100)
    frags = T.split_record(3, b"meta", b"0123456789" * 12, 40) + T.split_record(4, b"", b"tail", 40)
    cut = T.split_record(5, b"", b"y" * 90, 40)[:2] + T.split_record(6, b"", b"z", 40)
    out = [bytes([0]) + recs(plain + frags), bytes([0]) + recs(cut), bytes([1]) + recs(plain + frags),
           bytes([1, 0x80]) + recs(T.split_record(1, b"", b"a", 64) * 2 + frags)[1:]]
    arr = np.arange(6, dtype="<i4").reshape(2, 3)
    payload, meta = S._encode(arr)
    out.append(bytes([2, 1, len(meta) - 3, 0]) + meta[3:] + payload)
    payload, meta = S._encode(np.zeros((0, 4), dtype="<f8"))
    out.append(bytes([2, 1, len(meta) - 3, 0]) + meta[3:] + payload)
    out.append(bytes([2, 0, 0, 0]) + b"plain")
    table = struct.pack("<I", 2) + T.TABLE_ENTRY.pack(3, 1) + T.TABLE_ENTRY.pack(2, 0) + b"m"
    out.append(bytes([3, 5, 0]) + b"abcde" + table)
    blob, _ = L.pack_call((5, b"read", None, bytearray(b"rw")), type(None))
    out.append(bytes([4, 0]) + blob)
    out.append(bytes([5, 0]) + L.pack_writes({0: b"one", 3: b"three"}))
    return out


if __name__ == "__main__":
    fuzzlib.run(TestOneInput)
