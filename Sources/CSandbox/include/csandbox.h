#ifndef CSANDBOX_H
#define CSANDBOX_H
#include <stdint.h>
#include <sys/types.h>

/* pmfsd's confinement after set-up (Sources/Pmfsd/Sandbox.swift). Each
   returns 0 or a negative errno. Per-thread state (mount namespace,
   capabilities) is changed in every thread of the process: the others are
   asked with a real-time signal and each does it for itself. */

/* This thread's effective capabilities (bit n: capability n). */
uint64_t csandbox_effective_capabilities(void);

/* A private mount namespace (mounts below "/" made slaves: none made here
   reaches the host, the host's unmounts still reach here) for every thread.
   `detach` (or NULL): a mount point whose copy in the new namespace is
   detached at once (the host FUSE mount, which only the host needs). */
int csandbox_enter_namespace(const char *detach);

/* Every thread keeps only the capabilities in `keep` (bit n: capability n),
   as permitted and effective, none inheritable or ambient; the bounding set
   drops the rest too. Bits the process does not have are ignored. */
int csandbox_drop_capabilities(uint64_t keep);

/* Threads the last of the two calls above could not ask, as they block
   the request signal (SIGRTMIN+4): they keep what they had. */
int csandbox_unreached_threads(void);

/* Loads the allow-list on every thread (TSYNC, and no_new_privs). Any other
   system call kills the process (log_only = 0) or is logged by the kernel's
   audit and allowed (log_only = 1). */
int csandbox_load_seccomp(int log_only);

/* The number of system calls on the allow-list, and the i-th one's name. */
int csandbox_allowed_count(void);
const char *csandbox_allowed_name(int i);

/* A system call the allow-list does not have (personality(2), a query that
   changes nothing): the tests' proof that the filter is on. */
long csandbox_forbidden_call(void);

/* posix_spawn of `path` with `argv`, its stdin the read end of a new pipe
   whose write end (close-on-exec) is returned in *request_fd; every other
   descriptor above stderr is closed in the child. Returns the pid or -errno. */
pid_t csandbox_spawn_with_pipe(const char *path, char *const argv[], int *request_fd);

#endif
