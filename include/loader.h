/* loader.h - the configuration from disk: reads the INI file, parses it
 * (cfg.h) and checks that every file it names is a readable regular file.
 * The I/O half of the configuration; cfg.c stays pure. */
#ifndef LOADER_H
#define LOADER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "cfg.h"

#define LOADER_GROUPS_MAX 256

/* The user a configuration runs as after start-up (user =): reloads read
 * every file again as that user. */
struct loader_user {
    bool set; /* false: no user =, or no such user */
    const char *name;
    uid_t uid;
    gid_t groups[LOADER_GROUPS_MAX];
    int n_groups;
};

/* Reads path and parses it, reporting every problem (each file the
 * configuration names that cannot be read too). Returns 0 with *out,
 * PX_ENOENT when path cannot be read (reported as "PATH:0: cannot read the
 * configuration: ..."), PX_EINVAL or PX_ENOMEM. */
int loader_read_config(const char *path, cfg_report_fn *report, void *arg, struct cfg **out);

/* Lowers the calling thread's CPU priority to nice 10 (for good: only
 * threads that do nothing but loading call it), so that reading and
 * verifying thousands of certificates leaves the CPU to the event loops. */
void loader_background(void);
/* Whether the calling thread called loader_background(): a reload, while
 * sessions are served, rather than -t or start-up. */
bool loader_in_background(void);

/* Looks user up (NULL: none) into *u; u->set says whether it exists. */
void loader_user(const char *user, struct loader_user *u);
/* NULL when u can read path (every directory on the way searchable, the
 * file readable; ACLs are not consulted), else what stops it, in why. */
const char *loader_unreadable_by(const struct loader_user *u, const char *path, char *why,
                                 size_t cap);

#endif
