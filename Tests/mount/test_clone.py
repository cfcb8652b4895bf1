"""Clones on the host mount: copy_file_range between two files of pmfs shares the blocks (df shows
no new space used), writes to either copy stay private, and fsck is clean. FICLONE does not reach
pmfsd: FUSE has no remap_file_range, so the kernel answers the ioctl itself (EOPNOTSUPP/EINVAL/ENOTTY)
and `cp --reflink=always` fails; coreutils' plain `cp` (9.x) and `cp --reflink=auto` use
copy_file_range, which is the clone path."""
import errno
import fcntl
import os
import subprocess
import time

import pytest

from conftest import serve

FICLONE = 0x40049409
SIZE = 24 << 20


@pytest.fixture(scope="module")
def fs():
    yield from serve("pmfs-clone", data_size="256M")


def used_blocks(path):
    s = os.statvfs(path)
    return s.f_blocks - s.f_bfree


def settle(path, *files):
    """df after `files` are written back (fsync: syncfs does not reach every FUSE kernel)."""
    for p in files:
        if os.path.exists(p):
            fd = os.open(p, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    return used_blocks(path)


def test_copy_file_range_clones_without_new_space(fs):
    src, dst = fs.path("base.img"), fs.path("clone.img")
    data = os.urandom(SIZE)
    with open(src, "wb") as f:
        f.write(data)
    before = settle(fs.mnt, src)
    fi = os.open(src, os.O_RDONLY)
    fo = os.open(dst, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        done = 0
        while done < SIZE:
            n = os.copy_file_range(fi, fo, SIZE - done, done, done)
            assert n > 0
            done += n
    finally:
        os.close(fi)
        os.close(fo)
    after = settle(fs.mnt, src, dst)
    # A clone costs pool metadata, not data blocks: well under 1% of the file.
    assert after - before < SIZE // 4096 // 100, (before, after)
    with open(dst, "rb") as f:
        assert f.read() == data
    assert os.stat(dst).st_blocks == os.stat(src).st_blocks

    # Copy-on-write: a write to the clone takes new blocks, the base keeps its bytes.
    with open(dst, "r+b") as f:
        f.seek(5 << 20)
        f.write(b"x" * 8192)
    assert settle(fs.mnt, dst) - after >= 2
    with open(src, "rb") as f:
        assert f.read() == data
    with open(dst, "rb") as f:
        got = f.read()
    assert got[: 5 << 20] == data[: 5 << 20] and got[5 << 20 : (5 << 20) + 8192] == b"x" * 8192
    assert got[(5 << 20) + 8192 :] == data[(5 << 20) + 8192 :]

    # Removing the base frees nothing the clone still uses; removing both frees it all.
    os.unlink(src)
    with open(dst, "rb") as f:
        assert f.read() == got
    os.unlink(dst)
    deadline = time.monotonic() + 5
    while settle(fs.mnt) > before - SIZE // 4096 + 16 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert settle(fs.mnt) <= before - SIZE // 4096 + 16


def test_cp_clones_and_ficlone_is_not_passed_through(fs):
    src, dst = fs.path("cp-src"), fs.path("cp-dst")
    data = os.urandom(8 << 20)
    with open(src, "wb") as f:
        f.write(data)
    with open(src, "rb") as fi, open(fs.path("ficlone-dst"), "wb") as fo:
        with pytest.raises(OSError) as e:
            fcntl.ioctl(fo.fileno(), FICLONE, fi.fileno())
        assert e.value.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTTY, errno.EXDEV)
    before = settle(fs.mnt, src)
    subprocess.run(["cp", "--reflink=auto", src, dst], check=True)
    after = settle(fs.mnt, src, dst)
    with open(dst, "rb") as f:
        assert f.read() == data
    version = subprocess.run(["cp", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    if int(version.split()[-1].split(".")[0]) >= 9:
        # coreutils 9 copies with copy_file_range: a clone.
        assert after - before < 64, (version, before, after)
    os.unlink(src)
    os.unlink(dst)
    os.unlink(fs.path("ficlone-dst"))


def test_random_clones_writes_and_truncates_match_a_model(fs):
    """fsx-style: three files, random writes, truncates, punches and copy_file_range (between files and
    within one, aligned so blocks are shared, or not), each file compared with its model after every
    operation; a fsck at the end of the module checks the shared-block counts."""
    import ctypes
    import random
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    rng = random.Random(5)
    paths = [fs.path(f"model{k}") for k in range(3)]
    fds = [os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644) for p in paths]
    models = [bytearray() for _ in paths]
    block, limit = 4096, 2 << 20
    try:
        for step in range(600 if not os.environ.get("PMFS_MOUNT_TEST_LONG") else 6000):
            k = rng.randrange(3)
            m = models[k]
            op = rng.choices(["write", "clone", "truncate", "punch", "fsync"], [35, 35, 10, 10, 10])[0]
            if op == "write":
                off, data = rng.randrange(0, limit), rng.randbytes(rng.choice([1, 100, 4096, 9000, 70000]))
                data = data[:max(0, limit - off)]
                os.pwrite(fds[k], data, off)
                if len(m) < off + len(data):
                    m.extend(bytes(off + len(data) - len(m)))
                m[off:off + len(data)] = data
            elif op == "clone":
                s = rng.randrange(3)
                src = models[s]
                aligned = rng.random() < 0.7
                unit = block if aligned else 1
                soff = rng.randrange(0, len(src) // unit + 2) * unit
                doff = rng.randrange(0, limit // unit // 2) * unit
                n = rng.choice([1, 3, 16, 100]) * block if aligned else rng.randrange(1, 100000)
                if s == k and max(soff, doff) < min(soff, doff) + n:
                    continue                            # overlapping ranges of one file: EINVAL by definition
                n = min(n, limit - doff)
                got = os.copy_file_range(fds[s], fds[k], n, soff, doff)
                want = max(0, min(n, len(src) - soff))
                # A short copy is allowed; what was copied must be the prefix.
                assert 0 <= got <= want, (step, got, want)
                chunk = bytes(src[soff:soff + got])
                if got:
                    if len(m) < doff + got:
                        m.extend(bytes(doff + got - len(m)))
                    m[doff:doff + got] = chunk
            elif op == "truncate":
                size = rng.randrange(0, limit)
                os.ftruncate(fds[k], size)
                del m[size:]
                m.extend(bytes(size - len(m)))
            elif op == "punch":
                off, n = rng.randrange(0, max(len(m), 1)), rng.choice([4096, 10000, 300000])
                assert libc.fallocate(fds[k], 0x03, off, n) == 0, os.strerror(ctypes.get_errno())
                end = min(off + n, len(m))
                if off < end:
                    m[off:end] = bytes(end - off)
            else:
                os.fsync(fds[k])
            got = os.pread(fds[k], limit + 1, 0)
            assert os.fstat(fds[k]).st_size == len(m), (step, op)
            if got != bytes(m):
                first = next(i for i in range(min(len(got), len(m)) + 1) if i >= len(got) or i >= len(m) or got[i] != m[i])
                pytest.fail(f"step {step} ({op} on model{k}): contents differ from offset {first}")
    finally:
        for fd in fds:
            os.close(fd)
