/* server.c - one worker's sessions and listeners, and the process-wide
 * limits (see server.h). The counters are shared by every worker thread and
 * guarded by one mutex: they change once per connection, not per byte. */
#include "server.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "ctl.h"
#include "gen.h"
#include "listener.h"
#include "log.h"
#include "px.h"

#define IP_BUCKETS 1024

static atomic_uint_fast64_t sid_counter;
static atomic_size_t sessions_total; /* control connections, every worker */
static pthread_mutex_t count_lock = PTHREAD_MUTEX_INITIALIZER;
static struct server_count *ip_counts[IP_BUCKETS];
static struct server_count *backend_counts;

uint64_t server_next_sid(void) { return (uint64_t)atomic_fetch_add(&sid_counter, 1) + 1; }

/* ---- counters ---- */

static struct server_count **ip_slot(const uint8_t key[16])
{
    uint32_t h = 2166136261u; /* FNV-1a */
    struct server_count **p;

    for (int i = 0; i < 16; i++)
        h = (h ^ key[i]) * 16777619u;
    p = &ip_counts[h % IP_BUCKETS];
    while (*p != NULL && memcmp((*p)->key, key, 16) != 0)
        p = &(*p)->next;
    return p;
}

const char *server_admit(struct server *srv, const struct sockaddr *addr)
{
    const struct cfg *cfg = srv->gen->cfg;
    struct server_count **slot;
    const char *refusal = NULL;
    uint8_t key[16];

    if (srv->stopping)
        return "shutting_down";
    if (atomic_load(&sessions_total) > cfg->max_sessions)
        return "max_sessions";
    px_ip16(addr, key);
    pthread_mutex_lock(&count_lock);
    slot = ip_slot(key);
    if (*slot == NULL) {
        *slot = calloc(1, sizeof(**slot));
        if (*slot == NULL)
            refusal = "out_of_memory";
        else
            memcpy((*slot)->key, key, 16);
    } else if ((*slot)->n >= cfg->max_sessions_per_ip) {
        refusal = "max_sessions_per_ip";
    }
    if (refusal == NULL)
        (*slot)->n++;
    pthread_mutex_unlock(&count_lock);
    return refusal;
}

/* Counts one session less in *slot, dropping the entry at zero. Locked. */
static void count_down(struct server_count **slot)
{
    struct server_count *c = *slot;

    if (c != NULL && --c->n == 0) {
        *slot = c->next;
        free(c);
    }
}

void server_leave(struct server *srv, const struct sockaddr *addr)
{
    uint8_t key[16];

    (void)srv;
    px_ip16(addr, key);
    pthread_mutex_lock(&count_lock);
    count_down(ip_slot(key));
    pthread_mutex_unlock(&count_lock);
}

static struct server_count **backend_slot(const char *name)
{
    struct server_count **p = &backend_counts;

    while (*p != NULL && strcmp((*p)->name, name) != 0)
        p = &(*p)->next;
    return p;
}

bool server_backend_enter(struct server *srv, const char *backend, unsigned max)
{
    struct server_count **slot;
    bool ok = true;

    (void)srv;
    pthread_mutex_lock(&count_lock);
    slot = backend_slot(backend);
    if (*slot == NULL) {
        *slot = calloc(1, sizeof(**slot));
        if (*slot != NULL)
            snprintf((*slot)->name, sizeof((*slot)->name), "%s", backend);
    }
    if (*slot == NULL || (max != 0 && (*slot)->n >= max))
        ok = false;
    else
        (*slot)->n++;
    pthread_mutex_unlock(&count_lock);
    return ok;
}

void server_backend_leave(struct server *srv, const char *backend)
{
    (void)srv;
    pthread_mutex_lock(&count_lock);
    count_down(backend_slot(backend));
    pthread_mutex_unlock(&count_lock);
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
        rc = listener_open(srv, &addrs[i], implicit, srv->count > 1, &l);
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
    struct portpool *p;

    if (per == 0)
        return NULL;
    p = calloc(1, sizeof(*p));
    if (p != NULL && portpool_init(p, (uint16_t)lo, (uint16_t)hi) != 0) {
        free(p);
        p = NULL;
    }
    return p;
}

void server_release_port(struct portpool *pool, uint16_t port)
{
    portpool_release(pool, port);
    if (pool->retired && portpool_in_use(pool) == 0) {
        portpool_free(pool);
        free(pool);
    }
}

int server_start(struct server *srv, uv_loop_t *loop, struct gen *g, unsigned index,
                 unsigned count)
{
    const struct cfg *cfg = g->cfg;
    int rc;

    srv->loop = loop;
    srv->index = index;
    srv->count = count;
    srv->gen = gen_ref(g);
    srv->pool = new_pool(srv, cfg);
    if (srv->pool == NULL) {
        LOG_ERROR(NULL, "passive_ports", "msg", "the range is smaller than the number of workers",
                  NULL);
        return UV_EINVAL;
    }
    uv_timer_init(loop, &srv->grace);
    srv->grace.data = srv;
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
    if (pool != NULL && pool->lo == srv->pool->lo && pool->hi == srv->pool->hi) {
        portpool_free(pool); /* the same range: the pool in use stays */
        free(pool);
    } else if (pool != NULL) {
        srv->pool->retired = true;
        if (portpool_in_use(srv->pool) == 0) {
            portpool_free(srv->pool);
            free(srv->pool);
        }
        srv->pool = pool;
    }
    srv->gen = gen_ref(g);
    gen_unref(old);
    return rc;
}

static void on_grace(uv_timer_t *t)
{
    struct server *srv = t->data;

    LOG_INFO(NULL, "shutdown_grace_over", NULL);
    for (struct ctl_session *cs = srv->sessions; cs != NULL; cs = ctl_next(cs))
        ctl_shutdown(cs);
}

static void maybe_idle(struct server *srv)
{
    if (srv->stopping && srv->n_sessions == 0) {
        uv_timer_stop(&srv->grace);
        if (!uv_is_closing((uv_handle_t *)&srv->grace))
            uv_close((uv_handle_t *)&srv->grace, NULL);
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
    LOG_INFO(NULL, "stopping", "sessions", log_u64(n, srv->n_sessions), NULL);
    uv_timer_start(&srv->grace, on_grace, (uint64_t)srv->gen->cfg->shutdown_grace * 1000, 0);
    maybe_idle(srv);
}

void server_free(struct server *srv)
{
    if (srv->pool != NULL) {
        portpool_free(srv->pool);
        free(srv->pool);
        srv->pool = NULL;
    }
    gen_unref(srv->gen);
    srv->gen = NULL;
    if (srv->has_wake)
        pthread_mutex_destroy(&srv->mu);
}

void server_session_started(struct server *srv)
{
    srv->n_sessions++;
    atomic_fetch_add(&sessions_total, 1);
}

void server_session_ended(struct server *srv)
{
    srv->n_sessions--;
    atomic_fetch_sub(&sessions_total, 1);
    maybe_idle(srv);
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
