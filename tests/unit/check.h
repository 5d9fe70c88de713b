/* check.h - the comparison the table-driven unit tests share: on a mismatch
 * it names the case, the expression and both values, then fails. Include
 * after <cmocka.h>. */
#ifndef CHECK_H
#define CHECK_H

#define CHECK_INT(name, got, want)                                                                 \
    do {                                                                                           \
        long got_ = (long)(got), want_ = (long)(want);                                             \
        if (got_ != want_) {                                                                       \
            print_message("case \"%s\": %s is %ld, want %ld\n", (name), #got, got_, want_);        \
            fail();                                                                                \
        }                                                                                          \
    } while (0)

#endif
