/* listener.h - a listening socket for control connections, explicit
 * (AUTH TLS) or implicit (TLS first), and the PROXY-protocol stage: with
 * proxy_protocol set, a connection must come from proxy_protocol_from and
 * begin with a valid header within 5 seconds, before anything is sent to it;
 * anything else is closed without a word and logged.
 *
 * Each connection is counted at accept (quota_conn_opened, the
 * sessions_active gauge) and handed to the owner's callback once its client
 * address is known; whoever holds it when it closes uncounts it. */
#ifndef LISTENER_H
#define LISTENER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "cfg.h"

struct ep;
struct gen;
struct listener_wait;

/* A connection ready for its session. */
struct listener_conn {
    struct ep *ep;       /* ownership passes: accepted, not reading */
    struct gen *gen;     /* the reference passes: the generation of the accept */
    uint64_t sid;        /* a process-wide session id */
    struct sockaddr_storage peer;  /* the client: the PROXY header's where used */
    struct sockaddr_storage local;
    bool implicit;
    const char *early;   /* bytes after the PROXY header (valid during the call) */
    size_t n_early;
};

typedef void listener_accept_fn(const struct listener_conn *c, void *arg);

struct listener {
    uv_tcp_t tcp; /* embedded; tcp.data = this */
    struct gen *const *gen; /* borrowed: the owner's current generation */
    listener_accept_fn *on_accept;
    void *arg;
    struct listener *next;  /* the owner's list */
    struct cfg_addr addr;
    bool implicit;
    bool closing;
    struct listener_wait *waiting; /* connections in the PROXY-header stage */
};

/* Binds and listens. gen points to the owner's current generation, read at
 * every accept. reuseport: several workers share the address and the kernel
 * spreads connections over them. 0 with *out (linked by the caller), or a
 * libuv error. */
int listener_open(uv_loop_t *loop, struct gen *const *gen, const struct cfg_addr *addr,
                  bool implicit, bool reuseport, listener_accept_fn *on_accept, void *arg,
                  struct listener **out);
/* Stops accepting, closes connections still in the PROXY-header stage, and
 * frees the listener once closed. */
void listener_close(struct listener *l);

#endif
