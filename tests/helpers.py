"""Helpers for tests that need a second real process."""
from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Callable


def _die_with_parent() -> None:
    """SIGKILL this process when the thread that forked it ends: a test that fails (or a test run
    that dies) never leaves a child behind, blocked for ever on a pipe its parent will not write."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Child:
    """A forked child running `fn()`; exit code 0 if it returned, 1 if it raised (traceback on stderr)."""

    def __init__(self, fn: Callable[[], object]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _die_with_parent()
                fn()
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.pid = pid
        self.status: int | None = None

    def join(self, timeout: float = 60.0) -> int:
        """Wait for the child; kill it if it outlives `timeout`. Returns its exit code (-signal if killed)."""
        import time

        if self.status is not None:
            return self.status
        deadline = time.monotonic() + timeout
        while True:
            pid, st = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(st)
                return self.status
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"child {self.pid} did not finish within {timeout} s")
            time.sleep(0.005)

    def kill(self) -> int:
        """SIGKILL it (if it still runs) and reap it: its exit code (-9 if the kill ended it)."""
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, st = os.waitpid(self.pid, 0)
            self.status = os.waitstatus_to_exitcode(st)
        return self.status

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def in_child(fn: Callable[[], object]) -> None:
    """Run fn in a separate process; fail with its traceback if it fails."""
    assert Child(fn).join(60) == 0, "the client process failed (traceback above)"


def wait_for(cond: Callable[[], object], timeout: float = 30.0) -> None:
    """Poll cond() until it is true; fail after `timeout` seconds (a bound, not a measurement)."""
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


_PATTERN = bytes(range(256)) * 260


def checksum_payload(seq: int, size: int) -> bytes:
    """A record of 12 <= `size` <= 64 KiB: 8-byte sequence number, filler that depends on
    the sequence number, 4-byte crc32 of the rest."""
    import zlib

    start = seq & 0xFF
    body = seq.to_bytes(8, "little") + _PATTERN[start : start + size - 12]
    return body + zlib.crc32(body).to_bytes(4, "little")


def check_payload(data: bytes) -> int:
    """The sequence number of a record made by checksum_payload; AssertionError if damaged."""
    import zlib

    assert len(data) >= 12, f"record of {len(data)} bytes is too short"
    body, crc = data[:-4], int.from_bytes(data[-4:], "little")
    assert zlib.crc32(body) == crc, "checksum mismatch"
    return int.from_bytes(body[:8], "little")


def raw_hello(sock, proto=None, hello=None):
    """A HELLO on a raw socket, and the handshake through to WELCOME: over TCP, the server's CHALLENGE
    answered with the run's key ($BROKER_KEYS, conftest.py). The protocol's client end, open."""
    from shmbroker.transport import keys as _keys
    from shmbroker.protocol.frames import Challenge, ClientConnection, Hello, State

    proto = proto or ClientConnection()
    sock.sendall(proto.hello(hello or Hello((1, 0, 0), 4, False, True)))
    while proto.state in (State.HANDSHAKE, State.AUTH):
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"the server closed the connection during the handshake ({proto.state})")
        for ev in proto.receive(data):
            if isinstance(ev, Challenge):
                key = _keys.client_key(None)
                assert key is not None, "no key: the root conftest.py sets $BROKER_KEYS"
                nonce = os.urandom(_keys.NONCE_BYTES)
                sock.sendall(proto.auth(nonce, _keys.client_proof(key, proto.hello_body, ev.nonce, nonce), key.name))
    return proto
