/* buf.c - a bounded byte buffer. Every offset and length calculation on
 * stream bytes happens here; callers only ask for room, commit, consume and
 * take lines. The storage is allocated on first use and may be given back
 * while the buffer is empty, so an idle session holds no buffer memory. */
#include "buf.h"

#include <stdlib.h>
#include <string.h>

#include "px.h"

static char *get(const struct buf *b, size_t cap)
{
    return b->alloc != NULL ? b->alloc->get(b->alloc->arg, cap) : malloc(cap);
}

static void put(const struct buf *b, char *p, size_t cap)
{
    if (p == NULL)
        return;
    if (b->alloc != NULL)
        b->alloc->put(b->alloc->arg, p, cap);
    else
        free(p);
}

void buf_init(struct buf *b, size_t cap)
{
    PX_ASSERT(cap > 0);
    b->alloc = NULL;
    b->data = NULL;
    b->cap = cap;
    b->max = cap;
    b->grow_wanted = false;
    b->off = 0;
    b->len = 0;
    b->discarding = false;
    b->pinned = 0;
}

void buf_set_max(struct buf *b, size_t max)
{
    PX_ASSERT(max >= b->cap);
    b->max = max;
}

void buf_set_alloc(struct buf *b, const struct buf_alloc *a)
{
    PX_ASSERT(b->data == NULL);
    b->alloc = a;
}

int buf_resize(struct buf *b, size_t cap)
{
    char *p;

    PX_ASSERT(cap > 0 && cap >= b->len);
    if (b->data == NULL || cap == b->cap) {
        b->cap = cap;
        return 0;
    }
    if (b->pinned > 0)
        return PX_EBUSY;
    p = get(b, cap);
    if (p == NULL)
        return PX_ENOMEM;
    memcpy(p, b->data + b->off, b->len);
    put(b, b->data, b->cap);
    b->data = p;
    b->cap = cap;
    b->off = 0;
    return 0;
}

int buf_grow(struct buf *b)
{
    size_t cap;
    int rc;

    if (b->cap >= b->max)
        return PX_ENOSPC;
    if (b->pinned > 0) {
        b->grow_wanted = true;
        return PX_EBUSY;
    }
    b->grow_wanted = false; /* tried once: a failed allocation is not retried */
    cap = b->cap > b->max / BUF_GROWTH ? b->max : b->cap * BUF_GROWTH;
    rc = buf_resize(b, cap);
    return rc;
}

void buf_free(struct buf *b)
{
    put(b, b->data, b->cap);
    b->data = NULL;
    b->off = 0;
    b->len = 0;
    b->discarding = false;
}

void buf_shrink(struct buf *b)
{
    if (b->len > 0)
        return;
    put(b, b->data, b->cap);
    b->data = NULL;
    b->off = 0;
}

void buf_reset(struct buf *b)
{
    b->off = 0;
    b->len = 0;
    b->discarding = false;
}

/* Moves the held bytes to the front when the room after them is below want,
 * unless a write points into them. Moving only when needed keeps the copy
 * rare: a relay buffer drained as fast as it fills is never moved at all. */
static void make_room(struct buf *b, size_t want)
{
    if (b->off == 0 || b->pinned > 0 || b->cap - b->off - b->len >= want)
        return;
    memmove(b->data, b->data + b->off, b->len);
    b->off = 0;
}

size_t buf_room(struct buf *b)
{
    if (b->data == NULL) {
        b->data = get(b, b->cap);
        if (b->data == NULL)
            return 0;
    }
    make_room(b, b->cap / 4 + 1);
    return b->cap - b->off - b->len;
}

char *buf_tail(struct buf *b)
{
    PX_ASSERT(b->data != NULL);
    return b->data + b->off + b->len;
}

void buf_commit(struct buf *b, size_t n)
{
    PX_ASSERT(n <= b->cap - b->off - b->len);
    PX_ASSERT(n == 0 || b->data != NULL);
    b->len += n;
}

void buf_consume(struct buf *b, size_t n)
{
    PX_ASSERT(n <= b->len);
    b->len -= n;
    /* An empty buffer starts over at the front: no compaction needed later. */
    b->off = b->len == 0 ? 0 : b->off + n;
    /* A growth asked for while a write pointed into the bytes: the write
     * is over when its bytes are consumed. */
    if (b->grow_wanted && b->pinned == 0)
        (void)buf_grow(b);
}

int buf_append(struct buf *b, const void *p, size_t n)
{
    if (n > b->cap - b->len)
        return PX_ENOSPC;
    if (n == 0)
        return 0;
    if (buf_room(b) == 0 && b->data == NULL)
        return PX_ENOMEM;
    make_room(b, n);
    if (b->cap - b->off - b->len < n)
        return PX_ENOSPC; /* pinned: the room is behind bytes on the wire */
    memcpy(buf_tail(b), p, n);
    b->len += n;
    return 0;
}

int buf_take_line(struct buf *b, size_t max, const char **line, size_t *len)
{
    const char *head, *lf;
    size_t n;

    if (b->discarding) {
        if (b->len == 0)
            return 0;
        lf = memchr(buf_head(b), '\n', b->len);
        if (lf == NULL) {
            buf_consume(b, b->len);
            return 0;
        }
        buf_consume(b, (size_t)(lf - buf_head(b)) + 1);
        b->discarding = false;
    }
    if (b->len == 0)
        return 0;
    head = buf_head(b);
    lf = memchr(head, '\n', b->len);
    if (lf == NULL) {
        /* Up to max bytes and a CR may still end well; a full buffer cannot
         * take the LF, so its line is over-long whatever max says. */
        if (b->len - 1 <= max && b->len < b->cap)
            return 0;
        buf_consume(b, b->len);
        b->discarding = true;
        return PX_EMSGSIZE;
    }
    n = (size_t)(lf - head);
    buf_consume(b, n + 1);
    if (n > 0 && head[n - 1] == '\r')
        n--;
    if (n > max)
        return PX_EMSGSIZE;
    *line = head;
    *len = n;
    return 1;
}
