"""The user's runtime directory for bare server names (src/shmbroker/transport/address.py): where it is, and
that it is refused unless it is a private directory of this user."""
from __future__ import annotations

import os
import stat

import pytest

from shmbroker.transport.address import parse, runtime_dir


def test_a_bare_name_lives_in_xdg_runtime_dir_broker_made_0700(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = runtime_dir()
    assert path == str(tmp_path / "broker")
    st = os.lstat(path)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    assert runtime_dir() == path  # there already: taken as it is
    assert parse("jobs").target == os.path.join(path, "jobs.sock")


def test_without_a_runtime_dir_a_private_one_under_tmp(tmp_path, monkeypatch):
    for base in (None, str(tmp_path / "missing")):  # unset, or naming nothing
        if base is None:
            monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        else:
            monkeypatch.setenv("XDG_RUNTIME_DIR", base)
        path = runtime_dir()
        assert path == f"/tmp/broker-{os.geteuid()}"
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o700


@pytest.mark.parametrize("kind", ["open to others", "a file", "a symlink to a private directory"])
def test_anything_but_a_private_directory_of_ours_is_refused(tmp_path, monkeypatch, kind):
    base = tmp_path / "run"
    base.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    target = base / "broker"
    if kind == "open to others":
        target.mkdir()
        target.chmod(0o755)
    elif kind == "a file":
        target.write_bytes(b"")
    else:
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        target.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PermissionError, match="not a private directory of this user"):
        runtime_dir()
