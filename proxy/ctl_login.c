/* ctl_login.c - the login dialogue and the proxy's own commands (see
 * ctl_int.h): AUTH TLS and the TLS start, PBSZ, PROT, HOST, FEAT, OPTS, and
 * USER, which routes the login (route.h) and connects to the backend. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ctl_int.h"
#include "quota.h"
#include "metrics.h"
#include "route.h"
#include "tlsconn.h"

static bool arg_is(const struct ctl_line *l, const char *word)
{
    return l->cmd.arg_len == strlen(word) && strncasecmp(l->cmd.arg, word, l->cmd.arg_len) == 0;
}

/* ---- TLS ---- */

void ctl_start_tls(struct ctl_session *cs)
{
    struct tlsconn *t = tlsctx_control(cs->gen->tls, cs->env->worker, cs->early_host_site,
                                       cs->early_host, cs->token, &cs->tci, CTL_TLS_BUF);

    cs->tls_pending = false;
    if (t == NULL) {
        ctl_close(cs, "out of memory");
        return;
    }
    cs->handshaking = true;
    ep_start_tls(cs->client, t, &cs->cin);
}

void ctl_cmd_auth(struct ctl_session *cs, const struct ctl_line *l)
{
    if (cs->tls_on || cs->handshaking) {
        ctl_reply(cs, "503 TLS is already on.");
        return;
    }
    if (!arg_is(l, "TLS") && !arg_is(l, "SSL") && !arg_is(l, "TLS-C")) {
        ctl_reply(cs, "504 AUTH type not supported: use AUTH TLS.");
        return;
    }
    if (cs->state != CTL_PRE_LOGIN) {
        ctl_reply(cs, "503 AUTH TLS must come before USER.");
        return;
    }
    ctl_reply(cs, "234 Proceed with TLS negotiation.");
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

void ctl_cmd_pbsz(struct ctl_session *cs, const struct ctl_line *l)
{
    if (!cs->tls_on) {
        ctl_reply(cs, "503 PBSZ needs AUTH TLS first.");
        return;
    }
    if (!all_digits(l->cmd.arg, l->cmd.arg_len)) {
        ctl_reply(cs, "501 PBSZ needs a number: send PBSZ 0.");
        return;
    }
    cs->pbsz = true;
    ctl_reply(cs, "200 PBSZ=0");
}

void ctl_cmd_prot(struct ctl_session *cs, const struct ctl_line *l)
{
    if (!cs->tls_on) {
        ctl_reply(cs, "503 PROT needs AUTH TLS first.");
        return;
    }
    if (!cs->pbsz) {
        ctl_reply(cs, "503 PROT needs PBSZ first.");
        return;
    }
    if (arg_is(l, "P")) {
        cs->prot_p = true;
        ctl_reply(cs, "200 PROT now Private.");
    } else if (arg_is(l, "C")) {
        if (ctl_cfg(cs)->require_protected_data) {
            ctl_reply(cs, "534 PROT C refused: data connections must be protected (PROT P).");
            return;
        }
        cs->prot_p = false;
        ctl_reply(cs, "200 PROT now Clear.");
    } else if (arg_is(l, "S") || arg_is(l, "E")) {
        ctl_reply(cs, "536 PROT level not supported: use PROT P.");
    } else {
        ctl_reply(cs, "504 Unknown PROT level: use PROT P.");
    }
}

/* ---- naming the site ---- */

static void set_site(struct ctl_session *cs, const char *name, size_t len)
{
    if (len >= sizeof(cs->site))
        len = sizeof(cs->site) - 1;
    memcpy(cs->site, name, len);
    cs->site[len] = '\0';
    cs->lg.site = cs->site;
}

void ctl_cmd_host(struct ctl_session *cs, const struct ctl_line *l)
{
    const struct ftp_cmd *cmd = &l->cmd;
    int rc, site = -1, host = -1;

    if (cs->state == CTL_RELAY) {
        ctl_reply(cs, "503 HOST is not allowed after login.");
        return;
    }
    if (cs->state != CTL_PRE_LOGIN) {
        ctl_reply(cs, "503 HOST must come before USER.");
        return;
    }
    rc = ftp_check_host_arg(cmd->arg, cmd->arg_len);
    if (rc == PX_ERANGE) {
        ctl_reply(cs, "501 HOST takes a host name without a port.");
        return;
    }
    if (rc != 0) {
        ctl_reply(cs, "501 HOST needs a host name.");
        return;
    }
    if (!route_lookup(ctl_cfg(cs), cmd->arg, cmd->arg_len, &site, &host)) {
        LOG_INFO(&cs->lg, "host_refused", "reason", "unknown host", "host", cmd->arg, NULL);
        ctl_reply(cs, "504 Unknown host: no site has that name.");
        return;
    }
    if (cs->tci.sni_site >= 0 && site != cs->tci.sni_site) {
        LOG_INFO(&cs->lg, "host_refused", "reason", "contradicts SNI", "host", cmd->arg, NULL);
        ctl_reply(cs, "504 HOST names a different site than the TLS handshake (SNI) did.");
        return;
    }
    cs->host_site = site;
    if (!cs->tls_on) { /* picks the certificate at AUTH TLS */
        cs->early_host_site = site;
        cs->early_host = host;
    }
    set_site(cs, cmd->arg, cmd->arg_len);
    ctl_reply(cs, "220 Host accepted.");
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

/* Routes the login: the backend's index, or -1 after answering. */
static int route_login(struct ctl_session *cs, const struct ftp_user_arg *ua, bool has_host)
{
    const struct cfg *cfg = ctl_cfg(cs);
    struct route_query q = {
        .user_host = has_host ? ua->host : NULL,
        .user_host_len = has_host ? ua->host_len : 0,
        .host_site = cs->host_site,
        .sni_site = cs->tci.sni_site,
    };
    int b = -1;
    enum route_status st = route_decide(cfg, &q, &b);

    if (st == ROUTE_OK)
        return b;
    LOG_INFO(&cs->lg, "route_refused", "reason", route_status_name(st), NULL);
    if (st == ROUTE_UNKNOWN_HOST && ftp_check_host_arg(ua->host, ua->host_len) == 0 &&
        ua->host_len <= 253) {
        /* The name is echoed only once it is known to be a plain host name. */
        ctl_replyf(cs,
                   "530 Unknown host '%.*s': no site has that name. Log in as USER host%cuser "
                   "with a configured host name.",
                   (int)ua->host_len, ua->host, cfg->host_separator);
        return -1;
    }
    ctl_reply(cs, route_refusal(st));
    return -1;
}

/* The login's site for logs: the USER host, or the SNI name that routed. */
static void name_site(struct ctl_session *cs, const struct ftp_user_arg *ua, bool has_host, int b)
{
    const char *sni;

    if (has_host) {
        set_site(cs, ua->host, ua->host_len);
    } else if (cs->host_site < 0 && cs->tci.sni_site == b && cs->client->tls != NULL) {
        sni = tlsconn_sni(cs->client->tls);
        if (sni != NULL)
            set_site(cs, sni, strlen(sni));
    }
}

void ctl_cmd_user(struct ctl_session *cs, const struct ctl_line *l)
{
    const struct cfg *cfg = ctl_cfg(cs);
    const struct cfg_backend *be;
    struct ftp_user_arg ua;
    size_t ulen;
    int rc, b;

    if (cfg->require_tls && !cs->tls_on) {
        ctl_reply(cs, "530 TLS required: send AUTH TLS first, then log in.");
        return;
    }
    rc = ftp_split_user(l->cmd.arg, l->cmd.arg_len, cfg->host_separator, &ua);
    if (rc < 0 || ua.user_len == 0) {
        ctl_replyf(cs, "501 Bad USER argument: use USER user or USER host%cuser.",
                   cfg->host_separator);
        return;
    }
    b = route_login(cs, &ua, rc == 1);
    if (b < 0)
        return;
    be = &cfg->backends[b];
    name_site(cs, &ua, rc == 1, b);
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
        ctl_send_user(cs); /* another try on the same site's connection */
        return;
    }
    if (cs->backend_counted)
        ctl_backend_leave(cs);
    ctl_address_leave(cs); /* before backend_idx names the new site */
    cs->tried = 0;
    cs->backend_idx = b;
    cs->lg.backend = be->name;
    if (!quota_backend_enter(be->name, be->max_sessions)) {
        ctl_refuse(cs, "backend_max_sessions", "the backend's max_sessions is reached",
                   "421 Too many sessions for this site: try again later.");
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
    ctl_connect_backend(cs);
}

void ctl_cmd_pass(struct ctl_session *cs, const struct ctl_line *l)
{
    if (cs->state == CTL_PRE_LOGIN) {
        ctl_reply(cs, "503 Login with USER first.");
        return;
    }
    if (cs->state == CTL_LOGIN) { /* kept until answered: a redial sends it again */
        ctl_forget_pass(cs);
        cs->login_pass = strndup(l->text, l->len);
    }
    ctl_send_backend(cs, l->text, l->len, CTL_WAIT_PASS);
}

void ctl_forget_pass(struct ctl_session *cs)
{
    if (cs->login_pass != NULL) {
        explicit_bzero(cs->login_pass, strlen(cs->login_pass));
        free(cs->login_pass);
        cs->login_pass = NULL;
    }
}

void ctl_forget_login(struct ctl_session *cs)
{
    ctl_forget_pass(cs);
    free(cs->login_user);
    cs->login_user = NULL;
}

void ctl_send_user(struct ctl_session *cs)
{
    char line[FTP_LINE_MAX + 8];
    int n = snprintf(line, sizeof(line), "USER %s", cs->login_user);

    cs->state = CTL_LOGIN; /* login_user stays: a redial sends USER again */
    ctl_send_backend(cs, line, (size_t)n, CTL_WAIT_USER);
}

/* A wrong password: the backends see only the proxy's address, so their own
 * limits and fail2ban cannot stop guessing; this is the place. */
static void count_failure(struct ctl_session *cs)
{
    const struct cfg *cfg = ctl_cfg(cs);
    const struct sockaddr *peer = (const struct sockaddr *)&cs->peer;
    char who[64], n[24], t[24];

    if (cfg_cidr_contains_sa(cfg->ban_exempt, cfg->n_ban_exempt, peer) ||
        !quota_login_failed(peer, cfg->ban_after, cfg->ban_window, cfg->ban_time))
        return;
    quota_who(peer, who, sizeof(who));
    LOG_WARN(&cs->lg, "ban", "address", who, "failures", log_u64(n, cfg->ban_after), "window",
             log_u64(t, cfg->ban_window), "ban_time", log_u64(t, cfg->ban_time), NULL);
    metrics_add(M_BANS_TOTAL, NULL, NULL, 1);
    metrics_add(M_BANS_ACTIVE, NULL, NULL, 1);
}

void ctl_login_reply(struct ctl_session *cs, enum ctl_wait w, int code)
{
    char c[24];

    cs->bk_warm = false; /* the backend answered: the connection was alive */
    if (w == CTL_WAIT_PASS || code == 230 || code >= 400)
        ctl_forget_login(cs);
    if (code == 230 || (w == CTL_WAIT_PASS && code == 202)) {
        cs->state = CTL_RELAY;
        LOG_INFO(&cs->lg, "login", "tls", cs->tls_on ? "yes" : "no", NULL);
    } else if (code >= 400) {
        metrics_add(M_LOGINS_FAILED, ctl_backend_name(cs), NULL, 1);
        LOG_INFO(&cs->lg, "login_failed", "reply", log_u64(c, (uint64_t)code), NULL);
        if (w == CTL_WAIT_PASS && code == 530)
            count_failure(cs);
    }
}

/* ---- FEAT and OPTS ---- */

/* The proxy's own feature lines, as ftp_feat_own() writes them. */
static void queue_own_features(struct ctl_session *cs, unsigned flags)
{
    char text[256];
    size_t n;

    if (ctl_cfg(cs)->allow_active)
        flags |= FTP_FEAT_EPRT;
    n = ftp_feat_own(text, sizeof(text), flags);
    PX_ASSERT(n > 0);
    ctl_queue_text(cs, text, n);
}

void ctl_cmd_feat(struct ctl_session *cs, const struct ctl_line *l)
{
    if (cs->state == CTL_RELAY) { /* the backend's list, merged (ctl_feat_line) */
        ctl_send_backend(cs, l->text, l->len, CTL_WAIT_FEAT);
        return;
    }
    queue_own_features(cs, FTP_FEAT_HEAD | FTP_FEAT_UTF8 | FTP_FEAT_END);
    ctl_flush_client(cs);
}

void ctl_feat_line(struct ctl_session *cs, const char *line, size_t len, bool last)
{
    switch (ftp_feat_step(cs->rep.lines, last, line, len)) {
    case FTP_FEAT_RELAY:
        ctl_relay_line(cs, line, len);
        return;
    case FTP_FEAT_DROP:
        return;
    case FTP_FEAT_OURS_FIRST:
        queue_own_features(cs, 0);
        ctl_relay_line(cs, line, len);
        return;
    case FTP_FEAT_OURS_ONLY:
        queue_own_features(cs, FTP_FEAT_HEAD | FTP_FEAT_END);
        return;
    }
}

void ctl_cmd_opts(struct ctl_session *cs, const struct ctl_line *l)
{
    if (arg_is(l, "UTF8 ON") || arg_is(l, "UTF8"))
        ctl_reply(cs, "200 Always in UTF8 mode.");
    else
        ctl_reply(cs, "501 Option not understood.");
}
