/* ring.c: the rings' per-message calls and topic records as CPython fast calls; everything else goes through cffi. */

/*
 * Why this file exists: a cffi call costs about 320 ns on this project's
 * 2-core machines (argument tuple, per-argument conversion, and a GIL release
 * and re-acquire around every call), against about 60 ns for a METH_FASTCALL
 * function. At 64-byte messages that is the difference between 1 and 3+
 * million messages a second, so the three per-message calls live here.
 * They hold the GIL (they do not block) except around long copies and waits,
 * which they count in r->busy (see BRK_PY_BLOCKING).
 * They are compiled into the same extension as the cffi module; src/shmbroker/core/ring.py
 * turns the method table into callables once, at import.
 *
 * The first argument of each is the address of a brk_ring handle, which only
 * src/shmbroker/core/ring.py passes. The result is bytes or an int outcome (brk_ring.h).
 */

#include "brk_py.h" /* first: it includes Python.h */
#include <stdatomic.h>
#include <errno.h>


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

/* ---- a byte stream in records: a big frame of the framework ----
 * A frame bigger than a record travels as consecutive records, each a piece of the session's byte
 * stream. send_stream writes it straight from its parts (the head and each argument's buffer),
 * recv_stream copies the records straight into the one buffer the frame is gathered in. */

/* At most this many parts: a REQUEST's head and four payloads. */
#define BRK_PY_PARTS 8

/* Copy bytes [at, at + n) of the concatenation of parts v[0..np) to dst. */
static void brk_py_gather(unsigned char *dst, const Py_buffer *v, Py_ssize_t np, uint64_t at, uint64_t n)
{
    for (Py_ssize_t i = 0; i < np && n; i++) {
        uint64_t len = (uint64_t)v[i].len;
        if (at >= len) {
            at -= len;
            continue;
        }
        uint64_t k = len - at < n ? len - at : n;
        memcpy(dst, (const char *)v[i].buf + at, (size_t)k);
        dst += k;
        n -= k;
        at = 0;
    }
}

/*
 * send_stream(ring, parts, at, chunk) -> 0 | (outcome, at, need): the concatenation of parts (a
 * tuple of C-contiguous buffers) from byte `at` on, in records of up to `chunk` bytes (at most the
 * ring's max_record), each copied straight from the parts into its claimed record (one copy, the
 * big ones without the GIL). 0: all of it is in. Otherwise it stopped at byte `at` (everything
 * before it is in): BRK_FULL (wait for `need` bytes of room, then call again from `at`) or the
 * ring's outcome.
 */
static PyObject *brk_py_send_stream(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    brk_ring *r = brk_py_begin(args, nargs, 4, "send_stream(ring, parts, at, chunk)");
    if (!r)
        return NULL;
    long long at0, chunk;
    if (!brk_py_int64(args[2], &at0) || !brk_py_int64(args[3], &chunk))
        return NULL;
    if (!PyTuple_Check(args[1]) || PyTuple_GET_SIZE(args[1]) > BRK_PY_PARTS || at0 < 0 || chunk < 1) {
        PyErr_Format(PyExc_ValueError, "send_stream: parts is a tuple of at most %d buffers, at >= 0, chunk >= 1",
                     BRK_PY_PARTS);
        return NULL;
    }
    Py_ssize_t np = PyTuple_GET_SIZE(args[1]), got = 0;
    Py_buffer v[BRK_PY_PARTS];
    uint64_t total = 0;
    PyObject *out = NULL;
    for (; got < np; got++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(args[1], got), &v[got], PyBUF_C_CONTIGUOUS) < 0)
            goto done;
        total += (uint64_t)v[got].len;
    }
    if ((uint64_t)at0 > total) {
        PyErr_SetString(PyExc_ValueError, "send_stream: at is past the end of the parts");
        goto done;
    }
    uint64_t at = (uint64_t)at0, step = (uint64_t)chunk < r->max_record ? (uint64_t)chunk : r->max_record;
    while (at < total) {
        uint64_t n = total - at < step ? total - at : step;
        int rc = brk_claim(r, n);
        if (rc) {
            out = Py_BuildValue("(iKK)", rc, (unsigned long long)at, (unsigned long long)n);
            goto done;
        }
        if (n >= BRK_PY_NOGIL_BYTES)
            BRK_PY_BLOCKING(r, brk_py_gather(r->wptr, v, np, at, n));
        else
            brk_py_gather(r->wptr, v, np, at, n);
        if ((rc = brk_commit(r, n)) != BRK_OK) {
            out = Py_BuildValue("(iKK)", rc, (unsigned long long)at, (unsigned long long)n);
            goto done;
        }
        at += n;
    }
    out = PyLong_FromLong(0);
done:
    for (Py_ssize_t i = 0; i < got; i++)
        PyBuffer_Release(&v[i]);
    return out;
}


/*
 * recv_stream(ring, target, at) -> (at, rest) | outcome: the records already in the ring copied
 * straight into target (a writable buffer) from byte `at` on, until it is full or the ring has no
 * record now (the big ones without the GIL). `at` is where target's filled part ends now; rest is
 * None, or the bytes of the last record that did not fit (the stream goes on after target: the
 * caller reads them as it reads any record). An int: the ring's outcome (an error; nothing more
 * was taken).
 */
static PyObject *brk_py_recv_stream(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    brk_ring *r = brk_py_begin(args, nargs, 3, "recv_stream(ring, target, at)");
    if (!r)
        return NULL;
    long long at0;
    if (!brk_py_int64(args[2], &at0))
        return NULL;
    Py_buffer t;
    if (PyObject_GetBuffer(args[1], &t, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    PyObject *out = NULL, *rest = NULL;
    if (at0 < 0 || at0 > (long long)t.len) {
        PyErr_SetString(PyExc_ValueError, "recv_stream: at is outside the target");
        goto done;
    }
    uint64_t at = (uint64_t)at0, cap = (uint64_t)t.len;
    while (at < cap) {
        int rc = brk_peek(r);
        if (rc == BRK_EMPTY)
            break;
        if (rc != BRK_OK) {
            out = PyLong_FromLong(rc);
            goto done;
        }
        uint64_t len = r->rlen, n = len < cap - at ? len : cap - at;
        char *to = (char *)t.buf + at;
        if (n >= BRK_PY_NOGIL_BYTES)
            BRK_PY_BLOCKING(r, memcpy(to, r->rptr, (size_t)n));
        else
            memcpy(to, r->rptr, (size_t)n);
        if (n < len) {
            rest = PyBytes_FromStringAndSize((const char *)r->rptr + n, (Py_ssize_t)(len - n));
            if (!rest) {
                brk_unpeek(r); /* the record stays first in line; target's copy is overwritten next time */
                goto done;
            }
        }
        if ((rc = brk_release(r)) != BRK_OK) {
            Py_CLEAR(rest);
            out = PyLong_FromLong(rc);
            goto done;
        }
        at += n;
        if (rest)
            break;
    }
    out = Py_BuildValue("(KO)", (unsigned long long)at, rest ? rest : Py_None);
done:
    Py_XDECREF(rest);
    PyBuffer_Release(&t);
    return out;
}

/* ---- topics: a publisher's ring (src/shmbroker/services/topics/wire.py RECORD_HEAD) ----
 * A record is a BRK_TOPIC_HEAD-byte header, then the message's meta and payload:
 * sequence number u64, meta length u32, payload bytes still to come in later
 * fragments u32, fragment index u32 (all little-endian). topic_publish writes
 * any message, fragments included; the readers take whole messages (one record)
 * only, and leave anything else to Python (src/shmbroker/services/topics/client.py),
 * which also says what is wrong with a bad record. */

/* Write one plain message: the header and data, straight into a claimed record. */
static int brk_topic_put(brk_ring *r, uint64_t seq, const char *p, Py_ssize_t n)
{
    int rc = brk_claim(r, BRK_TOPIC_HEAD + (uint64_t)n);
    if (rc)
        return rc;
    unsigned char *w = r->wptr;
    brk_frame_st(w, seq, 8);
    memset(w + 8, 0, 12); /* no meta, nothing more to come, fragment 0 */
    memcpy(w + BRK_TOPIC_HEAD, p, (size_t)n);
    return brk_commit(r, BRK_TOPIC_HEAD + (uint64_t)n);
}

/* A fragment's record of message seq: header (meta length, payload bytes still to come after this
 * record, fragment number), then meta (the first only), then its part of the payload, copied from p
 * (without the GIL for a big one: counted in r->busy). The ring's outcome. */
static int brk_topic_fragment(brk_ring *r, uint64_t seq, const char *meta, uint64_t mlen, const char *p, uint64_t n,
                              uint64_t more, uint32_t k)
{
    uint64_t len = BRK_TOPIC_HEAD + mlen + n;
    int rc = brk_claim(r, len);
    if (rc)
        return rc;
    unsigned char *w = r->wptr;
    brk_frame_st(w, seq, 8);
    brk_frame_st(w + 8, mlen, 4);
    brk_frame_st(w + 12, more, 4);
    brk_frame_st(w + 16, k, 4);
    if (mlen)
        memcpy(w + BRK_TOPIC_HEAD, meta, (size_t)mlen);
    unsigned char *dst = w + BRK_TOPIC_HEAD + mlen;
    if (n >= BRK_PY_NOGIL_BYTES)
        BRK_PY_BLOCKING(r, memcpy(dst, p, (size_t)n));
    else if (n)
        memcpy(dst, p, (size_t)n);
    return brk_commit(r, len);
}

/*
 * topic_publish(ring, seq, data, meta, k) -> 0 | (outcome, k, need): message seq (data: any
 * C-contiguous buffer, meta: bytes) written from the caller's buffer straight into the ring's
 * records, from fragment k on (0: all of it): one record if it fits, else fragments (the first
 * holds the meta; RECORD_HEAD's `more` counts the payload bytes after each). One copy, no
 * Python object per fragment. It stops at the first fragment the ring will not take now: the
 * outcome (BRK_FULL: wait for `need` bytes of room, then call again with k; anything else is an
 * error), k the fragment it stopped at (0: nothing of the message was written).
 */
static PyObject *brk_py_topic_publish(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    brk_ring *r = brk_py_begin(args, nargs, 5, "topic_publish(ring, seq, data, meta, k)");
    if (!r)
        return NULL;
    unsigned long long seq = PyLong_AsUnsignedLongLong(args[1]);
    long long k0;
    if ((seq == (unsigned long long)-1 && PyErr_Occurred()) || !brk_py_int64(args[4], &k0))
        return NULL;
    if (!PyBytes_CheckExact(args[3]) || k0 < 0 || k0 > UINT32_MAX) {
        PyErr_SetString(PyExc_TypeError, "topic_publish: meta is bytes, k a fragment number");
        return NULL;
    }
    const char *meta = PyBytes_AS_STRING(args[3]);
    uint64_t mlen = (uint64_t)PyBytes_GET_SIZE(args[3]);
    Py_buffer v;
    if (PyObject_GetBuffer(args[2], &v, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    uint64_t total = (uint64_t)v.len, max = r->max_record;
    PyObject *out = NULL;
    if (max <= BRK_TOPIC_HEAD + mlen) { /* no room for a fragment's payload: it would never end */
        out = Py_BuildValue("(iIK)", BRK_TOOBIG, (unsigned)k0, (unsigned long long)(BRK_TOPIC_HEAD + mlen));
        goto done;
    }
    uint64_t first = max - BRK_TOPIC_HEAD - mlen, room = max - BRK_TOPIC_HEAD;
    uint32_t k = (uint32_t)k0;
    for (;;) {
        uint64_t at = k == 0 ? 0 : first + (uint64_t)(k - 1) * room; /* where fragment k starts */
        if (k && at >= total)
            break; /* (k past the last: nothing left) */
        uint64_t n = k == 0 ? (total < first ? total : first) : (total - at < room ? total - at : room);
        uint64_t more = total - at - n;
        if (more > UINT32_MAX && k == 0) { /* RECORD_HEAD counts what is left in 32 bits */
            out = Py_BuildValue("(iIK)", BRK_TOOBIG, 0u, (unsigned long long)total);
            goto done;
        }
        int rc = brk_topic_fragment(r, seq, k ? NULL : meta, k ? 0 : mlen, (const char *)v.buf + at, n,
                                    more > UINT32_MAX ? UINT32_MAX : more, k);
        if (rc) {
            out = Py_BuildValue("(iIK)", rc, (unsigned)k, (unsigned long long)(BRK_TOPIC_HEAD + (k ? 0 : mlen) + n));
            goto done;
        }
        if (!more)
            break;
        k++;
    }
    out = PyLong_FromLong(0);
done:
    PyBuffer_Release(&v);
    return out;
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

/* The head of the next record, if it is a whole message (one record, fragment 0, nothing to come)
 * numbered after last, with at most max_meta bytes of meta: 1 (*seq, *mlen set; the record stays
 * peeked), 0 (it is not: unpeeked, *rc BRK_NOTREADY, Python reads it) or 0 with *rc the ring's outcome. */
static int brk_topic_whole(brk_ring *r, uint64_t last, uint64_t max_meta, uint64_t *seq, uint64_t *mlen, int *rc)
{
    *rc = brk_peek(r);
    if (*rc != BRK_OK)
        return 0; /* BRK_EMPTY, or anything else: lossless rings never give BRK_LOST */
    unsigned char head[BRK_TOPIC_HEAD];
    uint64_t n = r->rlen;
    if (n >= BRK_TOPIC_HEAD) {
        memcpy(head, r->rptr, BRK_TOPIC_HEAD); /* one copy: the publisher may change the ring meanwhile */
        *seq = brk_frame_ld(head, 8);
        *mlen = brk_frame_ld(head + 8, 4);
        if (!brk_frame_ld(head + 12, 4) && !brk_frame_ld(head + 16, 4) && *seq > last && *mlen <= max_meta &&
            *mlen <= n - BRK_TOPIC_HEAD)
            return 1;
    }
    brk_unpeek(r);
    *rc = BRK_NOTREADY;
    return 0;
}

/* The next record, if it is a plain message numbered after *last: its payload as new bytes
 * (*last moved on), released; else NULL with *rc: the ring's outcome, or BRK_NOTREADY for a
 * record Python must read (it stays first in line). NULL with an exception: out of memory.
 * With meta (not NULL), a whole message with up to BRK_TOPIC_META bytes of meta is taken too: *meta
 * its meta (new bytes), or NULL for none. */
static PyObject *brk_topic_take(brk_ring *r, uint64_t *last, int *rc, PyObject **meta)
{
    uint64_t seq, mlen;
    if (!brk_topic_whole(r, *last, meta ? BRK_TOPIC_META : 0, &seq, &mlen, rc))
        return NULL;
    const char *at = (const char *)r->rptr + BRK_TOPIC_HEAD;
    uint64_t n = r->rlen - BRK_TOPIC_HEAD - mlen;
    PyObject *m = mlen ? PyBytes_FromStringAndSize(at, (Py_ssize_t)mlen) : NULL;
    PyObject *out = mlen && !m ? NULL : PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (!out) {
        Py_XDECREF(m);
        brk_unpeek(r);
        return NULL;
    }
    if (n >= BRK_PY_NOGIL_BYTES)
        BRK_PY_BLOCKING(r, memcpy(PyBytes_AS_STRING(out), at + mlen, (size_t)n));
    else
        memcpy(PyBytes_AS_STRING(out), at + mlen, (size_t)n);
    *rc = brk_release(r);
    if (*rc) {
        Py_XDECREF(m);
        Py_DECREF(out);
        return NULL;
    }
    *last = seq;
    if (meta)
        *meta = m;
    return out;
}

/* topic_recv(ring, last_seq) -> (seq, bytes) | (seq, bytes, meta) | int: the next whole message
 * numbered after last_seq (with its meta when it has one: a numpy array's), or an outcome
 * (BRK_EMPTY; BRK_NOTREADY: the next record is Python's to read: a fragment, or anything odd). */
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
    PyObject *meta = NULL;
    PyObject *out = brk_topic_take(r, &seq, &rc, &meta);
    if (!out)
        return PyErr_Occurred() ? NULL : PyLong_FromLong(rc);
    PyObject *t = PyTuple_New(meta ? 3 : 2);
    PyObject *num = t ? PyLong_FromUnsignedLongLong(seq) : NULL;
    if (!num) {
        Py_XDECREF(t);
        Py_DECREF(out);
        Py_XDECREF(meta);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, num);
    PyTuple_SET_ITEM(t, 1, out);
    if (meta)
        PyTuple_SET_ITEM(t, 2, meta);
    return t;
}

/*
 * topic_recv_into(ring, last_seq, out) -> (seq, nbytes, meta) | (BRK_TOOBIG, nbytes) | int: the next
 * whole message numbered after last_seq, its payload copied straight from the ring into `out` (any
 * writable C-contiguous buffer) and released; meta b"" for none. A message bigger than `out` stays
 * in the ring: (BRK_TOOBIG, its size). An outcome as topic_recv's otherwise.
 */
static PyObject *brk_py_topic_recv_into(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    brk_ring *r = brk_py_begin(args, nargs, 3, "topic_recv_into(ring, last_seq, out)");
    if (!r)
        return NULL;
    unsigned long long last = PyLong_AsUnsignedLongLong(args[1]);
    if (last == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    Py_buffer v;
    if (PyObject_GetBuffer(args[2], &v, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0)
        return NULL;
    uint64_t seq, mlen;
    int rc;
    PyObject *out = NULL;
    if (!brk_topic_whole(r, last, BRK_TOPIC_META, &seq, &mlen, &rc)) {
        out = PyLong_FromLong(rc);
        goto done;
    }
    const char *at = (const char *)r->rptr + BRK_TOPIC_HEAD;
    uint64_t n = r->rlen - BRK_TOPIC_HEAD - mlen;
    if (n > (uint64_t)v.len) {
        brk_unpeek(r);
        out = Py_BuildValue("(iK)", BRK_TOOBIG, (unsigned long long)n);
        goto done;
    }
    PyObject *meta = PyBytes_FromStringAndSize(at, (Py_ssize_t)mlen);
    if (!meta) {
        brk_unpeek(r);
        goto done;
    }
    if (n >= BRK_PY_NOGIL_BYTES)
        BRK_PY_BLOCKING(r, memcpy(v.buf, at + mlen, (size_t)n));
    else
        memcpy(v.buf, at + mlen, (size_t)n);
    rc = brk_release(r);
    out = rc ? PyLong_FromLong(rc) : Py_BuildValue("(KKN)", (unsigned long long)seq, (unsigned long long)n, meta);
    if (rc)
        Py_DECREF(meta);
done:
    PyBuffer_Release(&v);
    return out;
}

/*
 * topic_recv_batch(ring, last_seq, max, item, publisher) -> (items, last_seq, outcome): up to max
 * whole messages already there, numbered after last_seq, in one call, each an `item` (a tuple
 * subclass of four: publisher, seq, meta, payload; src/shmbroker/services/topics/broker.py _Item, what the
 * server's relay queues for its subscribers).
 * outcome says why it stopped: BRK_OK (max reached), BRK_EMPTY, BRK_NOTREADY (the next record is
 * not a whole message: Python reads it), or the ring's.
 */
static PyObject *brk_py_topic_recv_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    brk_ring *r = brk_py_begin(args, nargs, 5, "topic_recv_batch(ring, last_seq, max, item, publisher)");
    if (!r)
        return NULL;
    if (!PyType_Check(args[3]) || !PyType_IsSubtype((PyTypeObject *)args[3], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "topic_recv_batch: item is a tuple type");
        return NULL;
    }
    PyTypeObject *item_type = (PyTypeObject *)args[3];
    PyObject *publisher = args[4];
    unsigned long long last = PyLong_AsUnsignedLongLong(args[1]);
    if (last == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t max = PyLong_AsSsize_t(args[2]);
    if (max == -1 && PyErr_Occurred())
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
        PyObject *meta = NULL;
        PyObject *payload = brk_topic_take(r, &seq, &rc, &meta);
        if (!payload) {
            if (PyErr_Occurred()) {
                Py_DECREF(list);
                return NULL;
            }
            break;
        }
        PyObject *s = PyLong_FromUnsignedLongLong(seq);
        PyObject *m = meta ? meta : PyBytes_FromStringAndSize(NULL, 0);
        PyObject *item = s && m ? item_type->tp_alloc(item_type, 4) : NULL;
        if (item) { /* the four items, set here (they are stolen) */
            PyTuple_SET_ITEM(item, 0, Py_NewRef(publisher));
            PyTuple_SET_ITEM(item, 1, s);
            PyTuple_SET_ITEM(item, 2, m);
            PyTuple_SET_ITEM(item, 3, payload);
        } else {
            Py_XDECREF(s);
            Py_XDECREF(m);
            Py_DECREF(payload);
        }
        if (!item || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(item);
        rc = BRK_OK;
    }
    return Py_BuildValue("(NKi)", list, (unsigned long long)seq, rc);
}

/* A relayed batch (the FETCH's reply, src/shmbroker/services/topics/broker.py _answer): u64 lost, then per
 * message u32 publisher, u64 sequence, u32 meta length, u32 payload length, the meta, the payload. */
#define BRK_TOPIC_BATCH_HEAD 8
#define BRK_TOPIC_MESSAGE_HEAD 20

/* One item of topic_unpack: a Received (type, 4 items: publisher, seq, payload, topic) for a message
 * with no meta, else the tuple (publisher, seq, meta, payload); NULL with an exception. */
static PyObject *brk_topic_item(PyTypeObject *received, PyObject *topic, uint32_t pub, uint64_t seq,
                                const char *meta, uint64_t mlen, const char *data, uint64_t dlen)
{
    PyObject *p = PyLong_FromUnsignedLong(pub), *s = PyLong_FromUnsignedLongLong(seq);
    PyObject *d = PyBytes_FromStringAndSize(data, (Py_ssize_t)dlen);
    PyObject *m = mlen || !seq ? PyBytes_FromStringAndSize(meta, (Py_ssize_t)mlen) : NULL;
    PyObject *out = NULL;
    if (!p || !s || !d || ((mlen || !seq) && !m))
        goto fail;
    if (m) { /* a control message, or one with meta: Python reads it */
        out = PyTuple_Pack(4, p, s, m, d);
        Py_DECREF(p);
        Py_DECREF(s);
        Py_DECREF(m);
        Py_DECREF(d);
        return out;
    }
    out = received->tp_alloc(received, 4); /* a Received: a tuple of its type, its four items set here */
    if (!out)
        goto fail;
    PyTuple_SET_ITEM(out, 0, p);
    PyTuple_SET_ITEM(out, 1, s);
    PyTuple_SET_ITEM(out, 2, d);
    PyTuple_SET_ITEM(out, 3, Py_NewRef(topic));
    return out;
fail:
    Py_XDECREF(p);
    Py_XDECREF(s);
    Py_XDECREF(d);
    Py_XDECREF(m);
    return NULL;
}

/* topic_pack's answer as parts: the batch head and each message's head and meta (and the small
 * payloads) copied into runs of bytes, each payload of `big` bytes or more its own part (the queued
 * bytes itself). `small`: the bytes the runs take in all. A tuple, or NULL with an exception. */
static PyObject *brk_topic_pack_parts(PyObject *const *items, Py_ssize_t n, uint64_t small, unsigned long long lost,
                                      Py_ssize_t big)
{
    PyObject *parts = PyList_New(0), *out = NULL;
    unsigned char *run = parts ? PyMem_Malloc((size_t)small) : NULL;
    if (!run) {
        if (parts)
            PyErr_NoMemory();
        goto done;
    }
    uint64_t at = 0, from = 0; /* the run so far: run[from, at) not yet a part */
    brk_frame_st(run, lost, 8);
    at = BRK_TOPIC_BATCH_HEAD;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pub = PyTuple_GET_ITEM(items[i], 0), *seq = PyTuple_GET_ITEM(items[i], 1);
        PyObject *meta = PyTuple_GET_ITEM(items[i], 2), *data = PyTuple_GET_ITEM(items[i], 3);
        unsigned long pv = PyLong_AsUnsignedLong(pub);
        unsigned long long sv = PyLong_AsUnsignedLongLong(seq);
        if (PyErr_Occurred() || pv > UINT32_MAX) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_OverflowError, "topic_pack: a publisher id over 32 bits");
            goto done;
        }
        Py_ssize_t ml = PyBytes_GET_SIZE(meta), dl = PyBytes_GET_SIZE(data);
        unsigned char *p = run + at;
        brk_frame_st(p, pv, 4);
        brk_frame_st(p + 4, sv, 8);
        brk_frame_st(p + 12, (uint64_t)ml, 4);
        brk_frame_st(p + 16, (uint64_t)dl, 4);
        memcpy(p + BRK_TOPIC_MESSAGE_HEAD, PyBytes_AS_STRING(meta), (size_t)ml);
        at += BRK_TOPIC_MESSAGE_HEAD + (uint64_t)ml;
        if (dl < big) {
            memcpy(run + at, PyBytes_AS_STRING(data), (size_t)dl);
            at += (uint64_t)dl;
            continue;
        }
        PyObject *head = PyBytes_FromStringAndSize((const char *)run + from, (Py_ssize_t)(at - from));
        if (!head || PyList_Append(parts, head) < 0 || PyList_Append(parts, data) < 0) {
            Py_XDECREF(head);
            goto done;
        }
        Py_DECREF(head);
        from = at;
    }
    if (at > from) {
        PyObject *tail = PyBytes_FromStringAndSize((const char *)run + from, (Py_ssize_t)(at - from));
        if (!tail || PyList_Append(parts, tail) < 0) {
            Py_XDECREF(tail);
            goto done;
        }
        Py_DECREF(tail);
    }
    out = PyList_AsTuple(parts);
done:
    PyMem_Free(run);
    Py_XDECREF(parts);
    return out;
}

/*
 * topic_pack(queue, most, room, lost[, big]) -> (bytes | parts, n, first): the reply to a FETCH, packed as
 * topic_unpack reads it: lost, then the first n items of queue (an iterable of (publisher, seq,
 * meta, payload) tuples: src/shmbroker/services/topics/broker.py _Item), at most `most`, as many as fit in
 * room bytes after the header. The queue is not changed: the caller drops its first n. first: the
 * size the first item left out needs (0 when none was left out for room). With big > 0 and a
 * payload of big bytes or more among them, the reply comes as a tuple of parts instead, those
 * payloads not copied (brk_topic_pack_parts): a socket sends them as they are.
 */
static PyObject *brk_py_topic_pack(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4 && nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "topic_pack(queue, most, room, lost[, big])");
        return NULL;
    }
    Py_ssize_t big = nargs == 5 ? PyLong_AsSsize_t(args[4]) : 0;
    Py_ssize_t most = PyLong_AsSsize_t(args[1]);
    long long room = PyLong_AsLongLong(args[2]);
    unsigned long long lost = PyLong_AsUnsignedLongLong(args[3]);
    if (PyErr_Occurred())
        return NULL;
    PyObject *it = PyObject_GetIter(args[0]);
    if (!it)
        return NULL;
    /* first pass: how many fit, and the bytes they take */
    PyObject *items[BRK_PY_BATCH_MAX];
    Py_ssize_t n = 0;
    uint64_t total = BRK_TOPIC_BATCH_HEAD, first = 0, small = BRK_TOPIC_BATCH_HEAD;
    PyObject *x;
    if (most > BRK_PY_BATCH_MAX)
        most = BRK_PY_BATCH_MAX;
    while (n < most && (x = PyIter_Next(it)) != NULL) {
        if (!PyTuple_Check(x) || PyTuple_GET_SIZE(x) != 4 || !PyBytes_Check(PyTuple_GET_ITEM(x, 2)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(x, 3))) {
            Py_DECREF(x);
            PyErr_SetString(PyExc_TypeError, "topic_pack: an item is not (publisher, seq, meta: bytes, data: bytes)");
            goto fail;
        }
        uint64_t size = BRK_TOPIC_MESSAGE_HEAD + (uint64_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(x, 2)) +
                        (uint64_t)PyBytes_GET_SIZE(PyTuple_GET_ITEM(x, 3));
        if (room < 0 || size > (uint64_t)room - (total - BRK_TOPIC_BATCH_HEAD)) {
            first = size;
            Py_DECREF(x);
            break;
        }
        items[n++] = x; /* held until packed */
        total += size;
        Py_ssize_t dl = PyBytes_GET_SIZE(PyTuple_GET_ITEM(x, 3));
        small += size - (big > 0 && dl >= big ? (uint64_t)dl : 0);
    }
    if (PyErr_Occurred())
        goto fail;
    if (small != total) { /* a payload of `big` bytes or more: parts, those payloads not copied */
        PyObject *out = brk_topic_pack_parts(items, n, small, lost, big);
        for (Py_ssize_t i = 0; i < n; i++)
            Py_DECREF(items[i]);
        Py_DECREF(it);
        return out ? Py_BuildValue("(NnK)", out, n, (unsigned long long)first) : NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (!out)
        goto fail;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    brk_frame_st(p, lost, 8);
    p += BRK_TOPIC_BATCH_HEAD;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pub = PyTuple_GET_ITEM(items[i], 0), *seq = PyTuple_GET_ITEM(items[i], 1);
        PyObject *meta = PyTuple_GET_ITEM(items[i], 2), *data = PyTuple_GET_ITEM(items[i], 3);
        unsigned long pv = PyLong_AsUnsignedLong(pub);
        unsigned long long sv = PyLong_AsUnsignedLongLong(seq);
        if (PyErr_Occurred() || pv > UINT32_MAX) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_OverflowError, "topic_pack: a publisher id over 32 bits");
            Py_DECREF(out);
            goto fail;
        }
        Py_ssize_t ml = PyBytes_GET_SIZE(meta), dl = PyBytes_GET_SIZE(data);
        brk_frame_st(p, pv, 4);
        brk_frame_st(p + 4, sv, 8);
        brk_frame_st(p + 12, (uint64_t)ml, 4);
        brk_frame_st(p + 16, (uint64_t)dl, 4);
        p += BRK_TOPIC_MESSAGE_HEAD;
        memcpy(p, PyBytes_AS_STRING(meta), (size_t)ml);
        p += ml;
        memcpy(p, PyBytes_AS_STRING(data), (size_t)dl);
        p += dl;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        Py_DECREF(items[i]);
    Py_DECREF(it);
    return Py_BuildValue("(NnK)", out, n, (unsigned long long)first);
fail:
    for (Py_ssize_t i = 0; i < n; i++)
        Py_DECREF(items[i]);
    Py_DECREF(it);
    return NULL;
}

/*
 * topic_unpack(data, n, received, topic) -> (lost, items, plain): the n messages of a relayed batch
 * (data: bytes or any buffer),
 * each a `received` (a tuple subclass of four: publisher, seq, payload, topic) when it has no meta
 * and is not a control message (seq 0), else (publisher, seq, meta, payload); plain is true when all
 * of them are the first kind. Every length is checked against the batch: ValueError says what is
 * wrong with it (the client makes it ServerGone).
 */
static PyObject *brk_py_topic_unpack(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4 || !PyType_Check(args[2]) || !PyType_IsSubtype((PyTypeObject *)args[2], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "topic_unpack(data: a buffer, n, received: a tuple type, topic)");
        return NULL;
    }
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer v; /* bytes, or a view of the frame the batch was gathered in (read-only: nobody changes it) */
    if (PyObject_GetBuffer(args[0], &v, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *b = (const unsigned char *)v.buf;
    uint64_t size = (uint64_t)v.len;
    PyObject *list = NULL;
    if (size < BRK_TOPIC_BATCH_HEAD) {
        PyErr_SetString(PyExc_ValueError, "a topic batch shorter than its header");
        goto fail;
    }
    list = PyList_New(0);
    if (!list)
        goto fail;
    uint64_t at = BRK_TOPIC_BATCH_HEAD;
    int plain = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (size - at < BRK_TOPIC_MESSAGE_HEAD) {
            PyErr_SetString(PyExc_ValueError, "a topic batch cut short");
            goto fail;
        }
        const unsigned char *h = b + at;
        uint32_t pub = (uint32_t)brk_frame_ld(h, 4);
        uint64_t seq = brk_frame_ld(h + 4, 8), mlen = brk_frame_ld(h + 12, 4), dlen = brk_frame_ld(h + 16, 4);
        at += BRK_TOPIC_MESSAGE_HEAD;
        if (mlen > BRK_TOPIC_META || mlen + dlen > size - at) {
            PyErr_SetString(PyExc_ValueError, "a topic batch with a message past its end");
            goto fail;
        }
        PyObject *item = brk_topic_item((PyTypeObject *)args[2], args[3], pub, seq, (const char *)b + at, mlen,
                                        (const char *)b + at + mlen, dlen);
        if (!item || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
        plain &= mlen == 0 && seq != 0;
        at += mlen + dlen;
    }
    if (at != size) {
        PyErr_SetString(PyExc_ValueError, "a topic batch with bytes after its last message");
        goto fail;
    }
    PyObject *out = Py_BuildValue("(KNO)", (unsigned long long)brk_frame_ld(b, 8), list, plain ? Py_True : Py_False);
    PyBuffer_Release(&v);
    return out;
fail:
    Py_XDECREF(list);
    PyBuffer_Release(&v);
    return NULL;
}

/*
 * A message in fragments, put together in C into one destination: frag is a list
 * [seq, next fragment, payload bytes still to come, dest, bytes in dest so far], dest a bytes
 * object of the message's whole size that only C writes (topic_frag_start makes it; nobody reads it
 * before the last fragment is in). Its items are read and set by index: no field by name.
 */
enum { F_SEQ, F_NEXT, F_MORE, F_DEST, F_AT, F_N };

/* topic_frag_start(first, total) -> bytes: a new bytes of total bytes (first <= total), first's bytes first. */
static PyObject *brk_py_topic_frag_start(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "topic_frag_start(first, total)");
        return NULL;
    }
    Py_ssize_t total = PyLong_AsSsize_t(args[1]);
    if (total == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer v;
    if (PyObject_GetBuffer(args[0], &v, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = NULL;
    if (v.len > total)
        PyErr_SetString(PyExc_ValueError, "topic_frag_start: the first part is bigger than the whole");
    else if ((out = PyBytes_FromStringAndSize(NULL, total)) != NULL)
        memcpy(PyBytes_AS_STRING(out), v.buf, (size_t)v.len);
    PyBuffer_Release(&v);
    return out;
}

/*
 * topic_recv_frags(ring, frag) -> int: the next fragments of frag's message, copied straight from
 * the ring into its dest while they are there: 0 when the last one is in (dest is the payload),
 * BRK_EMPTY when the ring has no more now, BRK_NOTREADY when the next record is not the fragment
 * that follows (it stays: Python reads it and drops the message, as the Assembler does), or the
 * ring's outcome.
 */
static PyObject *brk_py_topic_recv_frags(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    brk_ring *r = brk_py_begin(args, nargs, 2, "topic_recv_frags(ring, frag)");
    if (!r)
        return NULL;
    PyObject *frag = args[1];
    if (!PyList_CheckExact(frag) || PyList_GET_SIZE(frag) != F_N || !PyBytes_CheckExact(PyList_GET_ITEM(frag, F_DEST))) {
        PyErr_SetString(PyExc_TypeError, "topic_recv_frags: frag is [seq, next, more, dest: bytes, at]");
        return NULL;
    }
    unsigned long long seq = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(frag, F_SEQ));
    unsigned long long k = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(frag, F_NEXT));
    unsigned long long more = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(frag, F_MORE));
    unsigned long long at = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(frag, F_AT));
    if (PyErr_Occurred())
        return NULL;
    PyObject *dest = PyList_GET_ITEM(frag, F_DEST);
    uint64_t size = (uint64_t)PyBytes_GET_SIZE(dest);
    if (at > size || more > size - at) {
        PyErr_SetString(PyExc_ValueError, "topic_recv_frags: frag's counts do not fit its dest");
        return NULL;
    }
    int rc = BRK_OK;
    while (more) {
        rc = brk_peek(r);
        if (rc != BRK_OK)
            break; /* BRK_EMPTY: the rest later */
        uint64_t n = r->rlen;
        unsigned char head[BRK_TOPIC_HEAD];
        if (n < BRK_TOPIC_HEAD) {
            brk_unpeek(r);
            rc = BRK_NOTREADY;
            break;
        }
        memcpy(head, r->rptr, BRK_TOPIC_HEAD); /* one copy: the publisher may change the ring meanwhile */
        n -= BRK_TOPIC_HEAD;
        uint64_t left = brk_frame_ld(head + 12, 4);
        /* the fragment that follows, exactly as the Assembler checks it: this message, no meta, the next
         * number, and what is still to come after it the rest of what was announced */
        if (brk_frame_ld(head, 8) != seq || brk_frame_ld(head + 8, 4) || brk_frame_ld(head + 16, 4) != k ||
            n > more || more - n != left) {
            brk_unpeek(r);
            rc = BRK_NOTREADY;
            break;
        }
        char *to = PyBytes_AS_STRING(dest) + at;
        if (n >= BRK_PY_NOGIL_BYTES)
            BRK_PY_BLOCKING(r, memcpy(to, (const char *)r->rptr + BRK_TOPIC_HEAD, (size_t)n));
        else
            memcpy(to, (const char *)r->rptr + BRK_TOPIC_HEAD, (size_t)n);
        if ((rc = brk_release(r)) != BRK_OK)
            break;
        at += n;
        more = left;
        k++;
    }
    PyObject *vals[3] = { PyLong_FromUnsignedLongLong(k), PyLong_FromUnsignedLongLong(more), PyLong_FromUnsignedLongLong(at) };
    Py_ssize_t idx[3] = { F_NEXT, F_MORE, F_AT };
    for (int i = 0; i < 3; i++) {
        if (!vals[i] || PyList_SetItem(frag, idx[i], vals[i]) < 0) { /* (SetItem steals, even on failure) */
            for (int j = i + 1; j < 3; j++)
                Py_XDECREF(vals[j]);
            return NULL;
        }
    }
    return PyLong_FromLong(more ? (rc == BRK_OK ? BRK_EMPTY : rc) : 0);
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
        PyObject *out = brk_topic_take(r, &seq, &rc, NULL);
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

static PyMethodDef brk_ring_methods[] = {
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
    {"send_stream", (PyCFunction)(void (*)(void))brk_py_send_stream, METH_FASTCALL,
     "send_stream(ring, parts, at, chunk) -> 0 | (outcome, at, need)"},
    {"recv_stream", (PyCFunction)(void (*)(void))brk_py_recv_stream, METH_FASTCALL,
     "recv_stream(ring, target, at) -> (at, rest) | outcome"},
    {"topic_send", (PyCFunction)(void (*)(void))brk_py_topic_send, METH_FASTCALL,
     "topic_send(ring, seq, data) -> outcome"},
    {"topic_publish", (PyCFunction)(void (*)(void))brk_py_topic_publish, METH_FASTCALL,
     "topic_publish(ring, seq, data, meta, k) -> 0 | (outcome, k, need)"},
    {"topic_send_many", (PyCFunction)(void (*)(void))brk_py_topic_send_many, METH_FASTCALL,
     "topic_send_many(ring, items, first_seq, start) -> (sent, outcome)"},
    {"topic_recv", (PyCFunction)(void (*)(void))brk_py_topic_recv, METH_FASTCALL,
     "topic_recv(ring, last_seq) -> (seq, bytes) | outcome"},
    {"topic_recv_into", (PyCFunction)(void (*)(void))brk_py_topic_recv_into, METH_FASTCALL,
     "topic_recv_into(ring, last_seq, out) -> (seq, nbytes, meta) | (BRK_TOOBIG, nbytes) | outcome"},
    {"topic_pack", (PyCFunction)(void (*)(void))brk_py_topic_pack, METH_FASTCALL,
     "topic_pack(queue, most, room, lost[, big]) -> (bytes | parts, n, first)"},
    {"topic_unpack", (PyCFunction)(void (*)(void))brk_py_topic_unpack, METH_FASTCALL,
     "topic_unpack(data, n, received, topic) -> (lost, items, plain)"},
    {"topic_recv_batch", (PyCFunction)(void (*)(void))brk_py_topic_recv_batch, METH_FASTCALL,
     "topic_recv_batch(ring, last_seq, max, item, publisher) -> (items, last_seq, outcome)"},
    {"topic_frag_start", (PyCFunction)(void (*)(void))brk_py_topic_frag_start, METH_FASTCALL,
     "topic_frag_start(first, total) -> bytes"},
    {"topic_recv_frags", (PyCFunction)(void (*)(void))brk_py_topic_recv_frags, METH_FASTCALL,
     "topic_recv_frags(ring, frag) -> 0 | outcome"},
    {"topic_recv_many", (PyCFunction)(void (*)(void))brk_py_topic_recv_many, METH_FASTCALL,
     "topic_recv_many(ring, max, last_seq) -> (list, last_seq, outcome)"},
    {"wait_any", (PyCFunction)(void (*)(void))brk_py_wait_any, METH_FASTCALL,
     "wait_any(rings, bell, seen, spin_ns, timeout_ns) -> index | None"},
    {"wait_space", (PyCFunction)(void (*)(void))brk_py_wait_space, METH_FASTCALL,
     "wait_space(ring, len, timeout_ns) -> outcome"},
    {NULL, NULL, 0, NULL},
};

/* The i-th method definition (NULL past the end), for PyCFunction_NewEx (src/shmbroker/core/native.py). */
const void *brk_ring_method(int i)
{
    if (i < 0 || i >= (int)(sizeof brk_ring_methods / sizeof brk_ring_methods[0]) - 1)
        return NULL;
    return &brk_ring_methods[i];
}
