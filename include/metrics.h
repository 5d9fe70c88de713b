/* metrics.h - counters and gauges for Prometheus, shared by every worker
 * thread, and the small HTTP server that serves them at /metrics.
 *
 * Every metric has up to two labels. A series is created the first time a
 * label value is seen (label values come from the configuration or from a
 * fixed set of reasons); each load creates the ones it knows at 0, and drops
 * those of a removed backend. Series are found by hash, under one mutex:
 * hot paths update once per transfer or session, never per byte. */
#ifndef METRICS_H
#define METRICS_H

#include <stdint.h>
#include <uv.h>

struct cfg_addr;

enum metrics_id {
    M_SESSIONS_ACTIVE = 0,     /* gauge: control connections open */
    M_BACKEND_SESSIONS_ACTIVE, /* gauge {backend} */
    M_SESSIONS_TOTAL,          /* counter {backend}: sessions routed to it */
    M_LOGINS_FAILED,           /* counter {backend} */
    M_BYTES,                   /* counter {backend, direction} */
    M_TRANSFERS,               /* counter {backend, result} */
    M_TLS_FAILURES,            /* counter {reason} */
    M_BACKEND_FAILURES,        /* counter {backend} */
    M_DATA_REFUSED,            /* counter {reason} */
    M_DATA_MATCHED,            /* counter: shared-port data connections given to their session */
    M_CONN_REFUSED,            /* counter {reason} */
    M_RELOADS,                 /* counter {result} */
    M_CERT_EXPIRY,             /* gauge {site} */
    M_SITES_DEGRADED,          /* gauge: sites served (partly) with the central certificate */
    M_SITE_DEGRADED,           /* gauge {site}: 1 when degraded */
    M_BANS_ACTIVE,             /* gauge: client addresses banned now */
    M_BANS_TOTAL,              /* counter: bans since start */
    M_BACKEND_UP,              /* gauge {backend, address}: 1 in the rotation, 0 out */
    M_BACKEND_ADDR_SESSIONS,   /* gauge {backend, address}: sessions on that address */
    M_COUNT,
};

/* Adds d to the series of id with labels l1, l2 (NULL when the metric has
 * fewer labels). */
void metrics_add(enum metrics_id id, const char *l1, const char *l2, int64_t d);
void metrics_set(enum metrics_id id, const char *l1, const char *l2, int64_t v);
/* Drops every series whose first label (backend or site) is name: a
 * backend removed by a reload. */
void metrics_drop(const char *name);
/* Drops the one series of id with labels l1, l2 (an address removed). */
void metrics_drop_series(enum metrics_id id, const char *l1, const char *l2);
/* Frees every series (at exit). */
void metrics_free(void);

/* The whole text exposition (version 0.0.4) into a malloc'd buffer; NULL
 * when out of memory. */
char *metrics_render(size_t *len);

/* Serves GET /metrics on addr with loop. 0 or a libuv error. */
int metrics_serve(uv_loop_t *loop, const struct cfg_addr *addr);
void metrics_stop(void);

#endif
