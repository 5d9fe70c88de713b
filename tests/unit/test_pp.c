/* test_pp.c - PROXY protocol v1 and v2 headers: TCP4, TCP6, LOCAL, UNSPEC,
 * UNKNOWN and TLVs; each valid header cut at every byte (need more) and
 * followed by the next stage's bytes; garbage and wrong versions refused as
 * soon as the bytes stop matching. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "check.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "pp.h"
#include "px.h"

/* A literal with its length, so that NULs count. */
#define LIT(s) (const uint8_t *)(s), sizeof(s) - 1

#define V2_SIG "\r\n\r\n\0\r\nQUIT\n"
#define BOTH (PP_V1 | PP_V2)

/* Valid headers, each given without any bytes after it. */
struct pp_case {
    const char *name;
    const uint8_t *in;
    size_t len;
    unsigned versions;
    int rc; /* the header's length, as counted by hand */
    int version;
    bool local;
    int family;
    const char *src;
    unsigned sport;
    const char *dst;
    unsigned dport;
};

static const struct pp_case cases[] = {
    {"v1 tcp4", LIT("PROXY TCP4 192.0.2.1 198.51.100.7 56324 21\r\n"), BOTH, 44, 1, false, AF_INET,
     "192.0.2.1", 56324, "198.51.100.7", 21},
    {"v1 tcp4, v1 only", LIT("PROXY TCP4 10.0.0.1 10.0.0.2 0 65535\r\n"), PP_V1, 38, 1, false,
     AF_INET, "10.0.0.1", 0, "10.0.0.2", 65535},
    {"v1 tcp6", LIT("PROXY TCP6 2001:db8::1 2001:db8::2 56324 990\r\n"), BOTH, 46, 1, false,
     AF_INET6, "2001:db8::1", 56324, "2001:db8::2", 990},
    {"v1 tcp6 longest",
     LIT("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
         "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
         "65535 65535\r\n"),
     BOTH, 104, 1, false, AF_INET6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535,
     "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535},
    {"v1 unknown", LIT("PROXY UNKNOWN\r\n"), BOTH, 15, 1, true, AF_UNSPEC, NULL, 0, NULL, 0},
    {"v1 unknown with addresses", LIT("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"), BOTH, 35, 1, true,
     AF_UNSPEC, NULL, 0, NULL, 0},
    {"v1 unknown, 107 bytes",
     LIT("PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
         "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"),
     PP_V1, 107, 1, true, AF_UNSPEC, NULL, 0, NULL, 0},
    {"v2 tcp4",
     LIT(V2_SIG "\x21\x11\x00\x0c"
                "\xc0\x00\x02\x01"
                "\xc6\x33\x64\x07"
                "\xdc\x04"
                "\x00\x15"),
     BOTH, 28, 2, false, AF_INET, "192.0.2.1", 56324, "198.51.100.7", 21},
    {"v2 tcp6",
     LIT(V2_SIG "\x21\x21\x00\x24"
                "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01"
                "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x02"
                "\x01\xbb"
                "\x03\xde"),
     PP_V2, 52, 2, false, AF_INET6, "2001:db8::1", 443, "2001:db8::2", 990},
    {"v2 tcp4 with tlvs",
     LIT(V2_SIG "\x21\x11\x00\x19"
                "\x0a\x00\x00\x01"
                "\x0a\x00\x00\x02"
                "\x30\x39"
                "\x00\x15"
                "\x04\x00\x04noop"
                "\x02\x00\x03"
                "abc"),
     BOTH, 41, 2, false, AF_INET, "10.0.0.1", 12345, "10.0.0.2", 21},
    {"v2 local", LIT(V2_SIG "\x20\x00\x00\x00"), BOTH, 16, 2, true, AF_UNSPEC, NULL, 0, NULL, 0},
    {"v2 local ignores its family",
     LIT(V2_SIG "\x20\x11\x00\x0c"
                "\x0a\x00\x00\x01\x0a\x00\x00\x02\x30\x39\x00\x15"),
     PP_V2, 28, 2, true, AF_UNSPEC, NULL, 0, NULL, 0},
    {"v2 local with a short body", LIT(V2_SIG "\x20\x21\x00\x02xy"), PP_V2, 18, 2, true, AF_UNSPEC,
     NULL, 0, NULL, 0},
    {"v2 proxy unspec", LIT(V2_SIG "\x21\x00\x00\x03tlv"), BOTH, 19, 2, true, AF_UNSPEC, NULL, 0,
     NULL, 0},

};

/* Refused: PX_EPROTO for the whole input. */
struct bad_case {
    const char *name;
    const uint8_t *in;
    size_t len;
    unsigned versions;
};

static const struct bad_case bad_cases[] = {
    {"v1 header, v2 wanted", LIT("PROXY UNKNOWN\r\n"), PP_V2},
    {"v2 header, v1 wanted", LIT(V2_SIG "\x20\x00\x00\x00"), PP_V1},
    {"nothing wanted", LIT("PROXY UNKNOWN\r\n"), 0},
    {"http", LIT("GET / HTTP/1.1\r\n"), BOTH},
    {"ftp command", LIT("USER alice\r\n"), BOTH},
    {"tls client hello", LIT("\x16\x03\x01\x02\x00"), BOTH},
    {"lower case", LIT("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), BOTH},
    {"v1 lf only", LIT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), BOTH},
    {"v1 cr only", LIT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX"), BOTH},
    {"v1 tcp5", LIT("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"), BOTH},
    {"v1 two spaces", LIT("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"), BOTH},
    {"v1 octet 256", LIT("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n"), BOTH},
    {"v1 short ipv4", LIT("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n"), BOTH},
    {"v1 ipv6 in tcp4", LIT("PROXY TCP4 ::1 ::2 1 2\r\n"), BOTH},
    {"v1 ipv4 in tcp6", LIT("PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n"), BOTH},
    {"v1 bad ipv6", LIT("PROXY TCP6 1:::2 ::1 1 2\r\n"), BOTH},
    {"v1 port 65536", LIT("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"), BOTH},
    {"v1 port missing", LIT("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"), BOTH},
    {"v1 extra field", LIT("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"), BOTH},
    {"v1 unknownx", LIT("PROXY UNKNOWNX\r\n"), BOTH},
    {"v1 unknown lf only", LIT("PROXY UNKNOWN x\n"), BOTH},
    {"v1 unknown cr cr lf", LIT("PROXY UNKNOWN\r\r\n"), BOTH},
    {"v1 over 107 bytes",
     LIT("PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
         "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 655355\r\n"),
     BOTH},
    {"v2 version 1", LIT(V2_SIG "\x11\x11\x00\x0c"), BOTH},
    {"v2 version 3", LIT(V2_SIG "\x31\x11\x00\x0c"), BOTH},
    {"v2 command 2", LIT(V2_SIG "\x22\x11\x00\x0c"), BOTH},
    {"v2 udp4", LIT(V2_SIG "\x21\x12\x00\x0c"), BOTH},
    {"v2 udp6", LIT(V2_SIG "\x21\x22\x00\x24"), BOTH},
    {"v2 unix stream", LIT(V2_SIG "\x21\x31\x00\xd8"), BOTH},
    {"v2 unix dgram", LIT(V2_SIG "\x21\x32\x00\xd8"), BOTH},
    {"v2 family 4", LIT(V2_SIG "\x21\x41\x00\x0c"), BOTH},
    {"v2 tcp4 body too short", LIT(V2_SIG "\x21\x11\x00\x0b"), BOTH},
    {"v2 tcp6 body too short", LIT(V2_SIG "\x21\x21\x00\x23"), BOTH},
    {"v2 longer than the limit", LIT(V2_SIG "\x21\x11\x02\x09"), BOTH},
    {"v2 length 0xffff", LIT(V2_SIG "\x20\x00\xff\xff"), BOTH},
    {"v2 broken signature", LIT("\r\n\r\n\0\r\nQUIT\r"), BOTH},
};

static void check_addr(const char *name, const struct sockaddr_storage *ss, int family,
                       const char *addr, unsigned port)
{
    uint8_t want[16];

    CHECK_INT(name, ss->ss_family, family);
    if (family == AF_UNSPEC)
        return;
    CHECK_INT(name, inet_pton(family, addr, want), 1);
    if (family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

        CHECK_INT(name, memcmp(&sin->sin_addr, want, 4), 0);
        CHECK_INT(name, ntohs(sin->sin_port), port);
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;

        CHECK_INT(name, memcmp(&sin6->sin6_addr, want, 16), 0);
        CHECK_INT(name, ntohs(sin6->sin6_port), port);
    }
}

static void test_parse(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < PX_NELEM(cases); i++) {
        const struct pp_case *c = &cases[i];
        struct pp_header h;

        CHECK_INT(c->name, c->len, c->rc); /* the hand count matches the bytes */
        CHECK_INT(c->name, pp_parse(c->in, c->len, c->versions, &h), c->rc);
        CHECK_INT(c->name, h.version, c->version);
        CHECK_INT(c->name, h.local, c->local);
        check_addr(c->name, &h.src, c->family, c->src, c->sport);
        check_addr(c->name, &h.dst, c->family, c->dst, c->dport);
    }
}

/* A valid header cut anywhere needs more; followed by the next stage's bytes
 * it still ends where it did. */
static void test_truncated_and_followed(void **state)
{
    static const char next[] = "USER alice\r\n";
    size_t i, k;

    (void)state;
    for (i = 0; i < PX_NELEM(cases); i++) {
        const struct pp_case *c = &cases[i];
        uint8_t in[PP_MAX_LEN + sizeof next];
        struct pp_header h;

        for (k = 0; k < c->len; k++)
            CHECK_INT(c->name, pp_parse(c->in, k, c->versions, &h), 0);
        memcpy(in, c->in, c->len);
        memcpy(in + c->len, next, sizeof next - 1);
        CHECK_INT(c->name, pp_parse(in, c->len + sizeof next - 1, c->versions, &h), c->rc);
    }
}

static void test_refused(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < PX_NELEM(bad_cases); i++) {
        const struct bad_case *c = &bad_cases[i];
        struct pp_header h;

        CHECK_INT(c->name, pp_parse(c->in, c->len, c->versions, &h), PX_EPROTO);
    }
}

/* Bytes that can no longer become a header are refused at once: the
 * shortest prefix of each case that decides. */
static void test_early_refusal(void **state)
{
    static const struct {
        const char *name;
        const uint8_t *in;
        size_t len;
    } early[] = {
        {"first byte", LIT("G")},
        {"proxy then tab", LIT("PROXY\t")},
        {"tcp7", LIT("PROXY TCP7")},
        {"octet 256", LIT("PROXY TCP4 256")},
        {"four digits", LIT("PROXY TCP4 1.2.3.0001")},
        {"port 65536", LIT("PROXY TCP4 1.2.3.4 5.6.7.8 65536")},
        {"lf for crlf", LIT("PROXY UNKNOWN\n")},
        {"v6 letter", LIT("PROXY TCP6 fe80::g")},
        {"v2 sig", LIT("\r\n\r\n\0\r\nX")},
        {"v2 version", LIT(V2_SIG "\x10")},
        {"v2 udp", LIT(V2_SIG "\x21\x12")},
        {"v2 length", LIT(V2_SIG "\x21\x11\x7f\xff")},
    };
    size_t i, k;

    (void)state;
    for (i = 0; i < PX_NELEM(early); i++) {
        struct pp_header h;

        CHECK_INT(early[i].name, pp_parse(early[i].in, early[i].len, BOTH, &h), PX_EPROTO);
        for (k = 0; k + 1 < early[i].len; k++)
            CHECK_INT(early[i].name, pp_parse(early[i].in, k, BOTH, &h), 0);
    }
}

/* The longest v2 header accepted fills PP_MAX_LEN with TLVs. */
static void test_v2_longest(void **state)
{
    static const uint8_t head[] = V2_SIG "\x21\x11\x02\x08"
                                         "\x0a\x00\x00\x01\x0a\x00\x00\x02\x30\x39\x00\x15";
    uint8_t in[PP_MAX_LEN + 1];
    struct pp_header h;

    (void)state;
    memset(in, 0x04, sizeof in);
    memcpy(in, head, sizeof head - 1);
    CHECK_INT("longest", pp_parse(in, PP_MAX_LEN - 1, PP_V2, &h), 0);
    CHECK_INT("longest", pp_parse(in, PP_MAX_LEN, PP_V2, &h), PP_MAX_LEN);
    CHECK_INT("longest", pp_parse(in, sizeof in, PP_V2, &h), PP_MAX_LEN);
    CHECK_INT("longest", h.src.ss_family, AF_INET);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),      cmocka_unit_test(test_truncated_and_followed),
        cmocka_unit_test(test_refused),    cmocka_unit_test(test_early_refusal),
        cmocka_unit_test(test_v2_longest),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
