/* hstate.c - the health of one backend address and the choice of an address
 * (see hstate.h). */
#include "hstate.h"

#include "px.h"

void hstate_init(struct hstate *h)
{
    h->up = true;
    h->fails = 0;
}

enum hstate_change hstate_result(struct hstate *h, bool ok)
{
    if (ok) {
        h->fails = 0;
        if (h->up)
            return HSTATE_SAME;
        h->up = true;
        return HSTATE_CAME_UP;
    }
    if (h->fails < HSTATE_FAILS_DOWN)
        h->fails++;
    if (!h->up || h->fails < HSTATE_FAILS_DOWN)
        return HSTATE_SAME;
    h->up = false;
    return HSTATE_WENT_DOWN;
}

const char *hstate_change_name(enum hstate_change c)
{
    switch (c) {
    case HSTATE_SAME:      return "same";
    case HSTATE_WENT_DOWN: return "down";
    case HSTATE_CAME_UP:   return "up";
    }
    return "?";
}

int hstate_pick(const struct hstate_cand *c, size_t n, uint64_t tried, unsigned turn)
{
    bool any_up = false;
    int best = -1;

    PX_ASSERT(n <= 64);
    if (n == 0)
        return -1;
    for (size_t k = 0; k < n; k++) {
        size_t i = (k + turn) % n;

        if (!c[i].up)
            continue;
        any_up = true;
        if (tried & (UINT64_C(1) << i))
            continue;
        if (best < 0 || c[i].sessions < c[best].sessions)
            best = (int)i;
    }
    if (best >= 0 || any_up)
        return best;
    for (size_t i = 0; i < n; i++)
        if (!(tried & (UINT64_C(1) << i)))
            return (int)i;
    return -1;
}
