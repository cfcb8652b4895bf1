"""OPEN/CREATE/TMPFILE, READ/WRITE, FSYNC, READDIR(PLUS), FALLOCATE, LSEEK, COPY_FILE_RANGE, SYNCFS."""
import ctypes
import errno
import hashlib
import os
import random
import stat

import pytest

from conftest import LONG, cerr, errno_of, libc, read_file, write_file

FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
FALLOC_FL_ZERO_RANGE = 0x10


def fallocate(fd, mode, offset, length):
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    cerr(libc.fallocate(fd, mode, offset, length))


def reopen_read(path):
    """Reads through a new open: without FOPEN_KEEP_CACHE the kernel drops its page cache on open,
    so the bytes come from pmfsd."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        out = bytearray()
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                return bytes(out)
            out += b
    finally:
        os.close(fd)


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ open / create


def test_create_exclusive(d):
    p = os.path.join(d, "f")
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    assert errno_of(os.open, p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600) == errno.EEXIST
    os.symlink("dangling-target", os.path.join(d, "l"))
    assert errno_of(os.open, os.path.join(d, "l"), os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    assert errno_of(os.open, os.path.join(d, "missing"), os.O_WRONLY) == errno.ENOENT
    assert errno_of(os.open, d, os.O_WRONLY) == errno.EISDIR
    assert errno_of(os.open, p, os.O_RDONLY | os.O_DIRECTORY) == errno.ENOTDIR


def test_open_trunc(d):
    p = os.path.join(d, "f")
    write_file(p, b"x" * 100_000)
    fsync_path(p)
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    assert os.fstat(fd).st_size == 0
    os.write(fd, b"short")
    os.close(fd)
    assert reopen_read(p) == b"short"
    assert os.stat(p).st_blocks <= 16


def test_open_trunc_readonly_does_not_truncate_other_handle_view(d):
    p = os.path.join(d, "f")
    write_file(p, b"abc")
    fd = os.open(p, os.O_RDWR)
    fd2 = os.open(p, os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0
        assert os.pread(fd, 10, 0) == b""
    finally:
        os.close(fd)
        os.close(fd2)


def test_create_mode_and_umask(d):
    old = os.umask(0o027)
    try:
        fd = os.open(os.path.join(d, "f"), os.O_CREAT | os.O_WRONLY, 0o777)
        os.close(fd)
        os.mkdir(os.path.join(d, "sub"), 0o777)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(os.path.join(d, "f")).st_mode) == 0o750
    assert stat.S_IMODE(os.stat(os.path.join(d, "sub")).st_mode) == 0o750


AT_EMPTY_PATH = 0x1000


def link_fd(fd, dst):
    """linkat(fd, "", AT_FDCWD, dst, AT_EMPTY_PATH): names an O_TMPFILE file (needs root)."""
    cerr(libc.linkat(fd, b"", -100, os.fsencode(dst), AT_EMPTY_PATH))


def proc_fd_link_works():
    """Whether linkat through /proc/self/fd works on this host at all (checked on /tmp, not pmfs):
    some sandboxes refuse it with EXDEV on every file system."""
    import tempfile
    with tempfile.TemporaryDirectory(dir="/tmp") as t:
        try:
            fd = os.open(t, os.O_TMPFILE | os.O_RDWR, 0o600)
        except OSError:
            return False
        try:
            os.link(f"/proc/self/fd/{fd}", os.path.join(t, "n"), follow_symlinks=True)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)


@pytest.mark.parametrize("how", ["at_empty_path", "proc_self_fd"])
def test_o_tmpfile_then_linkat(d, how):
    if how == "proc_self_fd" and not proc_fd_link_works():
        pytest.skip("this host refuses linkat via /proc/self/fd even on /tmp (EXDEV); AT_EMPTY_PATH covers linkat")
    fd = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o640)
    try:
        assert os.fstat(fd).st_nlink == 0
        os.write(fd, b"anonymous until linked" * 500)
        assert os.listdir(d) == []
        if how == "proc_self_fd":
            os.link(f"/proc/self/fd/{fd}", os.path.join(d, "named"), follow_symlinks=True)
        else:
            link_fd(fd, os.path.join(d, "named"))
        assert os.fstat(fd).st_nlink == 1
        os.write(fd, b"+tail")
    finally:
        os.close(fd)
    assert os.listdir(d) == ["named"]
    assert reopen_read(os.path.join(d, "named")) == b"anonymous until linked" * 500 + b"+tail"
    assert stat.S_IMODE(os.stat(os.path.join(d, "named")).st_mode) == 0o640 & ~_umask()


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_o_tmpfile_excl_cannot_be_linked(d):
    fd = os.open(d, os.O_TMPFILE | os.O_RDWR | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"x")
        assert errno_of(link_fd, fd, os.path.join(d, "n")) == errno.ENOENT
    finally:
        os.close(fd)
    assert os.listdir(d) == []


def test_o_tmpfile_space_is_freed_on_close(d):
    before = os.statvfs(d).f_bfree
    fd = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o600)
    os.write(fd, os.urandom(1 << 20) * 8)
    os.fsync(fd)
    during = os.statvfs(d).f_bfree
    os.close(fd)
    assert before - during >= 2048
    import time
    deadline = time.monotonic() + 5
    while os.statvfs(d).f_bfree < before - 16 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.statvfs(d).f_bfree >= before - 16


# ------------------------------------------------------------------ read / write


def test_write_at_offsets_with_holes(d):
    p = os.path.join(d, "sparse")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"head", 0)
        os.pwrite(fd, b"middle", 5_000_000)
        os.pwrite(fd, b"tail", 10 * 2**20 - 4)
        assert os.fstat(fd).st_size == 10 * 2**20
        os.fsync(fd)
    finally:
        os.close(fd)
    data = reopen_read(p)
    assert len(data) == 10 * 2**20
    assert data[:4] == b"head"
    assert data[4:5_000_000] == bytes(5_000_000 - 4)
    assert data[5_000_000:5_000_006] == b"middle"
    assert data[-4:] == b"tail"
    assert data.count(0) == len(data) - 14
    assert os.stat(p).st_blocks <= 3 * 8 + 8     # only three blocks written


def test_unaligned_overwrites_model(d):
    """Random unaligned pwrites checked against a byte model, read back through pmfsd."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    p = os.path.join(d, "model")
    model = bytearray()
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for i in range(300):
            off = rng.randrange(0, 3 << 20)
            n = rng.choice([1, 7, 511, 4095, 4096, 4097, 65536, 200_000])
            data = rng.randbytes(n)
            assert os.pwrite(fd, data, off) == n
            if len(model) < off + n:
                model.extend(bytes(off + n - len(model)))
            model[off:off + n] = data
            if i % 50 == 49:
                os.fsync(fd)
            if i % 97 == 0:
                cut = rng.randrange(0, len(model) + 1)
                os.ftruncate(fd, cut)
                del model[cut:]
    finally:
        os.close(fd)
    got = reopen_read(p)
    assert len(got) == len(model), f"seed {seed}"
    assert got == bytes(model), f"seed {seed}: first difference at {next(i for i in range(len(model)) if got[i] != model[i])}"


def test_big_writes(d):
    p = os.path.join(d, "big")
    size = (64 if LONG else 24) << 20
    rng = random.Random(7)
    block = rng.randbytes(3 << 20 | 12345)       # odd size: writes straddle blocks
    h = hashlib.sha256()
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    written = 0
    while written < size:
        n = os.write(fd, block)
        assert n == len(block)
        h.update(block)
        written += n
    os.fsync(fd)
    os.close(fd)
    assert os.stat(p).st_size == written
    fd = os.open(p, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    h2 = hashlib.sha256()
    while True:
        b = os.read(fd, 4 << 20)
        if not b:
            break
        h2.update(b)
    os.close(fd)
    assert h2.hexdigest() == h.hexdigest()


def test_o_direct_io(d):
    import mmap
    p = os.path.join(d, "direct")
    buf = mmap.mmap(-1, 1 << 20)
    buf.write(os.urandom(1 << 20))
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        assert os.pwritev(fd, [buf], 4096) == 1 << 20
        back = mmap.mmap(-1, 1 << 20)
        assert os.preadv(fd, [back], 4096) == 1 << 20
        assert back[:] == buf[:]
    finally:
        os.close(fd)
    assert reopen_read(p)[4096:] == buf[:]


def test_o_append(d):
    p = os.path.join(d, "log")
    write_file(p, b"start\n")
    a = os.open(p, os.O_WRONLY | os.O_APPEND)
    b = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        for i in range(50):
            os.write(a, b"A%03d\n" % i)
            os.write(b, b"B%03d\n" % i)
        # pwrite on O_APPEND appends too on Linux.
        os.lseek(a, 0, os.SEEK_SET)
        os.write(a, b"end\n")
    finally:
        os.close(a)
        os.close(b)
    lines = reopen_read(p).split(b"\n")
    assert lines[0] == b"start"
    assert lines[-2] == b"end"
    assert lines[1:-2] == [x for i in range(50) for x in (b"A%03d" % i, b"B%03d" % i)]


def test_o_append_from_processes(d):
    p = os.path.join(d, "shared.log")
    write_file(p, b"")
    pids = []
    for w in range(4):
        pid = os.fork()
        if pid == 0:
            try:
                fd = os.open(p, os.O_WRONLY | os.O_APPEND)
                for i in range(200):
                    os.write(fd, b"%d:%04d:" % (w, i) + b"x" * 50 + b"\n")
                os.close(fd)
                os._exit(0)
            except BaseException:
                os._exit(1)
        pids.append(pid)
    for pid in pids:
        assert os.waitpid(pid, 0)[1] == 0
    lines = reopen_read(p).splitlines()
    assert len(lines) == 800
    for w in range(4):
        mine = [ln for ln in lines if ln.startswith(b"%d:" % w)]
        assert mine == [b"%d:%04d:" % (w, i) + b"x" * 50 for i in range(200)]


def test_fsync_and_fdatasync(d):
    p = os.path.join(d, "f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for i in range(20):
            os.write(fd, b"%05d" % i * 1000)
            (os.fsync if i % 2 else os.fdatasync)(fd)
    finally:
        os.close(fd)
    assert reopen_read(p) == b"".join(b"%05d" % i * 1000 for i in range(20))
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def test_o_sync_write(d):
    p = os.path.join(d, "f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_SYNC, 0o644)
    try:
        os.write(fd, b"synchronous" * 100)
    finally:
        os.close(fd)
    assert reopen_read(p) == b"synchronous" * 100


def test_read_past_eof(d):
    p = os.path.join(d, "f")
    write_file(p, b"12345")
    fd = os.open(p, os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 3) == b"45"
        assert os.pread(fd, 100, 5) == b""
        assert os.pread(fd, 100, 1 << 40) == b""
    finally:
        os.close(fd)


def test_mmap_shared_write(d):
    import mmap
    p = os.path.join(d, "mapped")
    write_file(p, bytes(3 * 4096))
    fd = os.open(p, os.O_RDWR)
    try:
        m = mmap.mmap(fd, 3 * 4096)
        m[4096:4101] = b"hello"
        m.flush()
        m.close()
        os.fsync(fd)
    finally:
        os.close(fd)
    assert reopen_read(p)[4096:4101] == b"hello"


# ------------------------------------------------------------------ readdir


def test_readdir_big_directory(d):
    n = 20_000 if LONG else 5_000
    names = {f"entry-{i:05d}-{'x' * (i % 40)}" for i in range(n)}
    for name in names:
        os.close(os.open(os.path.join(d, name), os.O_CREAT | os.O_WRONLY, 0o644))
    listed = os.listdir(d)
    assert len(listed) == len(set(listed)), "a name was listed twice"
    assert set(listed) == names
    entries = list(os.scandir(d))
    assert len(entries) == n
    sample = random.Random(1).sample(entries, 50)
    for e in sample:
        assert e.is_file(follow_symlinks=False)
        assert e.inode() == os.lstat(e.path).st_ino
    for name in list(names)[: n // 2]:
        os.unlink(os.path.join(d, name))
    left = os.listdir(d)
    assert sorted(left) == sorted(list(names)[n // 2:])


def test_readdir_dot_entries_and_types(d):
    os.mkdir(os.path.join(d, "sub"))
    write_file(os.path.join(d, "file"), b"")
    os.symlink("file", os.path.join(d, "link"))
    os.mkfifo(os.path.join(d, "fifo"))
    types = {e.name: e for e in os.scandir(d)}
    assert set(types) == {"sub", "file", "link", "fifo"}
    assert types["sub"].is_dir(follow_symlinks=False)
    assert types["file"].is_file(follow_symlinks=False)
    assert types["link"].is_symlink()
    assert stat.S_ISFIFO(types["fifo"].stat(follow_symlinks=False).st_mode)
    # getdents itself returns . and .. (os.listdir hides them): check with ls -a.
    import subprocess
    out = subprocess.run(["ls", "-a1", d], capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == [".", ".."] and sorted(out[2:]) == ["fifo", "file", "link", "sub"]


def test_readdir_while_changing(d):
    """Entries not touched during the listing appear exactly once; nothing appears twice or out of nowhere."""
    stable = {f"stable-{i:04d}" for i in range(1500)}
    doomed = [f"doomed-{i:04d}" for i in range(500)]
    for name in list(stable) + doomed:
        os.close(os.open(os.path.join(d, name), os.O_CREAT | os.O_WRONLY, 0o644))
    seen = []
    added = []
    with os.scandir(d) as it:
        for i, e in enumerate(it):
            seen.append(e.name)
            if i % 3 == 0 and doomed:
                os.unlink(os.path.join(d, doomed.pop()))
            if i % 3 == 1:
                name = f"added-{i:04d}"
                os.close(os.open(os.path.join(d, name), os.O_CREAT | os.O_WRONLY, 0o644))
                added.append(name)
    dupes = {n for n in seen if seen.count(n) > 1}
    assert not dupes, f"listed more than once: {sorted(dupes)[:10]}"
    assert stable <= set(seen), f"missing stable entries: {sorted(stable - set(seen))[:10]}"
    known = stable | {f"doomed-{i:04d}" for i in range(500)} | set(added)
    assert set(seen) <= known
    assert set(os.listdir(d)) == stable | set(doomed) | set(added)


def test_readdir_with_seek(d):
    names = {f"n{i}" for i in range(300)}
    for name in names:
        os.mkdir(os.path.join(d, name))
    # Each scandir restarts at offset 0 (rewinddir): the full list every time.
    for _ in range(3):
        assert {e.name for e in os.scandir(d)} == names


# ------------------------------------------------------------------ fallocate


def test_posix_fallocate(d):
    p = os.path.join(d, "f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        free0 = os.statvfs(d).f_bfree
        os.posix_fallocate(fd, 0, 8 << 20)
        st = os.fstat(fd)
        assert st.st_size == 8 << 20
        assert st.st_blocks >= (8 << 20) // 512
        assert free0 - os.statvfs(d).f_bfree >= 2048
        assert os.pread(fd, 1 << 20, 3 << 20) == bytes(1 << 20)
        os.pwrite(fd, b"inside", 4 << 20)
        os.fsync(fd)
    finally:
        os.close(fd)
    data = reopen_read(p)
    assert data[4 << 20:(4 << 20) + 6] == b"inside"
    assert data.count(0) == len(data) - 6


def test_fallocate_keep_size(d):
    p = os.path.join(d, "f")
    write_file(p, b"abc")
    fd = os.open(p, os.O_RDWR)
    try:
        fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 1 << 20)
        st = os.fstat(fd)
        assert st.st_size == 3
        assert st.st_blocks >= (1 << 20) // 512
        assert os.pread(fd, 10, 0) == b"abc"
    finally:
        os.close(fd)


def test_punch_hole(d):
    p = os.path.join(d, "f")
    write_file(p, b"x" * (1 << 20))
    fd = os.open(p, os.O_RDWR)
    try:
        os.fsync(fd)
        blocks0 = os.fstat(fd).st_blocks
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 256 << 10, 256 << 10)
        st = os.fstat(fd)
        assert st.st_size == 1 << 20
        assert blocks0 - st.st_blocks == (256 << 10) // 512
        # Unaligned: the partial blocks at both ends are zeroed, whole ones freed.
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 600_000, 10_000)
        os.fsync(fd)
    finally:
        os.close(fd)
    want = bytearray(b"x" * (1 << 20))
    want[256 << 10:512 << 10] = bytes(256 << 10)
    want[600_000:610_000] = bytes(10_000)
    assert reopen_read(p) == bytes(want)


def test_punch_hole_in_cached_data(d):
    p = os.path.join(d, "f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"y" * (64 << 10))           # still in the write-back cache
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 8192, 8192)
        os.fsync(fd)
    finally:
        os.close(fd)
    want = b"y" * 8192 + bytes(8192) + b"y" * ((64 << 10) - 16384)
    assert reopen_read(p) == want


def test_zero_range(d):
    p = os.path.join(d, "f")
    write_file(p, b"z" * 20000)
    fd = os.open(p, os.O_RDWR)
    try:
        try:
            fallocate(fd, FALLOC_FL_ZERO_RANGE, 1000, 10000)
        except OSError as e:
            assert e.errno == errno.EOPNOTSUPP
            pytest.skip("FALLOC_FL_ZERO_RANGE not supported (EOPNOTSUPP)")
    finally:
        os.close(fd)
    assert reopen_read(p) == b"z" * 1000 + bytes(10000) + b"z" * 9000


# ------------------------------------------------------------------ lseek SEEK_DATA / SEEK_HOLE


@pytest.mark.parametrize("synced", [True, False], ids=["written-back", "cached"])
def test_seek_data_hole(d, synced):
    p = os.path.join(d, "sparse")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"a" * 4096, 0)
        os.pwrite(fd, b"b" * 4096, 1 << 20)
        os.ftruncate(fd, 2 << 20)
        if synced:
            os.fsync(fd)
        assert os.lseek(fd, 0, os.SEEK_DATA) == 0
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 4096
        assert os.lseek(fd, 4096, os.SEEK_DATA) == 1 << 20
        assert os.lseek(fd, 100, os.SEEK_DATA) == 100
        assert os.lseek(fd, (1 << 20) + 5, os.SEEK_HOLE) == (1 << 20) + 4096
        assert errno_of(os.lseek, fd, (1 << 20) + 4096, os.SEEK_DATA) == errno.ENXIO
        assert os.lseek(fd, (1 << 20) + 4096, os.SEEK_HOLE) == (1 << 20) + 4096
        assert errno_of(os.lseek, fd, 2 << 20, os.SEEK_HOLE) == errno.ENXIO
        assert errno_of(os.lseek, fd, 3 << 20, os.SEEK_DATA) == errno.ENXIO
    finally:
        os.close(fd)


def test_seek_hole_of_dense_file_is_eof(d):
    p = os.path.join(d, "dense")
    write_file(p, b"q" * 10000)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 10000
        assert os.lseek(fd, 0, os.SEEK_DATA) == 0
    finally:
        os.close(fd)


# ------------------------------------------------------------------ copy_file_range


def test_copy_file_range(d):
    src, dst = os.path.join(d, "src"), os.path.join(d, "dst")
    data = os.urandom((3 << 20) + 777)
    write_file(src, data)
    write_file(dst, b"D" * 100)
    fi = os.open(src, os.O_RDONLY)
    fo = os.open(dst, os.O_WRONLY)
    try:
        copied = 0
        while copied < len(data) - 1000:
            n = os.copy_file_range(fi, fo, len(data) - 1000 - copied, 1000 + copied, 50 + copied)
            assert n > 0
            copied += n
    finally:
        os.close(fi)
        os.close(fo)
    got = reopen_read(dst)
    assert got[:50] == b"D" * 50
    assert got[50:] == data[1000:]


def test_copy_file_range_from_cached_source(d):
    src, dst = os.path.join(d, "src"), os.path.join(d, "dst")
    fi = os.open(src, os.O_RDWR | os.O_CREAT, 0o644)
    fo = os.open(dst, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fi, b"fresh, not written back" * 1000)
        n = os.copy_file_range(fi, fo, 23000, 0, 0)
        assert n == 23000
        assert os.pread(fo, 23000, 0) == (b"fresh, not written back" * 1000)[:23000]
    finally:
        os.close(fi)
        os.close(fo)


def test_copy_file_range_same_file_overlap_is_einval(d):
    p = os.path.join(d, "f")
    write_file(p, b"0123456789" * 1000)
    fd = os.open(p, os.O_RDWR)
    try:
        assert errno_of(os.copy_file_range, fd, fd, 5000, 0, 100) == errno.EINVAL
        assert os.copy_file_range(fd, fd, 1000, 0, 8000) == 1000
        assert os.pread(fd, 1000, 8000) == (b"0123456789" * 100)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ sync / syncfs


def test_sync_and_syncfs(d):
    p = os.path.join(d, "f")
    write_file(p, b"to be synced" * 10000)
    os.sync()
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert libc.syncfs(fd) == 0
    finally:
        os.close(fd)
    assert reopen_read(p) == b"to be synced" * 10000
