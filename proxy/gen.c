/* gen.c - load, share and release a configuration generation (see gen.h). */
#include "gen.h"

#include <stdlib.h>

#include "cfg.h"
#include "tlsctx.h"

struct gen *gen_load(const char *path, uint64_t id, gen_report_fn *report, void *arg)
{
    struct gen *g;
    struct cfg *cfg = NULL;

    if (cfg_load(path, report, arg, &cfg) != 0)
        return NULL;
    g = calloc(1, sizeof(*g));
    if (g == NULL) {
        cfg_free(cfg);
        return NULL;
    }
    g->cfg = cfg;
    g->id = id;
    g->tls = tlsctx_new(cfg, report, arg);
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

void gen_unref(struct gen *g)
{
    if (g == NULL || atomic_fetch_sub(&g->refs, 1) != 1)
        return;
    tlsctx_free(g->tls);
    cfg_free(g->cfg);
    free(g);
}
