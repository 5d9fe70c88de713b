/* cfg_value.c - the syntax of configuration values: numbers, addresses,
 * CIDRs, port ranges, host names, separators and the word lists of the keys
 * that take words (see cfg_int.h). Pure. */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "cfg_int.h"
#include "px.h"

const struct cfg_word cfg_bool_words[] = {{"yes", 1},   {"no", 0}, {"true", 1},
                                         {"false", 0}, {"on", 1}, {"off", 0},
                                         {"1", 1},     {"0", 0},  {NULL, 0}};
const struct cfg_word cfg_tls_words[] = {{"1.2", 12}, {"1.3", 13}, {NULL, 0}};
const struct cfg_word cfg_pp_words[] = {
    {"no", CFG_PP_NO}, {"v1", CFG_PP_V1}, {"v2", CFG_PP_V2}, {"any", CFG_PP_ANY}, {NULL, 0}};
const struct cfg_word cfg_level_words[] = {{"error", CFG_LOG_ERROR},
                                          {"warn", CFG_LOG_WARN},
                                          {"info", CFG_LOG_INFO},
                                          {"debug", CFG_LOG_DEBUG},
                                          {NULL, 0}};
const struct cfg_word cfg_format_words[] = {
    {"text", CFG_LOG_TEXT}, {"json", CFG_LOG_JSON}, {NULL, 0}};

void cfg_trim(const char **s, size_t *n)
{
    while (*n > 0 && (**s == ' ' || **s == '\t')) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t'))
        (*n)--;
}

/* Digits only, at most max (checked at each digit, so nothing overflows).
 * 0, or PX_EINVAL (empty, not digits) or PX_ERANGE. */
static int parse_digits(const char *s, size_t n, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;

    if (n == 0)
        return PX_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return PX_EINVAL;
        v = v * 10 + (unsigned)(s[i] - '0');
        if (v > max)
            return PX_ERANGE;
    }
    *out = v;
    return 0;
}

int cfg_parse_uint(const char *s, size_t n, unsigned min, unsigned max, unsigned *out)
{
    uint64_t v;
    int rc = parse_digits(s, n, max, &v);

    if (rc != 0)
        return rc;
    if (v < min)
        return PX_ERANGE;
    *out = (unsigned)v;
    return 0;
}

int cfg_parse_size(const char *s, size_t n, unsigned min_mib, unsigned max_mib, uint64_t *out)
{
    uint64_t v = 0, unit = 1, max = (uint64_t)max_mib * 1024 * 1024;
    int rc;

    if (n > 0 && (s[n - 1] == 'K' || s[n - 1] == 'k'))
        unit = 1024;
    else if (n > 0 && (s[n - 1] == 'M' || s[n - 1] == 'm'))
        unit = 1024 * 1024;
    else if (n > 0 && (s[n - 1] == 'G' || s[n - 1] == 'g'))
        unit = 1024 * 1024 * 1024;
    if (unit != 1)
        n--;
    rc = parse_digits(s, n, max / unit, &v); /* before v * unit could overflow */
    if (rc != 0)
        return rc;
    v *= unit;
    if (v < (uint64_t)min_mib * 1024 * 1024)
        return PX_ERANGE;
    *out = v;
    return 0;
}

/* Copies n bytes into dst[cap] as a string; false when they do not fit. */
bool cfg_copy_text(char *dst, size_t cap, const char *s, size_t n)
{
    if (n >= cap)
        return false;
    memcpy(dst, s, n);
    dst[n] = '\0';
    return true;
}

/* "IPv4:port" or "[IPv6]:port". 0 or PX_EINVAL. */
int cfg_parse_addr(const char *s, size_t n, struct cfg_addr *out)
{
    char host[INET6_ADDRSTRLEN], text[INET6_ADDRSTRLEN];
    const char *colon, *close = NULL;
    unsigned port;
    int family = AF_INET;
    struct sockaddr_in *sin = (struct sockaddr_in *)&out->sa;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->sa;
    void *ip;

    memset(out, 0, sizeof *out);
    if (n > 0 && s[0] == '[') {
        close = memchr(s, ']', n);
        if (close == NULL || close + 1 == s + n || close[1] != ':')
            return PX_EINVAL;
        family = AF_INET6;
        colon = close + 1;
        if (!cfg_copy_text(host, sizeof host, s + 1, (size_t)(close - s - 1)))
            return PX_EINVAL;
    } else {
        colon = memchr(s, ':', n);
        if (colon == NULL || !cfg_copy_text(host, sizeof host, s, (size_t)(colon - s)))
            return PX_EINVAL;
    }
    if (cfg_parse_uint(colon + 1, (size_t)(s + n - colon - 1), 1, 65535, &port) != 0)
        return PX_EINVAL;
    ip = family == AF_INET ? (void *)&sin->sin_addr : (void *)&sin6->sin6_addr;
    if (inet_pton(family, host, ip) != 1)
        return PX_EINVAL;
    out->sa.ss_family = (sa_family_t)family;
    px_set_port((struct sockaddr *)&out->sa, (uint16_t)port);
    out->salen = family == AF_INET ? sizeof *sin : sizeof *sin6;
    inet_ntop(family, ip, text, sizeof text);
    snprintf(out->text, sizeof out->text, family == AF_INET ? "%s:%u" : "[%s]:%u", text, port);
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
int cfg_parse_cidr(const char *s, size_t n, struct cfg_cidr *out)
{
    char host[INET6_ADDRSTRLEN];
    const char *slash = memchr(s, '/', n);
    size_t hlen = slash != NULL ? (size_t)(slash - s) : n;
    unsigned size, bit;

    memset(out, 0, sizeof *out);
    out->family = memchr(s, ':', hlen) != NULL ? AF_INET6 : AF_INET;
    size = out->family == AF_INET6 ? 16 : 4;
    if (!cfg_copy_text(host, sizeof host, s, hlen) || inet_pton(out->family, host, out->addr) != 1)
        return PX_EINVAL;
    out->prefix = size * 8;
    if (slash != NULL &&
        cfg_parse_uint(slash + 1, (size_t)(s + n - slash - 1), 0, size * 8, &out->prefix) != 0)
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
bool cfg_parse_range(const char *v, unsigned min, unsigned max, unsigned *lo, unsigned *hi)
{
    const char *dash = strchr(v, '-'), *s = v;
    size_t n;

    if (dash == NULL)
        return false;
    n = (size_t)(dash - v);
    cfg_trim(&s, &n);
    if (cfg_parse_uint(s, n, min, max, lo) != 0)
        return false;
    s = dash + 1;
    n = strlen(s);
    cfg_trim(&s, &n);
    return cfg_parse_uint(s, n, min, max, hi) == 0 && *lo <= *hi;
}

/* A DNS name into out[CFG_HOST_NAME_MAX + 1], lower-cased, without a trailing
 * dot: labels of 1..63 letters, digits and inner hyphens; "*." only as the
 * whole first label. */
bool cfg_normalize_host(const char *s, size_t n, char *out)
{
    size_t i, label = 0;

    if (n > 0 && s[n - 1] == '.')
        n--;
    if (n == 0 || n > CFG_HOST_NAME_MAX)
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

/* "a, b or c" from a word list, for messages. */
const char *cfg_words_text(const struct cfg_word *w, char *buf, size_t cap)
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
bool cfg_is_separator(char ch)
{
    return ch > ' ' && ch <= '~' && !(ch >= 'a' && ch <= 'z') && !(ch >= 'A' && ch <= 'Z') &&
           !(ch >= '0' && ch <= '9') && strchr(".-*_", ch) == NULL;
}

static const char *word_name(const struct cfg_word *w, int value)
{
    for (; w->text != NULL; w++) {
        if (w->value == value)
            return w->text;
    }
    return "?";
}

const char *cfg_log_level_name(enum cfg_log_level l)
{
    return word_name(cfg_level_words, (int)l);
}

const char *cfg_proxy_protocol_name(enum cfg_proxy_protocol p)
{
    return word_name(cfg_pp_words, (int)p);
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

bool cfg_cidr_contains_sa(const struct cfg_cidr *list, size_t n, const struct sockaddr *sa)
{
    const uint8_t *a = sa->sa_family == AF_INET
                           ? (const uint8_t *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr
                           : ((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr.s6_addr;

    return cfg_cidr_contains(list, n, sa->sa_family, a);
}
