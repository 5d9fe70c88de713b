/* listener.c - listening sockets for control connections (see listener.h). */
#include "listener.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

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

/* A bound socket with SO_REUSEPORT, made by hand: libuv 1.44 cannot set it. */
static int reuseport_socket(const struct cfg_addr *addr, uv_os_sock_t *out)
{
    int on = 1, fd = socket(addr->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) != 0 ||
        (addr->sa.ss_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on)) != 0) ||
        bind(fd, (const struct sockaddr *)&addr->sa, addr->salen) != 0) {
        int e = -errno;

        close(fd);
        return e;
    }
    *out = fd;
    return 0;
}

int listener_open(struct server *srv, const struct cfg_addr *addr, bool implicit, bool reuseport,
                  struct listener **out)
{
    struct listener *l = calloc(1, sizeof(*l));
    unsigned flags = addr->sa.ss_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0;
    uv_os_sock_t fd = -1;
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
    if (reuseport) {
        rc = reuseport_socket(addr, &fd);
        if (rc == 0) {
            rc = uv_tcp_open(&l->tcp, fd);
            if (rc != 0)
                close(fd);
        }
    } else {
        rc = uv_tcp_bind(&l->tcp, (const struct sockaddr *)&addr->sa, flags);
    }
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
