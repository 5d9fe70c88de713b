/* fuzz_ftp_user.c - the login name: ftp_split_user() with the first byte as
 * the separator, then the host part through route matching and
 * route_decide() against a fixed configuration. */
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "ftp.h"
#include "px.h"
#include "route.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *alpha_names[] = {"ftp.alpha.example", "*.alpha.example"};
static char *beta_names[] = {"beta.example", "x.alpha.example"};
static struct cfg_backend backends[] = {
    {.name = "alpha", .hostnames = alpha_names, .n_hostnames = PX_NELEM(alpha_names)},
    {.name = "beta", .hostnames = beta_names, .n_hostnames = PX_NELEM(beta_names)},
};

static char upper(char c)
{
    return c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
}

/* Matching ignores case and one trailing dot. */
static void check_match(const char *name, size_t len)
{
    char *alt = malloc(len + 1);
    size_t i, b, h;

    PX_ASSERT(alt != NULL);
    for (i = 0; i < len; i++)
        alt[i] = upper(name[i]);
    alt[len] = '.';
    for (b = 0; b < PX_NELEM(backends); b++) {
        for (h = 0; h < backends[b].n_hostnames; h++) {
            const char *pat = backends[b].hostnames[h];
            bool m = route_host_match(pat, name, len);

            PX_ASSERT(route_host_match(pat, alt, len) == m);
            if (len > 0 && name[len - 1] != '.')
                PX_ASSERT(route_host_match(pat, alt, len + 1) == m);
        }
    }
    free(alt);
}

/* route_find() by hash agrees with a scan of every pattern: the first
 * backend with an exact match, else the first with a wildcard match. */
static int scan_find(const char *name, size_t len)
{
    for (int wild = 0; wild < 2; wild++)
        for (size_t b = 0; b < PX_NELEM(backends); b++)
            for (size_t h = 0; h < backends[b].n_hostnames; h++) {
                const char *pat = backends[b].hostnames[h];

                if ((pat[0] == '*') == (wild == 1) && route_host_match(pat, name, len))
                    return (int)b;
            }
    return -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *arg = (const char *)data + 1;
    struct ftp_user_arg u;
    struct cfg cfg;
    struct route_query q;
    size_t len;
    char sep;
    int rc, backend, host_site, found;
    enum route_status st;

    if (size < 2)
        return 0;
    sep = (char)data[0];
    len = size - 1;
    rc = ftp_split_user(arg, len, sep, &u);
    if (rc == PX_EINVAL)
        return 0;
    if (rc == 0) {
        PX_ASSERT(u.host == NULL && u.host_len == 0 && u.user == arg && u.user_len == len);
        return 0;
    }
    PX_ASSERT(rc == 1 && u.host == arg && u.host_len > 0 && u.user_len > 0);
    PX_ASSERT(u.user == u.host + u.host_len + 1 && u.host_len + 1 + u.user_len == len);
    PX_ASSERT(memchr(u.host, sep, u.host_len) == NULL && arg[u.host_len] == sep);
    check_match(u.host, u.host_len);

    memset(&cfg, 0, sizeof cfg);
    cfg.backends = backends;
    cfg.n_backends = PX_NELEM(backends);
    cfg.default_backend = -1;
    cfg.route_by_sni = true;
    PX_ASSERT(cfg_index_hosts(&cfg) == 0);
    found = route_find(&cfg, u.host, u.host_len);
    PX_ASSERT(found == scan_find(u.host, u.host_len));
    PX_ASSERT(found >= -1 && found < (int)PX_NELEM(backends));
    /* Every HOST/SNI combination agrees or conflicts as route.h says. */
    for (host_site = -1; host_site < (int)PX_NELEM(backends); host_site++) {
        q = (struct route_query){u.host, u.host_len, host_site, data[0] % 3 - 1};
        st = route_decide(&cfg, &q, &backend);
        if (found < 0)
            PX_ASSERT(st == ROUTE_UNKNOWN_HOST);
        else if (host_site >= 0 && host_site != found)
            PX_ASSERT(st == ROUTE_CONFLICT_HOST);
        else if (q.sni_site >= 0 && q.sni_site != found)
            PX_ASSERT(st == ROUTE_CONFLICT_SNI);
        else
            PX_ASSERT(st == ROUTE_OK && backend == found);
        PX_ASSERT(st == ROUTE_OK || backend == -1);
    }
    hmap_free(&cfg.hostmap);
    return 0;
}
