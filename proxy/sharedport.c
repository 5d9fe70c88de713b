/* sharedport.c - shared passive ports (see sharedport.h).
 *
 * A port's listener lives while sessions wait on it. Each accepted
 * connection is a `struct pending` until its TLS handshake ends: the
 * handshake asks find() for the session its ticket or session id names, the
 * registry's verdict is kept as the reason in case it is refused, and after
 * the handshake the resumed session's token is checked once more against
 * the registry before the connection goes to its session. */
#include "sharedport.h"

#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "ep.h"
#include "log.h"
#include "metrics.h"
#include "portpool.h"
#include "px.h"
#include "tlsconn.h"
#include "tlsctx.h"

#define HANDSHAKE_MS 10000 /* an accepted connection's handshake must end by then */
/* Ciphertext buffers during the handshake: a ClientHello and our answer fit
 * (a resumption sends no certificate). They grow to the transfer's size once
 * the connection is matched, so connections that match nothing (anyone may
 * open them) cost little. */
#define HANDSHAKE_BUF (18 * 1024)
#define BIND_TRIES 16
#define BACKLOG 4096 /* the kernel clamps it to net.core.somaxconn */

struct sharedport_lsn {
    struct sharedport_lsn *next;
    struct sharedport *s;
    uv_tcp_t tcp;
    struct portpool *pool;         /* the port came from here (it may be retired) */
    struct sockaddr_storage local; /* with the port */
    uint16_t port;
    size_t waiters;
    struct ssl_ctx_st *ctx; /* handshakes run in the newest waiter's context */
};

struct pending {
    struct pending *prev, *next;
    struct sharedport *s; /* NULL once it left the list */
    struct ep *e;         /* owned until handed over */
    uv_timer_t timer;
    unsigned open;        /* handles not yet closed */
    uint16_t port;
    uint8_t ip[16];
    char from[64];
    enum sharereg_verdict verdict; /* the last verdict find() got */
    bool asked;                    /* find() was asked */
    struct tlsctx_conn ci;
};

struct sharedport {
    uv_loop_t *loop;
    struct buf_alloc alloc;
    size_t tls_start, tls_max;
    struct sharereg reg;
    struct sharedport_lsn *lsns;
    struct pending *pending;
};

struct sharedport *sharedport_new(uv_loop_t *loop, const struct buf_alloc *alloc,
                                  size_t tls_start, size_t tls_max)
{
    struct sharedport *s = calloc(1, sizeof(*s));

    if (s == NULL)
        return NULL;
    s->loop = loop;
    s->alloc = *alloc;
    s->tls_start = tls_start;
    s->tls_max = tls_max;
    return s;
}

void sharedport_free(struct sharedport *s)
{
    if (s == NULL)
        return;
    PX_ASSERT(s->lsns == NULL && s->pending == NULL);
    sharereg_free(&s->reg);
    free(s);
}

/* ---- listeners ---- */

static void on_lsn_closed(uv_handle_t *h) { free(h->data); }

static void close_lsn(struct sharedport *s, struct sharedport_lsn *l)
{
    struct sharedport_lsn **pl = &s->lsns;

    while (*pl != l)
        pl = &(*pl)->next;
    *pl = l->next;
    uv_close((uv_handle_t *)&l->tcp, on_lsn_closed);
    portpool_release(l->pool, l->port); /* the pool may be gone after this */
}

static void on_connection(uv_stream_t *server, int status);

/* A new listener on a port of pool at local. 0 or an error. */
static int open_lsn(struct sharedport *s, struct portpool *pool, const struct sockaddr *local,
                    struct sharedport_lsn **out)
{
    struct sharedport_lsn *l = calloc(1, sizeof(*l));
    int rc = UV_ENOSPC;

    if (l == NULL)
        return UV_ENOMEM;
    memcpy(&l->local, local,
           local->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
    rc = uv_tcp_init(s->loop, &l->tcp);
    if (rc != 0) {
        free(l);
        return rc;
    }
    l->tcp.data = l;
    l->s = s;
    l->pool = pool;
    for (int i = 0; i < BIND_TRIES; i++) {
        uint16_t port;

        rc = portpool_reserve(pool, &port);
        if (rc != 0) {
            rc = UV_ENOSPC;
            break;
        }
        px_set_port((struct sockaddr *)&l->local, port);
        rc = uv_tcp_bind(&l->tcp, (const struct sockaddr *)&l->local, 0);
        if (rc == 0)
            rc = uv_listen((uv_stream_t *)&l->tcp, BACKLOG, on_connection);
        if (rc == 0) {
            l->port = port;
            l->next = s->lsns;
            s->lsns = l;
            *out = l;
            return 0;
        }
        portpool_release(pool, port);
        if (rc != UV_EADDRINUSE)
            break;
    }
    uv_close((uv_handle_t *)&l->tcp, on_lsn_closed);
    return rc;
}

int sharedport_wait(struct sharedport *s, struct portpool *pool, const struct sockaddr *local,
                    const struct sockaddr *client, const struct tlsctx_conn *ctl,
                    const struct log_sess *lg, struct sharedport_wait *w,
                    sharedport_matched_fn *on_matched, void *owner, uint16_t *port)
{
    struct sharedport_lsn *l = NULL;
    int rc;

    for (struct sharedport_lsn *c = s->lsns; c != NULL; c = c->next)
        if (c->pool == pool && px_same_ip((const struct sockaddr *)&c->local, local) &&
            (l == NULL || c->waiters < l->waiters))
            l = c;
    memset(w, 0, sizeof(*w));
    memcpy(w->reg.key, ctl->token, SHAREREG_KEY_LEN);
    px_ip16(client, w->reg.ip);
    w->reg.owner = owner;
    if (l == NULL) {
        rc = open_lsn(s, pool, local, &l);
        if (rc != 0)
            return rc;
    }
    w->reg.port = l->port;
    rc = sharereg_add(&s->reg, &w->reg);
    if (rc != 0) {
        if (l->waiters == 0)
            close_lsn(s, l);
        return rc;
    }
    l->waiters++;
    l->ctx = ctl->ctx0;
    w->lsn = l;
    w->ctl = ctl;
    w->lg = lg;
    w->on_matched = on_matched;
    *port = l->port;
    return 0;
}

void sharedport_cancel(struct sharedport *s, struct sharedport_wait *w)
{
    struct sharedport_lsn *l = w->lsn;

    if (l == NULL)
        return;
    w->lsn = NULL;
    sharereg_remove(&s->reg, &w->reg);
    if (--l->waiters == 0)
        close_lsn(s, l);
}

/* ---- accepted connections ---- */

static void pending_closed(struct pending *p)
{
    if (--p->open == 0)
        free(p);
}

static void on_timer_closed(uv_handle_t *h) { pending_closed(h->data); }

static void on_ep_closed(struct ep *e)
{
    struct pending *p = e->owner;

    free(e);
    pending_closed(p);
}

/* Leaves the list and stops the timer; the connection is closed or gone. */
static void finish(struct pending *p)
{
    struct sharedport *s = p->s;

    if (s == NULL)
        return;
    p->s = NULL;
    PX_DLIST_UNLINK(s->pending, p);
    uv_close((uv_handle_t *)&p->timer, on_timer_closed);
}

/* label: the metric's reason; a session found by its key gets the line. */
static void refuse(struct pending *p, const char *label, const struct log_sess *lg)
{
    char port[24];

    metrics_add(M_DATA_REFUSED, label, NULL, 1);
    LOG_WARN(lg, "data_refused", "reason", label, "from", p->from, "port", log_u64(port, p->port),
             "shared", "yes", NULL);
    if (p->e != NULL) {
        ep_close(p->e, true);
        p->e = NULL;
    }
    finish(p);
}

static const struct tlsctx_conn *find(void *arg, const uint8_t key[TLSCTX_KEY_LEN])
{
    struct pending *p = arg;
    struct sharereg_entry *ent;

    if (p->s == NULL)
        return NULL;
    p->asked = true;
    p->verdict = sharereg_match(&p->s->reg, key, p->port, p->ip, &ent);
    LOG_DEBUG(ent != NULL ? PX_CONTAINER_OF(ent, struct sharedport_wait, reg)->lg : NULL,
              "data_session", "verdict", sharereg_verdict_name(p->verdict), "from", p->from, NULL);
    if (p->verdict != SHAREREG_MATCH)
        return NULL;
    return PX_CONTAINER_OF(ent, struct sharedport_wait, reg)->ctl;
}

/* Why a handshake that resumed no waiting session failed. */
static const char *failure_label(const struct pending *p)
{
    if (p->asked && p->verdict != SHAREREG_MATCH)
        return sharereg_verdict_name(p->verdict);
    if (p->ci.refused != NULL)
        return p->ci.refused; /* fresh_handshake, no_application_protocol */
    return "tls_handshake";
}

static void on_handshake(struct pending *p)
{
    struct sharedport *s = p->s;
    uint8_t token[TLSCTX_TOKEN_LEN];
    struct sharereg_entry *ent = NULL;
    struct sharedport_wait *w = NULL;
    enum sharereg_verdict v = SHAREREG_NOT_WAITING;
    struct ep *e = p->e;

    if (!tlsctx_resumed_token(e->tls, token)) {
        refuse(p, p->asked && p->verdict != SHAREREG_MATCH ? sharereg_verdict_name(p->verdict)
                                                            : "fresh_handshake",
               NULL);
        return;
    }
    v = sharereg_match(&s->reg, token, p->port, p->ip, &ent);
    w = ent != NULL ? PX_CONTAINER_OF(ent, struct sharedport_wait, reg) : NULL;
    if (v == SHAREREG_MATCH && memcmp(w->ctl->token, token, TLSCTX_TOKEN_LEN) != 0)
        v = SHAREREG_NOT_WAITING; /* the same key, another token: never resumed here */
    if (v != SHAREREG_MATCH) {
        refuse(p, sharereg_verdict_name(v), w != NULL ? w->lg : NULL);
        return;
    }
    /* matched: a transfer's first size, growing like any transfer's */
    (void)tlsconn_set_bufsize(e->tls, s->tls_start); /* on failure the small ones work */
    sharedport_cancel(s, w);
    p->e = NULL;
    p->open--; /* the connection is the session's now */
    finish(p);
    metrics_add(M_DATA_MATCHED, NULL, NULL, 1);
    w->on_matched(w->reg.owner, e, &p->ci);
}

static void on_pending_event(struct ep *e, enum ep_event ev, int status)
{
    struct pending *p = e->owner;

    (void)status;
    if (p->e != e || p->s == NULL)
        return;
    switch (ev) {
    case EP_HANDSHAKE:
        on_handshake(p);
        return;
    case EP_DRAINED:
        return; /* a handshake flight went out */
    default:
        refuse(p, failure_label(p), NULL);
        return;
    }
}

static void on_timeout(uv_timer_t *t)
{
    struct pending *p = t->data;

    refuse(p, "tls_handshake", NULL);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct sharedport_lsn *l = server->data;
    struct sharedport *s = l->s;
    struct sockaddr_storage peer;
    struct pending *p;
    struct tlsconn *t;

    if (status < 0)
        return;
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return;
    p->e = malloc(sizeof(*p->e));
    if (p->e == NULL || ep_init(p->e, s->loop, on_pending_event, on_ep_closed, p) != 0) {
        free(p->e);
        free(p);
        return;
    }
    p->open = 2;
    uv_timer_init(s->loop, &p->timer);
    p->timer.data = p;
    p->s = s;
    p->port = l->port;
    PX_DLIST_PUSH(s->pending, p);
    if (ep_accept(p->e, server) != 0 || ep_sockname(p->e, &peer, true) != 0) {
        refuse(p, "tls_handshake", NULL);
        return;
    }
    px_ip16((const struct sockaddr *)&peer, p->ip);
    log_addr(p->from, sizeof(p->from), (const struct sockaddr *)&peer);
    if (sharereg_waiting_from(&s->reg, p->ip) == 0) {
        /* No session waits for this address: refused before any TLS. */
        refuse(p, "address", NULL);
        return;
    }
    t = tlsctx_data_shared(l->ctx, find, p, &p->ci, HANDSHAKE_BUF);
    if (t == NULL) {
        refuse(p, "tls_handshake", NULL);
        return;
    }
    tlsconn_set_max(t, s->tls_max);
    tlsconn_set_alloc(t, &s->alloc);
    uv_timer_start(&p->timer, on_timeout, HANDSHAKE_MS, 0);
    ep_start_tls(p->e, t, NULL);
    if (p->e != NULL && !p->e->closing)
        ep_read(p->e);
}

void sharedport_stop(struct sharedport *s)
{
    while (s->pending != NULL) {
        struct pending *p = s->pending;

        if (p->e != NULL) {
            ep_close(p->e, true);
            p->e = NULL;
        }
        finish(p);
    }
}
