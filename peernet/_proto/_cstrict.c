/* _cstrict: the compiled accelerator of peernet's strict CBOR profile.
 *
 * An optional speed-up of peernet/_proto/cbor.py, which stays the reference: for every
 * input this module must give exactly what the pure-Python code gives (the same value,
 * or a ProtocolError with the same message), and it is fuzzed against it
 * (tests/adversarial/fuzz_targets.py, also under ASan and UBSan). Four entry points:
 *
 *   decode(buf, max_depth, max_items) -> value                  all of cbor.decode
 *   encode(value, max_depth, max_items) -> bytes | None         cbor.encode's fast path
 *   decode_message(buf, max_depth, max_items, spec) -> record   messages.decode_message
 *   encode_message(msg, max_depth, max_items, spec) -> bytes | None
 *                                              messages.encode_for_link's common case
 *
 * decode() is cbor._prevalidate and cbor2.loads in one pass: it checks each head as the
 * pre-validator does, in the same order and with the same messages, and builds the value
 * as it goes. The pure path checks UTF-8 only in its second step (cbor2), after the whole
 * structure passed; so here a bad text string is remembered and reported only once the
 * structure has been checked to the end. encode() handles only values the pure
 * _fast_check accepts (exact builtin types within the limits) and returns None for
 * anything else, so the pure code keeps every conversion and every error message. The
 * message functions add messages.py's shape and field checks and build the record.
 *
 * Safety rules (guides/security.md): iterative with an explicit stack bounded by
 * max_depth (no recursion); every declared length is checked against the bytes that
 * remain, with overflow-safe arithmetic (no "i + len" that could wrap); besides the
 * values it returns, it allocates only that stack (and, for encode, the output); no state
 * survives a call. Invalid input raises ProtocolError (so does running out of memory,
 * as in the pure path); a limit the C types cannot hold, or a buffer that is not exactly
 * bytes, raises Unsupported so the caller takes the pure path.
 *
 * PEERNET_CSTRICT_EXACT_COPY (sanitizer builds only): decode from an exact-size heap copy
 * of the input, so that AddressSanitizer sees a read even one byte past the end (a bytes
 * object has a NUL after its data, inside its allocation).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

static PyObject *ProtocolError;   /* peernet.errors.ProtocolError */
static PyObject *Unsupported;     /* _cstrict.Unsupported: "take the pure path" */

#define UTF8_REFUSED "CBOR refused by the strict decoder (invalid UTF-8 or malformed item)"

/* ------------------------------------------------------------------------- decoding */

typedef struct {
    PyObject *container;  /* list or dict being filled (borrowed: its parent owns it);
                             NULL for the root pseudo-frame */
    Py_ssize_t rem;       /* items still to read; a map counts keys and values */
    Py_ssize_t index;     /* next list slot */
    PyObject *key;        /* owned: a map key read, its value not yet stored */
    int is_map;
} DFrame;

#define LOCAL_FRAMES 34   /* the default max_depth (16) and the envelope fit on the C stack */

/* Make room for frame index `*cap` (the stack is full): double it, up to `limit` frames.
 * The first growth moves it from the caller's local array to the heap. Returns the new
 * stack, or NULL (MemoryError set; the old stack is still valid). */
static void *
grow_stack(void *stack, void *local, size_t elem, Py_ssize_t *cap, Py_ssize_t limit)
{
    Py_ssize_t want = *cap <= limit / 2 ? *cap * 2 : limit;
    void *bigger;
    if (want <= *cap || (size_t)want > PY_SSIZE_T_MAX / elem) {
        PyErr_SetString(PyExc_SystemError, "_cstrict: stack limit reached");
        return NULL;
    }
    if (stack == local) {
        bigger = PyMem_Malloc((size_t)want * elem);
        if (bigger != NULL)
            memcpy(bigger, local, (size_t)*cap * elem);
    } else {
        bigger = PyMem_Realloc(stack, (size_t)want * elem);
    }
    if (bigger == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    *cap = want;
    return bigger;
}

/* A limit as a C size; -1 with Unsupported set if it is not an int that fits. */
static int
get_limit(PyObject *obj, Py_ssize_t *out)
{
    if (!PyLong_Check(obj)) {
        PyErr_SetString(Unsupported, "limit is not an int");
        return -1;
    }
    *out = PyLong_AsSsize_t(obj);
    if (*out == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_SetString(Unsupported, "limit out of range");
        return -1;
    }
    return 0;
}

static inline uint64_t
be16(const unsigned char *p) { return ((uint64_t)p[0] << 8) | p[1]; }

static inline uint64_t
be32(const unsigned char *p)
{
    return ((uint64_t)p[0] << 24) | ((uint64_t)p[1] << 16) | ((uint64_t)p[2] << 8) | p[3];
}

static inline uint64_t
be64(const unsigned char *p) { return (be32(p) << 32) | be32(p + 4); }

/* IEEE half precision to double, bit for bit as cbor2 does it (NaN: quiet bit set,
 * payload kept). */
static double
half_to_double(const unsigned char *p)
{
    unsigned h = (unsigned)be16(p);
    unsigned sign = h >> 15, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    double v;
    if (exp == 0x1f) {
        if (man == 0) {
            v = Py_HUGE_VAL;
        } else {
            uint64_t bits = ((uint64_t)sign << 63) | 0x7ff8000000000000ULL
                            | ((uint64_t)man << 42);
            memcpy(&v, &bits, sizeof v);
            return v;
        }
    } else if (exp == 0) {
        v = ldexp((double)man, -24);
    } else {
        v = ldexp((double)(man | 0x400), (int)exp - 25);
    }
    return sign ? -v : v;
}

static PyObject *
float_value(const unsigned char *p, int width)
{
    if (width == 2)
        return PyFloat_FromDouble(half_to_double(p));
    if (width == 4) {
        uint32_t bits = (uint32_t)be32(p);
        float f;
        memcpy(&f, &bits, sizeof f);
        return PyFloat_FromDouble((double)f);
    }
    uint64_t bits = be64(p);
    double d;
    memcpy(&d, &bits, sizeof d);
    return PyFloat_FromDouble(d);
}

static PyObject *
int_value(int major, uint64_t val)
{
    if (major == 0)
        return PyLong_FromUnsignedLongLong(val);
    if (val <= (uint64_t)LLONG_MAX)
        return PyLong_FromLongLong(-1 - (long long)val);
    PyObject *u = PyLong_FromUnsignedLongLong(val);   /* -1 - val == ~val */
    if (u == NULL)
        return NULL;
    PyObject *r = PyNumber_Invert(u);
    Py_DECREF(u);
    return r;
}

/* Decode one UTF-8 text string. A bad one is not an error yet (the pure path reports
 * it only after the structure has passed): *bad is set, and the stand-in is None for a
 * value, or for a map key the text with surrogate escapes (so that duplicate keys are
 * still found by their exact bytes, as the pure pre-validator finds them). */
static PyObject *
text_value(const unsigned char *p, Py_ssize_t len, int is_key, int *bad)
{
    PyObject *s = PyUnicode_DecodeUTF8((const char *)p, len, NULL);
    if (s != NULL || !PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
        return s;
    PyErr_Clear();
    *bad = 1;
    if (is_key)
        return PyUnicode_DecodeUTF8((const char *)p, len, "surrogateescape");
    Py_RETURN_NONE;
}

/* The whole of cbor.decode for an exact bytes object: the checks of cbor._prevalidate
 * (same order, same messages) with the value built in the same pass. */
static PyObject *
decode_value(const unsigned char *p, Py_ssize_t n, Py_ssize_t max_depth,
             Py_ssize_t max_items)
{
    DFrame local[LOCAL_FRAMES];
    DFrame *stack = local;
    Py_ssize_t cap = LOCAL_FRAMES, frames, top = 0, i = 0, items = 1;
    Py_ssize_t items_cap = max_items < 0 ? -1 : max_items;  /* no overflow below */
    PyObject *root = NULL, *value = NULL;
    int bad_text = 0;

    if (n == 0) {
        PyErr_SetString(ProtocolError, "empty message");
        return NULL;
    }
    /* At most one frame per open container, plus the root's: max_depth + 1. A container
     * needs a byte of input, so no more than n can be open whatever max_depth says. */
    frames = (max_depth < 0 ? 0 : (max_depth < n ? max_depth : n)) + 1;
    stack[0].container = NULL;
    stack[0].rem = 1;
    stack[0].index = 0;
    stack[0].key = NULL;
    stack[0].is_map = 0;

    for (;;) {
        DFrame *cur = &stack[top];
        if (cur->rem == 0) {
            if (top == 0)
                break;
            top--;
            continue;
        }
        cur->rem--;
        if (i >= n) {
            PyErr_SetString(ProtocolError, "truncated message");
            goto fail;
        }
        unsigned ib = p[i++];
        int major = (int)(ib >> 5);
        int is_key = cur->is_map && (cur->rem & 1);
        int opened = 0;        /* 4 or 5 once an array or a map is made */
        Py_ssize_t count = 0;  /* its items */
        uint64_t val;

        if (major == 7) {
            int w;
            if (is_key) {
                PyErr_Format(ProtocolError, "map key at offset %zd is not a text string",
                             i - 1);
                goto fail;
            }
            if (ib == 0xF4) {
                value = Py_NewRef(Py_False);
                goto store;
            }
            if (ib == 0xF5) {
                value = Py_NewRef(Py_True);
                goto store;
            }
            if (ib == 0xF6) {
                value = Py_NewRef(Py_None);
                goto store;
            }
            if (ib == 0xFB)
                w = 8;
            else if (ib == 0xFA)
                w = 4;
            else if (ib == 0xF9)
                w = 2;
            else {
                PyErr_Format(ProtocolError,
                             "simple value, undefined or break (0x%02x) at offset %zd",
                             ib, i - 1);
                goto fail;
            }
            if (w > n - i) {
                PyErr_SetString(ProtocolError, "truncated float");
                goto fail;
            }
            value = float_value(p + i, w);
            i += w;
            if (value == NULL)
                goto fail;
            goto store;
        }
        if (major == 6) {
            PyErr_Format(ProtocolError, "tag at offset %zd: tags are not allowed", i - 1);
            goto fail;
        }
        unsigned ai = ib & 31;
        if (ai < 24) {
            val = ai;
        } else if (ai <= 27) {  /* 1, 2, 4 or 8 bytes follow, in shortest form */
            int w = 1 << (ai - 24);
            if (w > n - i) {
                PyErr_SetString(ProtocolError, "truncated head");
                goto fail;
            }
            val = 0;
            for (int k = 0; k < w; k++)
                val = (val << 8) | p[i + k];
            i += w;
            if (val < (w == 1 ? 24 : (uint64_t)1 << (4 * w))) {
                PyErr_Format(ProtocolError, "non-shortest head at offset %zd", i - 1 - w);
                goto fail;
            }
        } else if (ai == 31) {
            PyErr_Format(ProtocolError, "indefinite length at offset %zd", i - 1);
            goto fail;
        } else {
            PyErr_Format(ProtocolError, "reserved additional information at offset %zd",
                         i - 1);
            goto fail;
        }

        if (is_key) {
            if (major != 3) {
                PyErr_Format(ProtocolError, "map key at offset %zd is not a text string",
                             i - 1);
                goto fail;
            }
            if (val > (uint64_t)(n - i)) {
                PyErr_SetString(ProtocolError, "declared string length exceeds the input");
                goto fail;
            }
            PyObject *key = text_value(p + i, (Py_ssize_t)val, 1, &bad_text);
            if (key == NULL)
                goto fail;
            int seen = PyDict_Contains(cur->container, key);
            if (seen != 0) {
                Py_DECREF(key);
                if (seen > 0)
                    PyErr_Format(ProtocolError, "duplicate map key at offset %zd", i);
                goto fail;
            }
            i += (Py_ssize_t)val;
            cur->key = key;
            continue;
        }
        if (major < 2) {
            value = int_value(major, val);
            if (value == NULL)
                goto fail;
            goto store;
        }
        if (major < 4) {
            if (val > (uint64_t)(n - i)) {
                PyErr_SetString(ProtocolError, "declared string length exceeds the input");
                goto fail;
            }
            if (major == 2)
                value = PyBytes_FromStringAndSize((const char *)p + i, (Py_ssize_t)val);
            else
                value = text_value(p + i, (Py_ssize_t)val, 0, &bad_text);
            i += (Py_ssize_t)val;
            if (value == NULL)
                goto fail;
            goto store;
        }

        /* An array (4) or a map (5): every item needs at least one byte. */
        if (major == 5 ? val > (uint64_t)((n - i) / 2) : val > (uint64_t)(n - i)) {
            PyErr_SetString(ProtocolError, "declared container size exceeds the input");
            goto fail;
        }
        count = (Py_ssize_t)val * (major == 5 ? 2 : 1);  /* <= n - i */
        if (count > items_cap - items) {
            PyErr_Format(ProtocolError, "more than %zd items", max_items);
            goto fail;
        }
        items += count;
        if (top >= max_depth) {
            PyErr_Format(ProtocolError, "nested deeper than %zd levels", max_depth);
            goto fail;
        }
        if (top + 1 >= cap) {  /* top + 1 < frames: see above */
            DFrame *bigger = grow_stack(stack, local, sizeof(DFrame), &cap, frames);
            if (bigger == NULL)
                goto fail;
            stack = bigger;
            cur = &stack[top];
        }
        value = major == 5 ? PyDict_New() : PyList_New(count);
        if (value == NULL)
            goto fail;
        opened = major;

    store:
        /* Hand the value to its parent at once, so that one DECREF of the root frees
         * everything built so far. */
        if (cur->container == NULL) {
            root = value;
        } else if (!cur->is_map) {
            PyList_SET_ITEM(cur->container, cur->index, value);
            cur->index++;
        } else {
            int rc = PyDict_SetItem(cur->container, cur->key, value);
            Py_DECREF(value);
            Py_CLEAR(cur->key);
            if (rc < 0)
                goto fail;
        }
        if (opened) {  /* a container: fill it next (its parent keeps it alive) */
            top++;
            stack[top].container = value;
            stack[top].rem = count;
            stack[top].index = 0;
            stack[top].key = NULL;
            stack[top].is_map = opened == 5;
        }
        value = NULL;
    }
    if (i != n) {
        PyErr_Format(ProtocolError, "%zd trailing bytes after the message", n - i);
        goto fail;
    }
    if (bad_text) {
        PyErr_SetString(ProtocolError, UTF8_REFUSED);
        goto fail;
    }
    if (stack != local)
        PyMem_Free(stack);
    return root;

fail:
    for (Py_ssize_t k = 0; k <= top; k++)
        Py_CLEAR(stack[k].key);
    Py_XDECREF(root);
    if (stack != local)
        PyMem_Free(stack);
    return NULL;
}

/* What cbor._refused makes of an exception that is not ProtocolError (MemoryError):
 * ProtocolError("CBOR refused by the strict decoder (<type name>)"), no cause. */
static PyObject *
refused(void)
{
    if (!PyErr_Occurred() || PyErr_ExceptionMatches(ProtocolError))
        return NULL;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *name = PyType_GetName((PyTypeObject *)type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    Py_XDECREF(type);
    if (name == NULL)
        return NULL;
    PyErr_Format(ProtocolError, "CBOR refused by the strict decoder (%U)", name);
    Py_DECREF(name);
    return NULL;
}

/* decode_value over an exact bytes object (or, in sanitizer builds, over an exact-size
 * copy of it). */
static PyObject *
decode_bytes(PyObject *buf, Py_ssize_t max_depth, Py_ssize_t max_items)
{
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(buf);
    Py_ssize_t n = PyBytes_GET_SIZE(buf);
#ifdef PEERNET_CSTRICT_EXACT_COPY
    unsigned char *copy = malloc(n ? (size_t)n : 1);
    if (copy == NULL) {
        PyErr_NoMemory();
        return refused();
    }
    memcpy(copy, p, (size_t)n);
    PyObject *r = decode_value(copy, n, max_depth, max_items);
    free(copy);
#else
    PyObject *r = decode_value(p, n, max_depth, max_items);
#endif
    return r != NULL ? r : refused();
}

static int
parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs,
           Py_ssize_t *max_depth, Py_ssize_t *max_items)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "%s() takes exactly 3 arguments (%zd given)",
                     fname, nargs);
        return -1;
    }
    if (get_limit(args[1], max_depth) < 0 || get_limit(args[2], max_items) < 0)
        return -1;
    return 0;
}

PyDoc_STRVAR(decode_doc,
"decode(buf, max_depth, max_items) -> object\n\n"
"cbor.decode for an exact bytes object: the value, or ProtocolError with the\n"
"message the pure path gives. Unsupported: not exact bytes, a negative\n"
"max_depth, or a limit that does not fit a C size (take the pure path).");

static PyObject *
cstrict_decode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Py_ssize_t max_depth, max_items;
    if (parse_args("decode", args, nargs, &max_depth, &max_items) < 0)
        return NULL;
    if (max_depth < 0) {  /* cbor2 refuses it (OverflowError): let the reference say so */
        PyErr_SetString(Unsupported, "negative max_depth");
        return NULL;
    }
    if (!PyBytes_CheckExact(args[0])) {
        PyErr_SetString(Unsupported, "not exactly bytes");
        return NULL;
    }
    return decode_bytes(args[0], max_depth, max_items);
}

/* ------------------------------------------------------------------------- encoding */

typedef struct {
    PyObject *out;    /* bytes object being filled, over-allocated */
    Py_ssize_t len;   /* bytes written */
} Writer;

/* Room for `extra` more bytes; -1 (MemoryError) if it cannot be had. */
static int
reserve(Writer *w, Py_ssize_t extra)
{
    Py_ssize_t cap = PyBytes_GET_SIZE(w->out);
    if (extra <= cap - w->len)
        return 0;
    if (extra > PY_SSIZE_T_MAX - w->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t need = w->len + extra;
    Py_ssize_t grown = cap <= PY_SSIZE_T_MAX / 2 ? cap * 2 : PY_SSIZE_T_MAX;
    return _PyBytes_Resize(&w->out, grown > need ? grown : need);
}

static inline unsigned char *
wptr(Writer *w) { return (unsigned char *)PyBytes_AS_STRING(w->out) + w->len; }

static int
writer_open(Writer *w)
{
    w->out = PyBytes_FromStringAndSize(NULL, 64);
    w->len = 0;
    return w->out == NULL ? -1 : 0;
}

/* What an encoder returns for the outcome rc of filling w: the bytes (1), None (0:
 * declined, the pure path decides) or NULL (-1: error). */
static PyObject *
writer_finish(Writer *w, int rc)
{
    if (rc <= 0) {
        Py_DECREF(w->out);
        if (rc < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (_PyBytes_Resize(&w->out, w->len) < 0)
        return NULL;
    return w->out;
}

/* The shortest head for (major, val), as cbor2 writes it. */
static int
write_head(Writer *w, int major, uint64_t val)
{
    if (reserve(w, 9) < 0)
        return -1;
    unsigned char *q = wptr(w);
    unsigned char mt = (unsigned char)(major << 5);
    if (val < 24) {
        q[0] = mt | (unsigned char)val;
        w->len += 1;
    } else if (val < 0x100) {
        q[0] = mt | 24;
        q[1] = (unsigned char)val;
        w->len += 2;
    } else if (val < 0x10000) {
        q[0] = mt | 25;
        q[1] = (unsigned char)(val >> 8);
        q[2] = (unsigned char)val;
        w->len += 3;
    } else if (val < 0x100000000ULL) {
        q[0] = mt | 26;
        for (int k = 0; k < 4; k++)
            q[1 + k] = (unsigned char)(val >> (24 - 8 * k));
        w->len += 5;
    } else {
        q[0] = mt | 27;
        for (int k = 0; k < 8; k++)
            q[1 + k] = (unsigned char)(val >> (56 - 8 * k));
        w->len += 9;
    }
    return 0;
}

static int
write_body(Writer *w, int major, const char *data, Py_ssize_t len)
{
    if (write_head(w, major, (uint64_t)len) < 0 || reserve(w, len) < 0)
        return -1;
    memcpy(wptr(w), data, (size_t)len);
    w->len += len;
    return 0;
}

/* 1: written; 0: not a plain scalar the fast path takes (the caller falls back);
 * -1: error (MemoryError). Containers are the caller's. */
static int
write_scalar(Writer *w, PyObject *v)
{
    PyTypeObject *t = Py_TYPE(v);
    if (t == &PyUnicode_Type) {
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(v, &len);
        if (s == NULL) {   /* lone surrogates: the pure path names the culprit */
            if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
                return -1;
            PyErr_Clear();
            return 0;
        }
        return write_body(w, 3, s, len) < 0 ? -1 : 1;
    }
    if (t == &PyLong_Type) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (x == -1 && PyErr_Occurred())
            return -1;
        if (!overflow)
            return write_head(w, x < 0 ? 1 : 0,
                              x < 0 ? (uint64_t)(-(x + 1)) : (uint64_t)x) < 0 ? -1 : 1;
        uint64_t u;
        if (overflow > 0) {
            u = PyLong_AsUnsignedLongLong(v);
        } else {  /* below -2**63: the head holds -1 - v, that is ~v */
            PyObject *inv = PyNumber_Invert(v);
            if (inv == NULL)
                return -1;
            u = PyLong_AsUnsignedLongLong(inv);
            Py_DECREF(inv);
        }
        if (u == (uint64_t)-1 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError))
                return -1;
            PyErr_Clear();
            return 0;  /* beyond 64 bits: the pure path refuses it with a path */
        }
        return write_head(w, overflow > 0 ? 0 : 1, u) < 0 ? -1 : 1;
    }
    if (t == &PyFloat_Type) {
        double d = PyFloat_AS_DOUBLE(v);
        if (reserve(w, 9) < 0)
            return -1;
        unsigned char *q = wptr(w);
        if (isnan(d) || isinf(d)) {  /* cbor2 writes these as half floats */
            q[0] = 0xf9;
            q[1] = isnan(d) ? 0x7e : (d > 0 ? 0x7c : 0xfc);
            q[2] = 0x00;
            w->len += 3;
            return 1;
        }
        q[0] = 0xfb;
        if (PyFloat_Pack8(d, (char *)q + 1, 0) < 0)
            return -1;
        w->len += 9;
        return 1;
    }
    if (t == &PyBytes_Type)
        return write_body(w, 2, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v)) < 0 ? -1 : 1;
    if (v == Py_None || v == Py_True || v == Py_False) {
        if (reserve(w, 1) < 0)
            return -1;
        *wptr(w) = v == Py_None ? 0xf6 : (v == Py_True ? 0xf5 : 0xf4);
        w->len += 1;
        return 1;
    }
    if (t == &PyByteArray_Type)
        return write_body(w, 2, PyByteArray_AS_STRING(v), PyByteArray_GET_SIZE(v)) < 0
               ? -1 : 1;
    return 0;
}

typedef struct {
    PyObject *container;  /* owned while open */
    Py_ssize_t pos;       /* list/tuple index, or PyDict_Next position */
    Py_ssize_t size;      /* entries announced in the head */
    Py_ssize_t done;      /* entries written */
} EFrame;

static int
is_container(PyObject *v)
{
    return PyList_CheckExact(v) || PyTuple_CheckExact(v) || PyDict_CheckExact(v);
}

/* Items the container adds (keys counted), after checking dict keys are exact str;
 * -1 if not (fall back). */
static Py_ssize_t
container_items(PyObject *v)
{
    if (PyDict_CheckExact(v)) {
        Py_ssize_t pos = 0;
        PyObject *k, *x;
        while (PyDict_Next(v, &pos, &k, &x))
            if (!PyUnicode_CheckExact(k))
                return -1;
        return 2 * PyDict_GET_SIZE(v);
    }
    return Py_SIZE(v);
}

static int
open_container(Writer *w, EFrame *f, PyObject *v)
{
    int dict = PyDict_CheckExact(v);
    Py_ssize_t size = dict ? PyDict_GET_SIZE(v) : Py_SIZE(v);
    if (write_head(w, dict ? 5 : 4, (uint64_t)size) < 0)
        return -1;
    f->container = Py_NewRef(v);
    f->pos = 0;
    f->size = size;
    f->done = 0;
    return 0;
}

/* 1: written, 0: fall back to the pure path, -1: error. The checks are _fast_check's:
 * exact builtin types, str keys, ints within 64 bits, depth and item limits. */
static int
encode_value(Writer *w, PyObject *value, Py_ssize_t max_depth, Py_ssize_t max_items)
{
    EFrame local[LOCAL_FRAMES];
    EFrame *stack = local;
    Py_ssize_t cap = LOCAL_FRAMES, top = -1, items;
    int rc;

    if (!is_container(value))
        return write_scalar(w, value);
    items = container_items(value);
    if (items < 0 || max_depth < 1 || items + 1 > max_items)
        return 0;
    items += 1;
    if (open_container(w, &stack[0], value) < 0) {
        rc = -1;
        goto done;
    }
    top = 0;
    while (top >= 0) {
        EFrame *f = &stack[top];
        PyObject *c = f->container, *v;
        if (PyDict_CheckExact(c)) {
            PyObject *k;
            if (!PyDict_Next(c, &f->pos, &k, &v)) {
                v = NULL;
            } else {
                Py_INCREF(v);
                Py_INCREF(k);
                rc = PyUnicode_CheckExact(k) ? write_scalar(w, k) : 0;
                Py_DECREF(k);
                if (rc <= 0) {
                    Py_DECREF(v);
                    goto done;
                }
            }
        } else if (f->pos < Py_SIZE(c)) {
            v = PyList_CheckExact(c) ? PyList_GET_ITEM(c, f->pos)
                                     : PyTuple_GET_ITEM(c, f->pos);
            Py_INCREF(v);
            f->pos++;
        } else {
            v = NULL;
        }
        if (v == NULL) {  /* this container is done */
            if (f->done != f->size) {  /* it changed size under us: let Python decide */
                rc = 0;
                goto done;
            }
            Py_CLEAR(f->container);
            top--;
            continue;
        }
        f->done++;
        if (!is_container(v)) {
            rc = write_scalar(w, v);
            Py_DECREF(v);
            if (rc <= 0)
                goto done;
            continue;
        }
        Py_ssize_t add = container_items(v);
        if (add < 0 || add > max_items - items || top + 1 >= max_depth) {
            Py_DECREF(v);
            rc = 0;
            goto done;
        }
        items += add;
        if (top + 1 >= cap) {  /* at most max_depth frames: top + 1 < max_depth here */
            EFrame *bigger = grow_stack(stack, local, sizeof(EFrame), &cap, max_depth);
            if (bigger == NULL) {
                Py_DECREF(v);
                rc = -1;
                goto done;
            }
            stack = bigger;
            f = &stack[top];
        }
        rc = open_container(w, &stack[top + 1], v);
        Py_DECREF(v);
        if (rc < 0)
            goto done;
        top++;
    }
    rc = 1;
done:
    for (Py_ssize_t k = 0; k <= top; k++)
        Py_CLEAR(stack[k].container);
    if (stack != local)
        PyMem_Free(stack);
    return rc;
}

PyDoc_STRVAR(encode_doc,
"encode(value, max_depth, max_items) -> bytes | None\n\n"
"cbor2.dumps(value) for a value cbor._fast_check accepts (exact builtin types\n"
"within the limits); None for anything else, which the pure path then handles.");

static PyObject *
cstrict_encode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Py_ssize_t max_depth, max_items;
    if (parse_args("encode", args, nargs, &max_depth, &max_items) < 0) {
        if (!PyErr_ExceptionMatches(Unsupported))
            return NULL;
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    Writer w;
    if (writer_open(&w) < 0)
        return NULL;
    return writer_finish(&w, encode_value(&w, args[0], max_depth, max_items));
}

/* ------------------------------------------------------------------------- messages */

/* The record spec messages.py passes on every call (so this module keeps none):
 * a tuple of 8: for each kind 0..6 a tuple (record class, field descriptor, ...) in
 * wire order, then the frozenset ERROR_CODES. */
#define SPEC_LEN 8
#define SPEC_CODES 7
#define NONCE_SIZE 8
#define MAX_TEXT 200
#define MAX_NAME 64

static const int kind_fields[7] = {3, 2, 3, 2, 1, 1, 1};

static int
check_spec(PyObject *spec)
{
    if (!PyTuple_CheckExact(spec) || PyTuple_GET_SIZE(spec) != SPEC_LEN
        || !PyAnySet_CheckExact(PyTuple_GET_ITEM(spec, SPEC_CODES))) {
        PyErr_SetString(PyExc_TypeError, "_cstrict: bad record spec");
        return -1;
    }
    for (int k = 0; k < 7; k++) {
        PyObject *rec = PyTuple_GET_ITEM(spec, k);
        if (!PyTuple_CheckExact(rec) || PyTuple_GET_SIZE(rec) != 1 + kind_fields[k]
            || !PyType_Check(PyTuple_GET_ITEM(rec, 0))) {
            PyErr_SetString(PyExc_TypeError, "_cstrict: bad record spec");
            return -1;
        }
        for (int f = 1; f <= kind_fields[k]; f++) {
            PyTypeObject *dt = Py_TYPE(PyTuple_GET_ITEM(rec, f));
            if (dt->tp_descr_get == NULL || dt->tp_descr_set == NULL) {
                PyErr_SetString(PyExc_TypeError, "_cstrict: bad record spec");
                return -1;
            }
        }
    }
    return 0;
}

/* The field checks of messages.py, for exact types (what decode produces). */

static int
valid_rid(PyObject *v)  /* type(v) is int and 0 < v < 2**64 */
{
    if (!PyLong_CheckExact(v))
        return 0;
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow == 0)
        return x > 0;
    if (overflow < 0)
        return 0;
    unsigned long long u = PyLong_AsUnsignedLongLong(v);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

static inline int
is_alpha(int c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }

static inline int
is_digit(int c) { return c >= '0' && c <= '9'; }

/* ASCII text of an exact str, or NULL if it is not a str or not ASCII (every pattern
 * below is ASCII only). */
static const char *
ascii_text(PyObject *v, Py_ssize_t *len)
{
    if (!PyUnicode_CheckExact(v) || PyUnicode_READY(v) < 0) {
        PyErr_Clear();
        return NULL;
    }
    if (!PyUnicode_IS_ASCII(v))
        return NULL;
    *len = PyUnicode_GET_LENGTH(v);
    return (const char *)PyUnicode_DATA(v);
}

static int
valid_name(PyObject *v)  /* HANDLER_NAME_RE: [A-Za-z][A-Za-z0-9_.:-]{0,63} */
{
    Py_ssize_t n;
    const char *s = ascii_text(v, &n);
    if (s == NULL || n < 1 || n > MAX_NAME || !is_alpha(s[0]))
        return 0;
    for (Py_ssize_t k = 1; k < n; k++) {
        int c = s[k];
        if (!is_alpha(c) && !is_digit(c) && c != '_' && c != '.' && c != ':' && c != '-')
            return 0;
    }
    return 1;
}

static int
valid_detail(PyObject *v)  /* None, or dotted identifiers: [A-Za-z_][A-Za-z0-9_]*(\.…)* */
{
    if (v == Py_None)
        return 1;
    Py_ssize_t n;
    const char *s = ascii_text(v, &n);
    if (s == NULL || n < 1 || n > MAX_TEXT)
        return 0;
    int start = 1;  /* at the first character of a segment */
    for (Py_ssize_t k = 0; k < n; k++) {
        int c = s[k];
        if (start) {
            if (!is_alpha(c) && c != '_')
                return 0;
            start = 0;
        } else if (c == '.') {
            start = 1;
        } else if (!is_alpha(c) && !is_digit(c) && c != '_') {
            return 0;
        }
    }
    return !start;
}

static int
valid_reason(PyObject *v)  /* printable ASCII, at most MAX_TEXT characters */
{
    Py_ssize_t n;
    const char *s = ascii_text(v, &n);
    if (s == NULL || n > MAX_TEXT)
        return 0;
    for (Py_ssize_t k = 0; k < n; k++)
        if (s[k] < 0x20 || s[k] > 0x7e)
            return 0;
    return 1;
}

static int
valid_nonce(PyObject *v)
{
    return PyBytes_CheckExact(v) && PyBytes_GET_SIZE(v) == NONCE_SIZE;
}

/* A record of kind k from the n field values, built as its dataclass __init__ would
 * (object.__new__, then each slot set through its descriptor) without running
 * Python code. */
static PyObject *
make_record(PyObject *spec, int k, PyObject *const *values)
{
    PyObject *rec = PyTuple_GET_ITEM(spec, k);
    PyTypeObject *cls = (PyTypeObject *)PyTuple_GET_ITEM(rec, 0);
    PyObject *empty = PyTuple_New(0);
    if (empty == NULL)
        return NULL;
    PyObject *obj = PyBaseObject_Type.tp_new(cls, empty, NULL);
    Py_DECREF(empty);
    if (obj == NULL)
        return NULL;
    for (int f = 0; f < kind_fields[k]; f++) {
        PyObject *descr = PyTuple_GET_ITEM(rec, 1 + f);
        if (Py_TYPE(descr)->tp_descr_set(descr, obj, values[f]) < 0) {
            Py_DECREF(obj);
            return NULL;
        }
    }
    return obj;
}

static PyObject *
bad_message(const char *why)
{
    PyErr_Format(ProtocolError, "bad message: %s", why);
    return NULL;
}

/* The field checks of a message of kind k, in wire order, as messages.py makes them:
 * 1 valid, 0 not (*why says which field, in decode_message's words), -1 error. */
static int
check_fields(PyObject *spec, int k, PyObject *const *v, const char **why)
{
    switch (k) {
    case 0:
    case 1:
    case 2:
        if (!valid_rid(v[0])) {
            *why = "request id out of range";
            return 0;
        }
        if (k == 0 && !valid_name(v[1])) {
            *why = "invalid handler name";
            return 0;
        }
        if (k == 2) {
            int known = PyUnicode_CheckExact(v[1])
                        ? PySet_Contains(PyTuple_GET_ITEM(spec, SPEC_CODES), v[1]) : 0;
            if (known <= 0) {
                *why = "unknown error code";
                return known;
            }
            if (!valid_detail(v[2])) {
                *why = "invalid error detail";
                return 0;
            }
        }
        return 1;
    case 3:
        *why = "invalid handler name";
        return valid_name(v[0]);
    case 4:
    case 5:
        *why = "nonce is not 8 bytes";
        return valid_nonce(v[0]);
    default:
        *why = "invalid bye reason";
        return valid_reason(v[0]);
    }
}

static const char *const arity_error[7] = {
    "call needs 4 elements", "reply needs 3 elements", "error needs 4 elements",
    "send needs 3 elements", "ping/pong needs 2 elements", "ping/pong needs 2 elements",
    "bye needs 2 elements",
};

/* messages.decode_message's checks on a decoded value, in its order. */
static PyObject *
message_from(PyObject *msg, PyObject *spec)
{
    const char *why;
    if (!PyList_CheckExact(msg) || PyList_GET_SIZE(msg) == 0)
        return bad_message("not a non-empty array");
    PyObject **item = ((PyListObject *)msg)->ob_item;
    Py_ssize_t n = PyList_GET_SIZE(msg);
    if (!PyLong_CheckExact(item[0]))
        return bad_message("kind is not an int");
    int overflow;
    long long kind = PyLong_AsLongLongAndOverflow(item[0], &overflow);
    if (kind == -1 && PyErr_Occurred())
        return NULL;
    if (overflow || kind < 0 || kind > 6)
        return bad_message("unknown kind");
    int k = (int)kind;
    if (n != 1 + kind_fields[k])
        return bad_message(arity_error[k]);
    int ok = check_fields(spec, k, item + 1, &why);
    if (ok <= 0)
        return ok < 0 ? NULL : bad_message(why);
    return make_record(spec, k, item + 1);
}

PyDoc_STRVAR(decode_message_doc,
"decode_message(buf, max_depth, max_items, spec) -> record\n\n"
"messages.decode_message for an exact bytes object: decode() and the shape\n"
"checks, building the record. Raises what decode() raises, and ProtocolError\n"
"('bad message: ...') for a bad shape.");

static PyObject *
cstrict_decode_message(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Py_ssize_t max_depth, max_items;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "decode_message() takes exactly 4 arguments");
        return NULL;
    }
    if (parse_args("decode_message", args, 3, &max_depth, &max_items) < 0
        || check_spec(args[3]) < 0)
        return NULL;
    if (!PyBytes_CheckExact(args[0]) || max_depth < 0) {
        PyErr_SetString(Unsupported, "not exactly bytes, or a negative max_depth");
        return NULL;
    }
    PyObject *msg = decode_bytes(args[0], max_depth, max_items);
    if (msg == NULL)
        return NULL;
    PyObject *record = message_from(msg, args[3]);
    Py_DECREF(msg);
    return record != NULL ? record : refused();
}

/* Write the array head and the fields of an envelope: fields[0..nf-1] are scalars
 * checked by the caller; a body, if any, is the last and gets what the envelope leaves
 * of the limits. 1 written, 0 decline, -1 error. */
static int
write_envelope(Writer *w, long kind, PyObject *const *fields, int nf, int body,
               Py_ssize_t max_depth, Py_ssize_t max_items)
{
    if (max_depth < 1 || max_items < nf + 2)  /* the envelope's own items */
        return 0;
    if (write_head(w, 4, (uint64_t)(nf + 1)) < 0 || write_head(w, 0, (uint64_t)kind) < 0)
        return -1;
    for (int f = 0; f < nf; f++) {
        int rc = f == nf - 1 && body
                 ? encode_value(w, fields[f], max_depth - 1, max_items - 1 - nf)
                 : write_scalar(w, fields[f]);
        if (rc <= 0)
            return rc;
    }
    return 1;
}

PyDoc_STRVAR(encode_message_doc,
"encode_message(msg, max_depth, max_items, spec) -> bytes | None\n\n"
"messages.encode_for_link for a record of an exact record class whose fields pass\n"
"its checks and whose body encode() takes; None for anything else (a bad field,\n"
"a large bytes body, a body the pure path must convert), which the pure path\n"
"then handles.");

static PyObject *
cstrict_encode_message(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    Py_ssize_t max_depth, max_items;
    PyObject *fields[3] = {NULL, NULL, NULL};
    int k, nf, body, ok, rc;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "encode_message() takes exactly 4 arguments");
        return NULL;
    }
    if (check_spec(args[3]) < 0)
        return NULL;
    if (parse_args("encode_message", args, 3, &max_depth, &max_items) < 0) {
        if (!PyErr_ExceptionMatches(Unsupported))
            return NULL;
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *msg = args[0], *spec = args[3];
    for (k = 0; k < 7; k++)
        if ((PyObject *)Py_TYPE(msg) == PyTuple_GET_ITEM(PyTuple_GET_ITEM(spec, k), 0))
            break;
    if (k == 7)
        Py_RETURN_NONE;
    nf = kind_fields[k];
    for (int f = 0; f < nf; f++) {
        PyObject *descr = PyTuple_GET_ITEM(PyTuple_GET_ITEM(spec, k), 1 + f);
        fields[f] = Py_TYPE(descr)->tp_descr_get(descr, msg, (PyObject *)Py_TYPE(msg));
        if (fields[f] == NULL)
            goto error;
    }
    body = k == 0 || k == 1 || k == 3;
    const char *why;
    ok = check_fields(spec, k, fields, &why);
    if (ok < 0)
        goto error;
    /* A large bytes body goes the pure way, which seals it without a copy (Bulk). */
    if (ok && body && PyBytes_CheckExact(fields[nf - 1])
        && PyBytes_GET_SIZE(fields[nf - 1]) >= 4096)
        ok = 0;
    if (!ok) {
        for (int f = 0; f < nf; f++)
            Py_XDECREF(fields[f]);
        Py_RETURN_NONE;
    }
    Writer w;
    if (writer_open(&w) < 0)
        goto error;
    rc = write_envelope(&w, k, fields, nf, body, max_depth, max_items);
    for (int f = 0; f < nf; f++)
        Py_XDECREF(fields[f]);
    return writer_finish(&w, rc);

error:
    for (int f = 0; f < nf; f++)
        Py_XDECREF(fields[f]);
    return NULL;
}

/* ------------------------------------------------------------------------- module */

static PyMethodDef cstrict_methods[] = {
    {"decode", (PyCFunction)(void (*)(void))cstrict_decode, METH_FASTCALL, decode_doc},
    {"encode", (PyCFunction)(void (*)(void))cstrict_encode, METH_FASTCALL, encode_doc},
    {"decode_message", (PyCFunction)(void (*)(void))cstrict_decode_message, METH_FASTCALL,
     decode_message_doc},
    {"encode_message", (PyCFunction)(void (*)(void))cstrict_encode_message, METH_FASTCALL,
     encode_message_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef cstrict_module = {
    PyModuleDef_HEAD_INIT,
    "peernet._proto._cstrict",
    "Compiled accelerator of peernet's strict CBOR profile (see peernet._proto.cbor).",
    -1,
    cstrict_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__cstrict(void)
{
    PyObject *errors = PyImport_ImportModule("peernet.errors");
    if (errors == NULL)
        return NULL;
    ProtocolError = PyObject_GetAttrString(errors, "ProtocolError");
    Py_DECREF(errors);
    if (ProtocolError == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&cstrict_module);
    if (m == NULL)
        return NULL;
    Unsupported = PyErr_NewExceptionWithDoc(
        "peernet._proto._cstrict.Unsupported",
        "The accelerator cannot take this call; the pure-Python path must.",
        PyExc_Exception, NULL);
    if (Unsupported == NULL || PyModule_AddObjectRef(m, "Unsupported", Unsupported) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
