"""The compiled extension's METH_FASTCALL entry points as Python callables.

broker._brk is one cffi module with four method tables besides cffi's own
functions, one per concept (csrc/py/brk_py.h): the rings' per-message calls
(wrapped by ring.py), a client's whole call, the frames' codec (used by
frames.py) and the server's books (src/shmbroker/framework/native.py). cffi cannot
return Python objects, so each table's entries become functions through the
C API's PyCFunction_NewEx, once, here.
"""
from __future__ import annotations

import ctypes
from typing import Any

from shmbroker._brk import ffi, lib as lib  # lib: re-exported (the services read its constants)


def _table(method: Any) -> dict[str, Any]:
    new = ctypes.pythonapi.PyCFunction_NewEx
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.py_object, ctypes.py_object]
    out = {}
    i = 0
    while (md := method(i)) != ffi.NULL:
        fn = new(int(ffi.cast("uintptr_t", md)), None, "shmbroker._brk")
        out[fn.__name__] = fn
        i += 1
    return out


RING = _table(lib.brk_ring_method)  # csrc/py/ring.c: send, recv, recv_wait, recv_many, send_many, topic_*, wait_*, ready
CLIENT = _table(lib.brk_client_method)  # csrc/py/client.c: call, call_many, client_setup
SERVER = _table(lib.brk_server_method)  # csrc/py/server.c: ConnBase, MessageBase, RingBatch, take and put
CODEC = _table(lib.brk_codec_method)  # csrc/py/codec.c: codec_setup, feed, encode_request, encode_complete

# what the rings' calls return (csrc/ring/brk_ring.h), for the Python that looks at a C call's outcome
RING_OK, RING_EMPTY, RING_FULL = lib.BRK_OK, lib.BRK_EMPTY, lib.BRK_FULL
