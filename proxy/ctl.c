/* ctl.c - a control session (see ctl.h): its lifetime, its connections and
 * timers, and the relay of commands and replies. The login dialogue and the
 * proxy's own commands live in ctl_login.c, data connections in ctl_data.c.
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
#include "ctl_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctlfsm.h"
#include "quota.h"
#include "metrics.h"
#include "px.h"
#include "tlsconn.h"

#define CTL_LINGER_MS 3000 /* last flush before a close */


/* ---- lifetime ---- */

const char *ctl_backend_name(const struct ctl_session *cs)
{
    return ctl_cfg(cs)->backends[cs->backend_idx].name;
}

void ctl_backend_leave(struct ctl_session *cs)
{
    quota_backend_leave(ctl_backend_name(cs));
    metrics_add(M_BACKEND_SESSIONS_ACTIVE, ctl_backend_name(cs), NULL, -1);
    cs->backend_counted = false;
}

static void ctl_free(struct ctl_session *cs)
{
    struct ctl_env *env = cs->env;
    void *tag = cs->tag;

    metrics_add(M_SESSIONS_ACTIVE, NULL, NULL, -1);
    quota_conn_closed();
    if (cs->admitted)
        quota_leave((struct sockaddr *)&cs->peer);
    if (cs->backend_counted)
        ctl_backend_leave(cs);
    ctl_address_leave(cs);
    buf_free(&cs->cin);
    buf_free(&cs->cout);
    buf_free(&cs->bin);
    buf_free(&cs->bout);
    buf_free(&cs->held);
    ctl_forget_login(cs);
    free(cs->dc.path);
    gen_unref(cs->gen);
    free(cs);
    env->on_ended(tag);
}

void ctl_handle_closed(struct ctl_session *cs)
{
    PX_ASSERT(cs->open_handles > 0);
    if (--cs->open_handles == 0)
        ctl_free(cs);
}

static void on_timer_closed(uv_handle_t *h) { ctl_handle_closed(h->data); }

void ctl_close(struct ctl_session *cs, const char *reason)
{
    if (cs->closing)
        return;
    cs->closing = true;
    cs->close_reason = reason;
    LOG_INFO(&cs->lg, "close", "reason", reason, NULL);
    ctl_drop_xfer(cs);
    if (cs->client->tls != NULL)
        tlsconn_forget_session(cs->client->tls);
    ep_close(cs->client, false);
    ctl_backend_stop(cs);
    uv_close((uv_handle_t *)&cs->timer, on_timer_closed);
}

static void on_linger_timeout(uv_timer_t *t)
{
    ctl_close(t->data, "client did not read the last reply");
}

/* Sends what is queued, then closes: used after 421 and 221. */
void ctl_close_after_flush(struct ctl_session *cs, const char *reason)
{
    if (cs->closing || cs->closing_after_flush)
        return;
    cs->closing_after_flush = true;
    cs->close_reason = reason;
    ctl_drop_xfer(cs);
    ep_pause(cs->client);
    ep_shutdown(cs->client);
    uv_timer_start(&cs->timer, on_linger_timeout, CTL_LINGER_MS, 0);
}

/* ---- replies to the client ---- */

/* Replies are queued whole and then flushed, so that each goes out in one
 * SSL_write, one TLS record where it fits: some clients (gftp) read one
 * record and expect a whole line in it. */
void ctl_queue_text(struct ctl_session *cs, const char *p, size_t n)
{
    if (cs->closing)
        return;
    if (buf_append(&cs->cout, p, n) != 0)
        ctl_close(cs, "client does not read its replies");
}

void ctl_flush_client(struct ctl_session *cs)
{
    if (!cs->closing)
        ep_flush(cs->client);
}

void ctl_send_text(struct ctl_session *cs, const char *p, size_t n)
{
    ctl_queue_text(cs, p, n);
    ctl_flush_client(cs);
}

/* One reply: text without the final CRLF; multi-line replies carry their
 * inner CRLFs. */
void ctl_reply(struct ctl_session *cs, const char *text)
{
    ctl_queue_text(cs, text, strlen(text));
    ctl_send_text(cs, "\r\n", 2);
}

void ctl_replyf(struct ctl_session *cs, const char *fmt, ...)
{
    char text[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    ctl_reply(cs, text);
}

void ctl_fail_session(struct ctl_session *cs, const char *text, const char *reason)
{
    ctl_reply(cs, text);
    ctl_close_after_flush(cs, reason);
}

void ctl_refuse(struct ctl_session *cs, const char *reason, const char *msg, const char *text)
{
    LOG_WARN(&cs->lg, "refused", "reason", reason, "msg", msg, NULL);
    metrics_add(M_CONN_REFUSED, reason, NULL, 1);
    ctl_fail_session(cs, text, reason);
}

void ctl_relay_line(struct ctl_session *cs, const char *line, size_t len)
{
    ctl_queue_text(cs, line, len);
    ctl_queue_text(cs, "\r\n", 2);
}

/* ---- commands to the backend ---- */

void ctl_send_backend(struct ctl_session *cs, const char *p, size_t n, enum ctl_wait wait)
{
    if (buf_append(&cs->bout, p, n) != 0 || buf_append(&cs->bout, "\r\n", 2) != 0) {
        ctl_fail_session(cs, "421 Internal error: command buffer full", "command buffer full");
        return;
    }
    cs->wait = wait;
    ep_flush(&cs->backend);
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
        ctl_fail_session(cs, "421 Login timeout: closing control connection.", "login timeout");
        return;
    }
    if (ctl_transfer_running(cs)) { /* it has its own data_timeout */
        uv_timer_again(t);
        return;
    }
    LOG_INFO(&cs->lg, "timeout", "what", "idle", NULL);
    ctl_fail_session(cs, "421 Idle timeout: closing control connection.", "idle timeout");
}

void ctl_arm_login(struct ctl_session *cs)
{
    uv_timer_start(&cs->timer, on_timer, (uint64_t)ctl_cfg(cs)->login_timeout * 1000, 0);
}

void ctl_arm_idle(struct ctl_session *cs)
{
    uint64_t ms = (uint64_t)ctl_cfg(cs)->idle_timeout * 1000;

    uv_timer_start(&cs->timer, on_timer, ms, ms);
}

/* ---- replies from the backend ---- */

static void on_reply(struct ctl_session *cs, int code)
{
    enum ctl_wait w = cs->wait;

    if (code < 200)
        return; /* preliminary: the final reply follows */
    cs->wait = CTL_WAIT_NONE;
    switch (w) {
    case CTL_WAIT_USER:
    case CTL_WAIT_PASS:
        ctl_login_reply(cs, w, code);
        if (cs->state == CTL_RELAY)
            ctl_arm_idle(cs);
        break;
    case CTL_WAIT_QUIT:
        ctl_close_after_flush(cs, "client quit");
        return;
    case CTL_WAIT_XFER:
        ctl_transfer_reply(cs, code);
        return;
    case CTL_WAIT_XFER_ABOR:
        cs->wait = CTL_WAIT_ABOR; /* the transfer's reply came; ABOR's follows */
        return;
    default:
        break;
    }
    if (code == 421) {
        ctl_close_after_flush(cs, "backend ended the session");
        return;
    }
    ctl_process_input(cs, true);
}

static void unsolicited(struct ctl_session *cs, const char *line, size_t len)
{
    char c[24], t[FTP_LINE_MAX + 1];

    LOG_WARN(&cs->lg, "backend_unsolicited", "reply", log_u64(c, (uint64_t)cs->rep.code), "text",
             log_text(t, sizeof(t), line, len), NULL);
    ctl_fail_session(cs, "421 Service not available: the site's server ended the session.",
                     "backend unsolicited reply");
}

/* vsftpd's "500 OOPS: ..." (a session process died: e.g. "vsf_sysutil_bind"
 * when nine random tries found no free port in its passive range): the
 * session is over whatever the command was. The client gets 421 with the
 * reason, not a 500 to retry on a dead connection; nothing more is sent to
 * the backend (a PASV after a failed EPSV would be answered by the OOPS of
 * the session's other process). */
static void backend_oops(struct ctl_session *cs, const char *line, size_t len)
{
    char t[FTP_LINE_MAX + 1];

    LOG_WARN(&cs->lg, "backend_oops", "text", log_text(t, sizeof(t), line, len), NULL);
    ctl_replyf(cs, "421 Service not available: the site's server ended the session (%s).", t);
    ctl_close_after_flush(cs, "backend oops");
}

static void on_reply_line(struct ctl_session *cs, const char *line, size_t len)
{
    int rc = ftp_reply_line(&cs->rep, line, len);
    bool last = rc == 1;

    if (rc < 0) {
        LOG_WARN(&cs->lg, "backend_bad_reply", NULL);
        ctl_fail_session(cs,
                         "421 Service not available: the site's server sent a malformed reply.",
                         "backend protocol error");
        return;
    }
    if (ctl_backend_swallow(cs, line, len, last))
        return; /* the login goes on over another backend connection */
    if (last && cs->rep.code == 500 && ftp_reply_is_oops(line, len)) {
        backend_oops(cs, line, len);
        return;
    }
    if (cs->wait == CTL_WAIT_NONE && cs->rep.code != 421) {
        /* A reply no command asked for (vsftpd's "500 OOPS: child died"
         * when its session process is killed): the client would take it
         * for the answer to its next command, and every later reply would
         * be one step out of line. The session ends with 421. */
        if (last)
            unsolicited(cs, line, len);
        return;
    }
    switch (cs->wait) {
    case CTL_WAIT_FEAT:
        ctl_feat_line(cs, line, len, last);
        break;
    case CTL_WAIT_PASV:
        ctl_pasv_line(cs, line, len, last);
        return;
    case CTL_WAIT_XFER:
        ctl_xfer_line(cs, line, len);
        break;
    default:
        ctl_relay_line(cs, line, len);
        break;
    }
    if (last) {
        ctl_flush_client(cs);
        on_reply(cs, cs->rep.code);
    }
}

void ctl_process_replies(struct ctl_session *cs, bool resume)
{
    const char *line;
    size_t len;
    int rc;

    while (!cs->closing && !cs->closing_after_flush && buf_space(&cs->cout) >= CTL_OUT_ROOM) {
        rc = buf_take_line(&cs->bin, FTP_LINE_MAX, &line, &len);
        if (rc == 0)
            break;
        if (rc < 0) {
            LOG_WARN(&cs->lg, "backend_bad_reply", "reason", "line too long", NULL);
            ctl_fail_session(cs,
                             "421 Service not available: the site's server sent a malformed "
                             "reply.",
                             "backend protocol error");
            return;
        }
        on_reply_line(cs, line, len);
    }
    if (cs->closing)
        return;
    if (buf_space(&cs->cout) < CTL_OUT_ROOM)
        ctl_flush_client(cs); /* a long reply: what is queued goes now */
    if (buf_len(&cs->bin) == 0)
        buf_shrink(&cs->bin);
    if (resume && cs->backend.open)
        ep_read(&cs->backend);
}

/* ---- commands from the client ---- */

static void cmd_forward(struct ctl_session *cs, const struct ctl_line *l)
{
    ctl_send_backend(cs, l->text, l->len,
                     strcmp(l->cmd.verb, "FEAT") == 0 ? CTL_WAIT_FEAT : CTL_WAIT_PLAIN);
}

static void cmd_quit(struct ctl_session *cs, const struct ctl_line *l)
{
    if (cs->state == CTL_RELAY) {
        ctl_send_backend(cs, l->text, l->len, CTL_WAIT_QUIT);
        return;
    }
    ctl_reply(cs, "221 Goodbye.");
    ctl_close_after_flush(cs, "client quit");
}

static void cmd_noop(struct ctl_session *cs, const struct ctl_line *l)
{
    (void)l;
    ctl_reply(cs, "200 NOOP ok.");
}

static void cmd_syst(struct ctl_session *cs, const struct ctl_line *l)
{
    (void)l;
    ctl_reply(cs, "215 UNIX Type: L8");
}

static void cmd_need_login(struct ctl_session *cs, const struct ctl_line *l)
{
    (void)l;
    ctl_reply(cs, "530 Please log in with USER and PASS first.");
}

static void cmd_refuse(struct ctl_session *cs, const struct ctl_line *l)
{
    ctl_reply(cs, strcmp(l->cmd.verb, "CCC") == 0
                      ? "534 CCC refused: the control channel stays encrypted."
                      : "502 REIN not supported: open a new connection instead.");
}

static void cmd_long_passive(struct ctl_session *cs, const struct ctl_line *l)
{
    (void)l;
    ctl_reply(cs, "502 LPSV and LPRT are not supported: use EPSV or PASV.");
}

/* Who carries out each of ctlfsm's actions. */
static ctl_cmd_fn *const handlers[] = {
    [CTLFSM_FORWARD] = cmd_forward,
    [CTLFSM_AUTH] = ctl_cmd_auth,
    [CTLFSM_PBSZ] = ctl_cmd_pbsz,
    [CTLFSM_PROT] = ctl_cmd_prot,
    [CTLFSM_HOST] = ctl_cmd_host,
    [CTLFSM_FEAT] = ctl_cmd_feat,
    [CTLFSM_USER] = ctl_cmd_user,
    [CTLFSM_PASS] = ctl_cmd_pass,
    [CTLFSM_QUIT] = cmd_quit,
    [CTLFSM_NOOP] = cmd_noop,
    [CTLFSM_SYST] = cmd_syst,
    [CTLFSM_OPTS] = ctl_cmd_opts,
    [CTLFSM_NEED_LOGIN] = cmd_need_login,
    [CTLFSM_REFUSE] = cmd_refuse,
    [CTLFSM_PASV] = ctl_cmd_pasv,
    [CTLFSM_EPSV] = ctl_cmd_epsv,
    [CTLFSM_PORT] = ctl_cmd_port,
    [CTLFSM_EPRT] = ctl_cmd_eprt,
    [CTLFSM_LONG_PASSIVE] = cmd_long_passive,
    [CTLFSM_TRANSFER] = ctl_cmd_transfer,
    [CTLFSM_ABOR] = ctl_cmd_abor,
};

static enum ctlfsm_phase phase_of(const struct ctl_session *cs)
{
    if (cs->state == CTL_RELAY)
        return CTLFSM_RELAY;
    return cs->state == CTL_PRE_LOGIN ? CTLFSM_PRE_LOGIN : CTLFSM_LOGIN;
}

static void handle_line(struct ctl_session *cs, const char *raw, size_t rawlen)
{
    char text[FTP_LINE_MAX + 1];
    struct ctl_line l = {.text = text};
    enum ctlfsm_action a;

    memcpy(text, raw, rawlen);
    l.len = ftp_strip_telnet(text, rawlen);
    text[l.len] = '\0';
    if (cs->lines++ == 0 && ftp_is_http_request(text, l.len)) {
        /* ALPACA: a browser made to talk to the FTP port. No reply: the
         * bytes would be read as HTTP. */
        LOG_WARN(&cs->lg, "http_refused", "msg",
                 "the first command is an HTTP request: another protocol's client", NULL);
        metrics_add(M_CONN_REFUSED, "http_request", NULL, 1);
        ctl_close(cs, "HTTP request");
        return;
    }
    if (l.len > CTL_FORWARD_MAX) {
        LOG_INFO(&cs->lg, "bad_command", "reason", "line too long", NULL);
        ctl_reply(cs, "500 Command line too long.");
        return;
    }
    if (ftp_parse_command(text, l.len, &l.cmd) != 0) {
        ctl_reply(cs, "500 Syntax error, command unrecognized.");
        return;
    }
    if (cs->state == CTL_RELAY)
        ctl_arm_idle(cs);
    LOG_DEBUG(&cs->lg, "command", "verb", l.cmd.verb, "arg",
              ftp_cmd_is_secret(&l.cmd) ? "****" : l.cmd.arg, NULL);
    a = ctlfsm_on_command(phase_of(cs), l.cmd.verb);
    PX_ASSERT((size_t)a < PX_NELEM(handlers) && handlers[a] != NULL);
    handlers[a](cs, &l);
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
    if (cs->state == CTL_HANDSHAKE || cs->state == CTL_CONNECTING || cs->state == CTL_GREETING)
        return false;
    if (buf_space(&cs->cout) < CTL_OUT_ROOM)
        return false; /* the client is not reading its replies */
    if (ctl_reply_held(cs))
        return false; /* a held final reply goes first */
    if (cs->wait == CTL_WAIT_NONE)
        return true;
    return cs->wait == CTL_WAIT_XFER && next_is_abor(cs);
}

void ctl_process_input(struct ctl_session *cs, bool resume)
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
            ctl_reply(cs, "500 Command line too long.");
            continue;
        }
        handle_line(cs, line, len);
    }
    if (cs->closing)
        return;
    if (buf_len(&cs->cin) == 0 && !cs->cin.discarding)
        buf_shrink(&cs->cin);
    if (resume && !cs->closing_after_flush)
        ep_read(cs->client);
}

/* ---- names for logs ---- */

const char *ctl_state_name(enum ctl_state s)
{
    static const char *const names[] = {
        [CTL_HANDSHAKE] = "handshake", [CTL_PRE_LOGIN] = "pre_login",
        [CTL_CONNECTING] = "connecting", [CTL_GREETING] = "greeting",
        [CTL_LOGIN] = "login", [CTL_RELAY] = "relay",
    };

    return (size_t)s < PX_NELEM(names) ? names[s] : "?";
}

const char *ctl_wait_name(enum ctl_wait w)
{
    static const char *const names[] = {
        [CTL_WAIT_NONE] = "none",   [CTL_WAIT_PLAIN] = "plain",
        [CTL_WAIT_USER] = "user",   [CTL_WAIT_PASS] = "pass",
        [CTL_WAIT_FEAT] = "feat",   [CTL_WAIT_PASV] = "pasv",
        [CTL_WAIT_XFER] = "xfer",   [CTL_WAIT_XFER_ABOR] = "xfer_abor",
        [CTL_WAIT_ABOR] = "abor",   [CTL_WAIT_QUIT] = "quit",
    };

    return (size_t)w < PX_NELEM(names) ? names[w] : "?";
}
