/* certcheck.h - every check `ftpsgate -t` makes on the certificates of a
 * configuration, also run at start-up, on each reload and once a day.
 *
 * For each certificate file (the central one and each site's own): it can
 * be read and parsed (PEM, leaf then chain), its key matches, it is valid
 * now, its chain verifies up to a CA in the system store or in ca_file, and
 * it is not about to expire. For each host name: the certificate a client
 * naming it would be served covers it (RFC 6125 matching, OpenSSL's
 * X509_check_host). Findings are lines starting "error: " or "warning: " that
 * name the file, the site and the host, and say what to do. */
#ifndef CERTCHECK_H
#define CERTCHECK_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

struct cfg;

#define CERTCHECK_WARN_DAYS 21

/* One line of output: a finding (starts "error: " or "warning: ") or, in
 * report mode, a line of the description. */
typedef void certcheck_line_fn(void *arg, bool finding, bool error, const char *line);

struct certcheck_result {
    unsigned errors, warnings;
};

/* Checks every certificate of cfg as of `now`. report: also describe each
 * certificate (subject, SANs, issuer, notAfter) and, per listener, which
 * certificate each host name gets. */
struct certcheck_result certcheck_run(const struct cfg *cfg, time_t now, bool report,
                                      certcheck_line_fn *out, void *arg);

/* notAfter of the certificate a site serves (site < 0: the central one), or
 * 0 when it cannot be read. For the expiry metric. */
time_t certcheck_not_after(const struct cfg *cfg, int site);

#endif
