/* certload.h - certificate files in memory: each certificate file with its
 * chain and its private key, read and checked once and kept while both files
 * are unchanged on disk (path, size, inode and mtime), so that a reload reads
 * again only what changed. Chains are verified against one trust store per
 * load (the system store and ca_file), never one per certificate, and chain
 * certificates that several files carry (a shared intermediate) are kept
 * once.
 *
 * A loader is used by one thread at a time (start-up, -t, or the reload
 * thread). The certificates it hands out are immutable and shared by every
 * thread, with atomic reference counts. */
#ifndef CERTLOAD_H
#define CERTLOAD_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

enum certload_status {
    CERTLOAD_OK = 0,
    CERTLOAD_CERT_UNREADABLE, /* the certificate file cannot be opened */
    CERTLOAD_CERT_NO_PEM,     /* it holds no PEM certificate */
    CERTLOAD_KEY_UNREADABLE,  /* the key file cannot be read, or holds no PEM key */
    CERTLOAD_KEY_MISMATCH,    /* the key is not the certificate's */
};

/* What a file looked like when it was read. */
struct certload_stamp {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    bool exists;
};

struct certload_cert {
    atomic_uint refs;
    char *file, *key_file; /* as configured */
    enum certload_status status;
    char detail[256];      /* the system's or OpenSSL's words for a failure */
    X509 *leaf;            /* NULL when the file held no certificate */
    STACK_OF(X509) *chain; /* the certificates after the leaf (shared ones kept once) */
    EVP_PKEY *key;         /* set when status is CERTLOAD_OK */
    time_t not_before, not_after;
    bool self_signed;
    int chain_error;       /* X509_V_OK, or why the chain does not verify */
    /* The cache's. */
    char *cache_key;       /* file NUL key_file */
    size_t cache_key_len;
    struct certload_stamp stamp, key_stamp;
    uint64_t trust;        /* the trust store chain_error was found with */
    uint64_t used;         /* the last load that asked for it */
};

struct certload;

struct certload *certload_new(void);
void certload_free(struct certload *l);

/* Begins a load: the trust store is made from the system store and ca_file
 * (NULL: none) when either changed, or when recheck asks for the chains to be
 * verified again (the daily check). Returns NULL, or why ca_file could not be
 * loaded (the store then has the system's CAs only). */
const char *certload_begin(struct certload *l, const char *ca_file, bool recheck);
/* The certificate of file with key_file: the cached one when both files are
 * unchanged, else read and checked now. A new reference; NULL only when out
 * of memory. */
struct certload_cert *certload_get(struct certload *l, const char *file, const char *key_file);
/* Reads and checks, on several CPUs at once (all of them at start-up and for
 * -t; all but one in a reload, which leaves one to the sessions), the certificates of the pairs
 * (files[i], keys[i]) that the cache lacks or that changed, so that the
 * certload_get() calls that follow find them read. */
void certload_prefetch(struct certload *l, const char *const *files, const char *const *keys,
                       size_t n);
/* Ends the load: certificates it did not ask for leave the cache. */
void certload_end(struct certload *l);
/* How many certificate files the last load read (the rest came from the cache). */
unsigned certload_reads(const struct certload *l);

struct certload_cert *certload_ref(struct certload_cert *c);
void certload_unref(struct certload_cert *c);

/* True when c can be served now: loaded, its key matches, within its dates. */
bool certload_servable(const struct certload_cert *c, time_t now);

#endif
