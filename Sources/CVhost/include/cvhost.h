/* C helpers for the vhost-user backend: SCM_RIGHTS messages (CMSG_* are
 * macros Swift cannot call), memory-ordering primitives for shared rings, and
 * eventfd/poll wrappers. */
#ifndef CVHOST_H
#define CVHOST_H

#include <stddef.h>
#include <stdint.h>

/* Receives up to `capacity` bytes and up to `max_fds` descriptors in one
 * message; returns bytes received, 0 on EOF, -errno on error. */
long cvhost_recv_with_fds(int sock, void *buf, size_t capacity, int *fds, int max_fds, int *nfds);
/* Receives exactly `length` bytes (message payload), -errno on error, 0 on EOF. */
long cvhost_recv_exact(int sock, void *buf, size_t length);
long cvhost_send(int sock, const void *buf, size_t length);
/* Sends a message with descriptors attached (SCM_RIGHTS); used by front ends (tests, benchmarks). */
long cvhost_send_with_fds(int sock, const void *buf, size_t length, const int *fds, int nfds);
/* A memfd of `size` bytes (guest memory for a front end); -errno on failure. */
int cvhost_memfd(const char *name, uint64_t size);

static inline uint16_t cvhost_load_acquire_u16(const volatile uint16_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void cvhost_store_release_u16(volatile uint16_t *p, uint16_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint16_t cvhost_load_u16(const volatile uint16_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline int32_t cvhost_load_acquire_i32(const volatile int32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void cvhost_store_release_i32(volatile int32_t *p, int32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void cvhost_full_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* For the polling option: a spin-wait hint (Swift reads the clock through PMFSConcurrency). */
static inline void cvhost_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* accept4 with SOCK_CLOEXEC (not visible to Swift without _GNU_SOURCE). */
int cvhost_accept(int listen_fd);
int cvhost_eventfd(void);
/* Waits until `fd1` or `fd2` is readable; returns a bit mask (1, 2), 0 on timeout, -errno. */
int cvhost_wait2(int fd1, int fd2, int timeout_ms);
/* Reads (drains) an eventfd counter; returns the value or 0. */
uint64_t cvhost_eventfd_drain(int fd);
int cvhost_eventfd_signal(int fd);
/* Whether a descriptor is an eventfd (the only kind a ring's kick, call and
 * error fds may be: a pipe could block a worker or raise SIGPIPE). */
int cvhost_is_eventfd(int fd);
/* Sets O_NONBLOCK (shared with the front end's copy, which QEMU sets anyway). */
int cvhost_set_nonblocking(int fd);

/* Guest memory that shrinks under its mapping (guard.c). A region whose file
 * may shrink is registered; a SIGBUS inside it gets a zero page mapped over
 * the faulting page and marks the slot faulted, any other SIGBUS goes to the
 * previous handler or the default action. Bounded: CVHOST_GUARD_SLOTS ranges. */
#define CVHOST_GUARD_SLOTS 256
struct cvhost_guard_slot {
    uint32_t state;      /* free, being written, live */
    uint32_t faulted;
    uintptr_t start, end, granule;
};
struct cvhost_guard_table { struct cvhost_guard_slot slots[CVHOST_GUARD_SLOTS]; };
/* The process table (installs the handler once): a slot index, or -ENOSPC
 * when full, -EINVAL for a range not aligned to `granule`, -errno if the
 * handler cannot be installed. */
int cvhost_guard_register(void *start, size_t length, size_t granule);
/* Before the range is unmapped. */
void cvhost_guard_unregister(int slot);
int cvhost_guard_faulted(int slot);
/* How many faults the handler has absorbed in this process (only grows): a
 * relaxed load, so the request path can look at it cheaply. */
extern uint64_t cvhost_guard_faults;
static inline uint64_t cvhost_guard_fault_count(void) { return __atomic_load_n(&cvhost_guard_faults, __ATOMIC_RELAXED); }
/* The same registry on a table of one's own (tests of its limits). */
int cvhost_guard_table_register(struct cvhost_guard_table *t, void *start, size_t length, size_t granule);
void cvhost_guard_table_unregister(struct cvhost_guard_table *t, int slot);
int cvhost_guard_table_faulted(const struct cvhost_guard_table *t, int slot);
/* Whether fd is a memfd sealed against shrinking (F_SEAL_SHRINK). */
int cvhost_cannot_shrink(int fd);
/* The page size of fd's mappings: the huge page size on hugetlbfs. */
size_t cvhost_mapping_granule(int fd);
/* A memfd of `size` bytes that allows sealing, sealed against shrinking if
 * `seal_shrink` (as QEMU's memory-backend-memfd does); -errno on failure. */
int cvhost_memfd_sealable(const char *name, uint64_t size, int seal_shrink);

/* A memfd of `size` bytes on huge pages (MFD_HUGETLB, as QEMU's
 * memory-backend-memfd hugetlb=on makes); -errno on failure. */
int cvhost_memfd_huge(const char *name, uint64_t size);

#endif
