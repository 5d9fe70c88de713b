/* cfg.c - the configuration: INI text through inih into a struct cfg, with
 * defaults and every check that needs no other file; cfg_load() adds the
 * checks of the files the configuration names.
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
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "px.h"

#define CFG_FILE_MAX (1024 * 1024) /* cfg_load() refuses larger files */
#define BACKEND_NAME_MAX 63
#define HOST_NAME_MAX_LEN 253
#define BOM "\xef\xbb\xbf" /* UTF-8 byte order mark */
#define INIH_NAME_MAX 49   /* inih keeps the key that indented lines continue in 50 bytes */
/* When inih and read_line() disagree about a line: a bug here, never a guess. */
#define INIH_DISAGREES "inih could not parse this line as expected"

enum key_type {
    KT_BOOL = 0,   /* bool */
    KT_WORD,       /* int or enum: one of words[] */
    KT_UINT,       /* unsigned in min..max */
    KT_STRING,     /* char *, owned */
    KT_PATH,       /* char *, owned: a file that cfg_load() opens */
    KT_ADDR,       /* struct cfg_addr */
    KT_IPV4,       /* uint8_t[4] */
    KT_PORT_RANGE, /* uint16_t low at off, high at aux, both in min..max */
    KT_SEPARATOR,  /* char */
    KT_BACKEND,    /* a backend name, resolved once every backend is known */
    KT_ADDR_LIST,  /* struct cfg_addr *, count (size_t) at aux */
    KT_CIDR_LIST,  /* struct cfg_cidr *, count at aux */
    KT_HOSTS,      /* char **, count at aux */
};

struct word {
    const char *text;
    int value;
};

struct key {
    const char *name;
    enum key_type type;
    size_t off; /* the field in struct cfg or struct cfg_backend */
    size_t aux; /* see enum key_type */
    unsigned min, max;
    const struct word *words; /* KT_BOOL, KT_WORD: ends with a NULL text */
};

/* KT_WORD stores through an int *. */
_Static_assert(sizeof(enum cfg_log_level) == sizeof(int), "enum size");
_Static_assert(sizeof(enum cfg_log_format) == sizeof(int), "enum size");
_Static_assert(sizeof(enum cfg_proxy_protocol) == sizeof(int), "enum size");

static const struct word bool_words[] = {{"yes", 1},   {"no", 0}, {"true", 1},
                                         {"false", 0}, {"on", 1}, {"off", 0},
                                         {"1", 1},     {"0", 0},  {NULL, 0}};
static const struct word tls_words[] = {{"1.2", 12}, {"1.3", 13}, {NULL, 0}};
static const struct word pp_words[] = {
    {"no", CFG_PP_NO}, {"v1", CFG_PP_V1}, {"v2", CFG_PP_V2}, {"any", CFG_PP_ANY}, {NULL, 0}};
static const struct word level_words[] = {{"error", CFG_LOG_ERROR},
                                          {"warn", CFG_LOG_WARN},
                                          {"info", CFG_LOG_INFO},
                                          {"debug", CFG_LOG_DEBUG},
                                          {NULL, 0}};
static const struct word format_words[] = {
    {"text", CFG_LOG_TEXT}, {"json", CFG_LOG_JSON}, {NULL, 0}};

#define P(field) offsetof(struct cfg, field)
#define B(field) offsetof(struct cfg_backend, field)

/* Defaults are set by set_defaults(); limits live here. */
static const struct key proxy_keys[] = {
    {"listen", KT_ADDR_LIST, P(listen), P(n_listen), 0, 0, NULL},
    {"listen_implicit", KT_ADDR_LIST, P(listen_implicit), P(n_listen_implicit), 0, 0, NULL},
    {"certificate", KT_PATH, P(certificate), 0, 0, 0, NULL},
    {"private_key", KT_PATH, P(private_key), 0, 0, 0, NULL},
    {"ca_file", KT_PATH, P(ca_file), 0, 0, 0, NULL},
    {"passive_ports", KT_PORT_RANGE, P(passive_min), P(passive_max), 1024, 65535, NULL},
    {"passive_address", KT_IPV4, P(passive_address), 0, 0, 0, NULL},
    {"default_backend", KT_BACKEND, 0, 0, 0, 0, NULL},
    {"host_separator", KT_SEPARATOR, P(host_separator), 0, 0, 0, NULL},
    {"route_by_sni", KT_BOOL, P(route_by_sni), 0, 0, 0, bool_words},
    {"require_tls", KT_BOOL, P(require_tls), 0, 0, 0, bool_words},
    {"require_protected_data", KT_BOOL, P(require_protected_data), 0, 0, 0, bool_words},
    {"require_session_reuse", KT_BOOL, P(require_session_reuse), 0, 0, 0, bool_words},
    {"allow_active", KT_BOOL, P(allow_active), 0, 0, 0, bool_words},
    {"tls_min_version", KT_WORD, P(tls_min_version), 0, 0, 0, tls_words},
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
    {"proxy_protocol", KT_WORD, P(proxy_protocol), 0, 0, 0, pp_words},
    {"proxy_protocol_from", KT_CIDR_LIST, P(proxy_protocol_from), P(n_proxy_protocol_from), 0, 0,
     NULL},
    {"metrics_listen", KT_ADDR, P(metrics_listen), 0, 0, 0, NULL},
    {"log_level", KT_WORD, P(log_level), 0, 0, 0, level_words},
    {"log_format", KT_WORD, P(log_format), 0, 0, 0, format_words},
    {"workers", KT_UINT, P(workers), 0, 1, 64, NULL},
};

static const struct key backend_keys[] = {
    {"hostnames", KT_HOSTS, B(hostnames), B(n_hostnames), 0, 0, NULL},
    {"address", KT_ADDR, B(address), 0, 0, 0, NULL},
    {"certificate", KT_PATH, B(certificate), 0, 0, 0, NULL},
    {"private_key", KT_PATH, B(private_key), 0, 0, 0, NULL},
    {"max_sessions", KT_UINT, B(max_sessions), 0, 1, 1000000, NULL},
};

enum section { SEC_NONE = 0, SEC_PROXY, SEC_BACKEND, SEC_SKIP /* unknown or malformed */ };

struct host_ref {
    const char *name; /* borrowed from the backend's hostnames */
    size_t backend;
    unsigned line;
};

struct parser {
    const char *text; /* borrowed: the whole file, not NUL-terminated */
    size_t len, pos;
    const char *file; /* the name used in messages */
    cfg_report_fn *report;
    void *arg;
    bool check_files; /* cfg_load(): open every file named */
    unsigned errors;
    bool nomem;

    unsigned line;       /* the line inih is working on */
    bool continuation;   /* that line is indented: it continues key's value */
    char key[64];        /* last key of this section, as inih's own "prev_name" */
    enum section sec;    /* SEC_BACKEND: the last of c->backends */
    unsigned proxy_line; /* first [proxy] header, 0 while none */
    unsigned proxy_seen[PX_NELEM(proxy_keys)]; /* line each key was first given */
    unsigned backend_seen[PX_NELEM(backend_keys)];
    char *default_backend;  /* owned */
    struct host_ref *hosts; /* owned: every host name so far, to find conflicts */
    size_t n_hosts;
    struct cfg *c; /* owned until returned */
};

static void report(struct parser *p, unsigned line, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Sends "FILE:LINE: KEY: message" (without "KEY: " when key is NULL). */
static void report(struct parser *p, unsigned line, const char *key, const char *fmt, ...)
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

static char *dup_text(struct parser *p, const char *s, size_t n)
{
    char *d = strndup(s, n);

    if (d == NULL)
        p->nomem = true;
    return d;
}

/* Appends a zeroed element to the array at base + k->off, whose count is at
 * base + k->aux, and returns it; NULL when memory runs out. The array field
 * is a T * accessed as a void * (one representation on POSIX; the build has
 * -fno-strict-aliasing). */
static void *push(struct parser *p, char *base, const struct key *k, size_t size)
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

static void trim(const char **s, size_t *n)
{
    while (*n > 0 && (**s == ' ' || **s == '\t')) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t'))
        (*n)--;
}

static bool is_list(enum key_type t)
{
    return t == KT_ADDR_LIST || t == KT_CIDR_LIST || t == KT_HOSTS;
}

/* The key called name in section sec, or NULL; *seen (when seen is not NULL)
 * points to the line where it was first given. */
static const struct key *find_key(struct parser *p, enum section sec, const char *name,
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
static unsigned given(struct parser *p, enum section sec, const char *name)
{
    unsigned *seen;
    const struct key *k = find_key(p, sec, name, &seen);

    PX_ASSERT(k != NULL);
    return *seen;
}

/* Numbers, digit by digit. 0, or PX_EINVAL (not digits) or PX_ERANGE. */
static int parse_uint(const char *s, size_t n, unsigned min, unsigned max, unsigned *out)
{
    unsigned long long v = 0;
    size_t i;

    if (n == 0)
        return PX_EINVAL;
    for (i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return PX_EINVAL;
        v = v * 10 + (unsigned)(s[i] - '0');
        if (v > max)
            return PX_ERANGE;
    }
    if (v < min)
        return PX_ERANGE;
    *out = (unsigned)v;
    return 0;
}

/* Copies n bytes into dst[cap] as a string; false when they do not fit. */
static bool copy_text(char *dst, size_t cap, const char *s, size_t n)
{
    if (n >= cap)
        return false;
    memcpy(dst, s, n);
    dst[n] = '\0';
    return true;
}

#define ADDR_EXPECTED "IPv4:port or [IPv6]:port with port 1..65535"

/* "IPv4:port" or "[IPv6]:port". 0 or PX_EINVAL. */
static int parse_addr(const char *s, size_t n, struct cfg_addr *out)
{
    char host[INET6_ADDRSTRLEN], text[INET6_ADDRSTRLEN];
    const char *colon, *close = NULL;
    unsigned port;
    int family = AF_INET;

    memset(out, 0, sizeof *out);
    if (n > 0 && s[0] == '[') {
        close = memchr(s, ']', n);
        if (close == NULL || close + 1 == s + n || close[1] != ':')
            return PX_EINVAL;
        family = AF_INET6;
        colon = close + 1;
        if (!copy_text(host, sizeof host, s + 1, (size_t)(close - s - 1)))
            return PX_EINVAL;
    } else {
        colon = memchr(s, ':', n);
        if (colon == NULL || !copy_text(host, sizeof host, s, (size_t)(colon - s)))
            return PX_EINVAL;
    }
    if (parse_uint(colon + 1, (size_t)(s + n - colon - 1), 1, 65535, &port) != 0)
        return PX_EINVAL;
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&out->sa;

        if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
            return PX_EINVAL;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        out->salen = sizeof *sin;
        inet_ntop(AF_INET, &sin->sin_addr, text, sizeof text);
        snprintf(out->text, sizeof out->text, "%s:%u", text, port);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->sa;

        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
            return PX_EINVAL;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        out->salen = sizeof *sin6;
        inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof text);
        snprintf(out->text, sizeof out->text, "[%s]:%u", text, port);
    }
    return 0;
}

static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* Whether the first prefix bits of a and b agree. */
static bool same_prefix(const uint8_t *a, const uint8_t *b, unsigned prefix)
{
    size_t full = prefix / 8;
    uint8_t mask = (uint8_t)(0xff00u >> (prefix % 8));

    if (memcmp(a, b, full) != 0)
        return false;
    return prefix % 8 == 0 || ((a[full] ^ b[full]) & mask) == 0;
}

/* "ADDRESS" or "ADDRESS/PREFIX" with no bit set past the prefix. An
 * IPv4-mapped IPv6 range is kept as the IPv4 range it covers. */
static int parse_cidr(const char *s, size_t n, struct cfg_cidr *out)
{
    char host[INET6_ADDRSTRLEN];
    const char *slash = memchr(s, '/', n);
    size_t hlen = slash != NULL ? (size_t)(slash - s) : n;
    unsigned size, bit;

    memset(out, 0, sizeof *out);
    out->family = memchr(s, ':', hlen) != NULL ? AF_INET6 : AF_INET;
    size = out->family == AF_INET6 ? 16 : 4;
    if (!copy_text(host, sizeof host, s, hlen) || inet_pton(out->family, host, out->addr) != 1)
        return PX_EINVAL;
    out->prefix = size * 8;
    if (slash != NULL &&
        parse_uint(slash + 1, (size_t)(s + n - slash - 1), 0, size * 8, &out->prefix) != 0)
        return PX_EINVAL;
    for (bit = out->prefix; bit < size * 8; bit++) {
        if (out->addr[bit / 8] & (0x80u >> (bit % 8)))
            return PX_EINVAL; /* a bit set past the prefix */
    }
    if (out->family == AF_INET6 && out->prefix >= 96 &&
        memcmp(out->addr, v4_mapped, sizeof v4_mapped) == 0) {
        out->family = AF_INET;
        memmove(out->addr, out->addr + 12, 4);
        memset(out->addr + 4, 0, 12);
        out->prefix -= 96;
    }
    return 0;
}

/* "LOW-HIGH", blanks allowed around the dash, min <= LOW <= HIGH <= max. */
static bool parse_range(const char *v, unsigned min, unsigned max, unsigned *lo, unsigned *hi)
{
    const char *dash = strchr(v, '-'), *s = v;
    size_t n;

    if (dash == NULL)
        return false;
    n = (size_t)(dash - v);
    trim(&s, &n);
    if (parse_uint(s, n, min, max, lo) != 0)
        return false;
    s = dash + 1;
    n = strlen(s);
    trim(&s, &n);
    return parse_uint(s, n, min, max, hi) == 0 && *lo <= *hi;
}

/* A DNS name into out[HOST_NAME_MAX_LEN + 1], lower-cased, without a trailing
 * dot: labels of 1..63 letters, digits and inner hyphens; "*." only as the
 * whole first label. */
static bool normalize_host(const char *s, size_t n, char *out)
{
    size_t i, label = 0;

    if (n > 0 && s[n - 1] == '.')
        n--;
    if (n == 0 || n > HOST_NAME_MAX_LEN)
        return false;
    for (i = 0; i < n; i++) {
        char ch = s[i] >= 'A' && s[i] <= 'Z' ? (char)(s[i] - 'A' + 'a') : s[i];

        if (ch == '.') {
            if (label == 0 || out[i - 1] == '-')
                return false;
            label = 0;
        } else if (ch == '*') {
            if (i != 0 || n < 3 || s[1] != '.')
                return false;
            label = 1;
        } else if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
                   (ch == '-' && label > 0)) {
            if (++label > 63)
                return false;
        } else {
            return false;
        }
        out[i] = ch;
    }
    out[n] = '\0';
    return label > 0 && out[n - 1] != '-';
}

static void add_host(struct parser *p, const struct key *k, struct cfg_backend *b, const char *s,
                     size_t n)
{
    char name[HOST_NAME_MAX_LEN + 1];
    size_t bi = (size_t)(b - p->c->backends), i;
    struct host_ref *ref;
    char **slot;

    if (!normalize_host(s, n, name)) {
        report(p, p->line, k->name,
               "expected host names such as ftp.example.com or *.example.com ('*.' only as "
               "the whole first label), got \"%.*s\"",
               (int)n, s);
        return;
    }
    for (i = 0; i < p->n_hosts; i++) {
        ref = &p->hosts[i];
        if (strcmp(ref->name, name) != 0)
            continue;
        if (ref->backend != bi) /* the same backend twice is harmless */
            report(p, p->line, k->name,
                   "%s is claimed by both [backend:%s] (line %u) and "
                   "[backend:%s] (line %u); give each name to one backend",
                   name, p->c->backends[ref->backend].name, ref->line, b->name, p->line);
        return;
    }
    ref = realloc(p->hosts, (p->n_hosts + 1) * sizeof *p->hosts);
    if (ref == NULL) {
        p->nomem = true;
        return;
    }
    p->hosts = ref;
    slot = push(p, (char *)b, k, sizeof *slot);
    if (slot == NULL)
        return;
    *slot = dup_text(p, name, strlen(name));
    if (*slot == NULL)
        return;
    p->hosts[p->n_hosts++] = (struct host_ref){*slot, bi, p->line};
}

/* One item of a list value (comma-separated, already trimmed, not empty). */
static void add_item(struct parser *p, const struct key *k, char *base, const char *s, size_t n)
{
    struct cfg_addr addr;
    struct cfg_cidr cidr;
    void *slot;

    switch (k->type) {
    case KT_ADDR_LIST:
        if (parse_addr(s, n, &addr) != 0) {
            report(p, p->line, k->name, "expected " ADDR_EXPECTED ", got \"%.*s\"", (int)n, s);
            return;
        }
        addr.line = p->line;
        slot = push(p, base, k, sizeof addr);
        if (slot != NULL)
            memcpy(slot, &addr, sizeof addr);
        return;
    case KT_CIDR_LIST:
        if (parse_cidr(s, n, &cidr) != 0) {
            report(p, p->line, k->name,
                   "expected an address or ADDRESS/PREFIX with no bit set past the prefix, "
                   "such as 10.0.0.0/8 or 2001:db8::/32, got \"%.*s\"",
                   (int)n, s);
            return;
        }
        slot = push(p, base, k, sizeof cidr);
        if (slot != NULL)
            memcpy(slot, &cidr, sizeof cidr);
        return;
    case KT_HOSTS:
        add_host(p, k, (struct cfg_backend *)(void *)base, s, n);
        return;
    default:
        PX_ASSERT(!"not a list key");
    }
}

/* "a, b or c" from a word list, for messages. */
static const char *words_text(const struct word *w, char *buf, size_t cap)
{
    size_t used = 0;
    int n;

    buf[0] = '\0';
    for (; w->text != NULL; w++) {
        const char *sep = w[1].text == NULL ? " or " : ", ";

        n = snprintf(buf + used, cap - used, "%s%s", used == 0 ? "" : sep, w->text);
        if (n < 0 || (size_t)n >= cap - used)
            break;
        used += (size_t)n;
    }
    return buf;
}

/* Separators the USER command can split on: printable, not blank, and never
 * part of a host name (nor of a wildcard or an underscore label). */
static bool is_separator(char ch)
{
    return ch > ' ' && ch <= '~' && !(ch >= 'a' && ch <= 'z') && !(ch >= 'A' && ch <= 'Z') &&
           !(ch >= '0' && ch <= '9') && strchr(".-*_", ch) == NULL;
}

/* cfg_load(): the file must be a readable regular file now. */
/* A file the configuration names must be a readable regular file; the
 * report names the site it belongs to. */
static void check_file(struct parser *p, const char *key, const char *path)
{
    const char *site = p->sec == SEC_BACKEND && p->c->n_backends > 0
                           ? p->c->backends[p->c->n_backends - 1].name
                           : NULL;
    struct stat st;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    const char *why = NULL;

    if (fd < 0)
        why = strerror(errno);
    else if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        why = "not a regular file";
    if (fd >= 0)
        close(fd);
    if (why == NULL)
        return;
    if (site != NULL)
        report(p, p->line, key, "site %s: cannot read %s: %s", site, path, why);
    else
        report(p, p->line, key, "cannot read %s: %s", path, why);
}

/* Stores the non-empty value v of key k into base, or reports why not. */
static void set_value(struct parser *p, const struct key *k, char *base, const char *v)
{
    void *field = base + k->off;
    size_t n = strlen(v);
    const struct word *w;
    const char *item, *comma;
    char words[128], ip[INET_ADDRSTRLEN];
    unsigned lo, hi;
    uint8_t a[4];

    switch (k->type) {
    case KT_BOOL:
    case KT_WORD:
        for (w = k->words; w->text != NULL; w++) {
            if (strlen(w->text) == n && strncasecmp(w->text, v, n) == 0)
                break;
        }
        if (w->text == NULL)
            report(p, p->line, k->name, "expected %s, got \"%s\"",
                   words_text(k->words, words, sizeof words), v);
        else if (k->type == KT_BOOL)
            *(bool *)field = w->value != 0;
        else
            *(int *)field = w->value;
        return;
    case KT_UINT:
        if (parse_uint(v, n, k->min, k->max, field) != 0)
            report(p, p->line, k->name, "expected a whole number from %u to %u, got \"%s\"", k->min,
                   k->max, v);
        return;
    case KT_STRING:
    case KT_PATH:
        free(*(char **)field);
        *(char **)field = dup_text(p, v, n);
        if (k->type == KT_PATH && p->check_files)
            check_file(p, k->name, v);
        return;
    case KT_ADDR:
        if (parse_addr(v, n, field) != 0)
            report(p, p->line, k->name, "expected " ADDR_EXPECTED ", got \"%s\"", v);
        ((struct cfg_addr *)field)->line = p->line;
        return;
    case KT_IPV4:
        if (!copy_text(ip, sizeof ip, v, n) || inet_pton(AF_INET, ip, a) != 1 ||
            memcmp(a, "\0\0\0\0", 4) == 0)
            report(p, p->line, k->name,
                   "expected the IPv4 address clients should connect to, such as 198.51.100.7, "
                   "got \"%s\"",
                   v);
        else
            memcpy(field, a, sizeof a);
        return;
    case KT_PORT_RANGE:
        if (!parse_range(v, k->min, k->max, &lo, &hi)) {
            report(p, p->line, k->name,
                   "expected LOW-HIGH with %u <= LOW <= HIGH <= %u (such as 50000-50999), "
                   "got \"%s\"",
                   k->min, k->max, v);
            return;
        }
        *(uint16_t *)field = (uint16_t)lo;
        *(uint16_t *)(void *)(base + k->aux) = (uint16_t)hi;
        return;
    case KT_SEPARATOR:
        if (n != 1 || !is_separator(v[0]))
            report(p, p->line, k->name,
                   "expected one printable character that cannot occur in a host name, such as "
                   "| or @, got \"%s\"",
                   v);
        else
            *(char *)field = v[0];
        return;
    case KT_BACKEND:
        free(p->default_backend);
        p->default_backend = dup_text(p, v, n);
        return;
    case KT_ADDR_LIST:
    case KT_CIDR_LIST:
    case KT_HOSTS:
        for (item = v;; item = comma + 1) {
            comma = strchr(item, ',');
            n = comma != NULL ? (size_t)(comma - item) : strlen(item);
            trim(&item, &n);
            if (n > 0) /* "a,,b" and a trailing comma add nothing */
                add_item(p, k, base, item, n);
            if (comma == NULL)
                return;
        }
    }
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
        report(p, p->line, NULL, INIH_DISAGREES);
        return 1;
    }
    if (p->sec == SEC_SKIP)
        return 1; /* its header was reported */
    k = find_key(p, p->sec, name, &seen);
    if (k == NULL) {
        if (p->continuation)
            return 1; /* its key was reported */
        if (p->sec == SEC_NONE)
            report(p, p->line, name,
                   "outside any section; expected [proxy] or [backend:NAME] before it");
        else if (p->sec == SEC_PROXY)
            report(p, p->line, name, "unknown key in [proxy]");
        else
            report(p, p->line, name, "unknown key in [backend:%s]",
                   p->c->backends[p->c->n_backends - 1].name);
        return 1;
    }
    if (value[0] == '\0')
        return 1; /* an empty value leaves the key unset */
    if (!is_list(k->type) && p->continuation) {
        report(p, p->line, name, "takes one value, so it cannot continue on an indented line");
        return 1;
    }
    if (!is_list(k->type) && *seen != 0) {
        report(p, p->line, name, "given twice (first on line %u); give it once", *seen);
        return 1;
    }
    if (*seen == 0)
        *seen = p->line;
    if (p->sec == SEC_PROXY)
        base = (char *)p->c;
    else
        base = (char *)&p->c->backends[p->c->n_backends - 1];
    set_value(p, k, base, value);
    return 1;
}

/* At the end of a [backend:NAME] section: what needs the whole section. */
static void check_backend(struct parser *p)
{
    struct cfg_backend *b = &p->c->backends[p->c->n_backends - 1];
    unsigned cert = given(p, SEC_BACKEND, "certificate");
    unsigned key = given(p, SEC_BACKEND, "private_key");

    if (given(p, SEC_BACKEND, "address") == 0)
        report(p, b->line, "address",
               "missing from [backend:%s], the section that starts on this line; expected the "
               "plaintext FTP server as " ADDR_EXPECTED,
               b->name);
    if (cert != 0 && key == 0)
        report(p, cert, "certificate",
               "given without private_key in [backend:%s]; give both or neither", b->name);
    if (key != 0 && cert == 0)
        report(p, key, "private_key",
               "given without certificate in [backend:%s]; give both or neither", b->name);
    b->certificate_line = cert;
}

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
    size_t i;

    for (i = 0; i < n && is_name_char(name[i]); i++)
        ;
    if (n == 0 || n > BACKEND_NAME_MAX || i < n) {
        report(p, p->line, NULL,
               "[backend:%.*s]: expected a backend name of 1 to %d letters, digits, '-', '_' "
               "or '.'",
               (int)n, name, BACKEND_NAME_MAX);
        return;
    }
    for (i = 0; i < c->n_backends; i++) {
        if (strlen(c->backends[i].name) == n && memcmp(c->backends[i].name, name, n) == 0)
            report(p, p->line, NULL,
                   "[backend:%.*s]: backend %.*s is already defined on line %u; give each "
                   "backend one section",
                   (int)n, name, (int)n, name, c->backends[i].line);
    }
    grown = realloc(c->backends, (c->n_backends + 1) * sizeof *c->backends);
    if (grown == NULL) {
        p->nomem = true;
        return;
    }
    c->backends = grown;
    copy = dup_text(p, name, n);
    if (copy == NULL)
        return;
    memset(&grown[c->n_backends], 0, sizeof *grown);
    grown[c->n_backends].name = copy;
    grown[c->n_backends].line = p->line;
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
        check_backend(p);
    p->sec = SEC_SKIP;
    p->key[0] = '\0';
    memset(p->backend_seen, 0, sizeof p->backend_seen);
    if (!fits)
        return;
    if (memchr(s, ']', n) != s + n - 1) {
        report(p, p->line, NULL,
               "expected a section header, [proxy] or [backend:NAME], got \"%.*s\"", (int)n, s);
    } else if (n == 7 && memcmp(s, "[proxy]", 7) == 0) {
        p->sec = SEC_PROXY;
        if (p->proxy_line == 0)
            p->proxy_line = p->line;
    } else if (n - 2 >= blen && memcmp(s + 1, backend, blen) == 0) {
        add_backend(p, s + 1 + blen, n - 2 - blen);
    } else {
        report(p, p->line, NULL, "%.*s: unknown section; expected [proxy] or [backend:NAME]",
               (int)n, s);
    }
}

static void report_long_line(struct parser *p, const char *key, int size)
{
    const struct key *k = key != NULL ? find_key(p, p->sec, key, NULL) : NULL;

    if (k != NULL && is_list(k->type))
        report(p, p->line, key,
               "line %u is longer than %d characters: split the list over several `%s =` lines",
               p->line, size - 1, key);
    else
        report(p, p->line, key,
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
            report(p, p->line, NULL, "line %u holds the control character 0x%02x; expected text",
                   p->line, (unsigned)ch);
            return buf;
        }
    }
    /* parse() skipped one; inih drops one more at the start of line 1, so
     * its line would not be the one classified here. */
    if (p->line == 1 && n >= 3 && memcmp(s, BOM, 3) == 0) {
        report(p, p->line, NULL, "line 1 starts with a second byte order mark; expected text");
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
                report(p, p->line, NULL,
                       "expected key = value, a [section] or a comment, got \"%.*s\"",
                       (int)(n - indent), s + indent);
            return buf;
        }
        copy_text(p->key, sizeof p->key, s + indent,
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

    c->passive_min = 50000;
    c->passive_max = 50999;
    c->default_backend = -1;
    c->host_separator = '|';
    c->route_by_sni = true;
    c->require_tls = true;
    c->require_protected_data = true;
    c->require_session_reuse = true;
    c->tls_min_version = 12;
    c->banner = dup_text(p, "FTP proxy ready", 15);
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
}

/* After the last line: what needs the whole file. */
static void finish(struct parser *p)
{
    struct cfg *c = p->c;
    unsigned pp = given(p, SEC_PROXY, "proxy_protocol");
    int rc;

    if (p->sec == SEC_BACKEND)
        check_backend(p);
    if (p->proxy_line == 0) {
        report(p, 0, "[proxy]",
               "no such section in the file (hence line 0); expected [proxy] with at least "
               "certificate and private_key");
    } else {
        if (c->certificate == NULL)
            report(p, p->proxy_line, "certificate",
                   "missing from [proxy], the section that starts on this line; expected the "
                   "central certificate (PEM)");
        if (c->private_key == NULL)
            report(p, p->proxy_line, "private_key",
                   "missing from [proxy], the section that starts on this line; expected the key "
                   "of the central certificate (PEM)");
    }
    if (c->proxy_protocol != CFG_PP_NO && c->n_proxy_protocol_from == 0)
        report(p, pp, "proxy_protocol",
               "%s needs proxy_protocol_from, the CIDRs allowed to send a PROXY header",
               cfg_proxy_protocol_name(c->proxy_protocol));
    if (p->default_backend != NULL) {
        c->default_backend = cfg_backend_index(c, p->default_backend);
        if (c->default_backend < 0)
            report(p, given(p, SEC_PROXY, "default_backend"), "default_backend",
                   "no [backend:%s] section; expected the name of a backend", p->default_backend);
    }
    c->has_passive_address = given(p, SEC_PROXY, "passive_address") != 0;
    c->has_metrics_listen = given(p, SEC_PROXY, "metrics_listen") != 0;
    if (c->n_listen == 0 && c->n_listen_implicit == 0) {
        c->listen = calloc(1, sizeof *c->listen);
        if (c->listen == NULL) {
            p->nomem = true;
            return;
        }
        rc = parse_addr("0.0.0.0:21", 10, c->listen);
        PX_ASSERT(rc == 0);
        c->n_listen = 1;
    }
}

static int parse(const char *text, size_t len, const char *name, cfg_report_fn *report_fn,
                 void *arg, bool check_files, struct cfg **out)
{
    struct parser p = {.text = text,
                       .len = len,
                       .file = name,
                       .report = report_fn,
                       .arg = arg,
                       .check_files = check_files};
    int rc;

    *out = NULL;
    p.c = calloc(1, sizeof *p.c);
    if (p.c == NULL)
        return PX_ENOMEM;
    p.c->path = dup_text(&p, name, strlen(name));
    set_defaults(&p);
    if (len >= 3 && memcmp(text, BOM, 3) == 0)
        p.pos = 3;
    rc = ini_parse_stream(read_line, &p, on_pair, &p);
    if (rc > 0) /* read_line() hands inih only lines it can parse */
        report(&p, (unsigned)rc, NULL, INIH_DISAGREES);
    else if (rc < 0)
        p.nomem = true;
    finish(&p);
    free(p.default_backend);
    free(p.hosts);
    if (p.nomem || p.errors > 0) {
        cfg_free(p.c);
        return p.nomem ? PX_ENOMEM : PX_EINVAL;
    }
    *out = p.c;
    return 0;
}

int cfg_parse(const char *text, size_t len, const char *name, cfg_report_fn *report_fn, void *arg,
              struct cfg **out)
{
    return parse(text, len, name, report_fn, arg, false, out);
}

/* All of path into a malloc'ed buffer: 0, or a negative errno. */
static int read_file(const char *path, char **text, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC), rc = 0;
    size_t n = 0, cap = 0;
    char *buf = NULL, *grown;
    ssize_t got;

    if (fd < 0)
        return -errno;
    for (;;) {
        if (n == cap) {
            if (cap >= CFG_FILE_MAX) {
                rc = -EFBIG;
                break;
            }
            cap = cap == 0 ? 4096 : cap * 2;
            grown = realloc(buf, cap);
            if (grown == NULL) {
                rc = PX_ENOMEM;
                break;
            }
            buf = grown;
        }
        got = read(fd, buf + n, cap - n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            rc = -errno;
        if (got <= 0)
            break;
        n += (size_t)got;
    }
    close(fd);
    if (rc != 0) {
        free(buf);
        return rc;
    }
    *text = buf;
    *len = n;
    return 0;
}

int cfg_load(const char *path, cfg_report_fn *report_fn, void *arg, struct cfg **out)
{
    char *text = NULL, msg[4608];
    size_t len = 0;
    int rc = read_file(path, &text, &len);

    *out = NULL;
    if (rc == PX_ENOMEM)
        return rc;
    if (rc != 0) {
        snprintf(msg, sizeof msg, "%s:0: cannot read the configuration: %s", path, strerror(-rc));
        report_fn(arg, msg);
        return PX_ENOENT;
    }
    rc = parse(text, len, path, report_fn, arg, true, out);
    free(text);
    return rc;
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
        free(c->backends[i].certificate);
        free(c->backends[i].private_key);
    }
    free(c->backends);
    free(c->path);
    free(c->listen);
    free(c->listen_implicit);
    free(c->certificate);
    free(c->private_key);
    free(c->ca_file);
    free(c->tls_ciphers);
    free(c->banner);
    free(c->user);
    free(c->proxy_protocol_from);
    free(c);
}

int cfg_backend_index(const struct cfg *c, const char *name)
{
    size_t i;

    for (i = 0; i < c->n_backends; i++) {
        if (strcmp(c->backends[i].name, name) == 0)
            return (int)i;
    }
    return -1;
}

static const char *word_name(const struct word *w, int value)
{
    for (; w->text != NULL; w++) {
        if (w->value == value)
            return w->text;
    }
    return "?";
}

const char *cfg_log_level_name(enum cfg_log_level l)
{
    return word_name(level_words, (int)l);
}

const char *cfg_proxy_protocol_name(enum cfg_proxy_protocol p)
{
    return word_name(pp_words, (int)p);
}

bool cfg_cidr_contains(const struct cfg_cidr *list, size_t n, int family, const uint8_t *addr)
{
    size_t i;

    if (family == AF_INET6 && memcmp(addr, v4_mapped, sizeof v4_mapped) == 0) {
        family = AF_INET;
        addr += sizeof v4_mapped;
    }
    for (i = 0; i < n; i++) {
        if (list[i].family == family && same_prefix(list[i].addr, addr, list[i].prefix))
            return true;
    }
    return false;
}
