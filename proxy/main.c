/* main.c - the command line, start-up, signals and the event loop.
 *
 * ftpsgate [-c FILE] [-t] [--version] [-h]: see DESIGN.md. Exit 0 on a clean
 * shutdown, 1 on a configuration error, 2 on bad usage. */
#include <getopt.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "cfg.h"
#include "gen.h"
#include "log.h"
#include "server.h"

#define DEFAULT_CONFIG "/etc/ftpsgate/ftpsgate.ini"

struct app {
    const char *path;
    struct server srv;
    uint64_t next_gen;
    unsigned errors;
};

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

static int check(struct app *a)
{
    struct gen *g = gen_load(a->path, 1, report_check, a);

    if (g == NULL) {
        printf("%s: configuration NOT ok (%u error%s)\n", a->path, a->errors,
               a->errors == 1 ? "" : "s");
        return 1;
    }
    printf("%s: configuration ok: %zu backend%s, %zu listener%s\n", a->path,
           g->cfg->n_backends, g->cfg->n_backends == 1 ? "" : "s",
           g->cfg->n_listen + g->cfg->n_listen_implicit,
           g->cfg->n_listen + g->cfg->n_listen_implicit == 1 ? "" : "s");
    gen_unref(g);
    return 0;
}

static void reload(struct app *a)
{
    struct gen *g;
    char id[24];

    a->errors = 0;
    g = gen_load(a->path, a->next_gen, report_log, a);
    if (g == NULL) {
        LOG_ERROR(NULL, "reload_failed", "config", a->path, "msg",
                  "the configuration in force stays", NULL);
        return;
    }
    a->next_gen++;
    log_setup(g->cfg->log_level, g->cfg->log_format);
    server_set_gen(&a->srv, g);
    LOG_INFO(NULL, "reloaded", "config", a->path, "generation", log_u64(id, g->id), NULL);
    gen_unref(g);
}

static void on_idle(struct server *srv)
{
    for (size_t i = 0; i < 3; i++)
        if (!uv_is_closing((uv_handle_t *)&srv->sigs[i]))
            uv_close((uv_handle_t *)&srv->sigs[i], NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct app *a = h->data;

    if (signum == SIGHUP) {
        reload(a);
        return;
    }
    if (a->srv.stopping) { /* a second TERM/INT: do not wait */
        uv_stop(h->loop);
        return;
    }
    LOG_INFO(NULL, "signal", "signal", signum == SIGTERM ? "TERM" : "INT", NULL);
    server_stop(&a->srv);
}

static int run(struct app *a)
{
    static const int signums[3] = {SIGHUP, SIGTERM, SIGINT};
    uv_loop_t *loop = uv_default_loop();
    struct gen *g;
    int rc;

    g = gen_load(a->path, 1, report_log, a);
    if (g == NULL) {
        LOG_ERROR(NULL, "config_invalid", "config", a->path, NULL);
        return 1;
    }
    a->next_gen = 2;
    log_setup(g->cfg->log_level, g->cfg->log_format);
    signal(SIGPIPE, SIG_IGN);
    rc = server_start(&a->srv, loop, g);
    gen_unref(g);
    if (rc != 0)
        return 1;
    a->srv.on_idle = on_idle;
    for (size_t i = 0; i < 3; i++) {
        uv_signal_init(loop, &a->srv.sigs[i]);
        a->srv.sigs[i].data = a;
        uv_signal_start(&a->srv.sigs[i], on_signal, signums[i]);
    }
    LOG_INFO(NULL, "started", "version", FTPSGATE_VERSION, "config", a->path, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    LOG_INFO(NULL, "stopped", NULL);
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
