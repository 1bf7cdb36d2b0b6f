"""A session's sub-session handles (sans-IO): an index and a generation, so a stale or forged handle is detected, never aliased."""
from __future__ import annotations

from collections import deque
from typing import Any, Iterator

from shmbroker._errors import BadHandle, IndexFull

INDEX_BITS = 16
MAX_INDEX = (1 << INDEX_BITS) - 1  # indexes are 1..MAX_INDEX; 0 means "no handle"
MAX_GENERATION = (1 << 16) - 1  # generations are 1..MAX_GENERATION


class ObjectIndex:
    """Handles for the objects one session has open (Symbian's CObjectIx).

    A handle is (generation << 16) | index: the index finds the slot, the
    generation must match the slot's current one. A slot's generation moves on
    every time it is reused, and free slots are reused oldest first, so a
    closed handle comes back only after its slot has been reused 65,535 times.
    A live object's handle is unique.
    """

    def __init__(self, limit: int = 4096) -> None:
        if not 1 <= limit <= MAX_INDEX:
            raise ValueError(f"limit must be from 1 to {MAX_INDEX}")
        self.limit = limit
        self._objects: list[Any] = []
        self._generations: list[int] = []
        self._free: deque[int] = deque()
        self._live = 0

    def add(self, obj: Any) -> int:
        """Store obj and return its new handle; IndexFull (a ServerBusy, an OverflowError) when the session already has `limit`
        objects open."""
        if obj is None:
            raise ValueError("None cannot be stored")
        if self._free:
            i = self._free.popleft()
        elif len(self._objects) < self.limit:
            i = len(self._objects)
            self._objects.append(None)
            self._generations.append(0)
        else:
            raise IndexFull(f"a session can have at most {self.limit} sub-sessions open")
        gen = self._generations[i] % MAX_GENERATION + 1
        self._generations[i] = gen
        self._objects[i] = obj
        self._live += 1
        return (gen << INDEX_BITS) | (i + 1)

    def _slot(self, handle: int) -> int:
        if not isinstance(handle, int) or not 0 < handle <= 0xFFFFFFFF:
            raise BadHandle(f"bad handle {handle!r}")
        i = (handle & MAX_INDEX) - 1
        gen = handle >> INDEX_BITS
        if i < 0 or i >= len(self._objects) or self._objects[i] is None or self._generations[i] != gen:
            raise BadHandle(f"handle {handle:#010x} names no open sub-session of this session")
        return i

    def get(self, handle: int) -> Any:
        """The object of a live handle; BadHandle otherwise."""
        return self._objects[self._slot(handle)]

    def remove(self, handle: int) -> Any:
        """Forget a live handle and return its object; BadHandle otherwise."""
        i = self._slot(handle)
        obj = self._objects[i]
        self._objects[i] = None
        self._free.append(i)
        self._live -= 1
        return obj

    def clear(self) -> list[Any]:
        """Forget every handle (the session ended); returns the objects that were open."""
        out = []
        for i, obj in enumerate(self._objects):
            if obj is not None:
                out.append(obj)
                self._objects[i] = None
                self._free.append(i)
        self._live = 0
        return out

    def __len__(self) -> int:
        return self._live

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        """(handle, object) of every live handle."""
        for i, obj in enumerate(self._objects):
            if obj is not None:
                yield (self._generations[i] << INDEX_BITS) | (i + 1), obj
