/* log.c - formats and writes log lines (see log.h). The level and format are
 * process-wide settings, changed only by the main thread on start-up and
 * reload; a torn read of them by a worker shows one or the other value. */
#include "log.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096

static atomic_int log_level = CFG_LOG_INFO;
static atomic_int log_format = CFG_LOG_TEXT;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_setup(enum cfg_log_level level, enum cfg_log_format format)
{
    atomic_store(&log_level, (int)level);
    atomic_store(&log_format, (int)format);
}

bool log_on(enum cfg_log_level level) { return (int)level <= atomic_load(&log_level); }

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

struct line {
    char text[LOG_LINE_MAX];
    size_t len;
    bool json;
};

static void put(struct line *l, const char *s, size_t n)
{
    if (n > sizeof(l->text) - 2 - l->len)
        n = sizeof(l->text) - 2 - l->len; /* keep room for the newline */
    memcpy(l->text + l->len, s, n);
    l->len += n;
}

static void puts_(struct line *l, const char *s) { put(l, s, strlen(s)); }

/* Untrusted bytes become printable ASCII: quotes, backslashes and control
 * bytes are escaped the way each format needs. */
static void put_escaped(struct line *l, const char *v)
{
    static const char hex[] = "0123456789abcdef";

    for (const unsigned char *p = (const unsigned char *)v; *p != '\0'; p++) {
        char e[6];
        size_t n = 0;

        if (*p == '"' || *p == '\\') {
            e[n++] = '\\';
            e[n++] = (char)*p;
        } else if (*p < 0x20 || *p >= 0x7f) {
            e[n++] = '\\';
            if (l->json) {
                e[n++] = 'u';
                e[n++] = '0';
                e[n++] = '0';
            } else {
                e[n++] = 'x';
            }
            e[n++] = hex[*p >> 4];
            e[n++] = hex[*p & 15];
        } else {
            e[n++] = (char)*p;
        }
        put(l, e, n);
    }
}

static bool needs_quotes(const char *v)
{
    if (*v == '\0')
        return true;
    for (const unsigned char *p = (const unsigned char *)v; *p != '\0'; p++)
        if (*p <= ' ' || *p == '"' || *p == '=' || *p >= 0x7f || *p == '\\')
            return true;
    return false;
}

static void field(struct line *l, const char *k, const char *v, bool number)
{
    if (l->json) {
        puts_(l, ",\"");
        puts_(l, k);
        puts_(l, "\":");
        if (number) {
            puts_(l, v);
            return;
        }
        puts_(l, "\"");
        put_escaped(l, v);
        puts_(l, "\"");
        return;
    }
    puts_(l, " ");
    puts_(l, k);
    puts_(l, "=");
    if (number || !needs_quotes(v)) {
        puts_(l, v);
        return;
    }
    puts_(l, "\"");
    put_escaped(l, v);
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
    struct line l = {.len = 0, .json = atomic_load(&log_format) == CFG_LOG_JSON};
    char ts[48], num[24];
    va_list ap;

    if (!log_on(level))
        return;
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
    field(&l, "ev", ev, false);
    if (s != NULL) {
        field(&l, "sid", log_u64(num, s->sid), true);
        field(&l, "client", s->client, false);
        if (s->site != NULL)
            field(&l, "site", s->site, false);
        if (s->backend != NULL)
            field(&l, "backend", s->backend, false);
        if (s->user[0] != '\0')
            field(&l, "user", s->user, false);
    }
    va_start(ap, ev);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        const char *v;

        if (k == NULL)
            break;
        v = va_arg(ap, const char *);
        if (v != NULL)
            field(&l, k, v, false);
    }
    va_end(ap);
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
