/* test_ctlfsm.c - the control session's command table: what the proxy
 * answers itself before login, during login and after, and what it forwards. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "ctlfsm.h"
#include "px.h"

struct action_case {
    const char *verb;
    enum ctlfsm_action pre, login, relay;
};

static const struct action_case cases[] = {
    {"AUTH", CTLFSM_AUTH, CTLFSM_AUTH, CTLFSM_AUTH},
    {"PBSZ", CTLFSM_PBSZ, CTLFSM_PBSZ, CTLFSM_PBSZ},
    {"PROT", CTLFSM_PROT, CTLFSM_PROT, CTLFSM_PROT},
    {"HOST", CTLFSM_HOST, CTLFSM_HOST, CTLFSM_HOST},
    {"FEAT", CTLFSM_FEAT, CTLFSM_FEAT, CTLFSM_FEAT},
    {"USER", CTLFSM_USER, CTLFSM_USER, CTLFSM_FORWARD},
    {"PASS", CTLFSM_PASS, CTLFSM_PASS, CTLFSM_FORWARD},
    {"QUIT", CTLFSM_QUIT, CTLFSM_QUIT, CTLFSM_QUIT},
    {"NOOP", CTLFSM_NOOP, CTLFSM_NOOP, CTLFSM_FORWARD},
    {"SYST", CTLFSM_SYST, CTLFSM_SYST, CTLFSM_FORWARD},
    {"OPTS", CTLFSM_OPTS, CTLFSM_OPTS, CTLFSM_FORWARD},
    {"CCC", CTLFSM_REFUSE, CTLFSM_REFUSE, CTLFSM_REFUSE},
    {"REIN", CTLFSM_REFUSE, CTLFSM_REFUSE, CTLFSM_REFUSE},
    {"ACCT", CTLFSM_NEED_LOGIN, CTLFSM_FORWARD, CTLFSM_FORWARD},
    {"PASV", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_PASV},
    {"EPSV", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_EPSV},
    {"PORT", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_PORT},
    {"EPRT", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_EPRT},
    {"LPSV", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_LONG_PASSIVE},
    {"LPRT", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_LONG_PASSIVE},
    {"RETR", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_TRANSFER},
    {"STOR", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_TRANSFER},
    {"STOU", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_TRANSFER},
    {"APPE", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_TRANSFER},
    {"LIST", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_TRANSFER},
    {"NLST", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_TRANSFER},
    {"MLSD", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_TRANSFER},
    {"ABOR", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_ABOR},
    /* Anything else: refused before login, forwarded after. */
    {"CWD", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_FORWARD},
    {"SIZE", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_FORWARD},
    {"DELE", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_FORWARD},
    {"SITE", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_FORWARD},
    {"XYZ", CTLFSM_NEED_LOGIN, CTLFSM_NEED_LOGIN, CTLFSM_FORWARD},
};

static void check(const char *verb, const char *phase, enum ctlfsm_action got,
                  enum ctlfsm_action want)
{
    if (got != want) {
        print_message("case \"%s\" %s: got %s, want %s\n", verb, phase, ctlfsm_action_name(got),
                      ctlfsm_action_name(want));
        fail();
    }
}

static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < PX_NELEM(cases); i++) {
        const struct action_case *c = &cases[i];

        check(c->verb, "pre-login", ctlfsm_on_command(CTLFSM_PRE_LOGIN, c->verb), c->pre);
        check(c->verb, "login", ctlfsm_on_command(CTLFSM_LOGIN, c->verb), c->login);
        check(c->verb, "relay", ctlfsm_on_command(CTLFSM_RELAY, c->verb), c->relay);
    }
}

static void test_direction(void **state)
{
    static const struct {
        const char *verb;
        int download;
    } dirs[] = {{"RETR", 1}, {"LIST", 1}, {"NLST", 1}, {"MLSD", 1},
                {"STOR", 0}, {"STOU", 0}, {"APPE", 0}};

    (void)state;
    for (size_t i = 0; i < PX_NELEM(dirs); i++) {
        if (ctlfsm_is_download(dirs[i].verb) != dirs[i].download) {
            print_message("case \"%s\": wrong direction\n", dirs[i].verb);
            fail();
        }
    }
}

static void test_names(void **state)
{
    (void)state;
    for (int a = CTLFSM_FORWARD; a <= CTLFSM_ABOR; a++)
        assert_string_not_equal(ctlfsm_action_name((enum ctlfsm_action)a), "?");
    assert_string_equal(ctlfsm_action_name((enum ctlfsm_action)99), "?");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_direction),
        cmocka_unit_test(test_names),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
