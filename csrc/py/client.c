/* client.c: a client's whole call on a shared-memory session, in one CPython fast call (call, call_many). */

#include "brk_py.h" /* first: it includes Python.h */
#include <string.h>



/* broker.Buffer's fields, max_length and value, as client_setup declared them. */
static brk_field brk_buffer[2];
static PyObject *brk_buffer_fields; /* the descriptors, kept (they hold the class) */

/* client_setup((Buffer.max_length, Buffer.value)): once, at import (src/shmbroker/framework/client.py). */
static PyObject *brk_client_setup(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    brk_field f[2];
    if (nargs != 1 || brk_fields_from(args[0], 2, f, "client_setup((Buffer.max_length, Buffer.value))") < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "client_setup((Buffer.max_length, Buffer.value))");
        return NULL;
    }
    Py_XSETREF(brk_buffer_fields, Py_NewRef(args[0]));
    brk_buffer[0] = f[0];
    brk_buffer[1] = f[1];
    Py_RETURN_NONE;
}

/* The Buffer class, once declared; NULL with RuntimeError before. */
static PyTypeObject *brk_buffer_type(void)
{
    if (!brk_buffer[0].type)
        PyErr_SetString(PyExc_RuntimeError, "client_setup() was not called");
    return brk_buffer[0].type;
}

/* One argument of call(): 1 if it is one of the kinds call() takes (filled
 * in), 0 if not (the caller leaves the call to Python), -1 with an exception. */
static int brk_call_arg(PyObject *a, PyTypeObject *buffer_type, brk_frame_arg *out, PyObject **hold)
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
    PyObject *max = BRK_FIELD(a, brk_buffer[0]);
    long long m = max && PyLong_CheckExact(max) ? PyLong_AsLongLong(max) : -1;
    if (m < 0) {
        PyErr_Clear();
        return 0;
    }
    PyObject *value = BRK_FIELD(a, brk_buffer[1]);
    if (!value || !PyBytes_CheckExact(value) || PyBytes_GET_SIZE(value) > m)
        return 0;
    *hold = Py_NewRef(value);
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
    if (n < BRK_FRAME_HEADER + BRK_FRAME_COMPLETE_FIXED || memcmp(buf, "BRK1", 4) || buf[4] != BRK_FRAME_VERSION ||
        buf[5] != BRK_FRAME_COMPLETE || brk_frame_ld(buf + 6, 2) || brk_frame_ld(buf + 12, 4) ||
        brk_frame_ld(buf + 8, 4) != n - BRK_FRAME_HEADER || brk_frame_ld(buf + 16, 8) != rid)
        return NULL;
    const unsigned char *b = buf + BRK_FRAME_HEADER;
    uint64_t size = n - BRK_FRAME_HEADER, at = BRK_FRAME_COMPLETE_FIXED;
    unsigned nwrites = b[4];
    if (nwrites > 4 || b[5] || brk_frame_ld(b + 6, 2))
        return NULL; /* an error text, or anything odd: Python says what it is */
    struct { unsigned index; uint64_t at, len; } w[4];
    unsigned seen = 0;
    for (unsigned i = 0; i < nwrites; i++) {
        if (size - at < BRK_FRAME_WRITE_HDR)
            return NULL;
        w[i].index = b[at];
        w[i].len = brk_frame_ld(b + at + 4, 4);
        at += BRK_FRAME_WRITE_HDR;
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
    for (unsigned i = 0; i < nwrites; i++) /* each Buffer's value (a slot): stolen */
        Py_XSETREF(BRK_FIELD(argv[w[i].index], brk_buffer[1]), values[i]);
    return PyLong_FromLong((long)(int32_t)brk_frame_ld(b, 4));
fail:
    for (unsigned i = 0; i < nwrites; i++)
        Py_XDECREF(values[i]);
    return NULL;
}

/* Replies up to this size are copied out of the ring and read from the copy
 * (the server could change the ring under us); a bigger one goes to Python. */
#define BRK_CALL_COPY 4096

/*
 * call(tx, rx, rid, code, handle, args, wait_ns, max_frame) -> outcome:
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
    brk_ring *tx = brk_py_begin(args, nargs, 8, "call(tx, rx, rid, code, handle, args, wait_ns, max_frame)");
    if (!tx)
        return NULL;
    brk_ring *rx = brk_py_ring(args[1]);
    if (!rx)
        return NULL;
    unsigned long long rid = PyLong_AsUnsignedLongLong(args[2]);
    if (rid == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    long long code, handle, wait_ns, max_frame;
    if (!brk_py_int64(args[3], &code) || !brk_py_int64(args[4], &handle) || !brk_py_int64(args[6], &wait_ns) ||
        !brk_py_int64(args[7], &max_frame))
        return NULL;
    if (!PyTuple_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "call: args is a tuple");
        return NULL;
    }
    PyTypeObject *buffer_type = brk_buffer_type();
    if (!buffer_type)
        return NULL;
    Py_ssize_t argc = PyTuple_GET_SIZE(args[5]);
    PyObject *const *argv = &PyTuple_GET_ITEM(args[5], 0);
    if (argc > 4 || code < INT32_MIN || code > INT32_MAX || handle < 0 || handle > UINT32_MAX)
        Py_RETURN_NOTIMPLEMENTED;
    brk_frame_arg cargs[4];
    PyObject *hold[4] = { NULL, NULL, NULL, NULL };
    PyObject *out = NULL;
    int i;
    for (i = 0; i < 4; i++) {
        if (i >= argc) {
            cargs[i] = (brk_frame_arg){ BRK_K_NONE, 0, NULL, 0 };
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
    uint64_t size = brk_frame_request_size(cargs);
    if (size > tx->max_record || max_frame < 0 || size - BRK_FRAME_HEADER > (uint64_t)max_frame) {
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
    brk_frame_put_request(tx->wptr, rid, (int32_t)code, (uint32_t)handle, 0, cargs);
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
#define BRK_MANY_FRAMES (BRK_FRAME_BATCH_BYTES / (BRK_FRAME_HEADER + BRK_FRAME_REQUEST_FIXED) + 1)
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
                            brk_frame_arg cargs[4], PyObject *hold[4], uint64_t *size)
{
    for (int i = 0; i < 4; i++)
        hold[i] = NULL;
    if (!PyTuple_CheckExact(set) || PyTuple_GET_SIZE(set) > 4)
        return 0;
    Py_ssize_t argc = PyTuple_GET_SIZE(set);
    for (int i = 0; i < 4; i++) {
        if (i >= argc) {
            cargs[i] = (brk_frame_arg){ BRK_K_NONE, 0, NULL, 0 };
            continue;
        }
        int ok = brk_call_arg(PyTuple_GET_ITEM(set, i), buffer_type, &cargs[i], &hold[i]);
        if (ok <= 0) {
            for (int j = 0; j <= i; j++)
                Py_CLEAR(hold[j]);
            return ok;
        }
    }
    *size = brk_frame_request_size(cargs);
    if (*size > max_record || *size - BRK_FRAME_HEADER > (uint64_t)max_frame) {
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
 *           wait_ns, max_frame, outstanding, odd) -> (sent, done, outcome):
 * many asynchronous calls of one function on a shared-memory session,
 * pipelined, in C for the common case. Request i is argsets[i] (a tuple) with
 * id first_rid + i; `sent` of them are sent and `done` have their reply
 * (results[i] is not None); it sends on while fewer than `window` are in
 * flight and i < limit, packing requests into records of up to
 * BRK_FRAME_BATCH_BYTES, and takes the replies that come: a simple one (see
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
    brk_ring *tx = brk_py_begin(args, nargs, 15,
                                "call_many(tx, rx, first_rid, code, handle, argsets, results, sent, done, limit, "
                                "window, wait_ns, max_frame, outstanding, odd)");
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
        !brk_py_int64(args[11], &wait_ns) || !brk_py_int64(args[12], &max_frame))
        return NULL;
    PyObject *argsets = args[5], *results = args[6], *outstanding = args[13], *odd = args[14];
    if (!PyList_CheckExact(argsets) || !PyList_CheckExact(results) ||
        !PyDict_CheckExact(outstanding) || !PyList_CheckExact(odd)) {
        PyErr_SetString(PyExc_TypeError, "call_many: argsets, results and odd are lists, outstanding a dict");
        return NULL;
    }
    Py_ssize_t total = PyList_GET_SIZE(argsets);
    if (PyList_GET_SIZE(results) != total || limit < 0 || limit > total || sent < 0 || sent > limit || done < 0 ||
        done > sent || window < 1 || max_frame < 0 || first == 0 || first + (unsigned long long)total < first) {
        PyErr_SetString(PyExc_ValueError, "call_many: inconsistent counts");
        return NULL;
    }
    PyTypeObject *buffer_type = brk_buffer_type();
    if (!buffer_type)
        return NULL;
    if (code < INT32_MIN || code > INT32_MAX || handle < 0 || handle > UINT32_MAX)
        return Py_BuildValue("(LLi)", sent, done, sent < limit ? BRK_MANY_UNUSUAL : BRK_OK);
    unsigned char *copy = PyMem_Malloc(BRK_MANY_COPY);
    if (!copy)
        return PyErr_NoMemory();
    brk_frame_arg cargs[BRK_MANY_FRAMES][4];
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
                if (k > 0 && bytes + sizes[k] > BRK_FRAME_BATCH_BYTES) {
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
                brk_frame_put_request(p, first + (uint64_t)(sent + j), (int32_t)code, (uint32_t)handle, 1, cargs[j]);
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
            if (n - at < BRK_FRAME_HEADER)
                break;
            uint64_t flen = BRK_FRAME_HEADER + brk_frame_ld(h + 8, 4), rid = brk_frame_ld(h + 16, 8);
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

static PyMethodDef brk_client_methods[] = {
    {"call", (PyCFunction)(void (*)(void))brk_py_call, METH_FASTCALL,
     "call(tx, rx, rid, code, handle, args, wait_ns, max_frame) -> int | bytes | NotImplemented | tuple"},
    {"call_many", (PyCFunction)(void (*)(void))brk_py_call_many, METH_FASTCALL,
     "call_many(tx, rx, first_rid, code, handle, argsets, results, sent, done, limit, window, wait_ns, max_frame, "
     "outstanding, odd) -> (sent, done, outcome)"},
    {"client_setup", (PyCFunction)(void (*)(void))brk_client_setup, METH_FASTCALL,
     "client_setup((Buffer.max_length, Buffer.value)): broker.Buffer's fields, declared once"},
    {NULL, NULL, 0, NULL},
};

/* The i-th method definition (NULL past the end), for PyCFunction_NewEx (src/shmbroker/core/native.py). */
const void *brk_client_method(int i)
{
    if (i < 0 || i >= (int)(sizeof brk_client_methods / sizeof brk_client_methods[0]) - 1)
        return NULL;
    return &brk_client_methods[i];
}
