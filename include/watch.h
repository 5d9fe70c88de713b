/* watch.h - notices when files change on disk (certbot renewing, a
 * Kubernetes secret being swapped, a hosting panel writing sites.d/) and
 * calls back once per burst of changes.
 *
 * It watches the directories that hold the files (a rename into place, or
 * Kubernetes' "..data" symlink swap, does not touch the old file itself),
 * for given file names and for file name patterns (an include glob: a file
 * added, changed or removed), and waits until the directories have been quiet
 * for the debounce time, so that a key and a certificate written one after
 * the other are read together. Names are looked up by hash, so ten thousand
 * certificates in one directory cost nothing per event. */
#ifndef WATCH_H
#define WATCH_H

#include <stddef.h>
#include <uv.h>

struct watch;
struct watch_names;
typedef void watch_fn(void *arg);

/* A watch that calls fn(arg) on loop after debounce_ms of quiet. NULL when
 * out of memory or when its thread cannot start (logged). */
struct watch *watch_new(uv_loop_t *loop, unsigned debounce_ms, watch_fn *fn, void *arg);
/* A set of names to watch: files[0..n_files) by path, and the files that
 * patterns[0..n_patterns) (globs such as sites.d/NAME.ini, with wildcards)
 * match, copied into one block; any thread may make it. NULL when out of
 * memory. */
struct watch_names *watch_names_new(const char *const *files, size_t n_files,
                                    const char *const *patterns, size_t n_patterns);
void watch_names_free(struct watch_names *set);
/* What to watch from now on (set is taken over; the watch thread takes it
 * up). Directories watched already stay watched; those no longer named are
 * dropped. Directories that cannot be watched are logged and skipped. */
void watch_set(struct watch *w, struct watch_names *set);
/* Stops watching and waits for the watch thread to end; frees itself once
 * its handle on loop is closed. */
void watch_stop(struct watch *w);

#endif
