/* tlsctx.c - a generation's TLS contexts and the choice of certificate per
 * handshake (see tlsctx.h). The contexts hold no certificate of their own:
 * OpenSSL's certificate callback (on_cert) puts the chosen one on each
 * connection, so ten thousand sites cost ten thousand certificates, not ten
 * thousand contexts. */
#include "tlsctx_int.h"

#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "certcheck.h"
#include "certload.h"
#include "cfg.h"
#include "ftp.h"
#include "route.h"
#include "tlsconn.h"

#define SESSION_TIMEOUT (24 * 3600) /* a session's data connections may come late */
#define CONTROL_TICKETS 4

struct tlsctx {
    const struct cfg *cfg; /* borrowed */
    struct certplan plan;  /* owned */
    SSL_CTX **ctx;         /* [n_ctx]: one per worker */
    struct tlsctx_own **own; /* [n_ctx]: each worker's copies of the certificates */
    unsigned n_ctx;
};

static int conn_index = -1;
static CRYPTO_ONCE index_once = CRYPTO_ONCE_STATIC_INIT;

/* Session ticket keys per worker, made once for the life of the process: a
 * shared passive port's handshakes run in the context of the newest
 * generation, and a session of an older one must still resume there. */
#define TICKET_KEYS_LEN 80 /* name, HMAC and AES keys (SSL_CTX_set_tlsext_ticket_keys) */
#define MAX_WORKERS 64
static unsigned char ticket_keys[MAX_WORKERS][TICKET_KEYS_LEN];
static bool ticket_keys_ok;

static void index_init(void)
{
    conn_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    ticket_keys_ok = RAND_bytes(&ticket_keys[0][0], (int)sizeof(ticket_keys)) == 1;
}

int tlsctx_token(uint8_t token[TLSCTX_TOKEN_LEN])
{
    return RAND_bytes(token, TLSCTX_TOKEN_LEN) == 1 ? 0 : -1;
}

/* ---- choosing the certificate ---- */

/* SNI: the site (and which of its names) the name matches; the certificate
 * follows in on_cert. */
static bool central_covers(const struct tlsctx *c, const char *name)
{
    for (unsigned i = 0; i < c->plan.n_central; i++)
        if (X509_check_host(c->plan.central[i]->leaf, name, strlen(name), 0, NULL) == 1)
            return true;
    return false;
}

static int on_servername(SSL *ssl, int *alert, void *arg)
{
    struct tlsctx_conn *ci = SSL_get_ex_data(ssl, conn_index);
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    int site, host;

    (void)arg;
    if (ci == NULL || ci->data || name == NULL)
        return SSL_TLSEXT_ERR_OK;
    if (route_lookup(ci->tls->cfg, name, strlen(name), &site, &host)) {
        ci->sni_site = site;
        ci->sni_host = host;
    } else if (ci->tls->cfg->strict_sni && !central_covers(ci->tls, name)) {
        ci->refused = "unrecognized_name";
        *alert = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* ALPN (RFC 7301): "ftp" when offered; a list without it is another
 * protocol's client (ALPACA: a browser sent to the FTP port) and gets
 * no_application_protocol. No ALPN at all: served as always. */
static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    struct tlsctx_conn *ci = SSL_get_ex_data(ssl, conn_index);
    size_t at = 0;

    (void)arg;
    if (ftp_alpn_select(in, inlen, &at) == 1) {
        *out = in + at;
        *outlen = 3;
        return SSL_TLSEXT_ERR_OK;
    }
    if (ci != NULL)
        ci->refused = "no_application_protocol";
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* The hash a TLS 1.3 ECDSA signature uses with the key's curve. */
static int ec_hash(const EVP_PKEY *key)
{
    char group[64];
    size_t len = 0;

    if (EVP_PKEY_get_group_name(key, group, sizeof(group), &len) != 1)
        return NID_undef;
    if (strcmp(group, "prime256v1") == 0)
        return NID_sha256;
    if (strcmp(group, "secp384r1") == 0)
        return NID_sha384;
    if (strcmp(group, "secp521r1") == 0)
        return NID_sha512;
    return NID_undef;
}

/* Whether the client offered a cipher this key can authenticate (TLS 1.2;
 * TLS 1.3 ciphers name no authentication and fit every key). */
static bool cipher_fits(SSL *ssl, bool ecdsa)
{
    STACK_OF(SSL_CIPHER) *ciphers = SSL_get_client_ciphers(ssl);

    for (int i = 0; ciphers != NULL && i < sk_SSL_CIPHER_num(ciphers); i++) {
        int auth = SSL_CIPHER_get_auth_nid(sk_SSL_CIPHER_value(ciphers, i));

        if (auth == NID_auth_any || auth == (ecdsa ? NID_auth_ecdsa : NID_auth_rsa))
            return true;
    }
    return false;
}

/* Whether the client can take a certificate with this key: a signature
 * algorithm for it (TLS 1.3: with the key's curve) and, in TLS 1.2, a
 * cipher. A client that sends no signature algorithms takes RSA. */
static bool client_takes(SSL *ssl, const EVP_PKEY *key)
{
    int type = EVP_PKEY_get_base_id(key), n = SSL_get_sigalgs(ssl, -1, NULL, NULL, NULL, NULL, NULL);
    bool ecdsa = type == EVP_PKEY_EC, tls13 = SSL_version(ssl) >= TLS1_3_VERSION;
    int want_hash = ecdsa ? ec_hash(key) : NID_undef;

    if (type != EVP_PKEY_EC && type != EVP_PKEY_RSA)
        return true; /* Ed25519 and the like: let OpenSSL decide */
    if (!tls13 && !cipher_fits(ssl, ecdsa))
        return false;
    if (n <= 0)
        return !ecdsa;
    for (int i = 0; i < n; i++) {
        int sign = NID_undef, hash = NID_undef;

        SSL_get_sigalgs(ssl, i, &sign, &hash, NULL, NULL, NULL);
        if (ecdsa && sign == EVP_PKEY_EC && (!tls13 || hash == want_hash))
            return true;
        if (!ecdsa && (sign == EVP_PKEY_RSA_PSS || (!tls13 && sign == EVP_PKEY_RSA)))
            return true;
    }
    return false;
}

/* The certificates for the name a control connection gave: the site's that
 * can serve that name, else the central ones. */
static const struct certload_cert *choose(const struct tlsctx *c, const struct tlsctx_conn *ci,
                                          SSL *ssl)
{
    const struct certplan *p = &c->plan;
    int site = ci->sni_site >= 0 ? ci->sni_site : ci->early_site;
    int host = ci->sni_site >= 0 ? ci->sni_host : ci->early_host;
    const struct certplan_site *s = site >= 0 ? &p->sites[site] : NULL;
    uint8_t mask = s != NULL && s->covers != NULL && host >= 0 ? s->covers[host] : 0;

    if (mask != 0) {
        for (unsigned i = 0; i < s->n; i++)
            if ((mask & (1u << i)) && client_takes(ssl, s->certs[i]->key))
                return s->certs[i];
        for (unsigned i = 0; i < s->n; i++) /* none fits: the first, and OpenSSL says no */
            if (mask & (1u << i))
                return s->certs[i];
    }
    for (unsigned i = 0; i < p->n_central; i++)
        if (client_takes(ssl, p->central[i]->key))
            return p->central[i];
    return p->central[0];
}

static int on_cert(SSL *ssl, void *arg)
{
    struct tlsctx_conn *ci = SSL_get_ex_data(ssl, conn_index);
    const struct certload_cert *cert;

    (void)arg;
    if (ci == NULL)
        return 0;
    if (ci->shared && (ci->cert == NULL || SSL_session_reused(ssl) != 1)) {
        /* A shared port serves only handshakes that resume a waiting
         * session: a fresh one names no session, so no certificate. */
        ci->refused = "fresh_handshake";
        return 0;
    }
    cert = ci->data && ci->cert != NULL ? ci->cert : choose(ci->tls, ci, ssl);
    ci->cert = cert;
    return tlsctx_own_use(ci->own, ssl, cert) == 0 ? 1 : 0;
}

/* ---- shared passive ports: which session a data connection resumes ---- */

/* find named a waiting session for key: this connection takes its facts and
 * its token, so that OpenSSL resumes that session and no other. */
static bool take_session(SSL *ssl, struct tlsctx_conn *ci, const uint8_t *key)
{
    const struct tlsctx_conn *ctl = ci->find(ci->find_arg, key);
    tlsctx_find_fn *find = ci->find;
    void *find_arg = ci->find_arg;
    const char *refused = ci->refused;

    if (ctl == NULL)
        return false;
    *ci = *ctl;
    ci->data = ci->shared = true;
    ci->find = find;
    ci->find_arg = find_arg;
    ci->refused = refused;
    return SSL_set_session_id_context(ssl, ci->token, TLSCTX_TOKEN_LEN) == 1;
}

/* Whether a ClientHello offers TLS 1.3 (its legacy session id is then not
 * one of ours). */
static bool offers_tls13(SSL *ssl)
{
    const unsigned char *p;
    size_t n;

    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_supported_versions, &p, &n) != 1 || n < 1)
        return false;
    for (size_t i = 1; i + 1 < n; i += 2)
        if (p[i] == 0x03 && p[i + 1] == 0x04)
            return true;
    return false;
}

/* TLS 1.2 resumption by session id: the session cache is searched after
 * this callback, under the connection's session-id context, so the session
 * is found here by the key its id begins with (on_session_id). A ticket, if
 * any, is decrypted later and has the last word (on_ticket). */
static int on_client_hello(SSL *ssl, int *alert, void *arg)
{
    struct tlsctx_conn *ci = SSL_get_ex_data(ssl, conn_index);
    const unsigned char *id;

    (void)alert;
    (void)arg;
    if (ci == NULL || !ci->shared || offers_tls13(ssl))
        return SSL_CLIENT_HELLO_SUCCESS;
    if (SSL_client_hello_get0_session_id(ssl, &id) == SSL_MAX_SSL_SESSION_ID_LENGTH)
        (void)take_session(ssl, ci, id);
    return SSL_CLIENT_HELLO_SUCCESS;
}

/* A ticket (TLS 1.2 or 1.3) was decrypted: its session carries the token of
 * the control session that issued it, authenticated by our ticket keys. */
static SSL_TICKET_RETURN on_ticket(SSL *ssl, SSL_SESSION *sess, const unsigned char *keyname,
                                   size_t keyname_len, SSL_TICKET_STATUS status, void *arg)
{
    struct tlsctx_conn *ci = SSL_get_ex_data(ssl, conn_index);
    SSL_TICKET_RETURN use = status == SSL_TICKET_SUCCESS         ? SSL_TICKET_RETURN_USE
                            : status == SSL_TICKET_SUCCESS_RENEW ? SSL_TICKET_RETURN_USE_RENEW
                                                                 : SSL_TICKET_RETURN_IGNORE_RENEW;
    const unsigned char *token;
    unsigned int len = 0;

    (void)keyname;
    (void)keyname_len;
    (void)arg;
    if (sess == NULL || ci == NULL || !ci->shared || use == SSL_TICKET_RETURN_IGNORE_RENEW)
        return use;
    token = SSL_SESSION_get0_id_context(sess, &len);
    if (len != TLSCTX_TOKEN_LEN || !take_session(ssl, ci, token))
        return SSL_TICKET_RETURN_IGNORE_RENEW;
    return use;
}

/* Session ids begin with the session's key (the rest is random), so that a
 * TLS 1.2 client resuming by id names its session before the cache lookup. */
static int on_session_id(SSL *ssl, unsigned char *id, unsigned int *len)
{
    const struct tlsctx_conn *ci = SSL_get_ex_data(ssl, conn_index);

    if (RAND_bytes(id, (int)*len) != 1)
        return 0;
    if (ci != NULL && *len == SSL_MAX_SSL_SESSION_ID_LENGTH)
        memcpy(id, ci->token, TLSCTX_KEY_LEN);
    return 1;
}

/* ---- contexts ---- */

static void report_ssl(tlsctx_report_fn *report, void *arg, const char *what)
{
    char err[256], msg[512];
    unsigned long e = ERR_peek_last_error();

    err[0] = '\0';
    if (e != 0)
        ERR_error_string_n(e, err, sizeof(err));
    ERR_clear_error();
    snprintf(msg, sizeof(msg), "%s%s%s", what, err[0] ? ": " : "", err);
    report(arg, msg);
}

static SSL_CTX *make_ctx(const struct cfg *cfg, unsigned worker, tlsctx_report_fn *report,
                         void *arg)
{
    static const unsigned char sid_ctx[] = "ftpsgate";
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    if (ctx == NULL) {
        report_ssl(report, arg, "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, cfg->tls_min_version == 13 ? TLS1_3_VERSION
                                                                  : TLS1_2_VERSION);
    /* No renegotiation at all (OpenSSL 3 refuses client-initiated ones by
     * default too), no compression. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    /* The chain sent is the configured one: no chain building per handshake
     * against the context's (empty) store. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_NO_AUTO_CHAIN);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_set_timeout(ctx, SESSION_TIMEOUT);
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
    SSL_CTX_set_num_tickets(ctx, CONTROL_TICKETS);
    SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
    SSL_CTX_set_cert_cb(ctx, on_cert, NULL);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, NULL);
    SSL_CTX_set_client_hello_cb(ctx, on_client_hello, NULL);
    SSL_CTX_set_generate_session_id(ctx, on_session_id);
    if (SSL_CTX_set_session_ticket_cb(ctx, NULL, on_ticket, NULL) != 1 || !ticket_keys_ok ||
        SSL_CTX_set_tlsext_ticket_keys(ctx, ticket_keys[worker % MAX_WORKERS],
                                       TICKET_KEYS_LEN) != 1) {
        report_ssl(report, arg, "cannot set up session tickets");
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (cfg->tls_ciphers != NULL && SSL_CTX_set_cipher_list(ctx, cfg->tls_ciphers) != 1) {
        report_ssl(report, arg, "tls_ciphers: no usable cipher");
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

struct tlsctx *tlsctx_new(const struct cfg *cfg, struct certplan *plan, unsigned workers,
                          tlsctx_report_fn *report, void *arg)
{
    struct tlsctx *c;

    if (!CRYPTO_THREAD_run_once(&index_once, index_init) || conn_index < 0 ||
        plan->n_central == 0 || (c = calloc(1, sizeof(*c))) == NULL) {
        certplan_free(plan);
        return NULL;
    }
    c->cfg = cfg;
    c->plan = *plan;
    memset(plan, 0, sizeof(*plan));
    c->ctx = calloc(workers, sizeof(*c->ctx));
    c->own = calloc(workers, sizeof(*c->own));
    if (c->ctx == NULL || c->own == NULL) {
        tlsctx_free(c);
        return NULL;
    }
    for (c->n_ctx = 0; c->n_ctx < workers; c->n_ctx++) {
        c->ctx[c->n_ctx] = make_ctx(cfg, c->n_ctx, report, arg);
        c->own[c->n_ctx] = tlsctx_own_new(); /* NULL: that worker serves shared objects */
        if (c->ctx[c->n_ctx] == NULL) {
            tlsctx_own_free(c->own[c->n_ctx]);
            tlsctx_free(c);
            return NULL;
        }
    }
    return c;
}

void tlsctx_free(struct tlsctx *c)
{
    if (c == NULL)
        return;
    for (unsigned i = 0; c->ctx != NULL && i < c->n_ctx; i++) {
        SSL_CTX_free(c->ctx[i]);
        tlsctx_own_free(c->own[i]);
    }
    free(c->ctx);
    free(c->own);
    certplan_free(&c->plan);
    free(c);
}

const struct certplan *tlsctx_plan(const struct tlsctx *c) { return &c->plan; }

bool tlsctx_served_own(const struct tlsctx_conn *ci, int site)
{
    const struct certplan_site *s;

    if (ci->tls == NULL || site < 0 || (size_t)site >= ci->tls->plan.n_sites)
        return false;
    s = &ci->tls->plan.sites[site];
    for (unsigned i = 0; i < s->n; i++)
        if (s->certs[i] == ci->cert)
            return true;
    return false;
}

/* ---- connections ---- */

/* Attaches ci and the session's token, and sets the ticket policy (control
 * connections issue tickets, data connections none). 0 or -1. */
static int setup(SSL *ssl, struct tlsctx_conn *ci)
{
    if (SSL_set_ex_data(ssl, conn_index, ci) != 1 ||
        SSL_set_session_id_context(ssl, ci->token, TLSCTX_TOKEN_LEN) != 1)
        return -1;
    /* Data connections issue no tickets: a client that closes without
     * reading them resets the connection and can lose the end of an upload.
     * They keep OpenSSL's record buffers while they live: giving them back
     * after every record (right for idle control connections) would cost a
     * malloc and a free per 16 KiB. */
    if (ci->data) {
        if (SSL_set_num_tickets(ssl, 0) != 1)
            return -1;
        SSL_clear_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
    }
    return 0;
}

struct tlsconn *tlsctx_control(const struct tlsctx *c, unsigned worker, int early_site,
                               int early_host, const uint8_t token[TLSCTX_TOKEN_LEN],
                               struct tlsctx_conn *ci, size_t bufsize)
{
    unsigned w = worker < c->n_ctx ? worker : 0;
    SSL_CTX *ctx = c->ctx[w];
    struct tlsconn *t = tlsconn_new(ctx, bufsize);

    memset(ci, 0, sizeof(*ci));
    ci->tls = c;
    ci->ctx0 = ctx;
    ci->own = c->own[w];
    ci->sni_site = ci->sni_host = -1;
    ci->early_site = early_site;
    ci->early_host = early_host;
    memcpy(ci->token, token, TLSCTX_TOKEN_LEN);
    if (t != NULL && setup(tlsconn_ssl(t), ci) != 0) {
        tlsconn_free(t);
        t = NULL;
    }
    return t;
}

struct tlsconn *tlsctx_data(const struct tlsctx_conn *control, struct tlsctx_conn *ci,
                            size_t bufsize)
{
    struct tlsconn *t = tlsconn_new(control->ctx0, bufsize);

    *ci = *control;
    ci->data = true;
    if (t != NULL && setup(tlsconn_ssl(t), ci) != 0) {
        tlsconn_free(t);
        t = NULL;
    }
    return t;
}

struct tlsconn *tlsctx_data_shared(SSL_CTX *ctx0, tlsctx_find_fn *find, void *arg,
                                   struct tlsctx_conn *ci, size_t bufsize)
{
    struct tlsconn *t = tlsconn_new(ctx0, bufsize);

    memset(ci, 0, sizeof(*ci));
    ci->ctx0 = ctx0;
    ci->sni_site = ci->sni_host = ci->early_site = ci->early_host = -1;
    ci->data = ci->shared = true;
    ci->find = find;
    ci->find_arg = arg;
    /* The token stays zero until find names a session: no session has it. */
    if (t != NULL && setup(tlsconn_ssl(t), ci) != 0) {
        tlsconn_free(t);
        t = NULL;
    }
    return t;
}

bool tlsctx_resumed_token(struct tlsconn *t, uint8_t token[TLSCTX_TOKEN_LEN])
{
    SSL *ssl = tlsconn_ssl(t);
    const SSL_SESSION *sess = SSL_get_session(ssl);
    const unsigned char *ctx;
    unsigned int len = 0;

    if (SSL_session_reused(ssl) != 1 || sess == NULL)
        return false;
    ctx = SSL_SESSION_get0_id_context(sess, &len);
    if (len != TLSCTX_TOKEN_LEN)
        return false;
    memcpy(token, ctx, TLSCTX_TOKEN_LEN);
    return true;
}

void tlsctx_adopt(struct tlsconn *t, struct tlsctx_conn *ci)
{
    (void)SSL_set_ex_data(tlsconn_ssl(t), conn_index, ci);
}
