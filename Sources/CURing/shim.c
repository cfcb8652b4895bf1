#define _GNU_SOURCE 1
#include "curing.h"
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <sys/sysinfo.h>
#include <sys/vfs.h>
#include <errno.h>
#include <string.h>

long curing_file_system_type(int fd) {
    struct statfs s;
    return fstatfs(fd, &s) == 0 ? (long)s.f_type : -errno;
}

int curing_init(struct io_uring *ring, unsigned entries) {
    return io_uring_queue_init(entries, ring, 0);
}

void curing_exit(struct io_uring *ring) { io_uring_queue_exit(ring); }

int curing_register_file(struct io_uring *ring, int fd) {
    return io_uring_register_files(ring, &fd, 1);
}

/* A ring set up with IORING_SETUP_R_DISABLED, its files registered, is
 * limited before its first submission (seccomp never sees what a ring does):
 * only the `ops` given, only on registered files, and no registration after
 * this. Then it is enabled. */
static int restrict_and_enable(struct io_uring *ring, const unsigned char *ops, unsigned n_ops) {
    struct io_uring_restriction res[8];
    unsigned n = 0;
    memset(res, 0, sizeof res);
    for (unsigned i = 0; i < n_ops && n < 6; i++, n++) {
        res[n].opcode = IORING_RESTRICTION_SQE_OP;
        res[n].sqe_op = ops[i];
    }
    res[n].opcode = IORING_RESTRICTION_SQE_FLAGS_ALLOWED;
    res[n++].sqe_flags = IOSQE_FIXED_FILE;
    res[n].opcode = IORING_RESTRICTION_SQE_FLAGS_REQUIRED;
    res[n++].sqe_flags = IOSQE_FIXED_FILE;
    /* Debian's liburing 2.3 declares io_uring_register_restrictions and
     * io_uring_enable_rings but does not export them: the system call itself. */
    if (syscall(__NR_io_uring_register, ring->ring_fd, IORING_REGISTER_RESTRICTIONS, res, n) < 0) return -errno;
    if (syscall(__NR_io_uring_register, ring->ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0) < 0) return -errno;
    return 0;
}

int curing_init_data_ring(struct io_uring *ring, unsigned entries, int fd) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_R_DISABLED;
    int rc = io_uring_queue_init_params(entries, ring, &p);
    if (rc < 0) return rc;
    static const unsigned char ops[] = { IORING_OP_READV, IORING_OP_WRITEV };
    rc = io_uring_register_files(ring, &fd, 1);
    if (rc == 0) rc = restrict_and_enable(ring, ops, 2);
    if (rc < 0) io_uring_queue_exit(ring);
    return rc;
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

bool curing_work_pending(struct io_uring *ring) {
    /* With COOP_TASKRUN a request the kernel handed us may still sit in task
     * work, posted as a completion only when we next enter: the flag says so. */
    return io_uring_cq_ready(ring) > 0 || (IO_URING_READ_ONCE(*ring->sq.kflags) & IORING_SQ_TASKRUN);
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

int curing_init_fuse_ring(struct io_uring *ring, unsigned entries, int fuse_fd, int wake_fd) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    /* One thread submits and reaps; task work (handing it the next request)
     * runs when it enters the kernel anyway, without an interrupt. */
    p.flags = IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG
            | IORING_SETUP_R_DISABLED;
    int rc = io_uring_queue_init_params(entries, ring, &p);
    if (rc == -EINVAL) {
        memset(&p, 0, sizeof p);
        p.flags = IORING_SETUP_SQE128 | IORING_SETUP_R_DISABLED;
        rc = io_uring_queue_init_params(entries, ring, &p);
    }
    if (rc < 0) return rc;
    int files[2] = { fuse_fd, wake_fd };
    static const unsigned char ops[] = { IORING_OP_URING_CMD, IORING_OP_READ };
    rc = io_uring_register_files(ring, files, 2);
    if (rc == 0) rc = restrict_and_enable(ring, ops, 2);
    if (rc < 0) io_uring_queue_exit(ring);
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

int curing_queue_read_fixed(struct io_uring *ring, int index, void *buffer, unsigned len, uint64_t tag) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_read(sqe, index, buffer, len, 0);
    sqe->flags |= IOSQE_FIXED_FILE;
    if (ring->flags & IORING_SETUP_SQE128) memset(sqe->cmd, 0, 80);
    io_uring_sqe_set_data64(sqe, tag);
    return 0;
}

int curing_queue_plain_read(struct io_uring *ring, int fd, void *buffer, unsigned len, uint64_t tag) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_read(sqe, fd, buffer, len, 0);
    if (ring->flags & IORING_SETUP_SQE128) memset(sqe->cmd, 0, 80);
    io_uring_sqe_set_data64(sqe, tag);
    return 0;
}

int curing_queue_nop(struct io_uring *ring, uint64_t tag) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_nop(sqe);
    sqe->flags |= IOSQE_FIXED_FILE;
    if (ring->flags & IORING_SETUP_SQE128) memset(sqe->cmd, 0, 80);
    io_uring_sqe_set_data64(sqe, tag);
    return 0;
}

int curing_update_file(struct io_uring *ring, unsigned index, int fd) {
    return io_uring_register_files_update(ring, index, &fd, 1);
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
