/* fuzz_cfg.c - the configuration parser on arbitrary text. Invariants: every
 * report names the file and a line; a refusal comes with a report and a
 * success without one; inih and cfg.c's line reader agree on every line; and
 * a returned struct cfg holds what the checks promise. */
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include "cfg.h"
#include "px.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* "fuzz.ini:LINE: ", then anything but cfg.c's report of inih and its line
 * reader disagreeing. */
static void count_report(void *arg, const char *msg)
{
    const char *rest = msg + 9;

    PX_ASSERT(strncmp(msg, "fuzz.ini:", 9) == 0);
    while (*rest >= '0' && *rest <= '9')
        rest++;
    PX_ASSERT(rest > msg + 9 && strncmp(rest, ": ", 2) == 0);
    PX_ASSERT(strcmp(rest + 2, "inih could not parse this line as expected") != 0);
    (*(unsigned *)arg)++;
}

static void check(const struct cfg *c)
{
    size_t i, j;

    PX_ASSERT(c->certificate != NULL && c->private_key != NULL);
    PX_ASSERT(c->n_listen + c->n_listen_implicit > 0);
    PX_ASSERT(c->passive_min >= 1024 && c->passive_min <= c->passive_max);
    PX_ASSERT(c->default_backend >= -1 && c->default_backend < (int)c->n_backends);
    PX_ASSERT(c->proxy_protocol == CFG_PP_NO || c->n_proxy_protocol_from > 0);
    PX_ASSERT(c->workers >= 1 && c->workers <= 64);
    for (i = 0; i < c->n_backends; i++) {
        const struct cfg_backend *b = &c->backends[i];

        PX_ASSERT(cfg_backend_index(c, b->name) == (int)i);
        PX_ASSERT(b->address.sa.ss_family == AF_INET || b->address.sa.ss_family == AF_INET6);
        PX_ASSERT((b->certificate == NULL) == (b->private_key == NULL));
        for (j = 0; j < b->n_hostnames; j++)
            PX_ASSERT(strpbrk(b->hostnames[j], "ABCDEFGHIJKLMNOPQRSTUVWXYZ ,;") == NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct cfg *c = NULL;
    unsigned reports = 0;
    int rc = cfg_parse((const char *)data, size, "fuzz.ini", count_report, &reports, &c);

    PX_ASSERT(rc == 0 || rc == PX_EINVAL || rc == PX_ENOMEM);
    PX_ASSERT((rc == 0) == (c != NULL));
    PX_ASSERT(rc != 0 || reports == 0);
    PX_ASSERT(rc != PX_EINVAL || reports > 0);
    if (c != NULL)
        check(c);
    cfg_free(c);
    return 0;
}
