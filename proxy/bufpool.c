/* bufpool.c - per-worker free lists of transfer buffers (see bufpool.h).
 *
 * One list per power-of-two size from 4 KiB to 4 MiB; other sizes bypass the
 * pool. A free buffer holds the link to the next one in its first bytes. Each
 * list remembers the fewest buffers it held since the last trim: that many
 * were never needed in the period, and the trim frees them. */
#include "bufpool.h"

#include <stdlib.h>

#include "px.h"

#define BUFPOOL_MIN_SHIFT 12 /* 4 KiB */
#define BUFPOOL_MAX_SHIFT 22 /* 4 MiB */
#define BUFPOOL_CLASSES (BUFPOOL_MAX_SHIFT - BUFPOOL_MIN_SHIFT + 1)

struct free_buf {
    struct free_buf *next;
};

struct bufpool_class {
    struct free_buf *head; /* owned */
    size_t n;              /* buffers held */
    size_t low;            /* fewest held since the last trim */
};

struct bufpool {
    size_t limit; /* bytes held at most */
    size_t held;  /* bytes held */
    struct bufpool_class cls[BUFPOOL_CLASSES];
};

/* The class of cap, or -1 when cap is not a pooled size. */
static int class_of(size_t cap)
{
    for (int i = 0; i < BUFPOOL_CLASSES; i++)
        if (cap == (size_t)1 << (i + BUFPOOL_MIN_SHIFT))
            return i;
    return -1;
}

struct bufpool *bufpool_new(size_t limit)
{
    struct bufpool *p = calloc(1, sizeof(*p));

    if (p != NULL)
        p->limit = limit;
    return p;
}

static void *pop(struct bufpool *p, int i)
{
    struct bufpool_class *c = &p->cls[i];
    struct free_buf *f = c->head;

    if (f == NULL)
        return NULL;
    c->head = f->next;
    c->n--;
    if (c->n < c->low)
        c->low = c->n;
    p->held -= (size_t)1 << (i + BUFPOOL_MIN_SHIFT);
    return f;
}

void bufpool_free(struct bufpool *p)
{
    if (p == NULL)
        return;
    for (int i = 0; i < BUFPOOL_CLASSES; i++) {
        void *b;

        while ((b = pop(p, i)) != NULL)
            free(b);
    }
    PX_ASSERT(p->held == 0);
    free(p);
}

void *bufpool_get(struct bufpool *p, size_t cap)
{
    int i = p != NULL ? class_of(cap) : -1;
    void *b = i >= 0 ? pop(p, i) : NULL;

    return b != NULL ? b : malloc(cap);
}

void bufpool_put(struct bufpool *p, void *buf, size_t cap)
{
    int i = p != NULL ? class_of(cap) : -1;
    struct free_buf *f = buf;

    if (buf == NULL)
        return;
    if (i < 0 || p->held + cap > p->limit) {
        free(buf);
        return;
    }
    f->next = p->cls[i].head;
    p->cls[i].head = f;
    p->cls[i].n++;
    p->held += cap;
}

size_t bufpool_trim(struct bufpool *p)
{
    size_t freed = 0;

    for (int i = 0; i < BUFPOOL_CLASSES; i++) {
        struct bufpool_class *c = &p->cls[i];
        size_t unused = c->low;

        for (size_t k = 0; k < unused; k++) {
            free(pop(p, i));
            freed += (size_t)1 << (i + BUFPOOL_MIN_SHIFT);
        }
        c->low = c->n;
    }
    return freed;
}

size_t bufpool_held(const struct bufpool *p) { return p->held; }
