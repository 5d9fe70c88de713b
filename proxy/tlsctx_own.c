/* tlsctx_own.c - a worker's own copies of the certificates it serves.
 *
 * A generation's certificates (certload) are shared by every worker. Serving
 * one means, per handshake, taking references on its X509s and key (atomic
 * counters on cache lines every worker writes), reading the X509s' cached
 * extensions under their locks, and signing with the key, whose RSA blinding
 * OpenSSL 3.0 serialises under a lock of the key when threads share it. So
 * each worker serves copies of its own, made the first time it serves a
 * certificate (a site's certificate that no client of this worker asks for
 * is never copied) and kept until the generation goes. Only the worker's
 * own thread touches its copies: no lock. */
#include "tlsctx_int.h"

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdlib.h>

#include "certload.h"
#include "hmap.h"

struct own_cert {
    const struct certload_cert *orig; /* borrowed: the generation's; &orig is the map key */
    X509 *leaf;                       /* owned copies */
    EVP_PKEY *key;
    STACK_OF(X509) *chain;
};

struct tlsctx_own {
    struct hmap map;      /* &own_cert.orig -> struct own_cert * */
    struct own_cert **all; /* owned: every copy, for the free */
    size_t n, cap;
};

struct tlsctx_own *tlsctx_own_new(void) { return calloc(1, sizeof(struct tlsctx_own)); }

static void free_cert(struct own_cert *oc)
{
    X509_free(oc->leaf);
    EVP_PKEY_free(oc->key);
    sk_X509_pop_free(oc->chain, X509_free);
    free(oc);
}

void tlsctx_own_free(struct tlsctx_own *o)
{
    if (o == NULL)
        return;
    for (size_t i = 0; i < o->n; i++)
        free_cert(o->all[i]);
    free(o->all);
    hmap_free(&o->map);
    free(o);
}

static struct own_cert *copy(const struct certload_cert *c)
{
    struct own_cert *oc = calloc(1, sizeof(*oc));

    if (oc == NULL)
        return NULL;
    oc->orig = c;
    oc->leaf = X509_dup(c->leaf);
    oc->key = EVP_PKEY_dup(c->key);
    oc->chain = c->chain != NULL ? sk_X509_deep_copy(c->chain, X509_dup, X509_free)
                                 : sk_X509_new_null();
    if (oc->leaf == NULL || oc->key == NULL || oc->chain == NULL) {
        free_cert(oc);
        return NULL;
    }
    return oc;
}

int tlsctx_own_use(struct tlsctx_own *o, SSL *ssl, const struct certload_cert *c)
{
    struct own_cert *oc = NULL;
    uint64_t v;

    if (o != NULL && hmap_get(&o->map, (const char *)&c, sizeof(c), &v)) {
        oc = (struct own_cert *)(uintptr_t)v;
    } else if (o != NULL && (oc = copy(c)) != NULL) {
        if (o->n == o->cap) {
            size_t cap = o->cap ? 2 * o->cap : 8;
            struct own_cert **all = realloc(o->all, cap * sizeof(*all));

            if (all != NULL) {
                o->all = all;
                o->cap = cap;
            }
        }
        if (o->n < o->cap &&
            hmap_put(&o->map, (const char *)&oc->orig, sizeof(oc->orig), (uintptr_t)oc, NULL) ==
                0) {
            o->all[o->n++] = oc;
        } else {
            free_cert(oc);
            oc = NULL;
        }
    }
    /* Without a copy (out of memory), the shared objects serve. */
    if (oc == NULL)
        return SSL_use_cert_and_key(ssl, c->leaf, c->key, c->chain, 1) == 1 ? 0 : -1;
    return SSL_use_cert_and_key(ssl, oc->leaf, oc->key, oc->chain, 1) == 1 ? 0 : -1;
}
