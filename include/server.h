/* server.h - one worker: an event loop, the generation new sessions use, the
 * listeners, the passive port pool, the sessions and the counters behind
 * max_sessions, max_sessions_per_ip and per-backend max_sessions. */
#ifndef SERVER_H
#define SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "portpool.h"

struct gen;
struct ctl_session;
struct listener;

#define SERVER_IP_BUCKETS 1024

struct server_count {
    struct server_count *next;
    uint8_t key[16]; /* IPv6 address, or IPv4-mapped */
    char name[64];   /* backend name (per-backend table) */
    unsigned n;
};

struct server {
    uv_loop_t *loop;
    struct gen *gen;            /* ref: the generation for new sessions */
    struct portpool *pool;      /* owned: this worker's passive ports */
    struct listener *listeners; /* owned list */
    struct ctl_session *sessions; /* running sessions: ctl.c keeps the list */
    size_t n_sessions;
    struct server_count *ips[SERVER_IP_BUCKETS];
    struct server_count *backends;
    bool stopping;
    uv_timer_t grace; /* shutdown_grace */
    uv_signal_t sigs[3];
    void (*on_idle)(struct server *srv); /* stopping and the last session is gone */
};

/* Starts a worker on loop with generation g (a reference is taken): the
 * passive port pool and every listener of g's configuration. Reports each
 * listener that cannot be opened; returns 0 or the first libuv error. */
int server_start(struct server *srv, uv_loop_t *loop, struct gen *g);
/* Applies a reloaded generation: new sessions use g (running ones keep
 * theirs), listeners g no longer names are closed, new ones opened, those
 * that stay are untouched; a changed passive range gets a new pool, and the
 * old one lives on until its last port returns. Returns 0, or the first
 * error of a listener that could not be opened (the rest still applies). */
int server_apply(struct server *srv, struct gen *g);
/* Returns a passive port to the pool it came from (xfer.c). */
void server_release_port(struct portpool *pool, uint16_t port);
/* Stops accepting; sessions get shutdown_grace seconds, then 421. The loop
 * ends once the last session is gone. */
void server_stop(struct server *srv);
/* ctl.c tells the worker that a session ended. */
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
