/* route.c - which backend a login goes to. Matches the names a client gives
 * (USER host|user, HOST, SNI) against the configured hostnames, and applies
 * DESIGN.md's rule that every name given must agree before any backend is
 * contacted. Pure: reads a struct cfg, keeps nothing. */
#include "route.h"

#include <string.h>

#include "cfg.h"
#include "px.h"

static char to_lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* pattern (lower-case) against n bytes of name, in any case. */
static bool equal_lower(const char *pattern, const char *name, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (pattern[i] != to_lower(name[i]))
            return false;
    }
    return true;
}

static bool is_wildcard(const char *pattern)
{
    return pattern[0] == '*' && pattern[1] == '.';
}

bool route_host_match(const char *pattern, const char *name, size_t len)
{
    size_t plen = strlen(pattern), label;

    /* Untrusted: name comes from the client. */
    if (len > 0 && name[len - 1] == '.')
        len--;
    if (len == 0)
        return false;
    if (!is_wildcard(pattern))
        return plen == len && equal_lower(pattern, name, len);
    /* "*.b.c": one non-empty label, then ".b.c" exactly. */
    plen--;
    if (len <= plen)
        return false;
    label = len - plen;
    return memchr(name, '.', label) == NULL && equal_lower(pattern + 1, name + label, plen);
}

/* First backend with a matching hostname of the given kind, or -1. */
static int find_kind(const struct cfg *cfg, const char *name, size_t len, bool wildcard)
{
    size_t b, h;

    for (b = 0; b < cfg->n_backends; b++) {
        const struct cfg_backend *be = &cfg->backends[b];

        for (h = 0; h < be->n_hostnames; h++) {
            if (is_wildcard(be->hostnames[h]) == wildcard &&
                route_host_match(be->hostnames[h], name, len))
                return (int)b;
        }
    }
    return -1;
}

int route_find(const struct cfg *cfg, const char *name, size_t len)
{
    int b = find_kind(cfg, name, len, false);

    return b >= 0 ? b : find_kind(cfg, name, len, true);
}

enum route_status route_decide(const struct cfg *cfg, const struct route_query *q, int *backend)
{
    int b;

    PX_ASSERT(q->host_site < (int)cfg->n_backends && q->sni_site < (int)cfg->n_backends);
    *backend = -1;
    /* An SNI name that matches a site must agree with a name that chooses,
     * even where route_by_sni = no keeps it from choosing itself. */
    if (q->user_host != NULL) {
        b = route_find(cfg, q->user_host, q->user_host_len);
        if (b < 0)
            return ROUTE_UNKNOWN_HOST;
        if (q->host_site >= 0 && q->host_site != b)
            return ROUTE_CONFLICT_HOST;
        if (q->sni_site >= 0 && q->sni_site != b)
            return ROUTE_CONFLICT_SNI;
    } else if (q->host_site >= 0) {
        b = q->host_site;
        if (q->sni_site >= 0 && q->sni_site != b)
            return ROUTE_CONFLICT_SNI;
    } else if (q->sni_site >= 0 && cfg->route_by_sni) {
        b = q->sni_site;
    } else if (cfg->default_backend >= 0) {
        b = cfg->default_backend; /* no name given, so nothing to disagree with */
    } else {
        return ROUTE_NO_SITE;
    }
    *backend = b;
    return ROUTE_OK;
}

const char *route_status_name(enum route_status s)
{
    switch (s) {
    case ROUTE_OK:
        return "ok";
    case ROUTE_UNKNOWN_HOST:
        return "unknown_host";
    case ROUTE_CONFLICT_HOST:
        return "conflict_host";
    case ROUTE_CONFLICT_SNI:
        return "conflict_sni";
    case ROUTE_NO_SITE:
        return "no_site";
    }
    return "invalid";
}
