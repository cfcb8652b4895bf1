"""Running out of space: data blocks (ENOSPC at write time, nothing half written, space comes back) and
the metadata pool (ENOSPC from namespace operations; written data must not be silently lost)."""
import errno
import os
import subprocess
import time

import pytest

from conftest import Pmfs, require_fuse, serve


@pytest.fixture(scope="module")
def small_fs():
    yield from serve("pmfs-small", data_size="64M")


def test_data_device_full(small_fs):
    d = small_fs.mnt
    s = os.statvfs(d)
    capacity = s.f_bfree * 4096
    assert 60 << 20 <= capacity <= 64 << 20
    p = os.path.join(d, "fill")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    written = 0
    try:
        chunk = b"z" * (1 << 20)
        with pytest.raises(OSError) as e:
            while True:
                written += os.write(fd, chunk)
        assert e.value.errno == errno.ENOSPC
        # Whatever was acknowledged is there; a short write may have filled the last partial megabyte.
        with pytest.raises(OSError) as e:
            while True:
                written += os.write(fd, b"q" * 100)
        assert e.value.errno == errno.ENOSPC
        os.fsync(fd)
        assert os.fstat(fd).st_size == written
    finally:
        os.close(fd)
    assert capacity - (1 << 20) <= written <= capacity
    assert os.statvfs(d).f_bfree == 0
    assert errno_of_posix_fallocate(os.path.join(d, "more"), 1 << 20) == errno.ENOSPC
    assert os.path.getsize(os.path.join(d, "more")) == 0
    with open(p, "rb") as f:
        data = f.read()
    assert len(data) == written and data.strip(b"zq") == b""
    # Namespace operations still work on a full data device.
    os.mkdir(os.path.join(d, "dir"))
    os.symlink("fill", os.path.join(d, "link"))
    os.unlink(p)
    deadline = time.monotonic() + 5
    while os.statvfs(d).f_bfree * 4096 < capacity - (1 << 20) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.statvfs(d).f_bfree * 4096 >= capacity - (1 << 20)
    q = os.path.join(d, "again")
    with open(q, "wb") as f:
        f.write(b"y" * (32 << 20))
    assert os.path.getsize(q) == 32 << 20


def errno_of_posix_fallocate(path, n):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, n)
    except OSError as e:
        return e.errno
    finally:
        os.close(fd)
    return None


def test_fallocate_beyond_device_changes_nothing(small_fs):
    d = small_fs.mnt
    free = os.statvfs(d).f_bfree
    p = os.path.join(d, "huge")
    assert errno_of_posix_fallocate(p, 1 << 30) == errno.ENOSPC
    st = os.stat(p)
    assert st.st_size == 0 and st.st_blocks == 0
    assert os.statvfs(d).f_bfree == free
    os.unlink(p)


def test_pool_full_acknowledged_writes_are_kept():
    """A full metadata pool: writes are either refused (ENOSPC) or kept; the
    pool reserve lets acknowledged writes commit."""
    require_fuse()
    fs = Pmfs(name="pmfs-poolfull", data_size="64M", mkfs_args=("--pool-size", "13M"))
    try:
        fs.start()
        n = 0
        with pytest.raises(OSError) as e:
            while n < 100_000:
                open(fs.path(f"file-with-a-longish-name-{n:07d}"), "wb").close()
                n += 1
        assert e.value.errno == errno.ENOSPC, "the small pool never filled up"
        # Sparse writes: each needs a new extent in the (full) pool.
        fd = os.open(fs.path("file-with-a-longish-name-0000001"), os.O_WRONLY)
        acknowledged = 0
        try:
            for i in range(2000):
                acknowledged += os.pwrite(fd, b"d", i * 8192)
        except OSError as err:
            assert err.errno == errno.ENOSPC
        finally:
            os.close(fd)
        # A clean stop must keep every acknowledged byte (or pmfsd must have refused the writes).
        proc, fs.proc = fs.proc, None
        proc.terminate()
        rc = proc.wait(timeout=60)
        subprocess.run(["umount", "-l", fs.mnt], capture_output=True)
        assert rc == 0, f"pmfsd exit {rc} at SIGTERM:\n{fs.stderr()[-1500:]}"
        fs.start()
        with open(fs.path("file-with-a-longish-name-0000001"), "rb") as f:
            data = f.read()
        assert data.count(b"d") == acknowledged
        fs.stop()
        fs.assert_clean()
    finally:
        fs.cleanup()
