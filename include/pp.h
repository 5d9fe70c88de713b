/* pp.h - HAProxy PROXY protocol v1 (text) and v2 (binary) headers. Pure. */
#ifndef PP_H
#define PP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define PP_V1 1u
#define PP_V2 2u
#define PP_MAX_LEN 536 /* longest header accepted: v2 16-byte prefix + 520 */

struct pp_header {
    int version; /* 1 or 2 */
    bool local;  /* v2 LOCAL command, or v1 "UNKNOWN": no client address carried */
    struct sockaddr_storage src, dst; /* AF_INET/AF_INET6 when !local, else AF_UNSPEC */
};

/* p holds the first len bytes of a connection. versions: PP_V1 | PP_V2 mask
 * of what is accepted. Returns the length of the header (> 0; the bytes after
 * it belong to the next protocol stage), 0 when more bytes are needed to
 * decide (only while the bytes so far can still begin an accepted header),
 * or PX_EPROTO for a malformed header, one of a version not in the mask, or
 * bytes that are no PROXY header at all. A v2 header with a TCP over
 * IPv4/IPv6 PROXY command gives its addresses; v2 LOCAL (whatever its
 * family byte says) and UNSPEC, and v1 UNKNOWN, give local = true; v2 UDP or
 * AF_UNIX is PX_EPROTO; TLVs are skipped. */
int pp_parse(const uint8_t *p, size_t len, unsigned versions, struct pp_header *out);

#endif
