/* tlsctx_int.h - what the files of module tlsctx share (tlsctx.c, and
 * tlsctx_own.c: a worker's own copies of the certificates). Private. */
#ifndef TLSCTX_INT_H
#define TLSCTX_INT_H

#include <openssl/ssl.h>

#include "tlsctx.h"

struct certload_cert;

/* One worker's copies; NULL when out of memory. */
struct tlsctx_own *tlsctx_own_new(void);
void tlsctx_own_free(struct tlsctx_own *o);
/* Puts certificate c on ssl: the worker's copy of it (made now when this is
 * its first use on the worker), or c's shared objects when o is NULL or no
 * copy can be made. Call on the worker's own thread only. 0 or -1. */
int tlsctx_own_use(struct tlsctx_own *o, SSL *ssl, const struct certload_cert *c);

#endif
