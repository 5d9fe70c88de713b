/* route.h - virtual host names -> backend, and the agreement rules between
 * the names a client gives (USER host|user, HOST, SNI). Pure. */
#ifndef ROUTE_H
#define ROUTE_H

#include <stdbool.h>
#include <stddef.h>

struct cfg;

#define ROUTE_NAME_MAX 253 /* the longest DNS name */

/* pattern: a configured host name, lower-case, either "a.b.c" or "*.b.c"
 * where '*' stands for exactly one DNS label (letters, digits, hyphen). name:
 * as the client wrote it (any case, one trailing dot allowed).
 * Case-insensitive. */
bool route_host_match(const char *pattern, const char *name, size_t len);

/* The backend one of whose hostnames matches name, and which of its
 * hostnames (an exact name wins over a wildcard): true with *backend and
 * *host set, or false. O(1): cfg->hostmap. */
bool route_lookup(const struct cfg *cfg, const char *name, size_t len, int *backend, int *host);
/* The backend alone, or -1. */
int route_find(const struct cfg *cfg, const char *name, size_t len);

enum route_status {
    ROUTE_OK = 0,
    ROUTE_UNKNOWN_HOST,  /* USER host|user names no site */
    ROUTE_CONFLICT_HOST, /* USER host differs from an accepted HOST */
    ROUTE_CONFLICT_SNI,  /* USER host or HOST differs from the SNI site */
    ROUTE_NO_SITE,       /* nothing named a site and there is no default */
};

struct route_query {
    const char *user_host; /* host part of USER host|user, NULL when none */
    size_t user_host_len;
    int host_site; /* backend of the last accepted HOST, -1 when none */
    int sni_site;  /* backend the SNI name matched, -1 when none or no SNI */
};

/* DESIGN.md's order: USER host, earlier HOST, SNI (when cfg->route_by_sni),
 * default_backend; every name given must agree, and an SNI site is checked
 * against USER host and HOST even when route_by_sni is off. Returns ROUTE_OK
 * with *backend set, or the reason for refusing (*backend -1). */
enum route_status route_decide(const struct cfg *cfg, const struct route_query *q, int *backend);

const char *route_status_name(enum route_status s);

#endif
