"""Sub-session handles: index + generation; stale and forged handles are detected, never aliased."""
from __future__ import annotations

import pytest

import shmbroker as broker
from shmbroker._errors import BadHandle
from shmbroker.protocol.handles import ObjectIndex


def test_add_get_remove():
    ix = ObjectIndex()
    a, b = ix.add("a"), ix.add("b")
    assert a != b and ix.get(a) == "a" and ix.get(b) == "b" and len(ix) == 2
    assert ix.remove(a) == "a" and len(ix) == 1
    with pytest.raises(BadHandle):
        ix.get(a)
    assert isinstance(BadHandle("x"), LookupError) and isinstance(BadHandle("x"), broker.BrokerError)


def test_a_stale_handle_never_names_the_slots_next_object():
    ix = ObjectIndex(limit=1)
    first = ix.add("old")
    ix.remove(first)
    second = ix.add("new")  # same slot, next generation
    assert second != first and (second & 0xFFFF) == (first & 0xFFFF)
    with pytest.raises(BadHandle):
        ix.get(first)
    assert ix.get(second) == "new"


def test_many_reuses_of_one_slot_stay_distinct():
    ix = ObjectIndex(limit=1)
    seen = set()
    for i in range(5000):
        hd = ix.add(i)
        assert hd not in seen
        seen.add(hd)
        ix.remove(hd)


def test_free_slots_are_reused_oldest_first():
    ix = ObjectIndex()
    hs = [ix.add(i) for i in range(3)]
    ix.remove(hs[0])
    ix.remove(hs[1])
    assert ix.add("x") & 0xFFFF == hs[0] & 0xFFFF


@pytest.mark.parametrize("bad", [0, -1, 1 << 32, 0x00010005, 0xFFFF0001, "1", None, 1.5])
def test_forged_handles(bad):
    ix = ObjectIndex()
    ix.add("only")
    with pytest.raises(BadHandle):
        ix.get(bad)


def test_limit_and_clear():
    ix = ObjectIndex(limit=2)
    ix.add(1)
    h2 = ix.add(2)
    with pytest.raises(OverflowError):
        ix.add(3)
    assert sorted(ix.clear()) == [1, 2] and len(ix) == 0
    with pytest.raises(BadHandle):
        ix.get(h2)
    ix.add(4)
    assert [o for _, o in ix] == [4]


def test_a_full_object_index_takes_no_reference():
    """open_subsession stores the object before it counts a reference: when the
    session's index is full, the object's count is untouched and it still dies
    with its last real reference."""
    peer = broker.Peer(1, "unix", 1, 0, 0)
    session = broker.Session(None, peer)
    session.objects = ObjectIndex(limit=1)
    died = []

    class Obj(broker.RefObject):
        def destroyed(self) -> None:
            died.append(self)

    kept, extra = Obj(), Obj()
    h = session.open_subsession(kept)
    with pytest.raises(OverflowError):
        session.open_subsession(extra)
    assert extra.refs == 0 and kept.refs == 1
    extra.open()
    extra.close()  # its only reference: it dies
    session.close_subsession(h)
    assert died == [extra, kept]
