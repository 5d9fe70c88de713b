/* privdrop.c - see privdrop.h. */
#include "privdrop.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

int privdrop_apply(const char *user)
{
    struct passwd *pw;
    char uid[24];

    if (geteuid() != 0) {
        pw = user != NULL ? getpwnam(user) : NULL;
        if (user != NULL && (pw == NULL || pw->pw_uid != geteuid()))
            LOG_WARN(NULL, "privileges", "msg", "not started as root: user is ignored", "uid",
                     log_u64(uid, geteuid()), NULL);
        return 0;
    }
    if (user == NULL) {
        LOG_WARN(NULL, "privileges", "msg",
                 "running as root: set user = NAME to drop root after binding", NULL);
        return 0;
    }
    pw = getpwnam(user);
    if (pw == NULL) {
        LOG_ERROR(NULL, "privileges", "msg", "no such user", "user", user, NULL);
        return -1;
    }
    if (setgroups(0, NULL) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0) {
        LOG_ERROR(NULL, "privileges", "msg", "cannot switch user", "user", user, "error",
                  strerror(errno), NULL);
        return -1;
    }
    if (pw->pw_uid != 0 && (setuid(0) == 0 || geteuid() == 0)) {
        LOG_ERROR(NULL, "privileges", "msg", "root could be regained after the switch", NULL);
        return -1;
    }
    LOG_INFO(NULL, "privileges", "msg", "dropped root", "user", user, "uid",
             log_u64(uid, pw->pw_uid), NULL);
    return 0;
}
