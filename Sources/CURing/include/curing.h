/* Thin C shims over liburing for Swift: liburing's header needs feature macros
 * set first, its flags are macros, and a few helpers are easier to call as
 * plain functions with simple types. */
#ifndef CURING_H
#define CURING_H

#include <features.h>
#include <stdint.h>
#include <sys/uio.h>
#include <liburing.h>

/* Swift's Glibc does not export O_DIRECT. */
static const int curing_O_DIRECT = __O_DIRECT;

/* Creates a ring with `entries` submission slots; 0 or -errno. */
int curing_init(struct io_uring *ring, unsigned entries);
void curing_exit(struct io_uring *ring);
int curing_register_file(struct io_uring *ring, int fd);

/* Queues a readv (write = 0) or writev (write = 1) of `count` iovecs. */
int curing_queue_vectored(struct io_uring *ring, int write, int fd, int fixed_file, const struct iovec *iov,
                          unsigned count, uint64_t offset, uint64_t tag);
int curing_queue_fsync(struct io_uring *ring, int fd, int fixed_file, int datasync, uint64_t tag);
/* An fdatasync that starts only after every request queued before it completed
 * (IOSQE_IO_DRAIN): writes and their flush in one submission. */
int curing_queue_fsync_after_all(struct io_uring *ring, int fd, int fixed_file, int datasync, uint64_t tag);

/* Submits what is queued and waits until at least `wait_for` completions are
 * ready; returns submitted count or -errno. */
int curing_submit_and_wait(struct io_uring *ring, unsigned wait_for);
/* Copies out up to `max` ready completions without a syscall; returns how many. */
unsigned curing_reap(struct io_uring *ring, uint64_t *tags, int32_t *results, unsigned max);

#endif
