/* test_bufpool.c - the per-worker pool of transfer buffers: a freed buffer
 * of a pooled size comes back on the next get, the limit bounds what is held,
 * other sizes bypass the pool, and a trim frees only what stayed unused since
 * the trim before. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "check.h"

#include <string.h>

#include "bufpool.h"

#define K 1024

static void test_reuse(void **state)
{
    struct bufpool *p = bufpool_new(256 * K);
    void *a, *b, *c;

    (void)state;
    assert_non_null(p);
    a = bufpool_get(p, 64 * K);
    assert_non_null(a);
    memset(a, 1, 64 * K);
    bufpool_put(p, a, 64 * K);
    assert_int_equal(bufpool_held(p), 64 * K);
    b = bufpool_get(p, 64 * K);
    assert_ptr_equal(b, a); /* the same buffer again: no new mapping */
    assert_int_equal(bufpool_held(p), 0);
    c = bufpool_get(p, 32 * K); /* another size: malloc's */
    assert_non_null(c);
    bufpool_put(p, c, 32 * K);
    bufpool_put(p, b, 64 * K);
    assert_int_equal(bufpool_held(p), 96 * K);
    /* Not a power of two: never held. */
    c = bufpool_get(p, 3000);
    bufpool_put(p, c, 3000);
    assert_int_equal(bufpool_held(p), 96 * K);
    bufpool_free(p);
}

static void test_limit(void **state)
{
    struct bufpool *p = bufpool_new(1024 * K);
    void *v[3];

    (void)state;
    for (int i = 0; i < 3; i++)
        v[i] = bufpool_get(p, 512 * K);
    for (int i = 0; i < 3; i++)
        bufpool_put(p, v[i], 512 * K);
    assert_int_equal(bufpool_held(p), 1024 * K); /* the third went back to malloc */
    bufpool_free(p);
    /* No pool: plain malloc and free. */
    v[0] = bufpool_get(NULL, 64 * K);
    assert_non_null(v[0]);
    bufpool_put(NULL, v[0], 64 * K);
}

/* Four buffers held; the next period takes two and returns them: at the
 * trim, two were never needed and go; at the next trim, the two that were
 * used then stayed unused and go too. */
static void test_trim(void **state)
{
    static const struct {
        const char *name;
        int take;           /* buffers taken and returned in the period */
        size_t freed, held; /* by the trim that ends it, and held after */
    } steps[] = {
        {"a period with all four unused", 0, 4 * 64 * K, 0},
        {"refilled, two taken in the period", 2, 2 * 64 * K, 2 * 64 * K},
        {"both left unused", 0, 2 * 64 * K, 0},
    };
    struct bufpool *p = bufpool_new(8 * 1024 * K);
    void *v[4];

    (void)state;
    for (size_t i = 0; i < 4; i++)
        v[i] = bufpool_get(p, 64 * K);
    for (size_t i = 0; i < 4; i++)
        bufpool_put(p, v[i], 64 * K);
    /* They came back within this period (the fewest held in it was 0): the
     * trim keeps them, and the next period starts with four. */
    assert_int_equal(bufpool_trim(p), 0);
    for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
        if (s == 1) { /* refill to four */
            for (size_t i = 0; i < 4; i++)
                v[i] = bufpool_get(p, 64 * K);
            for (size_t i = 0; i < 4; i++)
                bufpool_put(p, v[i], 64 * K);
            bufpool_trim(p); /* the refill's period: the low mark was 0 */
        }
        for (int i = 0; i < steps[s].take; i++)
            v[i] = bufpool_get(p, 64 * K);
        for (int i = 0; i < steps[s].take; i++)
            bufpool_put(p, v[i], 64 * K);
        CHECK_INT(steps[s].name, bufpool_trim(p), steps[s].freed);
        CHECK_INT(steps[s].name, bufpool_held(p), steps[s].held);
    }
    bufpool_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reuse),
        cmocka_unit_test(test_limit),
        cmocka_unit_test(test_trim),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
