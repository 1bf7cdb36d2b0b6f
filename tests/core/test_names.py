"""Every shared-memory name comes from shmbroker.core.names."""
from __future__ import annotations

import os
import re

import pytest

from shmbroker.core import names as _names
from shmbroker.core import proc as _proc

P = re.escape(_names.PREFIX)


def test_generated_names_carry_prefix_server_session_purpose_and_randomness():
    a = _names.segment_name("ring", server_id="srv1", session_key="k42")
    b = _names.segment_name("ring", server_id="srv1", session_key="k42")
    assert re.fullmatch(rf"/{P}\.srv1\.k42\.ring\.[0-9a-f]{{16}}", a)
    assert a != b
    assert _names.segment_name("x").startswith(f"/{_names.PREFIX}.p{os.getpid()}.local.x.")


@pytest.mark.parametrize("bad", ["", "a/b", "a.b", "x" * 49, "ü", "a b"])
def test_bad_parts_are_refused(bad):
    with pytest.raises(ValueError):
        _names.segment_name(bad)
    with pytest.raises(ValueError):
        _names.user_name(bad)


def test_user_names_are_per_user_and_resolve():
    assert _names.user_name("orders") == f"/{_names.PREFIX}.u{os.geteuid()}.{_names.session_key(_proc.login_session())}.orders"
    assert _names.resolve("orders") == _names.user_name("orders")
    full = _names.segment_name("ring")
    assert _names.resolve(full) == full
    with pytest.raises(ValueError):
        _names.resolve(f"/{_names.PREFIX}.a/b")
    assert _names.is_ours(f"{_names.PREFIX}.p1.local.ring.00") and not _names.is_ours("sem.mp-x")
    assert not _names.is_ours(f"{_names.PREFIX}x.p1.local.ring.00")  # another prefix is another world
