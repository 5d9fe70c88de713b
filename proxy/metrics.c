/* metrics.c - the metric registry and its HTTP endpoint (see metrics.h). */
#include "metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "log.h"

#define LABEL_MAX 64
#define HTTP_REQ_MAX 4096

struct series {
    struct series *next;
    char l1[LABEL_MAX], l2[LABEL_MAX];
    atomic_llong v;
};

struct family {
    const char *name, *type, *help;
    const char *label1, *label2; /* NULL: no such label */
    struct series *head;
};

static struct family families[M_COUNT] = {
    [M_SESSIONS_ACTIVE] = {"ftpsgate_sessions_active", "gauge",
                           "Control connections open now.", NULL, NULL, NULL},
    [M_BACKEND_SESSIONS_ACTIVE] = {"ftpsgate_backend_sessions_active", "gauge",
                                   "Sessions routed to a backend and open now.", "backend", NULL,
                                   NULL},
    [M_SESSIONS_TOTAL] = {"ftpsgate_sessions_total", "counter",
                          "Sessions routed to a backend since start.", "backend", NULL, NULL},
    [M_LOGINS_FAILED] = {"ftpsgate_logins_failed_total", "counter",
                         "Logins the backend refused.", "backend", NULL, NULL},
    [M_BYTES] = {"ftpsgate_bytes_total", "counter",
                 "Data bytes relayed, by backend and direction (upload: to the backend).",
                 "backend", "direction", NULL},
    [M_TRANSFERS] = {"ftpsgate_transfers_total", "counter",
                     "Transfers finished, by backend and result (ok, failed, aborted, refused).",
                     "backend", "result", NULL},
    [M_TLS_FAILURES] = {"ftpsgate_tls_handshake_failures_total", "counter",
                        "Client TLS handshakes that failed, by reason.", "reason", NULL, NULL},
    [M_BACKEND_FAILURES] = {"ftpsgate_backend_connect_failures_total", "counter",
                            "Backend connections that failed (refused, timeout, no greeting).",
                            "backend", NULL, NULL},
    [M_DATA_REFUSED] = {"ftpsgate_data_connections_refused_total", "counter",
                        "Data connections refused, by reason.", "reason", NULL, NULL},
    [M_CONN_REFUSED] = {"ftpsgate_connections_refused_total", "counter",
                        "Control connections refused before a session began, by reason.",
                        "reason", NULL, NULL},
    [M_RELOADS] = {"ftpsgate_reloads_total", "counter",
                   "Configuration reloads, by result (ok, failed).", "result", NULL, NULL},
    [M_CERT_EXPIRY] = {"ftpsgate_certificate_expiry_timestamp_seconds", "gauge",
                       "notAfter of the certificate each site is served with (Unix time).",
                       "site", NULL, NULL},
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void copy_label(char dst[LABEL_MAX], const char *s)
{
    snprintf(dst, LABEL_MAX, "%s", s != NULL ? s : "");
}

static struct series *find(struct family *f, const char *l1, const char *l2)
{
    char a[LABEL_MAX], b[LABEL_MAX];
    struct series *s;

    copy_label(a, l1);
    copy_label(b, l2);
    pthread_mutex_lock(&lock);
    for (s = f->head; s != NULL; s = s->next)
        if (strcmp(s->l1, a) == 0 && strcmp(s->l2, b) == 0)
            break;
    if (s == NULL) {
        s = calloc(1, sizeof(*s));
        if (s != NULL) {
            memcpy(s->l1, a, sizeof(a));
            memcpy(s->l2, b, sizeof(b));
            s->next = f->head;
            f->head = s;
        }
    }
    pthread_mutex_unlock(&lock);
    return s;
}

void metrics_add(enum metrics_id id, const char *l1, const char *l2, int64_t d)
{
    struct series *s = find(&families[id], l1, l2);

    if (s != NULL)
        atomic_fetch_add(&s->v, (long long)d);
}

void metrics_set(enum metrics_id id, const char *l1, const char *l2, int64_t v)
{
    struct series *s = find(&families[id], l1, l2);

    if (s != NULL)
        atomic_store(&s->v, (long long)v);
}

void metrics_clear(enum metrics_id id)
{
    struct series *s, *next;

    pthread_mutex_lock(&lock);
    s = families[id].head;
    families[id].head = NULL;
    pthread_mutex_unlock(&lock);
    for (; s != NULL; s = next) {
        next = s->next;
        free(s);
    }
}

void metrics_free(void)
{
    for (size_t i = 0; i < M_COUNT; i++)
        metrics_clear((enum metrics_id)i);
}

/* ---- the text format ---- */

struct out {
    char *p;
    size_t len, cap;
    bool failed;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->failed)
        return;
    if (o->len + n + 1 > o->cap) {
        size_t cap = (o->len + n + 1) * 2;
        char *p = realloc(o->p, cap);

        if (p == NULL) {
            o->failed = true;
            return;
        }
        o->p = p;
        o->cap = cap;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
    o->p[o->len] = '\0';
}

static void puts_(struct out *o, const char *s) { put(o, s, strlen(s)); }

/* Label values: backslash, double quote and newline are escaped. */
static void put_label(struct out *o, const char *name, const char *v, bool first)
{
    puts_(o, first ? "{" : ",");
    puts_(o, name);
    puts_(o, "=\"");
    for (; *v != '\0'; v++) {
        if (*v == '\\' || *v == '"')
            put(o, "\\", 1);
        if (*v == '\n')
            puts_(o, "\\n");
        else
            put(o, v, 1);
    }
    puts_(o, "\"");
}

char *metrics_render(size_t *len)
{
    struct out o = {NULL, 0, 0, false};
    char num[32];

    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < M_COUNT; i++) {
        const struct family *f = &families[i];

        puts_(&o, "# HELP ");
        puts_(&o, f->name);
        puts_(&o, " ");
        puts_(&o, f->help);
        puts_(&o, "\n# TYPE ");
        puts_(&o, f->name);
        puts_(&o, " ");
        puts_(&o, f->type);
        puts_(&o, "\n");
        if (f->label1 == NULL && f->head == NULL) { /* an unlabelled metric is always there */
            puts_(&o, f->name);
            puts_(&o, " 0\n");
        }
        for (const struct series *s = f->head; s != NULL; s = s->next) {
            puts_(&o, f->name);
            if (f->label1 != NULL) {
                put_label(&o, f->label1, s->l1, true);
                if (f->label2 != NULL)
                    put_label(&o, f->label2, s->l2, false);
                puts_(&o, "}");
            }
            snprintf(num, sizeof(num), " %lld\n", (long long)atomic_load(&s->v));
            puts_(&o, num);
        }
    }
    pthread_mutex_unlock(&lock);
    if (o.failed) {
        free(o.p);
        return NULL;
    }
    *len = o.len;
    return o.p;
}

/* ---- HTTP ---- */

struct http_conn {
    uv_tcp_t tcp;
    uv_write_t wreq;
    char req[HTTP_REQ_MAX];
    size_t len;
    char *resp; /* owned */
};

static uv_tcp_t http_listener;
static bool http_open;

static void on_conn_closed(uv_handle_t *h)
{
    struct http_conn *c = h->data;

    free(c->resp);
    free(c);
}

static void on_written(uv_write_t *req, int status)
{
    (void)status;
    uv_close((uv_handle_t *)req->handle, on_conn_closed);
}

static void respond(struct http_conn *c, const char *status, const char *type, const char *body,
                    size_t blen)
{
    char head[256];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.0 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "Connection: close\r\n\r\n",
                      status, type, blen);
    uv_buf_t b;

    c->resp = malloc((size_t)hl + blen);
    if (c->resp == NULL) {
        uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
        return;
    }
    memcpy(c->resp, head, (size_t)hl);
    memcpy(c->resp + hl, body, blen);
    b = uv_buf_init(c->resp, (unsigned)((size_t)hl + blen));
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0)
        uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
    struct http_conn *c = h->data;

    (void)suggested;
    *out = uv_buf_init(c->req + c->len, (unsigned)(sizeof(c->req) - 1 - c->len));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct http_conn *c = s->data;
    static const char nf[] = "not found: try /metrics\n";
    char *body;
    size_t blen;

    (void)b;
    if (n < 0) {
        uv_close((uv_handle_t *)s, on_conn_closed);
        return;
    }
    c->len += (size_t)n;
    c->req[c->len] = '\0';
    if (strstr(c->req, "\r\n\r\n") == NULL && strstr(c->req, "\n\n") == NULL) {
        if (c->len == sizeof(c->req) - 1)
            uv_close((uv_handle_t *)s, on_conn_closed);
        return;
    }
    if (strncmp(c->req, "GET /metrics ", 13) != 0 && strncmp(c->req, "GET /metrics?", 13) != 0) {
        respond(c, "404 Not Found", "text/plain", nf, sizeof(nf) - 1);
        return;
    }
    body = metrics_render(&blen);
    if (body == NULL) {
        uv_close((uv_handle_t *)s, on_conn_closed);
        return;
    }
    respond(c, "200 OK", "text/plain; version=0.0.4", body, blen);
    free(body);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct http_conn *c;

    if (status < 0)
        return;
    c = calloc(1, sizeof(*c));
    if (c == NULL || uv_tcp_init(server->loop, &c->tcp) != 0) {
        free(c);
        return;
    }
    c->tcp.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
        uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

int metrics_serve(uv_loop_t *loop, const struct cfg_addr *addr)
{
    int rc = uv_tcp_init(loop, &http_listener);

    if (rc != 0)
        return rc;
    http_open = true;
    rc = uv_tcp_bind(&http_listener, (const struct sockaddr *)&addr->sa, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&http_listener, 64, on_connection);
    if (rc != 0) {
        metrics_stop();
        return rc;
    }
    LOG_INFO(NULL, "listening", "listen", addr->text, "mode", "metrics", NULL);
    return 0;
}

void metrics_stop(void)
{
    if (http_open) {
        http_open = false;
        uv_close((uv_handle_t *)&http_listener, NULL);
    }
}
