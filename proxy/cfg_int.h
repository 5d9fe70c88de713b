/* cfg_int.h - what the files of the configuration module share: the value
 * parsers and word lists of cfg_value.c, used by the INI reader in cfg.c.
 * Private to cfg*.c. Pure, like the rest of the module. */
#ifndef CFG_INT_H
#define CFG_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "hmap.h"

#define CFG_HOST_NAME_MAX 253
#define CFG_ADDR_EXPECTED "IPv4:port or [IPv6]:port with port 1..65535"

struct cfg_word {
    const char *text;
    int value;
};

/* The words a key takes, each list ending with a NULL text. */
extern const struct cfg_word cfg_bool_words[], cfg_tls_words[], cfg_pp_words[],
    cfg_level_words[], cfg_format_words[];

/* Numbers, digit by digit. 0, or PX_EINVAL (not digits) or PX_ERANGE. */
int cfg_parse_uint(const char *s, size_t n, unsigned min, unsigned max, unsigned *out);
/* Copies n bytes into dst[cap] as a string; false when they do not fit. */
bool cfg_copy_text(char *dst, size_t cap, const char *s, size_t n);
/* Drops blanks (spaces, tabs) at both ends of s[0..*n). */
void cfg_trim(const char **s, size_t *n);
/* "IPv4:port" or "[IPv6]:port". 0 or PX_EINVAL. */
int cfg_parse_addr(const char *s, size_t n, struct cfg_addr *out);
/* "ADDRESS" or "ADDRESS/PREFIX" with no bit set past the prefix; an
 * IPv4-mapped IPv6 range is kept as the IPv4 range it covers. 0 or PX_EINVAL. */
int cfg_parse_cidr(const char *s, size_t n, struct cfg_cidr *out);
/* A size: digits, then K, M or G (binary; none: bytes), from min to max
 * MiB. 0 with *out in bytes, or PX_EINVAL / PX_ERANGE. */
int cfg_parse_size(const char *s, size_t n, unsigned min_mib, unsigned max_mib, uint64_t *out);
/* "LOW-HIGH", blanks allowed around the dash, min <= LOW <= HIGH <= max. */
bool cfg_parse_range(const char *v, unsigned min, unsigned max, unsigned *lo, unsigned *hi);
/* A DNS name into out[CFG_HOST_NAME_MAX + 1], lower-cased, without a
 * trailing dot; "*." only as the whole first label. */
bool cfg_normalize_host(const char *s, size_t n, char *out);
/* "a, b or c" from a word list, for messages. */
const char *cfg_words_text(const struct cfg_word *w, char *buf, size_t cap);
/* A character the USER command can split host and user on. */
bool cfg_is_separator(char ch);


/* ---- the parser, shared by cfg.c (the INI walk) and cfg_store.c (storing
 * each key's value) ---- */

enum key_type {
    KT_BOOL = 0,   /* bool */
    KT_WORD,       /* int or enum: one of words[] */
    KT_UINT,       /* unsigned in min..max */
    KT_STRING,     /* char *, owned */
    KT_PATH,       /* char *, owned: a file, checked through cfg_file_fn */
    KT_ADDR,       /* struct cfg_addr */
    KT_IPV4,       /* uint8_t[4] */
    KT_PORT_RANGE, /* uint16_t low at off, high at aux, both in min..max */
    KT_SEPARATOR,  /* char */
    KT_BACKEND,    /* a backend name, resolved once every backend is known */
    KT_ADDR_LIST,  /* struct cfg_addr *, count (size_t) at aux */
    KT_CIDR_LIST,  /* struct cfg_cidr *, count at aux */
    KT_HOSTS,      /* char **, count at aux */
    KT_SIZE,       /* uint64_t bytes: NUMBER[K|M|G], min/max in MiB */
    KT_PATH_LIST,  /* char ** of files, count at aux (certificates: certcheck reads them) */
    KT_GLOB_LIST,  /* char ** of file name patterns, count at aux (include) */
};

struct key {
    const char *name;
    enum key_type type;
    size_t off; /* the field in struct cfg or struct cfg_backend */
    size_t aux; /* see enum key_type */
    unsigned min, max;
    const struct cfg_word *words; /* KT_BOOL, KT_WORD: ends with a NULL text */
};

/* KT_WORD stores through an int *. */
_Static_assert(sizeof(enum cfg_log_level) == sizeof(int), "enum size");
_Static_assert(sizeof(enum cfg_log_format) == sizeof(int), "enum size");
_Static_assert(sizeof(enum cfg_proxy_protocol) == sizeof(int), "enum size");

#define CFG_PROXY_KEYS_MAX 64   /* room in struct parser; cfg.c checks its tables fit */
#define CFG_BACKEND_KEYS_MAX 16

enum section { SEC_NONE = 0, SEC_PROXY, SEC_BACKEND, SEC_SKIP /* unknown or malformed */ };

struct host_ref {
    const char *name; /* borrowed from the backend's hostnames */
    size_t backend;
    unsigned line;
    const char *file; /* where (one of c->files) */
};

struct parser {
    const char *text; /* borrowed: the file being read, not NUL-terminated */
    size_t len, pos;
    const char *file; /* its name in messages (owned by c->files) */
    const char *dir;  /* its folder: relative paths resolve against it ("": none) */
    bool main;        /* the main file: [proxy] allowed, include read */
    cfg_report_fn *report;
    void *arg;
    cfg_file_fn *check_file; /* asked about every file named, or NULL */
    void *check_arg;
    unsigned errors;
    bool nomem;

    unsigned line;       /* the line inih is working on */
    bool continuation;   /* that line is indented: it continues key's value */
    char key[64];        /* last key of this section, as inih's own "prev_name" */
    enum section sec;    /* SEC_BACKEND: the last of c->backends */
    unsigned proxy_line; /* first [proxy] header, 0 while none */
    unsigned proxy_seen[CFG_PROXY_KEYS_MAX]; /* line each key was first given */
    unsigned backend_seen[CFG_BACKEND_KEYS_MAX];
    char *default_backend;  /* owned */
    struct host_ref *hosts; /* owned: every host name so far, to find conflicts */
    size_t n_hosts;
    struct hmap seen;       /* host name -> index in hosts */
    struct cfg *c; /* owned until returned */
};

/* Sends "FILE:LINE: KEY: message" (without "KEY: " when key is NULL). */
void cfg_report(struct parser *p, unsigned line, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
char *cfg_dup(struct parser *p, const char *s, size_t n);
/* A file name as written in the file being read: relative ones joined to
 * its folder. */
char *cfg_dup_path(struct parser *p, const char *s, size_t n);
/* Appends a zeroed element to the array at base + k->off (count at base +
 * k->aux); NULL when memory runs out. */
void *cfg_push(struct parser *p, char *base, const struct key *k, size_t size);
bool cfg_is_list(enum key_type t);
/* The key called name in section sec, or NULL; *seen (when seen is not
 * NULL) points to the line where it was first given. */
const struct key *cfg_find_key(struct parser *p, enum section sec, const char *name,
                               unsigned **seen);
/* Line where a key of section sec was first given, 0 when it was not. */
unsigned cfg_given(struct parser *p, enum section sec, const char *name);
/* Stores the non-empty value v of key k into base, or reports why not. */
void cfg_set_value(struct parser *p, const struct key *k, char *base, const char *v);
/* A certificate list and its key list pair up one to one. */
void cfg_check_pairs(struct parser *p, const struct cfg_certs *c, unsigned line, const char *site);
/* At the end of a [backend:NAME] section: what needs the whole section. */
void cfg_check_backend(struct parser *p);

#endif
