/* server.c - one worker's sessions, listeners and limits (see server.h). */
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

static atomic_uint_fast64_t sid_counter;

uint64_t server_next_sid(void) { return (uint64_t)atomic_fetch_add(&sid_counter, 1) + 1; }

/* ---- counters ---- */

static void key_of(const struct sockaddr *sa, uint8_t key[16])
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

    if (sa->sa_family == AF_INET) {
        memcpy(key, mapped, 12);
        memcpy(key + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else {
        memcpy(key, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
    }
}

static struct server_count **ip_slot(struct server *srv, const uint8_t key[16])
{
    uint32_t h = 2166136261u; /* FNV-1a */
    struct server_count **p;

    for (int i = 0; i < 16; i++)
        h = (h ^ key[i]) * 16777619u;
    p = &srv->ips[h % SERVER_IP_BUCKETS];
    while (*p != NULL && memcmp((*p)->key, key, 16) != 0)
        p = &(*p)->next;
    return p;
}

const char *server_admit(struct server *srv, const struct sockaddr *addr)
{
    const struct cfg *cfg = srv->gen->cfg;
    struct server_count **slot;
    uint8_t key[16];

    if (srv->stopping)
        return "shutting_down";
    if (srv->n_sessions > cfg->max_sessions)
        return "max_sessions";
    key_of(addr, key);
    slot = ip_slot(srv, key);
    if (*slot == NULL) {
        *slot = calloc(1, sizeof(**slot));
        if (*slot == NULL)
            return "out_of_memory";
        memcpy((*slot)->key, key, 16);
    } else if ((*slot)->n >= cfg->max_sessions_per_ip) {
        return "max_sessions_per_ip";
    }
    (*slot)->n++;
    return NULL;
}

void server_leave(struct server *srv, const struct sockaddr *addr)
{
    struct server_count **slot, *c;
    uint8_t key[16];

    key_of(addr, key);
    slot = ip_slot(srv, key);
    c = *slot;
    if (c == NULL)
        return;
    if (--c->n == 0) {
        *slot = c->next;
        free(c);
    }
}

static struct server_count **backend_slot(struct server *srv, const char *name)
{
    struct server_count **p = &srv->backends;

    while (*p != NULL && strcmp((*p)->name, name) != 0)
        p = &(*p)->next;
    return p;
}

bool server_backend_enter(struct server *srv, const char *backend, unsigned max)
{
    struct server_count **slot = backend_slot(srv, backend);

    if (*slot == NULL) {
        *slot = calloc(1, sizeof(**slot));
        if (*slot == NULL)
            return false;
        snprintf((*slot)->name, sizeof((*slot)->name), "%s", backend);
    }
    if (max != 0 && (*slot)->n >= max)
        return false;
    (*slot)->n++;
    return true;
}

void server_backend_leave(struct server *srv, const char *backend)
{
    struct server_count **slot = backend_slot(srv, backend), *c = *slot;

    if (c != NULL && --c->n == 0) {
        *slot = c->next;
        free(c);
    }
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
        rc = listener_open(srv, &addrs[i], implicit, &l);
        if (rc != 0) {
            LOG_ERROR(NULL, "listen_failed", "listen", addrs[i].text, "error", uv_strerror(rc),
                      NULL);
            if (first == 0)
                first = rc;
            continue;
        }
        l->next = srv->listeners;
        srv->listeners = l;
        LOG_INFO(NULL, "listening", "listen", addrs[i].text, "mode",
                 implicit ? "implicit" : "explicit", NULL);
    }
    return first;
}

static struct portpool *new_pool(const struct cfg *cfg)
{
    struct portpool *p = calloc(1, sizeof(*p));

    if (p != NULL && portpool_init(p, cfg->passive_min, cfg->passive_max) != 0) {
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

int server_start(struct server *srv, uv_loop_t *loop, struct gen *g)
{
    const struct cfg *cfg = g->cfg;
    int rc;

    srv->loop = loop;
    srv->gen = gen_ref(g);
    srv->pool = new_pool(cfg);
    if (srv->pool == NULL)
        return UV_ENOMEM;
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
    if (cfg->passive_min != srv->pool->lo || cfg->passive_max != srv->pool->hi) {
        pool = new_pool(cfg);
        if (pool != NULL) {
            srv->pool->retired = true;
            if (portpool_in_use(srv->pool) == 0) {
                portpool_free(srv->pool);
                free(srv->pool);
            }
            srv->pool = pool;
        }
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

void server_session_ended(struct server *srv) { maybe_idle(srv); }
