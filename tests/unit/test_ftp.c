/* test_ftp.c - the FTP text layer: commands, Telnet stripping, reply framing
 * (line by line and as a byte stream split at every offset), the address
 * parsers and formatters, USER host|user, HOST arguments and FEAT filtering. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "check.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "ftp.h"
#include "px.h"

#define CHECK_MEM(name, got, got_len, want)                                                        \
    do {                                                                                           \
        if ((got_len) != strlen(want) || memcmp((got), (want), (got_len)) != 0) {                  \
            print_message("case \"%s\": %s is \"%.*s\", want \"%s\"\n", (name), #got,              \
                          (int)(got_len), (got), (want));                                          \
            fail();                                                                                \
        }                                                                                          \
    } while (0)

/* A literal with its length, so that embedded NULs count. */
#define LIT(s) s, sizeof(s) - 1

struct command_case {
    const char *name;
    const char *line;
    size_t len;
    int rc;
    const char *verb, *arg;
};

static const struct command_case command_cases[] = {
    {"verb and arg", LIT("USER alice"), 0, "USER", "alice"},
    {"lower case folded", LIT("user alice"), 0, "USER", "alice"},
    {"mixed case", LIT("pAsV"), 0, "PASV", ""},
    {"one letter", LIT("X"), 0, "X", ""},
    {"three letters", LIT("cwd /a b"), 0, "CWD", "/a b"},
    {"trailing space, empty arg", LIT("NOOP "), 0, "NOOP", ""},
    {"second space belongs to arg", LIT("USER  a"), 0, "USER", " a"},
    {"arg keeps its case", LIT("RETR File.TXT"), 0, "RETR", "File.TXT"},
    {"empty line", LIT(""), PX_EINVAL, NULL, NULL},
    {"five letters", LIT("ABCDE x"), PX_EINVAL, NULL, NULL},
    {"leading space", LIT(" USER a"), PX_EINVAL, NULL, NULL},
    {"digit in verb", LIT("US3R a"), PX_EINVAL, NULL, NULL},
    {"tab after verb", LIT("USER\ta"), PX_EINVAL, NULL, NULL},
    {"nul in arg", LIT("USER a\0b"), PX_EINVAL, NULL, NULL},
    {"nul in verb", LIT("US\0R"), PX_EINVAL, NULL, NULL},
    {"cr in arg", LIT("USER a\rPASS b"), PX_EINVAL, NULL, NULL},
    {"lf in arg", LIT("USER a\nb"), PX_EINVAL, NULL, NULL},
    {"high byte in verb", LIT("\xc3\x9cSER a"), PX_EINVAL, NULL, NULL},
    {"telnet left in", LIT("\377\364\377\362ABOR"), PX_EINVAL, NULL, NULL},
};

static void test_parse_command(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < PX_NELEM(command_cases); i++) {
        const struct command_case *c = &command_cases[i];
        struct ftp_cmd cmd;

        CHECK_INT(c->name, ftp_parse_command(c->line, c->len, &cmd), c->rc);
        if (c->rc != 0)
            continue;
        CHECK_MEM(c->name, cmd.verb, strlen(cmd.verb), c->verb);
        CHECK_MEM(c->name, cmd.arg, cmd.arg_len, c->arg);
    }
}

struct telnet_case {
    const char *name;
    const char *in;
    size_t len;
    const char *out;
    size_t out_len;
};

static const struct telnet_case telnet_cases[] = {
    {"plain", LIT("ABOR"), LIT("ABOR")},
    /* Octal escapes, so that no letter after them is read as a hex digit. */
    {"ip dm before abor", LIT("\377\364\377\362ABOR"), LIT("ABOR")},
    {"iac iac is one 0xff", LIT("RETR a\377\377b"), LIT("RETR a\377b")},
    {"will x removed", LIT("NO\xff\xfb\x01OP"), LIT("NOOP")},
    {"dont x removed", LIT("NO\xff\xfe\x22OP"), LIT("NOOP")},
    {"lone iac at end", LIT("NOOP\xff"), LIT("NOOP")},
    {"will cut short at end", LIT("NOOP\xff\xfd"), LIT("NOOP")},
    {"two byte command at end", LIT("NOOP\xff\xf1"), LIT("NOOP")},
    {"empty", LIT(""), LIT("")},
    {"only iac iac", LIT("\xff\xff\xff\xff"), LIT("\xff\xff")},
};

static void test_strip_telnet(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < PX_NELEM(telnet_cases); i++) {
        const struct telnet_case *c = &telnet_cases[i];
        char line[64];
        size_t n;

        memcpy(line, c->in, c->len);
        n = ftp_strip_telnet(line, c->len);
        CHECK_INT(c->name, n, c->out_len);
        CHECK_INT(c->name, memcmp(line, c->out, n), 0);
    }
}

static void test_cmd_is_secret(void **state)
{
    static const struct {
        const char *line;
        bool secret;
    } cases[] = {
        {"PASS hunter2", true}, {"pass x", true}, {"ACCT a", true},
        {"USER bob", false},    {"PASV", false},  {"PAS x", false},
    };
    size_t i;

    (void)state;
    for (i = 0; i < PX_NELEM(cases); i++) {
        struct ftp_cmd cmd;

        CHECK_INT(cases[i].line, ftp_parse_command(cases[i].line, strlen(cases[i].line), &cmd), 0);
        CHECK_INT(cases[i].line, ftp_cmd_is_secret(&cmd), cases[i].secret);
    }
}

/* Lines fed one by one to ftp_reply_line(), with the result wanted after
 * each, and the code and line count once the last one is fed. */
struct reply_line_case {
    const char *name;
    const char *lines[6];
    int rc[6];
    int code;
    bool multi;
};

static const struct reply_line_case reply_line_cases[] = {
    {"single", {"200 OK"}, {1}, 200, false},
    {"bare code", {"200"}, {1}, 200, false},
    {"multi", {"230-Welcome", "230 Done"}, {0, 1}, 230, true},
    {"inner lines with other codes",
     {"211-Features:", " MDTM", "500 not the end", "211-still not", "211 End"},
     {0, 0, 0, 0, 1},
     211,
     true},
    {"inner empty line", {"220-Hi", "", "220 Ready"}, {0, 0, 1}, 220, true},
    {"same code without space", {"226-a", "226", "226b", "226 end"}, {0, 0, 0, 1}, 226, true},
    {"new reply after done", {"200 OK", "331 Password"}, {1, 1}, 331, false},
    {"code 100", {"100 x"}, {1}, 100, false},
    {"code 599", {"599 x"}, {1}, 599, false},
    {"code 600", {"600 x"}, {PX_EPROTO}, 0, false},
    {"code 099", {"099 x"}, {PX_EPROTO}, 0, false},
    {"two digits", {"20 x"}, {PX_EPROTO}, 0, false},
    {"letter after code", {"200x"}, {PX_EPROTO}, 0, false},
    {"no code", {"hello"}, {PX_EPROTO}, 0, false},
    {"empty first line", {""}, {PX_EPROTO}, 0, false},
};

static void test_reply_line(void **state)
{
    size_t i, k;

    (void)state;
    for (i = 0; i < PX_NELEM(reply_line_cases); i++) {
        const struct reply_line_case *c = &reply_line_cases[i];
        struct ftp_reply r = {0};

        for (k = 0; k < PX_NELEM(c->lines) && c->lines[k] != NULL; k++)
            CHECK_INT(c->name, ftp_reply_line(&r, c->lines[k], strlen(c->lines[k])), c->rc[k]);
        CHECK_INT(c->name, r.code, c->code);
        if (c->code != 0)
            CHECK_INT(c->name, r.multi, c->multi);
    }
}

/* Raw bytes to ftp_reply_feed(): what the first reply takes, with its code
 * and line count. */
struct feed_case {
    const char *name;
    const char *in;
    int rc;
    int code;
    unsigned lines;
};

static const struct feed_case feed_cases[] = {
    {"single crlf", "220 Ready\r\n", 11, 220, 1},
    {"single lf", "220 Ready\n", 10, 220, 1},
    {"stops after first reply", "331 Pass\r\n230 OK\r\n", 10, 331, 1},
    {"multi", "230-Hello\r\n230-more\r\n 230 indented\r\n230 Done\r\n", 46, 230, 4},
    {"multi with other codes", "211-Feat\r\n500 x\r\n211-y\r\n211 End\r\n", 33, 211, 4},
    {"incomplete line", "220 Rea", 0, 0, 0},
    {"incomplete multi", "230-Hello\r\n230-more\r\n", 0, 0, 0},
    {"no lf after cr", "220 Ready\r", 0, 0, 0},
    {"bad first line", "hello\r\n", PX_EPROTO, 0, 0},
    {"bad code", "999 x\r\n", PX_EPROTO, 0, 0},
    {"empty", "", 0, 0, 0},
};

static void test_reply_feed(void **state)
{
    size_t i, k;

    (void)state;
    for (i = 0; i < PX_NELEM(feed_cases); i++) {
        const struct feed_case *c = &feed_cases[i];
        size_t len = strlen(c->in);
        struct ftp_reply r = {0};

        CHECK_INT(c->name, ftp_reply_feed(&r, c->in, len), c->rc);
        if (c->rc > 0) {
            CHECK_INT(c->name, r.code, c->code);
            CHECK_INT(c->name, r.lines, c->lines);
            CHECK_INT(c->name, r.done, 1);
        }
        /* Any shorter prefix of a complete reply needs more and leaves r. */
        for (k = 0; c->rc > 0 && k < (size_t)c->rc; k++) {
            struct ftp_reply before = {0}, t = before;

            CHECK_INT(c->name, ftp_reply_feed(&t, c->in, k), 0);
            CHECK_INT(c->name, memcmp(&t, &before, sizeof t), 0);
        }
    }
}

/* A stream of several replies, delivered split at every offset into two
 * reads, must give the same replies as when it arrives at once. */
static void test_reply_feed_split(void **state)
{
    static const char stream[] = "220-Welcome\r\n220-to\r\n220 here\r\n"
                                 "331 Password required\n"
                                 "230-Hi\r\n\r\n230\r\n 230 x\r\n230 Logged in\r\n"
                                 "227 Entering Passive Mode (127,0,0,1,195,80).\r\n";
    static const int codes[] = {220, 331, 230, 227};
    size_t len = sizeof stream - 1, split;

    (void)state;
    for (split = 0; split <= len; split++) {
        struct ftp_reply r = {0};
        size_t pos = 0, have = split, got = 0;
        char name[32];

        snprintf(name, sizeof name, "split at %zu", split);
        while (pos < len) {
            int rc = ftp_reply_feed(&r, stream + pos, have - pos);

            CHECK_INT(name, rc >= 0, 1);
            if (rc == 0) {
                CHECK_INT(name, have < len, 1);
                have = len; /* the second read arrives */
                continue;
            }
            CHECK_INT(name, (size_t)rc <= have - pos, 1);
            CHECK_INT(name, got < PX_NELEM(codes), 1);
            CHECK_INT(name, r.code, codes[got]);
            got++;
            pos += (size_t)rc;
        }
        CHECK_INT(name, got, PX_NELEM(codes));
    }
}

static void test_reply_feed_long_line(void **state)
{
    static char in[FTP_LINE_MAX + 16];
    struct ftp_reply r = {0};

    (void)state;
    /* Exactly FTP_LINE_MAX bytes before CRLF: fine, and undecided until the LF. */
    memset(in, 'x', sizeof in);
    memcpy(in, "200 ", 4);
    memcpy(in + FTP_LINE_MAX, "\r\n", 2);
    CHECK_INT("max line", ftp_reply_feed(&r, in, FTP_LINE_MAX + 2), FTP_LINE_MAX + 2);
    CHECK_INT("max line and cr", ftp_reply_feed(&r, in, FTP_LINE_MAX + 1), 0);
    /* One byte more: too long once the LF arrives, or as soon as the bytes
     * without an LF could no longer be a line, its CR and an LF to come. */
    memcpy(in + FTP_LINE_MAX, "x\r\n", 3);
    CHECK_INT("max+1 line", ftp_reply_feed(&r, in, FTP_LINE_MAX + 3), PX_EMSGSIZE);
    CHECK_INT("max+1 bytes, no lf", ftp_reply_feed(&r, in, FTP_LINE_MAX + 1), 0);
    CHECK_INT("max+2 bytes, no lf", ftp_reply_feed(&r, in, FTP_LINE_MAX + 2), PX_EMSGSIZE);
    /* In a multi-line reply, an inner line is held to the same limit. */
    memset(in, 'x', sizeof in);
    memcpy(in, "230-\n", 5);
    memcpy(in + 5 + FTP_LINE_MAX + 1, "\r\n", 2);
    CHECK_INT("long inner line", ftp_reply_feed(&r, in, FTP_LINE_MAX + 8), PX_EMSGSIZE);
}

/* The four address parsers share this table: which parser, the input, and
 * the address and port wanted (family 0: no address, as EPSV gives). */
enum addr_parser { PASV_REPLY, EPSV_REPLY, PORT_ARG, EPRT_ARG };

struct addr_case {
    const char *name;
    enum addr_parser parser;
    const char *in;
    int rc;
    int family;
    const char *addr;
    unsigned port;
};

static const struct addr_case addr_cases[] = {
    {"pasv usual", PASV_REPLY, "Entering Passive Mode (127,0,0,1,195,80).", 0, 4, "127.0.0.1",
     50000},
    {"pasv no parens", PASV_REPLY, "Entering Passive Mode 10,1,2,3,4,1", 0, 4, "10.1.2.3", 1025},
    {"pasv equals", PASV_REPLY, "=192,168,0,1,0,21", 0, 4, "192.168.0.1", 21},
    {"pasv number before run", PASV_REPLY, "Mode 2 ok (1,2,3,4,0,1)", 0, 4, "1.2.3.4", 1},
    {"pasv short run skipped", PASV_REPLY, "1,2,3 then 5,6,7,8,9,10", 0, 4, "5.6.7.8", 2314},
    {"pasv all 255", PASV_REPLY, "(255,255,255,255,255,255)", 0, 4, "255.255.255.255", 65535},
    {"pasv leading zeros", PASV_REPLY, "(010,000,000,001,004,001)", 0, 4, "10.0.0.1", 1025},
    {"pasv field 256", PASV_REPLY, "(127,0,0,1,256,80)", PX_EINVAL, 0, NULL, 0},
    {"pasv address 300", PASV_REPLY, "(300,0,0,1,4,80)", PX_EINVAL, 0, NULL, 0},
    {"pasv four digits", PASV_REPLY, "(127,0,0,1,0195,80)", PX_EINVAL, 0, NULL, 0},
    {"pasv port 0", PASV_REPLY, "(127,0,0,1,0,0)", PX_EINVAL, 0, NULL, 0},
    {"pasv five fields", PASV_REPLY, "(127,0,0,1,195)", PX_EINVAL, 0, NULL, 0},
    {"pasv seven fields", PASV_REPLY, "(127,0,0,1,195,80,1)", PX_EINVAL, 0, NULL, 0},
    {"pasv spaces", PASV_REPLY, "(127, 0, 0, 1, 195, 80)", PX_EINVAL, 0, NULL, 0},
    {"pasv empty", PASV_REPLY, "", PX_EINVAL, 0, NULL, 0},
    {"epsv usual", EPSV_REPLY, "Entering Extended Passive Mode (|||6446|)", 0, 0, NULL, 6446},
    {"epsv other delimiter", EPSV_REPLY, "Extended (!!!21!)", 0, 0, NULL, 21},
    {"epsv hash", EPSV_REPLY, "ok (###65535#).", 0, 0, NULL, 65535},
    {"epsv earlier paren", EPSV_REPLY, "Mode (v2) (|||1|)", 0, 0, NULL, 1},
    {"epsv mixed delimiters", EPSV_REPLY, "(||!6446|)", PX_EINVAL, 0, NULL, 0},
    {"epsv digit delimiter", EPSV_REPLY, "(1116446 1)", PX_EINVAL, 0, NULL, 0},
    {"epsv space delimiter", EPSV_REPLY, "(   6446 )", PX_EINVAL, 0, NULL, 0},
    {"epsv port 0", EPSV_REPLY, "(|||0|)", PX_EINVAL, 0, NULL, 0},
    {"epsv port 65536", EPSV_REPLY, "(|||65536|)", PX_EINVAL, 0, NULL, 0},
    {"epsv no port", EPSV_REPLY, "(||||)", PX_EINVAL, 0, NULL, 0},
    {"epsv no close paren", EPSV_REPLY, "(|||6446|", PX_EINVAL, 0, NULL, 0},
    {"epsv address given", EPSV_REPLY, "(|1|1.2.3.4|6446|)", PX_EINVAL, 0, NULL, 0},
    {"port usual", PORT_ARG, "10,0,0,5,4,1", 0, 4, "10.0.0.5", 1025},
    {"port 65535", PORT_ARG, "1,2,3,4,255,255", 0, 4, "1.2.3.4", 65535},
    {"port 0", PORT_ARG, "10,0,0,5,0,0", PX_EINVAL, 0, NULL, 0},
    {"port field 256", PORT_ARG, "10,0,0,5,256,0", PX_EINVAL, 0, NULL, 0},
    {"port missing field", PORT_ARG, "10,0,0,5,4", PX_EINVAL, 0, NULL, 0},
    {"port empty field", PORT_ARG, "10,0,,5,4,1", PX_EINVAL, 0, NULL, 0},
    {"port trailing comma", PORT_ARG, "10,0,0,5,4,1,", PX_EINVAL, 0, NULL, 0},
    {"port with parens", PORT_ARG, "(10,0,0,5,4,1)", PX_EINVAL, 0, NULL, 0},
    {"port negative", PORT_ARG, "10,0,0,5,-4,1", PX_EINVAL, 0, NULL, 0},
    {"port empty", PORT_ARG, "", PX_EINVAL, 0, NULL, 0},
    {"eprt ipv4", EPRT_ARG, "|1|132.235.1.2|6275|", 0, 4, "132.235.1.2", 6275},
    {"eprt ipv6", EPRT_ARG, "|2|1080::8:800:200C:417A|5282|", 0, 6, "1080::8:800:200c:417a", 5282},
    {"eprt ipv6 loopback", EPRT_ARG, "!2!::1!65535!", 0, 6, "::1", 65535},
    {"eprt port 0", EPRT_ARG, "|1|1.2.3.4|0|", PX_EINVAL, 0, NULL, 0},
    {"eprt port 65536", EPRT_ARG, "|1|1.2.3.4|65536|", PX_EINVAL, 0, NULL, 0},
    {"eprt proto 3", EPRT_ARG, "|3|1.2.3.4|21|", PX_EINVAL, 0, NULL, 0},
    {"eprt proto mismatch v4", EPRT_ARG, "|1|::1|21|", PX_EINVAL, 0, NULL, 0},
    {"eprt proto mismatch v6", EPRT_ARG, "|2|1.2.3.4|21|", PX_EINVAL, 0, NULL, 0},
    {"eprt missing port", EPRT_ARG, "|1|1.2.3.4||", PX_EINVAL, 0, NULL, 0},
    {"eprt missing last delimiter", EPRT_ARG, "|1|1.2.3.4|21", PX_EINVAL, 0, NULL, 0},
    {"eprt extra field", EPRT_ARG, "|1|1.2.3.4|21|x|", PX_EINVAL, 0, NULL, 0},
    {"eprt bad address", EPRT_ARG, "|1|1.2.3|21|", PX_EINVAL, 0, NULL, 0},
    {"eprt address 256", EPRT_ARG, "|1|1.2.3.256|21|", PX_EINVAL, 0, NULL, 0},
    {"eprt empty", EPRT_ARG, "", PX_EINVAL, 0, NULL, 0},
    {"eprt only delimiters", EPRT_ARG, "||||", PX_EINVAL, 0, NULL, 0},
};

static int run_addr_parser(enum addr_parser p, const char *in, struct ftp_hostport *out)
{
    switch (p) {
    case PASV_REPLY:
        return ftp_parse_pasv_reply(in, strlen(in), out);
    case EPSV_REPLY:
        return ftp_parse_epsv_reply(in, strlen(in), out);
    case PORT_ARG:
        return ftp_parse_port_arg(in, strlen(in), out);
    case EPRT_ARG:
        return ftp_parse_eprt_arg(in, strlen(in), out);
    }
    return PX_EINVAL;
}

static void test_addr_parsers(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < PX_NELEM(addr_cases); i++) {
        const struct addr_case *c = &addr_cases[i];
        struct ftp_hostport hp;
        uint8_t want[16] = {0};

        CHECK_INT(c->name, run_addr_parser(c->parser, c->in, &hp), c->rc);
        if (c->rc != 0)
            continue;
        CHECK_INT(c->name, hp.family, c->family);
        CHECK_INT(c->name, hp.port, c->port);
        if (c->addr != NULL)
            CHECK_INT(c->name, inet_pton(c->family == 4 ? AF_INET : AF_INET6, c->addr, want), 1);
        CHECK_INT(c->name, memcmp(hp.addr, want, sizeof want), 0);
    }
}

static void test_epsv_arg(void **state)
{
    static const struct {
        const char *in;
        int rc;
        bool proto;
    } cases[] = {
        {"", FTP_EPSV_ANY, false},    {"1", FTP_EPSV_IPV4, true},   {"2", FTP_EPSV_IPV6, true},
        {"ALL", FTP_EPSV_ALL, false}, {"all", FTP_EPSV_ALL, false}, {"aLl", FTP_EPSV_ALL, false},
        {"3", PX_EINVAL, true},       {"12", PX_EINVAL, true},      {"01", PX_EINVAL, true},
        {"ALLX", PX_EINVAL, false},   {"AL", PX_EINVAL, false},     {" 1", PX_EINVAL, false},
        {"1 ", PX_EINVAL, false},     {"x", PX_EINVAL, false},
    };
    size_t i;

    (void)state;
    for (i = 0; i < PX_NELEM(cases); i++) {
        const char *in = cases[i].in;

        CHECK_INT(in, ftp_parse_epsv_arg(in, strlen(in)), cases[i].rc);
        CHECK_INT(in, ftp_epsv_arg_is_proto(in, strlen(in)), cases[i].proto);
    }
}

static void test_format(void **state)
{
    static const struct {
        const char *name;
        bool epsv;
        uint8_t ip[4];
        uint16_t port;
        const char *want;
    } cases[] = {
        {"pasv",
         false,
         {198, 51, 100, 7},
         50000,
         "227 Entering Passive Mode (198,51,100,7,195,80).\r\n"},
        {"pasv low port", false, {10, 0, 0, 1}, 1, "227 Entering Passive Mode (10,0,0,1,0,1).\r\n"},
        {"pasv high port",
         false,
         {0, 0, 0, 0},
         65535,
         "227 Entering Passive Mode (0,0,0,0,255,255).\r\n"},
        {"epsv", true, {0}, 6446, "229 Entering Extended Passive Mode (|||6446|)\r\n"},
        {"epsv high port", true, {0}, 65535, "229 Entering Extended Passive Mode (|||65535|)\r\n"},
    };
    size_t i;

    (void)state;
    for (i = 0; i < PX_NELEM(cases); i++) {
        char out[128];
        size_t want = strlen(cases[i].want), n;
        struct ftp_hostport hp;
        const char *name = cases[i].name;

        n = cases[i].epsv ? ftp_format_epsv_reply(out, sizeof out, cases[i].port)
                          : ftp_format_pasv_reply(out, sizeof out, cases[i].ip, cases[i].port);
        CHECK_MEM(name, out, n, cases[i].want);
        CHECK_INT(name, out[n], '\0');
        /* One byte short of the NUL is too small; exactly enough is fine. */
        n = cases[i].epsv ? ftp_format_epsv_reply(out, want, cases[i].port)
                          : ftp_format_pasv_reply(out, want, cases[i].ip, cases[i].port);
        CHECK_INT(name, n, 0);
        n = cases[i].epsv ? ftp_format_epsv_reply(out, want + 1, cases[i].port)
                          : ftp_format_pasv_reply(out, want + 1, cases[i].ip, cases[i].port);
        CHECK_INT(name, n, want);
        /* And what is written parses back. */
        if (cases[i].epsv) {
            CHECK_INT(name, ftp_parse_epsv_reply(out + 4, n - 6, &hp), 0);
        } else {
            CHECK_INT(name, ftp_parse_pasv_reply(out + 4, n - 6, &hp), 0);
            CHECK_INT(name, memcmp(hp.addr, cases[i].ip, 4), 0);
        }
        CHECK_INT(name, hp.port, cases[i].port);
    }
}

struct user_case {
    const char *name;
    const char *in;
    char sep;
    int rc;
    const char *host, *user;
};

static const struct user_case user_cases[] = {
    {"host and user", "ftp.alpha.example|alice", '|', 1, "ftp.alpha.example", "alice"},
    {"no separator", "alice", '|', 0, "", "alice"},
    {"several separators", "a|b|c", '|', 1, "a", "b|c"},
    {"custom separator", "alpha.example#bob", '#', 1, "alpha.example", "bob"},
    {"other separator ignored", "alpha.example#bob", '|', 0, "", "alpha.example#bob"},
    {"at sign", "bob@alpha.example", '@', 1, "bob", "alpha.example"},
    {"empty host", "|alice", '|', PX_EINVAL, NULL, NULL},
    {"empty user", "alpha.example|", '|', PX_EINVAL, NULL, NULL},
    {"only separator", "|", '|', PX_EINVAL, NULL, NULL},
    {"empty argument", "", '|', 0, "", ""},
    {"separators then user", "||alice", '|', PX_EINVAL, NULL, NULL},
};

static void test_split_user(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < PX_NELEM(user_cases); i++) {
        const struct user_case *c = &user_cases[i];
        struct ftp_user_arg u;

        CHECK_INT(c->name, ftp_split_user(c->in, strlen(c->in), c->sep, &u), c->rc);
        if (c->rc < 0)
            continue;
        if (c->rc == 0)
            CHECK_INT(c->name, u.host == NULL, 1);
        else
            CHECK_MEM(c->name, u.host, u.host_len, c->host);
        CHECK_MEM(c->name, u.user, u.user_len, c->user);
    }
}

struct host_case {
    const char *name;
    const char *in;
    int rc;
};

static const struct host_case host_cases[] = {
    {"name", "ftp.alpha.example", 0},
    {"upper case", "FTP.Alpha.Example", 0},
    {"single label", "localhost", 0},
    {"trailing dot", "ftp.alpha.example.", 0},
    {"underscore and dash", "my_site-1.example", 0},
    {"ipv4", "192.0.2.1", 0},
    {"ipv6", "[2001:db8::1]", 0},
    {"ipv6 with port", "[2001:db8::1]:21", PX_ERANGE},
    {"name with port", "ftp.alpha.example:21", PX_ERANGE},
    {"ipv4 with port", "192.0.2.1:2121", PX_ERANGE},
    {"name with port 0", "ftp.alpha.example:0", PX_EINVAL},
    {"name with port 65536", "ftp.alpha.example:65536", PX_EINVAL},
    {"name with empty port", "ftp.alpha.example:", PX_EINVAL},
    {"name with text port", "ftp.alpha.example:ftp", PX_EINVAL},
    {"wildcard", "*.alpha.example", PX_EINVAL},
    {"empty", "", PX_EINVAL},
    {"only dot", ".", PX_EINVAL},
    {"two trailing dots", "alpha.example..", PX_EINVAL},
    {"empty label", "alpha..example", PX_EINVAL},
    {"leading dot", ".alpha.example", PX_EINVAL},
    {"space", "alpha example", PX_EINVAL},
    {"slash", "alpha/example", PX_EINVAL},
    {"label of 63", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example", 0},
    {"label of 64", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example",
     PX_EINVAL},
    {"bare ipv6", "2001:db8::1", PX_EINVAL},
    {"ipv6 unclosed", "[2001:db8::1", PX_EINVAL},
    {"ipv6 bad", "[2001:db8:::1]", PX_EINVAL},
    {"ipv6 junk after", "[::1]x", PX_EINVAL},
    {"ipv4 in brackets", "[192.0.2.1]", PX_EINVAL},
    {"empty brackets", "[]", PX_EINVAL},
};

static void test_check_host_arg(void **state)
{
    char name[300];
    size_t i;

    (void)state;
    for (i = 0; i < PX_NELEM(host_cases); i++) {
        const struct host_case *c = &host_cases[i];

        CHECK_INT(c->name, ftp_check_host_arg(c->in, strlen(c->in)), c->rc);
    }
    /* 253 bytes in all is the longest name; a trailing dot does not count. */
    memset(name, 'a', sizeof name);
    for (i = 63; i < sizeof name; i += 64)
        name[i] = '.';
    CHECK_INT("253 bytes", ftp_check_host_arg(name, 253), 0);
    name[253] = '.';
    CHECK_INT("253 bytes and dot", ftp_check_host_arg(name, 254), 0);
    name[253] = 'a';
    CHECK_INT("254 bytes", ftp_check_host_arg(name, 254), PX_EINVAL);
    CHECK_INT("nul inside", ftp_check_host_arg("ab\0cd", 5), PX_EINVAL);
}

static void test_feat_drop(void **state)
{
    static const struct {
        const char *line;
        bool drop;
    } cases[] = {
        {" AUTH TLS", true},     {" auth ssl", true},     {" PBSZ", true},    {" PROT", true},
        {" CCC", true},          {" HOST", true},         {" EPSV", true},    {" EPRT", true},
        {" PASV", true},         {"AUTH TLS", true},      {"  PROT P", true}, {" MDTM", false},
        {" MLST size*;", false}, {" UTF8", false},        {" AUTHX", false},  {" PBS", false},
        {" SIZE", false},        {" REST STREAM", false}, {"", false},        {"   ", false},
    };
    size_t i;

    (void)state;
    for (i = 0; i < PX_NELEM(cases); i++)
        CHECK_INT(cases[i].line, ftp_feat_drop(cases[i].line, strlen(cases[i].line)),
                  cases[i].drop);
}

static void test_passive_line(void **state)
{
    static const struct {
        const char *name;
        int code;
        const char *line;
        int rc;
        uint16_t port;
    } cases[] = {
        {"227 first line", 227, "227 Entering Passive Mode (10,0,0,5,195,80).", 0, 50000},
        {"227 no parens", 227, "227 =10,0,0,5,4,1", 0, 1025},
        {"227 multi-line head", 227, "227-Entering Passive Mode (1,2,3,4,0,21)", 0, 21},
        {"227 middle line, no code", 227, "1,2,3,4,5,6", 0, 1286},
        {"227 text only", 227, "227 Entering Passive Mode", PX_EINVAL, 0},
        {"227 port 0", 227, "227 (1,2,3,4,0,0)", PX_EINVAL, 0},
        {"229", 229, "229 Entering Extended Passive Mode (|||27035|)", 0, 27035},
        {"229 other delimiter", 229, "229 (!!!2121!)", 0, 2121},
        {"229 mixed delimiters", 229, "229 (|||2121!)", PX_EINVAL, 0},
        {"229 port too big", 229, "229 (|||65536|)", PX_EINVAL, 0},
        {"another code", 200, "200 (1,2,3,4,5,6)", PX_EINVAL, 0},
        {"a 229 read as 227", 227, "229 (|||2121|)", PX_EINVAL, 0},
        {"empty", 227, "", PX_EINVAL, 0},
    };
    size_t i;

    (void)state;
    for (i = 0; i < PX_NELEM(cases); i++) {
        uint16_t port = 0;

        CHECK_INT(cases[i].name,
                  ftp_passive_line(cases[i].code, cases[i].line, strlen(cases[i].line), &port),
                  cases[i].rc);
        if (cases[i].rc == 0)
            CHECK_INT(cases[i].name, port, cases[i].port);
    }
}

static void test_feat_merge(void **state)
{
    static const struct {
        const char *name;
        unsigned line_no;
        bool last;
        const char *line;
        enum ftp_feat_step step;
    } cases[] = {
        {"head", 1, false, "211-Features:", FTP_FEAT_RELAY},
        {"no list", 1, true, "211 no features", FTP_FEAT_OURS_ONLY},
        {"refused", 1, true, "500 FEAT not understood", FTP_FEAT_OURS_ONLY},
        {"a feature of the backend", 2, false, " MDTM", FTP_FEAT_RELAY},
        {"one the proxy owns", 3, false, " EPSV", FTP_FEAT_DROP},
        {"AUTH", 3, false, " AUTH TLS", FTP_FEAT_DROP},
        {"end", 9, true, "211 End", FTP_FEAT_OURS_FIRST},
    };
    static const struct {
        unsigned flags;
        const char *text;
    } own[] = {
        {0, " AUTH TLS\r\n PBSZ\r\n PROT\r\n HOST\r\n EPSV\r\n PASV\r\n"},
        {FTP_FEAT_HEAD | FTP_FEAT_UTF8 | FTP_FEAT_END,
         "211-Features:\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n HOST\r\n EPSV\r\n PASV\r\n"
         " UTF8\r\n211 End\r\n"},
        {FTP_FEAT_HEAD | FTP_FEAT_EPRT | FTP_FEAT_END,
         "211-Features:\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n HOST\r\n EPSV\r\n PASV\r\n"
         " EPRT\r\n211 End\r\n"},
    };
    char buf[256];
    size_t i;

    (void)state;
    for (i = 0; i < PX_NELEM(cases); i++)
        CHECK_INT(cases[i].name,
                  ftp_feat_step(cases[i].line_no, cases[i].last, cases[i].line,
                                strlen(cases[i].line)),
                  cases[i].step);
    for (i = 0; i < PX_NELEM(own); i++) {
        CHECK_INT(own[i].text, ftp_feat_own(buf, sizeof(buf), own[i].flags),
                  strlen(own[i].text));
        CHECK_STR(own[i].text, buf, own[i].text);
    }
    CHECK_INT("too small", ftp_feat_own(buf, 10, 0), 0);
}

static void test_alpn_and_http(void **state)
{
    static const struct {
        const char *name;
        const char *list;
        size_t len;
        int rc;
        size_t at;
    } alpn[] = {
        {"ftp alone", "\x03" "ftp", 4, 1, 1},
        {"http then ftp", "\x08" "http/1.1" "\x03" "ftp", 13, 1, 10},
        {"http only", "\x08" "http/1.1", 9, 0, 0},
        {"ftps is not ftp", "\x04" "ftps", 5, 0, 0},
        {"empty", "", 0, PX_EINVAL, 0},
        {"zero length", "\x00" "\x03" "ftp", 5, PX_EINVAL, 0},
        {"runs past the end", "\x05" "ftp", 4, PX_EINVAL, 0},
    };
    static const struct {
        const char *line;
        bool http;
    } http[] = {
        {"GET / HTTP/1.1", true},  {"POST /x HTTP/1.0", true}, {"OPTIONS * HTTP/1.1", true},
        {"CONNECT a:443 HTTP/1.1", true}, {"PUT x", true},     {"GET", false},
        {"get / HTTP/1.1", false}, {"GETX /", false},          {"USER anonymous", false},
        {"HEAD", false},
    };
    size_t i, at;

    (void)state;
    for (i = 0; i < PX_NELEM(alpn); i++) {
        at = 0;
        CHECK_INT(alpn[i].name,
                  ftp_alpn_select((const uint8_t *)alpn[i].list, alpn[i].len, &at), alpn[i].rc);
        if (alpn[i].rc == 1)
            CHECK_INT(alpn[i].name, at, alpn[i].at);
    }
    for (i = 0; i < PX_NELEM(http); i++)
        CHECK_INT(http[i].line, ftp_is_http_request(http[i].line, strlen(http[i].line)),
                  http[i].http);
}

static void test_reply_is_oops(void **state)
{
    static const struct {
        const char *line;
        bool oops;
    } t[] = {
        {"500 OOPS: vsf_sysutil_bind", true}, {"500 OOPS: child died", true},
        {"500 OOPS:", true},                  {"500 OOPS", false},
        {"500 Unknown command.", false},      {"421 OOPS: x", false},
        {"500-OOPS: x", false},               {"", false},
    };

    (void)state;
    for (size_t i = 0; i < PX_NELEM(t); i++)
        CHECK_INT(t[i].line, ftp_reply_is_oops(t[i].line, strlen(t[i].line)), t[i].oops);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_command),
        cmocka_unit_test(test_strip_telnet),
        cmocka_unit_test(test_cmd_is_secret),
        cmocka_unit_test(test_reply_line),
        cmocka_unit_test(test_reply_feed),
        cmocka_unit_test(test_reply_feed_split),
        cmocka_unit_test(test_reply_feed_long_line),
        cmocka_unit_test(test_addr_parsers),
        cmocka_unit_test(test_epsv_arg),
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_split_user),
        cmocka_unit_test(test_check_host_arg),
        cmocka_unit_test(test_feat_drop),
        cmocka_unit_test(test_passive_line),
        cmocka_unit_test(test_feat_merge),
        cmocka_unit_test(test_alpn_and_http),
        cmocka_unit_test(test_reply_is_oops),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
