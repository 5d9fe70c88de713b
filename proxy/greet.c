/* greet.c - a connection to a backend up to its 220 greeting (see greet.h).
 *
 * The socket is handed over by duplicating its descriptor and closing the
 * handle: libuv takes the handle's descriptor out of its poller before it
 * closes it, and the duplicate, sharing the same open socket, lives on in
 * the endpoint that adopts it. */
#include "greet.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ftp.h"
#include "px.h"

#define GREET_BUF 2048 /* vsftpd's banner is one line; a long multi-line one still fits */
#define GREET_TEXT 120

struct greet {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t creq;
    unsigned open_handles;
    bool closed;   /* greet_close: no more callbacks */
    bool connected;
    bool greeted;
    bool watching;
    bool reported; /* the current phase's callback was made */
    greet_fn *cb;
    void *arg;
    struct ftp_reply rep;
    size_t len;
    char buf[GREET_BUF];
    char text[GREET_TEXT];
};

static void on_closed(uv_handle_t *h)
{
    struct greet *g = h->data;

    if (--g->open_handles == 0)
        free(g);
}

void greet_close(struct greet *g)
{
    if (g == NULL || g->closed)
        return;
    g->closed = true;
    uv_close((uv_handle_t *)&g->tcp, on_closed);
    uv_close((uv_handle_t *)&g->timer, on_closed);
}

static void report(struct greet *g, int status)
{
    if (g->closed || g->reported)
        return;
    g->reported = true;
    uv_timer_stop(&g->timer);
    uv_read_stop((uv_stream_t *)&g->tcp);
    g->cb(g, status, g->arg);
}

static void keep_text(struct greet *g, const char *line, size_t len)
{
    size_t n = 0;

    for (size_t i = 0; i < len && n + 1 < sizeof(g->text); i++)
        g->text[n++] = line[i] >= 0x20 && line[i] < 0x7f ? line[i] : '?';
    g->text[n] = '\0';
}

/* Untrusted: straight from the backend. Whole lines only. */
static void take_lines(struct greet *g)
{
    char *nl;
    size_t used = 0;

    while (!g->closed && !g->reported &&
           (nl = memchr(g->buf + used, '\n', g->len - used)) != NULL) {
        const char *line = g->buf + used;
        size_t len = (size_t)(nl - line);
        int rc;

        used += len + 1;
        if (len > 0 && line[len - 1] == '\r')
            len--;
        if (g->rep.lines == 0)
            keep_text(g, line, len);
        rc = ftp_reply_line(&g->rep, line, len);
        if (rc < 0) {
            report(g, UV_EPROTO);
            return;
        }
        if (rc == 1) {
            g->greeted = g->rep.code == 220;
            report(g, g->greeted ? 0 : UV_EPROTO);
            return;
        }
    }
    memmove(g->buf, g->buf + used, g->len - used);
    g->len -= used;
    if (g->len == sizeof(g->buf))
        report(g, UV_EPROTO); /* a line longer than the buffer */
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    struct greet *g = h->data;

    (void)suggested;
    if (g->watching) { /* anything from a watched connection ends it */
        *out = uv_buf_init(g->buf, sizeof(g->buf));
        return;
    }
    *out = uv_buf_init(g->buf + g->len, (unsigned)(sizeof(g->buf) - g->len));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct greet *g = s->data;

    (void)b;
    if (g->closed || n == 0)
        return;
    if (g->watching) {
        if (n > 0)
            keep_text(g, g->buf, (size_t)n);
        report(g, UV_EOF);
        return;
    }
    if (n < 0) {
        report(g, n == UV_EOF ? UV_ECONNRESET : (int)n);
        return;
    }
    g->len += (size_t)n;
    take_lines(g);
}

static void on_connect(uv_connect_t *req, int status)
{
    struct greet *g = req->handle->data;

    if (g->closed)
        return;
    if (status < 0) {
        report(g, status);
        return;
    }
    g->connected = true;
    uv_tcp_nodelay(&g->tcp, 1);
    status = uv_read_start((uv_stream_t *)&g->tcp, on_alloc, on_read);
    if (status < 0)
        report(g, status);
}

static void on_timeout(uv_timer_t *t)
{
    report(t->data, UV_ETIMEDOUT);
}

int greet_start(uv_loop_t *loop, const struct sockaddr *to, unsigned timeout_ms, greet_fn *cb,
                void *arg, struct greet **out)
{
    struct greet *g = calloc(1, sizeof(*g));
    int rc;

    *out = NULL;
    if (g == NULL)
        return UV_ENOMEM;
    g->cb = cb;
    g->arg = arg;
    rc = uv_tcp_init(loop, &g->tcp);
    if (rc != 0) {
        free(g);
        return rc;
    }
    g->tcp.data = g;
    uv_timer_init(loop, &g->timer);
    g->timer.data = g;
    g->open_handles = 2;
    rc = uv_tcp_connect(&g->creq, &g->tcp, to, on_connect);
    if (rc != 0) {
        greet_close(g);
        return rc;
    }
    uv_timer_start(&g->timer, on_timeout, timeout_ms, 0);
    *out = g;
    return 0;
}

void greet_watch(struct greet *g)
{
    PX_ASSERT(g->greeted && !g->closed);
    g->watching = true;
    g->reported = false;
    g->len = 0;
    if (uv_read_start((uv_stream_t *)&g->tcp, on_alloc, on_read) != 0)
        g->reported = true; /* cannot watch: it ends when taken or dropped */
}

bool greet_connected(const struct greet *g)
{
    return g->connected;
}

const char *greet_text(const struct greet *g)
{
    return g->text;
}

int greet_take_fd(struct greet *g)
{
    uv_os_fd_t fd;
    int rc = uv_fileno((uv_handle_t *)&g->tcp, &fd), copy;

    copy = rc == 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
    if (rc == 0 && copy < 0)
        rc = UV_EMFILE;
    greet_close(g);
    return rc != 0 ? rc : copy;
}
