/* server.c - one worker's sessions and listeners (see server.h). */
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "bufpool.h"
#include "cfg.h"
#include "ctl.h"
#include "gen.h"
#include "listener.h"
#include "log.h"
#include "portpool.h"
#include "warm.h"
#include "px.h"
#include "sharedport.h"
#include "xfer.h"

/* A running session, in the worker's list (for shutdown). */
struct server_sess {
    struct server_sess *prev, *next;
    struct server *srv;
    struct ctl_session *cs; /* NULL until ctl_start() returned */
};

static void maybe_idle(struct server *srv);

/* Free transfer buffers a worker keeps for its next transfers, and how often
 * it gives back those that were not needed. */
#define SERVER_BUFPOOL (8u * 1024 * 1024)
#define SERVER_TRIM_MS 10000

static void on_trim(uv_timer_t *t)
{
    struct server *srv = t->data;

    (void)bufpool_trim(srv->env.bufs);
}

/* ---- sessions ---- */

static void on_session_ended(void *tag)
{
    struct server_sess *n = tag;
    struct server *srv;

    if (n == NULL) /* a session started without a node (out of memory) */
        return;
    srv = n->srv;
    PX_DLIST_UNLINK(srv->sessions, n);
    free(n);
    srv->n_sessions--;
    maybe_idle(srv);
}

static void on_accept(const struct listener_conn *c, void *arg)
{
    struct server *srv = arg;
    struct server_sess *n = calloc(1, sizeof(*n));
    struct ctl_conn cc = {
        .client = c->ep, .gen = c->gen, .sid = c->sid, .peer = c->peer, .local = c->local,
        .implicit = c->implicit, .early = c->early, .n_early = c->n_early, .tag = n,
    };
    struct ctl_session *cs;

    if (n == NULL) { /* out of memory: the session runs, untracked by shutdown */
        ctl_start(&srv->env, &cc);
        return;
    }
    n->srv = srv;
    PX_DLIST_PUSH(srv->sessions, n);
    srv->n_sessions++;
    cs = ctl_start(&srv->env, &cc);
    if (cs != NULL) /* NULL: n is gone already */
        n->cs = cs;
}

/* ---- life ---- */

static bool has_listener(const struct server *srv, const struct cfg_addr *a, bool implicit)
{
    for (const struct listener *l = srv->listeners; l != NULL; l = l->next)
        if (l->implicit == implicit && strcmp(l->addr.text, a->text) == 0)
            return true;
    return false;
}

static bool cfg_has(const struct cfg *cfg, const struct listener *l)
{
    const struct cfg_addr *list = l->implicit ? cfg->listen_implicit : cfg->listen;
    size_t n = l->implicit ? cfg->n_listen_implicit : cfg->n_listen;

    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i].text, l->addr.text) == 0)
            return true;
    return false;
}

/* Opens the listeners of addrs that are not open yet. */
static int open_list(struct server *srv, const struct cfg_addr *addrs, size_t n, bool implicit)
{
    struct listener *l;
    int rc, first = 0;

    for (size_t i = 0; i < n; i++) {
        if (has_listener(srv, &addrs[i], implicit))
            continue;
        rc = listener_open(srv->loop, &srv->gen, &addrs[i], implicit, srv->count > 1, on_accept,
                           srv, &l);
        if (rc != 0) {
            LOG_ERROR(NULL, "listen_failed", "listen", addrs[i].text, "error", uv_strerror(rc),
                      NULL);
            if (first == 0)
                first = rc;
            continue;
        }
        l->next = srv->listeners;
        srv->listeners = l;
        if (srv->index == 0)
            LOG_INFO(NULL, "listening", "listen", addrs[i].text, "mode",
                     implicit ? "implicit" : "explicit", NULL);
    }
    return first;
}

/* This worker's slice of the passive range: data connections then come back
 * to the worker (and loop) that owns the session. */
static struct portpool *new_pool(const struct server *srv, const struct cfg *cfg)
{
    unsigned size = (unsigned)cfg->passive_max - cfg->passive_min + 1;
    unsigned per = size / srv->count;
    unsigned lo = cfg->passive_min + srv->index * per;
    unsigned hi = srv->index + 1 == srv->count ? cfg->passive_max : lo + per - 1;

    return per == 0 ? NULL : portpool_new((uint16_t)lo, (uint16_t)hi);
}

int server_start(struct server *srv, uv_loop_t *loop, struct gen *g, unsigned index,
                 unsigned count)
{
    const struct cfg *cfg = g->cfg;
    struct buf_alloc alloc;
    size_t tls_start, tls_max;
    int rc;

    srv->loop = loop;
    srv->index = index;
    srv->count = count;
    srv->gen = gen_ref(g);
    srv->env.loop = loop;
    srv->env.worker = index;
    srv->env.on_ended = on_session_ended;
    srv->env.pool = new_pool(srv, cfg);
    if (srv->env.pool == NULL) {
        LOG_ERROR(NULL, "passive_ports", "msg", "the range is smaller than the number of workers",
                  NULL);
        return UV_EINVAL;
    }
    srv->env.bufs = bufpool_new(SERVER_BUFPOOL);
    if (srv->env.bufs != NULL) { /* without it, transfers use malloc alone */
        uv_timer_init(loop, &srv->trim);
        srv->trim.data = srv;
        srv->has_trim = true;
        uv_timer_start(&srv->trim, on_trim, SERVER_TRIM_MS, SERVER_TRIM_MS);
        uv_unref((uv_handle_t *)&srv->trim); /* never what keeps the loop running */
    }
    xfer_tls_alloc(srv->env.bufs, &alloc, &tls_start, &tls_max);
    srv->env.share = sharedport_new(loop, &alloc, tls_start, tls_max);
    if (srv->env.share == NULL)
        return UV_ENOMEM;
    uv_timer_init(loop, &srv->grace);
    srv->grace.data = srv;
    srv->env.warm = warm_new(loop, count);
    if (srv->env.warm == NULL)
        return UV_ENOMEM;
    warm_apply(srv->env.warm, cfg);
    rc = open_list(srv, cfg->listen, cfg->n_listen, false);
    if (rc == 0)
        rc = open_list(srv, cfg->listen_implicit, cfg->n_listen_implicit, true);
    return rc;
}

int server_apply(struct server *srv, struct gen *g)
{
    const struct cfg *cfg = g->cfg;
    struct listener **pl = &srv->listeners;
    struct gen *old = srv->gen;
    struct portpool *pool;
    int rc;

    while (*pl != NULL) {
        struct listener *l = *pl;

        if (cfg_has(cfg, l)) {
            pl = &l->next;
            continue;
        }
        *pl = l->next;
        LOG_INFO(NULL, "listener_closed", "listen", l->addr.text, NULL);
        listener_close(l);
    }
    rc = open_list(srv, cfg->listen, cfg->n_listen, false);
    if (open_list(srv, cfg->listen_implicit, cfg->n_listen_implicit, true) != 0 && rc == 0)
        rc = -1;
    pool = new_pool(srv, cfg);
    if (pool != NULL && pool->lo == srv->env.pool->lo && pool->hi == srv->env.pool->hi) {
        portpool_retire(pool); /* the same range: the pool in use stays */
    } else if (pool != NULL) {
        portpool_retire(srv->env.pool); /* it lives on while transfers hold its ports */
        srv->env.pool = pool;
    }
    srv->gen = gen_ref(g);
    gen_unref(old);
    warm_apply(srv->env.warm, cfg); /* warm connections of the old one go */
    return rc;
}

static void on_grace(uv_timer_t *t)
{
    struct server *srv = t->data;

    LOG_INFO(NULL, "shutdown_grace_over", NULL);
    for (struct server_sess *n = srv->sessions; n != NULL; n = n->next)
        if (n->cs != NULL)
            ctl_shutdown(n->cs);
}

static void maybe_idle(struct server *srv)
{
    if (srv->stopping && srv->n_sessions == 0) {
        uv_timer_stop(&srv->grace);
        if (!uv_is_closing((uv_handle_t *)&srv->grace))
            uv_close((uv_handle_t *)&srv->grace, NULL);
        if (srv->has_trim && !uv_is_closing((uv_handle_t *)&srv->trim))
            uv_close((uv_handle_t *)&srv->trim, NULL);
        if (srv->has_wake && !uv_is_closing((uv_handle_t *)&srv->wake))
            uv_close((uv_handle_t *)&srv->wake, NULL);
        if (srv->on_idle != NULL)
            srv->on_idle(srv);
    }
}

void server_stop(struct server *srv)
{
    char n[24];

    if (srv->stopping)
        return;
    srv->stopping = true;
    while (srv->listeners != NULL) {
        struct listener *l = srv->listeners;

        srv->listeners = l->next;
        listener_close(l);
    }
    warm_stop(srv->env.warm);
    sharedport_stop(srv->env.share);
    LOG_INFO(NULL, "stopping", "sessions", log_u64(n, srv->n_sessions), NULL);
    uv_timer_start(&srv->grace, on_grace, (uint64_t)srv->gen->cfg->shutdown_grace * 1000, 0);
    maybe_idle(srv);
}

void server_free(struct server *srv)
{
    if (srv->env.pool != NULL) {
        portpool_retire(srv->env.pool);
        srv->env.pool = NULL;
    }
    warm_free(srv->env.warm);
    srv->env.warm = NULL;
    sharedport_free(srv->env.share);
    srv->env.share = NULL;
    gen_unref(srv->gen);
    srv->gen = NULL;
    /* The loop has ended: every transfer is gone, and its buffers are back. */
    bufpool_free(srv->env.bufs);
    srv->env.bufs = NULL;
    if (srv->has_wake)
        pthread_mutex_destroy(&srv->mu);
}

/* ---- requests from other threads ---- */

static void on_wake(uv_async_t *h)
{
    struct server *srv = h->data;
    struct gen *g;
    bool stop;

    pthread_mutex_lock(&srv->mu);
    g = srv->pending_gen;
    srv->pending_gen = NULL;
    stop = srv->pending_stop;
    pthread_mutex_unlock(&srv->mu);
    if (g != NULL) {
        server_apply(srv, g);
        gen_unref(g);
    }
    if (stop)
        server_stop(srv);
}

int server_enable_wake(struct server *srv)
{
    int rc = uv_async_init(srv->loop, &srv->wake, on_wake);

    if (rc != 0)
        return rc;
    srv->wake.data = srv;
    srv->has_wake = true;
    pthread_mutex_init(&srv->mu, NULL);
    return 0;
}

void server_post_apply(struct server *srv, struct gen *g)
{
    struct gen *old;

    pthread_mutex_lock(&srv->mu);
    old = srv->pending_gen;
    srv->pending_gen = gen_ref(g);
    pthread_mutex_unlock(&srv->mu);
    gen_unref(old);
    uv_async_send(&srv->wake);
}

void server_post_stop(struct server *srv)
{
    pthread_mutex_lock(&srv->mu);
    srv->pending_stop = true;
    pthread_mutex_unlock(&srv->mu);
    uv_async_send(&srv->wake);
}
