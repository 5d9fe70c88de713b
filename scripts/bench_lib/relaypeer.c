/* relaypeer - the other ends of the bare relay (relay.c) for scripts/bench.
 *
 *   relaypeer source FILE          plaintext: listens on an ephemeral port of
 *                                  127.0.0.1, prints "listening PORT", and
 *                                  sendfile()s FILE to one connection (as the
 *                                  backend vsftpd serves a download), then closes
 *   relaypeer sink FILE            plaintext: listens likewise, reads one
 *                                  connection to its end and checks that the
 *                                  bytes are FILE's (an upload's destination)
 *   relaypeer get HOST PORT FILE   TLS client: reads until close_notify and
 *                                  checks that the bytes are FILE's (curl's
 *                                  part in a download)
 *   relaypeer put HOST PORT FILE   TLS client: sends FILE in 64 KiB writes
 *                                  (curl's upload buffer), then close_notify,
 *                                  and waits for the server's close_notify
 *
 * Each mode prints one line at the end and exits 0 when every byte arrived
 * and matched, 1 otherwise:
 *   "peer mode=get bytes=N seconds=S ok=1 version=V cipher=C"
 * seconds are the wall time from connect (or accept) to the end. The TLS
 * client does not verify the certificate (loopback, as curl -k in the
 * bench), offers OpenSSL's default TLS 1.3 suites and groups, as curl does,
 * and uses TCP_NODELAY, as curl does.
 *
 * Built by scripts/bench.py: cc -O2 -o relaypeer relaypeer.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define GET_CHUNK (16 * 1024)   /* curl's read buffer (CURL_MAX_WRITE_SIZE) */
#define PUT_CHUNK (64 * 1024)   /* curl's upload buffer */
#define SINK_CHUNK (256 * 1024)

static const char *g_mode;

static void die(const char *what)
{
    fprintf(stderr, "relaypeer %s: %s: %s\n", g_mode, what, errno ? strerror(errno) : "failed");
    ERR_print_errors_fp(stderr);
    exit(1);
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The whole file, read-only, for sending or comparing. */
static const unsigned char *map_file(const char *path, size_t *size, int *fd_out)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    void *m;

    if (fd < 0 || fstat(fd, &st) != 0)
        die(path);
    *size = (size_t)st.st_size;
    *fd_out = fd;
    if (*size == 0)
        return NULL;
    m = mmap(NULL, *size, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        die("mmap");
    madvise(m, *size, MADV_SEQUENTIAL);
    return m;
}

static int accept_one(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), fd;

    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, 1) != 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &sl) != 0)
        die("listen");
    printf("listening %d\n", ntohs(sa.sin_port));
    fflush(stdout);
    do
        fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    while (fd < 0 && errno == EINTR);
    if (fd < 0)
        die("accept");
    close(lfd);
    return fd;
}

static int connect_to(const char *host, const char *port_text)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    char *end;
    long port = strtol(port_text, &end, 10);
    int one = 1, fd;

    if (*end != '\0' || port < 1 || port > 65535 || inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        die("HOST PORT (IPv4 address and port)");
    sa.sin_port = htons((uint16_t)port);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        die("connect");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static SSL *tls_connect(int fd)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl;

    if (ctx == NULL)
        die("TLS context");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    ssl = SSL_new(ctx);
    if (ssl == NULL || SSL_set_fd(ssl, fd) != 1 || SSL_connect(ssl) != 1)
        die("TLS handshake");
    return ssl;
}

static int report(unsigned long long bytes, double t0, bool ok, SSL *ssl)
{
    printf("peer mode=%s bytes=%llu seconds=%.6f ok=%d version=%s cipher=%s\n", g_mode, bytes,
           now() - t0, ok ? 1 : 0, ssl ? SSL_get_version(ssl) : "none",
           ssl ? SSL_get_cipher_name(ssl) : "none");
    return ok ? 0 : 1;
}

static int mode_source(const char *path)
{
    size_t size;
    int ffd;
    off_t off = 0;
    int fd;
    double t0;

    map_file(path, &size, &ffd);
    fd = accept_one();
    t0 = now();
    while ((size_t)off < size) {
        ssize_t n = sendfile(fd, ffd, &off, size - (size_t)off);

        if (n < 0 && errno != EINTR)
            die("sendfile");
        if (n == 0)
            break;
    }
    close(fd);
    return report((unsigned long long)off, t0, (size_t)off == size, NULL);
}

static int mode_sink(const char *path)
{
    size_t size, got = 0;
    int ffd;
    const unsigned char *want = map_file(path, &size, &ffd);
    char *buf = malloc(SINK_CHUNK);
    bool same = true;
    int fd;
    double t0;

    if (buf == NULL)
        die("malloc");
    fd = accept_one();
    t0 = now();
    for (;;) {
        ssize_t n = read(fd, buf, SINK_CHUNK);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            die("read");
        if (n == 0)
            break;
        if (got + (size_t)n > size || memcmp(want + got, buf, (size_t)n) != 0)
            same = false;
        got += (size_t)n;
    }
    close(fd);
    return report(got, t0, same && got == size, NULL);
}

static int mode_get(const char *host, const char *port, const char *path)
{
    size_t size, got = 0;
    int ffd;
    const unsigned char *want = map_file(path, &size, &ffd);
    char buf[GET_CHUNK];
    bool same = true, clean = false;
    double t0 = now();
    int fd = connect_to(host, port);
    SSL *ssl = tls_connect(fd);

    for (;;) {
        int n = SSL_read(ssl, buf, sizeof buf);

        if (n <= 0) {
            clean = SSL_get_error(ssl, n) == SSL_ERROR_ZERO_RETURN;
            if (!clean)
                ERR_print_errors_fp(stderr);
            break;
        }
        if (got + (size_t)n > size || memcmp(want + got, buf, (size_t)n) != 0)
            same = false;
        got += (size_t)n;
    }
    if (clean)
        SSL_shutdown(ssl);
    close(fd);
    if (!clean)
        fprintf(stderr, "relaypeer get: the stream ended without close_notify\n");
    return report(got, t0, same && clean && got == size, ssl);
}

static int mode_put(const char *host, const char *port, const char *path)
{
    size_t size, sent = 0;
    int ffd;
    const unsigned char *data = map_file(path, &size, &ffd);
    char scrap[256];
    bool closed;
    double t0 = now();
    int fd = connect_to(host, port);
    SSL *ssl = tls_connect(fd);
    int n;

    while (sent < size) {
        size_t chunk = size - sent < PUT_CHUNK ? size - sent : PUT_CHUNK;

        n = SSL_write(ssl, data + sent, (int)chunk);
        if (n <= 0)
            die("SSL_write");
        sent += (size_t)n;
    }
    if (SSL_shutdown(ssl) < 0)
        die("SSL_shutdown");
    /* The relay answers with close_notify once the sink has everything. */
    n = SSL_read(ssl, scrap, sizeof scrap);
    closed = n <= 0 && SSL_get_error(ssl, n) == SSL_ERROR_ZERO_RETURN;
    if (!closed)
        fprintf(stderr, "relaypeer put: no close_notify from the server at the end\n");
    close(fd);
    return report(sent, t0, closed && sent == size, ssl);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    g_mode = argc > 1 ? argv[1] : "?";
    if (argc == 3 && strcmp(argv[1], "source") == 0)
        return mode_source(argv[2]);
    if (argc == 3 && strcmp(argv[1], "sink") == 0)
        return mode_sink(argv[2]);
    if (argc == 5 && strcmp(argv[1], "get") == 0)
        return mode_get(argv[2], argv[3], argv[4]);
    if (argc == 5 && strcmp(argv[1], "put") == 0)
        return mode_put(argv[2], argv[3], argv[4]);
    fprintf(stderr, "usage: relaypeer source|sink FILE | relaypeer get|put HOST PORT FILE\n");
    return 2;
}
