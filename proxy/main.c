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

#include "cfg.h"
#include "gen.h"
#include "health.h"
#include "log.h"
#include "metrics.h"
#include "privdrop.h"
#include "px.h"
#include "quota.h"
#include "reload.h"
#include "server.h"

#define DEFAULT_CONFIG "/etc/ftpsgate/ftpsgate.ini"

struct app {
    const char *path;
    struct server *srv;   /* [n]: worker 0 runs on the main thread's loop */
    uv_loop_t *loops;     /* [n]: the other workers' loops ([0] unused) */
    uv_thread_t *threads; /* [n] ([0] unused) */
    unsigned n;
    struct reload reload;
    uv_signal_t sigs[3];
    uv_timer_t sweep; /* bans that ran out */
};

#define SWEEP_MS 5000

static void usage(FILE *f)
{
    fprintf(f, "usage: ftpsgate [-c FILE] [-t] [--version] [-h]\n"
               "  -c, --config FILE  configuration file (default " DEFAULT_CONFIG ")\n"
               "  -t, --check        check the configuration and every certificate, print a\n"
               "                     report, exit 0 when it can serve, 1 when not, 3 when it\n"
               "                     can serve but some sites are degraded\n"
               "  --version          print the version and the OpenSSL and libuv versions\n"
               "  -h, --help         this text\n");
}

/* Worker 0 stopped and its last session is gone: the main loop's own handles
 * close, so that uv_run returns; the other workers end on their own. */
static void on_idle(struct server *srv)
{
    struct app *a = srv->data;

    for (size_t i = 0; i < 3; i++)
        if (!uv_is_closing((uv_handle_t *)&a->sigs[i]))
            uv_close((uv_handle_t *)&a->sigs[i], NULL);
    reload_stop(&a->reload);
    health_stop();
    if (!uv_is_closing((uv_handle_t *)&a->sweep))
        uv_close((uv_handle_t *)&a->sweep, NULL);
    metrics_stop();
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct app *a = h->data;

    if (a->n == 0 || a->srv[0].gen == NULL)
        return; /* still starting: the loop runs only once the workers exist */

    if (signum == SIGHUP) {
        reload_request(&a->reload, "SIGHUP");
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

static void on_unbanned(void *arg, const char *who)
{
    (void)arg;
    LOG_INFO(NULL, "unban", "address", who, NULL);
}

static void on_sweep(uv_timer_t *t)
{
    (void)t;
    metrics_set(M_BANS_ACTIVE, NULL, NULL, (int64_t)quota_sweep(on_unbanned, NULL));
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
    reload_free(&a->reload);
    gen_drain();
    metrics_free();
    health_free();
    quota_free();
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
    g = reload_first(&a->reload, a->path);
    if (g == NULL)
        return 1;
    signal(SIGPIPE, SIG_IGN);
    /* Signals first: a SIGHUP or SIGTERM during start-up must not kill us. */
    for (size_t i = 0; i < 3; i++) {
        uv_signal_init(loop, &a->sigs[i]);
        a->sigs[i].data = a;
        uv_signal_start(&a->sigs[i], on_signal, signums[i]);
    }
    health_sync(g->cfg);
    rc = start_workers(a, g);
    gen_unref(g);
    if (rc != 0)
        return 1;
    a->reload.loop = loop;
    a->reload.srv = a->srv;
    a->reload.n = a->n;
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
    reload_arm(&a->reload);
    if (health_start(loop) != 0)
        return 1;
    uv_timer_init(loop, &a->sweep);
    uv_timer_start(&a->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
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
    return check_only ? reload_check(a.path) : run(&a);
}
