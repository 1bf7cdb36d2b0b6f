"""TCP authentication: named secrets kept in 0600 files, proven by challenge-response.

A key is a name and a 32-byte secret. A keys file holds one per line,
`NAME HEX-SECRET` (`#` starts a comment); it must belong to its reader and be
readable by nobody else (0600), as ssh insists for its own keys. The server
loads every key of its file; a client uses the first key of its own.
`broker keygen` makes them.

The handshake over TCP (the frames are in frames.py):

    client                                       server
    HELLO                          ->
                                   <-            CHALLENGE  server nonce (32 random bytes)
    AUTH  client nonce, proof, key name  ->      checks the proof with the key of that name
                                   <-            AUTH_OK    the server's proof
    (checks it: the server holds the key too)    WELCOME, or REFUSE (PERMISSION_DENIED)

    client proof = HMAC-SHA256(secret, "broker client proof" | HELLO body | server nonce | client nonce | name)
    server proof = HMAC-SHA256(secret, "broker server proof" | HELLO body | server nonce | client nonce | name)

Both nonces are fresh per connection, so a recorded exchange proves nothing
later; the two labels keep one side's proof from serving as the other's; the
HELLO body is covered, so a man in the middle cannot change what the client
asked for without the proofs failing. The secret never travels. What this does
not do: encrypt, or sign the frames after the handshake (docs/ROBUSTNESS.md
says what that leaves open, and what to do about it).
"""
from __future__ import annotations

import hmac
import os
import re
import secrets
import stat
from dataclasses import dataclass
from typing import Mapping

from shmbroker._errors import BrokerError

SECRET_BYTES = 32
NONCE_BYTES = 32
PROOF_BYTES = 32
MAX_KEY_NAME = 64
KEYS_ENV = "BROKER_KEYS"
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_CLIENT, _SERVER = b"broker client proof", b"broker server proof"


class KeyFileError(BrokerError, PermissionError):
    """A keys file that cannot be used: missing, readable by others, not its reader's, or malformed."""


@dataclass(frozen=True)
class Key:
    """A named secret: the name identifies the TCP peer in grants and events (`key:NAME`)."""

    name: str
    secret: bytes = b""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"key name {self.name!r}: use 1 to 64 letters, digits, '_', '.', '@' or '-'")
        if len(self.secret) < 16:
            raise ValueError(f"the secret of key {self.name!r} has {len(self.secret)} bytes: at least 16")

    def __repr__(self) -> str:  # never print a secret
        return f"Key({self.name!r})"

    def line(self) -> str:
        return f"{self.name} {self.secret.hex()}"


def default_path() -> str:
    """$BROKER_KEYS, else $XDG_CONFIG_HOME/broker/keys, else ~/.config/broker/keys."""
    env = os.environ.get(KEYS_ENV)
    if env:
        return env
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "broker", "keys")


def _check_private(fd: int, path: str) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path} is not a regular file")
    if st.st_uid != os.geteuid():
        raise KeyFileError(f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyFileError(f"{path} is readable or writable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                           f"chmod 600 {path}")


def parse_keys(text: str, path: str = "<keys>") -> dict[str, Key]:
    """The keys of a keys file's text, by name. KeyFileError on any bad line (its number says which)."""
    keys: dict[str, Key] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"{path}, line {number}"
        if len(parts) != 2:
            raise KeyFileError(f"{where}: expected NAME HEX-SECRET")
        name, hexed = parts
        try:
            key = Key(name, bytes.fromhex(hexed))
        except ValueError as e:
            raise KeyFileError(f"{where}: {e}") from None
        if name in keys:
            raise KeyFileError(f"{where}: a second key named {name!r}")
        keys[name] = key
    return keys


def load_keys(path: str | None = None) -> dict[str, Key]:
    """Every key of a keys file (default_path() when None), which must be this user's and 0600."""
    path = path or default_path()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyFileError(f"no keys file at {path}: make one with `broker keygen` (or --keys FILE)") from None
    except OSError as e:
        raise KeyFileError(f"cannot open the keys file {path}: {e.strerror}") from None
    try:
        _check_private(fd, path)
        with os.fdopen(os.dup(fd), "r", encoding="utf-8") as f:
            text = f.read(1 << 20)
    finally:
        os.close(fd)
    keys = parse_keys(text, path)
    if not keys:
        raise KeyFileError(f"{path} holds no key: add one with `broker keygen --file {path}`")
    return keys


def client_key(key: "str | Key | bool | None") -> Key | None:
    """The key a client proves itself with: a Key, the first key of a file (a path), None (the
    default file's first key, if that file exists) or False (none)."""
    if key is False:
        return None
    if isinstance(key, Key):
        return key
    if key is None or key is True:
        path = default_path()
        if not os.path.exists(path):
            return None
        return next(iter(load_keys(path).values()))
    if isinstance(key, str):
        return next(iter(load_keys(key).values()))
    raise TypeError(f"key must be a Key, a keys file's path, None or False, not {type(key).__name__}")


def server_keys(keys: "str | Mapping[str, Key] | list[Key] | tuple[Key, ...] | None") -> dict[str, Key]:
    """The keys a server accepts: a file (default_path() when None), or Keys."""
    if keys is None or isinstance(keys, str):
        return load_keys(keys)
    out = dict(keys) if isinstance(keys, Mapping) else {k.name: k for k in keys}
    if not out or not all(isinstance(k, Key) for k in out.values()):
        raise ValueError("keys must be a keys file's path or one or more broker.Key")
    return out


def new_key(path: str | None = None, name: str | None = None) -> Key:
    """A fresh key, added to a keys file (made 0600 if it is not there; its directory 0700)."""
    path = path or default_path()
    name = name or _default_name()
    key = Key(name, secrets.token_bytes(SECRET_BYTES))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        _check_private(fd, path)
        with os.fdopen(os.dup(fd), "r+", encoding="utf-8") as f:
            text = f.read()
            if name in parse_keys(text, path):
                raise KeyFileError(f"{path} already has a key named {name!r}")
            f.write(("" if not text or text.endswith("\n") else "\n") + key.line() + "\n")
    finally:
        os.close(fd)
    return key


def _default_name() -> str:
    import pwd
    import socket

    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = f"uid{os.geteuid()}"
    name = f"{user}@{socket.gethostname()}"[:MAX_KEY_NAME]
    return name if _NAME.match(name) else f"uid{os.geteuid()}"


# ---- the proofs (pure) -------------------------------------------------------------------


def _transcript(label: bytes, hello: bytes, server_nonce: bytes, client_nonce: bytes, name: str) -> bytes:
    return b"|".join((label, hello, server_nonce, client_nonce, name.encode()))


def client_proof(key: Key, hello: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.digest(key.secret, _transcript(_CLIENT, hello, server_nonce, client_nonce, key.name), "sha256")


def server_proof(key: Key, hello: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.digest(key.secret, _transcript(_SERVER, hello, server_nonce, client_nonce, key.name), "sha256")


def check(expected: bytes, given: bytes) -> bool:
    """Constant-time comparison of two proofs."""
    return hmac.compare_digest(expected, given)
