/* test_portpool.c - the passive port range: bad ranges, round-robin order,
 * exhaustion, release and reuse, and the edges of the 16-bit port space. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "check.h"

#include "portpool.h"
#include "px.h"

static void test_init(void **state)
{
    static const struct {
        const char *name;
        uint16_t lo, hi;
        int rc;
        size_t size;
    } cases[] = {
        {"usual", 50000, 50999, 0, 1000},
        {"one port", 2121, 2121, 0, 1},
        {"whole space", 1, 65535, 0, 65535},
        {"lo 0", 0, 10, PX_EINVAL, 0},
        {"lo above hi", 50001, 50000, PX_EINVAL, 0},
    };
    size_t i;

    (void)state;
    for (i = 0; i < PX_NELEM(cases); i++) {
        struct portpool p;

        CHECK_INT(cases[i].name, portpool_init(&p, cases[i].lo, cases[i].hi), cases[i].rc);
        if (cases[i].rc != 0)
            continue;
        CHECK_INT(cases[i].name, portpool_size(&p), cases[i].size);
        CHECK_INT(cases[i].name, portpool_in_use(&p), 0);
        portpool_free(&p);
    }
}

/* A script: reserve (want a port, or 0 for PX_ENOSPC), release a port, or
 * check the count in use. */
enum op_kind { OP_END = 0, OP_RESERVE, OP_RELEASE, OP_IN_USE };

struct op {
    enum op_kind kind;
    long n;
};

struct script_case {
    const char *name;
    uint16_t lo, hi;
    struct op ops[16];
};

static const struct script_case script_cases[] = {
    {"round robin, then exhausted",
     100,
     102,
     {{OP_RESERVE, 100},
      {OP_RESERVE, 101},
      {OP_RESERVE, 102},
      {OP_IN_USE, 3},
      {OP_RESERVE, 0},
      {OP_RELEASE, 101},
      {OP_IN_USE, 2},
      {OP_RESERVE, 101},
      {OP_RESERVE, 0}}},
    {"released port is reused last",
     100,
     103,
     {{OP_RESERVE, 100},
      {OP_RELEASE, 100},
      {OP_RESERVE, 101},
      {OP_RELEASE, 101},
      {OP_RESERVE, 102},
      {OP_RESERVE, 103},
      {OP_RESERVE, 100},
      {OP_RESERVE, 101},
      {OP_RESERVE, 0}}},
    {"search wraps past used ports",
     10,
     14,
     {{OP_RESERVE, 10},
      {OP_RESERVE, 11},
      {OP_RESERVE, 12},
      {OP_RESERVE, 13},
      {OP_RELEASE, 11},
      {OP_RESERVE, 14},
      {OP_RESERVE, 11},
      {OP_RELEASE, 10},
      {OP_RELEASE, 13},
      {OP_RESERVE, 13},
      {OP_RESERVE, 10},
      {OP_IN_USE, 5}}},
    {"single port",
     2121,
     2121,
     {{OP_RESERVE, 2121}, {OP_RESERVE, 0}, {OP_RELEASE, 2121}, {OP_RESERVE, 2121}, {OP_IN_USE, 1}}},
    {"top of the port space",
     65534,
     65535,
     {{OP_RESERVE, 65534},
      {OP_RESERVE, 65535},
      {OP_RESERVE, 0},
      {OP_RELEASE, 65535},
      {OP_RESERVE, 65535}}},
};

static void test_script(void **state)
{
    size_t i, k;

    (void)state;
    for (i = 0; i < PX_NELEM(script_cases); i++) {
        const struct script_case *c = &script_cases[i];
        struct portpool p;
        uint16_t port;

        CHECK_INT(c->name, portpool_init(&p, c->lo, c->hi), 0);
        for (k = 0; k < PX_NELEM(c->ops) && c->ops[k].kind != OP_END; k++) {
            const struct op *o = &c->ops[k];

            switch (o->kind) {
            case OP_RESERVE:
                CHECK_INT(c->name, portpool_reserve(&p, &port), o->n == 0 ? PX_ENOSPC : 0);
                if (o->n != 0)
                    CHECK_INT(c->name, port, o->n);
                break;
            case OP_RELEASE:
                portpool_release(&p, (uint16_t)o->n);
                break;
            case OP_IN_USE:
                CHECK_INT(c->name, portpool_in_use(&p), o->n);
                break;
            case OP_END:
                break;
            }
        }
        portpool_free(&p);
    }
}

/* Every port of a large range comes out once before the pool runs dry. */
static void test_exhaust_all(void **state)
{
    static uint8_t seen[65536];
    struct portpool p;
    uint16_t port;
    size_t n;

    (void)state;
    CHECK_INT("whole space", portpool_init(&p, 1, 65535), 0);
    for (n = 0; n < 65535; n++) {
        CHECK_INT("whole space", portpool_reserve(&p, &port), 0);
        CHECK_INT("whole space", seen[port], 0);
        seen[port] = 1;
    }
    CHECK_INT("whole space", portpool_reserve(&p, &port), PX_ENOSPC);
    CHECK_INT("whole space", portpool_in_use(&p), 65535);
    portpool_release(&p, 40000);
    CHECK_INT("whole space", portpool_reserve(&p, &port), 0);
    CHECK_INT("whole space", port, 40000);
    portpool_free(&p);
}

/* A worker's pool on the heap: retired with no port out it goes at once;
 * with ports out it lives until the last comes back (ASan and valgrind see
 * a leak or a use after free otherwise). */
static void test_retire(void **state)
{
    struct portpool *p = portpool_new(50000, 50002);
    uint16_t a, b;

    (void)state;
    CHECK_INT("new", p != NULL, 1);
    CHECK_INT("bad range", portpool_new(10, 9) == NULL, 1);
    portpool_retire(p); /* nothing out: freed now */
    p = portpool_new(50000, 50002);
    CHECK_INT("reserve", portpool_reserve(p, &a), 0);
    CHECK_INT("reserve", portpool_reserve(p, &b), 0);
    portpool_retire(p);
    CHECK_INT("retired, ports out", portpool_in_use(p), 2);
    portpool_release(p, a);
    CHECK_INT("one back", portpool_in_use(p), 1);
    portpool_release(p, b); /* the last: freed */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init), cmocka_unit_test(test_retire),
        cmocka_unit_test(test_script),
        cmocka_unit_test(test_exhaust_all),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
