/* stubftp - a one-process plaintext FTP login stub for scripts/bench: the
 * backend of the work items "logins-workers" and "big-sessions".
 *
 *   stubftp PORT      listens on 127.0.0.1:PORT (0: an ephemeral port) and
 *                     prints "listening PORT" when ready
 *
 * It greets (220), takes USER (331) and PASS (230), answers NOOP (200) and
 * QUIT (221, then closes), PASV (227) and EPSV (229) with its one data port,
 * where it accepts data connections and holds them (reading and dropping
 * what comes) until their peer closes; refuses anything else (502), and
 * holds idle connections for as long as the client keeps them: all in one
 * thread over epoll, with about 600 bytes per connection.
 *
 * Why not vsftpd: vsftpd forks two processes per session. Holding 10,000
 * idle sessions through ftpsgate would need 20,000 of them (most of this
 * machine's pid space), and each vsftpd login costs about 2.8 CPU-ms, more
 * than ftpsgate's own login, so on two cores it would be the bound of a
 * login-rate figure. ftpsgate's memory and CPU per session do not depend on
 * what the backend is. This stub costs under a tenth of a CPU-ms per login,
 * kernel included (the Python asyncio stub it replaces cost about 0.5).
 *
 * Built by scripts/bench.py: cc -O2 -o stubftp stubftp.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define LINE_MAX_BYTES 512

struct conn {
    int fd;
    int data; /* a data connection: its bytes are dropped */
    size_t len;
    char in[LINE_MAX_BYTES];
};

static void die(const char *what)
{
    fprintf(stderr, "stubftp: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void conn_close(struct conn *c)
{
    close(c->fd); /* also leaves the epoll set */
    free(c);
}

/* Replies are a few bytes into a socket the client drains between
 * commands: a write that does not take them whole means a client that does
 * not read, which is dropped. */
static int say(struct conn *c, const char *text)
{
    size_t n = strlen(text);

    return write(c->fd, text, n) == (ssize_t)n ? 0 : -1;
}

/* One command line (CRLF or LF stripped). Returns -1 to close. */
static int data_port;

static int command(struct conn *c, char *line)
{
    char *sp = strchr(line, ' ');
    char text[96];

    if (sp != NULL)
        *sp = '\0';
    if (strcasecmp(line, "USER") == 0)
        return say(c, "331 Please specify the password.\r\n");
    if (strcasecmp(line, "PASS") == 0)
        return say(c, "230 Login successful.\r\n");
    if (strcasecmp(line, "NOOP") == 0)
        return say(c, "200 NOOP ok.\r\n");
    if (strcasecmp(line, "PASV") == 0) {
        snprintf(text, sizeof text, "227 Entering Passive Mode (127,0,0,1,%d,%d).\r\n",
                 data_port >> 8, data_port & 255);
        return say(c, text);
    }
    if (strcasecmp(line, "EPSV") == 0) {
        snprintf(text, sizeof text, "229 Entering Extended Passive Mode (|||%d|).\r\n", data_port);
        return say(c, text);
    }
    if (strcasecmp(line, "QUIT") == 0) {
        say(c, "221 Goodbye.\r\n");
        return -1;
    }
    return say(c, "502 Not implemented in the stub.\r\n");
}

/* Reads what has come and answers every complete line. Returns -1 to close. */
static int on_readable(struct conn *c)
{
    for (;;) {
        ssize_t n = read(c->fd, c->in + c->len, sizeof c->in - c->len);
        char *start, *nl;

        if (n == 0)
            return -1;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno == EAGAIN ? 0 : -1;
        if (c->data)
            continue; /* dropped */
        c->len += (size_t)n;
        start = c->in;
        while ((nl = memchr(start, '\n', c->len - (size_t)(start - c->in))) != NULL) {
            *nl = '\0';
            if (nl > start && nl[-1] == '\r')
                nl[-1] = '\0';
            if (command(c, start) != 0)
                return -1;
            start = nl + 1;
        }
        c->len -= (size_t)(start - c->in);
        memmove(c->in, start, c->len);
        if (c->len == sizeof c->in)
            return -1; /* a line longer than any command */
    }
}

int main(int argc, char **argv)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    struct epoll_event ev = {.events = EPOLLIN}, evs[256];
    struct rlimit rl;
    char *end;
    long port;
    int lfd, dfd, ep, one = 1;
    static int data_marker;

    if (argc != 2 || (port = strtol(argv[1], &end, 10), *end != '\0') || port < 0 || port > 65535) {
        fprintf(stderr, "usage: stubftp PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    sa.sin_port = htons((uint16_t)port);
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, 4096) != 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &sl) != 0)
        die("listen");
    ep = epoll_create1(EPOLL_CLOEXEC);
    ev.data.ptr = NULL; /* the listener */
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) != 0)
        die("epoll");
    sa.sin_port = 0;
    sl = sizeof sa;
    dfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (dfd < 0 || bind(dfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(dfd, 4096) != 0 ||
        getsockname(dfd, (struct sockaddr *)&sa, &sl) != 0)
        die("data listen");
    data_port = ntohs(sa.sin_port);
    ev.data.ptr = &data_marker;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, dfd, &ev) != 0)
        die("epoll");
    sl = sizeof sa;
    if (getsockname(lfd, (struct sockaddr *)&sa, &sl) != 0)
        die("getsockname");
    printf("listening %d\n", ntohs(sa.sin_port));
    fflush(stdout);
    for (;;) {
        int n = epoll_wait(ep, evs, (int)(sizeof evs / sizeof evs[0]), -1);

        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            int from = lfd;

            if (evs[i].data.ptr == &data_marker) {
                c = NULL;
                from = dfd;
            } else if (c != NULL) {
                if (on_readable(c) != 0)
                    conn_close(c);
                continue;
            }
            for (;;) {
                int fd = accept4(from, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

                if (fd < 0) {
                    if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
                        /* Out of descriptors, say: the listener stays
                         * readable, so pause rather than spin. */
                        fprintf(stderr, "stubftp: accept: %s\n", strerror(errno));
                        usleep(10000);
                    }
                    break;
                }
                c = calloc(1, sizeof *c);
                if (c == NULL) {
                    close(fd);
                    continue;
                }
                c->fd = fd;
                c->data = from == dfd;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                ev.data.ptr = c;
                if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0 ||
                    (!c->data && say(c, "220 bench stub backend ready\r\n") != 0))
                    conn_close(c);
            }
        }
    }
}
