/* hstate.h - the health of one backend address, and the choice of an address
 * for a new session. Pure: no clock, no sockets, no locks; health.c keeps the
 * states of every address and feeds them the checks' results.
 *
 * An address starts in the rotation. HSTATE_FAILS_DOWN failed checks in a row
 * take it out; one good check (a 220 greeting in time) brings it back. */
#ifndef HSTATE_H
#define HSTATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HSTATE_FAILS_DOWN 2

struct hstate {
    bool up;        /* in the rotation */
    unsigned fails; /* failed checks in a row */
};

enum hstate_change { HSTATE_SAME = 0, HSTATE_WENT_DOWN, HSTATE_CAME_UP };

/* An address not checked yet: up. */
void hstate_init(struct hstate *h);
/* One check's result (ok: greeted with 220 in time); what changed. */
enum hstate_change hstate_result(struct hstate *h, bool ok);
const char *hstate_change_name(enum hstate_change c);

/* One address as the choice sees it. */
struct hstate_cand {
    bool up;
    unsigned sessions; /* sessions on it now */
};

/* The address for a connect: among the n candidates not in tried (bit i for
 * candidate i; n <= 64), the one up with the fewest sessions; ties go to the
 * first at or after turn % n, so that equal addresses take turns. When no
 * candidate is up at all, the first untried one in order (a check may be
 * wrong, and a connect that fails costs only that attempt). -1 when none is
 * left: every address that is up has been tried, or every address has. */
int hstate_pick(const struct hstate_cand *c, size_t n, uint64_t tried, unsigned turn);

#endif
