/* Thin C shims over liburing for Swift: liburing's header needs feature macros
 * set first, its flags are macros, and a few helpers are easier to call as
 * plain functions with simple types. */
#ifndef CURING_H
#define CURING_H

#include <features.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>
#include <liburing.h>

/* Swift's Glibc does not export O_DIRECT. */
static const int curing_O_DIRECT = __O_DIRECT;

/* The f_type of the file system under `fd` (fstatfs; Swift's Glibc lacks
 * sys/vfs.h), or -errno. */
long curing_file_system_type(int fd);

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
/* Whether completions are ready or about to be (task work pending). */
bool curing_work_pending(struct io_uring *ring);
/* Copies out up to `max` ready completions without a syscall; returns how many. */
unsigned curing_reap(struct io_uring *ring, uint64_t *tags, int32_t *results, unsigned max);

/* The data engine's ring: `fd` registered as file 0, and restricted (see
 * restrict_and_enable) to READV and WRITEV on it. 0 or -errno. */
int curing_init_data_ring(struct io_uring *ring, unsigned entries, int fd);
/* FUSE over io_uring: a ring with 128-byte SQEs (the command needs their
 * 80-byte area), set up for one issuing thread (plain SQE128 where the kernel
 * refuses the extra flags); /dev/fuse registered as file 0 and the wake
 * eventfd as file 1; restricted to URING_CMD and READ on those. 0 or -errno. */
int curing_init_fuse_ring(struct io_uring *ring, unsigned entries, int fuse_fd, int wake_fd);
/* Queues an IORING_OP_URING_CMD on registered file 0: `cmd_op` with `cmd_len`
 * (<= 80) bytes of command data and an iovec array (header, payload). Liburing
 * 2.3 has no io_uring_prep_cmd, so the SQE is filled here by hand. */
int curing_queue_uring_cmd(struct io_uring *ring, uint32_t cmd_op, const void *cmd, unsigned cmd_len,
                           const struct iovec *iov, unsigned iov_count, uint64_t tag);
/* Queues a read(2) of `len` bytes from registered file `index` into `buffer`
 * (an eventfd's counter). */
int curing_queue_read_fixed(struct io_uring *ring, int index, void *buffer, unsigned len, uint64_t tag);

/* What the rings must refuse, for the tests: a read of an unregistered
 * descriptor, a NOP (flagged fixed-file), replacing registered file `index`. */
int curing_queue_plain_read(struct io_uring *ring, int fd, void *buffer, unsigned len, uint64_t tag);
int curing_queue_nop(struct io_uring *ring, uint64_t tag);
int curing_update_file(struct io_uring *ring, unsigned index, int fd);

/* For the FUSE ring queues: an eventfd (CLOEXEC), pinning the calling thread
 * to one CPU (0 or errno), and the count of possible CPUs (get_nprocs_conf). */
int curing_eventfd(void);
int curing_pin_to_cpu(int cpu);
int curing_possible_cpus(void);

#endif
