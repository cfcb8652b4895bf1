"""GETATTR/SETATTR (chmod, chown, truncate, utimensat), xattrs, ACCESS, STATFS and permissions:
setgid directories, the sticky bit, set-ID bits cleared on write and chown, EACCES for other users."""
import ctypes
import errno
import os
import stat
import time

import pytest

from conftest import as_user, cerr, errno_of, libc, read_file, write_file

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
AT_FDCWD = -100
XATTR_CREATE = 1
XATTR_REPLACE = 2
USER, GROUP = 4242, 4343       # an unprivileged user for the permission tests
OTHER = 4244


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path, atime, mtime):
    times = (Timespec * 2)(Timespec(*atime), Timespec(*mtime))
    cerr(libc.utimensat(AT_FDCWD, os.fsencode(path), times, 0))


# ------------------------------------------------------------------ chmod / chown


def test_chmod(d):
    p = os.path.join(d, "f")
    write_file(p, b"")
    for mode in (0o600, 0o755, 0o4755, 0o2755, 0o1777, 0o000, 0o7777):
        os.chmod(p, mode)
        assert stat.S_IMODE(os.stat(p).st_mode) == mode, oct(mode)
    os.chmod(d, 0o700)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_ISDIR(os.stat(d).st_mode)
    os.chmod(d, 0o755)


def test_chmod_updates_ctime(d):
    p = os.path.join(d, "f")
    write_file(p, b"")
    utimensat(p, (100, 0), (100, 0))
    ctime0 = os.stat(p).st_ctime_ns
    time.sleep(0.01)
    os.chmod(p, 0o600)
    st = os.stat(p)
    assert st.st_ctime_ns > ctime0
    assert st.st_mtime_ns == 100 * 10**9


def test_chown(d):
    p = os.path.join(d, "f")
    write_file(p, b"")
    os.chown(p, 1000, 2000)
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (1000, 2000)
    os.chown(p, -1, 3000)
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (1000, 3000)
    os.symlink("f", os.path.join(d, "l"))
    os.lchown(os.path.join(d, "l"), 7, 8)
    assert (os.lstat(os.path.join(d, "l")).st_uid, os.lstat(os.path.join(d, "l")).st_gid) == (7, 8)
    assert os.stat(p).st_uid == 1000


# ------------------------------------------------------------------ truncate


def test_truncate_down_and_up(d):
    p = os.path.join(d, "f")
    data = os.urandom(3 * 4096 + 123)
    write_file(p, data)
    os.truncate(p, 5000)
    assert os.stat(p).st_size == 5000
    assert read_file(p) == data[:5000]
    os.truncate(p, 100_000)
    assert os.stat(p).st_size == 100_000
    assert read_file(p) == data[:5000] + bytes(95_000)
    os.truncate(p, 0)
    assert read_file(p) == b""


@pytest.mark.parametrize("sync_between", [False, True])
def test_truncate_down_then_up_shows_no_old_bytes(d, sync_between):
    p = os.path.join(d, "f")
    write_file(p, b"A" * 8192)
    fd = os.open(p, os.O_RDWR)
    try:
        os.fsync(fd)
        os.ftruncate(fd, 100)
        if sync_between:
            os.fsync(fd)
        os.ftruncate(fd, 8192)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert read_file(p) == b"A" * 100 + bytes(8092)


def test_truncate_frees_blocks(d):
    p = os.path.join(d, "f")
    write_file(p, os.urandom(1 << 20))
    fd = os.open(p, os.O_RDWR)
    os.fsync(fd)
    os.close(fd)
    assert os.stat(p).st_blocks >= (1 << 20) // 512
    os.truncate(p, 4096)
    assert os.stat(p).st_blocks <= 8 * 2


def test_ftruncate_through_handle_and_errors(d):
    p = os.path.join(d, "f")
    write_file(p, b"x" * 10)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert errno_of(os.ftruncate, fd, 0) == errno.EINVAL
    finally:
        os.close(fd)
    assert errno_of(os.truncate, d, 0) == errno.EISDIR
    assert errno_of(os.truncate, p, -1) == errno.EINVAL


def test_truncate_updates_mtime(d):
    p = os.path.join(d, "f")
    write_file(p, b"x" * 10)
    utimensat(p, (100, 0), (100, 0))
    os.truncate(p, 3)
    assert os.stat(p).st_mtime > 1000


# ------------------------------------------------------------------ utimensat


def test_utime_explicit_nanoseconds(d):
    p = os.path.join(d, "f")
    write_file(p, b"")
    os.utime(p, ns=(1_234_567_890_123_456_789, 987_654_321_987_654_321))
    st = os.stat(p)
    assert st.st_atime_ns == 1_234_567_890_123_456_789
    assert st.st_mtime_ns == 987_654_321_987_654_321


def test_utime_times_before_1970(d):
    p = os.path.join(d, "f")
    write_file(p, b"")
    os.utime(p, ns=(-1_500_000_000, -86_400_000_000_001))
    st = os.stat(p)
    assert st.st_atime_ns == -1_500_000_000
    assert st.st_mtime_ns == -86_400_000_000_001


def test_utime_now(d):
    p = os.path.join(d, "f")
    write_file(p, b"")
    os.utime(p, ns=(10**9, 10**9))
    before = time.time_ns()
    os.utime(p)          # utimensat(NULL): both now
    after = time.time_ns()
    st = os.stat(p)
    for t in (st.st_atime_ns, st.st_mtime_ns):
        assert before - 10**9 <= t <= after + 10**9


def test_utimensat_utime_now_and_omit(d):
    p = os.path.join(d, "f")
    write_file(p, b"")
    utimensat(p, (1000, 5), (2000, 6))
    utimensat(p, (0, UTIME_NOW), (0, UTIME_OMIT))
    st = os.stat(p)
    assert abs(st.st_atime - time.time()) < 5
    assert st.st_mtime_ns == 2000 * 10**9 + 6
    utimensat(p, (0, UTIME_OMIT), (0, UTIME_NOW))
    st2 = os.stat(p)
    assert st2.st_atime_ns == st.st_atime_ns
    assert abs(st2.st_mtime - time.time()) < 5


def test_utime_on_directory_and_symlink(d):
    os.mkdir(os.path.join(d, "sub"))
    os.utime(os.path.join(d, "sub"), ns=(11, 22))
    assert os.stat(os.path.join(d, "sub")).st_mtime_ns == 22
    os.symlink("nowhere", os.path.join(d, "l"))
    os.utime(os.path.join(d, "l"), ns=(33, 44), follow_symlinks=False)
    assert os.lstat(os.path.join(d, "l")).st_mtime_ns == 44


def test_write_updates_mtime_and_ctime(d):
    p = os.path.join(d, "f")
    write_file(p, b"")
    os.utime(p, ns=(10**9, 10**9))
    with open(p, "ab") as f:
        f.write(b"x")
    st = os.stat(p)
    assert st.st_mtime > 100 and st.st_ctime > 100
    assert abs(st.st_mtime - time.time()) < 5


def test_explicit_mtime_after_write_wins(d):
    # tar and rsync write the data, then set the mtime: the cached write must not override it.
    p = os.path.join(d, "f")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"data" * 1000)
    os.utime(fd, ns=(777_000_000_123, 888_000_000_456))
    os.close(fd)
    assert os.stat(p).st_mtime_ns == 888_000_000_456
    fd = os.open(p, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    time.sleep(1.2)      # past the attribute timeout: ask pmfsd again
    assert os.stat(p).st_mtime_ns == 888_000_000_456


# ------------------------------------------------------------------ xattrs


def test_xattr_set_get_list_remove(d):
    p = os.path.join(d, "f")
    write_file(p, b"")
    os.setxattr(p, "user.one", b"1")
    os.setxattr(p, "user.two", b"\x00binary\xff" * 10)
    os.setxattr(p, "user.empty", b"")
    assert os.getxattr(p, "user.one") == b"1"
    assert os.getxattr(p, "user.two") == b"\x00binary\xff" * 10
    assert os.getxattr(p, "user.empty") == b""
    assert sorted(os.listxattr(p)) == ["user.empty", "user.one", "user.two"]
    os.setxattr(p, "user.one", b"replaced value")
    assert os.getxattr(p, "user.one") == b"replaced value"
    os.removexattr(p, "user.one")
    assert errno_of(os.getxattr, p, "user.one") == errno.ENODATA
    assert errno_of(os.removexattr, p, "user.one") == errno.ENODATA
    assert sorted(os.listxattr(p)) == ["user.empty", "user.two"]


def test_xattr_create_replace_flags(d):
    p = os.path.join(d, "f")
    write_file(p, b"")
    assert errno_of(os.setxattr, p, "user.x", b"v", os.XATTR_REPLACE) == errno.ENODATA
    os.setxattr(p, "user.x", b"v", os.XATTR_CREATE)
    assert errno_of(os.setxattr, p, "user.x", b"w", os.XATTR_CREATE) == errno.EEXIST
    assert os.getxattr(p, "user.x") == b"v"
    os.setxattr(p, "user.x", b"w", os.XATTR_REPLACE)
    assert os.getxattr(p, "user.x") == b"w"


def test_xattr_size_queries_and_erange(d):
    p = os.path.join(d, "f")
    write_file(p, b"")
    os.setxattr(p, "user.big", b"0123456789")
    path = os.fsencode(p)
    libc.getxattr.restype = ctypes.c_ssize_t
    libc.listxattr.restype = ctypes.c_ssize_t
    assert libc.getxattr(path, b"user.big", None, ctypes.c_size_t(0)) == 10
    small = ctypes.create_string_buffer(4)
    assert libc.getxattr(path, b"user.big", small, ctypes.c_size_t(4)) == -1
    assert ctypes.get_errno() == errno.ERANGE
    exact = ctypes.create_string_buffer(10)
    assert libc.getxattr(path, b"user.big", exact, ctypes.c_size_t(10)) == 10
    assert exact.raw == b"0123456789"
    assert libc.listxattr(path, None, ctypes.c_size_t(0)) == len(b"user.big\0")
    assert libc.listxattr(path, small, ctypes.c_size_t(4)) == -1
    assert ctypes.get_errno() == errno.ERANGE


def test_xattr_large_value_and_many_names(d):
    p = os.path.join(d, "f")
    write_file(p, b"")
    big = os.urandom(65536)
    os.setxattr(p, "user.large", big)
    assert os.getxattr(p, "user.large") == big
    assert errno_of(os.setxattr, p, "user.toolarge", bytes(65537)) == errno.E2BIG
    names = [f"user.n{i:03d}" for i in range(200)]
    for i, n in enumerate(names):
        os.setxattr(p, n, str(i).encode())
    assert set(os.listxattr(p)) == set(names) | {"user.large"}
    for i, n in enumerate(names):
        assert os.getxattr(p, n) == str(i).encode()


def test_xattr_on_directory_and_namespaces(d):
    os.setxattr(d, "user.dir", b"on a directory")
    assert os.getxattr(d, "user.dir") == b"on a directory"
    p = os.path.join(d, "f")
    write_file(p, b"")
    os.setxattr(p, "trusted.t", b"root only")
    assert os.getxattr(p, "trusted.t") == b"root only"
    assert errno_of(os.setxattr, p, "bogus.ns", b"x") == errno.EOPNOTSUPP
    # user.* xattrs are not allowed on symlinks (the kernel says EPERM).
    os.symlink("f", os.path.join(d, "l"))
    assert errno_of(os.setxattr, os.path.join(d, "l"), "user.x", b"v", follow_symlinks=False) == errno.EPERM
    os.removexattr(d, "user.dir")


def test_xattr_name_limits(d):
    p = os.path.join(d, "f")
    write_file(p, b"")
    longest = "user." + "n" * 250
    os.setxattr(p, longest, b"v")
    assert os.getxattr(p, longest) == b"v"
    assert errno_of(os.setxattr, p, "user." + "n" * 251, b"v") == errno.ERANGE


def test_xattr_needs_permission(d):
    p = os.path.join(d, "f")
    write_file(p, b"", mode=0o644)
    os.chmod(p, 0o644)
    os.setxattr(p, "user.x", b"v")
    assert as_user(USER, GROUP, os.getxattr, p, "user.x") == b"v"
    assert as_user(USER, GROUP, errno_of, os.setxattr, p, "user.y", b"v") == errno.EACCES
    assert as_user(USER, GROUP, errno_of, os.getxattr, p, "trusted.t") in (errno.ENODATA, errno.EPERM)


# ------------------------------------------------------------------ access(2)


def test_access_as_root(d):
    p = os.path.join(d, "f")
    write_file(p, b"")
    os.chmod(p, 0o644)
    assert os.access(p, os.R_OK | os.W_OK)
    assert not os.access(p, os.X_OK)          # root needs some x bit to execute
    os.chmod(p, 0o001)
    assert os.access(p, os.X_OK | os.R_OK | os.W_OK)
    assert not os.access(os.path.join(d, "nope"), os.F_OK)
    assert os.access(d, os.X_OK)


def test_access_as_user(d):
    p = os.path.join(d, "f")
    write_file(p, b"")
    os.chmod(p, 0o640)
    os.chown(p, 0, GROUP)
    os.chmod(d, 0o755)
    assert as_user(USER, GROUP, os.access, p, os.R_OK)
    assert not as_user(USER, GROUP, os.access, p, os.W_OK)
    assert not as_user(OTHER, OTHER, os.access, p, os.R_OK)
    assert as_user(OTHER, OTHER, os.access, p, os.F_OK)
    os.chown(p, USER, GROUP)
    os.chmod(p, 0o200)
    assert as_user(USER, GROUP, os.access, p, os.W_OK)
    assert not as_user(USER, GROUP, os.access, p, os.R_OK)


# ------------------------------------------------------------------ statfs


def test_statfs_numbers(pmfs, d):
    s = os.statvfs(d)
    assert s.f_bsize == 4096 and s.f_frsize == 4096
    assert s.f_namemax == 255
    total = s.f_blocks * s.f_frsize
    assert 1.9 * 2**30 <= total <= 2 * 2**30, total
    assert 0 < s.f_bfree <= s.f_blocks
    assert s.f_bavail <= s.f_bfree
    assert 0 < s.f_ffree <= s.f_files


def test_statfs_changes_after_writes(d):
    before = os.statvfs(d)
    p = os.path.join(d, "f")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    chunk = os.urandom(1 << 20)
    for _ in range(32):
        os.write(fd, chunk)
    os.fsync(fd)
    os.close(fd)
    for i in range(10):
        write_file(os.path.join(d, f"small{i}"), b"")
    after = os.statvfs(d)
    used = (before.f_bfree - after.f_bfree) * 4096
    assert 32 << 20 <= used <= (32 << 20) + (1 << 20), used
    assert before.f_ffree - after.f_ffree >= 11 or after.f_files > before.f_files
    os.unlink(p)
    # The unlinked file is freed once the kernel forgets it; give it a moment.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        again = os.statvfs(d)
        if (again.f_bfree - after.f_bfree) * 4096 >= 32 << 20:
            break
        time.sleep(0.1)
    assert (again.f_bfree - after.f_bfree) * 4096 >= 32 << 20


# ------------------------------------------------------------------ setgid directories


def test_setgid_directory_inheritance(d):
    g = os.path.join(d, "g")
    os.mkdir(g)
    os.chown(g, 0, GROUP)
    os.chmod(g, 0o2775)
    write_file(os.path.join(g, "file"), b"")
    assert os.stat(os.path.join(g, "file")).st_gid == GROUP
    os.mkdir(os.path.join(g, "sub"))
    st = os.stat(os.path.join(g, "sub"))
    assert st.st_gid == GROUP
    assert st.st_mode & stat.S_ISGID
    os.symlink("x", os.path.join(g, "link"))
    assert os.lstat(os.path.join(g, "link")).st_gid == GROUP
    os.mkfifo(os.path.join(g, "fifo"))
    assert os.stat(os.path.join(g, "fifo")).st_gid == GROUP
    # Without the bit: the creator's group.
    os.chmod(g, 0o775)
    write_file(os.path.join(g, "plain"), b"")
    assert os.stat(os.path.join(g, "plain")).st_gid == 0


def test_setgid_directory_as_user_outside_group(d):
    g = os.path.join(d, "g")
    os.mkdir(g)
    os.chown(g, 0, GROUP)
    os.chmod(g, 0o2777)

    def make():
        os.mkdir(os.path.join(g, "usersub"))
        fd = os.open(os.path.join(g, "userfile"), os.O_CREAT | os.O_WRONLY, 0o2755)
        os.close(fd)
        return os.stat(os.path.join(g, "usersub")), os.stat(os.path.join(g, "userfile"))
    sub, f = as_user(OTHER, OTHER, make)
    assert sub.st_gid == GROUP and sub.st_uid == OTHER
    assert sub.st_mode & stat.S_ISGID
    assert f.st_gid == GROUP and f.st_uid == OTHER
    # Creating a setgid file in a group one is not in drops the bit (inode_init_owner).
    assert not f.st_mode & stat.S_ISGID


# ------------------------------------------------------------------ sticky bit


def test_sticky_directory(d):
    t = os.path.join(d, "tmp")
    os.mkdir(t)
    os.chmod(t, 0o1777)

    def create(name):
        write_file(os.path.join(t, name), b"mine")
        return os.stat(os.path.join(t, name)).st_uid
    assert as_user(USER, GROUP, create, "users") == USER
    write_file(os.path.join(t, "roots"), b"root's")
    os.chmod(os.path.join(t, "roots"), 0o666)
    assert as_user(OTHER, OTHER, errno_of, os.unlink, os.path.join(t, "users")) == errno.EPERM
    assert as_user(OTHER, OTHER, errno_of, os.unlink, os.path.join(t, "roots")) == errno.EPERM
    assert as_user(OTHER, OTHER, errno_of, os.rename, os.path.join(t, "users"), os.path.join(t, "stolen")) == errno.EPERM
    # Writable, but not removable by others.
    assert as_user(OTHER, OTHER, errno_of, write_file, os.path.join(t, "roots"), b"w") is None
    # The owner may remove its own file.
    assert as_user(USER, GROUP, errno_of, os.unlink, os.path.join(t, "users")) is None
    assert sorted(os.listdir(t)) == ["roots"]
    # Without the sticky bit anyone with write permission on the directory may.
    os.chmod(t, 0o777)
    assert as_user(OTHER, OTHER, errno_of, os.unlink, os.path.join(t, "roots")) is None


# ------------------------------------------------------------------ set-ID bits


def test_write_by_non_root_clears_suid_sgid(d):
    os.chmod(d, 0o755)
    p = os.path.join(d, "prog")
    write_file(p, b"#!/bin/sh\n")
    os.chown(p, USER, GROUP)
    os.chmod(p, 0o6775)

    def append():
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        os.write(fd, b"echo hi\n")
        os.close(fd)
    as_user(USER, GROUP, append)
    mode = stat.S_IMODE(os.stat(p).st_mode)
    assert mode == 0o775, oct(mode)


def test_write_by_non_root_keeps_sgid_without_group_exec(d):
    # S_ISGID without S_IXGRP is mandatory locking, not set-group-ID: it stays.
    os.chmod(d, 0o755)
    p = os.path.join(d, "f")
    write_file(p, b"x")
    os.chown(p, USER, GROUP)
    os.chmod(p, 0o2664)

    def append():
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        os.write(fd, b"y")
        os.close(fd)
    as_user(USER, GROUP, append)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o2664


def test_truncate_by_non_root_clears_suid(d):
    os.chmod(d, 0o755)
    p = os.path.join(d, "prog")
    write_file(p, b"0123456789")
    os.chown(p, USER, GROUP)
    os.chmod(p, 0o4755)
    as_user(USER, GROUP, os.truncate, p, 3)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o755
    assert os.stat(p).st_size == 3


def test_open_trunc_by_non_root_clears_suid(d):
    os.chmod(d, 0o755)
    p = os.path.join(d, "prog")
    write_file(p, b"0123456789")
    os.chown(p, USER, GROUP)
    os.chmod(p, 0o4755)
    as_user(USER, GROUP, lambda: os.close(os.open(p, os.O_WRONLY | os.O_TRUNC)))
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o755
    assert os.stat(p).st_size == 0


def test_write_by_root_keeps_suid(d):
    p = os.path.join(d, "prog")
    write_file(p, b"x")
    os.chmod(p, 0o4755)
    with open(p, "ab") as f:
        f.write(b"more")
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o4755


def test_chown_clears_suid_sgid(d):
    p = os.path.join(d, "prog")
    write_file(p, b"x")
    os.chmod(p, 0o6755)
    os.chown(p, USER, -1)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o755
    # Directories keep theirs.
    sub = os.path.join(d, "sub")
    os.mkdir(sub)
    os.chmod(sub, 0o2755)
    os.chown(sub, USER, GROUP)
    assert stat.S_IMODE(os.stat(sub).st_mode) == 0o2755


@pytest.mark.parametrize("how", ["write", "truncate", "open_trunc", "chown"])
def test_file_capabilities_dropped_on_change(d, how):
    import struct
    os.chmod(d, 0o755)
    p = os.path.join(d, "prog")
    write_file(p, b"x")
    os.chown(p, USER, GROUP)
    os.chmod(p, 0o755)
    cap = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)     # VFS_CAP_REVISION_2, CAP_NET_BIND_SERVICE
    os.setxattr(p, "security.capability", cap)
    assert os.getxattr(p, "security.capability") == cap

    def change():
        if how == "write":
            fd = os.open(p, os.O_WRONLY)
            os.write(fd, b"y")
            os.close(fd)
        elif how == "truncate":
            os.truncate(p, 0)
        else:
            os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
    if how == "chown":
        os.chown(p, OTHER, OTHER)
    else:
        as_user(USER, GROUP, change)
    assert "security.capability" not in os.listxattr(p)


def test_chmod_sgid_by_non_member_is_dropped(d):
    os.chmod(d, 0o755)
    p = os.path.join(d, "f")
    write_file(p, b"")
    os.chown(p, USER, GROUP)
    # The owner is not in the file's group: chmod g+s silently drops it.
    as_user(USER, OTHER, os.chmod, p, 0o2755)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o755


# ------------------------------------------------------------------ permission denied


def test_permission_denied_for_other_user(d):
    os.chmod(d, 0o755)
    secret = os.path.join(d, "secret")
    write_file(secret, b"root only")
    os.chmod(secret, 0o600)
    public = os.path.join(d, "public")
    write_file(public, b"read only")
    os.chmod(public, 0o644)
    closed = os.path.join(d, "closed")
    os.mkdir(closed)
    write_file(os.path.join(closed, "inside"), b"")
    os.chmod(closed, 0o700)

    u = lambda f, *a: as_user(USER, GROUP, errno_of, f, *a)  # noqa: E731
    assert u(read_file, secret) == errno.EACCES
    assert u(os.open, public, os.O_WRONLY) == errno.EACCES
    assert u(read_file, public) is None
    assert u(os.open, os.path.join(d, "new"), os.O_CREAT | os.O_WRONLY, 0o644) == errno.EACCES
    assert u(os.mkdir, os.path.join(d, "newdir")) == errno.EACCES
    assert u(os.unlink, public) == errno.EACCES
    assert u(os.rename, public, os.path.join(d, "moved")) == errno.EACCES
    assert u(os.stat, os.path.join(closed, "inside")) == errno.EACCES
    assert u(os.listdir, closed) == errno.EACCES
    assert u(os.chmod, public, 0o777) == errno.EPERM
    assert u(os.chown, public, USER, GROUP) == errno.EPERM
    assert u(os.utime, public, (1, 1)) == errno.EPERM
    assert u(os.truncate, public, 0) == errno.EACCES
    assert u(os.utime, public, None) == errno.EACCES
    assert read_file(public) == b"read only"
    assert sorted(os.listdir(d)) == ["closed", "public", "secret"]


def test_owner_may_chmod_and_utime(d):
    os.chmod(d, 0o755)
    p = os.path.join(d, "f")
    write_file(p, b"")
    os.chown(p, USER, GROUP)
    as_user(USER, GROUP, os.chmod, p, 0o600)
    as_user(USER, GROUP, lambda: os.utime(p, ns=(5, 6)))
    st = os.stat(p)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_mtime_ns == 6
    # ...but not give it away.
    assert as_user(USER, GROUP, errno_of, os.chown, p, OTHER, -1) == errno.EPERM
