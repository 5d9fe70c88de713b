/* tlsctx.c - SSL_CTX per certificate, the SNI callback, and the shared
 * protocol policy (see tlsctx.h). */
#include "tlsctx.h"

#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "route.h"

#define SESSION_TIMEOUT (24 * 3600) /* a session's data connections may come late */
#define CONTROL_TICKETS 4

struct tlsctx {
    const struct cfg *cfg; /* borrowed */
    SSL_CTX *central;
    SSL_CTX **site; /* [cfg->n_backends]; NULL: the site uses the central one */
};

static int conn_index = -1;
static CRYPTO_ONCE index_once = CRYPTO_ONCE_STATIC_INIT;

static void index_init(void) { conn_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL); }

static void report_ssl(tlsctx_report_fn *report, void *arg, const char *file, const char *site,
                       const char *what)
{
    char err[256], msg[1024];
    unsigned long e = ERR_peek_last_error();

    err[0] = '\0';
    if (e != 0)
        ERR_error_string_n(e, err, sizeof(err));
    ERR_clear_error();
    snprintf(msg, sizeof(msg), "%s: site %s: %s%s%s", file, site, what, err[0] ? ": " : "", err);
    report(arg, msg);
}

/* SNI: a name that matches a site with its own certificate switches to that
 * site's context; any other name keeps the context the connection was made
 * with (central, or the site of a HOST sent before AUTH TLS). */
static int on_servername(SSL *ssl, int *alert, void *arg)
{
    struct tlsctx *c = arg;
    struct tlsctx_conn *ci = SSL_get_ex_data(ssl, conn_index);
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    int site;

    (void)alert;
    if (ci == NULL || ci->data || name == NULL)
        return SSL_TLSEXT_ERR_OK;
    site = route_find(c->cfg, name, strlen(name));
    ci->sni_site = site;
    if (site >= 0 && c->site[site] != NULL && SSL_set_SSL_CTX(ssl, c->site[site]) == NULL)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *make_ctx(struct tlsctx *c, const char *cert, const char *key, const char *site,
                         tlsctx_report_fn *report, void *arg)
{
    static const unsigned char sid_ctx[] = "ftpsgate";
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    const struct cfg *cfg = c->cfg;

    if (ctx == NULL) {
        report_ssl(report, arg, cert, site, "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, cfg->tls_min_version == 13 ? TLS1_3_VERSION
                                                                  : TLS1_2_VERSION);
    /* No renegotiation at all (OpenSSL 3 refuses client-initiated ones by
     * default too), no compression. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_set_timeout(ctx, SESSION_TIMEOUT);
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
    SSL_CTX_set_num_tickets(ctx, CONTROL_TICKETS);
    SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
    SSL_CTX_set_tlsext_servername_arg(ctx, c);
    if (cfg->tls_ciphers != NULL && SSL_CTX_set_cipher_list(ctx, cfg->tls_ciphers) != 1) {
        report_ssl(report, arg, cert, site, "tls_ciphers: no usable cipher");
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        report_ssl(report, arg, cert, site, "cannot load the certificate (PEM, leaf then chain)");
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        report_ssl(report, arg, key, site, "cannot load the private key (PEM)");
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        report_ssl(report, arg, key, site, "the private key does not match the certificate");
        goto fail;
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

struct tlsctx *tlsctx_new(const struct cfg *cfg, tlsctx_report_fn *report, void *arg)
{
    struct tlsctx *c;
    bool ok = true;

    if (!CRYPTO_THREAD_run_once(&index_once, index_init) || conn_index < 0)
        return NULL;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->cfg = cfg;
    c->site = calloc(cfg->n_backends + 1, sizeof(*c->site));
    if (c->site == NULL) {
        free(c);
        return NULL;
    }
    c->central = make_ctx(c, cfg->certificate, cfg->private_key, "(central)", report, arg);
    ok = c->central != NULL;
    for (size_t i = 0; i < cfg->n_backends; i++) {
        const struct cfg_backend *b = &cfg->backends[i];

        if (b->certificate == NULL)
            continue;
        c->site[i] = make_ctx(c, b->certificate, b->private_key, b->name, report, arg);
        ok = ok && c->site[i] != NULL;
    }
    if (!ok) {
        tlsctx_free(c);
        return NULL;
    }
    return c;
}

void tlsctx_free(struct tlsctx *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->cfg->n_backends; i++)
        SSL_CTX_free(c->site[i]);
    SSL_CTX_free(c->central);
    free(c->site);
    free(c);
}

SSL_CTX *tlsctx_for_site(const struct tlsctx *c, int site)
{
    if (site >= 0 && (size_t)site < c->cfg->n_backends && c->site[site] != NULL)
        return c->site[site];
    return c->central;
}

bool tlsctx_site_has_own(const struct tlsctx *c, int site)
{
    return site >= 0 && (size_t)site < c->cfg->n_backends && c->site[site] != NULL;
}

int tlsctx_setup(SSL *ssl, struct tlsctx_conn *ci, const uint8_t token[TLSCTX_TOKEN_LEN],
                 bool data)
{
    ci->data = data;
    if (!data)
        ci->sni_site = -1;
    if (SSL_set_ex_data(ssl, conn_index, ci) != 1 ||
        SSL_set_session_id_context(ssl, token, TLSCTX_TOKEN_LEN) != 1)
        return -1;
    /* Data connections issue no tickets: a client that closes without
     * reading them resets the connection and can lose the end of an upload.
     * They keep OpenSSL's record buffers while they live: giving them back
     * after every record (right for idle control connections) would cost a
     * malloc and a free per 16 KiB. */
    if (data) {
        if (SSL_set_num_tickets(ssl, 0) != 1)
            return -1;
        SSL_clear_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
    }
    return 0;
}

void tlsctx_more_tickets(SSL *ssl)
{
    if (SSL_version(ssl) >= TLS1_3_VERSION)
        (void)SSL_new_session_ticket(ssl);
}
