/* tlsctx.h - the TLS contexts of one configuration: the central certificate
 * and each site's own, the SNI callback that picks among them, and the policy
 * every context shares (TLS >= tls_min_version, no renegotiation, no
 * compression, session cache and tickets for data-connection resumption).
 *
 * Every connection carries a struct tlsctx_conn (SSL ex_data) that the SNI
 * callback fills in. Each control session gets its own random session-id
 * context, shared with its data connections: OpenSSL resumes a session (TLS
 * 1.2 id, TLS 1.2 ticket, TLS 1.3 ticket) only under the same context, so a
 * data connection can resume its own control session and no other. */
#ifndef TLSCTX_H
#define TLSCTX_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>

struct cfg;

#define TLSCTX_TOKEN_LEN 32 /* = SSL_MAX_SID_CTX_LENGTH */

struct tlsctx_conn {
    int sni_site; /* backend whose host name the SNI matched, -1 when none */
    bool data;    /* a data connection: keeps the context it was made with */
};

struct tlsctx;

typedef void tlsctx_report_fn(void *arg, const char *msg);

/* Loads the central and every site certificate of cfg (borrowed: it must
 * outlive the result). Reports each failure ("FILE: site NAME: cannot load
 * ...") and returns NULL when any. */
struct tlsctx *tlsctx_new(const struct cfg *cfg, tlsctx_report_fn *report, void *arg);
void tlsctx_free(struct tlsctx *c);

/* The context for a site (its own certificate, or the central one for
 * site < 0 or a site without one). */
SSL_CTX *tlsctx_for_site(const struct tlsctx *c, int site);
bool tlsctx_site_has_own(const struct tlsctx *c, int site);

/* Prepares a new control (data = false) or data connection: attaches ci,
 * sets the session's token as session-id context, and the ticket policy
 * (control connections issue tickets, data connections none). 0 or -1. */
int tlsctx_setup(SSL *ssl, struct tlsctx_conn *ci, const uint8_t token[TLSCTX_TOKEN_LEN],
                 bool data);

/* Makes a control connection send one more TLS 1.3 session ticket with its
 * next record, so clients that spend a ticket per data connection always have
 * one (called at each PASV/EPSV). */
void tlsctx_more_tickets(SSL *ssl);

#endif
