/* ctlfsm.h - what a control session does with a command, by phase. Pure:
 * ctl.c carries the action out, so the pre-login dialogue is unit-tested. */
#ifndef CTLFSM_H
#define CTLFSM_H

enum ctlfsm_phase {
    CTLFSM_PRE_LOGIN = 0, /* no USER forwarded yet */
    CTLFSM_LOGIN,         /* USER went to the backend; not logged in yet */
    CTLFSM_RELAY,         /* logged in */
};

enum ctlfsm_action {
    CTLFSM_FORWARD = 0, /* send to the backend as it came */
    CTLFSM_AUTH,        /* AUTH TLS / SSL / TLS-C: the proxy's TLS */
    CTLFSM_PBSZ,
    CTLFSM_PROT,
    CTLFSM_HOST,        /* RFC 7151 */
    CTLFSM_FEAT,        /* own list before login, merged list after */
    CTLFSM_USER,        /* route the login and connect to the backend */
    CTLFSM_PASS,        /* 503 before USER, forwarded during login */
    CTLFSM_QUIT,        /* 221 before login; forwarded after; then the session ends */
    CTLFSM_NOOP,
    CTLFSM_SYST,
    CTLFSM_OPTS,
    CTLFSM_NEED_LOGIN,  /* 530 */
    CTLFSM_REFUSE,      /* CCC, REIN: the control channel stays encrypted */
    CTLFSM_PASV,
    CTLFSM_EPSV,
    CTLFSM_PORT,
    CTLFSM_EPRT,
    CTLFSM_LONG_PASSIVE, /* LPSV, LPRT: not offered (502) */
    CTLFSM_TRANSFER,    /* RETR STOR STOU APPE LIST NLST MLSD: needs a data connection */
    CTLFSM_ABOR,
};

/* verb: upper-case, NUL-terminated (struct ftp_cmd's). */
enum ctlfsm_action ctlfsm_on_command(enum ctlfsm_phase phase, const char *verb);

/* True for transfer commands that send data to the client (downloads and
 * listings), false for uploads. Only meaningful for CTLFSM_TRANSFER verbs. */
int ctlfsm_is_download(const char *verb);

const char *ctlfsm_action_name(enum ctlfsm_action a);

#endif
