/* Guest memory that shrinks under its mapping. A front end may ftruncate the
 * memfd or file behind a region after we mapped it; touching the lost pages
 * then raises SIGBUS, which would kill the daemon and every other guest it
 * serves. Regions that can shrink are registered here; the SIGBUS handler
 * puts an anonymous zero page over a faulting page inside one (so the access
 * completes), marks the range faulted, and leaves the backend to drop that
 * front end. Any other SIGBUS keeps its old meaning: the previous handler, or
 * the default action (death with a core).
 *
 * Everything the handler touches is a fixed array of atomics: no locks, no
 * allocation, only mmap and sigaction/raise as system calls. */
#define _GNU_SOURCE
#include "cvhost.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ucontext.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

enum { SLOT_FREE = 0, SLOT_BUSY = 1, SLOT_LIVE = 2 };

static struct cvhost_guard_table process_table;
uint64_t cvhost_guard_faults;
static struct sigaction previous_action;
static pthread_once_t install_once = PTHREAD_ONCE_INIT;
static int install_error;

int cvhost_guard_table_register(struct cvhost_guard_table *t, void *start, size_t length, size_t granule) {
    if (length == 0 || granule == 0 || (granule & (granule - 1)) != 0) return -EINVAL;
    uintptr_t begin = (uintptr_t)start;
    if (begin & (granule - 1) || begin + length < begin) return -EINVAL;
    for (int i = 0; i < CVHOST_GUARD_SLOTS; i++) {
        struct cvhost_guard_slot *s = &t->slots[i];
        uint32_t expected = SLOT_FREE;
        if (!__atomic_compare_exchange_n(&s->state, &expected, SLOT_BUSY, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) continue;
        __atomic_store_n(&s->start, begin, __ATOMIC_RELAXED);
        __atomic_store_n(&s->end, begin + length, __ATOMIC_RELAXED);
        __atomic_store_n(&s->granule, granule, __ATOMIC_RELAXED);
        __atomic_store_n(&s->faulted, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&s->state, SLOT_LIVE, __ATOMIC_RELEASE);
        return i;
    }
    return -ENOSPC;
}

void cvhost_guard_table_unregister(struct cvhost_guard_table *t, int slot) {
    if (slot < 0 || slot >= CVHOST_GUARD_SLOTS) return;
    struct cvhost_guard_slot *s = &t->slots[slot];
    __atomic_store_n(&s->state, SLOT_BUSY, __ATOMIC_RELEASE);
    __atomic_store_n(&s->start, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&s->end, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&s->state, SLOT_FREE, __ATOMIC_RELEASE);
}

int cvhost_guard_table_faulted(const struct cvhost_guard_table *t, int slot) {
    if (slot < 0 || slot >= CVHOST_GUARD_SLOTS) return 0;
    return (int)__atomic_load_n(&t->slots[slot].faulted, __ATOMIC_RELAXED);
}

/* The live slot holding `address`, or -1. */
static int slot_holding(struct cvhost_guard_table *t, uintptr_t address) {
    for (int i = 0; i < CVHOST_GUARD_SLOTS; i++) {
        struct cvhost_guard_slot *s = &t->slots[i];
        if (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) != SLOT_LIVE) continue;
        uintptr_t start = __atomic_load_n(&s->start, __ATOMIC_RELAXED);
        uintptr_t end = __atomic_load_n(&s->end, __ATOMIC_RELAXED);
        if (address >= start && address < end) return i;
    }
    return -1;
}

/* Not ours: what would have happened without us. The previous handler runs
 * with the signal mask it asked for (Swift's crash reporter, for one, needs
 * SIGBUS unblocked: it reads the crashed thread's memory carefully). With
 * none, a fault re-executes the access on return and the default action
 * follows at once. */
static void pass_on(int sig, siginfo_t *info, void *context) {
    void (*handler)(int) = previous_action.sa_handler;
    int with_info = (previous_action.sa_flags & SA_SIGINFO) && previous_action.sa_sigaction;
    if (with_info || (!(previous_action.sa_flags & SA_SIGINFO) && handler != SIG_DFL && handler != SIG_IGN)) {
        sigset_t mask = ((ucontext_t *)context)->uc_sigmask, before;
        for (int s = 1; s < NSIG; s++) if (sigismember(&previous_action.sa_mask, s) == 1) sigaddset(&mask, s);
        if (previous_action.sa_flags & SA_NODEFER) sigdelset(&mask, sig); else sigaddset(&mask, sig);
        pthread_sigmask(SIG_SETMASK, &mask, &before);
        if (with_info) previous_action.sa_sigaction(sig, info, context); else handler(sig);
        pthread_sigmask(SIG_SETMASK, &before, NULL);
        return;
    }
    struct sigaction fallback;
    memset(&fallback, 0, sizeof fallback);
    fallback.sa_handler = SIG_DFL;
    sigaction(SIGBUS, &fallback, NULL);
    raise(SIGBUS);   /* pending until the handler returns (SIGBUS is blocked in it) */
}

static void on_sigbus(int sig, siginfo_t *info, void *context) {
    int saved_errno = errno;
    int slot = info->si_code == BUS_ADRERR ? slot_holding(&process_table, (uintptr_t)info->si_addr) : -1;
    if (slot >= 0) {
        struct cvhost_guard_slot *s = &process_table.slots[slot];
        uintptr_t granule = __atomic_load_n(&s->granule, __ATOMIC_RELAXED);
        uintptr_t page = (uintptr_t)info->si_addr & ~(granule - 1);
        void *p = mmap((void *)page, granule, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED) {
            __atomic_store_n(&s->faulted, 1, __ATOMIC_RELAXED);
            __atomic_fetch_add(&cvhost_guard_faults, 1, __ATOMIC_RELAXED);
            errno = saved_errno;
            return;
        }
    }
    pass_on(sig, info, context);
    errno = saved_errno;
}

static void install(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_sigbus;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
    sigemptyset(&action.sa_mask);
    /* The previous handler is known before ours can run and need it. */
    if (sigaction(SIGBUS, NULL, &previous_action) != 0 || sigaction(SIGBUS, &action, NULL) != 0) install_error = errno;
}

int cvhost_guard_register(void *start, size_t length, size_t granule) {
    pthread_once(&install_once, install);
    if (install_error) return -install_error;
    return cvhost_guard_table_register(&process_table, start, length, granule);
}

void cvhost_guard_unregister(int slot) { cvhost_guard_table_unregister(&process_table, slot); }

int cvhost_guard_faulted(int slot) { return cvhost_guard_table_faulted(&process_table, slot); }

int cvhost_cannot_shrink(int fd) {
    int seals = fcntl(fd, F_GET_SEALS);
    return seals >= 0 && (seals & F_SEAL_SHRINK) != 0;
}

size_t cvhost_mapping_granule(int fd) {
    struct statfs fs;
    struct stat st;
    if (fstatfs(fd, &fs) == 0 && fs.f_type == HUGETLBFS_MAGIC && fstat(fd, &st) == 0 && st.st_blksize > 0)
        return (size_t)st.st_blksize;
    return (size_t)sysconf(_SC_PAGESIZE);
}
