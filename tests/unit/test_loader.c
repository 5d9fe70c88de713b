/* test_loader.c - the configuration read from disk: every file it names
 * checked and reported with its line, key and site; a missing, unreadable or
 * non-INI configuration file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cfg.h"
#include "loader.h"
#include "px.h"

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static void test_read_config(void **state)
{
    struct check_reports r = {0, ""};
    struct cfg *c = NULL;
    char dir[] = "/tmp/test_cfg.XXXXXX", ini[64], crt[64], key[64], sub[64], text[1024];
    char want[256];
    int rc;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(ini, sizeof ini, "%s/ftpsgate.ini", dir);
    snprintf(crt, sizeof crt, "%s/c.crt", dir);
    snprintf(key, sizeof key, "%s/c.key", dir);
    snprintf(sub, sizeof sub, "%s/sub", dir);
    write_file(crt, "PEM\n");
    write_file(key, "PEM\n");
    assert_int_equal(mkdir(sub, 0700), 0);

    /* Every file there: it loads. */
    snprintf(text, sizeof text, "[proxy]\ncertificate = %s\nprivate_key = %s\n", crt, key);
    write_file(ini, text);
    rc = loader_read_config(ini, check_collect, &r, &c);
    CHECK_INT("load", rc, 0);
    CHECK_INT("load", r.n, 0);
    CHECK_STR("load", c->path, ini);
    cfg_free(c);

    /* ca_file missing or a directory: reported with its line. Certificates
     * and keys are not the loader's: certcheck reads them (a site's that
     * cannot be read degrades that site only). */
    snprintf(text, sizeof text,
             "[proxy]\ncertificate = %s/missing.crt\nprivate_key = %s\nca_file = %s\n"
             "[backend:a]\naddress = 10.0.0.1:21\ncertificate = %s\nprivate_key = %s/nokey\n",
             dir, key, sub, crt, dir);
    write_file(ini, text);
    rc = loader_read_config(ini, check_collect, &r, &c);
    CHECK_INT("load missing", rc, PX_EINVAL);
    CHECK_INT("load missing", c == NULL, 1);
    CHECK_INT("load missing", r.n, 1);
    snprintf(want, sizeof want, "%s:4: ca_file: cannot read %s: not a regular file", ini, sub);
    CHECK_INT(want, strstr(r.text, want) != NULL, 1);
    r.n = 0;
    r.text[0] = '\0';
    snprintf(text, sizeof text, "[proxy]\ncertificate = %s\nprivate_key = %s\nca_file = %s/no.pem\n",
             crt, key, dir);
    write_file(ini, text);
    rc = loader_read_config(ini, check_collect, &r, &c);
    CHECK_INT("ca_file missing", rc, PX_EINVAL);
    snprintf(want, sizeof want,
             "%s:4: ca_file: cannot read %s/no.pem: No such file or directory", ini, dir);
    CHECK_INT(want, strstr(r.text, want) != NULL, 1);

    /* cfg_parse() opens nothing: the same text parses without the files. */
    r.n = 0;
    r.text[0] = '\0';
    CHECK_INT("parse opens nothing", cfg_parse(text, strlen(text), "x", check_collect, &r, &c), 0);
    cfg_free(c);

    /* The configuration itself missing. */
    r.n = 0;
    r.text[0] = '\0';
    rc = loader_read_config(crt, check_collect, &r, &c); /* readable but not INI: a parse error */
    CHECK_INT("load not ini", rc, PX_EINVAL);
    r.n = 0;
    r.text[0] = '\0';
    snprintf(want, sizeof want, "%s/none.ini", dir);
    rc = loader_read_config(want, check_collect, &r, &c);
    CHECK_INT("load no file", rc, PX_ENOENT);
    CHECK_INT("load no file", c == NULL, 1);
    CHECK_INT("load no file", r.n, 1);
    CHECK_INT("load no file",
              strstr(r.text, "none.ini:0: cannot read the configuration: No such file or "
                             "directory") != NULL,
              1);
    rc = loader_read_config(sub, check_collect, &r, &c);
    CHECK_INT("load a directory", rc, PX_ENOENT);

    unlink(ini);
    unlink(crt);
    unlink(key);
    rmdir(sub);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_config),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
