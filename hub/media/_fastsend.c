/* The c path's per-viewer packet work (hub/media/forward.py, HUB_FORWARD=c).
 *
 * A `Viewer` is one viewer's compiled state: its sequence map (exactly
 * forward.SeqMap's semantics and methods, so the sink's Python code uses it
 * as its SeqMap), its counters (the sink's stats), and, once the sink has
 * started and bound a plain-UDP route, what a packet needs on its way out:
 * SSRC, payload type, timestamp offset, the negotiated header extensions,
 * the SRTP context, socket and address. `forward(sinks, packet, shared)` is
 * the one call per published packet: for every TrackSink among `sinks` whose
 * viewer can take the packet here, it decides (fresh / late / skipped),
 * rewrites the header, keeps the plaintext in the sink's history (NACKs are
 * answered from it in Python), protects, sends, counts and notes what the
 * sender reports carry - without returning to the interpreter.
 *
 * Everything that needs judgment stays in Python and gets the sinks this
 * call hands back: a viewer not started or not bound (TURN, no route yet),
 * waiting for a keyframe, or with bytes queued in asyncio's transport
 * (sending here would overtake them; the backlog rules are Python's), and
 * every other kind of sink (layer switches, temporal filters, recorders).
 * Python's decisions use the same Viewer, so no state is kept twice.
 *
 * SRTP contexts are the viewers' own (aiortc's pylibsrtp sessions), and
 * srtp_protect is pylibsrtp's, handed over once by `bind` as an address
 * from its cffi library: a viewer's outgoing stream (rollover counter,
 * index) lives in one context whether a packet goes out here or through
 * Python (a retransmission, an RTCP report), and no second libsrtp with
 * its own structure layout touches it.
 *
 * Each viewer has its own ICE socket, so sendmmsg (one socket, many
 * datagrams) has nothing to batch: one sendto per viewer. A datagram the
 * socket does not take at once goes to asyncio's transport, which queues
 * it (and so the next packet goes through Python's backlog rules).
 *
 * `send(batch)` is the bare protect + sendto loop alone: bench/forwarding's
 * compiled floor.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

/* libsrtp 2: srtp_err_status_t srtp_protect(srtp_t ctx, void *rtp_hdr, int *len_ptr) */
typedef int (*protect_fn)(void *ctx, void *rtp, int *len);

/* Room for the largest packet pylibsrtp accepts plus libsrtp's largest
 * trailer (SRTP_MAX_TRAILER_LEN = tag 16 + MKI 128). */
#define MAX_PACKET 1500
#define MAX_TRAILER 144
/* forward.HISTORY: the sequence map's ring and the sink's history. */
#define HISTORY 512
#define SLOT (HISTORY - 1)
/* The longest MID a viewer's extension block carries (RFC 8285's two-byte form). */
#define MAX_MID 255

static protect_fn srtp_protect_fn = NULL;
static PyTypeObject ViewerType;
/* forward.TrackSink: the only sinks `forward` decides for. */
static PyTypeObject *sink_type = NULL;
static PyObject *one = NULL;
static PyObject *s_sequence_number, *s_ssrc, *s_timestamp, *s_marker, *s_payload, *s_extensions, *s_audio_level,
    *s_abs_send_time, *s_ntp_time, *s_viewer, *s_waiting, *s_state, *s_ntp_attr, *s_rtp_attr, *s_octet_attr,
    *s_packet_attr, *s_buffer_size;

typedef struct {
    PyObject_HEAD
    /* The sequence map (forward.SeqMap). */
    int top;
    int shift;
    long long ssrc_in;
    int tags[HISTORY];
    int outs[HISTORY];
    int gap; /* the first incoming number of the newest packet's gap */
    /* The sink's stats (forward.SinkStats). */
    long long packets, octets, dropped, keyframe_waits;
    /* Set by start(): the viewer's stream. */
    int started;
    uint32_t ssrc, ts_offset;
    int payload_type, audio, mid_id, mid_len, abs_id, level_id;
    unsigned char mid[MAX_MID];
    PyObject *history; /* the sink's list of (outgoing number, plaintext) */
    PyObject *sender;  /* aiortc's RTCRtpSender, whose reports read the figures */
    /* Set by bind(): the viewer's plain-UDP route (route NULL: none). */
    PyObject *route;   /* the sink's cached route tuple, by identity */
    void *ctx;
    int fd;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    PyObject *transport; /* asyncio's: what it holds goes first */
    PyObject *queue;   /* transport.sendto */
    PyObject *peer;    /* the (host, port) transport.sendto takes */
    /* What makes the route stale: ICE nominating another pair, DTLS leaving
     * the connected state (NULL: a fixed route). */
    PyObject *nominated, *pair, *dtls, *connected;
} Viewer;

/* -- the sequence map (forward.SeqMap's docstring says why) ---------------- */

static void seq_init(Viewer *v, int first) {
    v->top = -1;
    v->shift = first & 0xFFFF;
    v->ssrc_in = -1;
    v->gap = 0;
    for (int i = 0; i < HISTORY; i++)
        v->tags[i] = v->outs[i] = -1;
}

static int seq_next(Viewer *v, int seq, long long ssrc) {
    int top = v->top;
    if (ssrc != v->ssrc_in) {
        if (top >= 0) {
            v->shift = (top + v->shift + 1 - seq) & 0xFFFF;
            for (int i = 0; i < HISTORY; i++)
                v->tags[i] = -1;
        }
        v->ssrc_in = ssrc;
        v->gap = seq;
    } else {
        int ahead = (seq - top) & 0xFFFF;
        if (ahead == 0 || ahead >= 0x8000)
            return -1;
        for (int missing = ahead - SLOT > 1 ? ahead - SLOT : 1; missing < ahead; missing++) {
            int n = (top + missing) & 0xFFFF;
            v->tags[n & SLOT] = n;
            v->outs[n & SLOT] = (n + v->shift) & 0xFFFF;
        }
        v->gap = (top + 1) & 0xFFFF;
    }
    v->top = seq;
    int out = (seq + v->shift) & 0xFFFF;
    v->tags[seq & SLOT] = seq;
    v->outs[seq & SLOT] = out;
    return out;
}

static int seq_late(Viewer *v, int seq) {
    if (((v->top - seq) & 0xFFFF) >= HISTORY || v->tags[seq & SLOT] != seq)
        return -1;
    return v->outs[seq & SLOT];
}

static PyObject *viewer_next(Viewer *v, PyObject *args) {
    int seq;
    long long ssrc;
    if (!PyArg_ParseTuple(args, "iL", &seq, &ssrc))
        return NULL;
    return PyLong_FromLong(seq_next(v, seq & 0xFFFF, ssrc));
}

static PyObject *viewer_drop(Viewer *v, PyObject *arg) {
    long seq = PyLong_AsLong(arg);
    if (seq == -1 && PyErr_Occurred())
        return NULL;
    v->shift = (v->shift - 1) & 0xFFFF;
    v->outs[seq & SLOT] = -1;
    Py_RETURN_NONE;
}

static PyObject *viewer_forget_gap(Viewer *v, PyObject *unused) {
    int count = (v->top - v->gap) & 0xFFFF;
    for (int i = count > SLOT ? count - SLOT : 0; i < count; i++) {
        int n = (v->gap + i) & 0xFFFF;
        if (v->tags[n & SLOT] == n)
            v->outs[n & SLOT] = -1;
    }
    v->gap = v->top;
    v->shift = (v->shift - count) & 0xFFFF;
    int *out = &v->outs[v->top & SLOT];
    if (*out >= 0)
        *out = (*out - count) & 0xFFFF;
    return PyLong_FromLong(*out);
}

static PyObject *viewer_insert(Viewer *v, PyObject *unused) {
    v->shift = (v->shift + 1) & 0xFFFF;
    return PyLong_FromLong((v->top + v->shift) & 0xFFFF);
}

static PyObject *viewer_late(Viewer *v, PyObject *arg) {
    long seq = PyLong_AsLong(arg);
    if (seq == -1 && PyErr_Occurred())
        return NULL;
    int out = seq_late(v, (int)(seq & 0xFFFF));
    if (out < 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(out);
}

/* -- start, bind, stop ------------------------------------------------------ */

static void viewer_unbind(Viewer *v) {
    Py_CLEAR(v->route);
    Py_CLEAR(v->transport);
    Py_CLEAR(v->queue);
    Py_CLEAR(v->peer);
    Py_CLEAR(v->nominated);
    Py_CLEAR(v->pair);
    Py_CLEAR(v->dtls);
    Py_CLEAR(v->connected);
}

/* start(first, ssrc, payload_type, ts_offset, audio, mid_id, mid, abs_id, level_id, history, sender):
 * the viewer's stream begins, its outgoing numbers at `first` (SeqMap(first)). */
static PyObject *viewer_start(Viewer *v, PyObject *args) {
    unsigned long ssrc, ts_offset;
    int first, payload_type, audio, mid_id, abs_id, level_id;
    const char *mid;
    Py_ssize_t mid_len;
    PyObject *history, *sender;
    if (!PyArg_ParseTuple(args, "ikikpiy#iiO!O", &first, &ssrc, &payload_type, &ts_offset, &audio, &mid_id, &mid,
                          &mid_len, &abs_id, &level_id, &PyList_Type, &history, &sender))
        return NULL;
    if (PyList_GET_SIZE(history) != HISTORY || mid_len > MAX_MID || payload_type < 0 || payload_type > 127 ||
        mid_id < 0 || mid_id > 255 || abs_id < 0 || abs_id > 255 || level_id < 0 || level_id > 255) {
        PyErr_SetString(PyExc_ValueError, "history must hold HISTORY slots, and MID, payload type and ids fit RTP");
        return NULL;
    }
    seq_init(v, first);
    v->ssrc = (uint32_t)ssrc;
    v->payload_type = payload_type;
    v->ts_offset = (uint32_t)ts_offset;
    v->audio = audio;
    v->mid_id = mid_len ? mid_id : 0;
    v->mid_len = (int)mid_len;
    memcpy(v->mid, mid, mid_len);
    v->abs_id = abs_id;
    v->level_id = level_id;
    Py_INCREF(history);
    Py_XSETREF(v->history, history);
    Py_INCREF(sender);
    Py_XSETREF(v->sender, sender);
    v->started = 1;
    Py_RETURN_NONE;
}

/* bind(route, guard): take the packets of `route` (the sink's Route:
 * session, protocol, address, (context, fd, sockaddr) or None) from now on;
 * `guard` is (nominated pairs, pair, DTLS transport, connected state) or
 * None for a route that never goes stale. A route without its compiled part
 * unbinds. */
static PyObject *viewer_bind(Viewer *v, PyObject *args) {
    PyObject *route, *guard;
    if (!PyArg_ParseTuple(args, "O!O", &PyTuple_Type, &route, &guard))
        return NULL;
    if (route == v->route)
        Py_RETURN_NONE;
    viewer_unbind(v);
    if (PyTuple_GET_SIZE(route) != 4) {
        PyErr_SetString(PyExc_TypeError, "route is (session, protocol, address, compiled)");
        return NULL;
    }
    PyObject *compiled = PyTuple_GET_ITEM(route, 3);
    if (compiled == Py_None)
        Py_RETURN_NONE;
    PyObject *ctx, *addr;
    int fd;
    if (!PyArg_ParseTuple(compiled, "OiS", &ctx, &fd, &addr))
        return NULL;
    void *context = PyLong_AsVoidPtr(ctx);
    if (context == NULL && PyErr_Occurred())
        return NULL;
    if ((size_t)PyBytes_GET_SIZE(addr) > sizeof v->addr) {
        PyErr_SetString(PyExc_ValueError, "sockaddr is too long");
        return NULL;
    }
    PyObject *transport = PyObject_GetAttrString(PyTuple_GET_ITEM(route, 1), "transport");
    if (transport == NULL)
        return NULL;
    v->queue = PyObject_GetAttrString(transport, "sendto");
    if (v->queue == NULL) {
        Py_DECREF(transport);
        return NULL;
    }
    v->transport = transport;
    if (guard != Py_None &&
        !PyArg_ParseTuple(guard, "O!OOO", &PyDict_Type, &v->nominated, &v->pair, &v->dtls, &v->connected)) {
        v->nominated = v->pair = v->dtls = v->connected = NULL;
        Py_CLEAR(v->queue);
        Py_CLEAR(v->transport);
        return NULL;
    }
    Py_XINCREF(v->nominated);
    Py_XINCREF(v->pair);
    Py_XINCREF(v->dtls);
    Py_XINCREF(v->connected);
    v->ctx = context;
    v->fd = fd;
    memcpy(&v->addr, PyBytes_AS_STRING(addr), PyBytes_GET_SIZE(addr));
    v->addrlen = (socklen_t)PyBytes_GET_SIZE(addr);
    v->peer = PyTuple_GET_ITEM(route, 2);
    Py_INCREF(v->peer);
    Py_INCREF(route);
    v->route = route;
    Py_RETURN_NONE;
}

static void viewer_release(Viewer *v) {
    v->started = 0;
    viewer_unbind(v);
    Py_CLEAR(v->history);
    Py_CLEAR(v->sender);
}

static PyObject *viewer_stop(Viewer *v, PyObject *unused) {
    viewer_release(v);
    Py_RETURN_NONE;
}

/* -- one packet to one viewer ------------------------------------------------ */

/* One published packet's fields, read once for all its viewers. */
typedef struct {
    int seq;
    long long ssrc;
    uint32_t timestamp;
    int marker;
    const unsigned char *payload;
    Py_ssize_t payload_len;
    int has_level, level; /* the audio-level extension's byte */
    uint32_t abs_send_time;
    PyObject *ntp_time;
} Packet;

/* The RTP header extension block (RFC 8285) the viewer negotiated, as
 * aiortc's pack_header_extensions writes it (TrackSink._extensions). */
static int extension_block(Viewer *v, const Packet *p, unsigned char *out) {
    int ids[3], lens[3], count = 0;
    const unsigned char *values[3];
    unsigned char abs[3] = {p->abs_send_time >> 16, p->abs_send_time >> 8, p->abs_send_time};
    unsigned char level = (unsigned char)p->level;
    if (v->mid_id)
        ids[count] = v->mid_id, lens[count] = v->mid_len, values[count++] = v->mid;
    if (v->abs_id)
        ids[count] = v->abs_id, lens[count] = 3, values[count++] = abs;
    if (v->level_id && p->has_level)
        ids[count] = v->level_id, lens[count] = 1, values[count++] = &level;
    if (!count)
        return 0;
    int one_byte = 1;
    for (int i = 0; i < count; i++)
        if (ids[i] > 14 || lens[i] == 0 || lens[i] > 16)
            one_byte = 0;
    int pos = 4;
    for (int i = 0; i < count; i++) {
        if (one_byte) {
            out[pos++] = (unsigned char)(ids[i] << 4 | (lens[i] - 1));
        } else {
            out[pos++] = (unsigned char)ids[i];
            out[pos++] = (unsigned char)lens[i];
        }
        memcpy(out + pos, values[i], lens[i]);
        pos += lens[i];
    }
    while ((pos - 4) % 4)
        out[pos++] = 0;
    out[0] = one_byte ? 0xBE : 0x10;
    out[1] = one_byte ? 0xDE : 0x00;
    out[2] = (unsigned char)((pos - 4) / 4 >> 8);
    out[3] = (unsigned char)((pos - 4) / 4);
    return pos;
}

/* Whether this viewer's packets go through Python now: not started, no
 * compiled route, a stale one, or bytes queued in its transport. -1 on error. */
static int needs_python(Viewer *v) {
    if (!v->started || v->route == NULL)
        return 1;
    if (v->nominated != NULL) {
        PyObject *pair = PyDict_GetItemWithError(v->nominated, one);
        if (pair != v->pair)
            return PyErr_Occurred() ? -1 : 1;
        PyObject *state = PyObject_GetAttr(v->dtls, s_state);
        if (state == NULL)
            return -1;
        Py_DECREF(state);
        if (state != v->connected)
            return 1;
    }
    /* TrackSink._backlog, asked each time: a test may stand in for the transport's answer. */
    PyObject *queued = PyObject_CallMethodNoArgs(v->transport, s_buffer_size);
    if (queued == NULL)
        return -1;
    int empty = queued == Py_False || (PyLong_Check(queued) && PyLong_AsLong(queued) == 0);
    Py_DECREF(queued);
    return !empty;
}

static int set_figure(PyObject *sender, PyObject *name, PyObject *value) {
    if (value == NULL)
        return -1;
    int rc = PyObject_SetAttr(sender, name, value);
    Py_DECREF(value);
    return rc;
}

enum { PYTHON = -1, FAILED = -2, ERROR = -3 };

/* Send one packet to one viewer: the octets sent (0: decided not to send),
 * PYTHON (nothing changed: the sink's push decides), FAILED (its SRTP
 * context refused: the sink must close) or ERROR (an exception is set). */
static long long viewer_send(Viewer *v, const Packet *p, int waiting) {
    if (waiting)
        return PYTHON;
    int python = needs_python(v);
    if (python)
        return python < 0 ? ERROR : PYTHON;
    unsigned char buffer[MAX_PACKET + MAX_TRAILER];
    unsigned char extensions[4 + 3 * (2 + MAX_MID) + 3];
    int ext_len = extension_block(v, p, extensions);
    Py_ssize_t length = 12 + ext_len + p->payload_len;
    if (length > MAX_PACKET)
        return PYTHON; /* Python raises it as pylibsrtp does */

    /* TrackSink.push's decisions, for a viewer that is not waiting and not behind. */
    int fresh = 1;
    int seq = seq_next(v, p->seq, p->ssrc);
    if (seq < 0) {
        /* Reordered, or the publisher's retransmission: under the number it had, never as new. */
        fresh = 0;
        if ((seq = seq_late(v, p->seq)) < 0)
            return 0;
    }
    uint32_t timestamp = p->timestamp + v->ts_offset;
    PyObject *data = PyBytes_FromStringAndSize(NULL, length);
    if (data == NULL)
        return ERROR;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(data);
    out[0] = ext_len ? 0x90 : 0x80;
    out[1] = (unsigned char)(p->marker << 7 | v->payload_type);
    out[2] = (unsigned char)(seq >> 8), out[3] = (unsigned char)seq;
    uint32_t words[2] = {htonl(timestamp), htonl(v->ssrc)};
    memcpy(out + 4, words, 8);
    memcpy(out + 12, extensions, ext_len);
    memcpy(out + 12 + ext_len, p->payload, p->payload_len);
    memcpy(buffer, out, length);
    /* The history, as push keeps it: what a NACK for `seq` resends. */
    PyObject *number = PyLong_FromLong(seq);
    PyObject *entry = number ? PyTuple_Pack(2, number, data) : NULL;
    Py_XDECREF(number);
    Py_DECREF(data);
    if (entry == NULL)
        return ERROR;
    PyList_SetItem(v->history, seq & SLOT, entry); /* steals entry */

    int size = (int)length;
    if (srtp_protect_fn(v->ctx, buffer, &size) != 0)
        return FAILED;
    ssize_t sent = sendto(v->fd, buffer, size, 0, (const struct sockaddr *)&v->addr, v->addrlen);
    if (sent != size) {
        /* The socket is full (or erred): asyncio's transport queues the
         * datagram and reports errors; the backlog check then sees it. */
        PyObject *rc = PyObject_CallFunction(v->queue, "y#O", (const char *)buffer, (Py_ssize_t)size, v->peer);
        if (rc == NULL)
            return ERROR;
        Py_DECREF(rc);
    }
    v->packets += 1;
    v->octets += p->payload_len;
    /* What aiortc's sender puts in its reports, once a frame
     * (TrackSink._update_sender_report); a late packet's older timestamp
     * would make them run backwards. */
    if (fresh && (p->marker || v->audio)) {
        if (set_figure(v->sender, s_ntp_attr, Py_NewRef(p->ntp_time)) < 0 ||
            set_figure(v->sender, s_rtp_attr, PyLong_FromUnsignedLong(timestamp)) < 0 ||
            set_figure(v->sender, s_octet_attr, PyLong_FromLongLong(v->octets)) < 0 ||
            set_figure(v->sender, s_packet_attr, PyLong_FromLongLong(v->packets)) < 0)
            return ERROR;
    }
    return size;
}

/* An integer attribute; -1 on error, and nothing asked once an error is set. */
static long long get_int(PyObject *obj, PyObject *name) {
    if (PyErr_Occurred())
        return -1;
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        return -1;
    long long result = PyLong_AsLongLong(value);
    Py_DECREF(value);
    return result;
}

/* The packet's and the shared send time's fields (forward.Outgoing). */
static int read_packet(PyObject *packet, PyObject *shared, Packet *p, PyObject **payload) {
    *payload = NULL;
    p->ntp_time = NULL;
    long long seq = get_int(packet, s_sequence_number), ts = get_int(packet, s_timestamp);
    long long marker = get_int(packet, s_marker), abs = get_int(shared, s_abs_send_time);
    p->ssrc = get_int(packet, s_ssrc);
    if (PyErr_Occurred())
        return -1;
    p->seq = (int)(seq & 0xFFFF), p->timestamp = (uint32_t)ts, p->marker = marker != 0;
    p->abs_send_time = (uint32_t)abs;
    if ((*payload = PyObject_GetAttr(packet, s_payload)) == NULL)
        return -1;
    if (!PyBytes_Check(*payload)) {
        /* Python's push takes any buffer (bytes + payload): so does this, by a copy. */
        PyObject *copy = PyBytes_FromObject(*payload);
        Py_SETREF(*payload, copy);
        if (copy == NULL)
            return -1;
    }
    p->payload = (const unsigned char *)PyBytes_AS_STRING(*payload);
    p->payload_len = PyBytes_GET_SIZE(*payload);
    p->has_level = 0, p->level = 0;
    PyObject *extensions = PyObject_GetAttr(packet, s_extensions);
    if (extensions == NULL)
        return -1;
    PyObject *level = PyObject_GetAttr(extensions, s_audio_level);
    Py_DECREF(extensions);
    if (level == NULL)
        return -1;
    if (level != Py_None) {
        /* (voice activity, level), as TrackSink._extensions packs it */
        int vad, value;
        if (!PyArg_ParseTuple(level, "pi", &vad, &value)) {
            Py_DECREF(level);
            return -1;
        }
        p->has_level = 1, p->level = (vad ? 0x80 : 0) | (value & 0x7F);
    }
    Py_DECREF(level);
    if ((p->ntp_time = PyObject_GetAttr(shared, s_ntp_time)) == NULL)
        return -1;
    return 0;
}

static void release_packet(Packet *p, PyObject *payload) {
    Py_XDECREF(payload);
    Py_XDECREF(p->ntp_time);
}

static int check_bound(void) {
    if (srtp_protect_fn == NULL || sink_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind(srtp_protect address, TrackSink) first");
        return -1;
    }
    return 0;
}

/* viewer.push(packet, shared, waiting) -> octets sent, or -1: Python decides. */
static PyObject *viewer_push(Viewer *v, PyObject *args) {
    PyObject *packet, *shared, *payload;
    int waiting;
    if (!PyArg_ParseTuple(args, "OOp", &packet, &shared, &waiting) || check_bound() < 0)
        return NULL;
    Packet p;
    if (read_packet(packet, shared, &p, &payload) < 0) {
        release_packet(&p, payload);
        return NULL;
    }
    long long sent = viewer_send(v, &p, waiting);
    release_packet(&p, payload);
    if (sent == ERROR)
        return NULL;
    if (sent == FAILED) {
        PyErr_SetString(PyExc_RuntimeError, "this viewer's SRTP context refused the packet");
        return NULL;
    }
    return PyLong_FromLongLong(sent);
}

/* forward(sinks, packet, shared) -> (other sinks, for their push; TrackSinks
 * for Python to decide, their _decide; TrackSinks that failed; packets sent;
 * octets sent) */
static PyObject *fastsend_forward(PyObject *self, PyObject *args) {
    PyObject *sinks, *packet, *shared, *payload = NULL;
    if (!PyArg_ParseTuple(args, "O!OO", &PyTuple_Type, &sinks, &packet, &shared) || check_bound() < 0)
        return NULL;
    PyObject *rest = PyList_New(0), *decide = PyList_New(0), *failed = PyList_New(0);
    long long packets = 0, octets = 0;
    Packet p = {0};
    if (rest == NULL || decide == NULL || failed == NULL || read_packet(packet, shared, &p, &payload) < 0)
        goto fail_packet;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(sinks); i++) {
        PyObject *sink = PyTuple_GET_ITEM(sinks, i);
        long long sent = PYTHON;
        PyObject *to = rest;
        if (PyObject_TypeCheck(sink, sink_type)) {
            to = decide;
            PyObject *viewer = PyObject_GetAttr(sink, s_viewer);
            PyObject *waiting = viewer ? PyObject_GetAttr(sink, s_waiting) : NULL;
            if (waiting == NULL) {
                Py_XDECREF(viewer);
                goto fail_packet;
            }
            if (Py_TYPE(viewer) == &ViewerType)
                sent = viewer_send((Viewer *)viewer, &p, PyObject_IsTrue(waiting));
            Py_DECREF(waiting);
            Py_DECREF(viewer);
        }
        if (sent >= 0) {
            packets += sent > 0;
            octets += sent;
            continue;
        }
        if (sent == ERROR) /* one broken viewer must not stop the others */
            PyErr_Clear();
        if (PyList_Append(sent == PYTHON ? to : failed, sink) < 0)
            goto fail_packet;
    }
    release_packet(&p, payload);
    return Py_BuildValue("(NNNLL)", rest, decide, failed, packets, octets);
fail_packet:
    release_packet(&p, payload);
    Py_XDECREF(rest);
    Py_XDECREF(decide);
    Py_XDECREF(failed);
    return NULL;
}

/* -- the type ------------------------------------------------------------------ */

static int viewer_init(Viewer *v, PyObject *args, PyObject *kwargs) {
    int first;
    if (!PyArg_ParseTuple(args, "i", &first))
        return -1;
    seq_init(v, first);
    return 0;
}

static int viewer_traverse(Viewer *v, visitproc visit, void *arg) {
    Py_VISIT(v->history);
    Py_VISIT(v->sender);
    Py_VISIT(v->route);
    Py_VISIT(v->transport);
    Py_VISIT(v->queue);
    Py_VISIT(v->peer);
    Py_VISIT(v->nominated);
    Py_VISIT(v->pair);
    Py_VISIT(v->dtls);
    Py_VISIT(v->connected);
    return 0;
}

static int viewer_clear(Viewer *v) {
    viewer_release(v);
    return 0;
}

static void viewer_dealloc(Viewer *v) {
    PyObject_GC_UnTrack(v);
    viewer_clear(v);
    Py_TYPE(v)->tp_free((PyObject *)v);
}

static PyMethodDef viewer_methods[] = {
    {"next", (PyCFunction)viewer_next, METH_VARARGS, "SeqMap.next(seq, ssrc)"},
    {"drop", (PyCFunction)viewer_drop, METH_O, "SeqMap.drop(seq)"},
    {"forget_gap", (PyCFunction)viewer_forget_gap, METH_NOARGS, "SeqMap.forget_gap()"},
    {"insert", (PyCFunction)viewer_insert, METH_NOARGS, "SeqMap.insert()"},
    {"late", (PyCFunction)viewer_late, METH_O, "SeqMap.late(seq)"},
    {"start", (PyCFunction)viewer_start, METH_VARARGS,
     "start(first, ssrc, payload_type, ts_offset, audio, mid_id, mid, abs_id, level_id, history, sender)"},
    {"bind", (PyCFunction)viewer_bind, METH_VARARGS, "bind(route, guard)"},
    {"stop", (PyCFunction)viewer_stop, METH_NOARGS, "stop(): packets go through Python from now on"},
    {"push", (PyCFunction)viewer_push, METH_VARARGS, "push(packet, shared, waiting) -> octets, or -1: Python decides"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef viewer_members[] = {
    {"packets", T_LONGLONG, offsetof(Viewer, packets), 0, "packets sent"},
    {"octets", T_LONGLONG, offsetof(Viewer, octets), 0, "payload octets sent"},
    {"dropped", T_LONGLONG, offsetof(Viewer, dropped), 0, "packets skipped"},
    {"keyframe_waits", T_LONGLONG, offsetof(Viewer, keyframe_waits), 0, "times it fell behind"},
    {NULL},
};

static PyTypeObject ViewerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "hub.media._fastsend.Viewer",
    .tp_doc = "One viewer's sequence map, counters and send state on the c path.",
    .tp_basicsize = sizeof(Viewer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)viewer_init,
    .tp_dealloc = (destructor)viewer_dealloc,
    .tp_traverse = (traverseproc)viewer_traverse,
    .tp_clear = (inquiry)viewer_clear,
    .tp_methods = viewer_methods,
    .tp_members = viewer_members,
};

/* -- the module ----------------------------------------------------------------- */

/* bind(srtp_protect address, TrackSink class) */
static PyObject *fastsend_bind(PyObject *self, PyObject *args) {
    PyObject *address_obj;
    PyTypeObject *type;
    if (!PyArg_ParseTuple(args, "OO!", &address_obj, &PyType_Type, &type))
        return NULL;
    void *address = PyLong_AsVoidPtr(address_obj);
    if (address == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "srtp_protect address is NULL");
        return NULL;
    }
    srtp_protect_fn = (protect_fn)address;
    Py_INCREF(type);
    Py_XSETREF(sink_type, type);
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

/* send(batch) -> number of entries not sent: the floor's bare loop.
 * batch: a list of (SRTP context address, socket fd, sockaddr bytes, plaintext RTP bytes). */
static PyObject *fastsend_send(PyObject *self, PyObject *batch) {
    if (srtp_protect_fn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind(srtp_protect address, TrackSink) first");
        return NULL;
    }
    if (!PyList_Check(batch)) {
        PyErr_SetString(PyExc_TypeError, "batch must be a list");
        return NULL;
    }
    unsigned char buffer[MAX_PACKET + MAX_TRAILER];
    long unsent = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(batch); i++) {
        void *ctx;
        int fd;
        PyObject *ctx_obj, *addr, *packet;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(batch, i), "OiSS", &ctx_obj, &fd, &addr, &packet))
            return NULL;
        if ((ctx = PyLong_AsVoidPtr(ctx_obj)) == NULL && PyErr_Occurred())
            return NULL;
        int length = (int)PyBytes_GET_SIZE(packet);
        if (length > MAX_PACKET) {
            PyErr_SetString(PyExc_ValueError, "packet is too long");
            return NULL;
        }
        memcpy(buffer, PyBytes_AS_STRING(packet), length);
        if (srtp_protect_fn(ctx, buffer, &length) != 0 ||
            sendto(fd, buffer, length, 0, (const struct sockaddr *)PyBytes_AS_STRING(addr),
                   (socklen_t)PyBytes_GET_SIZE(addr)) != length)
            unsent++;
    }
    return PyLong_FromLong(unsent);
}

static PyMethodDef methods[] = {
    {"bind", fastsend_bind, METH_VARARGS,
     "bind(address, TrackSink): srtp_protect of the libsrtp that owns the contexts, and the sinks' class"},
    {"sockaddr", fastsend_sockaddr, METH_VARARGS, "sockaddr(host, port) -> bytes"},
    {"forward", fastsend_forward, METH_VARARGS,
     "forward(sinks, packet, shared) -> (to push, to decide, failed, packets, octets): one packet to its viewers"},
    {"send", fastsend_send, METH_O, "send(batch) -> unsent: protect and send each entry (the floor)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastsend", NULL, -1, methods};

#define INTERN(var, text)                                                                                          \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                                           \
        return NULL;

PyMODINIT_FUNC PyInit__fastsend(void) {
    INTERN(s_sequence_number, "sequence_number");
    INTERN(s_ssrc, "ssrc");
    INTERN(s_timestamp, "timestamp");
    INTERN(s_marker, "marker");
    INTERN(s_payload, "payload");
    INTERN(s_extensions, "extensions");
    INTERN(s_audio_level, "audio_level");
    INTERN(s_abs_send_time, "abs_send_time");
    INTERN(s_ntp_time, "ntp_time");
    INTERN(s_viewer, "_viewer");
    INTERN(s_waiting, "_waiting_keyframe");
    INTERN(s_state, "_state");
    INTERN(s_ntp_attr, "_RTCRtpSender__ntp_timestamp");
    INTERN(s_rtp_attr, "_RTCRtpSender__rtp_timestamp");
    INTERN(s_octet_attr, "_RTCRtpSender__octet_count");
    INTERN(s_packet_attr, "_RTCRtpSender__packet_count");
    INTERN(s_buffer_size, "get_write_buffer_size");
    if ((one = PyLong_FromLong(1)) == NULL || PyType_Ready(&ViewerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "HISTORY", HISTORY) < 0 || PyModule_AddObjectRef(m, "Viewer", (PyObject *)&ViewerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
