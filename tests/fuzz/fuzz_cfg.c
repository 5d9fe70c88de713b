/* fuzz_cfg.c - the configuration parser on arbitrary text. Invariants: every
 * report names the file and a line; a refusal comes with a report and a
 * success without one; inih and cfg.c's line reader agree on every line; and
 * a returned struct cfg holds what the checks promise. */
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include "cfg.h"
#include "route.h"
#include "px.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* "FILE:LINE: " where FILE is one of the names parse_split gives, then
 * anything but cfg.c's report of inih and its line reader disagreeing. */
static void count_report(void *arg, const char *msg)
{
    static const char *const files[] = {"fuzz.ini:", "/f/fuzz.ini:", "/f/sites.d/s.ini:"};
    const char *rest = NULL, *digits;

    for (size_t i = 0; i < PX_NELEM(files) && rest == NULL; i++)
        if (strncmp(msg, files[i], strlen(files[i])) == 0)
            rest = msg + strlen(files[i]);
    PX_ASSERT(rest != NULL);
    digits = rest;
    while (*rest >= '0' && *rest <= '9')
        rest++;
    PX_ASSERT(rest > digits && strncmp(rest, ": ", 2) == 0);
    PX_ASSERT(strcmp(rest + 2, "inih could not parse this line as expected") != 0);
    (*(unsigned *)arg)++;
}

static void check(const struct cfg *c)
{
    size_t i, j;

    PX_ASSERT(c->certs.n_cert > 0 && c->certs.n_cert == c->certs.n_key);
    PX_ASSERT(c->n_listen + c->n_listen_implicit > 0);
    PX_ASSERT(c->passive_min >= 1024 && c->passive_min <= c->passive_max);
    PX_ASSERT(c->default_backend >= -1 && c->default_backend < (int)c->n_backends);
    PX_ASSERT(c->proxy_protocol == CFG_PP_NO || c->n_proxy_protocol_from > 0);
    PX_ASSERT(c->workers >= 1 && c->workers <= 64);
    for (i = 0; i < c->n_backends; i++) {
        const struct cfg_backend *b = &c->backends[i];

        PX_ASSERT(cfg_backend_index(c, b->name) == (int)i);
        PX_ASSERT(b->n_address >= 1 && b->n_address <= CFG_ADDRESS_MAX);
        for (j = 0; j < b->n_address; j++)
            PX_ASSERT(b->address[j].sa.ss_family == AF_INET ||
                      b->address[j].sa.ss_family == AF_INET6);
        PX_ASSERT(b->certs.n_cert == b->certs.n_key);
        for (j = 0; j < b->n_hostnames; j++) {
            int site = -1, host = -1;

            PX_ASSERT(strpbrk(b->hostnames[j], "ABCDEFGHIJKLMNOPQRSTUVWXYZ ,;") == NULL);
            /* Every configured name routes to its own backend (wildcards by a probe). */
            if (b->hostnames[j][0] != '*')
                PX_ASSERT(route_lookup(c, b->hostnames[j], strlen(b->hostnames[j]), &site,
                                       &host) &&
                          site == (int)i && host == (int)j);
        }
    }
}

/* The input is a main file; after a "\n\0\0\n" separator, the rest is an
 * included one (the sites.d path: [backend:NAME] sections only, relative
 * paths joined to its folder). */
static int parse_split(const uint8_t *data, size_t size, unsigned *reports, struct cfg **c)
{
    static const char sep[] = "\n\0\0\n";
    const char *text = (const char *)data, *cut = NULL;
    struct cfg_parser *p;

    for (size_t i = 0; i + 4 <= size && cut == NULL; i++)
        if (memcmp(text + i, sep, 4) == 0)
            cut = text + i;
    if (cut == NULL)
        return cfg_parse(text, size, "fuzz.ini", count_report, reports, c);
    p = cfg_begin(count_report, reports, NULL, NULL);
    if (p == NULL)
        return PX_ENOMEM;
    cfg_feed(p, text, (size_t)(cut - text), "/f/fuzz.ini", "/f", true);
    cfg_feed(p, cut + 4, size - (size_t)(cut - text) - 4, "/f/sites.d/s.ini", "/f/sites.d", false);
    return cfg_end(p, c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct cfg *c = NULL;
    unsigned reports = 0;
    int rc = parse_split(data, size, &reports, &c);

    PX_ASSERT(rc == 0 || rc == PX_EINVAL || rc == PX_ENOMEM);
    PX_ASSERT((rc == 0) == (c != NULL));
    PX_ASSERT(rc != 0 || reports == 0);
    PX_ASSERT(rc != PX_EINVAL || reports > 0);
    if (c != NULL)
        check(c);
    cfg_free(c);
    return 0;
}
