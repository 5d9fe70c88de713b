/* px.h - tiny helpers shared by every module: assertions that stay on in
 * release builds, container_of, array length, and the error space.
 *
 * Errors are negative errno values. On Unix these are the very numbers libuv
 * uses (UV_EINVAL == -EINVAL), so the pure layer can report failures without
 * including uv.h and the I/O layer can still name them with uv_strerror(). */
#ifndef PX_H
#define PX_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

_Noreturn void px_assert_fail(const char *expr, const char *file, int line);

#define PX_ASSERT(c)                                                                               \
    do {                                                                                           \
        if (!(c))                                                                                  \
            px_assert_fail(#c, __FILE__, __LINE__);                                                \
    } while (0)

#define PX_CONTAINER_OF(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))
#define PX_NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* Doubly linked lists with a head pointer, for any struct with prev and
 * next members (sessions, waiting connections, entries): O(1) insert at the
 * front and O(1) removal. Arguments are evaluated more than once: pass
 * plain lvalues. */
#define PX_DLIST_PUSH(head, n)                                                                     \
    do {                                                                                           \
        (n)->prev = NULL;                                                                          \
        (n)->next = (head);                                                                        \
        if ((head) != NULL)                                                                        \
            (head)->prev = (n);                                                                    \
        (head) = (n);                                                                              \
    } while (0)
#define PX_DLIST_UNLINK(head, n)                                                                   \
    do {                                                                                           \
        if ((n)->prev != NULL)                                                                     \
            (n)->prev->next = (n)->next;                                                           \
        else                                                                                       \
            (head) = (n)->next;                                                                    \
        if ((n)->next != NULL)                                                                     \
            (n)->next->prev = (n)->prev;                                                           \
        (n)->prev = (n)->next = NULL;                                                              \
    } while (0)

#define PX_EINVAL (-EINVAL)     /* malformed input */
#define PX_EPROTO (-EPROTO)     /* protocol violation by a peer */
#define PX_EMSGSIZE (-EMSGSIZE) /* over-long line or message */
#define PX_ENOMEM (-ENOMEM)
#define PX_ENOSPC (-ENOSPC)     /* no room in a buffer, or an exhausted pool */
#define PX_ERANGE (-ERANGE)     /* a number outside its range */
#define PX_ENOENT (-ENOENT)
#define PX_EEXIST (-EEXIST)     /* already there */
#define PX_EBUSY (-EBUSY)       /* not now: in use */

struct sockaddr;
/* The 16-byte form of an AF_INET or AF_INET6 address: IPv4 becomes
 * IPv4-mapped IPv6, so one comparison serves both families. */
void px_ip16(const struct sockaddr *sa, unsigned char out[16]);
/* True when a and b (AF_INET or AF_INET6, either) name the same address. */
bool px_same_ip(const struct sockaddr *a, const struct sockaddr *b);
/* The port of an AF_INET or AF_INET6 address, in host order; and setting it. */
uint16_t px_port(const struct sockaddr *sa);
void px_set_port(struct sockaddr *sa, uint16_t port);

#endif
