/* loader.c - reading the configuration from disk (see loader.h). */
#include "loader.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <pthread.h>
#include <libgen.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hmap.h"
#include "px.h"

#define LOADER_FILE_MAX (1024 * 1024) /* a larger INI file is refused */

static _Thread_local bool background;

void loader_background(void)
{
    background = true;
    (void)setpriority(PRIO_PROCESS, (id_t)gettid(), 10); /* best effort */
}

bool loader_in_background(void) { return background; }

/* All of path into a malloc'ed buffer: 0, or a negative errno. */
static int read_file(const char *path, char **text, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC), rc = 0;
    size_t n = 0, cap = 0;
    char *buf = NULL, *grown;
    ssize_t got;

    if (fd < 0)
        return -errno;
    for (;;) {
        if (n == cap) {
            if (cap >= LOADER_FILE_MAX) {
                rc = -EFBIG;
                break;
            }
            cap = cap == 0 ? 4096 : cap * 2;
            grown = realloc(buf, cap);
            if (grown == NULL) {
                rc = PX_ENOMEM;
                break;
            }
            buf = grown;
        }
        got = read(fd, buf + n, cap - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            rc = -errno;
        if (got <= 0)
            break;
        n += (size_t)got;
    }
    close(fd);
    if (rc != 0) {
        free(buf);
        return rc;
    }
    *text = buf;
    *len = n;
    return 0;
}

/* ---- the text of files unchanged since the last load ----
 *
 * At hosting scale a reload reads thousands of included files that did not
 * change. Their text is kept, by path, with what the file looked like (the
 * stat the include loop makes anyway): an unchanged file costs that one
 * stat. A load keeps only the files it read; loads run one at a time, the
 * mutex is for the rare -t or start-up beside nothing else. */

struct text_entry {
    char *path; /* owned: the map's key */
    char *text; /* owned */
    size_t len;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
};

static struct {
    pthread_mutex_t mu;
    struct hmap by_path;       /* path -> index in v */
    struct text_entry *v;
    size_t n, cap;
    struct text_entry *next_v; /* what this load read, becoming v at its end */
    size_t next_n, next_cap;
} texts = {.mu = PTHREAD_MUTEX_INITIALIZER};

static bool same_file(const struct text_entry *e, const struct stat *st)
{
    return e->dev == st->st_dev && e->ino == st->st_ino && e->size == st->st_size &&
           e->mtime.tv_sec == st->st_mtim.tv_sec && e->mtime.tv_nsec == st->st_mtim.tv_nsec;
}

/* Keeps path's text for the next load (taking text over; freed when it
 * cannot be kept). The kept entry, or NULL. */
static struct text_entry *keep_text(const char *path, const struct stat *st, char *text,
                                    size_t len)
{
    struct text_entry *e;

    if (texts.next_n == texts.next_cap) {
        size_t cap = texts.next_cap == 0 ? 64 : texts.next_cap * 2;
        struct text_entry *grown = realloc(texts.next_v, cap * sizeof(*grown));

        if (grown == NULL) {
            free(text);
            return NULL;
        }
        texts.next_v = grown;
        texts.next_cap = cap;
    }
    e = &texts.next_v[texts.next_n];
    e->path = strdup(path);
    if (e->path == NULL) {
        free(text);
        return NULL;
    }
    e->text = text;
    e->len = len;
    e->dev = st->st_dev;
    e->ino = st->st_ino;
    e->size = st->st_size;
    e->mtime = st->st_mtim;
    texts.next_n++;
    return e;
}

/* path's text: the kept one when st says the file is unchanged (it moves to
 * this load's set), else read now. 0 with *text (borrowed until
 * texts_end), or a negative errno. */
static int text_of(const char *path, const struct stat *st, const char **text, size_t *len)
{
    struct text_entry *e;
    uint64_t i;
    char *t;
    int rc;

    if (hmap_get(&texts.by_path, path, strlen(path), &i) && texts.v[i].text != NULL &&
        same_file(&texts.v[i], st)) {
        t = texts.v[i].text;
        *len = texts.v[i].len;
        texts.v[i].text = NULL; /* moved; its path stays the map's key until texts_end */
    } else {
        char *fit;

        rc = read_file(path, &t, len);
        if (rc != 0)
            return rc;
        fit = realloc(t, *len > 0 ? *len : 1); /* read_file's room is 4 KiB at least */
        if (fit != NULL)
            t = fit;
    }
    e = keep_text(path, st, t, *len);
    if (e == NULL)
        return PX_ENOMEM;
    *text = e->text;
    return 0;
}

static void texts_begin(void) { pthread_mutex_lock(&texts.mu); }

/* The texts this load used become the kept ones; the others are freed. */
static void texts_end(void)
{
    for (size_t i = 0; i < texts.n; i++) {
        free(texts.v[i].path);
        free(texts.v[i].text);
    }
    free(texts.v);
    hmap_free(&texts.by_path);
    texts.v = texts.next_v;
    texts.n = texts.next_n;
    texts.cap = texts.next_cap;
    texts.next_v = NULL;
    texts.next_n = texts.next_cap = 0;
    for (size_t i = 0; i < texts.n; i++)
        if (hmap_set(&texts.by_path, texts.v[i].path, strlen(texts.v[i].path), i) != 0)
            break; /* out of memory: those files are read again next time */
    pthread_mutex_unlock(&texts.mu);
}

/* cfg_file_fn: the file must be a readable regular file now. */
static const char *check_file(void *arg, const char *path)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    const char *why = NULL;

    (void)arg;
    if (fd < 0)
        return strerror(errno);
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        why = "not a regular file";
    close(fd);
    return why;
}

/* ---- reading as another user ---- */

void loader_user(const char *user, struct loader_user *w)
{
    struct passwd pw, *res = NULL;
    char buf[4096];
    int n = LOADER_GROUPS_MAX;

    memset(w, 0, sizeof(*w));
    if (user == NULL || getpwnam_r(user, &pw, buf, sizeof(buf), &res) != 0 || res == NULL)
        return; /* privdrop reports an unknown user at start-up */
    w->set = true;
    w->name = user;
    w->uid = pw.pw_uid;
    if (getgrouplist(user, pw.pw_gid, w->groups, &n) < 0)
        n = LOADER_GROUPS_MAX;
    w->n_groups = n;
}

static bool in_groups(const struct loader_user *w, gid_t g)
{
    for (int i = 0; i < w->n_groups; i++)
        if (w->groups[i] == g)
            return true;
    return false;
}

/* Whether w may do what the bits say (owner, group, other) on st. */
static bool may(const struct loader_user *w, const struct stat *st, mode_t usr, mode_t grp, mode_t oth)
{
    if (w->uid == 0)
        return true;
    if (st->st_uid == w->uid)
        return (st->st_mode & usr) != 0;
    if (in_groups(w, st->st_gid))
        return (st->st_mode & grp) != 0;
    return (st->st_mode & oth) != 0;
}

const char *loader_unreadable_by(const struct loader_user *w, const char *path, char *why, size_t cap)
{
    char dir[4096];
    struct stat st;
    size_t n = strlen(path);

    if (n >= sizeof(dir) || path[0] != '/')
        return NULL; /* relative: judged where it is opened */
    for (size_t i = 1; i < n; i++) {
        if (path[i] != '/')
            continue;
        memcpy(dir, path, i);
        dir[i] = '\0';
        if (stat(dir, &st) == 0 && !may(w, &st, S_IXUSR, S_IXGRP, S_IXOTH)) {
            snprintf(why, cap, "cannot enter %.*s (owner uid %u, mode %04o)", (int)i, path,
                     (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
            return why;
        }
    }
    if (stat(path, &st) == 0 && !may(w, &st, S_IRUSR, S_IRGRP, S_IROTH)) {
        snprintf(why, cap, "owner uid %u, group gid %u, mode %04o", (unsigned)st.st_uid,
                 (unsigned)st.st_gid, (unsigned)(st.st_mode & 07777));
        return why;
    }
    return NULL;
}


/* The folder of path, for relative names in it: "" for a bare name. */
static void folder_of(const char *path, char *dst, size_t cap)
{
    char tmp[4096];
    const char *d;

    if (strchr(path, '/') == NULL || strlen(path) >= sizeof(tmp)) {
        dst[0] = '\0';
        return;
    }
    memcpy(tmp, path, strlen(path) + 1);
    d = dirname(tmp);
    snprintf(dst, cap, "%s", d);
}

/* Feeds one included file (st: its stat); a file that cannot be read is
 * reported by the caller's words. 0, or PX_ENOMEM. */
static int feed_file(struct cfg_parser *p, const char *path, const struct stat *st,
                     const char *why_prefix)
{
    char dir[4096], msg[4608];
    const char *text = NULL;
    size_t len = 0;
    int rc = text_of(path, st, &text, &len);

    if (rc == PX_ENOMEM)
        return rc;
    if (rc != 0) {
        snprintf(msg, sizeof msg, "%.2000s%.2000s: %s", why_prefix, path, strerror(-rc));
        cfg_report_at(p, msg);
        return 0;
    }
    folder_of(path, dir, sizeof(dir));
    cfg_feed(p, text, len, path, dir, false);
    return 0;
}

/* The files an include pattern names, in sorted order (glob's). A pattern
 * without wildcards must name a file; one with them may match none. */
static int feed_pattern(struct cfg_parser *p, const char *main_path, const char *pattern)
{
    glob_t g;
    char msg[4608];
    int rc = 0, grc = glob(pattern, GLOB_ERR, NULL, &g);

    if (grc == GLOB_NOMATCH && strpbrk(pattern, "*?[") == NULL) {
        snprintf(msg, sizeof msg, "%s: include: %s: no such file", main_path, pattern);
        cfg_report_at(p, msg);
    } else if (grc != 0 && grc != GLOB_NOMATCH) {
        snprintf(msg, sizeof msg, "%s: include: %s: cannot list the files it names", main_path,
                 pattern);
        cfg_report_at(p, msg);
    }
    for (size_t i = 0; grc == 0 && rc == 0 && i < g.gl_pathc; i++) {
        struct stat st;

        snprintf(msg, sizeof msg, "%.2000s: include: cannot read ", main_path);
        if (stat(g.gl_pathv[i], &st) != 0) {
            snprintf(msg + strlen(msg), sizeof msg - strlen(msg), "%.2000s: %s", g.gl_pathv[i],
                     strerror(errno));
            cfg_report_at(p, msg);
            continue;
        }
        if (S_ISDIR(st.st_mode))
            continue; /* sites.d/old/: folders are not files */
        rc = feed_file(p, g.gl_pathv[i], &st, msg);
    }
    if (grc == 0)
        globfree(&g);
    return rc;
}

int loader_read_config(const char *path, cfg_report_fn *report, void *arg, struct cfg **out)
{
    struct cfg_parser *p;
    char *text = NULL, msg[4608], dir[4096];
    size_t len = 0;
    int rc = read_file(path, &text, &len);

    *out = NULL;
    if (rc == PX_ENOMEM)
        return rc;
    if (rc != 0) {
        snprintf(msg, sizeof msg, "%s:0: cannot read the configuration: %s", path, strerror(-rc));
        report(arg, msg);
        return PX_ENOENT;
    }
    p = cfg_begin(report, arg, check_file, NULL);
    if (p == NULL) {
        free(text);
        return PX_ENOMEM;
    }
    folder_of(path, dir, sizeof(dir));
    cfg_feed(p, text, len, path, dir, true);
    free(text);
    rc = 0;
    texts_begin();
    for (size_t i = 0; rc == 0 && i < cfg_peek(p)->n_includes; i++)
        rc = feed_pattern(p, path, cfg_peek(p)->includes[i]);
    texts_end();
    if (rc != 0) {
        struct cfg *c = NULL;

        (void)cfg_end(p, &c);
        cfg_free(c);
        return rc;
    }
    return cfg_end(p, out);
}
