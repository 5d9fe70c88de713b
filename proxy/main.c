/* main.c - the command line, start-up, signals and the event loop.
 *
 * ftpsgate [-c FILE] [-t] [--version] [-h]: see DESIGN.md. Exit 0 on a clean
 * shutdown, 1 on a configuration error, 2 on bad usage. */
#include <getopt.h>
#include <malloc.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "certcheck.h"
#include "cfg.h"
#include "gen.h"
#include "log.h"
#include "metrics.h"
#include "privdrop.h"
#include "px.h"
#include "server.h"
#include "tlsctx.h"
#include "watch.h"

#define DEFAULT_CONFIG "/etc/ftpsgate/ftpsgate.ini"

#define WATCH_DEBOUNCE_MS 1500      /* a key and its certificate are written in turn */
#define DAILY_MS (24u * 3600 * 1000) /* certificate problems are logged again daily */

struct app {
    const char *path;
    struct server *srv;   /* [n]: worker 0 runs on the main thread's loop */
    uv_loop_t *loops;     /* [n]: the other workers' loops ([0] unused) */
    uv_thread_t *threads; /* [n] ([0] unused) */
    unsigned n;
    uint64_t next_gen;
    unsigned errors;
    struct watch *watch; /* the certificate and key files in force */
    uv_timer_t daily;
    uv_signal_t sigs[3];
};

static void watch_files(struct app *a);

static void usage(FILE *f)
{
    fprintf(f, "usage: ftpsgate [-c FILE] [-t] [--version] [-h]\n"
               "  -c, --config FILE  configuration file (default " DEFAULT_CONFIG ")\n"
               "  -t, --check        check the configuration and every certificate, print a\n"
               "                     report, exit 0 when it can serve, 1 when not\n"
               "  --version          print the version and the OpenSSL and libuv versions\n"
               "  -h, --help         this text\n");
}

/* Problems found while loading, printed for -t and logged otherwise. */
static void report_check(void *arg, const char *msg)
{
    struct app *a = arg;

    a->errors++;
    printf("error: %s\n", msg);
}

static void report_log(void *arg, const char *msg)
{
    struct app *a = arg;

    a->errors++;
    LOG_ERROR(NULL, "config_error", "msg", msg, NULL);
}

static void print_line(void *arg, bool finding, bool error, const char *line)
{
    (void)arg;
    (void)finding;
    (void)error;
    printf("%s\n", line);
}

static void log_line(void *arg, bool finding, bool error, const char *line)
{
    (void)arg;
    if (finding)
        log_ev(error ? CFG_LOG_ERROR : CFG_LOG_WARN, NULL, "certificate_check", "msg", line,
               NULL);
}

/* -t: the configuration, then every certificate, then the contexts. */
static int check(struct app *a)
{
    struct certcheck_result res = {0, 0};
    struct cfg *cfg = NULL;
    struct tlsctx *tls;

    if (cfg_load(a->path, report_check, a, &cfg) == 0) {
        res = certcheck_run(cfg, time(NULL), true, print_line, a);
        if (res.errors == 0) { /* what OpenSSL itself refuses (e.g. tls_ciphers) */
            tls = tlsctx_new(cfg, report_check, a);
            tlsctx_free(tls);
        }
        cfg_free(cfg);
    }
    res.errors += a->errors;
    printf("ftpsgate: %s: %u error%s, %u warning%s: %s\n", a->path, res.errors,
           res.errors == 1 ? "" : "s", res.warnings, res.warnings == 1 ? "" : "s",
           res.errors == 0 ? "the configuration can serve"
                           : "the configuration cannot serve: fix the errors above");
    return res.errors == 0 ? 0 : 1;
}

/* Start-up, reload and the daily check: problems a site can be served with
 * (expired, a name not covered...) are logged, and every other site serves. */
static void check_certificates(struct gen *g)
{
    struct certcheck_result res = certcheck_run(g->cfg, time(NULL), false, log_line, NULL);
    char e[24], w[24];

    metrics_clear(M_CERT_EXPIRY); /* sites a reload removed go */
    metrics_set(M_CERT_EXPIRY, "(central)", NULL, (int64_t)certcheck_not_after(g->cfg, -1));
    for (size_t i = 0; i < g->cfg->n_backends; i++)
        metrics_set(M_CERT_EXPIRY, g->cfg->backends[i].name, NULL,
                    (int64_t)certcheck_not_after(g->cfg, (int)i));

    if (res.errors > 0 || res.warnings > 0)
        LOG_WARN(NULL, "certificates_checked", "errors", log_u64(e, res.errors), "warnings",
                 log_u64(w, res.warnings), NULL);
}

/* SIGHUP, or a certificate file changed: the new generation takes over for
 * new sessions, or, when it cannot be loaded, the old one stays. */
static void reload(struct app *a, const char *why)
{
    struct gen *g;
    char id[24];

    a->errors = 0;
    g = gen_load(a->path, a->next_gen, report_log, a);
    if (g == NULL) {
        metrics_add(M_RELOADS, "failed", NULL, 1);
        LOG_ERROR(NULL, "reload_failed", "trigger", why, "config", a->path, "msg",
                  "the configuration in force stays", NULL);
        return;
    }
    metrics_add(M_RELOADS, "ok", NULL, 1);
    a->next_gen++;
    log_setup(g->cfg->log_level, g->cfg->log_format);
    check_certificates(g);
    if (g->cfg->workers != a->n)
        LOG_WARN(NULL, "reload", "msg", "a new number of workers takes effect at the next start",
                 NULL);
    if (server_apply(&a->srv[0], g) != 0)
        LOG_ERROR(NULL, "reload_partial", "msg", "a new listener could not be opened", NULL);
    for (unsigned i = 1; i < a->n; i++)
        server_post_apply(&a->srv[i], g);
    LOG_INFO(NULL, "reloaded", "trigger", why, "config", a->path, "generation", log_u64(id, g->id),
             NULL);
    gen_unref(g);
    watch_files(a);
}

static void on_files_changed(void *arg) { reload(arg, "certificate files changed"); }

static void watch_files(struct app *a)
{
    const struct cfg *cfg = a->srv[0].gen->cfg;
    const char *paths[2 + 2 * 64];
    size_t n = 0;

    paths[n++] = cfg->certificate;
    paths[n++] = cfg->private_key;
    for (size_t i = 0; i < cfg->n_backends && n + 2 <= PX_NELEM(paths); i++) {
        if (cfg->backends[i].certificate == NULL)
            continue;
        paths[n++] = cfg->backends[i].certificate;
        paths[n++] = cfg->backends[i].private_key;
    }
    watch_stop(a->watch);
    a->watch = watch_start(a->srv[0].loop, paths, n, WATCH_DEBOUNCE_MS, on_files_changed, a);
}

static void on_daily(uv_timer_t *t)
{
    struct app *a = t->data;

    check_certificates(a->srv[0].gen);
}

/* Worker 0 stopped and its last session is gone: the main loop's own handles
 * close, so that uv_run returns; the other workers end on their own. */
static void on_idle(struct server *srv)
{
    struct app *a = srv->data;

    for (size_t i = 0; i < 3; i++)
        if (!uv_is_closing((uv_handle_t *)&a->sigs[i]))
            uv_close((uv_handle_t *)&a->sigs[i], NULL);
    if (!uv_is_closing((uv_handle_t *)&a->daily))
        uv_close((uv_handle_t *)&a->daily, NULL);
    watch_stop(a->watch);
    a->watch = NULL;
    metrics_stop();
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct app *a = h->data;

    if (a->n == 0 || a->srv[0].gen == NULL)
        return; /* still starting: the loop runs only once the workers exist */

    if (signum == SIGHUP) {
        reload(a, "SIGHUP");
        return;
    }
    if (a->srv[0].stopping) { /* a second TERM/INT: do not wait */
        LOG_INFO(NULL, "stopped", "msg", "second signal: sessions cut", NULL);
        exit(0);
    }
    LOG_INFO(NULL, "signal", "signal", signum == SIGTERM ? "TERM" : "INT", NULL);
    server_stop(&a->srv[0]);
    for (unsigned i = 1; i < a->n; i++)
        server_post_stop(&a->srv[i]);
}

static void worker_main(void *arg)
{
    struct server *srv = arg;

    uv_run(srv->loop, UV_RUN_DEFAULT);
}

/* Every worker binds its listeners now, while root may still be needed. */
static int start_workers(struct app *a, struct gen *g)
{
    unsigned n = g->cfg->workers;
    int rc;

    a->srv = calloc(n, sizeof(*a->srv));
    a->loops = calloc(n, sizeof(*a->loops));
    a->threads = calloc(n, sizeof(*a->threads));
    if (a->srv == NULL || a->loops == NULL || a->threads == NULL)
        return UV_ENOMEM;
    a->n = n;
    for (unsigned i = 0; i < n; i++) {
        uv_loop_t *loop = i == 0 ? uv_default_loop() : &a->loops[i];

        if (i > 0 && uv_loop_init(loop) != 0)
            return UV_ENOMEM;
        a->srv[i].data = a;
        rc = server_start(&a->srv[i], loop, g, i, n);
        if (rc == 0 && i > 0)
            rc = server_enable_wake(&a->srv[i]);
        if (rc != 0)
            return rc;
    }
    a->srv[0].on_idle = on_idle;
    return 0;
}

/* After the loops ended: everything goes back, so that a leak checker
 * sees only real leaks. */
static void finish(struct app *a)
{
    for (unsigned i = 0; i < a->n; i++) {
        uv_loop_t *loop = a->srv[i].loop;

        server_free(&a->srv[i]);
        uv_run(loop, UV_RUN_NOWAIT); /* close callbacks of the last handles */
        if (i > 0)
            uv_loop_close(loop);
    }
    uv_loop_close(uv_default_loop());
    metrics_free();
    free(a->srv);
    free(a->loops);
    free(a->threads);
}

static int run(struct app *a)
{
    static const int signums[3] = {SIGHUP, SIGTERM, SIGINT};
    uv_loop_t *loop = uv_default_loop();
    const struct cfg *cfg;
    struct gen *g;
    char nw[24];
    int rc;

    /* Transfer buffers are large (xfer.c) and short-lived. A fixed mmap
     * threshold keeps each in its own mapping, returned whole when the
     * transfer ends: glibc's sliding threshold would move them into the heap,
     * where fragmentation makes the resident size creep under load. */
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    g = gen_load(a->path, 1, report_log, a);
    if (g == NULL) {
        LOG_ERROR(NULL, "config_invalid", "config", a->path, NULL);
        return 1;
    }
    a->next_gen = 2;
    log_setup(g->cfg->log_level, g->cfg->log_format);
    check_certificates(g);
    signal(SIGPIPE, SIG_IGN);
    /* Signals first: a SIGHUP or SIGTERM during start-up must not kill us. */
    for (size_t i = 0; i < 3; i++) {
        uv_signal_init(loop, &a->sigs[i]);
        a->sigs[i].data = a;
        uv_signal_start(&a->sigs[i], on_signal, signums[i]);
    }
    rc = start_workers(a, g);
    gen_unref(g);
    if (rc != 0)
        return 1;
    cfg = a->srv[0].gen->cfg;
    if (cfg->has_metrics_listen) {
        rc = metrics_serve(loop, &cfg->metrics_listen);
        if (rc != 0) {
            LOG_ERROR(NULL, "listen_failed", "listen", cfg->metrics_listen.text, "error",
                      uv_strerror(rc), NULL);
            return 1;
        }
    }
    /* Every socket is bound: root is not needed any more, and no client
     * byte has been read yet. */
    if (privdrop_apply(cfg->user) != 0)
        return 1;
    uv_timer_init(loop, &a->daily);
    a->daily.data = a;
    uv_timer_start(&a->daily, on_daily, DAILY_MS, DAILY_MS);
    watch_files(a);
    for (unsigned i = 1; i < a->n; i++) {
        if (uv_thread_create(&a->threads[i], worker_main, &a->srv[i]) != 0) {
            LOG_ERROR(NULL, "worker_failed", "msg", "cannot start a worker thread", NULL);
            return 1;
        }
    }
    LOG_INFO(NULL, "started", "version", FTPSGATE_VERSION, "config", a->path, "workers",
             log_u64(nw, a->n), NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    for (unsigned i = 1; i < a->n; i++)
        uv_thread_join(&a->threads[i]);
    LOG_INFO(NULL, "stopped", NULL);
    finish(a);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check", no_argument, NULL, 't'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct app a;
    bool check_only = false;
    int c;

    memset(&a, 0, sizeof(a));
    a.path = DEFAULT_CONFIG;
    while ((c = getopt_long(argc, argv, "c:th", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            a.path = optarg;
            break;
        case 't':
            check_only = true;
            break;
        case 'V':
            printf("ftpsgate %s (%s, libuv %s)\n", FTPSGATE_VERSION,
                   OpenSSL_version(OPENSSL_VERSION), uv_version_string());
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }
    return check_only ? check(&a) : run(&a);
}
