/* bconn.h - a session's connection to its backend, with failover: the
 * address health.h picks (the healthy one with the fewest sessions) is
 * connected to and must greet with 220 within connect_timeout; when it
 * fails, the next healthy address is tried, and when every address is out
 * of the rotation each is tried in turn all the same (the checks may lag
 * behind a server that just came back). Each failed address is logged
 * (backend_unreachable, backend_refused) and counted in
 * ftpsgate_backend_connect_failures_total. */
#ifndef BCONN_H
#define BCONN_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct bconn;
struct cfg_backend;
struct log_sess;

/* status 0: fd (the caller owns it) is a connection to address idx that
 * greeted with 220. < 0: no address answered; status is the last failure's
 * (UV_ETIMEDOUT: no answer in time, UV_EPROTO: refused by its greeting,
 * another libuv error: unreachable). */
typedef void bconn_fn(void *arg, int status, int fd, size_t idx);

struct bconn_params {
    uv_loop_t *loop;
    const struct cfg_backend *b; /* borrowed: outlives the attempt */
    unsigned timeout_ms;         /* per address */
    const struct log_sess *lg;   /* borrowed: the session's, for the log lines */
    bconn_fn *cb;
    void *arg;
};

/* Starts connecting; tried: addresses not to try (bit i: address i).
 * Returns 0 with *out set and cb follows once (unless cancelled), or a
 * libuv error (out of memory, or no attempt could even start: each was
 * logged) with no callback. */
int bconn_start(const struct bconn_params *p, uint64_t tried, struct bconn **out);
/* The session ends first: no callback; the attempt frees itself. */
void bconn_cancel(struct bconn *c);

#endif
