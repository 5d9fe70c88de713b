/* certcheck.h - every check `ftpsgate -t` makes on the certificates of a
 * configuration; start-up, each reload and the daily check run the very same
 * checks and reach the same verdict.
 *
 * For each certificate file (the central ones and each site's own): it can
 * be read and parsed (PEM, leaf then chain), its key matches, it is valid
 * now, its chain verifies up to a CA in the system store or in ca_file, it is
 * not about to expire, and, where the configuration names a user to run as,
 * that user can read it (reloads read it again as that user). For each host
 * name: which certificate a client naming it is served, and whether that
 * certificate covers it (RFC 6125, OpenSSL's X509_check_host).
 *
 * Findings come in three kinds (DESIGN.md, "Certificates"): configuration
 * errors (the central certificate unusable: -t exits 1, start-up and reload
 * refuse), site errors (a site's own certificate unusable or not covering one
 * of its names: the site is degraded, served with the central certificate for
 * those names, and still routes; -t exits 3) and warnings. The result is a
 * plan: which certificates may be served for which host names. */
#ifndef CERTCHECK_H
#define CERTCHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct cfg;
struct certload;
struct certload_cert;

#define CERTCHECK_WARN_DAYS 21
#define CERTCHECK_MAX_CERTS 8 /* certificates in one certificate list */

enum certcheck_kind {
    CERTCHECK_REPORT = 0, /* a line of -t's description */
    CERTCHECK_CONFIG,     /* a configuration error from the INI file or a TLS
                             context (gen.c): the line has no "error: " yet */
    CERTCHECK_CONFIG_WARNING, /* "warning: ..." about the configuration itself */
    CERTCHECK_WARNING,    /* "warning: ..." */
    CERTCHECK_SITE_ERROR, /* "error: ..." that degrades a site */
    CERTCHECK_ERROR,      /* "error: ..." of the configuration: it cannot serve */
};

typedef void certcheck_line_fn(void *arg, enum certcheck_kind kind, const char *line);

struct certplan_site {
    struct certload_cert *certs[CERTCHECK_MAX_CERTS]; /* references: the site's own */
    unsigned n;
    uint8_t *covers; /* [n_hostnames]: bit i set when certs[i] is served for that
                        name (it can be served and covers it); 0: the central one */
    bool degraded;   /* a site error was found */
};

struct certplan {
    struct certload_cert *central[CERTCHECK_MAX_CERTS]; /* references */
    unsigned n_central;
    struct certplan_site *sites; /* [n_sites], one per backend */
    size_t n_sites;
    unsigned errors, site_errors, warnings;
    unsigned degraded; /* sites with a site error */
};

struct certcheck_opts {
    time_t now;
    bool report;           /* also describe each certificate and name (-t) */
    const char *ca_problem; /* why ca_file could not be loaded (certload_begin), or NULL */
    certcheck_line_fn *out;
    void *arg;
};

/* Loads every certificate of cfg through l (between certload_begin and
 * certload_end) and checks it as of o->now, sending each line to o->out and
 * filling *plan (free it with certplan_free). 0, or PX_ENOMEM. */
int certcheck_run(const struct cfg *cfg, struct certload *l, const struct certcheck_opts *o,
                  struct certplan *plan);
void certplan_free(struct certplan *plan);

/* notAfter of the certificate a site is served with for its first name
 * (site < 0: the central one), 0 when unknown. For the expiry metric. */
time_t certplan_not_after(const struct certplan *plan, int site);

#endif
