/* buf.h - a bounded byte buffer: the only place that does buffer arithmetic.
 *
 * Bytes live in data[off, off+len). Storage is allocated lazily on the first
 * call that needs room (so idle sessions cost nothing) and can be given back
 * with buf_shrink() once the buffer is empty. Nothing here does I/O. */
#ifndef BUF_H
#define BUF_H

#include <stdbool.h>
#include <stddef.h>

struct buf {
    char *data;      /* owned; NULL until first needed or after buf_shrink() */
    size_t cap;      /* fixed capacity, set by buf_init() */
    size_t off;      /* first unread byte */
    size_t len;      /* bytes held after off */
    bool discarding; /* buf_take_line(): inside an over-long line, dropping to its LF */
    unsigned pinned; /* > 0 while a socket write points into the held bytes:
                        buf_room() then never moves them (room is only what
                        is left after them) */
};

/* Sets the capacity; allocates nothing yet. cap > 0. */
void buf_init(struct buf *b, size_t cap);
/* Frees the storage; the buffer may be used again (it re-allocates). */
void buf_free(struct buf *b);
/* Frees the storage when the buffer is empty; no-op otherwise. */
void buf_shrink(struct buf *b);
/* Drops every byte and ends any discarding of an over-long line (keeps the
 * storage). */
void buf_reset(struct buf *b);

static inline size_t buf_len(const struct buf *b) { return b->len; }
static inline const char *buf_head(const struct buf *b) { return b->data + b->off; }

/* Contiguous room after the held bytes. When that room is under a quarter of
 * the capacity, the bytes are first moved to the front (never while pinned).
 * Allocates the storage when absent; 0 if that fails or there is no room. */
size_t buf_room(struct buf *b);
/* Where the next byte goes; call buf_room() first. */
char *buf_tail(struct buf *b);
/* Marks n bytes written at buf_tail() as held. n <= buf_room(). */
void buf_commit(struct buf *b, size_t n);
/* Drops n bytes from the front. n <= buf_len(). */
void buf_consume(struct buf *b, size_t n);
/* How many bytes buf_append() takes now: the free space, or while pinned
 * only the room after the held bytes. */
static inline size_t buf_space(const struct buf *b)
{
    return b->pinned > 0 ? b->cap - b->off - b->len : b->cap - b->len;
}
/* Appends all n bytes or none: 0, or PX_ENOSPC (no room; while pinned,
 * only the room after the held bytes counts) / PX_ENOMEM. */
int buf_append(struct buf *b, const void *p, size_t n);

/* Takes one line ending in LF from the front. The LF and a CR just before it
 * are not part of the line. A line may hold at most max bytes.
 * Returns 1 with *line and *len set (the line is consumed; the pointer stays
 * valid until the next call that changes b), 0 when no complete line is held
 * (the bytes stay), or PX_EMSGSIZE once for each line longer than max: its
 * bytes are dropped up to and including its LF, over later calls if needed,
 * and then taking lines resumes. A full buffer without an LF also counts as
 * an over-long line (it could never take the LF), so cap should be at least
 * max + 2 for the line, its CR and its LF. */
int buf_take_line(struct buf *b, size_t max, const char **line, size_t *len);

#endif
