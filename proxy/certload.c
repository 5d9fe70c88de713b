/* certload.c - certificate files read once, kept while unchanged (see
 * certload.h). The cache is a map from "file NUL key_file" to the loaded
 * certificate; a second map keeps one X509 per chain certificate (by the
 * SHA-256 of its DER), shared by every file that carries it. */
#include "certload.h"

#include <errno.h>
#include <pthread.h>
#include <unistd.h>
#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hmap.h"
#include "loader.h"
#include "px.h"

/* What reading takes on one thread. OpenSSL 3.0 looks its decoders up afresh
 * for each key it reads (PEM_read_bio_PrivateKey: about 0.4 ms a key here);
 * one decoder context, made once per thread and fed every key file, takes a
 * seventh of that. */
struct reader {
    OSSL_DECODER_CTX *keys;
    EVP_PKEY *key_out; /* where keys decodes to */
};

struct certload {
    struct hmap certs;        /* cache_key -> struct certload_cert * */
    struct certload_cert **all; /* every cached certificate (a reference each) */
    size_t n_all, cap_all;
    struct hmap shared;       /* SHA-256 of a chain certificate's DER -> X509 * */
    uint8_t (*digests)[32];   /* the keys of shared */
    size_t n_digests, cap_digests;
    X509_STORE *store;        /* the trust store of this load */
    char *ca_file;            /* what the store was made from */
    struct certload_stamp ca_stamp;
    uint64_t trust;           /* changes whenever the store does */
    struct reader *reader;    /* for reads on the loading thread itself */
    uint64_t load;            /* the load in progress */
    unsigned reads;
};

static void stamp_of(const char *path, struct certload_stamp *s)
{
    struct stat st;

    memset(s, 0, sizeof(*s));
    if (path == NULL || stat(path, &st) != 0)
        return;
    s->exists = true;
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    s->size = st.st_size;
    s->mtime = st.st_mtim;
}

static bool same_stamp(const struct certload_stamp *a, const struct certload_stamp *b)
{
    return a->exists == b->exists && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

static void ssl_detail(struct certload_cert *c)
{
    unsigned long e = ERR_peek_last_error();

    c->detail[0] = '\0';
    if (e != 0)
        ERR_error_string_n(e, c->detail, sizeof(c->detail));
    ERR_clear_error();
}

static time_t to_time(const ASN1_TIME *t)
{
    struct tm tm;

    return ASN1_TIME_to_tm(t, &tm) == 1 ? timegm(&tm) : 0;
}

/* ---- chain certificates, kept once ---- */

/* Room for one more digest. The map's keys point into digests, so the map
 * is rebuilt when they move. */
static bool digest_room(struct certload *l)
{
    size_t cap = l->cap_digests == 0 ? 64 : l->cap_digests * 2;
    uint8_t(*d)[32];
    struct hmap old = l->shared;

    if (l->n_digests < l->cap_digests)
        return true;
    d = malloc(cap * sizeof(*d));
    if (d == NULL)
        return false;
    memset(&l->shared, 0, sizeof(l->shared));
    for (size_t i = 0; i < l->n_digests; i++) {
        uint64_t x = 0;

        (void)hmap_get(&old, (const char *)l->digests[i], 32, &x);
        memcpy(d[i], l->digests[i], 32);
        (void)hmap_put(&l->shared, (const char *)d[i], 32, x, NULL);
    }
    hmap_free(&old);
    free(l->digests);
    l->digests = d;
    l->cap_digests = cap;
    return true;
}

/* Puts x in the map of shared chain certificates under the SHA-256 of its
 * DER, unless one is there: it then returns that one (no reference is
 * taken), else x. */
static X509 *remember(struct certload *l, X509 *x)
{
    unsigned char md[32];
    unsigned len = 0;
    uint64_t v;

    if (X509_digest(x, EVP_sha256(), md, &len) != 1 || len != 32)
        return x;
    if (hmap_get(&l->shared, (const char *)md, 32, &v))
        return (X509 *)(uintptr_t)v;
    if (!digest_room(l))
        return x;
    memcpy(l->digests[l->n_digests], md, 32);
    if (hmap_put(&l->shared, (const char *)l->digests[l->n_digests], 32, (uintptr_t)x, NULL) == 0)
        l->n_digests++;
    return x;
}

/* The X509 to keep for a chain certificate just read: one already kept with
 * the same DER (x is then freed), or x itself. */
static X509 *share(struct certload *l, X509 *x)
{
    X509 *have = remember(l, x);

    if (have == x || X509_up_ref(have) != 1)
        return x;
    X509_free(x);
    return have;
}

/* ---- reading one certificate ---- */

static void read_chain(struct certload_cert *c)
{
    BIO *bio;
    X509 *x;

    ERR_clear_error();
    bio = BIO_new_file(c->file, "r");
    if (bio == NULL) {
        c->status = CERTLOAD_CERT_UNREADABLE;
        ssl_detail(c);
        return;
    }
    c->leaf = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    if (c->leaf == NULL) {
        c->status = CERTLOAD_CERT_NO_PEM;
        ssl_detail(c);
        BIO_free(bio);
        return;
    }
    c->chain = sk_X509_new_null();
    while (c->chain != NULL && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL)
        if (sk_X509_push(c->chain, x) == 0)
            X509_free(x);
    ERR_clear_error(); /* the end of the file reads as an error */
    BIO_free(bio);
    c->not_before = to_time(X509_get0_notBefore(c->leaf));
    c->not_after = to_time(X509_get0_notAfter(c->leaf));
    c->self_signed = X509_check_issued(c->leaf, c->leaf) == X509_V_OK;
}

/* The key through the loader's decoder context; NULL when it cannot (a file
 * with another PEM block first, say): the caller then reads it the slow way. */
static EVP_PKEY *decode_key(struct reader *l, const char *file)
{
    unsigned char buf[16384];
    const unsigned char *p = buf;
    size_t len;
    FILE *f = fopen(file, "rb");

    if (f == NULL)
        return NULL;
    len = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    if (len == 0 || len == sizeof(buf))
        return NULL;
    if (l->keys == NULL)
        l->keys = OSSL_DECODER_CTX_new_for_pkey(&l->key_out, "PEM", NULL, NULL,
                                                EVP_PKEY_KEYPAIR, NULL, NULL);
    l->key_out = NULL;
    if (l->keys == NULL || OSSL_DECODER_from_data(l->keys, &p, &len) != 1) {
        EVP_PKEY_free(l->key_out);
        l->key_out = NULL;
        ERR_clear_error();
    }
    OPENSSL_cleanse(buf, sizeof(buf));
    return l->key_out;
}

static void read_key(struct reader *l, struct certload_cert *c)
{
    BIO *bio;

    c->key = decode_key(l, c->key_file);
    if (c->key == NULL) {
        bio = BIO_new_file(c->key_file, "r");
        c->key = bio != NULL ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
        BIO_free(bio);
    }
    if (c->key == NULL) {
        c->status = CERTLOAD_KEY_UNREADABLE;
        ssl_detail(c);
        return;
    }
    if (X509_check_private_key(c->leaf, c->key) != 1) {
        ERR_clear_error();
        c->status = CERTLOAD_KEY_MISMATCH;
        EVP_PKEY_free(c->key);
        c->key = NULL;
    }
}

/* The leaf's own dates have their own findings: for the chain only the
 * chain counts, an expired intermediate or CA included. */
static int leaf_dates_ok(int ok, X509_STORE_CTX *ctx)
{
    int err = X509_STORE_CTX_get_error(ctx);

    if (!ok && X509_STORE_CTX_get_error_depth(ctx) == 0 &&
        (err == X509_V_ERR_CERT_HAS_EXPIRED || err == X509_V_ERR_CERT_NOT_YET_VALID))
        return 1;
    return ok;
}

static void verify(X509_STORE *store, uint64_t trust, struct certload_cert *c)
{
    X509_STORE_CTX *ctx;

    c->trust = trust;
    c->chain_error = X509_V_OK;
    if (c->leaf == NULL || c->self_signed)
        return; /* self-signed: a finding of its own */
    ctx = X509_STORE_CTX_new();
    if (ctx == NULL || X509_STORE_CTX_init(ctx, store, c->leaf, c->chain) != 1) {
        c->chain_error = X509_V_ERR_OUT_OF_MEM;
    } else {
        X509_STORE_CTX_set_verify_cb(ctx, leaf_dates_ok);
        if (X509_verify_cert(ctx) != 1)
            c->chain_error = X509_STORE_CTX_get_error(ctx);
    }
    X509_STORE_CTX_free(ctx);
    ERR_clear_error();
}

/* A new entry for file and key_file, not read yet. */
static struct certload_cert *new_cert(const char *file, const char *key_file)
{
    struct certload_cert *c = calloc(1, sizeof(*c));
    size_t fl = strlen(file), kl = strlen(key_file);

    if (c == NULL)
        return NULL;
    c->cache_key = malloc(fl + 1 + kl + 1);
    if (c->cache_key == NULL) {
        free(c);
        return NULL;
    }
    memcpy(c->cache_key, file, fl + 1);
    memcpy(c->cache_key + fl + 1, key_file, kl + 1);
    c->cache_key_len = fl + 1 + kl;
    c->file = c->cache_key;
    c->key_file = c->cache_key + fl + 1;
    atomic_init(&c->refs, 1);
    return c;
}

/* Reads and checks c's files: any thread, with a reader of its own. */
static void read_cert(struct reader *rd, X509_STORE *store, uint64_t trust,
                      struct certload_cert *c)
{
    stamp_of(c->file, &c->stamp);
    stamp_of(c->key_file, &c->key_stamp);
    read_chain(c);
    if (c->status == CERTLOAD_OK)
        read_key(rd, c);
    verify(store, trust, c);
}

static void reader_free(struct reader *rd)
{
    if (rd == NULL)
        return;
    OSSL_DECODER_CTX_free(rd->keys);
    free(rd);
}

static void cert_free(struct certload_cert *c)
{
    X509_free(c->leaf);
    sk_X509_pop_free(c->chain, X509_free);
    EVP_PKEY_free(c->key);
    free(c->cache_key);
    free(c);
}

struct certload_cert *certload_ref(struct certload_cert *c)
{
    atomic_fetch_add(&c->refs, 1);
    return c;
}

void certload_unref(struct certload_cert *c)
{
    if (c != NULL && atomic_fetch_sub(&c->refs, 1) == 1)
        cert_free(c);
}

bool certload_servable(const struct certload_cert *c, time_t now)
{
    return c->status == CERTLOAD_OK && c->not_before <= now && now <= c->not_after;
}

/* ---- the cache ---- */

struct certload *certload_new(void) { return calloc(1, sizeof(struct certload)); }

void certload_free(struct certload *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->n_all; i++)
        certload_unref(l->all[i]);
    free(l->all);
    hmap_free(&l->certs);
    hmap_free(&l->shared);
    free(l->digests);
    X509_STORE_free(l->store);
    reader_free(l->reader);
    free(l->ca_file);
    free(l);
}

const char *certload_begin(struct certload *l, const char *ca_file, bool recheck)
{
    struct certload_stamp st;
    const char *why = NULL;

    l->load++;
    l->reads = 0;
    stamp_of(ca_file, &st);
    if (l->store != NULL && !recheck && ((ca_file == NULL && l->ca_file == NULL) ||
                                         (ca_file != NULL && l->ca_file != NULL &&
                                          strcmp(ca_file, l->ca_file) == 0 &&
                                          same_stamp(&st, &l->ca_stamp))))
        return NULL; /* the same trust as last time: cached verdicts hold */
    X509_STORE_free(l->store);
    free(l->ca_file);
    l->ca_file = ca_file != NULL ? strdup(ca_file) : NULL;
    l->ca_stamp = st;
    l->trust++;
    l->store = X509_STORE_new();
    if (l->store == NULL)
        return "out of memory";
    X509_STORE_set_default_paths(l->store);
    if (ca_file != NULL && X509_STORE_load_file(l->store, ca_file) != 1)
        why = "cannot load a CA bundle from it";
    ERR_clear_error();
    return why;
}

/* The cached entry for file with key_file, or NULL. */
static struct certload_cert *cached(struct certload *l, const char *file, const char *key_file)
{
    size_t fl = strlen(file), kl = strlen(key_file);
    char key[8192];
    uint64_t v;

    if (fl + 1 + kl + 1 > sizeof(key))
        return NULL;
    memcpy(key, file, fl + 1);
    memcpy(key + fl + 1, key_file, kl + 1);
    return hmap_get(&l->certs, key, fl + 1 + kl, &v) ? (struct certload_cert *)(uintptr_t)v : NULL;
}

/* Whether c may serve this load as it is: its files unchanged (the stat of
 * each is this load's one look at them). A changed entry is dropped. */
static bool still_good(struct certload *l, struct certload_cert *c)
{
    struct certload_stamp a, b;

    if (c->used == l->load)
        return true; /* looked at already in this load */
    stamp_of(c->file, &a);
    stamp_of(c->key_file, &b);
    if (!same_stamp(&a, &c->stamp) || !same_stamp(&b, &c->key_stamp)) {
        c->used = 0; /* it goes at certload_end() */
        return false;
    }
    c->used = l->load;
    return true;
}

/* Keeps a freshly read entry: its chain certificates shared, and cached. */
static void keep(struct certload *l, struct certload_cert *c)
{
    struct certload_cert **grown;

    l->reads++;
    for (int j = 0; c->chain != NULL && j < sk_X509_num(c->chain); j++)
        (void)sk_X509_set(c->chain, j, share(l, sk_X509_value(c->chain, j)));
    if (l->n_all == l->cap_all) {
        size_t cap = l->cap_all == 0 ? 64 : l->cap_all * 2;

        grown = realloc(l->all, cap * sizeof(*grown));
        if (grown == NULL)
            return; /* served, just not cached */
        l->all = grown;
        l->cap_all = cap;
    }
    c->used = l->load;
    l->all[l->n_all++] = certload_ref(c);
    (void)hmap_set(&l->certs, c->cache_key, c->cache_key_len, (uintptr_t)c);
}

struct certload_cert *certload_get(struct certload *l, const char *file, const char *key_file)
{
    struct certload_cert *c = cached(l, file, key_file);

    if (c != NULL && still_good(l, c)) {
        if (c->trust != l->trust)
            verify(l->store, l->trust, c); /* the same files, another trust store */
        return certload_ref(c);
    }
    if (l->reader == NULL)
        l->reader = calloc(1, sizeof(*l->reader));
    c = new_cert(file, key_file);
    if (c == NULL || l->reader == NULL) {
        certload_unref(c);
        return NULL;
    }
    read_cert(l->reader, l->store, l->trust, c);
    keep(l, c);
    return c;
}

/* ---- reading many at once ---- */

#define PREFETCH_THREADS 8
#define PREFETCH_MIN 64 /* fewer jobs than this: not worth a thread */

struct job {
    struct certload_cert *c;
    bool read;          /* read the files; else only verify again */
};

struct pool {
    struct job *jobs;
    size_t n;
    atomic_size_t next;
    X509_STORE *store;
    uint64_t trust;
};

static void *work(void *arg)
{
    struct pool *p = arg;
    struct reader rd = {NULL, NULL};
    size_t i;

    while ((i = atomic_fetch_add(&p->next, 1)) < p->n) {
        if (p->jobs[i].read)
            read_cert(&rd, p->store, p->trust, p->jobs[i].c);
        else
            verify(p->store, p->trust, p->jobs[i].c);
    }
    OSSL_DECODER_CTX_free(rd.keys);
    ERR_clear_error();
    return NULL;
}

static void *background_work(void *arg)
{
    loader_background();
    return work(arg);
}

void certload_prefetch(struct certload *l, const char *const *files, const char *const *keys,
                       size_t n)
{
    struct pool p = {.store = l->store, .trust = l->trust};
    pthread_t threads[PREFETCH_THREADS];
    size_t started = 0, want;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);

    p.jobs = calloc(n + 1, sizeof(*p.jobs));
    if (p.jobs == NULL)
        return; /* certload_get() reads them one by one */
    for (size_t i = 0; i < n; i++) {
        struct certload_cert *c = cached(l, files[i], keys[i]);

        if (c != NULL && still_good(l, c)) {
            if (c->trust != l->trust)
                p.jobs[p.n++] = (struct job){c, false};
            continue;
        }
        c = new_cert(files[i], keys[i]);
        if (c != NULL)
            p.jobs[p.n++] = (struct job){c, true};
    }
    atomic_init(&p.next, 0);
    /* -t and start-up take every CPU; a reload leaves one to the sessions
     * (this thread and cpus - 2 more: on 2 CPUs, this thread alone). */
    if (loader_in_background())
        want = p.n < PREFETCH_MIN || cpus < 3 ? 0 : (size_t)cpus - 2;
    else
        want = p.n < PREFETCH_MIN ? 0 : (size_t)(cpus > 1 ? cpus : 1);
    if (want > PREFETCH_THREADS)
        want = PREFETCH_THREADS;
    for (; started < want; started++)
        if (pthread_create(&threads[started], NULL, background_work, &p) != 0)
            break;
    work(&p); /* this thread works too, and alone when none started */
    for (size_t t = 0; t < started; t++)
        pthread_join(threads[t], NULL);
    for (size_t i = 0; i < p.n; i++) {
        if (!p.jobs[i].read)
            continue;
        if (cached(l, p.jobs[i].c->file, p.jobs[i].c->key_file) != NULL &&
            cached(l, p.jobs[i].c->file, p.jobs[i].c->key_file)->used == l->load) {
            certload_unref(p.jobs[i].c); /* the same pair twice in the list */
            continue;
        }
        keep(l, p.jobs[i].c);
        certload_unref(p.jobs[i].c); /* keep() holds its own */
    }
    free(p.jobs);
}

void certload_end(struct certload *l)
{
    size_t keep = 0;

    hmap_free(&l->certs);
    for (size_t i = 0; i < l->n_all; i++) {
        struct certload_cert *c = l->all[i];

        if (c->used != l->load) {
            certload_unref(c);
            continue;
        }
        l->all[keep++] = c;
        (void)hmap_put(&l->certs, c->cache_key, c->cache_key_len, (uintptr_t)c, NULL);
    }
    l->n_all = keep;
    /* Chain certificates: only those the kept certificates carry. */
    hmap_free(&l->shared);
    l->n_digests = 0;
    for (size_t i = 0; i < l->n_all; i++)
        for (int j = 0; l->all[i]->chain != NULL && j < sk_X509_num(l->all[i]->chain); j++)
            (void)remember(l, sk_X509_value(l->all[i]->chain, j));
}

unsigned certload_reads(const struct certload *l) { return l->reads; }
