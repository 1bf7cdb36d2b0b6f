"""TCP is authenticated: keys files, the challenge-response both ways, and what a client without a key gets.

Real sockets, real servers; a raw socket plays the hostile client, a raw
listener the impostor server (docs/ROBUSTNESS.md, "TCP without credentials").
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import threading

import pytest

import shmbroker as broker
from shmbroker.transport import keys as _keys
from shmbroker.protocol.frames import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    PROTOCOL_VERSION,
    Auth,
    AuthOk,
    Challenge,
    FrameReader,
    FrameType,
    Hello,
    Refuse,
    Request,
    Welcome,
    encode,
)
from shmbroker.services.kv import ECHO, EchoClient, ServicesSession

from tests.helpers import wait_for


def _key_file(tmp_path, *names: str, file: str = "keys") -> tuple[str, list[broker.Key]]:
    path = str(tmp_path / file)
    return path, [broker.new_key(path, n) for n in names]


@pytest.fixture
def keyed(tmp_path):
    """A server whose TCP clients must prove the key "alice" or "bob" of its keys file."""
    path, keys = _key_file(tmp_path, "alice", "bob")
    events: list[broker.SessionEvent] = []
    srv = broker.Server(str(tmp_path / "k.sock"), ServicesSession, tcp="tcp://127.0.0.1:0", keys=path,
                        on_event=events.append, handshake_timeout=2.0)
    srv.start()
    srv.tcp_address = f"tcp://127.0.0.1:{srv.bound[1][1]}"
    srv.keys_path, srv.key_list, srv.recorded = path, keys, events
    yield srv
    srv.stop()


def _only(tmp_path, key: broker.Key, name: str = "one") -> str:
    """A client's keys file holding one key."""
    path = str(tmp_path / name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (key.line() + "\n").encode())
    os.close(fd)
    return path


class Raw:
    """A hand-driven TCP client: frames in and out, nothing checked on our side."""

    def __init__(self, address: str) -> None:
        host, port = address[6:].rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.reader = FrameReader()
        self.events: list = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next(self) -> object | None:
        """The next event, or None when the server closed the connection."""
        while not self.events:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.events += self.reader.feed(data)
        return self.events.pop(0)

    def close(self) -> None:
        self.sock.close()


def _hello(slots: int = 4) -> Hello:
    return Hello((1, 0, 0), slots, False, False, 0)


# ---- keys files ------------------------------------------------------------------------


def test_new_key_makes_a_private_file_and_appends(tmp_path):
    path = str(tmp_path / "cfg" / "broker" / "keys")
    a = broker.new_key(path, "alice")
    b = broker.new_key(path, "bob")
    assert os.stat(path).st_mode & 0o777 == 0o600 and os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    keys = broker.load_keys(path)
    assert list(keys) == ["alice", "bob"] and keys["alice"] == a and keys["bob"] == b
    assert len(a.secret) == 32 and a.secret != b.secret
    assert a.secret.hex() not in repr(a)  # a key never prints its secret
    with pytest.raises(broker.KeyFileError, match="already has a key named 'alice'"):
        broker.new_key(path, "alice")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_keys_file_others_can_read_is_refused(tmp_path, mode):
    path, _ = _key_file(tmp_path, "alice")
    os.chmod(path, mode)
    with pytest.raises(broker.KeyFileError, match=f"chmod 600 {path}"):
        broker.load_keys(path)
    with pytest.raises(broker.KeyFileError):
        broker.Server(str(tmp_path / "s.sock"), tcp="tcp://127.0.0.1:0", keys=path)


def test_a_keys_file_of_another_user_or_through_a_symlink_is_refused(tmp_path, other_user):
    path, _ = _key_file(tmp_path, "alice")
    link = str(tmp_path / "link")
    os.symlink(path, link)
    with pytest.raises(broker.KeyFileError, match="cannot open"):
        broker.load_keys(link)
    os.chown(path, *other_user)
    with pytest.raises(broker.KeyFileError, match=f"belongs to uid {other_user[0]}"):
        broker.load_keys(path)


@pytest.mark.parametrize("text, error", [
    ("alice\n", "line 1: expected NAME HEX-SECRET"),
    ("# a comment\n\nalice zz\n", "line 3: .*hexadecimal|line 3: non-hexadecimal"),
    ("alice " + "ab" * 16 + "\n", None),
    ("alice " + "ab" * 15 + "\n", "line 1: .*has 15 bytes: at least 16"),
    ("al ice " + "ab" * 16 + "\n", "line 1: expected"),
    ("a/b " + "ab" * 16 + "\n", "line 1: key name"),
    (f"alice {'ab' * 16}\nalice {'cd' * 16}\n", "line 2: a second key named 'alice'"),
    ("", "holds no key"),
])
def test_keys_file_lines_are_checked_with_their_numbers(tmp_path, text, error):
    path = str(tmp_path / "keys")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, text.encode())
    os.close(fd)
    if error is None:
        assert list(broker.load_keys(path)) == ["alice"]
    else:
        with pytest.raises(broker.KeyFileError, match=error):
            broker.load_keys(path)


def test_a_tcp_server_without_keys_refuses_to_start_and_says_how(tmp_path, monkeypatch):
    monkeypatch.setenv("BROKER_KEYS", str(tmp_path / "none"))
    with pytest.raises(broker.KeyFileError) as e:
        broker.Server(str(tmp_path / "s.sock"), tcp="tcp://127.0.0.1:0")
    assert "broker keygen" in str(e.value) and "insecure_tcp=True" in str(e.value)
    broker.Server(str(tmp_path / "s.sock"))  # no TCP: no keys needed


# ---- the handshake -------------------------------------------------------------------------


def test_a_client_with_a_key_is_welcomed_and_named_by_it(keyed, tmp_path):
    bob = _only(tmp_path, keyed.key_list[1])
    with broker.connect(keyed.tcp_address, key=bob) as s:
        assert EchoClient(s).echo(b"hi") == b"hi"
        [row] = keyed.sessions()
        assert row["identity"] == "key:bob" and row["peer"].identity == "key:bob"
        assert "key:bob" in str(row["peer"])
    wait_for(lambda: any(e.kind == "connected" and e.peer.identity == "key:bob" for e in keyed.recorded))
    assert keyed.stats()["tcp"] == "keys" and keyed.stats()["keys"] == ["alice", "bob"]


def test_a_client_without_a_key_is_told_what_to_do(keyed):
    with pytest.raises(broker.PermissionDenied, match=r"asks for a key.*BROKER_KEYS.*broker keygen"):
        broker.connect(keyed.tcp_address, key=False)
    assert not keyed.sessions()


@pytest.mark.parametrize("case", ["wrong secret", "unknown name"])
def test_a_wrong_key_is_refused_and_counted_and_the_server_goes_on(keyed, tmp_path, case):
    good = keyed.key_list[0]
    bad = broker.Key(good.name if case == "wrong secret" else "mallory", secrets.token_bytes(32))
    with pytest.raises(broker.PermissionDenied, match="authentication failed"):
        broker.connect(keyed.tcp_address, key=bad)
    stats = keyed.stats()["bounds"]
    assert stats["auth_failures"] == 1 and stats["handshaking_now"] == 0
    refused = [e for e in keyed.recorded if e.kind == "refused"]
    assert refused and f"authentication failed for key {bad.name!r}" in refused[-1].reason
    assert ("a wrong proof" if case == "wrong secret" else "no such key") in refused[-1].reason
    with broker.connect(keyed.tcp_address, key=good) as s:  # the next one is welcome
        assert EchoClient(s).length(b"abc") == 3


def test_nothing_before_the_challenge_is_answered_and_a_request_ends_the_connection(keyed):
    raw = Raw(keyed.tcp_address)
    try:
        raw.send(encode(_hello()))
        ch = raw.next()
        assert isinstance(ch, Challenge) and len(ch.nonce) == 32
        raw.send(encode(Request(1, ECHO)))  # a request instead of AUTH: a protocol error, nothing served
        assert raw.next() is None
    finally:
        raw.close()
    wait_for(lambda: any(e.kind == "disconnected" and "where the answer to CHALLENGE was due" in e.reason
                         for e in keyed.recorded))
    assert not keyed.sessions()


@pytest.mark.stress  # a 2 s deadline
def test_a_client_that_never_answers_the_challenge_is_cut_at_the_handshake_deadline(keyed):
    raw = Raw(keyed.tcp_address)
    try:
        raw.send(encode(_hello()))
        assert isinstance(raw.next(), Challenge)
        wait_for(lambda: keyed.stats()["bounds"]["handshaking_now"] == 1)  # counted while it owes the AUTH
        assert raw.next() is None  # closed at handshake_timeout (2 s)
    finally:
        raw.close()
    assert keyed.stats()["bounds"]["handshake_timeouts"] == 1


def test_a_replayed_auth_proves_nothing(keyed):
    """A recorded exchange: the AUTH that was good for one challenge is refused for the next."""
    alice = keyed.key_list[0]
    first = Raw(keyed.tcp_address)
    hello = encode(_hello())
    first.send(hello)
    ch = first.next()
    nonce = secrets.token_bytes(32)
    auth = encode(Auth(nonce, _keys.client_proof(alice, hello[HEADER_SIZE:], ch.nonce, nonce), "alice"))
    first.send(auth)
    assert isinstance(first.next(), AuthOk) and isinstance(first.next(), Welcome)
    first.close()
    second = Raw(keyed.tcp_address)
    try:
        second.send(hello)
        assert isinstance(second.next(), Challenge)
        second.send(auth)
        answer = second.next()
        assert isinstance(answer, Refuse) and answer.status == broker.Status.PERMISSION_DENIED
    finally:
        second.close()


def test_the_proof_covers_the_hello(keyed):
    """A man in the middle that changes the HELLO (more slots, say) breaks the proof."""
    alice = keyed.key_list[0]
    raw = Raw(keyed.tcp_address)
    try:
        raw.send(encode(_hello(slots=255)))
        ch = raw.next()
        nonce = secrets.token_bytes(32)
        what_the_client_signed = encode(_hello(slots=4))[HEADER_SIZE:]
        raw.send(encode(Auth(nonce, _keys.client_proof(alice, what_the_client_signed, ch.nonce, nonce), "alice")))
        answer = raw.next()
        assert isinstance(answer, Refuse) and "authentication failed" in answer.reason
    finally:
        raw.close()


def test_garbage_in_place_of_an_auth_ends_only_that_connection(keyed, tmp_path):
    for body in (b"", b"x" * 64, b"x" * 64 + b"n" * 65, b"x" * 64 + b"\xff\xfe"):
        raw = Raw(keyed.tcp_address)
        try:
            raw.send(encode(_hello()))
            assert isinstance(raw.next(), Challenge)
            raw.send(HEADER.pack(MAGIC, PROTOCOL_VERSION, FrameType.AUTH, 0, len(body), 0, 0) + body)
            assert raw.next() is None
        finally:
            raw.close()
    with broker.connect(keyed.tcp_address, key=keyed.keys_path) as s:
        assert EchoClient(s).echo(b"still here") == b"still here"


# ---- the server proves itself too ---------------------------------------------------------------


class Impostor:
    """A TCP listener that plays a server: `answer(conn, hello_frame)` does the talking."""

    def __init__(self, answer) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._run, args=(answer,))
        self.thread.start()

    def _run(self, answer) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(5)
            reader, events = FrameReader(), []
            while not events:
                events += reader.feed(conn.recv(4096))
            answer(conn)
            try:
                while conn.recv(4096):
                    pass
            except OSError:
                pass

    def close(self) -> None:
        self.thread.join(10)
        self.sock.close()


@pytest.mark.parametrize("kind", ["welcomes at once", "a made-up proof"])
def test_a_client_with_a_key_refuses_a_server_that_cannot_prove_it(tmp_path, kind):
    path, [alice] = _key_file(tmp_path, "alice")
    welcome = encode(Welcome(1, 4))

    def answer(conn: socket.socket) -> None:
        if kind == "welcomes at once":
            conn.sendall(welcome)
            return
        conn.sendall(encode(Challenge(secrets.token_bytes(32))))
        reader, events = FrameReader(), []
        while not events:
            events += reader.feed(conn.recv(4096))
        assert isinstance(events[0], Auth) and events[0].name == "alice"
        conn.sendall(encode(AuthOk(secrets.token_bytes(32))) + welcome)

    fake = Impostor(answer)
    try:
        match = "did not ask for key 'alice'" if kind == "welcomes at once" else "could not prove it holds key 'alice'"
        with pytest.raises(broker.PermissionDenied, match=match):
            broker.connect(fake.address, key=path)
    finally:
        fake.close()


# ---- plain TCP, on purpose -------------------------------------------------------------------------


def test_insecure_tcp_needs_no_key_warns_and_names_nobody(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="shmbroker.server")
    with broker.Server(str(tmp_path / "p.sock"), ServicesSession, tcp="tcp://127.0.0.1:0", insecure_tcp=True) as srv:
        address = f"tcp://127.0.0.1:{srv.bound[1][1]}"
        assert any("plain TCP" in r.getMessage() and "insecure_tcp" in r.getMessage() for r in caplog.records)
        with broker.connect(address, key=False) as s:
            assert EchoClient(s).echo(b"x") == b"x"
            [row] = srv.sessions()
            assert row["identity"] is None and srv.stats()["tcp"] == "insecure"
            with pytest.raises(broker.PermissionDenied, match="a plain TCP peer may not"):
                broker.KeyValueClient(s).open("t")
        # a client that holds a key (the run's, through $BROKER_KEYS) wants the server to prove it
        with pytest.raises(broker.PermissionDenied, match="connect\\(key=False\\)"):
            broker.connect(address)


def test_a_tcp_identity_takes_the_place_of_the_uid_in_policies(keyed, tmp_path):
    """Policy(identities=...) on a custom function code: alice may call it, bob may not."""
    class Svc(broker.Session):
        def service(self, m: broker.Message) -> None:
            m.complete(7)

    path, keys = _key_file(tmp_path, "alice", "bob", file="policy-keys")
    policies = (broker.Policy(range(100, 101), identities=frozenset({"key:alice"})),)
    with broker.Server(str(tmp_path / "pol.sock"), Svc, tcp="tcp://127.0.0.1:0", keys=path, policies=policies) as srv:
        address = f"tcp://127.0.0.1:{srv.bound[1][1]}"
        with broker.connect(address, key=_only(tmp_path, keys[0], "a")) as s:
            assert s.send_receive(100) == 7
        with broker.connect(address, key=_only(tmp_path, keys[1], "b")) as s:
            with pytest.raises(broker.PermissionDenied, match="function 100 is not allowed"):
                s.send_receive(100)
            assert s.send_receive(101) == 7  # no policy there



def test_a_server_in_an_asyncio_loop_asks_for_the_key_too(tmp_path):
    import asyncio

    path, [alice] = _key_file(tmp_path, "alice")

    async def main() -> None:
        srv = broker.Server(str(tmp_path / "aio.sock"), ServicesSession, tcp="tcp://127.0.0.1:0", keys=path)
        task = asyncio.create_task(srv.serve_async())
        while len(srv.bound) < 2:
            await asyncio.sleep(0.01)
        address = f"tcp://127.0.0.1:{srv.bound[1][1]}"
        loop = asyncio.get_running_loop()

        def clients() -> list[str]:
            out = []
            with broker.connect(address, key=path) as s:
                out.append(EchoClient(s).echo(b"async"))
            for key in (False, broker.Key("alice", secrets.token_bytes(32))):
                try:
                    broker.connect(address, key=key)
                except broker.PermissionDenied as e:
                    out.append(str(e))
            return out

        try:
            echoed, no_key, wrong = await loop.run_in_executor(None, clients)
        finally:
            srv.stop()
            await asyncio.wait_for(task, 10)
        assert echoed == b"async" and "asks for a key" in no_key and "authentication failed" in wrong

    asyncio.run(main())
