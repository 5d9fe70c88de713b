/* certcheck.c - the certificate checks of -t, start-up and reload (see
 * certcheck.h). Certificates are read here on their own, apart from the TLS
 * contexts, so that -t reports every file's problems in one pass. */
#include "certcheck.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"

#define LINE_MAX_ 1024

struct cert {
    const char *file; /* as configured */
    const char *key_file;
    const char *site; /* the backend's name; NULL for the central one */
    char label[96];   /* "central certificate" or "site NAME" */
    char hosts[300];  /* " (served for hosts: ...)": ends each of its findings */
    X509 *leaf;
    STACK_OF(X509) * chain; /* the certificates after the leaf */
    bool usable;            /* read, parsed, and the key matches */
};

struct run {
    const struct cfg *cfg;
    time_t now;
    certcheck_line_fn *out;
    void *arg;
    struct certcheck_result res;
};

static void say(struct run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void finding(struct run *r, bool error, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void say(struct run *r, const char *fmt, ...)
{
    char line[LINE_MAX_];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    r->out(r->arg, false, false, line);
}

static void finding(struct run *r, bool error, const char *fmt, ...)
{
    char line[LINE_MAX_];
    size_t n = (size_t)snprintf(line, sizeof(line), "%s: ", error ? "error" : "warning");
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    va_end(ap);
    if (error)
        r->res.errors++;
    else
        r->res.warnings++;
    r->out(r->arg, true, error, line);
}

/* A finding about one certificate: "FILE: LABEL: what (served for hosts: ...)". */
static void cert_finding(struct run *r, const struct cert *c, bool error, const char *file,
                         const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void cert_finding(struct run *r, const struct cert *c, bool error, const char *file,
                         const char *fmt, ...)
{
    char what[LINE_MAX_];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    finding(r, error, "%s: %s: %s%s", file, c->label, what, c->hosts);
}

static const char *ssl_error(char *buf, size_t cap)
{
    unsigned long e = ERR_peek_last_error();

    buf[0] = '\0';
    if (e != 0)
        ERR_error_string_n(e, buf, cap);
    ERR_clear_error();
    return buf;
}

/* ---- reading ---- */

static bool read_chain(struct run *r, struct cert *c)
{
    char err[256];
    BIO *bio = BIO_new_file(c->file, "r");
    X509 *x;

    ERR_clear_error();
    if (bio == NULL) {
        cert_finding(r, c, true, c->file, "cannot read the certificate: %s",
                     ssl_error(err, sizeof(err)));
        return false;
    }
    c->leaf = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    if (c->leaf == NULL) {
        cert_finding(r, c, true, c->file,
                     "no PEM certificate in the file (%s): it must hold the leaf "
                     "certificate, then its chain, in PEM",
                     ssl_error(err, sizeof(err)));
        BIO_free(bio);
        return false;
    }
    c->chain = sk_X509_new_null();
    while (c->chain != NULL && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL)
        sk_X509_push(c->chain, x);
    ERR_clear_error(); /* the end of the file reads as an error */
    BIO_free(bio);
    return c->chain != NULL;
}

static bool check_key(struct run *r, struct cert *c)
{
    char err[256];
    BIO *bio = BIO_new_file(c->key_file, "r");
    EVP_PKEY *key = bio != NULL ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    bool ok = false;

    if (key == NULL) {
        cert_finding(r, c, true, c->key_file, "cannot read the private key (PEM): %s",
                     ssl_error(err, sizeof(err)));
    } else if (X509_check_private_key(c->leaf, key) != 1) {
        ERR_clear_error();
        cert_finding(r, c, true, c->key_file,
                     "the private key does not match the certificate %s: install the "
                     "key the certificate was issued for",
                     c->file);
    } else {
        ok = true;
    }
    EVP_PKEY_free(key);
    BIO_free(bio);
    return ok;
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

static void describe(struct run *r, const struct cert *c)
{
    char subject[256], issuer[256], sans[512], after[64];

    name_text(X509_get_subject_name(c->leaf), subject, sizeof(subject));
    name_text(X509_get_issuer_name(c->leaf), issuer, sizeof(issuer));
    sans_text(c->leaf, sans, sizeof(sans));
    time_text(X509_get0_notAfter(c->leaf), after, sizeof(after));
    say(r, "certificate %s (%s)", c->file, c->label);
    say(r, "    subject   %s", subject);
    say(r, "    SANs      %s", sans);
    say(r, "    issuer    %s", issuer);
    say(r, "    notAfter  %s (%d days left)", after,
        days_until(X509_get0_notAfter(c->leaf), r->now));
}

/* ---- checking one certificate ---- */

static bool self_signed(X509 *x)
{
    return X509_check_issued(x, x) == X509_V_OK;
}

static void check_dates(struct run *r, const struct cert *c)
{
    char when[64];
    int left = days_until(X509_get0_notAfter(c->leaf), r->now);

    if (X509_cmp_time(X509_get0_notBefore(c->leaf), &r->now) > 0) {
        time_text(X509_get0_notBefore(c->leaf), when, sizeof(when));
        cert_finding(r, c, true, c->file,
                     "not valid yet (notBefore %s): check the clock, or install the "
                     "certificate in force now",
                     when);
    }
    time_text(X509_get0_notAfter(c->leaf), when, sizeof(when));
    if (X509_cmp_time(X509_get0_notAfter(c->leaf), &r->now) < 0)
        cert_finding(r, c, true, c->file,
                     "expired on %s (%d days ago): renew it (e.g. certbot renew); "
                     "ftpsgate reloads changed files by itself",
                     when, -left);
    else if (left < CERTCHECK_WARN_DAYS)
        cert_finding(r, c, false, c->file, "expires on %s, in %d days: renew it soon", when, left);
}

/* The leaf's own dates have their own findings (check_dates): here only the
 * chain counts, an expired intermediate or CA included. */
static int leaf_dates_ok(int ok, X509_STORE_CTX *ctx)
{
    int err = X509_STORE_CTX_get_error(ctx);

    if (!ok && X509_STORE_CTX_get_error_depth(ctx) == 0 &&
        (err == X509_V_ERR_CERT_HAS_EXPIRED || err == X509_V_ERR_CERT_NOT_YET_VALID))
        return 1;
    return ok;
}

static void check_chain(struct run *r, const struct cert *c)
{
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    int err;

    if (self_signed(c->leaf)) {
        cert_finding(r, c, false, c->file,
                     "self-signed: clients will not trust it unless told to; use a "
                     "certificate from a CA for production");
        goto out;
    }
    if (store == NULL || ctx == NULL)
        goto out;
    X509_STORE_set_default_paths(store);
    if (r->cfg->ca_file != NULL && X509_STORE_load_file(store, r->cfg->ca_file) != 1) {
        ERR_clear_error();
        finding(r, true, "%s: ca_file: cannot load a CA bundle from it", r->cfg->ca_file);
    }
    X509_STORE_CTX_init(ctx, store, c->leaf, c->chain);
    X509_STORE_CTX_set_time(ctx, 0, r->now);
    X509_STORE_CTX_set_verify_cb(ctx, leaf_dates_ok);
    if (X509_verify_cert(ctx) != 1) {
        err = X509_STORE_CTX_get_error(ctx);
        cert_finding(r, c, true, c->file,
                     "the chain does not verify: %s: put the intermediate certificates "
                     "after the leaf in the file, or name the issuing CA in ca_file",
                     X509_verify_cert_error_string(err));
    }
out:
    ERR_clear_error();
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
}

static void load(struct run *r, struct cert *c, bool report)
{
    if (!read_chain(r, c))
        return;
    c->usable = check_key(r, c);
    if (report)
        describe(r, c);
    check_dates(r, c);
    check_chain(r, c);
}

static void cert_free(struct cert *c)
{
    X509_free(c->leaf);
    sk_X509_pop_free(c->chain, X509_free);
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

static void check_hosts(struct run *r, struct cert *certs, bool report)
{
    const struct cfg *cfg = r->cfg;
    const struct cert *central = &certs[0];

    if (report) {
        say(r, "listeners (each serves the certificates below):");
        for (size_t i = 0; i < cfg->n_listen; i++)
            say(r, "    %s explicit FTPS (AUTH TLS)", cfg->listen[i].text);
        for (size_t i = 0; i < cfg->n_listen_implicit; i++)
            say(r, "    %s implicit FTPS", cfg->listen_implicit[i].text);
        say(r, "certificate by the name a client gives (SNI, or HOST before AUTH TLS):");
        say(r, "    (no name)  ->  %s (central)", central->file);
    }
    for (size_t b = 0; b < cfg->n_backends; b++) {
        const struct cfg_backend *be = &cfg->backends[b];
        const struct cert *c = be->certificate != NULL ? &certs[b + 1] : central;

        for (size_t h = 0; h < be->n_hostnames; h++) {
            const char *host = be->hostnames[h];
            bool ok = c->leaf != NULL && covers(c->leaf, host);

            if (report)
                say(r, "    %s  ->  %s (%s%s)%s", host, c->file, c == central ? "" : "site ",
                    c == central ? "central" : be->name,
                    c->leaf == NULL ? ""
                    : ok            ? ", covered"
                                    : ", NOT covered");
            if (ok || c->leaf == NULL)
                continue;
            if (c != central)
                finding(r, true,
                        "%s: site %s: host %s: not covered by the site's certificate: "
                        "clients naming it will reject it; get a certificate that covers it",
                        c->file, be->name, host);
            else
                finding(r, false,
                        "%s: site %s: host %s: not covered by the central certificate: clients "
                        "connecting by this name will reject it (logging in as %s%cuser via a "
                        "covered name works); give site %s its own certificate",
                        c->file, be->name, host, host, cfg->host_separator, be->name);
        }
    }
}

/* " (served for hosts: ftp.alpha.test, *.alpha.test)": the host names a
 * certificate is served for, which end each of its findings. The central
 * certificate serves clients naming no site and every site without a
 * certificate of its own. */
static void make_hosts(char *dst, size_t cap, const struct cfg *cfg, int site)
{
    char hosts[256];
    size_t n = (size_t)snprintf(hosts, sizeof(hosts), "%s", site < 0 ? "no name" : "");

    for (size_t b = 0; b < cfg->n_backends; b++) {
        const struct cfg_backend *be = &cfg->backends[b];
        bool served = site < 0 ? be->certificate == NULL : (size_t)site == b;

        for (size_t h = 0; served && h < be->n_hostnames && n < sizeof(hosts); h++)
            n += (size_t)snprintf(hosts + n, sizeof(hosts) - n, "%s%s", n > 0 ? ", " : "",
                                  be->hostnames[h]);
    }
    if (n >= sizeof(hosts))
        memcpy(hosts + sizeof(hosts) - 4, "...", 4);
    snprintf(dst, cap, " (served for hosts: %s)", hosts);
}

struct certcheck_result certcheck_run(const struct cfg *cfg, time_t now, bool report,
                                      certcheck_line_fn *out, void *arg)
{
    struct run r = {.cfg = cfg, .now = now, .out = out, .arg = arg};
    struct cert *certs = calloc(1 + cfg->n_backends, sizeof(*certs));

    if (certs == NULL) {
        finding(&r, true, "out of memory");
        return r.res;
    }
    certs[0].file = cfg->certificate;
    certs[0].key_file = cfg->private_key;
    snprintf(certs[0].label, sizeof(certs[0].label), "central certificate");
    make_hosts(certs[0].hosts, sizeof(certs[0].hosts), cfg, -1);
    load(&r, &certs[0], report);
    for (size_t b = 0; b < cfg->n_backends; b++) {
        const struct cfg_backend *be = &cfg->backends[b];

        if (be->certificate == NULL)
            continue;
        certs[b + 1].file = be->certificate;
        certs[b + 1].key_file = be->private_key;
        certs[b + 1].site = be->name;
        snprintf(certs[b + 1].label, sizeof(certs[b + 1].label), "site %s", be->name);
        make_hosts(certs[b + 1].hosts, sizeof(certs[b + 1].hosts), cfg, (int)b);
        load(&r, &certs[b + 1], report);
    }
    check_hosts(&r, certs, report);
    for (size_t i = 0; i <= cfg->n_backends; i++)
        cert_free(&certs[i]);
    free(certs);
    return r.res;
}

time_t certcheck_not_after(const struct cfg *cfg, int site)
{
    const char *file = site >= 0 && cfg->backends[site].certificate != NULL
                           ? cfg->backends[site].certificate
                           : cfg->certificate;
    BIO *bio = BIO_new_file(file, "r");
    X509 *x = bio != NULL ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    struct tm tm;
    time_t t = 0;

    if (x != NULL && ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1)
        t = timegm(&tm);
    X509_free(x);
    BIO_free(bio);
    ERR_clear_error();
    return t;
}
