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
 *   gt lock FILE KIND [START LEN]  take a lock, print "locked pid PID" (or "busy", exit 3,
 *                                  if a conflicting lock is held), then hold it while
 *                                  reading commands from stdin, one a line, each answered
 *                                  "ok CMD": unlock; close (the descriptor); close-other
 *                                  (open the file again and close that descriptor: POSIX
 *                                  drops the process's record locks). Exits at end of input.
 *       KIND: r w (fcntl F_SETLK), R W (F_SETLKW, waits), sh ex (flock LOCK_NB), SH EX
 *       (flock, waits). START LEN: the record range (default 0 0, the whole file).
 *   gt getlk FILE r|w [START LEN]  F_GETLK: "unlocked" or "r|w START LEN pid PID" (a conflict)
 *   gt fallocate FILE MODE OFF LEN MODE: 0 keep punch (with KEEP_SIZE) zero zero-keep
 *   gt seek FILE data|hole OFF     lseek SEEK_DATA/SEEK_HOLE: the offset, or "ENXIO"
 *   gt bench KIND DIR N            time N operations, print one line
 *         "PMFS-GUEST: BENCH KIND median_us n=N p10=.. p50=.. p90=.. p99=.. mean=.. ops_s=..[ mib_s=..]"
 *       (latencies in µs; ops_s = N / wall time of the timed loop; seq_*: mib_s, and
 *       seq_write_1m: fsync_us, the final fsync)
 *       KIND: write_fsync_4k create_close stat unlink mkdir rmdir open_close read_4k
 *             seq_write_1m seq_read_1m sqlite_wal sqlite_delete
 *       stat, unlink and open_close first create N files (untimed), then drop the
 *       guest's caches, so each timed operation starts with a LOOKUP on the back end.
 *       seq_write_1m: N sequential 1 MiB writes to a new file, then one fsync (in the
 *       wall time and mib_s, not in the per-write latencies). seq_read_1m: writes and
 *       fsyncs N MiB (untimed), drops the guest's caches, then N sequential 1 MiB reads.
 *       sqlite_wal / sqlite_delete: drives the sqlite3 CLI (journal_mode WAL or DELETE,
 *       synchronous=FULL) through pipes: N single-row INSERTs, each its own transaction;
 *       a latency is one INSERT up to sqlite3's answer to a SELECT that follows it.
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
#include <signal.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
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

/* sqlite_wal / sqlite_delete: N autocommit INSERTs through the sqlite3 CLI on a
 * pipe (it answers each statement at once). t[i] is one INSERT, timed up to the
 * answer of the SELECT sent after it; *wall is the whole loop. */
static int sqlite_bench(const char *kind, const char *dir, long n, uint64_t *t, uint64_t *wall) {
    const char *mode = !strcmp(kind, "sqlite_wal") ? "WAL" : "DELETE";
    char db[4096], side[4200], line[256];
    snprintf(db, sizeof db, "%s/bench.db", dir);
    int in[2], out[2];
    if (pipe(in) != 0 || pipe(out) != 0) return fail("pipe", NULL);
    signal(SIGPIPE, SIG_IGN);
    pid_t pid = fork();
    if (pid < 0) return fail("fork", NULL);
    if (pid == 0) {
        dup2(in[0], 0); dup2(out[1], 1);
        close(in[0]); close(in[1]); close(out[0]); close(out[1]);
        execlp("sqlite3", "sqlite3", "-bail", "-batch", db, (char *)NULL);
        _exit(127);
    }
    close(in[0]); close(out[1]);
    FILE *w = fdopen(in[1], "w"), *r = fdopen(out[0], "r");
    if (!w || !r) return fail("fdopen", NULL);
    int rc = 0, ready = 0;
    fprintf(w, "PRAGMA journal_mode=%s;\nPRAGMA synchronous=FULL;\n"
               "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);\nSELECT 'ready';\n", mode);
    fflush(w);
    while (fgets(line, sizeof line, r))
        if (!strcmp(line, "ready\n")) { ready = 1; break; }
    if (ready) {
        uint64_t start = now_ns();
        for (long i = 0; i < n && rc == 0; i++) {
            uint64_t t0 = now_ns();
            fprintf(w, "INSERT INTO t(v) VALUES(randomblob(100));\nSELECT %ld;\n", i);
            fflush(w);
            if (!fgets(line, sizeof line, r) || strtol(line, NULL, 10) != i) {
                fprintf(stderr, "gt: sqlite3 stopped answering at INSERT %ld\n", i);
                rc = 1;
            }
            t[i] = now_ns() - t0;
        }
        *wall = now_ns() - start;
        if (rc == 0) {
            fprintf(w, "SELECT count(*) FROM t;\n");
            fflush(w);
            if (!fgets(line, sizeof line, r) || strtol(line, NULL, 10) != n) {
                fprintf(stderr, "gt: sqlite3: the table does not hold %ld rows\n", n);
                rc = 1;
            }
        }
    }
    fclose(w);
    while (fgets(line, sizeof line, r)) {}
    fclose(r);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!ready && WIFEXITED(status) && WEXITSTATUS(status) == 127) {
        fprintf(stderr, "gt: no sqlite3 in the guest\n");
        return EXIT_UNSUPPORTED;
    }
    if (!ready) { fprintf(stderr, "gt: sqlite3 setup failed (status %d)\n", status); rc = 1; }
    else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "gt: sqlite3 exited with status %d\n", status);
        rc = 1;
    }
    const char *sfx[] = {"", "-wal", "-shm", "-journal"};
    for (size_t k = 0; k < sizeof sfx / sizeof *sfx; k++) {
        snprintf(side, sizeof side, "%s%s", db, sfx[k]);
        if (unlink(side) != 0 && errno != ENOENT) rc = fail("unlink", side);
    }
    return rc;
}

static int do_bench(const char *kind, const char *dir, long n) {
    if (n <= 0) { fprintf(stderr, "gt: N must be positive\n"); return 2; }
    uint64_t *t = calloc((size_t)n, sizeof *t);
    if (!t) return fail("calloc", NULL);
    char path[4096], buf[4096];
    memset(buf, 0xa5, sizeof buf);
    int rc = 0, fd = -1;
    uint64_t wall = 0, fsync_ns = 0;
    const size_t mib = 1u << 20;
    unsigned char *big = NULL;
    int seq = !strncmp(kind, "seq_", 4);

    if (!strncmp(kind, "sqlite_", 7)) {
        if ((rc = sqlite_bench(kind, dir, n, t, &wall)) != 0) { free(t); return rc; }
        goto report;
    }
    if (seq) {
        if (strcmp(kind, "seq_write_1m") && strcmp(kind, "seq_read_1m")) {
            fprintf(stderr, "gt: unknown bench kind %s\n", kind);
            return 2;
        }
        if (!(big = malloc(mib))) return fail("malloc", NULL);
        for (size_t i = 0; i < mib; i++) big[i] = (unsigned char)(i * 131u + 17u);
        snprintf(path, sizeof path, "%s/bench.dat", dir);
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) return fail("create", path);
        if (!strcmp(kind, "seq_read_1m")) {
            for (long i = 0; i < n; i++)
                if (write(fd, big, mib) != (ssize_t)mib) return fail("write", path);
            if (fsync(fd) != 0) return fail("fsync", path);
            close(fd);
            drop_caches();
            fd = open(path, O_RDONLY);
            if (fd < 0) return fail("open", path);
        }
        uint64_t start = now_ns();
        for (long i = 0; i < n; i++) {
            uint64_t t0 = now_ns();
            ssize_t got = kind[4] == 'w' ? write(fd, big, mib) : read(fd, big, mib);
            if (got != (ssize_t)mib) return fail(kind[4] == 'w' ? "write" : "read", path);
            t[i] = now_ns() - t0;
        }
        if (kind[4] == 'w') {
            uint64_t t0 = now_ns();
            if (fsync(fd) != 0) return fail("fsync", path);
            fsync_ns = now_ns() - t0;
        }
        wall = now_ns() - start;
        close(fd);
        fd = -1;
        free(big);
        if (unlink(path) != 0) return fail("unlink", path);
        goto report;
    }

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

    uint64_t loop_start = now_ns();
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
    wall = now_ns() - loop_start;

    /* Cleanup, so the caller's directory is empty again. */
    if (fd >= 0) { close(fd); snprintf(path, sizeof path, "%s/bench.dat", dir); unlink(path); }
    if (!strcmp(kind, "create_close") || !strcmp(kind, "stat") || !strcmp(kind, "open_close"))
        rc = remove_files(dir, n);
    if (!strcmp(kind, "mkdir"))
        for (long i = 0; i < n; i++) { name_of(path, sizeof path, dir, i); rmdir(path); }

report:;
    uint64_t sum = 0;
    for (long i = 0; i < n; i++) sum += t[i];
    qsort(t, (size_t)n, sizeof *t, cmp_u64);
    /* p99: nearest rank, the smallest value with at least 99% of them at or below it. */
    long i99 = (n * 99 + 99) / 100 - 1;
    double secs = wall ? (double)wall / 1e9 : 1e-9;
    printf("PMFS-GUEST: BENCH %s %.1f n=%ld p10=%.1f p50=%.1f p90=%.1f p99=%.1f mean=%.1f ops_s=%.1f", kind,
           t[n / 2] / 1000.0, n, t[n / 10] / 1000.0, t[n / 2] / 1000.0, t[(n * 9) / 10] / 1000.0, t[i99] / 1000.0,
           (double)sum / (double)n / 1000.0, (double)n / secs);
    if (seq) printf(" mib_s=%.1f", (double)n / secs);
    if (fsync_ns) printf(" fsync_us=%.1f", fsync_ns / 1000.0);
    printf("\n");
    fflush(stdout);
    free(t);
    return rc;
}

/* gt lock: take a record (fcntl) or flock lock, then hold it while obeying
 * commands on stdin, so a shell script can hold a lock in one process and look
 * at it from another. */
static int lock_kind(const char *k, int *is_flock, int *blocking, short *type) {
    *is_flock = !strcasecmp(k, "sh") || !strcasecmp(k, "ex");
    *blocking = (k[0] >= 'A' && k[0] <= 'Z');
    if (*is_flock) *type = (short)(!strcasecmp(k, "ex") ? LOCK_EX : LOCK_SH);
    else if (!strcasecmp(k, "r")) *type = F_RDLCK;
    else if (!strcasecmp(k, "w")) *type = F_WRLCK;
    else return -1;
    return 0;
}

static int do_lock(const char *path, const char *kind, off_t start, off_t len) {
    int is_flock, blocking;
    short type;
    if (lock_kind(kind, &is_flock, &blocking, &type) != 0) { fprintf(stderr, "gt: lock kind %s: want r w R W sh ex SH EX\n", kind); return 2; }
    int fd = open(path, O_RDWR);
    if (fd < 0) return fail("open", path);
    struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
    int r = is_flock ? flock(fd, type | (blocking ? 0 : LOCK_NB)) : fcntl(fd, blocking ? F_SETLKW : F_SETLK, &fl);
    if (r != 0) {
        if (errno == EAGAIN || errno == EACCES || errno == EWOULDBLOCK) { printf("busy\n"); return 3; }
        return fail(is_flock ? "flock" : "fcntl", path);
    }
    printf("locked pid %d\n", (int)getpid());
    fflush(stdout);
    char cmd[64];
    while (fgets(cmd, sizeof cmd, stdin)) {
        cmd[strcspn(cmd, "\n")] = 0;
        if (!strcmp(cmd, "unlock")) {
            fl.l_type = F_UNLCK;
            if ((is_flock ? flock(fd, LOCK_UN) : fcntl(fd, F_SETLK, &fl)) != 0) return fail("unlock", path);
        } else if (!strcmp(cmd, "close")) {
            if (close(fd) != 0) return fail("close", path);
        } else if (!strcmp(cmd, "close-other")) {
            int other = open(path, O_RDONLY);
            if (other < 0 || close(other) != 0) return fail("open/close a second descriptor", path);
        } else {
            fprintf(stderr, "gt: lock: unknown command '%s'\n", cmd);
            return 2;
        }
        printf("ok %s\n", cmd);
        fflush(stdout);
    }
    return 0;
}

static int do_getlk(const char *path, const char *kind, off_t start, off_t len) {
    int fd = open(path, O_RDWR);
    if (fd < 0) return fail("open", path);
    struct flock fl = { .l_type = (short)(!strcmp(kind, "w") ? F_WRLCK : F_RDLCK), .l_whence = SEEK_SET, .l_start = start, .l_len = len };
    if (fcntl(fd, F_GETLK, &fl) != 0) return fail("F_GETLK", path);
    if (fl.l_type == F_UNLCK) printf("unlocked\n");
    else printf("%s %lld %lld pid %d\n", fl.l_type == F_WRLCK ? "w" : "r", (long long)fl.l_start, (long long)fl.l_len, (int)fl.l_pid);
    close(fd);
    return 0;
}

static int do_fallocate(const char *path, const char *mode, off_t offset, off_t len) {
    int m;
    if (!strcmp(mode, "0")) m = 0;
    else if (!strcmp(mode, "keep")) m = FALLOC_FL_KEEP_SIZE;
    else if (!strcmp(mode, "punch")) m = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    else if (!strcmp(mode, "zero")) m = FALLOC_FL_ZERO_RANGE;
    else if (!strcmp(mode, "zero-keep")) m = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE;
    else { fprintf(stderr, "gt: fallocate mode %s: want 0 keep punch zero zero-keep\n", mode); return 2; }
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0) return fail("open", path);
    if (fallocate(fd, m, offset, len) != 0) return fail("fallocate", path);
    close(fd);
    return 0;
}

static int do_seek(const char *path, const char *what, off_t offset) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return fail("open", path);
    off_t r = lseek(fd, offset, !strcmp(what, "hole") ? SEEK_HOLE : SEEK_DATA);
    if (r < 0 && errno == ENXIO) printf("ENXIO\n");
    else if (r < 0) return fail("lseek", path);
    else printf("%lld\n", (long long)r);
    close(fd);
    return 0;
}

static int usage(void) {
    fprintf(stderr, "usage: gt now | fsync F | fdatasync F | setxattr F N V | getxattr F N | listxattr F |\n"
                    "          removexattr F N | mmap F SIZE | lock F KIND [START LEN] | getlk F r|w [START LEN] |\n"
                    "          fallocate F MODE OFF LEN | seek F data|hole OFF | bench KIND DIR N\n");
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
    if (!strcmp(cmd, "lock") && (argc == 4 || argc == 6))
        return do_lock(argv[2], argv[3], argc == 6 ? strtoll(argv[4], NULL, 0) : 0, argc == 6 ? strtoll(argv[5], NULL, 0) : 0);
    if (!strcmp(cmd, "getlk") && (argc == 4 || argc == 6))
        return do_getlk(argv[2], argv[3], argc == 6 ? strtoll(argv[4], NULL, 0) : 0, argc == 6 ? strtoll(argv[5], NULL, 0) : 0);
    if (!strcmp(cmd, "fallocate") && argc == 6) return do_fallocate(argv[2], argv[3], strtoll(argv[4], NULL, 0), strtoll(argv[5], NULL, 0));
    if (!strcmp(cmd, "seek") && argc == 5) return do_seek(argv[2], argv[3], strtoll(argv[4], NULL, 0));
    if (!strcmp(cmd, "bench") && argc == 5) return do_bench(argv[2], argv[3], strtol(argv[4], NULL, 10));
    return usage();
}
