/* replay_main.c - runs a fuzz target over saved inputs without libFuzzer, so
 * the corpus is an ordinary test on any compiler. Each argument is a file or
 * a directory of files (not searched recursively); each file is read whole
 * and given to LLVMFuzzerTestOneInput() once. A broken invariant aborts
 * inside the target; an unreadable argument, or no input at all, makes the
 * exit status 1. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads path whole and runs it. 0, or -1 after saying what went wrong. */
static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    uint8_t *data = NULL;
    size_t size = 0, cap = 0, got;

    if (f == NULL) {
        perror(path);
        return -1;
    }
    do {
        if (size == cap) {
            uint8_t *bigger = realloc(data, cap == 0 ? 4096 : cap * 2);

            if (bigger == NULL) {
                fprintf(stderr, "%s: out of memory\n", path);
                free(data);
                fclose(f);
                return -1;
            }
            data = bigger;
            cap = cap == 0 ? 4096 : cap * 2;
        }
        got = fread(data + size, 1, cap - size, f);
        size += got;
    } while (got > 0);
    if (ferror(f)) {
        perror(path);
        free(data);
        fclose(f);
        return -1;
    }
    fclose(f);
    LLVMFuzzerTestOneInput(data, size);
    free(data);
    return 0;
}

/* Runs every regular file in dir; counts them in *ran. */
static int run_dir(const char *dir, unsigned *ran)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int rc = 0;

    if (d == NULL) {
        perror(dir);
        return -1;
    }
    for (e = readdir(d); e != NULL; e = readdir(d)) {
        char path[4096];
        struct stat st;
        int n = snprintf(path, sizeof path, "%s/%s", dir, e->d_name);

        if (n < 0 || (size_t)n >= sizeof path) {
            fprintf(stderr, "%s/%s: path too long\n", dir, e->d_name);
            rc = -1;
            continue;
        }
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (run_file(path) != 0)
            rc = -1;
        else
            (*ran)++;
    }
    closedir(d);
    return rc;
}

int main(int argc, char **argv)
{
    unsigned ran = 0;
    int i, failed = 0;

    for (i = 1; i < argc; i++) {
        struct stat st;

        if (stat(argv[i], &st) != 0) {
            perror(argv[i]);
            failed = 1;
        } else if (S_ISDIR(st.st_mode)) {
            if (run_dir(argv[i], &ran) != 0)
                failed = 1;
        } else if (run_file(argv[i]) != 0) {
            failed = 1;
        } else {
            ran++;
        }
    }
    printf("%s: %u inputs ran\n", argv[0], ran);
    if (ran == 0) {
        fprintf(stderr, "%s: no inputs\n", argv[0]);
        failed = 1;
    }
    return failed;
}
