/* ctl_int.h - what the three files of the control session share: the session
 * itself and the calls between ctl.c (lifetime, the command and reply relay),
 * ctl_login.c (the login dialogue and the proxy's own commands) and
 * ctl_data.c (data connections). Private to those files.
 *
 * ctl_client.c holds the client connection: the start of a session and the
 * client endpoint's events.
 *
 * Every FTP command handler is a ctl_cmd_fn, named cmd_VERB in its file and
 * listed in ctl.c's table by the ctlfsm action that selects it. */
#ifndef CTL_INT_H
#define CTL_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "buf.h"
#include "cfg.h"
#include "ctl.h"
#include "ep.h"
#include "ftp.h"
#include "gen.h"
#include "log.h"
#include "px.h"
#include "tlsctx.h"

#define CTL_IN_CAP (FTP_LINE_MAX + 2) /* one whole command line with CRLF */
#define CTL_OUT_CAP (16 * 1024)
#define CTL_OUT_ROOM (FTP_LINE_MAX + 2) /* room kept for the next reply line */
#define CTL_HELD_CAP (8 * 1024)
#define CTL_TLS_BUF (8 * 1024)
/* The longest command line sent on to a backend. vsftpd reads at most 4,096
 * bytes with the CRLF, answers a longer line with 500 and closes the session;
 * a line it cannot take gets the proxy's own 500 instead, and the session
 * goes on. Two bytes of margin below vsftpd's 4,094. */
#define CTL_FORWARD_MAX 4092

enum ctl_state {
    CTL_HANDSHAKE = 0, /* implicit FTPS: TLS before the greeting */
    CTL_PRE_LOGIN,
    CTL_CONNECTING,    /* the login is routed; connecting to the backend */
    CTL_GREETING,      /* waiting for the backend's 220 */
    CTL_LOGIN,         /* USER went to the backend; not logged in yet */
    CTL_RELAY,         /* logged in */
};

enum ctl_wait { /* what the backend's next final reply answers */
    CTL_WAIT_NONE = 0,
    CTL_WAIT_PLAIN,
    CTL_WAIT_USER,
    CTL_WAIT_PASS,
    CTL_WAIT_FEAT,
    CTL_WAIT_PASV,      /* our EPSV/PASV for a client's PASV/EPSV/PORT/EPRT */
    CTL_WAIT_XFER,      /* a transfer command */
    CTL_WAIT_XFER_ABOR, /* a transfer command, then the ABOR sent during it */
    CTL_WAIT_ABOR,
    CTL_WAIT_QUIT,
};

/* The data channel of a session (ctl_data.c). */
struct ctl_dc {
    struct xfer *xfer;     /* owned; at most one */
    bool backend_no_epsv;  /* the backend refused EPSV: ask with PASV */
    bool epsv;             /* the client asked EPSV: answer 229 */
    bool active;           /* the passive setup serves PORT/EPRT */
    bool tried_epsv;       /* our question to the backend was EPSV */
    bool failed;           /* the backend opened no passive port for it */
    bool hostile;          /* ... or one the proxy refuses to connect to */
    uint16_t port;         /* our passive port for the client */
    uint16_t backend_port; /* the backend's, once a reply line named it (0: none) */
    bool client_done;      /* the transfer's client side is finished */
    const char *failure;   /* static: why the client side failed, NULL when clean */
    int code;              /* the final reply's code, 0 until it came */
    uint64_t started_ms;
    bool download;
    char verb[5];
    char *path;            /* owned: the transfer command's argument, for the log */
};

struct ctl_session {
    struct ctl_env *env; /* borrowed: the worker's */
    void *tag;           /* for env->on_ended */
    struct gen *gen;     /* ref held: this session's configuration and contexts */
    struct log_sess lg;
    struct ep *client;   /* owned (from the listener) */
    struct ep backend;
    uv_timer_t timer;    /* login, then idle deadline; the last flush before close */
    struct bconn *bconn; /* owned: the backend connect in progress, or NULL */
    unsigned open_handles;
    bool closing;
    const char *close_reason;

    enum ctl_state state;
    enum ctl_wait wait;
    struct buf cin, cout; /* client: command lines in, replies out */
    struct buf bin, bout; /* backend: replies in, commands out */
    struct buf held;      /* a transfer's final reply, held back */
    struct ftp_reply rep;

    bool implicit;
    bool handshaking; /* TLS handshake in progress */
    bool tls_pending; /* 234 sent: TLS starts once it is written */
    bool tls_on;
    bool pbsz, prot_p, epsv_all;
    bool closing_after_flush;
    bool admitted;        /* counted by quota_admit */
    bool backend_counted; /* counted by quota_backend_enter */
    bool switch_pending;  /* USER named another site: reconnect once closed */
    bool redial_pending;  /* a warm connection died: reconnect once closed */
    bool no_warm;         /* the next connect makes a fresh connection */
    bool bk_warm;         /* the backend connection was a warm one, USER unanswered */
    bool replay;          /* after a redial: the 331 to USER sent again is swallowed, */
    bool replay_pass;     /*   then PASS is sent again (else the client's PASS is awaited) */
    int addr_idx;         /* the backend address connected to (counted), -1 */
    uint64_t tried;       /* addresses that failed during this login (bit i: address i) */
    unsigned lines;       /* command lines taken so far */

    int backend_idx;     /* routed backend, -1 */
    int host_site;       /* last accepted HOST, -1 */
    int early_host_site; /* a HOST accepted before AUTH TLS: picks the certificate */
    int early_host;      /* which of that site's host names it was */
    char *login_user;    /* owned: the user part, until the login is answered */
    char *login_pass;    /* owned: the PASS line until it is answered (never logged;
                            zeroed when freed): a redial sends it again */
    char site[256];      /* the name the login used, for logs */

    struct sockaddr_storage peer;  /* the client (the PROXY one where used) */
    struct sockaddr_storage local; /* our side of the control connection */
    struct sockaddr_storage backend_local;
    struct sockaddr_storage backend_peer;

    struct tlsctx_conn tci; /* the control connection's TLS */
    uint8_t token[TLSCTX_TOKEN_LEN];
    struct ctl_dc dc;
};

/* One command line as the handlers get it. */
struct ctl_line {
    const char *text; /* the line without CRLF, Telnet stripped, NUL-terminated */
    size_t len;
    struct ftp_cmd cmd;
};

typedef void ctl_cmd_fn(struct ctl_session *cs, const struct ctl_line *l);

/* ---- ctl.c ---- */
void ctl_handle_closed(struct ctl_session *cs);
/* The login deadline (login_timeout) from now. */
void ctl_arm_login(struct ctl_session *cs);
/* The idle deadline (idle_timeout), repeating, once logged in. */
void ctl_arm_idle(struct ctl_session *cs);
/* Relays the backend's buffered reply lines while the client has room. */
void ctl_process_replies(struct ctl_session *cs, bool resume);
static inline const struct cfg *ctl_cfg(const struct ctl_session *cs) { return cs->gen->cfg; }
const char *ctl_backend_name(const struct ctl_session *cs);
void ctl_close(struct ctl_session *cs, const char *reason);
void ctl_close_after_flush(struct ctl_session *cs, const char *reason);
/* A 421 (text) and the end of the session once it is sent. */
void ctl_fail_session(struct ctl_session *cs, const char *text, const char *reason);
/* A refused session: the "refused" log line (reason, msg), the refusal
 * metric under reason, then ctl_fail_session() with text. */
void ctl_refuse(struct ctl_session *cs, const char *reason, const char *msg, const char *text);
/* Replies: queued whole, then flushed, so each leaves in one SSL_write. */
void ctl_queue_text(struct ctl_session *cs, const char *p, size_t n);
void ctl_flush_client(struct ctl_session *cs);
void ctl_send_text(struct ctl_session *cs, const char *p, size_t n);
void ctl_reply(struct ctl_session *cs, const char *text);
void ctl_replyf(struct ctl_session *cs, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A backend reply line, queued; the reply is flushed at its last line. */
void ctl_relay_line(struct ctl_session *cs, const char *line, size_t len);
void ctl_send_backend(struct ctl_session *cs, const char *p, size_t n, enum ctl_wait wait);
void ctl_process_input(struct ctl_session *cs, bool resume);
void ctl_backend_leave(struct ctl_session *cs);
const char *ctl_state_name(enum ctl_state s);
const char *ctl_wait_name(enum ctl_wait w);

/* ---- ctl_backend.c ---- */
/* Connects to the routed backend (a warm connection when one is ready, else
 * the addresses in turn, bconn.h); USER follows once it greeted, or 421. */
void ctl_connect_backend(struct ctl_session *cs);
/* Closing: the connect in progress and the backend connection end. */
void ctl_backend_stop(struct ctl_session *cs);
/* The session leaves its backend address (ftpsgate_backend_sessions). */
void ctl_address_leave(struct ctl_session *cs);
/* A reply line the client must not see: vsftpd's "500 OOPS" to USER or PASS
 * while another address can take the login (redialled), 421 to USER on a warm connection
 * (the backend timed it out: a fresh connection takes USER again), or the
 * 331 to a USER sent again after a redial (PASS follows it). True when the
 * line was taken. */
bool ctl_backend_swallow(struct ctl_session *cs, const char *line, size_t len, bool last);

/* ---- ctl_login.c ---- */
ctl_cmd_fn ctl_cmd_user, ctl_cmd_pass, ctl_cmd_auth, ctl_cmd_pbsz, ctl_cmd_prot, ctl_cmd_host,
    ctl_cmd_feat, ctl_cmd_opts;
/* AUTH TLS's 234 is on the wire: the handshake begins (also implicit FTPS). */
void ctl_start_tls(struct ctl_session *cs);
/* The backend greeted: USER goes to it. */
void ctl_send_user(struct ctl_session *cs);
/* The login is answered: the user name and password kept for a redial go. */
void ctl_forget_login(struct ctl_session *cs);
void ctl_forget_pass(struct ctl_session *cs);
/* The final reply to USER or PASS. */
void ctl_login_reply(struct ctl_session *cs, enum ctl_wait w, int code);
/* One line of the backend's FEAT reply (last: it ends the reply). */
void ctl_feat_line(struct ctl_session *cs, const char *line, size_t len, bool last);

/* ---- ctl_data.c ---- */
ctl_cmd_fn ctl_cmd_pasv, ctl_cmd_epsv, ctl_cmd_port, ctl_cmd_eprt, ctl_cmd_transfer, ctl_cmd_abor;
/* One line of the backend's reply to our EPSV/PASV. */
void ctl_pasv_line(struct ctl_session *cs, const char *line, size_t len, bool last);
/* One line of the reply to a transfer command: relayed, or held (final). */
void ctl_xfer_line(struct ctl_session *cs, const char *line, size_t len);
/* The transfer command's final reply (code) is in. */
void ctl_transfer_reply(struct ctl_session *cs, int code);
/* Ends the current transfer (logged as failed when it had started). */
void ctl_drop_xfer(struct ctl_session *cs);
/* A transfer's final reply waits for its data connection: hold commands. */
bool ctl_reply_held(const struct ctl_session *cs);
/* A data connection is open: the idle timer does not run out. */
bool ctl_transfer_running(const struct ctl_session *cs);

#endif
