/* server.h - one worker: an event loop, the generation new sessions use, its
 * listeners, its slice of the passive port pool, and its sessions. The
 * process-wide limits live in quota.h. */
#ifndef SERVER_H
#define SERVER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "ctl.h"

struct gen;
struct listener;
struct server_sess;

struct server {
    uv_loop_t *loop;
    unsigned index, count;        /* this is worker index of count */
    struct gen *gen;              /* ref: the generation for new sessions */
    struct ctl_env env;           /* lent to the sessions; env.pool is owned: this
                                     worker's slice of the passive ports */
    struct listener *listeners;   /* owned list */
    struct server_sess *sessions; /* owned list: one node per running session */
    size_t n_sessions;
    bool stopping;
    uv_timer_t grace;             /* shutdown_grace */
    uv_timer_t trim;              /* gives back pooled buffers left unused (env.bufs,
                                     owned: freed by server_free) */
    bool has_trim;
    void (*on_idle)(struct server *srv); /* stopping and the last session is gone */
    void *data;                   /* the owner's */

    /* Requests from another thread, run on this worker's loop. */
    uv_async_t wake;
    bool has_wake;
    pthread_mutex_t mu;
    struct gen *pending_gen; /* ref: apply this */
    bool pending_stop;
};

/* Starts worker index of count on loop with generation g (a reference is
 * taken): its slice of the passive port range and every listener of g's
 * configuration (with SO_REUSEPORT when count > 1, so the kernel spreads
 * connections over the workers). Reports each listener that cannot be
 * opened; returns 0 or the first libuv error. Call before the loop runs. */
int server_start(struct server *srv, uv_loop_t *loop, struct gen *g, unsigned index,
                 unsigned count);
/* Lets other threads reach the worker (server_post_*); the worker's loop
 * must not run yet. 0 or a libuv error. */
int server_enable_wake(struct server *srv);
/* From another thread: apply g / stop, on the worker's own loop. */
void server_post_apply(struct server *srv, struct gen *g);
void server_post_stop(struct server *srv);
/* Applies a reloaded generation: new sessions use g (running ones keep
 * theirs), listeners g no longer names are closed, new ones opened, those
 * that stay are untouched; a changed passive range gets a new pool, and the
 * old one lives on until its last port returns. Returns 0, or the first
 * error of a listener that could not be opened (the rest still applies). */
int server_apply(struct server *srv, struct gen *g);
/* Gives back what a stopped worker holds (its loop has ended). */
void server_free(struct server *srv);
/* Stops accepting; sessions get shutdown_grace seconds, then 421. The loop
 * ends once the last session is gone. */
void server_stop(struct server *srv);

#endif
