/* brk_py.c: CPython fast-call entry points for the per-message hot path; everything else goes through cffi. */

/*
 * Why this file exists: a cffi call costs about 320 ns on this project's
 * 2-core machines (argument tuple, per-argument conversion, and a GIL release
 * and re-acquire around every call), against about 60 ns for a METH_FASTCALL
 * function. At 64-byte messages that is the difference between 1 and 3+
 * million messages a second, so the three per-message calls live here.
 * They hold the GIL (they do not block) except around long copies and waits,
 * which they count in r->busy (see BRK_PY_BLOCKING).
 * They are compiled into the same extension as the cffi module; broker/_ring.py
 * turns the method table into callables once, at import.
 *
 * The first argument of each is the address of a brk_ring handle, which only
 * broker/_ring.py passes. The result is bytes or an int outcome (brk_ring.h).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdatomic.h>

#include "brk_ring.h"

/* Copies at least this big run with the GIL released. */
#define BRK_PY_NOGIL_BYTES (256 * 1024)
/* A waiting recv spins this long holding the GIL before it lets go: a reply
 * that is a microsecond away costs less than releasing and retaking the GIL
 * (~0.2 us here), and 10 us cannot starve other threads (the interpreter's
 * own switch interval is 5 ms). */
#define BRK_PY_GIL_SPIN_NS 10000

/* A wait or a long copy without the GIL: counted in r->busy so that close()
 * from another thread (which needs the GIL) interrupts it and waits for it to
 * end before it unmaps anything. */
#define BRK_PY_BLOCKING(r, stmt) \
    do {                         \
        (r)->busy++;             \
        Py_BEGIN_ALLOW_THREADS   \
        stmt;                    \
        Py_END_ALLOW_THREADS     \
        (r)->busy--;             \
    } while (0)

const void *brk_py_method(int i);

/* Every entry point starts here: the argument count, then args[0] as the ring. */
static brk_ring *brk_py_begin(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *usage)
{
    if (nargs != want) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    brk_ring *r = PyLong_AsVoidPtr(args[0]);
    if (!r && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "ring is closed");
    return r;
}

/* A 64-bit integer argument; 0 with the exception set if it is not one. */
static int brk_py_int64(PyObject *o, long long *out)
{
    *out = PyLong_AsLongLong(o);
    return !(*out == -1 && PyErr_Occurred());
}

/* send(ring, data) -> int: copy one record of any C-contiguous buffer in. */
static PyObject *brk_py_send(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    brk_ring *r = brk_py_begin(args, nargs, 2, "send(ring, data)");
    if (!r)
        return NULL;
    int rc;
    if (PyBytes_CheckExact(args[1])) {
        const char *p = PyBytes_AS_STRING(args[1]);
        Py_ssize_t n = PyBytes_GET_SIZE(args[1]);
        if (n >= BRK_PY_NOGIL_BYTES) {
            BRK_PY_BLOCKING(r, rc = brk_send(r, p, (uint64_t)n));
        } else {
            rc = brk_send(r, p, (uint64_t)n);
        }
    } else {
        Py_buffer b;
        if (PyObject_GetBuffer(args[1], &b, PyBUF_C_CONTIGUOUS) < 0)
            return NULL;
        if (b.len >= BRK_PY_NOGIL_BYTES) {
            BRK_PY_BLOCKING(r, rc = brk_send(r, b.buf, (uint64_t)b.len));
        } else {
            rc = brk_send(r, b.buf, (uint64_t)b.len);
        }
        PyBuffer_Release(&b);
    }
    return PyLong_FromLong(rc);
}

/* The next record as a new bytes object, or an int outcome. */
static PyObject *brk_py_take(brk_ring *r)
{
    for (int tries = 0; tries < 16; tries++) {
        int rc = brk_peek(r);
        if (rc != BRK_OK && rc != BRK_LOST)
            return PyLong_FromLong(rc);
        Py_ssize_t n = (Py_ssize_t)r->rlen;
        PyObject *out = PyBytes_FromStringAndSize(NULL, n);
        if (!out) {
            brk_unpeek(r); /* the record stays first in line */
            return NULL;
        }
        if (n >= BRK_PY_NOGIL_BYTES) {
            BRK_PY_BLOCKING(r, memcpy(PyBytes_AS_STRING(out), r->rptr, (size_t)n));
        } else {
            memcpy(PyBytes_AS_STRING(out), r->rptr, (size_t)n);
        }
        rc = brk_release(r);
        if (rc == BRK_OK)
            return out;
        Py_DECREF(out);
        if (rc != BRK_LAPPED)
            return PyLong_FromLong(rc);
        /* lossy: overwritten while we copied; the next peek counts it lost */
    }
    return PyLong_FromLong(BRK_LAPPED);
}

/* recv(ring) -> bytes | int */
static PyObject *brk_py_recv(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    brk_ring *r = brk_py_begin(args, nargs, 1, "recv(ring)");
    return r ? brk_py_take(r) : NULL;
}

/* recv_wait(ring, timeout_ns) -> bytes | int: wait (GIL released) if empty. */
static PyObject *brk_py_recv_wait(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    brk_ring *r = brk_py_begin(args, nargs, 2, "recv_wait(ring, timeout_ns)");
    if (!r)
        return NULL;
    long long timeout;
    if (!brk_py_int64(args[1], &timeout))
        return NULL;
    PyObject *out = brk_py_take(r);
    if (!out || !PyLong_CheckExact(out) || PyLong_AsLong(out) != BRK_EMPTY || timeout <= 0)
        return out;
    Py_DECREF(out);
    int64_t spin = (int64_t)r->spin_ns < BRK_PY_GIL_SPIN_NS ? (int64_t)r->spin_ns : BRK_PY_GIL_SPIN_NS;
    if (spin > timeout)
        spin = timeout;
    int rc = spin > 0 ? brk_spin_data(r, spin) : BRK_TIMEOUT;
    if (rc == BRK_TIMEOUT)
        BRK_PY_BLOCKING(r, rc = brk_wait_data(r, (int64_t)timeout - spin));
    if (rc)
        return PyLong_FromLong(rc);
    return brk_py_take(r);
}

/* send_many(ring, sequence, start) -> (sent, outcome): copies items
 * start, start+1, ... (bytes or C-contiguous buffers) in chunks of up to 256,
 * one publication a chunk, until all are sent or one does not fit (outcome
 * BRK_FULL, BRK_TOOBIG...: then sent counts those before it). */
#define BRK_PY_VEC 256
static PyObject *brk_py_send_many(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    brk_ring *r = brk_py_begin(args, nargs, 3, "send_many(ring, sequence, start)");
    if (!r)
        return NULL;
    Py_ssize_t start = PyLong_AsSsize_t(args[2]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    PyObject *seq = PySequence_Fast(args[1], "send_many takes a list or tuple of buffers");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), sent = 0;
    PyObject **items = PySequence_Fast_ITEMS(seq);
    int rc = 0;
    const void *bufs[BRK_PY_VEC];
    uint64_t lens[BRK_PY_VEC];
    Py_buffer views[BRK_PY_VEC];
    int viewed[BRK_PY_VEC];
    for (Py_ssize_t at = start < 0 ? 0 : start; at < n && rc == 0;) {
        Py_ssize_t k = 0;
        for (; k < BRK_PY_VEC && at + k < n; k++) {
            PyObject *o = items[at + k];
            viewed[k] = 0;
            if (PyBytes_CheckExact(o)) {
                bufs[k] = PyBytes_AS_STRING(o);
                lens[k] = (uint64_t)PyBytes_GET_SIZE(o);
            } else if (PyObject_GetBuffer(o, &views[k], PyBUF_C_CONTIGUOUS) == 0) {
                viewed[k] = 1;
                bufs[k] = views[k].buf;
                lens[k] = (uint64_t)views[k].len;
            } else {
                rc = -1; /* the exception is set; send what came before it */
                break;
            }
        }
        int src = k ? brk_send_vec(r, bufs, lens, (uint64_t)k) : 0;
        Py_ssize_t went = k ? (Py_ssize_t)r->count : 0;
        for (Py_ssize_t i = 0; i < k; i++)
            if (viewed[i])
                PyBuffer_Release(&views[i]);
        sent += went;
        at += went;
        if (rc == -1) {
            if (went == k) { /* everything before the bad item went: raise for it */
                Py_DECREF(seq);
                return NULL;
            }
            /* A record before the bad item did not fit: report that; the bad
             * item raises when the caller comes back to it. */
            PyErr_Clear();
            rc = src ? src : BRK_FULL;
        } else if (src || went < k) {
            rc = src ? src : BRK_FULL;
        }
    }
    Py_DECREF(seq);
    return Py_BuildValue("(ni)", sent, rc);
}

/* Batch buffer of recv_many: records and lengths together stay under glibc's
 * mmap threshold (128 KiB), so the allocation is reused, not page-faulted. */
#define BRK_PY_BATCH_BYTES (64 * 1024)
#define BRK_PY_BATCH_MAX 4096

/* recv_many(ring, max) -> list of bytes | int: the records already there (up
 * to max and 64 KiB), each its own bytes object, in one call. */
static PyObject *brk_py_recv_many(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    brk_ring *r = brk_py_begin(args, nargs, 2, "recv_many(ring, max)");
    if (!r)
        return NULL;
    long max = PyLong_AsLong(args[1]);
    if (max == -1 && PyErr_Occurred())
        return NULL;
    if (max < 1 || max > BRK_PY_BATCH_MAX) {
        PyErr_Format(PyExc_ValueError, "max must be from 1 to %d", BRK_PY_BATCH_MAX);
        return NULL;
    }
    unsigned char *buf = PyMem_Malloc(BRK_PY_BATCH_BYTES + (size_t)max * sizeof(uint64_t));
    if (!buf)
        return PyErr_NoMemory();
    uint64_t *lens = (uint64_t *)(buf + BRK_PY_BATCH_BYTES);
    int rc = brk_recv_many(r, buf, BRK_PY_BATCH_BYTES, lens, (uint64_t)max);
    if (rc != BRK_OK && rc != BRK_LOST) {
        PyMem_Free(buf);
        return PyLong_FromLong(rc);
    }
    Py_ssize_t n = (Py_ssize_t)r->count;
    PyObject *list = PyList_New(n);
    uint64_t off = 0;
    for (Py_ssize_t i = 0; list && i < n; i++) {
        PyObject *item = PyBytes_FromStringAndSize((const char *)buf + off, (Py_ssize_t)lens[i]);
        if (!item) {
            Py_CLEAR(list); /* out of memory: these records are gone, as with any consumed data */
            break;
        }
        PyList_SET_ITEM(list, i, item);
        off += lens[i];
    }
    PyMem_Free(buf);
    return list;
}

/* wait_data(ring, timeout_ns) -> int: brk_wait_data without the GIL. */
static PyObject *brk_py_wait_data(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    brk_ring *r = brk_py_begin(args, nargs, 2, "wait_data(ring, timeout_ns)");
    if (!r)
        return NULL;
    long long timeout;
    if (!brk_py_int64(args[1], &timeout))
        return NULL;
    int rc;
    BRK_PY_BLOCKING(r, rc = brk_wait_data(r, (int64_t)timeout));
    return PyLong_FromLong(rc);
}

/* wait_space(ring, len, timeout_ns) -> int: brk_wait_space without the GIL. */
static PyObject *brk_py_wait_space(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    brk_ring *r = brk_py_begin(args, nargs, 3, "wait_space(ring, len, timeout_ns)");
    if (!r)
        return NULL;
    unsigned long long len = PyLong_AsUnsignedLongLong(args[1]);
    if (len == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    long long timeout;
    if (!brk_py_int64(args[2], &timeout))
        return NULL;
    int rc;
    BRK_PY_BLOCKING(r, rc = brk_wait_space(r, (uint64_t)len, (int64_t)timeout));
    return PyLong_FromLong(rc);
}

/* ready(ring) -> bool: a record (or the producer's end) to look at right now;
 * one look, never a wait or a system call (a server spinning over its
 * sessions calls it for each, so it must cost next to nothing). */
static PyObject *brk_py_ready(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    brk_ring *r = brk_py_begin(args, nargs, 1, "ready(ring)");
    if (!r)
        return NULL;
    int rc = brk_spin_data(r, 0);
    if (rc < 0)
        return PyLong_FromLong(rc);
    return PyBool_FromLong(rc != BRK_TIMEOUT);
}

static PyMethodDef brk_py_methods[] = {
    {"ready", (PyCFunction)(void (*)(void))brk_py_ready, METH_FASTCALL, "ready(ring) -> bool | outcome"},
    {"send", (PyCFunction)(void (*)(void))brk_py_send, METH_FASTCALL, "send(ring, data) -> outcome"},
    {"recv", (PyCFunction)(void (*)(void))brk_py_recv, METH_FASTCALL, "recv(ring) -> bytes | outcome"},
    {"recv_wait", (PyCFunction)(void (*)(void))brk_py_recv_wait, METH_FASTCALL,
     "recv_wait(ring, timeout_ns) -> bytes | outcome"},
    {"wait_data", (PyCFunction)(void (*)(void))brk_py_wait_data, METH_FASTCALL, "wait_data(ring, timeout_ns) -> outcome"},
    {"send_many", (PyCFunction)(void (*)(void))brk_py_send_many, METH_FASTCALL,
     "send_many(ring, sequence, start) -> (sent, outcome)"},
    {"recv_many", (PyCFunction)(void (*)(void))brk_py_recv_many, METH_FASTCALL,
     "recv_many(ring, max) -> list[bytes] | outcome"},
    {"wait_space", (PyCFunction)(void (*)(void))brk_py_wait_space, METH_FASTCALL,
     "wait_space(ring, len, timeout_ns) -> outcome"},
    {NULL, NULL, 0, NULL},
};

/* The i-th method definition (NULL past the end), for PyCFunction_NewEx. */
const void *brk_py_method(int i)
{
    if (i < 0 || i >= (int)(sizeof brk_py_methods / sizeof brk_py_methods[0]) - 1)
        return NULL;
    return &brk_py_methods[i];
}
