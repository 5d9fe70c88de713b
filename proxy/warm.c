/* warm.c - a worker's warm backend connections (see warm.h). */
#include "warm.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "greet.h"
#include "health.h"
#include "hmap.h"
#include "log.h"
#include "px.h"

#define TICK_MS 1000
/* A used connection is replaced this long after it was taken, not at once:
 * the backend forks for the new connection, and doing that while the login
 * that took the old one runs (its PASS forks too) made that login slower
 * than a cold connect on two cores (measured: PASS 9.6 -> 14.7 ms). */
#define REFILL_DELAY_MS 30

struct wconn {
    struct wconn *prev, *next;
    struct slot *slot;
    struct greet *g;  /* owned */
    bool ready;       /* greeted and watched */
    uint64_t born_ms; /* when it was greeted */
};

/* One address of one backend. */
struct slot {
    char *key;           /* owned: "backend NUL address" */
    size_t key_len;
    const char *backend, *addr; /* into key */
    struct sockaddr_storage sa;
    unsigned target;     /* connections to keep: connecting and ready */
    unsigned timeout_ms;
    struct wconn *conns; /* owned list, oldest last */
    unsigned n;
    struct warm *w;
};

struct warm {
    uv_loop_t *loop;
    unsigned workers;
    uv_timer_t tick;
    bool stopped;
    bool refill_soon; /* the tick was brought forward to refill */
    struct slot *slots; /* owned [n_slots] */
    size_t n_slots;
    struct hmap index;  /* key -> slot index */
};

/* Unlinks c from its slot and frees it, closing its connection unless it
 * was taken (c->g NULL). */
static void drop(struct wconn *c)
{
    struct slot *s = c->slot;

    PX_DLIST_UNLINK(s->conns, c);
    s->n--;
    greet_close(c->g);
    free(c);
}

static void drop_all(struct slot *s)
{
    while (s->conns != NULL)
        drop(s->conns);
}

static void on_greet(struct greet *g, int status, void *arg)
{
    struct wconn *c = arg;

    (void)g;
    if (status != 0) { /* failed, or a ready one ended: replaced at the next tick */
        if (c->ready)
            LOG_DEBUG(NULL, "warm_closed", "backend", c->slot->backend, "address", c->slot->addr,
                      NULL);
        drop(c);
        return;
    }
    c->ready = true;
    c->born_ms = uv_now(c->slot->w->loop);
    LOG_DEBUG(NULL, "warm_ready", "backend", c->slot->backend, "address", c->slot->addr, NULL);
    greet_watch(c->g);
}

static void fill(struct slot *s)
{
    struct warm *w = s->w;

    while (!w->stopped && s->n < s->target) {
        struct wconn *c = calloc(1, sizeof(*c));

        if (c == NULL)
            return;
        c->slot = s;
        if (greet_start(w->loop, (const struct sockaddr *)&s->sa, s->timeout_ms, on_greet, c,
                        &c->g) != 0) {
            free(c);
            return;
        }
        PX_DLIST_PUSH(s->conns, c);
        s->n++;
    }
}

static void on_tick(uv_timer_t *t)
{
    struct warm *w = t->data;
    uint64_t now = uv_now(w->loop);

    w->refill_soon = false;
    for (size_t i = 0; i < w->n_slots; i++) {
        struct slot *s = &w->slots[i];
        struct wconn *c, *next;

        if (!health_up(s->backend, s->addr)) { /* out of the rotation: none kept */
            drop_all(s);
            continue;
        }
        for (c = s->conns; c != NULL; c = next) {
            next = c->next;
            if (c->ready && now - c->born_ms >= WARM_MAX_AGE_MS)
                drop(c);
        }
        fill(s);
    }
}

struct warm *warm_new(uv_loop_t *loop, unsigned workers)
{
    struct warm *w = calloc(1, sizeof(*w));

    if (w == NULL)
        return NULL;
    w->loop = loop;
    w->workers = workers > 0 ? workers : 1;
    if (uv_timer_init(loop, &w->tick) != 0) {
        free(w);
        return NULL;
    }
    w->tick.data = w;
    return w;
}

static void free_slots(struct warm *w)
{
    for (size_t i = 0; i < w->n_slots; i++) {
        drop_all(&w->slots[i]);
        free(w->slots[i].key);
    }
    free(w->slots);
    w->slots = NULL;
    w->n_slots = 0;
    hmap_free(&w->index);
}

void warm_apply(struct warm *w, const struct cfg *c)
{
    size_t n = 0, k = 0;

    if (w->stopped)
        return;
    free_slots(w);
    for (size_t b = 0; b < c->n_backends; b++)
        if (c->backends[b].preconnect > 0)
            n += c->backends[b].n_address;
    if (n == 0) {
        uv_timer_stop(&w->tick);
        return;
    }
    w->slots = calloc(n, sizeof(*w->slots));
    if (w->slots == NULL)
        return;
    for (size_t b = 0; b < c->n_backends; b++) {
        const struct cfg_backend *be = &c->backends[b];
        size_t blen = strlen(be->name);

        if (be->preconnect == 0)
            continue;
        for (size_t i = 0; i < be->n_address; i++) {
            struct slot *s = &w->slots[k];
            size_t cap = blen + 1 + strlen(be->address[i].text) + 1;

            s->key = malloc(cap);
            if (s->key == NULL)
                continue;
            s->key_len = hmap_key2(s->key, cap, be->name, be->address[i].text);
            s->backend = s->key;
            s->addr = s->key + blen + 1;
            memcpy(&s->sa, &be->address[i].sa, sizeof(s->sa));
            s->target = (be->preconnect + w->workers - 1) / w->workers;
            s->timeout_ms = c->connect_timeout * 1000;
            s->w = w;
            if (hmap_put(&w->index, s->key, s->key_len, k, NULL) != 0) {
                free(s->key);
                s->key = NULL;
                continue;
            }
            k++;
        }
    }
    w->n_slots = k;
    uv_timer_start(&w->tick, on_tick, 0, TICK_MS); /* fills at once */
}

int warm_take(struct warm *w, const char *backend, const char *addr)
{
    char key[128];
    size_t n = hmap_key2(key, sizeof(key), backend, addr);
    struct wconn *c, *oldest = NULL;
    struct slot *s;
    uint64_t v;
    int fd;

    if (w == NULL || w->n_slots == 0 || n == 0 || !hmap_get(&w->index, key, n, &v))
        return -1;
    s = &w->slots[v];
    for (c = s->conns; c != NULL; c = c->next)
        if (c->ready && (oldest == NULL || c->born_ms <= oldest->born_ms))
            oldest = c;
    if (oldest == NULL)
        return -1;
    fd = greet_take_fd(oldest->g);
    oldest->g = NULL;
    drop(oldest);
    if (!w->refill_soon) { /* the next tick, soon, refills (only once brought forward) */
        w->refill_soon = true;
        uv_timer_start(&w->tick, on_tick, REFILL_DELAY_MS, TICK_MS);
    }
    return fd < 0 ? -1 : fd;
}

void warm_stop(struct warm *w)
{
    if (w == NULL || w->stopped)
        return;
    w->stopped = true;
    for (size_t i = 0; i < w->n_slots; i++)
        drop_all(&w->slots[i]);
    uv_close((uv_handle_t *)&w->tick, NULL);
}

void warm_free(struct warm *w)
{
    if (w == NULL)
        return;
    free_slots(w);
    free(w);
}
