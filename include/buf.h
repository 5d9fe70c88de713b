/* buf.h - a bounded byte buffer: the only place that does buffer arithmetic.
 *
 * Bytes live in data[off, off+len). Storage is allocated lazily on the first
 * call that needs room (so idle sessions cost nothing) and can be given back
 * with buf_shrink() once the buffer is empty. Nothing here does I/O. */
#ifndef BUF_H
#define BUF_H

#include <stdbool.h>
#include <stddef.h>

/* Where a buffer's storage comes from: a worker's pool of transfer buffers,
 * say, which counts them too. get returns cap bytes or NULL; put takes back
 * what get gave, with the same cap. */
struct buf_alloc {
    void *(*get)(void *arg, size_t cap);
    void (*put)(void *arg, void *p, size_t cap);
    void *arg;
};

struct buf {
    const struct buf_alloc *alloc; /* borrowed; NULL: malloc and free */
    char *data;      /* owned; NULL until first needed or after buf_shrink() */
    size_t cap;      /* capacity, set by buf_init(); grows up to max */
    size_t max;      /* buf_grow() stops here; = cap unless buf_set_max() */
    bool grow_wanted; /* buf_grow() found the bytes pinned: grows once unpinned */
    size_t off;      /* first unread byte */
    size_t len;      /* bytes held after off */
    bool discarding; /* buf_take_line(): inside an over-long line, dropping to its LF */
    unsigned pinned; /* > 0 while a socket write points into the held bytes:
                        buf_room() then never moves them (room is only what
                        is left after them) */
};

/* Sets the capacity; allocates nothing yet. cap > 0. */
void buf_init(struct buf *b, size_t cap);
/* Takes storage from a (borrowed, outliving b) from now on; call while no
 * storage is held. */
void buf_set_alloc(struct buf *b, const struct buf_alloc *a);
/* A new capacity (larger or smaller than the held bytes need: cap >=
 * buf_len) for the next storage; held storage of another size moves into
 * new storage now, unless pinned. 0, PX_ENOMEM, or PX_EBUSY (pinned: try
 * after the write). */
int buf_resize(struct buf *b, size_t cap);
/* Lets the capacity grow up to max (>= the capacity) through buf_grow():
 * an elastic buffer starts small and grows while its stream keeps it full. */
void buf_set_max(struct buf *b, size_t max);
/* A growing buffer's capacity is multiplied by this much each time: a bulk
 * transfer's buffers reach their full size after two steps (32 KiB, 256 KiB,
 * 1 MiB) rather than five, so that a bulk transfer runs with the large
 * buffers almost from its start. */
#define BUF_GROWTH 8
/* Multiplies the capacity by BUF_GROWTH, up to max: 0 (grown, or the larger capacity is taken
 * when storage is next allocated), PX_ENOSPC (at max already), PX_ENOMEM, or
 * PX_EBUSY (pinned: the buffer grows at the buf_consume() that follows the
 * write). Held bytes keep their order. */
int buf_grow(struct buf *b);
static inline size_t buf_cap(const struct buf *b) { return b->cap; }
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
/* Whether buf_room() would give room, without allocating storage: an idle
 * stream can be read (and its buffer allocated when bytes come) while the
 * buffer holds nothing. */
static inline bool buf_has_room(const struct buf *b)
{
    return b->data == NULL || b->len < b->cap;
}
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
