/* check.h - the comparison the table-driven unit tests share: on a mismatch
 * it names the case, the expression and both values, then fails. Include
 * after <cmocka.h>. */
#ifndef CHECK_H
#define CHECK_H

#include <stdio.h>
#include <string.h>

#define CHECK_INT(name, got, want)                                                                 \
    do {                                                                                           \
        long got_ = (long)(got), want_ = (long)(want);                                             \
        const char *name_ = (name);                                                                \
        if (got_ != want_) {                                                                       \
            print_message("case \"%s\": %s is %ld, want %ld\n", name_ != NULL ? name_ : "?", #got,  \
                          got_, want_);                                                            \
            fail();                                                                                \
        }                                                                                          \
    } while (0)


#define CHECK_STR(name, got, want)                                                                 \
    do {                                                                                           \
        const char *got_ = (got), *want_ = (want);                                                 \
        if (got_ == NULL || strcmp(got_, want_) != 0) {                                            \
            print_message("case \"%s\": %s is \"%s\", want \"%s\"\n", (name), #got,                \
                          got_ != NULL ? got_ : "(null)", want_);                                  \
            fail();                                                                                \
        }                                                                                          \
    } while (0)

/* A report callback (cfg_parse's, the loader's) that keeps every report. */
struct check_reports {
    unsigned n;
    char text[8192]; /* every report, each followed by a newline */
};

static inline void check_collect(void *arg, const char *msg)
{
    struct check_reports *r = arg;
    size_t used = strlen(r->text);

    snprintf(r->text + used, sizeof r->text - used, "%s\n", msg);
    r->n++;
}

#endif
