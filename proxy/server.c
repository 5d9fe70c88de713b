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
        return "shutting down";
    if (srv->n_sessions > cfg->max_sessions)
        return "max_sessions reached";
    key_of(addr, key);
    slot = ip_slot(srv, key);
    if (*slot == NULL) {
        *slot = calloc(1, sizeof(**slot));
        if (*slot == NULL)
            return "out of memory";
        memcpy((*slot)->key, key, 16);
    } else if ((*slot)->n >= cfg->max_sessions_per_ip) {
        return "max_sessions_per_ip reached";
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

static int open_list(struct server *srv, const struct cfg_addr *addrs, size_t n, bool implicit)
{
    struct listener *l;
    int rc, first = 0;

    for (size_t i = 0; i < n; i++) {
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

int server_start(struct server *srv, uv_loop_t *loop, struct gen *g)
{
    const struct cfg *cfg = g->cfg;
    int rc;

    srv->loop = loop;
    srv->gen = gen_ref(g);
    rc = portpool_init(&srv->pool, cfg->passive_min, cfg->passive_max);
    if (rc != 0)
        return rc;
    uv_timer_init(loop, &srv->grace);
    srv->grace.data = srv;
    rc = open_list(srv, cfg->listen, cfg->n_listen, false);
    if (rc == 0)
        rc = open_list(srv, cfg->listen_implicit, cfg->n_listen_implicit, true);
    return rc;
}

void server_set_gen(struct server *srv, struct gen *g)
{
    struct gen *old = srv->gen;

    srv->gen = gen_ref(g);
    gen_unref(old);
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
