/* hub.media.reader's thread, compiled: the wait, the turn and the reads in C.
 *
 * The thread is woken once per datagram (a relay's pulled packets come one
 * at a time), so whatever it runs, it runs cold. A bare Python thread on
 * this VM spent 39 us a wake-up on its poll and one recvfrom, 8 more on a
 * lock, 15 more on the read that finds the socket empty (a raised
 * BlockingIOError); here they are an epoll_wait, a pthread mutex and an
 * errno, and Python runs only for the protocol's datagram_received and the
 * reader's _wake_loop, in the turn.
 *
 * Turn: the loop's turn, a mutex the loop thread holds except while its
 * selector waits (reader.Reader._select releases and takes it). Its
 * acquire lets go of the GIL while it waits, and the thread takes the
 * turn before the GIL and lets go of the GIL before the turn, so neither
 * thread ever waits for one while holding the other.
 *
 * run(reader, epoll, wake_fd, turn, batch): the thread's body, until `wake_fd` is
 * readable or `reader._epoll` is no longer `epoll`; each datagram of a
 * socket in `reader.sockets` (fd -> (socket, protocol)) goes to
 * `protocol.datagram_received(data, addr)` as asyncio's datagram transport
 * would hand it, `addr` as the socket module makes it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <time.h>
#include <sys/socket.h>

#define MAX_EVENTS 64
/* The largest UDP payload. */
#define MAX_DATAGRAM 65536

typedef struct {
    PyObject_HEAD pthread_mutex_t mutex;
} Turn;

static int Turn_init(Turn *self, PyObject *args, PyObject *kwargs) {
    if (!PyArg_ParseTuple(args, ":Turn"))
        return -1;
    pthread_mutex_init(&self->mutex, NULL);
    return 0;
}

static void Turn_dealloc(Turn *self) {
    pthread_mutex_destroy(&self->mutex);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Turn_acquire(Turn *self, PyObject *unused) {
    if (pthread_mutex_trylock(&self->mutex) != 0) {
        Py_BEGIN_ALLOW_THREADS pthread_mutex_lock(&self->mutex);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

static PyObject *Turn_release(Turn *self, PyObject *unused) {
    pthread_mutex_unlock(&self->mutex);
    Py_RETURN_NONE;
}

static PyMethodDef Turn_methods[] = {
    {"acquire", (PyCFunction)Turn_acquire, METH_NOARGS, "take the turn, waiting without the GIL"},
    {"release", (PyCFunction)Turn_release, METH_NOARGS, "give the turn back"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TurnType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "hub.media._reader.Turn",
    .tp_basicsize = sizeof(Turn),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "the event loop's turn: a mutex",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Turn_init,
    .tp_dealloc = (destructor)Turn_dealloc,
    .tp_methods = Turn_methods,
};

static PyObject *s_epoll, *s_sockets, *s_datagram_received, *s_error_received, *s_wake_loop, *s_handler_failed;

/* The address as socket.recvfrom gives it (socketmodule.c's makesockaddr). */
static PyObject *address(const struct sockaddr_storage *from, socklen_t size) {
    char host[NI_MAXHOST];
    if (getnameinfo((const struct sockaddr *)from, size, host, sizeof host, NULL, 0, NI_NUMERICHOST) != 0) {
        PyErr_SetString(PyExc_OSError, "getnameinfo failed on a datagram's source");
        return NULL;
    }
    if (from->ss_family == AF_INET)
        return Py_BuildValue("(si)", host, ntohs(((const struct sockaddr_in *)from)->sin_port));
    const struct sockaddr_in6 *six = (const struct sockaddr_in6 *)from;
    return Py_BuildValue("(siII)", host, ntohs(six->sin6_port), ntohl(six->sin6_flowinfo), six->sin6_scope_id);
}

/* The last source address of each socket and its Python form: a pull's
 * datagrams all come from one peer, so the tuple is made once, not per
 * datagram, and the express lane's comparison with its armed peer finds
 * the same object. A slot per fd modulo SOURCES; a clash only costs a remake. */
#define SOURCES 256
struct source {
    int fd;
    socklen_t size;
    struct sockaddr_storage from;
    PyObject *addr; /* NULL: empty */
};

static PyObject *cached_address(struct source *sources, int fd, const struct sockaddr_storage *from, socklen_t size) {
    struct source *slot = &sources[fd % SOURCES];
    if (slot->addr == NULL || slot->fd != fd || slot->size != size || memcmp(&slot->from, from, size) != 0) {
        PyObject *addr = address(from, size);
        if (addr == NULL)
            return NULL;
        Py_XSETREF(slot->addr, addr);
        slot->fd = fd, slot->size = size;
        memcpy(&slot->from, from, size);
    }
    Py_INCREF(slot->addr);
    return slot->addr;
}

static void forget(struct source *sources) {
    for (int i = 0; i < SOURCES; i++)
        Py_XDECREF(sources[i].addr);
    PyMem_RawFree(sources);
}

/* Hand an exception the handler raised to reader._handler_failed (which logs it). */
static void failed(PyObject *reader) {
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL)
        PyException_SetTraceback(value, traceback);
    PyObject *result = PyObject_CallMethodOneArg(reader, s_handler_failed, value ? value : Py_None);
    if (result == NULL)
        PyErr_WriteUnraisable(reader);
    Py_XDECREF(result);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
}

/* Read up to `batch` datagrams of `fd` into its protocol; in the turn, with the GIL. */
static void read_socket(PyObject *reader, PyObject *sockets, int fd, int batch, unsigned char *buffer,
                        struct source *sources) {
    PyObject *key = PyLong_FromLong(fd);
    if (key == NULL) {
        failed(reader);
        return;
    }
    for (int i = 0; i < batch; i++) {
        PyObject *entry = PyDict_GetItemWithError(sockets, key); /* borrowed */
        if (entry == NULL || !PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 2)
            break; /* left the reader (a handler closed it) */
        PyObject *protocol = PyTuple_GET_ITEM(entry, 1);
        struct sockaddr_storage from;
        socklen_t size = sizeof from;
        /* With the GIL: the socket is non-blocking, and letting go of the GIL costs more than this read. */
        ssize_t got = recvfrom(fd, buffer, MAX_DATAGRAM, MSG_DONTWAIT, (struct sockaddr *)&from, &size);
        if (got < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            PyObject *error = PyObject_CallFunction(PyExc_OSError, "is", errno, strerror(errno));
            PyObject *result = error ? PyObject_CallMethodOneArg(protocol, s_error_received, error) : NULL;
            if (result == NULL)
                failed(reader);
            Py_XDECREF(result);
            Py_XDECREF(error);
            break;
        }
        PyObject *data = PyBytes_FromStringAndSize((const char *)buffer, got);
        PyObject *addr = data ? cached_address(sources, fd, &from, size) : NULL;
        PyObject *result = addr ? PyObject_CallMethodObjArgs(protocol, s_datagram_received, data, addr, NULL) : NULL;
        if (result == NULL)
            failed(reader);
        Py_XDECREF(result);
        Py_XDECREF(addr);
        Py_XDECREF(data);
    }
    if (PyErr_Occurred())
        failed(reader);
    Py_DECREF(key);
}

/* Whether `reader._epoll` is still `epoll`: it is not once its sockets all left. */
static int current(PyObject *reader, PyObject *epoll) {
    PyObject *now = PyObject_GetAttr(reader, s_epoll);
    if (now == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(now);
    return now == epoll;
}

/* Take the turn (without the GIL); 0 if told to stop first. The loop that
 * would give it may have closed meanwhile (its last socket left, which
 * writes to `wake_fd`): so the wait looks at `wake_fd` every TURN_PATIENCE_NS. */
#define TURN_PATIENCE_NS 100000000L
static int take_turn(Turn *turn, int wake_fd) {
    for (;;) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += TURN_PATIENCE_NS;
        if (until.tv_nsec >= 1000000000L)
            until.tv_sec++, until.tv_nsec -= 1000000000L;
        if (pthread_mutex_timedlock(&turn->mutex, &until) == 0)
            return 1;
        struct pollfd wake = {.fd = wake_fd, .events = POLLIN};
        if (poll(&wake, 1, 0) > 0)
            return 0;
    }
}

static PyObject *reader_run(PyObject *self, PyObject *args) {
    PyObject *reader, *epoll;
    int wake_fd, batch;
    Turn *turn;
    if (!PyArg_ParseTuple(args, "OOiO!i", &reader, &epoll, &wake_fd, &TurnType, &turn, &batch))
        return NULL;
    int epoll_fd = PyObject_AsFileDescriptor(epoll);
    if (epoll_fd < 0)
        return NULL;
    unsigned char *buffer = PyMem_RawMalloc(MAX_DATAGRAM);
    struct source *sources = PyMem_RawCalloc(SOURCES, sizeof *sources);
    if (buffer == NULL || sources == NULL) {
        PyMem_RawFree(buffer);
        PyMem_RawFree(sources);
        return PyErr_NoMemory();
    }
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int ready, stop = 0;
        Py_BEGIN_ALLOW_THREADS do {
            ready = epoll_wait(epoll_fd, events, MAX_EVENTS, -1);
        } while (ready < 0 && errno == EINTR);
        for (int i = 0; i < ready; i++)
            stop |= events[i].data.fd == wake_fd;
        if (ready >= 0 && !stop)
            stop = !take_turn(turn, wake_fd);
        Py_END_ALLOW_THREADS
        if (ready < 0) {
            PyMem_RawFree(buffer);
            forget(sources);
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        if (stop)
            break;
        if (!current(reader, epoll)) {
            pthread_mutex_unlock(&turn->mutex);
            break;
        }
        PyObject *sockets = PyObject_GetAttr(reader, s_sockets);
        if (sockets != NULL && PyDict_Check(sockets)) {
            for (int i = 0; i < ready; i++)
                read_socket(reader, sockets, events[i].data.fd, batch, buffer, sources);
        }
        Py_XDECREF(sockets);
        PyObject *result = PyObject_CallMethodNoArgs(reader, s_wake_loop);
        if (result == NULL)
            failed(reader);
        Py_XDECREF(result);
        /* Let go of the GIL before the turn (the loop thread takes them the other way round, never both at once). */
        Py_BEGIN_ALLOW_THREADS pthread_mutex_unlock(&turn->mutex);
        Py_END_ALLOW_THREADS
    }
    PyMem_RawFree(buffer);
    forget(sources);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"run", reader_run, METH_VARARGS, "run(reader, epoll, wake_fd, turn, batch): the reading thread's body"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_reader", NULL, -1, methods};

PyMODINIT_FUNC PyInit__reader(void) {
#define INTERN(var, name)                                                                                              \
    if ((var = PyUnicode_InternFromString(name)) == NULL)                                                              \
        return NULL;
    INTERN(s_epoll, "_epoll")
    INTERN(s_sockets, "sockets")
    INTERN(s_datagram_received, "datagram_received")
    INTERN(s_error_received, "error_received")
    INTERN(s_wake_loop, "_wake_loop")
    INTERN(s_handler_failed, "_handler_failed")
#undef INTERN
    if (PyType_Ready(&TurnType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&TurnType);
    if (PyModule_AddObject(m, "Turn", (PyObject *)&TurnType) < 0) {
        Py_DECREF(&TurnType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
