/* quota.c - process-wide counts (see quota.h): two chained hash tables, one
 * keyed by client address (IPv4, or IPv6 /64), one by backend name; an entry
 * lives while it counts something or remembers failed logins or a ban. */
#include "quota.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "px.h"

#define QUOTA_BUCKETS 1024
#define QUOTA_NAME_MAX 64 /* a backend name is at most 63 bytes */

struct addr_count {
    struct addr_count *next;
    uint8_t key[16];
    unsigned sessions, passive, transfers;
    unsigned fails;          /* failed logins since window_start */
    int64_t window_start;    /* monotonic seconds */
    int64_t banned_until;    /* 0: not banned */
};

struct name_count {
    struct name_count *next;
    char name[QUOTA_NAME_MAX];
    unsigned n;
};

static atomic_size_t conns;
static atomic_uint_fast64_t mem;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct addr_count *by_addr[QUOTA_BUCKETS];
static struct name_count *by_backend[QUOTA_BUCKETS];
static size_t bans;

void quota_conn_opened(void) { atomic_fetch_add(&conns, 1); }
void quota_conn_closed(void) { atomic_fetch_sub(&conns, 1); }
size_t quota_conns(void) { return atomic_load(&conns); }

void quota_mem_add(int64_t delta) { atomic_fetch_add(&mem, (uint_fast64_t)delta); }
uint64_t quota_mem(void) { return atomic_load(&mem); }

static int64_t now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

static uint32_t hash(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint32_t h = 2166136261u; /* FNV-1a */

    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 16777619u;
    return h;
}

/* The 16-byte key addr counts under: IPv4 (mapped), or the IPv6 /64. */
static void key_of(const struct sockaddr *addr, uint8_t key[16])
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

    px_ip16(addr, key);
    if (memcmp(key, mapped, 12) != 0)
        memset(key + 8, 0, 8);
}

void quota_who(const struct sockaddr *addr, char *dst, size_t cap)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    uint8_t key[16];
    char ip[INET6_ADDRSTRLEN];

    key_of(addr, key);
    if (memcmp(key, mapped, 12) == 0) {
        inet_ntop(AF_INET, key + 12, ip, sizeof(ip));
        snprintf(dst, cap, "%s", ip);
    } else {
        inet_ntop(AF_INET6, key, ip, sizeof(ip));
        snprintf(dst, cap, "%s/64", ip);
    }
}

/* ---- per address ---- */

/* The entry for key, created when create is set (NULL when out of memory
 * or absent). Locked. */
static struct addr_count *addr_entry(const uint8_t key[16], bool create)
{
    struct addr_count **p = &by_addr[hash(key, 16) % QUOTA_BUCKETS];

    while (*p != NULL && memcmp((*p)->key, key, 16) != 0)
        p = &(*p)->next;
    if (*p == NULL && create) {
        *p = calloc(1, sizeof(**p));
        if (*p != NULL)
            memcpy((*p)->key, key, 16);
    }
    return *p;
}

static bool idle(const struct addr_count *c, int64_t now)
{
    return c->sessions == 0 && c->passive == 0 && c->transfers == 0 && c->banned_until == 0 &&
           (c->fails == 0 || now - c->window_start > 86400 * 30);
}

/* Frees the entry for key when it counts nothing any more. Locked. */
static void addr_tidy(const uint8_t key[16])
{
    struct addr_count **p = &by_addr[hash(key, 16) % QUOTA_BUCKETS], *c;

    while (*p != NULL && memcmp((*p)->key, key, 16) != 0)
        p = &(*p)->next;
    c = *p;
    if (c != NULL && idle(c, now_s())) {
        *p = c->next;
        free(c);
    }
}

/* One more of field for addr unless it holds max already (0: no cap). */
static int addr_enter(const struct sockaddr *addr, size_t field, unsigned max)
{
    uint8_t key[16];
    struct addr_count *c;
    unsigned *n;
    int rc = 0;

    key_of(addr, key);
    pthread_mutex_lock(&lock);
    c = addr_entry(key, true);
    if (c == NULL) {
        rc = PX_ENOMEM;
    } else {
        n = (unsigned *)(void *)((char *)c + field);
        if (max != 0 && *n >= max)
            rc = PX_ENOSPC;
        else
            (*n)++;
        addr_tidy(key);
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

static void addr_leave(const struct sockaddr *addr, size_t field)
{
    uint8_t key[16];
    struct addr_count *c;

    key_of(addr, key);
    pthread_mutex_lock(&lock);
    c = addr_entry(key, false);
    if (c != NULL) {
        unsigned *n = (unsigned *)(void *)((char *)c + field);

        PX_ASSERT(*n > 0);
        (*n)--;
        addr_tidy(key);
    }
    pthread_mutex_unlock(&lock);
}

const char *quota_admit(const struct sockaddr *addr, unsigned max_sessions,
                        unsigned max_per_ip)
{
    int rc;

    if (atomic_load(&conns) > max_sessions)
        return "max_sessions";
    rc = addr_enter(addr, offsetof(struct addr_count, sessions), max_per_ip);
    if (rc == PX_ENOSPC)
        return "max_sessions_per_ip";
    return rc == 0 ? NULL : "out_of_memory";
}

void quota_leave(const struct sockaddr *addr)
{
    addr_leave(addr, offsetof(struct addr_count, sessions));
}

bool quota_passive_enter(const struct sockaddr *addr, unsigned max)
{
    return addr_enter(addr, offsetof(struct addr_count, passive), max) == 0;
}

void quota_passive_leave(const struct sockaddr *addr)
{
    addr_leave(addr, offsetof(struct addr_count, passive));
}

bool quota_transfer_enter(const struct sockaddr *addr, unsigned max)
{
    return addr_enter(addr, offsetof(struct addr_count, transfers), max) == 0;
}

void quota_transfer_leave(const struct sockaddr *addr)
{
    addr_leave(addr, offsetof(struct addr_count, transfers));
}

/* ---- bans ---- */

bool quota_banned(const struct sockaddr *addr)
{
    uint8_t key[16];
    struct addr_count *c;
    bool banned;

    key_of(addr, key);
    pthread_mutex_lock(&lock);
    c = addr_entry(key, false);
    banned = c != NULL && c->banned_until != 0 && now_s() < c->banned_until;
    pthread_mutex_unlock(&lock);
    return banned;
}

bool quota_login_failed(const struct sockaddr *addr, unsigned after, unsigned window,
                        unsigned ban_time)
{
    int64_t now = now_s();
    uint8_t key[16];
    struct addr_count *c;
    bool banned = false;

    if (after == 0)
        return false;
    key_of(addr, key);
    pthread_mutex_lock(&lock);
    c = addr_entry(key, true);
    if (c != NULL && c->banned_until == 0) {
        if (c->fails == 0 || now - c->window_start >= (int64_t)window) {
            c->fails = 0;
            c->window_start = now;
        }
        if (++c->fails >= after) {
            c->banned_until = now + ban_time;
            c->fails = 0;
            bans++;
            banned = true;
        }
    }
    pthread_mutex_unlock(&lock);
    return banned;
}

size_t quota_sweep(quota_unban_fn *unbanned, void *arg)
{
    int64_t now = now_s();
    size_t left;

    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < QUOTA_BUCKETS; i++) {
        struct addr_count **p = &by_addr[i];

        while (*p != NULL) {
            struct addr_count *c = *p;

            if (c->banned_until != 0 && now >= c->banned_until) {
                struct sockaddr_in6 sa = {.sin6_family = AF_INET6};
                char who[64];

                memcpy(&sa.sin6_addr, c->key, 16);
                c->banned_until = 0;
                bans--;
                quota_who((const struct sockaddr *)&sa, who, sizeof(who));
                unbanned(arg, who);
            }
            if (idle(c, now)) {
                *p = c->next;
                free(c);
                continue;
            }
            p = &c->next;
        }
    }
    left = bans;
    pthread_mutex_unlock(&lock);
    return left;
}

/* ---- per backend ---- */

static struct name_count **name_slot(const char *name)
{
    struct name_count **p = &by_backend[hash(name, strlen(name)) % QUOTA_BUCKETS];

    while (*p != NULL && strcmp((*p)->name, name) != 0)
        p = &(*p)->next;
    return p;
}

bool quota_backend_enter(const char *backend, unsigned max)
{
    struct name_count **s;
    bool ok = true;

    pthread_mutex_lock(&lock);
    s = name_slot(backend);
    if (*s == NULL) {
        *s = calloc(1, sizeof(**s));
        if (*s != NULL)
            snprintf((*s)->name, sizeof((*s)->name), "%s", backend);
    }
    if (*s == NULL || (max != 0 && (*s)->n >= max))
        ok = false;
    else
        (*s)->n++;
    if (*s != NULL && (*s)->n == 0) {
        struct name_count *c = *s;

        *s = c->next;
        free(c);
    }
    pthread_mutex_unlock(&lock);
    return ok;
}

void quota_backend_leave(const char *backend)
{
    struct name_count **s;

    pthread_mutex_lock(&lock);
    s = name_slot(backend);
    if (*s != NULL && --(*s)->n == 0) {
        struct name_count *c = *s;

        *s = c->next;
        free(c);
    }
    pthread_mutex_unlock(&lock);
}

void quota_free(void)
{
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < QUOTA_BUCKETS; i++) {
        while (by_addr[i] != NULL) {
            struct addr_count *c = by_addr[i];

            by_addr[i] = c->next;
            free(c);
        }
        while (by_backend[i] != NULL) {
            struct name_count *c = by_backend[i];

            by_backend[i] = c->next;
            free(c);
        }
    }
    bans = 0;
    pthread_mutex_unlock(&lock);
}
