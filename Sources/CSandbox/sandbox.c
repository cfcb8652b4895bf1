#define _GNU_SOURCE
#include "csandbox.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ---- Asking every thread to change its own state --------------------- */

/* What each thread does when asked; the asker fills these in first. */
enum operation { JOIN_NAMESPACE = 1, DROP_CAPABILITIES = 2 };
static int requested_operation;
static int namespace_fd = -1, cwd_fd = -1;
static uint64_t kept_capabilities;

#define MAX_THREADS 4096
static _Atomic pid_t acknowledged[MAX_THREADS];
static _Atomic int acknowledged_count;
static _Atomic int first_error;

static int join_namespace(void) {
    /* setns into a mount namespace needs a file-system context of this
       thread's own (threads share one), then the old working directory back. */
    if (unshare(CLONE_FS) != 0) return -errno;
    if (setns(namespace_fd, CLONE_NEWNS) != 0) return -errno;
    if (fchdir(cwd_fd) != 0) return -errno;
    return 0;
}

static int last_capability(void) {
    int last = CAP_LAST_CAP;
    int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        char text[16] = { 0 };
        if (read(fd, text, sizeof text - 1) > 0) last = atoi(text);
        close(fd);
    }
    return last > 63 ? 63 : last;
}

static int drop_capabilities(void) {
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capget, &header, data) != 0) return -errno;
    uint64_t permitted = (uint64_t)data[0].permitted | ((uint64_t)data[1].permitted << 32);
    uint64_t keep = kept_capabilities & permitted;
    /* The bounding set first: dropping from it needs CAP_SETPCAP, which goes next. */
    if (permitted & (1ull << CAP_SETPCAP)) {
        int last = last_capability();
        for (int c = 0; c <= last; c++) {
            if (keep & (1ull << c)) continue;
            if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0 && errno != EINVAL) return -errno;
        }
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) return -errno;
    memset(data, 0, sizeof data);
    data[0].permitted = data[0].effective = (uint32_t)keep;
    data[1].permitted = data[1].effective = (uint32_t)(keep >> 32);
    if (syscall(SYS_capset, &header, data) != 0) return -errno;
    return 0;
}

static int run_operation(void) {
    switch (requested_operation) {
    case JOIN_NAMESPACE: return join_namespace();
    case DROP_CAPABILITIES: return drop_capabilities();
    default: return -EINVAL;
    }
}

static void on_request(int signal_number) {
    (void)signal_number;
    int saved = errno;
    int rc = run_operation();
    if (rc != 0) {
        int none = 0;
        atomic_compare_exchange_strong(&first_error, &none, rc);
    }
    int slot = atomic_fetch_add(&acknowledged_count, 1);
    if (slot < MAX_THREADS) atomic_store(&acknowledged[slot], (pid_t)syscall(SYS_gettid));
    errno = saved;
}

static int request_signal(void) { return SIGRTMIN + 4; }

static int was_acknowledged(pid_t tid) {
    int n = atomic_load(&acknowledged_count);
    for (int i = 0; i < n && i < MAX_THREADS; i++) if (atomic_load(&acknowledged[i]) == tid) return 1;
    return 0;
}

/* io_uring's workers (iou-wrk-*, iou-sqp-*) are listed as threads but run no
   user code and take no signals: they are not asked. */
static int is_io_worker(pid_t tid) {
    char path[64], name[32] = { 0 };
    snprintf(path, sizeof path, "/proc/self/task/%d/comm", (int)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, name, sizeof name - 1);
    close(fd);
    return n >= 4 && strncmp(name, "iou-", 4) == 0;
}

/* True if the thread blocks the request signal (libdispatch's workers block
   nearly all): it cannot be asked, and is counted in unreached_threads. */
static int blocks_request_signal(pid_t tid) {
    char path[64], text[2048];
    snprintf(path, sizeof path, "/proc/self/task/%d/status", (int)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0) return 0;
    text[n] = 0;
    const char *line = strstr(text, "SigBlk:");
    if (!line) return 0;
    unsigned long long mask = strtoull(line + 7, NULL, 16);
    return (mask >> (request_signal() - 1)) & 1;
}

static int unreached_threads;

int csandbox_unreached_threads(void) { return unreached_threads; }

static int thread_exists(pid_t tid) {
    return syscall(SYS_tgkill, getpid(), tid, 0) == 0 || errno != ESRCH;
}

/* Runs the operation here, then in every other thread until a pass over
   /proc/self/task finds none not yet asked (a thread started meanwhile by
   one not yet changed would have escaped the first pass). */
static int broadcast(int operation) {
    requested_operation = operation;
    unreached_threads = 0;
    atomic_store(&acknowledged_count, 0);
    atomic_store(&first_error, 0);
    int rc = run_operation();
    if (rc != 0) return rc;
    struct sigaction action, previous;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_request;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    if (sigaction(request_signal(), &action, &previous) != 0) return -errno;
    pid_t self = (pid_t)syscall(SYS_gettid), pid = getpid();
    static pid_t asked[MAX_THREADS];
    int asked_count = 0;
    rc = 0;
    for (int pass = 0; pass < 64 && rc == 0; pass++) {
        DIR *tasks = opendir("/proc/self/task");
        if (!tasks) { rc = -errno; break; }
        int sent = 0;
        struct dirent *entry;
        while ((entry = readdir(tasks)) != NULL) {
            pid_t tid = (pid_t)atoi(entry->d_name);
            if (tid <= 0 || tid == self || is_io_worker(tid)) continue;
            int known = 0;
            for (int i = 0; i < asked_count; i++) if (asked[i] == tid) { known = 1; break; }
            if (known) continue;
            if (asked_count == MAX_THREADS) { rc = -E2BIG; break; }
            if (blocks_request_signal(tid)) {
                asked[asked_count++] = tid;   /* not asked again next pass, nor waited for */
                int slot = atomic_fetch_add(&acknowledged_count, 1);
                if (slot < MAX_THREADS) atomic_store(&acknowledged[slot], tid);
                unreached_threads++;
                continue;
            }
            if (syscall(SYS_tgkill, pid, tid, request_signal()) != 0) continue;   /* gone already */
            asked[asked_count++] = tid;
            sent++;
        }
        closedir(tasks);
        if (sent == 0) break;
        /* Wait until each asked thread answered or is gone (5 s at most). */
        for (int waited_ms = 0;; waited_ms++) {
            int pending = 0;
            for (int i = 0; i < asked_count; i++) {
                if (!was_acknowledged(asked[i]) && thread_exists(asked[i])) { pending = 1; break; }
            }
            if (!pending) break;
            if (waited_ms == 5000) { rc = -ETIMEDOUT; break; }
            struct timespec ms = { 0, 1000000 };
            nanosleep(&ms, NULL);
        }
    }
    sigaction(request_signal(), &previous, NULL);
    if (rc == 0) rc = atomic_load(&first_error);
    return rc;
}

int csandbox_enter_namespace(const char *detach) {
    if (unshare(CLONE_NEWNS) != 0) return -errno;
    if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) != 0) return -errno;
    if (detach && umount2(detach, MNT_DETACH) != 0) return -errno;
    namespace_fd = open("/proc/thread-self/ns/mnt", O_RDONLY | O_CLOEXEC);
    if (namespace_fd < 0) return -errno;
    cwd_fd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (cwd_fd < 0) { int e = errno; close(namespace_fd); return -e; }
    /* This thread is in already: the operation only repeats its setns. */
    int rc = broadcast(JOIN_NAMESPACE);
    close(namespace_fd);
    close(cwd_fd);
    namespace_fd = cwd_fd = -1;
    return rc;
}

uint64_t csandbox_effective_capabilities(void) {
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capget, &header, data) != 0) return 0;
    return (uint64_t)data[0].effective | ((uint64_t)data[1].effective << 32);
}

int csandbox_drop_capabilities(uint64_t keep) {
    kept_capabilities = keep;
    return broadcast(DROP_CAPABILITIES);
}

/* ---- The system-call allow-list ---------------------------------------- */

/* What pmfsd's threads call once serving: the host mount's and the guests'
   transports, the engine (PMDK, io_uring or the thread pool), the control
   socket, the metrics endpoint (swift-nio), the Swift runtime and glibc.
   Found by running the mount tests and the vhost-user tests in log mode
   (design/architecture.md, "The sandbox"). Names unknown to this
   architecture are skipped. */
static const char *const allowed[] = {
    /* memory */
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "msync", "mincore", "membarrier",
    /* threads, time, signals */
    "futex", "futex_waitv", "clone", "clone3", "set_robust_list", "get_robust_list", "rseq", "exit", "exit_group",
    "gettid", "getpid", "getppid", "tgkill", "tkill", "sched_yield", "sched_getaffinity", "sched_setaffinity", "getcpu",
    "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday", "time", "getrandom",
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigtimedwait", "rt_sigpending", "sigaltstack", "restart_syscall",
    "prctl", "getrlimit", "prlimit64", "getrusage", "uname", "sysinfo", "getpriority", "setpriority",
    /* identity (read only) */
    "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups", "capget",
    /* descriptors and files */
    "read", "write", "pread64", "pwrite64", "readv", "writev", "preadv", "pwritev", "preadv2", "pwritev2",
    "lseek", "open", "openat", "close", "close_range", "dup", "dup2", "dup3", "pipe", "pipe2", "fcntl", "ioctl", "flock",
    "fstat", "newfstatat", "stat", "lstat", "statx", "fstatfs", "statfs", "readlink", "readlinkat", "getdents64", "getcwd",
    "access", "faccessat", "faccessat2", "fsync", "fdatasync", "sync_file_range", "fallocate", "ftruncate",
    "unlink", "unlinkat", "mkdir", "mkdirat", "umask", "chmod", "fchmod", "fchmodat", "chown", "fchown", "fchownat", "lchown",
    "rename", "renameat", "renameat2",
    /* sockets: guests' vhost-user, the control socket, metrics, systemd's notify */
    "socket", "socketpair", "bind", "listen", "accept", "accept4", "connect", "shutdown",
    "recvfrom", "recvmsg", "recvmmsg", "sendto", "sendmsg", "sendmmsg", "getsockopt", "setsockopt", "getsockname", "getpeername",
    /* waiting */
    "eventfd", "eventfd2", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
    "poll", "ppoll", "select", "pselect6", "timerfd_create", "timerfd_settime", "timerfd_gettime",
    /* io_uring: the data device's and the host mount's rings */
    "io_uring_setup", "io_uring_enter", "io_uring_register",
};

int csandbox_allowed_count(void) { return (int)(sizeof allowed / sizeof allowed[0]); }

const char *csandbox_allowed_name(int i) {
    return i >= 0 && i < csandbox_allowed_count() ? allowed[i] : NULL;
}

int csandbox_load_seccomp(int log_only) {
    scmp_filter_ctx filter = seccomp_init(log_only ? SCMP_ACT_LOG : SCMP_ACT_KILL_PROCESS);
    if (!filter) return -ENOMEM;
    int rc = seccomp_attr_set(filter, SCMP_FLTATR_CTL_TSYNC, 1);
    for (int i = 0; rc == 0 && i < csandbox_allowed_count(); i++) {
        int number = seccomp_syscall_resolve_name(allowed[i]);
        if (number == __NR_SCMP_ERROR) continue;
        rc = seccomp_rule_add(filter, SCMP_ACT_ALLOW, number, 0);
    }
    if (rc == 0) rc = seccomp_load(filter);
    seccomp_release(filter);
    return rc;
}

long csandbox_forbidden_call(void) { return syscall(SYS_personality, 0xffffffffUL); }

/* ---- A helper process outside the sandbox ------------------------------ */

pid_t csandbox_spawn_with_pipe(const char *path, char *const argv[], int *request_fd) {
    int ends[2];
    if (pipe2(ends, O_CLOEXEC) != 0) return -errno;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, ends[0], STDIN_FILENO);
    /* Nothing of the daemon's (pool, /dev/fuse, sockets) may live on in the helper. */
    posix_spawn_file_actions_addclosefrom_np(&actions, STDERR_FILENO + 1);
    extern char **environ;
    pid_t pid = -1;
    int rc = posix_spawn(&pid, path, &actions, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    close(ends[0]);
    if (rc != 0) { close(ends[1]); return -rc; }
    *request_fd = ends[1];
    return pid;
}
