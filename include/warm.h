/* warm.h - a worker's warm backend connections (preconnect = N): for each
 * address of each backend that asks for them, ceil(N / workers) connections
 * already greeted with 220, so that a login does not wait for the backend's
 * connect, its fork and its greeting.
 *
 * Each is used once and replaced; one that is 50 seconds old is replaced before it is 60
 * (vsftpd and its kin time out idle pre-login sessions); one the backend
 * closes or speaks on is dropped and replaced at the next tick. All are
 * dropped on reload, and an address out of the rotation (health.h) keeps
 * none. */
#ifndef WARM_H
#define WARM_H

#include <stddef.h>
#include <uv.h>

struct cfg;
struct warm;

#define WARM_MAX_AGE_MS 50000

/* A pool for one worker of `workers` on loop. NULL when out of memory. */
struct warm *warm_new(uv_loop_t *loop, unsigned workers);
/* The configuration in force: every warm connection is dropped, and the
 * backends with preconnect get new ones. */
void warm_apply(struct warm *w, const struct cfg *c);
/* A greeted connection to address addr (its text) of backend: a socket
 * descriptor the caller owns (ep_open), or -1 when none is ready. A new one
 * is started in its place 30 ms later (not during the login that took it). */
int warm_take(struct warm *w, const char *backend, const char *addr);
/* Shutdown: every connection and the timer close; nothing is started again. */
void warm_stop(struct warm *w);
/* After the loop ended. */
void warm_free(struct warm *w);

#endif
