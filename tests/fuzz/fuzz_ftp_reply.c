/* fuzz_ftp_reply.c - backend replies as a byte stream: ftp_reply_feed() over
 * the whole input, and over the same input arriving in two reads split at
 * every offset. Both must take the same replies and end the same way, and no
 * reply may take more bytes than were given. Inputs long enough to reach
 * FTP_LINE_MAX would make that quadratic, so past 1024 bytes the splits are
 * spread evenly over the input instead. */
#include <stdlib.h>
#include <string.h>

#include "ftp.h"
#include "px.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct taken {
    int rc; /* bytes taken, or the final 0 / error */
    int code;
    unsigned lines;
};

/* Takes replies off the front as a caller would, with only the first split
 * bytes there at first and the rest arriving when a reply is incomplete.
 * Fills out (one entry per reply, then the final status); returns entries. */
static size_t feed(const char *p, size_t size, size_t split, struct taken *out)
{
    struct ftp_reply r = {0};
    size_t pos = 0, have = split, n = 0;

    for (;;) {
        int rc = ftp_reply_feed(&r, p + pos, have - pos);

        if (rc == 0 && have < size) {
            have = size;
            continue;
        }
        if (rc <= 0) {
            out[n++] = (struct taken){rc, 0, 0};
            return n;
        }
        PX_ASSERT((size_t)rc <= have - pos && p[pos + (size_t)rc - 1] == '\n');
        PX_ASSERT(r.done && r.code >= 100 && r.code <= 599 && r.lines >= 1);
        PX_ASSERT(r.multi || r.lines == 1);
        out[n++] = (struct taken){rc, r.code, r.lines};
        pos += (size_t)rc;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    struct taken *whole = malloc((size + 1) * sizeof *whole);
    struct taken *part = malloc((size + 1) * sizeof *part);
    size_t n, split, step = size / 1024 + 1;

    PX_ASSERT(whole != NULL && part != NULL);
    n = feed(p, size, size, whole);
    for (split = 0; split < size; split += step) {
        PX_ASSERT(feed(p, size, split, part) == n);
        PX_ASSERT(memcmp(whole, part, n * sizeof *part) == 0);
    }
    free(whole);
    free(part);
    return 0;
}
