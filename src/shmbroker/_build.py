"""cffi builder for broker._brk: the ring ABI header is read verbatim as the cdef; the sources by layer."""
from __future__ import annotations

import os

import cffi

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # src/shmbroker/ -> the root
_CSRC = os.path.join(_ROOT, "csrc")

# Warnings are errors in the project's own builds (the Makefile and CI set BROKER_WERROR=1; the tests
# build with -Werror themselves), never in a user's: another compiler or older kernel headers must
# not fail an install on a warning (DESIGN.md section 6).
CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra"] + (["-Werror"] if os.environ.get("BROKER_WERROR") == "1" else [])

# The C sources, by layer: the rings (ring/), the frames in plain C (frame/), and the CPython entry
# points by concept (py/: the rings' calls, a client's call, the codec, the server's books).
SOURCES = ["ring/brk_ring.c", "frame/brk_frame.c", "py/ring.c", "py/client.c", "py/codec.c", "py/server.c"]
HEADERS = ["ring/brk_ring.h", "frame/brk_frame.h", "py/brk_py.h"]
INCLUDE_DIRS = ["ring", "frame", "py"]
TABLES = ["brk_ring_method", "brk_client_method", "brk_codec_method", "brk_server_method"]  # csrc/py/brk_py.h

# cffi releases the GIL around every call it generates. Every ring function
# called through cffi is short and never blocks (the blocking waits go through
# csrc/py/ring.c, which releases the GIL itself and counts the call in
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
""" + "".join(f"const void *{t}(int i);\n" for t in TABLES)


def configure(ffi: cffi.FFI, csrc: str = _CSRC, relative: bool = True, extra_compile_args: list[str] | None = None,
              extra_link_args: list[str] | None = None) -> None:
    """Declare broker._brk on ffi: the ring ABI header read verbatim as the cdef (csrc/ring/brk_ring.h),
    the method tables, the sources. relative: paths relative to the working directory (setuptools
    wants them so); the sanitizer test builds with absolute ones and its own flags."""
    with open(os.path.join(csrc, "ring", "brk_ring.h"), encoding="utf-8") as f:
        ffi.cdef(f.read())
    for t in TABLES:  # the one binding detail outside the ring ABI: the fast-call method tables
        ffi.cdef(f"const void *{t}(int i);")

    def path(f: str) -> str:
        full = os.path.join(csrc, f)
        return os.path.relpath(full, os.getcwd()) if relative else full

    ffi.set_source(
        "shmbroker._brk",
        _PREAMBLE,
        sources=[path(f) for f in SOURCES],
        include_dirs=[path(d) for d in INCLUDE_DIRS],
        depends=[path(f) for f in HEADERS],
        extra_compile_args=CFLAGS + (extra_compile_args or []),
        extra_link_args=extra_link_args or [],
        # csrc/py/ needs the full C API (METH_FASTCALL); it also makes cffi's own wrappers faster.
        define_macros=[("_CFFI_NO_LIMITED_API", None)],
        py_limited_api=False,
    )


ffibuilder = cffi.FFI()
configure(ffibuilder)

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=_ROOT, verbose=True)
