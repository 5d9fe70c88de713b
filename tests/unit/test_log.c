/* test_log.c - log lines of log.c (linked alone, with px.c): every line parses
 * back, in text and JSON, whatever the values; a line never exceeds 4096
 * bytes; a long value is cut with its "...(+N bytes)" marker, never inside an
 * escape sequence or a UTF-8 character, and every field after it is kept.
 *
 * log_ev() writes to standard error: each case points descriptor 2 at a
 * temporary file for the call and reads the line back. Lines are parsed by
 * strict little parsers of the two formats, so a cut quote or escape fails. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "check.h"
#include "log.h"

#define LINE_MAX_BYTES 4096
#define NKV 40

struct kv {
    char key[32];
    char val[LINE_MAX_BYTES]; /* unescaped */
    size_t len;
};

struct parsed {
    struct kv kv[NKV];
    size_t n;
};

/* ---- capturing one line ---- */

static char out[4 * LINE_MAX_BYTES];
static size_t out_len;

static int capture_begin(void)
{
    FILE *f = tmpfile();
    int saved = dup(STDERR_FILENO);

    assert_non_null(f);
    assert_true(saved >= 0);
    assert_true(dup2(fileno(f), STDERR_FILENO) >= 0);
    fclose(f); /* descriptor 2 keeps the file */
    return saved;
}

static void capture_end(int saved)
{
    ssize_t n;

    assert_true(lseek(STDERR_FILENO, 0, SEEK_SET) == 0);
    n = read(STDERR_FILENO, out, sizeof(out) - 1);
    assert_true(n >= 0);
    out_len = (size_t)n;
    out[out_len] = '\0';
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
}

/* ---- strict parsers ---- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static void add_kv(struct parsed *p, const char *k, size_t klen)
{
    assert_true(p->n < NKV);
    assert_true(klen > 0 && klen < sizeof(p->kv[0].key));
    memcpy(p->kv[p->n].key, k, klen);
    p->kv[p->n].key[klen] = '\0';
    p->kv[p->n].len = 0;
    p->n++;
}

static void add_byte(struct parsed *p, int c)
{
    struct kv *kv = &p->kv[p->n - 1];

    assert_true(kv->len < sizeof(kv->val) - 1);
    kv->val[kv->len++] = (char)c;
    kv->val[kv->len] = '\0';
}

/* A quoted string from s (at its opening quote); json selects \u00XX or \xXX
 * escapes. Returns the position after the closing quote, or NULL. */
static const char *parse_quoted(struct parsed *p, const char *s, bool json)
{
    if (*s++ != '"')
        return NULL;
    for (;;) {
        int hi, lo;

        if (*s == '\0' || *s == '\n')
            return NULL; /* unterminated */
        if (*s == '"')
            return s + 1;
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
            return NULL; /* raw byte that should have been escaped */
        if (*s != '\\') {
            add_byte(p, *s++);
            continue;
        }
        s++;
        if (*s == '"' || *s == '\\') {
            add_byte(p, *s++);
            continue;
        }
        if (json) {
            if (strncmp(s, "u00", 3) != 0)
                return NULL;
            s += 3;
        } else if (*s++ != 'x') {
            return NULL;
        }
        hi = hexval(s[0]);
        lo = hexval(hi < 0 ? '\0' : s[1]);
        if (hi < 0 || lo < 0)
            return NULL;
        add_byte(p, hi * 16 + lo);
        s += 2;
    }
}

static bool is_key_char(char c)
{
    return (c >= 'a' && c <= 'z') || c == '_';
}

/* TIME LEVEL key=value ...: values bare (no space, quote, '=' or backslash)
 * or quoted. */
static bool parse_text(const char *line, struct parsed *p)
{
    const char *s = line;

    p->n = 0;
    for (int i = 0; i < 2; i++) { /* time and level, as pseudo-fields */
        const char *e = strchr(s, ' ');

        if (e == NULL)
            return false;
        add_kv(p, i == 0 ? "time" : "level", i == 0 ? 4 : 5);
        for (; s < e; s++)
            add_byte(p, *s);
        s++;
    }
    for (;;) {
        const char *k = s;

        while (is_key_char(*s))
            s++;
        if (*s != '=' || s == k)
            return false;
        add_kv(p, k, (size_t)(s - k));
        s++;
        if (*s == '"') {
            s = parse_quoted(p, s, false);
            if (s == NULL)
                return false;
        } else {
            if (*s == ' ' || *s == '\n')
                return false; /* an empty value is written "" */
            while (*s != ' ' && *s != '\n' && *s != '\0') {
                if (*s == '"' || *s == '=' || *s == '\\' || (unsigned char)*s >= 0x7f)
                    return false;
                add_byte(p, *s++);
            }
        }
        if (*s == '\n')
            return s[1] == '\0';
        if (*s++ != ' ')
            return false;
    }
}

/* {"key":"string" or digits, ...} */
static bool parse_json(const char *line, struct parsed *p)
{
    const char *s = line;

    p->n = 0;
    if (*s++ != '{')
        return false;
    for (;;) {
        size_t before = p->n;
        const char *k = s + 1;

        if (*s != '"')
            return false;
        s = strchr(k, '"');
        if (s == NULL)
            return false;
        add_kv(p, k, (size_t)(s - k));
        if (s[1] != ':')
            return false;
        s += 2;
        if (*s == '"') {
            s = parse_quoted(p, s, true);
            if (s == NULL)
                return false;
        } else {
            if (*s < '0' || *s > '9')
                return false;
            while (*s >= '0' && *s <= '9')
                add_byte(p, *s++);
        }
        assert_int_equal(p->n, before + 1);
        if (*s == '}')
            return strcmp(s, "}\n") == 0;
        if (*s++ != ',')
            return false;
    }
}

static const struct kv *get(const struct parsed *p, const char *key)
{
    for (size_t i = 0; i < p->n; i++)
        if (strcmp(p->kv[i].key, key) == 0)
            return &p->kv[i];
    return NULL;
}

/* ---- the cases ---- */

struct log_case {
    const char *name;
    const char *path; /* the transfer's path, NULL: made by make */
    void (*make)(char *dst, size_t cap);
    const char *extra; /* a second long value ("note"), NULL: none */
    void (*make_extra)(char *dst, size_t cap);
};

static void many_e_acute(char *dst, size_t cap) /* 1,000 x U+00E9 */
{
    size_t i = 0;

    for (int n = 0; n < 1000 && i + 2 < cap; n++) {
        dst[i++] = (char)0xc3;
        dst[i++] = (char)0xa9;
    }
    dst[i] = '\0';
}

static void many_quotes(char *dst, size_t cap) /* every byte escapes to two */
{
    size_t n = 4095 < cap - 1 ? 4095 : cap - 1;

    memset(dst, '"', n);
    dst[n] = '\0';
}

static void many_controls(char *dst, size_t cap) /* every byte escapes to 4 or 6 */
{
    size_t n = 3000 < cap - 1 ? 3000 : cap - 1;

    for (size_t i = 0; i < n; i++)
        dst[i] = (char)(1 + i % 31);
    dst[n] = '\0';
}

static void many_ascii(char *dst, size_t cap) /* bare in text, until cut */
{
    size_t n = 5000 < cap - 1 ? 5000 : cap - 1;

    for (size_t i = 0; i < n; i++)
        dst[i] = (char)('a' + i % 26);
    dst[n] = '\0';
}

static void four_byte_chars(char *dst, size_t cap) /* U+1F600, 1,200 times */
{
    static const unsigned char smile[] = {0xf0, 0x9f, 0x98, 0x80};
    size_t i = 0;

    while (i + 4 < cap && i < 4800) {
        memcpy(dst + i, smile, 4);
        i += 4;
    }
    dst[i] = '\0';
}

static const struct log_case cases[] = {
    {"short path", "/hello.txt", NULL, NULL, NULL},
    {"quote, backslash, control", "/a \"b\" \\c\x01\x7f", NULL, NULL, NULL},
    {"empty path", "", NULL, NULL, NULL},
    {"1,000 e-acute", NULL, many_e_acute, NULL, NULL},
    {"4,095 quotes", NULL, many_quotes, NULL, NULL},
    {"3,000 control bytes", NULL, many_controls, NULL, NULL},
    {"5,000 letters", NULL, many_ascii, NULL, NULL},
    {"4-byte characters", NULL, four_byte_chars, NULL, NULL},
    {"two long values", NULL, many_e_acute, NULL, many_ascii},
    {"short path, long note", "/x", NULL, NULL, many_controls},
};

static char path_buf[8192], note_buf[8192];

/* Logs the case's transfer line in one format; returns the parsed line. */
static void log_case_line(const struct log_case *c, enum cfg_log_format fmt, struct parsed *p)
{
    struct log_sess s = {.sid = 42, .site = "ftp.alpha.test", .backend = "alpha"};
    const char *path = c->path, *note = c->extra;
    int saved;
    bool ok;

    memcpy(s.client, "127.0.0.1:40000", sizeof("127.0.0.1:40000"));
    memcpy(s.user, "anonymous", sizeof("anonymous"));
    if (path == NULL) {
        c->make(path_buf, sizeof(path_buf));
        path = path_buf;
    }
    if (note == NULL && c->make_extra != NULL) {
        c->make_extra(note_buf, sizeof(note_buf));
        note = note_buf;
    }
    log_setup(CFG_LOG_DEBUG, fmt);
    saved = capture_begin();
    log_ev(CFG_LOG_INFO, &s, "transfer", "command", "RETR", "path", path, "note", note, "direction",
           "download", "bytes", "17", "duration_ms", "1", "reply", "226", "result", "ok", NULL);
    capture_end(saved);
    if (out_len > LINE_MAX_BYTES || out_len == 0 || out[out_len - 1] != '\n' ||
        strchr(out, '\n') != out + out_len - 1)
        fail_msg("case \"%s\" (%s): %zu bytes, not one line of at most %d", c->name,
                 fmt == CFG_LOG_JSON ? "json" : "text", out_len, LINE_MAX_BYTES);
    ok = fmt == CFG_LOG_JSON ? parse_json(out, p) : parse_text(out, p);
    if (!ok) {
        fprintf(stderr, "%s", out);
        fail_msg("case \"%s\": the %s line (above) does not parse", c->name,
                 fmt == CFG_LOG_JSON ? "json" : "text");
    }
}

/* The value v logged for `full`: whole, or a prefix of it ending at a
 * character boundary, then the marker counting what was left out. */
static void check_value(const char *name, const struct kv *v, const char *full)
{
    size_t flen = strlen(full), keep;
    const char *m;
    char want[64];

    if (v == NULL)
        fail_msg("case \"%s\": a value is missing", name);
    if (v->len == flen && memcmp(v->val, full, flen) == 0)
        return;
    m = strstr(v->val, "...(+");
    if (m == NULL)
        fail_msg("case \"%s\": the value changed without a marker", name);
    while (strstr(m + 1, "...(+") != NULL)
        m = strstr(m + 1, "...(+");
    keep = (size_t)(m - v->val);
    if (keep > flen || memcmp(v->val, full, keep) != 0)
        fail_msg("case \"%s\": the kept part is not a prefix of the value", name);
    snprintf(want, sizeof(want), "...(+%zu bytes)", flen - keep);
    if (strcmp(m, want) != 0)
        fail_msg("case \"%s\": marker \"%s\", want \"%s\"", name, m, want);
    /* Cut at a character boundary: the first byte left out starts one. */
    if (((unsigned char)full[keep] & 0xc0) == 0x80)
        fail_msg("case \"%s\": cut inside a UTF-8 character (at byte %zu)", name, keep);
    /* Something of a long value is kept, not only its marker. */
    if (keep < 100)
        fail_msg("case \"%s\": only %zu bytes kept", name, keep);
}

static void check_case(const struct log_case *c, enum cfg_log_format fmt)
{
    static const char *const fixed[][2] = {
        {"ev", "transfer"},
        {"sid", "42"},
        {"client", "127.0.0.1:40000"},
        {"site", "ftp.alpha.test"},
        {"backend", "alpha"},
        {"user", "anonymous"},
        {"command", "RETR"},
        {"direction", "download"},
        {"bytes", "17"},
        {"duration_ms", "1"},
        {"reply", "226"},
        {"result", "ok"},
        {"level", "info"},
    };
    static struct parsed p;

    log_case_line(c, fmt, &p);
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        const struct kv *v = get(&p, fixed[i][0]);

        if (v == NULL || strcmp(v->val, fixed[i][1]) != 0)
            fail_msg("case \"%s\" (%s): %s is \"%s\", want \"%s\"\n%s", c->name,
                     fmt == CFG_LOG_JSON ? "json" : "text", fixed[i][0],
                     v == NULL ? "(missing)" : v->val, fixed[i][1], out);
    }
    assert_non_null(get(&p, "time"));
    check_value(c->name, get(&p, "path"), c->path != NULL ? c->path : path_buf);
    if (c->extra != NULL || c->make_extra != NULL)
        check_value(c->name, get(&p, "note"), c->extra != NULL ? c->extra : note_buf);
    else
        CHECK_INT(c->name, get(&p, "note") == NULL, 1);
}

static void test_lines_parse_and_keep_every_field(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        check_case(&cases[i], CFG_LOG_TEXT);
        check_case(&cases[i], CFG_LOG_JSON);
    }
}

/* Long values share the room evenly: about 1,900 escaped bytes each, that
 * is some 235 e-acute of the path (8 bytes each: \xc3\xa9) and 1,880
 * letters of the note. */
static void test_long_values_share_the_line(void **state)
{
    static struct parsed p;
    const struct log_case c = {"two long values", NULL, many_e_acute, NULL, many_ascii};

    (void)state;
    log_case_line(&c, CFG_LOG_TEXT, &p);
    CHECK_INT(c.name, get(&p, "path")->len > 2 * 220, 1);
    CHECK_INT(c.name, get(&p, "note")->len > 1700, 1);
    /* The line is used: a cut line is close to the limit. */
    CHECK_INT(c.name, out_len > LINE_MAX_BYTES - 100, 1);
}

/* Short values come out exactly as before: bare where they can be. */
static void test_short_line_exact(void **state)
{
    struct log_sess s = {.sid = 7, .site = NULL, .backend = NULL};
    const char *text;
    int saved;

    (void)state;
    memcpy(s.client, "[::1]:21", sizeof("[::1]:21"));
    log_setup(CFG_LOG_INFO, CFG_LOG_TEXT);
    saved = capture_begin();
    log_ev(CFG_LOG_INFO, &s, "close", "reason", "client quit", "empty", "", "skipped", NULL, "n",
           "5", NULL);
    log_ev(CFG_LOG_DEBUG, &s, "command", "verb", "NOOP", NULL); /* below the level */
    capture_end(saved);
    text = strchr(out, ' ');
    assert_non_null(text);
    assert_string_equal(
        text, " info ev=close sid=7 client=[::1]:21 reason=\"client quit\" empty=\"\" n=5\n");
    log_setup(CFG_LOG_INFO, CFG_LOG_JSON);
    saved = capture_begin();
    log_ev(CFG_LOG_WARN, NULL, "stopping", "sessions", "3", NULL);
    capture_end(saved);
    text = strstr(out, "\",\"level\"");
    assert_non_null(text);
    assert_string_equal(text, "\",\"level\":\"warn\",\"ev\":\"stopping\",\"sessions\":\"3\"}\n");
}

/* log_text: a line taken from a buffer (no NUL) becomes a string, cut to fit. */
static void test_text_of_unterminated_line(void **state)
{
    const char raw[] = "500 OOPS: child died\r\n220 next";
    char dst[32], small[8];

    (void)state;
    assert_string_equal(log_text(dst, sizeof(dst), raw, 20), "500 OOPS: child died");
    assert_string_equal(log_text(small, sizeof(small), raw, 20), "500 OOP");
    assert_string_equal(log_text(dst, sizeof(dst), raw, 0), "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lines_parse_and_keep_every_field),
        cmocka_unit_test(test_long_values_share_the_line),
        cmocka_unit_test(test_short_line_exact),
        cmocka_unit_test(test_text_of_unterminated_line),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
