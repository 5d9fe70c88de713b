/* fuzz_ftp_args.c - the address and argument parsers: PASV and EPSV reply
 * texts, PORT, EPRT and EPSV arguments, and HOST arguments. What parses must
 * be sane, format back into text that parses to the same thing, and the
 * 227/229 formatters must produce replies that parse back. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ftp.h"
#include "px.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same(const struct ftp_hostport *a, const struct ftp_hostport *b)
{
    return a->family == b->family && a->port == b->port &&
           memcmp(a->addr, b->addr, sizeof a->addr) == 0;
}

/* Formats a 227 and a 229 reply and parses them back, as ctl.c's client
 * would: the reply text is what follows "ddd " without the CRLF. */
static void check_format(const uint8_t ip[4], uint16_t port)
{
    struct ftp_hostport hp;
    struct ftp_reply r = {0};
    char line[128];
    size_t n;

    n = ftp_format_pasv_reply(line, sizeof line, ip, port);
    PX_ASSERT(n > 6 && line[n] == '\0' && memcmp(line + n - 2, "\r\n", 2) == 0);
    PX_ASSERT(ftp_reply_line(&r, line, n - 2) == 1 && r.code == 227);
    PX_ASSERT(ftp_parse_pasv_reply(line + 4, n - 6, &hp) == 0);
    PX_ASSERT(hp.family == 4 && memcmp(hp.addr, ip, 4) == 0 && hp.port == port);
    PX_ASSERT(ftp_format_pasv_reply(line, n, ip, port) == 0);

    n = ftp_format_epsv_reply(line, sizeof line, port);
    PX_ASSERT(n > 6 && line[n] == '\0' && memcmp(line + n - 2, "\r\n", 2) == 0);
    PX_ASSERT(ftp_reply_line(&r, line, n - 2) == 1 && r.code == 229);
    PX_ASSERT(ftp_parse_epsv_reply(line + 4, n - 6, &hp) == 0);
    PX_ASSERT(hp.family == 0 && hp.port == port);
}

/* A PORT and an EPRT argument written from hp parse back to hp. */
static void check_active(const struct ftp_hostport *hp)
{
    struct ftp_hostport back;
    char addr[INET6_ADDRSTRLEN], arg[128];
    int n;

    if (hp->family == 4) {
        n = snprintf(arg, sizeof arg, "%u,%u,%u,%u,%u,%u", hp->addr[0], hp->addr[1], hp->addr[2],
                     hp->addr[3], (unsigned)hp->port >> 8, (unsigned)hp->port & 0xffu);
        PX_ASSERT(n > 0 && (size_t)n < sizeof arg);
        PX_ASSERT(ftp_parse_port_arg(arg, (size_t)n, &back) == 0 && same(hp, &back));
    }
    PX_ASSERT(inet_ntop(hp->family == 4 ? AF_INET : AF_INET6, hp->addr, addr, sizeof addr));
    n = snprintf(arg, sizeof arg, "|%d|%s|%u|", hp->family == 4 ? 1 : 2, addr, hp->port);
    PX_ASSERT(n > 0 && (size_t)n < sizeof arg);
    PX_ASSERT(ftp_parse_eprt_arg(arg, (size_t)n, &back) == 0 && same(hp, &back));
}

static void check_host(const char *p, size_t size)
{
    char *with_port;
    int rc = ftp_check_host_arg(p, size);

    PX_ASSERT(rc == 0 || rc == PX_ERANGE || rc == PX_EINVAL);
    if (rc != 0)
        return;
    /* A name that is fine on its own is refused for its port once given one. */
    with_port = malloc(size + 3);
    PX_ASSERT(with_port != NULL);
    memcpy(with_port, p, size);
    memcpy(with_port + size, ":21", 3);
    PX_ASSERT(ftp_check_host_arg(with_port, size + 3) == PX_ERANGE);
    free(with_port);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    struct ftp_hostport hp;
    int rc;

    if (ftp_parse_pasv_reply(p, size, &hp) == 0) {
        PX_ASSERT(hp.family == 4 && hp.port != 0);
        check_format(hp.addr, hp.port);
        check_active(&hp);
    }
    if (ftp_parse_port_arg(p, size, &hp) == 0) {
        struct ftp_hostport again;

        PX_ASSERT(hp.family == 4 && hp.port != 0);
        /* A PORT argument is also a 227 text that holds one run of six. */
        PX_ASSERT(ftp_parse_pasv_reply(p, size, &again) == 0 && same(&hp, &again));
        check_active(&hp);
    }
    if (ftp_parse_epsv_reply(p, size, &hp) == 0) {
        static const uint8_t any[4] = {192, 0, 2, 1};

        PX_ASSERT(hp.family == 0 && hp.port != 0);
        check_format(any, hp.port);
    }
    if (ftp_parse_eprt_arg(p, size, &hp) == 0) {
        PX_ASSERT((hp.family == 4 || hp.family == 6) && hp.port != 0);
        check_active(&hp);
    }
    rc = ftp_parse_epsv_arg(p, size);
    PX_ASSERT(rc == PX_EINVAL || (rc >= FTP_EPSV_ANY && rc <= FTP_EPSV_ALL));
    if (rc == FTP_EPSV_IPV4 || rc == FTP_EPSV_IPV6)
        PX_ASSERT(ftp_epsv_arg_is_proto(p, size));
    check_host(p, size);
    /* Any six bytes make an address and port to format and parse back. */
    if (size >= 6 && (data[4] | data[5]) != 0)
        check_format(data, (uint16_t)(data[4] << 8 | data[5]));
    return 0;
}
