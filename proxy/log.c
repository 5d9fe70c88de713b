/* log.c - formats and writes log lines (see log.h). The level and format are
 * process-wide settings, changed only by the main thread on start-up and
 * reload; a torn read of them by a worker shows one or the other value.
 *
 * A line is at most LOG_LINE_MAX bytes with its newline, so that one write(2)
 * to a pipe stays atomic (PIPE_BUF) and lines of several threads never mix.
 * Values come from the network and may be long (a 4 KiB path, escaped to four
 * times that): a line is therefore planned before it is written. Every field
 * is always there and always closed (quotes, the JSON braces); when the values
 * do not fit, the longest ones share the room left, and each of those ends,
 * inside its quotes, in the marker "...(+N bytes)", N being the bytes of the
 * value left out. A cut never splits an escape sequence, nor a UTF-8
 * character where the value is valid UTF-8. */
#include "log.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "px.h"

#define LOG_LINE_MAX 4096 /* with the newline */
#define LOG_FIELDS_MAX 32 /* ev, the session's five, and the caller's pairs */

static atomic_int log_level = CFG_LOG_INFO;
static atomic_int log_format = CFG_LOG_TEXT;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_setup(enum cfg_log_level level, enum cfg_log_format format)
{
    atomic_store(&log_level, (int)level);
    atomic_store(&log_format, (int)format);
}

bool log_on(enum cfg_log_level level)
{
    return (int)level <= atomic_load(&log_level);
}

const char *log_u64(char buf[24], uint64_t n)
{
    char tmp[24];
    size_t i = 0, j = 0;

    do {
        tmp[i++] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    while (i > 0)
        buf[j++] = tmp[--i];
    buf[j] = '\0';
    return buf;
}

const char *log_text(char *dst, size_t cap, const char *p, size_t n)
{
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, p, n);
    dst[n] = '\0';
    return dst;
}

struct field {
    const char *key;
    const unsigned char *val; /* borrowed, NUL-terminated */
    size_t len;               /* strlen(val) */
    size_t esc;               /* length of the whole value escaped */
    size_t cap;               /* room for the escaped value, marker included */
    bool number;              /* JSON: written bare (digits only) */
};

struct line {
    char text[LOG_LINE_MAX];
    size_t len;
    bool json;
    struct field f[LOG_FIELDS_MAX];
    size_t nf;
};

/* The plan keeps the line short enough; the clamp is the last guard of the
 * buffer, one byte always left for the newline. */
static void put(struct line *l, const char *s, size_t n)
{
    if (n > sizeof(l->text) - 1 - l->len)
        n = sizeof(l->text) - 1 - l->len;
    memcpy(l->text + l->len, s, n);
    l->len += n;
}

static void puts_(struct line *l, const char *s)
{
    put(l, s, strlen(s));
}

/* Untrusted bytes become printable ASCII: quotes, backslashes and control
 * bytes are escaped the way each format needs. Returns the length of the
 * escaped form of c, written to e (6 bytes) when e is not NULL. */
static size_t escape(unsigned char c, bool json, char *e)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[6];
    size_t n = 0;

    if (e == NULL)
        e = tmp;
    if (c == '"' || c == '\\') {
        e[n++] = '\\';
        e[n++] = (char)c;
    } else if (c < 0x20 || c >= 0x7f) {
        e[n++] = '\\';
        if (json) {
            e[n++] = 'u';
            e[n++] = '0';
            e[n++] = '0';
        } else {
            e[n++] = 'x';
        }
        e[n++] = hex[c >> 4];
        e[n++] = hex[c & 15];
    } else {
        e[n++] = (char)c;
    }
    return n;
}

static bool needs_quotes(const unsigned char *v)
{
    if (*v == '\0')
        return true;
    for (const unsigned char *p = v; *p != '\0'; p++)
        if (*p <= ' ' || *p == '"' || *p == '=' || *p >= 0x7f || *p == '\\')
            return true;
    return false;
}

static void add(struct line *l, const char *key, const char *val, bool number)
{
    struct field *f;

    PX_ASSERT(l->nf < LOG_FIELDS_MAX); /* a caller with too many pairs */
    f = &l->f[l->nf++];
    f->key = key;
    f->val = (const unsigned char *)val;
    f->len = strlen(val);
    f->number = number;
    f->esc = 0;
    for (size_t i = 0; i < f->len; i++)
        f->esc += escape(f->val[i], l->json, NULL);
    f->cap = f->esc;
}

/* Bytes a field takes besides its escaped value: ` key=""` in text (the
 * quotes counted even where they are left out), `,"key":""` in JSON. */
static size_t overhead(const struct line *l, const struct field *f)
{
    return strlen(f->key) + (l->json ? 6 : 4);
}

/* Gives each field a cap so that the line fits in `room` bytes: values that
 * fit in an even share of what is left keep their whole length, the others
 * share the rest evenly (water filling). */
static void plan(struct line *l, size_t room)
{
    size_t need = 0, left, nlong;
    bool changed;

    for (size_t i = 0; i < l->nf; i++)
        need += overhead(l, &l->f[i]) + l->f[i].esc;
    if (need <= room)
        return;
    left = room;
    for (size_t i = 0; i < l->nf; i++) {
        size_t o = overhead(l, &l->f[i]);

        left = left > o ? left - o : 0;
        l->f[i].cap = SIZE_MAX; /* long until shown short */
    }
    nlong = l->nf;
    do {
        size_t share = nlong > 0 ? left / nlong : 0;

        changed = false;
        for (size_t i = 0; i < l->nf; i++) {
            struct field *f = &l->f[i];

            if (f->cap == SIZE_MAX && f->esc <= share) {
                f->cap = f->esc;
                left -= f->esc;
                nlong--;
                changed = true;
            }
        }
    } while (changed && nlong > 0);
    for (size_t i = 0; i < l->nf; i++)
        if (l->f[i].cap == SIZE_MAX)
            l->f[i].cap = left / nlong;
}

/* How many bytes of f's value fit, escaped, in `room` output bytes: whole
 * escape sequences only, and not the first bytes of a UTF-8 character whose
 * last bytes do not fit. */
static size_t cut_at(const struct line *l, const struct field *f, size_t room)
{
    size_t k = 0, out = 0, back;

    while (k < f->len) {
        size_t n = escape(f->val[k], l->json, NULL);

        if (out + n > room)
            break;
        out += n;
        k++;
    }
    /* f->val[k] is the first byte left out: if it continues a character,
     * leave out that character's first bytes too. */
    back = k;
    while (back > 0 && k - back < 3 && (f->val[back] & 0xc0) == 0x80)
        back--;
    if (back < k && (f->val[back] & 0xc0) == 0xc0)
        k = back;
    return k;
}

static void put_value(struct line *l, const struct field *f)
{
    size_t k = f->len;
    char e[6], num[24];

    if (f->cap < f->esc) {
        size_t digits = strlen(log_u64(num, f->len));
        size_t mark = strlen("...(+ bytes)") + digits;

        k = cut_at(l, f, f->cap > mark ? f->cap - mark : 0);
    }
    for (size_t i = 0; i < k; i++)
        put(l, e, escape(f->val[i], l->json, e));
    if (k < f->len) {
        puts_(l, "...(+");
        puts_(l, log_u64(num, f->len - k));
        puts_(l, " bytes)");
    }
}

static void put_field(struct line *l, const struct field *f)
{
    bool quote = true;

    if (l->json) {
        puts_(l, ",\"");
        puts_(l, f->key);
        puts_(l, "\":");
        quote = !f->number;
    } else {
        puts_(l, " ");
        puts_(l, f->key);
        puts_(l, "=");
        quote = f->cap < f->esc || (!f->number && needs_quotes(f->val));
    }
    if (quote)
        puts_(l, "\"");
    put_value(l, f);
    if (quote)
        puts_(l, "\"");
}

static void timestamp(char *dst, size_t cap)
{
    struct timespec ts;
    struct tm tm;
    char base[32];

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(dst, cap, "%s.%03ldZ", base, ts.tv_nsec / 1000000);
}

void log_ev(enum cfg_log_level level, const struct log_sess *s, const char *ev, ...)
{
    struct line l; /* ~6 KiB, not zeroed: len and nf say what is set */
    char ts[48], num[24];
    va_list ap;

    if (!log_on(level))
        return;
    l.len = 0;
    l.nf = 0;
    l.json = atomic_load(&log_format) == CFG_LOG_JSON;
    timestamp(ts, sizeof(ts));
    if (l.json) {
        puts_(&l, "{\"time\":\"");
        puts_(&l, ts);
        puts_(&l, "\",\"level\":\"");
        puts_(&l, level_names[level]);
        puts_(&l, "\"");
    } else {
        puts_(&l, ts);
        puts_(&l, " ");
        puts_(&l, level_names[level]);
    }
    add(&l, "ev", ev, false);
    if (s != NULL) {
        add(&l, "sid", log_u64(num, s->sid), true);
        add(&l, "client", s->client, false);
        if (s->site != NULL)
            add(&l, "site", s->site, false);
        if (s->backend != NULL)
            add(&l, "backend", s->backend, false);
        if (s->user[0] != '\0')
            add(&l, "user", s->user, false);
    }
    va_start(ap, ev);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        const char *v;

        if (k == NULL)
            break;
        v = va_arg(ap, const char *);
        if (v != NULL)
            add(&l, k, v, false);
    }
    va_end(ap);
    /* Room for the fields: all but what is written, the JSON '}' and '\n'. */
    plan(&l, sizeof(l.text) - l.len - (l.json ? 1 : 0) - 1);
    for (size_t i = 0; i < l.nf; i++)
        put_field(&l, &l.f[i]);
    if (l.json)
        puts_(&l, "}");
    l.text[l.len++] = '\n';
    /* One write per line; a short write to stderr is not worth a retry loop. */
    if (write(STDERR_FILENO, l.text, l.len) < 0)
        return;
}
void log_addr(char *dst, size_t cap, const struct sockaddr *sa)
{
    char ip[INET6_ADDRSTRLEN], num[24];
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;

    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
        snprintf(dst, cap, "%s:%s", ip, log_u64(num, ntohs(s4->sin_port)));
    } else if (sa->sa_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
        inet_ntop(AF_INET, s6->sin6_addr.s6_addr + 12, ip, sizeof(ip));
        snprintf(dst, cap, "%s:%s", ip, log_u64(num, ntohs(s6->sin6_port)));
    } else if (sa->sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
        snprintf(dst, cap, "[%s]:%s", ip, log_u64(num, ntohs(s6->sin6_port)));
    } else {
        snprintf(dst, cap, "-");
    }
}
