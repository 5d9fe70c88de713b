/* ctl.h - a control session: the client's control connection (plaintext,
 * then TLS), the proxy's own pre-login dialogue, routing, the backend control
 * connection, and the relay of commands and replies once logged in, with the
 * exceptions DESIGN.md lists. A session owns at most one transfer (xfer.h).
 *
 * The worker that starts a session lends it a struct ctl_env and hears of its
 * end through env->on_ended; the session never names the worker. */
#ifndef CTL_H
#define CTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

struct bufpool;
struct ctl_session;
struct ep;
struct gen;
struct portpool;
struct warm;
struct sharedport;

/* The session is gone: freed, its connection closed and uncounted. */
typedef void ctl_ended_fn(void *tag);

/* What a worker lends its sessions; it outlives every one of them. */
struct ctl_env {
    uv_loop_t *loop;
    unsigned worker;       /* which worker: its own TLS context */
    struct portpool *pool; /* the passive ports new transfers take (replaced on
                              reload; a transfer keeps the pool it took from) */
    struct warm *warm;     /* the worker's warm backend connections */
    struct bufpool *bufs;  /* transfer buffers come from and go back here */
    struct sharedport *share; /* the worker's shared passive ports (owned by it) */
    ctl_ended_fn *on_ended;
};

/* An accepted control connection, handed to ctl_start(). */
struct ctl_conn {
    struct ep *client;     /* ownership passes: accepted, not reading, and
                              counted by quota_conn_opened() */
    struct gen *gen;       /* the reference passes: the session's configuration */
    uint64_t sid;          /* the session id for logs */
    struct sockaddr_storage peer;  /* the client (the PROXY header's, where used) */
    struct sockaddr_storage local; /* our side of the connection */
    bool implicit;         /* TLS from the first byte */
    const char *early;     /* bytes read past a PROXY header (copied), or NULL */
    size_t n_early;
    void *tag;             /* given back to env->on_ended */
};

/* Runs a session for c: limits, then the greeting or the implicit TLS
 * handshake. Always takes c->client and c->gen, and env->on_ended(c->tag)
 * follows exactly once, when the session is gone. Returns the session, or
 * NULL when out of memory (the connection is then closed and on_ended has
 * been called already). */
struct ctl_session *ctl_start(struct ctl_env *env, const struct ctl_conn *c);

/* Shutdown: tells the client 421 and ends the session once that is sent. */
void ctl_shutdown(struct ctl_session *cs);

#endif
