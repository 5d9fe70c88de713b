/* tlsconn.c - a TLS endpoint over struct buf (see tlsconn.h).
 *
 * The BIO below reads ciphertext from t->in and appends to t->out[t->fill].
 * When the fill buffer is handed to the socket, the other one becomes the fill
 * buffer, so OpenSSL never writes into bytes that are on the wire. */
#include "tlsconn.h"

#include <limits.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "px.h"

struct tlsconn {
    SSL *ssl;
    SSL_CTX *ctx0;  /* the context it was made with: its session cache */
    struct buf in;
    struct buf out[2];
    unsigned fill;  /* index of the buffer OpenSSL appends to */
    bool out_busy;  /* out[fill ^ 1] is on the wire */
    bool eof;       /* the peer's socket reached EOF */
    bool shut_sent; /* close_notify queued */
    bool hs_done;   /* the first handshake completed (later tickets re-enter
                       OpenSSL's init state; that is not a new handshake) */
    size_t want_cap; /* tlsconn_set_bufsize() for the buffer on the wire, or 0 */
};

static BIO_METHOD *bio_method;
static CRYPTO_ONCE bio_once = CRYPTO_ONCE_STATIC_INIT;

static int bio_write_ex(BIO *b, const char *data, size_t len, size_t *written)
{
    struct tlsconn *t = BIO_get_data(b);
    struct buf *o = &t->out[t->fill];
    size_t room = buf_room(o);

    /* Full while the other buffer is on the wire: the socket is behind, so
     * an elastic buffer (tlsconn_set_max) grows. */
    if (room < len && buf_grow(o) == 0)
        room = buf_room(o);
    BIO_clear_retry_flags(b);
    if (room == 0) {
        BIO_set_retry_write(b);
        *written = 0;
        return 0;
    }
    if (len > room)
        len = room;
    memcpy(buf_tail(o), data, len);
    buf_commit(o, len);
    *written = len;
    return 1;
}

static int bio_read_ex(BIO *b, char *data, size_t len, size_t *readbytes)
{
    struct tlsconn *t = BIO_get_data(b);
    size_t have = buf_len(&t->in);

    BIO_clear_retry_flags(b);
    *readbytes = 0;
    if (have == 0) {
        if (!t->eof)
            BIO_set_retry_read(b);
        return 0;
    }
    if (len > have)
        len = have;
    memcpy(data, buf_head(&t->in), len);
    buf_consume(&t->in, len);
    *readbytes = len;
    return 1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    struct tlsconn *t = BIO_get_data(b);

    (void)num;
    (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
        return (long)buf_len(&t->in);
    case BIO_CTRL_WPENDING:
        return (long)(buf_len(&t->out[0]) + buf_len(&t->out[1]));
    case BIO_CTRL_EOF:
        return t->eof && buf_len(&t->in) == 0;
    default:
        return 0;
    }
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static void bio_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ftpsgate buf");

    if (m == NULL)
        return;
    if (!BIO_meth_set_write_ex(m, bio_write_ex) || !BIO_meth_set_read_ex(m, bio_read_ex) ||
        !BIO_meth_set_ctrl(m, bio_ctrl) || !BIO_meth_set_create(m, bio_create)) {
        BIO_meth_free(m);
        return;
    }
    bio_method = m;
}

struct tlsconn *tlsconn_new(SSL_CTX *ctx, size_t bufsize)
{
    struct tlsconn *t;
    BIO *bio;

    if (!CRYPTO_THREAD_run_once(&bio_once, bio_method_init) || bio_method == NULL)
        return NULL;
    t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    buf_init(&t->in, bufsize);
    buf_init(&t->out[0], bufsize);
    buf_init(&t->out[1], bufsize);
    t->ssl = SSL_new(ctx);
    t->ctx0 = ctx;
    bio = BIO_new(bio_method);
    if (t->ssl == NULL || bio == NULL) {
        BIO_free(bio);
        SSL_free(t->ssl);
        free(t);
        return NULL;
    }
    BIO_set_data(bio, t);
    SSL_set_bio(t->ssl, bio, bio);
    SSL_set_accept_state(t->ssl);
    return t;
}

void tlsconn_free(struct tlsconn *t)
{
    if (t == NULL)
        return;
    /* Freed without a close_notify exchange, OpenSSL would drop the session
     * from the cache and mark it unresumable: one aborted data connection
     * would then break resumption for every later one of its control
     * session. Sessions end explicitly instead (tlsconn_forget_session). */
    SSL_set_shutdown(t->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(t->ssl);
    buf_free(&t->in);
    buf_free(&t->out[0]);
    buf_free(&t->out[1]);
    free(t);
}

void tlsconn_set_alloc(struct tlsconn *t, const struct buf_alloc *a)
{
    buf_set_alloc(&t->in, a);
    buf_set_alloc(&t->out[0], a);
    buf_set_alloc(&t->out[1], a);
}

void tlsconn_set_max(struct tlsconn *t, size_t max)
{
    buf_set_max(&t->in, max);
    buf_set_max(&t->out[0], max);
    buf_set_max(&t->out[1], max);
}

SSL *tlsconn_ssl(struct tlsconn *t) { return t->ssl; }
bool tlsconn_resumed(const struct tlsconn *t) { return SSL_session_reused(t->ssl) == 1; }
const char *tlsconn_version(const struct tlsconn *t) { return SSL_get_version(t->ssl); }
const char *tlsconn_cipher(const struct tlsconn *t) { return SSL_get_cipher_name(t->ssl); }
/* OpenSSL also counts a fatal alert as our side's end. */
bool tlsconn_shutdown_sent(const struct tlsconn *t)
{
    return t->shut_sent || (SSL_get_shutdown(t->ssl) & SSL_SENT_SHUTDOWN) != 0;
}

const char *tlsconn_sni(const struct tlsconn *t)
{
    return SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
}

void tlsconn_more_tickets(struct tlsconn *t)
{
    if (SSL_version(t->ssl) >= TLS1_3_VERSION)
        (void)SSL_new_session_ticket(t->ssl);
}
struct buf *tlsconn_inbuf(struct tlsconn *t) { return &t->in; }
void tlsconn_set_eof(struct tlsconn *t) { t->eof = true; }
bool tlsconn_handshake_done(const struct tlsconn *t) { return t->hs_done; }
bool tlsconn_has_input(const struct tlsconn *t)
{
    return buf_len(&t->in) > 0 || t->eof || SSL_has_pending(t->ssl) == 1;
}

/* Maps the result of an SSL_* call. A clean EOF from the BIO without
 * close_notify arrives as SSL_ERROR_SSL (unexpected eof) or SYSCALL: both are
 * errors, never a clean end. */
static int map_error(struct tlsconn *t, int rc)
{
    switch (SSL_get_error(t->ssl, rc)) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        return TLSCONN_AGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return TLSCONN_CLOSED;
    default:
        return PX_EPROTO;
    }
}

int tlsconn_handshake(struct tlsconn *t)
{
    int rc;

    if (t->hs_done)
        return 0;
    ERR_clear_error();
    rc = SSL_do_handshake(t->ssl);
    if (rc == 1) {
        t->hs_done = true;
        return 0;
    }
    rc = map_error(t, rc);
    return rc == TLSCONN_CLOSED ? PX_EPROTO : rc;
}

int tlsconn_read(struct tlsconn *t, char *dst, size_t cap, size_t *nread)
{
    int rc;

    *nread = 0;
    ERR_clear_error();
    rc = SSL_read(t->ssl, dst, cap > INT_MAX ? INT_MAX : (int)cap);
    if (SSL_is_init_finished(t->ssl))
        t->hs_done = true;
    if (rc > 0) {
        *nread = (size_t)rc;
        return 0;
    }
    return map_error(t, rc);
}

int tlsconn_write(struct tlsconn *t, const char *src, size_t len, size_t *nwritten)
{
    int rc;

    *nwritten = 0;
    if (len == 0)
        return 0;
    ERR_clear_error();
    rc = SSL_write(t->ssl, src, len > INT_MAX ? INT_MAX : (int)len);
    if (rc > 0) {
        *nwritten = (size_t)rc;
        return 0;
    }
    rc = map_error(t, rc);
    return rc == TLSCONN_CLOSED ? PX_EPROTO : rc;
}

int tlsconn_shutdown(struct tlsconn *t)
{
    int rc;

    if (t->shut_sent)
        return 0;
    t->shut_sent = true;
    ERR_clear_error();
    rc = SSL_shutdown(t->ssl);
    /* 0: our close_notify is queued and the peer's has not come yet. */
    if (rc >= 0)
        return 0;
    return map_error(t, rc) == TLSCONN_AGAIN ? 0 : PX_EPROTO;
}

struct buf *tlsconn_out_next(struct tlsconn *t)
{
    struct buf *b = &t->out[t->fill];

    if (t->out_busy || buf_len(b) == 0)
        return NULL;
    t->out_busy = true;
    t->fill ^= 1;
    return b;
}

void tlsconn_out_done(struct tlsconn *t)
{
    PX_ASSERT(t->out_busy);
    t->out_busy = false;
    buf_reset(&t->out[t->fill ^ 1]);
    if (t->want_cap != 0) {
        (void)buf_resize(&t->out[t->fill ^ 1], t->want_cap);
        t->want_cap = 0;
    }
}

int tlsconn_set_bufsize(struct tlsconn *t, size_t cap)
{
    int rc;

    if (cap < buf_len(&t->in) || cap < buf_len(&t->out[t->fill]))
        return PX_EINVAL;
    rc = buf_resize(&t->in, cap);
    if (rc == 0)
        rc = buf_resize(&t->out[t->fill], cap);
    if (rc == 0 && t->out_busy)
        t->want_cap = cap;
    else if (rc == 0)
        rc = buf_resize(&t->out[t->fill ^ 1], cap);
    return rc;
}

size_t tlsconn_out_pending(const struct tlsconn *t)
{
    return buf_len(&t->out[0]) + buf_len(&t->out[1]);
}

void tlsconn_shrink(struct tlsconn *t)
{
    buf_shrink(&t->in);
    if (!t->out_busy) {
        buf_shrink(&t->out[0]);
        buf_shrink(&t->out[1]);
    }
}

const char *tlsconn_error_text(char *dst, size_t cap)
{
    unsigned long e = ERR_get_error();

    if (cap == 0)
        return dst;
    dst[0] = '\0';
    if (e != 0)
        ERR_error_string_n(e, dst, cap);
    ERR_clear_error();
    return dst;
}

void tlsconn_forget_session(struct tlsconn *t)
{
    SSL_SESSION *sess = SSL_get_session(t->ssl);

    if (sess != NULL)
        SSL_CTX_remove_session(t->ctx0, sess);
}
