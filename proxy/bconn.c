/* bconn.c - a session's backend connect with failover (see bconn.h). */
#include "bconn.h"

#include <stdbool.h>
#include <stdlib.h>

#include "cfg.h"
#include "greet.h"
#include "health.h"
#include "log.h"
#include "metrics.h"

struct bconn {
    struct bconn_params p;
    uint64_t tried;
    struct greet *g; /* the attempt in flight, owned */
    size_t idx;      /* its address */
    int last;        /* the last failure */
};

static bool next(struct bconn *c);

static void give_up(struct bconn *c)
{
    c->p.cb(c->p.arg, c->last != 0 ? c->last : UV_ECONNREFUSED, -1, c->idx);
    free(c);
}

static void failed(struct bconn *c, int status, const char *greeting, bool connected)
{
    const struct cfg_backend *b = c->p.b;
    const char *addr = b->address[c->idx].text;

    c->last = status;
    metrics_add(M_BACKEND_FAILURES, b->name, NULL, 1);
    if (status == UV_EPROTO)
        LOG_WARN(c->p.lg, "backend_refused", "address", addr, "greeting", greeting, NULL);
    else
        LOG_ERROR(c->p.lg, "backend_unreachable", "address", addr, "error",
                  status != UV_ETIMEDOUT ? uv_strerror(status)
                  : connected            ? "no greeting in time"
                                         : "connect timeout",
                  NULL);
}

static void on_greet(struct greet *g, int status, void *arg)
{
    struct bconn *c = arg;
    int fd;

    c->g = NULL;
    if (status == 0) {
        fd = greet_take_fd(g);
        if (fd >= 0) {
            c->p.cb(c->p.arg, 0, fd, c->idx);
            free(c);
            return;
        }
        status = fd;
        failed(c, status, "", true);
    } else {
        failed(c, status, greet_text(g), greet_connected(g));
        greet_close(g);
    }
    if (!next(c))
        give_up(c);
}

/* Starts the next address; false when none is left to try. */
static bool next(struct bconn *c)
{
    const struct cfg_backend *b = c->p.b;
    int i, rc;

    while ((i = health_pick(b, c->tried)) >= 0) {
        c->idx = (size_t)i;
        c->tried |= UINT64_C(1) << i;
        rc = greet_start(c->p.loop, (const struct sockaddr *)&b->address[i].sa, c->p.timeout_ms,
                         on_greet, c, &c->g);
        if (rc == 0)
            return true;
        failed(c, rc, "", false);
    }
    return false;
}

int bconn_start(const struct bconn_params *p, uint64_t tried, struct bconn **out)
{
    struct bconn *c = calloc(1, sizeof(*c));

    *out = NULL;
    if (c == NULL)
        return UV_ENOMEM;
    c->p = *p;
    c->tried = tried;
    if (!next(c)) { /* nothing could even start: no callback */
        int rc = c->last != 0 ? c->last : UV_ECONNREFUSED;

        free(c);
        return rc;
    }
    *out = c;
    return 0;
}

void bconn_cancel(struct bconn *c)
{
    if (c == NULL)
        return;
    greet_close(c->g);
    free(c);
}
