/* metrics.c - the metric registry and its HTTP endpoint (see metrics.h). */
#include "metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "hmap.h"
#include "log.h"

#define LABEL_MAX 64
#define HTTP_REQ_MAX 4096

struct series {
    struct series *prev, *next; /* the family's list, in the order created */
    char key[2 * LABEL_MAX + 4]; /* family id, NUL, l1, NUL, l2: the map's key */
    size_t key_len;
    const char *l1, *l2;         /* into key */
    atomic_llong v;
};

struct family {
    const char *name, *type, *help;
    const char *label1, *label2; /* NULL: no such label */
    struct series *head, *tail;
};

static struct family families[M_COUNT] = {
    [M_SESSIONS_ACTIVE] = {"ftpsgate_sessions_active", "gauge",
                           "Control connections open now.", NULL, NULL, NULL, NULL},
    [M_BACKEND_SESSIONS_ACTIVE] = {"ftpsgate_backend_sessions_active", "gauge",
                                   "Sessions routed to a backend and open now.", "backend", NULL,
                                   NULL, NULL},
    [M_SESSIONS_TOTAL] = {"ftpsgate_sessions_total", "counter",
                          "Sessions routed to a backend since start.", "backend", NULL, NULL, NULL},
    [M_LOGINS_FAILED] = {"ftpsgate_logins_failed_total", "counter",
                         "Logins the backend refused.", "backend", NULL, NULL, NULL},
    [M_BYTES] = {"ftpsgate_bytes_total", "counter",
                 "Data bytes relayed, by backend and direction (upload: to the backend).",
                 "backend", "direction", NULL, NULL},
    [M_TRANSFERS] = {"ftpsgate_transfers_total", "counter",
                     "Transfers finished, by backend and result (ok, failed, aborted, refused).",
                     "backend", "result", NULL, NULL},
    [M_TLS_FAILURES] = {"ftpsgate_tls_handshake_failures_total", "counter",
                        "Client TLS handshakes that failed, by reason.", "reason", NULL, NULL,
                        NULL},
    [M_BACKEND_FAILURES] = {"ftpsgate_backend_connect_failures_total", "counter",
                            "Backend connections that failed (refused, timeout, no greeting).",
                            "backend", NULL, NULL, NULL},
    [M_DATA_REFUSED] = {"ftpsgate_data_connections_refused_total", "counter",
                        "Data connections refused, by reason.", "reason", NULL, NULL, NULL},
    [M_DATA_MATCHED] = {"ftpsgate_data_connections_matched_total", "counter",
                        "Data connections on shared passive ports given to the session their "
                        "TLS resumed.",
                        NULL, NULL, NULL, NULL},
    [M_CONN_REFUSED] = {"ftpsgate_connections_refused_total", "counter",
                        "Control connections refused before a session began, by reason.",
                        "reason", NULL, NULL, NULL},
    [M_RELOADS] = {"ftpsgate_reloads_total", "counter",
                   "Configuration reloads, by result (ok, failed).", "result", NULL, NULL, NULL},
    [M_CERT_EXPIRY] = {"ftpsgate_certificate_expiry_timestamp_seconds", "gauge",
                       "notAfter of the certificate each site is served with (Unix time).",
                       "site", NULL, NULL, NULL},
    [M_SITES_DEGRADED] = {"ftpsgate_sites_degraded", "gauge",
                          "Sites served with the central certificate for names their own "
                          "cannot serve.",
                          NULL, NULL, NULL, NULL},
    [M_SITE_DEGRADED] = {"ftpsgate_site_degraded", "gauge",
                         "1 when a site's own certificate cannot serve all its names.", "site",
                         NULL, NULL, NULL},
    [M_BANS_ACTIVE] = {"ftpsgate_bans_active", "gauge",
                       "Client addresses (IPv4, or IPv6 /64) banned now for failed logins.", NULL,
                       NULL, NULL, NULL},
    [M_BANS_TOTAL] = {"ftpsgate_bans_total", "counter", "Bans for failed logins since start.",
                      NULL, NULL, NULL, NULL},
    [M_BACKEND_UP] = {"ftpsgate_backend_up", "gauge",
                      "1 while a backend address is in the rotation (its health checks pass), "
                      "0 while it is out.",
                      "backend", "address", NULL, NULL},
    [M_BACKEND_ADDR_SESSIONS] = {"ftpsgate_backend_sessions", "gauge",
                                 "Sessions connected to each backend address now.", "backend",
                                 "address", NULL, NULL},
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct hmap index_;

/* "id NUL l1 NUL l2" into s->key; labels are cut at LABEL_MAX - 1 bytes. */
static void make_key(struct series *s, enum metrics_id id, const char *l1, const char *l2)
{
    size_t n = 0, a, b;

    s->key[n++] = (char)('A' + id);
    s->key[n++] = '\0';
    a = strnlen(l1 != NULL ? l1 : "", LABEL_MAX - 1);
    memcpy(s->key + n, l1 != NULL ? l1 : "", a);
    s->l1 = s->key + n;
    n += a;
    s->key[n++] = '\0';
    b = strnlen(l2 != NULL ? l2 : "", LABEL_MAX - 1);
    memcpy(s->key + n, l2 != NULL ? l2 : "", b);
    s->l2 = s->key + n;
    n += b;
    s->key[n] = '\0';
    s->key_len = n;
}

/* The series of id with labels l1, l2, created at 0 when new. Locked. */
static struct series *find(enum metrics_id id, const char *l1, const char *l2)
{
    struct series probe, *s;
    struct family *f = &families[id];
    uint64_t v;

    make_key(&probe, id, l1, l2);
    if (hmap_get(&index_, probe.key, probe.key_len, &v))
        return (struct series *)(uintptr_t)v;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    make_key(s, id, l1, l2);
    if (hmap_put(&index_, s->key, s->key_len, (uintptr_t)s, NULL) != 0) {
        free(s);
        return NULL;
    }
    s->prev = f->tail;
    if (f->tail != NULL)
        f->tail->next = s;
    else
        f->head = s;
    f->tail = s;
    return s;
}

void metrics_add(enum metrics_id id, const char *l1, const char *l2, int64_t d)
{
    struct series *s;

    pthread_mutex_lock(&lock);
    s = find(id, l1, l2);
    if (s != NULL)
        atomic_fetch_add(&s->v, (long long)d);
    pthread_mutex_unlock(&lock);
}

void metrics_set(enum metrics_id id, const char *l1, const char *l2, int64_t v)
{
    struct series *s;

    pthread_mutex_lock(&lock);
    s = find(id, l1, l2);
    if (s != NULL)
        atomic_store(&s->v, (long long)v);
    pthread_mutex_unlock(&lock);
}

static void unlink_series(struct family *f, struct series *s)
{
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        f->head = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    else
        f->tail = s->prev;
    (void)hmap_del(&index_, s->key, s->key_len);
    free(s);
}

void metrics_drop(const char *name)
{
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < M_COUNT; i++) {
        struct family *f = &families[i];
        struct series *s, *next;

        if (f->label1 == NULL || (strcmp(f->label1, "backend") != 0 && strcmp(f->label1, "site") != 0))
            continue;
        for (s = f->head; s != NULL; s = next) {
            next = s->next;
            if (strcmp(s->l1, name) == 0)
                unlink_series(f, s);
        }
    }
    pthread_mutex_unlock(&lock);
}

void metrics_drop_series(enum metrics_id id, const char *l1, const char *l2)
{
    struct series probe;
    uint64_t v;

    make_key(&probe, id, l1, l2);
    pthread_mutex_lock(&lock);
    if (hmap_get(&index_, probe.key, probe.key_len, &v))
        unlink_series(&families[id], (struct series *)(uintptr_t)v);
    pthread_mutex_unlock(&lock);
}

void metrics_free(void)
{
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < M_COUNT; i++)
        while (families[i].head != NULL)
            unlink_series(&families[i], families[i].head);
    hmap_free(&index_);
    pthread_mutex_unlock(&lock);
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

/* A scraper gets HTTP_TIMEOUT_MS to send its request and read the answer,
 * and at most HTTP_CONNS connections are served at once: the endpoint is
 * not for the public, and a slow or a flooding client must not hold it. */
#define HTTP_TIMEOUT_MS 5000
#define HTTP_CONNS 16

struct http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wreq;
    unsigned open_handles;
    bool closing;
    char req[HTTP_REQ_MAX];
    size_t len;
    char *resp; /* owned */
};

static uv_tcp_t http_listener;
static bool http_open;
static unsigned http_conns; /* open now (main loop only) */

static void on_conn_closed(uv_handle_t *h)
{
    struct http_conn *c = h->data;

    if (--c->open_handles > 0)
        return;
    http_conns--;
    free(c->resp);
    free(c);
}

static void conn_close(struct http_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

static void on_timeout(uv_timer_t *t) { conn_close(t->data); }

static void on_written(uv_write_t *req, int status)
{
    (void)status;
    conn_close(req->handle->data);
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
        conn_close(c);
        return;
    }
    memcpy(c->resp, head, (size_t)hl);
    memcpy(c->resp + hl, body, blen);
    b = uv_buf_init(c->resp, (unsigned)((size_t)hl + blen));
    uv_read_stop((uv_stream_t *)&c->tcp);
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0)
        conn_close(c);
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
        conn_close(c);
        return;
    }
    c->len += (size_t)n;
    c->req[c->len] = '\0';
    if (strstr(c->req, "\r\n\r\n") == NULL && strstr(c->req, "\n\n") == NULL) {
        if (c->len == sizeof(c->req) - 1)
            conn_close(c);
        return;
    }
    if (strncmp(c->req, "GET /metrics ", 13) != 0 && strncmp(c->req, "GET /metrics?", 13) != 0) {
        respond(c, "404 Not Found", "text/plain", nf, sizeof(nf) - 1);
        return;
    }
    body = metrics_render(&blen);
    if (body == NULL) {
        conn_close(c);
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
    uv_timer_init(server->loop, &c->timer);
    c->timer.data = c;
    c->open_handles = 2;
    http_conns++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 || http_conns > HTTP_CONNS ||
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timeout, HTTP_TIMEOUT_MS, 0);
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
