"""cffi builder for broker._brk: the ring ABI header is read verbatim as the cdef."""
from __future__ import annotations

import os

import cffi

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CSRC = os.path.join(_ROOT, "csrc")

CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]

ffibuilder = cffi.FFI()
with open(os.path.join(_CSRC, "brk_ring.h"), encoding="utf-8") as _f:
    ffibuilder.cdef(_f.read())
# The one binding detail outside the ring ABI: the fast-call method table (csrc/brk_py.c).
ffibuilder.cdef("const void *brk_py_method(int i);")

ffibuilder.set_source(
    "broker._brk",
    '#include <stdint.h>\n#include <stdatomic.h>\n#include "brk_ring.h"\nconst void *brk_py_method(int i);\n',
    # setuptools wants paths relative to setup.py
    sources=[os.path.relpath(os.path.join(_CSRC, f), os.getcwd()) for f in ("brk_ring.c", "brk_py.c")],
    include_dirs=[_CSRC],
    extra_compile_args=CFLAGS,
    # brk_py.c needs the full C API (METH_FASTCALL); it also makes cffi's own wrappers faster.
    define_macros=[("_CFFI_NO_LIMITED_API", None)],
    py_limited_api=False,
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=_ROOT, verbose=True)
