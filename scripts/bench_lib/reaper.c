/* reaper - run a server as the child of a child subreaper (scripts/bench).
 *
 *   reaper PROGRAM [ARGS...]
 *
 * vsftpd's session processes do not always outlive their children: a child
 * that is still exiting when its parent has gone is re-parented, by default
 * to init, and its CPU time never reaches the vsftpd listener's cutime/cstime.
 * Under this reaper (PR_SET_CHILD_SUBREAPER) such orphans come here instead,
 * and are reaped here, so that the reaper's cutime+cstime plus the listener's
 * utime+stime+cutime+cstime is the CPU of every process the server started.
 *
 * SIGTERM, SIGINT and SIGHUP are passed on to PROGRAM. The reaper exits with
 * PROGRAM's status once PROGRAM and every orphan have been reaped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t child_pid;

static void pass_on(int sig) {
    if (child_pid > 0) kill(child_pid, sig);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: reaper PROGRAM [ARGS...]\n");
        return 2;
    }
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) {
        perror("reaper: PR_SET_CHILD_SUBREAPER");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = pass_on;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("reaper: fork");
        return 2;
    }
    if (pid == 0) {
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        execvp(argv[1], argv + 1);
        perror("reaper: exec");
        _exit(127);
    }
    child_pid = pid;
    int status = 0, main_status = 0;
    for (;;) {
        pid_t r = wait(&status);
        if (r < 0) {
            if (errno == EINTR) continue;
            break; /* ECHILD: nothing left */
        }
        if (r == pid) {
            main_status = status;
            child_pid = 0;
        }
    }
    if (WIFEXITED(main_status)) return WEXITSTATUS(main_status);
    return 128 + (WIFSIGNALED(main_status) ? WTERMSIG(main_status) : 0);
}
