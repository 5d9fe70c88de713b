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

static bool is_wildcard(const char *pattern)
{
    return pattern[0] == '*' && pattern[1] == '.';
}

static bool is_label_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
}

/* Whether name[0..len) is one DNS label (letters, digits, hyphen; lower-case). */
static bool is_label(const char *name, size_t len)
{
    if (len == 0 || len > 63)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!is_label_char(name[i]))
            return false;
    return true;
}

/* The client's name lower-cased, without one trailing dot, into dst
 * (ROUTE_NAME_MAX + 1 bytes). Its length, or 0 when it cannot be a name. */
static size_t normalize(const char *name, size_t len, char *dst)
{
    if (len > 0 && name[len - 1] == '.')
        len--;
    if (len == 0 || len > ROUTE_NAME_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        dst[i] = to_lower(name[i]);
    dst[len] = '\0';
    return len;
}

bool route_host_match(const char *pattern, const char *name, size_t len)
{
    char n[ROUTE_NAME_MAX + 1];
    size_t plen = strlen(pattern), label;

    /* Untrusted: name comes from the client. */
    len = normalize(name, len, n);
    if (len == 0)
        return false;
    if (!is_wildcard(pattern))
        return plen == len && memcmp(pattern, n, len) == 0;
    /* "*.b.c": one DNS label, then ".b.c" exactly. */
    plen--;
    if (len <= plen)
        return false;
    label = len - plen;
    return is_label(n, label) && memcmp(pattern + 1, n + label, plen) == 0;
}

bool route_lookup(const struct cfg *cfg, const char *name, size_t len, int *backend, int *host)
{
    char n[ROUTE_NAME_MAX + 2];
    const char *dot;
    uint64_t v;

    /* Untrusted: name comes from the client. An exact name first, then the
     * wildcard "*.rest" for a first label that is a DNS label. */
    len = normalize(name, len, n + 1);
    if (len == 0 || memchr(n + 1, '*', len) != NULL) /* a pattern is no name */
        return false;
    if (!hmap_get(&cfg->hostmap, n + 1, len, &v)) {
        dot = memchr(n + 1, '.', len);
        if (dot == NULL || !is_label(n + 1, (size_t)(dot - (n + 1))))
            return false;
        n[dot - n - 1] = '*';
        if (!hmap_get(&cfg->hostmap, dot - 1, len - (size_t)(dot - (n + 1)) + 1, &v))
            return false;
    }
    *backend = (int)(v >> 32);
    *host = (int)(v & 0xffffffffu);
    return true;
}

int route_find(const struct cfg *cfg, const char *name, size_t len)
{
    int b, h;

    return route_lookup(cfg, name, len, &b, &h) ? b : -1;
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
