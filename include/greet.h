/* greet.h - a connection to a backend up to its greeting: connect, then read
 * one whole reply, which must be 220, within a deadline. The health checks,
 * the warm connections and the sessions' own backend connects share it.
 *
 * A greeted connection can be watched (a warm one: the backend may time it
 * out and close it) and its socket taken over by a session, which adopts it
 * into an endpoint (ep_open). */
#ifndef GREET_H
#define GREET_H

#include <stdbool.h>
#include <sys/socket.h>
#include <uv.h>

struct greet;

/* status 0: greeted with 220 (reading stops). < 0: the attempt failed:
 * a libuv error from connect or read, UV_ETIMEDOUT (no greeting in time),
 * UV_EPROTO (another code, or a malformed reply: greet_text() shows it).
 * While watched: UV_EOF once the backend closes or sends anything. */
typedef void greet_fn(struct greet *g, int status, void *arg);

/* Connects to `to` on loop; the greeting must arrive within timeout_ms.
 * Returns 0 with *out set, and cb follows (once for the greeting, once more
 * when watched and it ends); or a libuv error, with no callback and nothing
 * to close. */
int greet_start(uv_loop_t *loop, const struct sockaddr *to, unsigned timeout_ms, greet_fn *cb,
                void *arg, struct greet **out);
/* After a greeting: reads on, and reports the connection's end (UV_EOF). */
void greet_watch(struct greet *g);
/* The greeting's first line, escaped for logs ("" before one came). */
const char *greet_text(const struct greet *g);
/* Whether the TCP connection was made (a timeout then means no greeting). */
bool greet_connected(const struct greet *g);
/* Ends the attempt or the connection: no callback follows; freed once the
 * handles are closed. Every greet_start() that returned 0 ends here or in
 * greet_take_fd(). */
void greet_close(struct greet *g);
/* A greeted connection's socket for an endpoint of the same loop: a new
 * descriptor (the caller owns it) or a negative libuv error; g is closed
 * either way. */
int greet_take_fd(struct greet *g);

#endif
