/* tlsconn.h - one TLS server endpoint over buffers, no sockets.
 *
 * Ciphertext from the peer is put into tlsconn_inbuf() (a socket can read
 * straight into its tail); ciphertext to send comes out of two buffers used
 * in turn, so that one can be on the wire (tlsconn_out_next) while OpenSSL
 * fills the other. The BIO between OpenSSL and these buffers is our own, so
 * bytes are copied once each way and no memory grows behind our back. */
#ifndef TLSCONN_H
#define TLSCONN_H

#include <stdbool.h>
#include <stddef.h>

struct buf;
struct buf_alloc;
struct tlsconn;
struct ssl_st;     /* OpenSSL's SSL */
struct ssl_ctx_st; /* OpenSSL's SSL_CTX */

#define TLSCONN_AGAIN 1  /* needs more ciphertext in, or room out */
#define TLSCONN_CLOSED 2 /* the peer sent close_notify */

/* A server-side connection for ctx, with in/out ciphertext buffers of
 * bufsize bytes each (allocated when first used). ctx is also the session
 * cache that tlsconn_forget_session() clears. NULL when out of memory. */
struct tlsconn *tlsconn_new(struct ssl_ctx_st *ctx, size_t bufsize);
void tlsconn_free(struct tlsconn *t);
/* Its ciphertext buffers take storage from a (see buf.h); before first use. */
void tlsconn_set_alloc(struct tlsconn *t, const struct buf_alloc *a);
/* Its ciphertext buffers may grow up to max bytes each (>= bufsize) while
 * the stream keeps them full (buf_set_max). */
void tlsconn_set_max(struct tlsconn *t, size_t max);
/* The OpenSSL object, for tlsctx.c alone: every other module uses the
 * accessors below, so that only tlsconn and tlsctx know OpenSSL's SSL API. */
struct ssl_st *tlsconn_ssl(struct tlsconn *t);

/* After the handshake: whether it resumed a session, the protocol version
 * ("TLSv1.3"), the cipher, and the SNI name (NULL when none). */
bool tlsconn_resumed(const struct tlsconn *t);
const char *tlsconn_version(const struct tlsconn *t);
const char *tlsconn_cipher(const struct tlsconn *t);
const char *tlsconn_sni(const struct tlsconn *t);
/* True once our close_notify is queued. */
bool tlsconn_shutdown_sent(const struct tlsconn *t);
/* TLS 1.3: one more session ticket goes out with the next record, so that a
 * client spending one per data connection always has one. */
void tlsconn_more_tickets(struct tlsconn *t);

/* Ciphertext from the peer goes here (buf_room/buf_tail/buf_commit). */
struct buf *tlsconn_inbuf(struct tlsconn *t);
/* The peer's socket reached EOF: once the buffered ciphertext is used up,
 * OpenSSL sees the end of the stream instead of "wait for more". */
void tlsconn_set_eof(struct tlsconn *t);

/* Whether a read may find something: ciphertext not yet used, plaintext
 * OpenSSL holds, or the end of the stream. */
bool tlsconn_has_input(const struct tlsconn *t);

/* Drives the handshake: 0 when complete (also when it already was),
 * TLSCONN_AGAIN, or PX_EPROTO (the alert, if any, waits in the out buffers). */
int tlsconn_handshake(struct tlsconn *t);
bool tlsconn_handshake_done(const struct tlsconn *t);

/* Decrypts into dst: 0 with *nread > 0, TLSCONN_AGAIN, TLSCONN_CLOSED, or
 * PX_EPROTO (TLS error, or EOF without close_notify: a truncation). SSL_read
 * also drives the handshake. */
int tlsconn_read(struct tlsconn *t, char *dst, size_t cap, size_t *nread);

/* Encrypts up to len bytes: 0 with *nwritten > 0, TLSCONN_AGAIN when the out
 * buffers are full (call again with the same bytes, or more, once some
 * ciphertext was sent), or PX_EPROTO. */
int tlsconn_write(struct tlsconn *t, const char *src, size_t len, size_t *nwritten);

/* Queues close_notify (once). 0 or PX_EPROTO. */
int tlsconn_shutdown(struct tlsconn *t);

/* The next ciphertext buffer to put on the wire, or NULL when there is none
 * or one is already out. The caller writes all of it and then calls
 * tlsconn_out_done(). */
struct buf *tlsconn_out_next(struct tlsconn *t);
void tlsconn_out_done(struct tlsconn *t);
/* A new capacity for the ciphertext buffers (a connection that did its
 * handshake with small ones, before it was known to be wanted). A buffer on
 * the wire is resized when it comes back. 0 or PX_ENOMEM (the old sizes
 * stay; they still work). */
int tlsconn_set_bufsize(struct tlsconn *t, size_t cap);
/* Ciphertext bytes not yet confirmed written (queued and on the wire). */
size_t tlsconn_out_pending(const struct tlsconn *t);

/* Removes this connection's session from the session cache of the context
 * it was made with: a control session does so when it ends, so its data
 * connections' way back in is closed and the cache does not fill up. */
void tlsconn_forget_session(struct tlsconn *t);

/* Gives back buffer memory that holds no bytes (idle control sessions). */
void tlsconn_shrink(struct tlsconn *t);

/* The first queued OpenSSL error as text, for a log line; "" when none. The
 * queue is cleared. */
const char *tlsconn_error_text(char *dst, size_t cap);

#endif
