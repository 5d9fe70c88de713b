/* bufpool.h - a worker's pool of freed transfer buffers.
 *
 * A bulk transfer's buffers (up to 1 MiB plaintext, 512 KiB ciphertext) are
 * large enough that malloc maps and unmaps them each time, page-faulting
 * every page again. The pool keeps freed buffers of power-of-two sizes for
 * the next transfer, up to a limit of bytes held; bufpool_trim(), run by the
 * worker every few seconds, gives back what was not needed since the run
 * before. One worker's loop uses its pool alone: no locking. */
#ifndef BUFPOOL_H
#define BUFPOOL_H

#include <stddef.h>

struct bufpool;

/* A pool that holds at most limit bytes of free buffers. NULL when out of
 * memory. */
struct bufpool *bufpool_new(size_t limit);
/* Frees the pool and every buffer it holds (those given out must have come
 * back). NULL is fine. */
void bufpool_free(struct bufpool *p);

/* cap bytes: a held buffer of that size, else malloc's. NULL when out of
 * memory. */
void *bufpool_get(struct bufpool *p, size_t cap);
/* Takes back a buffer bufpool_get gave with the same cap: held for reuse
 * while under the limit, else freed. NULL is fine. */
void bufpool_put(struct bufpool *p, void *buf, size_t cap);

/* Frees the buffers that stayed unused since the last trim: per size, as
 * many as the fewest held at any time since then. Returns the bytes freed. */
size_t bufpool_trim(struct bufpool *p);
/* Bytes of free buffers held now. */
size_t bufpool_held(const struct bufpool *p);

#endif
