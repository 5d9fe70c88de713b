/* test_sharereg.c - the registry of sessions waiting on shared passive
 * ports: the verdict for a data connection (match, not waiting, another
 * port, another address), duplicates, removal (idempotent), and many
 * entries added and removed in turn without losing the rest. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "check.h"

#include "px.h"
#include "sharereg.h"

static void entry(struct sharereg_entry *e, uint8_t key, uint8_t ip, uint16_t port)
{
    memset(e, 0, sizeof(*e));
    memset(e->key, key, sizeof(e->key));
    e->ip[15] = ip;
    e->port = port;
    e->owner = e;
}

static void test_verdicts(void **state)
{
    static const struct {
        const char *name;
        uint8_t key, ip;
        uint16_t port;
        enum sharereg_verdict want;
        int owner; /* which entry *out names: 0 a, 1 b, -1 none */
    } cases[] = {
        {"a's key, port and address", 1, 10, 5000, SHAREREG_MATCH, 0},
        {"b's key, port and address", 2, 20, 5000, SHAREREG_MATCH, 1},
        {"a's key from b's address", 1, 20, 5000, SHAREREG_ADDRESS, 0},
        {"a's key on another port", 1, 10, 5001, SHAREREG_PORT, 0},
        {"an unknown key", 3, 10, 5000, SHAREREG_NOT_WAITING, -1},
    };
    struct sharereg r = {0};
    struct sharereg_entry a, b, *out;

    (void)state;
    entry(&a, 1, 10, 5000);
    entry(&b, 2, 20, 5000);
    CHECK_INT("add a", sharereg_add(&r, &a), 0);
    CHECK_INT("add b", sharereg_add(&r, &b), 0);
    for (size_t i = 0; i < PX_NELEM(cases); i++) {
        uint8_t key[SHAREREG_KEY_LEN], ip[16] = {0};

        memset(key, cases[i].key, sizeof(key));
        ip[15] = cases[i].ip;
        CHECK_INT(cases[i].name, sharereg_match(&r, key, cases[i].port, ip, &out), cases[i].want);
        CHECK_INT(cases[i].name, out == NULL ? -1 : out == &a ? 0 : 1, cases[i].owner);
    }
    {
        uint8_t ip[16] = {0};

        ip[15] = 10;
        CHECK_INT("waiting from a's address", sharereg_waiting_from(&r, ip), 1);
        ip[15] = 30;
        CHECK_INT("waiting from nobody's", sharereg_waiting_from(&r, ip), 0);
    }
    CHECK_STR("label", sharereg_verdict_name(SHAREREG_NOT_WAITING), "not_waiting");
    CHECK_STR("label", sharereg_verdict_name(SHAREREG_ADDRESS), "address");
    CHECK_STR("label", sharereg_verdict_name(SHAREREG_PORT), "port");
    sharereg_free(&r);
}

static void test_duplicates_and_removal(void **state)
{
    struct sharereg r = {0};
    struct sharereg_entry a, twin, *out;
    uint8_t ip[16] = {0};

    (void)state;
    entry(&a, 7, 1, 4000);
    entry(&twin, 7, 2, 4000);
    CHECK_INT("add", sharereg_add(&r, &a), 0);
    CHECK_INT("same key again", sharereg_add(&r, &twin), PX_EEXIST);
    CHECK_INT("twin not registered", twin.registered, 0);
    sharereg_remove(&r, &twin); /* not registered: nothing happens */
    CHECK_INT("count", sharereg_count(&r), 1);
    ip[15] = 1;
    CHECK_INT("still there", sharereg_match(&r, a.key, 4000, ip, &out), SHAREREG_MATCH);
    sharereg_remove(&r, &a);
    sharereg_remove(&r, &a);
    CHECK_INT("count", sharereg_count(&r), 0);
    CHECK_INT("gone", sharereg_match(&r, a.key, 4000, ip, &out), SHAREREG_NOT_WAITING);
    CHECK_INT("re-add", sharereg_add(&r, &a), 0);
    sharereg_free(&r);
}

/* 300 sessions wait; every third stops waiting; the others are all found. */
static void test_many(void **state)
{
    static struct sharereg_entry e[300];
    struct sharereg r = {0};
    struct sharereg_entry *out;

    (void)state;
    for (size_t i = 0; i < PX_NELEM(e); i++) {
        memset(&e[i], 0, sizeof(e[i]));
        e[i].key[0] = (uint8_t)i;
        e[i].key[1] = (uint8_t)(i >> 8);
        e[i].port = 6000;
        e[i].ip[15] = (uint8_t)(i % 2); /* two client addresses, 150 sessions each */
        CHECK_INT("add", sharereg_add(&r, &e[i]), 0);
    }
    for (size_t i = 0; i < PX_NELEM(e); i += 3)
        sharereg_remove(&r, &e[i]);
    for (size_t i = 0; i < PX_NELEM(e); i++) {
        enum sharereg_verdict v = sharereg_match(&r, e[i].key, 6000, e[i].ip, &out);

        CHECK_INT("verdict", v, i % 3 == 0 ? SHAREREG_NOT_WAITING : SHAREREG_MATCH);
        if (v == SHAREREG_MATCH)
            CHECK_INT("owner", out == &e[i], 1);
    }
    CHECK_INT("count", sharereg_count(&r), 200);
    {
        uint8_t ip[16] = {0};

        CHECK_INT("waiting from address 0", sharereg_waiting_from(&r, ip), 100);
        ip[15] = 1;
        CHECK_INT("waiting from address 1", sharereg_waiting_from(&r, ip), 100);
        for (size_t i = 1; i < PX_NELEM(e); i += 2)
            sharereg_remove(&r, &e[i]);
        CHECK_INT("address 1 gone", sharereg_waiting_from(&r, ip), 0);
    }
    sharereg_free(&r); /* address 0 still counted: freed here */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verdicts),
        cmocka_unit_test(test_duplicates_and_removal),
        cmocka_unit_test(test_many),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
