"""Concurrency stress on a mount of its own: processes creating, renaming, linking and unlinking in shared
directories while others read and write, for a bounded time (20 s; PMFS_MOUNT_TEST_LONG=1: 120 s). Afterwards
every file's contents are checked, link counts are matched against the names found, and the fixture stops
pmfsd and requires a clean fsck."""
import errno
import hashlib
import multiprocessing
import os
import random
import struct
import time
import traceback

import pytest

from conftest import LONG, serve

DURATION = 120 if LONG else 20
SHARED = 4                  # shared directories
EXPECTED = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR, errno.EINVAL}


@pytest.fixture(scope="module")
def stress_fs():
    yield from serve("pmfs-stress", cache_size="32M")


def payload(rng):
    """Self-checking contents: length, sha256 of the body, body."""
    body = rng.randbytes(rng.choice([0, 10, 4096, 5000, 70_000, 300_000]))
    return struct.pack("<Q", len(body)) + hashlib.sha256(body).digest() + body


def check_payload(data):
    if len(data) < 40:
        return f"short file: {len(data)} bytes"
    (n,) = struct.unpack("<Q", data[:8])
    if len(data) != 40 + n:
        return f"length {len(data)}, header says {40 + n}"
    if hashlib.sha256(data[40:]).digest() != data[8:40]:
        return "checksum mismatch"
    return None


def churner(root, seed, deadline, errors):
    """Makes complete files under tmp- names, publishes them by rename as f-*, links, renames across the
    shared directories, unlinks, and makes and removes directories."""
    rng = random.Random(seed)
    ops = 0
    try:
        while time.time() < deadline:
            ops += 1
            d = os.path.join(root, f"s{rng.randrange(SHARED)}")
            d2 = os.path.join(root, f"s{rng.randrange(SHARED)}")
            k = rng.random()
            try:
                if k < 0.3:
                    tmp = os.path.join(d, f"tmp-{seed}-{ops}")
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    data = payload(rng)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    if rng.random() < 0.2:
                        os.fsync(fd)
                    os.close(fd)
                    os.rename(tmp, os.path.join(d2, f"f-{rng.randrange(200)}"))
                elif k < 0.45:
                    os.rename(os.path.join(d, f"f-{rng.randrange(200)}"), os.path.join(d2, f"f-{rng.randrange(200)}"))
                elif k < 0.6:
                    os.unlink(os.path.join(d, f"f-{rng.randrange(200)}"))
                elif k < 0.7:
                    os.link(os.path.join(d, f"f-{rng.randrange(200)}"), os.path.join(d2, f"f-{rng.randrange(200)}"))
                elif k < 0.8:
                    sub = os.path.join(d, f"dir-{rng.randrange(20)}")
                    os.mkdir(sub)
                    os.symlink(f"../f-{rng.randrange(200)}", os.path.join(sub, "link"))
                elif k < 0.9:
                    sub = os.path.join(d, f"dir-{rng.randrange(20)}")
                    for e in os.listdir(sub):
                        os.unlink(os.path.join(sub, e))
                    os.rmdir(sub)
                else:
                    os.rename(os.path.join(d, f"dir-{rng.randrange(20)}"), os.path.join(d2, f"dir-{rng.randrange(20)}"))
            except OSError as e:
                if e.errno not in EXPECTED:
                    errors.put(f"churner {seed}: {e!r}")
                    return
        errors.put(("ops", ops))
    except Exception:
        errors.put(f"churner {seed}: {traceback.format_exc()}")


def writer(root, seed, deadline, errors):
    """Random writes and truncates to a file of its own, checked against a model at the end."""
    rng = random.Random(seed)
    path = os.path.join(root, f"private-{seed}")
    model = bytearray()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        while time.time() < deadline:
            k = rng.random()
            if k < 0.8:
                off = rng.randrange(0, 8 << 20)
                data = rng.randbytes(rng.choice([1, 100, 4096, 10_000, 1 << 20]))
                os.pwrite(fd, data, off)
                if len(model) < off + len(data):
                    model.extend(bytes(off + len(data) - len(model)))
                model[off:off + len(data)] = data
            elif k < 0.85:
                cut = rng.randrange(0, len(model) + 1)
                os.ftruncate(fd, cut)
                del model[cut:]
            elif k < 0.95:
                os.fsync(fd)
            else:
                off = rng.randrange(0, len(model) + 1)
                got = os.pread(fd, 1 << 20, off)
                if got != bytes(model[off:off + (1 << 20)]):
                    errors.put(f"writer {seed}: read at {off} differs from the model")
                    return
        os.fsync(fd)
        os.close(fd)
        with open(path, "rb") as f:
            got = f.read()
        if got != bytes(model):
            first = next((i for i in range(min(len(got), len(model))) if got[i] != model[i]), min(len(got), len(model)))
            errors.put(f"writer {seed}: final contents differ (size {len(got)} vs {len(model)}, first at {first})")
    except Exception:
        errors.put(f"writer {seed}: {traceback.format_exc()}")


def reader(root, seed, deadline, errors):
    """Lists the shared directories and checks every published file it manages to read."""
    rng = random.Random(seed)
    try:
        while time.time() < deadline:
            d = os.path.join(root, f"s{rng.randrange(SHARED)}")
            try:
                names = os.listdir(d)
            except OSError as e:
                errors.put(f"reader {seed}: listdir {e!r}")
                return
            if len(names) != len(set(names)):
                errors.put(f"reader {seed}: duplicate names in {d}")
                return
            for name in rng.sample(names, min(10, len(names))):
                p = os.path.join(d, name)
                try:
                    if name.startswith("f-"):
                        with open(p, "rb") as f:
                            data = f.read()
                        problem = check_payload(data)
                        if problem:
                            errors.put(f"reader {seed}: {p}: {problem}")
                            return
                    elif name.startswith("dir-"):
                        for e in os.listdir(p):
                            os.lstat(os.path.join(p, e))
                    else:
                        os.lstat(p)
                except OSError as e:
                    if e.errno not in EXPECTED:
                        errors.put(f"reader {seed}: {p}: {e!r}")
                        return
    except Exception:
        errors.put(f"reader {seed}: {traceback.format_exc()}")


def test_concurrent_namespace_and_data(stress_fs):
    root = stress_fs.path("stress")
    os.mkdir(root)
    for i in range(SHARED):
        os.mkdir(os.path.join(root, f"s{i}"))
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    deadline = time.time() + DURATION
    procs = [ctx.Process(target=churner, args=(root, 100 + i, deadline, errors)) for i in range(3)]
    procs += [ctx.Process(target=writer, args=(root, 200 + i, deadline, errors)) for i in range(2)]
    procs += [ctx.Process(target=reader, args=(root, 300 + i, deadline, errors)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(DURATION + 120)
    stuck = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    found, ops = [], 0
    while not errors.empty():
        e = errors.get()
        if isinstance(e, tuple):
            ops += e[1]
        else:
            found.append(e)
    assert not stuck, f"processes still running {DURATION + 120} s after the deadline: {stuck}"
    assert not found, "\n".join(found)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    print(f"churners did {ops} namespace operations in {DURATION} s")
    assert ops >= 100 * DURATION // 20, f"only {ops} namespace operations: the stress did not run"

    # Every published file is whole; link counts match the names found in the tree.
    names_of = {}
    files = 0
    for dirpath, dirs, fnames in os.walk(root):
        for n in fnames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            names_of.setdefault(st.st_ino, []).append((p, st.st_nlink))
            if n.startswith("f-"):
                files += 1
                with open(p, "rb") as f:
                    problem = check_payload(f.read())
                assert problem is None, f"{p}: {problem}"
            elif n == "link":
                assert os.readlink(p).startswith("../f-")
        for n in dirs:
            st = os.lstat(os.path.join(dirpath, n))
            assert st.st_nlink == 2 + sum(1 for e in os.scandir(os.path.join(dirpath, n)) if e.is_dir(follow_symlinks=False))
    for ino, names in names_of.items():
        assert all(n == len(names) for _, n in names), f"inode {ino}: nlink {names[0][1]} but names {[p for p, _ in names]}"
    assert files > 0
    leftovers = [n for dp, _, fn in os.walk(root) for n in fn if n.startswith("tmp-")]
    # tmp- files exist only if a churner was stopped between create and rename: at most one each.
    assert len(leftovers) <= 3, leftovers


@pytest.fixture(scope="module")
def tiny_cache_fs():
    yield from serve("pmfs-tinycache", cache_size="64K")


def test_writers_and_readers_with_a_tiny_cache(tiny_cache_fs):
    """A 64 KiB write-back cache (16 frames) under four processes writing and reading 4 MiB files:
    throttling must neither deadlock nor lose or mix data."""
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    deadline = time.time() + (60 if LONG else 8)
    procs = [ctx.Process(target=writer, args=(tiny_cache_fs.mnt, 400 + i, deadline, errors)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    stuck = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert not stuck, f"writers stuck (deadlock in cache throttling?): {stuck}"
    assert not found, "\n".join(found)
    assert all(p.exitcode == 0 for p in procs)
