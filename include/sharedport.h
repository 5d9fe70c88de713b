/* sharedport.h - one worker's shared passive ports (shared_passive_ports):
 * each port listens for any number of waiting sessions at once, and a data
 * connection goes to the session its TLS handshake resumes.
 *
 * A transfer that waits registers with sharedport_wait(): it gets the port
 * with the fewest waiting sessions on its control connection's local address
 * (a port is taken from the worker's pool and listened on when there is
 * none, and given back when its last session stops waiting). Every accepted
 * connection runs its TLS handshake here, in the worker's context: the
 * session its ticket or session id names (tlsctx_data_shared) is looked up
 * in the registry (sharereg.h) and must wait on this port, for a connection
 * from this address. Only then does the connection go to the waiting
 * transfer, through its callback, with the handshake complete; anything else
 * is refused here, logged and counted (ftpsgate_data_connections_refused_total
 * by reason; ftpsgate_data_connections_matched_total counts the matches).
 * A refused connection leaves every waiting session waiting. */
#ifndef SHAREDPORT_H
#define SHAREDPORT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "sharereg.h"

struct buf_alloc;
struct ep;
struct log_sess;
struct portpool;
struct sharedport;
struct sharedport_lsn;
struct tlsctx_conn;

/* The data connection resumed owner's session: owner takes e (accepted,
 * reading, TLS handshake done; ep_set_owner() it at once) and copies ci (its
 * TLS facts, valid during the call; tlsctx_adopt() the copy). */
typedef void sharedport_matched_fn(void *owner, struct ep *e, const struct tlsctx_conn *ci);

/* A waiting session: embedded in its owner, which must call
 * sharedport_cancel() before it goes. */
struct sharedport_wait {
    struct sharereg_entry reg;
    struct sharedport_lsn *lsn;    /* the port's listener; NULL when not waiting */
    const struct tlsctx_conn *ctl; /* borrowed: the control connection's TLS */
    const struct log_sess *lg;     /* borrowed: the session's log fields */
    sharedport_matched_fn *on_matched;
};

/* A worker's shared ports on loop. Handshake buffers come from alloc
 * (copied), tls_start bytes first, growing up to tls_max. NULL when out of
 * memory. */
struct sharedport *sharedport_new(uv_loop_t *loop, const struct buf_alloc *alloc,
                                  size_t tls_start, size_t tls_max);
/* The worker stops: handshakes still running are closed. */
void sharedport_stop(struct sharedport *s);
/* After the loop ended (no session waits any more). */
void sharedport_free(struct sharedport *s);

/* Waits for a data connection for the session whose control connection is
 * ctl (borrowed, as lg), at local (its local address), from client. 0 with
 * *port; UV_ENOSPC when no port is open there and the pool has none free;
 * PX_EEXIST when the session waits already; or a libuv error. */
int sharedport_wait(struct sharedport *s, struct portpool *pool, const struct sockaddr *local,
                    const struct sockaddr *client, const struct tlsctx_conn *ctl,
                    const struct log_sess *lg, struct sharedport_wait *w,
                    sharedport_matched_fn *on_matched, void *owner, uint16_t *port);
/* Stops waiting (idempotent): on_matched is not called any more. */
void sharedport_cancel(struct sharedport *s, struct sharedport_wait *w);

#endif
