/* test_hstate.c - the health of a backend address (two failures take it
 * out, one success brings it back) and the choice of an address (the
 * healthy one with the fewest sessions, turns on ties, every address when
 * all are down, none left after the healthy ones were tried). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "check.h"

#include "hstate.h"
#include "px.h"

static void test_transitions(void **state)
{
    /* A script of check results ('+' ok, '-' failed) and, per step, the
     * change expected ('s' same, 'd' down, 'u' up) and whether it is up. */
    static const struct {
        const char *name;
        const char *results, *changes, *up;
    } cases[] = {
        {"starts up, stays up", "+++", "sss", "yyy"},
        {"one failure is forgiven", "-+-+", "ssss", "yyyy"},
        {"two failures take it down", "--", "sd", "yn"},
        {"more failures: down once", "-----", "sdsss", "ynnnn"},
        {"one success brings it back", "--+", "sdu", "yny"},
        {"back, then two more to go down", "--+-+--", "sdusssd", "ynyyyyn"},
        {"down, failures, back", "---+", "sdsu", "ynny"},
    };

    (void)state;
    for (size_t i = 0; i < PX_NELEM(cases); i++) {
        struct hstate h;

        hstate_init(&h);
        CHECK_INT(cases[i].name, h.up, 1);
        for (size_t k = 0; cases[i].results[k] != '\0'; k++) {
            enum hstate_change c = hstate_result(&h, cases[i].results[k] == '+');
            char want = cases[i].changes[k];
            enum hstate_change wc = want == 'd' ? HSTATE_WENT_DOWN
                                    : want == 'u' ? HSTATE_CAME_UP
                                                  : HSTATE_SAME;

            CHECK_STR(cases[i].name, hstate_change_name(c), hstate_change_name(wc));
            CHECK_INT(cases[i].name, h.up, cases[i].up[k] == 'y');
        }
    }
}

static void test_pick(void **state)
{
    static const struct {
        const char *name;
        size_t n;
        struct hstate_cand c[4];
        uint64_t tried;
        unsigned turn;
        int want;
    } cases[] = {
        {"none", 0, {{true, 0}}, 0, 0, -1},
        {"one up", 1, {{true, 5}}, 0, 0, 0},
        {"one down: tried anyway", 1, {{false, 0}}, 0, 0, 0},
        {"one down, tried", 1, {{false, 0}}, 1, 0, -1},
        {"fewest sessions", 3, {{true, 3}, {true, 1}, {true, 2}}, 0, 0, 1},
        {"down is skipped though idle", 3, {{true, 3}, {false, 0}, {true, 2}}, 0, 0, 2},
        {"ties: turn 0 takes the first", 2, {{true, 1}, {true, 1}}, 0, 0, 0},
        {"ties: turn 1 takes the second", 2, {{true, 1}, {true, 1}}, 0, 1, 1},
        {"ties: turn wraps", 3, {{true, 0}, {true, 0}, {true, 0}}, 0, 5, 2},
        {"tried is skipped", 3, {{true, 0}, {true, 4}, {true, 9}}, 1, 0, 1},
        {"next healthy after a failure", 3, {{true, 0}, {false, 0}, {true, 9}}, 1, 0, 2},
        {"healthy ones all tried: none", 3, {{true, 0}, {false, 0}, {true, 9}}, 5, 0, -1},
        {"all down: first untried", 3, {{false, 0}, {false, 0}, {false, 0}}, 0, 2, 0},
        {"all down: each in order", 3, {{false, 0}, {false, 0}, {false, 0}}, 1, 0, 1},
        {"all down: all tried", 3, {{false, 0}, {false, 0}, {false, 0}}, 7, 0, -1},
    };

    (void)state;
    for (size_t i = 0; i < PX_NELEM(cases); i++)
        CHECK_INT(cases[i].name,
                  hstate_pick(cases[i].c, cases[i].n, cases[i].tried, cases[i].turn),
                  cases[i].want);
}

static void test_pick_64(void **state)
{
    struct hstate_cand c[64];
    uint64_t tried = 0;

    (void)state;
    for (size_t i = 0; i < 64; i++)
        c[i] = (struct hstate_cand){true, (unsigned)(64 - i)};
    /* The fewest first, each once, then none. */
    for (int k = 63; k >= 0; k--) {
        int got = hstate_pick(c, 64, tried, 0);

        CHECK_INT("64 addresses", got, k);
        tried |= UINT64_C(1) << got;
    }
    CHECK_INT("64 addresses, all tried", hstate_pick(c, 64, tried, 0), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transitions),
        cmocka_unit_test(test_pick),
        cmocka_unit_test(test_pick_64),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
