/* server.h - one worker: an event loop, the generation new sessions use, its
 * listeners, its slice of the passive port pool, and its sessions; and the
 * process-wide counters behind max_sessions, max_sessions_per_ip and
 * per-backend max_sessions, which all workers share. */
#ifndef SERVER_H
#define SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "portpool.h"

struct gen;
struct ctl_session;
struct listener;

struct server_count {
    struct server_count *next;
    uint8_t key[16]; /* IPv6 address, or IPv4-mapped */
    char name[64];   /* backend name (per-backend table) */
    unsigned n;
};

struct server {
    uv_loop_t *loop;
    unsigned index, count;      /* this is worker index of count */
    struct gen *gen;            /* ref: the generation for new sessions */
    struct portpool *pool;      /* owned: this worker's slice of the passive ports */
    struct listener *listeners; /* owned list */
    struct ctl_session *sessions; /* running sessions: ctl.c keeps the list */
    size_t n_sessions;          /* of this worker */
    bool stopping;
    uv_timer_t grace;           /* shutdown_grace */
    void (*on_idle)(struct server *srv); /* stopping and the last session is gone */
    void *data;                 /* the owner's */

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
/* Returns a passive port to the pool it came from (xfer.c). */
void server_release_port(struct portpool *pool, uint16_t port);
/* Stops accepting; sessions get shutdown_grace seconds, then 421. The loop
 * ends once the last session is gone. */
void server_stop(struct server *srv);
/* ctl.c tells the worker that a session started and ended (the
 * process-wide count behind max_sessions follows). */
void server_session_started(struct server *srv);
void server_session_ended(struct server *srv);

/* A process-wide unique session id. */
uint64_t server_next_sid(void);

/* Counts a control connection from addr against max_sessions and
 * max_sessions_per_ip. Returns NULL, or why it is refused as a short static word
 * (max_sessions, max_sessions_per_ip, shutting_down, out_of_memory). */
const char *server_admit(struct server *srv, const struct sockaddr *addr);
void server_leave(struct server *srv, const struct sockaddr *addr);
/* Counts a session against a backend's max_sessions (0: no cap). */
bool server_backend_enter(struct server *srv, const char *backend, unsigned max);
void server_backend_leave(struct server *srv, const char *backend);

#endif
