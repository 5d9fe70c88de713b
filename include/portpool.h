/* portpool.h - the passive port range: reserve a free port, release it.
 * Hands ports out round-robin so that a port just released is the last to be
 * reused (a late connection to it then finds nothing listening). Pure. */
#ifndef PORTPOOL_H
#define PORTPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct portpool {
    uint16_t lo, hi;  /* inclusive range */
    uint8_t *used;    /* owned; one byte per port */
    size_t in_use;
    size_t next;      /* offset where the next search starts */
    bool retired;     /* portpool_retire(): freed when its last port returns */
};

/* 0, PX_EINVAL (lo == 0 or lo > hi) or PX_ENOMEM. */
int portpool_init(struct portpool *p, uint16_t lo, uint16_t hi);
void portpool_free(struct portpool *p);
/* 0 with *port reserved, or PX_ENOSPC when every port is in use. */
int portpool_reserve(struct portpool *p, uint16_t *port);
/* Releases a reserved port; asserts it was reserved and in range. A retired
 * pool is freed when its last port comes back (p is then gone). */
void portpool_release(struct portpool *p, uint16_t port);

/* A pool of its own allocation (a worker's), for portpool_retire(). NULL on a
 * bad range or when out of memory. */
struct portpool *portpool_new(uint16_t lo, uint16_t hi);
/* A reload replaced the pool (from portpool_new): it is freed now when no
 * port is out, else by the release of its last port. */
void portpool_retire(struct portpool *p);
static inline size_t portpool_in_use(const struct portpool *p) { return p->in_use; }
static inline size_t portpool_size(const struct portpool *p) { return (size_t)p->hi - p->lo + 1; }

#endif
