/* ctl_backend.c - the session's backend connection (see ctl_int.h): the
 * connect, through a warm connection (warm.h) or with failover over the
 * backend's addresses (bconn.h); the endpoint that adopts the greeted
 * socket; its events; and the redial, unseen by the client, when the
 * backend connection dies before the login is answered (a warm one the
 * backend timed out: the same address again; else the next address). */
#include <string.h>
#include <unistd.h>

#include "bconn.h"
#include "ctl_int.h"
#include "health.h"
#include "warm.h"

static const struct cfg_backend *routed(const struct ctl_session *cs)
{
    return &ctl_cfg(cs)->backends[cs->backend_idx];
}

void ctl_address_leave(struct ctl_session *cs)
{
    if (cs->addr_idx < 0)
        return;
    health_leave(routed(cs), (size_t)cs->addr_idx);
    cs->addr_idx = -1;
}

void ctl_backend_stop(struct ctl_session *cs)
{
    bconn_cancel(cs->bconn);
    cs->bconn = NULL;
    if (cs->backend.open)
        ep_close(&cs->backend, false);
}

static void on_backend_closed(struct ep *e)
{
    struct ctl_session *cs = e->owner;

    if ((cs->switch_pending || cs->redial_pending) && !cs->closing) {
        cs->switch_pending = false;
        cs->redial_pending = false;
        cs->open_handles--;
        ctl_connect_backend(cs);
        return;
    }
    ctl_handle_closed(cs);
}

/* The backend connection died (or a warm one was timed out) before the
 * login was answered: the login goes on over a new connection, to the same
 * address when only a warm connection died, else to the next one, and the
 * client never sees it. USER is sent again, and PASS after its 331 when
 * PASS was what waited. False when that does not apply (logged in, or
 * nothing to send again). */
static bool redial(struct ctl_session *cs, const char *why)
{
    const char *addr;

    if (cs->state != CTL_LOGIN || cs->login_user == NULL || cs->closing ||
        cs->closing_after_flush || cs->addr_idx < 0)
        return false;
    if (cs->wait == CTL_WAIT_PASS && cs->login_pass != NULL) {
        cs->replay = cs->replay_pass = true;
    } else if (cs->wait == CTL_WAIT_NONE) { /* 331 relayed: the client's PASS is coming */
        cs->replay = true;
        cs->replay_pass = false;
    } else if (cs->wait != CTL_WAIT_USER) {
        return false; /* (at USER, a USER sent again for a replay stays one) */
    }
    addr = routed(cs)->address[cs->addr_idx].text;
    if (cs->bk_warm) {
        LOG_DEBUG(&cs->lg, "warm_replaced", "address", addr, "why", why, NULL);
        cs->no_warm = true;
    } else {
        LOG_WARN(&cs->lg, "backend_redial", "address", addr, "why", why, "msg",
                 "the backend closed the connection during the login: the next address takes it",
                 NULL);
        cs->tried |= UINT64_C(1) << cs->addr_idx;
    }
    cs->bk_warm = false;
    cs->wait = CTL_WAIT_NONE;
    ctl_address_leave(cs);
    cs->redial_pending = true;
    cs->state = CTL_CONNECTING; /* the client's PASS waits for the new connection */
    ep_close(&cs->backend, false);
    return true;
}

/* vsftpd's "500 OOPS: ..." is written as its session process dies (its
 * other half was killed, or it cannot run): at the login, another address
 * takes it, unseen. With no other address left the session ends with 421
 * (ctl.c), which names vsftpd's reason. */
static bool oops_at_login(struct ctl_session *cs, const char *line, size_t len, bool last)
{
    char t[FTP_LINE_MAX + 1];

    if ((cs->wait != CTL_WAIT_USER && cs->wait != CTL_WAIT_PASS) || !ftp_reply_is_oops(line, len) ||
        cs->addr_idx < 0 ||
        health_pick(routed(cs), cs->tried | UINT64_C(1) << cs->addr_idx) < 0)
        return false;
    cs->bk_warm = false; /* a dying server: the next address, not this one again */
    if (last)
        redial(cs, log_text(t, sizeof(t), line, len));
    return true;
}

bool ctl_backend_swallow(struct ctl_session *cs, const char *line, size_t len, bool last)
{
    if (oops_at_login(cs, line, len, last))
        return true;
    if (cs->wait != CTL_WAIT_USER)
        return false;
    if (cs->replay) { /* USER again after a redial: its 331 is ours */
        if (!last)
            return true;
        cs->replay = false;
        if (cs->rep.code == 331 && !cs->replay_pass) {
            cs->wait = CTL_WAIT_NONE;
            ctl_process_input(cs, true); /* the client's PASS, held meanwhile */
            return true;
        }
        if (cs->rep.code != 331 || cs->login_pass == NULL) {
            ctl_fail_session(cs, "421 Service not available: the site's server closed the "
                                 "connection.",
                             "backend closed");
            return true;
        }
        ctl_send_backend(cs, cs->login_pass, strlen(cs->login_pass), CTL_WAIT_PASS);
        return true;
    }
    if (!cs->bk_warm || cs->rep.code != 421)
        return false;
    if (last)
        redial(cs, "421 to USER");
    return true;
}

static void on_backend_event(struct ep *e, enum ep_event ev, int status)
{
    struct ctl_session *cs = e->owner;

    if (cs->closing)
        return;
    switch (ev) {
    case EP_READ:
        ctl_process_replies(cs, false);
        return;
    case EP_DRAINED:
        if (buf_len(&cs->bout) == 0)
            buf_shrink(&cs->bout); /* idle sessions keep no command buffer */
        ctl_process_input(cs, true);
        return;
    case EP_EOF:
    case EP_ERROR:
        if (cs->closing_after_flush) /* after QUIT or a 421: expected */
            return;
        if (redial(cs, status < 0 ? uv_strerror(status) : "EOF"))
            return;
        LOG_WARN(&cs->lg, "backend_closed", "error", status < 0 ? uv_strerror(status) : "EOF",
                 NULL);
        ctl_fail_session(cs,
                         "421 Service not available: the site's server closed the connection.",
                         "backend closed");
        return;
    default:
        return;
    }
}

/* fd greeted with 220: the session's backend endpoint takes it, and USER
 * goes out. */
static void adopt(struct ctl_session *cs, int fd, size_t idx, bool warm)
{
    int rc = ep_init(&cs->backend, cs->env->loop, on_backend_event, on_backend_closed, cs);

    if (rc != 0) {
        close(fd);
        ctl_fail_session(cs, "421 Service not available: out of resources.",
                         "backend init failed");
        return;
    }
    cs->open_handles++;
    ep_set_bufs(&cs->backend, &cs->bin, &cs->bout);
    rc = ep_open(&cs->backend, fd);
    if (rc != 0) {
        close(fd);
        ctl_fail_session(cs, "421 Service not available: out of resources.",
                         "backend init failed");
        return;
    }
    ep_sockname(&cs->backend, &cs->backend_local, false);
    ep_sockname(&cs->backend, &cs->backend_peer, true);
    cs->addr_idx = (int)idx;
    LOG_DEBUG(&cs->lg, "backend_connected", "address", routed(cs)->address[idx].text, "warm",
              warm ? "yes" : "no", NULL);
    health_enter(routed(cs), idx);
    cs->bk_warm = warm;
    cs->no_warm = false;
    ep_read(&cs->backend);
    ctl_send_user(cs);
}

static void on_connected(void *arg, int status, int fd, size_t idx)
{
    struct ctl_session *cs = arg;

    cs->bconn = NULL;
    if (status < 0) {
        ctl_fail_session(cs,
                         status == UV_ETIMEDOUT
                             ? "421 Service not available: the site's server does not answer."
                         : status == UV_EPROTO
                             ? "421 Service not available: the site's server refused the session."
                             : "421 Service not available: the site's server cannot be reached.",
                         status == UV_ETIMEDOUT ? "backend timeout"
                         : status == UV_EPROTO  ? "backend refused"
                                                : "backend unreachable");
        return;
    }
    adopt(cs, fd, idx, false);
}

void ctl_connect_backend(struct ctl_session *cs)
{
    const struct cfg_backend *b = routed(cs);
    struct bconn_params p = {
        .loop = cs->env->loop,
        .b = b,
        .timeout_ms = ctl_cfg(cs)->connect_timeout * 1000,
        .lg = &cs->lg,
        .cb = on_connected,
        .arg = cs,
    };
    int rc, i, fd;

    buf_reset(&cs->bin);
    buf_reset(&cs->bout);
    memset(&cs->rep, 0, sizeof(cs->rep));
    cs->state = CTL_CONNECTING;
    if (b->preconnect > 0 && !cs->no_warm && (i = health_pick(b, cs->tried)) >= 0 &&
        (fd = warm_take(cs->env->warm, b->name, b->address[i].text)) >= 0) {
        adopt(cs, fd, (size_t)i, true);
        return;
    }
    rc = bconn_start(&p, cs->tried, &cs->bconn);
    if (rc == UV_ENOMEM) {
        ctl_fail_session(cs, "421 Service not available: out of resources.",
                         "backend init failed");
        return;
    }
    if (rc != 0)
        ctl_fail_session(cs, "421 Service not available: the site's server cannot be reached.",
                         "backend unreachable");
}
