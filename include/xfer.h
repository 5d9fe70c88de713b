/* xfer.h - one data channel: a passive port (or an active connect-out), the
 * client's data connection with its TLS, the backend's data connection, and
 * the two relays between them.
 *
 * A control session owns at most one transfer. It creates it at PASV/EPSV
 * (or PORT/EPRT), names the backend's data port once the backend answered,
 * starts it when the transfer command is forwarded, and passes on the
 * transfer's final reply. The transfer reports back through the callback in
 * its parameters (it never names its owner):
 * XFER_REFUSED when the client's data connection broke a rule (the reason is
 * a static string naming it), XFER_DONE when its client side is finished
 * (data flushed, close_notify sent, connection closed) so that the held final
 * reply may go out. xfer_detach() hands the transfer over to itself: it tears
 * down what is left and frees itself when its last handle is closed. */
#ifndef XFER_H
#define XFER_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "sharedport.h"
#include "tlsctx.h"

struct buf_alloc;
struct log_sess;
struct bufpool;
struct portpool;
struct xfer;

enum xfer_event {
    XFER_REFUSED = 0, /* a data connection was refused for the reason given */
    XFER_DONE,        /* the client side is finished; reason NULL when clean */
};

/* reason: a static string. Never called after xfer_detach(). */
typedef void xfer_event_fn(struct xfer *x, enum xfer_event ev, const char *reason, void *arg);

struct xfer_params {
    uv_loop_t *loop;
    struct portpool *pool;         /* borrowed: passive ports come from here */
    struct bufpool *bufs;          /* borrowed: the worker's buffer pool (outlives the
                                      transfer); NULL: malloc */
    const struct sockaddr *local;  /* the control connection's local address */
    const struct sockaddr *client; /* the control client's address: the only allowed peer */
    const struct sockaddr *backend_local; /* local side of the backend control
                                             connection: backend data connections
                                             start there (vsftpd checks it) */
    const struct tlsctx_conn *tls; /* the control connection's TLS (copied);
                                      NULL: PROT C, plaintext data */
    bool require_reuse;            /* the data TLS must resume the control session */
    struct sharedport *share;      /* borrowed: wait on a shared port (needs tls and
                                      require_reuse), or NULL for a port of its own */
    unsigned data_timeout;         /* seconds */
    unsigned max_passive_per_ip;   /* passive ports the client's address may hold */
    const struct log_sess *lg;     /* the session's log fields (copied) */
    xfer_event_fn *on_event;       /* how the transfer reports to its owner */
    void *arg;
};

/* Passive: reserves a port, listens on the control connection's local
 * address and returns the port. NULL with *err (UV_ENOSPC when every port is
 * taken, XFER_EPERIP when the client's address holds max_passive_per_ip
 * ports already, or a libuv error). */
#define XFER_EPERIP (-EDQUOT)
struct xfer *xfer_new_passive(const struct xfer_params *p, uint16_t *port, int *err);
/* Active (PORT/EPRT): the proxy will connect to `to` (the client's own
 * address, checked by the caller) when the transfer starts. */
struct xfer *xfer_new_active(const struct xfer_params *p, const struct sockaddr *to, int *err);

/* The backend's data port, at its control address. */
void xfer_set_backend(struct xfer *x, const struct sockaddr *backend_data);
/* Before its transfer command goes on: counts the transfer against the
 * client address's max_transfers and the process's transfer memory. NULL,
 * or the limit that refuses it ("max_transfers_per_ip", "transfer_memory"). */
const char *xfer_admit(struct xfer *x, unsigned max_transfers, uint64_t memory);
/* The transfer command went to the backend. download: data flows to the client. */
void xfer_start(struct xfer *x, bool download);
/* The backend's final reply to the transfer command arrived. */
void xfer_final_reply(struct xfer *x, int code);
/* True once a data connection was refused (the reason is in *reason). */
bool xfer_refused(const struct xfer *x, const char **reason);
/* Hands the transfer over to itself (done, ABOR, session end): what is still
 * open is reset, and the caller must not touch it again. */
void xfer_detach(struct xfer *x);

/* Bytes relayed so far: to the backend (upload) and to the client (download). */
void xfer_bytes(const struct xfer *x, uint64_t *up, uint64_t *down);

const char *xfer_event_name(enum xfer_event ev);

/* Where a data connection's TLS buffers come from (pool, the worker's) and
 * are counted against (transfer_memory), their first size and the most they
 * grow to: for handshakes that start before their transfer is known. */
void xfer_tls_alloc(struct bufpool *pool, struct buf_alloc *alloc, size_t *start, size_t *max);

#endif
