/* gen.h - a generation: one loaded configuration with its TLS contexts and
 * certificates. The workers point new sessions at the current generation;
 * each session holds a reference to the one it started under, so a reload
 * never changes the backend or certificate of a running session. Reference
 * counts are atomic: workers share generations.
 *
 * gen_build() is the one way a configuration is loaded: -t, start-up, every
 * reload and the daily check run it, so they run the same checks and reach
 * the same verdict (DESIGN.md, "Certificates"). It does file I/O and
 * OpenSSL work only: reloads run it on a thread of their own. */
#ifndef GEN_H
#define GEN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "certcheck.h"

struct cfg;
struct tlsctx;
struct certload;

struct gen {
    atomic_uint refs;
    uint64_t id;        /* 1 for the first load, +1 per successful reload */
    struct cfg *cfg;    /* owned */
    struct tlsctx *tls; /* owned */
};

/* How a load went. */
struct gen_verdict {
    unsigned errors;      /* configuration errors: it cannot serve */
    unsigned site_errors; /* findings that degrade a site */
    unsigned warnings;
    unsigned degraded;    /* sites served (partly) with the central certificate */
};

struct gen_opts {
    unsigned workers;        /* TLS contexts to make: one per worker (0: as configured) */
    time_t now;              /* certificates are judged as of now */
    bool report;             /* -t: describe every certificate and name too */
    bool recheck;            /* verify chains again though nothing changed (daily) */
    struct certload *certs;  /* the certificate cache (used by one thread at a time) */
    certcheck_line_fn *out;  /* every line and finding, configuration errors included */
    void *arg;
};

/* Reads path and loads and checks everything it names. Returns the
 * generation (one reference), or NULL when it cannot serve (configuration
 * errors, each sent to o->out; NULL with no error: out of memory). *v gets
 * the counts either way. */
struct gen *gen_build(const char *path, uint64_t id, const struct gen_opts *o,
                      struct gen_verdict *v);
struct gen *gen_ref(struct gen *g);
/* Drops a reference; the last one frees the generation on a thread of its
 * own, never on the caller's event loop. */
void gen_unref(struct gen *g);
/* Waits until every generation let go has been freed (before exit). */
void gen_drain(void);

#endif
