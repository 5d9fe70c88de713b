/* ftpsload - the benchmark's FTPS control-connection client (scripts/bench).
 *
 * A full FTPS login is: connect, read 220, AUTH TLS, read 234, TLS handshake,
 * USER, PASS (230), and for the login-rate figure QUIT (221) and close. A C
 * client keeps the client's own CPU per login far below the servers' (Python's
 * ftplib spends about 2 ms of CPU per login, a large share of a 2-core box).
 *
 *   ftpsload login HOST PORT USER SECONDS PROCS
 *       PROCS processes each do full logins back to back until SECONDS have
 *       passed. Prints one line:
 *       "logins=N failures=N elapsed=S client_cpu=S"
 *   ftpsload plainlogin HOST PORT USER SECONDS PROCS
 *       The same without AUTH TLS (the plaintext backend's own login rate,
 *       the ceiling for logins through the proxy).
 *   ftpsload hold HOST PORT USER N PROCS
 *       Opens N logged-in TLS sessions (spread over PROCS processes), prints
 *       "ready N failures=F" and keeps them idle until standard input ends
 *       (EOF), then sends QUIT on each, closes them and exits.
 *
 *   ftpsload holdpasv HOST PORT USER N PROCS
 *       The same, and each session also sends PBSZ 0, PROT P and PASV, and
 *       counts only when it got 227: N passive transfers waiting at once.
 *       Prints "ready N failures=F ports=K" (K: distinct passive ports).
 *
 * The certificate is not verified (loopback benchmark). Built by
 * scripts/bench.py with: cc -O2 -o ftpsload ftpsload.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *g_host, *g_user;
static int g_port;
static SSL_CTX *g_ctx;
static int g_plain; /* plainlogin: no AUTH TLS */
static int g_pasv;  /* holdpasv: PBSZ, PROT P and PASV after the login */
static int g_last_port; /* the port of the last 227 */



typedef struct { int fd; SSL *ssl; char buf[1024]; size_t len; } conn_t;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Reads raw bytes (plaintext or TLS) into c->buf. */
static int fill(conn_t *c) {
    if (c->len >= sizeof c->buf - 1) return -1;
    int n;
    if (c->ssl) {
        n = SSL_read(c->ssl, c->buf + c->len, (int)(sizeof c->buf - 1 - c->len));
        if (n <= 0) return -1;
    } else {
        do n = (int)read(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len);
        while (n < 0 && errno == EINTR);
        if (n <= 0) return -1;
    }
    c->len += (size_t)n;
    return 0;
}

/* Reads one complete reply (multi-line aware); returns its code or -1. */
static int reply(conn_t *c) {
    int code = -1, multi = 0;
    for (;;) {
        char *nl;
        while ((nl = memchr(c->buf, '\n', c->len)) == NULL)
            if (fill(c) < 0) return -1;
        size_t ll = (size_t)(nl - c->buf) + 1;
        if (ll >= 4 && c->buf[0] >= '1' && c->buf[0] <= '5') {
            int lc = (c->buf[0] - '0') * 100 + (c->buf[1] - '0') * 10 + (c->buf[2] - '0');
            if (code < 0) { code = lc; multi = c->buf[3] == '-'; }
            else if (lc == code && c->buf[3] == ' ') multi = 0;
        }
        memmove(c->buf, c->buf + ll, c->len - ll);
        c->len -= ll;
        if (code >= 0 && !multi) return code;
    }
}

static int send_cmd(conn_t *c, const char *line) {
    char out[512];
    int n = snprintf(out, sizeof out, "%s\r\n", line);
    if (c->ssl) return SSL_write(c->ssl, out, n) == n ? 0 : -1;
    return write(c->fd, out, (size_t)n) == n ? 0 : -1;
}

static int cmd(conn_t *c, const char *line) {
    return send_cmd(c, line) < 0 ? -1 : reply(c);
}

/* PBSZ 0, PROT P, PASV: 0 with g_last_port set when the reply is 227. */
static int pasv(conn_t *c) {
    if (cmd(c, "PBSZ 0") != 200 || cmd(c, "PROT P") != 200) return -1;
    if (send_cmd(c, "PASV") < 0) return -1;
    for (;;) {  /* the 227 line stays in c->buf until reply() consumes it */
        char *nl = memchr(c->buf, '\n', c->len);
        if (nl != NULL) break;
        if (fill(c) < 0) return -1;
    }
    int a, b, d, e, p1, p2;
    c->buf[c->len < sizeof c->buf ? c->len : sizeof c->buf - 1] = '\0';
    char *open = strchr(c->buf, '(');
    int ok = strncmp(c->buf, "227", 3) == 0 && open != NULL &&
             sscanf(open, "(%d,%d,%d,%d,%d,%d)", &a, &b, &d, &e, &p1, &p2) == 6;
    if (reply(c) != 227 || !ok) return -1;
    g_last_port = p1 * 256 + p2;
    return 0;
}

static void conn_close(conn_t *c) {
    if (c->ssl) { SSL_free(c->ssl); c->ssl = NULL; }
    if (c->fd >= 0) { close(c->fd); c->fd = -1; }
}

/* connect, 220, AUTH TLS, handshake, USER, PASS: 0 when logged in. */
static int login(conn_t *c) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
    inet_pton(AF_INET, g_host, &sa.sin_addr);
    c->len = 0;
    c->ssl = NULL;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0) return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) goto fail;
    if (reply(c) != 220) goto fail;
    if (!g_plain) {
        if (cmd(c, "AUTH TLS") != 234) goto fail;
        if (c->len) goto fail; /* nothing may follow 234 in plaintext */
        c->ssl = SSL_new(g_ctx);
        SSL_set_fd(c->ssl, c->fd);
        if (SSL_connect(c->ssl) != 1) goto fail;
    }
    char line[300];
    snprintf(line, sizeof line, "USER %s", g_user);
    int r = cmd(c, line);
    if (r == 331) r = cmd(c, "PASS bench@example.org");
    if (r != 230) goto fail;
    return 0;
fail:
    conn_close(c);
    return -1;
}

static void quit(conn_t *c) {
    if (c->fd >= 0) {
        cmd(c, "QUIT");
        if (c->ssl) SSL_shutdown(c->ssl);
    }
    conn_close(c);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int mode_login(double seconds, int procs) {
    int pfd[2];
    if (pipe(pfd) < 0) return 2;
    double t0 = now();
    for (int p = 0; p < procs; p++) {
        pid_t pid = fork();
        if (pid < 0) return 2;
        if (pid == 0) {
            close(pfd[0]);
            long ok = 0, bad = 0;
            while (now() - t0 < seconds) {
                conn_t c;
                if (login(&c) == 0) { quit(&c); ok++; } else bad++;
            }
            dprintf(pfd[1], "%ld %ld\n", ok, bad);
            _exit(0);
        }
    }
    close(pfd[1]);
    long ok = 0, bad = 0, a, b;
    FILE *f = fdopen(pfd[0], "r");
    while (fscanf(f, "%ld %ld", &a, &b) == 2) { ok += a; bad += b; }
    while (wait(NULL) > 0) {}
    double el = now() - t0;
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    printf("logins=%ld failures=%ld elapsed=%.6f client_cpu=%.6f\n", ok, bad, el, cpu);
    return 0;
}

static int mode_hold(long n, int procs) {
    int ready[2], hold[2];
    if (pipe(ready) < 0 || pipe(hold) < 0) return 2;
    for (int p = 0; p < procs; p++) {
        long share = n / procs + (p < n % procs);
        pid_t pid = fork();
        if (pid < 0) return 2;
        if (pid == 0) {
            close(ready[0]);
            close(hold[1]);
            conn_t *cs = calloc((size_t)share + 1, sizeof *cs);
            static unsigned char seen[65536];
            long ok = 0, bad = 0;
            for (long i = 0; i < share; i++) {
                if (login(&cs[ok]) == 0 && (!g_pasv || pasv(&cs[ok]) == 0)) {
                    seen[g_last_port] = 1;
                    ok++;
                } else {
                    if (cs[ok].fd >= 0) conn_close(&cs[ok]);
                    if (++bad > 20 && bad > share / 10) break;
                }
            }
            char line[512];
            int len = snprintf(line, sizeof line, "%ld %ld", ok, bad);
            for (int port = 1; port < 65536 && len < (int)sizeof line - 8; port++)
                if (seen[port]) len += snprintf(line + len, sizeof line - (size_t)len, " %d", port);
            dprintf(ready[1], "%s\n", line);
            close(ready[1]);
            char ch;
            while (read(hold[0], &ch, 1) > 0) {}
            for (long i = 0; i < ok; i++) quit(&cs[i]);
            _exit(0);
        }
    }
    close(ready[1]);
    close(hold[0]);
    long ok = 0, bad = 0, ports = 0;
    static unsigned char seen[65536];
    char rl[1024];
    FILE *f = fdopen(ready[0], "r");
    while (fgets(rl, sizeof rl, f)) {
        char *p = rl, *end;
        ok += strtol(p, &end, 10);
        p = end;
        bad += strtol(p, &end, 10);
        p = end;
        for (long v = strtol(p, &end, 10); end != p; p = end, v = strtol(p, &end, 10))
            if (v > 0 && v < 65536 && !seen[v]) { seen[v] = 1; ports++; }
    }
    if (g_pasv) printf("ready %ld failures=%ld ports=%ld\n", ok, bad, ports);
    else printf("ready %ld failures=%ld\n", ok, bad);
    fflush(stdout);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {}
    close(hold[1]);
    while (wait(NULL) > 0) {}
    printf("done\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: ftpsload login|plainlogin|hold HOST PORT USER SECONDS|N PROCS\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    g_host = argv[2];
    g_port = atoi(argv[3]);
    g_user = argv[4];
    int procs = atoi(argv[6]);
    if (procs < 1) procs = 1;
    g_ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(g_ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_mode(g_ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(g_ctx, SSL_SESS_CACHE_OFF);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (strcmp(argv[1], "login") == 0) return mode_login(atof(argv[5]), procs);
    if (strcmp(argv[1], "plainlogin") == 0) {
        g_plain = 1;
        return mode_login(atof(argv[5]), procs);
    }
    if (strcmp(argv[1], "hold") == 0) return mode_hold(atol(argv[5]), procs);
    if (strcmp(argv[1], "holdpasv") == 0) {
        g_pasv = 1;
        return mode_hold(atol(argv[5]), procs);
    }
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
}
