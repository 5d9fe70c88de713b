/* cfg.h - the configuration: INI text -> an immutable struct cfg.
 *
 * cfg_parse() is pure (no files, no logging) and reports every problem it
 * finds in one pass through the caller's report function, each as
 * "FILE:LINE: KEY: what is wrong and what was expected". cfg_load() reads the
 * file and also checks that every file the configuration names exists and is
 * readable. Once returned, a struct cfg is never modified. */
#ifndef CFG_H
#define CFG_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

enum cfg_log_level { CFG_LOG_ERROR = 0, CFG_LOG_WARN, CFG_LOG_INFO, CFG_LOG_DEBUG };
enum cfg_log_format { CFG_LOG_TEXT = 0, CFG_LOG_JSON };
enum cfg_proxy_protocol { CFG_PP_NO = 0, CFG_PP_V1, CFG_PP_V2, CFG_PP_ANY };

#define CFG_ADDR_TEXT_MAX 56 /* "[" v6 "]:" port, NUL */

struct cfg_addr {
    struct sockaddr_storage sa; /* AF_INET or AF_INET6, port in network order */
    socklen_t salen;
    char text[CFG_ADDR_TEXT_MAX]; /* normalised: "1.2.3.4:21" or "[::1]:21" */
    unsigned line;                /* where it was written (0: default) */
};

struct cfg_cidr {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    unsigned prefix; /* 0..32 or 0..128 */
};

struct cfg_backend {
    char *name;        /* after "backend:" */
    char **hostnames;  /* lower-case, no trailing dot; "*.x.y" wildcards kept as written */
    size_t n_hostnames;
    struct cfg_addr address;
    char *certificate; /* NULL when the site has no certificate of its own */
    char *private_key; /* set exactly when certificate is */
    unsigned max_sessions; /* 0: no cap */
    unsigned line;         /* line of the [backend:NAME] header */
    unsigned certificate_line; /* line of its certificate key, 0 when none */
};

struct cfg {
    char *path; /* the file name used in messages */

    struct cfg_addr *listen; /* explicit FTPS (AUTH TLS) */
    size_t n_listen;
    struct cfg_addr *listen_implicit;
    size_t n_listen_implicit;

    char *certificate; /* central certificate and key (required) */
    char *private_key;
    char *ca_file; /* NULL: system store only */

    uint16_t passive_min, passive_max; /* inclusive; default 50000-50999 */
    bool has_passive_address;
    uint8_t passive_address[4]; /* IPv4 for 227 replies */

    int default_backend; /* index into backends, -1 when unset */
    char host_separator; /* default '|' */
    bool route_by_sni;           /* default yes */
    bool require_tls;            /* default yes */
    bool require_protected_data; /* default yes */
    bool require_session_reuse;  /* default yes */
    bool allow_active;           /* default no */
    int tls_min_version;         /* 12 or 13 (TLS 1.2 / 1.3); default 12 */
    char *tls_ciphers;           /* NULL: OpenSSL's default */
    char *banner;                /* default "FTP proxy ready" */

    unsigned login_timeout;   /* seconds, default 30 */
    unsigned idle_timeout;    /* 600 */
    unsigned data_timeout;    /* 60 */
    unsigned connect_timeout; /* 5 */
    unsigned shutdown_grace;  /* 30 (0 allowed) */
    unsigned max_sessions;        /* 4096 */
    unsigned max_sessions_per_ip; /* 64 */

    char *user; /* NULL: do not drop privileges */
    enum cfg_proxy_protocol proxy_protocol;
    struct cfg_cidr *proxy_protocol_from;
    size_t n_proxy_protocol_from;

    bool has_metrics_listen;
    struct cfg_addr metrics_listen;
    enum cfg_log_level log_level;   /* info */
    enum cfg_log_format log_format; /* text */
    unsigned workers;               /* 1..64, default 1 */

    struct cfg_backend *backends;
    size_t n_backends;
};

/* Called once per problem with one line of text, no newline. */
typedef void cfg_report_fn(void *arg, const char *msg);

/* Parses INI text of len bytes (need not be NUL-terminated); name is the file
 * name used in messages. Opens no file. Returns 0 with *out set (free with
 * cfg_free), or PX_EINVAL after reporting every problem (*out NULL), or
 * PX_ENOMEM. */
int cfg_parse(const char *text, size_t len, const char *name, cfg_report_fn *report, void *arg,
              struct cfg **out);

/* Reads path and parses it, then checks that every certificate, key and
 * ca_file named is a readable regular file, reporting each that is not.
 * Returns 0 with *out, PX_ENOENT when path cannot be read (reported as
 * "PATH:0: cannot read the configuration: ..."), PX_EINVAL or PX_ENOMEM. */
int cfg_load(const char *path, cfg_report_fn *report, void *arg, struct cfg **out);

void cfg_free(struct cfg *c);

/* Index of the backend named name, or -1. */
int cfg_backend_index(const struct cfg *c, const char *name);

const char *cfg_log_level_name(enum cfg_log_level l);
const char *cfg_proxy_protocol_name(enum cfg_proxy_protocol p);

/* True when addr (family AF_INET/AF_INET6, 4 or 16 bytes) is inside one of
 * the configured proxy_protocol_from ranges. IPv4-mapped IPv6 addresses are
 * compared as IPv4. */
bool cfg_cidr_contains(const struct cfg_cidr *list, size_t n, int family, const uint8_t *addr);

#endif
