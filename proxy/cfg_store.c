/* cfg_store.c - storing each key's value into struct cfg (see cfg_int.h):
 * lists split at commas, host names checked for conflicts, the files a
 * configuration names checked through the caller's cfg_file_fn, and the
 * checks that need a whole [backend:NAME] section. Pure. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cfg_int.h"
#include "px.h"

static void add_host(struct parser *p, const struct key *k, struct cfg_backend *b, const char *s,
                     size_t n)
{
    char name[CFG_HOST_NAME_MAX + 1];
    size_t bi = (size_t)(b - p->c->backends);
    struct host_ref *ref;
    uint64_t seen;
    char **slot;

    if (!cfg_normalize_host(s, n, name)) {
        cfg_report(p, p->line, k->name,
               "expected host names such as ftp.example.com or *.example.com ('*.' only as "
               "the whole first label), got \"%.*s\"",
               (int)n, s);
        return;
    }
    if (hmap_get(&p->seen, name, strlen(name), &seen)) {
        ref = &p->hosts[seen];
        if (ref->backend != bi) /* the same backend twice is harmless */
            cfg_report(p, p->line, k->name,
                       "%s is claimed by both [backend:%s] (%s%sline %u) and "
                       "[backend:%s] (line %u); give each name to one backend",
                       name, p->c->backends[ref->backend].name,
                       ref->file == p->file ? "" : ref->file, ref->file == p->file ? "" : ", ",
                       ref->line, b->name, p->line);
        return;
    }
    ref = realloc(p->hosts, (p->n_hosts + 1) * sizeof *p->hosts);
    if (ref == NULL) {
        p->nomem = true;
        return;
    }
    p->hosts = ref;
    slot = cfg_push(p, (char *)b, k, sizeof *slot);
    if (slot == NULL)
        return;
    *slot = cfg_dup(p, name, strlen(name));
    if (*slot == NULL)
        return;
    if (hmap_put(&p->seen, *slot, strlen(*slot), p->n_hosts, NULL) != 0)
        p->nomem = true;
    p->hosts[p->n_hosts++] = (struct host_ref){*slot, bi, p->line, p->file};
}

/* A file the configuration names: the caller's check says whether it can be
 * read, and the report names the site it belongs to. */
static void check_file(struct parser *p, const char *key, const char *path)
{
    const char *site = p->sec == SEC_BACKEND && p->c->n_backends > 0
                           ? p->c->backends[p->c->n_backends - 1].name
                           : NULL;
    const char *why = p->check_file(p->check_arg, path);

    if (why == NULL)
        return;
    if (site != NULL)
        cfg_report(p, p->line, key, "site %s: cannot read %s: %s", site, path, why);
    else
        cfg_report(p, p->line, key, "cannot read %s: %s", path, why);
}

/* One item of a list value (comma-separated, already trimmed, not empty). */
static void add_item(struct parser *p, const struct key *k, char *base, const char *s, size_t n)
{
    struct cfg_addr addr;
    struct cfg_cidr cidr;
    void *slot;

    switch (k->type) {
    case KT_ADDR_LIST:
        if (cfg_parse_addr(s, n, &addr) != 0) {
            cfg_report(p, p->line, k->name, "expected " CFG_ADDR_EXPECTED ", got \"%.*s\"", (int)n, s);
            return;
        }
        addr.line = p->line;
        slot = cfg_push(p, base, k, sizeof addr);
        if (slot != NULL)
            memcpy(slot, &addr, sizeof addr);
        return;
    case KT_CIDR_LIST:
        if (cfg_parse_cidr(s, n, &cidr) != 0) {
            cfg_report(p, p->line, k->name,
                   "expected an address or ADDRESS/PREFIX with no bit set past the prefix, "
                   "such as 10.0.0.0/8 or 2001:db8::/32, got \"%.*s\"",
                   (int)n, s);
            return;
        }
        slot = cfg_push(p, base, k, sizeof cidr);
        if (slot != NULL)
            memcpy(slot, &cidr, sizeof cidr);
        return;
    case KT_HOSTS:
        add_host(p, k, (struct cfg_backend *)(void *)base, s, n);
        return;
    case KT_PATH_LIST:
        slot = cfg_push(p, base, k, sizeof(char *));
        if (slot == NULL)
            return;
        /* Not checked here: certcheck reads certificates and keys, and an
         * unreadable one of a site's degrades that site only. */
        *(char **)slot = cfg_dup_path(p, s, n);
        return;
    case KT_GLOB_LIST:
        slot = cfg_push(p, base, k, sizeof(char *));
        if (slot != NULL)
            *(char **)slot = cfg_dup_path(p, s, n);
        return;
    default:
        PX_ASSERT(!"not a list key");
    }
}

/* Stores the non-empty value v of key k into base, or reports why not. */
void cfg_set_value(struct parser *p, const struct key *k, char *base, const char *v)
{
    void *field = base + k->off;
    size_t n = strlen(v);
    const struct cfg_word *w;
    const char *item, *comma;
    char words[128], ip[INET_ADDRSTRLEN];
    unsigned lo, hi;
    uint8_t a[4];

    switch (k->type) {
    case KT_BOOL:
    case KT_WORD:
        for (w = k->words; w->text != NULL; w++) {
            if (strlen(w->text) == n && strncasecmp(w->text, v, n) == 0)
                break;
        }
        if (w->text == NULL)
            cfg_report(p, p->line, k->name, "expected %s, got \"%s\"",
                   cfg_words_text(k->words, words, sizeof words), v);
        else if (k->type == KT_BOOL)
            *(bool *)field = w->value != 0;
        else
            *(int *)field = w->value;
        return;
    case KT_UINT:
        if (cfg_parse_uint(v, n, k->min, k->max, field) != 0)
            cfg_report(p, p->line, k->name, "expected a whole number from %u to %u, got \"%s\"", k->min,
                   k->max, v);
        return;
    case KT_SIZE:
        if (cfg_parse_size(v, n, k->min, k->max, field) != 0)
            cfg_report(p, p->line, k->name,
                       "expected a size such as 512M or 2G, from %uM to %uM, got \"%s\"",
                       k->min, k->max, v);
        return;
    case KT_STRING:
    case KT_PATH:
        free(*(char **)field);
        *(char **)field = k->type == KT_PATH ? cfg_dup_path(p, v, n) : cfg_dup(p, v, n);
        if (k->type == KT_PATH && p->check_file != NULL && *(char **)field != NULL)
            check_file(p, k->name, *(char **)field);
        return;
    case KT_ADDR:
        if (cfg_parse_addr(v, n, field) != 0)
            cfg_report(p, p->line, k->name, "expected " CFG_ADDR_EXPECTED ", got \"%s\"", v);
        ((struct cfg_addr *)field)->line = p->line;
        return;
    case KT_IPV4:
        if (!cfg_copy_text(ip, sizeof ip, v, n) || inet_pton(AF_INET, ip, a) != 1 ||
            memcmp(a, "\0\0\0\0", 4) == 0)
            cfg_report(p, p->line, k->name,
                   "expected the IPv4 address clients should connect to, such as 198.51.100.7, "
                   "got \"%s\"",
                   v);
        else
            memcpy(field, a, sizeof a);
        return;
    case KT_PORT_RANGE:
        if (!cfg_parse_range(v, k->min, k->max, &lo, &hi)) {
            cfg_report(p, p->line, k->name,
                   "expected LOW-HIGH with %u <= LOW <= HIGH <= %u (such as 61000-61999), "
                   "got \"%s\"",
                   k->min, k->max, v);
            return;
        }
        *(uint16_t *)field = (uint16_t)lo;
        *(uint16_t *)(void *)(base + k->aux) = (uint16_t)hi;
        return;
    case KT_SEPARATOR:
        if (n != 1 || !cfg_is_separator(v[0]))
            cfg_report(p, p->line, k->name,
                   "expected one printable character that cannot occur in a host name, such as "
                   "| or @, got \"%s\"",
                   v);
        else
            *(char *)field = v[0];
        return;
    case KT_BACKEND:
        free(p->default_backend);
        p->default_backend = cfg_dup(p, v, n);
        return;
    case KT_ADDR_LIST:
    case KT_CIDR_LIST:
    case KT_HOSTS:
    case KT_PATH_LIST:
    case KT_GLOB_LIST:
        for (item = v;; item = comma + 1) {
            comma = strchr(item, ',');
            n = comma != NULL ? (size_t)(comma - item) : strlen(item);
            cfg_trim(&item, &n);
            if (n > 0) /* "a,,b" and a trailing comma add nothing */
                add_item(p, k, base, item, n);
            if (comma == NULL)
                return;
        }
    }
}

/* A certificate list and its key list pair up one to one. */
void cfg_check_pairs(struct parser *p, const struct cfg_certs *c, unsigned line,
                        const char *site)
{
    if (c->n_cert == c->n_key)
        return;
    cfg_report(p, line, "certificate",
           "%s lists %zu certificate file%s and %zu private_key file%s; give one key per "
           "certificate, in the same order",
           site, c->n_cert, c->n_cert == 1 ? "" : "s", c->n_key, c->n_key == 1 ? "" : "s");
}

/* A backend's address list: at most CFG_ADDRESS_MAX, each once. */
static void check_addresses(struct parser *p, const struct cfg_backend *b)
{
    if (b->n_address > CFG_ADDRESS_MAX)
        cfg_report(p, b->address[CFG_ADDRESS_MAX].line, "address",
                   "[backend:%s] lists %zu addresses; give at most %d", b->name, b->n_address,
                   CFG_ADDRESS_MAX);
    for (size_t i = 1; i < b->n_address && i < CFG_ADDRESS_MAX + 1; i++)
        for (size_t j = 0; j < i; j++)
            if (strcmp(b->address[i].text, b->address[j].text) == 0) {
                cfg_report(p, b->address[i].line, "address",
                           "[backend:%s]: %s is listed twice (first on line %u); list each "
                           "server once",
                           b->name, b->address[i].text, b->address[j].line);
                break;
            }
}

void cfg_check_backend(struct parser *p)
{
    struct cfg_backend *b = &p->c->backends[p->c->n_backends - 1];
    unsigned cert = cfg_given(p, SEC_BACKEND, "certificate");
    unsigned key = cfg_given(p, SEC_BACKEND, "private_key");

    if (cfg_given(p, SEC_BACKEND, "address") == 0)
        cfg_report(p, b->line, "address",
               "missing from [backend:%s], the section that starts on this line; expected the "
               "plaintext FTP server as " CFG_ADDR_EXPECTED,
               b->name);
    if (cert != 0 && key == 0)
        cfg_report(p, cert, "certificate",
               "given without private_key in [backend:%s]; give both or neither", b->name);
    else if (key != 0 && cert == 0)
        cfg_report(p, key, "private_key",
               "given without certificate in [backend:%s]; give both or neither", b->name);
    else
        cfg_check_pairs(p, &b->certs, cert, b->name);
    b->certificate_line = cert;
    check_addresses(p, b);
}
