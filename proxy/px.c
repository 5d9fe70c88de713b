/* px.c - the out-of-line helpers of px.h. */
#include "px.h"

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Noreturn void px_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "ftpsgate: assertion failed: %s (%s:%d)\n", expr, file, line);
    abort();
}

void px_ip16(const struct sockaddr *sa, unsigned char out[16])
{
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

    if (sa->sa_family == AF_INET) {
        memcpy(out, mapped, 12);
        memcpy(out + 12, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
    } else {
        memcpy(out, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
    }
}

bool px_same_ip(const struct sockaddr *a, const struct sockaddr *b)
{
    unsigned char x[16], y[16];

    px_ip16(a, x);
    px_ip16(b, y);
    return memcmp(x, y, 16) == 0;
}

uint16_t px_port(const struct sockaddr *sa)
{
    return ntohs(sa->sa_family == AF_INET
                     ? ((const struct sockaddr_in *)(const void *)sa)->sin_port
                     : ((const struct sockaddr_in6 *)(const void *)sa)->sin6_port);
}

void px_set_port(struct sockaddr *sa, uint16_t port)
{
    if (sa->sa_family == AF_INET)
        ((struct sockaddr_in *)(void *)sa)->sin_port = htons(port);
    else
        ((struct sockaddr_in6 *)(void *)sa)->sin6_port = htons(port);
}
