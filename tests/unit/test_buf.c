/* test_buf.c - struct buf: lazy storage, all-or-none appends, compaction,
 * and buf_take_line() over lines split across appends, CRLF and LF endings,
 * and over-long lines that are discarded before taking lines resumes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "px.h"

/* A script of buffer operations, each checked against its expected value. */
enum op_kind {
    OP_END = 0,
    OP_APPEND,  /* buf_append(text): want the return code */
    OP_WRITE,   /* buf_room(), copy text to buf_tail(), buf_commit() */
    OP_CONSUME, /* buf_consume(n) */
    OP_ROOM,    /* buf_room(): want it */
    OP_LEN,     /* buf_len(): want it */
    OP_HEAD,    /* the held bytes: want text */
    OP_STORAGE, /* storage allocated: want 1, or 0 */
    OP_SHRINK,
    OP_RESET,
};

struct op {
    enum op_kind kind;
    const char *text;
    long n; /* the count, or the wanted value */
};

struct script_case {
    const char *name;
    size_t cap;
    struct op ops[12];
};

static const struct script_case script_cases[] = {
    {"storage is lazy and given back",
     8,
     {{OP_STORAGE, NULL, 0},
      {OP_LEN, NULL, 0},
      {OP_ROOM, NULL, 8},
      {OP_STORAGE, NULL, 1},
      {OP_SHRINK, NULL, 0},
      {OP_STORAGE, NULL, 0},
      {OP_APPEND, "ab", 0},
      {OP_HEAD, "ab", 0}}},
    {"append is all or none",
     8,
     {{OP_APPEND, "12345", 0},
      {OP_APPEND, "6789", PX_ENOSPC},
      {OP_LEN, NULL, 5},
      {OP_APPEND, "678", 0},
      {OP_ROOM, NULL, 0},
      {OP_APPEND, "", 0},
      {OP_APPEND, "x", PX_ENOSPC},
      {OP_HEAD, "12345678", 0}}},
    {"room moves held bytes to the front",
     8,
     {{OP_APPEND, "abcdef", 0},
      {OP_CONSUME, NULL, 4},
      {OP_HEAD, "ef", 0},
      {OP_ROOM, NULL, 6},
      {OP_HEAD, "ef", 0},
      {OP_APPEND, "123456", 0},
      {OP_HEAD, "ef123456", 0}}},
    {"write through tail and commit",
     4,
     {{OP_WRITE, "hi", 0},
      {OP_WRITE, "yo", 0},
      {OP_HEAD, "hiyo", 0},
      {OP_CONSUME, NULL, 1},
      {OP_WRITE, "!", 0},
      {OP_HEAD, "iyo!", 0}}},
    {"shrink only when empty",
     8,
     {{OP_APPEND, "ab", 0},
      {OP_SHRINK, NULL, 0},
      {OP_STORAGE, NULL, 1},
      {OP_HEAD, "ab", 0},
      {OP_CONSUME, NULL, 2},
      {OP_SHRINK, NULL, 0},
      {OP_STORAGE, NULL, 0},
      {OP_APPEND, "xy", 0},
      {OP_HEAD, "xy", 0}}},
    {"reset drops bytes, keeps storage",
     8,
     {{OP_APPEND, "abc", 0},
      {OP_RESET, NULL, 0},
      {OP_LEN, NULL, 0},
      {OP_STORAGE, NULL, 1},
      {OP_ROOM, NULL, 8}}},
};

static void test_script(void **state)
{
    size_t i, k;

    (void)state;
    for (i = 0; i < PX_NELEM(script_cases); i++) {
        const struct script_case *c = &script_cases[i];
        struct buf b;

        buf_init(&b, c->cap);
        for (k = 0; k < PX_NELEM(c->ops) && c->ops[k].kind != OP_END; k++) {
            const struct op *o = &c->ops[k];
            size_t n;

            switch (o->kind) {
            case OP_APPEND:
                CHECK_INT(c->name, buf_append(&b, o->text, strlen(o->text)), o->n);
                break;
            case OP_WRITE:
                n = strlen(o->text);
                CHECK_INT(c->name, buf_room(&b) >= n, 1);
                memcpy(buf_tail(&b), o->text, n);
                buf_commit(&b, n);
                break;
            case OP_CONSUME:
                buf_consume(&b, (size_t)o->n);
                break;
            case OP_ROOM:
                CHECK_INT(c->name, buf_room(&b), o->n);
                break;
            case OP_LEN:
                CHECK_INT(c->name, buf_len(&b), o->n);
                break;
            case OP_HEAD:
                CHECK_INT(c->name, buf_len(&b), strlen(o->text));
                CHECK_INT(c->name, memcmp(buf_head(&b), o->text, buf_len(&b)), 0);
                break;
            case OP_STORAGE:
                CHECK_INT(c->name, b.data != NULL, o->n);
                break;
            case OP_SHRINK:
                buf_shrink(&b);
                break;
            case OP_RESET:
                buf_reset(&b);
                break;
            case OP_END:
                break;
            }
        }
        buf_free(&b);
        CHECK_INT(c->name, b.data == NULL && buf_len(&b) == 0, 1);
    }
}

/* Chunks are appended one at a time; after each, lines are taken until none
 * is left. The log shows each line as [text] and each PX_EMSGSIZE as E. */
struct line_case {
    const char *name;
    size_t cap, max;
    const char *chunks[5];
    const char *log;
};

static const struct line_case line_cases[] = {
    {"crlf", 32, 16, {"USER a\r\n"}, "[USER a]"},
    {"lf only", 32, 16, {"USER a\nPASS b\n"}, "[USER a][PASS b]"},
    {"split across appends", 32, 16, {"US", "ER a\r", "\n", "NOOP\r\n"}, "[USER a][NOOP]"},
    {"no line yet", 32, 16, {"USER a\r"}, ""},
    {"empty lines", 32, 16, {"\r\n\n"}, "[][]"},
    {"inner cr kept", 32, 16, {"a\rb\r\r\n"}, "[a\rb\r]"},
    {"exactly max", 32, 4, {"abcd\r\n"}, "[abcd]"},
    {"exactly max, lf only", 32, 4, {"abcd\n"}, "[abcd]"},
    {"max and cr wait for lf", 32, 4, {"abcd\r", "\n"}, "[abcd]"},
    {"max plus one waits, then too long", 32, 4, {"abcde", "\nok\n"}, "E[ok]"},
    {"over-long with lf", 32, 4, {"abcdefgh\r\nok\r\n"}, "E[ok]"},
    {"over-long seen before its lf", 32, 4, {"abcdef", "ghij", "kl\r\nok\r\n"}, "E[ok]"},
    {"over-long, lf in a later append", 32, 4, {"abcdef", "gh\r", "\nok\n"}, "E[ok]"},
    {"two over-long lines", 32, 2, {"abcd\nefgh\nxy\n"}, "EE[xy]"},
    {"full buffer is over-long", 8, 16, {"12345678", "9\nok\n"}, "E[ok]"},
    {"line after discard in same append", 32, 3, {"toolong", "\nabc\ndefg\nhi\n"}, "E[abc]E[hi]"},
};

static void test_take_line(void **state)
{
    size_t i, k;

    (void)state;
    for (i = 0; i < PX_NELEM(line_cases); i++) {
        const struct line_case *c = &line_cases[i];
        char log[256] = "";
        size_t used = 0;
        struct buf b;

        buf_init(&b, c->cap);
        for (k = 0; k < PX_NELEM(c->chunks) && c->chunks[k] != NULL; k++) {
            const char *line;
            size_t len;
            int rc;

            CHECK_INT(c->name, buf_append(&b, c->chunks[k], strlen(c->chunks[k])), 0);
            for (;;) {
                rc = buf_take_line(&b, c->max, &line, &len);
                if (rc == 0)
                    break;
                if (rc == 1) {
                    CHECK_INT(c->name, len <= c->max, 1);
                    used +=
                        (size_t)snprintf(log + used, sizeof log - used, "[%.*s]", (int)len, line);
                } else {
                    CHECK_INT(c->name, rc, PX_EMSGSIZE);
                    used += (size_t)snprintf(log + used, sizeof log - used, "E");
                }
                PX_ASSERT(used < sizeof log);
            }
        }
        CHECK_STR(c->name, log, c->log);
        buf_free(&b);
    }
}

/* While pinned (a socket write points into the held bytes), room comes only
 * after them: nothing moves, and appends that do not fit there fail. Once
 * unpinned, the bytes move to the front again when room runs short. */
static void test_pinned(void **state)
{
    struct buf b;
    const char *head;

    (void)state;
    buf_init(&b, 16);
    assert_int_equal(buf_append(&b, "0123456789abcdef", 16), 0);
    buf_consume(&b, 12); /* "cdef" left at offset 12 */
    b.pinned = 1;
    head = buf_head(&b);
    assert_int_equal(buf_room(&b), 0);
    assert_ptr_equal(buf_head(&b), head);
    assert_int_equal(buf_append(&b, "x", 1), PX_ENOSPC);
    assert_memory_equal(buf_head(&b), "cdef", 4);
    b.pinned = 0;
    assert_int_equal(buf_room(&b), 12);
    assert_memory_equal(buf_head(&b), "cdef", 4);
    assert_int_equal(buf_append(&b, "ghijklmnopqr", 12), 0);
    assert_memory_equal(buf_head(&b), "cdefghijklmnopqr", 16);
    buf_free(&b);
}

/* An elastic buffer: buf_grow multiplies by BUF_GROWTH up to max and keeps the bytes; while
 * pinned it waits, and grows at the consume that ends the write. A counting
 * allocator sees every byte given back. */
static long held_bytes;

static void *count_get(void *arg, size_t cap)
{
    (void)arg;
    held_bytes += (long)cap;
    return malloc(cap);
}

static void count_put(void *arg, void *p, size_t cap)
{
    (void)arg;
    held_bytes -= (long)cap;
    free(p);
}

static void test_grow(void **state)
{
    static const struct buf_alloc counting = {count_get, count_put, NULL};
    static const struct {
        size_t cap, max;
        size_t want[4]; /* capacity after each buf_grow */
        int rc[4];      /* and its result */
    } cases[] = {
        {16, 16, {16, 16, 16, 16}, {PX_ENOSPC, PX_ENOSPC, PX_ENOSPC, PX_ENOSPC}},
        {16, 64, {64, 64, 64, 64}, {0, PX_ENOSPC, PX_ENOSPC, PX_ENOSPC}},
        {16, 40, {40, 40, 40, 40}, {0, PX_ENOSPC, PX_ENOSPC, PX_ENOSPC}},
        {16, 1024, {128, 1024, 1024, 1024}, {0, 0, PX_ENOSPC, PX_ENOSPC}},
    };
    char name[32];

    (void)state;
    for (size_t i = 0; i < PX_NELEM(cases); i++) {
        struct buf b;

        snprintf(name, sizeof(name), "grow %zu", i);
        buf_init(&b, cases[i].cap);
        buf_set_max(&b, cases[i].max);
        buf_set_alloc(&b, &counting);
        CHECK_INT(name, buf_append(&b, "0123456789", 10), 0);
        buf_consume(&b, 3);
        for (size_t k = 0; k < 4; k++) {
            int rc = buf_grow(&b);

            CHECK_INT(name, buf_cap(&b), cases[i].want[k]);
            CHECK_INT(name, rc, cases[i].rc[k]);
            CHECK_INT(name, held_bytes, (long)buf_cap(&b));
            CHECK_INT(name, buf_len(&b), 7);
            CHECK_INT(name, memcmp(buf_head(&b), "3456789", 7), 0);
        }
        buf_free(&b);
        CHECK_INT(name, held_bytes, 0);
    }
}

static void test_grow_pinned(void **state)
{
    struct buf b;

    (void)state;
    buf_init(&b, 8);
    buf_set_max(&b, 128);
    assert_int_equal(buf_append(&b, "abcdefgh", 8), 0);
    b.pinned = 1;
    assert_int_equal(buf_grow(&b), PX_EBUSY);
    assert_int_equal(buf_cap(&b), 8);
    b.pinned = 0;
    buf_consume(&b, 2); /* the write is over: the growth happens now */
    assert_int_equal(buf_cap(&b), 64);
    assert_int_equal(buf_len(&b), 6);
    assert_memory_equal(buf_head(&b), "cdefgh", 6);
    assert_int_equal(buf_room(&b), 58);
    buf_consume(&b, 1); /* no growth was asked for since */
    assert_int_equal(buf_cap(&b), 64);
    buf_free(&b);
    /* Without storage, growing only sets the size of the next allocation. */
    buf_init(&b, 8);
    buf_set_max(&b, 32);
    assert_int_equal(buf_grow(&b), 0);
    assert_null(b.data);
    assert_int_equal(buf_room(&b), 32);
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_script),
        cmocka_unit_test(test_take_line),
        cmocka_unit_test(test_pinned),
        cmocka_unit_test(test_grow),
        cmocka_unit_test(test_grow_pinned),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
