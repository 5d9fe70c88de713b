/* hmap.c - open addressing with linear probing (see hmap.h). */
#include "hmap.h"

#include <stdlib.h>
#include <string.h>

#include "px.h"

static uint64_t hash(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603u; /* FNV-1a, 64 bits */

    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211u;
    return h;
}

static struct hmap_slot *find(struct hmap_slot *slots, size_t cap, const char *key, size_t len)
{
    size_t i = (size_t)hash(key, len) & (cap - 1);

    while (slots[i].key != NULL &&
           !(slots[i].len == len && memcmp(slots[i].key, key, len) == 0))
        i = (i + 1) & (cap - 1);
    return &slots[i];
}

static int grow(struct hmap *m)
{
    size_t cap = m->cap == 0 ? 16 : m->cap * 2;
    struct hmap_slot *slots = calloc(cap, sizeof(*slots));

    if (slots == NULL)
        return PX_ENOMEM;
    for (size_t i = 0; i < m->cap; i++)
        if (m->slots[i].key != NULL)
            *find(slots, cap, m->slots[i].key, m->slots[i].len) = m->slots[i];
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
    return 0;
}

int hmap_put(struct hmap *m, const char *key, size_t len, uint64_t value, uint64_t *old)
{
    struct hmap_slot *s;

    if ((m->n + 1) * 2 > m->cap && grow(m) != 0)
        return PX_ENOMEM;
    s = find(m->slots, m->cap, key, len);
    if (s->key != NULL) {
        if (old != NULL)
            *old = s->value;
        return PX_EEXIST;
    }
    s->key = key;
    s->len = len;
    s->value = value;
    m->n++;
    return 0;
}

int hmap_set(struct hmap *m, const char *key, size_t len, uint64_t value)
{
    struct hmap_slot *s;

    if ((m->n + 1) * 2 > m->cap && grow(m) != 0)
        return PX_ENOMEM;
    s = find(m->slots, m->cap, key, len);
    if (s->key == NULL)
        m->n++;
    s->key = key;
    s->len = len;
    s->value = value;
    return 0;
}

/* Linear probing deletes by shifting back the entries that probed past the
 * freed slot, so that no lookup stops early (no tombstones). */
bool hmap_del(struct hmap *m, const char *key, size_t len)
{
    struct hmap_slot *s;
    size_t i, j;

    if (m->n == 0)
        return false;
    s = find(m->slots, m->cap, key, len);
    if (s->key == NULL)
        return false;
    i = (size_t)(s - m->slots);
    for (j = (i + 1) & (m->cap - 1); m->slots[j].key != NULL; j = (j + 1) & (m->cap - 1)) {
        size_t home = (size_t)hash(m->slots[j].key, m->slots[j].len) & (m->cap - 1);

        /* Entry j may move to i when i lies on its probe path: between its
         * home and j, cyclically. */
        if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    m->slots[i].key = NULL;
    m->n--;
    return true;
}

bool hmap_get(const struct hmap *m, const char *key, size_t len, uint64_t *value)
{
    const struct hmap_slot *s;

    if (m->n == 0)
        return false;
    s = find(m->slots, m->cap, key, len);
    if (s->key == NULL)
        return false;
    *value = s->value;
    return true;
}

void hmap_free(struct hmap *m)
{
    free(m->slots);
    m->slots = NULL;
    m->cap = 0;
    m->n = 0;
}

size_t hmap_key2(char *dst, size_t cap, const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);

    if (na + 1 + nb + 1 > cap)
        return 0;
    memcpy(dst, a, na + 1);
    memcpy(dst + na + 1, b, nb + 1);
    return na + 1 + nb;
}
