/* ep.h - one TCP endpoint, plaintext or TLS: the piece that control sessions
 * and data transfers share for reading, writing, handshakes and shutdown.
 *
 * An endpoint moves bytes between its socket and two borrowed buffers:
 * received plaintext goes into rbuf, plaintext to send is taken from wbuf.
 * Reading pauses by itself while rbuf is full; the owner calls ep_read()
 * again after taking bytes out. Writing happens in ep_flush(), with one
 * uv_write in flight; while TLS ciphertext waits above EP_TLS_HIGH, no more is
 * encrypted. Relays are two endpoints sharing a buffer: one's rbuf is the
 * other's wbuf, so nothing is ever buffered beyond these bounds.
 *
 * The owner embeds the endpoint, counts its handle, and gets events through
 * one callback. The callback may call ep_close(); the endpoint checks for it
 * after every event it sends. */
#ifndef EP_H
#define EP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct buf;
struct tlsconn;
struct ep;

enum ep_event {
    EP_CONNECTED = 0, /* ep_connect() finished; status 0 or a libuv error */
    EP_HANDSHAKE,     /* the TLS handshake completed */
    EP_READ,          /* rbuf received bytes */
    EP_DRAINED,       /* a write finished: wbuf has room again */
    EP_EOF,           /* the peer ended its side: status 0 clean (FIN in plaintext,
                         close_notify in TLS), UV_EOF a FIN without close_notify */
    EP_SHUTDOWN,      /* ep_shutdown() finished: close_notify and FIN are out */
    EP_ERROR,         /* status < 0: socket error or TLS failure (already logged
                         nowhere: the owner decides) */
};

typedef void ep_event_fn(struct ep *e, enum ep_event ev, int status);
typedef void ep_closed_fn(struct ep *e);

#define EP_TLS_HIGH (512 * 1024) /* stop encrypting above this much waiting ciphertext
                                    (the buffers, not this, bound control connections) */

struct ep {
    uv_tcp_t tcp; /* embedded; tcp.data = this endpoint */
    struct tlsconn *tls; /* owned; NULL in plaintext */
    struct buf *rbuf;    /* borrowed */
    struct buf *wbuf;    /* borrowed */
    ep_event_fn *on_event;
    ep_closed_fn *on_closed;
    void *owner;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    uv_connect_t creq;
    size_t inflight;     /* plaintext bytes of wbuf on the wire */
    size_t offered;      /* room given to the last socket read */
    uint64_t rx;         /* plaintext bytes delivered into rbuf so far */
    bool open;           /* tcp initialised and not yet closed */
    bool reading;        /* uv_read_start in effect */
    bool want_read;      /* the owner wants bytes (ep_read called, not paused) */
    bool writing;        /* a uv_write is in flight */
    bool want_shutdown;  /* ep_shutdown called */
    bool shut_started;   /* uv_shutdown issued */
    bool eof;            /* the peer's side ended */
    bool closing;
};

/* Initialises the TCP handle on loop. 0 or a libuv error (nothing to close). */
int ep_init(struct ep *e, uv_loop_t *loop, ep_event_fn *on_event, ep_closed_fn *on_closed,
            void *owner);
/* Accepts a pending connection of server into e (after ep_init). */
int ep_accept(struct ep *e, uv_stream_t *server);
/* Adopts fd, a connected TCP socket (a warm or freshly greeted backend
 * connection, greet.h), after ep_init. 0, or a libuv error and the caller
 * still owns fd. */
int ep_open(struct ep *e, int fd);
/* Connects to `to`, from `from` when not NULL (port 0 there: any). EP_CONNECTED
 * follows exactly once when 0 is returned. */
int ep_connect(struct ep *e, const struct sockaddr *to, const struct sockaddr *from);

/* Hands the endpoint to a new owner (the listener's PROXY-header stage
 * passes its connection on to the session): later events and the close go
 * to these. */
void ep_set_owner(struct ep *e, ep_event_fn *on_event, ep_closed_fn *on_closed, void *owner);

/* Sets the buffers (either may be NULL while unused). */
void ep_set_bufs(struct ep *e, struct buf *rbuf, struct buf *wbuf);

/* From now on the socket carries TLS through t (takes ownership). Bytes the
 * owner already read past the end of the plaintext stage are moved in from
 * `early` (may be NULL). Call with no plaintext write pending. The handshake
 * runs as bytes arrive; EP_HANDSHAKE reports its end. */
void ep_start_tls(struct ep *e, struct tlsconn *t, struct buf *early);

/* Wants bytes into rbuf: processes what is already buffered, then reads. */
void ep_read(struct ep *e);
/* Stops reading until the next ep_read(). */
void ep_pause(struct ep *e);
/* Sends what wbuf holds (encrypting first in TLS). */
void ep_flush(struct ep *e);
/* Bytes still to go out: wbuf plus ciphertext not yet written. */
size_t ep_pending(const struct ep *e);
/* Once everything queued is written: close_notify (TLS), then FIN.
 * EP_SHUTDOWN follows. */
void ep_shutdown(struct ep *e);
/* Closes the socket (idempotent). A TLS alert or close_notify still waiting
 * is tried once without blocking. reset: send RST instead of FIN. on_closed
 * follows once the handle is closed; the tlsconn is freed then. */
void ep_close(struct ep *e, bool reset);

/* The local (peer false) or remote address of the socket into *ss. 0 or a
 * libuv error. */
int ep_sockname(const struct ep *e, struct sockaddr_storage *ss, bool peer);

const char *ep_event_name(enum ep_event ev);

#endif
