/* ctl_client.c - a control session's client connection (see ctl_int.h): the
 * start of a session (bans, limits, the greeting or the implicit handshake),
 * the TLS handshake's end (a plaintext HOST is forgotten unless its site's own
 * certificate was served), and every event of the client endpoint. */
#include <stdlib.h>
#include <string.h>

#include "ctl_int.h"
#include "metrics.h"
#include "quota.h"
#include "tlsconn.h"

static void on_client_closed(struct ep *e)
{
    struct ctl_session *cs = e->owner;

    free(e);
    ctl_handle_closed(cs);
}

/* ---- the client connection ---- */

static void greet(struct ctl_session *cs) { ctl_replyf(cs, "220 %s", ctl_cfg(cs)->banner); }

static void on_handshake(struct ctl_session *cs)
{
    const struct tlsconn *t = cs->client->tls;

    cs->handshaking = false;
    cs->tls_on = true;
    LOG_DEBUG(&cs->lg, "tls", "version", tlsconn_version(t), "cipher", tlsconn_cipher(t), "sni",
              tlsconn_sni(t), NULL);
    /* A HOST sent in plaintext chose the certificate; it routes only when
     * that site's own certificate was served, which the client's check of
     * the name confirms. Otherwise anyone on the path could have injected
     * it: the login inside TLS must not be steered by it (DESIGN.md). */
    if (cs->early_host_site >= 0 && !tlsctx_served_own(&cs->tci, cs->early_host_site)) {
        LOG_INFO(&cs->lg, "host_forgotten", "reason",
                 "a plaintext HOST routes only when its site's own certificate was served", NULL);
        cs->host_site = -1;
        cs->site[0] = '\0';
        cs->lg.site = NULL;
    }
    cs->early_host_site = -1;
    if (cs->state == CTL_HANDSHAKE) {
        cs->state = CTL_PRE_LOGIN;
        greet(cs);
    }
}

/* A short, bounded label for a handshake failure: OpenSSL's reason text
 * ("unsupported protocol" -> unsupported_protocol), or how the client left. */
static const char *tls_reason(char *err, int status)
{
    char *r = strrchr(err, ':');

    if (err[0] == '\0' || r == NULL || r[1] == '\0')
        return status == UV_EOF ? "client_closed" : "connection_error";
    for (char *p = ++r; *p != '\0'; p++)
        if (*p == ' ')
            *p = '_';
    return r;
}

static void client_error(struct ctl_session *cs, int status)
{
    char err[256];

    if (cs->closing_after_flush) { /* the client left before our last words */
        ctl_close(cs, cs->close_reason);
        return;
    }
    if (cs->handshaking) {
        tlsconn_error_text(err, sizeof(err));
        if (cs->tci.refused != NULL) { /* ALPN or strict_sni: refused on purpose */
            LOG_WARN(&cs->lg, "tls_refused", "reason", cs->tci.refused, NULL);
            metrics_add(M_TLS_FAILURES, cs->tci.refused, NULL, 1);
            ctl_close(cs, "TLS handshake refused");
            return;
        }
        LOG_INFO(&cs->lg, "tls_failed", "error",
                 err[0] != '\0' ? err : status == UV_EOF ? "client closed" : uv_strerror(status),
                 NULL);
        metrics_add(M_TLS_FAILURES, tls_reason(err, status), NULL, 1);
        ctl_close(cs, "TLS handshake failed");
        return;
    }
    if (status == UV_EPROTO) {
        tlsconn_error_text(err, sizeof(err));
        LOG_INFO(&cs->lg, "client_error", "error", err, NULL);
        ctl_close(cs, "client TLS error");
        return;
    }
    LOG_DEBUG(&cs->lg, "client_error", "error", uv_strerror(status), NULL);
    ctl_close(cs, status == UV_ECONNRESET ? "client reset the connection"
                                          : "client connection error");
}

static void on_client_event(struct ep *e, enum ep_event ev, int status)
{
    struct ctl_session *cs = e->owner;

    if (cs->closing)
        return;
    switch (ev) {
    case EP_HANDSHAKE:
        on_handshake(cs);
        return;
    case EP_READ:
        ctl_process_input(cs, false);
        return;
    case EP_DRAINED:
        if (cs->tls_pending && ep_pending(e) == 0) {
            ctl_start_tls(cs);
            return;
        }
        if (buf_len(&cs->cout) == 0) {
            buf_shrink(&cs->cout);
            if (e->tls != NULL && !e->writing)
                tlsconn_shrink(e->tls);
        }
        ctl_process_replies(cs, true);
        ctl_process_input(cs, true);
        return;
    case EP_SHUTDOWN:
        if (cs->closing_after_flush)
            ctl_close(cs, cs->close_reason);
        return;
    case EP_EOF:
        ctl_close(cs, cs->closing_after_flush ? cs->close_reason : "client closed");
        return;
    case EP_ERROR:
        client_error(cs, status);
        return;
    default:
        return;
    }
}

void ctl_shutdown(struct ctl_session *cs)
{
    if (!cs->closing)
        ctl_fail_session(cs, "421 Server shutting down.", "shutdown");
}

/* The session proper: limits, then the greeting (explicit) or the TLS
 * handshake (implicit). */
static void begin(struct ctl_session *cs)
{
    const struct cfg *cfg = ctl_cfg(cs);
    const struct sockaddr *peer = (const struct sockaddr *)&cs->peer;
    const char *refusal = NULL;

    if (quota_banned(peer) && !cfg_cidr_contains_sa(cfg->ban_exempt, cfg->n_ban_exempt, peer)) {
        /* Before any TLS, on implicit listeners too: a banned address gets
         * not even a handshake to spend CPU on. */
        ctl_refuse(cs, "banned", "too many failed logins from this address",
                   "421 Too many failed logins from your address: try again later.");
        return;
    }
    refusal = quota_admit(peer, cfg->max_sessions, cfg->max_sessions_per_ip);
    if (refusal != NULL) {
        LOG_WARN(&cs->lg, "refused", "reason", refusal, NULL);
        metrics_add(M_CONN_REFUSED, refusal, NULL, 1);
        if (cs->implicit) {
            ctl_close(cs, refusal);
            return;
        }
        ctl_fail_session(cs, "421 Too many connections: try again later.", refusal);
        return;
    }
    cs->admitted = true;
    LOG_INFO(&cs->lg, "connect", "listener", cs->implicit ? "implicit" : "explicit", NULL);
    ctl_arm_login(cs);
    if (cs->implicit) {
        cs->state = CTL_HANDSHAKE;
        ctl_start_tls(cs);
    } else {
        cs->state = CTL_PRE_LOGIN;
        greet(cs);
    }
}

static void on_orphan_event(struct ep *e, enum ep_event ev, int status)
{
    (void)e;
    (void)ev;
    (void)status;
}

static void on_orphan_closed(struct ep *e) { free(e); }

struct ctl_session *ctl_start(struct ctl_env *env, const struct ctl_conn *c)
{
    struct ctl_session *cs = calloc(1, sizeof(*cs));
    uv_os_fd_t fd;
    int on = 1;

    if (cs == NULL) {
        /* No session to hold the connection: close it and end now. */
        metrics_add(M_SESSIONS_ACTIVE, NULL, NULL, -1);
        quota_conn_closed();
        gen_unref(c->gen);
        ep_set_owner(c->client, on_orphan_event, on_orphan_closed, NULL);
        ep_close(c->client, true);
        env->on_ended(c->tag);
        return NULL;
    }
    cs->env = env;
    cs->tag = c->tag;
    cs->gen = c->gen;
    cs->client = c->client;
    cs->implicit = c->implicit;
    cs->backend_idx = -1;
    cs->host_site = -1;
    cs->early_host_site = -1;
    cs->early_host = -1;
    cs->tci.sni_site = -1; /* no SNI before the handshake */
    cs->peer = c->peer;
    cs->local = c->local;
    buf_init(&cs->cin, CTL_IN_CAP);
    buf_init(&cs->cout, CTL_OUT_CAP);
    buf_init(&cs->bin, CTL_IN_CAP);
    buf_init(&cs->bout, CTL_IN_CAP + 8);
    buf_init(&cs->held, CTL_HELD_CAP);
    cs->lg.sid = c->sid;
    log_addr(cs->lg.client, sizeof(cs->lg.client), (const struct sockaddr *)&cs->peer);
    ep_set_owner(cs->client, on_client_event, on_client_closed, cs);
    ep_set_bufs(cs->client, &cs->cin, &cs->cout);
    cs->open_handles = 2;
    uv_timer_init(env->loop, &cs->timer);
    cs->timer.data = cs;
    cs->addr_idx = -1;
    if (c->n_early > 0 && buf_append(&cs->cin, c->early, c->n_early) != 0) {
        ctl_close(cs, "out of memory");
        return cs;
    }
    /* ABOR's Synch puts TCP urgent data on a plaintext control channel: read
     * it in line, where the Telnet stripping removes it. */
    if (uv_fileno((uv_handle_t *)&cs->client->tcp, &fd) == 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_OOBINLINE, &on, sizeof(on));
    if (tlsctx_token(cs->token) != 0) {
        ctl_close(cs, "no randomness");
        return cs;
    }
    begin(cs);
    ctl_process_input(cs, true); /* commands that came with the PROXY header */
    return cs;
}
