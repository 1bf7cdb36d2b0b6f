/* server.c: the server's per-message work in C: a connection's books, Message's fields, ring 0's take, ring 1's put.
 * The types: ConnBase (the books), MessageBase (broker.Message's fields and hottest methods), RingBatch (a
 * batch's completions); the calls: take_requests from ring 0, put_complete into ring 1, serve_messages. */

/*
 * src/shmbroker/framework/server.py's _Conn subclasses ConnBase and broker.Message
 * subclasses MessageBase: the fields C reads and writes on every message are
 * these C types' members, declared here once; Python reads and writes them
 * as attributes. The protocol's fields C reads (ServerConnection.state and
 * .outstanding) and Message's Python methods it falls back on are handed
 * over once, at import, by server_setup (src/shmbroker/framework/native.py). So no
 * field is looked up by its name here: renaming one in Python fails at
 * import, never on a message.
 *
 * Every function here takes the common case only and leaves anything else,
 * every error included, to the Python it mirrors (Message._complete, _read,
 * _write; _Conn.on_ring's long way), which gives the exact error.
 */

#include "brk_py.h" /* first: it includes Python.h */
#include <string.h>


enum { K_NONE = BRK_K_NONE, K_INT = BRK_K_INT, K_READ = BRK_K_READ, K_WRITE = BRK_K_WRITE, K_READWRITE = BRK_K_READWRITE,
       K_HANDLE = BRK_K_HANDLE, K_COUNT = BRK_K_COUNT };

#define brk_ld brk_frame_ld
#define brk_st brk_frame_st

/* ---- what server_setup declared ------------------------------------------------------------- */

static PyTypeObject *brk_t_message;                 /* broker.Message: the one class take_requests makes */
static PyObject *brk_read_slow, *brk_write_slow;     /* Message._read, ._write: the Python way of read(), write() */
static PyObject *brk_complete_slow, *brk_send_slow;  /* Message._complete, ._send_completion */
static brk_field brk_proto_state, brk_proto_outstanding; /* ServerConnection.state, .outstanding */
static PyTypeObject *brk_t_proto;                    /* ServerConnection */
static PyObject *brk_state_open;                     /* State.OPEN */
static PyObject *brk_server_declared;                /* all of the above, kept */

/* ---- ConnBase: the connection's books --------------------------------------------------------- */

/*
 * The fields of a connection (src/shmbroker/framework/server.py, _Conn) that C reads
 * and writes on every message: its lock (and the lock's acquire and release,
 * taken when it is set), its protocol, its messages (request id -> Message),
 * the RingBatch being collected (or None), ring 1's completer and the frames
 * waiting for room in ring 1 (both None until the rings carry the session),
 * whether it ended, and the counts. All of them are guarded by the lock.
 */
typedef struct {
    PyObject_HEAD
    PyObject *lock, *acquire, *release;
    PyObject *proto, *messages, *ring_batch, *ring_put, *ring_pending;
    char ended;
    Py_ssize_t completions, async_outstanding;
    long long bytes_out;
} brk_conn;

static PyTypeObject *brk_t_conn;

static int brk_conn_traverse(brk_conn *c, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(c));
    Py_VISIT(c->lock);
    Py_VISIT(c->acquire);
    Py_VISIT(c->release);
    Py_VISIT(c->proto);
    Py_VISIT(c->messages);
    Py_VISIT(c->ring_batch);
    Py_VISIT(c->ring_put);
    Py_VISIT(c->ring_pending);
    return 0;
}

static int brk_conn_clear(brk_conn *c)
{
    Py_CLEAR(c->lock);
    Py_CLEAR(c->acquire);
    Py_CLEAR(c->release);
    Py_CLEAR(c->proto);
    Py_CLEAR(c->messages);
    Py_CLEAR(c->ring_batch);
    Py_CLEAR(c->ring_put);
    Py_CLEAR(c->ring_pending);
    return 0;
}

static void brk_conn_dealloc(brk_conn *c)
{
    PyTypeObject *t = Py_TYPE(c);
    PyObject_GC_UnTrack(c);
    brk_conn_clear(c);
    t->tp_free((PyObject *)c);
    Py_DECREF(t);
}

static PyObject *brk_conn_get_lock(brk_conn *c, void *closure)
{
    (void)closure;
    if (!c->lock) {
        PyErr_SetString(PyExc_AttributeError, "lock");
        return NULL;
    }
    return Py_NewRef(c->lock);
}

/* conn.lock = a lock (threading.RLock): its acquire and release are taken once, here. */
static int brk_conn_set_lock(brk_conn *c, PyObject *lock, void *closure)
{
    (void)closure;
    if (!lock) {
        PyErr_SetString(PyExc_AttributeError, "a connection's lock cannot be deleted");
        return -1;
    }
    /* the lock's own interface (threading's), not a field of ours */
    PyObject *acquire = PyObject_GetAttrString(lock, "acquire");
    PyObject *release = acquire ? PyObject_GetAttrString(lock, "release") : NULL;
    if (!release) {
        Py_XDECREF(acquire);
        return -1;
    }
    Py_XSETREF(c->acquire, acquire);
    Py_XSETREF(c->release, release);
    Py_XSETREF(c->lock, Py_NewRef(lock));
    return 0;
}

static PyMemberDef brk_conn_members[] = {
    {"proto", T_OBJECT_EX, offsetof(brk_conn, proto), 0, "the protocol's state (broker.protocol.frames.ServerConnection)"},
    {"messages", T_OBJECT_EX, offsetof(brk_conn, messages), 0, "request id -> Message, until each completes"},
    {"ring_batch", T_OBJECT_EX, offsetof(brk_conn, ring_batch), 0,
     "the RingBatch collecting the completions of a batch being served, or None"},
    {"ring_put", T_OBJECT_EX, offsetof(brk_conn, ring_put), 0,
     "ring 1's completer (fn(rid, status, writes, error) -> bytes written | NotImplemented | (outcome,)), or None"},
    {"ring_pending", T_OBJECT_EX, offsetof(brk_conn, ring_pending), 0,
     "the frames waiting for room in ring 1 (a sized collection), or None"},
    {"ended", T_BOOL, offsetof(brk_conn, ended), 0, "the connection ended"},
    {"completions", T_PYSSIZET, offsetof(brk_conn, completions), 0, "completions sent"},
    {"async_outstanding", T_PYSSIZET, offsetof(brk_conn, async_outstanding), 0, "message slots taken"},
    {"bytes_out", T_LONGLONG, offsetof(brk_conn, bytes_out), 0, "bytes sent"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef brk_conn_getset[] = {
    {"lock", (getter)brk_conn_get_lock, (setter)brk_conn_set_lock, "the lock that guards the books", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot brk_conn_slots[] = {
    {Py_tp_doc, "The books of a server's connection that C keeps on every message (csrc/py/server.c)."},
    {Py_tp_dealloc, brk_conn_dealloc},
    {Py_tp_traverse, brk_conn_traverse},
    {Py_tp_clear, brk_conn_clear},
    {Py_tp_members, brk_conn_members},
    {Py_tp_getset, brk_conn_getset},
    {0, NULL},
};

static PyType_Spec brk_conn_spec = {
    "shmbroker._brk.ConnBase", sizeof(brk_conn), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    brk_conn_slots,
};

/* conn_base() -> the ConnBase type (made once). */
static PyObject *brk_server_conn_base(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    (void)args;
    if (nargs) {
        PyErr_SetString(PyExc_TypeError, "conn_base()");
        return NULL;
    }
    if (!brk_t_conn && !(brk_t_conn = (PyTypeObject *)PyType_FromSpec(&brk_conn_spec)))
        return NULL;
    return Py_NewRef((PyObject *)brk_t_conn);
}

/* The protocol's field f of conn c (borrowed), or NULL (no exception) when c's proto is not a ServerConnection. */
static PyObject *brk_proto_field(brk_conn *c, brk_field f)
{
    PyObject *proto = c->proto;
    return proto && brk_t_proto && PyObject_TypeCheck(proto, brk_t_proto) ? BRK_FIELD(proto, f) : NULL;
}

/* lock.acquire() / lock.release(), as given with the lock; -1 with an exception. */
static int brk_conn_acquire(brk_conn *c)
{
    PyObject *r = PyObject_CallNoArgs(c->acquire);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* release, keeping an exception already set (a failed release then replaces nothing): -1 if it failed. */
static int brk_conn_release(brk_conn *c)
{
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    PyObject *r = PyObject_CallNoArgs(c->release);
    if (et) {
        Py_XDECREF(r);
        PyErr_Restore(et, ev, tb);
        return r ? 0 : -1;
    }
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* ---- MessageBase: the fields of broker.Message and its three hottest methods ------------------ */

/*
 * broker.Message subclasses this C type: its fields live here, and read(),
 * write() and complete() take their common case here (a whole readable
 * argument; the whole content of a writable one, from bytes; a completion
 * without error text on a shared-memory session), in a few hundred
 * nanoseconds less than in Python. Anything else calls the Python class's
 * _read / _write / _complete, which hold the reference behaviour and every
 * error. Running with the GIL held and calling no Python code, the fast
 * write is atomic against the other threads (complete() reads _done and
 * _writes under the connection's lock).
 */
typedef struct {
    PyObject_HEAD
    PyObject *conn, *request_id, *code, *handle, *asynchronous, *args, *writes, *done;
    PyObject *cancel; /* NULL (None): not cancelled; a list: its on-cancel callbacks; True: cancelled */
} brk_msg;

static PyTypeObject *brk_t_msgbase;

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
    Py_VISIT(m->cancel);
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
    Py_CLEAR(m->cancel);
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
    return brk_arg_fields[0].type && Py_TYPE(a) == brk_arg_fields[0].type ? a : NULL;
}

/* The kind of an Arg (exactly one: brk_msg_arg checked) as a C int, or -1 (not an int, or unset). */
static long brk_arg_kind(PyObject *a)
{
    PyObject *k = BRK_FIELD(a, brk_arg_fields[0]);
    long v = k && PyLong_Check(k) ? PyLong_AsLong(k) : -1;
    if (v == -1)
        PyErr_Clear();
    return v;
}

/* fn(self, *args, **kw): Message's Python way (fn given by server_setup). */
static PyObject *brk_msg_slow(PyObject *self, PyObject *fn, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    if (!fn) {
        PyErr_SetString(PyExc_RuntimeError, "server_setup() was not called");
        return NULL;
    }
    PyObject *meth = PyMethod_New(fn, self);
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
            PyObject *data = BRK_FIELD(a, brk_arg_fields[2]);
            if (data && PyBytes_CheckExact(data))
                return Py_NewRef(data);
        }
    }
    return brk_msg_slow(self, brk_read_slow, args, nargs, kw);
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
            PyObject *v = BRK_FIELD(a, brk_arg_fields[1]); /* a writable argument's max length */
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
    return brk_msg_slow(self, brk_write_slow, args, nargs, kw);
}

/* ---- RingBatch: the completions of one batch, encoded back to back ---------------------------- */

/*
 * While the server serves a batch of a shared-memory session's requests
 * (_Conn._in_one_record), conn.ring_batch is one of these: complete() in C
 * encodes its frame straight into the batch's buffer, keeping the books with
 * the connection's lock held; the Python way appends its frames (append).
 * take() hands over the bytes, as one ring record, with the counts the
 * connection adds to its own.
 */
typedef struct {
    PyObject_HEAD
    unsigned char *buf;
    size_t len, cap;
    Py_ssize_t completions, async_done;
} brk_batch;

static PyTypeObject *brk_t_batch;

static void brk_batch_dealloc(brk_batch *b)
{
    PyTypeObject *t = Py_TYPE(b);
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
    {Py_tp_doc, "The completions of one batch of a shared-memory session, encoded back to back (csrc/py/server.c)."},
    {Py_tp_dealloc, brk_batch_dealloc},
    {Py_tp_methods, brk_batch_methods},
    {Py_mp_length, brk_batch_len},
    {0, NULL},
};

static PyType_Spec brk_batch_spec = {
    "shmbroker._brk.RingBatch", sizeof(brk_batch), 0, Py_TPFLAGS_DEFAULT, brk_batch_slots,
};

/* ring_batch() -> a new, empty RingBatch (a connection's, made once). */
static PyObject *brk_server_ring_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    (void)args;
    if (nargs) {
        PyErr_SetString(PyExc_TypeError, "ring_batch()");
        return NULL;
    }
    if (!brk_t_batch && !(brk_t_batch = (PyTypeObject *)PyType_FromSpec(&brk_batch_spec)))
        return NULL;
    return brk_t_batch->tp_alloc(brk_t_batch, 0);
}

/*
 * serve_messages(conn, messages, service, failed, returned) -> None: the
 * server's turn over the Messages C made (take_requests), as _Conn would run
 * it in Python: service(m) for each, until conn.ended; an Exception it raises
 * goes to failed(m, e) (its traceback kept), a value other than None to
 * returned(m, value). Anything else raised (a BaseException that is not an
 * Exception, or an error of failed or returned) ends the turn and propagates.
 */
static PyObject *brk_server_serve_messages(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 5 || !PyList_CheckExact(args[1]) || !brk_t_conn || !PyObject_TypeCheck(args[0], brk_t_conn)) {
        PyErr_SetString(PyExc_TypeError, "serve_messages(conn: ConnBase, messages: list, service, failed, returned)");
        return NULL;
    }
    brk_conn *c = (brk_conn *)args[0];
    PyObject *msgs = args[1], *service = args[2], *failed = args[3], *returned = args[4];
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(msgs); i++) {
        if (c->ended)
            Py_RETURN_NONE;
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

/* The message's request id, if it is outstanding in the protocol of an open, live connection c (the
 * lock held): 1, 0 (not the common case: the Python way decides), -1 (an exception). */
static int brk_msg_outstanding(brk_conn *c, brk_msg *m, unsigned long long *rid, PyObject **outstanding)
{
    if (m->done != Py_False || c->ended || !m->request_id || !PyLong_CheckExact(m->request_id))
        return 0;
    *rid = PyLong_AsUnsignedLongLong(m->request_id);
    if (*rid == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (brk_proto_field(c, brk_proto_state) != brk_state_open)
        return 0; /* the client is gone, or going: the Python way says nothing to it */
    *outstanding = brk_proto_field(c, brk_proto_outstanding);
    if (!*outstanding || !PyDict_CheckExact(*outstanding))
        return 0;
    int there = PyDict_Contains(*outstanding, m->request_id);
    return there; /* not outstanding (0): the Python way raises the protocol's error */
}

/* The books of a completion decided (the lock held): out of the protocol's outstanding and the
 * connection's messages, its slot given back, counted. -1 with an exception. */
static int brk_msg_booked(brk_conn *c, brk_msg *m, PyObject *outstanding, Py_ssize_t *async_done)
{
    if (PyDict_DelItem(outstanding, m->request_id) < 0)
        return -1;
    Py_SETREF(m->done, Py_NewRef(Py_True));
    /* only a message that took a slot gives one back (a SERVER_BUSY refusal took none) */
    if (c->messages && PyDict_CheckExact(c->messages) && PyDict_DelItem(c->messages, m->request_id) == 0) {
        if (m->asynchronous == Py_True)
            (*async_done)++;
    } else {
        PyErr_Clear(); /* not in them: nothing to give back */
    }
    return 0;
}

/* complete(status) into the RingBatch b being collected, with the connection's lock held: 1 done,
 * 0 not the common case (nothing changed: the Python way), -1 an exception. */
static int brk_batch_complete(brk_conn *c, brk_batch *b, brk_msg *m, long long status)
{
    if (brk_conn_acquire(c) < 0)
        return -1;
    int out = 0;
    PyObject *outstanding = NULL, *wdata[4] = { NULL, NULL, NULL, NULL };
    unsigned long long rid = 0;
    out = brk_msg_outstanding(c, m, &rid, &outstanding);
    if (out <= 0)
        goto unlock;
    out = 0;
    /* the writes: argument index -> bytes, in index order */
    unsigned nw = 0;
    uint64_t size = BRK_FRAME_COMPLETE_FIXED;
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
            size += BRK_FRAME_WRITE_HDR + (uint64_t)PyBytes_GET_SIZE(v);
        }
    } else if (!m->writes) {
        goto unlock;
    }
    if (size > UINT32_MAX || brk_batch_room(b, (size_t)(BRK_FRAME_HEADER + size)) < 0) {
        out = size > UINT32_MAX ? 0 : -1;
        goto unlock;
    }
    /* decided: the books, then the frame */
    if (brk_msg_booked(c, m, outstanding, &b->async_done) < 0) {
        out = -1;
        goto unlock;
    }
    b->completions++;
    unsigned char *p = b->buf + b->len;
    brk_frame_header(p, BRK_FRAME_COMPLETE, 0, size, (uint64_t)rid);
    unsigned char *q = p + BRK_FRAME_HEADER;
    brk_st(q, (uint64_t)(uint32_t)(int32_t)status, 4);
    q[4] = (unsigned char)nw;
    q[5] = 0;
    brk_st(q + 6, 0, 2);
    q += BRK_FRAME_COMPLETE_FIXED;
    for (int i = 0; i < 4; i++) {
        if (!wdata[i])
            continue;
        Py_ssize_t n = PyBytes_GET_SIZE(wdata[i]);
        memset(q, 0, BRK_FRAME_WRITE_HDR);
        q[0] = (unsigned char)i;
        brk_st(q + 4, (uint64_t)n, 4);
        memcpy(q + BRK_FRAME_WRITE_HDR, PyBytes_AS_STRING(wdata[i]), (size_t)n);
        q += BRK_FRAME_WRITE_HDR + n;
    }
    b->len += (size_t)(BRK_FRAME_HEADER + size);
    out = 1;
unlock:
    if (brk_conn_release(c) < 0)
        out = -1;
    return out;
}

/* complete(status) straight into ring 1, with the lock held: 1 done, 0 not the common case (nothing
 * changed), -1 an exception. Only when the rings carry the session, no batch is being collected and
 * nothing waits for room in ring 1 before it. */
static int brk_ring_complete(brk_conn *c, brk_msg *m, long long status)
{
    unsigned long long rid;
    PyObject *outstanding = NULL;
    if (!c->ring_put || c->ring_put == Py_None || (c->ring_batch && c->ring_batch != Py_None) || !c->ring_pending ||
        c->ring_pending == Py_None)
        return 0;
    Py_ssize_t waiting = PyObject_Size(c->ring_pending);
    if (waiting != 0)
        return waiting < 0 ? -1 : 0;
    int there = brk_msg_outstanding(c, m, &rid, &outstanding);
    if (there <= 0)
        return there;
    /* decided: the books, then the frame into ring 1 */
    Py_ssize_t async_done = 0;
    if (brk_msg_booked(c, m, outstanding, &async_done) < 0)
        return -1;
    c->async_outstanding -= async_done;
    c->completions++;
    PyObject *writes;
    if (m->writes && PyDict_CheckExact(m->writes) && PyDict_GET_SIZE(m->writes)) {
        writes = PyDict_Items(m->writes);
        if (!writes || PyList_Sort(writes) < 0) {
            Py_XDECREF(writes);
            return -1;
        }
    } else if (!(writes = PyTuple_New(0))) {
        return -1;
    }
    int rc = -1;
    PyObject *st = PyLong_FromLongLong(status), *n = NULL;
    if (st) {
        PyObject *pargs[4] = { m->request_id, st, writes, Py_None };
        n = PyObject_Vectorcall(c->ring_put, pargs, 4, NULL);
    }
    if (n && PyLong_CheckExact(n)) {
        c->bytes_out += PyLong_AsLongLong(n);
        rc = PyErr_Occurred() ? -1 : 1;
    } else if (n) { /* no room, or not for C: the long way sends it (Message._send_completion) */
        PyObject *sargs[4] = { (PyObject *)c, m->request_id, st, writes };
        PyObject *r = PyObject_Vectorcall(brk_send_slow, sargs, 4, NULL);
        rc = r ? 1 : -1;
        Py_XDECREF(r);
    }
    Py_XDECREF(n);
    Py_XDECREF(st);
    Py_DECREF(writes);
    return rc;
}

/*
 * complete(status=0, error=None): the common case in C (a message of a
 * shared-memory session, no error text): the frame goes into the batch being
 * collected (conn.ring_batch), or straight into ring 1 when nothing waits
 * before it there, with the connection's lock held as Message._complete
 * holds it; anything else (and every error) is Message._complete's.
 */
static PyObject *brk_msg_complete(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    brk_msg *m = (brk_msg *)self;
    long long status = 0;
    if (kw || nargs > 2 || (nargs == 2 && args[1] != Py_None) || m->done != Py_False ||
        (m->asynchronous != Py_False && m->asynchronous != Py_True) || !brk_state_open || !m->conn || !brk_t_conn ||
        !PyObject_TypeCheck(m->conn, brk_t_conn))
        goto slow;
    if (nargs >= 1) {
        int overflow;
        if (!PyLong_CheckExact(args[0]))
            goto slow;
        status = PyLong_AsLongLongAndOverflow(args[0], &overflow);
        if (overflow || status < INT32_MIN || status > INT32_MAX)
            goto slow; /* _complete says why */
    }
    brk_conn *c = (brk_conn *)m->conn;
    if (!c->acquire)
        goto slow;
    int rc;
    Py_INCREF(c); /* held across the calls, whatever they drop */
    if (c->ring_batch && brk_t_batch && Py_TYPE(c->ring_batch) == brk_t_batch) { /* a batch being served */
        rc = brk_batch_complete(c, (brk_batch *)c->ring_batch, m, status);
    } else {
        rc = brk_conn_acquire(c);
        if (rc == 0) {
            rc = brk_ring_complete(c, m, status);
            if (brk_conn_release(c) < 0)
                rc = -1;
        }
    }
    Py_DECREF(c);
    if (rc < 0)
        return NULL;
    if (rc > 0)
        Py_RETURN_NONE;
slow:
    return brk_msg_slow(self, brk_complete_slow, args, nargs, kw);
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
    {"_cancel", T_OBJECT, offsetof(brk_msg, cancel), 0, NULL}, /* Message.cancelled, on_cancel */
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot brk_msg_slots[] = {
    {Py_tp_doc, "The fields of broker.Message and the common case of read(), write() and complete() (csrc/py/server.c)."},
    {Py_tp_dealloc, brk_msg_dealloc},
    {Py_tp_traverse, brk_msg_traverse},
    {Py_tp_clear, brk_msg_clear},
    {Py_tp_methods, brk_msg_methods},
    {Py_tp_members, brk_msg_members},
    {0, NULL},
};

static PyType_Spec brk_msg_spec = {
    "shmbroker._brk.MessageBase", sizeof(brk_msg), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    brk_msg_slots,
};

/* message_base() -> the MessageBase type (made once). */
static PyObject *brk_server_message_base(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    (void)args;
    if (nargs) {
        PyErr_SetString(PyExc_TypeError, "message_base()");
        return NULL;
    }
    if (!brk_t_msgbase && !(brk_t_msgbase = (PyTypeObject *)PyType_FromSpec(&brk_msg_spec)))
        return NULL;
    return Py_NewRef((PyObject *)brk_t_msgbase);
}

/*
 * server_setup(Message, (Message._read, ._write, ._complete, ._send_completion), ServerConnection.state,
 *              ServerConnection.outstanding, State.OPEN): once, at import (src/shmbroker/framework/native.py).
 */
static PyObject *brk_server_setup(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 5 || !PyType_Check(args[0]) || !brk_t_msgbase ||
        !PyType_IsSubtype((PyTypeObject *)args[0], brk_t_msgbase) || !PyTuple_Check(args[1]) ||
        PyTuple_GET_SIZE(args[1]) != 4) {
        PyErr_SetString(PyExc_TypeError, "server_setup(Message (a MessageBase), (Message._read, ._write, ._complete, "
                                         "._send_completion), ServerConnection.state, ServerConnection.outstanding, "
                                         "State.OPEN)");
        return NULL;
    }
    for (int i = 0; i < 4; i++) {
        if (!PyCallable_Check(PyTuple_GET_ITEM(args[1], i))) {
            PyErr_SetString(PyExc_TypeError, "server_setup: Message's four methods are callables");
            return NULL;
        }
    }
    brk_field state, outstanding;
    if (brk_field_from(args[2], &state) < 0 || brk_field_from(args[3], &outstanding) < 0)
        return NULL;
    if (!PyType_IsSubtype(outstanding.type, state.type)) {
        PyErr_SetString(PyExc_TypeError, "server_setup: the state field is not of the protocol's class or a base of it");
        return NULL;
    }
    PyObject *declared = PyTuple_Pack(5, args[0], args[1], args[2], args[3], args[4]);
    if (!declared)
        return NULL;
    Py_XSETREF(brk_server_declared, declared); /* holds everything below */
    brk_t_message = (PyTypeObject *)args[0];
    brk_read_slow = PyTuple_GET_ITEM(args[1], 0);
    brk_write_slow = PyTuple_GET_ITEM(args[1], 1);
    brk_complete_slow = PyTuple_GET_ITEM(args[1], 2);
    brk_send_slow = PyTuple_GET_ITEM(args[1], 3);
    brk_proto_state = state;
    brk_proto_outstanding = outstanding;
    brk_t_proto = outstanding.type;
    brk_state_open = args[4];
    Py_RETURN_NONE;
}

/* Records up to this size are copied out of the ring before they are read
 * (the client could change the ring under us); a bigger one goes to Python. */
#define BRK_TAKE_COPY BRK_FRAME_BATCH_BYTES
#define BRK_TAKE_FRAMES (BRK_TAKE_COPY / (BRK_FRAME_HEADER + BRK_FRAME_REQUEST_FIXED) + 1)

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
        if (k == BRK_TAKE_FRAMES || n - at < BRK_FRAME_HEADER)
            goto defer;
        const unsigned char *h = p + at;
        uint64_t length = brk_ld(h + 8, 4);
        uint64_t flags = brk_ld(h + 6, 2);
        if (memcmp(h, "BRK1", 4) || h[4] != BRK_FRAME_VERSION || h[5] != BRK_FRAME_REQUEST ||
            (flags & ~(uint64_t)BRK_FRAME_FLAG_ASYNC) || brk_ld(h + 12, 4) || length > max_frame ||
            length > n - at - BRK_FRAME_HEADER || length < BRK_FRAME_REQUEST_FIXED)
            goto defer;
        if (flags && async_budget-- <= 0)
            goto defer; /* no message slot free: Python refuses it (SERVER_BUSY) */
        const unsigned char *b = h + BRK_FRAME_HEADER;
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
        int ok = brk_codec_decode_args(b, length, &args[k]);
        if (ok < 0)
            goto fail;
        if (!ok)
            goto defer;
        rids[k] = rid;
        asyncs[k] = flags != 0;
        codes[k] = code;
        handles[k] = (uint32_t)brk_ld(b + 4, 4);
        at += BRK_FRAME_HEADER + length;
        replies += BRK_FRAME_HEADER + BRK_FRAME_COMPLETE_FIXED;
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
 * take_requests(rx, conn, max_frame, close_code, max_messages, async_budget, reply_budget)
 *     -> (messages, bytes, left, asynchronous) | (outcome,)
 * The requests at the head of ring 0 (the server's side), each a new
 * broker.Message (its fields set without running its __init__: _conn,
 * request_id, code, handle, asynchronous, _args, _writes None, _done False)
 * entered in the protocol's outstanding and the connection's messages; `bytes` the records' bytes; `asynchronous` how many
 * of them are asynchronous (at most async_budget: the message slots free; the
 * caller counts them as taken), and the most their completions can take at most
 * reply_budget bytes (the connection's room before its bound: Server(max_queued=)).
 * A record is taken whole or not at all: `left`
 * is true when one waits that is anything else (an asynchronous request with
 * no slot free, a negative code or close_code, a frame over several records,
 * an invalid one...), for Python. (outcome,) for a ring error before anything
 * was taken.
 */
static PyObject *brk_server_take_requests(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 7 || !brk_t_conn || !PyObject_TypeCheck(args[1], brk_t_conn)) {
        PyErr_SetString(PyExc_TypeError, "take_requests(rx, conn: ConnBase, max_frame, close_code, max_messages, "
                                         "async_budget, reply_budget)");
        return NULL;
    }
    if (!brk_t_message || !brk_arg_fields[0].type) {
        PyErr_SetString(PyExc_RuntimeError, "server_setup() or codec_setup() was not called");
        return NULL;
    }
    brk_ring *r = brk_py_ring(args[0]);
    if (!r)
        return NULL;
    unsigned long long max_frame = PyLong_AsUnsignedLongLong(args[2]);
    long long close_code = PyLong_AsLongLong(args[3]);
    Py_ssize_t max_messages = PyLong_AsSsize_t(args[4]);
    Py_ssize_t async_budget = PyLong_AsSsize_t(args[5]);
    long long reply_arg = PyLong_AsLongLong(args[6]);
    uint64_t reply_budget = reply_arg > 0 ? (uint64_t)reply_arg : 0;
    if (PyErr_Occurred())
        return NULL;
    brk_conn *c = (brk_conn *)args[1];
    PyObject *conn = args[1], *outstanding = brk_proto_field(c, brk_proto_outstanding), *messages = c->messages;
    if (!outstanding || !PyDict_CheckExact(outstanding) || !messages || !PyDict_CheckExact(messages)) {
        PyErr_SetString(PyExc_TypeError, "take_requests: the connection's proto (a ServerConnection) and messages "
                                         "(a dict) are not set");
        return NULL;
    }
    PyTypeObject *mt = brk_t_message;
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
            PyObject *m = mt->tp_alloc(mt, 0); /* the fields, set directly (they steal vals' references) */
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
            PyObject *rid = ((brk_msg *)m)->request_id;
            int bad = PyDict_SetItem(outstanding, rid, m) < 0 || PyDict_SetItem(messages, rid, m) < 0;
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
                PyObject *rid = ((brk_msg *)PyList_GET_ITEM(list, i))->request_id;
                if (PyDict_DelItem(outstanding, rid) < 0 || PyDict_DelItem(messages, rid) < 0)
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
static PyObject *brk_server_put_complete(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "put_complete(tx, rid, status, writes, error)");
        return NULL;
    }
    brk_ring *r = brk_py_ring(args[0]);
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

static PyMethodDef brk_server_methods[] = {
    {"conn_base", (PyCFunction)(void (*)(void))brk_server_conn_base, METH_FASTCALL, "conn_base() -> type"},
    {"message_base", (PyCFunction)(void (*)(void))brk_server_message_base, METH_FASTCALL, "message_base() -> type"},
    {"server_setup", (PyCFunction)(void (*)(void))brk_server_setup, METH_FASTCALL,
     "server_setup(Message, (Message._read, ._write, ._complete, ._send_completion), ServerConnection.state, "
     "ServerConnection.outstanding, State.OPEN)"},
    {"ring_batch", (PyCFunction)(void (*)(void))brk_server_ring_batch, METH_FASTCALL, "ring_batch() -> RingBatch"},
    {"serve_messages", (PyCFunction)(void (*)(void))brk_server_serve_messages, METH_FASTCALL,
     "serve_messages(conn, messages, service, failed, returned) -> None"},
    {"take_requests", (PyCFunction)(void (*)(void))brk_server_take_requests, METH_FASTCALL,
     "take_requests(rx, conn, max_frame, close_code, max_messages, async_budget, reply_budget) "
     "-> (messages, bytes, left, asynchronous) | (outcome,)"},
    {"put_complete", (PyCFunction)(void (*)(void))brk_server_put_complete, METH_FASTCALL,
     "put_complete(tx, rid, status, writes, error) -> int | NotImplemented | (outcome,)"},
    {NULL, NULL, 0, NULL},
};

/* The i-th method definition (NULL past the end), for PyCFunction_NewEx (src/shmbroker/core/native.py). */
const void *brk_server_method(int i)
{
    if (i < 0 || i >= (int)(sizeof brk_server_methods / sizeof brk_server_methods[0]) - 1)
        return NULL;
    return &brk_server_methods[i];
}
