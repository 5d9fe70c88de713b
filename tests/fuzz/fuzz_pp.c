/* fuzz_pp.c - PROXY protocol headers under every version mask. A decision
 * made on a prefix of the input (a header length or a refusal) must be the
 * decision on the whole input, and "need more" must hold on every prefix
 * shorter than a header found. */
#include <netinet/in.h>

#include "pp.h"
#include "px.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const uint8_t *data, size_t size, unsigned versions)
{
    struct pp_header h;
    int whole = pp_parse(data, size, versions, &h);
    size_t k, last;

    PX_ASSERT(whole == 0 || whole == PX_EPROTO || (whole > 0 && whole <= PP_MAX_LEN));
    PX_ASSERT(whole <= 0 || (size_t)whole <= size);
    if (whole > 0) {
        PX_ASSERT((h.version == 1 && (versions & PP_V1)) || (h.version == 2 && (versions & PP_V2)));
        if (h.local)
            PX_ASSERT(h.src.ss_family == AF_UNSPEC && h.dst.ss_family == AF_UNSPEC);
        else
            PX_ASSERT((h.src.ss_family == AF_INET || h.src.ss_family == AF_INET6) &&
                      h.dst.ss_family == h.src.ss_family);
    }
    /* Past PP_MAX_LEN bytes every answer is already final. */
    last = size < PP_MAX_LEN + 1 ? size : PP_MAX_LEN + 1;
    for (k = 0; k < last; k++) {
        int rc = pp_parse(data, k, versions, &h);

        if (whole > 0 && k < (size_t)whole)
            PX_ASSERT(rc == 0);
        else if (rc != 0)
            PX_ASSERT(rc == whole);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check(data, size, PP_V1);
    check(data, size, PP_V2);
    check(data, size, PP_V1 | PP_V2);
    return 0;
}
