/* cfg.c - the configuration: INI text through inih into a struct cfg, with
 * defaults and every check that needs no other file. It opens no file: the
 * files the configuration names are checked through the caller's
 * cfg_file_fn (loader.c reads and checks them), and value syntax lives in
 * cfg_value.c.
 *
 * Debian's inih 55 gives its handler no line number and reads lines into a
 * 200-byte buffer, parsing the tail of a longer line as a line of its own.
 * So inih reads through read_line() below, which walks the text in memory,
 * counts lines, cuts comments (';' anywhere; inih wants a blank before it),
 * rejects over-long lines and control characters before inih sees them, and
 * keeps the current section, whose header inih reports to no one. inih calls
 * the handler, on_pair(), before it reads the next line, so the handler knows
 * its line. The keys are described by two tables: adding a key is one line. */
#include "cfg.h"

#include <arpa/inet.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cfg_int.h"
#include "px.h"

#define BACKEND_NAME_MAX 63
#define BOM "\xef\xbb\xbf" /* UTF-8 byte order mark */
#define INIH_NAME_MAX 49   /* inih keeps the key that indented lines continue in 50 bytes */
/* When inih and read_line() disagree about a line: a bug here, never a guess. */
#define INIH_DISAGREES "inih could not parse this line as expected"

#define P(field) offsetof(struct cfg, field)
#define B(field) offsetof(struct cfg_backend, field)

/* Defaults are set by set_defaults(); limits live here. */
static const struct key proxy_keys[] = {
    {"listen", KT_ADDR_LIST, P(listen), P(n_listen), 0, 0, NULL},
    {"listen_implicit", KT_ADDR_LIST, P(listen_implicit), P(n_listen_implicit), 0, 0, NULL},
    {"certificate", KT_PATH_LIST, P(certs.cert), P(certs.n_cert), 0, 0, NULL},
    {"private_key", KT_PATH_LIST, P(certs.key), P(certs.n_key), 0, 0, NULL},
    {"ca_file", KT_PATH, P(ca_file), 0, 0, 0, NULL},
    {"passive_ports", KT_PORT_RANGE, P(passive_min), P(passive_max), 1024, 65535, NULL},
    {"passive_address", KT_IPV4, P(passive_address), 0, 0, 0, NULL},
    {"default_backend", KT_BACKEND, 0, 0, 0, 0, NULL},
    {"host_separator", KT_SEPARATOR, P(host_separator), 0, 0, 0, NULL},
    {"route_by_sni", KT_BOOL, P(route_by_sni), 0, 0, 0, cfg_bool_words},
    {"require_tls", KT_BOOL, P(require_tls), 0, 0, 0, cfg_bool_words},
    {"require_protected_data", KT_BOOL, P(require_protected_data), 0, 0, 0, cfg_bool_words},
    {"require_session_reuse", KT_BOOL, P(require_session_reuse), 0, 0, 0, cfg_bool_words},
    {"shared_passive_ports", KT_BOOL, P(shared_passive_ports), 0, 0, 0, cfg_bool_words},
    {"allow_active", KT_BOOL, P(allow_active), 0, 0, 0, cfg_bool_words},
    {"tls_min_version", KT_WORD, P(tls_min_version), 0, 0, 0, cfg_tls_words},
    {"tls_ciphers", KT_STRING, P(tls_ciphers), 0, 0, 0, NULL},
    {"banner", KT_STRING, P(banner), 0, 0, 0, NULL},
    {"login_timeout", KT_UINT, P(login_timeout), 0, 1, 3600, NULL},
    {"idle_timeout", KT_UINT, P(idle_timeout), 0, 1, 86400, NULL},
    {"data_timeout", KT_UINT, P(data_timeout), 0, 1, 3600, NULL},
    {"connect_timeout", KT_UINT, P(connect_timeout), 0, 1, 300, NULL},
    {"shutdown_grace", KT_UINT, P(shutdown_grace), 0, 0, 3600, NULL},
    {"max_sessions", KT_UINT, P(max_sessions), 0, 1, 1000000, NULL},
    {"max_sessions_per_ip", KT_UINT, P(max_sessions_per_ip), 0, 1, 1000000, NULL},
    {"user", KT_STRING, P(user), 0, 0, 0, NULL},
    {"proxy_protocol", KT_WORD, P(proxy_protocol), 0, 0, 0, cfg_pp_words},
    {"proxy_protocol_from", KT_CIDR_LIST, P(proxy_protocol_from), P(n_proxy_protocol_from), 0, 0,
     NULL},
    {"metrics_listen", KT_ADDR, P(metrics_listen), 0, 0, 0, NULL},
    {"log_level", KT_WORD, P(log_level), 0, 0, 0, cfg_level_words},
    {"log_format", KT_WORD, P(log_format), 0, 0, 0, cfg_format_words},
    {"workers", KT_UINT, P(workers), 0, 1, 64, NULL},
    {"include", KT_GLOB_LIST, P(includes), P(n_includes), 0, 0, NULL},
    {"strict_sni", KT_BOOL, P(strict_sni), 0, 0, 0, cfg_bool_words},
    {"max_passive_per_ip", KT_UINT, P(max_passive_per_ip), 0, 1, 1000000, NULL},
    {"max_transfers_per_ip", KT_UINT, P(max_transfers_per_ip), 0, 1, 1000000, NULL},
    {"transfer_memory", KT_SIZE, P(transfer_memory), 0, 16, 1024 * 1024, NULL},
    {"ban_after", KT_UINT, P(ban_after), 0, 0, 1000000, NULL},
    {"ban_window", KT_UINT, P(ban_window), 0, 1, 86400 * 30, NULL},
    {"ban_time", KT_UINT, P(ban_time), 0, 1, 86400 * 365, NULL},
    {"ban_exempt", KT_CIDR_LIST, P(ban_exempt), P(n_ban_exempt), 0, 0, NULL},
};

static const struct key backend_keys[] = {
    {"hostnames", KT_HOSTS, B(hostnames), B(n_hostnames), 0, 0, NULL},
    {"address", KT_ADDR_LIST, B(address), B(n_address), 0, 0, NULL},
    {"health_check", KT_UINT, B(health_check), 0, 0, 3600, NULL},
    {"preconnect", KT_UINT, B(preconnect), 0, 0, 256, NULL},
    {"certificate", KT_PATH_LIST, B(certs.cert), B(certs.n_cert), 0, 0, NULL},
    {"private_key", KT_PATH_LIST, B(certs.key), B(certs.n_key), 0, 0, NULL},
    {"max_sessions", KT_UINT, B(max_sessions), 0, 1, 1000000, NULL},
};

_Static_assert(PX_NELEM(proxy_keys) <= CFG_PROXY_KEYS_MAX, "struct parser: proxy_seen");
_Static_assert(PX_NELEM(backend_keys) <= CFG_BACKEND_KEYS_MAX, "struct parser: backend_seen");

void cfg_report(struct parser *p, unsigned line, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Sends "FILE:LINE: KEY: message" (without "KEY: " when key is NULL). */
void cfg_report(struct parser *p, unsigned line, const char *key, const char *fmt, ...)
{
    char msg[512], out[4608]; /* out: room for a long file name too */
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(out, sizeof out, "%s:%u: %s%s%s", p->file, line, key != NULL ? key : "",
             key != NULL ? ": " : "", msg);
    p->errors++;
    p->report(p->arg, out);
}

char *cfg_dup(struct parser *p, const char *s, size_t n)
{
    char *d = strndup(s, n);

    if (d == NULL)
        p->nomem = true;
    return d;
}

char *cfg_dup_path(struct parser *p, const char *s, size_t n)
{
    size_t d = p->dir != NULL ? strlen(p->dir) : 0;
    char *out;

    if (d == 0 || (n > 0 && s[0] == '/'))
        return cfg_dup(p, s, n);
    out = malloc(d + 1 + n + 1);
    if (out == NULL) {
        p->nomem = true;
        return NULL;
    }
    memcpy(out, p->dir, d);
    out[d] = '/';
    memcpy(out + d + 1, s, n);
    out[d + 1 + n] = '\0';
    return out;
}

/* Appends a zeroed element to the array at base + k->off, whose count is at
 * base + k->aux, and returns it; NULL when memory runs out. The array field
 * is a T * accessed as a void * (one representation on POSIX; the build has
 * -fno-strict-aliasing). */
void *cfg_push(struct parser *p, char *base, const struct key *k, size_t size)
{
    void **arr = (void **)(void *)(base + k->off);
    size_t *n = (size_t *)(void *)(base + k->aux);
    char *grown = realloc(*arr, (*n + 1) * size);

    if (grown == NULL) {
        p->nomem = true;
        return NULL;
    }
    *arr = grown;
    memset(grown + *n * size, 0, size);
    return grown + (*n)++ * size;
}

bool cfg_is_list(enum key_type t)
{
    return t == KT_ADDR_LIST || t == KT_CIDR_LIST || t == KT_HOSTS || t == KT_PATH_LIST ||
           t == KT_GLOB_LIST;
}

/* The key called name in section sec, or NULL; *seen (when seen is not NULL)
 * points to the line where it was first given. */
const struct key *cfg_find_key(struct parser *p, enum section sec, const char *name,
                                  unsigned **seen)
{
    const struct key *keys = proxy_keys;
    size_t n = PX_NELEM(proxy_keys), i;
    unsigned *lines = p->proxy_seen;

    if (sec == SEC_BACKEND) {
        keys = backend_keys;
        n = PX_NELEM(backend_keys);
        lines = p->backend_seen;
    } else if (sec != SEC_PROXY) {
        return NULL;
    }
    for (i = 0; i < n; i++) {
        if (strcmp(keys[i].name, name) == 0) {
            if (seen != NULL)
                *seen = &lines[i];
            return &keys[i];
        }
    }
    return NULL;
}

/* Line where a key of section sec was first given, 0 when it was not. */
unsigned cfg_given(struct parser *p, enum section sec, const char *name)
{
    unsigned *seen;
    const struct key *k = cfg_find_key(p, sec, name, &seen);

    PX_ASSERT(k != NULL);
    return *seen;
}

/* inih's handler. The section argument is always "": read_line() keeps the
 * sections itself. Always returns 1 (success): problems are reported here. */
static int on_pair(void *user, const char *section, const char *name, const char *value)
{
    struct parser *p = user;
    const struct key *k;
    unsigned *seen;
    char *base;

    (void)section;
    if (strncmp(name, p->key, INIH_NAME_MAX) != 0) {
        cfg_report(p, p->line, NULL, INIH_DISAGREES);
        return 1;
    }
    if (p->sec == SEC_SKIP)
        return 1; /* its header was reported */
    k = cfg_find_key(p, p->sec, name, &seen);
    if (k == NULL) {
        if (p->continuation)
            return 1; /* its key was reported */
        if (p->sec == SEC_NONE)
            cfg_report(p, p->line, name,
                   "outside any section; expected [proxy] or [backend:NAME] before it");
        else if (p->sec == SEC_PROXY)
            cfg_report(p, p->line, name, "unknown key in [proxy]");
        else
            cfg_report(p, p->line, name, "unknown key in [backend:%s]",
                   p->c->backends[p->c->n_backends - 1].name);
        return 1;
    }
    if (value[0] == '\0')
        return 1; /* an empty value leaves the key unset */
    if (!cfg_is_list(k->type) && p->continuation) {
        cfg_report(p, p->line, name, "takes one value, so it cannot continue on an indented line");
        return 1;
    }
    if (!cfg_is_list(k->type) && *seen != 0) {
        cfg_report(p, p->line, name, "given twice (first on line %u); give it once", *seen);
        return 1;
    }
    if (*seen == 0)
        *seen = p->line;
    if (p->sec == SEC_PROXY)
        base = (char *)p->c;
    else
        base = (char *)&p->c->backends[p->c->n_backends - 1];
    cfg_set_value(p, k, base, value);
    return 1;
}

/* At the end of a [backend:NAME] section: what needs the whole section. */
static bool is_name_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '_' || ch == '.';
}

static void add_backend(struct parser *p, const char *name, size_t n)
{
    struct cfg *c = p->c;
    struct cfg_backend *grown;
    char *copy;
    uint64_t first;
    size_t i;

    for (i = 0; i < n && is_name_char(name[i]); i++)
        ;
    if (n == 0 || n > BACKEND_NAME_MAX || i < n) {
        cfg_report(p, p->line, NULL,
               "[backend:%.*s]: expected a backend name of 1 to %d letters, digits, '-', '_' "
               "or '.'",
               (int)n, name, BACKEND_NAME_MAX);
        return;
    }
    if (hmap_get(&c->names, name, n, &first))
        cfg_report(p, p->line, NULL,
                   "[backend:%.*s]: backend %.*s is already defined %s%s%son line %u; give each "
                   "backend one section",
                   (int)n, name, (int)n, name, c->backends[first].file == p->file ? "" : "in ",
                   c->backends[first].file == p->file ? "" : c->backends[first].file,
                   c->backends[first].file == p->file ? "" : " ", c->backends[first].line);
    grown = realloc(c->backends, (c->n_backends + 1) * sizeof *c->backends);
    if (grown == NULL) {
        p->nomem = true;
        return;
    }
    c->backends = grown;
    copy = cfg_dup(p, name, n);
    if (copy == NULL)
        return;
    memset(&grown[c->n_backends], 0, sizeof *grown);
    grown[c->n_backends].name = copy;
    grown[c->n_backends].file = p->file;
    if (hmap_put(&c->names, copy, n, c->n_backends, NULL) == PX_ENOMEM)
        p->nomem = true;
    grown[c->n_backends].line = p->line;
    grown[c->n_backends].health_check = 10;
    c->n_backends++;
    p->sec = SEC_BACKEND;
}

/* A "[...]" line of n characters; fits is false when it was too long (and
 * reported). Ends the current section and starts the next. */
static void begin_section(struct parser *p, const char *s, size_t n, bool fits)
{
    static const char backend[] = "backend:";
    const size_t blen = sizeof backend - 1;

    if (p->sec == SEC_BACKEND)
        cfg_check_backend(p);
    p->sec = SEC_SKIP;
    p->key[0] = '\0';
    memset(p->backend_seen, 0, sizeof p->backend_seen);
    if (!fits)
        return;
    if (memchr(s, ']', n) != s + n - 1) {
        cfg_report(p, p->line, NULL,
               "expected a section header, [proxy] or [backend:NAME], got \"%.*s\"", (int)n, s);
    } else if (n == 7 && memcmp(s, "[proxy]", 7) == 0 && !p->main) {
        cfg_report(p, p->line, NULL,
                   "[proxy]: an included file holds [backend:NAME] sections only; [proxy] "
                   "belongs in the main file");
    } else if (n == 7 && memcmp(s, "[proxy]", 7) == 0) {
        p->sec = SEC_PROXY;
        if (p->proxy_line == 0)
            p->proxy_line = p->line;
    } else if (n - 2 >= blen && memcmp(s + 1, backend, blen) == 0) {
        add_backend(p, s + 1 + blen, n - 2 - blen);
    } else {
        cfg_report(p, p->line, NULL, "%.*s: unknown section; expected [proxy] or [backend:NAME]",
               (int)n, s);
    }
}

static void report_long_line(struct parser *p, const char *key, int size)
{
    const struct key *k = key != NULL ? cfg_find_key(p, p->sec, key, NULL) : NULL;

    if (k != NULL && cfg_is_list(k->type))
        cfg_report(p, p->line, key,
               "line %u is longer than %d characters: split the list over several `%s =` lines",
               p->line, size - 1, key);
    else
        cfg_report(p, p->line, key,
               "line %u is longer than %d characters, the most the INI reader takes", p->line,
               size - 1);
}

/* inih's reader: copies the next line of p->text into buf[size] the way inih
 * should see it, or returns NULL at the end. A line inih must not parse is
 * reported and handed over as "" (inih skips it), as "[]" (a section header:
 * inih stops continuing the last key there), or, when an over-long line
 * starts a key, as "key=" so that indented lines after it continue that key
 * in inih as they do here (the empty value sets nothing). p->key mirrors
 * inih's memory of the last key, which decides what an indented line is. */
static char *read_line(char *buf, int size, void *stream)
{
    struct parser *p = stream;
    const char *s = p->text + p->pos, *nl, *semi, *sep;
    size_t n, indent = 0, i, klen;
    bool fits;

    PX_ASSERT(size > (int)sizeof p->key + 1);
    if (p->pos >= p->len)
        return NULL;
    nl = memchr(s, '\n', p->len - p->pos);
    n = nl != NULL ? (size_t)(nl - s) : p->len - p->pos;
    p->pos += n + (nl != NULL);
    p->line++;
    p->continuation = false;
    buf[0] = '\0';

    semi = memchr(s, ';', n);
    if (semi != NULL)
        n = (size_t)(semi - s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        n--;
    while (indent < n && (s[indent] == ' ' || s[indent] == '\t'))
        indent++;
    if (indent == n || s[indent] == '#')
        return buf; /* blank, or a comment */
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];

        if ((ch < ' ' && ch != '\t') || ch == 0x7f) {
            cfg_report(p, p->line, NULL, "line %u holds the control character 0x%02x; expected text",
                   p->line, (unsigned)ch);
            return buf;
        }
    }
    /* parse() skipped one; inih drops one more at the start of line 1, so
     * its line would not be the one classified here. */
    if (p->line == 1 && n >= 3 && memcmp(s, BOM, 3) == 0) {
        cfg_report(p, p->line, NULL, "line 1 starts with a second byte order mark; expected text");
        return buf;
    }
    fits = n < (size_t)size;

    if (indent > 0 && p->key[0] != '\0') {
        p->continuation = true;
        if (!fits) {
            report_long_line(p, p->key, size);
            return buf;
        }
    } else if (s[indent] == '[') {
        if (!fits)
            report_long_line(p, NULL, size);
        begin_section(p, s + indent, n - indent, fits);
        memcpy(buf, "[]", 3);
        return buf;
    } else {
        for (sep = s + indent; sep < s + n && *sep != '=' && *sep != ':'; sep++)
            ;
        klen = (size_t)(sep - s) - indent;
        while (klen > 0 && (s[indent + klen - 1] == ' ' || s[indent + klen - 1] == '\t'))
            klen--;
        if (sep == s + n || klen == 0 || (!fits && klen >= sizeof p->key)) {
            if (!fits)
                report_long_line(p, NULL, size);
            else
                cfg_report(p, p->line, NULL,
                       "expected key = value, a [section] or a comment, got \"%.*s\"",
                       (int)(n - indent), s + indent);
            return buf;
        }
        cfg_copy_text(p->key, sizeof p->key, s + indent,
                  klen < sizeof p->key ? klen : sizeof p->key - 1);
        if (!fits) {
            report_long_line(p, p->key, size);
            memcpy(buf, p->key, klen);
            memcpy(buf + klen, "=", 2);
            return buf;
        }
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
    return buf;
}

static void set_defaults(struct parser *p)
{
    struct cfg *c = p->c;

    c->passive_min = 61000; /* above Linux's default ephemeral range, 32768-60999 */
    c->passive_max = 61999;
    c->default_backend = -1;
    c->host_separator = '|';
    c->route_by_sni = true;
    c->require_tls = true;
    c->require_protected_data = true;
    c->require_session_reuse = true;
    c->tls_min_version = 12;
    c->banner = cfg_dup(p, "FTP proxy ready", 15);
    c->login_timeout = 30;
    c->idle_timeout = 600;
    c->data_timeout = 60;
    c->connect_timeout = 5;
    c->shutdown_grace = 30;
    c->max_sessions = 4096;
    c->max_sessions_per_ip = 64;
    c->proxy_protocol = CFG_PP_NO;
    c->log_level = CFG_LOG_INFO;
    c->log_format = CFG_LOG_TEXT;
    c->workers = 1;
    c->max_passive_per_ip = 32;
    c->max_transfers_per_ip = 32;
    c->transfer_memory = 1024u * 1024 * 1024;
    c->ban_after = 10;
    c->ban_window = 600;
    c->ban_time = 900;
}

/* After the last line: what needs the whole file. */
static void finish(struct parser *p)
{
    struct cfg *c = p->c;
    unsigned pp = cfg_given(p, SEC_PROXY, "proxy_protocol");
    int rc;

    if (p->proxy_line == 0) {
        cfg_report(p, 0, "[proxy]",
               "no such section in the file (hence line 0); expected [proxy] with at least "
               "certificate and private_key");
    } else {
        if (c->certs.n_cert == 0)
            cfg_report(p, p->proxy_line, "certificate",
                   "missing from [proxy], the section that starts on this line; expected the "
                   "central certificate (PEM)");
        if (c->certs.n_key == 0)
            cfg_report(p, p->proxy_line, "private_key",
                   "missing from [proxy], the section that starts on this line; expected the key "
                   "of the central certificate (PEM)");
        if (c->certs.n_cert > 0 && c->certs.n_key > 0)
            cfg_check_pairs(p, &c->certs, cfg_given(p, SEC_PROXY, "certificate"), "[proxy]");
        c->certificate_line = cfg_given(p, SEC_PROXY, "certificate");
    }
    if (c->proxy_protocol != CFG_PP_NO && c->n_proxy_protocol_from == 0)
        cfg_report(p, pp, "proxy_protocol",
               "%s needs proxy_protocol_from, the CIDRs allowed to send a PROXY header",
               cfg_proxy_protocol_name(c->proxy_protocol));
    if (p->default_backend != NULL) {
        c->default_backend = cfg_backend_index(c, p->default_backend);
        if (c->default_backend < 0)
            cfg_report(p, cfg_given(p, SEC_PROXY, "default_backend"), "default_backend",
                   "no [backend:%s] section; expected the name of a backend", p->default_backend);
    }
    c->has_passive_address = cfg_given(p, SEC_PROXY, "passive_address") != 0;
    c->has_metrics_listen = cfg_given(p, SEC_PROXY, "metrics_listen") != 0;
    if (c->n_listen == 0 && c->n_listen_implicit == 0) {
        c->listen = calloc(1, sizeof *c->listen);
        if (c->listen == NULL) {
            p->nomem = true;
            return;
        }
        rc = cfg_parse_addr("0.0.0.0:21", 10, c->listen);
        PX_ASSERT(rc == 0);
        c->n_listen = 1;
    }
}

static int index_endpoints(struct cfg *c);

struct cfg_parser *cfg_begin(cfg_report_fn *report_fn, void *arg, cfg_file_fn *check,
                             void *check_arg)
{
    struct parser *p = calloc(1, sizeof(*p));

    if (p == NULL)
        return NULL;
    p->report = report_fn;
    p->arg = arg;
    p->check_file = check;
    p->check_arg = check_arg;
    p->c = calloc(1, sizeof(*p->c));
    if (p->c == NULL) {
        free(p);
        return NULL;
    }
    set_defaults(p);
    return (struct cfg_parser *)p;
}

/* Keeps name among the configuration's file names; returns the copy. */
static const char *keep_file_name(struct parser *p, const char *name)
{
    char **grown = realloc(p->c->files, (p->c->n_files + 1) * sizeof(*grown));
    char *copy = strdup(name);

    if (grown == NULL || copy == NULL) {
        if (grown != NULL)
            p->c->files = grown;
        free(copy);
        p->nomem = true;
        return name;
    }
    p->c->files = grown;
    p->c->files[p->c->n_files++] = copy;
    return copy;
}

void cfg_feed(struct cfg_parser *cp, const char *text, size_t len, const char *name,
              const char *dir, bool main)
{
    struct parser *p = (struct parser *)cp;
    int rc;

    p->file = keep_file_name(p, name);
    if (main && p->c->path == NULL)
        p->c->path = cfg_dup(p, name, strlen(name));
    p->dir = dir;
    p->main = main;
    p->text = text;
    p->len = len;
    p->pos = len >= 3 && memcmp(text, BOM, 3) == 0 ? 3 : 0;
    p->line = 0;
    p->continuation = false;
    p->key[0] = '\0';
    p->sec = SEC_NONE;
    memset(p->backend_seen, 0, sizeof(p->backend_seen));
    rc = ini_parse_stream(read_line, p, on_pair, p);
    if (rc > 0) /* read_line() hands inih only lines it can parse */
        cfg_report(p, (unsigned)rc, NULL, INIH_DISAGREES);
    else if (rc < 0)
        p->nomem = true;
    if (p->sec == SEC_BACKEND)
        cfg_check_backend(p);
    p->sec = SEC_NONE;
    p->dir = NULL;
}

const struct cfg *cfg_peek(const struct cfg_parser *cp)
{
    return ((const struct parser *)cp)->c;
}

void cfg_report_at(struct cfg_parser *cp, const char *msg)
{
    struct parser *p = (struct parser *)cp;

    p->errors++;
    p->report(p->arg, msg);
}

int cfg_end(struct cfg_parser *cp, struct cfg **out)
{
    struct parser *p = (struct parser *)cp;
    int rc;

    *out = NULL;
    p->file = p->c->path != NULL ? p->c->path : "";
    finish(p);
    free(p->default_backend);
    free(p->hosts);
    hmap_free(&p->seen);
    if (p->errors == 0 && !p->nomem && (cfg_index_hosts(p->c) != 0 || index_endpoints(p->c) != 0))
        p->nomem = true;
    rc = p->nomem ? PX_ENOMEM : p->errors > 0 ? PX_EINVAL : 0;
    if (rc != 0)
        cfg_free(p->c);
    else
        *out = p->c;
    free(p);
    return rc;
}

int cfg_parse_checked(const char *text, size_t len, const char *name, cfg_report_fn *report_fn,
                      void *arg, cfg_file_fn *check, void *check_arg, struct cfg **out)
{
    struct cfg_parser *p = cfg_begin(report_fn, arg, check, check_arg);

    *out = NULL;
    if (p == NULL)
        return PX_ENOMEM;
    cfg_feed(p, text, len, name, NULL, true);
    return cfg_end(p, out);
}

int cfg_parse(const char *text, size_t len, const char *name, cfg_report_fn *report_fn, void *arg,
              struct cfg **out)
{
    return cfg_parse_checked(text, len, name, report_fn, arg, NULL, NULL, out);
}

static void free_certs(struct cfg_certs *c)
{
    for (size_t i = 0; i < c->n_cert; i++)
        free(c->cert[i]);
    for (size_t i = 0; i < c->n_key; i++)
        free(c->key[i]);
    free(c->cert);
    free(c->key);
}

void cfg_free(struct cfg *c)
{
    size_t i, j;

    if (c == NULL)
        return;
    for (i = 0; i < c->n_backends; i++) {
        for (j = 0; j < c->backends[i].n_hostnames; j++)
            free(c->backends[i].hostnames[j]);
        free(c->backends[i].hostnames);
        free(c->backends[i].name);
        free(c->backends[i].address);
        free_certs(&c->backends[i].certs);
    }
    free(c->backends);
    free(c->path);
    free(c->listen);
    free(c->listen_implicit);
    free_certs(&c->certs);
    free(c->ca_file);
    free(c->tls_ciphers);
    free(c->banner);
    free(c->user);
    free(c->proxy_protocol_from);
    free(c->ban_exempt);
    for (i = 0; i < c->n_includes; i++)
        free(c->includes[i]);
    free(c->includes);
    for (i = 0; i < c->n_files; i++)
        free(c->files[i]);
    free(c->files);
    hmap_free(&c->hostmap);
    hmap_free(&c->names);
    hmap_free(&c->endpoints);
    free(c->endpoint_keys);
    free(c);
}

static void endpoint_key(const struct sockaddr *sa, uint8_t key[18])
{
    uint16_t port = htons(px_port(sa));

    px_ip16(sa, key);
    memcpy(key + 16, &port, 2);
}

/* The endpoints map of c (cfg_is_endpoint). 0 or PX_ENOMEM. */
static int index_endpoints(struct cfg *c)
{
    size_t nb = 0, k = 0, n;
    const struct cfg_addr **all;

    for (size_t b = 0; b < c->n_backends; b++)
        nb += c->backends[b].n_address;
    n = c->n_listen + c->n_listen_implicit + nb + 1;
    c->endpoint_keys = calloc(n, sizeof(*c->endpoint_keys));
    all = calloc(n, sizeof(*all));
    if (c->endpoint_keys == NULL || all == NULL) {
        free(all);
        return PX_ENOMEM;
    }
    for (size_t i = 0; i < c->n_listen; i++)
        all[k++] = &c->listen[i];
    for (size_t i = 0; i < c->n_listen_implicit; i++)
        all[k++] = &c->listen_implicit[i];
    for (size_t b = 0; b < c->n_backends; b++)
        for (size_t i = 0; i < c->backends[b].n_address; i++)
            all[k++] = &c->backends[b].address[i];
    if (c->has_metrics_listen)
        all[k++] = &c->metrics_listen;
    n = k;
    k = 0;
    for (size_t i = 0; i < n; i++) {
        const struct cfg_addr *a = all[i];

        if (a->salen == 0)
            continue;
        endpoint_key((const struct sockaddr *)&a->sa, c->endpoint_keys[k]);
        if (hmap_put(&c->endpoints, (const char *)c->endpoint_keys[k], 18, 1, NULL) == PX_ENOMEM) {
            free(all);
            return PX_ENOMEM;
        }
        k++;
    }
    free(all);
    return 0;
}

bool cfg_is_endpoint(const struct cfg *c, const struct sockaddr *sa)
{
    static const uint8_t any4[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0};
    uint8_t key[18];
    uint64_t v;

    endpoint_key(sa, key);
    if (hmap_get(&c->endpoints, (const char *)key, 18, &v))
        return true;
    memcpy(key, any4, 16); /* a listener on 0.0.0.0 */
    if (hmap_get(&c->endpoints, (const char *)key, 18, &v))
        return true;
    memset(key, 0, 16); /* on :: */
    return hmap_get(&c->endpoints, (const char *)key, 18, &v);
}

int cfg_index_hosts(struct cfg *c)
{
    hmap_free(&c->hostmap);
    for (size_t b = 0; b < c->n_backends; b++) {
        const struct cfg_backend *be = &c->backends[b];

        for (size_t h = 0; h < be->n_hostnames; h++)
            if (hmap_put(&c->hostmap, be->hostnames[h], strlen(be->hostnames[h]),
                         (uint64_t)b << 32 | h, NULL) == PX_ENOMEM)
                return PX_ENOMEM;
    }
    return 0;
}

int cfg_backend_index(const struct cfg *c, const char *name)
{
    uint64_t v;

    return hmap_get(&c->names, name, strlen(name), &v) ? (int)v : -1;
}

