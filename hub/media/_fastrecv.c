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
#include <structmember.h>
#include <time.h>

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

/* Where a plain RTP packet's parts are. */
struct header {
    int cc, extension, profile, ext_start, ext_length, pos, padding_size;
};

/* What aiortc.rtp.RtpPacket.parse checks, in its order: -1 if it would refuse the packet. */
static int parse_header(const unsigned char *data, int size, struct header *h) {
    int version = data[0] >> 6, padding = (data[0] >> 5) & 1;
    h->extension = (data[0] >> 4) & 1, h->cc = data[0] & 0x0F;
    if (version != 2 || size < RTP_HEADER + 4 * h->cc)
        return -1;
    h->pos = RTP_HEADER + 4 * h->cc;
    h->profile = h->ext_start = h->ext_length = 0;
    if (h->extension) {
        if (size < h->pos + 4)
            return -1;
        h->profile = (data[h->pos] << 8) | data[h->pos + 1];
        h->ext_length = 4 * ((data[h->pos + 2] << 8) | data[h->pos + 3]);
        h->pos += 4;
        if (size < h->pos + h->ext_length)
            return -1;
        h->ext_start = h->pos;
        h->pos += h->ext_length;
    }
    h->padding_size = 0;
    if (padding) {
        h->padding_size = data[size - 1];
        if (!h->padding_size || h->padding_size > size - h->pos)
            return -1;
    }
    return 0;
}

/* The RtpPacket aiortc's parse builds of a valid plain RTP packet in `data`, its
 * payload from `pos` on; steals `extensions`. */
static PyObject *build_packet(const unsigned char *data, int size, int cc, int pos, int padding_size,
                              PyObject *packet_class, PyObject *extensions) {
    if (extensions == NULL)
        return NULL;
    PyObject *packet = PyBaseObject_Type.tp_new((PyTypeObject *)packet_class, no_args, NULL);
    if (packet == NULL) {
        Py_DECREF(extensions);
        return NULL;
    }
    unsigned long timestamp = ((unsigned long)data[4] << 24) | (data[5] << 16) | (data[6] << 8) | data[7];
    unsigned long ssrc = ((unsigned long)data[8] << 24) | (data[9] << 16) | (data[10] << 8) | data[11];
    Py_INCREF(two);
    if (set(packet, s_version, two) || set(packet, s_marker, PyLong_FromLong(data[1] >> 7)) ||
        set(packet, s_payload_type, PyLong_FromLong(data[1] & 0x7F)) ||
        set(packet, s_sequence_number, PyLong_FromLong((data[2] << 8) | data[3])) ||
        set(packet, s_timestamp, PyLong_FromUnsignedLong(timestamp)) ||
        set(packet, s_ssrc, PyLong_FromUnsignedLong(ssrc)) || set(packet, s_csrc, csrc_list(data, cc)) ||
        set(packet, s_extensions, extensions) ||
        set(packet, s_payload, PyBytes_FromStringAndSize((const char *)data + pos, size - pos - padding_size)) ||
        set(packet, s_padding_size, PyLong_FromLong(padding_size))) {
        Py_DECREF(packet);
        return NULL;
    }
    return packet;
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

    struct header h;
    if (parse_header(data, size, &h) < 0)
        Py_RETURN_NONE;
    PyObject *packet =
        build_packet(data, size, h.cc, h.pos, h.padding_size, packet_class, PyObject_CallNoArgs(extensions_class));
    if (packet == NULL || !h.extension)
        return packet;
    return Py_BuildValue("(Niy#)", packet, h.profile, (const char *)data + h.ext_start, (Py_ssize_t)h.ext_length);
}


/* ---- Lane: a relay pull's socket's express lane (door.lane) ----
 *
 * A pulled packet read by hub.media.reader's thread used to run about 150
 * lines of the hub's and aiortc's Python - the door's checks, the
 * unprotect, aiortc's routing, receive statistics and NACK generator, the
 * source's fan-out - on a process just woken for it, where each line runs
 * cold. The lane does the common case of all of it in one C call: an RTP
 * packet from the armed peer address, of a known SSRC and the stream's
 * payload type, the next in sequence with nothing missing. It decides that
 * on the packet's plain header before it changes anything, and hands every
 * other datagram to the socket's protocol (the door) untouched. What it
 * does is what the Python path does, field for field:
 * RTCDtlsTransport's receive counters, srtp_unprotect on the session's
 * context, StreamStatistics.add and NackGenerator.add for an in-order
 * packet, TrackSource._deliver and forward (through _fastsend.forward).
 * A packet it has unprotected but cannot finish (other header extensions
 * than one-byte ones of the sizes aiortc reads, abs-send-time, which feeds
 * aiortc's bitrate estimator, a padding-only probe) goes to the door's
 * continuation in plain text.
 *
 * A route (routes[ssrc], set by the door):
 *   (receiver, handler, source, stats, nack or None, payload_type, codec, forward, outgoing_class)
 * it holds while getattr(receiver, "_hub_take_rtp") is still `handler`. */

enum { X_MID, X_RRID, X_RID, X_ABS, X_TOFFSET, X_LEVEL, X_TWCC, X_COUNT };

typedef struct {
    PyObject_HEAD PyObject *protocol;
    PyObject *continuation, *packet_class, *extensions_class, *counters, *routes;
    /* Armed (Lane.arm): the peer's address, its DTLS transport, that
     * transport's receiving SRTP session and the state it is up in. */
    PyObject *peer, *dtls, *session, *connected;
    unsigned long long context;
    int ids[X_COUNT];
} Lane;

static PyObject *l_datagram_received, *l_error_received, *l_state, *l_rx_srtp, *l_handler, *l_max_seq, *l_missing,
    *l_packets_received, *l_cycles, *l_clockrate, *l_jitter, *l_last_arrival, *l_last_timestamp, *l_media_ssrc,
    *l_codec, *l_sinks, *l_forwarded, *l_rx_bytes, *l_rx_packets, *l_packets_forwarded, *l_bytes_forwarded, *l_packets_express,
    *l_abs_send_time, *l_ntp_time, *l_x[X_COUNT];

static const char *const extension_fields[X_COUNT] = {
    "mid", "repaired_rtp_stream_id", "rtp_stream_id", "abs_send_time", "transmission_offset", "audio_level",
    "transport_sequence_number"};
/* The value size aiortc's HeaderExtensionsMap.get unpacks each with (0: any). */
static const int extension_sizes[X_COUNT] = {0, 0, 0, 3, 3, 1, 2};

/* An int attribute: 1 and its value, 0 if it is not an int (None), -1 on error. */
static int get_int(PyObject *obj, PyObject *name, long long *value) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    if (!PyLong_CheckExact(v)) {
        Py_DECREF(v);
        return 0;
    }
    long long got = PyLong_AsLongLong(v);
    Py_DECREF(v);
    if (got == -1 && PyErr_Occurred())
        return -1;
    *value = got;
    return 1;
}

static int set_int(PyObject *obj, PyObject *name, long long value) {
    return set(obj, name, PyLong_FromLongLong(value));
}

static int add_int(PyObject *obj, PyObject *name, long long delta) {
    long long value;
    int got = get_int(obj, name, &value);
    if (got <= 0)
        return got < 0 ? -1 : (PyErr_Format(PyExc_TypeError, "%U is no int", name), -1);
    return set_int(obj, name, value + delta);
}

/* Whether getattr(obj, name) is `expected`: 1 yes, 0 no, -1 error. */
static int attr_is(PyObject *obj, PyObject *name, PyObject *expected) {
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    Py_DECREF(v);
    return v == expected;
}

static double now_seconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return (double)now.tv_sec + now.tv_nsec * 1e-9;
}

/* The packet's one-byte header extensions as aiortc's HeaderExtensionsMap.get
 * reads them; NULL with no error: not a case this path takes. */
static PyObject *lane_extensions(Lane *self, const unsigned char *data, const struct header *h) {
    PyObject *values = PyBaseObject_Type.tp_new((PyTypeObject *)self->extensions_class, no_args, NULL);
    if (values == NULL || !h->extension)
        return values;
    if (h->profile != 0xBEDE)
        goto other;
    const unsigned char *x = data + h->ext_start;
    int at = 0, length = h->ext_length;
    while (at < length) {
        if (x[at] == 0) {
            at++;
            continue;
        }
        int id = x[at] >> 4, size = (x[at] & 0x0F) + 1;
        at++;
        if (at + size > length)
            goto other; /* aiortc raises: the door's path drops it */
        const unsigned char *v = x + at;
        at += size;
        int kind = 0;
        while (kind < X_COUNT && self->ids[kind] != id)
            kind++;
        if (kind == X_COUNT)
            continue;
        if (extension_sizes[kind] && size != extension_sizes[kind])
            goto other;
        PyObject *value;
        switch (kind) {
        case X_MID:
            value = PyUnicode_DecodeUTF8((const char *)v, size, NULL);
            break;
        case X_RRID:
        case X_RID:
            value = PyUnicode_DecodeASCII((const char *)v, size, NULL);
            break;
        case X_ABS: /* it feeds aiortc's bitrate estimator: Python's (a pull does not negotiate it) */
            goto other;
        case X_TOFFSET: /* a signed 24-bit number */
            value = PyLong_FromLong((((v[0] << 16) | (v[1] << 8) | v[2]) ^ 0x800000) - 0x800000);
            break;
        case X_LEVEL:
            value = Py_BuildValue("(Ni)", PyBool_FromLong(v[0] & 0x80), v[0] & 0x7F);
            break;
        default:
            value = PyLong_FromLong((v[0] << 8) | v[1]);
        }
        if (value == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                goto failed;
            PyErr_Clear();
            goto other;
        }
        if (set(values, l_x[kind], value) < 0)
            goto failed;
    }
    return values;
other:
    Py_DECREF(values);
    return NULL;
failed:
    Py_DECREF(values);
    return NULL;
}

/* A StreamStatistics.add of a packet newer than the stream's newest. */
static int add_statistics(PyObject *stats, int seq, long long max_seq, unsigned long timestamp) {
    long long received, clockrate, cycles, jitter, last_arrival, last_timestamp;
    if (get_int(stats, l_packets_received, &received) <= 0 || get_int(stats, l_clockrate, &clockrate) <= 0 ||
        get_int(stats, l_last_arrival, &last_arrival) <= 0 || get_int(stats, l_last_timestamp, &last_timestamp) <= 0)
        return PyErr_Occurred() ? -1 : (PyErr_SetString(PyExc_TypeError, "the stream's statistics are not kept"), -1);
    received++;
    long long arrival = (long long)(now_seconds() * (double)clockrate);
    if (set_int(stats, l_packets_received, received) < 0)
        return -1;
    if (seq < max_seq && (get_int(stats, l_cycles, &cycles) <= 0 || set_int(stats, l_cycles, cycles + (1 << 16)) < 0))
        return -1;
    if (set_int(stats, l_max_seq, seq) < 0)
        return -1;
    if ((long long)timestamp != last_timestamp && received > 1) {
        long long diff = (arrival - last_arrival) - ((long long)timestamp - last_timestamp);
        if (diff < 0)
            diff = -diff;
        if (get_int(stats, l_jitter, &jitter) <= 0 || set_int(stats, l_jitter, jitter + diff - ((jitter + 8) >> 4)) < 0)
            return -1;
    }
    if (set_int(stats, l_last_arrival, arrival) < 0 || set_int(stats, l_last_timestamp, (long long)timestamp) < 0)
        return -1;
    return 0;
}

/* The fan-out, as TrackSource.forward does it on the compiled path; takes
 * `extensions` (the packet's, read; NULL: it has none). */
static int lane_forward(Lane *self, PyObject *route, const unsigned char *data, int size, const struct header *h,
                        PyObject *extensions) {
    PyObject *source = PyTuple_GET_ITEM(route, 2), *forward = PyTuple_GET_ITEM(route, 7),
             *outgoing_class = PyTuple_GET_ITEM(route, 8);
    PyObject *sinks = PyObject_GetAttr(source, l_sinks);
    Py_ssize_t count = sinks == NULL ? -1 : PyObject_Size(sinks);
    PyObject *viewers = count > 0 ? PySequence_Tuple(sinks) : NULL;
    Py_XDECREF(sinks);
    if (viewers == NULL) {
        Py_XDECREF(extensions);
        return count == 0 ? 0 : -1;
    }
    if (extensions == NULL)
        extensions = lane_extensions(self, data, h); /* none in the packet: a fresh HeaderExtensions */
    PyObject *packet = NULL, *shared = NULL, *result = NULL;
    int failed = -1;
    packet = build_packet(data, size, h->cc, h->pos, h->padding_size, self->packet_class, extensions);
    if (packet == NULL)
        goto done;
    double now = now_seconds();
    /* Outgoing.now(): abs-send-time is 6.18 fixed-point seconds of the NTP clock. */
    shared = PyBaseObject_Type.tp_new((PyTypeObject *)outgoing_class, no_args, NULL);
    if (shared == NULL || set(shared, l_abs_send_time, PyLong_FromLongLong((long long)(now * 262144) & 0xFFFFFF)) ||
        set(shared, l_ntp_time, PyLong_FromUnsignedLongLong((unsigned long long)((now + 2208988800.0) * 4294967296.0))) ||
        set(shared, s_extensions, PyDict_New()))
        goto done;
    result = PyObject_CallFunctionObjArgs(forward, viewers, packet, shared, NULL);
    if (result == NULL)
        goto done;
    PyObject *rest, *decide, *broken, *packets, *octets;
    if (!PyArg_ParseTuple(result, "OOOOO", &rest, &decide, &broken, &packets, &octets))
        goto done;
    long long sent = PyLong_AsLongLong(packets), bytes = PyLong_AsLongLong(octets);
    if (PyErr_Occurred() || add_int(self->counters, l_packets_forwarded, sent) < 0 ||
        add_int(self->counters, l_bytes_forwarded, bytes) < 0)
        goto done;
    if (PyObject_IsTrue(rest) || PyObject_IsTrue(decide) || PyObject_IsTrue(broken)) {
        PyObject *more = PyObject_CallMethodObjArgs(source, l_forwarded, packet, shared, rest, decide, broken, NULL);
        if (more == NULL)
            goto done;
        Py_DECREF(more);
    }
    failed = 0;
done:
    Py_XDECREF(result);
    Py_XDECREF(shared);
    Py_XDECREF(packet);
    Py_DECREF(viewers);
    return failed;
}

/* 1: the lane took the datagram; 0: the protocol's to handle, untouched; -1: an error. */
static int lane_take_route(Lane *self, PyObject *route, PyObject *datagram, PyObject *addr);

static int lane_take(Lane *self, PyObject *datagram, PyObject *addr) {
    if (self->dtls == NULL || !PyBytes_CheckExact(datagram))
        return 0;
    const unsigned char *raw = (const unsigned char *)PyBytes_AS_STRING(datagram);
    Py_ssize_t length = PyBytes_GET_SIZE(datagram);
    /* RTP (RFC 7983: first byte 128-191), and not what aiortc's is_rtcp takes for RTCP. */
    if (length < RTP_HEADER || length > MAX_DATAGRAM || (raw[0] & 0xC0) != 0x80 || (raw[1] >= 192 && raw[1] <= 208))
        return 0;
    int ok = PyObject_RichCompareBool(addr, self->peer, Py_EQ);
    if (ok <= 0)
        return ok;
    if ((ok = attr_is(self->dtls, l_state, self->connected)) <= 0 || (ok = attr_is(self->dtls, l_rx_srtp, self->session)) <= 0)
        return ok;
    unsigned long ssrc = ((unsigned long)raw[8] << 24) | (raw[9] << 16) | (raw[10] << 8) | raw[11];
    PyObject *key = PyLong_FromUnsignedLong(ssrc);
    if (key == NULL)
        return -1;
    PyObject *route = PyDict_GetItemWithError(self->routes, key); /* borrowed */
    Py_DECREF(key);
    if (route == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyTuple_CheckExact(route) || PyTuple_GET_SIZE(route) != 9)
        return 0;
    /* Held: the Python this calls (a sink's, the door's) may change the routes. */
    Py_INCREF(route);
    int taken = lane_take_route(self, route, datagram, addr);
    Py_DECREF(route);
    return taken;
}

static int lane_take_route(Lane *self, PyObject *route, PyObject *datagram, PyObject *addr) {
    const unsigned char *raw = (const unsigned char *)PyBytes_AS_STRING(datagram);
    Py_ssize_t length = PyBytes_GET_SIZE(datagram);
    unsigned long ssrc = ((unsigned long)raw[8] << 24) | (raw[9] << 16) | (raw[10] << 8) | raw[11];
    int ok;
    PyObject *receiver = PyTuple_GET_ITEM(route, 0), *handler = PyTuple_GET_ITEM(route, 1),
             *source = PyTuple_GET_ITEM(route, 2), *stats = PyTuple_GET_ITEM(route, 3),
             *nack = PyTuple_GET_ITEM(route, 4);
    long payload_type = PyLong_AsLong(PyTuple_GET_ITEM(route, 5));
    if (payload_type == -1 && PyErr_Occurred())
        return -1;
    if ((raw[1] & 0x7F) != payload_type)
        return 0;
    if ((ok = attr_is(receiver, l_handler, handler)) <= 0)
        return ok;
    /* The next packet of the stream, none missing: the only case in which
     * the statistics and the NACK generator (none for audio) do nothing but
     * step on. */
    int seq = (raw[2] << 8) | raw[3];
    long long stats_max, nack_max;
    if ((ok = get_int(stats, l_max_seq, &stats_max)) <= 0)
        return ok;
    if (seq != ((stats_max + 1) & 0xFFFF))
        return 0;
    if (nack != Py_None) {
        if ((ok = get_int(nack, l_max_seq, &nack_max)) <= 0)
            return ok;
        if (nack_max != stats_max)
            return 0;
        PyObject *missing = PyObject_GetAttr(nack, l_missing);
        if (missing == NULL)
            return -1;
        Py_ssize_t lost = PyAnySet_Check(missing) ? PySet_GET_SIZE(missing) : -1;
        Py_DECREF(missing);
        if (lost != 0)
            return 0;
    }

    /* Taken: from here on it is this packet's, as on the door's path. */
    if (add_int(self->dtls, l_rx_bytes, length) < 0 || add_int(self->dtls, l_rx_packets, 1) < 0)
        return -1;
    unsigned char data[MAX_DATAGRAM];
    int size = (int)length;
    memcpy(data, raw, length);
    struct header h;
    if (srtp_unprotect_fn((void *)(uintptr_t)self->context, data, &size) != 0 || size < RTP_HEADER ||
        parse_header(data, size, &h) < 0)
        return 1; /* refused, as aiortc does, quietly */
    PyObject *extensions = NULL; /* read once here if there are any; lane_forward takes it */
    if (h.extension && (extensions = lane_extensions(self, data, &h)) == NULL && PyErr_Occurred())
        return -1;
    if ((h.extension && extensions == NULL) || size - h.pos - h.padding_size == 0) {
        Py_XDECREF(extensions);
        PyObject *plain = PyBytes_FromStringAndSize((const char *)data, size);
        PyObject *done = plain ? PyObject_CallFunctionObjArgs(self->continuation, self->dtls, plain, addr, NULL) : NULL;
        Py_XDECREF(plain);
        if (done == NULL)
            return -1;
        Py_DECREF(done);
        return 1;
    }
    unsigned long timestamp = ((unsigned long)data[4] << 24) | (data[5] << 16) | (data[6] << 8) | data[7];
    /* TrackSource.receive from StreamStatistics.add on, and its _deliver. */
    PyObject *codec = PyTuple_GET_ITEM(route, 6);
    Py_INCREF(codec);
    if (add_statistics(stats, seq, stats_max, timestamp) < 0 || (nack != Py_None && set_int(nack, l_max_seq, seq) < 0) ||
        set(source, l_media_ssrc, PyLong_FromUnsignedLong(ssrc)) < 0 || set(source, l_codec, codec) < 0 ||
        add_int(self->counters, l_packets_received, 1) < 0 || add_int(self->counters, l_packets_express, 1) < 0) {
        Py_XDECREF(extensions);
        return -1;
    }
    return lane_forward(self, route, data, size, &h, extensions) < 0 ? -1 : 1;
}

static int Lane_init(Lane *self, PyObject *args, PyObject *kwargs) {
    PyObject *protocol, *continuation, *packet_class, *extensions_class, *counters;
    if (!PyArg_ParseTuple(args, "OOOOO:Lane", &protocol, &continuation, &packet_class, &extensions_class, &counters))
        return -1;
    PyObject *routes = PyDict_New();
    if (routes == NULL)
        return -1;
    Py_INCREF(protocol), Py_INCREF(continuation), Py_INCREF(packet_class), Py_INCREF(extensions_class),
        Py_INCREF(counters);
    Py_XSETREF(self->protocol, protocol);
    Py_XSETREF(self->continuation, continuation);
    Py_XSETREF(self->packet_class, packet_class);
    Py_XSETREF(self->extensions_class, extensions_class);
    Py_XSETREF(self->counters, counters);
    Py_XSETREF(self->routes, routes);
    return 0;
}

static int Lane_traverse(Lane *self, visitproc visit, void *arg) {
    Py_VISIT(self->protocol);
    Py_VISIT(self->continuation);
    Py_VISIT(self->packet_class);
    Py_VISIT(self->extensions_class);
    Py_VISIT(self->counters);
    Py_VISIT(self->routes);
    Py_VISIT(self->peer);
    Py_VISIT(self->dtls);
    Py_VISIT(self->session);
    Py_VISIT(self->connected);
    return 0;
}

static int Lane_clear(Lane *self) {
    Py_CLEAR(self->protocol);
    Py_CLEAR(self->continuation);
    Py_CLEAR(self->packet_class);
    Py_CLEAR(self->extensions_class);
    Py_CLEAR(self->counters);
    Py_CLEAR(self->routes);
    Py_CLEAR(self->peer);
    Py_CLEAR(self->dtls);
    Py_CLEAR(self->session);
    Py_CLEAR(self->connected);
    return 0;
}

static void Lane_dealloc(Lane *self) {
    PyObject_GC_UnTrack(self);
    Lane_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Lane_datagram_received(Lane *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "datagram_received(data, addr)");
        return NULL;
    }
    if (self->protocol == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the lane is not initialized");
        return NULL;
    }
    int taken = lane_take(self, args[0], args[1]);
    if (taken < 0)
        return NULL;
    if (taken)
        Py_RETURN_NONE;
    return PyObject_CallMethodObjArgs(self->protocol, l_datagram_received, args[0], args[1], NULL);
}

static PyObject *Lane_error_received(Lane *self, PyObject *exc) {
    return PyObject_CallMethodOneArg(self->protocol, l_error_received, exc);
}

/* arm(peer, dtls, session, context, connected, ids): a new connection's; its routes start empty. */
static PyObject *Lane_arm(Lane *self, PyObject *args) {
    PyObject *peer, *dtls, *session, *connected, *ids;
    unsigned long long context;
    if (!PyArg_ParseTuple(args, "OOOKOO!:arm", &peer, &dtls, &session, &context, &connected, &PyTuple_Type, &ids))
        return NULL;
    if (PyTuple_GET_SIZE(ids) != X_COUNT) {
        PyErr_Format(PyExc_ValueError, "%d extension ids, in HeaderExtensions' order", X_COUNT);
        return NULL;
    }
    int values[X_COUNT];
    for (int i = 0; i < X_COUNT; i++) {
        values[i] = (int)PyLong_AsLong(PyTuple_GET_ITEM(ids, i));
        if (values[i] == -1 && PyErr_Occurred())
            return NULL;
    }
    if (srtp_unprotect_fn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind(srtp_unprotect address) first");
        return NULL;
    }
    PyDict_Clear(self->routes);
    memcpy(self->ids, values, sizeof values);
    self->context = context;
    Py_INCREF(peer), Py_INCREF(dtls), Py_INCREF(session), Py_INCREF(connected);
    Py_XSETREF(self->peer, peer);
    Py_XSETREF(self->dtls, dtls);
    Py_XSETREF(self->session, session);
    Py_XSETREF(self->connected, connected);
    Py_RETURN_NONE;
}

static PyObject *Lane_armed(Lane *self, PyObject *args) {
    PyObject *peer, *dtls, *session;
    if (!PyArg_ParseTuple(args, "OOO:armed", &peer, &dtls, &session))
        return NULL;
    if (self->dtls != dtls || self->session != session || self->peer == NULL)
        Py_RETURN_FALSE;
    int same = PyObject_RichCompareBool(peer, self->peer, Py_EQ);
    if (same < 0)
        return NULL;
    return PyBool_FromLong(same);
}

static PyMethodDef Lane_methods[] = {
    {"datagram_received", (PyCFunction)(void (*)(void))Lane_datagram_received, METH_FASTCALL,
     "datagram_received(data, addr): take the datagram, or hand it to the protocol"},
    {"error_received", (PyCFunction)Lane_error_received, METH_O, "the protocol's"},
    {"arm", (PyCFunction)Lane_arm, METH_VARARGS,
     "arm(peer, dtls, session, context, connected, extension_ids): take packets of that connection from now on"},
    {"armed", (PyCFunction)Lane_armed, METH_VARARGS, "armed(peer, dtls, session): whether it is armed for those"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Lane_members[] = {
    {"routes", T_OBJECT, offsetof(Lane, routes), READONLY, "ssrc -> route, or None: not this lane's to take"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "hub.media._fastrecv.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Lane(protocol, continuation, packet_class, extensions_class, counters): a pull socket's express lane",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_traverse = (traverseproc)Lane_traverse,
    .tp_clear = (inquiry)Lane_clear,
    .tp_methods = Lane_methods,
    .tp_members = Lane_members,
};

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
#define NAME(var, text)                                                                                                \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                                              \
        return NULL;
    NAME(l_datagram_received, "datagram_received")
    NAME(l_error_received, "error_received")
    NAME(l_state, "_state")
    NAME(l_rx_srtp, "_rx_srtp")
    NAME(l_handler, "_hub_take_rtp")
    NAME(l_max_seq, "max_seq")
    NAME(l_missing, "missing")
    NAME(l_packets_received, "packets_received")
    NAME(l_cycles, "cycles")
    NAME(l_clockrate, "_clockrate")
    NAME(l_jitter, "_jitter_q4")
    NAME(l_last_arrival, "_last_arrival")
    NAME(l_last_timestamp, "_last_timestamp")
    NAME(l_media_ssrc, "_media_ssrc")
    NAME(l_codec, "codec")
    NAME(l_sinks, "sinks")
    NAME(l_forwarded, "_forwarded")
    NAME(l_rx_bytes, "_RTCDtlsTransport__rx_bytes")
    NAME(l_rx_packets, "_RTCDtlsTransport__rx_packets")
    NAME(l_packets_forwarded, "packets_forwarded")
    NAME(l_bytes_forwarded, "bytes_forwarded")
    NAME(l_packets_express, "packets_express")
    NAME(l_abs_send_time, "abs_send_time")
    NAME(l_ntp_time, "ntp_time")
    for (int i = 0; i < X_COUNT; i++)
        NAME(l_x[i], extension_fields[i])
#undef NAME
    if ((two = PyLong_FromLong(2)) == NULL || (no_args = PyTuple_New(0)) == NULL || PyType_Ready(&LaneType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&LaneType);
    if (PyModule_AddObject(m, "Lane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(&LaneType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
