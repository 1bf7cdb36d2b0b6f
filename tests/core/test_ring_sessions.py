"""A named ring lives in its creator's login session (issue 16, item 1): another login session of the
same user cannot open it, by its short name or its full one, and is told where it lives; a process
of the creator's session can. Real audit sessions: a child writes /proc/self/loginuid."""
from __future__ import annotations

import os

import pytest

import shmbroker as broker
from shmbroker import Ring
from shmbroker.core import names as _names
from shmbroker.core import proc as _proc
from shmbroker.core.ring import _make_segment
from shmbroker._brk import lib

from tests.helpers import Child
from tests.transport.test_identity import new_login_session, require_audit_sessions


def _text(sid: int | None) -> str:
    key = _names.session_key(sid)
    return "unset" if key == "sx" else key[1:]


def _in_a_new_session(make, ask):
    """A child in a new login session runs make() (which writes what it made to the pipe), waits for
    the parent, then ends; ask(what it made, its session) runs in the parent meanwhile."""
    r, w = os.pipe()
    r2, w2 = os.pipe()

    def child() -> None:
        before, after, problem = new_login_session()
        if after == before:
            os.write(w, b"skip " + (problem or "unchanged").encode())
            return
        made = make()
        os.write(w, f"{after} {made}".encode())
        os.read(r2, 1)
        if hasattr(made, "close"):
            made.close()

    try:
        with Child(child) as kid:
            said = os.read(r, 4096).decode()
            if said.startswith("skip"):
                kid.join(30)
                pytest.skip(f"writing /proc/self/loginuid did not start a new audit session ({said[5:]})")
            sid, what = said.split(" ", 1)
            try:
                ask(what, int(sid))
            finally:
                os.write(w2, b"1")
            assert kid.join(30) == 0
    finally:
        for fd in (r, w, r2, w2):
            os.close(fd)


class _Made:
    def __init__(self, ring: Ring) -> None:
        self.ring = ring

    def __str__(self) -> str:
        return self.ring.name

    def close(self) -> None:
        self.ring.close()


def test_a_ring_of_another_login_session_is_refused_by_name_and_by_full_name():
    require_audit_sessions()
    mine = _proc.login_session()

    def ask(full: str, theirs: int) -> None:
        assert full == _names.user_name("auditring", theirs) != _names.user_name("auditring")
        with pytest.raises(broker.OtherSession) as e:
            Ring.open("auditring")
        assert str(e.value).startswith(f"[Errno 13] ring 'auditring' lives in login session {theirs}, and this "
                                       f"process is in login session {_text(mine)}")
        assert isinstance(e.value, PermissionError) and isinstance(e.value, broker.SegmentError)
        with pytest.raises(broker.OtherSession, match=f"lives in login session {theirs}"):
            Ring.open(full)
        with pytest.raises(broker.OtherSession):
            broker.Broadcast.open("auditring")
        with open("/proc/self/maps") as f:
            assert "auditring" not in f.read()  # never mapped here
        with Ring.create("auditring", capacity=1 << 12) as here:  # the same name here is another ring
            with Ring.open("auditring") as rx:
                here.send(b"mine")
                assert rx.recv(5) == b"mine"

    _in_a_new_session(lambda: _Made(Ring.create("auditring", capacity=1 << 12)), ask)


def test_a_process_of_the_same_login_session_opens_it():
    require_audit_sessions()
    r, w = os.pipe()

    def creator_session() -> None:
        before, after, _ = new_login_session()
        if after == before:
            os.write(w, b"skip")
            return
        with Ring.create("shared-here", capacity=1 << 12) as tx:
            def reader() -> None:  # a child: the same login session, inherited
                with Ring.open("shared-here") as rx:
                    os.write(w, rx.recv(10))

            with Child(reader) as kid:
                tx.send(b"same session")
                assert kid.join(30) == 0

    with Child(creator_session) as kid:
        got = os.read(r, 64)
        assert kid.join(30) == 0
    os.close(r)
    os.close(w)
    if got == b"skip":
        pytest.skip("writing /proc/self/loginuid did not start a new audit session")
    assert got == b"same session"


def test_a_ring_named_for_another_session_is_refused_while_its_creator_lives():
    """A made-up name does not make a ring another session's: while its creator lives, the kernel's
    word on the creator's session decides."""
    require_audit_sessions()
    mine = _proc.login_session()

    def forge() -> _Made:
        seg = _names.user_name("forged", mine)  # named as if it lived in the parent's session
        mapping = _make_segment([(lib.BRK_KIND_SPSC, 0, 1 << 12, 0)], seg)
        return _Made(Ring(mapping, 0, lib.BRK_ROLE_PRODUCER, 50.0))

    def ask(full: str, theirs: int) -> None:
        assert full == _names.user_name("forged")
        with pytest.raises(broker.OtherSession, match=f"lives in login session {theirs} \\(its creator, pid"):
            Ring.open("forged")

    _in_a_new_session(forge, ask)


def test_global_ring_names_are_refused_and_local_ones_are_the_plain_ones():
    with pytest.raises(ValueError, match="never leaves its creator's login session"):
        Ring.create("Global\\prices")
    with Ring.create("Local\\prices", capacity=1 << 12) as tx, Ring.open("prices") as rx:
        assert tx.name == _names.user_name("prices")
        tx.send(b"x")
        assert rx.recv(5) == b"x"
