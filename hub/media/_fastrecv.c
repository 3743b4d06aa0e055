/* One received SRTP packet, unprotected and parsed in one call.
 *
 * hub/media/door.py hands a publisher's or a relay pull's SRTP packets
 * straight to the hub's receivers (door.take_rtp). Through Python, that is
 * pylibsrtp's unprotect (a cffi call, a buffer copied in and out) and then
 * aiortc's RtpPacket.parse (struct unpacking, slicing, one object built
 * through keyword arguments): about 10 us of a pulled packet's CPU hot,
 * more on a process just woken. This does both in C and builds the same
 * RtpPacket aiortc's parse would, attribute for attribute.
 *
 * The SRTP context is the session's own (pylibsrtp's), and srtp_unprotect
 * is pylibsrtp's, handed over once by `bind` as an address from its cffi
 * library, as hub/media/_fastsend.c does for srtp_protect: the replay
 * window and rollover counter live in one context whether a packet is
 * unprotected here or through Python.
 *
 * Header extensions are left to Python (aiortc's HeaderExtensionsMap, which
 * knows the negotiated ids): a packet that has them comes back with their
 * profile and bytes. Nothing here touches the send side (_fastsend.c).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

/* libsrtp 2: srtp_err_status_t srtp_unprotect(srtp_t ctx, void *srtp_hdr, int *len_ptr) */
typedef int (*unprotect_fn)(void *ctx, void *srtp, int *len);

/* Larger datagrams than this (not RTP over any real path MTU) go through
 * Python, which takes any size. */
#define MAX_DATAGRAM 4096
#define RTP_HEADER 12

static unprotect_fn srtp_unprotect_fn = NULL;

static PyObject *s_version, *s_marker, *s_payload_type, *s_sequence_number, *s_timestamp, *s_ssrc, *s_csrc,
    *s_extensions, *s_payload, *s_padding_size;
static PyObject *two, *no_args;

static PyObject *fastrecv_bind(PyObject *self, PyObject *arg) {
    void *address = PyLong_AsVoidPtr(arg);
    if (address == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "a null address");
        return NULL;
    }
    srtp_unprotect_fn = (unprotect_fn)address;
    Py_RETURN_NONE;
}

static int set(PyObject *packet, PyObject *name, PyObject *value) {
    /* Steals `value`. */
    if (value == NULL)
        return -1;
    int failed = PyObject_SetAttr(packet, name, value);
    Py_DECREF(value);
    return failed;
}

static PyObject *csrc_list(const unsigned char *data, int cc) {
    PyObject *csrc = PyList_New(cc);
    for (int i = 0; csrc != NULL && i < cc; i++) {
        const unsigned char *c = data + RTP_HEADER + 4 * i;
        PyObject *value = PyLong_FromUnsignedLong(((unsigned long)c[0] << 24) | (c[1] << 16) | (c[2] << 8) | c[3]);
        if (value == NULL) {
            Py_CLEAR(csrc);
            break;
        }
        PyList_SET_ITEM(csrc, i, value);
    }
    return csrc;
}

/* receive(context, datagram, packet_class, extensions_class)
 *   -> packet | (packet, extension_profile, extension_bytes) | None | NotImplemented
 * None: SRTP refused it or it is no valid RTP (what aiortc drops quietly);
 * NotImplemented: too large for this path, take Python's. */
static PyObject *fastrecv_receive(PyObject *self, PyObject *args) {
    unsigned long long context;
    Py_buffer datagram;
    PyObject *packet_class, *extensions_class;
    if (!PyArg_ParseTuple(args, "Ky*OO", &context, &datagram, &packet_class, &extensions_class))
        return NULL;
    if (srtp_unprotect_fn == NULL) {
        PyBuffer_Release(&datagram);
        PyErr_SetString(PyExc_RuntimeError, "bind(srtp_unprotect address) first");
        return NULL;
    }
    if (datagram.len > MAX_DATAGRAM) {
        PyBuffer_Release(&datagram);
        Py_RETURN_NOTIMPLEMENTED;
    }
    unsigned char data[MAX_DATAGRAM];
    int size = (int)datagram.len;
    memcpy(data, datagram.buf, datagram.len);
    PyBuffer_Release(&datagram);
    if (srtp_unprotect_fn((void *)(uintptr_t)context, data, &size) != 0 || size < RTP_HEADER)
        Py_RETURN_NONE;

    /* What aiortc.rtp.RtpPacket.parse checks, in its order. */
    int version = data[0] >> 6, padding = (data[0] >> 5) & 1, extension = (data[0] >> 4) & 1, cc = data[0] & 0x0F;
    if (version != 2 || size < RTP_HEADER + 4 * cc)
        Py_RETURN_NONE;
    int pos = RTP_HEADER + 4 * cc;
    int profile = 0, ext_start = 0, ext_length = 0;
    if (extension) {
        if (size < pos + 4)
            Py_RETURN_NONE;
        profile = (data[pos] << 8) | data[pos + 1];
        ext_length = 4 * ((data[pos + 2] << 8) | data[pos + 3]);
        pos += 4;
        if (size < pos + ext_length)
            Py_RETURN_NONE;
        ext_start = pos;
        pos += ext_length;
    }
    int padding_size = 0;
    if (padding) {
        padding_size = data[size - 1];
        if (!padding_size || padding_size > size - pos)
            Py_RETURN_NONE;
    }

    PyObject *packet = PyBaseObject_Type.tp_new((PyTypeObject *)packet_class, no_args, NULL);
    if (packet == NULL)
        return NULL;
    unsigned long timestamp = ((unsigned long)data[4] << 24) | (data[5] << 16) | (data[6] << 8) | data[7];
    unsigned long ssrc = ((unsigned long)data[8] << 24) | (data[9] << 16) | (data[10] << 8) | data[11];
    Py_INCREF(two);
    if (set(packet, s_version, two) || set(packet, s_marker, PyLong_FromLong(data[1] >> 7)) ||
        set(packet, s_payload_type, PyLong_FromLong(data[1] & 0x7F)) ||
        set(packet, s_sequence_number, PyLong_FromLong((data[2] << 8) | data[3])) ||
        set(packet, s_timestamp, PyLong_FromUnsignedLong(timestamp)) ||
        set(packet, s_ssrc, PyLong_FromUnsignedLong(ssrc)) || set(packet, s_csrc, csrc_list(data, cc)) ||
        set(packet, s_extensions, PyObject_CallNoArgs(extensions_class)) ||
        set(packet, s_payload, PyBytes_FromStringAndSize((const char *)data + pos, size - pos - padding_size)) ||
        set(packet, s_padding_size, PyLong_FromLong(padding_size))) {
        Py_DECREF(packet);
        return NULL;
    }
    if (!extension)
        return packet;
    return Py_BuildValue("(Niy#)", packet, profile, (const char *)data + ext_start, (Py_ssize_t)ext_length);
}

static PyMethodDef methods[] = {
    {"bind", fastrecv_bind, METH_O, "bind(address): srtp_unprotect of the libsrtp that owns the contexts"},
    {"receive", fastrecv_receive, METH_VARARGS,
     "receive(context, datagram, packet_class, extensions_class): unprotect and parse one SRTP packet"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastrecv", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastrecv(void) {
#define INTERN(name)                                                                                                   \
    if ((s_##name = PyUnicode_InternFromString(#name)) == NULL)                                                        \
        return NULL;
    INTERN(version)
    INTERN(marker)
    INTERN(payload_type)
    INTERN(sequence_number)
    INTERN(timestamp)
    INTERN(ssrc)
    INTERN(csrc)
    INTERN(extensions)
    INTERN(payload)
    INTERN(padding_size)
#undef INTERN
    if ((two = PyLong_FromLong(2)) == NULL || (no_args = PyTuple_New(0)) == NULL)
        return NULL;
    return PyModule_Create(&module);
}
