/* tlsctx.h - the TLS of one generation: a context per worker (its own
 * session cache and ticket keys), the certificates each site may be served
 * (a certplan from certcheck), and the policy every handshake shares (TLS >=
 * tls_min_version, no renegotiation, no compression, session cache and
 * tickets for data-connection resumption).
 *
 * Which certificate a handshake gets is decided per connection, in OpenSSL's
 * certificate callback: the site the SNI name names, else the site of a HOST
 * sent before AUTH TLS, else the central one; for that name, the site's
 * certificates that can serve it, else the central ones; of those, the first
 * the client supports (its signature algorithms and ciphers). A data
 * connection gets the certificate its control connection got.
 *
 * Cross-protocol defences (ALPACA): a ClientHello offering ALPN without
 * "ftp" fails with no_application_protocol ("ftp" is selected when offered),
 * and with strict_sni an SNI name no site matches and the central
 * certificate does not cover fails with unrecognized_name.
 *
 * Every connection carries a struct tlsctx_conn (SSL ex_data) that the
 * handshake fills in. Each control session gets its own random session-id
 * context (its token), shared with its data connections: OpenSSL resumes a
 * session (TLS 1.2 id, TLS 1.2 ticket, TLS 1.3 ticket) only under the same
 * context, so a data connection can resume its own control session and no
 * other. Only this module and tlsconn use OpenSSL's SSL API. */
#ifndef TLSCTX_H
#define TLSCTX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cfg;
struct certplan;
struct certload_cert;
struct tlsconn;
struct tlsctx;
struct tlsctx_own;
struct ssl_ctx_st; /* OpenSSL's SSL_CTX */

#define TLSCTX_TOKEN_LEN 32 /* = SSL_MAX_SID_CTX_LENGTH */
#define TLSCTX_KEY_LEN 16   /* a session's key: the first bytes of its token */

struct tlsctx_conn;

/* Shared passive ports: the waiting session whose key a data connection's
 * resumed TLS session carries, or NULL when none may have it (find records
 * why). Returns its control connection's facts (borrowed, living at least
 * until the handshake ends). */
typedef const struct tlsctx_conn *tlsctx_find_fn(void *arg, const uint8_t key[TLSCTX_KEY_LEN]);

/* One connection's TLS facts. A control connection's is filled by its
 * handshake and copied by value into its data connections' parameters: what
 * it points to belongs to the generation, which outlives the session and its
 * transfers. */
struct tlsctx_conn {
    const struct tlsctx *tls;    /* the generation's */
    struct ssl_ctx_st *ctx0;     /* the worker's context: its session cache and
                                    ticket keys */
    struct tlsctx_own *own;      /* the worker's copies of the certificates (used
                                    on its thread only), or NULL */
    const struct certload_cert *cert; /* the certificate served (NULL before) */
    int sni_site, sni_host;      /* backend and host name the SNI name matched, -1 */
    int early_site, early_host;  /* a HOST before AUTH TLS, -1 */
    bool data;                   /* a data connection: its control's certificate */
    const char *refused;         /* why the handshake was refused on purpose
                                    (no_application_protocol, unrecognized_name),
                                    or NULL */
    uint8_t token[TLSCTX_TOKEN_LEN]; /* the control session's session-id context */
    bool shared;                 /* a data connection on a shared port: the session
                                    is found during the handshake through find */
    tlsctx_find_fn *find;
    void *find_arg;
};

typedef void tlsctx_report_fn(void *arg, const char *msg);

/* The contexts of cfg (borrowed: it must outlive the result) for `workers`
 * workers, serving the certificates of plan (taken over, also on failure).
 * Reports what OpenSSL refuses (tls_ciphers) and returns NULL then. */
struct tlsctx *tlsctx_new(const struct cfg *cfg, struct certplan *plan, unsigned workers,
                          tlsctx_report_fn *report, void *arg);
void tlsctx_free(struct tlsctx *c);
const struct certplan *tlsctx_plan(const struct tlsctx *c);

/* A new random session token. 0, or -1 when the random generator fails. */
int tlsctx_token(uint8_t token[TLSCTX_TOKEN_LEN]);

/* A control connection on worker `worker`. early_site/early_host: a HOST
 * sent before AUTH TLS (-1 for none). ci (owned by the caller, and living as
 * long as the connection) gets the token and is filled in by the handshake.
 * bufsize: its ciphertext buffers. NULL when out of memory. */
struct tlsconn *tlsctx_control(const struct tlsctx *c, unsigned worker, int early_site,
                               int early_host, const uint8_t token[TLSCTX_TOKEN_LEN],
                               struct tlsctx_conn *ci, size_t bufsize);

/* True when the certificate a control connection was served is one of
 * site's own (not the central one standing in). */
bool tlsctx_served_own(const struct tlsctx_conn *ci, int site);

/* A data connection of the session whose control connection is described by
 * control: the same session cache and token, the same certificate, and no
 * tickets of its own. ci is set up as for tlsctx_control(). */
struct tlsconn *tlsctx_data(const struct tlsctx_conn *control, struct tlsctx_conn *ci,
                            size_t bufsize);

/* A data connection on a shared passive port, in the worker context ctx0
 * (a tlsctx_conn's). Its session is not known yet: the handshake asks find
 * (with arg) for the session whose key the client's TLS session carries (a
 * TLS 1.2 or 1.3 ticket: the key is read from the decrypted session; a TLS
 * 1.2 session id: our session ids begin with the key) and may resume only
 * that session; a handshake that resumes none is refused (ci->refused is
 * "fresh_handshake"), as no certificate is known to serve it. ci is set up
 * as for tlsctx_control(); once found, it holds the control's facts. */
struct tlsconn *tlsctx_data_shared(struct ssl_ctx_st *ctx0, tlsctx_find_fn *find, void *arg,
                                   struct tlsctx_conn *ci, size_t bufsize);
/* After a handshake: true when it resumed a session, with that session's
 * token (its session-id context) in token. */
bool tlsctx_resumed_token(struct tlsconn *t, uint8_t token[TLSCTX_TOKEN_LEN]);
/* The connection's facts move to ci (a copy of the old ones). */
void tlsctx_adopt(struct tlsconn *t, struct tlsctx_conn *ci);

#endif
