/* listener.h - a listening socket for control connections, explicit
 * (AUTH TLS) or implicit (TLS first). Each accepted connection becomes a
 * control session (ctl.h). */
#ifndef LISTENER_H
#define LISTENER_H

#include <stdbool.h>
#include <uv.h>

#include "cfg.h"

struct server;

struct listener {
    uv_tcp_t tcp; /* embedded; tcp.data = this */
    struct server *srv;
    struct listener *next;
    struct cfg_addr addr;
    bool implicit;
    bool closing;
};

/* Binds and listens. reuseport: several workers share the address and the
 * kernel spreads connections over them. 0 with *out (linked by the caller),
 * or a libuv error. */
int listener_open(struct server *srv, const struct cfg_addr *addr, bool implicit, bool reuseport,
                  struct listener **out);
/* Stops accepting and frees the listener once closed. */
void listener_close(struct listener *l);

#endif
