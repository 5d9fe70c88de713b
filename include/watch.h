/* watch.h - notices when files change on disk (certbot renewing, a
 * Kubernetes secret being swapped) and calls back once per burst of changes.
 *
 * It watches the directories that hold the files (a rename into place, or
 * Kubernetes' "..data" symlink swap, does not touch the old file itself) and
 * waits until the directory has been quiet for the debounce time, so that a
 * key and a certificate written one after the other are read together. */
#ifndef WATCH_H
#define WATCH_H

#include <stddef.h>
#include <uv.h>

struct watch;
typedef void watch_fn(void *arg);

/* Watches the files in paths[0..n). NULL when out of memory; directories that
 * cannot be watched are logged and skipped. */
struct watch *watch_start(uv_loop_t *loop, const char *const *paths, size_t n, unsigned debounce_ms,
                          watch_fn *fn, void *arg);
/* Stops watching; frees itself once its handles are closed. */
void watch_stop(struct watch *w);

#endif
