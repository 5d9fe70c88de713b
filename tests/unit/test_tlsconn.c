/* test_tlsconn.c - the TLS endpoint joined in memory to an OpenSSL client:
 * handshake, input a byte at a time, both directions, close_notify,
 * truncation, output backpressure, and the session-id-context rule that data
 * connections rely on (a session resumes only under the context it was made
 * with, for TLS 1.2 and 1.3). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "buf.h"
#include "px.h"
#include "tlsconn.h"

struct pair {
    struct tlsconn *srv;
    SSL *cli;
    BIO *cli_in, *cli_out; /* client's view: in = from server, out = to server */
};

static SSL_CTX *server_ctx(int max_version)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *crt = X509_new();
    X509_NAME *name = X509_get_subject_name(crt);

    assert_non_null(ctx);
    assert_non_null(key);
    ASN1_INTEGER_set(X509_get_serialNumber(crt), 1);
    X509_gmtime_adj(X509_getm_notBefore(crt), -60);
    X509_gmtime_adj(X509_getm_notAfter(crt), 3600);
    X509_set_pubkey(crt, key);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"test", -1, -1,
                               0);
    X509_set_issuer_name(crt, name);
    assert_true(X509_sign(crt, key, EVP_sha256()) > 0);
    assert_int_equal(SSL_CTX_use_certificate(ctx, crt), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(ctx, key), 1);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    if (max_version != 0)
        SSL_CTX_set_max_proto_version(ctx, max_version);
    X509_free(crt);
    EVP_PKEY_free(key);
    return ctx;
}

static void pair_open(struct pair *p, SSL_CTX *sctx, SSL_CTX *cctx, size_t bufsize)
{
    p->srv = tlsconn_new(sctx, bufsize);
    assert_non_null(p->srv);
    p->cli = SSL_new(cctx);
    p->cli_in = BIO_new(BIO_s_mem());
    p->cli_out = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(p->cli_in, -1);
    SSL_set_bio(p->cli, p->cli_in, p->cli_out);
    SSL_set_connect_state(p->cli);
}

static void pair_close(struct pair *p)
{
    SSL_set_shutdown(p->cli, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN); /* keep its session */
    tlsconn_free(p->srv);
    SSL_free(p->cli);
}

/* Server ciphertext -> client. */
static void to_client(struct pair *p)
{
    struct buf *b;

    while ((b = tlsconn_out_next(p->srv)) != NULL) {
        assert_int_equal(BIO_write(p->cli_in, buf_head(b), (int)buf_len(b)), (int)buf_len(b));
        tlsconn_out_done(p->srv);
    }
}

/* Client ciphertext -> server, at most step bytes at a time, running the
 * server handshake after each piece. */
static void to_server(struct pair *p, size_t step)
{
    char tmp[4096];
    int n;

    while ((n = BIO_read(p->cli_out, tmp, (int)(step < sizeof(tmp) ? step : sizeof(tmp)))) > 0) {
        assert_int_equal(buf_append(tlsconn_inbuf(p->srv), tmp, (size_t)n), 0);
        (void)tlsconn_handshake(p->srv);
    }
}

static void handshake(struct pair *p, size_t step)
{
    for (int i = 0; i < 20 && !(tlsconn_handshake_done(p->srv) && SSL_is_init_finished(p->cli));
         i++) {
        (void)SSL_do_handshake(p->cli);
        to_server(p, step);
        to_client(p);
    }
    assert_true(tlsconn_handshake_done(p->srv));
    assert_true(SSL_is_init_finished(p->cli));
}

static void test_handshake_and_data(void **state)
{
    static const size_t steps[] = {1, 7, 4096};
    SSL_CTX *sctx = server_ctx(0), *cctx = SSL_CTX_new(TLS_client_method());

    (void)state;
    for (size_t i = 0; i < PX_NELEM(steps); i++) {
        struct pair p;
        char got[64];
        size_t n;

        pair_open(&p, sctx, cctx, 16 * 1024);
        handshake(&p, steps[i]);
        /* client -> server */
        assert_int_equal(SSL_write(p.cli, "USER alice\r\n", 12), 12);
        to_server(&p, steps[i]);
        assert_int_equal(tlsconn_read(p.srv, got, sizeof(got), &n), 0);
        assert_int_equal(n, 12);
        assert_memory_equal(got, "USER alice\r\n", 12);
        assert_int_equal(tlsconn_read(p.srv, got, sizeof(got), &n), TLSCONN_AGAIN);
        /* server -> client */
        assert_int_equal(tlsconn_write(p.srv, "331 ok\r\n", 8, &n), 0);
        assert_int_equal(n, 8);
        to_client(&p);
        assert_int_equal(SSL_read(p.cli, got, sizeof(got)), 8);
        assert_memory_equal(got, "331 ok\r\n", 8);
        pair_close(&p);
    }
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

/* A handshake with small buffers, then tlsconn_set_bufsize() (the shared
 * ports' connections): bytes already in the buffers stay, and records larger
 * than the old size now fit whole. Also while a buffer is on the wire. */
static void test_buffers_grow_after_the_handshake(void **state)
{
    SSL_CTX *sctx = server_ctx(0), *cctx = SSL_CTX_new(TLS_client_method());
    static char big[64 * 1024], got[64 * 1024];
    struct pair p;
    struct buf *wire;
    size_t n, total = 0;

    (void)state;
    memset(big, 'x', sizeof(big));
    pair_open(&p, sctx, cctx, 18 * 1024);
    handshake(&p, 4096);
    assert_int_equal(SSL_write(p.cli, "STOR", 4), 4);
    to_server(&p, 4096);                     /* 4 bytes wait in the small in buffer */
    assert_int_equal(tlsconn_write(p.srv, "150 ok\r\n", 8, &n), 0);
    wire = tlsconn_out_next(p.srv);          /* on the wire while we resize */
    assert_non_null(wire);
    assert_int_equal(tlsconn_set_bufsize(p.srv, 256 * 1024), 0);
    assert_int_equal(BIO_write(p.cli_in, buf_head(wire), (int)buf_len(wire)), (int)buf_len(wire));
    tlsconn_out_done(p.srv);
    assert_int_equal(SSL_read(p.cli, got, sizeof(got)), 8);
    assert_int_equal(tlsconn_read(p.srv, got, sizeof(got), &n), 0);
    assert_int_equal(n, 4);
    /* 64 KiB from the server before any goes out: more than the old 18 KiB
     * buffers could hold. */
    for (size_t done = 0; done < sizeof(big); done += n)
        assert_int_equal(tlsconn_write(p.srv, big + done, sizeof(big) - done, &n), 0);
    to_client(&p);
    while (total < sizeof(big)) {
        int r = SSL_read(p.cli, got, sizeof(got));

        assert_true(r > 0);
        total += (size_t)r;
    }
    pair_close(&p);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

static void test_close_notify_and_truncation(void **state)
{
    SSL_CTX *sctx = server_ctx(0), *cctx = SSL_CTX_new(TLS_client_method());
    struct pair p;
    char got[64];
    size_t n;

    (void)state;
    /* The client's close_notify is a clean end. */
    pair_open(&p, sctx, cctx, 16 * 1024);
    handshake(&p, 4096);
    SSL_shutdown(p.cli);
    to_server(&p, 4096);
    assert_int_equal(tlsconn_read(p.srv, got, sizeof(got), &n), TLSCONN_CLOSED);
    /* ... and ours reaches the client. */
    assert_int_equal(tlsconn_shutdown(p.srv), 0);
    to_client(&p);
    assert_int_equal(SSL_read(p.cli, got, sizeof(got)), 0);
    assert_int_equal(SSL_get_error(p.cli, 0), SSL_ERROR_ZERO_RETURN);
    pair_close(&p);

    /* A socket EOF without close_notify is a truncation, never a clean end. */
    pair_open(&p, sctx, cctx, 16 * 1024);
    handshake(&p, 4096);
    assert_int_equal(SSL_write(p.cli, "data", 4), 4);
    to_server(&p, 4096);
    tlsconn_set_eof(p.srv);
    assert_int_equal(tlsconn_read(p.srv, got, sizeof(got), &n), 0);
    assert_int_equal(n, 4);
    assert_int_equal(tlsconn_read(p.srv, got, sizeof(got), &n), PX_EPROTO);
    pair_close(&p);

    /* Garbage instead of a ClientHello fails the handshake. */
    pair_open(&p, sctx, cctx, 16 * 1024);
    assert_int_equal(buf_append(tlsconn_inbuf(p.srv), "GET / HTTP/1.0\r\n\r\n", 18), 0);
    assert_int_equal(tlsconn_handshake(p.srv), PX_EPROTO);
    pair_close(&p);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

/* With small out buffers and no draining, writes stop with TLSCONN_AGAIN;
 * once the ciphertext is taken, the same bytes go through and arrive intact. */
static void test_backpressure(void **state)
{
    SSL_CTX *sctx = server_ctx(0), *cctx = SSL_CTX_new(TLS_client_method());
    static char data[200000], got[sizeof(data)];
    struct pair p;
    size_t sent = 0, rcvd = 0, n;
    int again = 0, rc;

    (void)state;
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (char)(i * 7 + i / 251);
    pair_open(&p, sctx, cctx, 8 * 1024);
    handshake(&p, 4096);
    while (rcvd < sizeof(data)) {
        if (sent < sizeof(data)) {
            size_t len = sizeof(data) - sent > 16384 ? 16384 : sizeof(data) - sent;

            rc = tlsconn_write(p.srv, data + sent, len, &n);
            if (rc == TLSCONN_AGAIN) {
                again++;
            } else {
                assert_int_equal(rc, 0);
                sent += n;
                continue; /* fill until the buffers push back */
            }
        }
        to_client(&p);
        while ((rc = SSL_read(p.cli, got + rcvd, (int)(sizeof(got) - rcvd))) > 0)
            rcvd += (size_t)rc;
    }
    assert_true(again > 0);
    assert_memory_equal(got, data, sizeof(data));
    pair_close(&p);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

/* Elastic ciphertext buffers (tlsconn_set_max): while nothing is taken out,
 * the fill buffer doubles from 8 KiB up to 64 KiB, so four 16 KiB records fit
 * before the first TLSCONN_AGAIN, and the bytes still arrive whole. */
static void test_buffers_grow(void **state)
{
    SSL_CTX *sctx = server_ctx(0), *cctx = SSL_CTX_new(TLS_client_method());
    static char data[4 * 16384], got[sizeof(data)];
    struct pair p;
    size_t sent = 0, rcvd = 0, n;
    int rc;

    (void)state;
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (char)(i * 13 + i / 97);
    pair_open(&p, sctx, cctx, 8 * 1024);
    tlsconn_set_max(p.srv, 64 * 1024);
    handshake(&p, 4096);
    while (sent < sizeof(data)) {
        rc = tlsconn_write(p.srv, data + sent, sizeof(data) - sent > 16384 ? 16384
                                                                           : sizeof(data) - sent,
                           &n);
        if (rc != 0)
            break;
        sent += n;
    }
    /* Without growth, an 8 KiB buffer pushes back inside the first record. */
    assert_true(sent >= 3 * 16384);
    assert_true(tlsconn_out_pending(p.srv) > 3 * 16384);
    while (rcvd < sizeof(data)) {
        to_client(&p);
        while ((rc = SSL_read(p.cli, got + rcvd, (int)(sizeof(got) - rcvd))) > 0)
            rcvd += (size_t)rc;
        if (sent < sizeof(data)) {
            assert_int_equal(tlsconn_write(p.srv, data + sent, sizeof(data) - sent, &n), 0);
            sent += n;
        }
    }
    assert_memory_equal(got, data, sizeof(data));
    pair_close(&p);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

/* Runs one connection under session-id context token, offering sess;
 * returns whether it resumed and, in *out, the session the client got. */
static int connect_with(SSL_CTX *sctx, SSL_CTX *cctx, const char *token, SSL_SESSION *sess,
                        SSL_SESSION **out)
{
    struct pair p;
    char tmp[16];
    int reused;

    pair_open(&p, sctx, cctx, 16 * 1024);
    assert_int_equal(SSL_set_session_id_context(tlsconn_ssl(p.srv), (const unsigned char *)token,
                                                (unsigned)strlen(token)),
                     1);
    if (sess != NULL)
        SSL_set_session(p.cli, sess);
    handshake(&p, 4096);
    /* TLS 1.3 tickets arrive after the handshake: let the client read them. */
    (void)SSL_read(p.cli, tmp, sizeof(tmp));
    reused = SSL_session_reused(tlsconn_ssl(p.srv));
    if (out != NULL)
        *out = SSL_get1_session(p.cli);
    pair_close(&p);
    return reused;
}

static void test_resumption_is_bound_to_its_context(void **state)
{
    static const int versions[] = {TLS1_2_VERSION, TLS1_3_VERSION};

    (void)state;
    for (size_t i = 0; i < PX_NELEM(versions); i++) {
        SSL_CTX *sctx = server_ctx(versions[i]), *cctx = SSL_CTX_new(TLS_client_method());
        SSL_SESSION *a = NULL, *a2 = NULL;

        SSL_CTX_set_session_cache_mode(cctx, SSL_SESS_CACHE_CLIENT);
        assert_int_equal(connect_with(sctx, cctx, "session-A", NULL, &a), 0);
        assert_non_null(a);
        /* Same context: resumes (this is the data connection of session A). */
        assert_int_equal(connect_with(sctx, cctx, "session-A", a, &a2), 1);
        /* Another control session's context: A's session must not resume. */
        assert_int_equal(connect_with(sctx, cctx, "session-B", a, NULL), 0);
        SSL_SESSION_free(a);
        SSL_SESSION_free(a2);
        SSL_CTX_free(sctx);
        SSL_CTX_free(cctx);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handshake_and_data),
        cmocka_unit_test(test_buffers_grow_after_the_handshake),
        cmocka_unit_test(test_close_notify_and_truncation),
        cmocka_unit_test(test_backpressure),
        cmocka_unit_test(test_buffers_grow),
        cmocka_unit_test(test_resumption_is_bound_to_its_context),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
