/* ctl.c - a control session (see ctl.h).
 *
 * A session reads the client's commands a line at a time and acts on each as
 * ctlfsm says: answers it itself, routes the login, or forwards it to the
 * backend. Commands are taken one at a time: while a forwarded command waits
 * for its reply, further lines stay buffered (and reading stops once the
 * buffer is full), except ABOR during a transfer. Replies from the backend are
 * relayed a line at a time, only while the client's output has room, so a
 * client that does not read stops its backend too, and nobody else.
 *
 * Handles: the client endpoint, two timers, and the backend endpoint once the
 * login is routed. The session is freed from the close callback of its last
 * handle. */
#include "ctl.h"

#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "cfg.h"
#include "ctlfsm.h"
#include "ep.h"
#include "ftp.h"
#include "gen.h"
#include "log.h"
#include "metrics.h"
#include "pp.h"
#include "px.h"
#include "route.h"
#include "server.h"
#include "tlsconn.h"
#include "tlsctx.h"
#include "xfer.h"

#define CTL_IN_CAP (FTP_LINE_MAX + 2) /* one whole command line with CRLF */
#define CTL_OUT_CAP (16 * 1024)
#define CTL_OUT_ROOM (FTP_LINE_MAX + 2) /* room kept for the next reply line */
#define CTL_HELD_CAP (8 * 1024)
#define CTL_TLS_BUF (8 * 1024)
#define CTL_LINGER_MS 3000 /* last flush before a close */
#define CTL_PROXY_MS 5000  /* the PROXY header must come this fast */

enum ctl_state {
    CTL_PROXY_HDR = 0, /* waiting for the PROXY protocol header */
    CTL_HANDSHAKE,     /* implicit FTPS: TLS before the greeting */
    CTL_PRE_LOGIN,
    CTL_CONNECTING, /* the login is routed; connecting to the backend */
    CTL_GREETING,   /* waiting for the backend's 220 */
    CTL_LOGIN,      /* USER went to the backend; not logged in yet */
    CTL_RELAY,      /* logged in */
};

enum ctl_wait { /* what the backend's next final reply answers */
    WAIT_NONE = 0,
    WAIT_PLAIN,
    WAIT_USER,
    WAIT_PASS,
    WAIT_FEAT,
    WAIT_PASV,      /* our EPSV/PASV for a client's PASV/EPSV/PORT/EPRT */
    WAIT_XFER,      /* a transfer command */
    WAIT_XFER_ABOR, /* a transfer command, then the ABOR sent during it */
    WAIT_ABOR,
    WAIT_QUIT,
};

struct ctl_session {
    struct server *srv; /* borrowed: the worker */
    struct gen *gen;    /* ref held: this session's configuration and contexts */
    struct ctl_session *prev, *next;
    struct log_sess lg;
    struct ep client;
    struct ep backend;
    uv_timer_t timer;  /* login, then idle deadline; the last flush before close */
    uv_timer_t ctimer; /* backend connect and greeting deadline */
    unsigned open_handles;
    bool closing;
    const char *close_reason;

    enum ctl_state state;
    enum ctl_wait wait;
    struct buf cin, cout; /* client: command lines in, replies out */
    struct buf bin, bout; /* backend: replies in, commands out */
    struct buf held;      /* a reply being assembled or held back */
    struct ftp_reply rep;

    bool implicit;
    bool handshaking;  /* TLS handshake in progress */
    bool tls_pending;  /* 234 sent: TLS starts once it is written */
    bool tls_on;
    bool pbsz, prot_p, epsv_all;
    bool closing_after_flush;
    bool admitted;        /* counted by server_admit */
    bool backend_counted; /* counted by server_backend_enter */
    bool switch_pending;  /* USER named another site: reconnect once closed */
    bool backend_no_epsv; /* the backend refused EPSV: ask with PASV */
    bool pasv_epsv;       /* the client asked EPSV: answer 229 */
    bool pasv_active;     /* the passive setup serves PORT/EPRT */
    bool pasv_tried_epsv;
    bool pasv_failed;     /* the backend opened no passive port for it */
    uint16_t pasv_port;   /* our passive port for the client */
    bool xfer_client_done; /* the transfer's client side is finished */
    const char *xfer_failure; /* static: why the client side failed, NULL when clean */
    int xfer_code;         /* its final reply code, 0 until it came */

    int backend_idx; /* routed backend, -1 */
    int host_site;   /* last accepted HOST, -1 */
    int early_host_site; /* a HOST accepted before AUTH TLS: picks the certificate */
    char *login_user;    /* owned: the user part, until USER is sent */
    char site[256];      /* the name the login used, for logs */

    struct sockaddr_storage peer;  /* the client (the PROXY one where used) */
    struct sockaddr_storage local; /* our side of the control connection */
    struct sockaddr_storage backend_local;
    struct sockaddr_storage backend_peer;

    struct tlsctx_conn tci;
    uint8_t token[TLSCTX_TOKEN_LEN]; /* session-id context of this session */
    SSL_CTX *ctx0;                   /* the context the control TLS was made with */
    struct xfer *xfer;               /* owned; at most one */
    uint64_t xfer_started_ms;
    bool xfer_download;
    char xfer_verb[5];
    char *xfer_path; /* owned: the transfer command's argument, for the log */
};

static void process_input(struct ctl_session *cs, bool resume);
static void process_replies(struct ctl_session *cs, bool resume);
static void connect_backend(struct ctl_session *cs);
static void proxy_header(struct ctl_session *cs);
static void log_transfer(struct ctl_session *cs, const char *result);

static const struct cfg *cfg_of(const struct ctl_session *cs) { return cs->gen->cfg; }

/* ---- lifetime ---- */

static const char *backend_name(const struct ctl_session *cs)
{
    return cs->gen->cfg->backends[cs->backend_idx].name;
}

static void backend_leave(struct ctl_session *cs)
{
    server_backend_leave(cs->srv, backend_name(cs));
    metrics_add(M_BACKEND_SESSIONS_ACTIVE, backend_name(cs), NULL, -1);
    cs->backend_counted = false;
}

struct ctl_session *ctl_next(struct ctl_session *cs) { return cs->next; }

static void ctl_free(struct ctl_session *cs)
{
    struct server *srv = cs->srv;

    if (cs->prev != NULL)
        cs->prev->next = cs->next;
    else
        srv->sessions = cs->next;
    if (cs->next != NULL)
        cs->next->prev = cs->prev;
    metrics_add(M_SESSIONS_ACTIVE, NULL, NULL, -1);
    if (cs->admitted)
        server_leave(srv, (struct sockaddr *)&cs->peer);
    if (cs->backend_counted)
        backend_leave(cs);
    buf_free(&cs->cin);
    buf_free(&cs->cout);
    buf_free(&cs->bin);
    buf_free(&cs->bout);
    buf_free(&cs->held);
    free(cs->login_user);
    free(cs->xfer_path);
    gen_unref(cs->gen);
    free(cs);
    server_session_ended(srv);
}

static void handle_closed(struct ctl_session *cs)
{
    PX_ASSERT(cs->open_handles > 0);
    if (--cs->open_handles == 0)
        ctl_free(cs);
}

static void on_timer_closed(uv_handle_t *h) { handle_closed(h->data); }

static void on_client_closed(struct ep *e) { handle_closed(e->owner); }

static void on_backend_closed(struct ep *e)
{
    struct ctl_session *cs = e->owner;

    if (cs->switch_pending && !cs->closing) {
        cs->switch_pending = false;
        cs->open_handles--;
        connect_backend(cs);
        return;
    }
    handle_closed(cs);
}

static void drop_xfer(struct ctl_session *cs)
{
    struct xfer *x = cs->xfer;

    if (x == NULL)
        return;
    if (cs->xfer_path != NULL) /* started and cut short: it still gets its line */
        log_transfer(cs, "failed");
    cs->xfer = NULL;
    xfer_abort(x);
    xfer_detach(x);
}

void ctl_close(struct ctl_session *cs, const char *reason)
{
    if (cs->closing)
        return;
    cs->closing = true;
    cs->close_reason = reason;
    LOG_INFO(&cs->lg, "close", "reason", reason, NULL);
    drop_xfer(cs);
    if (cs->client.tls != NULL && cs->ctx0 != NULL)
        tlsconn_forget_session(cs->client.tls, cs->ctx0);
    ep_close(&cs->client, false);
    if (cs->backend.open)
        ep_close(&cs->backend, false);
    uv_close((uv_handle_t *)&cs->timer, on_timer_closed);
    uv_close((uv_handle_t *)&cs->ctimer, on_timer_closed);
}

static void on_linger_timeout(uv_timer_t *t) { ctl_close(t->data, "client did not read the last reply"); }

/* Sends what is queued, then closes: used after 421 and 221. */
static void close_after_flush(struct ctl_session *cs, const char *reason)
{
    if (cs->closing || cs->closing_after_flush)
        return;
    cs->closing_after_flush = true;
    cs->close_reason = reason;
    drop_xfer(cs);
    ep_pause(&cs->client);
    ep_shutdown(&cs->client);
    uv_timer_start(&cs->timer, on_linger_timeout, CTL_LINGER_MS, 0);
}

/* ---- replies to the client ---- */

static void send_text(struct ctl_session *cs, const char *p, size_t n)
{
    if (cs->closing)
        return;
    if (buf_append(&cs->cout, p, n) != 0) {
        ctl_close(cs, "client does not read its replies");
        return;
    }
    ep_flush(&cs->client);
}

static void send_str(struct ctl_session *cs, const char *s) { send_text(cs, s, strlen(s)); }

/* One reply: text without the final CRLF; multi-line replies carry their
 * inner CRLFs. */
static void reply(struct ctl_session *cs, const char *text)
{
    char line[512];
    size_t n = strlen(text);

    if (n + 2 <= sizeof(line)) {
        memcpy(line, text, n);
        memcpy(line + n, "\r\n", 2);
        send_text(cs, line, n + 2);
        return;
    }
    send_text(cs, text, n);
    send_text(cs, "\r\n", 2);
}

static void replyf(struct ctl_session *cs, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void replyf(struct ctl_session *cs, const char *fmt, ...)
{
    char text[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    reply(cs, text);
}

/* 421 and end the session. */
static void fail_session(struct ctl_session *cs, const char *text, const char *reason)
{
    reply(cs, text);
    close_after_flush(cs, reason);
}

static void relay_line(struct ctl_session *cs, const char *line, size_t len)
{
    send_text(cs, line, len);
    send_text(cs, "\r\n", 2);
}

/* ---- commands to the backend ---- */

static void send_backend(struct ctl_session *cs, const char *p, size_t n, enum ctl_wait wait)
{
    if (buf_append(&cs->bout, p, n) != 0 || buf_append(&cs->bout, "\r\n", 2) != 0) {
        fail_session(cs, "421 Internal error: command buffer full", "command buffer full");
        return;
    }
    cs->wait = wait;
    ep_flush(&cs->backend);
}

static void send_backend_str(struct ctl_session *cs, const char *s, enum ctl_wait wait)
{
    send_backend(cs, s, strlen(s), wait);
}

/* ---- timers ---- */

static void on_timer(uv_timer_t *t)
{
    struct ctl_session *cs = t->data;

    if (cs->closing)
        return;
    if (cs->state != CTL_RELAY) {
        LOG_INFO(&cs->lg, "timeout", "what", cs->handshaking ? "TLS handshake" : "login", NULL);
        if (cs->handshaking || cs->state == CTL_HANDSHAKE) { /* no channel to say 421 on */
            ctl_close(cs, "login timeout during the TLS handshake");
            return;
        }
        fail_session(cs, "421 Login timeout: closing control connection.", "login timeout");
        return;
    }
    if (cs->xfer != NULL && !cs->xfer_client_done) { /* it has its own data_timeout */
        uv_timer_again(t);
        return;
    }
    LOG_INFO(&cs->lg, "timeout", "what", "idle", NULL);
    fail_session(cs, "421 Idle timeout: closing control connection.", "idle timeout");
}

static void arm_idle(struct ctl_session *cs)
{
    uint64_t ms = (uint64_t)cfg_of(cs)->idle_timeout * 1000;

    uv_timer_start(&cs->timer, on_timer, ms, ms);
}

static void on_connect_timeout(uv_timer_t *t)
{
    struct ctl_session *cs = t->data;
    const struct cfg_backend *b = &cfg_of(cs)->backends[cs->backend_idx];

    if (cs->closing)
        return;
    metrics_add(M_BACKEND_FAILURES, b->name, NULL, 1);
    LOG_ERROR(&cs->lg, "backend_unreachable", "address", b->address.text, "error",
              cs->state == CTL_CONNECTING ? "connect timeout" : "no greeting in time", NULL);
    fail_session(cs, "421 Service not available: the site's server does not answer.",
                 "backend timeout");
}

/* ---- login ---- */

static void logged_in(struct ctl_session *cs)
{
    cs->state = CTL_RELAY;
    arm_idle(cs);
    LOG_INFO(&cs->lg, "login", "tls", cs->tls_on ? "yes" : "no", NULL);
}

static void send_user(struct ctl_session *cs)
{
    char line[FTP_LINE_MAX + 8];
    int n = snprintf(line, sizeof(line), "USER %s", cs->login_user);

    free(cs->login_user);
    cs->login_user = NULL;
    cs->state = CTL_LOGIN;
    send_backend(cs, line, (size_t)n, WAIT_USER);
}

static void on_backend_event(struct ep *e, enum ep_event ev, int status)
{
    struct ctl_session *cs = e->owner;
    const struct cfg_backend *b = &cfg_of(cs)->backends[cs->backend_idx];

    if (cs->closing)
        return;
    switch (ev) {
    case EP_CONNECTED:
        if (status < 0) {
            uv_timer_stop(&cs->ctimer);
            metrics_add(M_BACKEND_FAILURES, b->name, NULL, 1);
            LOG_ERROR(&cs->lg, "backend_unreachable", "address", b->address.text, "error",
                      uv_strerror(status), NULL);
            fail_session(cs, "421 Service not available: the site's server cannot be reached.",
                         "backend unreachable");
            return;
        }
        ep_sockname(&cs->backend, &cs->backend_local, false);
        ep_sockname(&cs->backend, &cs->backend_peer, true);
        cs->state = CTL_GREETING;
        ep_read(&cs->backend);
        return;
    case EP_READ:
        process_replies(cs, false);
        return;
    case EP_DRAINED:
        process_input(cs, true);
        return;
    case EP_EOF:
    case EP_ERROR:
        if (cs->closing_after_flush) /* after QUIT or a 421: expected */
            return;
        LOG_WARN(&cs->lg, "backend_closed", "error", status < 0 ? uv_strerror(status) : "EOF",
                 NULL);
        fail_session(cs, "421 Service not available: the site's server closed the connection.",
                     "backend closed");
        return;
    default:
        return;
    }
}

static void connect_backend(struct ctl_session *cs)
{
    const struct cfg_backend *b = &cfg_of(cs)->backends[cs->backend_idx];
    int rc;

    buf_reset(&cs->bin);
    buf_reset(&cs->bout);
    memset(&cs->rep, 0, sizeof(cs->rep));
    rc = ep_init(&cs->backend, cs->srv->loop, on_backend_event, on_backend_closed, cs);
    if (rc != 0) {
        fail_session(cs, "421 Service not available: out of resources.", "backend init failed");
        return;
    }
    cs->open_handles++;
    ep_set_bufs(&cs->backend, &cs->bin, &cs->bout);
    cs->state = CTL_CONNECTING;
    rc = ep_connect(&cs->backend, (const struct sockaddr *)&b->address.sa, NULL);
    if (rc != 0) {
        metrics_add(M_BACKEND_FAILURES, b->name, NULL, 1);
        LOG_ERROR(&cs->lg, "backend_unreachable", "address", b->address.text, "error",
                  uv_strerror(rc), NULL);
        fail_session(cs, "421 Service not available: the site's server cannot be reached.",
                     "backend unreachable");
        return;
    }
    uv_timer_start(&cs->ctimer, on_connect_timeout, (uint64_t)cfg_of(cs)->connect_timeout * 1000,
                   0);
}

static const char *route_refusal(enum route_status st)
{
    switch (st) {
    case ROUTE_UNKNOWN_HOST:
        return "530 Unknown host: no site has that name. Log in as USER host|user with a "
               "configured host name.";
    case ROUTE_CONFLICT_HOST:
        return "530 USER names a different site than HOST did. Name one site only.";
    case ROUTE_CONFLICT_SNI:
        return "530 The site named at login is not the one named in the TLS handshake (SNI). "
               "Name one site only.";
    default:
        return "530 No site named: log in as USER host|user, or send HOST host before USER.";
    }
}

static void set_site(struct ctl_session *cs, const char *name, size_t len)
{
    if (len >= sizeof(cs->site))
        len = sizeof(cs->site) - 1;
    memcpy(cs->site, name, len);
    cs->site[len] = '\0';
    cs->lg.site = cs->site;
}

static void on_user(struct ctl_session *cs, const struct ftp_cmd *cmd)
{
    const struct cfg *cfg = cfg_of(cs);
    const struct cfg_backend *be;
    struct ftp_user_arg ua;
    struct route_query q;
    enum route_status st;
    size_t ulen;
    int rc, b = -1;

    if (cfg->require_tls && !cs->tls_on) {
        reply(cs, "530 TLS required: send AUTH TLS first, then log in.");
        return;
    }
    rc = ftp_split_user(cmd->arg, cmd->arg_len, cfg->host_separator, &ua);
    if (rc < 0 || ua.user_len == 0) {
        replyf(cs, "501 Bad USER argument: use USER user or USER host%cuser.",
               cfg->host_separator);
        return;
    }
    q.user_host = rc == 1 ? ua.host : NULL;
    q.user_host_len = rc == 1 ? ua.host_len : 0;
    q.host_site = cs->host_site;
    q.sni_site = cs->tci.sni_site;
    st = route_decide(cfg, &q, &b);
    if (st == ROUTE_UNKNOWN_HOST && ftp_check_host_arg(ua.host, ua.host_len) == 0 &&
        ua.host_len <= 253) {
        /* The name is echoed only once it is known to be a plain host name. */
        LOG_INFO(&cs->lg, "route_refused", "reason", route_status_name(st), NULL);
        replyf(cs,
               "530 Unknown host '%.*s': no site has that name. Log in as USER host%cuser "
               "with a configured host name.",
               (int)ua.host_len, ua.host, cfg->host_separator);
        return;
    }
    if (st != ROUTE_OK) {
        LOG_INFO(&cs->lg, "route_refused", "reason", route_status_name(st), NULL);
        reply(cs, route_refusal(st));
        return;
    }
    be = &cfg->backends[b];
    if (rc == 1) {
        set_site(cs, ua.host, ua.host_len);
    } else if (cs->host_site < 0 && cs->tci.sni_site == b && cs->client.tls != NULL) {
        const char *sni = SSL_get_servername(tlsconn_ssl(cs->client.tls), TLSEXT_NAMETYPE_host_name);

        if (sni != NULL)
            set_site(cs, sni, strlen(sni));
    }
    ulen = ua.user_len < sizeof(cs->lg.user) ? ua.user_len : sizeof(cs->lg.user) - 1;
    memcpy(cs->lg.user, ua.user, ulen);
    cs->lg.user[ulen] = '\0';
    free(cs->login_user);
    cs->login_user = strndup(ua.user, ua.user_len);
    if (cs->login_user == NULL) {
        ctl_close(cs, "out of memory");
        return;
    }
    if (cs->state == CTL_LOGIN && cs->backend.open && b == cs->backend_idx) {
        send_user(cs); /* another try on the same site's connection */
        return;
    }
    if (cs->backend_counted)
        backend_leave(cs);
    cs->backend_idx = b;
    cs->lg.backend = be->name;
    if (!server_backend_enter(cs->srv, be->name, be->max_sessions)) {
        LOG_WARN(&cs->lg, "refused", "reason", "backend max_sessions reached", NULL);
        metrics_add(M_CONN_REFUSED, "backend_max_sessions", NULL, 1);
        fail_session(cs, "421 Too many sessions for this site: try again later.",
                     "backend max_sessions");
        return;
    }
    cs->backend_counted = true;
    metrics_add(M_BACKEND_SESSIONS_ACTIVE, be->name, NULL, 1);
    metrics_add(M_SESSIONS_TOTAL, be->name, NULL, 1);
    if (cs->backend.open) { /* another site: reconnect once the old one is closed */
        cs->switch_pending = true;
        cs->state = CTL_CONNECTING;
        ep_close(&cs->backend, false);
        return;
    }
    connect_backend(cs);
}

/* ---- the proxy's own commands ---- */

static bool arg_is(const struct ftp_cmd *cmd, const char *word)
{
    return cmd->arg_len == strlen(word) && strncasecmp(cmd->arg, word, cmd->arg_len) == 0;
}

static void start_tls(struct ctl_session *cs)
{
    SSL_CTX *ctx = tlsctx_for_site(cs->gen->tls, cs->early_host_site);
    struct tlsconn *t = tlsconn_new(ctx, CTL_TLS_BUF);

    cs->tls_pending = false;
    if (t == NULL || tlsctx_setup(tlsconn_ssl(t), &cs->tci, cs->token, false) != 0) {
        tlsconn_free(t);
        ctl_close(cs, "out of memory");
        return;
    }
    cs->ctx0 = ctx;
    cs->handshaking = true;
    ep_start_tls(&cs->client, t, &cs->cin);
}

static void on_auth(struct ctl_session *cs, const struct ftp_cmd *cmd)
{
    if (cs->tls_on || cs->handshaking) {
        reply(cs, "503 TLS is already on.");
        return;
    }
    if (!arg_is(cmd, "TLS") && !arg_is(cmd, "SSL") && !arg_is(cmd, "TLS-C")) {
        reply(cs, "504 AUTH type not supported: use AUTH TLS.");
        return;
    }
    if (cs->state != CTL_PRE_LOGIN) {
        reply(cs, "503 AUTH TLS must come before USER.");
        return;
    }
    reply(cs, "234 Proceed with TLS negotiation.");
    cs->tls_pending = true; /* starts once the 234 is on the wire */
}

static bool all_digits(const char *p, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (p[i] < '0' || p[i] > '9')
            return false;
    return true;
}

static void on_pbsz(struct ctl_session *cs, const struct ftp_cmd *cmd)
{
    if (!cs->tls_on) {
        reply(cs, "503 PBSZ needs AUTH TLS first.");
        return;
    }
    if (!all_digits(cmd->arg, cmd->arg_len)) {
        reply(cs, "501 PBSZ needs a number: send PBSZ 0.");
        return;
    }
    cs->pbsz = true;
    reply(cs, "200 PBSZ=0");
}

static void on_prot(struct ctl_session *cs, const struct ftp_cmd *cmd)
{
    if (!cs->tls_on) {
        reply(cs, "503 PROT needs AUTH TLS first.");
        return;
    }
    if (!cs->pbsz) {
        reply(cs, "503 PROT needs PBSZ first.");
        return;
    }
    if (arg_is(cmd, "P")) {
        cs->prot_p = true;
        reply(cs, "200 PROT now Private.");
    } else if (arg_is(cmd, "C")) {
        if (cfg_of(cs)->require_protected_data) {
            reply(cs, "534 PROT C refused: data connections must be protected (PROT P).");
            return;
        }
        cs->prot_p = false;
        reply(cs, "200 PROT now Clear.");
    } else if (arg_is(cmd, "S") || arg_is(cmd, "E")) {
        reply(cs, "536 PROT level not supported: use PROT P.");
    } else {
        reply(cs, "504 Unknown PROT level: use PROT P.");
    }
}

static void on_host(struct ctl_session *cs, const struct ftp_cmd *cmd)
{
    int rc, site;

    if (cs->state == CTL_RELAY) {
        reply(cs, "503 HOST is not allowed after login.");
        return;
    }
    if (cs->state != CTL_PRE_LOGIN) {
        reply(cs, "503 HOST must come before USER.");
        return;
    }
    rc = ftp_check_host_arg(cmd->arg, cmd->arg_len);
    if (rc == PX_ERANGE) {
        reply(cs, "501 HOST takes a host name without a port.");
        return;
    }
    if (rc != 0) {
        reply(cs, "501 HOST needs a host name.");
        return;
    }
    site = route_find(cfg_of(cs), cmd->arg, cmd->arg_len);
    if (site < 0) {
        LOG_INFO(&cs->lg, "host_refused", "reason", "unknown host", "host", cmd->arg, NULL);
        reply(cs, "504 Unknown host: no site has that name.");
        return;
    }
    if (cs->tci.sni_site >= 0 && site != cs->tci.sni_site) {
        LOG_INFO(&cs->lg, "host_refused", "reason", "contradicts SNI", "host", cmd->arg, NULL);
        reply(cs, "504 HOST names a different site than the TLS handshake (SNI) did.");
        return;
    }
    cs->host_site = site;
    if (!cs->tls_on)
        cs->early_host_site = site; /* picks the certificate at AUTH TLS */
    set_site(cs, cmd->arg, cmd->arg_len);
    reply(cs, "220 Host accepted.");
}

#define FEAT_OWN " AUTH TLS\r\n PBSZ\r\n PROT\r\n HOST\r\n EPSV\r\n PASV\r\n"

/* The proxy's own feature lines, with the opening line when head is set. */
static void send_feat(struct ctl_session *cs, bool head)
{
    if (head)
        send_str(cs, "211-Features:\r\n");
    send_str(cs, FEAT_OWN);
    if (cfg_of(cs)->allow_active)
        send_str(cs, " EPRT\r\n");
}

static void feat_line(struct ctl_session *cs, const char *line, size_t len, bool last)
{
    if (cs->rep.lines == 1) {
        if (!last) {
            relay_line(cs, line, len);
            return;
        }
        /* No list from the backend ("211 no features", or an error). */
        send_feat(cs, true);
        send_str(cs, "211 End\r\n");
        return;
    }
    if (last) {
        send_feat(cs, false);
        relay_line(cs, line, len);
        return;
    }
    if (!ftp_feat_drop(line, len))
        relay_line(cs, line, len);
}

static void on_opts(struct ctl_session *cs, const struct ftp_cmd *cmd)
{
    if (arg_is(cmd, "UTF8 ON") || arg_is(cmd, "UTF8"))
        reply(cs, "200 Always in UTF8 mode.");
    else
        reply(cs, "501 Option not understood.");
}

/* ---- data connections ---- */

static bool v4_of(const struct sockaddr_storage *ss, uint8_t out[4])
{
    if (ss->ss_family == AF_INET) {
        memcpy(out, &((const struct sockaddr_in *)ss)->sin_addr, 4);
        return true;
    }
    if (ss->ss_family == AF_INET6 &&
        IN6_IS_ADDR_V4MAPPED(&((const struct sockaddr_in6 *)ss)->sin6_addr)) {
        memcpy(out, ((const struct sockaddr_in6 *)ss)->sin6_addr.s6_addr + 12, 4);
        return true;
    }
    return false;
}

static bool same_host(const struct ftp_hostport *hp, const struct sockaddr_storage *peer)
{
    uint8_t v4[4];

    if (hp->family == 4)
        return v4_of(peer, v4) && memcmp(v4, hp->addr, 4) == 0;
    return peer->ss_family == AF_INET6 &&
           memcmp(&((const struct sockaddr_in6 *)peer)->sin6_addr, hp->addr, 16) == 0;
}

static void xfer_params_of(struct ctl_session *cs, struct xfer_params *p)
{
    const struct cfg *cfg = cfg_of(cs);
    bool tls = cs->prot_p && cs->client.tls != NULL;

    p->loop = cs->srv->loop;
    p->pool = cs->srv->pool;
    p->local = (const struct sockaddr *)&cs->local;
    p->client = (const struct sockaddr *)&cs->peer;
    p->backend_local = (const struct sockaddr *)&cs->backend_local;
    p->ssl_ctx = tls ? cs->ctx0 : NULL;
    p->cert_ctx = tls ? SSL_get_SSL_CTX(tlsconn_ssl(cs->client.tls)) : NULL;
    p->token = cs->token;
    p->require_reuse = cfg->require_session_reuse;
    p->data_timeout = cfg->data_timeout;
    p->lg = &cs->lg;
}

/* The client's answer to PASV/EPSV/PORT/EPRT: given at once, before the
 * backend named its own passive port (which only the proxy needs), so the
 * backend's round trip overlaps the client's next steps. */
static void answer_data_setup(struct ctl_session *cs)
{
    char text[128];
    uint8_t ip[4];

    if (cs->pasv_active) {
        reply(cs, "200 Active data connection ready: send the transfer command.");
    } else if (cs->pasv_epsv) {
        send_text(cs, text, ftp_format_epsv_reply(text, sizeof(text), cs->pasv_port));
    } else {
        if (cfg_of(cs)->has_passive_address)
            memcpy(ip, cfg_of(cs)->passive_address, 4);
        else
            v4_of(&cs->local, ip);
        send_text(cs, text, ftp_format_pasv_reply(text, sizeof(text), ip, cs->pasv_port));
    }
}

/* Prepares a data channel (passive, or active towards `to`) and asks the
 * backend for its passive port; the client's reply waits for the backend's. */
static void start_data(struct ctl_session *cs, bool epsv, const struct sockaddr *to)
{
    struct xfer_params p;
    uint16_t port = 0;
    int err = 0;

    drop_xfer(cs);
    xfer_params_of(cs, &p);
    cs->xfer = to != NULL ? xfer_new_active(cs, &p, to, &err)
                          : xfer_new_passive(cs, &p, &port, &err);
    if (cs->xfer == NULL) {
        if (err == UV_ENOSPC) {
            LOG_WARN(&cs->lg, "passive_ports_exhausted", NULL);
            reply(cs, "425 No free passive port: try again later.");
        } else {
            LOG_ERROR(&cs->lg, "passive_failed", "error", uv_strerror(err), NULL);
            reply(cs, "425 Cannot open a data connection.");
        }
        return;
    }
    cs->pasv_port = port;
    cs->pasv_epsv = epsv;
    cs->pasv_active = to != NULL;
    cs->xfer_client_done = false;
    cs->xfer_failure = NULL;
    cs->xfer_code = 0;
    if (cs->client.tls != NULL)
        tlsctx_more_tickets(tlsconn_ssl(cs->client.tls));
    buf_reset(&cs->held);
    cs->pasv_failed = false;
    cs->pasv_tried_epsv = !cs->backend_no_epsv;
    send_backend_str(cs, cs->backend_no_epsv ? "PASV" : "EPSV", WAIT_PASV);
    answer_data_setup(cs);
}

static bool control_is_v6(const struct ctl_session *cs)
{
    uint8_t v4[4];

    return !v4_of(&cs->local, v4);
}

static void on_passive(struct ctl_session *cs, const struct ftp_cmd *cmd, bool epsv)
{
    bool v6 = control_is_v6(cs);
    int a;

    if (!epsv) {
        if (cs->epsv_all) {
            reply(cs, "503 EPSV ALL is in effect: use EPSV.");
            return;
        }
        if (v6) {
            reply(cs, "522 PASV works over IPv4 only: use EPSV (RFC 2428).");
            return;
        }
        start_data(cs, false, NULL);
        return;
    }
    a = ftp_parse_epsv_arg(cmd->arg, cmd->arg_len);
    if (a < 0) {
        if (ftp_epsv_arg_is_proto(cmd->arg, cmd->arg_len))
            replyf(cs, "522 Network protocol not supported, use (%d)", v6 ? 2 : 1);
        else
            reply(cs, "501 Bad EPSV argument.");
        return;
    }
    if (a == FTP_EPSV_ALL) {
        cs->epsv_all = true;
        reply(cs, "200 EPSV ALL ok.");
        return;
    }
    if ((a == FTP_EPSV_IPV4 && v6) || (a == FTP_EPSV_IPV6 && !v6)) {
        replyf(cs, "522 Network protocol not supported, use (%d)", v6 ? 2 : 1);
        return;
    }
    start_data(cs, true, NULL);
}

static void on_active(struct ctl_session *cs, const struct ftp_cmd *cmd, bool eprt)
{
    struct ftp_hostport hp;
    struct sockaddr_storage to;
    int rc;

    if (!cfg_of(cs)->allow_active) {
        reply(cs, "502 Active mode (PORT/EPRT) is disabled here: use PASV or EPSV.");
        return;
    }
    if (cs->epsv_all) {
        reply(cs, "503 EPSV ALL is in effect: use EPSV.");
        return;
    }
    rc = eprt ? ftp_parse_eprt_arg(cmd->arg, cmd->arg_len, &hp)
              : ftp_parse_port_arg(cmd->arg, cmd->arg_len, &hp);
    if (rc != 0) {
        reply(cs, eprt ? "501 Bad EPRT argument." : "501 Bad PORT argument.");
        return;
    }
    if (!same_host(&hp, &cs->peer) || hp.port < 1024) {
        LOG_WARN(&cs->lg, "bounce_refused", "port_arg", cmd->arg, NULL);
        reply(cs, "501 Refused: data connections go only to your own address, port 1024 or above.");
        return;
    }
    /* Connect out in the family of our control socket. */
    to = cs->peer;
    if (to.ss_family == AF_INET)
        ((struct sockaddr_in *)&to)->sin_port = htons(hp.port);
    else
        ((struct sockaddr_in6 *)&to)->sin6_port = htons(hp.port);
    start_data(cs, false, (const struct sockaddr *)&to);
}

static void held_line(struct ctl_session *cs, const char *line, size_t len)
{
    /* A reply too long to hold keeps its first lines and its last. */
    if (buf_len(&cs->held) + len + 2 > CTL_HELD_CAP - (FTP_LINE_MAX + 2) && cs->rep.done == false)
        return;
    if (buf_append(&cs->held, line, len) == 0)
        (void)buf_append(&cs->held, "\r\n", 2);
}

static bool parse_passive_reply(struct ctl_session *cs, uint16_t *port)
{
    const char *p = buf_head(&cs->held), *end = p + buf_len(&cs->held);
    struct ftp_hostport hp;

    while (p < end) {
        const char *lf = memchr(p, '\n', (size_t)(end - p));
        size_t n = (size_t)((lf != NULL ? lf : end) - p);
        const char *text = n > 4 ? p + 4 : p;
        size_t tn = n > 4 ? n - 4 : n;
        int rc = cs->rep.code == 229 ? ftp_parse_epsv_reply(text, tn, &hp)
                                     : ftp_parse_pasv_reply(text, tn, &hp);

        if (rc == 0) {
            *port = hp.port;
            return true;
        }
        p += n + 1;
    }
    return false;
}

/* The backend's answer to our EPSV/PASV. The client was answered already;
 * commands it sent since wait until this is known. */
static void pasv_reply(struct ctl_session *cs)
{
    struct sockaddr_storage data = cs->backend_peer;
    uint16_t port = 0;
    int code = cs->rep.code;

    cs->wait = WAIT_NONE;
    if ((code != 227 && code != 229) || !parse_passive_reply(cs, &port)) {
        buf_reset(&cs->held);
        if (cs->pasv_tried_epsv && code >= 500) { /* no EPSV there: ask with PASV */
            cs->backend_no_epsv = true;
            cs->pasv_tried_epsv = false;
            send_backend_str(cs, "PASV", WAIT_PASV);
            return;
        }
        LOG_WARN(&cs->lg, "backend_passive_failed", NULL);
        cs->pasv_failed = true; /* the transfer command gets 425 */
        process_input(cs, true);
        return;
    }
    buf_reset(&cs->held);
    /* Only the port is taken from the reply; the address is the backend's
     * control address, whatever the reply said. */
    if (data.ss_family == AF_INET)
        ((struct sockaddr_in *)&data)->sin_port = htons(port);
    else
        ((struct sockaddr_in6 *)&data)->sin6_port = htons(port);
    xfer_set_backend(cs->xfer, (const struct sockaddr *)&data);
    process_input(cs, true);
}

static void on_transfer(struct ctl_session *cs, const char *line, size_t len,
                        const struct ftp_cmd *cmd)
{
    const char *why;

    if (cs->xfer == NULL) {
        reply(cs, "425 Use PASV or EPSV first.");
        return;
    }
    if (cs->pasv_failed) {
        drop_xfer(cs);
        reply(cs, "425 The site's server did not open a data port.");
        return;
    }
    if (!cs->prot_p && cfg_of(cs)->require_protected_data) {
        drop_xfer(cs);
        reply(cs, "521 Data connections must be protected: send PBSZ 0 and PROT P first.");
        return;
    }
    if (xfer_refused(cs->xfer, &why)) {
        drop_xfer(cs);
        replyf(cs, "522 Data connection refused: %s.", why);
        return;
    }
    if (cs->xfer_client_done) { /* its data connection failed or never came */
        replyf(cs, "425 No data connection (%s): send PASV or EPSV again.",
               cs->xfer_failure != NULL ? cs->xfer_failure : "closed");
        drop_xfer(cs);
        return;
    }
    cs->xfer_download = ctlfsm_is_download(cmd->verb);
    memcpy(cs->xfer_verb, cmd->verb, sizeof(cs->xfer_verb));
    free(cs->xfer_path);
    cs->xfer_path = strndup(cmd->arg, cmd->arg_len);
    cs->xfer_started_ms = uv_now(cs->srv->loop);
    cs->xfer_code = 0;
    buf_reset(&cs->held);
    send_backend(cs, line, len, WAIT_XFER);
    if (cs->xfer != NULL)
        xfer_start(cs->xfer, cs->xfer_download);
}

static void log_transfer(struct ctl_session *cs, const char *result)
{
    char bytes[24], ms[24], code[24];
    uint64_t up = 0, down = 0;

    if (cs->xfer != NULL)
        xfer_bytes(cs->xfer, &up, &down);
    metrics_add(M_TRANSFERS, backend_name(cs), result, 1);
    metrics_add(M_BYTES, backend_name(cs), "upload", (int64_t)up);
    metrics_add(M_BYTES, backend_name(cs), "download", (int64_t)down);
    LOG_INFO(&cs->lg, "transfer", "command", cs->xfer_verb, "path",
             cs->xfer_path != NULL ? cs->xfer_path : "", "direction",
             cs->xfer_download ? "download" : "upload", "bytes",
             log_u64(bytes, cs->xfer_download ? down : up), "duration_ms",
             log_u64(ms, uv_now(cs->srv->loop) - cs->xfer_started_ms), "reply",
             log_u64(code, (uint64_t)cs->xfer_code), "result", result, NULL);
    free(cs->xfer_path);
    cs->xfer_path = NULL;
}

/* The final reply came and the client side is finished: the held reply goes
 * out (or 522 when a data connection was refused). */
static void finish_transfer(struct ctl_session *cs)
{
    const char *why = NULL;
    bool refused = xfer_refused(cs->xfer, &why);

    /* A backend's 226 says only that the file went into our socket: when the
     * client's side failed, the client did not get it. */
    bool cut = !refused && cs->xfer_failure != NULL && cs->xfer_code < 400;

    log_transfer(cs, refused ? "refused" : cs->xfer_code < 300 && !cut ? "ok" : "failed");
    drop_xfer(cs);
    if (refused)
        replyf(cs, "522 Data connection refused: %s.", why);
    else if (cut)
        replyf(cs, "426 Transfer aborted: %s.", cs->xfer_failure);
    else
        send_text(cs, buf_head(&cs->held), buf_len(&cs->held));
    buf_reset(&cs->held);
    buf_shrink(&cs->held);
    process_input(cs, true);
}

static void maybe_finish_transfer(struct ctl_session *cs)
{
    if (cs->xfer != NULL && cs->xfer_client_done && cs->xfer_code != 0)
        finish_transfer(cs);
}

void ctl_xfer_event(struct ctl_session *cs, enum xfer_event ev, const char *reason)
{
    if (cs->closing)
        return;
    if (ev == XFER_REFUSED) {
        LOG_WARN(&cs->lg, "data_refused", "reason", reason, NULL);
        return; /* counted by the transfer, which knows the kind */
    }
    if (reason != NULL)
        LOG_INFO(&cs->lg, "data_closed", "reason", reason, NULL);
    cs->xfer_client_done = true;
    cs->xfer_failure = reason;
    maybe_finish_transfer(cs);
}

static void transfer_reply(struct ctl_session *cs, int code)
{
    if (cs->xfer == NULL) { /* relayed at once: nothing to wait for */
        process_input(cs, true);
        return;
    }
    cs->xfer_code = code;
    xfer_final_reply(cs->xfer, code);
    maybe_finish_transfer(cs);
}

/* ABOR during a transfer: the Synch (RFC 959: IAC IP, then IAC DM as TCP
 * urgent data) lets a backend that watches for it abort at once; the data
 * connections are reset either way, so the backend's transfer fails. */
static void on_abor(struct ctl_session *cs, const char *line, size_t len)
{
    static const char synch[] = "\xff\xf4\xff";
    uv_os_fd_t fd;

    if (cs->wait != WAIT_XFER) {
        send_backend(cs, line, len, WAIT_PLAIN);
        return;
    }
    if (!cs->backend.writing && buf_len(&cs->bout) == 0 &&
        uv_fileno((uv_handle_t *)&cs->backend.tcp, &fd) == 0 &&
        send(fd, synch, 3, MSG_OOB | MSG_NOSIGNAL) == 3)
        (void)buf_append(&cs->bout, "\xf2", 1); /* DM ends the Synch */
    /* ABOR goes out before the data connections are reset, so the backend
     * knows why its transfer broke (426 for it, then 226 for ABOR). */
    send_backend_str(cs, "ABOR", WAIT_XFER_ABOR);
    if (cs->xfer != NULL)
        log_transfer(cs, "aborted");
    drop_xfer(cs);
}

/* ---- replies from the backend ---- */

static void login_failed(struct ctl_session *cs, int code)
{
    char c[24];

    metrics_add(M_LOGINS_FAILED, backend_name(cs), NULL, 1);
    LOG_INFO(&cs->lg, "login_failed", "reply", log_u64(c, (uint64_t)code), NULL);
}

static void on_reply(struct ctl_session *cs, int code)
{
    enum ctl_wait w = cs->wait;

    if (code < 200)
        return; /* preliminary: the final reply follows */
    cs->wait = WAIT_NONE;
    switch (w) {
    case WAIT_USER:
    case WAIT_PASS:
        if (code == 230 || (w == WAIT_PASS && code == 202))
            logged_in(cs);
        else if (code >= 400)
            login_failed(cs, code);
        break;
    case WAIT_QUIT:
        close_after_flush(cs, "client quit");
        return;
    case WAIT_XFER:
        transfer_reply(cs, code);
        return;
    case WAIT_XFER_ABOR:
        cs->wait = WAIT_ABOR; /* the transfer's reply came; ABOR's follows */
        return;
    default:
        break;
    }
    if (code == 421) {
        close_after_flush(cs, "backend ended the session");
        return;
    }
    process_input(cs, true);
}

static void on_reply_line(struct ctl_session *cs, const char *line, size_t len)
{
    int rc = ftp_reply_line(&cs->rep, line, len);
    bool last = rc == 1;

    if (rc < 0) {
        LOG_WARN(&cs->lg, "backend_bad_reply", NULL);
        fail_session(cs, "421 Service not available: the site's server sent a malformed reply.",
                     "backend protocol error");
        return;
    }
    if (cs->state == CTL_GREETING) {
        if (!last)
            return;
        uv_timer_stop(&cs->ctimer);
        if (cs->rep.code != 220) {
            metrics_add(M_BACKEND_FAILURES, backend_name(cs), NULL, 1);
            LOG_WARN(&cs->lg, "backend_refused", "greeting", line, NULL);
            fail_session(cs, "421 Service not available: the site's server refused the session.",
                         "backend refused");
            return;
        }
        send_user(cs);
        return;
    }
    switch (cs->wait) {
    case WAIT_FEAT:
        feat_line(cs, line, len, last);
        break;
    case WAIT_PASV:
        held_line(cs, line, len);
        if (last)
            pasv_reply(cs);
        return;
    case WAIT_XFER:
        if (cs->rep.code >= 200 && cs->xfer != NULL)
            held_line(cs, line, len);
        else
            relay_line(cs, line, len);
        break;
    default:
        relay_line(cs, line, len);
        break;
    }
    if (last)
        on_reply(cs, cs->rep.code);
}

static void process_replies(struct ctl_session *cs, bool resume)
{
    const char *line;
    size_t len;
    int rc;

    while (!cs->closing && !cs->closing_after_flush &&
           buf_space(&cs->cout) >= CTL_OUT_ROOM) {
        rc = buf_take_line(&cs->bin, FTP_LINE_MAX, &line, &len);
        if (rc == 0)
            break;
        if (rc < 0) {
            LOG_WARN(&cs->lg, "backend_bad_reply", "reason", "line too long", NULL);
            fail_session(cs, "421 Service not available: the site's server sent a malformed "
                             "reply.",
                         "backend protocol error");
            return;
        }
        on_reply_line(cs, line, len);
    }
    if (cs->closing)
        return;
    if (buf_len(&cs->bin) == 0)
        buf_shrink(&cs->bin);
    if (resume && cs->backend.open)
        ep_read(&cs->backend);
}

/* ---- commands from the client ---- */

static enum ctlfsm_phase phase_of(const struct ctl_session *cs)
{
    if (cs->state == CTL_RELAY)
        return CTLFSM_RELAY;
    return cs->state == CTL_PRE_LOGIN ? CTLFSM_PRE_LOGIN : CTLFSM_LOGIN;
}

static void dispatch(struct ctl_session *cs, const char *line, size_t len,
                     const struct ftp_cmd *cmd)
{
    switch (ctlfsm_on_command(phase_of(cs), cmd->verb)) {
    case CTLFSM_FORWARD:
        send_backend(cs, line, len, strcmp(cmd->verb, "FEAT") == 0 ? WAIT_FEAT : WAIT_PLAIN);
        return;
    case CTLFSM_AUTH:
        on_auth(cs, cmd);
        return;
    case CTLFSM_PBSZ:
        on_pbsz(cs, cmd);
        return;
    case CTLFSM_PROT:
        on_prot(cs, cmd);
        return;
    case CTLFSM_HOST:
        on_host(cs, cmd);
        return;
    case CTLFSM_FEAT:
        if (cs->state == CTL_RELAY) {
            send_backend(cs, line, len, WAIT_FEAT);
            return;
        }
        send_feat(cs, true);
        send_str(cs, " UTF8\r\n211 End\r\n");
        return;
    case CTLFSM_USER:
        on_user(cs, cmd);
        return;
    case CTLFSM_PASS:
        if (cs->state == CTL_PRE_LOGIN)
            reply(cs, "503 Login with USER first.");
        else
            send_backend(cs, line, len, WAIT_PASS);
        return;
    case CTLFSM_QUIT:
        if (cs->state == CTL_RELAY) {
            send_backend(cs, line, len, WAIT_QUIT);
            return;
        }
        reply(cs, "221 Goodbye.");
        close_after_flush(cs, "client quit");
        return;
    case CTLFSM_NOOP:
        reply(cs, "200 NOOP ok.");
        return;
    case CTLFSM_SYST:
        reply(cs, "215 UNIX Type: L8");
        return;
    case CTLFSM_OPTS:
        on_opts(cs, cmd);
        return;
    case CTLFSM_NEED_LOGIN:
        reply(cs, "530 Please log in with USER and PASS first.");
        return;
    case CTLFSM_REFUSE:
        reply(cs, strcmp(cmd->verb, "CCC") == 0
                      ? "534 CCC refused: the control channel stays encrypted."
                      : "502 REIN not supported: open a new connection instead.");
        return;
    case CTLFSM_PASV:
        on_passive(cs, cmd, false);
        return;
    case CTLFSM_EPSV:
        on_passive(cs, cmd, true);
        return;
    case CTLFSM_PORT:
        on_active(cs, cmd, false);
        return;
    case CTLFSM_EPRT:
        on_active(cs, cmd, true);
        return;
    case CTLFSM_LONG_PASSIVE:
        reply(cs, "502 LPSV and LPRT are not supported: use EPSV or PASV.");
        return;
    case CTLFSM_TRANSFER:
        on_transfer(cs, line, len, cmd);
        return;
    case CTLFSM_ABOR:
        on_abor(cs, line, len);
        return;
    }
}

static void handle_line(struct ctl_session *cs, const char *raw, size_t rawlen)
{
    char line[FTP_LINE_MAX + 1];
    struct ftp_cmd cmd;
    size_t len;

    memcpy(line, raw, rawlen);
    len = ftp_strip_telnet(line, rawlen);
    line[len] = '\0';
    if (ftp_parse_command(line, len, &cmd) != 0) {
        reply(cs, "500 Syntax error, command unrecognized.");
        return;
    }
    if (cs->state == CTL_RELAY)
        arm_idle(cs);
    LOG_DEBUG(&cs->lg, "command", "verb", cmd.verb, "arg", ftp_cmd_is_secret(&cmd) ? "****" : cmd.arg,
              NULL);
    dispatch(cs, line, len, &cmd);
}

/* True when the first buffered line is ABOR (Telnet bytes before it allowed). */
static bool next_is_abor(const struct ctl_session *cs)
{
    const char *p = buf_head(&cs->cin);
    const char *lf = buf_len(&cs->cin) > 0 ? memchr(p, '\n', buf_len(&cs->cin)) : NULL;
    char tmp[16];
    size_t n;

    if (lf == NULL)
        return false;
    n = (size_t)(lf - p);
    if (n > sizeof(tmp))
        return false;
    memcpy(tmp, p, n);
    n = ftp_strip_telnet(tmp, n);
    while (n > 0 && (tmp[n - 1] == '\r' || tmp[n - 1] == ' '))
        n--;
    return n == 4 && strncasecmp(tmp, "ABOR", 4) == 0;
}

static bool input_allowed(const struct ctl_session *cs)
{
    if (cs->closing || cs->closing_after_flush || cs->tls_pending || cs->handshaking)
        return false;
    if (cs->state == CTL_PROXY_HDR || cs->state == CTL_HANDSHAKE || cs->state == CTL_CONNECTING ||
        cs->state == CTL_GREETING)
        return false;
    if (buf_space(&cs->cout) < CTL_OUT_ROOM)
        return false; /* the client is not reading its replies */
    if (cs->xfer != NULL && cs->xfer_code != 0)
        return false; /* a held final reply goes first */
    if (cs->wait == WAIT_NONE)
        return true;
    return cs->wait == WAIT_XFER && next_is_abor(cs);
}

static void process_input(struct ctl_session *cs, bool resume)
{
    const char *line;
    size_t len;
    int rc;

    while (input_allowed(cs)) {
        rc = buf_take_line(&cs->cin, FTP_LINE_MAX, &line, &len);
        if (rc == 0)
            break;
        if (rc < 0) {
            LOG_INFO(&cs->lg, "bad_command", "reason", "line too long", NULL);
            reply(cs, "500 Command line too long.");
            continue;
        }
        handle_line(cs, line, len);
    }
    if (cs->closing)
        return;
    if (buf_len(&cs->cin) == 0 && !cs->cin.discarding)
        buf_shrink(&cs->cin);
    if (resume && !cs->closing_after_flush)
        ep_read(&cs->client);
}

/* ---- the client connection ---- */

static void greet(struct ctl_session *cs) { replyf(cs, "220 %s", cfg_of(cs)->banner); }

static void on_handshake(struct ctl_session *cs)
{
    SSL *ssl = tlsconn_ssl(cs->client.tls);

    cs->handshaking = false;
    cs->tls_on = true;
    LOG_DEBUG(&cs->lg, "tls", "version", SSL_get_version(ssl), "cipher", SSL_get_cipher_name(ssl),
              "sni", SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name), NULL);
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

static void on_client_event(struct ep *e, enum ep_event ev, int status)
{
    struct ctl_session *cs = e->owner;
    char err[256];

    if (cs->closing)
        return;
    switch (ev) {
    case EP_HANDSHAKE:
        on_handshake(cs);
        return;
    case EP_READ:
        if (cs->state == CTL_PROXY_HDR)
            proxy_header(cs);
        process_input(cs, false);
        return;
    case EP_DRAINED:
        if (cs->tls_pending && ep_pending(e) == 0) {
            start_tls(cs);
            return;
        }
        if (buf_len(&cs->cout) == 0) {
            buf_shrink(&cs->cout);
            if (e->tls != NULL && !e->writing)
                tlsconn_shrink(e->tls);
        }
        process_replies(cs, true);
        process_input(cs, true);
        return;
    case EP_SHUTDOWN:
        if (cs->closing_after_flush)
            ctl_close(cs, cs->close_reason);
        return;
    case EP_EOF:
        ctl_close(cs, cs->closing_after_flush ? cs->close_reason : "client closed");
        return;
    case EP_ERROR:
        if (cs->closing_after_flush) { /* the client left before our last words */
            ctl_close(cs, cs->close_reason);
            return;
        }
        if (cs->handshaking) {
            tlsconn_error_text(err, sizeof(err));
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
        return;
    default:
        return;
    }
}

void ctl_shutdown(struct ctl_session *cs)
{
    if (!cs->closing)
        fail_session(cs, "421 Server shutting down.", "shutdown");
}

/* The session proper, once the client's address is known: limits, then the
 * greeting (explicit) or the TLS handshake (implicit). */
static void begin(struct ctl_session *cs)
{
    const char *refusal = server_admit(cs->srv, (const struct sockaddr *)&cs->peer);

    if (refusal != NULL) {
        LOG_WARN(&cs->lg, "refused", "reason", refusal, NULL);
        metrics_add(M_CONN_REFUSED, refusal, NULL, 1);
        if (cs->implicit) {
            ctl_close(cs, refusal);
            return;
        }
        fail_session(cs, "421 Too many connections: try again later.", refusal);
        return;
    }
    cs->admitted = true;
    LOG_INFO(&cs->lg, "connect", "listener", cs->implicit ? "implicit" : "explicit", NULL);
    uv_timer_start(&cs->timer, on_timer, (uint64_t)cfg_of(cs)->login_timeout * 1000, 0);
    if (cs->implicit) {
        cs->state = CTL_HANDSHAKE;
        start_tls(cs);
    } else {
        cs->state = CTL_PRE_LOGIN;
        greet(cs);
    }
}

static void on_proxy_timeout(uv_timer_t *t)
{
    struct ctl_session *cs = t->data;

    LOG_WARN(&cs->lg, "refused", "reason", "no PROXY header within 5 seconds", NULL);
    metrics_add(M_CONN_REFUSED, "proxy_header_timeout", NULL, 1);
    ctl_close(cs, "no PROXY header");
}

/* Untrusted: the first bytes of the connection, before we send anything. The
 * header's source address becomes the client's address for logs, limits and
 * the data-connection check; a v2 LOCAL header (a health check) keeps the
 * balancer's own. */
static void proxy_header(struct ctl_session *cs)
{
    static const unsigned versions[] = {0, PP_V1, PP_V2, PP_V1 | PP_V2};
    const struct cfg *cfg = cfg_of(cs);
    struct pp_header h;
    int rc = pp_parse((const uint8_t *)buf_head(&cs->cin), buf_len(&cs->cin),
                      versions[cfg->proxy_protocol], &h);

    if (rc == 0 && buf_len(&cs->cin) < PP_MAX_LEN)
        return; /* more bytes to come */
    uv_timer_stop(&cs->timer);
    if (rc <= 0) {
        LOG_WARN(&cs->lg, "refused", "reason", "missing or malformed PROXY header", "expected",
                 cfg_proxy_protocol_name(cfg->proxy_protocol), NULL);
        metrics_add(M_CONN_REFUSED, "proxy_header_invalid", NULL, 1);
        ctl_close(cs, "bad PROXY header");
        return;
    }
    buf_consume(&cs->cin, (size_t)rc);
    if (!h.local) {
        memcpy(&cs->peer, &h.src, sizeof(cs->peer));
        log_addr(cs->lg.client, sizeof(cs->lg.client), (const struct sockaddr *)&cs->peer);
    }
    begin(cs);
}

static bool trusted_proxy(const struct ctl_session *cs)
{
    const struct cfg *cfg = cfg_of(cs);
    const struct sockaddr_storage *p = &cs->peer;
    const uint8_t *a = p->ss_family == AF_INET
                           ? (const uint8_t *)&((const struct sockaddr_in *)p)->sin_addr
                           : ((const struct sockaddr_in6 *)p)->sin6_addr.s6_addr;

    return cfg_cidr_contains(cfg->proxy_protocol_from, cfg->n_proxy_protocol_from, p->ss_family,
                             a);
}

void ctl_accept(struct server *srv, uv_stream_t *listener, bool implicit)
{
    struct ctl_session *cs = calloc(1, sizeof(*cs));
    uv_os_fd_t fd;
    int on = 1;

    if (cs == NULL)
        return;
    cs->srv = srv;
    cs->gen = gen_ref(srv->gen);
    cs->implicit = implicit;
    cs->backend_idx = -1;
    cs->host_site = -1;
    cs->early_host_site = -1;
    cs->tci.sni_site = -1;
    buf_init(&cs->cin, CTL_IN_CAP);
    buf_init(&cs->cout, CTL_OUT_CAP);
    buf_init(&cs->bin, CTL_IN_CAP);
    buf_init(&cs->bout, CTL_IN_CAP + 8);
    buf_init(&cs->held, CTL_HELD_CAP);
    cs->lg.sid = server_next_sid();
    cs->next = srv->sessions;
    if (srv->sessions != NULL)
        srv->sessions->prev = cs;
    srv->sessions = cs;
    server_session_started(srv);
    metrics_add(M_SESSIONS_ACTIVE, NULL, NULL, 1);
    if (ep_init(&cs->client, srv->loop, on_client_event, on_client_closed, cs) != 0) {
        cs->open_handles = 1;
        handle_closed(cs);
        return;
    }
    cs->open_handles = 3;
    uv_timer_init(srv->loop, &cs->timer);
    uv_timer_init(srv->loop, &cs->ctimer);
    cs->timer.data = cs;
    cs->ctimer.data = cs;
    if (ep_accept(&cs->client, listener) != 0) {
        ctl_close(cs, "accept failed");
        return;
    }
    ep_set_bufs(&cs->client, &cs->cin, &cs->cout);
    ep_sockname(&cs->client, &cs->peer, true);
    ep_sockname(&cs->client, &cs->local, false);
    log_addr(cs->lg.client, sizeof(cs->lg.client), (const struct sockaddr *)&cs->peer);
    /* ABOR's Synch puts TCP urgent data on a plaintext control channel: read
     * it in line, where the Telnet stripping removes it. */
    if (uv_fileno((uv_handle_t *)&cs->client.tcp, &fd) == 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_OOBINLINE, &on, sizeof(on));
    if (RAND_bytes(cs->token, sizeof(cs->token)) != 1) {
        ctl_close(cs, "no randomness");
        return;
    }
    if (cfg_of(cs)->proxy_protocol == CFG_PP_NO) {
        begin(cs);
    } else if (!trusted_proxy(cs)) {
        LOG_WARN(&cs->lg, "refused", "reason", "PROXY header source not in proxy_protocol_from",
                 NULL);
        metrics_add(M_CONN_REFUSED, "proxy_source_untrusted", NULL, 1);
        ctl_close(cs, "untrusted PROXY source");
        return;
    } else {
        cs->state = CTL_PROXY_HDR;
        uv_timer_start(&cs->timer, on_proxy_timeout, CTL_PROXY_MS, 0);
    }
    ep_read(&cs->client);
}
