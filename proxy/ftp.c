/* ftp.c - the FTP protocol as text: command lines, reply framing, the
 * addresses in PASV/EPSV/PORT/EPRT, USER host|user, HOST arguments and FEAT
 * lines. Every input here is untrusted network text given with its length;
 * nothing is allocated and no state lives outside the caller's structs.
 * Character classes are spelled out instead of <ctype.h> so that the locale
 * and the signedness of char cannot change what is accepted. */
#include "ftp.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "px.h"

#define TELNET_IAC 255
#define TELNET_WILL 251
#define TELNET_DONT 254

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alpha(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static char to_upper(char c)
{
    return c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
}

/* True when p[0..n) equals the upper-case word w in any case. */
static bool equal_nocase(const char *p, size_t n, const char *w)
{
    size_t i;

    if (strlen(w) != n)
        return false;
    for (i = 0; i < n; i++) {
        if (to_upper(p[i]) != w[i])
            return false;
    }
    return true;
}

/* Reads 1..max_digits decimal digits at p[*pos] whose value is at most max,
 * and moves *pos past them. False (and *pos unchanged) when there is no
 * digit, more digits follow, or the value is too big. */
static bool read_num(const char *p, size_t len, size_t *pos, unsigned max_digits, unsigned long max,
                     unsigned long *out)
{
    size_t i = *pos;
    unsigned long v = 0;

    while (i < len && is_digit(p[i])) {
        if (i - *pos == max_digits)
            return false;
        v = v * 10 + (unsigned long)(p[i] - '0');
        i++;
    }
    if (i == *pos || v > max)
        return false;
    *pos = i;
    *out = v;
    return true;
}

/* An IPv4 (dotted) or IPv6 address without brackets, into 4 or 16 bytes. */
static bool parse_ip(int af, const char *p, size_t len, uint8_t *out)
{
    char tmp[INET6_ADDRSTRLEN];

    /* inet_pton() wants a C string: copy, refusing embedded NULs. */
    if (len == 0 || len >= sizeof tmp || memchr(p, '\0', len) != NULL)
        return false;
    memcpy(tmp, p, len);
    tmp[len] = '\0';
    return inet_pton(af, tmp, out) == 1;
}

/* The delimiter of EPSV and EPRT (RFC 2428): printable, and not a digit, which
 * would be ambiguous next to the port. */
static bool is_delim(char c)
{
    return c >= 33 && c <= 126 && !is_digit(c);
}

int ftp_parse_command(const char *line, size_t len, struct ftp_cmd *out)
{
    char verb[sizeof out->verb];
    size_t i;

    if (len == 0 || memchr(line, '\0', len) != NULL || memchr(line, '\r', len) != NULL ||
        memchr(line, '\n', len) != NULL)
        return PX_EINVAL;
    for (i = 0; i < len && i < 4 && is_alpha(line[i]); i++)
        verb[i] = to_upper(line[i]);
    /* A fifth letter, a digit or a tab after the verb all land here. */
    if (i == 0 || (i < len && line[i] != ' '))
        return PX_EINVAL;
    verb[i] = '\0';
    memcpy(out->verb, verb, i + 1);
    if (i < len) {
        out->arg = line + i + 1;
        out->arg_len = len - i - 1;
    } else {
        out->arg = "";
        out->arg_len = 0;
    }
    return 0;
}

size_t ftp_strip_telnet(char *line, size_t len)
{
    size_t i = 0, j = 0;

    while (i < len) {
        unsigned char c = (unsigned char)line[i];

        if (c != TELNET_IAC) {
            line[j++] = line[i++];
            continue;
        }
        if (i + 1 == len)
            break; /* a lone IAC at the end carries nothing */
        c = (unsigned char)line[i + 1];
        if (c == TELNET_IAC) {
            line[j++] = line[i];
            i += 2;
        } else if (c >= TELNET_WILL && c <= TELNET_DONT) {
            i += 3; /* option negotiation: IAC, verb, option */
        } else {
            i += 2; /* IAC IP, IAC DM and the other two-byte commands */
        }
    }
    return j;
}

bool ftp_cmd_is_secret(const struct ftp_cmd *cmd)
{
    return strcmp(cmd->verb, "PASS") == 0 || strcmp(cmd->verb, "ACCT") == 0;
}

int ftp_reply_line(struct ftp_reply *r, const char *line, size_t len)
{
    int code;

    if (r->code == 0 || r->done) {
        memset(r, 0, sizeof *r);
        if (len < 3 || line[0] < '1' || line[0] > '5' || !is_digit(line[1]) || !is_digit(line[2]))
            return PX_EPROTO;
        if (len > 3 && line[3] != ' ' && line[3] != '-')
            return PX_EPROTO;
        r->code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
        r->multi = len > 3 && line[3] == '-';
        r->done = !r->multi;
        r->lines = 1;
        return r->done ? 1 : 0;
    }
    r->lines++;
    if (len < 4 || line[3] != ' ' || !is_digit(line[0]) || !is_digit(line[1]) || !is_digit(line[2]))
        return 0;
    code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    if (code != r->code)
        return 0;
    r->done = true;
    return 1;
}

int ftp_reply_feed(struct ftp_reply *r, const char *p, size_t len)
{
    struct ftp_reply t = *r; /* r changes only when a whole reply is taken */
    size_t pos = 0;

    while (pos < len) {
        const char *lf = memchr(p + pos, '\n', len - pos);
        size_t end, n;
        int rc;

        if (lf == NULL)
            return len - pos > (size_t)FTP_LINE_MAX + 1 ? PX_EMSGSIZE : 0;
        end = (size_t)(lf - p) + 1;
        n = end - 1 - pos;
        if (n > 0 && p[pos + n - 1] == '\r')
            n--;
        if (n > FTP_LINE_MAX || end > INT_MAX)
            return PX_EMSGSIZE;
        rc = ftp_reply_line(&t, p + pos, n);
        if (rc < 0)
            return rc;
        if (rc == 1) {
            *r = t;
            return (int)end;
        }
        pos = end;
    }
    return 0;
}

/* Exactly "h1,h2,h3,h4,p1,p2": fields of up to three digits in 0..255, and
 * a port that is not 0. */
static int parse_six(const char *p, size_t len, struct ftp_hostport *out)
{
    unsigned long f[6];
    size_t pos = 0, i;

    for (i = 0; i < PX_NELEM(f); i++) {
        if (i > 0) {
            if (pos == len || p[pos] != ',')
                return PX_EINVAL;
            pos++;
        }
        if (!read_num(p, len, &pos, 3, 255, &f[i]))
            return PX_EINVAL;
    }
    if (pos != len || f[4] * 256 + f[5] == 0)
        return PX_EINVAL;
    memset(out, 0, sizeof *out);
    out->family = 4;
    for (i = 0; i < 4; i++)
        out->addr[i] = (uint8_t)f[i];
    out->port = (uint16_t)(f[4] * 256 + f[5]);
    return 0;
}

int ftp_parse_pasv_reply(const char *text, size_t len, struct ftp_hostport *out)
{
    size_t i = 0;

    /* Untrusted: straight from the backend. Servers vary the words and the
     * parentheses, so look for the numbers themselves: walk each maximal run
     * of comma-separated digit groups and take the first of exactly six. */
    while (i < len) {
        size_t start = i, groups = 0;

        if (!is_digit(text[i])) {
            i++;
            continue;
        }
        for (;;) {
            while (i < len && is_digit(text[i]))
                i++;
            groups++;
            if (i + 1 >= len || text[i] != ',' || !is_digit(text[i + 1]))
                break;
            i++;
        }
        if (groups == 6)
            return parse_six(text + start, i - start, out);
    }
    return PX_EINVAL;
}

int ftp_parse_epsv_reply(const char *text, size_t len, struct ftp_hostport *out)
{
    size_t i;

    /* Untrusted: straight from the backend. Try each '(' in turn. */
    for (i = 0; i < len; i++) {
        const char *p = text + i + 1;
        size_t n = len - i - 1, pos = 3;
        unsigned long port;

        if (text[i] != '(' || n < 3 || !is_delim(p[0]) || p[1] != p[0] || p[2] != p[0])
            continue;
        if (!read_num(p, n, &pos, 5, 65535, &port) || port == 0)
            continue;
        if (n - pos < 2 || p[pos] != p[0] || p[pos + 1] != ')')
            continue;
        memset(out, 0, sizeof *out);
        out->port = (uint16_t)port;
        return 0;
    }
    return PX_EINVAL;
}

int ftp_parse_port_arg(const char *arg, size_t len, struct ftp_hostport *out)
{
    return parse_six(arg, len, out);
}

int ftp_parse_eprt_arg(const char *arg, size_t len, struct ftp_hostport *out)
{
    const char *field[3];
    size_t flen[3], pos = 1, i;
    unsigned long port;
    struct ftp_hostport hp;

    if (len < 2 || !is_delim(arg[0]))
        return PX_EINVAL;
    /* Three fields, each closed by the delimiter, which also ends the text. */
    for (i = 0; i < 3; i++) {
        const char *d = memchr(arg + pos, arg[0], len - pos);

        if (d == NULL)
            return PX_EINVAL;
        field[i] = arg + pos;
        flen[i] = (size_t)(d - field[i]);
        pos += flen[i] + 1;
    }
    if (pos != len || flen[0] != 1 || (field[0][0] != '1' && field[0][0] != '2'))
        return PX_EINVAL;
    memset(&hp, 0, sizeof hp);
    hp.family = field[0][0] == '1' ? 4 : 6;
    if (!parse_ip(hp.family == 4 ? AF_INET : AF_INET6, field[1], flen[1], hp.addr))
        return PX_EINVAL;
    pos = 0;
    if (!read_num(field[2], flen[2], &pos, 5, 65535, &port) || pos != flen[2] || port == 0)
        return PX_EINVAL;
    hp.port = (uint16_t)port;
    *out = hp;
    return 0;
}

int ftp_parse_epsv_arg(const char *arg, size_t len)
{
    if (len == 0)
        return FTP_EPSV_ANY;
    if (len == 1 && arg[0] == '1')
        return FTP_EPSV_IPV4;
    if (len == 1 && arg[0] == '2')
        return FTP_EPSV_IPV6;
    if (equal_nocase(arg, len, "ALL"))
        return FTP_EPSV_ALL;
    return PX_EINVAL;
}

bool ftp_epsv_arg_is_proto(const char *arg, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        if (!is_digit(arg[i]))
            return false;
    }
    return len > 0;
}

size_t ftp_format_pasv_reply(char *dst, size_t cap, const uint8_t ip4[4], uint16_t port)
{
    int n = snprintf(dst, cap, "227 Entering Passive Mode (%u,%u,%u,%u,%u,%u).\r\n",
                     (unsigned)ip4[0], (unsigned)ip4[1], (unsigned)ip4[2], (unsigned)ip4[3],
                     (unsigned)port >> 8, (unsigned)port & 0xffu);

    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

size_t ftp_format_epsv_reply(char *dst, size_t cap, uint16_t port)
{
    int n = snprintf(dst, cap, "229 Entering Extended Passive Mode (|||%u|)\r\n", (unsigned)port);

    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

int ftp_split_user(const char *arg, size_t len, char sep, struct ftp_user_arg *out)
{
    const char *s = len > 0 ? memchr(arg, sep, len) : NULL;
    size_t host_len;

    if (s == NULL) {
        out->host = NULL;
        out->host_len = 0;
        out->user = arg;
        out->user_len = len;
        return 0;
    }
    host_len = (size_t)(s - arg);
    if (host_len == 0 || host_len + 1 == len)
        return PX_EINVAL;
    out->host = arg;
    out->host_len = host_len;
    out->user = s + 1;
    out->user_len = len - host_len - 1;
    return 1;
}

/* A DNS name as ftp.h describes it. A dotted IPv4 address passes too. */
static bool is_host_name(const char *p, size_t len)
{
    size_t i, label = 0;

    if (len > 0 && p[len - 1] == '.')
        len--;
    if (len == 0 || len > 253)
        return false;
    for (i = 0; i < len; i++) {
        if (p[i] == '.') {
            if (label == 0)
                return false;
            label = 0;
        } else if (is_alpha(p[i]) || is_digit(p[i]) || p[i] == '-' || p[i] == '_') {
            if (++label > 63)
                return false;
        } else {
            return false;
        }
    }
    return label > 0;
}

/* What follows the host: nothing (0), ":port" (PX_ERANGE), or junk. */
static int host_port_suffix(const char *p, size_t len)
{
    size_t pos = 1;
    unsigned long port;

    if (len == 0)
        return 0;
    if (p[0] == ':' && read_num(p, len, &pos, 5, 65535, &port) && pos == len && port > 0)
        return PX_ERANGE;
    return PX_EINVAL;
}

int ftp_check_host_arg(const char *arg, size_t len)
{
    const char *end;
    uint8_t addr[16];

    if (len > 0 && arg[0] == '[') {
        end = memchr(arg, ']', len);
        if (end == NULL || !parse_ip(AF_INET6, arg + 1, (size_t)(end - arg) - 1, addr))
            return PX_EINVAL;
        end++;
    } else {
        end = len > 0 ? memchr(arg, ':', len) : NULL;
        if (end == NULL)
            end = arg + len;
        if (!is_host_name(arg, (size_t)(end - arg)))
            return PX_EINVAL;
    }
    return host_port_suffix(end, len - (size_t)(end - arg));
}

bool ftp_feat_drop(const char *line, size_t len)
{
    static const char *const owned[] = {"AUTH", "PBSZ", "PROT", "CCC",
                                        "HOST", "EPSV", "EPRT", "PASV"};
    size_t start = 0, end, i;

    /* Untrusted: straight from the backend. */
    while (start < len && line[start] == ' ')
        start++;
    end = start;
    while (end < len && line[end] != ' ')
        end++;
    for (i = 0; i < PX_NELEM(owned); i++) {
        if (equal_nocase(line + start, end - start, owned[i]))
            return true;
    }
    return false;
}

int ftp_passive_line(int code, const char *line, size_t len, uint16_t *port)
{
    struct ftp_hostport hp;
    int rc;

    /* Untrusted: straight from the backend. */
    if (code != 227 && code != 229)
        return PX_EINVAL;
    if (len >= 4 && is_digit(line[0]) && is_digit(line[1]) && is_digit(line[2]) &&
        (line[3] == ' ' || line[3] == '-')) {
        line += 4;
        len -= 4;
    }
    rc = code == 229 ? ftp_parse_epsv_reply(line, len, &hp) : ftp_parse_pasv_reply(line, len, &hp);
    if (rc != 0)
        return rc;
    *port = hp.port;
    return 0;
}

enum ftp_feat_step ftp_feat_step(unsigned line_no, bool last, const char *line, size_t len)
{
    if (line_no <= 1)
        return last ? FTP_FEAT_OURS_ONLY : FTP_FEAT_RELAY;
    if (last)
        return FTP_FEAT_OURS_FIRST;
    return ftp_feat_drop(line, len) ? FTP_FEAT_DROP : FTP_FEAT_RELAY;
}

size_t ftp_feat_own(char *dst, size_t cap, unsigned flags)
{
    int n = snprintf(dst, cap, "%s AUTH TLS\r\n PBSZ\r\n PROT\r\n HOST\r\n EPSV\r\n PASV\r\n%s%s%s",
                     (flags & FTP_FEAT_HEAD) ? "211-Features:\r\n" : "",
                     (flags & FTP_FEAT_EPRT) ? " EPRT\r\n" : "",
                     (flags & FTP_FEAT_UTF8) ? " UTF8\r\n" : "",
                     (flags & FTP_FEAT_END) ? "211 End\r\n" : "");

    return n < 0 || (size_t)n >= cap ? 0 : (size_t)n;
}

int ftp_alpn_select(const uint8_t *list, size_t len, size_t *at)
{
    size_t i = 0;
    int found = 0;

    /* Untrusted: straight from the ClientHello. */
    if (len == 0)
        return PX_EINVAL;
    while (i < len) {
        size_t n = list[i];

        if (n == 0 || n > len - i - 1)
            return PX_EINVAL;
        if (!found && n == 3 && memcmp(list + i + 1, "ftp", 3) == 0) {
            *at = i + 1;
            found = 1;
        }
        i += 1 + n;
    }
    return found;
}

bool ftp_is_http_request(const char *line, size_t len)
{
    static const char *const methods[] = {"GET",   "POST",    "HEAD",  "PUT",
                                          "OPTIONS", "CONNECT", "TRACE", "PATCH"};

    for (size_t i = 0; i < PX_NELEM(methods); i++) {
        size_t n = strlen(methods[i]);

        if (len > n && memcmp(line, methods[i], n) == 0 && line[n] == ' ')
            return true;
    }
    return false;
}

bool ftp_reply_is_oops(const char *line, size_t len)
{
    return len >= 9 && memcmp(line, "500 OOPS:", 9) == 0;
}
