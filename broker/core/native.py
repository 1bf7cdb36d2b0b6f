"""The compiled extension's METH_FASTCALL entry points as Python callables.

broker._brk is one cffi module with two method tables besides cffi's own
functions: csrc/brk_py.c (the rings' per-message calls, wrapped by ring.py)
and csrc/brk_codec.c (the per-message frames, used by frames.py). cffi
cannot return Python objects, so each table's entries become functions
through the C API's PyCFunction_NewEx, once, here. Nothing else is imported
from the extension outside ring.py.
"""
from __future__ import annotations

import ctypes
from typing import Any

from broker._brk import ffi, lib


def _table(method: Any) -> dict[str, Any]:
    new = ctypes.pythonapi.PyCFunction_NewEx
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.py_object, ctypes.py_object]
    out = {}
    i = 0
    while (md := method(i)) != ffi.NULL:
        fn = new(int(ffi.cast("uintptr_t", md)), None, "broker._brk")
        out[fn.__name__] = fn
        i += 1
    return out


RING = _table(lib.brk_py_method)  # send, recv, recv_wait, recv_many, send_many, wait_data, wait_space, ready
CODEC = _table(lib.brk_codec_method)  # codec_setup, feed, encode_request, encode_complete

# what the rings' calls return (csrc/brk_ring.h), for the Python that looks at a C call's outcome
RING_OK, RING_EMPTY, RING_FULL = lib.BRK_OK, lib.BRK_EMPTY, lib.BRK_FULL
