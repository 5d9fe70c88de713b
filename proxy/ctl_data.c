/* ctl_data.c - a control session's data connections (see ctl_int.h):
 * PASV/EPSV and PORT/EPRT set a transfer up (xfer.h) and ask the backend for
 * its passive port, the transfer command starts it, and its final reply is
 * held until the client's data connection is finished. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ctl_int.h"
#include "ctlfsm.h"
#include "metrics.h"
#include "tlsconn.h"
#include "xfer.h"

static void log_transfer(struct ctl_session *cs, const char *result);

bool ctl_reply_held(const struct ctl_session *cs)
{
    return cs->dc.xfer != NULL && cs->dc.code != 0;
}

bool ctl_transfer_running(const struct ctl_session *cs)
{
    return cs->dc.xfer != NULL && !cs->dc.client_done;
}

void ctl_drop_xfer(struct ctl_session *cs)
{
    struct xfer *x = cs->dc.xfer;

    if (x == NULL)
        return;
    if (cs->dc.path != NULL) /* started and cut short: it still gets its line */
        log_transfer(cs, "failed");
    cs->dc.xfer = NULL;
    xfer_detach(x);
}

/* ---- addresses ---- */

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
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    uint8_t want[16], have[16];

    if (hp->family == 4) {
        memcpy(want, mapped, 12);
        memcpy(want + 12, hp->addr, 4);
    } else {
        memcpy(want, hp->addr, 16);
    }
    px_ip16((const struct sockaddr *)peer, have);
    return memcmp(want, have, 16) == 0;
}

static bool control_is_v6(const struct ctl_session *cs)
{
    uint8_t v4[4];

    return !v4_of(&cs->local, v4);
}

/* ---- setting a transfer up ---- */

static void on_xfer_event(struct xfer *x, enum xfer_event ev, const char *reason, void *arg);

static void xfer_params_of(struct ctl_session *cs, struct xfer_params *p)
{
    const struct cfg *cfg = ctl_cfg(cs);

    p->loop = cs->env->loop;
    p->pool = cs->env->pool;
    p->bufs = cs->env->bufs;
    p->local = (const struct sockaddr *)&cs->local;
    p->client = (const struct sockaddr *)&cs->peer;
    p->backend_local = (const struct sockaddr *)&cs->backend_local;
    p->tls = cs->prot_p && cs->client->tls != NULL ? &cs->tci : NULL;
    p->require_reuse = cfg->require_session_reuse;
    /* Only sessions their TLS tells apart share ports; the rest get their own. */
    p->share = cfg->shared_passive_ports && p->tls != NULL && p->require_reuse ? cs->env->share
                                                                                : NULL;
    p->data_timeout = cfg->data_timeout;
    p->max_passive_per_ip = cfg->max_passive_per_ip;
    p->lg = &cs->lg;
    p->on_event = on_xfer_event;
    p->arg = cs;
}

/* The client's answer to PASV/EPSV/PORT/EPRT: given at once, before the
 * backend named its own passive port (which only the proxy needs), so the
 * backend's round trip overlaps the client's next steps. */
static void answer_data_setup(struct ctl_session *cs)
{
    char text[128];
    uint8_t ip[4];

    if (cs->dc.active) {
        ctl_reply(cs, "200 Active data connection ready: send the transfer command.");
    } else if (cs->dc.epsv) {
        ctl_send_text(cs, text, ftp_format_epsv_reply(text, sizeof(text), cs->dc.port));
    } else {
        if (ctl_cfg(cs)->has_passive_address)
            memcpy(ip, ctl_cfg(cs)->passive_address, 4);
        else
            v4_of(&cs->local, ip);
        ctl_send_text(cs, text, ftp_format_pasv_reply(text, sizeof(text), ip, cs->dc.port));
    }
}

static void ask_backend(struct ctl_session *cs, bool epsv)
{
    cs->dc.tried_epsv = epsv;
    cs->dc.backend_port = 0;
    ctl_send_backend(cs, epsv ? "EPSV" : "PASV", 4, CTL_WAIT_PASV);
}

/* Prepares a data channel (passive, or active towards `to`) and asks the
 * backend for its passive port; the client's reply waits for the backend's. */
static void start_data(struct ctl_session *cs, bool epsv, const struct sockaddr *to)
{
    struct xfer_params p;
    uint16_t port = 0;
    int err = 0;

    ctl_drop_xfer(cs);
    xfer_params_of(cs, &p);
    cs->dc.xfer = to != NULL ? xfer_new_active(&p, to, &err) : xfer_new_passive(&p, &port, &err);
    if (cs->dc.xfer == NULL) {
        if (err == UV_ENOSPC) {
            LOG_WARN(&cs->lg, "passive_ports_exhausted", NULL);
            ctl_reply(cs, "425 No free passive port: try again later.");
        } else if (err == XFER_EPERIP) {
            LOG_WARN(&cs->lg, "passive_refused", "reason", "max_passive_per_ip", NULL);
            ctl_reply(cs, "425 Too many data ports open for your address: finish a transfer "
                          "first.");
        } else {
            LOG_ERROR(&cs->lg, "passive_failed", "error", uv_strerror(err), NULL);
            ctl_reply(cs, "425 Cannot open a data connection.");
        }
        return;
    }
    cs->dc.port = port;
    cs->dc.epsv = epsv;
    cs->dc.active = to != NULL;
    cs->dc.client_done = false;
    cs->dc.failure = NULL;
    cs->dc.code = 0;
    cs->dc.failed = false;
    cs->dc.hostile = false;
    if (cs->client->tls != NULL)
        tlsconn_more_tickets(cs->client->tls);
    buf_reset(&cs->held);
    ask_backend(cs, !cs->dc.backend_no_epsv);
    answer_data_setup(cs);
}

static void cmd_passive(struct ctl_session *cs, const struct ctl_line *l, bool epsv)
{
    bool v6 = control_is_v6(cs);
    int a;

    if (!epsv) {
        if (cs->epsv_all) {
            ctl_reply(cs, "503 EPSV ALL is in effect: use EPSV.");
            return;
        }
        if (v6) {
            ctl_reply(cs, "522 PASV works over IPv4 only: use EPSV (RFC 2428).");
            return;
        }
        start_data(cs, false, NULL);
        return;
    }
    a = ftp_parse_epsv_arg(l->cmd.arg, l->cmd.arg_len);
    if (a < 0) {
        if (ftp_epsv_arg_is_proto(l->cmd.arg, l->cmd.arg_len))
            ctl_replyf(cs, "522 Network protocol not supported, use (%d)", v6 ? 2 : 1);
        else
            ctl_reply(cs, "501 Bad EPSV argument.");
        return;
    }
    if (a == FTP_EPSV_ALL) {
        cs->epsv_all = true;
        ctl_reply(cs, "200 EPSV ALL ok.");
        return;
    }
    if ((a == FTP_EPSV_IPV4 && v6) || (a == FTP_EPSV_IPV6 && !v6)) {
        ctl_replyf(cs, "522 Network protocol not supported, use (%d)", v6 ? 2 : 1);
        return;
    }
    start_data(cs, true, NULL);
}

void ctl_cmd_pasv(struct ctl_session *cs, const struct ctl_line *l) { cmd_passive(cs, l, false); }
void ctl_cmd_epsv(struct ctl_session *cs, const struct ctl_line *l) { cmd_passive(cs, l, true); }

static void cmd_active(struct ctl_session *cs, const struct ctl_line *l, bool eprt)
{
    const struct ftp_cmd *cmd = &l->cmd;
    struct ftp_hostport hp;
    struct sockaddr_storage to;
    int rc;

    if (!ctl_cfg(cs)->allow_active) {
        ctl_reply(cs, "502 Active mode (PORT/EPRT) is disabled here: use PASV or EPSV.");
        return;
    }
    if (cs->epsv_all) {
        ctl_reply(cs, "503 EPSV ALL is in effect: use EPSV.");
        return;
    }
    rc = eprt ? ftp_parse_eprt_arg(cmd->arg, cmd->arg_len, &hp)
              : ftp_parse_port_arg(cmd->arg, cmd->arg_len, &hp);
    if (rc != 0) {
        ctl_reply(cs, eprt ? "501 Bad EPRT argument." : "501 Bad PORT argument.");
        return;
    }
    if (!same_host(&hp, &cs->peer) || hp.port < 1024) {
        LOG_WARN(&cs->lg, "bounce_refused", "port_arg", cmd->arg, NULL);
        ctl_reply(cs,
                  "501 Refused: data connections go only to your own address, port 1024 or above.");
        return;
    }
    /* Connect out in the family of our control socket. */
    to = cs->peer;
    px_set_port((struct sockaddr *)&to, hp.port);
    start_data(cs, false, (const struct sockaddr *)&to);
}

void ctl_cmd_port(struct ctl_session *cs, const struct ctl_line *l) { cmd_active(cs, l, false); }
void ctl_cmd_eprt(struct ctl_session *cs, const struct ctl_line *l) { cmd_active(cs, l, true); }

/* Untrusted: the backend's reply to our EPSV/PASV. The client was answered
 * already; commands it sent since wait until this is known. Only the port is
 * taken; the address is the backend's control address, whatever the reply
 * says. */
void ctl_pasv_line(struct ctl_session *cs, const char *line, size_t len, bool last)
{
    struct sockaddr_storage data = cs->backend_peer;
    uint16_t port;
    int code = cs->rep.code;
    char c[24], t[FTP_LINE_MAX + 1];

    if (cs->dc.backend_port == 0 && ftp_passive_line(code, line, len, &port) == 0)
        cs->dc.backend_port = port;
    if (!last)
        return;
    cs->wait = CTL_WAIT_NONE;
    if (cs->dc.backend_port == 0) {
        if (cs->dc.tried_epsv && code >= 500) { /* no EPSV there: ask with PASV */
            cs->dc.backend_no_epsv = true;
            ask_backend(cs, false);
            return;
        }
        LOG_WARN(&cs->lg, "backend_passive_failed", "reply", log_u64(c, (uint64_t)code), "text",
                 log_text(t, sizeof(t), line, len), NULL);
        cs->dc.failed = true; /* the transfer command gets 425 */
        ctl_process_input(cs, true);
        return;
    }
    px_set_port((struct sockaddr *)&data, cs->dc.backend_port);
    /* A backend must not aim the proxy at another service: a privileged
     * port, or any backend's or listener's own address (a data channel
     * spliced into another tenant's control session). */
    if (cs->dc.backend_port < 1024 || cfg_is_endpoint(ctl_cfg(cs), (const struct sockaddr *)&data)) {
        LOG_WARN(&cs->lg, "backend_passive_refused", "port", log_u64(c, cs->dc.backend_port),
                 "reason",
                 cs->dc.backend_port < 1024 ? "a port below 1024"
                                            : "the address of a backend or listener of the proxy",
                 NULL);
        cs->dc.failed = true;
        cs->dc.hostile = true;
        ctl_process_input(cs, true);
        return;
    }
    xfer_set_backend(cs->dc.xfer, (const struct sockaddr *)&data);
    ctl_process_input(cs, true);
}

/* ---- the transfer ---- */

void ctl_cmd_transfer(struct ctl_session *cs, const struct ctl_line *l)
{
    struct ctl_dc *dc = &cs->dc;
    const char *why;

    if (dc->xfer == NULL) {
        ctl_reply(cs, "425 Use PASV or EPSV first.");
        return;
    }
    if (dc->failed) {
        ctl_drop_xfer(cs);
        ctl_reply(cs, dc->hostile ? "425 The site's server offered a data port the proxy does "
                                    "not connect to."
                                  : "425 The site's server did not open a data port.");
        return;
    }
    if (!cs->prot_p && ctl_cfg(cs)->require_protected_data) {
        ctl_drop_xfer(cs);
        ctl_reply(cs, "521 Data connections must be protected: send PBSZ 0 and PROT P first.");
        return;
    }
    if (xfer_refused(dc->xfer, &why)) {
        ctl_drop_xfer(cs);
        ctl_replyf(cs, "522 Data connection refused: %s.", why);
        return;
    }
    if (dc->client_done) { /* its data connection failed or never came */
        ctl_replyf(cs, "425 No data connection (%s): send PASV or EPSV again.",
                   dc->failure != NULL ? dc->failure : "closed");
        ctl_drop_xfer(cs);
        return;
    }
    why = xfer_admit(dc->xfer, ctl_cfg(cs)->max_transfers_per_ip, ctl_cfg(cs)->transfer_memory);
    if (why != NULL) {
        LOG_WARN(&cs->lg, "transfer_refused", "reason", why, NULL);
        ctl_drop_xfer(cs);
        ctl_reply(cs, why[0] == 'm' ? "425 Too many transfers running for your address: try "
                                      "again when one is done."
                                    : "425 The proxy is short of transfer memory: try again "
                                      "later.");
        return;
    }
    dc->download = ctlfsm_is_download(l->cmd.verb);
    memcpy(dc->verb, l->cmd.verb, sizeof(dc->verb));
    free(dc->path);
    dc->path = strndup(l->cmd.arg, l->cmd.arg_len);
    dc->started_ms = uv_now(cs->env->loop);
    dc->code = 0;
    buf_reset(&cs->held);
    ctl_send_backend(cs, l->text, l->len, CTL_WAIT_XFER);
    if (dc->xfer != NULL)
        xfer_start(dc->xfer, dc->download);
}

/* A transfer command's reply: preliminary lines go on at once, the final
 * reply waits in held until the client's side is finished. */
void ctl_xfer_line(struct ctl_session *cs, const char *line, size_t len)
{
    /* A reply too long to hold keeps its first lines and its last. */
    if (cs->rep.code < 200 || cs->dc.xfer == NULL) {
        ctl_relay_line(cs, line, len);
        return;
    }
    if (buf_len(&cs->held) + len + 2 > CTL_HELD_CAP - (FTP_LINE_MAX + 2) && !cs->rep.done)
        return;
    if (buf_append(&cs->held, line, len) == 0)
        (void)buf_append(&cs->held, "\r\n", 2);
}

static void log_transfer(struct ctl_session *cs, const char *result)
{
    const struct ctl_dc *dc = &cs->dc;
    char bytes[24], ms[24], code[24];
    uint64_t up = 0, down = 0;

    if (dc->xfer != NULL)
        xfer_bytes(dc->xfer, &up, &down);
    metrics_add(M_TRANSFERS, ctl_backend_name(cs), result, 1);
    metrics_add(M_BYTES, ctl_backend_name(cs), "upload", (int64_t)up);
    metrics_add(M_BYTES, ctl_backend_name(cs), "download", (int64_t)down);
    LOG_INFO(&cs->lg, "transfer", "command", dc->verb, "path", dc->path != NULL ? dc->path : "",
             "direction", dc->download ? "download" : "upload", "bytes",
             log_u64(bytes, dc->download ? down : up), "duration_ms",
             log_u64(ms, uv_now(cs->env->loop) - dc->started_ms), "reply",
             log_u64(code, (uint64_t)dc->code), "result", result, NULL);
    free(cs->dc.path);
    cs->dc.path = NULL;
}

/* The final reply came and the client side is finished: the held reply goes
 * out (or 522 when a data connection was refused). */
static void finish_transfer(struct ctl_session *cs)
{
    struct ctl_dc *dc = &cs->dc;
    const char *why = NULL;
    bool refused = xfer_refused(dc->xfer, &why);
    /* A backend's 226 says only that the file went into our socket: when the
     * client's side failed, the client did not get it. */
    bool cut = !refused && dc->failure != NULL && dc->code < 400;

    log_transfer(cs, refused ? "refused" : dc->code < 300 && !cut ? "ok" : "failed");
    ctl_drop_xfer(cs);
    if (refused)
        ctl_replyf(cs, "522 Data connection refused: %s.", why);
    else if (cut)
        ctl_replyf(cs, "426 Transfer aborted: %s.", dc->failure);
    else
        ctl_send_text(cs, buf_head(&cs->held), buf_len(&cs->held));
    buf_reset(&cs->held);
    buf_shrink(&cs->held);
    ctl_process_input(cs, true);
}

static void maybe_finish_transfer(struct ctl_session *cs)
{
    if (cs->dc.xfer != NULL && cs->dc.client_done && cs->dc.code != 0)
        finish_transfer(cs);
}

static void on_xfer_event(struct xfer *x, enum xfer_event ev, const char *reason, void *arg)
{
    struct ctl_session *cs = arg;

    (void)x;
    if (cs->closing)
        return;
    if (ev == XFER_REFUSED) {
        LOG_WARN(&cs->lg, "data_refused", "reason", reason, NULL);
        return; /* counted by the transfer, which knows the kind */
    }
    if (reason != NULL)
        LOG_INFO(&cs->lg, "data_closed", "reason", reason, NULL);
    cs->dc.client_done = true;
    cs->dc.failure = reason;
    maybe_finish_transfer(cs);
}

void ctl_transfer_reply(struct ctl_session *cs, int code)
{
    if (cs->dc.xfer == NULL) { /* relayed at once: nothing to wait for */
        ctl_process_input(cs, true);
        return;
    }
    cs->dc.code = code;
    xfer_final_reply(cs->dc.xfer, code);
    maybe_finish_transfer(cs);
}

/* ABOR during a transfer: the Synch (RFC 959: IAC IP, then IAC DM as TCP
 * urgent data) lets a backend that watches for it abort at once; the data
 * connections are reset either way, so the backend's transfer fails. */
void ctl_cmd_abor(struct ctl_session *cs, const struct ctl_line *l)
{
    static const char synch[] = "\xff\xf4\xff";
    uv_os_fd_t fd;

    if (cs->wait != CTL_WAIT_XFER) {
        ctl_send_backend(cs, l->text, l->len, CTL_WAIT_PLAIN);
        return;
    }
    if (!cs->backend.writing && buf_len(&cs->bout) == 0 &&
        uv_fileno((uv_handle_t *)&cs->backend.tcp, &fd) == 0 &&
        send(fd, synch, 3, MSG_OOB | MSG_NOSIGNAL) == 3)
        (void)buf_append(&cs->bout, "\xf2", 1); /* DM ends the Synch */
    /* ABOR goes out before the data connections are reset, so the backend
     * knows why its transfer broke (426 for it, then 226 for ABOR). */
    ctl_send_backend(cs, "ABOR", 4, CTL_WAIT_XFER_ABOR);
    if (cs->dc.xfer != NULL)
        log_transfer(cs, "aborted");
    ctl_drop_xfer(cs);
}
