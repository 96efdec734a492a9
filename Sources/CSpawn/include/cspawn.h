#ifndef NBD_CSPAWN_H
#define NBD_CSPAWN_H

#include <spawn.h>
#include <sys/types.h>

/* Starts a child the way servers and tools should be started from a Swift process:
 * - stdin from /dev/null;
 * - stdout onto `stdout_fd` (>= 0), else into the file `stdout_path`, else inherited;
 * - stderr into the file `stderr_path`, else inherited;
 * - no other descriptor of ours (a daemon holding a copy of one of our sockets would keep
 *   that connection open after we close it);
 * - an empty signal mask and default handlers (Swift's threads block signals, and a child
 *   inheriting that would ignore SIGTERM).
 * Returns posix_spawn's result; `*pid` is the child's PID on success. */
int cspawn_spawn(pid_t *pid, const char *path, char *const argv[], char *const envp[],
                 int stdout_fd, const char *stdout_path, const char *stderr_path);

/* Names the calling thread (at most 15 bytes show; pthread_setname_np needs _GNU_SOURCE,
 * which Swift's Glibc module is not built with). */
void cspawn_name_thread(const char *name);

#endif
