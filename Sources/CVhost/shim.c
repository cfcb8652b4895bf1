#define _GNU_SOURCE
#include <time.h>
#include "cvhost.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

long cvhost_recv_with_fds(int sock, void *buf, size_t capacity, int *fds, int max_fds, int *nfds) {
    char control[CMSG_SPACE(sizeof(int) * 16)];
    struct iovec iov = { buf, capacity };
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    long n;
    do { n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC); } while (n < 0 && errno == EINTR);
    if (n < 0) return -errno;
    *nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *received = (int *)CMSG_DATA(c);
        for (int i = 0; i < count; i++) {
            if (*nfds < max_fds) fds[(*nfds)++] = received[i];
            else close(received[i]);   /* more than we accept: do not leak them */
        }
    }
    return n;
}

long cvhost_recv_exact(int sock, void *buf, size_t length) {
    size_t done = 0;
    while (done < length) {
        long n = recv(sock, (char *)buf + done, length - done, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -errno;
        if (n == 0) return 0;
        done += (size_t)n;
    }
    return (long)done;
}

long cvhost_send(int sock, const void *buf, size_t length) {
    size_t done = 0;
    while (done < length) {
        long n = send(sock, (const char *)buf + done, length - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -errno;
        done += (size_t)n;
    }
    return (long)done;
}

/* For cvhost_wait2's own deadline. */
static uint64_t cvhost_monotonic_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

int cvhost_accept(int listen_fd) { return accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC); }

int cvhost_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

int cvhost_wait2(int fd1, int fd2, int timeout_ms) {
    struct pollfd p[2] = { { fd1, POLLIN, 0 }, { fd2, POLLIN, 0 } };
    /* A signal (a timer, SIGHUP) is not a timeout: wait out the rest. */
    uint64_t deadline = cvhost_monotonic_ns() + (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms) * 1000000u;
    int n;
    while ((n = poll(p, 2, timeout_ms)) < 0 && errno == EINTR) {   /* negative descriptors are ignored */
        if (timeout_ms < 0) continue;
        uint64_t now = cvhost_monotonic_ns();
        timeout_ms = now >= deadline ? 0 : (int)((deadline - now + 999999u) / 1000000u);
    }
    if (n < 0) return -errno;
    int mask = 0;
    if (p[0].revents) mask |= 1;
    if (p[1].revents) mask |= 2;
    return mask;
}

uint64_t cvhost_eventfd_drain(int fd) {
    uint64_t v = 0;
    if (read(fd, &v, sizeof v) != sizeof v) return 0;
    return v;
}

int cvhost_eventfd_signal(int fd) {
    uint64_t one = 1;
    return write(fd, &one, sizeof one) == sizeof one ? 0 : -errno;
}

long cvhost_send_with_fds(int sock, const void *buf, size_t length, const int *fds, int nfds) {
    char control[CMSG_SPACE(sizeof(int) * 16)];
    if (nfds < 0 || nfds > 16) return -EINVAL;
    struct iovec iov = { (void *)buf, length };
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (nfds > 0) {
        memset(control, 0, sizeof control);
        msg.msg_control = control;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    long n;
    do { n = sendmsg(sock, &msg, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    if (n < 0) return -errno;
    if ((size_t)n < length) {   /* the rest without descriptors */
        long rest = cvhost_send(sock, (const char *)buf + n, length - (size_t)n);
        if (rest < 0) return rest;
        n += rest;
    }
    return n;
}

int cvhost_memfd(const char *name, uint64_t size) {
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0) return -errno;
    if (ftruncate(fd, (off_t)size) != 0) { int e = errno; close(fd); return -e; }
    return fd;
}

int cvhost_is_eventfd(int fd) {
    char path[64], target[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, target, sizeof target - 1);
    if (n >= 0) {
        target[n] = 0;
        return strcmp(target, "anon_inode:[eventfd]") == 0;
    }
    /* No /proc (a confined daemon): at least an anonymous inode, never a pipe,
     * socket or file (writes to the other kinds fail at once). */
    struct stat st;
    return fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == 0;
}

int cvhost_set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    return flags < 0 ? -errno : (fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0 ? -errno : 0);
}

int cvhost_memfd_sealable(const char *name, uint64_t size, int seal_shrink) {
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return -errno;
    if (ftruncate(fd, (off_t)size) != 0 || (seal_shrink && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) != 0)) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int cvhost_memfd_huge(const char *name, uint64_t size) {
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_HUGETLB);
    if (fd < 0) return -errno;
    if (ftruncate(fd, (off_t)size) != 0) { int e = errno; close(fd); return -e; }
    return fd;
}
