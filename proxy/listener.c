/* listener.c - listening sockets for control connections (see listener.h). */
#include "listener.h"

#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "log.h"
#include "server.h"

#define LISTEN_BACKLOG 511

static void on_connection(uv_stream_t *s, int status)
{
    struct listener *l = s->data;

    if (status < 0) {
        LOG_WARN(NULL, "accept_failed", "listen", l->addr.text, "error", uv_strerror(status), NULL);
        return;
    }
    if (!l->closing)
        ctl_accept(l->srv, s, l->implicit);
}

static void on_closed(uv_handle_t *h) { free(h->data); }

int listener_open(struct server *srv, const struct cfg_addr *addr, bool implicit,
                  struct listener **out)
{
    struct listener *l = calloc(1, sizeof(*l));
    unsigned flags = addr->sa.ss_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0;
    int rc;

    if (l == NULL)
        return UV_ENOMEM;
    l->srv = srv;
    l->addr = *addr;
    l->implicit = implicit;
    rc = uv_tcp_init(srv->loop, &l->tcp);
    if (rc != 0) {
        free(l);
        return rc;
    }
    l->tcp.data = l;
    rc = uv_tcp_bind(&l->tcp, (const struct sockaddr *)&addr->sa, flags);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&l->tcp, LISTEN_BACKLOG, on_connection);
    if (rc != 0) {
        uv_close((uv_handle_t *)&l->tcp, on_closed);
        return rc;
    }
    *out = l;
    return 0;
}

void listener_close(struct listener *l)
{
    if (l->closing)
        return;
    l->closing = true;
    uv_close((uv_handle_t *)&l->tcp, on_closed);
}
