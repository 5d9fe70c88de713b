/* hmap.h - a map from byte strings to 64-bit values: open addressing, FNV-1a,
 * grown at half full. Keys are borrowed (they must outlive the map: the
 * configuration's own strings). Lookups are O(1), so nothing scales with the
 * number of sites per connection. Pure. */
#ifndef HMAP_H
#define HMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct hmap_slot {
    const char *key; /* NULL: empty */
    size_t len;
    uint64_t value;
};

struct hmap {
    struct hmap_slot *slots; /* owned; NULL while empty */
    size_t cap;              /* a power of two, or 0 */
    size_t n;
};

/* Adds key -> value. 0; PX_EEXIST when the key is there already (*old, when
 * not NULL, gets its value; nothing changes); PX_ENOMEM. */
int hmap_put(struct hmap *m, const char *key, size_t len, uint64_t value, uint64_t *old);
/* Adds key -> value, or points an existing equal key (the new key pointer
 * replaces the old one) to value. 0 or PX_ENOMEM. */
int hmap_set(struct hmap *m, const char *key, size_t len, uint64_t value);
/* Removes key; false when it was not there. */
bool hmap_del(struct hmap *m, const char *key, size_t len);
/* True with *value set when key is there. */
bool hmap_get(const struct hmap *m, const char *key, size_t len, uint64_t *value);
void hmap_free(struct hmap *m);

/* A key made of two strings, "a NUL b NUL", in dst (cap bytes): its length
 * for the map (the last NUL is not part of it), or 0 when it does not fit.
 * b starts at dst + strlen(a) + 1. */
size_t hmap_key2(char *dst, size_t cap, const char *a, const char *b);

#endif
