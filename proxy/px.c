/* px.c - the one out-of-line helper of px.h. */
#include "px.h"

#include <stdio.h>
#include <stdlib.h>

_Noreturn void px_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "ftpsgate: assertion failed: %s (%s:%d)\n", expr, file, line);
    abort();
}
