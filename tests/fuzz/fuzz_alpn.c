/* fuzz_alpn.c - a ClientHello's ALPN list (ftp_alpn_select) and the HTTP
 * request check of the first command (ftp_is_http_request): the answer
 * agrees with a plain walk of the list, the offset found points at "ftp"
 * inside the input, and nothing reads past the end (ASan). */
#include <string.h>

#include "ftp.h"
#include "px.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The same decision, the slow and obvious way. */
static int walk(const uint8_t *p, size_t len, size_t *at)
{
    size_t i = 0;
    int found = 0;

    if (len == 0)
        return PX_EINVAL;
    while (i < len) {
        if (p[i] == 0 || i + 1 + p[i] > len)
            return PX_EINVAL;
        if (!found && p[i] == 3 && p[i + 1] == 'f' && p[i + 2] == 't' && p[i + 3] == 'p') {
            found = 1;
            *at = i + 1;
        }
        i += 1u + p[i];
    }
    return found;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t at = 0, want_at = 0;
    int rc = ftp_alpn_select(data, size, &at), want = walk(data, size, &want_at);

    PX_ASSERT(rc == want);
    if (rc == 1) {
        PX_ASSERT(at == want_at && at >= 1 && at + 3 <= size && data[at - 1] == 3);
        PX_ASSERT(memcmp(data + at, "ftp", 3) == 0);
    }
    if (ftp_is_http_request((const char *)data, size))
        PX_ASSERT(size >= 4 && memchr(data, ' ', size) != NULL && data[0] >= 'C' && data[0] <= 'T');
    return 0;
}
