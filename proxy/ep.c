/* ep.c - a TCP endpoint, plaintext or TLS (see ep.h).
 *
 * Reading: in plaintext the socket reads straight into rbuf; in TLS it reads
 * ciphertext into the tlsconn's input and pump_tls() decrypts into rbuf.
 * Writing: in plaintext uv_write sends from wbuf itself (pinned so that the
 * reader filling it never moves the bytes on the wire); in TLS encrypt_some()
 * turns wbuf into ciphertext and flush_tls() sends it. */
#include "ep.h"

#include <string.h>

#include "buf.h"
#include "px.h"
#include "tlsconn.h"

#define EP_TLS_RECORD 16384 /* plaintext per SSL_write: one full record */

static void flush_tls(struct ep *e);
static void pump_tls(struct ep *e);

static bool emit(struct ep *e, enum ep_event ev, int status)
{
    e->on_event(e, ev, status);
    return !e->closing;
}

static void on_closed(uv_handle_t *h)
{
    struct ep *e = h->data;

    e->open = false;
    tlsconn_free(e->tls);
    e->tls = NULL;
    e->on_closed(e);
}

int ep_init(struct ep *e, uv_loop_t *loop, ep_event_fn *on_event, ep_closed_fn *on_closed_cb,
            void *owner)
{
    int rc;

    memset(e, 0, sizeof(*e));
    e->on_event = on_event;
    e->on_closed = on_closed_cb;
    e->owner = owner;
    rc = uv_tcp_init(loop, &e->tcp);
    if (rc != 0)
        return rc;
    e->tcp.data = e;
    e->open = true;
    return 0;
}

int ep_accept(struct ep *e, uv_stream_t *server)
{
    int rc = uv_accept(server, (uv_stream_t *)&e->tcp);

    if (rc == 0)
        uv_tcp_nodelay(&e->tcp, 1);
    return rc;
}

int ep_open(struct ep *e, int fd)
{
    int rc = uv_tcp_open(&e->tcp, fd);

    if (rc == 0)
        uv_tcp_nodelay(&e->tcp, 1);
    return rc;
}

static void on_connect(uv_connect_t *req, int status)
{
    struct ep *e = req->handle->data;

    if (e->closing)
        return;
    if (status == 0)
        uv_tcp_nodelay(&e->tcp, 1);
    emit(e, EP_CONNECTED, status);
}

int ep_connect(struct ep *e, const struct sockaddr *to, const struct sockaddr *from)
{
    int rc;

    if (from != NULL) {
        rc = uv_tcp_bind(&e->tcp, from, 0);
        if (rc != 0)
            return rc;
    }
    return uv_tcp_connect(&e->creq, &e->tcp, to, on_connect);
}

void ep_set_owner(struct ep *e, ep_event_fn *on_event, ep_closed_fn *on_closed_cb, void *owner)
{
    e->on_event = on_event;
    e->on_closed = on_closed_cb;
    e->owner = owner;
}

void ep_set_bufs(struct ep *e, struct buf *rbuf, struct buf *wbuf)
{
    e->rbuf = rbuf;
    e->wbuf = wbuf;
}

/* ---- reading ---- */

static void stop_reading(struct ep *e)
{
    if (e->reading) {
        uv_read_stop((uv_stream_t *)&e->tcp);
        e->reading = false;
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    struct ep *e = h->data;
    struct buf *b = e->tls != NULL ? tlsconn_inbuf(e->tls) : e->rbuf;
    size_t room;

    (void)suggested;
    room = b != NULL ? buf_room(b) : 0;
    e->offered = room;
    *out = uv_buf_init(room > 0 ? buf_tail(b) : NULL, (unsigned)room);
}

/* A read that filled all the room offered: the stream keeps the buffer
 * full, so an elastic one grows (buf_set_max; fixed ones stay as they are). */
static void grow_if_filled(struct ep *e, struct buf *b, size_t nread)
{
    if (nread == e->offered)
        (void)buf_grow(b);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *ub)
{
    struct ep *e = s->data;

    (void)ub;
    if (e->closing || nread == 0)
        return;
    if (nread == UV_ENOBUFS) { /* the destination is full: wait for ep_read() */
        stop_reading(e);
        return;
    }
    if (nread < 0 && nread != UV_EOF) {
        stop_reading(e);
        emit(e, EP_ERROR, (int)nread);
        return;
    }
    if (nread == UV_EOF) {
        stop_reading(e);
        e->eof = true;
        if (e->tls != NULL) {
            tlsconn_set_eof(e->tls);
            pump_tls(e);
        } else {
            emit(e, EP_EOF, 0);
        }
        return;
    }
    if (e->tls != NULL) {
        buf_commit(tlsconn_inbuf(e->tls), (size_t)nread);
        grow_if_filled(e, tlsconn_inbuf(e->tls), (size_t)nread);
        pump_tls(e);
        return;
    }
    buf_commit(e->rbuf, (size_t)nread);
    grow_if_filled(e, e->rbuf, (size_t)nread);
    e->rx += (size_t)nread;
    emit(e, EP_READ, 0);
}

static void start_reading(struct ep *e)
{
    if (!e->reading && !e->eof && !e->closing) {
        if (uv_read_start((uv_stream_t *)&e->tcp, on_alloc, on_read) == 0)
            e->reading = true;
    }
}

/* Runs the handshake, then decrypts into rbuf while the owner wants bytes and
 * rbuf has room, then decides whether the socket should be read. */
static void pump_tls(struct ep *e)
{
    struct tlsconn *t = e->tls;
    size_t got = 0, n;
    int rc;

    if (!tlsconn_handshake_done(t)) {
        rc = tlsconn_handshake(t);
        flush_tls(e);
        if (e->closing)
            return;
        if (rc == TLSCONN_AGAIN && !e->eof) {
            start_reading(e);
            return;
        }
        if (rc != 0) {
            stop_reading(e);
            emit(e, EP_ERROR, rc == TLSCONN_AGAIN ? UV_EOF : UV_EPROTO);
            return;
        }
        if (!emit(e, EP_HANDSHAKE, 0))
            return;
    }
    for (;;) {
        if (!e->want_read || e->rbuf == NULL) {
            stop_reading(e);
            return;
        }
        /* Nothing to decrypt: rbuf is not touched, so that an idle
         * connection holds no buffer. */
        rc = tlsconn_has_input(t) ? 0 : TLSCONN_AGAIN;
        got = 0;
        /* A full rbuf grows when it is elastic (buf_grow: 0 once more room
         * is there, or will be when storage comes). */
        while (rc == 0 && (buf_room(e->rbuf) > 0 || buf_grow(e->rbuf) == 0)) {
            rc = tlsconn_read(t, buf_tail(e->rbuf), buf_room(e->rbuf), &n);
            if (rc == 0) {
                buf_commit(e->rbuf, n);
                got += n;
            }
        }
        e->rx += got;
        flush_tls(e); /* reads produce records too: tickets, alerts, key updates */
        if (e->closing)
            return;
        if (got > 0 && !emit(e, EP_READ, 0))
            return;
        if (rc != 0)
            break;
        /* rbuf was full: go on if the owner made room, else wait for ep_read(). */
        if (buf_room(e->rbuf) == 0) {
            stop_reading(e);
            return;
        }
    }
    if (rc == TLSCONN_AGAIN) {
        start_reading(e);
    } else if (rc == TLSCONN_CLOSED) {
        stop_reading(e);
        e->eof = true;
        emit(e, EP_EOF, 0);
    } else {
        stop_reading(e);
        emit(e, e->eof ? EP_EOF : EP_ERROR, e->eof ? UV_EOF : UV_EPROTO);
    }
}

void ep_read(struct ep *e)
{
    if (e->closing)
        return;
    e->want_read = true;
    if (e->tls != NULL) {
        if (!e->eof)
            pump_tls(e);
        return;
    }
    if (e->rbuf != NULL && buf_has_room(e->rbuf))
        start_reading(e); /* storage comes with the first bytes (on_alloc) */
}

void ep_pause(struct ep *e)
{
    e->want_read = false;
    if (e->tls == NULL || tlsconn_handshake_done(e->tls))
        stop_reading(e);
}

/* ---- writing ---- */

static void maybe_shutdown(struct ep *e);

static void on_write(uv_write_t *req, int status)
{
    struct ep *e = req->handle->data;

    e->writing = false;
    if (e->tls != NULL) {
        tlsconn_out_done(e->tls);
    } else {
        e->wbuf->pinned--;
        buf_consume(e->wbuf, e->inflight);
        e->inflight = 0;
    }
    if (e->closing)
        return;
    if (status < 0) {
        emit(e, EP_ERROR, status);
        return;
    }
    ep_flush(e);
    if (!e->closing)
        emit(e, EP_DRAINED, 0);
}

static void write_now(struct ep *e, const char *p, size_t len)
{
    uv_buf_t ub = uv_buf_init((char *)p, (unsigned)len);
    int rc = uv_write(&e->wreq, (uv_stream_t *)&e->tcp, &ub, 1, on_write);

    if (rc != 0) {
        emit(e, EP_ERROR, rc);
        return;
    }
    e->writing = true;
}

static void flush_tls(struct ep *e)
{
    struct buf *b;

    if (e->writing || e->closing)
        return;
    b = tlsconn_out_next(e->tls);
    if (b == NULL) {
        maybe_shutdown(e);
        return;
    }
    write_now(e, buf_head(b), buf_len(b));
}

static void encrypt_some(struct ep *e)
{
    size_t len, done;
    int rc;

    while (e->wbuf != NULL && buf_len(e->wbuf) > 0 && tlsconn_out_pending(e->tls) < EP_TLS_HIGH) {
        len = buf_len(e->wbuf);
        rc = tlsconn_write(e->tls, buf_head(e->wbuf), len > EP_TLS_RECORD ? EP_TLS_RECORD : len,
                           &done);
        if (rc == TLSCONN_AGAIN)
            break;
        if (rc < 0) {
            emit(e, EP_ERROR, UV_EPROTO);
            return;
        }
        buf_consume(e->wbuf, done);
    }
}

void ep_flush(struct ep *e)
{
    if (e->closing)
        return;
    if (e->tls != NULL) {
        if (tlsconn_handshake_done(e->tls))
            encrypt_some(e);
        if (!e->closing)
            flush_tls(e);
        return;
    }
    if (e->writing)
        return;
    if (e->wbuf == NULL || buf_len(e->wbuf) == 0) {
        maybe_shutdown(e);
        return;
    }
    e->wbuf->pinned++;
    e->inflight = buf_len(e->wbuf);
    write_now(e, buf_head(e->wbuf), e->inflight);
    if (!e->writing) {
        e->wbuf->pinned--;
        e->inflight = 0;
    }
}

size_t ep_pending(const struct ep *e)
{
    size_t n = e->wbuf != NULL ? buf_len(e->wbuf) : 0;

    return e->tls != NULL ? n + tlsconn_out_pending(e->tls) : n;
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct ep *e = req->handle->data;

    if (e->closing)
        return;
    emit(e, EP_SHUTDOWN, status);
}

static void maybe_shutdown(struct ep *e)
{
    int rc;

    if (!e->want_shutdown || e->shut_started || e->writing || ep_pending(e) > 0)
        return;
    if (e->tls != NULL && tlsconn_handshake_done(e->tls) && !tlsconn_shutdown_sent(e->tls)) {
        if (tlsconn_shutdown(e->tls) == 0 && tlsconn_out_pending(e->tls) > 0) {
            flush_tls(e);
            return;
        }
    }
    e->shut_started = true;
    rc = uv_shutdown(&e->sreq, (uv_stream_t *)&e->tcp, on_shutdown);
    if (rc != 0)
        emit(e, EP_ERROR, rc);
}

void ep_shutdown(struct ep *e)
{
    if (e->closing || e->want_shutdown)
        return;
    e->want_shutdown = true;
    ep_flush(e);
}

void ep_start_tls(struct ep *e, struct tlsconn *t, struct buf *early)
{
    struct buf *in = tlsconn_inbuf(t);

    PX_ASSERT(e->tls == NULL && !e->writing);
    e->tls = t;
    if (early != NULL && buf_len(early) > 0) {
        /* Bytes past the plaintext stage: the start of the ClientHello. */
        if (buf_append(in, buf_head(early), buf_len(early)) != 0) {
            emit(e, EP_ERROR, UV_ENOBUFS);
            return;
        }
        buf_reset(early);
    }
    pump_tls(e);
}

void ep_close(struct ep *e, bool reset)
{
    struct buf *b;

    if (!e->open || e->closing)
        return;
    e->closing = true;
    /* One non-blocking try for a pending alert or close_notify: uv_close
     * would cancel a queued write. */
    if (e->tls != NULL && !e->writing && !reset) {
        b = tlsconn_out_next(e->tls);
        if (b != NULL) {
            uv_buf_t ub = uv_buf_init((char *)buf_head(b), (unsigned)buf_len(b));

            (void)uv_try_write((uv_stream_t *)&e->tcp, &ub, 1);
        }
    }
    if (!reset || e->shut_started ||
        uv_tcp_close_reset(&e->tcp, on_closed) != 0)
        uv_close((uv_handle_t *)&e->tcp, on_closed);
}

int ep_sockname(const struct ep *e, struct sockaddr_storage *ss, bool peer)
{
    int len = (int)sizeof(*ss);

    memset(ss, 0, sizeof(*ss));
    if (peer)
        return uv_tcp_getpeername(&e->tcp, (struct sockaddr *)ss, &len);
    return uv_tcp_getsockname(&e->tcp, (struct sockaddr *)ss, &len);
}

const char *ep_event_name(enum ep_event ev)
{
    static const char *const names[] = {
        [EP_CONNECTED] = "connected", [EP_HANDSHAKE] = "handshake", [EP_READ] = "read",
        [EP_DRAINED] = "drained",     [EP_EOF] = "eof",             [EP_SHUTDOWN] = "shutdown",
        [EP_ERROR] = "error",
    };

    return (size_t)ev < PX_NELEM(names) && names[ev] != NULL ? names[ev] : "?";
}
