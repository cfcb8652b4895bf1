/*
 * gt: the guest's small test tool. Built static on the host by build.sh and put
 * in the initramfs as /bin/gt, for what busybox cannot do: a nanosecond clock,
 * fsync, extended attributes, shared mmap, and timed benchmark loops.
 *
 *   gt now                         monotonic clock in nanoseconds
 *   gt fsync FILE | fdatasync FILE open, fsync/fdatasync, close
 *   gt setxattr FILE NAME VALUE    set a user xattr
 *   gt getxattr FILE NAME          print its value
 *   gt listxattr FILE              print the names, one a line
 *   gt removexattr FILE NAME
 *   gt mmap FILE SIZE              write a pattern through a shared mapping, msync,
 *                                  then read it back with pread and compare
 *   gt bench KIND DIR N            time N operations, print
 *                                  "PMFS-GUEST: BENCH KIND median_us n=N p10=.. p90=.. mean=.."
 *       KIND: write_fsync_4k create_close stat unlink mkdir rmdir open_close read_4k
 *       stat, unlink and open_close first create N files (untimed), then drop the
 *       guest's caches, so each timed operation starts with a LOOKUP on the back end.
 *
 * Exit status: 0 ok, 1 failure (message on stderr), 2 usage, 77 not supported
 * (ENOTSUP/EOPNOTSUPP/ENOSYS: the caller reports SKIP).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

enum { EXIT_UNSUPPORTED = 77 };

static int unsupported(int e) { return e == ENOTSUP || e == EOPNOTSUPP || e == ENOSYS; }

static int fail(const char *what, const char *path) {
    int e = errno;
    fprintf(stderr, "gt: %s %s: %s\n", what, path ? path : "", strerror(e));
    return unsupported(e) ? EXIT_UNSUPPORTED : 1;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int do_fsync(const char *path, int data_only) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return fail("open", path);
    if ((data_only ? fdatasync(fd) : fsync(fd)) != 0) { int r = fail("fsync", path); close(fd); return r; }
    close(fd);
    return 0;
}

static int do_mmap(const char *path, size_t size) {
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return fail("open", path);
    if (ftruncate(fd, (off_t)size) != 0) return fail("ftruncate", path);
    unsigned char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return fail("mmap", path);
    for (size_t i = 0; i < size; i++) p[i] = (unsigned char)(i * 31u + 7u);
    if (msync(p, size, MS_SYNC) != 0) return fail("msync", path);
    munmap(p, size);
    close(fd);
    /* Read back through a fresh descriptor with plain reads. */
    fd = open(path, O_RDONLY);
    if (fd < 0) return fail("reopen", path);
    unsigned char buf[4096];
    size_t done = 0;
    while (done < size) {
        ssize_t n = pread(fd, buf, sizeof buf, (off_t)done);
        if (n < 0) return fail("pread", path);
        if (n == 0) { fprintf(stderr, "gt: short file %s: %zu of %zu bytes\n", path, done, size); return 1; }
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] != (unsigned char)((done + (size_t)i) * 31u + 7u)) {
                fprintf(stderr, "gt: mmap data mismatch at byte %zu\n", done + (size_t)i);
                return 1;
            }
        done += (size_t)n;
    }
    close(fd);
    return 0;
}

static void name_of(char *out, size_t cap, const char *dir, long i) {
    snprintf(out, cap, "%s/b%06ld", dir, i);
}

/* Empty the guest's dentry, inode and page caches, so the timed loop that follows
 * reaches the back end (its LOOKUPs and GETATTRs) instead of the guest's caches. */
static void drop_caches(void) {
    sync();
    int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);
    if (fd >= 0) {
        if (write(fd, "3\n", 2) != 2) perror("gt: drop_caches");
        close(fd);
    }
}

/* Untimed setup for kinds that need existing files. */
static int make_files(const char *dir, long n) {
    char path[4096];
    for (long i = 0; i < n; i++) {
        name_of(path, sizeof path, dir, i);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) return fail("create", path);
        if (write(fd, path, 16) != 16) return fail("write", path);
        close(fd);
    }
    return 0;
}

static int remove_files(const char *dir, long n) {
    char path[4096];
    for (long i = 0; i < n; i++) {
        name_of(path, sizeof path, dir, i);
        if (unlink(path) != 0 && errno != ENOENT) return fail("unlink", path);
    }
    return 0;
}

static int do_bench(const char *kind, const char *dir, long n) {
    if (n <= 0) { fprintf(stderr, "gt: N must be positive\n"); return 2; }
    uint64_t *t = calloc((size_t)n, sizeof *t);
    if (!t) return fail("calloc", NULL);
    char path[4096], buf[4096];
    memset(buf, 0xa5, sizeof buf);
    int rc = 0, fd = -1;

    int needs_files = !strcmp(kind, "stat") || !strcmp(kind, "unlink") || !strcmp(kind, "open_close");
    if (needs_files) {
        if ((rc = make_files(dir, n)) != 0) return rc;
        drop_caches();
    }
    if (!strcmp(kind, "rmdir"))
        for (long i = 0; i < n; i++) {
            name_of(path, sizeof path, dir, i);
            if (mkdir(path, 0755) != 0) return fail("mkdir", path);
        }
    if (!strcmp(kind, "write_fsync_4k") || !strcmp(kind, "read_4k")) {
        snprintf(path, sizeof path, "%s/bench.dat", dir);
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) return fail("create", path);
        if (!strcmp(kind, "read_4k")) {
            for (long i = 0; i < n; i++)
                if (pwrite(fd, buf, sizeof buf, (off_t)i * 4096) != (ssize_t)sizeof buf) return fail("pwrite", path);
            if (fsync(fd) != 0) return fail("fsync", path);
        }
    }

    for (long i = 0; i < n; i++) {
        name_of(path, sizeof path, dir, i);
        uint64_t t0 = now_ns();
        if (!strcmp(kind, "write_fsync_4k")) {
            if (pwrite(fd, buf, sizeof buf, (off_t)i * 4096) != (ssize_t)sizeof buf) return fail("pwrite", "bench.dat");
            if (fsync(fd) != 0) return fail("fsync", "bench.dat");
        } else if (!strcmp(kind, "read_4k")) {
            if (pread(fd, buf, sizeof buf, (off_t)i * 4096) != (ssize_t)sizeof buf) return fail("pread", "bench.dat");
        } else if (!strcmp(kind, "create_close")) {
            int f = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
            if (f < 0) return fail("create", path);
            close(f);
        } else if (!strcmp(kind, "open_close")) {
            int f = open(path, O_RDONLY);
            if (f < 0) return fail("open", path);
            close(f);
        } else if (!strcmp(kind, "stat")) {
            struct stat st;
            if (stat(path, &st) != 0) return fail("stat", path);
        } else if (!strcmp(kind, "unlink")) {
            if (unlink(path) != 0) return fail("unlink", path);
        } else if (!strcmp(kind, "mkdir")) {
            if (mkdir(path, 0755) != 0) return fail("mkdir", path);
        } else if (!strcmp(kind, "rmdir")) {
            if (rmdir(path) != 0) return fail("rmdir", path);
        } else {
            fprintf(stderr, "gt: unknown bench kind %s\n", kind);
            return 2;
        }
        t[i] = now_ns() - t0;
    }

    /* Cleanup, so the caller's directory is empty again. */
    if (fd >= 0) { close(fd); snprintf(path, sizeof path, "%s/bench.dat", dir); unlink(path); }
    if (!strcmp(kind, "create_close") || !strcmp(kind, "stat") || !strcmp(kind, "open_close"))
        rc = remove_files(dir, n);
    if (!strcmp(kind, "mkdir"))
        for (long i = 0; i < n; i++) { name_of(path, sizeof path, dir, i); rmdir(path); }

    uint64_t sum = 0;
    for (long i = 0; i < n; i++) sum += t[i];
    qsort(t, (size_t)n, sizeof *t, cmp_u64);
    printf("PMFS-GUEST: BENCH %s %.1f n=%ld p10=%.1f p90=%.1f mean=%.1f\n", kind, t[n / 2] / 1000.0, n,
           t[n / 10] / 1000.0, t[(n * 9) / 10] / 1000.0, (double)sum / (double)n / 1000.0);
    fflush(stdout);
    free(t);
    return rc;
}

static int usage(void) {
    fprintf(stderr, "usage: gt now | fsync F | fdatasync F | setxattr F N V | getxattr F N | listxattr F |\n"
                    "          removexattr F N | mmap F SIZE | bench KIND DIR N\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage();
    const char *cmd = argv[1];
    if (!strcmp(cmd, "now") && argc == 2) {
        printf("%llu\n", (unsigned long long)now_ns());
        return 0;
    }
    if (!strcmp(cmd, "fsync") && argc == 3) return do_fsync(argv[2], 0);
    if (!strcmp(cmd, "fdatasync") && argc == 3) return do_fsync(argv[2], 1);
    if (!strcmp(cmd, "setxattr") && argc == 5) {
        if (setxattr(argv[2], argv[3], argv[4], strlen(argv[4]), 0) != 0) return fail("setxattr", argv[2]);
        return 0;
    }
    if (!strcmp(cmd, "getxattr") && argc == 4) {
        char v[65536];
        ssize_t n = getxattr(argv[2], argv[3], v, sizeof v);
        if (n < 0) return fail("getxattr", argv[2]);
        fwrite(v, 1, (size_t)n, stdout);
        putchar('\n');
        return 0;
    }
    if (!strcmp(cmd, "listxattr") && argc == 3) {
        char v[65536];
        ssize_t n = listxattr(argv[2], v, sizeof v);
        if (n < 0) return fail("listxattr", argv[2]);
        for (ssize_t i = 0; i < n; i += (ssize_t)strlen(v + i) + 1) puts(v + i);
        return 0;
    }
    if (!strcmp(cmd, "removexattr") && argc == 4) {
        if (removexattr(argv[2], argv[3]) != 0) return fail("removexattr", argv[2]);
        return 0;
    }
    if (!strcmp(cmd, "mmap") && argc == 4) return do_mmap(argv[2], (size_t)strtoull(argv[3], NULL, 0));
    if (!strcmp(cmd, "bench") && argc == 5) return do_bench(argv[2], argv[3], strtol(argv[4], NULL, 10));
    return usage();
}
