/* brk_codec.c: the framework's per-message frames (REQUEST, COMPLETE) encoded and decoded in C. */

/*
 * Why this file exists: in Python, packing a REQUEST costs ~1.5 us, decoding
 * one ~3 us and a COMPLETE ~1 us each way on this project's 2-core machines:
 * about 8 us of a round trip whose rings take 0.7 us. Here each is a few
 * hundred nanoseconds.
 *
 * broker/protocol/frames.py stays the definition of the wire format (its module
 * docstring) and its reference code. This file takes only the common, valid
 * frames: whenever anything is unusual (a bad header, an unknown flag, an
 * argument out of range, a frame of another type, an incomplete frame) it
 * stops, or returns NotImplemented, and the Python code handles that frame
 * and gives the exact error. So every rejection and its reason come from one
 * place, and tests/test_codec.py checks that both give the same events and
 * the same bytes.
 *
 * Objects: the decoded events are instances of _protocol's own classes
 * (Request, Arg, Complete, Write: slotted dataclasses), made without running
 * their Python __init__ (allocated, then their slots set). codec_setup()
 * hands the classes over once, at import.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#include "brk_codec.h"
#include "brk_ring.h"

enum { K_NONE = BRK_K_NONE, K_INT = BRK_K_INT, K_READ = BRK_K_READ, K_WRITE = BRK_K_WRITE, K_READWRITE = BRK_K_READWRITE,
       K_HANDLE = BRK_K_HANDLE, K_COUNT = BRK_K_COUNT };

const void *brk_codec_method(int i);

/* What codec_setup() was given: the event classes, ArgKind's members by value, NO_ARG. */
static PyTypeObject *brk_t_request, *brk_t_arg, *brk_t_complete, *brk_t_write;
static PyObject *brk_kinds[K_COUNT];
static PyObject *brk_no_arg;
static PyObject *brk_s_request_id, *brk_s_code, *brk_s_args, *brk_s_handle, *brk_s_asynchronous;
static PyObject *brk_s_kind, *brk_s_value, *brk_s_data, *brk_s_status, *brk_s_writes, *brk_s_error, *brk_s_index;

#define brk_ld brk_codec_ld
#define brk_st brk_codec_st

/* Arg's slots (kind, value, data) by their offsets, found by codec_setup:
 * an Arg is made and read on every message, without attribute lookups. */
static Py_ssize_t brk_arg_slot[3];
#define BRK_SLOT(o, off) (*(PyObject **)((char *)(o) + (off)))

/* The offset of slot `name` of class t (a __slots__ member of object kind); -1 with TypeError. */
static int brk_slot_offset(PyTypeObject *t, PyObject *name, Py_ssize_t *off)
{
    PyObject *d = t->tp_dict ? PyDict_GetItemWithError(t->tp_dict, name) : NULL;
    if (!d || Py_TYPE(d) != &PyMemberDescr_Type || ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_TypeError, "codec_setup: %s has no slot %U", t->tp_name, name);
        return -1;
    }
    *off = ((PyMemberDescrObject *)d)->d_member->offset;
    return 0;
}

/* A new Arg (kind borrowed; value and data stolen, NULL after a failed allocation). */
static PyObject *brk_new_arg(PyObject *kind, PyObject *value, PyObject *data)
{
    PyObject *o = value && data ? brk_t_arg->tp_alloc(brk_t_arg, 0) : NULL;
    if (!o) {
        Py_XDECREF(value);
        Py_XDECREF(data);
        return NULL;
    }
    BRK_SLOT(o, brk_arg_slot[0]) = Py_NewRef(kind);
    BRK_SLOT(o, brk_arg_slot[1]) = value;
    BRK_SLOT(o, brk_arg_slot[2]) = data;
    return o;
}

/* codec_setup(Request, Arg, Complete, Write, kinds, NO_ARG): once, at import. */
static PyObject *brk_codec_setup(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 6 || !PyTuple_Check(args[4]) || PyTuple_GET_SIZE(args[4]) != K_COUNT) {
        PyErr_SetString(PyExc_TypeError, "codec_setup(Request, Arg, Complete, Write, kinds (6), NO_ARG)");
        return NULL;
    }
    for (int i = 0; i < 4; i++) {
        if (!PyType_Check(args[i])) {
            PyErr_SetString(PyExc_TypeError, "codec_setup: the first four are classes");
            return NULL;
        }
    }
    PyTypeObject **types[4] = { &brk_t_request, &brk_t_arg, &brk_t_complete, &brk_t_write };
    for (int i = 0; i < 4; i++) {
        Py_INCREF(args[i]);
        Py_XSETREF(*types[i], (PyTypeObject *)args[i]);
    }
    for (int i = 0; i < K_COUNT; i++) {
        PyObject *k = PyTuple_GET_ITEM(args[4], i);
        Py_INCREF(k);
        Py_XSETREF(brk_kinds[i], k);
    }
    Py_INCREF(args[5]);
    Py_XSETREF(brk_no_arg, args[5]);
    struct { PyObject **at; const char *s; } names[] = {
        { &brk_s_request_id, "request_id" }, { &brk_s_code, "code" }, { &brk_s_args, "args" },
        { &brk_s_handle, "handle" }, { &brk_s_asynchronous, "asynchronous" }, { &brk_s_kind, "kind" },
        { &brk_s_value, "value" }, { &brk_s_data, "data" }, { &brk_s_status, "status" },
        { &brk_s_writes, "writes" }, { &brk_s_error, "error" }, { &brk_s_index, "index" },
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (!*names[i].at && !(*names[i].at = PyUnicode_InternFromString(names[i].s)))
            return NULL;
    }
    PyObject *slots[3] = { brk_s_kind, brk_s_value, brk_s_data };
    for (int i = 0; i < 3; i++) {
        if (brk_slot_offset(brk_t_arg, slots[i], &brk_arg_slot[i]) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

/* A new instance of `t` with its slots set from names/values (stealing the
 * values' references, which may be NULL after a failed allocation). */
static PyObject *brk_make(PyTypeObject *t, PyObject **names, PyObject **values, int n)
{
    PyObject *o = NULL;
    for (int i = 0; i < n; i++) {
        if (!values[i])
            goto fail;
    }
    o = t->tp_alloc(t, 0);
    if (!o)
        goto fail;
    for (int i = 0; i < n; i++) {
        if (PyObject_GenericSetAttr(o, names[i], values[i]) < 0)
            goto fail;
    }
    for (int i = 0; i < n; i++)
        Py_DECREF(values[i]);
    return o;
fail:
    Py_XDECREF(o);
    for (int i = 0; i < n; i++)
        Py_XDECREF(values[i]);
    return NULL;
}

/* Outcome of decoding one body: an event, NULL with an exception (out of
 * memory), or Py_None borrowed: "not the common case, let Python look". */
#define BRK_DEFER Py_None

/* The four arguments of a REQUEST body as a tuple of Arg: 1 (*out set), 0
 * (not the common valid case: Python looks), -1 (an exception: out of memory). */
static int brk_decode_args(const unsigned char *b, uint64_t size, PyObject **out)
{
    if (size < BRK_CODEC_REQUEST_FIXED)
        return 0;
    uint64_t at = BRK_CODEC_REQUEST_FIXED;
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
    if (flags & ~(uint32_t)BRK_CODEC_FLAG_ASYNC)
        return BRK_DEFER;
    PyObject *tuple;
    int ok = brk_decode_args(b, size, &tuple);
    if (ok <= 0)
        return ok < 0 ? NULL : BRK_DEFER;
    PyObject *vals[5] = { PyLong_FromUnsignedLongLong(rid), PyLong_FromLong((long)(int32_t)brk_ld(b, 4)), tuple,
                          PyLong_FromUnsignedLong((unsigned long)brk_ld(b + 4, 4)),
                          PyBool_FromLong(flags & BRK_CODEC_FLAG_ASYNC) };
    PyObject *names[5] = { brk_s_request_id, brk_s_code, brk_s_args, brk_s_handle, brk_s_asynchronous };
    return brk_make(brk_t_request, names, vals, 5);
}

static PyObject *brk_decode_complete(const unsigned char *b, uint64_t size, uint64_t rid)
{
    if (size < BRK_CODEC_COMPLETE_FIXED)
        return BRK_DEFER;
    int32_t status = (int32_t)brk_ld(b, 4);
    unsigned nwrites = b[4], has_error = b[5];
    if (nwrites > 4 || has_error > 1 || brk_ld(b + 6, 2))
        return BRK_DEFER;
    uint64_t at = BRK_CODEC_COMPLETE_FIXED;
    unsigned seen = 0;
    PyObject *writes = PyTuple_New(nwrites);
    if (!writes)
        return NULL;
    for (unsigned i = 0; i < nwrites; i++) {
        if (size - at < BRK_CODEC_WRITE_HDR)
            goto defer;
        unsigned index = b[at];
        uint64_t length = brk_ld(b + at + 4, 4);
        at += BRK_CODEC_WRITE_HDR;
        if (index >= 4 || (seen & (1u << index)) || length > size - at)
            goto defer;
        seen |= 1u << index;
        PyObject *vals[2] = { PyLong_FromLong(index), PyBytes_FromStringAndSize((const char *)b + at, (Py_ssize_t)length) };
        PyObject *names[2] = { brk_s_index, brk_s_data };
        PyObject *w = brk_make(brk_t_write, names, vals, 2);
        if (!w) {
            Py_DECREF(writes);
            return NULL;
        }
        PyTuple_SET_ITEM(writes, i, w);
        at += length;
    }
    PyObject *error;
    if (has_error) {
        if (size - at > BRK_CODEC_MAX_TEXT)
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
    PyObject *names[4] = { brk_s_request_id, brk_s_status, brk_s_writes, brk_s_error };
    return brk_make(brk_t_complete, names, vals, 4);
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
    if (!brk_t_request) {
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
    while (end - at >= BRK_CODEC_HEADER) {
        const unsigned char *h = p + at;
        uint64_t length = brk_ld(h + 8, 4);
        if (memcmp(h, "BRK1", 4) || h[4] != BRK_CODEC_VERSION || length > max_frame || brk_ld(h + 12, 4))
            break;
        if ((uint64_t)(end - at - BRK_CODEC_HEADER) < length)
            break;
        unsigned type = h[5];
        uint32_t flags = (uint32_t)brk_ld(h + 6, 2);
        uint64_t rid = brk_ld(h + 16, 8);
        PyObject *ev;
        if (type == BRK_CODEC_REQUEST)
            ev = brk_decode_request(h + BRK_CODEC_HEADER, length, flags, rid);
        else if (type == BRK_CODEC_COMPLETE && !flags)
            ev = brk_decode_complete(h + BRK_CODEC_HEADER, length, rid);
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
        at += BRK_CODEC_HEADER + (Py_ssize_t)length;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(Nn)", events, at);
fail:
    Py_XDECREF(events);
    PyBuffer_Release(&view);
    return NULL;
}

/* An int attribute in [lo, hi], or 0 with no exception when it is not one
 * (the caller defers to Python); -1 with an exception on a real failure. */
static int brk_attr_int(PyObject *o, PyObject *name, long long lo, long long hi, long long *out)
{
    PyObject *v = PyObject_GetAttr(o, name);
    if (!v)
        return -1;
    int ok = 0;
    if (PyLong_Check(v)) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (!overflow && !(x == -1 && PyErr_Occurred()) && x >= lo && x <= hi) {
            *out = x;
            ok = 1;
        }
        PyErr_Clear();
    }
    Py_DECREF(v);
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

static void brk_header(unsigned char *p, unsigned type, unsigned flags, uint64_t length, uint64_t rid)
{
    memcpy(p, "BRK1", 4);
    p[4] = BRK_CODEC_VERSION;
    p[5] = (unsigned char)type;
    brk_st(p + 6, flags, 2);
    brk_st(p + 8, length, 4);
    brk_st(p + 12, 0, 4);
    brk_st(p + 16, rid, 8);
}

uint64_t brk_codec_request_size(const brk_codec_arg args[4])
{
    uint64_t size = BRK_CODEC_HEADER + BRK_CODEC_REQUEST_FIXED;
    for (int i = 0; i < 4; i++)
        size += args[i].kind == K_READ || args[i].kind == K_READWRITE ? args[i].len : 0;
    return size;
}

void brk_codec_put_request(unsigned char *p, uint64_t rid, int32_t code, uint32_t handle, int async,
                           const brk_codec_arg args[4])
{
    brk_header(p, BRK_CODEC_REQUEST, async ? BRK_CODEC_FLAG_ASYNC : 0, brk_codec_request_size(args) - BRK_CODEC_HEADER,
               rid);
    unsigned char *b = p + BRK_CODEC_HEADER, *pay = b + BRK_CODEC_REQUEST_FIXED;
    brk_st(b, (uint64_t)(uint32_t)code, 4);
    brk_st(b + 4, handle, 4);
    for (int i = 0; i < 4; i++) {
        unsigned char *d = b + 8 + 16 * i;
        memset(d, 0, 16);
        d[0] = (unsigned char)args[i].kind;
        if (args[i].kind == K_READ || args[i].kind == K_READWRITE) {
            brk_st(d + 4, args[i].len, 4);
            brk_st(d + 8, args[i].kind == K_READWRITE ? (uint64_t)args[i].value : 0, 8);
            if (args[i].len)
                memcpy(pay, args[i].data, (size_t)args[i].len);
            pay += args[i].len;
        } else {
            brk_st(d + 8, (uint64_t)args[i].value, 8);
        }
    }
}

#define BRK_NOT_MINE() (Py_INCREF(Py_NotImplemented), Py_NotImplemented)

/* encode_request(rid, code, handle, asynchronous, args) -> bytes, or
 * NotImplemented for anything _protocol.request_frame should do (and
 * reject) itself: args not four Arg-like objects with int kinds 0-5 and
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
    /* a snapshot: an attribute lookup below may run Python code that changes a list */
    PyObject *snap = PySequence_Tuple(seq);
    if (!snap)
        return NULL;
    PyObject **items = &PyTuple_GET_ITEM(snap, 0);
    long long kind[4], value[4];
    PyObject *data[4] = { NULL, NULL, NULL, NULL };
    uint64_t size = BRK_CODEC_REQUEST_FIXED;
    PyObject *out = NULL;
    for (int i = 0; i < 4; i++) {
        int ok = brk_attr_int(items[i], brk_s_kind, 0, K_COUNT - 1, &kind[i]);
        if (ok > 0)
            ok = brk_attr_int(items[i], brk_s_value, INT64_MIN, INT64_MAX, &value[i]);
        if (ok < 0)
            goto done;
        if (!ok)
            goto not_mine;
        if (kind[i] == K_READ || kind[i] == K_READWRITE) {
            if (!(data[i] = PyObject_GetAttr(items[i], brk_s_data)))
                goto done;
            if (!PyBytes_Check(data[i]))
                goto not_mine;
            uint64_t n = (uint64_t)PyBytes_GET_SIZE(data[i]);
            if (n > UINT32_MAX || (kind[i] == K_READWRITE && (value[i] < 0 || n > (uint64_t)value[i])))
                goto not_mine;
            size += n;
        }
    }
    if (size > UINT32_MAX)
        goto not_mine;
    brk_codec_arg cargs[4];
    for (int i = 0; i < 4; i++) {
        cargs[i].kind = (int)kind[i];
        cargs[i].value = value[i];
        cargs[i].data = data[i] ? PyBytes_AS_STRING(data[i]) : NULL;
        cargs[i].len = data[i] ? (uint64_t)PyBytes_GET_SIZE(data[i]) : 0;
    }
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(BRK_CODEC_HEADER + size));
    if (!out)
        goto done;
    brk_codec_put_request((unsigned char *)PyBytes_AS_STRING(out), (uint64_t)rid, (int32_t)code, (uint32_t)handle,
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
 * writes a list or tuple of up to four Write-like objects or (index, data)
 * pairs (int index 0-3, bytes data), error None or bytes (already cut to
 * MAX_TEXT by the caller). */
static PyObject *brk_codec_encode_complete(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
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
    /* a snapshot: an attribute lookup below may run Python code that changes a list */
    PyObject *snap = PySequence_Tuple(seq);
    if (!snap)
        return NULL;
    Py_ssize_t nw = PyTuple_GET_SIZE(snap);
    PyObject **items = &PyTuple_GET_ITEM(snap, 0);
    long long index[4];
    PyObject *data[4] = { NULL, NULL, NULL, NULL };
    uint64_t size = BRK_CODEC_COMPLETE_FIXED + (err != Py_None ? (uint64_t)PyBytes_GET_SIZE(err) : 0);
    PyObject *out = NULL;
    for (Py_ssize_t i = 0; i < nw; i++) {
        PyObject *w = items[i];
        if (PyTuple_CheckExact(w)) { /* (index, data) */
            if (PyTuple_GET_SIZE(w) != 2 || !brk_arg_int(PyTuple_GET_ITEM(w, 0), 0, 3, &index[i]))
                goto not_mine;
            data[i] = PyTuple_GET_ITEM(w, 1);
            Py_INCREF(data[i]);
        } else {
            int ok = brk_attr_int(w, brk_s_index, 0, 3, &index[i]);
            if (ok < 0)
                goto done;
            if (!ok)
                goto not_mine;
            if (!(data[i] = PyObject_GetAttr(w, brk_s_data)))
                goto done;
        }
        if (!PyBytes_Check(data[i]) || (uint64_t)PyBytes_GET_SIZE(data[i]) > UINT32_MAX)
            goto not_mine;
        size += BRK_CODEC_WRITE_HDR + (uint64_t)PyBytes_GET_SIZE(data[i]);
    }
    if (size > UINT32_MAX)
        goto not_mine;
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(BRK_CODEC_HEADER + size));
    if (!out)
        goto done;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    brk_header(p, BRK_CODEC_COMPLETE, 0, size, (uint64_t)rid);
    unsigned char *b = p + BRK_CODEC_HEADER;
    brk_st(b, (uint64_t)(uint32_t)(int32_t)status, 4);
    b[4] = (unsigned char)nw;
    b[5] = err != Py_None;
    brk_st(b + 6, 0, 2);
    b += BRK_CODEC_COMPLETE_FIXED;
    for (Py_ssize_t i = 0; i < nw; i++) {
        Py_ssize_t n = PyBytes_GET_SIZE(data[i]);
        memset(b, 0, BRK_CODEC_WRITE_HDR);
        b[0] = (unsigned char)index[i];
        brk_st(b + 4, (uint64_t)n, 4);
        memcpy(b + BRK_CODEC_WRITE_HDR, PyBytes_AS_STRING(data[i]), (size_t)n);
        b += BRK_CODEC_WRITE_HDR + n;
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

/* ---- the server's side of a shared-memory session ---------------------------------- */

/* ---- MessageBase: the fields of broker.Message and its two hottest methods ---------------------- */

/*
 * broker.Message subclasses this C type: its fields live here, and read() and
 * write() take their common case here (a whole readable argument; the whole
 * content of a writable one, from bytes), in a few hundred nanoseconds less
 * than in Python. Anything else calls the Python class's _read / _write,
 * which hold the reference behaviour and every error. Running with the GIL
 * held and calling no Python code, the fast write is atomic against the other
 * threads (complete() reads _done and _writes under the connection's lock).
 */
typedef struct {
    PyObject_HEAD
    PyObject *conn, *request_id, *code, *handle, *asynchronous, *args, *writes, *done;
} brk_msg;

static PyObject *brk_s_read_slow, *brk_s_write_slow;

static int brk_msg_traverse(brk_msg *m, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(m));
    Py_VISIT(m->conn);
    Py_VISIT(m->request_id);
    Py_VISIT(m->code);
    Py_VISIT(m->handle);
    Py_VISIT(m->asynchronous);
    Py_VISIT(m->args);
    Py_VISIT(m->writes);
    Py_VISIT(m->done);
    return 0;
}

static int brk_msg_clear(brk_msg *m)
{
    Py_CLEAR(m->conn);
    Py_CLEAR(m->request_id);
    Py_CLEAR(m->code);
    Py_CLEAR(m->handle);
    Py_CLEAR(m->asynchronous);
    Py_CLEAR(m->args);
    Py_CLEAR(m->writes);
    Py_CLEAR(m->done);
    return 0;
}

static void brk_msg_dealloc(brk_msg *m)
{
    PyTypeObject *t = Py_TYPE(m);
    PyObject_GC_UnTrack(m);
    brk_msg_clear(m);
    t->tp_free((PyObject *)m);
    Py_DECREF(t);
}

/* The argument i (0-3) of a message whose _args is a 4-tuple, borrowed; NULL: not the common case. */
static PyObject *brk_msg_arg(brk_msg *m, PyObject *index, long *i)
{
    if (!PyLong_CheckExact(index) || !m->args || !PyTuple_CheckExact(m->args) || PyTuple_GET_SIZE(m->args) != 4)
        return NULL;
    *i = PyLong_AsLong(index);
    if (*i < 0 || *i > 3) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *a = PyTuple_GET_ITEM(m->args, *i);
    return Py_TYPE(a) == brk_t_arg ? a : NULL;
}

/* The kind of an Arg (exactly one: brk_msg_arg checked) as a C int, or -1 (not an int, or unset). */
static long brk_arg_kind(PyObject *a)
{
    PyObject *k = BRK_SLOT(a, brk_arg_slot[0]);
    long v = k && PyLong_Check(k) ? PyLong_AsLong(k) : -1;
    if (v == -1)
        PyErr_Clear();
    return v;
}

static PyObject *brk_msg_slow(PyObject *self, PyObject *name, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    PyObject *meth = PyObject_GetAttr(self, name);
    if (!meth)
        return NULL;
    PyObject *out = PyObject_Vectorcall(meth, args, (size_t)nargs, kw);
    Py_DECREF(meth);
    return out;
}

/* read(i, offset=0, size=None): the whole content of a readable argument, no write over it. */
static PyObject *brk_msg_read(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    brk_msg *m = (brk_msg *)self;
    long i;
    PyObject *a;
    if (nargs == 1 && !kw && (a = brk_msg_arg(m, args[0], &i))) {
        long kind = brk_arg_kind(a);
        if ((kind == K_READ || kind == K_READWRITE) && (m->writes == Py_None || m->writes == NULL ||
                                                        (PyDict_CheckExact(m->writes) && PyDict_GET_SIZE(m->writes) == 0))) {
            PyObject *data = BRK_SLOT(a, brk_arg_slot[2]);
            if (data && PyBytes_CheckExact(data))
                return Py_NewRef(data);
        }
    }
    return brk_msg_slow(self, brk_s_read_slow, args, nargs, kw);
}

/* write(i, data, offset=0): data (bytes) becomes the whole content of a writable argument. */
static PyObject *brk_msg_write(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    brk_msg *m = (brk_msg *)self;
    long i;
    PyObject *a;
    if (nargs == 2 && !kw && PyBytes_CheckExact(args[1]) && m->done == Py_False &&
        (m->writes == Py_None || (m->writes && PyDict_CheckExact(m->writes))) && (a = brk_msg_arg(m, args[0], &i))) {
        long kind = brk_arg_kind(a);
        if (kind == K_WRITE || kind == K_READWRITE) {
            PyObject *v = BRK_SLOT(a, brk_arg_slot[1]); /* a writable argument's max length */
            long long max = v && PyLong_CheckExact(v) ? PyLong_AsLongLong(v) : -1;
            PyErr_Clear();
            if (max >= 0 && PyBytes_GET_SIZE(args[1]) <= max) {
                if (m->writes == Py_None) {
                    PyObject *d = PyDict_New();
                    if (!d)
                        return NULL;
                    Py_SETREF(m->writes, d);
                }
                if (PyDict_SetItem(m->writes, args[0], args[1]) < 0)
                    return NULL;
                Py_RETURN_NONE;
            }
        }
    }
    return brk_msg_slow(self, brk_s_write_slow, args, nargs, kw);
}

/* ---- RingBatch: the completions of one batch, encoded back to back ---------------------- */

/*
 * While the server serves a batch of a shared-memory session's requests
 * (_Conn._in_one_record), conn.ring_batch is one of these: complete() in C
 * encodes its frame straight into the batch's buffer and keeps the books
 * (the protocol's outstanding ids, the connection's messages) with the
 * connection's lock held, with the lock's bound methods, the books and the
 * protocol looked up once per connection instead of once per message; the
 * Python way appends its frames (append). take() hands over the bytes, as
 * one ring record, with the counts the connection adds to its own.
 */
typedef struct {
    PyObject_HEAD
    PyObject *acquire, *release, *proto, *outstanding, *messages;
    unsigned char *buf;
    size_t len, cap;
    Py_ssize_t completions, async_done;
} brk_batch;

static PyTypeObject *brk_t_batch;

static int brk_batch_traverse(brk_batch *b, visitproc visit, void *arg)
{
    Py_VISIT(b->acquire);
    Py_VISIT(b->release);
    Py_VISIT(b->proto);
    Py_VISIT(b->outstanding);
    Py_VISIT(b->messages);
    return 0;
}

static int brk_batch_clear(brk_batch *b)
{
    Py_CLEAR(b->acquire);
    Py_CLEAR(b->release);
    Py_CLEAR(b->proto);
    Py_CLEAR(b->outstanding);
    Py_CLEAR(b->messages);
    return 0;
}

static void brk_batch_dealloc(brk_batch *b)
{
    PyTypeObject *t = Py_TYPE(b);
    PyObject_GC_UnTrack(b);
    brk_batch_clear(b);
    PyMem_Free(b->buf);
    t->tp_free((PyObject *)b);
    Py_DECREF(t);
}

/* Room for n more bytes; -1 with MemoryError. */
static int brk_batch_room(brk_batch *b, size_t n)
{
    if (b->cap - b->len >= n)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < n) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    unsigned char *p = PyMem_Realloc(b->buf, cap);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    b->buf = p;
    b->cap = cap;
    return 0;
}

/* append(frame): a frame the Python way made, after those already there. */
static PyObject *brk_batch_append(PyObject *self, PyObject *frame)
{
    brk_batch *b = (brk_batch *)self;
    Py_buffer v;
    if (PyObject_GetBuffer(frame, &v, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc = brk_batch_room(b, (size_t)v.len);
    if (rc == 0) {
        memcpy(b->buf + b->len, v.buf, (size_t)v.len);
        b->len += (size_t)v.len;
    }
    PyBuffer_Release(&v);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* take() -> (bytes | None, completions, asynchronous): what the batch holds, and it starts empty again. */
static PyObject *brk_batch_take(PyObject *self, PyObject *unused)
{
    (void)unused;
    brk_batch *b = (brk_batch *)self;
    PyObject *data = b->len ? PyBytes_FromStringAndSize((const char *)b->buf, (Py_ssize_t)b->len) : Py_NewRef(Py_None);
    if (!data)
        return NULL;
    PyObject *out = Py_BuildValue("(Nnn)", data, b->completions, b->async_done);
    if (!out)
        return NULL;
    b->len = 0;
    b->completions = b->async_done = 0;
    if (b->cap > (1u << 20)) { /* a big batch once: its buffer does not stay */
        PyMem_Free(b->buf);
        b->buf = NULL;
        b->cap = 0;
    }
    return out;
}

/* len(batch): the bytes it holds now (the server bounds a batch's output by it: Server(max_queued=)). */
static Py_ssize_t brk_batch_len(PyObject *self)
{
    return (Py_ssize_t)((brk_batch *)self)->len;
}

static PyMethodDef brk_batch_methods[] = {
    {"append", brk_batch_append, METH_O, "append(frame): a frame, after those already in the batch"},
    {"take", brk_batch_take, METH_NOARGS,
     "take() -> (bytes | None, completions, asynchronous): the batch's frames and counts; it starts empty again"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot brk_batch_slots[] = {
    {Py_tp_doc, "The completions of one batch of a shared-memory session, encoded back to back (csrc/brk_codec.c)."},
    {Py_tp_dealloc, brk_batch_dealloc},
    {Py_tp_traverse, brk_batch_traverse},
    {Py_tp_clear, brk_batch_clear},
    {Py_tp_methods, brk_batch_methods},
    {Py_mp_length, brk_batch_len},
    {0, NULL},
};

static PyType_Spec brk_batch_spec = {
    "broker._brk.RingBatch", sizeof(brk_batch), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC, brk_batch_slots,
};

/* ring_batch(lock, proto, outstanding, messages) -> RingBatch: a connection's, made once. */
static PyObject *brk_codec_ring_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4 || !PyDict_CheckExact(args[2]) || !PyDict_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "ring_batch(lock, proto, outstanding: dict, messages: dict)");
        return NULL;
    }
    if (!brk_t_batch && !(brk_t_batch = (PyTypeObject *)PyType_FromSpec(&brk_batch_spec)))
        return NULL;
    PyObject *acquire = PyObject_GetAttrString(args[0], "acquire");
    PyObject *release = acquire ? PyObject_GetAttrString(args[0], "release") : NULL;
    brk_batch *b = release ? (brk_batch *)brk_t_batch->tp_alloc(brk_t_batch, 0) : NULL;
    if (!b) {
        Py_XDECREF(acquire);
        Py_XDECREF(release);
        return NULL;
    }
    b->acquire = acquire;
    b->release = release;
    b->proto = Py_NewRef(args[1]);
    b->outstanding = Py_NewRef(args[2]);
    b->messages = Py_NewRef(args[3]);
    return (PyObject *)b;
}

static PyObject *brk_s_complete_slow, *brk_s_lock, *brk_s_acquire, *brk_s_release, *brk_s_ended, *brk_s_proto,
    *brk_s_state, *brk_s_on_rings, *brk_s_rings, *brk_s_ring_batch, *brk_s_pending, *brk_s_outstanding,
    *brk_s_messages, *brk_s_completions, *brk_s_put, *brk_s_bytes_out, *brk_s_send_frame, *brk_s_async_outstanding;
static PyObject *brk_state_open; /* _protocol.State.OPEN, given by message_setup */

static int brk_msg_names(void)
{
    struct { PyObject **at; const char *s; } names[] = {
        { &brk_s_complete_slow, "_complete" }, { &brk_s_lock, "lock" }, { &brk_s_acquire, "acquire" },
        { &brk_s_release, "release" }, { &brk_s_ended, "ended" }, { &brk_s_proto, "proto" }, { &brk_s_state, "state" },
        { &brk_s_on_rings, "on_rings" }, { &brk_s_rings, "rings" }, { &brk_s_ring_batch, "ring_batch" },
        { &brk_s_pending, "pending" }, { &brk_s_outstanding, "outstanding" }, { &brk_s_messages, "messages" },
        { &brk_s_completions, "completions" }, { &brk_s_put, "put" }, { &brk_s_bytes_out, "bytes_out" },
        { &brk_s_send_frame, "_send_completion" }, { &brk_s_async_outstanding, "async_outstanding" },
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (!*names[i].at && !(*names[i].at = PyUnicode_InternFromString(names[i].s)))
            return -1;
    }
    return 0;
}

/*
 * serve_messages(conn, messages, service, failed, returned) -> None: the
 * server's turn over the Messages C made (take_requests), as _Conn would run
 * it in Python: service(m) for each, until conn.ended; an Exception it raises
 * goes to failed(m, e) (its traceback kept), a value other than None to
 * returned(m, value). Anything else raised (a BaseException that is not an
 * Exception, or an error of failed or returned) ends the turn and propagates.
 */
static PyObject *brk_codec_serve_messages(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 5 || !PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "serve_messages(conn, messages: list, service, failed, returned)");
        return NULL;
    }
    if (brk_msg_names() < 0)
        return NULL;
    PyObject *conn = args[0], *msgs = args[1], *service = args[2], *failed = args[3], *returned = args[4];
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(msgs); i++) {
        PyObject *ended = PyObject_GetAttr(conn, brk_s_ended);
        if (!ended)
            return NULL;
        int stop = PyObject_IsTrue(ended);
        Py_DECREF(ended);
        if (stop)
            return stop < 0 ? NULL : Py_NewRef(Py_None);
        PyObject *m = Py_NewRef(PyList_GET_ITEM(msgs, i));
        PyObject *r = PyObject_Vectorcall(service, &m, 1, NULL);
        if (!r) {
            if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                Py_DECREF(m);
                return NULL;
            }
            PyObject *et, *ev, *tb;
            PyErr_Fetch(&et, &ev, &tb);
            PyErr_NormalizeException(&et, &ev, &tb);
            if (tb && ev)
                PyException_SetTraceback(ev, tb);
            PyObject *fargs[2] = { m, ev ? ev : Py_None };
            r = PyObject_Vectorcall(failed, fargs, 2, NULL);
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(tb);
        } else if (r != Py_None) {
            PyObject *rargs[2] = { m, r };
            PyObject *r2 = PyObject_Vectorcall(returned, rargs, 2, NULL);
            Py_DECREF(r);
            r = r2;
        }
        Py_DECREF(m);
        if (!r)
            return NULL;
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

/* complete(status) into a RingBatch, with the connection's lock held: 1 done,
 * 0 not the common case (nothing changed: the Python way), -1 an exception. */
static int brk_batch_complete(brk_batch *b, brk_msg *m, long long status)
{
    PyObject *r = PyObject_CallNoArgs(b->acquire);
    if (!r)
        return -1;
    Py_DECREF(r);
    int out = 0;
    PyObject *ended = NULL, *state = NULL, *wdata[4] = { NULL, NULL, NULL, NULL };
    if (m->done != Py_False || !m->conn || !m->request_id || !PyLong_CheckExact(m->request_id))
        goto unlock;
    unsigned long long rid = PyLong_AsUnsignedLongLong(m->request_id);
    if (rid == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        goto unlock;
    }
    if (!(ended = PyObject_GetAttr(m->conn, brk_s_ended)) || !(state = PyObject_GetAttr(b->proto, brk_s_state))) {
        out = -1;
        goto unlock;
    }
    if (ended != Py_False || state != brk_state_open)
        goto unlock; /* the client is gone: the Python way says nothing to it */
    int there = PyDict_Contains(b->outstanding, m->request_id);
    if (there <= 0) {
        out = there; /* not outstanding: the Python way raises the protocol's error */
        goto unlock;
    }
    /* the writes: argument index -> bytes, in index order */
    unsigned nw = 0;
    uint64_t size = BRK_CODEC_COMPLETE_FIXED;
    if (m->writes && m->writes != Py_None) {
        if (!PyDict_CheckExact(m->writes) || PyDict_GET_SIZE(m->writes) > 4)
            goto unlock;
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(m->writes, &pos, &k, &v)) {
            long i = PyLong_CheckExact(k) ? PyLong_AsLong(k) : -1;
            if (i < 0 || i > 3 || wdata[i] || !PyBytes_CheckExact(v)) {
                PyErr_Clear();
                goto unlock; /* a bytearray (a write at an offset), or anything odd */
            }
            wdata[i] = v;
            nw++;
            size += BRK_CODEC_WRITE_HDR + (uint64_t)PyBytes_GET_SIZE(v);
        }
    } else if (!m->writes) {
        goto unlock;
    }
    if (size > UINT32_MAX || brk_batch_room(b, (size_t)(BRK_CODEC_HEADER + size)) < 0) {
        out = size > UINT32_MAX ? 0 : -1;
        goto unlock;
    }
    /* decided: the books, then the frame */
    if (PyDict_DelItem(b->outstanding, m->request_id) < 0) {
        out = -1;
        goto unlock;
    }
    Py_SETREF(m->done, Py_NewRef(Py_True));
    if (PyDict_DelItem(b->messages, m->request_id) == 0) {
        if (m->asynchronous == Py_True) /* only a message that took a slot gives one back */
            b->async_done++;
    } else {
        PyErr_Clear(); /* not in them: nothing to give back */
    }
    b->completions++;
    unsigned char *p = b->buf + b->len;
    brk_header(p, BRK_CODEC_COMPLETE, 0, size, (uint64_t)rid);
    unsigned char *q = p + BRK_CODEC_HEADER;
    brk_st(q, (uint64_t)(uint32_t)(int32_t)status, 4);
    q[4] = (unsigned char)nw;
    q[5] = 0;
    brk_st(q + 6, 0, 2);
    q += BRK_CODEC_COMPLETE_FIXED;
    for (int i = 0; i < 4; i++) {
        if (!wdata[i])
            continue;
        Py_ssize_t n = PyBytes_GET_SIZE(wdata[i]);
        memset(q, 0, BRK_CODEC_WRITE_HDR);
        q[0] = (unsigned char)i;
        brk_st(q + 4, (uint64_t)n, 4);
        memcpy(q + BRK_CODEC_WRITE_HDR, PyBytes_AS_STRING(wdata[i]), (size_t)n);
        q += BRK_CODEC_WRITE_HDR + n;
    }
    b->len += (size_t)(BRK_CODEC_HEADER + size);
    out = 1;
unlock:
    Py_XDECREF(ended);
    Py_XDECREF(state);
    {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        r = PyObject_CallNoArgs(b->release);
        if (et)
            PyErr_Restore(et, ev, tb);
        if (!r)
            out = -1;
        Py_XDECREF(r);
    }
    return out;
}

/* attr += delta on a Python object (an int attribute). */
static int brk_add_attr(PyObject *o, PyObject *name, PyObject *delta)
{
    PyObject *v = PyObject_GetAttr(o, name);
    if (!v)
        return -1;
    PyObject *w = PyNumber_Add(v, delta);
    Py_DECREF(v);
    if (!w)
        return -1;
    int rc = PyObject_SetAttr(o, name, w);
    Py_DECREF(w);
    return rc;
}

/*
 * complete(status=0, error=None): the common case in C (a message of a
 * shared-memory session, no error text; the frame goes straight into ring 1
 * when nothing waits before it there, or into the batch on_ring is
 * collecting: conn.ring_batch), with the connection's lock held as
 * Message._complete holds it; anything else (and every error) is
 * Message._complete's.
 */
static PyObject *brk_msg_complete(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    brk_msg *m = (brk_msg *)self;
    long long status = 0;
    if (kw || nargs > 2 || (nargs == 2 && args[1] != Py_None) || m->done != Py_False ||
        (m->asynchronous != Py_False && m->asynchronous != Py_True) || !brk_state_open)
        goto slow; /* (the names were made with the type: message_base) */
    if (nargs >= 1) {
        int overflow;
        if (!PyLong_CheckExact(args[0]))
            goto slow;
        status = PyLong_AsLongLongAndOverflow(args[0], &overflow);
        if (overflow || status < INT32_MIN || status > INT32_MAX)
            goto slow; /* _complete says why */
    }
    PyObject *conn = m->conn, *lock = NULL, *proto = NULL, *rings = NULL, *state = NULL, *obj = NULL, *batch = NULL;
    if (!conn)
        goto slow;
    if (brk_t_batch) { /* a batch being served (see RingBatch) */
        if (!(batch = PyObject_GetAttr(conn, brk_s_ring_batch)))
            return NULL;
        if (Py_TYPE(batch) == brk_t_batch) {
            int rc = brk_batch_complete((brk_batch *)batch, m, status);
            Py_DECREF(batch);
            if (rc < 0)
                return NULL;
            if (rc == 0)
                goto slow;
            Py_RETURN_NONE;
        }
        Py_CLEAR(batch);
    }
    if (!(lock = PyObject_GetAttr(conn, brk_s_lock)))
        goto fail_early;
    obj = PyObject_CallMethodNoArgs(lock, brk_s_acquire);
    if (!obj)
        goto fail_early;
    Py_CLEAR(obj);
    /* under the lock from here on */
    int fast = 0;
    PyObject *out = NULL;
    if (m->done != Py_False)
        goto unlock_slow;
    if (!(obj = PyObject_GetAttr(conn, brk_s_ended)))
        goto unlock_fail;
    fast = obj == Py_False;
    Py_CLEAR(obj);
    if (!fast || !(proto = PyObject_GetAttr(conn, brk_s_proto)) || !(state = PyObject_GetAttr(proto, brk_s_state)))
        goto unlock_check;
    if (state != brk_state_open)
        goto unlock_slow;
    if (!(obj = PyObject_GetAttr(conn, brk_s_on_rings)))
        goto unlock_fail;
    fast = obj == Py_True;
    Py_CLEAR(obj);
    if (!fast)
        goto unlock_slow;
    batch = PyObject_GetAttr(conn, brk_s_ring_batch); /* held to the end: `unlock` drops it */
    if (!batch)
        goto unlock_fail;
    if (batch != Py_None) /* a batch of another kind (a RingBatch was taken above): the Python way */
        goto unlock_slow;
    if (!(rings = PyObject_GetAttr(conn, brk_s_rings)))
        goto unlock_check;
    if (rings == Py_None || !(obj = PyObject_GetAttr(rings, brk_s_pending)))
        goto unlock_check;
    fast = PyObject_IsTrue(obj) == 0; /* straight into ring 1: only when nothing waits before it */
    Py_CLEAR(obj);
    if (!fast)
        goto unlock_check;
    PyObject *outstanding = PyObject_GetAttr(proto, brk_s_outstanding);
    if (!outstanding)
        goto unlock_fail;
    int there = PyDict_CheckExact(outstanding) ? PyDict_Contains(outstanding, m->request_id) : -1;
    if (there != 1) {
        Py_DECREF(outstanding);
        if (there < 0)
            PyErr_Clear();
        goto unlock_slow; /* not outstanding: _complete raises the protocol's error */
    }
    /* decided: the books, then the frame into ring 1 */
    Py_SETREF(m->done, Py_NewRef(Py_True));
    int rc = PyDict_DelItem(outstanding, m->request_id);
    Py_DECREF(outstanding);
    if (rc < 0)
        goto unlock_fail;
    /* only a message that took a slot gives one back (a SERVER_BUSY refusal took none) */
    int popped = 0;
    if ((obj = PyObject_GetAttr(conn, brk_s_messages)) && PyDict_CheckExact(obj)) {
        popped = PyDict_DelItem(obj, m->request_id) == 0;
        if (!popped)
            PyErr_Clear(); /* not in them: nothing to give back */
    }
    Py_CLEAR(obj);
    PyErr_Clear();
    if (popped && m->asynchronous == Py_True) {
        PyObject *minus = PyLong_FromLong(-1);
        if (!minus || brk_add_attr(conn, brk_s_async_outstanding, minus) < 0) {
            Py_XDECREF(minus);
            goto unlock_fail;
        }
        Py_DECREF(minus);
    }
    PyObject *one = PyLong_FromLong(1);
    if (!one || brk_add_attr(conn, brk_s_completions, one) < 0) {
        Py_XDECREF(one);
        goto unlock_fail;
    }
    Py_DECREF(one);
    PyObject *writes;
    if (m->writes && PyDict_CheckExact(m->writes) && PyDict_GET_SIZE(m->writes)) {
        writes = PyDict_Items(m->writes);
        if (!writes || PyList_Sort(writes) < 0) {
            Py_XDECREF(writes);
            goto unlock_fail;
        }
    } else {
        writes = PyTuple_New(0);
        if (!writes)
            goto unlock_fail;
    }
    PyObject *st = PyLong_FromLongLong(status);
    PyObject *put = NULL, *n = NULL;
    if (st)
        put = PyObject_GetAttr(rings, brk_s_put);
    if (put) {
        PyObject *pargs[4] = { m->request_id, st, writes, Py_None };
        n = PyObject_Vectorcall(put, pargs, 4, NULL);
        Py_DECREF(put);
    }
    if (n && PyLong_CheckExact(n)) {
        rc = brk_add_attr(conn, brk_s_bytes_out, n);
    } else if (n) { /* no room, or not for C: the long way sends it (Message._send_completion) */
        PyObject *fn = PyObject_GetAttr((PyObject *)Py_TYPE(self), brk_s_send_frame);
        PyObject *r = NULL;
        if (fn) {
            PyObject *sargs[4] = { conn, m->request_id, st, writes };
            r = PyObject_Vectorcall(fn, sargs, 4, NULL);
            Py_DECREF(fn);
        }
        rc = r ? 0 : -1;
        Py_XDECREF(r);
    } else {
        rc = -1;
    }
    Py_XDECREF(n);
    Py_XDECREF(st);
    Py_DECREF(writes);
    if (rc < 0)
        goto unlock_fail;
    out = Py_NewRef(Py_None);
    goto unlock;
unlock_check:
    if (PyErr_Occurred())
        goto unlock_fail;
unlock_slow:
    fast = -1; /* release, then the Python way */
    goto unlock;
unlock_fail:
    out = NULL;
unlock:
    Py_XDECREF(state);
    Py_XDECREF(proto);
    Py_XDECREF(rings);
    Py_XDECREF(batch);
    {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        PyObject *r = PyObject_CallMethodNoArgs(lock, brk_s_release);
        Py_XDECREF(r);
        if (et)
            PyErr_Restore(et, ev, tb);
        else if (!r)
            Py_CLEAR(out);
    }
    Py_DECREF(lock);
    if (fast == -1 && !out)
        goto slow;
    return out;
fail_early:
    Py_XDECREF(lock);
    return NULL;
slow:
    return brk_msg_slow(self, brk_s_complete_slow, args, nargs, kw);
}

static PyMethodDef brk_msg_methods[] = {
    {"read", (PyCFunction)(void (*)(void))brk_msg_read, METH_FASTCALL | METH_KEYWORDS,
     "read(i, offset=0, size=None) -> bytes: a readable buffer argument's bytes from offset"},
    {"write", (PyCFunction)(void (*)(void))brk_msg_write, METH_FASTCALL | METH_KEYWORDS,
     "write(i, data, offset=0): into a writable argument at offset; its length becomes offset + len(data)"},
    {"complete", (PyCFunction)(void (*)(void))brk_msg_complete, METH_FASTCALL | METH_KEYWORDS,
     "complete(status=0, error=None): finish the request with status (0 or a positive result; negative: an error "
     "the client sees); exactly once"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef brk_msg_members[] = {
    {"_conn", T_OBJECT_EX, offsetof(brk_msg, conn), 0, NULL},
    {"request_id", T_OBJECT_EX, offsetof(brk_msg, request_id), 0, NULL},
    {"code", T_OBJECT_EX, offsetof(brk_msg, code), 0, NULL},
    {"handle", T_OBJECT_EX, offsetof(brk_msg, handle), 0, NULL},
    {"asynchronous", T_OBJECT_EX, offsetof(brk_msg, asynchronous), 0, NULL},
    {"_args", T_OBJECT_EX, offsetof(brk_msg, args), 0, NULL},
    {"_writes", T_OBJECT_EX, offsetof(brk_msg, writes), 0, NULL},
    {"_done", T_OBJECT_EX, offsetof(brk_msg, done), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot brk_msg_slots[] = {
    {Py_tp_doc, "The fields of broker.Message and the common case of read() and write() (csrc/brk_codec.c)."},
    {Py_tp_dealloc, brk_msg_dealloc},
    {Py_tp_traverse, brk_msg_traverse},
    {Py_tp_clear, brk_msg_clear},
    {Py_tp_methods, brk_msg_methods},
    {Py_tp_members, brk_msg_members},
    {0, NULL},
};

static PyType_Spec brk_msg_spec = {
    "broker._brk.MessageBase", sizeof(brk_msg), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    brk_msg_slots,
};

static PyObject *brk_t_msgbase;

/* message_base() -> the MessageBase type (made once). */
static PyObject *brk_codec_message_base(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    (void)args;
    if (nargs) {
        PyErr_SetString(PyExc_TypeError, "message_base()");
        return NULL;
    }
    if (!brk_t_msgbase) {
        if (!brk_s_read_slow && !(brk_s_read_slow = PyUnicode_InternFromString("_read")))
            return NULL;
        if (!brk_s_write_slow && !(brk_s_write_slow = PyUnicode_InternFromString("_write")))
            return NULL;
        if (!brk_s_kind && !(brk_s_kind = PyUnicode_InternFromString("kind")))
            return NULL;
        if (!brk_s_value && !(brk_s_value = PyUnicode_InternFromString("value")))
            return NULL;
        if (!brk_s_data && !(brk_s_data = PyUnicode_InternFromString("data")))
            return NULL;
        if (brk_msg_names() < 0)
            return NULL;
        brk_t_msgbase = PyType_FromSpec(&brk_msg_spec);
        if (!brk_t_msgbase)
            return NULL;
    }
    return Py_NewRef(brk_t_msgbase);
}

static PyObject *brk_s_m_conn, *brk_s_m_args, *brk_s_m_writes, *brk_s_m_done;
static PyTypeObject *brk_t_message; /* broker.Message, given once by message_setup */

/* message_setup(Message): the one class take_requests makes (its slots set without its __init__). */
static PyObject *brk_codec_message_setup(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2 || !PyType_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "message_setup(Message, State.OPEN)");
        return NULL;
    }
    Py_INCREF(args[0]);
    Py_XSETREF(brk_t_message, (PyTypeObject *)args[0]);
    Py_XSETREF(brk_state_open, Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

/* Records up to this size are copied out of the ring before they are read
 * (the client could change the ring under us); a bigger one goes to Python. */
#define BRK_TAKE_COPY BRK_CODEC_BATCH_BYTES
#define BRK_TAKE_FRAMES (BRK_TAKE_COPY / (BRK_CODEC_HEADER + BRK_CODEC_REQUEST_FIXED) + 1)

/* A ring handle passed as its address (only broker/core/ring.py passes one); NULL with an exception. */
static brk_ring *brk_codec_ring(PyObject *address)
{
    brk_ring *r = PyLong_AsVoidPtr(address);
    if (!r && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "ring is closed");
    return r;
}

/* The requests of one record, decoded: 1, 0 (not all of them the common kind:
 * nothing made), -1 (an exception). rids[i], codes[i], handles[i], args[i] (new). */
static int brk_take_record(const unsigned char *p, uint64_t n, uint64_t max_frame, int64_t close_code,
                           PyObject *outstanding, uint64_t *rids, int32_t *codes, uint32_t *handles,
                           PyObject **args, unsigned char *asyncs, Py_ssize_t async_budget, uint64_t *reply_budget,
                           int *count)
{
    int k = 0;
    uint64_t replies = 0; /* the most its completions can take: a header and the writable arguments' max lengths */
    for (uint64_t at = 0; at < n; k++) {
        if (k == BRK_TAKE_FRAMES || n - at < BRK_CODEC_HEADER)
            goto defer;
        const unsigned char *h = p + at;
        uint64_t length = brk_ld(h + 8, 4);
        uint64_t flags = brk_ld(h + 6, 2);
        if (memcmp(h, "BRK1", 4) || h[4] != BRK_CODEC_VERSION || h[5] != BRK_CODEC_REQUEST ||
            (flags & ~(uint64_t)BRK_CODEC_FLAG_ASYNC) || brk_ld(h + 12, 4) || length > max_frame ||
            length > n - at - BRK_CODEC_HEADER || length < BRK_CODEC_REQUEST_FIXED)
            goto defer;
        if (flags && async_budget-- <= 0)
            goto defer; /* no message slot free: Python refuses it (SERVER_BUSY) */
        const unsigned char *b = h + BRK_CODEC_HEADER;
        uint64_t rid = brk_ld(h + 16, 8);
        int32_t code = (int32_t)brk_ld(b, 4);
        if (rid == 0 || code < 0 || code == close_code)
            goto defer;
        for (int j = 0; j < k; j++)
            if (rids[j] == rid)
                goto defer;
        PyObject *key = PyLong_FromUnsignedLongLong(rid);
        if (!key)
            goto fail;
        int there = PyDict_Contains(outstanding, key);
        Py_DECREF(key);
        if (there < 0)
            goto fail;
        if (there)
            goto defer; /* reused while outstanding: Python says so */
        int ok = brk_decode_args(b, length, &args[k]);
        if (ok < 0)
            goto fail;
        if (!ok)
            goto defer;
        rids[k] = rid;
        asyncs[k] = flags != 0;
        codes[k] = code;
        handles[k] = (uint32_t)brk_ld(b + 4, 4);
        at += BRK_CODEC_HEADER + length;
        replies += BRK_CODEC_HEADER + BRK_CODEC_COMPLETE_FIXED;
        for (int i = 0; i < 4; i++) { /* checked by brk_decode_args: a writable one's value is its max length */
            const unsigned char *d = b + 8 + 16 * i;
            uint64_t most = brk_ld(d + 8, 8);
            if (d[0] == K_WRITE || d[0] == K_READWRITE)
                replies += most < max_frame ? most : max_frame; /* no reply is bigger than a frame */
        }
    }
    if (replies > *reply_budget)
        goto defer; /* its replies could pass the connection's bound: Python takes it a request at a time */
    *reply_budget -= replies;
    *count = k;
    return 1;
defer:
    for (int j = 0; j < k; j++)
        Py_CLEAR(args[j]);
    return 0;
fail:
    for (int j = 0; j < k; j++)
        Py_CLEAR(args[j]);
    return -1;
}

/*
 * take_requests(rx, max_frame, message_type, conn, outstanding, messages, close_code, max_messages,
 *               async_budget, reply_budget) -> (messages, bytes, left, asynchronous) | (outcome,)
 * The requests at the head of ring 0 (the server's side), each a new
 * message_type instance (broker.Message, its slots set without running its
 * __init__: _conn, request_id, code, handle, asynchronous, _args, _writes
 * None, _done False) entered in the protocol's `outstanding` and the
 * connection's `messages`; `bytes` the records' bytes; `asynchronous` how many
 * of them are asynchronous (at most async_budget: the message slots free; the
 * caller counts them as taken), and the most their completions can take at most
 * reply_budget bytes (the connection's room before its bound: Server(max_queued=)).
 * A record is taken whole or not at all: `left`
 * is true when one waits that is anything else (an asynchronous request with
 * no slot free, a negative code or close_code, a frame over several records,
 * an invalid one...), for Python. (outcome,) for a ring error before anything
 * was taken.
 */
static PyObject *brk_codec_take_requests(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 10 || !PyType_Check(args[2]) || !PyDict_CheckExact(args[4]) || !PyDict_CheckExact(args[5])) {
        PyErr_SetString(PyExc_TypeError, "take_requests(rx, max_frame, message_type, conn, outstanding, messages, "
                                         "close_code, max_messages, async_budget, reply_budget)");
        return NULL;
    }
    if (!brk_t_request) {
        PyErr_SetString(PyExc_RuntimeError, "codec_setup() was not called");
        return NULL;
    }
    brk_ring *r = brk_codec_ring(args[0]);
    if (!r)
        return NULL;
    unsigned long long max_frame = PyLong_AsUnsignedLongLong(args[1]);
    long long close_code = PyLong_AsLongLong(args[6]);
    Py_ssize_t max_messages = PyLong_AsSsize_t(args[7]);
    Py_ssize_t async_budget = PyLong_AsSsize_t(args[8]);
    long long reply_arg = PyLong_AsLongLong(args[9]);
    uint64_t reply_budget = reply_arg > 0 ? (uint64_t)reply_arg : 0;
    if (PyErr_Occurred())
        return NULL;
    struct { PyObject **at; const char *s; } names[] = {
        { &brk_s_m_conn, "_conn" }, { &brk_s_m_args, "_args" }, { &brk_s_m_writes, "_writes" }, { &brk_s_m_done, "_done" },
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (!*names[i].at && !(*names[i].at = PyUnicode_InternFromString(names[i].s)))
            return NULL;
    }
    PyTypeObject *mt = (PyTypeObject *)args[2];
    if (mt != brk_t_message) {
        PyErr_SetString(PyExc_TypeError, "take_requests makes only the class given to message_setup()");
        return NULL;
    }
    PyObject *conn = args[3], *outstanding = args[4], *messages = args[5];
    PyObject *list = PyList_New(0);
    if (!list)
        return NULL;
    uint64_t bytes = 0;
    int left = 0;
    Py_ssize_t nasync = 0;
    unsigned char asyncs[BRK_TAKE_FRAMES];
    uint64_t rids[BRK_TAKE_FRAMES];
    int32_t codes[BRK_TAKE_FRAMES];
    uint32_t handles[BRK_TAKE_FRAMES];
    PyObject *argt[BRK_TAKE_FRAMES];
    unsigned char copy[BRK_TAKE_COPY];
    while (PyList_GET_SIZE(list) < max_messages) {
        int rc = brk_peek(r);
        if (rc == BRK_EMPTY)
            break;
        if (rc != BRK_OK) {
            if (PyList_GET_SIZE(list) == 0) {
                Py_DECREF(list);
                return Py_BuildValue("(i)", rc);
            }
            left = 1; /* the next call reports it */
            break;
        }
        uint64_t n = r->rlen;
        if (n > BRK_TAKE_COPY) {
            brk_unpeek(r);
            left = 1;
            break;
        }
        memcpy(copy, r->rptr, (size_t)n);
        int count = 0;
        int ok = brk_take_record(copy, n, max_frame, close_code, outstanding, rids, codes, handles, argt, asyncs,
                                 async_budget - nasync, &reply_budget, &count);
        if (ok <= 0) {
            brk_unpeek(r);
            if (ok < 0)
                goto fail;
            left = 1;
            break;
        }
        /* the record's Messages, all of them, before it leaves the ring: out of memory halfway,
         * the record stays (unpeeked) and nothing of it is in the books */
        Py_ssize_t first = PyList_GET_SIZE(list);
        int j = 0;
        for (; j < count; j++) {
            PyObject *rid = PyLong_FromUnsignedLongLong(rids[j]);
            PyObject *vals[8] = { Py_NewRef(conn), rid ? Py_NewRef(rid) : NULL, PyLong_FromLong(codes[j]),
                                  PyLong_FromUnsignedLong(handles[j]), Py_NewRef(asyncs[j] ? Py_True : Py_False),
                                  argt[j],
                                  Py_NewRef(Py_None), Py_NewRef(Py_False) };
            argt[j] = NULL; /* stolen by brk_make */
            PyObject *mnames[8] = { brk_s_m_conn, brk_s_request_id, brk_s_code, brk_s_handle, brk_s_asynchronous,
                                    brk_s_m_args, brk_s_m_writes, brk_s_m_done };
            PyObject *m;
            if (brk_t_msgbase && PyType_IsSubtype(mt, (PyTypeObject *)brk_t_msgbase)) {
                m = mt->tp_alloc(mt, 0); /* the fields, set directly (they steal vals' references) */
                if (m) {
                    brk_msg *bm = (brk_msg *)m;
                    bm->conn = vals[0], bm->request_id = vals[1], bm->code = vals[2], bm->handle = vals[3];
                    bm->asynchronous = vals[4], bm->args = vals[5], bm->writes = vals[6], bm->done = vals[7];
                    if (!vals[1] || !vals[2] || !vals[3]) /* out of memory making one: the others are set */
                        Py_CLEAR(m);
                } else {
                    for (int v = 0; v < 8; v++)
                        Py_XDECREF(vals[v]);
                }
            } else {
                m = brk_make(mt, mnames, vals, 8);
            }
            int bad = !m || PyList_Append(list, m) < 0;
            Py_XDECREF(m);
            Py_XDECREF(rid);
            if (bad)
                break;
        }
        /* into the books (so that a later record reusing one of these ids is refused, as Python does) */
        Py_ssize_t booked = first;
        for (; j == count && booked < PyList_GET_SIZE(list); booked++) {
            PyObject *m = PyList_GET_ITEM(list, booked);
            PyObject *rid = PyObject_GenericGetAttr(m, brk_s_request_id);
            int bad = !rid || PyDict_SetItem(outstanding, rid, m) < 0 || PyDict_SetItem(messages, rid, m) < 0;
            Py_XDECREF(rid);
            if (bad) {
                booked++; /* it may be in one of the two */
                break;
            }
        }
        if (j < count || booked < PyList_GET_SIZE(list) || (rc = brk_release(r)) != BRK_OK) {
            /* out of memory halfway (or a release that cannot fail on a lossless ring we alone read):
             * the record stays in the ring and nothing of it in the books */
            PyObject *et, *ev, *tb;
            PyErr_Fetch(&et, &ev, &tb); /* the error that got us here, kept across the clean-up */
            for (int i = j + 1; i < count; i++)
                Py_DECREF(argt[i]);
            for (Py_ssize_t i = first; i < booked; i++) {
                PyObject *rid = PyObject_GenericGetAttr(PyList_GET_ITEM(list, i), brk_s_request_id);
                if (rid) {
                    if (PyDict_DelItem(outstanding, rid) < 0 || PyDict_DelItem(messages, rid) < 0)
                        PyErr_Clear();
                    Py_DECREF(rid);
                }
                PyErr_Clear();
            }
            PyList_SetSlice(list, first, PyList_GET_SIZE(list), NULL);
            brk_unpeek(r);
            PyErr_Restore(et, ev, tb);
            if (et)
                goto fail;
            left = 1;
            break;
        }
        bytes += n;
        for (j = 0; j < count; j++)
            nasync += asyncs[j];
    }
    return Py_BuildValue("(NKin)", list, (unsigned long long)bytes, left, nasync);
fail:
    Py_DECREF(list);
    return NULL;
}

/*
 * put_complete(tx, rid, status, writes, error) -> bytes written (> 0) | NotImplemented | (outcome,)
 * A COMPLETE frame written straight into ring 1 (the server's side), as
 * encode_complete would make it; NotImplemented when encode_complete would
 * not take it, it is bigger than a record or the ring has no room now (the
 * caller queues it); (outcome,) for a ring error.
 */
static PyObject *brk_codec_put_complete(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "put_complete(tx, rid, status, writes, error)");
        return NULL;
    }
    brk_ring *r = brk_codec_ring(args[0]);
    if (!r)
        return NULL;
    PyObject *frame = brk_codec_encode_complete(NULL, args + 1, 4);
    if (!frame || frame == Py_NotImplemented)
        return frame;
    Py_ssize_t n = PyBytes_GET_SIZE(frame);
    PyObject *out;
    int rc = (uint64_t)n > r->max_record ? BRK_FULL : brk_send(r, PyBytes_AS_STRING(frame), (uint64_t)n);
    if (rc == 0)
        out = PyLong_FromSsize_t(n);
    else if (rc == BRK_FULL)
        out = Py_NewRef(Py_NotImplemented);
    else
        out = Py_BuildValue("(i)", rc);
    Py_DECREF(frame);
    return out;
}

static PyMethodDef brk_codec_methods[] = {
    {"codec_setup", (PyCFunction)(void (*)(void))brk_codec_setup, METH_FASTCALL,
     "codec_setup(Request, Arg, Complete, Write, kinds, NO_ARG)"},
    {"feed", (PyCFunction)(void (*)(void))brk_codec_feed, METH_FASTCALL, "feed(data, at, max_frame) -> (events, at)"},
    {"encode_request", (PyCFunction)(void (*)(void))brk_codec_encode_request, METH_FASTCALL,
     "encode_request(rid, code, handle, asynchronous, args) -> bytes | NotImplemented"},
    {"encode_complete", (PyCFunction)(void (*)(void))brk_codec_encode_complete, METH_FASTCALL,
     "encode_complete(rid, status, writes, error) -> bytes | NotImplemented"},
    {"message_setup", (PyCFunction)(void (*)(void))brk_codec_message_setup, METH_FASTCALL, "message_setup(Message, State.OPEN)"},
    {"message_base", (PyCFunction)(void (*)(void))brk_codec_message_base, METH_FASTCALL, "message_base() -> type"},
    {"serve_messages", (PyCFunction)(void (*)(void))brk_codec_serve_messages, METH_FASTCALL,
     "serve_messages(conn, messages, service, failed, returned) -> None"},
    {"ring_batch", (PyCFunction)(void (*)(void))brk_codec_ring_batch, METH_FASTCALL,
     "ring_batch(lock, proto, outstanding, messages) -> RingBatch"},
    {"take_requests", (PyCFunction)(void (*)(void))brk_codec_take_requests, METH_FASTCALL,
     "take_requests(rx, max_frame, message_type, conn, outstanding, messages, close_code, max_messages, "
     "async_budget, reply_budget) -> (messages, bytes, left, asynchronous) | (outcome,)"},
    {"put_complete", (PyCFunction)(void (*)(void))brk_codec_put_complete, METH_FASTCALL,
     "put_complete(tx, rid, status, writes, error) -> int | NotImplemented | (outcome,)"},
    {NULL, NULL, 0, NULL},
};

/* The i-th method definition (NULL past the end), for PyCFunction_NewEx. */
const void *brk_codec_method(int i)
{
    if (i < 0 || i >= (int)(sizeof brk_codec_methods / sizeof brk_codec_methods[0]) - 1)
        return NULL;
    return &brk_codec_methods[i];
}
