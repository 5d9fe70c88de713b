/* xfer.c - one data channel (see xfer.h).
 *
 * The client's data connection arrives on our passive port (or we connect out
 * for PORT/EPRT); it is accepted only from the control client's address. With
 * PROT P the proxy is its TLS server, with the control connection's
 * certificate, and when require_session_reuse is set it must resume the
 * control connection's session. As soon as the backend named its data port,
 * we connect to it, before the client's transfer command: vsftpd answers that
 * command with 150 only once it has accepted a connection, some clients start
 * TLS only after the 150, and a connection already waiting saves a round
 * trip. Nothing is read from the backend before the client's side is ready.
 * Two relays then run: up (client -> backend) and down (backend -> client),
 * each through one bounded buffer.
 *
 * The end: when the client ends its side (upload done), the backend gets a FIN
 * and the client our close_notify. When the backend ends its side (download
 * done), the client gets close_notify and FIN once the final reply says the
 * transfer succeeded, or an abortive close when it failed. The client side is
 * finished when our shutdown is out and the client has closed (or lingered too
 * long); only then is XFER_DONE reported, and the held final reply released. */
#include "xfer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "bufpool.h"
#include "ep.h"
#include "log.h"
#include "metrics.h"
#include "portpool.h"
#include "px.h"
#include "quota.h"
#include "tlsconn.h"
#include "tlsctx.h"

/* Buffer sizes of a running transfer. Measured (scripts/bench, download and
 * upload through loopback): going from 128 KiB plaintext and 64 KiB TLS
 * buffers to 1 MiB and 512 KiB cuts the proxy's CPU per GiB by about a
 * quarter (fewer system calls and wake-ups per byte); twice that gains
 * nothing more. A transfer starts with XFER_START bytes per buffer, enough
 * for a small file in one go, and its buffers grow eightfold (buf_grow) while the
 * stream keeps them full, up to those sizes. They are allocated when the
 * transfer uses them, come from and go back to the worker's pool
 * (bufpool.h), and count against transfer_memory while in use. */
#define XFER_START (32 * 1024)    /* every buffer's first size */
#define XFER_BUF (1024 * 1024)    /* plaintext per direction, at most */
#define XFER_TLS_BUF (512 * 1024) /* ciphertext buffers of the client's TLS, at most */
#define XFER_LINGER_MS 5000      /* waiting for the client to close after our shutdown */
#define XFER_BIND_TRIES 16

struct xfer {
    xfer_event_fn *on_event; /* the owner's, while attached; NULL once detached */
    void *arg;
    uv_loop_t *loop;
    struct log_sess lg; /* a copy pointing at our own copies below: the
                           session (and its generation) may go first */
    char site[256];
    char backend_name[64];
    unsigned open_handles;
    bool detached;
    bool torn_down;

    struct portpool *pool; /* borrowed from the worker, which outlives us */
    struct buf_alloc alloc; /* our buffers' storage: the worker's bufpool, counted */
    struct sharedport *share; /* borrowed from the worker: waiting on a shared port */
    struct sharedport_wait wait;
    uint16_t port;         /* reserved passive port, 0 when none */
    bool passive_counted;  /* quota_passive_enter'ed for the client address */
    bool transfer_counted; /* quota_transfer_enter'ed (xfer_admit) */
    uv_tcp_t listener;
    bool listening;

    struct ep *client; /* owned; NULL until a data connection is accepted */
    struct ep backend;
    bool backend_started;
    uv_timer_t timer; /* data_timeout, then the linger after our shutdown */
    struct buf up, down;

    bool tls;                /* PROT P: the client's data connection is TLS */
    struct tlsctx_conn ctl_tls; /* the control connection's (its contexts are
                                   the generation's, which outlives us) */
    struct tlsctx_conn tci;     /* the data connection's */
    bool require_reuse;
    uint64_t data_timeout_ms;

    struct sockaddr_storage allowed;       /* the control client */
    struct sockaddr_storage local;         /* our control address */
    struct sockaddr_storage backend_local; /* start of backend data connections */
    struct sockaddr_storage backend_data;
    bool backend_known;
    struct sockaddr_storage active_to;
    bool active;

    bool started, download;
    bool client_ready; /* accepted, TLS done and checked (or plaintext) */
    bool client_eof;   /* the client ended its side */
    bool client_shut;  /* our shutdown to the client is out */
    bool backend_eof;
    bool done;         /* XFER_DONE reported */
    uint64_t up_total; /* bytes the closed client connection delivered */
    int final_code;
    const char *refusal; /* static: why a data connection was refused */
};

static void on_client_event(struct ep *e, enum ep_event ev, int status);
static void on_backend_event(struct ep *e, enum ep_event ev, int status);
static void client_connected(struct xfer *x);

/* ---- lifetime ---- */

/* Transfer buffers come from the worker's pool (arg), counted against
 * transfer_memory while a transfer holds them. */
static void *counted_get(void *arg, size_t cap)
{
    void *p = bufpool_get(arg, cap);

    if (p != NULL)
        quota_mem_add((int64_t)cap);
    return p;
}

static void counted_put(void *arg, void *p, size_t cap)
{
    bufpool_put(arg, p, cap);
    quota_mem_add(-(int64_t)cap);
}

static void xfer_free(struct xfer *x)
{
    PX_ASSERT(x->port == 0); /* released with the listener */
    if (x->transfer_counted)
        quota_transfer_leave((const struct sockaddr *)&x->allowed);
    buf_free(&x->up);
    buf_free(&x->down);
    free(x);
}

static void handle_closed(struct xfer *x)
{
    PX_ASSERT(x->open_handles > 0);
    if (--x->open_handles == 0 && x->detached)
        xfer_free(x);
}

static void on_handle_closed(uv_handle_t *h) { handle_closed(h->data); }

static void on_client_closed(struct ep *e)
{
    struct xfer *x = e->owner;

    if (x->client == e) {
        x->up_total = e->rx;
        x->client = NULL;
    }
    free(e);
    handle_closed(x);
}

static void on_backend_closed(struct ep *e) { handle_closed(e->owner); }

/* The port goes back to the pool as soon as nothing listens on it (uv_close
 * closes the socket at once): an accepted data connection keeps using it, and
 * a new listener may share the port with it. */
static void close_listener(struct xfer *x)
{
    if (x->share != NULL)
        sharedport_cancel(x->share, &x->wait);
    if (x->listening) {
        x->listening = false;
        uv_close((uv_handle_t *)&x->listener, on_handle_closed);
    }
    if (x->port != 0) {
        portpool_release(x->pool, x->port);
        x->port = 0;
    }
    if (x->passive_counted) {
        x->passive_counted = false;
        quota_passive_leave((const struct sockaddr *)&x->allowed);
    }
}

/* Closes everything that is open. reset: RST instead of FIN. */
static void teardown(struct xfer *x, bool reset)
{
    x->torn_down = true;
    close_listener(x);
    uv_timer_stop(&x->timer);
    if (x->client != NULL)
        ep_close(x->client, reset);
    if (x->backend.open)
        ep_close(&x->backend, reset);
}

static void report(struct xfer *x, enum xfer_event ev, const char *reason)
{
    if (x->on_event != NULL && !x->torn_down)
        x->on_event(x, ev, reason, x->arg);
}

/* The client side is finished: report once (the held reply may go out).
 * reset: end the client's connection with RST rather than FIN. */
static void client_done(struct xfer *x, const char *reason, bool reset)
{
    if (x->client != NULL)
        ep_close(x->client, reset);
    if (x->done)
        return;
    x->done = true;
    report(x, XFER_DONE, reason);
}

/* A failure that ends both connections at once; the backend always sees a
 * reset, so that it never takes a cut transfer for a complete one. */
static void end_both(struct xfer *x, const char *reason, bool reset_client)
{
    if (x->backend.open)
        ep_close(&x->backend, true);
    close_listener(x);
    uv_timer_stop(&x->timer);
    client_done(x, reason, reset_client);
}

static void fail(struct xfer *x, const char *reason) { end_both(x, reason, true); }

/* A data connection that broke a rule: closed plainly (the client then reads
 * an empty transfer and the 522 on the control connection). kind: the
 * metric's label. */
static void refuse(struct xfer *x, const char *kind, const char *reason)
{
    metrics_add(M_DATA_REFUSED, kind, NULL, 1);
    x->refusal = reason;
    report(x, XFER_REFUSED, reason);
    end_both(x, reason, false);
}

static void on_timeout(uv_timer_t *t)
{
    struct xfer *x = t->data;

    if (x->client_shut) {
        client_done(x, NULL, false); /* the client did not close after our shutdown */
        return;
    }
    if (x->client == NULL) {
        /* The backend's data connection, made when its port was known, is
         * reset with it: a transfer command waiting on it fails now. */
        fail(x, "no data connection within data_timeout");
        return;
    }
    fail(x, "data connection stalled for data_timeout");
}

static void arm_timeout(struct xfer *x)
{
    if (!x->client_shut && !x->torn_down)
        uv_timer_start(&x->timer, on_timeout, x->data_timeout_ms, 0);
}

static struct xfer *xfer_alloc(const struct xfer_params *p)
{
    struct xfer *x = calloc(1, sizeof(*x));

    if (x == NULL)
        return NULL;
    x->on_event = p->on_event;
    x->arg = p->arg;
    x->loop = p->loop;
    x->lg = *p->lg;
    snprintf(x->site, sizeof(x->site), "%s", p->lg->site != NULL ? p->lg->site : "");
    snprintf(x->backend_name, sizeof(x->backend_name), "%s", p->lg->backend != NULL ? p->lg->backend : "");
    x->lg.site = p->lg->site != NULL ? x->site : NULL;
    x->lg.backend = p->lg->backend != NULL ? x->backend_name : NULL;
    x->pool = p->pool;
    x->tls = p->tls != NULL;
    if (x->tls)
        x->ctl_tls = *p->tls;
    x->require_reuse = p->require_reuse;
    x->share = x->tls && x->require_reuse ? p->share : NULL;
    x->data_timeout_ms = (uint64_t)p->data_timeout * 1000;
    memcpy(&x->allowed, p->client, sizeof(x->allowed));
    memcpy(&x->local, p->local, sizeof(x->local));
    memcpy(&x->backend_local, p->backend_local, sizeof(x->backend_local));
    x->alloc = (struct buf_alloc){counted_get, counted_put, p->bufs};
    buf_init(&x->up, XFER_START);
    buf_init(&x->down, XFER_START);
    buf_set_max(&x->up, XFER_BUF);
    buf_set_max(&x->down, XFER_BUF);
    buf_set_alloc(&x->up, &x->alloc);
    buf_set_alloc(&x->down, &x->alloc);
    uv_timer_init(x->loop, &x->timer);
    x->timer.data = x;
    x->open_handles = 1;
    return x;
}

/* ---- the backend side ---- */

static void start_backend(struct xfer *x)
{
    struct sockaddr_storage from = x->backend_local;
    int rc;

    if (x->backend_started || !x->backend_known || x->torn_down || x->done)
        return;
    x->backend_started = true;
    rc = ep_init(&x->backend, x->loop, on_backend_event, on_backend_closed, x);
    if (rc != 0) {
        fail(x, "cannot open a backend data connection");
        return;
    }
    x->open_handles++;
    ep_set_bufs(&x->backend, &x->down, &x->up);
    /* From the backend control connection's own address: vsftpd refuses data
     * connections from any other ("425 Security: Bad IP connecting"). */
    px_set_port((struct sockaddr *)&from, 0);
    rc = ep_connect(&x->backend, (const struct sockaddr *)&x->backend_data,
                    (const struct sockaddr *)&from);
    if (rc != 0)
        fail(x, "cannot connect to the backend's data port");
}

/* The download is over on the backend's side: pass the end on to the client
 * once the final reply tells how it ended. */
static void end_download(struct xfer *x)
{
    if (!x->backend_eof || x->final_code == 0 || !x->client_ready || x->client == NULL ||
        x->torn_down)
        return;
    if (x->final_code >= 300) {
        fail(x, "the transfer failed");
        return;
    }
    ep_shutdown(x->client);
}

static void on_backend_event(struct ep *e, enum ep_event ev, int status)
{
    struct xfer *x = e->owner;

    switch (ev) {
    case EP_CONNECTED:
        if (status < 0) {
            fail(x, "the backend's data port refused the connection");
            return;
        }
        if (x->client_ready)
            ep_read(&x->backend);
        ep_flush(&x->backend);
        return;
    case EP_READ: /* down received bytes */
        arm_timeout(x);
        if (x->client != NULL)
            ep_flush(x->client);
        return;
    case EP_DRAINED: /* up has room again */
        arm_timeout(x);
        if (x->client != NULL && buf_len(&x->up) <= buf_cap(&x->up) / 2)
            ep_read(x->client);
        if (x->client_eof && buf_len(&x->up) == 0)
            ep_shutdown(&x->backend);
        return;
    case EP_EOF:
        /* vsftpd waits for our close before it sends the final reply. */
        x->backend_eof = true;
        if (buf_len(&x->up) == 0)
            ep_close(&x->backend, false);
        end_download(x);
        return;
    case EP_SHUTDOWN:
        return;
    case EP_ERROR:
    default:
        fail(x, "the backend's data connection failed");
        return;
    }
}

/* ---- the client side ---- */

/* Relaying starts only now: nothing from the backend reaches a client whose
 * TLS is not done and checked. */
static void client_ready(struct xfer *x)
{
    x->client_ready = true; /* the client side reads already (client_connected) */
    if (x->backend.open && !x->backend.closing)
        ep_read(&x->backend);
    ep_flush(x->client);
    end_download(x);
}

static void on_handshake(struct xfer *x)
{
    const struct tlsconn *t = x->client->tls;

    if (x->require_reuse && !tlsconn_resumed(t)) {
        refuse(x, "session_reuse",
               "its TLS session does not resume the control connection's (session reuse "
               "required)");
        return;
    }
    LOG_DEBUG(&x->lg, "data_tls", "version", tlsconn_version(t), "resumed",
              tlsconn_resumed(t) ? "yes" : "no", NULL);
    client_ready(x);
}

static void on_client_event(struct ep *e, enum ep_event ev, int status)
{
    struct xfer *x = e->owner;

    if (e != x->client)
        return; /* a refused connection on its way out */
    switch (ev) {
    case EP_CONNECTED: /* active mode */
        if (status < 0) {
            fail(x, "cannot connect to the client's PORT address");
            return;
        }
        client_connected(x);
        return;
    case EP_HANDSHAKE:
        on_handshake(x);
        return;
    case EP_READ: /* up received bytes */
        arm_timeout(x);
        if (x->backend.open)
            ep_flush(&x->backend);
        return;
    case EP_DRAINED: /* down has room again (or a handshake flight went out) */
        arm_timeout(x);
        if (x->client_ready && x->backend.open && buf_len(&x->down) <= buf_cap(&x->down) / 2)
            ep_read(&x->backend);
        return;
    case EP_EOF:
        x->client_eof = true;
        if (x->client_shut) { /* the client closed after our close_notify */
            client_done(x, NULL, false);
            return;
        }
        if (status != 0 && x->client->tls != NULL) {
            fail(x, "the client ended the data connection without close_notify (truncated)");
            return;
        }
        if (x->download || !x->started) {
            fail(x, "the client closed the data connection early");
            return;
        }
        /* The upload is complete: FIN to the backend once up is written, and
         * our close_notify to the client, which may wait for it. */
        if (buf_len(&x->up) == 0 && x->backend.open)
            ep_shutdown(&x->backend);
        ep_shutdown(x->client);
        return;
    case EP_SHUTDOWN:
        x->client_shut = true;
        if (x->client_eof) {
            client_done(x, NULL, false);
            return;
        }
        uv_timer_start(&x->timer, on_timeout, XFER_LINGER_MS, 0);
        return;
    case EP_ERROR:
    default:
        if (!x->client_ready && x->client->tls != NULL) {
            refuse(x, "tls_handshake", "its TLS handshake failed");
            return;
        }
        fail(x, "the client's data connection failed");
        return;
    }
}

/* A data connection is ours: start TLS (or not) and reach for the backend. */
static void client_connected(struct xfer *x)
{
    struct tlsconn *t;

    close_listener(x);
    arm_timeout(x);
    ep_set_bufs(x->client, &x->up, &x->down);
    start_backend(x);
    if (!x->tls) {
        ep_read(x->client);
        client_ready(x);
        return;
    }
    t = tlsctx_data(&x->ctl_tls, &x->tci, XFER_START);
    if (t == NULL) {
        fail(x, "out of memory");
        return;
    }
    tlsconn_set_max(t, XFER_TLS_BUF);
    tlsconn_set_alloc(t, &x->alloc);
    ep_start_tls(x->client, t, NULL);
    if (x->client != NULL && !x->client->closing)
        ep_read(x->client);
}

static struct ep *new_client_ep(struct xfer *x)
{
    struct ep *e = malloc(sizeof(*e));

    if (e == NULL)
        return NULL;
    if (ep_init(e, x->loop, on_client_event, on_client_closed, x) != 0) {
        free(e);
        return NULL;
    }
    x->open_handles++;
    return e;
}

static void on_data_connection(uv_stream_t *server, int status)
{
    struct xfer *x = server->data;
    struct sockaddr_storage peer;
    char addr[64];
    struct ep *e;

    if (status < 0 || x->torn_down)
        return;
    e = new_client_ep(x);
    if (e == NULL)
        return;
    if (ep_accept(e, server) != 0 || ep_sockname(e, &peer, true) != 0) {
        ep_close(e, true);
        return;
    }
    if (!px_same_ip((const struct sockaddr *)&peer, (const struct sockaddr *)&x->allowed) ||
        x->client != NULL) {
        metrics_add(M_DATA_REFUSED, x->client != NULL ? "second_connection" : "address", NULL, 1);
        log_addr(addr, sizeof(addr), (const struct sockaddr *)&peer);
        LOG_WARN(&x->lg, "data_refused", "reason",
                 x->client != NULL ? "second data connection" : "address differs from the control "
                                                                "connection's",
                 "from", addr, NULL);
        ep_close(e, true);
        return;
    }
    x->client = e;
    client_connected(x);
}

/* A shared port's data connection resumed our session (sharedport.h): it
 * is ours, with its handshake done and checked. */
static void on_shared_match(void *owner, struct ep *e, const struct tlsctx_conn *ci)
{
    struct xfer *x = owner;

    ep_set_owner(e, on_client_event, on_client_closed, x);
    x->open_handles++;
    x->tci = *ci;
    tlsctx_adopt(e->tls, &x->tci);
    x->client = e;
    close_listener(x);
    arm_timeout(x);
    ep_set_bufs(e, &x->up, &x->down);
    start_backend(x);
    if (x->client == e && !e->closing) {
        ep_read(e);
        on_handshake(x);
    }
}

/* ---- the interface ---- */

static int listen_on_pool_port(struct xfer *x)
{
    struct sockaddr_storage sa = x->local;
    int rc = UV_ENOSPC;

    for (int i = 0; i < XFER_BIND_TRIES; i++) {
        uint16_t port;

        if (portpool_reserve(x->pool, &port) != 0)
            return UV_ENOSPC;
        px_set_port((struct sockaddr *)&sa, port);
        rc = uv_tcp_bind(&x->listener, (const struct sockaddr *)&sa, 0);
        if (rc == 0)
            rc = uv_listen((uv_stream_t *)&x->listener, 8, on_data_connection);
        if (rc == 0) {
            x->port = port;
            return 0;
        }
        portpool_release(x->pool, port); /* taken by someone else: try the next */
        if (rc != UV_EADDRINUSE)
            return rc;
    }
    return rc;
}

struct xfer *xfer_new_passive(const struct xfer_params *p, uint16_t *port, int *err)
{
    struct xfer *x = xfer_alloc(p);
    int rc;

    *err = UV_ENOMEM;
    if (x == NULL)
        return NULL;
    if (!quota_passive_enter(p->client, p->max_passive_per_ip)) {
        *err = XFER_EPERIP;
        xfer_detach(x);
        return NULL;
    }
    x->passive_counted = true;
    if (x->share != NULL) {
        rc = sharedport_wait(x->share, x->pool, (const struct sockaddr *)&x->local,
                             (const struct sockaddr *)&x->allowed, &x->ctl_tls, &x->lg, &x->wait,
                             on_shared_match, x, port);
    } else {
        rc = uv_tcp_init(x->loop, &x->listener);
        if (rc == 0) {
            x->listener.data = x;
            x->listening = true;
            x->open_handles++;
            rc = listen_on_pool_port(x);
        }
        *port = x->port;
    }
    if (rc != 0) {
        *err = rc;
        xfer_detach(x);
        return NULL;
    }
    arm_timeout(x);
    return x;
}

struct xfer *xfer_new_active(const struct xfer_params *p, const struct sockaddr *to, int *err)
{
    struct xfer *x = xfer_alloc(p);

    *err = UV_ENOMEM;
    if (x == NULL)
        return NULL;
    x->active = true;
    memcpy(&x->active_to, to,
           to->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
    return x;
}

void xfer_set_backend(struct xfer *x, const struct sockaddr *backend_data)
{
    memcpy(&x->backend_data, backend_data,
           backend_data->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                              : sizeof(struct sockaddr_in6));
    x->backend_known = true;
    start_backend(x);
}

const char *xfer_admit(struct xfer *x, unsigned max_transfers, uint64_t memory)
{
    if (x->transfer_counted)
        return NULL;
    if (quota_mem() >= memory)
        return "transfer_memory";
    if (!quota_transfer_enter((const struct sockaddr *)&x->allowed, max_transfers))
        return "max_transfers_per_ip";
    x->transfer_counted = true;
    return NULL;
}

void xfer_start(struct xfer *x, bool download)
{
    struct sockaddr_storage from = x->local;
    struct ep *e;

    x->started = true;
    x->download = download;
    if (x->done || !x->active || x->client != NULL)
        return;
    /* Active mode: we connect out to the client, from our control address,
     * and stay the TLS server (RFC 4217). */
    e = new_client_ep(x);
    if (e == NULL) {
        fail(x, "out of memory");
        return;
    }
    x->client = e;
    px_set_port((struct sockaddr *)&from, 0);
    if (ep_connect(e, (const struct sockaddr *)&x->active_to, (const struct sockaddr *)&from) != 0)
        fail(x, "cannot connect to the client's PORT address");
}

void xfer_final_reply(struct xfer *x, int code)
{
    x->final_code = code;
    if (x->done || x->torn_down)
        return;
    if (code >= 300) {
        fail(x, NULL);
        return;
    }
    if (x->client == NULL) {
        /* On a shared port a data connection is ours only once its
         * handshake is done: the backend may have finished before. Its
         * bytes wait in the backend socket, the reply waits for the client
         * (or for data_timeout). */
        if (x->share != NULL && x->backend_started && x->wait.lsn != NULL)
            return;
        client_done(x, NULL, false); /* nothing was ever connected */
        return;
    }
    if (x->download)
        end_download(x);
}

bool xfer_refused(const struct xfer *x, const char **reason)
{
    *reason = x->refusal;
    return x->refusal != NULL;
}

void xfer_detach(struct xfer *x)
{
    x->on_event = NULL;
    x->detached = true;
    if (!x->torn_down)
        teardown(x, true);
    uv_close((uv_handle_t *)&x->timer, on_handle_closed);
}

void xfer_bytes(const struct xfer *x, uint64_t *up, uint64_t *down)
{
    *up = x->client != NULL ? x->client->rx : x->up_total;
    *down = x->backend_started ? x->backend.rx : 0;
}

const char *xfer_event_name(enum xfer_event ev)
{
    return ev == XFER_REFUSED ? "refused" : ev == XFER_DONE ? "done" : "?";
}

void xfer_tls_alloc(struct bufpool *pool, struct buf_alloc *alloc, size_t *start, size_t *max)
{
    *alloc = (struct buf_alloc){counted_get, counted_put, pool};
    *start = XFER_START;
    *max = XFER_TLS_BUF;
}
