/* gen.h - a generation: one loaded configuration with its TLS contexts.
 * The server points new sessions at the current generation; each session
 * holds a reference to the one it started under, so a reload never changes
 * the backend or certificate of a running session. Reference counts are
 * atomic: workers share generations. */
#ifndef GEN_H
#define GEN_H

#include <stdatomic.h>
#include <stdint.h>

struct cfg;
struct tlsctx;

struct gen {
    atomic_uint refs;
    uint64_t id;         /* 1 for the first load, +1 per successful reload */
    struct cfg *cfg;     /* owned */
    struct tlsctx *tls;  /* owned */
};

typedef void gen_report_fn(void *arg, const char *msg);

/* Loads path: configuration, then every certificate. NULL after reporting
 * every problem. The result holds one reference. */
struct gen *gen_load(const char *path, uint64_t id, gen_report_fn *report, void *arg);
struct gen *gen_ref(struct gen *g);
void gen_unref(struct gen *g);

#endif
