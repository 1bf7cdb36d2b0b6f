/* brk_py.h: what the extension's CPython entry points (the files of csrc/py) share.
 *
 * The extension is one cffi module (broker._brk). cffi cannot return Python
 * objects, so the per-message calls are METH_FASTCALL functions in four
 * method tables, one per concept, that src/shmbroker/core/native.py turns into
 * callables once, at import:
 *   ring.c    the rings' per-message calls and topic records (brk_ring_method)
 *   client.c  a client's whole call on a shared-memory session (brk_client_method)
 *   codec.c   the framework's frames <-> its Python events (brk_codec_method)
 *   server.c  the server's books, Message's fields, its take and put (brk_server_method)
 *
 * Python fields C reads or writes are declared to it once, at import, as the
 * fields themselves (a slotted class's member descriptor, brk_field below) or
 * as members of a C type (server.c's ConnBase, MessageBase): C never looks a
 * field up by its name, so renaming one fails at import, not on a message.
 */
#ifndef BRK_PY_H
#define BRK_PY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>

#include "brk_ring.h"
#include "brk_frame.h"

const void *brk_ring_method(int i);
const void *brk_client_method(int i);
const void *brk_codec_method(int i);
const void *brk_server_method(int i);

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

/* Every entry point starts here: the argument count, then args[0] as the ring. */
static inline brk_ring *brk_py_begin(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, const char *usage)
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
static inline int brk_py_int64(PyObject *o, long long *out)
{
    *out = PyLong_AsLongLong(o);
    return !(*out == -1 && PyErr_Occurred());
}

/* A second ring passed by address (call's and call_many's reply ring); NULL with an exception. */
static inline brk_ring *brk_py_ring(PyObject *address)
{
    brk_ring *r = PyLong_AsVoidPtr(address);
    if (!r && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "ring is closed");
    return r;
}

/* Wait for a record on rx (recv_wait, call, call_many): spin with the GIL for up to
 * BRK_PY_GIL_SPIN_NS (or the ring's spin, if shorter), then without it, for
 * up to wait_ns in all. The ring's outcome (BRK_OK: something to read). */
static inline int brk_py_await(brk_ring *rx, int64_t wait_ns)
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

/* ---- declared fields ------------------------------------------------------------------------ */

/* A field of a slotted Python class (a __slots__ member, or a dataclass(slots=True) field): its
 * class and its offset in an instance, from the member descriptor Python hands over (Arg.kind). */
typedef struct {
    PyTypeObject *type; /* borrowed from the descriptor, which the setup keeps */
    Py_ssize_t off;
} brk_field;

/* The field `descr` (a member descriptor of an object slot); -1 with TypeError if it is not one. */
static inline int brk_field_from(PyObject *descr, brk_field *out)
{
    if (Py_TYPE(descr) != &PyMemberDescr_Type || ((PyMemberDescrObject *)descr)->d_member->type != T_OBJECT_EX) {
        PyErr_Format(PyExc_TypeError, "a declared field is a slot's member descriptor, not %R", descr);
        return -1;
    }
    out->type = ((PyDescrObject *)descr)->d_type;
    out->off = ((PyMemberDescrObject *)descr)->d_member->offset;
    return 0;
}

/* Fields `fields` (a tuple of n member descriptors, all of one class) into out[0..n); -1 with TypeError. */
static inline int brk_fields_from(PyObject *fields, Py_ssize_t n, brk_field *out, const char *what)
{
    if (!PyTuple_Check(fields) || PyTuple_GET_SIZE(fields) != n) {
        PyErr_Format(PyExc_TypeError, "%s: a tuple of %zd fields", what, n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (brk_field_from(PyTuple_GET_ITEM(fields, i), &out[i]) < 0)
            return -1;
        if (out[i].type != out[0].type) {
            PyErr_Format(PyExc_TypeError, "%s: the fields are not all of %s", what, out[0].type->tp_name);
            return -1;
        }
    }
    return 0;
}

/* The field's value in o (borrowed; NULL when unset): o is an instance of the field's class. */
#define BRK_FIELD(o, f) (*(PyObject **)((char *)(o) + (f).off))

/* ---- shared between codec.c and server.c ----------------------------------------------------- */

/* Decode a REQUEST body's four arguments into a tuple of Arg: 1 (*out set), 0 (not the common valid case:
 * Python looks), -1 (an exception). */
int brk_codec_decode_args(const unsigned char *b, uint64_t size, PyObject **out);
/* encode_complete(rid, status, writes, error) -> bytes | NotImplemented (codec.c) */
PyObject *brk_codec_encode_complete(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
/* The Arg class's fields as codec_setup declared them: kind, value, data (NULL type before it ran). */
extern brk_field brk_arg_fields[3];

#endif
