/* One forwarded RTP packet to all of a track's viewers in one call.
 *
 * hub/media/forward.py decides per viewer what goes out (sequence numbers,
 * keyframe waits, backlog) and builds each viewer's plaintext packet; this
 * loop does the part that costs the most in Python: SRTP protect and the
 * datagram send, for every viewer of the packet without returning to the
 * interpreter.
 *
 * SRTP contexts are the viewers' own (aiortc's pylibsrtp sessions), and
 * srtp_protect is pylibsrtp's, handed over once by `bind` as an address
 * from its cffi library: a viewer's outgoing stream (rollover counter,
 * index) lives in one context whether a packet goes out here or through
 * Python (a retransmission, an RTCP report), and no second libsrtp with
 * its own structure layout touches it.
 *
 * Each viewer has its own ICE socket, so sendmmsg (one socket, many
 * datagrams) has nothing to batch: the loop calls sendto once per viewer.
 * A datagram the socket does not take at once (EAGAIN, or any error) is
 * returned protected, for Python to queue in asyncio's transport, which
 * buffers and reports errors as it always does; one whose context refuses
 * to protect it is returned as None, for Python to fail that viewer alone.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <string.h>
#include <sys/socket.h>

/* libsrtp 2: srtp_err_status_t srtp_protect(srtp_t ctx, void *rtp_hdr, int *len_ptr) */
typedef int (*protect_fn)(void *ctx, void *rtp, int *len);

/* Room for the largest packet pylibsrtp accepts plus libsrtp's largest
 * trailer (SRTP_MAX_TRAILER_LEN = tag 16 + MKI 128). */
#define MAX_PACKET 1500
#define MAX_TRAILER 144

static protect_fn srtp_protect_fn = NULL;

static PyObject *fastsend_bind(PyObject *self, PyObject *arg) {
    void *address = PyLong_AsVoidPtr(arg);
    if (address == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "srtp_protect address is NULL");
        return NULL;
    }
    srtp_protect_fn = (protect_fn)address;
    Py_RETURN_NONE;
}

/* sockaddr(host, port) -> bytes: the binary address sendto takes. */
static PyObject *fastsend_sockaddr(PyObject *self, PyObject *args) {
    const char *host;
    int port;
    if (!PyArg_ParseTuple(args, "si", &host, &port))
        return NULL;
    char service[8];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo hints = {0}, *found = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    int rc = getaddrinfo(host, service, &hints, &found);
    if (rc != 0) {
        PyErr_Format(PyExc_ValueError, "not a numeric address: %s (%s)", host, gai_strerror(rc));
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize((const char *)found->ai_addr, found->ai_addrlen);
    freeaddrinfo(found);
    return result;
}

/* send(batch) -> (octets sent, [(index, protected datagram or None), ...] not sent)
 *
 * batch: a list of tuples whose first four items are
 * (SRTP context address, socket fd, sockaddr bytes, plaintext RTP bytes);
 * further items are the caller's and ignored here. */
static PyObject *fastsend_send(PyObject *self, PyObject *batch) {
    if (srtp_protect_fn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind(srtp_protect address) first");
        return NULL;
    }
    if (!PyList_Check(batch)) {
        PyErr_SetString(PyExc_TypeError, "batch must be a list");
        return NULL;
    }
    unsigned char buffer[MAX_PACKET + MAX_TRAILER];
    long long octets = 0;
    PyObject *unsent = NULL;
    Py_ssize_t count = PyList_GET_SIZE(batch);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *entry = PyList_GET_ITEM(batch, i);
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) < 4) {
            PyErr_SetString(PyExc_TypeError, "each entry is (context, fd, sockaddr, packet, ...)");
            goto fail;
        }
        void *ctx = PyLong_AsVoidPtr(PyTuple_GET_ITEM(entry, 0));
        int fd = PyLong_AsLong(PyTuple_GET_ITEM(entry, 1));
        if (PyErr_Occurred())
            goto fail;
        PyObject *addr = PyTuple_GET_ITEM(entry, 2);
        PyObject *packet = PyTuple_GET_ITEM(entry, 3);
        if (!PyBytes_Check(addr) || !PyBytes_Check(packet)) {
            PyErr_SetString(PyExc_TypeError, "sockaddr and packet must be bytes");
            goto fail;
        }
        Py_ssize_t size = PyBytes_GET_SIZE(packet);
        if (size > MAX_PACKET) {
            PyErr_SetString(PyExc_ValueError, "packet is too long");
            goto fail;
        }
        memcpy(buffer, PyBytes_AS_STRING(packet), size);
        int length = (int)size;
        PyObject *item;
        if (srtp_protect_fn(ctx, buffer, &length) != 0) {
            /* This viewer's context refuses the packet: Python protects it
             * again, raises for this viewer alone and closes it. */
            item = Py_BuildValue("(nO)", i, Py_None);
        } else {
            ssize_t sent = sendto(fd, buffer, length, 0, (const struct sockaddr *)PyBytes_AS_STRING(addr),
                                  (socklen_t)PyBytes_GET_SIZE(addr));
            if (sent == length) {
                octets += length;
                continue;
            }
            item = Py_BuildValue("(ny#)", i, (const char *)buffer, (Py_ssize_t)length);
        }
        if (unsent == NULL && (unsent = PyList_New(0)) == NULL) {
            Py_XDECREF(item);
            goto fail;
        }
        if (item == NULL || PyList_Append(unsent, item) < 0) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
    }
    if (unsent == NULL)
        return Py_BuildValue("(L())", octets);
    PyObject *result = Py_BuildValue("(LN)", octets, unsent);
    return result;
fail:
    Py_XDECREF(unsent);
    return NULL;
}

static PyMethodDef methods[] = {
    {"bind", fastsend_bind, METH_O, "bind(address): srtp_protect of the libsrtp that owns the contexts"},
    {"sockaddr", fastsend_sockaddr, METH_VARARGS, "sockaddr(host, port) -> bytes"},
    {"send", fastsend_send, METH_O, "send(batch) -> (octets, unsent): protect and send each entry"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastsend", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastsend(void) { return PyModule_Create(&module); }
