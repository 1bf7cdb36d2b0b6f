/* brk_py.c: CPython fast-call entry points for the per-message hot path; everything else goes through cffi. */

/*
 * Why this file exists: a cffi call costs about 320 ns on this project's
 * 2-core machines (argument tuple, per-argument conversion, and a GIL release
 * and re-acquire around every call), against about 60 ns for a METH_FASTCALL
 * function. At 64-byte messages that is the difference between 1 and 3+
 * million messages a second, so the three per-message calls live here.
 * They hold the GIL (they do not block) except around long copies and waits,
 * which they count in r->busy (see BRK_PY_BLOCKING).
 * They are compiled into the same extension as the cffi module; broker/core/ring.py
 * turns the method table into callables once, at import.
 *
 * The first argument of each is the address of a brk_ring handle, which only
 * broker/core/ring.py passes. The result is bytes or an int outcome (brk_ring.h).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdatomic.h>
#include <errno.h>

#include "brk_ring.h"
#include "brk_codec.h"

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

/* A second ring passed by address (call's and call_many's reply ring); NULL with an exception. */
static brk_ring *brk_py_ring(PyObject *address)
{
    brk_ring *r = PyLong_AsVoidPtr(address);
    if (!r && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "ring is closed");
    return r;
}

/* Wait for a record on rx (recv_wait, call, call_many): spin with the GIL for up to
 * BRK_PY_GIL_SPIN_NS (or the ring's spin, if shorter), then without it, for
 * up to wait_ns in all. The ring's outcome (BRK_OK: something to read). */
static int brk_py_await(brk_ring *rx, int64_t wait_ns)
{
    int64_t spin = (int64_t)rx->spin_ns < BRK_PY_GIL_SPIN_NS ? (int64_t)rx->spin_ns : BRK_PY_GIL_SPIN_NS;
    if (spin > wait_ns)
        spin = wait_ns;
    int rc = spin > 0 ? brk_spin_data(rx, spin) : BRK_TIMEOUT;
    if (rc == BRK_TIMEOUT && wait_ns > spin)
        BRK_PY_BLOCKING(rx, rc = brk_wait_data(rx, wait_ns - spin));
    return rc;
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
    int rc = brk_py_await(r, (int64_t)timeout);
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

/* ---- topics: a publisher's ring (broker/services/topics/broker.py RECORD_HEAD) ----
 * A record is a 20-byte header, then the message's meta and payload: sequence
 * number u64, meta length u32, payload bytes still to come in later fragments
 * u32, fragment index u32 (all little-endian). These calls handle the common
 * message only, bytes with no meta in one record; anything else is Python's
 * (broker/services/topics/client.py), which also says what is wrong with a bad record. */
#define BRK_TOPIC_HEAD 20

/* Write one plain message: the header and data, straight into a claimed record. */
static int brk_topic_put(brk_ring *r, uint64_t seq, const char *p, Py_ssize_t n)
{
    int rc = brk_claim(r, BRK_TOPIC_HEAD + (uint64_t)n);
    if (rc)
        return rc;
    unsigned char *w = r->wptr;
    brk_codec_st(w, seq, 8);
    memset(w + 8, 0, 12); /* no meta, nothing more to come, fragment 0 */
    memcpy(w + BRK_TOPIC_HEAD, p, (size_t)n);
    return brk_commit(r, BRK_TOPIC_HEAD + (uint64_t)n);
}

/* topic_send(ring, seq, data: bytes) -> int: one plain message in one record (BRK_TOOBIG if it
 * needs more; BRK_FULL: nothing written, Python waits for room). */
static PyObject *brk_py_topic_send(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    brk_ring *r = brk_py_begin(args, nargs, 3, "topic_send(ring, seq, data)");
    if (!r)
        return NULL;
    unsigned long long seq = PyLong_AsUnsignedLongLong(args[1]);
    if (seq == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (!PyBytes_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "topic_send takes bytes");
        return NULL;
    }
    return PyLong_FromLong(brk_topic_put(r, seq, PyBytes_AS_STRING(args[2]), PyBytes_GET_SIZE(args[2])));
}

/* topic_send_many(ring, items: list, first_seq, start) -> (sent, outcome): items[start:] (bytes)
 * as plain messages numbered first_seq + their index, each one record, until all went or one
 * did not (outcome BRK_FULL, BRK_TOOBIG...; -1: an item is not bytes). */
static PyObject *brk_py_topic_send_many(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    brk_ring *r = brk_py_begin(args, nargs, 4, "topic_send_many(ring, items, first_seq, start)");
    if (!r)
        return NULL;
    if (!PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "topic_send_many takes a list");
        return NULL;
    }
    unsigned long long first = PyLong_AsUnsignedLongLong(args[2]);
    if (first == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t start = PyLong_AsSsize_t(args[3]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(args[1]), i = start < 0 ? 0 : start;
    int rc = 0;
    for (; i < n; i++) {
        PyObject *o = PyList_GET_ITEM(args[1], i);
        if (!PyBytes_CheckExact(o)) {
            rc = -1;
            break;
        }
        if ((rc = brk_topic_put(r, first + (uint64_t)i, PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o))))
            break;
    }
    return Py_BuildValue("(ni)", i - (start < 0 ? 0 : start), rc);
}

/* The next record, if it is a plain message numbered after *last: its payload as new bytes
 * (*last moved on), released; else NULL with *rc: the ring's outcome, or BRK_NOTREADY for a
 * record Python must read (it stays first in line). NULL with an exception: out of memory. */
static PyObject *brk_topic_take(brk_ring *r, uint64_t *last, int *rc)
{
    *rc = brk_peek(r);
    if (*rc != BRK_OK)
        return NULL; /* BRK_EMPTY, or anything else: lossless rings never give BRK_LOST */
    unsigned char head[BRK_TOPIC_HEAD];
    uint64_t n = r->rlen;
    if (n < BRK_TOPIC_HEAD) {
        brk_unpeek(r);
        *rc = BRK_NOTREADY;
        return NULL;
    }
    memcpy(head, r->rptr, BRK_TOPIC_HEAD); /* one copy: the publisher may change the ring meanwhile */
    uint64_t seq = brk_codec_ld(head, 8);
    if (brk_codec_ld(head + 8, 4) || brk_codec_ld(head + 12, 4) || brk_codec_ld(head + 16, 4) || seq <= *last) {
        brk_unpeek(r);
        *rc = BRK_NOTREADY;
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize((const char *)r->rptr + BRK_TOPIC_HEAD, (Py_ssize_t)(n - BRK_TOPIC_HEAD));
    if (!out) {
        brk_unpeek(r);
        return NULL;
    }
    *rc = brk_release(r);
    if (*rc) {
        Py_DECREF(out);
        return NULL;
    }
    *last = seq;
    return out;
}

/* topic_recv(ring, last_seq) -> (seq, bytes) | int: the next plain message numbered after
 * last_seq, or an outcome (BRK_EMPTY; BRK_NOTREADY: the next record is Python's to read). */
static PyObject *brk_py_topic_recv(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    brk_ring *r = brk_py_begin(args, nargs, 2, "topic_recv(ring, last_seq)");
    if (!r)
        return NULL;
    unsigned long long last = PyLong_AsUnsignedLongLong(args[1]);
    if (last == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    uint64_t seq = last;
    int rc;
    PyObject *out = brk_topic_take(r, &seq, &rc);
    if (!out)
        return PyErr_Occurred() ? NULL : PyLong_FromLong(rc);
    PyObject *t = PyTuple_New(2);
    PyObject *num = t ? PyLong_FromUnsignedLongLong(seq) : NULL;
    if (!num) {
        Py_XDECREF(t);
        Py_DECREF(out);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, num);
    PyTuple_SET_ITEM(t, 1, out);
    return t;
}

/* topic_recv_many(ring, max, last_seq) -> (list, last_seq, outcome): up to max plain messages
 * already there, in one call; outcome says why it stopped (BRK_OK: max reached). */
static PyObject *brk_py_topic_recv_many(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    brk_ring *r = brk_py_begin(args, nargs, 3, "topic_recv_many(ring, max, last_seq)");
    if (!r)
        return NULL;
    Py_ssize_t max = PyLong_AsSsize_t(args[1]);
    if (max == -1 && PyErr_Occurred())
        return NULL;
    unsigned long long last = PyLong_AsUnsignedLongLong(args[2]);
    if (last == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (max < 1 || max > BRK_PY_BATCH_MAX) {
        PyErr_Format(PyExc_ValueError, "max must be from 1 to %d", BRK_PY_BATCH_MAX);
        return NULL;
    }
    PyObject *list = PyList_New(0);
    if (!list)
        return NULL;
    uint64_t seq = last;
    int rc = BRK_OK;
    for (Py_ssize_t i = 0; i < max; i++) {
        PyObject *out = brk_topic_take(r, &seq, &rc);
        if (!out) {
            if (PyErr_Occurred()) {
                Py_DECREF(list);
                return NULL;
            }
            break;
        }
        int bad = PyList_Append(list, out);
        Py_DECREF(out);
        if (bad) {
            Py_DECREF(list);
            return NULL;
        }
        rc = BRK_OK;
    }
    return Py_BuildValue("(NKi)", list, (unsigned long long)seq, rc);
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

/* wait_any(rings, bell, seen, spin_ns, timeout_ns) -> int | None: brk_wait_any without the GIL
 * over a tuple of ring addresses (every one counted busy meanwhile), bell a uint32_t's address or
 * 0: the ready ring's index, len(rings) for the bell, None at the timeout; OSError otherwise. */
static PyObject *brk_py_wait_any(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 5 || !PyTuple_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "wait_any(rings: tuple, bell, seen, spin_ns, timeout_ns)");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(args[0]);
    if (n > BRK_WAIT_ANY_MAX) {
        PyErr_SetString(PyExc_ValueError, "too many rings for wait_any");
        return NULL;
    }
    brk_ring *rings[BRK_WAIT_ANY_MAX];
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!(rings[i] = brk_py_ring(PyTuple_GET_ITEM(args[0], i))))
            return NULL;
    }
    void *bell = PyLong_AsVoidPtr(args[1]);
    long long seen, spin, timeout;
    if ((!bell && PyErr_Occurred()) || !brk_py_int64(args[2], &seen) || !brk_py_int64(args[3], &spin) ||
        !brk_py_int64(args[4], &timeout))
        return NULL;
    uint32_t which = 0;
    int rc;
    for (Py_ssize_t i = 0; i < n; i++)
        rings[i]->busy++;
    Py_BEGIN_ALLOW_THREADS
    rc = brk_wait_any(rings, (uint32_t)n, bell, (uint32_t)seen, (int64_t)spin, (int64_t)timeout, &which);
    Py_END_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        rings[i]->busy--;
    if (rc == 0)
        return PyLong_FromUnsignedLong(which);
    if (rc == BRK_TIMEOUT)
        Py_RETURN_NONE;
    errno = rc < 0 ? -rc : EINVAL;
    return PyErr_SetFromErrno(PyExc_OSError);
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

/* Attribute names call() reads and sets on a broker.Buffer, made once. */
static PyObject *brk_s_max_length, *brk_s_value;

/* One argument of call(): 1 if it is one of the kinds call() takes (filled
 * in), 0 if not (the caller leaves the call to Python), -1 with an exception. */
static int brk_call_arg(PyObject *a, PyTypeObject *buffer_type, brk_codec_arg *out, PyObject **hold)
{
    *hold = NULL;
    out->data = NULL;
    out->len = 0;
    out->value = 0;
    if (a == Py_None) {
        out->kind = BRK_K_NONE;
        return 1;
    }
    if (PyBytes_CheckExact(a)) {
        out->kind = BRK_K_READ;
        out->data = PyBytes_AS_STRING(a);
        out->len = (uint64_t)PyBytes_GET_SIZE(a);
        return 1;
    }
    if (PyLong_CheckExact(a)) { /* exact: a bool is not an argument */
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(a, &overflow);
        if (overflow || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        out->kind = BRK_K_INT;
        out->value = v;
        return 1;
    }
    if (Py_TYPE(a) != buffer_type)
        return 0;
    PyObject *max = PyObject_GetAttr(a, brk_s_max_length);
    if (!max)
        return -1;
    long long m = PyLong_CheckExact(max) ? PyLong_AsLongLong(max) : -1;
    Py_DECREF(max);
    if (m < 0) {
        PyErr_Clear();
        return 0;
    }
    PyObject *value = PyObject_GetAttr(a, brk_s_value);
    if (!value)
        return -1;
    if (!PyBytes_CheckExact(value) || PyBytes_GET_SIZE(value) > m) {
        Py_DECREF(value);
        return 0;
    }
    *hold = value;
    out->value = m;
    if (PyBytes_GET_SIZE(value)) {
        out->kind = BRK_K_READWRITE;
        out->data = PyBytes_AS_STRING(value);
        out->len = (uint64_t)PyBytes_GET_SIZE(value);
    } else {
        out->kind = BRK_K_WRITE;
    }
    return 1;
}

/* The reply in buf[0..n) if it is the simple one: exactly one COMPLETE frame
 * for `rid`, no error text, its writes only into Buffer arguments (each at
 * most once). Then the writes are applied and the status returned (a new
 * int); else NULL with no exception (Python takes the reply), or NULL with
 * one (out of memory). */
static PyObject *brk_call_reply(const unsigned char *buf, uint64_t n, uint64_t rid, PyObject *const *argv,
                                Py_ssize_t argc, PyTypeObject *buffer_type)
{
    if (n < BRK_CODEC_HEADER + BRK_CODEC_COMPLETE_FIXED || memcmp(buf, "BRK1", 4) || buf[4] != BRK_CODEC_VERSION ||
        buf[5] != BRK_CODEC_COMPLETE || brk_codec_ld(buf + 6, 2) || brk_codec_ld(buf + 12, 4) ||
        brk_codec_ld(buf + 8, 4) != n - BRK_CODEC_HEADER || brk_codec_ld(buf + 16, 8) != rid)
        return NULL;
    const unsigned char *b = buf + BRK_CODEC_HEADER;
    uint64_t size = n - BRK_CODEC_HEADER, at = BRK_CODEC_COMPLETE_FIXED;
    unsigned nwrites = b[4];
    if (nwrites > 4 || b[5] || brk_codec_ld(b + 6, 2))
        return NULL; /* an error text, or anything odd: Python says what it is */
    struct { unsigned index; uint64_t at, len; } w[4];
    unsigned seen = 0;
    for (unsigned i = 0; i < nwrites; i++) {
        if (size - at < BRK_CODEC_WRITE_HDR)
            return NULL;
        w[i].index = b[at];
        w[i].len = brk_codec_ld(b + at + 4, 4);
        at += BRK_CODEC_WRITE_HDR;
        if (w[i].index >= 4 || (seen & (1u << w[i].index)) || w[i].len > size - at ||
            (Py_ssize_t)w[i].index >= argc || Py_TYPE(argv[w[i].index]) != buffer_type)
            return NULL;
        seen |= 1u << w[i].index;
        w[i].at = at;
        at += w[i].len;
    }
    if (at != size)
        return NULL;
    PyObject *values[4] = { NULL, NULL, NULL, NULL };
    for (unsigned i = 0; i < nwrites; i++) {
        values[i] = PyBytes_FromStringAndSize((const char *)b + w[i].at, (Py_ssize_t)w[i].len);
        if (!values[i])
            goto fail;
    }
    for (unsigned i = 0; i < nwrites; i++) {
        if (PyObject_SetAttr(argv[w[i].index], brk_s_value, values[i]) < 0)
            goto fail;
    }
    for (unsigned i = 0; i < nwrites; i++)
        Py_DECREF(values[i]);
    return PyLong_FromLong((long)(int32_t)brk_codec_ld(b, 4));
fail:
    for (unsigned i = 0; i < nwrites; i++)
        Py_XDECREF(values[i]);
    return NULL;
}

/* Replies up to this size are copied out of the ring and read from the copy
 * (the server could change the ring under us); a bigger one goes to Python. */
#define BRK_CALL_COPY 4096

/*
 * call(tx, rx, rid, code, handle, args, buffer_type, wait_ns, max_frame) -> outcome:
 * a synchronous call's whole round trip on a shared-memory session, in C, for
 * the common case. The REQUEST is written straight into ring 0 (tx), then the
 * reply is waited for on ring 1 (rx): spinning with the GIL for up to 10 us,
 * then without it, for up to wait_ns in all.
 *   int         the simple reply came (see brk_call_reply): its status, the
 *               writes applied to the Buffer arguments;
 *   bytes       the reply came and is anything else: Python takes it;
 *   NotImplemented  nothing was sent (an argument of another kind, a frame
 *               bigger than a record or with a body over max_frame, no room
 *               in the ring): Python does it all;
 *   (rc,)       sent, then the wait ended with outcome rc (BRK_TIMEOUT: no
 *               reply within wait_ns; Python waits on). A ring error before
 *               sending is (rc, 0).
 * It runs with the GIL held except in the wait, so the send is atomic with
 * respect to the session's other threads (close() writes a CLOSE on tx).
 */
static PyObject *brk_py_call(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    brk_ring *tx = brk_py_begin(args, nargs, 9, "call(tx, rx, rid, code, handle, args, buffer_type, wait_ns, max_frame)");
    if (!tx)
        return NULL;
    brk_ring *rx = brk_py_ring(args[1]);
    if (!rx)
        return NULL;
    unsigned long long rid = PyLong_AsUnsignedLongLong(args[2]);
    if (rid == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    long long code, handle, wait_ns, max_frame;
    if (!brk_py_int64(args[3], &code) || !brk_py_int64(args[4], &handle) || !brk_py_int64(args[7], &wait_ns) ||
        !brk_py_int64(args[8], &max_frame))
        return NULL;
    if (!PyTuple_Check(args[5]) || !PyType_Check(args[6])) {
        PyErr_SetString(PyExc_TypeError, "call: args is a tuple, buffer_type a class");
        return NULL;
    }
    if (!brk_s_max_length && !(brk_s_max_length = PyUnicode_InternFromString("max_length")))
        return NULL;
    if (!brk_s_value && !(brk_s_value = PyUnicode_InternFromString("value")))
        return NULL;
    PyTypeObject *buffer_type = (PyTypeObject *)args[6];
    Py_ssize_t argc = PyTuple_GET_SIZE(args[5]);
    PyObject *const *argv = &PyTuple_GET_ITEM(args[5], 0);
    if (argc > 4 || code < INT32_MIN || code > INT32_MAX || handle < 0 || handle > UINT32_MAX)
        Py_RETURN_NOTIMPLEMENTED;
    brk_codec_arg cargs[4];
    PyObject *hold[4] = { NULL, NULL, NULL, NULL };
    PyObject *out = NULL;
    int i;
    for (i = 0; i < 4; i++) {
        if (i >= argc) {
            cargs[i] = (brk_codec_arg){ BRK_K_NONE, 0, NULL, 0 };
            continue;
        }
        int ok = brk_call_arg(argv[i], buffer_type, &cargs[i], &hold[i]);
        if (ok < 0)
            goto done;
        if (!ok) {
            out = Py_NewRef(Py_NotImplemented);
            goto done;
        }
    }
    uint64_t size = brk_codec_request_size(cargs);
    if (size > tx->max_record || max_frame < 0 || size - BRK_CODEC_HEADER > (uint64_t)max_frame) {
        out = Py_NewRef(Py_NotImplemented);
        goto done;
    }
    int rc = brk_claim(tx, size);
    if (rc == BRK_FULL) {
        out = Py_NewRef(Py_NotImplemented);
        goto done;
    }
    if (rc) {
        out = Py_BuildValue("(ii)", rc, 0);
        goto done;
    }
    brk_codec_put_request(tx->wptr, rid, (int32_t)code, (uint32_t)handle, 0, cargs);
    rc = brk_commit(tx, size);
    if (rc) {
        out = Py_BuildValue("(i)", rc);
        goto done;
    }
    rc = brk_py_await(rx, wait_ns); /* the reply */
    if (rc == BRK_OK)
        rc = brk_peek(rx);
    if (rc != BRK_OK) {
        out = Py_BuildValue("(i)", rc);
        goto done;
    }
    uint64_t n = rx->rlen;
    if (n > BRK_CALL_COPY) {
        out = PyBytes_FromStringAndSize((const char *)rx->rptr, (Py_ssize_t)n);
        if (!out) {
            brk_unpeek(rx);
            goto done;
        }
        rc = brk_release(rx);
        if (rc) {
            Py_CLEAR(out);
            out = Py_BuildValue("(i)", rc);
        }
        goto done;
    }
    unsigned char copy[BRK_CALL_COPY];
    memcpy(copy, rx->rptr, (size_t)n);
    rc = brk_release(rx);
    if (rc) {
        out = Py_BuildValue("(i)", rc);
        goto done;
    }
    out = brk_call_reply(copy, n, rid, argv, argc, buffer_type);
    if (!out && !PyErr_Occurred())
        out = PyBytes_FromStringAndSize((const char *)copy, (Py_ssize_t)n);
done:
    for (i = 0; i < 4; i++)
        Py_XDECREF(hold[i]);
    return out;
}

/* call_many's outcomes: BRK_OK (every call up to `limit` has its reply),
 * BRK_TIMEOUT (one wait of wait_ns passed with replies still due),
 * BRK_MANY_UNUSUAL and BRK_MANY_ODD (brk_ring.h), or any other: a ring failed. */
/* Reply records up to this size are copied out and read from the copy; a
 * bigger one goes to Python whole (as BRK_MANY_ODD). */
#define BRK_MANY_COPY (64 * 1024)
/* Requests packed into one record: at most as many bytes as the server's C takes in one look */
#define BRK_MANY_FRAMES (BRK_CODEC_BATCH_BYTES / (BRK_CODEC_HEADER + BRK_CODEC_REQUEST_FIXED) + 1)
/* Python's signal handlers get a look after this many records */
#define BRK_MANY_SIGNAL_RECORDS 64

static void brk_many_drop(PyObject *hold[][4], int k)
{
    for (int j = 0; j < k; j++)
        for (int i = 0; i < 4; i++)
            Py_CLEAR(hold[j][i]);
}

/* The next request of call_many as C writes it: 1 (cargs, hold and *size set), 0 (not for C), -1 (an exception). */
static int brk_many_request(PyObject *set, PyTypeObject *buffer_type, long long max_frame, uint64_t max_record,
                            brk_codec_arg cargs[4], PyObject *hold[4], uint64_t *size)
{
    for (int i = 0; i < 4; i++)
        hold[i] = NULL;
    if (!PyTuple_CheckExact(set) || PyTuple_GET_SIZE(set) > 4)
        return 0;
    Py_ssize_t argc = PyTuple_GET_SIZE(set);
    for (int i = 0; i < 4; i++) {
        if (i >= argc) {
            cargs[i] = (brk_codec_arg){ BRK_K_NONE, 0, NULL, 0 };
            continue;
        }
        int ok = brk_call_arg(PyTuple_GET_ITEM(set, i), buffer_type, &cargs[i], &hold[i]);
        if (ok <= 0) {
            for (int j = 0; j <= i; j++)
                Py_CLEAR(hold[j]);
            return ok;
        }
    }
    *size = brk_codec_request_size(cargs);
    if (*size > max_record || *size - BRK_CODEC_HEADER > (uint64_t)max_frame) {
        for (int j = 0; j < 4; j++)
            Py_CLEAR(hold[j]);
        return 0;
    }
    return 1;
}

/* Book (1) or unbook (0) request ids first..first+k-1 in the protocol's outstanding. -1: an exception. */
static int brk_many_book(PyObject *outstanding, uint64_t first, int k, int book)
{
    for (int j = 0; j < k; j++) {
        PyObject *key = PyLong_FromUnsignedLongLong(first + (uint64_t)j);
        int rc = !key ? -1 : book ? PyDict_SetItem(outstanding, key, Py_True) : PyDict_DelItem(outstanding, key);
        Py_XDECREF(key);
        if (rc < 0) {
            if (!book && PyErr_ExceptionMatches(PyExc_KeyError)) {
                PyErr_Clear();
                continue;
            }
            return -1;
        }
    }
    return 0;
}

/*
 * call_many(tx, rx, first_rid, code, handle, argsets, results, sent, done, limit, window,
 *           buffer_type, wait_ns, max_frame, outstanding, odd) -> (sent, done, outcome):
 * many asynchronous calls of one function on a shared-memory session,
 * pipelined, in C for the common case. Request i is argsets[i] (a tuple) with
 * id first_rid + i; `sent` of them are sent and `done` have their reply
 * (results[i] is not None); it sends on while fewer than `window` are in
 * flight and i < limit, packing requests into records of up to
 * BRK_CODEC_BATCH_BYTES, and takes the replies that come: a simple one (see
 * brk_call_reply) sets results[i] to its status, its writes applied; ids are
 * booked in `outstanding` (the protocol's) as they are sent and unbooked as
 * their simple reply is taken. It returns with the GIL held, when every call
 * up to limit has its reply (BRK_OK), when a wait of wait_ns passed
 * (BRK_TIMEOUT), for BRK_MANY_UNUSUAL or BRK_MANY_ODD (above), or on a ring's
 * failure; waits spin with the GIL for up to 10 us, then sleep without it.
 * argsets and results must be the caller's own lists, not shared.
 */
static PyObject *brk_py_call_many(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    brk_ring *tx = brk_py_begin(args, nargs, 16,
                                "call_many(tx, rx, first_rid, code, handle, argsets, results, sent, done, limit, "
                                "window, buffer_type, wait_ns, max_frame, outstanding, odd)");
    if (!tx)
        return NULL;
    brk_ring *rx = brk_py_ring(args[1]);
    if (!rx)
        return NULL;
    unsigned long long first = PyLong_AsUnsignedLongLong(args[2]);
    if (first == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    long long code, handle, sent, done, limit, window, wait_ns, max_frame;
    if (!brk_py_int64(args[3], &code) || !brk_py_int64(args[4], &handle) || !brk_py_int64(args[7], &sent) ||
        !brk_py_int64(args[8], &done) || !brk_py_int64(args[9], &limit) || !brk_py_int64(args[10], &window) ||
        !brk_py_int64(args[12], &wait_ns) || !brk_py_int64(args[13], &max_frame))
        return NULL;
    PyObject *argsets = args[5], *results = args[6], *outstanding = args[14], *odd = args[15];
    if (!PyList_CheckExact(argsets) || !PyList_CheckExact(results) || !PyType_Check(args[11]) ||
        !PyDict_CheckExact(outstanding) || !PyList_CheckExact(odd)) {
        PyErr_SetString(PyExc_TypeError, "call_many: argsets, results and odd are lists, buffer_type a class, "
                                         "outstanding a dict");
        return NULL;
    }
    Py_ssize_t total = PyList_GET_SIZE(argsets);
    if (PyList_GET_SIZE(results) != total || limit < 0 || limit > total || sent < 0 || sent > limit || done < 0 ||
        done > sent || window < 1 || max_frame < 0 || first == 0 || first + (unsigned long long)total < first) {
        PyErr_SetString(PyExc_ValueError, "call_many: inconsistent counts");
        return NULL;
    }
    if (!brk_s_max_length && !(brk_s_max_length = PyUnicode_InternFromString("max_length")))
        return NULL;
    if (!brk_s_value && !(brk_s_value = PyUnicode_InternFromString("value")))
        return NULL;
    PyTypeObject *buffer_type = (PyTypeObject *)args[11];
    if (code < INT32_MIN || code > INT32_MAX || handle < 0 || handle > UINT32_MAX)
        return Py_BuildValue("(LLi)", sent, done, sent < limit ? BRK_MANY_UNUSUAL : BRK_OK);
    unsigned char *copy = PyMem_Malloc(BRK_MANY_COPY);
    if (!copy)
        return PyErr_NoMemory();
    brk_codec_arg cargs[BRK_MANY_FRAMES][4];
    PyObject *hold[BRK_MANY_FRAMES][4];
    uint64_t sizes[BRK_MANY_FRAMES];
    int rc = BRK_OK, records = 0, error = 0;
    for (;;) {
        /* the requests the window lets go, packed into records */
        int full = 0;
        while (sent < limit && sent - done < window) {
            int k = 0, unusual = 0;
            uint64_t bytes = 0;
            while (k < BRK_MANY_FRAMES && sent + k < limit && sent + k - done < window) {
                int ok = brk_many_request(PyList_GET_ITEM(argsets, sent + k), buffer_type, max_frame,
                                          tx->max_record, cargs[k], hold[k], &sizes[k]);
                if (ok < 0) {
                    brk_many_drop(hold, k);
                    error = 1;
                    goto out;
                }
                if (!ok) {
                    unusual = 1;
                    break;
                }
                if (k > 0 && bytes + sizes[k] > BRK_CODEC_BATCH_BYTES) {
                    brk_many_drop(hold + k, 1);
                    break;
                }
                bytes += sizes[k++];
            }
            if (k == 0) {
                rc = unusual ? BRK_MANY_UNUSUAL : BRK_OK;
                goto out;
            }
            rc = brk_claim(tx, bytes);
            if (rc == BRK_FULL) {
                brk_many_drop(hold, k);
                if (sent > done) {
                    full = 1; /* the replies first: the ring empties as the server reads */
                    break;
                }
                BRK_PY_BLOCKING(tx, rc = brk_wait_space(tx, bytes, wait_ns));
                if (rc != BRK_OK)
                    goto out;
                continue;
            }
            if (rc != BRK_OK) {
                brk_many_drop(hold, k);
                goto out;
            }
            if (brk_many_book(outstanding, first + (uint64_t)sent, k, 1) < 0) {
                PyObject *et, *ev, *tb;
                PyErr_Fetch(&et, &ev, &tb);
                brk_abort(tx);
                brk_many_book(outstanding, first + (uint64_t)sent, k, 0);
                PyErr_Restore(et, ev, tb);
                brk_many_drop(hold, k);
                error = 1;
                goto out;
            }
            unsigned char *p = tx->wptr;
            for (int j = 0; j < k; j++) {
                brk_codec_put_request(p, first + (uint64_t)(sent + j), (int32_t)code, (uint32_t)handle, 1, cargs[j]);
                p += sizes[j];
            }
            rc = brk_commit(tx, bytes);
            brk_many_drop(hold, k);
            sent += k;
            if (rc != BRK_OK)
                goto out;
            if (unusual)
                break; /* its replies meanwhile, then back for it */
        }
        if (done == sent) { /* all sent have their reply: finished, or the next is Python's */
            rc = sent < limit ? BRK_MANY_UNUSUAL : BRK_OK;
            goto out;
        }
        /* the replies: what is there; a wait only when nothing more can go */
        rc = brk_peek(rx);
        if (rc == BRK_EMPTY) {
            if (!full && sent < limit && sent - done < window)
                continue;
            rc = brk_py_await(rx, wait_ns);
            if (rc == BRK_OK)
                rc = brk_peek(rx);
        }
        if (rc != BRK_OK)
            goto out;
        uint64_t n = rx->rlen;
        if (n > BRK_MANY_COPY) {
            PyObject *rec = PyBytes_FromStringAndSize((const char *)rx->rptr, (Py_ssize_t)n);
            if (!rec || PyList_Append(odd, rec) < 0) {
                Py_XDECREF(rec);
                brk_unpeek(rx);
                error = 1;
                goto out;
            }
            Py_DECREF(rec);
            rc = brk_release(rx);
            if (rc == BRK_OK)
                rc = BRK_MANY_ODD;
            goto out;
        }
        memcpy(copy, rx->rptr, (size_t)n); /* the server could change the ring under us: read the copy */
        rc = brk_release(rx);
        if (rc != BRK_OK)
            goto out;
        uint64_t at = 0;
        while (at < n) {
            const unsigned char *h = copy + at;
            if (n - at < BRK_CODEC_HEADER)
                break;
            uint64_t flen = BRK_CODEC_HEADER + brk_codec_ld(h + 8, 4), rid = brk_codec_ld(h + 16, 8);
            if (flen > n - at || rid < first || rid - first >= (uint64_t)sent)
                break;
            Py_ssize_t i = (Py_ssize_t)(rid - first);
            if (PyList_GET_ITEM(results, i) != Py_None)
                break; /* a second reply: Python says what is wrong */
            PyObject *set = Py_NewRef(PyList_GET_ITEM(argsets, i));
            PyObject *status = PyTuple_CheckExact(set)
                                   ? brk_call_reply(h, flen, rid, &PyTuple_GET_ITEM(set, 0), PyTuple_GET_SIZE(set),
                                                    buffer_type)
                                   : NULL;
            Py_DECREF(set);
            if (!status) {
                    error = PyErr_Occurred() != NULL;
                break; /* not the simple reply: Python takes it, and what follows */
            }
            PyObject *was = PyList_GET_ITEM(results, i); /* None */
            PyList_SET_ITEM(results, i, status);
            Py_DECREF(was);
            if (brk_many_book(outstanding, rid, 1, 0) < 0) {
                error = 1;
                break;
            }
            done++;
            at += flen;
        }
        if (error)
            goto out; /* out of memory: the rest of the record is lost, and with it the session */
        if (at < n) {
            PyObject *rest = PyBytes_FromStringAndSize((const char *)copy + at, (Py_ssize_t)(n - at));
            if (!rest || PyList_Append(odd, rest) < 0) {
                Py_XDECREF(rest);
                error = 1;
                goto out;
            }
            Py_DECREF(rest);
            rc = BRK_MANY_ODD;
            goto out;
        }
        if (++records % BRK_MANY_SIGNAL_RECORDS == 0 && PyErr_CheckSignals() < 0) {
            error = 1;
            goto out;
        }
    }
out:
    PyMem_Free(copy);
    if (error)
        return NULL;
    return Py_BuildValue("(LLi)", sent, done, rc);
}

static PyMethodDef brk_py_methods[] = {
    {"ready", (PyCFunction)(void (*)(void))brk_py_ready, METH_FASTCALL, "ready(ring) -> bool | outcome"},
    {"call", (PyCFunction)(void (*)(void))brk_py_call, METH_FASTCALL,
     "call(tx, rx, rid, code, handle, args, buffer_type, wait_ns, max_frame) -> int | bytes | NotImplemented | tuple"},
    {"call_many", (PyCFunction)(void (*)(void))brk_py_call_many, METH_FASTCALL,
     "call_many(tx, rx, first_rid, code, handle, argsets, results, sent, done, limit, window, buffer_type, wait_ns, "
     "max_frame, outstanding, odd) -> (sent, done, outcome)"},
    {"send", (PyCFunction)(void (*)(void))brk_py_send, METH_FASTCALL, "send(ring, data) -> outcome"},
    {"recv", (PyCFunction)(void (*)(void))brk_py_recv, METH_FASTCALL, "recv(ring) -> bytes | outcome"},
    {"recv_wait", (PyCFunction)(void (*)(void))brk_py_recv_wait, METH_FASTCALL,
     "recv_wait(ring, timeout_ns) -> bytes | outcome"},
    {"wait_data", (PyCFunction)(void (*)(void))brk_py_wait_data, METH_FASTCALL, "wait_data(ring, timeout_ns) -> outcome"},
    {"send_many", (PyCFunction)(void (*)(void))brk_py_send_many, METH_FASTCALL,
     "send_many(ring, sequence, start) -> (sent, outcome)"},
    {"recv_many", (PyCFunction)(void (*)(void))brk_py_recv_many, METH_FASTCALL,
     "recv_many(ring, max) -> list[bytes] | outcome"},
    {"topic_send", (PyCFunction)(void (*)(void))brk_py_topic_send, METH_FASTCALL,
     "topic_send(ring, seq, data) -> outcome"},
    {"topic_send_many", (PyCFunction)(void (*)(void))brk_py_topic_send_many, METH_FASTCALL,
     "topic_send_many(ring, items, first_seq, start) -> (sent, outcome)"},
    {"topic_recv", (PyCFunction)(void (*)(void))brk_py_topic_recv, METH_FASTCALL,
     "topic_recv(ring, last_seq) -> (seq, bytes) | outcome"},
    {"topic_recv_many", (PyCFunction)(void (*)(void))brk_py_topic_recv_many, METH_FASTCALL,
     "topic_recv_many(ring, max, last_seq) -> (list, last_seq, outcome)"},
    {"wait_any", (PyCFunction)(void (*)(void))brk_py_wait_any, METH_FASTCALL,
     "wait_any(rings, bell, seen, spin_ns, timeout_ns) -> index | None"},
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
