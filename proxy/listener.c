/* listener.c - listening sockets and the PROXY-header stage (see
 * listener.h). Without proxy_protocol a connection goes to the owner at
 * once; with it, a struct listener_wait holds it (its endpoint, a 5-second
 * timer and the bytes read so far) until the header is in. */
#include "listener.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buf.h"
#include "ep.h"
#include "gen.h"
#include "quota.h"
#include "log.h"
#include "metrics.h"
#include "pp.h"
#include "px.h"

#define LISTEN_BACKLOG 511
#define LISTENER_PROXY_MS 5000 /* the PROXY header must come this fast */

static atomic_uint_fast64_t sid_counter;

/* A connection in the PROXY-header stage. Handles: the timer, and the
 * endpoint until it is handed on; freed when the last one is closed. */
struct listener_wait {
    struct listener_wait *prev, *next;
    struct listener *l; /* NULL once the listener closed */
    struct ep *ep;      /* owned until handed on */
    struct gen *gen;    /* ref held */
    struct log_sess lg;
    uv_timer_t timer;
    struct buf in;
    unsigned open_handles;
    bool done;
    struct sockaddr_storage peer, local;
};

/* An endpoint nobody else holds: counted out when closed. */
static void on_ep_event_ignored(struct ep *e, enum ep_event ev, int status)
{
    (void)e;
    (void)ev;
    (void)status;
}

static void on_ep_freed(struct ep *e)
{
    free(e);
    metrics_add(M_SESSIONS_ACTIVE, NULL, NULL, -1);
    quota_conn_closed();
}

/* ---- the PROXY-header stage ---- */

static void wait_unlink(struct listener_wait *w)
{
    if (w->l == NULL)
        return;
    PX_DLIST_UNLINK(w->l->waiting, w);
    w->l = NULL;
}

static void wait_handle_closed(struct listener_wait *w)
{
    if (--w->open_handles > 0)
        return;
    buf_free(&w->in);
    gen_unref(w->gen);
    free(w);
}

static void on_wait_timer_closed(uv_handle_t *h) { wait_handle_closed(h->data); }

static void on_wait_ep_closed(struct ep *e)
{
    struct listener_wait *w = e->owner;

    free(e);
    metrics_add(M_SESSIONS_ACTIVE, NULL, NULL, -1);
    quota_conn_closed();
    wait_handle_closed(w);
}

/* Ends the stage: the endpoint was handed on, or is closed for reason. */
static void wait_end(struct listener_wait *w, const char *reason)
{
    if (w->done)
        return;
    w->done = true;
    wait_unlink(w);
    uv_close((uv_handle_t *)&w->timer, on_wait_timer_closed);
    if (reason != NULL) {
        LOG_INFO(&w->lg, "close", "reason", reason, NULL);
        ep_close(w->ep, false);
    }
}

/* label: the log line's reason and the metric's; why: the log line's msg;
 * reason: the close line's.
 * expected: the configured version, named when the header was wrong. */
static void refuse(struct listener_wait *w, const char *why, const char *label, const char *reason,
                   bool expected)
{
    const struct cfg *cfg = w->gen->cfg;

    LOG_WARN(&w->lg, "refused", "reason", label, "msg", why, "expected",
             expected ? cfg_proxy_protocol_name(cfg->proxy_protocol) : NULL, NULL);
    metrics_add(M_CONN_REFUSED, label, NULL, 1);
    wait_end(w, reason);
}

static void hand_on(struct listener *l, struct ep *e, struct gen *g, uint64_t sid,
                    const struct sockaddr_storage *peer, const struct sockaddr_storage *local,
                    const char *early, size_t n_early)
{
    struct listener_conn c = {
        .ep = e, .gen = g, .sid = sid, .peer = *peer, .local = *local,
        .implicit = l->implicit, .early = early, .n_early = n_early,
    };

    l->on_accept(&c, l->arg);
}

/* Untrusted: the first bytes of the connection, before we send anything. The
 * header's source address becomes the client's address for logs, limits and
 * the data-connection check; a v2 LOCAL header (a health check) keeps the
 * balancer's own. */
static void proxy_header(struct listener_wait *w)
{
    static const unsigned versions[] = {0, PP_V1, PP_V2, PP_V1 | PP_V2};
    const struct cfg *cfg = w->gen->cfg;
    struct pp_header h;
    struct listener *l = w->l;
    int rc = pp_parse((const uint8_t *)buf_head(&w->in), buf_len(&w->in),
                      versions[cfg->proxy_protocol], &h);

    if (rc == 0 && buf_len(&w->in) < PP_MAX_LEN)
        return; /* more bytes to come */
    if (rc <= 0) {
        refuse(w, "missing or malformed PROXY header", "proxy_header_invalid",
               "bad PROXY header", true);
        return;
    }
    buf_consume(&w->in, (size_t)rc);
    if (!h.local)
        memcpy(&w->peer, &h.src, sizeof(w->peer));
    ep_pause(w->ep);
    wait_end(w, NULL);
    w->open_handles--; /* the endpoint is the session's now */
    hand_on(l, w->ep, gen_ref(w->gen), w->lg.sid, &w->peer, &w->local, buf_head(&w->in),
            buf_len(&w->in));
}

static void on_wait_event(struct ep *e, enum ep_event ev, int status)
{
    struct listener_wait *w = e->owner;

    (void)status;
    if (w->done)
        return;
    if (ev == EP_READ) {
        proxy_header(w);
        return;
    }
    if (ev == EP_EOF || ev == EP_ERROR)
        wait_end(w, "client closed");
}

static void on_proxy_timeout(uv_timer_t *t)
{
    refuse(t->data, "no PROXY header within 5 seconds", "proxy_header_timeout",
           "no PROXY header", false);
}

static bool trusted(const struct cfg *cfg, const struct sockaddr_storage *p)
{
    return cfg_cidr_contains_sa(cfg->proxy_protocol_from, cfg->n_proxy_protocol_from,
                                (const struct sockaddr *)p);
}

static void wait_for_header(struct listener *l, struct ep *e, uint64_t sid,
                            const struct sockaddr_storage *peer,
                            const struct sockaddr_storage *local)
{
    struct listener_wait *w = calloc(1, sizeof(*w));

    if (w == NULL) {
        ep_close(e, true); /* still on_ep_freed's */
        return;
    }
    w->ep = e;
    w->gen = gen_ref(*l->gen);
    w->lg.sid = sid;
    w->peer = *peer;
    w->local = *local;
    log_addr(w->lg.client, sizeof(w->lg.client), (const struct sockaddr *)peer);
    buf_init(&w->in, PP_MAX_LEN);
    w->open_handles = 2;
    uv_timer_init(e->tcp.loop, &w->timer);
    w->timer.data = w;
    ep_set_owner(e, on_wait_event, on_wait_ep_closed, w);
    w->l = l;
    PX_DLIST_PUSH(l->waiting, w);
    if (!trusted(w->gen->cfg, peer)) {
        refuse(w, "PROXY header source not in proxy_protocol_from", "proxy_source_untrusted",
               "untrusted PROXY source", false);
        return;
    }
    uv_timer_start(&w->timer, on_proxy_timeout, LISTENER_PROXY_MS, 0);
    ep_set_bufs(e, &w->in, NULL);
    ep_read(e);
}

/* ---- accepting ---- */

static void on_connection(uv_stream_t *s, int status)
{
    struct listener *l = s->data;
    struct sockaddr_storage peer, local;
    uint64_t sid;
    struct ep *e;

    if (status < 0) {
        LOG_WARN(NULL, "accept_failed", "listen", l->addr.text, "error", uv_strerror(status), NULL);
        return;
    }
    if (l->closing)
        return;
    e = malloc(sizeof(*e));
    if (e == NULL || ep_init(e, s->loop, on_ep_event_ignored, on_ep_freed, NULL) != 0) {
        free(e);
        return;
    }
    metrics_add(M_SESSIONS_ACTIVE, NULL, NULL, 1);
    quota_conn_opened();
    if (ep_accept(e, s) != 0 || ep_sockname(e, &peer, true) != 0 ||
        ep_sockname(e, &local, false) != 0) {
        ep_close(e, true);
        return;
    }
    sid = (uint64_t)atomic_fetch_add(&sid_counter, 1) + 1;
    if ((*l->gen)->cfg->proxy_protocol != CFG_PP_NO) {
        wait_for_header(l, e, sid, &peer, &local);
        return;
    }
    hand_on(l, e, gen_ref(*l->gen), sid, &peer, &local, NULL, 0);
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

int listener_open(uv_loop_t *loop, struct gen *const *gen, const struct cfg_addr *addr,
                  bool implicit, bool reuseport, listener_accept_fn *on_accept, void *arg,
                  struct listener **out)
{
    struct listener *l = calloc(1, sizeof(*l));
    unsigned flags = addr->sa.ss_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0;
    uv_os_sock_t fd = -1;
    int rc;

    if (l == NULL)
        return UV_ENOMEM;
    l->gen = gen;
    l->on_accept = on_accept;
    l->arg = arg;
    l->addr = *addr;
    l->implicit = implicit;
    rc = uv_tcp_init(loop, &l->tcp);
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
    while (l->waiting != NULL)
        wait_end(l->waiting, "shutdown");
    uv_close((uv_handle_t *)&l->tcp, on_closed);
}
