/* sharereg.h - the sessions waiting for a data connection on shared passive
 * ports (shared_passive_ports), found by their session key: the first
 * SHAREREG_KEY_LEN bytes of the control session's random TLS token, which its
 * resumed TLS session carries (tlsctx.h). Entries belong to their owners (a
 * transfer embeds its own) and are only pointed to here.
 *
 * sharereg_match() is the rule a data connection on a shared port passes:
 * the key names a waiting session, waiting on this very port, whose control
 * connection came from the same address. Pure. */
#ifndef SHAREREG_H
#define SHAREREG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hmap.h"

#define SHAREREG_KEY_LEN 16

struct sharereg_entry {
    uint8_t key[SHAREREG_KEY_LEN]; /* the session's key */
    uint8_t ip[16];                /* the control client's address (IPv4 mapped) */
    uint16_t port;                 /* the shared port the session was given */
    void *owner;                   /* the waiting transfer */
    bool registered;
};

struct sharereg {
    struct hmap map;   /* key -> entry */
    struct hmap by_ip; /* client address -> struct sharereg_ip (owned) */
};

enum sharereg_verdict {
    SHAREREG_MATCH = 0,   /* the session waits on this port, from this address */
    SHAREREG_NOT_WAITING, /* no session with this key waits for a data connection */
    SHAREREG_PORT,        /* it waits, on another port */
    SHAREREG_ADDRESS,     /* it waits, for a connection from another address */
};

/* Registers e (its key, ip, port and owner set; not registered yet). 0,
 * PX_EEXIST when a waiting session has the same key, PX_ENOMEM. */
int sharereg_add(struct sharereg *r, struct sharereg_entry *e);
/* Unregisters e; nothing when it is not registered. */
void sharereg_remove(struct sharereg *r, struct sharereg_entry *e);
/* The verdict for a data connection on port from ip whose TLS session has
 * key; *out gets the session's entry (also for PORT and ADDRESS: for logs),
 * NULL when none. */
enum sharereg_verdict sharereg_match(const struct sharereg *r, const uint8_t key[SHAREREG_KEY_LEN],
                                     uint16_t port, const uint8_t ip[16],
                                     struct sharereg_entry **out);
size_t sharereg_count(const struct sharereg *r);
/* How many sessions wait for a data connection from ip: a connection from
 * an address none waits for is refused before its TLS handshake. */
size_t sharereg_waiting_from(const struct sharereg *r, const uint8_t ip[16]);
void sharereg_free(struct sharereg *r);
/* The verdict as the reason label of ftpsgate_data_connections_refused_total
 * ("not_waiting", "port", "address"; "matched" for a match). */
const char *sharereg_verdict_name(enum sharereg_verdict v);

#endif
