"""Namespace requests through the kernel: LOOKUP, MKDIR, RMDIR, UNLINK, RENAME(2), LINK, SYMLINK,
READLINK, MKNOD, and the errors POSIX gives for each."""
import ctypes
import errno
import os
import platform
import socket
import stat

import pytest

from conftest import cerr, errno_of, libc, read_file, write_file

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def renameat2(old, new, flags):
    if platform.machine() == "x86_64":
        libc.syscall.restype = ctypes.c_long
        rc = libc.syscall(ctypes.c_long(316), ctypes.c_int(AT_FDCWD), os.fsencode(old), ctypes.c_int(AT_FDCWD),
                          os.fsencode(new), ctypes.c_uint(flags))
    else:
        rc = libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), ctypes.c_uint(flags))
    return cerr(rc)


# ------------------------------------------------------------------ lookup / stat


def test_lookup_missing_is_enoent(d):
    assert errno_of(os.stat, os.path.join(d, "nope")) == errno.ENOENT
    assert errno_of(os.lstat, os.path.join(d, "nope", "deeper")) == errno.ENOENT
    assert not os.path.exists(os.path.join(d, "nope"))


def test_lookup_through_file_is_enotdir(d):
    write_file(os.path.join(d, "f"), b"x")
    assert errno_of(os.stat, os.path.join(d, "f", "x")) == errno.ENOTDIR
    assert errno_of(os.listdir, os.path.join(d, "f")) == errno.ENOTDIR


def test_name_too_long(d):
    assert errno_of(os.open, os.path.join(d, "n" * 256), os.O_CREAT | os.O_WRONLY) == errno.ENAMETOOLONG
    longest = os.path.join(d, "n" * 255)
    write_file(longest, b"255")
    assert read_file(longest) == b"255"
    assert "n" * 255 in os.listdir(d)


def test_stat_of_new_file(d):
    p = os.path.join(d, "f")
    write_file(p, b"hello", mode=0o640)
    st = os.stat(p)
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o640 & ~current_umask()
    assert st.st_size == 5
    assert st.st_nlink == 1
    assert st.st_uid == 0 and st.st_gid == 0
    assert st.st_ino == os.lstat(p).st_ino
    assert st.st_ino in {e.inode() for e in os.scandir(d)}


def current_umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_names_with_odd_bytes(d):
    names = ["with space", "new\nline", "tab\t", "ümlaut-ß", "emoji-\U0001F600", "-dash", ".hidden", "..dots", "back\\slash"]
    for n in names:
        write_file(os.path.join(d, n), n.encode())
    assert sorted(os.listdir(d)) == sorted(names)
    for n in names:
        assert read_file(os.path.join(d, n)) == n.encode()
    raw = os.fsencode(d) + b"/\xff\xfe-not-utf8"
    write_file(raw, b"raw")
    assert b"\xff\xfe-not-utf8" in os.listdir(os.fsencode(d))


# ------------------------------------------------------------------ mkdir / rmdir


def test_mkdir_and_nlink(d):
    st0 = os.stat(d)
    assert st0.st_nlink == 2
    os.mkdir(os.path.join(d, "a"), 0o750)
    os.mkdir(os.path.join(d, "b"))
    st = os.stat(os.path.join(d, "a"))
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o750 & ~current_umask()
    assert st.st_nlink == 2
    assert os.stat(d).st_nlink == 4
    assert os.stat(os.path.join(d, "a", "..")).st_ino == st0.st_ino
    os.rmdir(os.path.join(d, "b"))
    assert os.stat(d).st_nlink == 3


def test_mkdir_existing_is_eexist(d):
    os.mkdir(os.path.join(d, "a"))
    write_file(os.path.join(d, "f"), b"")
    assert errno_of(os.mkdir, os.path.join(d, "a")) == errno.EEXIST
    assert errno_of(os.mkdir, os.path.join(d, "f")) == errno.EEXIST
    assert errno_of(os.mkdir, os.path.join(d, "missing", "x")) == errno.ENOENT


def test_rmdir_errors(d):
    os.makedirs(os.path.join(d, "a", "b"))
    write_file(os.path.join(d, "f"), b"")
    assert errno_of(os.rmdir, os.path.join(d, "a")) == errno.ENOTEMPTY
    assert errno_of(os.rmdir, os.path.join(d, "f")) == errno.ENOTDIR
    assert errno_of(os.rmdir, os.path.join(d, "nope")) == errno.ENOENT
    assert errno_of(os.rmdir, os.path.join(d, "a", ".")) == errno.EINVAL
    os.rmdir(os.path.join(d, "a", "b"))
    os.rmdir(os.path.join(d, "a"))
    assert os.listdir(d) == ["f"]


def test_rmdir_nonempty_with_only_a_file(d):
    os.mkdir(os.path.join(d, "a"))
    write_file(os.path.join(d, "a", "f"), b"x")
    assert errno_of(os.rmdir, os.path.join(d, "a")) == errno.ENOTEMPTY
    os.unlink(os.path.join(d, "a", "f"))
    os.rmdir(os.path.join(d, "a"))


def test_removed_cwd(d):
    sub = os.path.join(d, "gone")
    os.mkdir(sub)
    fd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(sub)
        assert os.fstat(fd).st_nlink == 0
        assert errno_of(os.open, "x", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd) == errno.ENOENT
        assert os.listdir(fd) == []
    finally:
        os.close(fd)


# ------------------------------------------------------------------ unlink


def test_unlink(d):
    p = os.path.join(d, "f")
    write_file(p, b"x")
    os.unlink(p)
    assert errno_of(os.stat, p) == errno.ENOENT
    assert os.listdir(d) == []
    assert errno_of(os.unlink, p) == errno.ENOENT


def test_unlink_directory_is_eisdir(d):
    os.mkdir(os.path.join(d, "a"))
    assert errno_of(os.unlink, os.path.join(d, "a")) == errno.EISDIR


def test_unlinked_open_file_stays_readable(d):
    p = os.path.join(d, "f")
    write_file(p, b"still here" * 1000)
    fd = os.open(p, os.O_RDWR)
    try:
        os.unlink(p)
        assert not os.path.exists(p)
        assert os.fstat(fd).st_nlink == 0
        os.pwrite(fd, b"more", 10000)
        assert os.pread(fd, 10, 0) == b"still here"
        assert os.pread(fd, 4, 10000) == b"more"
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ rename


def test_rename_file_over_file(d):
    a, b = os.path.join(d, "a"), os.path.join(d, "b")
    write_file(a, b"AAA")
    write_file(b, b"BBBB")
    ino = os.stat(a).st_ino
    os.rename(a, b)
    assert not os.path.exists(a)
    assert read_file(b) == b"AAA"
    assert os.stat(b).st_ino == ino
    assert os.listdir(d) == ["b"]


def test_rename_over_open_target_keeps_old_inode_alive(d):
    a, b = os.path.join(d, "a"), os.path.join(d, "b")
    write_file(a, b"new")
    write_file(b, b"old contents")
    fd = os.open(b, os.O_RDONLY)
    try:
        os.rename(a, b)
        assert os.pread(fd, 100, 0) == b"old contents"
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    assert read_file(b) == b"new"


def test_rename_dir_over_empty_dir(d):
    os.makedirs(os.path.join(d, "src", "inner"))
    os.mkdir(os.path.join(d, "dst"))
    os.rename(os.path.join(d, "src"), os.path.join(d, "dst"))
    assert os.listdir(d) == ["dst"]
    assert os.listdir(os.path.join(d, "dst")) == ["inner"]
    assert os.stat(d).st_nlink == 3


def test_rename_dir_over_nonempty_dir(d):
    os.mkdir(os.path.join(d, "src"))
    os.makedirs(os.path.join(d, "dst", "x"))
    assert errno_of(os.rename, os.path.join(d, "src"), os.path.join(d, "dst")) in (errno.ENOTEMPTY, errno.EEXIST)


def test_rename_type_mismatch(d):
    os.mkdir(os.path.join(d, "dir"))
    write_file(os.path.join(d, "file"), b"")
    assert errno_of(os.rename, os.path.join(d, "file"), os.path.join(d, "dir")) == errno.EISDIR
    assert errno_of(os.rename, os.path.join(d, "dir"), os.path.join(d, "file")) == errno.ENOTDIR


def test_rename_between_directories_updates_parent(d):
    os.makedirs(os.path.join(d, "p1", "moved", "deep"))
    os.mkdir(os.path.join(d, "p2"))
    write_file(os.path.join(d, "p1", "moved", "deep", "f"), b"payload")
    os.rename(os.path.join(d, "p1", "moved"), os.path.join(d, "p2", "moved"))
    assert os.stat(os.path.join(d, "p1")).st_nlink == 2
    assert os.stat(os.path.join(d, "p2")).st_nlink == 3
    assert os.stat(os.path.join(d, "p2", "moved", "..")).st_ino == os.stat(os.path.join(d, "p2")).st_ino
    assert read_file(os.path.join(d, "p2", "moved", "deep", "f")) == b"payload"
    # A file moves between directories too: same file system, no EXDEV.
    write_file(os.path.join(d, "p1", "f"), b"f")
    os.rename(os.path.join(d, "p1", "f"), os.path.join(d, "p2", "f"))
    assert read_file(os.path.join(d, "p2", "f")) == b"f"


def test_rename_into_own_subtree_is_einval(d):
    os.makedirs(os.path.join(d, "a", "b", "c"))
    assert errno_of(os.rename, os.path.join(d, "a"), os.path.join(d, "a", "b", "c", "a")) == errno.EINVAL
    assert errno_of(os.rename, os.path.join(d, "a"), os.path.join(d, "a", "x")) == errno.EINVAL
    assert os.path.isdir(os.path.join(d, "a", "b", "c"))


def test_rename_missing_source(d):
    assert errno_of(os.rename, os.path.join(d, "nope"), os.path.join(d, "x")) == errno.ENOENT


def test_rename_hard_links_of_same_inode_is_noop(d):
    a, b = os.path.join(d, "a"), os.path.join(d, "b")
    write_file(a, b"x")
    os.link(a, b)
    os.rename(a, b)
    assert sorted(os.listdir(d)) == ["a", "b"]
    assert os.stat(a).st_nlink == 2


def test_rename_changes_ctime_not_mtime_of_file(d):
    a, b = os.path.join(d, "a"), os.path.join(d, "b")
    write_file(a, b"x")
    os.utime(a, ns=(1_000_000_000, 1_000_000_000))
    before = os.stat(a)
    os.rename(a, b)
    after = os.stat(b)
    assert after.st_mtime_ns == 1_000_000_000
    assert after.st_ino == before.st_ino


def test_renameat2_noreplace(d):
    a, b, c = (os.path.join(d, n) for n in "abc")
    write_file(a, b"A")
    write_file(b, b"B")
    with pytest.raises(OSError) as e:
        renameat2(a, b, RENAME_NOREPLACE)
    assert e.value.errno == errno.EEXIST
    assert read_file(a) == b"A" and read_file(b) == b"B"
    renameat2(a, c, RENAME_NOREPLACE)
    assert read_file(c) == b"A" and not os.path.exists(a)


def test_renameat2_exchange_files(d):
    a, b = os.path.join(d, "a"), os.path.join(d, "b")
    write_file(a, b"A")
    write_file(b, b"BB")
    ia, ib = os.stat(a).st_ino, os.stat(b).st_ino
    renameat2(a, b, RENAME_EXCHANGE)
    assert read_file(a) == b"BB" and read_file(b) == b"A"
    assert os.stat(a).st_ino == ib and os.stat(b).st_ino == ia
    with pytest.raises(OSError) as e:
        renameat2(a, os.path.join(d, "missing"), RENAME_EXCHANGE)
    assert e.value.errno == errno.ENOENT
    with pytest.raises(OSError) as e:
        renameat2(a, b, RENAME_EXCHANGE | RENAME_NOREPLACE)
    assert e.value.errno == errno.EINVAL


def test_renameat2_exchange_dir_and_file_across_dirs(d):
    os.makedirs(os.path.join(d, "p1", "sub", "x"))
    os.mkdir(os.path.join(d, "p2"))
    write_file(os.path.join(d, "p2", "f"), b"file")
    renameat2(os.path.join(d, "p1", "sub"), os.path.join(d, "p2", "f"), RENAME_EXCHANGE)
    assert read_file(os.path.join(d, "p1", "sub")) == b"file"
    assert os.listdir(os.path.join(d, "p2", "f")) == ["x"]
    # The directory moved to p2: link counts of both parents and its '..' follow.
    assert os.stat(os.path.join(d, "p1")).st_nlink == 2
    assert os.stat(os.path.join(d, "p2")).st_nlink == 3
    assert os.stat(os.path.join(d, "p2", "f", "..")).st_ino == os.stat(os.path.join(d, "p2")).st_ino
    # Both directories can be removed once emptied: counts really agree.
    os.unlink(os.path.join(d, "p1", "sub"))
    os.rmdir(os.path.join(d, "p1"))
    os.rmdir(os.path.join(d, "p2", "f", "x"))
    os.rmdir(os.path.join(d, "p2", "f"))
    os.rmdir(os.path.join(d, "p2"))


def test_renameat2_exchange_into_own_subtree_is_einval(d):
    os.makedirs(os.path.join(d, "a", "b"))
    with pytest.raises(OSError) as e:
        renameat2(os.path.join(d, "a"), os.path.join(d, "a", "b"), RENAME_EXCHANGE)
    assert e.value.errno == errno.EINVAL


# ------------------------------------------------------------------ link


def test_link_counts(d):
    a = os.path.join(d, "a")
    write_file(a, b"shared")
    os.mkdir(os.path.join(d, "other"))
    os.link(a, os.path.join(d, "b"))
    os.link(a, os.path.join(d, "other", "c"))
    assert os.stat(a).st_nlink == 3
    assert os.stat(os.path.join(d, "other", "c")).st_ino == os.stat(a).st_ino
    with open(os.path.join(d, "b"), "ab") as f:
        f.write(b"+more")
    assert read_file(os.path.join(d, "other", "c")) == b"shared+more"
    os.unlink(a)
    assert os.stat(os.path.join(d, "b")).st_nlink == 2
    os.unlink(os.path.join(d, "b"))
    assert os.stat(os.path.join(d, "other", "c")).st_nlink == 1
    assert read_file(os.path.join(d, "other", "c")) == b"shared+more"


def test_link_errors(d):
    os.mkdir(os.path.join(d, "dir"))
    write_file(os.path.join(d, "f"), b"")
    write_file(os.path.join(d, "g"), b"")
    assert errno_of(os.link, os.path.join(d, "dir"), os.path.join(d, "dir2")) == errno.EPERM
    assert errno_of(os.link, os.path.join(d, "f"), os.path.join(d, "g")) == errno.EEXIST
    assert errno_of(os.link, os.path.join(d, "nope"), os.path.join(d, "h")) == errno.ENOENT


def test_link_updates_ctime(d):
    a = os.path.join(d, "a")
    write_file(a, b"")
    os.utime(a, ns=(5, 5))
    c0 = os.stat(a).st_ctime_ns
    os.link(a, os.path.join(d, "b"))
    assert os.stat(a).st_ctime_ns >= c0
    assert os.stat(a).st_nlink == 2


# ------------------------------------------------------------------ symlink / readlink


def test_symlink_and_readlink(d):
    p = os.path.join(d, "l")
    os.symlink("target/with/parts", p)
    assert os.readlink(p) == "target/with/parts"
    st = os.lstat(p)
    assert stat.S_ISLNK(st.st_mode)
    assert st.st_size == len("target/with/parts")
    assert errno_of(os.stat, p) == errno.ENOENT       # dangling
    write_file(os.path.join(d, "real"), b"through the link")
    os.symlink("real", os.path.join(d, "good"))
    assert read_file(os.path.join(d, "good")) == b"through the link"
    assert errno_of(os.symlink, "x", p) == errno.EEXIST


def test_long_symlink_target(d):
    target = ("/".join(["component%03d" % i for i in range(400)]))[:4095]
    assert len(target) == 4095
    p = os.path.join(d, "long")
    os.symlink(target, p)
    assert os.readlink(p) == target
    assert os.lstat(p).st_size == 4095


def test_readlink_of_non_link_is_einval(d):
    write_file(os.path.join(d, "f"), b"")
    assert errno_of(os.readlink, os.path.join(d, "f")) == errno.EINVAL
    assert errno_of(os.readlink, d) == errno.EINVAL


def test_symlink_loop_is_eloop(d):
    os.symlink("b", os.path.join(d, "a"))
    os.symlink("a", os.path.join(d, "b"))
    assert errno_of(os.stat, os.path.join(d, "a")) == errno.ELOOP


# ------------------------------------------------------------------ mknod


def test_mkfifo(d):
    p = os.path.join(d, "fifo")
    os.mkfifo(p, 0o600)
    st = os.stat(p)
    assert stat.S_ISFIFO(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    # The kernel runs the pipe itself; it works on the mount.
    fd = os.open(p, os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(fd, b"through the fifo")
        assert os.read(fd, 100) == b"through the fifo"
    finally:
        os.close(fd)
    assert errno_of(os.mkfifo, p) == errno.EEXIST


def test_mknod_char_device(d):
    p = os.path.join(d, "null")
    os.mknod(p, stat.S_IFCHR | 0o640, os.makedev(1, 3))
    st = os.stat(p)
    assert stat.S_ISCHR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o640 & ~current_umask()
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    big = os.path.join(d, "big")
    os.mknod(big, stat.S_IFBLK | 0o600, os.makedev(259, 65537))
    st = os.stat(big)
    assert stat.S_ISBLK(st.st_mode)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (259, 65537)
    # The mount is nodev: the node exists but cannot be opened as a device.
    assert errno_of(os.open, p, os.O_RDONLY) == errno.EACCES


def test_mknod_regular_file(d):
    p = os.path.join(d, "plain")
    os.mknod(p, stat.S_IFREG | 0o600)
    st = os.stat(p)
    assert stat.S_ISREG(st.st_mode) and st.st_size == 0
    write_file(p, b"usable")
    assert read_file(p) == b"usable"


def test_unix_socket_node(d):
    p = os.path.join(d, "sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(p)
        server.listen(1)
        assert stat.S_ISSOCK(os.stat(p).st_mode)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(p)
        conn, _ = server.accept()
        client.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        conn.close()
        client.close()
    finally:
        server.close()
    os.unlink(p)


@pytest.mark.parametrize("op", ["create", "mkdir", "unlink", "rmdir", "rename_in", "rename_out", "link", "symlink", "mknod"])
def test_directory_times_follow_changes(d, op):
    import time
    sub = os.path.join(d, "sub")
    os.mkdir(sub)
    write_file(os.path.join(sub, "x"), b"")
    os.mkdir(os.path.join(sub, "dd"))
    write_file(os.path.join(d, "outside"), b"")
    os.utime(sub, ns=(10**9, 10**9))
    t0 = time.time_ns() - 10**7
    {
        "create": lambda: write_file(os.path.join(sub, "new"), b""),
        "mkdir": lambda: os.mkdir(os.path.join(sub, "newd")),
        "unlink": lambda: os.unlink(os.path.join(sub, "x")),
        "rmdir": lambda: os.rmdir(os.path.join(sub, "dd")),
        "rename_in": lambda: os.rename(os.path.join(d, "outside"), os.path.join(sub, "in")),
        "rename_out": lambda: os.rename(os.path.join(sub, "x"), os.path.join(d, "out")),
        "link": lambda: os.link(os.path.join(sub, "x"), os.path.join(sub, "x2")),
        "symlink": lambda: os.symlink("t", os.path.join(sub, "sl")),
        "mknod": lambda: os.mkfifo(os.path.join(sub, "ff")),
    }[op]()
    st = os.stat(sub)
    assert st.st_mtime_ns >= t0 and st.st_ctime_ns >= t0
