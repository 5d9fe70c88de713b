/* sharereg.c - waiting sessions by key (see sharereg.h): a hash map from the
 * key, which lives in the entry, to the entry. */
#include "sharereg.h"

#include <stdlib.h>
#include <string.h>

#include "px.h"

/* Waiting sessions per client address. */
struct sharereg_ip {
    uint8_t ip[16]; /* the map's key */
    size_t n;
};

static struct sharereg_ip *ip_node(const struct sharereg *r, const uint8_t ip[16])
{
    uint64_t v;

    return hmap_get(&r->by_ip, (const char *)ip, 16, &v) ? (struct sharereg_ip *)(uintptr_t)v
                                                          : NULL;
}

/* Counts e's address in (d = 1) or out (d = -1). 0 or PX_ENOMEM. */
static int count_ip(struct sharereg *r, const uint8_t ip[16], int d)
{
    struct sharereg_ip *n = ip_node(r, ip);
    bool gone;

    if (d > 0 && n == NULL) {
        n = calloc(1, sizeof(*n));
        if (n == NULL)
            return PX_ENOMEM;
        memcpy(n->ip, ip, 16);
        if (hmap_put(&r->by_ip, (const char *)n->ip, 16, (uint64_t)(uintptr_t)n, NULL) != 0) {
            free(n);
            return PX_ENOMEM;
        }
    }
    PX_ASSERT(n != NULL);
    if (d > 0) {
        n->n++;
        return 0;
    }
    if (--n->n == 0) {
        gone = hmap_del(&r->by_ip, (const char *)n->ip, 16);
        PX_ASSERT(gone);
        free(n);
    }
    return 0;
}

int sharereg_add(struct sharereg *r, struct sharereg_entry *e)
{
    int rc;

    PX_ASSERT(!e->registered);
    rc = hmap_put(&r->map, (const char *)e->key, SHAREREG_KEY_LEN, (uint64_t)(uintptr_t)e, NULL);
    if (rc != 0)
        return rc;
    rc = count_ip(r, e->ip, 1);
    if (rc != 0) {
        hmap_del(&r->map, (const char *)e->key, SHAREREG_KEY_LEN);
        return rc;
    }
    e->registered = true;
    return 0;
}

void sharereg_remove(struct sharereg *r, struct sharereg_entry *e)
{
    bool gone;

    if (!e->registered)
        return;
    e->registered = false;
    gone = hmap_del(&r->map, (const char *)e->key, SHAREREG_KEY_LEN);
    PX_ASSERT(gone);
    count_ip(r, e->ip, -1);
}

enum sharereg_verdict sharereg_match(const struct sharereg *r, const uint8_t key[SHAREREG_KEY_LEN],
                                     uint16_t port, const uint8_t ip[16],
                                     struct sharereg_entry **out)
{
    struct sharereg_entry *e;
    uint64_t v;

    *out = NULL;
    if (!hmap_get(&r->map, (const char *)key, SHAREREG_KEY_LEN, &v))
        return SHAREREG_NOT_WAITING;
    e = (struct sharereg_entry *)(uintptr_t)v;
    *out = e;
    if (e->port != port)
        return SHAREREG_PORT;
    if (memcmp(e->ip, ip, 16) != 0)
        return SHAREREG_ADDRESS;
    return SHAREREG_MATCH;
}

size_t sharereg_count(const struct sharereg *r) { return r->map.n; }

size_t sharereg_waiting_from(const struct sharereg *r, const uint8_t ip[16])
{
    const struct sharereg_ip *n = ip_node(r, ip);

    return n != NULL ? n->n : 0;
}

/* Entries still registered are their owners'; only the address counts go. */
void sharereg_free(struct sharereg *r)
{
    for (size_t i = 0; i < r->by_ip.cap; i++)
        if (r->by_ip.slots[i].key != NULL)
            free((void *)(uintptr_t)r->by_ip.slots[i].value);
    hmap_free(&r->by_ip);
    hmap_free(&r->map);
}

const char *sharereg_verdict_name(enum sharereg_verdict v)
{
    switch (v) {
    case SHAREREG_MATCH:
        return "matched";
    case SHAREREG_NOT_WAITING:
        return "not_waiting";
    case SHAREREG_PORT:
        return "port";
    case SHAREREG_ADDRESS:
        return "address";
    }
    return "?";
}
