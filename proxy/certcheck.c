/* certcheck.c - the certificate checks of -t, start-up, reload and the daily
 * check (see certcheck.h). Certificates come from certload (read once, kept
 * while unchanged); this file judges them and plans which one serves which
 * host name. */
#include "certcheck.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "certload.h"
#include "cfg.h"
#include "loader.h"
#include "px.h"

#define LINE_MAX_ 4096

struct run {
    const struct cfg *cfg;
    const struct certcheck_opts *o;
    time_t now;
    struct certplan *plan;
    struct loader_user who; /* user =: reloads read every file as that user */
    int site; /* the site being judged, -1: the central certificates */
};

/* One certificate being judged: which list it is in and what it serves. */
struct one {
    struct certload_cert *c;
    const char *site;        /* the backend's name; NULL for the central one */
    enum certcheck_kind bad; /* the kind of its errors */
    int site_index;          /* -1 for the central one */
    char label[96];          /* "central certificate" or "site NAME" */
    char where[300];         /* "; configured at FILE:LINE" of its certificate key */
};

static void say(struct run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void finding(struct run *r, enum certcheck_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void say(struct run *r, const char *fmt, ...)
{
    char line[LINE_MAX_];
    va_list ap;

    if (!r->o->report)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    r->o->out(r->o->arg, CERTCHECK_REPORT, line);
}

static void finding(struct run *r, enum certcheck_kind kind, const char *fmt, ...)
{
    char line[LINE_MAX_];
    size_t n = (size_t)snprintf(line, sizeof(line), "%s: ",
                                kind == CERTCHECK_WARNING ? "warning" : "error");
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    va_end(ap);
    if (kind == CERTCHECK_ERROR) {
        r->plan->errors++;
    } else if (kind == CERTCHECK_SITE_ERROR) {
        r->plan->site_errors++;
        PX_ASSERT(r->site >= 0);
        r->plan->sites[r->site].degraded = true;
    } else {
        r->plan->warnings++;
    }
    r->o->out(r->o->arg, kind, line);
}

/* " (served for hosts: ftp.alpha.test, *.alpha.test)": the host names a
 * certificate is served for, which end each of its findings. The central
 * certificate serves clients naming no site and every site without a
 * certificate of its own. */
static void make_hosts(char *dst, size_t cap, const struct cfg *cfg, int site)
{
    char hosts[256];
    size_t n = (size_t)snprintf(hosts, sizeof(hosts), "%s", site < 0 ? "no name" : "");

    if (site >= 0) {
        const struct cfg_backend *be = &cfg->backends[site];

        for (size_t h = 0; h < be->n_hostnames && n < sizeof(hosts); h++)
            n += (size_t)snprintf(hosts + n, sizeof(hosts) - n, "%s%s", n > 0 ? ", " : "",
                                  be->hostnames[h]);
    } else {
        for (size_t b = 0; b < cfg->n_backends && n < sizeof(hosts); b++) {
            const struct cfg_backend *be = &cfg->backends[b];

            for (size_t h = 0; be->certs.n_cert == 0 && h < be->n_hostnames && n < sizeof(hosts);
                 h++)
                n += (size_t)snprintf(hosts + n, sizeof(hosts) - n, ", %s", be->hostnames[h]);
        }
    }
    if (n >= sizeof(hosts))
        memcpy(hosts + sizeof(hosts) - 4, "...", 4);
    snprintf(dst, cap, " (served for hosts: %s)", hosts);
}

/* A finding about one certificate: "FILE: LABEL: what (served for hosts:
 * ...); configured at INI:LINE". */
static void cert_finding(struct run *r, const struct one *o, enum certcheck_kind kind,
                         const char *file, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void cert_finding(struct run *r, const struct one *o, enum certcheck_kind kind,
                         const char *file, const char *fmt, ...)
{
    char what[LINE_MAX_];
    va_list ap;

    char hosts[300];

    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    make_hosts(hosts, sizeof(hosts), r->cfg, o->site_index);
    finding(r, kind, "%s: %s: %s%s%s", file, o->label, what, hosts, o->where);
}

/* ---- describing ---- */

static void name_text(X509_NAME *n, char *dst, size_t cap)
{
    BIO *b = BIO_new(BIO_s_mem());
    int len;

    dst[0] = '\0';
    if (b == NULL)
        return;
    X509_NAME_print_ex(b, n, 0, XN_FLAG_ONELINE & ~ASN1_STRFLGS_ESC_MSB);
    len = BIO_read(b, dst, (int)cap - 1);
    dst[len > 0 ? len : 0] = '\0';
    BIO_free(b);
}

static void sans_text(X509 *x, char *dst, size_t cap)
{
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    size_t n = 0;

    dst[0] = '\0';
    for (int i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        char ip[64] = "";
        const char *kind = NULL, *val = NULL;

        if (g->type == GEN_DNS) {
            kind = "DNS";
            val = (const char *)ASN1_STRING_get0_data(g->d.dNSName);
        } else if (g->type == GEN_IPADD) {
            const unsigned char *a = ASN1_STRING_get0_data(g->d.iPAddress);

            kind = "IP";
            if (ASN1_STRING_length(g->d.iPAddress) == 4)
                inet_ntop(AF_INET, a, ip, sizeof(ip));
            else if (ASN1_STRING_length(g->d.iPAddress) == 16)
                inet_ntop(AF_INET6, a, ip, sizeof(ip));
            else
                snprintf(ip, sizeof(ip), "(malformed)");
            val = ip;
        }
        if (kind != NULL && n < cap)
            n += (size_t)snprintf(dst + n, cap - n, "%s%s:%s", n > 0 ? ", " : "", kind, val);
    }
    GENERAL_NAMES_free(gens);
    if (dst[0] == '\0')
        snprintf(dst, cap, "(none)");
}

static void time_text(const ASN1_TIME *t, char *dst, size_t cap)
{
    struct tm tm;

    if (ASN1_TIME_to_tm(t, &tm) != 1 || strftime(dst, cap, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
        snprintf(dst, cap, "(unreadable)");
}

/* Whole days from now to t (negative: in the past). */
static int days_until(const ASN1_TIME *t, time_t now)
{
    int days = 0, secs = 0;
    ASN1_TIME *n = ASN1_TIME_set(NULL, now);

    if (n != NULL)
        ASN1_TIME_diff(&days, &secs, n, t);
    ASN1_TIME_free(n);
    return days;
}

static void describe(struct run *r, const struct one *o)
{
    char subject[256], issuer[256], sans[512], after[64];
    X509 *leaf = o->c->leaf;

    name_text(X509_get_subject_name(leaf), subject, sizeof(subject));
    name_text(X509_get_issuer_name(leaf), issuer, sizeof(issuer));
    sans_text(leaf, sans, sizeof(sans));
    time_text(X509_get0_notAfter(leaf), after, sizeof(after));
    say(r, "certificate %s (%s)", o->c->file, o->label);
    say(r, "    subject   %s", subject);
    say(r, "    SANs      %s", sans);
    say(r, "    issuer    %s", issuer);
    say(r, "    notAfter  %s (%d days left)", after, days_until(X509_get0_notAfter(leaf), r->now));
}

/* ---- reading as the configured user ---- */

static void check_readable(struct run *r, const struct one *o, const char *file)
{
    char why[256];

    if (!r->who.set || loader_unreadable_by(&r->who, file, why, sizeof(why)) == NULL)
        return;
    cert_finding(r, o, o->bad, file,
                 "not readable by user %s (%s): ftpsgate reads it again as that user at "
                 "every reload, which would fail; make it readable by %s (e.g. chgrp and "
                 "chmod 0640)",
                 r->who.name, why, r->who.name);
}

/* ---- one certificate ---- */

/* The dates come from certload (time_t): the texts are made for findings
 * only, so ten thousand good certificates cost a comparison each. */
static void check_dates(struct run *r, const struct one *o)
{
    X509 *leaf = o->c->leaf;
    char when[64];
    int left;

    if (o->c->not_before <= r->now &&
        o->c->not_after - r->now >= (time_t)CERTCHECK_WARN_DAYS * 86400)
        return;
    left = days_until(X509_get0_notAfter(leaf), r->now);
    if (X509_cmp_time(X509_get0_notBefore(leaf), &r->now) > 0) {
        time_text(X509_get0_notBefore(leaf), when, sizeof(when));
        cert_finding(r, o, o->bad, o->c->file,
                     "not valid yet (notBefore %s): check the clock, or install the "
                     "certificate in force now",
                     when);
    }
    time_text(X509_get0_notAfter(leaf), when, sizeof(when));
    if (X509_cmp_time(X509_get0_notAfter(leaf), &r->now) < 0)
        cert_finding(r, o, o->bad, o->c->file,
                     "expired on %s (%d days ago): renew it (e.g. certbot renew); "
                     "ftpsgate reloads changed files by itself",
                     when, -left);
    else if (left < CERTCHECK_WARN_DAYS)
        cert_finding(r, o, CERTCHECK_WARNING, o->c->file, "expires on %s, in %d days: renew it soon",
                     when, left);
}

/* Trust is a warning: private CAs are common, and their clients trust them. */
static void check_chain(struct run *r, const struct one *o)
{
    if (o->c->self_signed) {
        cert_finding(r, o, CERTCHECK_WARNING, o->c->file,
                     "self-signed: clients will not trust it unless told to; use a "
                     "certificate from a CA for production");
        return;
    }
    if (o->c->chain_error != X509_V_OK)
        cert_finding(r, o, CERTCHECK_WARNING, o->c->file,
                     "the chain does not verify: %s: clients that do not trust the issuer "
                     "will reject it; put the intermediate certificates after the leaf in the "
                     "file, or name the issuing CA in ca_file",
                     X509_verify_cert_error_string(o->c->chain_error));
}

static void check_one(struct run *r, struct one *o)
{
    struct certload_cert *c = o->c;

    check_readable(r, o, c->file);
    check_readable(r, o, c->key_file);
    switch (c->status) {
    case CERTLOAD_CERT_UNREADABLE:
        cert_finding(r, o, o->bad, c->file, "cannot read the certificate: %s", c->detail);
        return;
    case CERTLOAD_CERT_NO_PEM:
        cert_finding(r, o, o->bad, c->file,
                     "no PEM certificate in the file (%s): it must hold the leaf certificate, "
                     "then its chain, in PEM",
                     c->detail);
        return;
    case CERTLOAD_KEY_UNREADABLE:
        cert_finding(r, o, o->bad, c->key_file, "cannot read the private key (PEM): %s",
                     c->detail);
        break;
    case CERTLOAD_KEY_MISMATCH:
        cert_finding(r, o, o->bad, c->key_file,
                     "the private key does not match the certificate %s: install the key the "
                     "certificate was issued for",
                     c->file);
        break;
    case CERTLOAD_OK:
        break;
    }
    describe(r, o);
    check_dates(r, o);
    check_chain(r, o);
}

/* ---- host names ---- */

/* Whether x covers the configured name; a wildcard name "*.b.c" is covered
 * when any one-label name under b.c would be, which RFC 6125 matching decides
 * for a probe label. */
static bool covers(X509 *x, const char *name)
{
    char probe[300];

    if (strncmp(name, "*.", 2) == 0) {
        snprintf(probe, sizeof(probe), "ftpsgate-probe%s", name + 1);
        name = probe;
    }
    return X509_check_host(x, name, strlen(name), X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, NULL) == 1;
}

/* The host names of site b: its own certificates judged name by name; a
 * name none of them can serve falls back to the central ones. */
static void check_site_hosts(struct run *r, size_t b)
{
    const struct cfg *cfg = r->cfg;
    const struct cfg_backend *be = &cfg->backends[b];
    struct certplan_site *s = &r->plan->sites[b];
    struct certload_cert *central = r->plan->central[0];

    for (size_t h = 0; h < be->n_hostnames; h++) {
        const char *host = be->hostnames[h];
        bool ok;

        for (unsigned i = 0; i < s->n; i++) {
            struct certload_cert *c = s->certs[i];

            if (c->leaf == NULL)
                continue;
            ok = covers(c->leaf, host);
            say(r, "    %s  ->  %s (site %s), %s", host, c->file, be->name,
                ok ? "covered" : "NOT covered");
            if (ok && certload_servable(c, r->now))
                s->covers[h] |= (uint8_t)(1u << i);
            else if (!ok && certload_servable(c, r->now))
                finding(r, CERTCHECK_SITE_ERROR,
                        "%s: site %s: host %s: not covered by the site's certificate: "
                        "clients naming it will reject it; get a certificate that covers it",
                        c->file, be->name, host);
        }
        if ((s->covers != NULL && s->covers[h] != 0) || central == NULL || central->leaf == NULL)
            continue;
        ok = covers(central->leaf, host);
        say(r, "    %s  ->  %s (central)%s, %s", host, central->file,
            s->n > 0 ? " instead of the site's own" : "", ok ? "covered" : "NOT covered");
        if (ok)
            continue;
        if (s->n == 0)
            finding(r, CERTCHECK_WARNING,
                    "%s: site %s: host %s: not covered by the central certificate: clients "
                    "connecting by this name will reject it (logging in as %s%cuser via a "
                    "covered name works); give site %s its own certificate",
                    central->file, be->name, host, host, cfg->host_separator, be->name);
        else
            finding(r, CERTCHECK_WARNING,
                    "%s: site %s: host %s: the site's own certificate cannot serve it (see "
                    "above), and the central certificate does not cover it either: clients "
                    "connecting by this name will reject it until the site's certificate is "
                    "fixed",
                    central->file, be->name, host);
    }
}

static void list_listeners(struct run *r)
{
    const struct cfg *cfg = r->cfg;

    say(r, "listeners (each serves the certificates below):");
    for (size_t i = 0; i < cfg->n_listen; i++)
        say(r, "    %s explicit FTPS (AUTH TLS)", cfg->listen[i].text);
    for (size_t i = 0; i < cfg->n_listen_implicit; i++)
        say(r, "    %s implicit FTPS", cfg->listen_implicit[i].text);
    say(r, "backends (a new session goes to the healthy address with the fewest sessions):");
    for (size_t b = 0; b < cfg->n_backends; b++) {
        const struct cfg_backend *be = &cfg->backends[b];
        char list[CFG_ADDRESS_MAX * CFG_ADDR_TEXT_MAX];
        size_t n = 0;

        list[0] = '\0';
        for (size_t i = 0; i < be->n_address && n < sizeof(list); i++)
            n += (size_t)snprintf(list + n, sizeof(list) - n, "%s%s", i > 0 ? ", " : "",
                                  be->address[i].text);
        if (be->health_check > 0)
            say(r, "    %s: %s (health_check %u s, preconnect %u)", be->name, list,
                be->health_check, be->preconnect);
        else
            say(r, "    %s: %s (health_check off, preconnect %u)", be->name, list,
                be->preconnect);
    }
    say(r, "defences:");
    say(r, "    strict_sni %s", cfg->strict_sni
                                  ? "yes: an SNI name no site has and the central certificate "
                                    "does not cover fails the handshake (unrecognized_name)"
                                  : "no: an SNI name no site has gets the central certificate");
    say(r, "    ALPN: ftp selected when offered; a list without ftp fails the handshake");
    if (cfg->ban_after == 0)
        say(r, "    bans: off (ban_after = 0)");
    else
        say(r, "    bans: after %u failed logins within %u s, for %u s; %zu exempt range%s",
            cfg->ban_after, cfg->ban_window, cfg->ban_time, cfg->n_ban_exempt,
            cfg->n_ban_exempt == 1 ? "" : "s");
    say(r, "    per client address (IPv6: per /64): %u sessions, %u passive ports, %u transfers",
        cfg->max_sessions_per_ip, cfg->max_passive_per_ip, cfg->max_transfers_per_ip);
    say(r, "    transfer_memory %llu MiB, max_sessions %u",
        (unsigned long long)(cfg->transfer_memory >> 20), cfg->max_sessions);
    say(r, "certificate by the name a client gives (SNI, or HOST before AUTH TLS):");
    for (unsigned i = 0; i < r->plan->n_central; i++)
        say(r, "    (no name)  ->  %s (central)", r->plan->central[i]->file);
}

/* ---- the run ---- */

/* Loads and judges one certificate list; NULL site: the central one. */
static int load_list(struct run *r, const struct cfg_certs *cc, int site,
                     struct certload_cert **out, unsigned *n, struct certload *l)
{
    struct one o;

    memset(&o, 0, sizeof(o));
    r->site = site;
    o.site = site < 0 ? NULL : r->cfg->backends[site].name;
    o.bad = site < 0 ? CERTCHECK_ERROR : CERTCHECK_SITE_ERROR;
    if (site < 0) {
        snprintf(o.label, sizeof(o.label), "central certificate");
        if (r->cfg->certificate_line != 0)
            snprintf(o.where, sizeof(o.where), "; configured at %s:%u", r->cfg->path,
                     r->cfg->certificate_line);
    } else {
        const struct cfg_backend *b = &r->cfg->backends[site];

        snprintf(o.label, sizeof(o.label), "site %s", o.site);
        if (b->certificate_line != 0)
            snprintf(o.where, sizeof(o.where), "; configured at %s:%u",
                     b->file != NULL ? b->file : r->cfg->path, b->certificate_line);
    }
    o.site_index = site;
    for (size_t i = 0; i < cc->n_cert && i < cc->n_key && i < CERTCHECK_MAX_CERTS; i++) {
        o.c = certload_get(l, cc->cert[i], cc->key[i]);
        if (o.c == NULL)
            return PX_ENOMEM;
        out[(*n)++] = o.c;
        check_one(r, &o);
    }
    return 0;
}

/* Every certificate of cfg read at once, on every CPU (certload_prefetch):
 * the judging below then finds them read. */
static void prefetch(const struct cfg *cfg, struct certload *l)
{
    size_t n = cfg->certs.n_cert, k = 0;
    const char **files, **keys;

    for (size_t b = 0; b < cfg->n_backends; b++)
        n += cfg->backends[b].certs.n_cert;
    files = malloc((n + 1) * sizeof(*files));
    keys = malloc((n + 1) * sizeof(*keys));
    if (files != NULL && keys != NULL) {
        for (size_t b = 0; b <= cfg->n_backends; b++) {
            const struct cfg_certs *cc = b == 0 ? &cfg->certs : &cfg->backends[b - 1].certs;

            for (size_t i = 0; i < cc->n_cert && i < cc->n_key; i++) {
                files[k] = cc->cert[i];
                keys[k++] = cc->key[i];
            }
        }
        certload_prefetch(l, files, keys, k);
    }
    free(files);
    free(keys);
}

int certcheck_run(const struct cfg *cfg, struct certload *l, const struct certcheck_opts *o,
                  struct certplan *plan)
{
    struct run r = {.cfg = cfg, .o = o, .now = o->now, .plan = plan};
    int rc;

    memset(plan, 0, sizeof(*plan));
    plan->sites = calloc(cfg->n_backends + 1, sizeof(*plan->sites));
    if (plan->sites == NULL)
        return PX_ENOMEM;
    plan->n_sites = cfg->n_backends;
    loader_user(cfg->user, &r.who);
    prefetch(cfg, l);
    r.site = -1;
    if (o->ca_problem != NULL)
        finding(&r, CERTCHECK_WARNING,
                "%s: ca_file: %s: chains are checked against the system store only",
                cfg->ca_file, o->ca_problem);
    rc = load_list(&r, &cfg->certs, -1, plan->central, &plan->n_central, l);
    for (size_t b = 0; rc == 0 && b < cfg->n_backends; b++) {
        struct certplan_site *s = &plan->sites[b];

        if (cfg->backends[b].certs.n_cert == 0)
            continue;
        s->covers = calloc(cfg->backends[b].n_hostnames + 1, 1);
        if (s->covers == NULL)
            return PX_ENOMEM;
        rc = load_list(&r, &cfg->backends[b].certs, (int)b, s->certs, &s->n, l);
    }
    if (rc != 0)
        return rc;
    if (o->report)
        list_listeners(&r);
    for (size_t b = 0; b < cfg->n_backends; b++) {
        r.site = (int)b;
        check_site_hosts(&r, b);
        plan->degraded += plan->sites[b].degraded;
    }
    return 0;
}

void certplan_free(struct certplan *plan)
{
    for (unsigned i = 0; i < plan->n_central; i++)
        certload_unref(plan->central[i]);
    for (size_t b = 0; plan->sites != NULL && b < plan->n_sites; b++) {
        for (unsigned i = 0; i < plan->sites[b].n; i++)
            certload_unref(plan->sites[b].certs[i]);
        free(plan->sites[b].covers);
    }
    free(plan->sites);
    memset(plan, 0, sizeof(*plan));
}

time_t certplan_not_after(const struct certplan *plan, int site)
{
    const struct certplan_site *s = site >= 0 ? &plan->sites[site] : NULL;

    if (s != NULL && s->covers != NULL && s->covers[0] != 0)
        for (unsigned i = 0; i < s->n; i++)
            if (s->covers[0] & (1u << i))
                return s->certs[i]->not_after;
    return plan->n_central > 0 && plan->central[0]->leaf != NULL ? plan->central[0]->not_after : 0;
}
