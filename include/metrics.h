/* metrics.h - counters and gauges for Prometheus, shared by every worker
 * thread, and the small HTTP server that serves them at /metrics.
 *
 * Every metric has up to two labels. A series is created the first time a
 * label value is seen (label values come from the configuration or from a
 * fixed set of reasons, so their number stays small) and lives as long as
 * the process. Updates are atomic; hot paths update once per transfer or
 * session, never per byte. */
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
    M_CONN_REFUSED,            /* counter {reason} */
    M_RELOADS,                 /* counter {result} */
    M_CERT_EXPIRY,             /* gauge {site} */
    M_COUNT,
};

/* Adds d to the series of id with labels l1, l2 (NULL when the metric has
 * fewer labels). */
void metrics_add(enum metrics_id id, const char *l1, const char *l2, int64_t d);
void metrics_set(enum metrics_id id, const char *l1, const char *l2, int64_t v);
/* Drops every series of id: for gauges that describe the configuration in
 * force (a site removed by a reload must not keep its series). Only for
 * metrics that one thread sets, with metrics_set. */
void metrics_clear(enum metrics_id id);
/* Frees every series (at exit). */
void metrics_free(void);

/* The whole text exposition (version 0.0.4) into a malloc'd buffer; NULL
 * when out of memory. */
char *metrics_render(size_t *len);

/* Serves GET /metrics on addr with loop. 0 or a libuv error. */
int metrics_serve(uv_loop_t *loop, const struct cfg_addr *addr);
void metrics_stop(void);

#endif
