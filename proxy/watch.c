/* watch.c - directory watches with a debounce timer (see watch.h). */
#include "watch.h"

#include <libgen.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "px.h"

#define WATCH_MAX_DIRS 32

struct watch_dir {
    uv_fs_event_t ev; /* ev.data = the watch */
    char *names;      /* owned: the watched base names, NUL-separated, ending "" */
};

struct watch {
    uv_timer_t timer; /* timer.data = this */
    struct watch_dir dirs[WATCH_MAX_DIRS];
    size_t n_dirs;
    unsigned open_handles;
    unsigned debounce_ms;
    watch_fn *fn;
    void *arg;
};

static void on_closed(uv_handle_t *h)
{
    struct watch *w = h->data;

    if (--w->open_handles > 0)
        return;
    for (size_t i = 0; i < w->n_dirs; i++)
        free(w->dirs[i].names);
    free(w);
}

static void on_quiet(uv_timer_t *t)
{
    struct watch *w = t->data;

    w->fn(w->arg);
}

static bool watched(const struct watch_dir *d, const char *name)
{
    /* Kubernetes updates a secret by swapping the "..data" symlink. */
    if (name == NULL || strcmp(name, "..data") == 0)
        return true;
    for (const char *p = d->names; *p != '\0'; p += strlen(p) + 1)
        if (strcmp(p, name) == 0)
            return true;
    return false;
}

static void on_change(uv_fs_event_t *h, const char *name, int events, int status)
{
    struct watch *w = h->data;
    struct watch_dir *d = PX_CONTAINER_OF(h, struct watch_dir, ev);

    (void)events;
    if (status < 0 || !watched(d, name))
        return;
    uv_timer_start(&w->timer, on_quiet, w->debounce_ms, 0);
}

/* Adds base to the names of the watch on dir, creating it when new. */
static void add(struct watch *w, uv_loop_t *loop, const char *dir, const char *base)
{
    struct watch_dir *d = NULL;
    char path[4096];
    size_t used = 0, len = strlen(base) + 1;
    char *names;
    size_t plen = sizeof(path);
    int rc;

    for (size_t i = 0; i < w->n_dirs && d == NULL; i++)
        if (uv_fs_event_getpath(&w->dirs[i].ev, path, &plen) == 0 && strcmp(path, dir) == 0)
            d = &w->dirs[i];
        else
            plen = sizeof(path);
    if (d == NULL) {
        if (w->n_dirs == WATCH_MAX_DIRS)
            return;
        d = &w->dirs[w->n_dirs];
        if (uv_fs_event_init(loop, &d->ev) != 0)
            return;
        d->ev.data = w;
        w->open_handles++;
        w->n_dirs++;
        rc = uv_fs_event_start(&d->ev, on_change, dir, 0);
        if (rc != 0)
            LOG_WARN(NULL, "watch_failed", "dir", dir, "error", uv_strerror(rc), NULL);
    }
    while (d->names != NULL && d->names[used] != '\0')
        used += strlen(d->names + used) + 1;
    names = realloc(d->names, used + len + 1);
    if (names == NULL)
        return;
    memcpy(names + used, base, len);
    names[used + len] = '\0';
    d->names = names;
}

struct watch *watch_start(uv_loop_t *loop, const char *const *paths, size_t n, unsigned debounce_ms,
                          watch_fn *fn, void *arg)
{
    struct watch *w = calloc(1, sizeof(*w));

    if (w == NULL)
        return NULL;
    w->debounce_ms = debounce_ms;
    w->fn = fn;
    w->arg = arg;
    uv_timer_init(loop, &w->timer);
    w->timer.data = w;
    w->open_handles = 1;
    for (size_t i = 0; i < n; i++) {
        char a[4096], b[4096];
        size_t len = paths[i] != NULL ? strlen(paths[i]) : sizeof(a);

        if (len >= sizeof(a))
            continue;
        memcpy(a, paths[i], len + 1); /* dirname and basename may write */
        memcpy(b, paths[i], len + 1);
        add(w, loop, dirname(a), basename(b));
    }
    return w;
}

void watch_stop(struct watch *w)
{
    if (w == NULL)
        return;
    uv_close((uv_handle_t *)&w->timer, on_closed);
    for (size_t i = 0; i < w->n_dirs; i++)
        uv_close((uv_handle_t *)&w->dirs[i].ev, on_closed);
}
