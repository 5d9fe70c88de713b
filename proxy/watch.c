/* watch.c - directory watches with a debounce timer (see watch.h). Each
 * watched directory has a set of base names (a hash) and a list of base-name
 * patterns; a new set of names keeps the inotify watches of directories that
 * stay. The watcher runs on a loop and thread of its own: ten thousand
 * certificates renewed at once are ten thousand inotify events, and building
 * the sets of ten thousand names takes time too; neither may pause a loop
 * that serves sessions. */
#include "watch.h"

#include <fnmatch.h>
#include <pthread.h>
#include <stdbool.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>

#include "hmap.h"
#include "log.h"
#include "px.h"

#define WATCH_MAX_DIRS 4096 /* inotify watches are a per-user resource */

struct watch_dir {
    uv_fs_event_t ev;  /* ev.data = the watch */
    struct watcher *w;
    char *path;        /* owned */
    struct hmap names; /* base name -> 1; keys in strings */
    char **strings;    /* owned: the names and patterns */
    size_t n_strings;
    char **patterns;   /* borrowed from strings */
    size_t n_patterns;
    bool keep;         /* named by the watch_set() in progress */
    bool started;
};

struct watcher {
    uv_timer_t timer; /* timer.data = this */
    uv_loop_t *loop;
    struct watch_dir **dirs; /* owned */
    size_t n_dirs;
    struct hmap by_path; /* dir path -> index in dirs */
    unsigned open_handles;
    unsigned debounce_ms;
    bool stopping, warned;
    watch_fn *fn;
    void *arg;
};

static void free_sets(struct watch_dir *d)
{
    hmap_free(&d->names);
    for (size_t i = 0; i < d->n_strings; i++)
        free(d->strings[i]);
    free(d->strings);
    free(d->patterns);
    d->strings = NULL;
    d->patterns = NULL;
    d->n_strings = d->n_patterns = 0;
}

static void on_closed(uv_handle_t *h)
{
    struct watcher *w;

    if (h->type == UV_FS_EVENT) {
        struct watch_dir *d = PX_CONTAINER_OF((uv_fs_event_t *)h, struct watch_dir, ev);

        w = d->w;
        free_sets(d);
        free(d->path);
        free(d);
    } else {
        w = h->data;
    }
    if (--w->open_handles > 0)
        return;
    hmap_free(&w->by_path);
    free(w->dirs);
    free(w);
}

static void on_quiet(uv_timer_t *t)
{
    struct watcher *w = t->data;

    w->fn(w->arg);
}

static bool watched(const struct watch_dir *d, const char *name)
{
    uint64_t v;

    /* Kubernetes updates a secret by swapping the "..data" symlink. */
    if (name == NULL || strcmp(name, "..data") == 0)
        return true;
    if (hmap_get(&d->names, name, strlen(name), &v))
        return true;
    for (size_t i = 0; i < d->n_patterns; i++)
        if (fnmatch(d->patterns[i], name, FNM_PERIOD) == 0)
            return true;
    return false;
}

static void on_change(uv_fs_event_t *h, const char *name, int events, int status)
{
    struct watch_dir *d = PX_CONTAINER_OF(h, struct watch_dir, ev);

    (void)events;
    if (status < 0 || d->w->stopping || !watched(d, name))
        return;
    uv_timer_start(&d->w->timer, on_quiet, d->w->debounce_ms, 0);
}

static struct watcher *watcher_new(uv_loop_t *loop, unsigned debounce_ms, watch_fn *fn,
                                   void *arg)
{
    struct watcher *w = calloc(1, sizeof(*w));

    if (w == NULL)
        return NULL;
    w->loop = loop;
    w->debounce_ms = debounce_ms;
    w->fn = fn;
    w->arg = arg;
    uv_timer_init(loop, &w->timer);
    w->timer.data = w;
    w->open_handles = 1;
    return w;
}

/* The directory entry for dir, made (and its watch started) when new. */
static struct watch_dir *dir_of(struct watcher *w, const char *dir)
{
    struct watch_dir *d, **grown;
    uint64_t v;
    int rc;

    if (hmap_get(&w->by_path, dir, strlen(dir), &v))
        return w->dirs[v];
    if (w->n_dirs == WATCH_MAX_DIRS) {
        if (!w->warned)
            LOG_WARN(NULL, "watch_failed", "msg",
                     "too many directories to watch: changes in the others need SIGHUP", NULL);
        w->warned = true;
        return NULL;
    }
    d = calloc(1, sizeof(*d));
    grown = realloc(w->dirs, (w->n_dirs + 1) * sizeof(*grown));
    if (d == NULL || grown == NULL || (d->path = strdup(dir)) == NULL) {
        free(d);
        if (grown != NULL)
            w->dirs = grown;
        return NULL;
    }
    w->dirs = grown;
    d->w = w;
    if (uv_fs_event_init(w->loop, &d->ev) != 0) {
        free(d->path);
        free(d);
        return NULL;
    }
    w->open_handles++;
    rc = uv_fs_event_start(&d->ev, on_change, dir, 0);
    if (rc != 0)
        LOG_WARN(NULL, "watch_failed", "dir", dir, "error", uv_strerror(rc), NULL);
    d->started = rc == 0;
    w->dirs[w->n_dirs] = d;
    (void)hmap_put(&w->by_path, d->path, strlen(d->path), w->n_dirs, NULL);
    w->n_dirs++;
    return d;
}

/* Adds base (a name, or a pattern) to the sets of the directory of path. */
static void add(struct watcher *w, const char *path, bool pattern)
{
    char a[4096], b[4096], **strings, **patterns;
    size_t len = strlen(path);
    struct watch_dir *d;
    char *copy;

    if (len >= sizeof(a))
        return;
    memcpy(a, path, len + 1); /* dirname and basename may write */
    memcpy(b, path, len + 1);
    d = dir_of(w, dirname(a));
    if (d == NULL)
        return;
    if (!d->keep) { /* first name of this watch_set(): the old sets go */
        free_sets(d);
        d->keep = true;
    }
    copy = strdup(basename(b));
    strings = realloc(d->strings, (d->n_strings + 1) * sizeof(*strings));
    if (copy == NULL || strings == NULL) {
        free(copy);
        if (strings != NULL)
            d->strings = strings;
        return;
    }
    d->strings = strings;
    d->strings[d->n_strings++] = copy;
    if (!pattern) {
        (void)hmap_put(&d->names, copy, strlen(copy), 1, NULL);
        return;
    }
    patterns = realloc(d->patterns, (d->n_patterns + 1) * sizeof(*patterns));
    if (patterns != NULL) {
        d->patterns = patterns;
        d->patterns[d->n_patterns++] = copy;
    }
}

static void watcher_set(struct watcher *w, const char *const *files, size_t n_files,
               const char *const *patterns, size_t n_patterns)
{
    size_t keep = 0;

    if (w == NULL)
        return;
    for (size_t i = 0; i < w->n_dirs; i++)
        w->dirs[i]->keep = false;
    for (size_t i = 0; i < n_files; i++)
        if (files[i] != NULL)
            add(w, files[i], false);
    for (size_t i = 0; i < n_patterns; i++)
        add(w, patterns[i], true);
    /* Directories nobody names any more go; the map is rebuilt. */
    hmap_free(&w->by_path);
    for (size_t i = 0; i < w->n_dirs; i++) {
        struct watch_dir *d = w->dirs[i];

        if (!d->keep) {
            uv_close((uv_handle_t *)&d->ev, on_closed);
            continue;
        }
        w->dirs[keep] = d;
        (void)hmap_put(&w->by_path, d->path, strlen(d->path), keep, NULL);
        keep++;
    }
    w->n_dirs = keep;
}

static void watcher_stop(struct watcher *w)
{
    if (w == NULL)
        return;
    w->stopping = true;
    uv_close((uv_handle_t *)&w->timer, on_closed);
    for (size_t i = 0; i < w->n_dirs; i++)
        uv_close((uv_handle_t *)&w->dirs[i]->ev, on_closed);
    w->n_dirs = 0;
}

/* ---- the thread it runs on ---- */

/* The names of one watch_set(), in one block: n_files paths, then n_patterns. */
struct watch_names {
    char **v;
    size_t n_files, n_patterns;
};

struct watch {
    uv_loop_t own;       /* the watcher's loop, run by thread */
    uv_thread_t thread;
    uv_async_t cmd;      /* on own: a new set of names, or stop */
    uv_async_t notify;   /* on the caller's loop: the files changed */
    struct watcher *watcher;
    pthread_mutex_t mu;  /* guards pending, stop */
    struct watch_names *pending;
    bool stop;
    watch_fn *fn;
    void *arg;
};

struct watch_names *watch_names_new(const char *const *files, size_t n_files,
                                 const char *const *patterns, size_t n_patterns)
{
    size_t n = n_files + n_patterns, bytes = sizeof(struct watch_names) + n * sizeof(char *);
    struct watch_names *c;
    char *at;

    for (size_t i = 0; i < n; i++) {
        const char *s = i < n_files ? files[i] : patterns[i - n_files];

        bytes += s != NULL ? strlen(s) + 1 : 0;
    }
    c = malloc(bytes);
    if (c == NULL)
        return NULL;
    c->v = (char **)(c + 1);
    c->n_files = n_files;
    c->n_patterns = n_patterns;
    at = (char *)(c->v + n);
    for (size_t i = 0; i < n; i++) {
        const char *s = i < n_files ? files[i] : patterns[i - n_files];
        size_t len = s != NULL ? strlen(s) + 1 : 0;

        c->v[i] = s != NULL ? memcpy(at, s, len) : NULL;
        at += len;
    }
    return c;
}

static void on_watch_quiet(void *arg)
{
    struct watch *h = arg;

    uv_async_send(&h->notify);
}

static void on_notify(uv_async_t *a)
{
    struct watch *h = a->data;

    h->fn(h->arg);
}

static void on_cmd(uv_async_t *a)
{
    struct watch *h = a->data;
    struct watch_names *set;
    bool stop;

    pthread_mutex_lock(&h->mu);
    set = h->pending;
    h->pending = NULL;
    stop = h->stop;
    pthread_mutex_unlock(&h->mu);
    if (set != NULL && !stop)
        watcher_set(h->watcher, (const char *const *)set->v, set->n_files,
                    (const char *const *)set->v + set->n_files, set->n_patterns);
    free(set);
    if (stop) {
        watcher_stop(h->watcher);
        uv_close((uv_handle_t *)&h->cmd, NULL);
    }
}

static void watch_main(void *arg)
{
    struct watch *h = arg;

    uv_run(&h->own, UV_RUN_DEFAULT);
}

static void on_notify_closed(uv_handle_t *a)
{
    struct watch *h = a->data;

    pthread_mutex_destroy(&h->mu);
    free(h);
}

struct watch *watch_new(uv_loop_t *loop, unsigned debounce_ms, watch_fn *fn, void *arg)
{
    struct watch *h = calloc(1, sizeof(*h));

    if (h == NULL)
        return NULL;
    h->fn = fn;
    h->arg = arg;
    if (uv_loop_init(&h->own) != 0) {
        free(h);
        return NULL;
    }
    h->watcher = watcher_new(&h->own, debounce_ms, on_watch_quiet, h);
    if (h->watcher == NULL || uv_async_init(&h->own, &h->cmd, on_cmd) != 0) {
        if (h->watcher != NULL)
            watcher_stop(h->watcher);
        uv_run(&h->own, UV_RUN_DEFAULT);
        uv_loop_close(&h->own);
        free(h);
        return NULL;
    }
    h->cmd.data = h;
    uv_async_init(loop, &h->notify, on_notify);
    h->notify.data = h;
    pthread_mutex_init(&h->mu, NULL);
    if (uv_thread_create(&h->thread, watch_main, h) != 0) {
        LOG_WARN(NULL, "watch_failed", "msg", "cannot start the watch thread: changes need SIGHUP",
                 NULL);
        h->stop = true;
        on_cmd(&h->cmd);
        uv_run(&h->own, UV_RUN_DEFAULT);
        uv_loop_close(&h->own);
        uv_close((uv_handle_t *)&h->notify, on_notify_closed); /* frees h */
        return NULL;
    }
    return h;
}

void watch_set(struct watch *h, struct watch_names *set)
{
    struct watch_names *old;

    if (h == NULL || set == NULL) {
        free(set);
        return;
    }
    pthread_mutex_lock(&h->mu);
    old = h->pending;
    h->pending = set;
    pthread_mutex_unlock(&h->mu);
    free(old);
    uv_async_send(&h->cmd);
}

void watch_names_free(struct watch_names *set) { free(set); }


void watch_stop(struct watch *h)
{
    if (h == NULL)
        return;
    pthread_mutex_lock(&h->mu);
    h->stop = true;
    pthread_mutex_unlock(&h->mu);
    uv_async_send(&h->cmd);
    uv_thread_join(&h->thread);
    uv_loop_close(&h->own);
    free(h->pending);
    uv_close((uv_handle_t *)&h->notify, on_notify_closed);
}
