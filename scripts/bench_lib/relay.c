/* relay - the bare relay: the least code that does the work of ftpsgate's data
 * path, as the reference for its CPU per GiB (scripts/bench, work item "relay").
 *
 *   relay down CERT KEY CIPHERSUITE HOST:PORT [BUF_KIB]
 *   relay up   CERT KEY CIPHERSUITE HOST:PORT [BUF_KIB]
 *
 * It listens on an ephemeral port of 127.0.0.1, prints "listening PORT", and
 * accepts ONE connection: a TLS server, TLS 1.3 only with the one ciphersuite
 * given, 16 KiB records and no session tickets (as ftpsgate's data
 * connections). Then it connects to HOST:PORT in plaintext and
 *
 *   down  reads plaintext from HOST:PORT, encrypts it to the TLS client, and
 *         ends with close_notify when HOST:PORT closes (a download);
 *   up    decrypts from the TLS client and writes the plaintext to HOST:PORT,
 *         which it closes (FIN) after the client's close_notify; it answers
 *         with its own close_notify once HOST:PORT has closed too (an upload).
 *
 * No FTP and no libuv: one thread, non-blocking sockets, level-triggered
 * epoll (a side that would block waits for its event), one ring buffer of
 * BUF_KIB KiB plaintext (default 1024) and 512 KiB of ciphertext each way:
 * ftpsgate's own transfer buffer sizes, so that the comparison is about
 * code, not buffer sizes. OpenSSL reads and writes the TLS socket through a
 * 512 KiB BIO_f_buffer each way: one system call per buffer, not one or two
 * per 16 KiB record (measured here: a write per record costs about a
 * quarter more CPU on a download; OpenSSL's own read-ahead into a large
 * buffer memmove()s the rest of the buffer after every record, about a
 * fifth of an upload's CPU). The ring is filled
 * while the source has bytes, then drained while the sink takes them. Both
 * sockets have TCP_NODELAY, as ftpsgate's.
 *
 * At the end it prints one line and exits 0 (1 on any failure):
 *   "relay mode=down bytes=N seconds=S cpu=S utime=S stime=S version=V cipher=C
 *    reads=N writes=N waits=N"
 * bytes are the plaintext bytes relayed; cpu = utime + stime from
 * getrusage(RUSAGE_SELF), counted from just before accept() (the handshake is
 * included, start-up and loading the key are not); seconds are wall time
 * from accept() to the end; reads and writes are the read- and write-type
 * system calls over the same span (/proc/self/io), waits the epoll_wait
 * calls.
 *
 * Built by scripts/bench.py: cc -O2 -o relay relay.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TLS_BUF (512 * 1024) /* ciphertext each way, as ftpsgate's (proxy/xfer.c) */
#define END_WAIT_MS 10000       /* for the peer's close at the end */

/* A ring of plaintext: filled from one side, drained into the other. The
 * bytes of a pending SSL_write stay where they are (rd does not move until
 * the write succeeds), so a retry passes the same pointer and no less. */
struct ring {
    char *mem;
    size_t cap, rd, len;
};

static char *ring_data(struct ring *r, size_t *n)
{
    *n = r->len < r->cap - r->rd ? r->len : r->cap - r->rd;
    return r->mem + r->rd;
}

static char *ring_room(struct ring *r, size_t *n)
{
    size_t wr = (r->rd + r->len) % r->cap;
    size_t free = r->cap - r->len;

    *n = free < r->cap - wr ? free : r->cap - wr;
    return r->mem + wr;
}

static void ring_consume(struct ring *r, size_t n)
{
    r->rd = (r->rd + n) % r->cap;
    r->len -= n;
    if (r->len == 0)
        r->rd = 0; /* keeps writes of whole buffers contiguous */
}

/* A socket, what epoll last said it is ready for, and what we wait for. An
 * operation that would block clears its readiness bit; only epoll sets it
 * again. So a side that is full or empty is not tried again, a failing
 * system call each time, until epoll says it has changed, as an event loop
 * such as libuv does. */
struct sock {
    int fd;
    uint32_t ready;    /* EPOLLIN, EPOLLOUT: may be tried */
    uint32_t interest; /* what epoll_wait watches */
};

static int g_ep;
static unsigned long g_waits; /* epoll_wait calls, for the report */
static struct sock g_t = {.fd = -1}, g_p = {.fd = -1}; /* the TLS client, the plaintext peer */

static void die(const char *what)
{
    fprintf(stderr, "relay: %s: %s\n", what, errno ? strerror(errno) : "failed");
    ERR_print_errors_fp(stderr);
    exit(1);
}

static void die_ssl(const char *what, SSL *ssl, int rc)
{
    int err = SSL_get_error(ssl, rc);

    fprintf(stderr, "relay: %s: SSL error %d%s%s\n", what, err,
            err == SSL_ERROR_SYSCALL ? ", errno " : "",
            err == SSL_ERROR_SYSCALL ? strerror(errno) : "");
    ERR_print_errors_fp(stderr);
    exit(1);
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double tv(struct timeval t)
{
    return (double)t.tv_sec + (double)t.tv_usec / 1e6;
}

static void sock_add(struct sock *s, int fd)
{
    struct epoll_event ev = {.events = 0, .data.ptr = s};

    s->fd = fd;
    s->ready = EPOLLIN | EPOLLOUT;
    s->interest = 0;
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev) != 0)
        die("epoll_ctl");
}

static void watch(struct sock *s, uint32_t want)
{
    struct epoll_event ev = {.events = want, .data.ptr = s};

    if (s->interest == want)
        return;
    if (epoll_ctl(g_ep, EPOLL_CTL_MOD, s->fd, &ev) != 0)
        die("epoll_ctl");
    s->interest = want;
}

/* Waits until a watched socket is ready and marks it so. */
static void wait_events(int timeout_ms)
{
    struct epoll_event evs[2];
    int n;

    g_waits++;
    do
        n = epoll_wait(g_ep, evs, 2, timeout_ms);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        die("epoll_wait");
    if (n == 0) {
        errno = ETIMEDOUT;
        die("waiting for the peer");
    }
    for (int i = 0; i < n; i++) {
        struct sock *s = evs[i].data.ptr;

        s->ready |= evs[i].events & (EPOLLIN | EPOLLOUT);
        if (evs[i].events & (EPOLLERR | EPOLLHUP))
            s->ready |= EPOLLIN | EPOLLOUT; /* the next call reports it */
    }
}

static void nonblocking_nodelay(int fd)
{
    int one = 1;

    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
        die("TCP_NODELAY");
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0)
        die("O_NONBLOCK");
}

/* An SSL call that could not go on: clears and returns the readiness it
 * waits for. */
static uint32_t ssl_blocked(SSL *ssl, int rc, const char *what)
{
    uint32_t bit = 0;

    switch (SSL_get_error(ssl, rc)) {
    case SSL_ERROR_WANT_READ:
        bit = EPOLLIN;
        break;
    case SSL_ERROR_WANT_WRITE:
        bit = EPOLLOUT;
        break;
    default:
        die_ssl(what, ssl, rc);
    }
    g_t.ready &= ~bit;
    return bit;
}

/* A read() or write() that failed: EAGAIN clears the readiness. */
static void io_blocked(struct sock *s, uint32_t bit, const char *what)
{
    if (errno == EAGAIN)
        s->ready &= ~bit;
    else if (errno != EINTR)
        die(what);
}

static int clamp_int(size_t n)
{
    return n > INT_MAX ? INT_MAX : (int)n;
}

/* read- and write-type system calls of this process so far (/proc/self/io),
 * or 0 when the kernel does not say. */
static void io_calls(unsigned long long *rd, unsigned long long *wr)
{
    char line[128];
    FILE *f = fopen("/proc/self/io", "r");

    *rd = *wr = 0;
    while (f != NULL && fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "syscr: ", 7) == 0)
            *rd = strtoull(line + 7, NULL, 10);
        else if (strncmp(line, "syscw: ", 7) == 0)
            *wr = strtoull(line + 7, NULL, 10);
    }
    if (f != NULL)
        fclose(f);
}

static size_t tls_pending(SSL *ssl)
{
    return (size_t)BIO_wpending(SSL_get_wbio(ssl));
}

/* Writes out the ciphertext waiting in the write buffer; clears EPOLLOUT
 * when the socket is full. */
static void flush_tls(SSL *ssl)
{
    BIO *wb = SSL_get_wbio(ssl);

    if (BIO_flush(wb) == 1)
        return;
    if (!BIO_should_retry(wb))
        die("writing to the client");
    g_t.ready &= ~EPOLLOUT;
}

/* Download: plaintext from the peer, records to the client. Returns true when
 * the source has ended, every byte is out, close_notify is sent and the
 * client has closed; otherwise false, with the sockets watched for what the
 * relay waits for. */
static bool pump_down(SSL *ssl, struct ring *r, unsigned long long *moved)
{
    static bool src_eof, notified, fin;
    uint32_t tls_need = EPOLLOUT;
    size_t n;
    char *p;

    for (;;) {
        bool progress = false;

        /* Fill the ring while the source has bytes, then encrypt all of it. */
        while (!src_eof && r->len < r->cap && (g_p.ready & EPOLLIN)) {
            ssize_t got;

            p = ring_room(r, &n);
            got = read(g_p.fd, p, n);
            if (got > 0)
                r->len += (size_t)got;
            else if (got == 0)
                src_eof = true;
            else
                io_blocked(&g_p, EPOLLIN, "reading the source");
            progress |= got >= 0;
        }
        while (r->len > 0 && (g_t.ready & tls_need)) {
            int rc;

            p = ring_data(r, &n);
            rc = SSL_write(ssl, p, clamp_int(n));
            if (rc > 0) {
                ring_consume(r, (size_t)rc);
                *moved += (unsigned long long)rc;
                progress = true;
                tls_need = EPOLLOUT;
            } else {
                tls_need = ssl_blocked(ssl, rc, "SSL_write");
            }
        }
        /* The write buffer goes out when it is full (inside SSL_write) and
         * whenever the ring runs dry. */
        if (r->len == 0 && tls_pending(ssl) > 0 && (g_t.ready & EPOLLOUT))
            flush_tls(ssl);
        if (r->len == 0 && tls_pending(ssl) == 0 && src_eof && !notified &&
            (g_t.ready & tls_need)) {
            int rc = SSL_shutdown(ssl);

            if (rc >= 0) {
                notified = true; /* close_notify is in the buffer: flushed above */
                progress = true;
            } else {
                tls_need = ssl_blocked(ssl, rc, "SSL_shutdown");
            }
        }
        if (notified && tls_pending(ssl) == 0 && (g_t.ready & EPOLLIN)) {
            /* close_notify is out: end our side, then wait for the client's
             * close_notify and FIN, read raw as nothing more is relayed.
             * Closing with unread bytes would reset the connection. */
            char scrap[4096];
            ssize_t got;

            if (!fin)
                shutdown(g_t.fd, SHUT_WR);
            fin = true;
            got = read(g_t.fd, scrap, sizeof scrap);
            if (got == 0 || (got < 0 && errno == ECONNRESET))
                return true;
            if (got < 0)
                io_blocked(&g_t, EPOLLIN, "reading the client's close");
            progress |= got > 0;
        }
        if (!progress) {
            watch(&g_p, !src_eof && r->len < r->cap ? EPOLLIN : 0);
            if (notified && tls_pending(ssl) == 0)
                watch(&g_t, EPOLLIN);
            else
                watch(&g_t, r->len > 0 || tls_pending(ssl) > 0 || src_eof ? tls_need : 0);
            return false;
        }
    }
}

/* Upload: records from the client, plaintext to the peer. Returns true when
 * the client's close_notify has come, every byte has reached the sink and
 * the sink has closed. */
static bool pump_up(SSL *ssl, struct ring *r, unsigned long long *moved)
{
    static bool client_done, sink_shut;
    uint32_t tls_need = EPOLLIN;
    size_t n;
    char *p;

    for (;;) {
        bool progress = false;

        /* OpenSSL may hold decrypted records that no epoll event announces:
         * its readiness is cleared only when it asks for more. */
        while (!client_done && r->len < r->cap && (g_t.ready & tls_need)) {
            int rc;

            p = ring_room(r, &n);
            rc = SSL_read(ssl, p, clamp_int(n));
            if (rc > 0) {
                r->len += (size_t)rc;
                *moved += (unsigned long long)rc;
                progress = true;
                tls_need = EPOLLIN;
            } else if (SSL_get_error(ssl, rc) == SSL_ERROR_ZERO_RETURN) {
                client_done = true;
                progress = true;
            } else {
                tls_need = ssl_blocked(ssl, rc, "SSL_read");
            }
        }
        while (r->len > 0 && (g_p.ready & EPOLLOUT)) {
            ssize_t put;

            p = ring_data(r, &n);
            put = write(g_p.fd, p, n);
            if (put > 0) {
                ring_consume(r, (size_t)put);
                progress = true;
            } else {
                io_blocked(&g_p, EPOLLOUT, "writing to the sink");
            }
        }
        if (client_done && r->len == 0 && !sink_shut) {
            shutdown(g_p.fd, SHUT_WR);
            sink_shut = true;
            progress = true;
        }
        if (sink_shut && (g_p.ready & EPOLLIN)) {
            char scrap[256];
            ssize_t got = read(g_p.fd, scrap, sizeof scrap);

            if (got == 0)
                return true;
            if (got < 0)
                io_blocked(&g_p, EPOLLIN, "reading the sink's close");
            progress |= got > 0;
        }
        if (!progress) {
            watch(&g_t, !client_done && r->len < r->cap ? tls_need : 0);
            watch(&g_p, r->len > 0 ? EPOLLOUT : sink_shut ? EPOLLIN : 0);
            return false;
        }
    }
}

/* A BIO_f_buffer over a socket BIO of fd: OpenSSL reads ciphertext from, or
 * writes it to, a TLS_BUF buffer, which takes or sends it in one system
 * call per buffer. */
static BIO *buffered_socket(int fd, bool for_writing)
{
    BIO *sock = BIO_new_socket(fd, BIO_NOCLOSE), *buf = BIO_new(BIO_f_buffer());

    if (sock == NULL || buf == NULL ||
        (for_writing ? BIO_set_write_buffer_size(buf, TLS_BUF)
                     : BIO_set_read_buffer_size(buf, TLS_BUF)) != 1)
        die("BIO");
    return BIO_push(buf, sock);
}

static SSL_CTX *make_ctx(const char *cert, const char *key, const char *suite)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    if (ctx == NULL || SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1)
        die("TLS context");
    if (SSL_CTX_set_ciphersuites(ctx, suite) != 1)
        die("ciphersuite");
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1)
        die("certificate or key");
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_max_send_fragment(ctx, 16384);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    return ctx;
}

static int listen_any(int *port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 1) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) != 0)
        die("listen");
    *port = ntohs(sa.sin_port);
    return fd;
}

static int connect_to(const char *hostport)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    char host[64];
    const char *colon = strrchr(hostport, ':');
    char *end;
    long port;
    int fd;

    if (colon == NULL || (size_t)(colon - hostport) >= sizeof host)
        die("HOST:PORT");
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port < 1 || port > 65535 || inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        die("HOST:PORT (IPv4 address and port)");
    sa.sin_port = htons((uint16_t)port);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        die("connecting to the plaintext peer");
    return fd;
}

int main(int argc, char **argv)
{
    bool down;
    long buf_kib = 1024;
    int lfd, fd, port, rc;
    struct ring ring = {0};
    struct rusage ru0, ru1;
    unsigned long long moved = 0, rd0, wr0, rd1, wr1;
    double t0;
    SSL_CTX *ctx;
    SSL *ssl;
    BIO *rbuf, *wbuf;

    if ((argc != 6 && argc != 7) || (strcmp(argv[1], "down") != 0 && strcmp(argv[1], "up") != 0)) {
        fprintf(stderr, "usage: relay down|up CERT KEY CIPHERSUITE HOST:PORT [BUF_KIB]\n");
        return 2;
    }
    down = strcmp(argv[1], "down") == 0;
    if (argc == 7) {
        char *end;

        buf_kib = strtol(argv[6], &end, 10);
        if (*end != '\0' || buf_kib < 16 || buf_kib > 1024 * 1024) {
            fprintf(stderr, "relay: BUF_KIB must be 16..1048576\n");
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    ctx = make_ctx(argv[2], argv[3], argv[4]);
    ring.cap = (size_t)buf_kib * 1024;
    ring.mem = malloc(ring.cap);
    if (ring.mem == NULL)
        die("malloc");
    lfd = listen_any(&port);
    printf("listening %d\n", port);
    fflush(stdout);

    io_calls(&rd0, &wr0);
    getrusage(RUSAGE_SELF, &ru0);
    do
        fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0)
        die("accept");
    t0 = now();
    close(lfd);
    nonblocking_nodelay(fd);
    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep < 0)
        die("epoll_create1");
    sock_add(&g_t, fd);

    ssl = SSL_new(ctx);
    rbuf = buffered_socket(fd, false);
    wbuf = buffered_socket(fd, true);
    if (ssl == NULL)
        die("SSL_new");
    SSL_set_bio(ssl, rbuf, wbuf); /* owns both chains now */
    while ((rc = SSL_accept(ssl)) != 1) {
        watch(&g_t, ssl_blocked(ssl, rc, "handshake"));
        wait_events(END_WAIT_MS);
    }
    g_t.ready = EPOLLIN | EPOLLOUT;

    fd = connect_to(argv[5]);
    nonblocking_nodelay(fd);
    sock_add(&g_p, fd);
    for (;;) {
        if (down ? pump_down(ssl, &ring, &moved) : pump_up(ssl, &ring, &moved))
            break;
        wait_events(60 * 1000);
    }
    if (!down) {
        /* The client waits for our close_notify: the upload is stored. */
        watch(&g_p, 0);
        while ((rc = SSL_shutdown(ssl)) < 0) {
            watch(&g_t, ssl_blocked(ssl, rc, "SSL_shutdown"));
            wait_events(END_WAIT_MS);
        }
        for (flush_tls(ssl); tls_pending(ssl) > 0; flush_tls(ssl)) {
            watch(&g_t, EPOLLOUT);
            wait_events(END_WAIT_MS);
        }
    }
    getrusage(RUSAGE_SELF, &ru1);
    io_calls(&rd1, &wr1);
    printf("relay mode=%s bytes=%llu seconds=%.6f cpu=%.6f utime=%.6f stime=%.6f version=%s "
           "cipher=%s reads=%llu writes=%llu waits=%lu\n",
           argv[1], moved, now() - t0,
           tv(ru1.ru_utime) - tv(ru0.ru_utime) + tv(ru1.ru_stime) - tv(ru0.ru_stime),
           tv(ru1.ru_utime) - tv(ru0.ru_utime), tv(ru1.ru_stime) - tv(ru0.ru_stime),
           SSL_get_version(ssl), SSL_get_cipher_name(ssl), rd1 - rd0, wr1 - wr0, g_waits);
    SSL_free(ssl);
    close(g_t.fd);
    close(g_p.fd);
    SSL_CTX_free(ctx);
    free(ring.mem);
    return 0;
}
