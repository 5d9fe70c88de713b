/* cfg.h - the configuration: INI text -> an immutable struct cfg.
 *
 * Pure: no files, no logging. cfg_parse() reports every problem it finds in
 * one pass through the caller's report function, each as "FILE:LINE: KEY:
 * what is wrong and what was expected". Reading the file, and checking the
 * files it names, is loader.h's. Once returned, a struct cfg is never
 * modified. */
#ifndef CFG_H
#define CFG_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "hmap.h"

enum cfg_log_level { CFG_LOG_ERROR = 0, CFG_LOG_WARN, CFG_LOG_INFO, CFG_LOG_DEBUG };
enum cfg_log_format { CFG_LOG_TEXT = 0, CFG_LOG_JSON };
enum cfg_proxy_protocol { CFG_PP_NO = 0, CFG_PP_V1, CFG_PP_V2, CFG_PP_ANY };

#define CFG_ADDRESS_MAX 64 /* addresses per backend */
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

/* certificate and private_key: lists of the same length, pairwise (an ECDSA
 * and an RSA certificate for the same names, say), in order of preference. */
struct cfg_certs {
    char **cert;
    size_t n_cert;
    char **key;
    size_t n_key;
};

struct cfg_backend {
    char *name;        /* after "backend:" */
    char **hostnames;  /* lower-case, no trailing dot; "*.x.y" wildcards kept as written */
    size_t n_hostnames;
    struct cfg_addr *address; /* 1..CFG_ADDRESS_MAX servers sharing the same files, no
                                 duplicates, in the order written */
    size_t n_address;
    unsigned health_check;    /* seconds between checks of each address (10; 0: none) */
    unsigned preconnect;      /* greeted connections kept ready per address (0) */
    struct cfg_certs certs; /* n_cert 0: the site has no certificate of its own */
    unsigned max_sessions; /* 0: no cap */
    unsigned line;         /* line of the [backend:NAME] header */
    const char *file;      /* the file it is in (one of cfg->files) */
    unsigned certificate_line; /* line of its certificate key, 0 when none */
};

struct cfg {
    char *path; /* the file name used in messages */

    struct cfg_addr *listen; /* explicit FTPS (AUTH TLS) */
    size_t n_listen;
    struct cfg_addr *listen_implicit;
    size_t n_listen_implicit;

    struct cfg_certs certs; /* the central certificates (at least one) */
    unsigned certificate_line; /* line of [proxy]'s certificate key in path */
    char *ca_file; /* NULL: system store only */

    uint16_t passive_min, passive_max; /* inclusive; default 61000-61999 */
    bool has_passive_address;
    uint8_t passive_address[4]; /* IPv4 for 227 replies */

    int default_backend; /* index into backends, -1 when unset */
    char host_separator; /* default '|' */
    bool route_by_sni;           /* default yes */
    bool require_tls;            /* default yes */
    bool require_protected_data; /* default yes */
    bool require_session_reuse;  /* default yes */
    bool shared_passive_ports;   /* default no: a passive port serves many sessions at
                                    once, told apart by the TLS session they resume */
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
    char **includes;                /* include: file name patterns (glob), as
                                       written or joined to the main file's folder */
    size_t n_includes;
    char **files;                   /* every file read, main first: messages point here */
    size_t n_files;

    /* Cross-protocol and abuse defences (DESIGN.md). */
    bool strict_sni;                /* an SNI name nobody serves fails the handshake */
    unsigned max_passive_per_ip;    /* passive ports reserved at once per client (32) */
    unsigned max_transfers_per_ip;  /* running transfers per client (32) */
    uint64_t transfer_memory;       /* bytes of transfer buffers, whole process (1G) */
    unsigned ban_after;             /* failed logins before a ban (10; 0: never) */
    unsigned ban_window;            /* seconds they are counted in (600) */
    unsigned ban_time;              /* seconds a ban lasts (900) */
    struct cfg_cidr *ban_exempt;    /* never banned */
    size_t n_ban_exempt;

    struct cfg_backend *backends;
    size_t n_backends;
    struct hmap names;   /* backend name -> index */
    struct hmap hostmap; /* host name as configured (lower-case, "*.x" for
                            wildcards) -> backend << 32 | index in its hostnames */
    struct hmap endpoints;     /* every backend's, listener's and metrics_listen's
                                  address: 16-byte IP (IPv4 mapped) + port */
    uint8_t (*endpoint_keys)[18]; /* owned: the keys of endpoints */
};

/* Called once per problem with one line of text, no newline. */
typedef void cfg_report_fn(void *arg, const char *msg);

/* Parses INI text of len bytes (need not be NUL-terminated); name is the file
 * name used in messages. Opens no file. Returns 0 with *out set (free with
 * cfg_free), or PX_EINVAL after reporting every problem (*out NULL), or
 * PX_ENOMEM. */
int cfg_parse(const char *text, size_t len, const char *name, cfg_report_fn *report, void *arg,
              struct cfg **out);

/* Asked about the files the configuration needs to load at all (ca_file;
 * certificates and keys are certcheck's, by class) as the parser meets them: NULL when it can be read, or
 * why not (a string that lives until the next call), which is reported as
 * "FILE:LINE: KEY: [site NAME: ]cannot read PATH: WHY". */
typedef const char *cfg_file_fn(void *arg, const char *path);

/* Parsing several files into one configuration: the main file, then each
 * included one (holding [backend:NAME] sections only). dir: the folder
 * relative file names in that text resolve against (NULL: as written).
 * Every problem is reported as the file's own FILE:LINE. cfg_peek() shows
 * what is parsed so far (the main file's include patterns). cfg_end() frees
 * the parser and returns 0 with *out, PX_EINVAL or PX_ENOMEM. */
struct cfg_parser;
struct cfg_parser *cfg_begin(cfg_report_fn *report, void *arg, cfg_file_fn *check,
                             void *check_arg);
void cfg_feed(struct cfg_parser *p, const char *text, size_t len, const char *name,
              const char *dir, bool main);
const struct cfg *cfg_peek(const struct cfg_parser *p);
/* A problem found by the caller (an included file that cannot be read):
 * reported, and counted as an error. */
void cfg_report_at(struct cfg_parser *p, const char *msg);
int cfg_end(struct cfg_parser *p, struct cfg **out);

/* cfg_parse(), asking check about every file named. */
int cfg_parse_checked(const char *text, size_t len, const char *name, cfg_report_fn *report,
                      void *arg, cfg_file_fn *check, void *check_arg, struct cfg **out);

void cfg_free(struct cfg *c);

/* (Re)builds hostmap from the backends' hostnames (cfg_parse() does; tests
 * that build a struct cfg by hand call it). 0 or PX_ENOMEM. */
int cfg_index_hosts(struct cfg *c);

/* Whether sa (an IP and port) is one of the configuration's own endpoints:
 * a backend's address, or a listener's (a wildcard listener, 0.0.0.0 or ::,
 * counts for every IP with its port). A backend's passive reply must never
 * aim the proxy at one of them. */
bool cfg_is_endpoint(const struct cfg *c, const struct sockaddr *sa);

/* Index of the backend named name, or -1. */
int cfg_backend_index(const struct cfg *c, const char *name);

const char *cfg_log_level_name(enum cfg_log_level l);
const char *cfg_proxy_protocol_name(enum cfg_proxy_protocol p);

/* True when addr (family AF_INET/AF_INET6, 4 or 16 bytes) is inside one of
 * the configured proxy_protocol_from ranges. IPv4-mapped IPv6 addresses are
 * compared as IPv4. */
bool cfg_cidr_contains(const struct cfg_cidr *list, size_t n, int family, const uint8_t *addr);
/* The same for a socket address (AF_INET or AF_INET6). */
bool cfg_cidr_contains_sa(const struct cfg_cidr *list, size_t n, const struct sockaddr *sa);

#endif
