/* test_route.c - host name matching, exact names over wildcards, and every
 * outcome of route_decide() over a struct cfg built by hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "check.h"

#include <string.h>

#include "cfg.h"
#include "px.h"
#include "route.h"

enum { ALPHA = 0, BETA, GAMMA };

static char *alpha_names[] = {"ftp.alpha.example", "*.alpha.example"};
/* An exact name inside alpha's wildcard: exact wins. */
static char *beta_names[] = {"beta.example", "x.alpha.example"};
static char *gamma_names[] = {"*.gamma.example"};

static struct cfg_backend backends[] = {
    {.name = "alpha", .hostnames = alpha_names, .n_hostnames = PX_NELEM(alpha_names)},
    {.name = "beta", .hostnames = beta_names, .n_hostnames = PX_NELEM(beta_names)},
    {.name = "gamma", .hostnames = gamma_names, .n_hostnames = PX_NELEM(gamma_names)},
};

static struct cfg make_cfg(bool route_by_sni, int default_backend)
{
    struct cfg c;

    memset(&c, 0, sizeof c);
    c.backends = backends;
    c.n_backends = PX_NELEM(backends);
    c.route_by_sni = route_by_sni;
    c.default_backend = default_backend;
    c.host_separator = '|';
    assert_int_equal(cfg_index_hosts(&c), 0);
    return c;
}

static void test_host_match(void **state)
{
    static const struct {
        const char *pattern, *name;
        bool match;
    } cases[] = {
        {"ftp.alpha.example", "ftp.alpha.example", true},
        {"ftp.alpha.example", "FTP.Alpha.EXAMPLE", true},
        {"ftp.alpha.example", "ftp.alpha.example.", true},
        {"ftp.alpha.example", "ftp.alpha.example..", false},
        {"ftp.alpha.example", "ftp.alpha.exampl", false},
        {"ftp.alpha.example", "ftp.alpha.examplex", false},
        {"ftp.alpha.example", "xftp.alpha.example", false},
        {"ftp.alpha.example", "", false},
        {"ftp.alpha.example", ".", false},
        {"*.alpha.example", "x.alpha.example", true},
        {"*.alpha.example", "X.ALPHA.example.", true},
        {"*.alpha.example", "alpha.example", false},
        {"*.alpha.example", ".alpha.example", false},
        {"*.alpha.example", "a.b.alpha.example", false},
        {"*.alpha.example", "xalpha.example", false},
        {"*.alpha.example", "x.alpha.example.com", false},
        {"*.alpha.example", "*.alpha.example", false}, /* '*' is no DNS label */
        {"*.alpha.example", "\x1b[2J<b>.alpha.example", false},
        {"*.alpha.example", "a_b.alpha.example", false},
        {"*.alpha.example", "a-1.alpha.example", true},
        {"*.alpha.example", "x.beta.example", false},
        {"alpha.example", "x.alpha.example", false},
    };
    size_t i;

    (void)state;
    for (i = 0; i < PX_NELEM(cases); i++) {
        CHECK_INT(cases[i].name,
                  route_host_match(cases[i].pattern, cases[i].name, strlen(cases[i].name)),
                  cases[i].match);
    }
}

static void test_find(void **state)
{
    static const struct {
        const char *name;
        int backend;
    } cases[] = {
        {"ftp.alpha.example", ALPHA}, {"other.alpha.example", ALPHA}, {"X.alpha.example", BETA},
        {"x.alpha.example.", BETA},   {"beta.example", BETA},         {"BETA.EXAMPLE.", BETA},
        {"a.gamma.example", GAMMA},   {"gamma.example", -1},          {"alpha.example", -1},
        {"a.b.gamma.example", -1},    {"nothing.example", -1},        {"", -1},
        {"\x1b[2J<b>.gamma.example", -1}, {"*.gamma.example", -1},      {"a b.gamma.example", -1},
    };
    struct cfg c = make_cfg(true, -1);
    size_t i;

    (void)state;
    for (i = 0; i < PX_NELEM(cases); i++)
        CHECK_INT(cases[i].name, route_find(&c, cases[i].name, strlen(cases[i].name)),
                  cases[i].backend);
    hmap_free(&c.hostmap);
}

struct decide_case {
    const char *name;
    bool route_by_sni;
    int default_backend;
    const char *user_host; /* NULL: USER named no host */
    int host_site, sni_site;
    enum route_status status;
    int backend;
};

static const struct decide_case decide_cases[] = {
    {"user host alone", true, -1, "ftp.alpha.example", -1, -1, ROUTE_OK, ALPHA},
    {"user host over default", true, GAMMA, "beta.example", -1, -1, ROUTE_OK, BETA},
    {"user host agrees with host and sni", true, -1, "ftp.alpha.example", ALPHA, ALPHA, ROUTE_OK,
     ALPHA},
    {"user host unknown", true, ALPHA, "nowhere.example", -1, -1, ROUTE_UNKNOWN_HOST, -1},
    {"user host unknown beats conflicts", true, -1, "nowhere.example", BETA, GAMMA,
     ROUTE_UNKNOWN_HOST, -1},
    {"user host against host", true, -1, "ftp.alpha.example", BETA, -1, ROUTE_CONFLICT_HOST, -1},
    {"user host against host and sni", true, -1, "ftp.alpha.example", BETA, GAMMA,
     ROUTE_CONFLICT_HOST, -1},
    {"user host against sni", true, -1, "ftp.alpha.example", -1, BETA, ROUTE_CONFLICT_SNI, -1},
    {"user host against sni, sni routing off", false, -1, "ftp.alpha.example", -1, BETA,
     ROUTE_CONFLICT_SNI, -1},
    {"host alone", true, -1, NULL, BETA, -1, ROUTE_OK, BETA},
    {"host over sni routing off", false, -1, NULL, BETA, -1, ROUTE_OK, BETA},
    {"host agrees with sni", true, -1, NULL, BETA, BETA, ROUTE_OK, BETA},
    {"host against sni", true, ALPHA, NULL, BETA, GAMMA, ROUTE_CONFLICT_SNI, -1},
    {"host against sni, sni routing off", false, -1, NULL, BETA, GAMMA, ROUTE_CONFLICT_SNI, -1},
    {"sni routes", true, ALPHA, NULL, -1, GAMMA, ROUTE_OK, GAMMA},
    {"sni routing off falls to default", false, ALPHA, NULL, -1, GAMMA, ROUTE_OK, ALPHA},
    {"sni routing off, no default", false, -1, NULL, -1, GAMMA, ROUTE_NO_SITE, -1},
    {"default", true, ALPHA, NULL, -1, -1, ROUTE_OK, ALPHA},
    {"nothing", true, -1, NULL, -1, -1, ROUTE_NO_SITE, -1},
};

static void test_decide(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < PX_NELEM(decide_cases); i++) {
        const struct decide_case *d = &decide_cases[i];
        struct cfg c = make_cfg(d->route_by_sni, d->default_backend);
        struct route_query q = {d->user_host, d->user_host ? strlen(d->user_host) : 0, d->host_site,
                                d->sni_site};
        int backend = 42;

        CHECK_INT(d->name, route_decide(&c, &q, &backend), d->status);
        CHECK_INT(d->name, backend, d->backend);
        hmap_free(&c.hostmap);
    }
}

static void test_status_name(void **state)
{
    static const struct {
        enum route_status s;
        const char *name;
    } cases[] = {
        {ROUTE_OK, "ok"},
        {ROUTE_UNKNOWN_HOST, "unknown_host"},
        {ROUTE_CONFLICT_HOST, "conflict_host"},
        {ROUTE_CONFLICT_SNI, "conflict_sni"},
        {ROUTE_NO_SITE, "no_site"},
    };
    size_t i;

    (void)state;
    for (i = 0; i < PX_NELEM(cases); i++)
        CHECK_INT(cases[i].name, strcmp(route_status_name(cases[i].s), cases[i].name), 0);
}

/* hmap_key2: two strings as one key; equal pairs find each other, pairs
 * that only concatenate alike ("ab"+"c", "a"+"bc") do not. */
static void test_key2(void **state)
{
    struct hmap m = {0};
    char k1[16], k2[16], k3[16], tiny[5];
    size_t n1 = hmap_key2(k1, sizeof(k1), "ab", "c"), n2 = hmap_key2(k2, sizeof(k2), "a", "bc");
    size_t n3 = hmap_key2(k3, sizeof(k3), "ab", "c");
    uint64_t v = 0;

    (void)state;
    CHECK_INT("length", (int)n1, 4);
    CHECK_INT("second string", strcmp(k1 + 3, "c"), 0);
    CHECK_INT("fits exactly", (int)hmap_key2(tiny, sizeof(tiny), "ab", "c"), 4);
    CHECK_INT("too long", (int)hmap_key2(tiny, sizeof(tiny), "ab", "cd"), 0);
    CHECK_INT("put", hmap_put(&m, k1, n1, 7, NULL), 0);
    CHECK_INT("same pair", hmap_get(&m, k3, n3, &v) && v == 7, 1);
    CHECK_INT("other split", hmap_get(&m, k2, n2, &v), 0);
    hmap_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_host_match),
        cmocka_unit_test(test_find),
        cmocka_unit_test(test_decide),
        cmocka_unit_test(test_status_name),
        cmocka_unit_test(test_key2),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
