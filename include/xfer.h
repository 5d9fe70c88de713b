/* xfer.h - one data channel: a passive port (or an active connect-out), the
 * client's data connection with its TLS, the backend's data connection, and
 * the two relays between them.
 *
 * A control session owns at most one transfer. It creates it at PASV/EPSV
 * (or PORT/EPRT), names the backend's data port once the backend answered,
 * starts it when the transfer command is forwarded, and passes on the
 * transfer's final reply. The transfer reports back through ctl_xfer_event():
 * XFER_REFUSED when the client's data connection broke a rule (the reason is
 * a static string naming it), XFER_DONE when its client side is finished
 * (data flushed, close_notify sent, connection closed) so that the held final
 * reply may go out. xfer_detach() hands the transfer over to itself: it tears
 * down what is left and frees itself when its last handle is closed. */
#ifndef XFER_H
#define XFER_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

struct ctl_session;
struct log_sess;
struct portpool;
struct xfer;

enum xfer_event {
    XFER_REFUSED = 0, /* a data connection was refused for the reason given */
    XFER_DONE,        /* the client side is finished; reason NULL when clean */
};

struct xfer_params {
    uv_loop_t *loop;
    struct portpool *pool;         /* borrowed: passive ports come from here */
    const struct sockaddr *local;  /* the control connection's local address */
    const struct sockaddr *client; /* the control client's address: the only allowed peer */
    const struct sockaddr *backend_local; /* local side of the backend control
                                             connection: backend data connections
                                             start there (vsftpd checks it) */
    SSL_CTX *ssl_ctx;              /* the context the control connection was made
                                      with (its session cache and ticket keys);
                                      NULL: PROT C */
    SSL_CTX *cert_ctx;             /* the context its certificate came from
                                      (after SNI); may equal ssl_ctx */
    const uint8_t *token;          /* 32 bytes: the control session's TLS
                                      session-id context */
    bool require_reuse;            /* the data TLS must resume the control session */
    unsigned data_timeout;         /* seconds */
    const struct log_sess *lg;     /* borrowed: the session's log fields */
};

/* Passive: reserves a port, listens on the control connection's local
 * address and returns the port. NULL with *err (UV_ENOSPC when every port is
 * taken, or a libuv error). */
struct xfer *xfer_new_passive(struct ctl_session *cs, const struct xfer_params *p, uint16_t *port,
                              int *err);
/* Active (PORT/EPRT): the proxy will connect to `to` (the client's own
 * address, checked by the caller) when the transfer starts. */
struct xfer *xfer_new_active(struct ctl_session *cs, const struct xfer_params *p,
                             const struct sockaddr *to, int *err);

/* The backend's data port, at its control address. */
void xfer_set_backend(struct xfer *x, const struct sockaddr *backend_data);
/* The transfer command went to the backend. download: data flows to the client. */
void xfer_start(struct xfer *x, bool download);
/* The backend's final reply to the transfer command arrived. */
void xfer_final_reply(struct xfer *x, int code);
/* True once a data connection was refused (the reason is in *reason). */
bool xfer_refused(const struct xfer *x, const char **reason);
/* Ends the transfer at once (ABOR, session end): data connections are reset. */
void xfer_abort(struct xfer *x);
/* Hands the transfer over to itself; the caller must not touch it again. */
void xfer_detach(struct xfer *x);

/* Bytes relayed so far: to the backend (upload) and to the client (download). */
void xfer_bytes(const struct xfer *x, uint64_t *up, uint64_t *down);

/* Implemented by ctl.c. */
void ctl_xfer_event(struct ctl_session *cs, enum xfer_event ev, const char *reason);

#endif
