/* log.h - one line per event on standard error, text (key=value) or JSON.
 *
 * Every line of a session carries its id, the client address, the site, the
 * backend and the user; never a password (callers never pass one: PASS is
 * logged as a verb only). Values are escaped here, so network bytes can be
 * passed as they came, of any length: a line is at most 4096 bytes, and
 * values too long for it are cut with a "...(+N bytes)" marker while every
 * field is kept. Lines are written with one write(2), so lines from several
 * worker threads do not interleave. */
#ifndef LOG_H
#define LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "cfg.h"

struct log_sess {
    uint64_t sid;
    char client[CFG_ADDR_TEXT_MAX]; /* "ip:port" of the client (the PROXY one where used) */
    const char *site;               /* borrowed: the host name the client used, or NULL */
    const char *backend;            /* borrowed: backend name, or NULL before routing */
    char user[64];                  /* as sent, truncated; "" before USER */
};

void log_setup(enum cfg_log_level level, enum cfg_log_format format);
bool log_on(enum cfg_log_level level);

/* Logs event ev for session s (NULL for process events) with key/value string
 * pairs, ended by a NULL key; at most 26 pairs (asserted). A NULL value is
 * skipped. */
void log_ev(enum cfg_log_level level, const struct log_sess *s, const char *ev, ...);

/* "ip:port" ("[v6]:port") of sa into dst; IPv4-mapped IPv6 shows as IPv4. */
void log_addr(char *dst, size_t cap, const struct sockaddr *sa);

/* Helpers for values: decimal text of n in buf (24 bytes), returned. */
const char *log_u64(char buf[24], uint64_t n);
/* The n bytes at p (a line taken from a buffer, not NUL-terminated) as a
 * string in dst, cut to cap - 1 bytes; returns dst. */
const char *log_text(char *dst, size_t cap, const char *p, size_t n);

#define LOG_ERROR(s, ev, ...) log_ev(CFG_LOG_ERROR, (s), (ev), __VA_ARGS__)
#define LOG_WARN(s, ev, ...) log_ev(CFG_LOG_WARN, (s), (ev), __VA_ARGS__)
#define LOG_INFO(s, ev, ...) log_ev(CFG_LOG_INFO, (s), (ev), __VA_ARGS__)
#define LOG_DEBUG(s, ev, ...)                                                                      \
    do {                                                                                           \
        if (log_on(CFG_LOG_DEBUG))                                                                 \
            log_ev(CFG_LOG_DEBUG, (s), (ev), __VA_ARGS__);                                         \
    } while (0)

#endif
