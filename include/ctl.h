/* ctl.h - a control session: the client's control connection (plaintext,
 * then TLS), the proxy's own pre-login dialogue, routing, the backend control
 * connection, and the relay of commands and replies once logged in, with the
 * exceptions DESIGN.md lists. A session owns at most one transfer (xfer.h). */
#ifndef CTL_H
#define CTL_H

#include <stdbool.h>
#include <uv.h>

struct server;
struct ctl_session;

/* Accepts the connection pending on listener and runs a session for it; the
 * session frees itself when it ends. implicit: TLS from the first byte. */
void ctl_accept(struct server *srv, uv_stream_t *listener, bool implicit);

/* Ends a session now (idempotent). reason: a static string, logged once. */
void ctl_close(struct ctl_session *cs, const char *reason);

/* Shutdown: tells the client 421 and ends the session once that is sent. */
void ctl_shutdown(struct ctl_session *cs);

/* The session list of a worker: an intrusive list, for shutdown. */
struct ctl_session *ctl_next(struct ctl_session *cs);

#endif
