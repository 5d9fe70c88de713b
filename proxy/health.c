/* health.c - the table of backend addresses and their health checks (see
 * health.h). */
#include "health.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "greet.h"
#include "hmap.h"
#include "hstate.h"
#include "log.h"
#include "metrics.h"
#include "px.h"

#define TICK_MS 1000

struct entry {
    struct entry *prev, *next;
    char *key;           /* owned: "backend NUL address" */
    size_t key_len;
    const char *backend; /* into key */
    const char *addr;    /* into key */
    struct sockaddr_storage sa;
    struct hstate st;
    unsigned sessions;
    bool configured;     /* in the configuration in force */
    unsigned seen;       /* the last health_sync() that named it */
    bool probing;        /* a check is in flight (main loop) */
    unsigned interval;   /* seconds, 0: not checked */
    unsigned timeout_ms;
    uint64_t next_ms;    /* the next check, on the main loop's clock */
    struct greet *probe;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct hmap index_;
static struct entry *head;
static atomic_uint turn;
static uv_loop_t *loop_;
static uv_timer_t tick;
static bool running;
static struct entry **checked; /* the configured entries with checks (a tick looks at */
static size_t n_checked;        /*   these only: thousands of sites may have none) */

/* Locked. */
static struct entry *find(const char *backend, const char *addr)
{
    char key[128];
    size_t n = hmap_key2(key, sizeof(key), backend, addr);
    uint64_t v;

    return n > 0 && hmap_get(&index_, key, n, &v) ? (struct entry *)(uintptr_t)v : NULL;
}

/* Locked. A new entry, up, unchecked. */
static struct entry *add(const char *backend, const struct cfg_addr *a)
{
    struct entry *e = calloc(1, sizeof(*e));
    char key[128];
    size_t n = hmap_key2(key, sizeof(key), backend, a->text);

    if (e == NULL || n == 0 || (e->key = malloc(n + 1)) == NULL) {
        free(e);
        return NULL;
    }
    memcpy(e->key, key, n + 1);
    e->key_len = n;
    e->backend = e->key;
    e->addr = e->key + strlen(backend) + 1;
    memcpy(&e->sa, &a->sa, sizeof(e->sa));
    hstate_init(&e->st);
    if (hmap_put(&index_, e->key, n, (uintptr_t)e, NULL) != 0) {
        free(e->key);
        free(e);
        return NULL;
    }
    PX_DLIST_PUSH(head, e);
    return e;
}

/* Locked. An entry no configuration names and nobody holds goes. */
static void maybe_free(struct entry *e)
{
    if (e->configured || e->sessions > 0 || e->probing)
        return;
    PX_DLIST_UNLINK(head, e);
    (void)hmap_del(&index_, e->key, e->key_len);
    free(e->key);
    free(e);
}

/* The first check of an address: one interval from now, plus a share of
 * another spread over the addresses, so that a thousand sites are not all
 * checked in the same tick (the spacing then holds: each next check is one
 * interval after the last one ended). */
static uint64_t first_delay(unsigned interval)
{
    static unsigned spread;
    uint64_t ms = (uint64_t)interval * 1000;

    return ms == 0 ? 0 : ms + (uint64_t)(spread++ * 7919u) % ms;
}

void health_sync(const struct cfg *c)
{
    static unsigned sync_id;
    /* the main loop's clock (uv_now) without its loop: any thread calls */
    uint64_t now = uv_hrtime() / 1000000;
    struct entry *e, *next;

    pthread_mutex_lock(&lock);
    sync_id++;
    for (size_t b = 0; b < c->n_backends; b++) {
        const struct cfg_backend *be = &c->backends[b];

        for (size_t i = 0; i < be->n_address; i++) {
            bool fresh = false;

            e = find(be->name, be->address[i].text);
            if (e == NULL) {
                e = add(be->name, &be->address[i]);
                fresh = true;
            }
            if (e == NULL)
                continue;
            e->seen = sync_id;
            if (fresh || e->interval != be->health_check)
                e->next_ms = now + first_delay(be->health_check);
            e->interval = be->health_check;
            e->timeout_ms = c->connect_timeout * 1000;
            if (e->interval == 0 && !e->st.up) { /* no checks: back in the rotation */
                hstate_init(&e->st);
                metrics_set(M_BACKEND_UP, e->backend, e->addr, 1);
            }
            /* An entry that stays keeps its series, set as they change; a new
             * one, or one back (still held by a session when it left), gets
             * them (again). */
            if (!e->configured) {
                e->configured = true;
                metrics_set(M_BACKEND_UP, e->backend, e->addr, e->st.up ? 1 : 0);
                metrics_set(M_BACKEND_ADDR_SESSIONS, e->backend, e->addr,
                            (int64_t)e->sessions);
            }
        }
    }
    n_checked = 0;
    for (e = head; e != NULL; e = next) {
        next = e->next;
        if (e->seen == sync_id) {
            n_checked += e->interval > 0;
            continue;
        }
        if (!e->configured) /* gone already, held by its sessions */
            continue;
        e->configured = false;
        metrics_drop_series(M_BACKEND_UP, e->backend, e->addr);
        metrics_drop_series(M_BACKEND_ADDR_SESSIONS, e->backend, e->addr);
        maybe_free(e);
    }
    free(checked);
    checked = n_checked > 0 ? malloc(n_checked * sizeof(*checked)) : NULL;
    n_checked = 0; /* out of memory: no checks until the next reload */
    for (e = head; checked != NULL && e != NULL; e = e->next)
        if (e->configured && e->interval > 0)
            checked[n_checked++] = e;
    pthread_mutex_unlock(&lock);
}

/* ---- the checks (main loop) ---- */

static void on_probe(struct greet *g, int status, void *arg)
{
    struct entry *e = arg;
    enum hstate_change ch;
    char backend[64], addr[CFG_ADDR_TEXT_MAX], text[128];
    const char *why = status == 0 ? NULL
                      : status == UV_EPROTO ? "no 220 greeting"
                                            : uv_strerror(status);

    snprintf(text, sizeof(text), "%s", greet_text(g));
    greet_close(g);
    pthread_mutex_lock(&lock);
    e->probing = false;
    e->probe = NULL;
    ch = hstate_result(&e->st, status == 0);
    e->next_ms = uv_now(loop_) + (uint64_t)e->interval * 1000;
    snprintf(backend, sizeof(backend), "%s", e->backend);
    snprintf(addr, sizeof(addr), "%s", e->addr);
    if (ch != HSTATE_SAME && e->configured)
        metrics_set(M_BACKEND_UP, e->backend, e->addr, ch == HSTATE_CAME_UP ? 1 : 0);
    maybe_free(e);
    pthread_mutex_unlock(&lock);
    if (ch == HSTATE_WENT_DOWN)
        LOG_ERROR(NULL, "backend_down", "backend", backend, "address", addr, "error", why,
                  "greeting", text[0] != '\0' ? text : NULL, "msg",
                  "out of the rotation until it greets again", NULL);
    else if (ch == HSTATE_CAME_UP)
        LOG_INFO(NULL, "backend_up", "backend", backend, "address", addr, NULL);
    else if (status != 0)
        LOG_WARN(NULL, "backend_check_failed", "backend", backend, "address", addr, "error", why,
                 NULL);
}

static void on_tick(uv_timer_t *t)
{
    uint64_t now = uv_now(t->loop);
    int rc;

    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < n_checked; i++) {
        struct entry *e = checked[i];

        if (!e->configured || e->interval == 0 || e->probing || now < e->next_ms)
            continue;
        rc = greet_start(t->loop, (const struct sockaddr *)&e->sa, e->timeout_ms, on_probe, e,
                         &e->probe);
        if (rc == 0) {
            e->probing = true;
            continue;
        }
        /* Could not even start (no memory or sockets): counts as a failure
         * next time round, not now, to keep this loop simple. */
        e->next_ms = now + (uint64_t)e->interval * 1000;
    }
    pthread_mutex_unlock(&lock);
}

int health_start(uv_loop_t *loop)
{
    int rc = uv_timer_init(loop, &tick);

    if (rc != 0)
        return rc;
    loop_ = loop;
    running = true;
    pthread_mutex_lock(&lock); /* the first check one interval from now */
    for (struct entry *e = head; e != NULL; e = e->next)
        e->next_ms = uv_now(loop) + first_delay(e->interval);
    pthread_mutex_unlock(&lock);
    uv_timer_start(&tick, on_tick, TICK_MS, TICK_MS);
    return 0;
}

void health_stop(void)
{
    if (!running)
        return;
    running = false;
    uv_close((uv_handle_t *)&tick, NULL);
    pthread_mutex_lock(&lock);
    for (struct entry *e = head; e != NULL; e = e->next) {
        if (e->probing) {
            greet_close(e->probe);
            e->probe = NULL;
            e->probing = false;
        }
    }
    pthread_mutex_unlock(&lock);
}

void health_free(void)
{
    pthread_mutex_lock(&lock);
    while (head != NULL) {
        struct entry *e = head;

        head = e->next;
        free(e->key);
        free(e);
    }
    hmap_free(&index_);
    free(checked);
    checked = NULL;
    n_checked = 0;
    pthread_mutex_unlock(&lock);
}

/* ---- the workers' side ---- */

int health_pick(const struct cfg_backend *b, uint64_t tried)
{
    struct hstate_cand c[CFG_ADDRESS_MAX];
    size_t n = b->n_address < CFG_ADDRESS_MAX ? b->n_address : CFG_ADDRESS_MAX;

    if (n == 1) /* the usual case: nothing to choose */
        return (tried & 1) == 0 ? 0 : -1; /* up or not: all down, each is tried */
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < n; i++) {
        const struct entry *e = find(b->name, b->address[i].text);

        c[i].up = e == NULL || e->st.up;
        c[i].sessions = e != NULL ? e->sessions : 0;
    }
    pthread_mutex_unlock(&lock);
    return hstate_pick(c, n, tried, atomic_fetch_add(&turn, 1));
}

bool health_up(const char *backend, const char *addr)
{
    const struct entry *e;
    bool up;

    pthread_mutex_lock(&lock);
    e = find(backend, addr);
    up = e == NULL || e->st.up;
    pthread_mutex_unlock(&lock);
    return up;
}

void health_enter(const struct cfg_backend *b, size_t i)
{
    struct entry *e;

    pthread_mutex_lock(&lock);
    e = find(b->name, b->address[i].text);
    if (e == NULL) /* a load the checks have not seen yet */
        e = add(b->name, &b->address[i]);
    if (e != NULL) {
        e->sessions++;
        if (e->configured)
            metrics_add(M_BACKEND_ADDR_SESSIONS, e->backend, e->addr, 1);
    }
    pthread_mutex_unlock(&lock);
}

void health_leave(const struct cfg_backend *b, size_t i)
{
    struct entry *e;

    pthread_mutex_lock(&lock);
    e = find(b->name, b->address[i].text);
    if (e != NULL && e->sessions > 0) {
        e->sessions--;
        if (e->configured)
            metrics_add(M_BACKEND_ADDR_SESSIONS, e->backend, e->addr, -1);
        maybe_free(e);
    }
    pthread_mutex_unlock(&lock);
}
