/* pp.c - HAProxy PROXY protocol headers, version 1 (one text line) and
 * version 2 (binary), as specified in haproxy's doc/proxy-protocol.txt.
 *
 * The listener calls pp_parse() each time bytes arrive, with everything read
 * so far. The answer is "need more" only while those bytes can still become
 * a header of an accepted version, so a client that speaks anything else is
 * refused at its first wrong byte instead of at the timeout. */
#include "pp.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "px.h"

#define V1_MAX_LEN 107 /* the spec's longest: UNKNOWN with two full IPv6 and ports */
#define V2_PREFIX_LEN 16

static const uint8_t v2_sig[12] = {'\r', '\n', '\r', '\n', 0, '\r', '\n', 'Q', 'U', 'I', 'T', '\n'};

/* True when the len bytes seen so far agree with the first bytes of s. */
static bool is_prefix(const uint8_t *p, size_t len, const void *s, size_t n)
{
    size_t k = len < n ? len : n;

    return k == 0 || memcmp(p, s, k) == 0;
}

static void set_addr(struct sockaddr_storage *ss, int family, const uint8_t *addr,
                     const uint8_t port_be[2])
{
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;

        sin->sin_family = AF_INET;
        memcpy(&sin->sin_addr, addr, 4);
        memcpy(&sin->sin_port, port_be, 2);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

        sin6->sin6_family = AF_INET6;
        memcpy(&sin6->sin6_addr, addr, 16);
        memcpy(&sin6->sin6_port, port_be, 2);
    }
}

/* Version 1. A cursor over the bytes seen so far; each step returns 1 when
 * it matched and moved on, 0 when the bytes ran out while still matching,
 * or PX_EPROTO. */
struct v1 {
    const uint8_t *p;
    size_t len, pos;
};

static int v1_lit(struct v1 *c, const char *s)
{
    size_t n = strlen(s);

    if (!is_prefix(c->p + c->pos, c->len - c->pos, s, n))
        return PX_EPROTO;
    if (c->len - c->pos < n)
        return 0;
    c->pos += n;
    return 1;
}

/* 1..max_digits decimal digits, value <= max. */
static int v1_num(struct v1 *c, size_t max_digits, unsigned long max, unsigned long *out)
{
    size_t i = c->pos;
    unsigned long v = 0;

    while (i < c->len && c->p[i] >= '0' && c->p[i] <= '9') {
        if (i - c->pos == max_digits)
            return PX_EPROTO;
        v = v * 10 + (unsigned long)(c->p[i] - '0');
        if (v > max)
            return PX_EPROTO;
        i++;
    }
    if (i == c->len)
        return 0; /* more digits may follow */
    if (i == c->pos)
        return PX_EPROTO;
    c->pos = i;
    *out = v;
    return 1;
}

static int v1_ip4(struct v1 *c, uint8_t addr[16])
{
    unsigned long v;
    int rc, i;

    for (i = 0; i < 4; i++) {
        if (i > 0) {
            rc = v1_lit(c, ".");
            if (rc <= 0)
                return rc;
        }
        rc = v1_num(c, 3, 255, &v);
        if (rc <= 0)
            return rc;
        addr[i] = (uint8_t)v;
    }
    return 1;
}

/* The characters an IPv6 address may use, up to the next space; the address
 * itself is checked by inet_pton() once it is complete. */
static int v1_ip6(struct v1 *c, uint8_t addr[16])
{
    char tmp[INET6_ADDRSTRLEN];
    size_t n = 0;

    for (;;) {
        uint8_t ch;

        if (c->pos + n == c->len)
            return 0;
        ch = c->p[c->pos + n];
        if (ch == ' ')
            break;
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F') ||
              ch == ':' || ch == '.'))
            return PX_EPROTO;
        if (++n == sizeof tmp)
            return PX_EPROTO;
    }
    memcpy(tmp, c->p + c->pos, n);
    tmp[n] = '\0';
    if (inet_pton(AF_INET6, tmp, addr) != 1)
        return PX_EPROTO;
    c->pos += n;
    return 1;
}

/* "UNKNOWN", then optionally a space and anything, then CRLF. */
static int v1_unknown_rest(struct v1 *c)
{
    size_t i;

    if (c->pos < c->len && c->p[c->pos] != ' ' && c->p[c->pos] != '\r')
        return PX_EPROTO;
    for (i = c->pos; i < c->len; i++) {
        if (c->p[i] == '\n')
            return PX_EPROTO; /* an LF without its CR */
        if (c->p[i] == '\r') {
            c->pos = i;
            return v1_lit(c, "\r\n");
        }
    }
    return 0;
}

/* After "TCP4 " or "TCP6 ": "src dst sport dport\r\n". */
static int v1_tcp(struct v1 *c, int family, struct pp_header *out)
{
    uint8_t addr[2][16], port[2][2];
    unsigned long v;
    int rc, k;

    for (k = 0; k < 2; k++) {
        rc = family == AF_INET ? v1_ip4(c, addr[k]) : v1_ip6(c, addr[k]);
        if (rc == 1)
            rc = v1_lit(c, " ");
        if (rc <= 0)
            return rc;
    }
    for (k = 0; k < 2; k++) {
        rc = v1_num(c, 5, 65535, &v);
        if (rc == 1)
            rc = v1_lit(c, k == 0 ? " " : "\r\n");
        if (rc <= 0)
            return rc;
        port[k][0] = (uint8_t)(v >> 8);
        port[k][1] = (uint8_t)v;
    }
    set_addr(&out->src, family, addr[0], port[0]);
    set_addr(&out->dst, family, addr[1], port[1]);
    return 1;
}

/* "TCP4 ", "TCP6 " or "UNKNOWN"; *which is its index in v1_protos. */
static const char *const v1_protos[] = {"TCP4 ", "TCP6 ", "UNKNOWN"};
enum { V1_TCP4 = 0, V1_TCP6, V1_UNKNOWN };

static int v1_proto(struct v1 *c, size_t *which)
{
    bool partial = false;
    size_t i;

    for (i = 0; i < PX_NELEM(v1_protos); i++) {
        struct v1 t = *c;
        int rc = v1_lit(&t, v1_protos[i]);

        if (rc == 1) {
            *c = t;
            *which = i;
            return 1;
        }
        partial = partial || rc == 0;
    }
    return partial ? 0 : PX_EPROTO;
}

static int parse_v1(const uint8_t *p, size_t len, struct pp_header *out)
{
    /* The whole line fits in 107 bytes: look no further than that. */
    struct v1 c = {p, len < V1_MAX_LEN ? len : V1_MAX_LEN, 0};
    size_t which = V1_UNKNOWN;
    int rc;

    rc = v1_lit(&c, "PROXY ");
    if (rc == 1)
        rc = v1_proto(&c, &which);
    if (rc == 1 && which == V1_UNKNOWN)
        rc = v1_unknown_rest(&c);
    else if (rc == 1)
        rc = v1_tcp(&c, which == V1_TCP4 ? AF_INET : AF_INET6, out);
    if (rc == 0 && len >= V1_MAX_LEN)
        return PX_EPROTO;
    if (rc <= 0)
        return rc;
    out->version = 1;
    out->local = which == V1_UNKNOWN;
    return (int)c.pos;
}

/* Version 2: the signature, then ver/cmd, family/transport, a big-endian
 * body length, the addresses and TLVs. */
static int parse_v2(const uint8_t *p, size_t len, struct pp_header *out)
{
    size_t body, need = 0;
    bool local;

    if (len > 12 && (p[12] >> 4 != 2 || (p[12] & 0xf) > 1))
        return PX_EPROTO; /* version 2, command LOCAL (0) or PROXY (1) */
    local = len > 12 && p[12] == 0x20;
    /* LOCAL ignores the family byte; PROXY takes TCP over IPv4 or IPv6, or
     * UNSPEC, which the spec serves as a local connection. */
    if (len > 13 && !local && p[13] != 0x11 && p[13] != 0x21 && p[13] != 0x00)
        return PX_EPROTO;
    if (len < V2_PREFIX_LEN)
        return 0;
    body = (size_t)p[14] << 8 | p[15];
    if (!local && p[13] == 0x11)
        need = 12;
    else if (!local && p[13] == 0x21)
        need = 36;
    if (body > PP_MAX_LEN - V2_PREFIX_LEN || body < need)
        return PX_EPROTO;
    if (len < V2_PREFIX_LEN + body)
        return 0;
    out->version = 2;
    if (need == 12) {
        set_addr(&out->src, AF_INET, p + 16, p + 24);
        set_addr(&out->dst, AF_INET, p + 20, p + 26);
    } else if (need == 36) {
        set_addr(&out->src, AF_INET6, p + 16, p + 48);
        set_addr(&out->dst, AF_INET6, p + 32, p + 50);
    } else {
        out->local = true;
    }
    /* TLVs, if any, fill the rest of the body and are skipped. */
    return (int)(V2_PREFIX_LEN + body);
}

int pp_parse(const uint8_t *p, size_t len, unsigned versions, struct pp_header *out)
{
    memset(out, 0, sizeof *out);
    /* Untrusted: the first bytes of a connection. The two signatures differ
     * in their first byte, so at most one of these can match. */
    if ((versions & PP_V2) && is_prefix(p, len, v2_sig, sizeof v2_sig))
        return parse_v2(p, len, out);
    if ((versions & PP_V1) && is_prefix(p, len, "PROXY ", 6))
        return parse_v1(p, len, out);
    return PX_EPROTO;
}
