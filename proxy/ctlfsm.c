/* ctlfsm.c - the command table of a control session (see ctlfsm.h).
 *
 * Each verb has one row: what to do before login (while no USER went to the
 * backend), during login (USER went, no 230 yet), and once logged in. */
#include "ctlfsm.h"

#include <string.h>

#include "px.h"

struct row {
    const char *verb;
    enum ctlfsm_action pre, login, relay;
};

#define LOCAL(v, a) {v, a, a, a}

static const struct row rows[] = {
    LOCAL("AUTH", CTLFSM_AUTH),
    LOCAL("PBSZ", CTLFSM_PBSZ),
    LOCAL("PROT", CTLFSM_PROT),
    LOCAL("HOST", CTLFSM_HOST),
    LOCAL("FEAT", CTLFSM_FEAT),
    LOCAL("CCC", CTLFSM_REFUSE),
    LOCAL("REIN", CTLFSM_REFUSE),
    {"USER", CTLFSM_USER, CTLFSM_USER, CTLFSM_FORWARD},
    {"PASS", CTLFSM_PASS, CTLFSM_PASS, CTLFSM_FORWARD},
    {"ACCT", CTLFSM_NEED_LOGIN, CTLFSM_FORWARD, CTLFSM_FORWARD},
    LOCAL("QUIT", CTLFSM_QUIT), /* after login: forwarded, and the session ends */
    {"NOOP", CTLFSM_NOOP, CTLFSM_NOOP, CTLFSM_FORWARD},
    {"SYST", CTLFSM_SYST, CTLFSM_SYST, CTLFSM_FORWARD},
    {"OPTS", CTLFSM_OPTS, CTLFSM_OPTS, CTLFSM_FORWARD},
    {"PASV", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_PASV},
    {"EPSV", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_EPSV},
    {"PORT", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_PORT},
    {"EPRT", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_EPRT},
    {"LPSV", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_LONG_PASSIVE},
    {"LPRT", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_LONG_PASSIVE},
    {"RETR", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_TRANSFER},
    {"LIST", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_TRANSFER},
    {"NLST", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_TRANSFER},
    {"MLSD", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_TRANSFER},
    {"STOR", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_TRANSFER},
    {"STOU", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_TRANSFER},
    {"APPE", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_TRANSFER},
    {"ABOR", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_ABOR},
};

static const struct row *find(const char *verb)
{
    for (size_t i = 0; i < PX_NELEM(rows); i++)
        if (strcmp(rows[i].verb, verb) == 0)
            return &rows[i];
    return NULL;
}

enum ctlfsm_action ctlfsm_on_command(enum ctlfsm_phase phase, const char *verb)
{
    const struct row *r = find(verb);

    if (r == NULL)
        return phase == CTLFSM_RELAY ? CTLFSM_FORWARD : CTLFSM_NEED_LOGIN;
    switch (phase) {
    case CTLFSM_PRE_LOGIN:
        return r->pre;
    case CTLFSM_LOGIN:
        return r->login;
    default:
        return r->relay;
    }
}

int ctlfsm_is_download(const char *verb)
{
    return strcmp(verb, "RETR") == 0 || strcmp(verb, "LIST") == 0 ||
           strcmp(verb, "NLST") == 0 || strcmp(verb, "MLSD") == 0;
}

const char *ctlfsm_action_name(enum ctlfsm_action a)
{
    static const char *const names[] = {
        "forward", "auth", "pbsz", "prot", "host", "feat", "user", "pass", "quit", "noop",
        "syst", "opts", "need-login", "refuse", "pasv", "epsv", "port", "eprt", "long-passive",
        "transfer", "abor"};

    return (unsigned)a < PX_NELEM(names) ? names[a] : "?";
}
