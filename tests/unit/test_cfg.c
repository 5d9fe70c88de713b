/* test_cfg.c - the configuration loader. Most cases are INI text given to
 * cfg_parse() after a prefix shared by the table, with the exact number of
 * reports it must produce and text they must contain; cases that parse may
 * also check the struct. Then the sample config/ftpsgate.ini, the CIDR
 * matcher and the enum names (reading files: test_loader.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "check.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cfg.h"
#include "px.h"


/* Lines 1-3: a [proxy] that needs nothing more. */
#define BASE "[proxy]\ncertificate = /c.crt\nprivate_key = /c.key\n"
/* Lines 4-5 after BASE: a backend that needs nothing more. */
#define BACKEND_A "[backend:a]\naddress = 10.0.0.1:21\n"

#define BOM "\xef\xbb\xbf"
#define X10 "xxxxxxxxxx"
#define X50 X10 X10 X10 X10 X10
#define X190 X50 X50 X50 X10 X10 X10 X10
#define HOSTS16                                                                                    \
    "h00.example.com, h01.example.com, h02.example.com, h03.example.com, h04.example.com, "        \
    "h05.example.com, h06.example.com, h07.example.com, h08.example.com, h09.example.com, "        \
    "h10.example.com, h11.example.com, h12.example.com, h13.example.com, h14.example.com, "        \
    "h15.example.com"

static const char *current; /* the case a check function is looking at */

/* Text that must parse, and what the struct must then hold (check may be NULL). */
struct good_case {
    const char *name;
    const char *ini; /* after the table's prefix */
    void (*check)(const struct cfg *c);
};

/* Text that must not: exactly reports problems, and each line of want in one
 * of them. */
struct bad_case {
    const char *name;
    const char *ini; /* after the table's prefix */
    unsigned reports;
    const char *want;
};

/* prefix and ini through cfg_parse(): its return, reports in *r, *c. */
static int parse(const char *prefix, const char *ini, struct check_reports *r, struct cfg **c)
{
    char text[4096];
    int n = snprintf(text, sizeof text, "%s%s", prefix, ini);

    PX_ASSERT(n >= 0 && (size_t)n < sizeof text);
    r->n = 0;
    r->text[0] = '\0';
    return cfg_parse(text, (size_t)n, "test.ini", check_collect, r, c);
}

static void run_good(const char *prefix, const struct good_case *cases, size_t n)
{
    struct check_reports r;
    struct cfg *c;
    size_t i;

    for (i = 0; i < n; i++) {
        if (parse(prefix, cases[i].ini, &r, &c) != 0)
            print_message("case \"%s\": refused:\n%s", cases[i].name, r.text);
        CHECK_INT(cases[i].name, c != NULL, 1);
        CHECK_INT(cases[i].name, r.n, 0);
        current = cases[i].name;
        if (cases[i].check != NULL)
            cases[i].check(c);
        cfg_free(c);
    }
}

/* Whether every line of want is in some report. */
static bool reported(const struct check_reports *r, const char *want)
{
    char line[512];
    const char *end;
    size_t n;

    for (; *want != '\0'; want = *end == '\n' ? end + 1 : end) {
        end = strchr(want, '\n');
        if (end == NULL)
            end = want + strlen(want);
        n = (size_t)(end - want);
        PX_ASSERT(n < sizeof line);
        memcpy(line, want, n);
        line[n] = '\0';
        if (strstr(r->text, line) == NULL)
            return false;
    }
    return true;
}

static void run_bad(const char *prefix, const struct bad_case *cases, size_t n)
{
    struct check_reports r;
    struct cfg *c;
    unsigned failed = 0;
    size_t i;

    for (i = 0; i < n; i++) {
        int rc = parse(prefix, cases[i].ini, &r, &c);

        if (rc != PX_EINVAL || c != NULL || r.n != cases[i].reports ||
            !reported(&r, cases[i].want)) {
            print_message("case \"%s\": rc %d, %u reports (want %u, with \"%s\"):\n%s",
                          cases[i].name, rc, r.n, cases[i].reports, cases[i].want, r.text);
            failed++;
        }
        cfg_free(c);
    }
    CHECK_INT("all", failed, 0);
}

static void check_defaults(const struct cfg *c)
{
    CHECK_STR(current, c->path, "test.ini");
    CHECK_INT(current, c->n_listen, 1);
    CHECK_STR(current, c->listen[0].text, "0.0.0.0:21");
    CHECK_INT(current, c->listen[0].line, 0);
    CHECK_INT(current, c->n_listen_implicit, 0);
    CHECK_STR(current, c->certs.cert[0], "/c.crt");
    CHECK_STR(current, c->certs.key[0], "/c.key");
    CHECK_INT(current, c->ca_file == NULL, 1);
    CHECK_INT(current, c->passive_min, 61000);
    CHECK_INT(current, c->passive_max, 61999);
    CHECK_INT(current, c->has_passive_address, 0);
    CHECK_INT(current, c->default_backend, -1);
    CHECK_INT(current, c->host_separator, '|');
    CHECK_INT(current, c->route_by_sni, 1);
    CHECK_INT(current, c->require_tls, 1);
    CHECK_INT(current, c->require_protected_data, 1);
    CHECK_INT(current, c->require_session_reuse, 1);
    CHECK_INT(current, c->allow_active, 0);
    CHECK_INT(current, c->tls_min_version, 12);
    CHECK_INT(current, c->tls_ciphers == NULL, 1);
    CHECK_STR(current, c->banner, "FTP proxy ready");
    CHECK_INT(current, c->login_timeout, 30);
    CHECK_INT(current, c->idle_timeout, 600);
    CHECK_INT(current, c->data_timeout, 60);
    CHECK_INT(current, c->connect_timeout, 5);
    CHECK_INT(current, c->shutdown_grace, 30);
    CHECK_INT(current, c->max_sessions, 4096);
    CHECK_INT(current, c->max_sessions_per_ip, 64);
    CHECK_INT(current, c->user == NULL, 1);
    CHECK_INT(current, c->proxy_protocol, CFG_PP_NO);
    CHECK_INT(current, c->n_proxy_protocol_from, 0);
    CHECK_INT(current, c->has_metrics_listen, 0);
    CHECK_INT(current, c->log_level, CFG_LOG_INFO);
    CHECK_INT(current, c->log_format, CFG_LOG_TEXT);
    CHECK_INT(current, c->workers, 1);
    CHECK_INT(current, c->n_backends, 0);
}

/* Every [proxy] key away from its default; see the "every key" case. */
static void check_every_key(const struct cfg *c)
{
    CHECK_INT(current, c->n_listen, 1);
    CHECK_STR(current, c->listen[0].text, "127.0.0.1:2121");
    CHECK_INT(current, c->listen[0].line, 2);
    CHECK_INT(current, c->listen[0].sa.ss_family, AF_INET);
    CHECK_INT(current, ntohs(((const struct sockaddr_in *)&c->listen[0].sa)->sin_port), 2121);
    CHECK_INT(current, c->listen[0].salen, sizeof(struct sockaddr_in));
    CHECK_INT(current, c->n_listen_implicit, 1);
    CHECK_STR(current, c->listen_implicit[0].text, "[::1]:990");
    CHECK_INT(current, c->listen_implicit[0].sa.ss_family, AF_INET6);
    CHECK_INT(current, c->listen_implicit[0].salen, sizeof(struct sockaddr_in6));
    CHECK_STR(current, c->certs.cert[0], "/etc/ftpsgate/central.crt");
    CHECK_STR(current, c->certs.key[0], "/etc/ftpsgate/central.key");
    CHECK_STR(current, c->ca_file, "/etc/ftpsgate/ca.pem");
    CHECK_INT(current, c->passive_min, 1024);
    CHECK_INT(current, c->passive_max, 65535);
    CHECK_INT(current, c->has_passive_address, 1);
    CHECK_INT(current, memcmp(c->passive_address, "\xc6\x33\x64\x07", 4), 0);
    CHECK_INT(current, c->default_backend, 1);
    CHECK_INT(current, c->host_separator, '@');
    CHECK_INT(current, c->route_by_sni, 0);
    CHECK_INT(current, c->require_tls, 0);
    CHECK_INT(current, c->require_protected_data, 0);
    CHECK_INT(current, c->require_session_reuse, 0);
    CHECK_INT(current, c->allow_active, 1);
    CHECK_INT(current, c->tls_min_version, 13);
    CHECK_STR(current, c->tls_ciphers, "ECDHE+AESGCM:!aNULL");
    CHECK_STR(current, c->banner, "Welcome: files & more");
    CHECK_INT(current, c->login_timeout, 1);
    CHECK_INT(current, c->idle_timeout, 86400);
    CHECK_INT(current, c->data_timeout, 3600);
    CHECK_INT(current, c->connect_timeout, 300);
    CHECK_INT(current, c->shutdown_grace, 0);
    CHECK_INT(current, c->max_sessions, 1);
    CHECK_INT(current, c->max_sessions_per_ip, 1000000);
    CHECK_STR(current, c->user, "ftpsgate");
    CHECK_INT(current, c->proxy_protocol, CFG_PP_V2);
    CHECK_INT(current, c->n_proxy_protocol_from, 1);
    CHECK_INT(current, c->has_metrics_listen, 1);
    CHECK_STR(current, c->metrics_listen.text, "127.0.0.1:9120");
    CHECK_INT(current, c->metrics_listen.line, 29);
    CHECK_INT(current, c->log_level, CFG_LOG_DEBUG);
    CHECK_INT(current, c->log_format, CFG_LOG_JSON);
    CHECK_INT(current, c->workers, 64);
    CHECK_INT(current, c->n_backends, 2);
    CHECK_STR(current, c->backends[0].name, "a");
    CHECK_INT(current, c->backends[0].line, 33);
    CHECK_STR(current, c->backends[1].name, "b.2_x-y");
    CHECK_STR(current, c->backends[1].address[0].text, "[2001:db8::5]:2121");
    CHECK_STR(current, c->backends[1].certs.cert[0], "/b.crt");
    CHECK_STR(current, c->backends[1].certs.key[0], "/b.key");
    CHECK_INT(current, c->backends[1].certificate_line, 38);
    CHECK_INT(current, c->backends[1].max_sessions, 1000000);
    CHECK_INT(current, c->backends[0].max_sessions, 0);
    CHECK_INT(current, c->backends[0].certs.n_cert, 0);
    CHECK_INT(current, c->backends[0].certs.n_key, 0);
}

static void check_listen_lists(const struct cfg *c)
{
    static const char *const want[] = {"0.0.0.0:21", "[::1]:2121", "127.0.0.1:2121",
                                       "[2001:db8::1]:21", "10.0.0.1:21"};
    static const unsigned lines[] = {4, 4, 5, 6, 7};
    size_t i;

    CHECK_INT(current, c->n_listen, PX_NELEM(want));
    for (i = 0; i < PX_NELEM(want); i++) {
        CHECK_STR(current, c->listen[i].text, want[i]);
        CHECK_INT(current, c->listen[i].line, lines[i]);
    }
    CHECK_INT(current, c->n_listen_implicit, 1);
}

static void check_implicit_only(const struct cfg *c)
{
    CHECK_INT(current, c->n_listen, 0);
    CHECK_INT(current, c->n_listen_implicit, 1);
    CHECK_STR(current, c->listen_implicit[0].text, "0.0.0.0:990");
}

static void check_hostnames(const struct cfg *c)
{
    static const char *const want[] = {"ftp.alpha.example", "*.alpha.example", "x-1.example",
                                       "localhost", "192.0.2.1"};
    size_t i;

    CHECK_INT(current, c->n_backends, 1);
    CHECK_INT(current, c->backends[0].n_hostnames, PX_NELEM(want));
    for (i = 0; i < PX_NELEM(want); i++)
        CHECK_STR(current, c->backends[0].hostnames[i], want[i]);
}

static void check_long_list(const struct cfg *c)
{
    CHECK_INT(current, c->backends[0].n_hostnames, 16);
    CHECK_STR(current, c->backends[0].hostnames[15], "h15.example.com");
}

static void check_banner_199(const struct cfg *c)
{
    CHECK_INT(current, strlen(c->banner), 190);
}

static void check_banner_hello(const struct cfg *c)
{
    CHECK_STR(current, c->banner, "hello");
}

static void check_banner_hash(const struct cfg *c)
{
    CHECK_STR(current, c->banner, "a # b");
}

static void check_banner_tab(const struct cfg *c)
{
    CHECK_STR(current, c->banner, "a\tb");
}

static void check_two_cidrs(const struct cfg *c)
{
    CHECK_INT(current, c->n_proxy_protocol_from, 2);
    CHECK_INT(current, c->proxy_protocol, CFG_PP_ANY);
}

static void check_default_backend_b(const struct cfg *c)
{
    CHECK_INT(current, c->default_backend, 1);
    CHECK_INT(current, cfg_backend_index(c, "b"), 1);
    CHECK_INT(current, cfg_backend_index(c, "a"), 0);
    CHECK_INT(current, cfg_backend_index(c, "c"), -1);
}

static void check_merged_proxy(const struct cfg *c)
{
    CHECK_STR(current, c->banner, "second");
    CHECK_INT(current, c->n_backends, 1);
}

static void check_one_host(const struct cfg *c)
{
    CHECK_INT(current, c->backends[0].n_hostnames, 1);
}

static void test_every_key(void **state)
{
    static const struct good_case cases[] = {
        {"every key",
         "[proxy]\n"
         "listen = 127.0.0.1:2121\n"
         "listen_implicit = [::1]:990\n"
         "certificate = /etc/ftpsgate/central.crt\n"
         "private_key = /etc/ftpsgate/central.key\n"
         "ca_file = /etc/ftpsgate/ca.pem\n"
         "passive_ports = 1024-65535\n"
         "passive_address = 198.51.100.7\n"
         "default_backend = b.2_x-y\n"
         "host_separator = @\n"
         "route_by_sni = off\n"
         "require_tls = FALSE\n"
         "require_protected_data = no\n"
         "require_session_reuse = 0\n"
         "allow_active = On\n"
         "tls_min_version = 1.3\n"
         "tls_ciphers = ECDHE+AESGCM:!aNULL\n"
         "banner = Welcome: files & more\n"
         "login_timeout = 1\n"
         "idle_timeout = 86400\n"
         "data_timeout = 3600\n"
         "connect_timeout = 300\n"
         "shutdown_grace = 0\n"
         "max_sessions = 1\n"
         "max_sessions_per_ip = 1000000\n"
         "user = ftpsgate\n"
         "proxy_protocol = v2\n"
         "proxy_protocol_from = 10.0.0.0/8\n"
         "metrics_listen = 127.0.0.1:9120\n"
         "log_level = debug\n"
         "log_format = json\n"
         "workers = 64\n"
         "[backend:a]\n"
         "address = 10.0.0.1:21\n"
         "[backend:b.2_x-y]\n"
         "hostnames = b.example\n"
         "address = [2001:DB8:0::5]:2121\n"
         "certificate = /b.crt\n"
         "private_key = /b.key\n"
         "max_sessions = 1000000\n",
         check_every_key},
    };

    (void)state;
    run_good("", cases, PX_NELEM(cases));
}

static void test_values(void **state)
{
    static const struct good_case cases[] = {
        {"defaults", "", check_defaults},
        {"bools yes, true, 1", "route_by_sni = yes\nrequire_tls = true\nallow_active = 1\n", NULL},
        {"tls 1.2", "tls_min_version = 1.2\n", NULL},
        {"proxy_protocol v1", "proxy_protocol = v1\nproxy_protocol_from = ::1\n", NULL},
        {"log_level warn, log_format text", "log_level = warn\nlog_format = text\n", NULL},
        {"passive_ports one port, blanks", "passive_ports = 2121 - 2121\n", NULL},
        {"empty values leave defaults", "banner =\nlisten =\nworkers =\n", check_defaults},
        {"empty value, then a value", "banner =\nbanner = hello\n", check_banner_hello},
        {"colon as separator", "banner: hello\n", check_banner_hello},
        {"comment after a blank", "banner = hello ; comment\n", check_banner_hello},
        {"comment without a blank", "banner = hello;comment; more\n", check_banner_hello},
        {"comment lines", "; top\n# hash\n  ; indented\n\t# hash, indented\n", check_defaults},
        {"hash inside a value", "banner = a # b\n", check_banner_hash},
        {"tab inside a value", "banner = a\tb\n", check_banner_tab},
        {"no final newline", "banner = hello", check_banner_hello},
        {"default_backend", "default_backend = b\n" BACKEND_A "[backend:b]\naddress = 1.2.3.4:21\n",
         check_default_backend_b},
        {"two [proxy] sections merge", BACKEND_A "[proxy]\nbanner = second\n", check_merged_proxy},
        {"same host twice in one backend",
         BACKEND_A "hostnames = a.example, A.example.\nhostnames = a.example\n", check_one_host},
        {"backend name of 63", "[backend:" X50 "xxxxxxxxxxxxx]\naddress = 10.0.0.1:21\n", NULL},
        {"indented key after a header", "[proxy]\n  banner = hello\n", check_banner_hello},
    };

    (void)state;
    run_good(BASE, cases, PX_NELEM(cases));
}

/* Whole files: CRLF line ends and a byte order mark. */
static void test_encodings(void **state)
{
    static const struct good_case good[] = {
        {"crlf",
         "[proxy]\r\ncertificate = /c.crt\r\nprivate_key = /c.key ; x\r\nbanner = hello\r\n",
         check_banner_hello},
        {"crlf, blank lines", "\r\n" BASE "\r\n\r\n", check_defaults},
        {"byte order mark", BOM BASE, check_defaults},
    };
    static const struct bad_case bad[] = {
        {"long line, crlf",
         "[proxy]\r\ncertificate = /c.crt\r\nprivate_key = /c.key\r\nbanner = " X190 "x\r\n", 1,
         "test.ini:4: banner: line 4 is longer than 199 characters"},
        {"crlf, bad value",
         "[proxy]\r\ncertificate = /c.crt\r\nprivate_key = /c.key\r\n"
         "workers = 0\r\n",
         1, "test.ini:4: workers: expected a whole number from 1 to 64, got \"0\""},
    };

    (void)state;
    run_good("", good, PX_NELEM(good));
    run_bad("", bad, PX_NELEM(bad));
}

static void test_lists(void **state)
{
    static const struct good_case good[] = {
        {"commas, repeats and continuations",
         "listen = 0.0.0.0:21, [::1]:2121\nlisten = 127.0.0.1:2121,\n  [2001:DB8::1]:21 ,\n"
         "\t10.0.0.1:21\nlisten_implicit = 0.0.0.0:990\n",
         check_listen_lists},
        {"empty items",
         "listen = 0.0.0.0:21,, [::1]:2121,\n  127.0.0.1:2121,\n  [2001:db8::1]:21\n"
         "listen = 10.0.0.1:21,\nlisten_implicit = 0.0.0.0:990\n",
         check_listen_lists},
        {"implicit only: no default listen", "listen_implicit = 0.0.0.0:990\n",
         check_implicit_only},
        {"hostnames normalised",
         BACKEND_A "hostnames = FTP.Alpha.Example., *.ALPHA.example\n  x-1.example\n"
                   "hostnames = localhost, 192.0.2.1\n",
         check_hostnames},
        {"proxy_protocol_from continued",
         "proxy_protocol = any\nproxy_protocol_from = 10.0.0.0/8,\n  2001:db8::/32\n",
         check_two_cidrs},
        {"split over several lines",
         BACKEND_A "hostnames = h00.example.com, h01.example.com, h02.example.com\n"
                   "  h03.example.com, h04.example.com, h05.example.com, h06.example.com\n"
                   "hostnames = h07.example.com, h08.example.com, h09.example.com\n"
                   "  h10.example.com, h11.example.com, h12.example.com,\n"
                   "  h13.example.com, h14.example.com, h15.example.com\n",
         check_long_list},
    };
    static const struct bad_case bad[] = {
        {"one bad item among good ones", "listen = 0.0.0.0:21, 1.2.3:21, [::1]:21\n", 1,
         "test.ini:4: listen: expected IPv4:port or [IPv6]:port with port 1..65535, got "
         "\"1.2.3:21\""},
        {"bad item on a continuation line", "listen = 0.0.0.0:21,\n  [::1]:0\n", 1,
         "test.ini:5: listen: expected IPv4:port\ngot \"[::1]:0\""},
        {"scalar continued", "banner = a\n  b\n", 1,
         "test.ini:5: banner: takes one value, so it cannot continue on an indented line"},
        {"scalar continued after an empty value", "banner =\n  b\n", 1,
         "test.ini:5: banner: takes one value"},
        {"an indented key line continues the key before", "ca_file = /ca\n  banner = hello\n", 1,
         "test.ini:5: ca_file: takes one value"},
        {"an indented line continues a list of files", "  /d.key\n", 1,
         "test.ini:2: certificate: [proxy] lists 1 certificate file and 2 private_key files; "
         "give one key per certificate, in the same order"},
    };

    (void)state;
    run_good(BASE, good, PX_NELEM(good));
    run_bad(BASE, bad, PX_NELEM(bad));
}

static void test_bad_values(void **state)
{
    static const struct bad_case cases[] = {
        {"listen port 0", "listen = 0.0.0.0:0\n", 1,
         "test.ini:4: listen: expected IPv4:port or [IPv6]:port with port 1..65535, got "
         "\"0.0.0.0:0\""},
        {"listen port 65536", "listen = 0.0.0.0:65536\n", 1, "listen: expected IPv4:port"},
        {"listen no port", "listen = 10.0.0.1\n", 1, "listen: expected IPv4:port"},
        {"listen empty port", "listen = 10.0.0.1:\n", 1, "listen: expected IPv4:port"},
        {"listen port with sign", "listen = 10.0.0.1:+21\n", 1, "listen: expected IPv4:port"},
        {"listen ipv6 without brackets", "listen = ::1:21\n", 1, "listen: expected IPv4:port"},
        {"listen ipv6 without colon", "listen = [::1]21\n", 1, "listen: expected IPv4:port"},
        {"listen ipv4 in brackets", "listen = [10.0.0.1]:21\n", 1, "listen: expected IPv4:port"},
        {"listen host name", "listen = localhost:21\n", 1, "listen: expected IPv4:port"},
        {"listen short ipv4", "listen = 10.1:21\n", 1, "listen: expected IPv4:port"},
        {"listen_implicit", "listen_implicit = 0.0.0.0:99999\n", 1,
         "test.ini:4: listen_implicit: expected IPv4:port"},
        {"metrics_listen", "metrics_listen = 127.0.0.1\n", 1,
         "test.ini:4: metrics_listen: expected IPv4:port or [IPv6]:port"},
        {"passive_ports below 1024", "passive_ports = 80-90\n", 1,
         "test.ini:4: passive_ports: expected LOW-HIGH with 1024 <= LOW <= HIGH <= 65535 (such as "
         "61000-61999), got \"80-90\""},
        {"passive_ports reversed", "passive_ports = 60000-50000\n", 1, "passive_ports: expected"},
        {"passive_ports one number", "passive_ports = 50000\n", 1, "passive_ports: expected"},
        {"passive_ports past 65535", "passive_ports = 50000-70000\n", 1, "passive_ports: expected"},
        {"passive_ports garbage", "passive_ports = 50000-5x\n", 1, "passive_ports: expected"},
        {"passive_address ipv6", "passive_address = 2001:db8::1\n", 1,
         "test.ini:4: passive_address: expected the IPv4 address clients should connect to, such "
         "as 198.51.100.7, got \"2001:db8::1\""},
        {"passive_address any", "passive_address = 0.0.0.0\n", 1, "passive_address: expected"},
        {"passive_address name", "passive_address = ftp.example\n", 1, "passive_address: expected"},
        {"host_separator two", "host_separator = ||\n", 1,
         "test.ini:4: host_separator: expected one printable character that cannot occur in a "
         "host name, such as | or @, got \"||\""},
        {"host_separator dot", "host_separator = .\n", 1, "host_separator: expected"},
        {"host_separator hyphen", "host_separator = -\n", 1, "host_separator: expected"},
        {"host_separator letter", "host_separator = x\n", 1, "host_separator: expected"},
        {"host_separator digit", "host_separator = 7\n", 1, "host_separator: expected"},
        {"host_separator star", "host_separator = *\n", 1, "host_separator: expected"},
        {"host_separator underscore", "host_separator = _\n", 1, "host_separator: expected"},
        {"host_separator non-ascii", "host_separator = \xc2\xa7\n", 1, "host_separator: expected"},
        {"bool maybe", "route_by_sni = maybe\n", 1,
         "test.ini:4: route_by_sni: expected yes, no, true, false, on, off, 1 or 0, got "
         "\"maybe\""},
        {"bool 2", "require_tls = 2\n", 1, "test.ini:4: require_tls: expected yes"},
        {"bool y", "require_protected_data = y\n", 1, "require_protected_data: expected yes"},
        {"bool nope", "require_session_reuse = nope\n", 1, "require_session_reuse: expected yes"},
        {"bool enable", "allow_active = enable\n", 1, "allow_active: expected yes"},
        {"tls 1.1", "tls_min_version = 1.1\n", 1,
         "test.ini:4: tls_min_version: expected 1.2 or 1.3, got \"1.1\""},
        {"tls TLSv1.2", "tls_min_version = TLSv1.2\n", 1, "tls_min_version: expected 1.2 or 1.3"},
        {"login_timeout 0", "login_timeout = 0\n", 1,
         "test.ini:4: login_timeout: expected a whole number from 1 to 3600, got \"0\""},
        {"login_timeout 3601", "login_timeout = 3601\n", 1, "from 1 to 3600, got \"3601\""},
        {"login_timeout negative", "login_timeout = -1\n", 1, "login_timeout: expected a whole"},
        {"login_timeout unit", "login_timeout = 30s\n", 1, "login_timeout: expected a whole"},
        {"login_timeout huge", "login_timeout = 99999999999999999999999\n", 1,
         "login_timeout: expected a whole"},
        {"idle_timeout", "idle_timeout = 86401\n", 1,
         "idle_timeout: expected a whole number from 1 to 86400"},
        {"data_timeout", "data_timeout = 0\n", 1,
         "data_timeout: expected a whole number from 1 to 3600"},
        {"connect_timeout", "connect_timeout = 301\n", 1,
         "connect_timeout: expected a whole number from 1 to 300"},
        {"shutdown_grace", "shutdown_grace = 3601\n", 1,
         "shutdown_grace: expected a whole number from 0 to 3600"},
        {"max_sessions", "max_sessions = 0\n", 1,
         "max_sessions: expected a whole number from 1 to 1000000"},
        {"max_sessions_per_ip", "max_sessions_per_ip = 0\n", 1,
         "max_sessions_per_ip: expected a whole number from 1 to 1000000"},
        {"workers 0", "workers = 0\n", 1, "workers: expected a whole number from 1 to 64"},
        {"workers 65", "workers = 65\n", 1, "workers: expected a whole number from 1 to 64"},
        {"proxy_protocol v3", "proxy_protocol = v3\n", 1,
         "test.ini:4: proxy_protocol: expected no, v1, v2 or any, got \"v3\""},
        {"proxy_protocol_from host bits", "proxy_protocol_from = 10.0.0.1/8\n", 1,
         "test.ini:4: proxy_protocol_from: expected an address or ADDRESS/PREFIX with no bit set "
         "past the prefix, such as 10.0.0.0/8 or 2001:db8::/32, got \"10.0.0.1/8\""},
        {"proxy_protocol_from /33", "proxy_protocol_from = 10.0.0.0/33\n", 1, "got \"10.0.0.0/33"},
        {"proxy_protocol_from /129", "proxy_protocol_from = ::/129\n", 1, "got \"::/129\""},
        {"proxy_protocol_from /", "proxy_protocol_from = 10.0.0.0/\n", 1, "got \"10.0.0.0/\""},
        {"proxy_protocol_from name", "proxy_protocol_from = lb.example\n", 1, "got \"lb.example"},
        {"log_level verbose", "log_level = verbose\n", 1,
         "test.ini:4: log_level: expected error, warn, info or debug, got \"verbose\""},
        {"log_format xml", "log_format = xml\n", 1,
         "test.ini:4: log_format: expected text or json, got \"xml\""},
        {"backend address", "[backend:a]\naddress = 10.0.0.1\n", 1,
         "test.ini:5: address: expected IPv4:port or [IPv6]:port"},
        {"backend max_sessions", BACKEND_A "max_sessions = 0\n", 1,
         "test.ini:6: max_sessions: expected a whole number from 1 to 1000000"},
    };

    (void)state;
    run_bad(BASE, cases, PX_NELEM(cases));
}

static void test_hostnames(void **state)
{
    static const struct good_case good[] = {
        {"label of 63", "hostnames = " X50 "xxxxxxxxxxxxx.example\n", NULL},
        {"a wildcard and a name under it do not clash",
         "hostnames = *.example\n[backend:b]\naddress = 10.0.0.2:21\nhostnames = x.example\n",
         NULL},
    };
    static const struct bad_case bad[] = {
        {"leading hyphen", "hostnames = -a.example\n", 1,
         "test.ini:6: hostnames: expected host names such as ftp.example.com or *.example.com "
         "('*.' only as the whole first label), got \"-a.example\""},
        {"trailing hyphen", "hostnames = a-.example\n", 1, "got \"a-.example\""},
        {"hyphen ends the name", "hostnames = a.example-\n", 1, "got \"a.example-\""},
        {"empty label", "hostnames = a..example\n", 1, "got \"a..example\""},
        {"leading dot", "hostnames = .example\n", 1, "got \".example\""},
        {"two trailing dots", "hostnames = a.example..\n", 1, "got \"a.example..\""},
        {"star alone", "hostnames = *\n", 1, "got \"*\""},
        {"star dot", "hostnames = *.\n", 1, "got \"*.\""},
        {"star inside", "hostnames = a.*.example\n", 1, "got \"a.*.example\""},
        {"two stars", "hostnames = **.example\n", 1, "got \"**.example\""},
        {"star in a label", "hostnames = *a.example\n", 1, "got \"*a.example\""},
        {"underscore", "hostnames = a_b.example\n", 1, "got \"a_b.example\""},
        {"blank inside", "hostnames = a b.example\n", 1, "got \"a b.example\""},
        {"label of 64", "hostnames = " X50 "xxxxxxxxxxxxxx.example\n", 1, "expected host names"},
        {"claimed by two backends",
         "hostnames = x.example, y.example\n[backend:b]\naddress = 10.0.0.2:21\n"
         "hostnames = X.Example.\n",
         1,
         "test.ini:9: hostnames: x.example is claimed by both [backend:a] (line 6) and "
         "[backend:b] (line 9); give each name to one backend"},
    };

    (void)state;
    run_good(BASE BACKEND_A, good, PX_NELEM(good));
    run_bad(BASE BACKEND_A, bad, PX_NELEM(bad));
}

/* Sections, keys in the wrong place, keys given twice, keys missing. */
static void test_structure(void **state)
{
    static const struct bad_case cases[] = {
        {"empty file", "", 1,
         "test.ini:0: [proxy]: no such section in the file (hence line 0); expected [proxy] with "
         "at least certificate and private_key"},
        {"only comments", "; nothing\n\n# here\n", 1, "test.ini:0: [proxy]: no such section"},
        {"no [proxy]", BACKEND_A, 1, "test.ini:0: [proxy]: no such section"},
        {"missing certificate", "[proxy]\nprivate_key = /c.key\n", 1,
         "test.ini:1: certificate: missing from [proxy], the section that starts on this line; "
         "expected the central certificate (PEM)"},
        {"missing private_key", "[proxy]\ncertificate = /c.crt\n", 1,
         "test.ini:1: private_key: missing from [proxy], the section that starts on this line"},
        {"certificate left empty", "[proxy]\ncertificate =\nprivate_key = /c.key\n", 1,
         "test.ini:1: certificate: missing from [proxy]"},
        {"key outside a section", "banner = x\n" BASE, 1,
         "test.ini:1: banner: outside any section; expected [proxy] or [backend:NAME] before it"},
        {"unknown key", BASE "lisen = 0.0.0.0:21\n", 1,
         "test.ini:4: lisen: unknown key in [proxy]"},
        {"keys are case-sensitive", BASE "Listen = 0.0.0.0:21\n", 1,
         "test.ini:4: Listen: unknown key in [proxy]"},
        {"unknown key continued", BASE "lisen = 0.0.0.0:21\n  [::1]:21\n", 1,
         "test.ini:4: lisen: unknown key"},
        {"proxy key in a backend", BASE BACKEND_A "listen = 0.0.0.0:21\n", 1,
         "test.ini:6: listen: unknown key in [backend:a]"},
        {"backend key in [proxy]", BASE "hostnames = a.example\n", 1,
         "test.ini:4: hostnames: unknown key in [proxy]"},
        {"unknown section and its keys", BASE "[global]\nfoo = 1\nbar = 2\n", 1,
         "test.ini:4: [global]: unknown section; expected [proxy] or [backend:NAME]"},
        {"header without bracket", BASE "[backend:a\naddress = x\n", 1,
         "test.ini:4: expected a section header, [proxy] or [backend:NAME], got \"[backend:a\""},
        {"header with trailing text", BASE "[proxy] x\n", 1,
         "test.ini:4: expected a section header, [proxy] or [backend:NAME], got \"[proxy] x\""},
        {"header with blanks", BASE "[ proxy ]\n", 1, "test.ini:4: [ proxy ]: unknown section"},
        {"empty header", BASE "[]\n", 1, "test.ini:4: []: unknown section"},
        {"backend without name", BASE "[backend:]\naddress = 10.0.0.1:21\n", 1,
         "test.ini:4: [backend:]: expected a backend name of 1 to 63 letters, digits, '-', '_' "
         "or '.'"},
        {"backend name with a blank", BASE "[backend:a b]\n", 1,
         "test.ini:4: [backend:a b]: expected a backend name"},
        {"backend name of 64", BASE "[backend:" X50 "xxxxxxxxxxxxxx]\n", 1,
         "expected a backend name of 1 to 63"},
        {"not a key line", BASE "just words\n", 1,
         "test.ini:4: expected key = value, a [section] or a comment, got \"just words\""},
        {"empty key", BASE "= x\n", 1, "test.ini:4: expected key = value"},
        {"scalar given twice", BASE "banner = a\nbanner = b\n", 1,
         "test.ini:5: banner: given twice (first on line 4); give it once"},
        {"ca_file given twice", BASE "ca_file = /a\nca_file = /b\n", 1,
         "test.ini:5: ca_file: given twice (first on line 4); give it once"},
        {"given twice over two [proxy] sections", BASE "banner = a\n" BACKEND_A "[proxy]\nbanner = b\n",
         1, "test.ini:8: banner: given twice (first on line 4)"},
        {"certificate repeated: a list without its keys", BASE "certificate = /d.crt\n", 1,
         "test.ini:2: certificate: [proxy] lists 2 certificate files and 1 private_key file"},
        {"backend key given twice", BASE BACKEND_A "max_sessions = 2\nmax_sessions = 3\n", 1,
         "test.ini:7: max_sessions: given twice (first on line 6); give it once"},
        {"backend address listed twice", BASE BACKEND_A "address = 10.0.0.2:21, 10.0.0.1:21\n", 1,
         "test.ini:6: address: [backend:a]: 10.0.0.1:21 is listed twice (first on line 5); "
         "list each server once"},
        {"health_check out of range", BASE BACKEND_A "health_check = 3601\n", 1,
         "test.ini:6: health_check: expected a whole number from 0 to 3600, got \"3601\""},
        {"preconnect out of range", BASE BACKEND_A "preconnect = 257\n", 1,
         "test.ini:6: preconnect: expected a whole number from 0 to 256, got \"257\""},
        {"duplicate backend", BASE BACKEND_A BACKEND_A, 1,
         "test.ini:6: [backend:a]: backend a is already defined on line 4; give each backend one "
         "section"},
        {"backend without address", BASE "[backend:a]\nhostnames = a.example\n", 1,
         "test.ini:4: address: missing from [backend:a], the section that starts on this line; "
         "expected the plaintext FTP server as IPv4:port or [IPv6]:port with port 1..65535"},
        {"empty backends", BASE "[backend:a]\n[backend:b]\n", 2,
         "test.ini:4: address: missing from [backend:a]\n"
         "test.ini:5: address: missing from [backend:b]"},
        {"backend certificate without key", BASE BACKEND_A "certificate = /a.crt\n", 1,
         "test.ini:6: certificate: given without private_key in [backend:a]; give both or "
         "neither"},
        {"backend key without certificate", BASE BACKEND_A "private_key = /a.key\n", 1,
         "test.ini:6: private_key: given without certificate in [backend:a]; give both or "
         "neither"},
        {"default_backend unknown", BASE "default_backend = nope\n" BACKEND_A, 1,
         "test.ini:4: default_backend: no [backend:nope] section; expected the name of a backend"},
        {"proxy_protocol without sources", BASE "proxy_protocol = v1\n", 1,
         "test.ini:4: proxy_protocol: v1 needs proxy_protocol_from, the CIDRs allowed to send a "
         "PROXY header"},
        {"everything in one pass",
         "port = 21\n[proxy]\ncertificate = /a\nbanner = a\nbanner = b\nlisten = 1.2.3.4:0\n"
         "[x]\nk = v\n[backend:a]\ncertificate = /x\n[backend:a]\naddress = 10.0.0.1:21\n"
         "max_sessions = 0\n[proxy]\nproxy_protocol = v2\ndefault_backend = zz\nworkers = 99\n",
         12,
         "test.ini:1: port: outside any section\ntest.ini:5: banner: given twice\n"
         "test.ini:6: listen: expected\ntest.ini:7: [x]: unknown section\n"
         "test.ini:9: address: missing from [backend:a]\n"
         "test.ini:10: certificate: given without private_key\n"
         "test.ini:11: [backend:a]: backend a is already defined on line 9\n"
         "test.ini:13: max_sessions: expected\ntest.ini:17: workers: expected\n"
         "test.ini:2: private_key: missing\ntest.ini:15: proxy_protocol: v2 needs\n"
         "test.ini:16: default_backend: no [backend:zz]"},
    };

    (void)state;
    run_bad("", cases, PX_NELEM(cases));
}

/* Lines longer than inih's buffer, and bytes inih must never see. */
static void test_lines(void **state)
{
    static const struct good_case good[] = {
        {"199 characters", "banner = " X190 "\n", check_banner_199},
        {"long comment", "banner = hello ; " X190 "\n; " X190 X10 "\n", check_banner_hello},
        {"control character in a comment", "; a\x01z\n", NULL},
    };
    static const struct bad_case bad[] = {
        {"long hostnames line; its tail is no line",
         BACKEND_A "hostnames = " HOSTS16 ", listen = 1.2.3.4:0\n", 1,
         "test.ini:6: hostnames: line 6 is longer than 199 characters: split the list over "
         "several `hostnames =` lines"},
        {"long line, then its continuation", BACKEND_A "hostnames = " HOSTS16 "\n  h.example\n", 1,
         "test.ini:6: hostnames: line 6 is longer"},
        {"long continuation line", BACKEND_A "hostnames = a.example,\n  " HOSTS16 "\n", 1,
         "test.ini:7: hostnames: line 7 is longer than 199 characters: split the list over "
         "several `hostnames =` lines"},
        {"long listen line", "listen = " X190 X10 "\n", 1,
         "test.ini:4: listen: line 4 is longer than 199 characters: split the list over several "
         "`listen =` lines"},
        {"200 characters", "banner = " X190 "x\n", 1,
         "test.ini:4: banner: line 4 is longer than 199 characters, the most the INI reader "
         "takes"},
        {"long scalar line, tail like a key", "banner = " X190 "listen = 1.2.3.4:0\n", 1,
         "test.ini:4: banner: line 4 is longer than 199 characters"},
        {"long line of an unknown key", "foo = " X190 X10 "\n", 2,
         "test.ini:4: foo: line 4 is longer than 199\ntest.ini:4: foo: unknown key in [proxy]"},
        {"long header skips its keys", "[backend:" X190 "]\naddress = bogus\n", 1,
         "test.ini:4: line 4 is longer than 199 characters, the most the INI reader takes"},
        {"long line without a key", X190 X10 "\n", 1,
         "test.ini:4: line 4 is longer than 199 characters"},
        {"control character", "banner = a\x01z\n", 1,
         "test.ini:4: line 4 holds the control character 0x01; expected text"},
        {"carriage return inside a line", "banner = a\rb\n", 1,
         "test.ini:4: line 4 holds the control character 0x0d"},
        {"delete character", "banner = a\x7f\n", 1,
         "test.ini:4: line 4 holds the control character 0x7f"},
    };
    static const struct bad_case bad_first[] = {
        {"two byte order marks", BOM BOM "[a=b]\n  x\n" BASE, 2,
         "test.ini:1: line 1 starts with a second byte order mark; expected text\n"
         "test.ini:2: expected key = value, a [section] or a comment, got \"x\""},
    };

    (void)state;
    run_good(BASE, good, PX_NELEM(good));
    run_bad(BASE, bad, PX_NELEM(bad));
    run_bad("", bad_first, PX_NELEM(bad_first));
}

/* A NUL byte cannot sit in a case's string. */
static void test_nul(void **state)
{
    static const char ini[] = BASE "banner = a\0b\n";
    struct check_reports r = {0, ""};
    struct cfg *c = NULL;

    (void)state;
    CHECK_INT("nul", cfg_parse(ini, sizeof ini - 1, "test.ini", check_collect, &r, &c), PX_EINVAL);
    CHECK_STR("nul", r.text,
              "test.ini:4: line 4 holds the control character 0x00; expected text\n");
}

/* The whole file, read relative to tests/unit (the test's working directory). */
static char *read_whole(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *text = malloc(65536);

    assert_non_null(f);
    assert_non_null(text);
    *len = fread(text, 1, 65536, f);
    assert_true(*len < 65536);
    fclose(f);
    return text;
}

static void test_sample(void **state)
{
    struct check_reports r = {0, ""};
    struct cfg *c = NULL;
    size_t len;
    char *text = read_whole("../../config/ftpsgate.ini", &len);
    int rc = cfg_parse(text, len, "ftpsgate.ini", check_collect, &r, &c);

    (void)state;
    if (rc != 0)
        print_message("sample: %s", r.text);
    CHECK_INT("sample", rc, 0);
    CHECK_INT("sample", c->n_backends, 2);
    CHECK_STR("sample", c->backends[0].name, "alpha");
    CHECK_STR("sample", c->backends[1].name, "beta");
    CHECK_INT("sample", c->backends[0].certs.n_cert, 0);
    CHECK_STR("sample", c->backends[1].certs.cert[0], "/etc/ftpsgate/beta.crt");
    CHECK_INT("sample", c->backends[1].n_hostnames, 2);
    CHECK_INT("sample", c->default_backend, 0);
    CHECK_STR("sample", c->certs.cert[0], "/etc/ftpsgate/central.crt");
    cfg_free(c);
    free(text);
}

/* address lists: continued and repeated lines accumulate, up to 64; the
 * health keys' defaults and values. */
static void test_addresses(void **state)
{
    static const char ini[] = BASE "[backend:a]\naddress = 10.0.0.1:21, [::1]:2121\n"
                                   "  10.0.0.2:21\naddress = 10.0.0.3:21\nhealth_check = 0\n"
                                   "preconnect = 4\n[backend:b]\naddress = 10.0.0.4:21\n";
    struct check_reports r = {0, ""};
    struct cfg *c = NULL;
    char big[4096];
    size_t n;

    (void)state;
    CHECK_INT("list", cfg_parse(ini, sizeof ini - 1, "test.ini", check_collect, &r, &c), 0);
    CHECK_INT("list", c->backends[0].n_address, 4);
    CHECK_STR("list", c->backends[0].address[1].text, "[::1]:2121");
    CHECK_STR("list", c->backends[0].address[3].text, "10.0.0.3:21");
    CHECK_INT("list", c->backends[0].address[2].line, 6);
    CHECK_INT("list", c->backends[0].health_check, 0);
    CHECK_INT("list", c->backends[0].preconnect, 4);
    CHECK_INT("defaults", c->backends[1].n_address, 1);
    CHECK_INT("defaults", c->backends[1].health_check, 10);
    CHECK_INT("defaults", c->backends[1].preconnect, 0);
    cfg_free(c);

    for (unsigned want = 64; want <= 65; want++) {
        n = (size_t)snprintf(big, sizeof(big), BASE "[backend:a]\n");
        for (unsigned i = 0; i < want; i++)
            n += (size_t)snprintf(big + n, sizeof(big) - n, "address = 10.0.%u.%u:21\n", i / 200,
                                  i % 200 + 1);
        memset(&r, 0, sizeof(r));
        c = NULL;
        CHECK_INT("64 or 65", cfg_parse(big, n, "test.ini", check_collect, &r, &c),
                  want == 64 ? 0 : PX_EINVAL);
        if (want == 65)
            CHECK_STR("65", r.text,
                      "test.ini:69: address: [backend:a] lists 65 addresses; give at most 64\n");
        else
            CHECK_INT("64", c->backends[0].n_address, 64);
        cfg_free(c);
    }
}

static void test_cidr_contains(void **state)
{
    static const char ini[] = BASE "proxy_protocol_from = 10.0.0.0/8, 192.168.1.7, 2001:db8::/32,\n"
                                   "  ::ffff:172.16.0.0/108, 100.64.0.0/10\n";
    static const struct {
        const char *addr;
        bool in;
    } cases[] = {
        {"10.1.2.3", true},
        {"11.0.0.0", false},
        {"9.255.255.255", false},
        {"192.168.1.7", true},
        {"192.168.1.8", false},
        {"2001:db8::1", true},
        {"2001:db9::", false},
        {"::ffff:10.9.9.9", true},
        {"::ffff:11.0.0.1", false},
        {"172.31.255.255", true},
        {"172.32.0.0", false},
        {"100.127.0.1", true},
        {"100.128.0.1", false},
        {"::1", false},
        {"::ffff:192.168.1.7", true},
        {"::a00:1", false}, /* ::10.0.0.1, IPv4-compatible, not mapped */
    };
    struct check_reports r = {0, ""};
    struct cfg *c = NULL;
    struct cfg_cidr all[2];
    uint8_t addr[16];
    size_t i;

    (void)state;
    assert_int_equal(cfg_parse(ini, sizeof ini - 1, "test.ini", check_collect, &r, &c), 0);
    CHECK_INT("cidrs", c->n_proxy_protocol_from, 5);
    CHECK_INT("mapped kept as IPv4", c->proxy_protocol_from[3].family, AF_INET);
    CHECK_INT("mapped kept as IPv4", c->proxy_protocol_from[3].prefix, 12);
    for (i = 0; i < PX_NELEM(cases); i++) {
        int family = strchr(cases[i].addr, ':') != NULL ? AF_INET6 : AF_INET;

        assert_int_equal(inet_pton(family, cases[i].addr, addr), 1);
        CHECK_INT(cases[i].addr,
                  cfg_cidr_contains(c->proxy_protocol_from, c->n_proxy_protocol_from, family, addr),
                  cases[i].in);
    }
    cfg_free(c);

    /* /0 covers its whole family and nothing of the other. */
    memset(all, 0, sizeof all);
    all[0].family = AF_INET;
    all[1].family = AF_INET6;
    assert_int_equal(inet_pton(AF_INET, "203.0.113.9", addr), 1);
    CHECK_INT("v4 in 0.0.0.0/0", cfg_cidr_contains(all, 1, AF_INET, addr), 1);
    CHECK_INT("v4 not in ::/0", cfg_cidr_contains(all + 1, 1, AF_INET, addr), 0);
    assert_int_equal(inet_pton(AF_INET6, "2001:db8::9", addr), 1);
    CHECK_INT("v6 in ::/0", cfg_cidr_contains(all + 1, 1, AF_INET6, addr), 1);
    CHECK_INT("v6 not in 0.0.0.0/0", cfg_cidr_contains(all, 1, AF_INET6, addr), 0);
    CHECK_INT("empty list", cfg_cidr_contains(all, 0, AF_INET6, addr), 0);
}

static void test_names(void **state)
{
    (void)state;
    CHECK_STR("error", cfg_log_level_name(CFG_LOG_ERROR), "error");
    CHECK_STR("warn", cfg_log_level_name(CFG_LOG_WARN), "warn");
    CHECK_STR("info", cfg_log_level_name(CFG_LOG_INFO), "info");
    CHECK_STR("debug", cfg_log_level_name(CFG_LOG_DEBUG), "debug");
    CHECK_STR("level 9", cfg_log_level_name((enum cfg_log_level)9), "?");
    CHECK_STR("no", cfg_proxy_protocol_name(CFG_PP_NO), "no");
    CHECK_STR("v1", cfg_proxy_protocol_name(CFG_PP_V1), "v1");
    CHECK_STR("v2", cfg_proxy_protocol_name(CFG_PP_V2), "v2");
    CHECK_STR("any", cfg_proxy_protocol_name(CFG_PP_ANY), "any");
    CHECK_STR("pp 9", cfg_proxy_protocol_name((enum cfg_proxy_protocol)9), "?");
}

/* Several files into one configuration: an included file holds
 * [backend:NAME] sections only, its relative paths join its folder, its
 * problems name it and its own line numbers, and conflicts across files name
 * both. */
static void test_include(void **state)
{
    static const char main_ini[] =
        "[proxy]\ncertificate = c.crt\nprivate_key = /abs/c.key\ninclude = sites.d/*.ini\n";
    static const char site_a[] = "[backend:a]\naddress = 10.0.0.1:21\nhostnames = a.example\n"
                                 "certificate = a.crt\nprivate_key = keys/a.key\n";
    static const char site_b[] = "[backend:b]\naddress = 10.0.0.2:21\nhostnames = a.example\n"
                                 "[proxy]\nbanner = no\n[backend:a]\naddress = 10.0.0.3:21\n";
    struct check_reports r = {0, ""};
    struct cfg_parser *p;
    struct cfg *c = NULL;

    (void)state;
    p = cfg_begin(check_collect, &r, NULL, NULL);
    assert_non_null(p);
    cfg_feed(p, main_ini, strlen(main_ini), "/etc/f/main.ini", "/etc/f", true);
    CHECK_INT("include patterns", cfg_peek(p)->n_includes, 1);
    CHECK_STR("include pattern joined", cfg_peek(p)->includes[0], "/etc/f/sites.d/*.ini");
    cfg_feed(p, site_a, strlen(site_a), "/etc/f/sites.d/a.ini", "/etc/f/sites.d", false);
    CHECK_INT("good so far", r.n, 0);
    cfg_feed(p, site_b, strlen(site_b), "/etc/f/sites.d/b.ini", "/etc/f/sites.d", false);
    CHECK_INT("end", cfg_end(p, &c), PX_EINVAL);
    CHECK_INT("reports", r.n, 3);
    CHECK_INT("conflict names both files",
              strstr(r.text, "/etc/f/sites.d/b.ini:3: hostnames: a.example is claimed by both "
                             "[backend:a] (/etc/f/sites.d/a.ini, line 3) and [backend:b] "
                             "(line 3)") != NULL,
              1);
    CHECK_INT("[proxy] refused in an included file",
              strstr(r.text, "/etc/f/sites.d/b.ini:4: [proxy]: an included file holds "
                             "[backend:NAME] sections only") != NULL,
              1);
    CHECK_INT("a duplicate backend names the other file",
              strstr(r.text, "/etc/f/sites.d/b.ini:6: [backend:a]: backend a is already defined "
                             "in /etc/f/sites.d/a.ini on line 1") != NULL,
              1);

    /* Without b: relative paths joined to each file's folder. */
    r.n = 0;
    r.text[0] = '\0';
    p = cfg_begin(check_collect, &r, NULL, NULL);
    cfg_feed(p, main_ini, strlen(main_ini), "/etc/f/main.ini", "/etc/f", true);
    cfg_feed(p, site_a, strlen(site_a), "/etc/f/sites.d/a.ini", "/etc/f/sites.d", false);
    CHECK_INT("good", cfg_end(p, &c), 0);
    CHECK_STR("central relative", c->certs.cert[0], "/etc/f/c.crt");
    CHECK_STR("central absolute", c->certs.key[0], "/abs/c.key");
    CHECK_STR("site relative", c->backends[0].certs.cert[0], "/etc/f/sites.d/a.crt");
    CHECK_STR("site subfolder", c->backends[0].certs.key[0], "/etc/f/sites.d/keys/a.key");
    CHECK_STR("the backend's file", c->backends[0].file, "/etc/f/sites.d/a.ini");
    CHECK_INT("files", c->n_files, 2);
    cfg_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_key),  cmocka_unit_test(test_values),
        cmocka_unit_test(test_encodings),  cmocka_unit_test(test_lists),
        cmocka_unit_test(test_bad_values), cmocka_unit_test(test_hostnames),
        cmocka_unit_test(test_structure),  cmocka_unit_test(test_lines),
        cmocka_unit_test(test_nul),        cmocka_unit_test(test_sample),
        cmocka_unit_test(test_cidr_contains),
        cmocka_unit_test(test_addresses), cmocka_unit_test(test_include),
        cmocka_unit_test(test_names),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
