/* codec.c: the framework's per-message frames (REQUEST, COMPLETE) to and from its Python events, in C. */

/*
 * Why this file exists: in Python, packing a REQUEST costs ~1.5 us, decoding
 * one ~3 us and a COMPLETE ~1 us each way on this project's 2-core machines:
 * about 8 us of a round trip whose rings take 0.7 us. Here each is a few
 * hundred nanoseconds.
 *
 * src/shmbroker/protocol/frames.py stays the definition of the wire format (its module
 * docstring) and its reference code. This file takes only the common, valid
 * frames: whenever anything is unusual (a bad header, an unknown flag, an
 * argument out of range, a frame of another type, an incomplete frame) it
 * stops, or returns NotImplemented, and the Python code handles that frame
 * and gives the exact error. So every rejection and its reason come from one
 * place, and tests/test_codec.py checks that both give the same events and
 * the same bytes.
 *
 * Objects: the decoded events are instances of frames.py's own classes
 * (Request, Arg, Complete, Write: slotted dataclasses), made without running
 * their Python __init__ (allocated, then their slots set). codec_setup()
 * declares their fields once, at import, as the fields themselves (brk_field,
 * brk_py.h): no field is looked up by its name here.
 */

#include "brk_py.h" /* first: it includes Python.h */
#include <string.h>


enum { K_NONE = BRK_K_NONE, K_INT = BRK_K_INT, K_READ = BRK_K_READ, K_WRITE = BRK_K_WRITE, K_READWRITE = BRK_K_READWRITE,
       K_HANDLE = BRK_K_HANDLE, K_COUNT = BRK_K_COUNT };

/* What codec_setup() was given: ArgKind's members by value, NO_ARG, and the four classes' fields. */
static PyObject *brk_kinds[K_COUNT];
static PyObject *brk_no_arg;
static PyObject *brk_declared; /* the field descriptors, kept: they hold the classes */
enum { R_ID, R_CODE, R_ARGS, R_HANDLE, R_ASYNC, R_N };
enum { A_KIND, A_VALUE, A_DATA, A_N };
enum { C_ID, C_STATUS, C_WRITES, C_ERROR, C_N };
enum { W_INDEX, W_DATA, W_N };
static brk_field brk_request_fields[R_N], brk_complete_fields[C_N], brk_write_fields[W_N];
brk_field brk_arg_fields[A_N];

#define brk_ld brk_frame_ld
#define brk_st brk_frame_st

/* A new instance of the fields' class, its slots set to values (stolen; any of them NULL, after a
 * failed allocation: nothing is made); NULL with an exception. */
static PyObject *brk_make(const brk_field *fields, PyObject **values, int n)
{
    PyObject *o = NULL;
    for (int i = 0; i < n; i++) {
        if (!values[i])
            goto fail;
    }
    o = fields[0].type->tp_alloc(fields[0].type, 0);
    if (!o)
        goto fail;
    for (int i = 0; i < n; i++)
        BRK_FIELD(o, fields[i]) = values[i];
    return o;
fail:
    for (int i = 0; i < n; i++)
        Py_XDECREF(values[i]);
    return NULL;
}

/* A new Arg (kind borrowed; value and data stolen, NULL after a failed allocation). */
static PyObject *brk_new_arg(PyObject *kind, PyObject *value, PyObject *data)
{
    PyObject *vals[A_N] = { Py_NewRef(kind), value, data };
    return brk_make(brk_arg_fields, vals, A_N);
}

/* codec_setup(kinds, NO_ARG, request_fields, arg_fields, complete_fields, write_fields): once, at import
 * (src/shmbroker/protocol/frames.py). Each *_fields is the tuple of that class's member descriptors, in the
 * order of the enums above. */
static PyObject *brk_codec_setup(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    static const char usage[] = "codec_setup(kinds (6), NO_ARG, (Request.request_id, .code, .args, .handle, "
                                ".asynchronous), (Arg.kind, .value, .data), (Complete.request_id, .status, .writes, "
                                ".error), (Write.index, .data))";
    if (nargs != 6 || !PyTuple_Check(args[0]) || PyTuple_GET_SIZE(args[0]) != K_COUNT) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    brk_field r[R_N], a[A_N], cm[C_N], w[W_N];
    if (brk_fields_from(args[2], R_N, r, "codec_setup: Request") < 0 || brk_fields_from(args[3], A_N, a, "codec_setup: Arg") < 0 ||
        brk_fields_from(args[4], C_N, cm, "codec_setup: Complete") < 0 ||
        brk_fields_from(args[5], W_N, w, "codec_setup: Write") < 0)
        return NULL;
    PyObject *declared = PyTuple_Pack(4, args[2], args[3], args[4], args[5]);
    if (!declared)
        return NULL;
    Py_XSETREF(brk_declared, declared);
    memcpy(brk_request_fields, r, sizeof r);
    memcpy(brk_arg_fields, a, sizeof a);
    memcpy(brk_complete_fields, cm, sizeof cm);
    memcpy(brk_write_fields, w, sizeof w);
    for (int i = 0; i < K_COUNT; i++)
        Py_XSETREF(brk_kinds[i], Py_NewRef(PyTuple_GET_ITEM(args[0], i)));
    Py_XSETREF(brk_no_arg, Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

/* Outcome of decoding one body: an event, NULL with an exception (out of
 * memory), or Py_None borrowed: "not the common case, let Python look". */
#define BRK_DEFER Py_None

/* The four arguments of a REQUEST body as a tuple of Arg: 1 (*out set), 0
 * (not the common valid case: Python looks), -1 (an exception: out of memory). */
int brk_codec_decode_args(const unsigned char *b, uint64_t size, PyObject **out)
{
    if (size < BRK_FRAME_REQUEST_FIXED)
        return 0;
    uint64_t at = BRK_FRAME_REQUEST_FIXED;
    PyObject *argv[4] = { NULL, NULL, NULL, NULL };
    int i;
    for (i = 0; i < 4; i++) {
        const unsigned char *d = b + 8 + 16 * i;
        unsigned kind = d[0];
        uint64_t length = brk_ld(d + 4, 4);
        int64_t value = (int64_t)brk_ld(d + 8, 8);
        if (kind == K_READ || kind == K_READWRITE) {
            if (length > size - at || (kind == K_READWRITE && (value < 0 || (uint64_t)value < length)))
                break;
            argv[i] = brk_new_arg(brk_kinds[kind], PyLong_FromLongLong(kind == K_READ ? 0 : value),
                                  PyBytes_FromStringAndSize((const char *)b + at, (Py_ssize_t)length));
            if (!argv[i])
                goto oom;
            at += length;
            continue;
        }
        if (kind >= K_COUNT || length)
            break;
        if (kind == K_NONE) {
            if (value)
                break;
            Py_INCREF(brk_no_arg);
            argv[i] = brk_no_arg;
            continue;
        }
        if ((kind == K_WRITE && value < 0) || (kind == K_HANDLE && (value < 0 || value > 0xFFFFFFFFLL)))
            break;
        if (!(argv[i] = brk_new_arg(brk_kinds[kind], PyLong_FromLongLong(value), PyBytes_FromStringAndSize(NULL, 0))))
            goto oom;
    }
    if (i < 4 || at != size) {
        for (int j = 0; j < 4; j++)
            Py_XDECREF(argv[j]);
        return 0;
    }
    PyObject *tuple = PyTuple_New(4);
    if (!tuple)
        goto oom;
    for (int j = 0; j < 4; j++)
        PyTuple_SET_ITEM(tuple, j, argv[j]);
    *out = tuple;
    return 1;
oom:
    for (int j = 0; j < 4; j++)
        Py_XDECREF(argv[j]);
    return -1;
}

static PyObject *brk_decode_request(const unsigned char *b, uint64_t size, uint32_t flags, uint64_t rid)
{
    if (flags & ~(uint32_t)BRK_FRAME_FLAG_ASYNC)
        return BRK_DEFER;
    PyObject *tuple;
    int ok = brk_codec_decode_args(b, size, &tuple);
    if (ok <= 0)
        return ok < 0 ? NULL : BRK_DEFER;
    PyObject *vals[5] = { PyLong_FromUnsignedLongLong(rid), PyLong_FromLong((long)(int32_t)brk_ld(b, 4)), tuple,
                          PyLong_FromUnsignedLong((unsigned long)brk_ld(b + 4, 4)),
                          PyBool_FromLong(flags & BRK_FRAME_FLAG_ASYNC) };
    return brk_make(brk_request_fields, vals, R_N);
}

static PyObject *brk_decode_complete(const unsigned char *b, uint64_t size, uint64_t rid)
{
    if (size < BRK_FRAME_COMPLETE_FIXED)
        return BRK_DEFER;
    int32_t status = (int32_t)brk_ld(b, 4);
    unsigned nwrites = b[4], has_error = b[5];
    if (nwrites > 4 || has_error > 1 || brk_ld(b + 6, 2))
        return BRK_DEFER;
    uint64_t at = BRK_FRAME_COMPLETE_FIXED;
    unsigned seen = 0;
    PyObject *writes = PyTuple_New(nwrites);
    if (!writes)
        return NULL;
    for (unsigned i = 0; i < nwrites; i++) {
        if (size - at < BRK_FRAME_WRITE_HDR)
            goto defer;
        unsigned index = b[at];
        uint64_t length = brk_ld(b + at + 4, 4);
        at += BRK_FRAME_WRITE_HDR;
        if (index >= 4 || (seen & (1u << index)) || length > size - at)
            goto defer;
        seen |= 1u << index;
        PyObject *vals[2] = { PyLong_FromLong(index), PyBytes_FromStringAndSize((const char *)b + at, (Py_ssize_t)length) };
        PyObject *w = brk_make(brk_write_fields, vals, W_N);
        if (!w) {
            Py_DECREF(writes);
            return NULL;
        }
        PyTuple_SET_ITEM(writes, i, w);
        at += length;
    }
    PyObject *error;
    if (has_error) {
        if (size - at > BRK_FRAME_MAX_TEXT)
            goto defer;
        error = PyUnicode_DecodeUTF8((const char *)b + at, (Py_ssize_t)(size - at), "strict");
        if (!error) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                Py_DECREF(writes);
                return NULL;
            }
            PyErr_Clear(); /* Python says it is not UTF-8 */
            goto defer;
        }
    } else {
        if (at != size)
            goto defer;
        error = Py_None;
        Py_INCREF(error);
    }
    PyObject *vals[4] = { PyLong_FromUnsignedLongLong(rid), PyLong_FromLong(status), writes, error };
    return brk_make(brk_complete_fields, vals, C_N);
defer:
    Py_DECREF(writes);
    return BRK_DEFER;
}

/* feed(data, at, max_frame) -> (events, at): the REQUEST and COMPLETE frames
 * from offset `at` on, decoded, up to the first frame that is anything else,
 * incomplete or not valid: `at` is where that one starts (Python's reader
 * takes it from there). */
static PyObject *brk_codec_feed(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "feed(data, at, max_frame)");
        return NULL;
    }
    if (!brk_declared) {
        PyErr_SetString(PyExc_RuntimeError, "codec_setup() was not called");
        return NULL;
    }
    Py_ssize_t at = PyLong_AsSsize_t(args[1]);
    if (at == -1 && PyErr_Occurred())
        return NULL;
    unsigned long long max_frame = PyLong_AsUnsignedLongLong(args[2]);
    if (max_frame == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *events = PyList_New(0);
    if (!events)
        goto fail;
    const unsigned char *p = view.buf;
    Py_ssize_t end = view.len;
    if (at < 0 || at > end)
        at = end;
    while (end - at >= BRK_FRAME_HEADER) {
        const unsigned char *h = p + at;
        uint64_t length = brk_ld(h + 8, 4);
        if (memcmp(h, "BRK1", 4) || h[4] != BRK_FRAME_VERSION || length > max_frame || brk_ld(h + 12, 4))
            break;
        if ((uint64_t)(end - at - BRK_FRAME_HEADER) < length)
            break;
        unsigned type = h[5];
        uint32_t flags = (uint32_t)brk_ld(h + 6, 2);
        uint64_t rid = brk_ld(h + 16, 8);
        PyObject *ev;
        if (type == BRK_FRAME_REQUEST)
            ev = brk_decode_request(h + BRK_FRAME_HEADER, length, flags, rid);
        else if (type == BRK_FRAME_COMPLETE && !flags)
            ev = brk_decode_complete(h + BRK_FRAME_HEADER, length, rid);
        else
            break;
        if (!ev)
            goto fail;
        if (ev == BRK_DEFER)
            break;
        int rc = PyList_Append(events, ev);
        Py_DECREF(ev);
        if (rc < 0)
            goto fail;
        at += BRK_FRAME_HEADER + (Py_ssize_t)length;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(Nn)", events, at);
fail:
    Py_XDECREF(events);
    PyBuffer_Release(&view);
    return NULL;
}

/* A field's int value (v borrowed, NULL: unset) in [lo, hi]: 1, or 0 with no exception when it is not one
 * (the caller defers to Python). */
static int brk_field_int(PyObject *v, long long lo, long long hi, long long *out)
{
    int ok = 0;
    if (v && PyLong_Check(v)) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (!overflow && !(x == -1 && PyErr_Occurred()) && x >= lo && x <= hi) {
            *out = x;
            ok = 1;
        }
        PyErr_Clear();
    }
    return ok;
}

/* An int argument of a call in [lo, hi], same outcomes as brk_attr_int. */
static int brk_arg_int(PyObject *v, long long lo, long long hi, long long *out)
{
    if (!PyLong_Check(v))
        return 0;
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (x == -1 && PyErr_Occurred()) || x < lo || x > hi) {
        PyErr_Clear();
        return 0;
    }
    *out = x;
    return 1;
}

#define BRK_NOT_MINE() (Py_INCREF(Py_NotImplemented), Py_NotImplemented)

/* encode_request(rid, code, handle, asynchronous, args) -> bytes, or
 * NotImplemented for anything frames.request_frame should do (and
 * reject) itself: args not four Args with int kinds 0-5 and
 * bytes data, numbers out of range, a READWRITE over its max length. */
static PyObject *brk_codec_encode_request(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "encode_request(rid, code, handle, asynchronous, args)");
        return NULL;
    }
    long long rid, code, handle;
    if (!PyLong_Check(args[0]) || !brk_arg_int(args[1], INT32_MIN, INT32_MAX, &code) ||
        !brk_arg_int(args[2], 0, UINT32_MAX, &handle))
        return BRK_NOT_MINE();
    unsigned long long urid = PyLong_AsUnsignedLongLong(args[0]);
    if (urid == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return BRK_NOT_MINE();
    }
    rid = (long long)urid;
    int async = PyObject_IsTrue(args[3]);
    if (async < 0)
        return NULL;
    PyObject *seq = args[4];
    if (!(PyList_CheckExact(seq) || PyTuple_CheckExact(seq)) || PySequence_Fast_GET_SIZE(seq) != 4)
        return BRK_NOT_MINE();
    PyObject *snap = PySequence_Tuple(seq); /* holds the items while they are read */
    if (!snap)
        return NULL;
    PyObject **items = &PyTuple_GET_ITEM(snap, 0);
    long long kind[4], value[4];
    PyObject *data[4] = { NULL, NULL, NULL, NULL };
    uint64_t size = BRK_FRAME_REQUEST_FIXED;
    PyObject *out = NULL;
    for (int i = 0; i < 4; i++) {
        if (Py_TYPE(items[i]) != brk_arg_fields[0].type)
            goto not_mine; /* an Arg, nothing else (a subclass may read its fields otherwise): no Python code runs */
        if (!brk_field_int(BRK_FIELD(items[i], brk_arg_fields[A_KIND]), 0, K_COUNT - 1, &kind[i]) ||
            !brk_field_int(BRK_FIELD(items[i], brk_arg_fields[A_VALUE]), INT64_MIN, INT64_MAX, &value[i]))
            goto not_mine;
        if (kind[i] == K_READ || kind[i] == K_READWRITE) {
            data[i] = Py_XNewRef(BRK_FIELD(items[i], brk_arg_fields[A_DATA]));
            if (!data[i] || !PyBytes_Check(data[i]))
                goto not_mine;
            uint64_t n = (uint64_t)PyBytes_GET_SIZE(data[i]);
            if (n > UINT32_MAX || (kind[i] == K_READWRITE && (value[i] < 0 || n > (uint64_t)value[i])))
                goto not_mine;
            size += n;
        }
    }
    if (size > UINT32_MAX)
        goto not_mine;
    brk_frame_arg cargs[4];
    for (int i = 0; i < 4; i++) {
        cargs[i].kind = (int)kind[i];
        cargs[i].value = value[i];
        cargs[i].data = data[i] ? PyBytes_AS_STRING(data[i]) : NULL;
        cargs[i].len = data[i] ? (uint64_t)PyBytes_GET_SIZE(data[i]) : 0;
    }
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(BRK_FRAME_HEADER + size));
    if (!out)
        goto done;
    brk_frame_put_request((unsigned char *)PyBytes_AS_STRING(out), (uint64_t)rid, (int32_t)code, (uint32_t)handle,
                          async, cargs);
    goto done;
not_mine:
    out = BRK_NOT_MINE();
done:
    for (int i = 0; i < 4; i++)
        Py_XDECREF(data[i]);
    Py_DECREF(snap);
    return out;
}

/* encode_complete(rid, status, writes, error) -> bytes, or NotImplemented:
 * writes a list or tuple of up to four Writes or (index, data)
 * pairs (int index 0-3, bytes data), error None or bytes (already cut to
 * MAX_TEXT by the caller). */
PyObject *brk_codec_encode_complete(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "encode_complete(rid, status, writes, error)");
        return NULL;
    }
    long long status;
    if (!PyLong_Check(args[0]) || !brk_arg_int(args[1], INT32_MIN, INT32_MAX, &status))
        return BRK_NOT_MINE();
    unsigned long long rid = PyLong_AsUnsignedLongLong(args[0]);
    if (rid == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return BRK_NOT_MINE();
    }
    PyObject *seq = args[2], *err = args[3];
    if (!(PyList_CheckExact(seq) || PyTuple_CheckExact(seq)) || PySequence_Fast_GET_SIZE(seq) > 4 ||
        (err != Py_None && !PyBytes_Check(err)))
        return BRK_NOT_MINE();
    PyObject *snap = PySequence_Tuple(seq); /* holds the items while they are read */
    if (!snap)
        return NULL;
    Py_ssize_t nw = PyTuple_GET_SIZE(snap);
    PyObject **items = &PyTuple_GET_ITEM(snap, 0);
    long long index[4];
    PyObject *data[4] = { NULL, NULL, NULL, NULL };
    uint64_t size = BRK_FRAME_COMPLETE_FIXED + (err != Py_None ? (uint64_t)PyBytes_GET_SIZE(err) : 0);
    PyObject *out = NULL;
    for (Py_ssize_t i = 0; i < nw; i++) {
        PyObject *w = items[i];
        if (PyTuple_CheckExact(w)) { /* (index, data) */
            if (PyTuple_GET_SIZE(w) != 2 || !brk_arg_int(PyTuple_GET_ITEM(w, 0), 0, 3, &index[i]))
                goto not_mine;
            data[i] = PyTuple_GET_ITEM(w, 1);
            Py_INCREF(data[i]);
        } else if (Py_TYPE(w) == brk_write_fields[0].type) { /* a Write, exactly: no Python code runs */
            if (!brk_field_int(BRK_FIELD(w, brk_write_fields[W_INDEX]), 0, 3, &index[i]))
                goto not_mine;
            data[i] = Py_XNewRef(BRK_FIELD(w, brk_write_fields[W_DATA]));
        } else {
            goto not_mine;
        }
        if (!data[i] || !PyBytes_Check(data[i]) || (uint64_t)PyBytes_GET_SIZE(data[i]) > UINT32_MAX)
            goto not_mine;
        size += BRK_FRAME_WRITE_HDR + (uint64_t)PyBytes_GET_SIZE(data[i]);
    }
    if (size > UINT32_MAX)
        goto not_mine;
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(BRK_FRAME_HEADER + size));
    if (!out)
        goto done;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    brk_frame_header(p, BRK_FRAME_COMPLETE, 0, size, (uint64_t)rid);
    unsigned char *b = p + BRK_FRAME_HEADER;
    brk_st(b, (uint64_t)(uint32_t)(int32_t)status, 4);
    b[4] = (unsigned char)nw;
    b[5] = err != Py_None;
    brk_st(b + 6, 0, 2);
    b += BRK_FRAME_COMPLETE_FIXED;
    for (Py_ssize_t i = 0; i < nw; i++) {
        Py_ssize_t n = PyBytes_GET_SIZE(data[i]);
        memset(b, 0, BRK_FRAME_WRITE_HDR);
        b[0] = (unsigned char)index[i];
        brk_st(b + 4, (uint64_t)n, 4);
        memcpy(b + BRK_FRAME_WRITE_HDR, PyBytes_AS_STRING(data[i]), (size_t)n);
        b += BRK_FRAME_WRITE_HDR + n;
    }
    if (err != Py_None)
        memcpy(b, PyBytes_AS_STRING(err), (size_t)PyBytes_GET_SIZE(err));
    goto done;
not_mine:
    out = BRK_NOT_MINE();
done:
    for (Py_ssize_t i = 0; i < nw; i++)
        Py_XDECREF(data[i]);
    Py_DECREF(snap);
    return out;
}

/* frame_buffer(n) -> bytearray: n bytes, not cleared (a big frame is gathered in it: every byte is
 * written before anything reads it; clearing would cost one more pass over it). */
static PyObject *brk_codec_frame_buffer(PyObject *self, PyObject *arg)
{
    (void)self;
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "frame_buffer: a negative size");
        return NULL;
    }
    return PyByteArray_FromStringAndSize(NULL, n);
}

/* frame_unused(b) -> bool: nothing holds a view of the bytearray b (no buffer export): the exact test
 * before a reader gathers its next big frame in the one it kept (a count, not a guess from refcounts). */
static PyObject *brk_codec_frame_unused(PyObject *self, PyObject *arg)
{
    (void)self;
    if (!PyByteArray_CheckExact(arg)) {
        PyErr_SetString(PyExc_TypeError, "frame_unused: a bytearray");
        return NULL;
    }
    return PyBool_FromLong(((PyByteArrayObject *)arg)->ob_exports == 0);
}

static PyMethodDef brk_codec_methods[] = {
    {"codec_setup", (PyCFunction)(void (*)(void))brk_codec_setup, METH_FASTCALL,
     "codec_setup(kinds, NO_ARG, request_fields, arg_fields, complete_fields, write_fields)"},
    {"feed", (PyCFunction)(void (*)(void))brk_codec_feed, METH_FASTCALL, "feed(data, at, max_frame) -> (events, at)"},
    {"encode_request", (PyCFunction)(void (*)(void))brk_codec_encode_request, METH_FASTCALL,
     "encode_request(rid, code, handle, asynchronous, args) -> bytes | NotImplemented"},
    {"encode_complete", (PyCFunction)(void (*)(void))brk_codec_encode_complete, METH_FASTCALL,
     "encode_complete(rid, status, writes, error) -> bytes | NotImplemented"},
    {"frame_buffer", (PyCFunction)(void (*)(void))brk_codec_frame_buffer, METH_O,
     "frame_buffer(n) -> bytearray: n bytes, not cleared"},
    {"frame_unused", (PyCFunction)(void (*)(void))brk_codec_frame_unused, METH_O,
     "frame_unused(b) -> bool: no view of the bytearray b is held"},
    {NULL, NULL, 0, NULL},
};

/* The i-th method definition (NULL past the end), for PyCFunction_NewEx (src/shmbroker/core/native.py). */
const void *brk_codec_method(int i)
{
    if (i < 0 || i >= (int)(sizeof brk_codec_methods / sizeof brk_codec_methods[0]) - 1)
        return NULL;
    return &brk_codec_methods[i];
}
