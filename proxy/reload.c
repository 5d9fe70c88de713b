/* reload.c - loading generations and what each load publishes (see
 * reload.h). */
#include "reload.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "certcheck.h"
#include "certload.h"
#include "cfg.h"
#include "gen.h"
#include "health.h"
#include "loader.h"
#include "log.h"
#include "metrics.h"
#include "px.h"
#include "server.h"
#include "tlsctx.h"
#include "watch.h"

#define WATCH_DEBOUNCE_MS 1500        /* a key and its certificate are written in turn */
#define DAILY_MS (24u * 3600 * 1000) /* certificates are judged again daily */

/* ---- lines ---- */

static void print_line(void *arg, enum certcheck_kind kind, const char *line)
{
    (void)arg;
    printf(kind == CERTCHECK_CONFIG ? "error: %s\n" : "%s\n", line);
}

/* A load's lines, kept until the load is over: they are logged in the log
 * format of the configuration it loaded. */
struct lines {
    struct line_item {
        enum certcheck_kind kind;
        char *text;
    } *items;
    size_t n, cap;
};

static void keep_line(void *arg, enum certcheck_kind kind, const char *line)
{
    struct lines *l = arg;
    struct line_item *grown;

    if (kind == CERTCHECK_REPORT)
        return;
    if (l->n == l->cap) {
        size_t cap = l->cap == 0 ? 16 : l->cap * 2;

        grown = realloc(l->items, cap * sizeof(*grown));
        if (grown == NULL)
            return;
        l->items = grown;
        l->cap = cap;
    }
    l->items[l->n].kind = kind;
    l->items[l->n].text = strdup(line);
    if (l->items[l->n].text != NULL)
        l->n++;
}

static void log_lines(struct lines *l)
{
    for (size_t i = 0; i < l->n; i++) {
        const char *line = l->items[i].text;

        switch (l->items[i].kind) {
        case CERTCHECK_CONFIG:
        case CERTCHECK_ERROR: /* the central certificate: the configuration cannot serve */
            LOG_ERROR(NULL, "config_error", "msg", line, NULL);
            break;
        case CERTCHECK_CONFIG_WARNING:
            LOG_WARN(NULL, "config_warning", "msg", line, NULL);
            break;
        case CERTCHECK_WARNING:
            LOG_WARN(NULL, "certificate_check", "msg", line, NULL);
            break;
        default:
            LOG_ERROR(NULL, "certificate_check", "msg", line, NULL);
            break;
        }
        free(l->items[i].text);
    }
    free(l->items);
    memset(l, 0, sizeof(*l));
}

/* "alpha, beta": the degraded sites, into dst. */
static void degraded_names(const struct gen *g, char *dst, size_t cap)
{
    const struct certplan *p = tlsctx_plan(g->tls);
    size_t n = 0;

    dst[0] = '\0';
    for (size_t b = 0; b < p->n_sites && n < cap; b++)
        if (p->sites[b].degraded)
            n += (size_t)snprintf(dst + n, cap - n, "%s%s", n > 0 ? ", " : "",
                                  g->cfg->backends[b].name);
    if (n >= cap && cap > 4)
        memcpy(dst + cap - 4, "...", 4);
}

int reload_check(const char *path)
{
    struct certload *certs = certload_new();
    struct gen_opts o = {.now = time(NULL), .report = true, .certs = certs, .out = print_line};
    struct gen_verdict v = {0, 0, 0, 0};
    struct gen *g = certs != NULL ? gen_build(path, 1, &o, &v) : NULL;
    unsigned errors = v.errors + v.site_errors;
    char names[512];
    int status = 0;

    printf("ftpsgate: %s: %u error%s, %u warning%s: ", path, errors, errors == 1 ? "" : "s",
           v.warnings, v.warnings == 1 ? "" : "s");
    if (g == NULL) {
        printf("the configuration cannot serve: fix the errors above\n");
        status = 1;
    } else if (v.degraded > 0) {
        degraded_names(g, names, sizeof(names));
        printf("the configuration can serve; %u site%s degraded (%s): the central certificate "
               "stands in for their own; fix the errors above\n",
               v.degraded, v.degraded == 1 ? "" : "s", names);
        status = 3;
    } else {
        printf("the configuration can serve\n");
    }
    gen_unref(g);
    gen_drain();
    certload_free(certs);
    return status;
}

/* ---- what a load publishes ---- */

static const char *const data_reasons[] = {"address",         "second_connection", "session_reuse",
                                           "tls_handshake",   "fresh_handshake",   "not_waiting",
                                           "port",            "no_application_protocol"};
static const char *const conn_reasons[] = {
    "max_sessions",         "max_sessions_per_ip",  "backend_max_sessions",
    "proxy_header_invalid", "proxy_header_timeout", "proxy_source_untrusted",
    "out_of_memory",        "http_request",         "banned"};
static const char *const tls_reasons[] = {"client_closed",        "connection_error",
                                          "wrong_version_number", "http_request",
                                          "no_shared_cipher",     "unsupported_protocol",
                                          "no_application_protocol", "unrecognized_name"};
static const char *const results[] = {"ok", "failed", "aborted", "refused"};

/* Every series whose labels the configuration knows starts at 0, so that
 * rate() and absent() see it from the start (Prometheus' advice); a removed
 * backend's series go. A backend the generation in force has already has
 * its series: only its certificate's expiry and degraded flag are set, when
 * they changed (10,000 unchanged sites: no look-up under the metrics lock
 * instead of 120,000). Runs on the loading thread: metrics are shared. */
static void publish(const struct gen *g, const struct gen *old)
{
    const struct cfg *cfg = g->cfg;
    const struct certplan *p = tlsctx_plan(g->tls);

    for (size_t i = 0; old != NULL && i < old->cfg->n_backends; i++)
        if (cfg_backend_index(cfg, old->cfg->backends[i].name) < 0)
            metrics_drop(old->cfg->backends[i].name);
    for (size_t i = 0; i < PX_NELEM(data_reasons); i++)
        metrics_add(M_DATA_REFUSED, data_reasons[i], NULL, 0);
    for (size_t i = 0; i < PX_NELEM(conn_reasons); i++)
        metrics_add(M_CONN_REFUSED, conn_reasons[i], NULL, 0);
    for (size_t i = 0; i < PX_NELEM(tls_reasons); i++)
        metrics_add(M_TLS_FAILURES, tls_reasons[i], NULL, 0);
    metrics_add(M_DATA_MATCHED, NULL, NULL, 0);
    metrics_add(M_RELOADS, "ok", NULL, 0);
    metrics_add(M_RELOADS, "failed", NULL, 0);
    metrics_set(M_CERT_EXPIRY, "(central)", NULL, (int64_t)certplan_not_after(p, -1));
    metrics_set(M_SITES_DEGRADED, NULL, NULL, (int64_t)p->degraded);
    for (size_t b = 0; b < cfg->n_backends; b++) {
        const char *name = cfg->backends[b].name;
        int was = old != NULL ? cfg_backend_index(old->cfg, name) : -1;

        if (was >= 0) { /* its series exist: only values that may differ */
            const struct certplan *op = tlsctx_plan(old->tls);

            if (certplan_not_after(op, was) != certplan_not_after(p, (int)b))
                metrics_set(M_CERT_EXPIRY, name, NULL, (int64_t)certplan_not_after(p, (int)b));
            if (op->sites[was].degraded != p->sites[b].degraded)
                metrics_set(M_SITE_DEGRADED, name, NULL, p->sites[b].degraded ? 1 : 0);
            continue;
        }
        metrics_add(M_SESSIONS_TOTAL, name, NULL, 0);
        metrics_add(M_BACKEND_SESSIONS_ACTIVE, name, NULL, 0);
        metrics_add(M_LOGINS_FAILED, name, NULL, 0);
        metrics_add(M_BACKEND_FAILURES, name, NULL, 0);
        metrics_add(M_BYTES, name, "download", 0);
        metrics_add(M_BYTES, name, "upload", 0);
        for (size_t i = 0; i < PX_NELEM(results); i++)
            metrics_add(M_TRANSFERS, name, results[i], 0);
        metrics_set(M_CERT_EXPIRY, name, NULL, (int64_t)certplan_not_after(p, (int)b));
        metrics_set(M_SITE_DEGRADED, name, NULL, p->sites[b].degraded ? 1 : 0);
    }
}

static void log_verdict(const struct gen *g, const struct gen_verdict *v)
{
    char e[24], w[24], d[24], names[512];

    if (v->site_errors > 0 || v->warnings > 0)
        LOG_WARN(NULL, "certificates_checked", "errors", log_u64(e, v->site_errors), "warnings",
                 log_u64(w, v->warnings), NULL);
    if (g != NULL && v->degraded > 0) {
        degraded_names(g, names, sizeof(names));
        LOG_ERROR(NULL, "sites_degraded", "sites", log_u64(d, v->degraded), "names", names, "msg",
                  "served with the central certificate for the names their own cannot serve",
                  NULL);
    }
}

/* Loads r->path: the generation, or NULL after logging why. Any thread.
 * The new log level and format apply from its own lines on. */
static struct gen *load(struct reload *r, const struct gen *old, bool recheck)
{
    struct lines lines = {NULL, 0, 0};
    struct gen_opts o = {.workers = r->n,
                         .now = time(NULL),
                         .recheck = recheck,
                         .certs = r->certs,
                         .out = keep_line,
                         .arg = &lines};
    struct gen_verdict v;
    struct gen *g = gen_build(r->path, r->next_id, &o, &v);

    if (g != NULL)
        log_setup(g->cfg->log_level, g->cfg->log_format);
    log_lines(&lines);
    log_verdict(g, &v);
    if (g != NULL)
        publish(g, old);
    return g;
}

struct gen *reload_first(struct reload *r, const char *path)
{
    struct gen *g;

    r->path = path;
    r->next_id = 1;
    r->certs = certload_new();
    if (r->certs == NULL)
        return NULL;
    g = load(r, NULL, false);
    if (g == NULL) {
        LOG_ERROR(NULL, "config_invalid", "config", path, NULL);
        return NULL;
    }
    r->next_id++;
    return g;
}

/* ---- later loads, off the loop ---- */

static void watch_files(struct reload *r, struct watch_names *set);
static struct watch_names *names_of(const struct gen *g);
static void on_done(uv_work_t *w, int status);

static void on_work(uv_work_t *w)
{
    struct reload *r = w->data;

    loader_background(); /* libuv's pool runs nothing but loads here */
    r->result = load(r, r->srv[0].gen, r->recheck);
    r->result_names = r->result != NULL ? names_of(r->result) : NULL;
    if (r->result != NULL)
        health_sync(r->result->cfg);
}

static void start(struct reload *r, const char *why, bool recheck)
{
    if (r->busy) { /* after this one: once, with the last trigger */
        r->queued = why;
        r->queued_recheck = r->queued_recheck || recheck;
        return;
    }
    r->busy = true;
    r->why = why;
    r->recheck = recheck;
    r->work.data = r;
    if (uv_queue_work(r->loop, &r->work, on_work, on_done) != 0) {
        r->busy = false;
        LOG_ERROR(NULL, "reload_failed", "trigger", why, "msg", "cannot start a loading thread",
                  NULL);
    }
}

static void on_done(uv_work_t *w, int status)
{
    struct reload *r = w->data;
    struct gen *g = r->result;
    struct watch_names *names = r->result_names;
    char id[24];

    r->busy = false;
    r->result = NULL;
    r->result_names = NULL;
    if (status == UV_ECANCELED || r->stopped) {
        gen_unref(g);
        watch_names_free(names);
        return;
    }
    if (g == NULL) {
        metrics_add(M_RELOADS, "failed", NULL, 1);
        LOG_ERROR(NULL, "reload_failed", "trigger", r->why, "config", r->path, "msg",
                  "the configuration in force stays", NULL);
    } else {
        r->next_id++;
        metrics_add(M_RELOADS, "ok", NULL, 1);
        if (g->cfg->workers != r->n)
            LOG_WARN(NULL, "reload", "msg",
                     "a new number of workers takes effect at the next start", NULL);
        if (server_apply(&r->srv[0], g) != 0)
            LOG_ERROR(NULL, "reload_partial", "msg", "a new listener could not be opened", NULL);
        for (unsigned i = 1; i < r->n; i++)
            server_post_apply(&r->srv[i], g);
        LOG_INFO(NULL, "reloaded", "trigger", r->why, "config", r->path, "generation",
                 log_u64(id, g->id), NULL);
        gen_unref(g);
        watch_files(r, names);
        names = NULL;
    }
    watch_names_free(names);
    if (r->queued != NULL) {
        const char *why = r->queued;
        bool recheck = r->queued_recheck;

        r->queued = NULL;
        r->queued_recheck = false;
        start(r, why, recheck);
    }
}

void reload_request(struct reload *r, const char *why)
{
    if (!r->stopped)
        start(r, why, false);
}

static void on_files_changed(void *arg) { reload_request(arg, "files changed"); }

static void on_daily(uv_timer_t *t)
{
    struct reload *r = t->data;

    if (!r->stopped)
        start(r, "daily check", true);
}

/* The files g names: every certificate and key, and the include patterns
 * (a site file added, changed or removed). Any thread. */
static struct watch_names *names_of(const struct gen *g)
{
    const struct certplan *p = tlsctx_plan(g->tls);
    struct watch_names *set;
    const char **paths;
    size_t n = 0, cap = 2 * (p->n_central + 1);

    for (size_t b = 0; b < p->n_sites; b++)
        cap += 2 * p->sites[b].n;
    paths = malloc(cap * sizeof(*paths));
    if (paths == NULL)
        return NULL;
    for (unsigned i = 0; i < p->n_central; i++) {
        paths[n++] = p->central[i]->file;
        paths[n++] = p->central[i]->key_file;
    }
    for (size_t b = 0; b < p->n_sites; b++)
        for (unsigned i = 0; i < p->sites[b].n; i++) {
            paths[n++] = p->sites[b].certs[i]->file;
            paths[n++] = p->sites[b].certs[i]->key_file;
        }
    set = watch_names_new(paths, n, (const char *const *)g->cfg->includes, g->cfg->n_includes);
    free(paths);
    return set;
}

/* Watches set (taken over; NULL: the files of the generation in force). */
static void watch_files(struct reload *r, struct watch_names *set)
{
    if (set == NULL)
        set = names_of(r->srv[0].gen);
    if (r->watch == NULL)
        r->watch = watch_new(r->loop, WATCH_DEBOUNCE_MS, on_files_changed, r);
    watch_set(r->watch, set);
}

void reload_arm(struct reload *r)
{
    uv_timer_init(r->loop, &r->daily);
    r->daily.data = r;
    r->has_daily = true;
    uv_timer_start(&r->daily, on_daily, DAILY_MS, DAILY_MS);
    watch_files(r, NULL);
}

void reload_stop(struct reload *r)
{
    r->stopped = true;
    if (r->has_daily && !uv_is_closing((uv_handle_t *)&r->daily))
        uv_close((uv_handle_t *)&r->daily, NULL);
    watch_stop(r->watch);
    r->watch = NULL;
    if (r->busy)
        (void)uv_cancel((uv_req_t *)&r->work);
}

void reload_free(struct reload *r)
{
    certload_free(r->certs);
    r->certs = NULL;
}
