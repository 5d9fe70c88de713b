/* reload.h - loading generations and what each load publishes.
 *
 * The first load runs on the calling thread at start-up. Every later load
 * (SIGHUP, a changed file under the watch, the daily check) runs on a thread
 * of libuv's pool, off every event loop: reading the INI file, reading and
 * verifying certificates and making the TLS contexts never stall a session.
 * Only the finished generation reaches the loop, which hands it to the
 * workers (server_apply, server_post_apply). Loads never overlap; a request
 * during one runs once it is done.
 *
 * Each load logs its findings, its verdict (reloaded, reload_failed) and
 * sets the metrics that describe the configuration in force. reload_check()
 * is `ftpsgate -t`: the same load, printed. */
#ifndef RELOAD_H
#define RELOAD_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

struct certload;
struct gen;
struct server;
struct watch;
struct watch_names;

struct reload {
    uv_loop_t *loop;      /* the main loop: worker 0's */
    const char *path;
    struct server *srv;   /* [n] the workers a new generation goes to */
    unsigned n;
    struct certload *certs; /* owned: the certificate cache */
    uint64_t next_id;
    struct watch *watch;  /* the files in force */
    uv_timer_t daily;     /* the daily check */
    bool has_daily;

    uv_work_t work;       /* the load in progress */
    bool busy, stopped;
    const char *why;      /* its trigger */
    bool recheck;
    struct gen *result;   /* what it made, NULL when rejected */
    struct watch_names *result_names; /* the files result names, to watch */
    const char *queued;   /* a trigger that came during it, or NULL */
    bool queued_recheck;
};

/* ftpsgate -t: loads path, prints the report and every finding, and returns
 * the exit status (0 can serve, 3 can serve with degraded sites, 1 cannot). */
int reload_check(const char *path);

/* Start-up: the first generation (one reference), loaded on this thread,
 * its findings logged and its metrics set; NULL when it cannot serve
 * (logged). r->loop, path, srv and n may be filled in later. */
struct gen *reload_first(struct reload *r, const char *path);
/* Once the workers run: watch the files in force and check daily. */
void reload_arm(struct reload *r);
/* From the main loop: load again off the loop (why: the log's trigger). */
void reload_request(struct reload *r, const char *why);
/* Stops watching and checking (shutdown); a load in flight is dropped. */
void reload_stop(struct reload *r);
/* Frees what is left (after the loop ended). */
void reload_free(struct reload *r);

#endif
