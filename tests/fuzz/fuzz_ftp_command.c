/* fuzz_ftp_command.c - client command input as ctl.c takes it: bytes framed
 * into lines by buf_take_line() (fed one byte at a time and in large reads,
 * which must agree with a plain model of the framing), then Telnet-stripped
 * and parsed by ftp_parse_command(). */
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "ftp.h"
#include "px.h"

#define MAX_LINE 32 /* small, so that fuzzed inputs reach over-long lines */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A line, or an over-long line (too_long, no bytes). */
struct event {
    const char *p;
    size_t len;
    bool too_long;
};

/* What buf_take_line() must report for the whole input, with a capacity of
 * MAX_LINE + 2: each LF-terminated line, or too_long for one over MAX_LINE;
 * and an unterminated tail that already can no longer fit is too_long. */
static size_t model(const char *p, size_t size, struct event *ev)
{
    size_t n = 0, pos = 0;

    while (pos < size) {
        const char *lf = memchr(p + pos, '\n', size - pos);
        size_t len;

        if (lf == NULL) {
            if (size - pos > MAX_LINE + 1)
                ev[n++] = (struct event){NULL, 0, true};
            break;
        }
        len = (size_t)(lf - (p + pos));
        if (len > 0 && p[pos + len - 1] == '\r')
            len--;
        ev[n++] =
            len > MAX_LINE ? (struct event){NULL, 0, true} : (struct event){p + pos, len, false};
        pos = (size_t)(lf - p) + 1;
    }
    return n;
}

static void check_command(const char *line, size_t len)
{
    char copy[MAX_LINE];
    struct ftp_cmd cmd;
    size_t n, i;

    PX_ASSERT(len <= sizeof copy);
    memcpy(copy, line, len);
    n = ftp_strip_telnet(copy, len);
    PX_ASSERT(n <= len);
    if (ftp_parse_command(copy, n, &cmd) != 0)
        return;
    PX_ASSERT(n > 0 && memchr(copy, '\0', n) == NULL && memchr(copy, '\r', n) == NULL);
    for (i = 0; cmd.verb[i] != '\0'; i++)
        PX_ASSERT(i < 4 && cmd.verb[i] >= 'A' && cmd.verb[i] <= 'Z');
    PX_ASSERT(i >= 1);
    if (cmd.arg_len > 0)
        PX_ASSERT(cmd.arg == copy + i + 1 && i + 1 + cmd.arg_len == n);
    else
        PX_ASSERT(n == i || n == i + 1);
    (void)ftp_cmd_is_secret(&cmd);
}

/* Feeds the input in reads of at most step bytes and compares each line
 * taken with the model. */
static void run(const uint8_t *data, size_t size, size_t step, const struct event *ev, size_t n)
{
    struct buf b;
    size_t pos = 0, k = 0;

    buf_init(&b, MAX_LINE + 2);
    while (pos < size) {
        size_t room = buf_room(&b), chunk = size - pos;
        const char *line;
        size_t len;
        int rc;

        if (chunk > step)
            chunk = step;
        if (chunk > room)
            chunk = room;
        PX_ASSERT(chunk > 0); /* a full buffer is always emptied below */
        PX_ASSERT(buf_append(&b, data + pos, chunk) == 0);
        pos += chunk;
        for (rc = buf_take_line(&b, MAX_LINE, &line, &len); rc != 0;
             rc = buf_take_line(&b, MAX_LINE, &line, &len)) {
            PX_ASSERT(k < n);
            if (rc == PX_EMSGSIZE) {
                PX_ASSERT(ev[k].too_long);
            } else {
                PX_ASSERT(rc == 1 && !ev[k].too_long && len == ev[k].len);
                PX_ASSERT(memcmp(line, ev[k].p, len) == 0);
                check_command(line, len);
            }
            k++;
        }
    }
    PX_ASSERT(k == n);
    buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct event *ev = calloc(size + 1, sizeof *ev);
    struct ftp_cmd cmd;
    size_t n;

    PX_ASSERT(ev != NULL);
    n = model((const char *)data, size, ev);
    run(data, size, 1, ev, n);
    run(data, size, size + 1, ev, n);
    free(ev);
    /* The whole input as one line, as a caller with its own framing would. */
    if (ftp_parse_command((const char *)data, size, &cmd) == 0)
        PX_ASSERT(cmd.arg_len < size);
    return 0;
}
