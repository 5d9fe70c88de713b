/* portpool.c - the passive port range as one byte per port. Reservations go
 * round-robin from just after the last port handed out, so a released port
 * is reused as late as possible. Pure: the caller binds the port. */
#include "portpool.h"

#include <stdlib.h>

#include "px.h"

int portpool_init(struct portpool *p, uint16_t lo, uint16_t hi)
{
    if (lo == 0 || lo > hi)
        return PX_EINVAL;
    p->lo = lo;
    p->hi = hi;
    p->used = calloc(portpool_size(p), 1);
    if (p->used == NULL)
        return PX_ENOMEM;
    p->in_use = 0;
    p->next = 0;
    p->retired = false;
    return 0;
}

void portpool_free(struct portpool *p)
{
    free(p->used);
    p->used = NULL;
    p->in_use = 0;
    p->next = 0;
}

int portpool_reserve(struct portpool *p, uint16_t *port)
{
    size_t n = portpool_size(p), k;

    if (p->in_use == n)
        return PX_ENOSPC;
    for (k = 0; k < n; k++) {
        size_t i = (p->next + k) % n;

        if (!p->used[i]) {
            p->used[i] = 1;
            p->in_use++;
            p->next = (i + 1) % n;
            *port = (uint16_t)(p->lo + i);
            return 0;
        }
    }
    PX_ASSERT(!"in_use counts a free port");
    return PX_ENOSPC;
}

void portpool_release(struct portpool *p, uint16_t port)
{
    PX_ASSERT(port >= p->lo && port <= p->hi);
    PX_ASSERT(p->used[port - p->lo]);
    p->used[port - p->lo] = 0;
    p->in_use--;
    if (p->retired && p->in_use == 0) {
        portpool_free(p);
        free(p);
    }
}

struct portpool *portpool_new(uint16_t lo, uint16_t hi)
{
    struct portpool *p = calloc(1, sizeof(*p));

    if (p != NULL && portpool_init(p, lo, hi) != 0) {
        free(p);
        p = NULL;
    }
    return p;
}

void portpool_retire(struct portpool *p)
{
    if (p->in_use == 0) {
        portpool_free(p);
        free(p);
        return;
    }
    p->retired = true;
}
