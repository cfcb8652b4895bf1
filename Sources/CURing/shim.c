#define _GNU_SOURCE 1
#include "curing.h"
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/sysinfo.h>
#include <errno.h>
#include <string.h>

int curing_init(struct io_uring *ring, unsigned entries) {
    return io_uring_queue_init(entries, ring, 0);
}

void curing_exit(struct io_uring *ring) { io_uring_queue_exit(ring); }

int curing_register_file(struct io_uring *ring, int fd) {
    return io_uring_register_files(ring, &fd, 1);
}

static struct io_uring_sqe *sqe_for(struct io_uring *ring, int fixed_file, uint64_t tag) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return NULL;
    io_uring_sqe_set_data64(sqe, tag);
    (void)fixed_file;
    return sqe;
}

int curing_queue_vectored(struct io_uring *ring, int write, int fd, int fixed_file, const struct iovec *iov,
                          unsigned count, uint64_t offset, uint64_t tag) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    int target = fixed_file ? 0 : fd;
    if (write)
        io_uring_prep_writev(sqe, target, iov, count, offset);
    else
        io_uring_prep_readv(sqe, target, iov, count, offset);
    io_uring_sqe_set_data64(sqe, tag);
    if (fixed_file) sqe->flags |= IOSQE_FIXED_FILE;
    return 0;
}

int curing_queue_fsync(struct io_uring *ring, int fd, int fixed_file, int datasync, uint64_t tag) {
    struct io_uring_sqe *sqe = sqe_for(ring, fixed_file, tag);
    if (!sqe) return -EBUSY;
    io_uring_prep_fsync(sqe, fixed_file ? 0 : fd, datasync ? IORING_FSYNC_DATASYNC : 0);
    io_uring_sqe_set_data64(sqe, tag);
    if (fixed_file) sqe->flags |= IOSQE_FIXED_FILE;
    return 0;
}

int curing_queue_fsync_after_all(struct io_uring *ring, int fd, int fixed_file, int datasync, uint64_t tag) {
    struct io_uring_sqe *sqe = sqe_for(ring, fixed_file, tag);
    if (!sqe) return -EBUSY;
    io_uring_prep_fsync(sqe, fixed_file ? 0 : fd, datasync ? IORING_FSYNC_DATASYNC : 0);
    io_uring_sqe_set_data64(sqe, tag);
    sqe->flags |= IOSQE_IO_DRAIN;   /* starts after everything queued before it */
    if (fixed_file) sqe->flags |= IOSQE_FIXED_FILE;
    return 0;
}

int curing_submit_and_wait(struct io_uring *ring, unsigned wait_for) {
    return io_uring_submit_and_wait(ring, wait_for);
}

unsigned curing_reap(struct io_uring *ring, uint64_t *tags, int32_t *results, unsigned max) {
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(ring, head, cqe) {
        if (n == max) break;
        tags[n] = io_uring_cqe_get_data64(cqe);
        results[n] = cqe->res;
        n++;
    }
    io_uring_cq_advance(ring, n);
    return n;
}

int curing_init_sqe128(struct io_uring *ring, unsigned entries) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    /* One thread submits and reaps; task work (handing it the next request)
     * runs when it enters the kernel anyway, without an interrupt. */
    p.flags = IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    int rc = io_uring_queue_init_params(entries, ring, &p);
    if (rc == -EINVAL) {
        memset(&p, 0, sizeof p);
        p.flags = IORING_SETUP_SQE128;
        rc = io_uring_queue_init_params(entries, ring, &p);
    }
    return rc;
}

int curing_queue_uring_cmd(struct io_uring *ring, uint32_t cmd_op, const void *cmd, unsigned cmd_len,
                           const struct iovec *iov, unsigned iov_count, uint64_t tag) {
    if (!(ring->flags & IORING_SETUP_SQE128) || cmd_len > 80) return -EINVAL;
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    memset(sqe, 0, 128);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->flags = IOSQE_FIXED_FILE;
    sqe->fd = 0;
    sqe->cmd_op = cmd_op;
    sqe->addr = (uint64_t)(uintptr_t)iov;
    sqe->len = iov_count;
    memcpy(sqe->cmd, cmd, cmd_len);
    io_uring_sqe_set_data64(sqe, tag);
    return 0;
}

int curing_queue_read(struct io_uring *ring, int fd, void *buffer, unsigned len, uint64_t tag) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_read(sqe, fd, buffer, len, 0);
    if (ring->flags & IORING_SETUP_SQE128) memset(sqe->cmd, 0, 80);
    io_uring_sqe_set_data64(sqe, tag);
    return 0;
}

int curing_eventfd(void) { return eventfd(0, EFD_CLOEXEC); }

int curing_pin_to_cpu(int cpu) {
    if (cpu < 0 || cpu >= CPU_SETSIZE) return EINVAL;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set) == 0 ? 0 : errno;
}

int curing_possible_cpus(void) { return get_nprocs_conf(); }
