"""Set before anything imports broker: this test run's own shared-memory prefix, and its own TCP key.

Every segment the run makes (its processes inherit the environment) is named
brk-tPID.*, so the leak check (tests/conftest.py) and the sweeps see only this
run's, and two runs on one machine never count, sweep or unlink each other's.

TCP is authenticated (src/shmbroker/_keys.py): the run's servers and clients find the
key "test" through $BROKER_KEYS, a 0600 file of the run's own, removed at its
end; the user's ~/.config/broker/keys is never read or made.
"""
import atexit
import os
import secrets
import shutil
import tempfile

os.environ["BROKER_SHM_PREFIX"] = f"brk-t{os.getpid()}"

_KEYS_DIR = tempfile.mkdtemp(prefix=f"brk-t{os.getpid()}-keys-")
_KEYS = os.path.join(_KEYS_DIR, "keys")
_fd = os.open(_KEYS, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
os.write(_fd, f"test {secrets.token_hex(32)}\n".encode())
os.close(_fd)
os.environ["BROKER_KEYS"] = _KEYS
atexit.register(shutil.rmtree, _KEYS_DIR, True)
