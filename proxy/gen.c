/* gen.c - loading, sharing and releasing a generation (see gen.h). */
#include "gen.h"

#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "certload.h"
#include "cfg.h"
#include "loader.h"
#include "tlsctx.h"

struct report {
    const struct gen_opts *o;
    unsigned errors;
};

/* Configuration errors: from the INI file and from OpenSSL's contexts. */
static void on_config_error(void *arg, const char *msg)
{
    struct report *r = arg;

    r->errors++;
    r->o->out(r->o->arg, CERTCHECK_CONFIG, msg);
}

/* The proxy's own outgoing connections (to backends) take their source
 * ports from the kernel's ephemeral range: passive ports inside it can be
 * found taken by them on a busy proxy. */
static void check_passive_range(const struct cfg *cfg, const struct gen_opts *o,
                                struct gen_verdict *v)
{
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    unsigned lo = 0, hi = 0;
    char line[512];

    if (f == NULL)
        return;
    if (fscanf(f, "%u %u", &lo, &hi) != 2 || lo > hi || cfg->passive_max < lo ||
        cfg->passive_min > hi) {
        fclose(f);
        return;
    }
    fclose(f);
    snprintf(line, sizeof(line),
             "warning: passive_ports %u-%u overlaps the ephemeral port range %u-%u "
             "(/proc/sys/net/ipv4/ip_local_port_range), from which the proxy's own connections "
             "to backends take their ports: a busy proxy can find a passive port taken; choose "
             "a range outside it (the default, 61000-61999, is above Linux's usual 32768-60999)",
             (unsigned)cfg->passive_min, (unsigned)cfg->passive_max, lo, hi);
    v->warnings++;
    o->out(o->arg, CERTCHECK_CONFIG_WARNING, line);
}

/* Reloads read the INI file again as the configured user. */
static void check_ini_readable(const char *path, const struct cfg *cfg, struct report *r)
{
    struct loader_user u;
    char why[256], msg[4608];

    loader_user(cfg->user, &u);
    if (!u.set || loader_unreadable_by(&u, path, why, sizeof(why)) == NULL)
        return;
    snprintf(msg, sizeof(msg),
             "%s: not readable by user %s (%s): ftpsgate reads it again as that user at every "
             "reload, which would fail; make it readable by %s",
             path, u.name, why, u.name);
    on_config_error(r, msg);
}

struct gen *gen_build(const char *path, uint64_t id, const struct gen_opts *o,
                      struct gen_verdict *v)
{
    struct report r = {.o = o, .errors = 0};
    struct certcheck_opts co = {.now = o->now, .report = o->report, .out = o->out, .arg = o->arg};
    struct certplan plan;
    struct cfg *cfg = NULL;
    struct gen *g = NULL;
    int rc;

    *v = (struct gen_verdict){0, 0, 0, 0};
    if (loader_read_config(path, on_config_error, &r, &cfg) != 0) {
        v->errors = r.errors;
        return NULL;
    }
    check_ini_readable(path, cfg, &r);
    co.ca_problem = certload_begin(o->certs, cfg->ca_file, o->recheck);
    rc = certcheck_run(cfg, o->certs, &co, &plan);
    certload_end(o->certs);
    v->errors = plan.errors;
    v->site_errors = plan.site_errors;
    v->warnings = plan.warnings;
    v->degraded = plan.degraded;
    v->errors += r.errors;
    check_passive_range(cfg, o, v);
    if (rc != 0 || v->errors > 0) {
        certplan_free(&plan);
        cfg_free(cfg);
        return NULL;
    }
    g = calloc(1, sizeof(*g));
    if (g == NULL) {
        certplan_free(&plan);
        cfg_free(cfg);
        return NULL;
    }
    g->cfg = cfg;
    g->id = id;
    r.errors = 0;
    g->tls = tlsctx_new(cfg, &plan, o->workers != 0 ? o->workers : cfg->workers, on_config_error,
                        &r);
    v->errors += r.errors;
    if (g->tls == NULL) {
        cfg_free(cfg);
        free(g);
        return NULL;
    }
    atomic_init(&g->refs, 1);
    return g;
}

struct gen *gen_ref(struct gen *g)
{
    atomic_fetch_add(&g->refs, 1);
    return g;
}

static void gen_free(struct gen *g)
{
    tlsctx_free(g->tls);
    cfg_free(g->cfg);
    free(g);
}

/* The last reference to a generation goes on whatever loop held it; freeing
 * its contexts and certificates (thousands at hosting scale) would pause that
 * loop for as long, so a thread of its own does it and gives the freed heap
 * back to the kernel (the loading threads' arenas would otherwise keep it). */
static pthread_mutex_t reap_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t reap_cv = PTHREAD_COND_INITIALIZER;
static unsigned reaping;

static void reaped(void)
{
    pthread_mutex_lock(&reap_mu);
    reaping--;
    pthread_cond_broadcast(&reap_cv);
    pthread_mutex_unlock(&reap_mu);
}

static void *reap(void *arg)
{
    loader_background();
    gen_free(arg);
    malloc_trim(0);
    reaped();
    return NULL;
}

void gen_unref(struct gen *g)
{
    pthread_attr_t attr;
    pthread_t t;
    int rc;

    if (g == NULL || atomic_fetch_sub(&g->refs, 1) != 1)
        return;
    pthread_mutex_lock(&reap_mu);
    reaping++;
    pthread_mutex_unlock(&reap_mu);
    rc = pthread_attr_init(&attr);
    if (rc == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        rc = pthread_create(&t, &attr, reap, g);
        pthread_attr_destroy(&attr);
    }
    if (rc != 0) { /* no thread: here, then */
        gen_free(g);
        reaped();
    }
}

void gen_drain(void)
{
    pthread_mutex_lock(&reap_mu);
    while (reaping > 0)
        pthread_cond_wait(&reap_cv, &reap_mu);
    pthread_mutex_unlock(&reap_mu);
}
