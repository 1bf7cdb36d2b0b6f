"""cffi builder for broker._brk: the ring ABI header is read verbatim as the cdef."""
from __future__ import annotations

import os

import cffi

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CSRC = os.path.join(_ROOT, "csrc")

# Warnings are errors in the project's own builds (the Makefile and CI set BROKER_WERROR=1; the tests
# build with -Werror themselves), never in a user's: another compiler or older kernel headers must
# not fail an install on a warning (DESIGN.md section 6).
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra"] + (["-Werror"] if os.environ.get("BROKER_WERROR") == "1" else [])

ffibuilder = cffi.FFI()
with open(os.path.join(_CSRC, "brk_ring.h"), encoding="utf-8") as _f:
    ffibuilder.cdef(_f.read())
# The one binding detail outside the ring ABI: the fast-call method table (csrc/brk_py.c).
ffibuilder.cdef("const void *brk_py_method(int i);")
ffibuilder.cdef("const void *brk_codec_method(int i);")

# cffi releases the GIL around every call it generates. Every ring function
# called through cffi is short and never blocks (the blocking waits go through
# csrc/brk_py.c, which releases the GIL itself and counts the call in
# r->busy), so cffi's calls keep the GIL: that is what makes close() from
# another thread safe (it cannot run in the middle of a call) and it saves
# ~130 ns a call. The generated wrappers use these two macros, and only them,
# for that release.
_PREAMBLE = """
#include <Python.h>
#undef Py_BEGIN_ALLOW_THREADS
#undef Py_END_ALLOW_THREADS
#define Py_BEGIN_ALLOW_THREADS {
#define Py_END_ALLOW_THREADS }
#include <stdint.h>
#include <stdatomic.h>
#include "brk_ring.h"
const void *brk_py_method(int i);
const void *brk_codec_method(int i);
"""

ffibuilder.set_source(
    "broker._brk",
    _PREAMBLE,
    # setuptools wants paths relative to setup.py
    sources=[os.path.relpath(os.path.join(_CSRC, f), os.getcwd()) for f in ("brk_ring.c", "brk_py.c", "brk_codec.c")],
    include_dirs=[_CSRC],
    depends=[os.path.relpath(os.path.join(_CSRC, f), os.getcwd()) for f in ("brk_ring.h", "brk_codec.h")],
    extra_compile_args=CFLAGS,
    # brk_py.c needs the full C API (METH_FASTCALL); it also makes cffi's own wrappers faster.
    define_macros=[("_CFFI_NO_LIMITED_API", None)],
    py_limited_api=False,
)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=_ROOT, verbose=True)
