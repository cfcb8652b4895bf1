"""pmfsctl snapshot against a live pmfsd: a copy of a tree whose files share their blocks with the source's.

The copy must equal the source (types, modes, owners, times, xattrs, symlinks, hard links, contents), be one
point of it while a writer works (the records it holds are exactly a prefix of the writer's sequence), keep
writes to either side apart, and, with --read-only, refuse every change with EROFS. The module's file system is
checked clean by fsck.pmfs when pmfsd stops (serve()).
"""
import errno
import json
import os
import stat
import subprocess
import threading
import time

import pytest

from conftest import binary, serve, write_file
from test_control import control_ready, with_control


@pytest.fixture(scope="module")
def fs():
    yield from serve("pmfs-snapshot", with_control, control_ready)


def snapshot(f, source, target, *flags):
    run = subprocess.run([binary("pmfsctl"), "snapshot", source, target, *flags, "--json", "--control", f.control],
                         capture_output=True, text=True, timeout=60)
    return run


def snapshot_ok(f, source, target, *flags):
    run = snapshot(f, source, target, *flags)
    assert run.returncode == 0, run.stderr
    reply = json.loads(run.stdout)
    assert reply["ok"], reply
    return reply["snapshot"]


def make_tree(root):
    os.makedirs(os.path.join(root, "sub", "deep"))
    write_file(os.path.join(root, "big"), os.urandom(3 << 20))
    write_file(os.path.join(root, "small"), b"hello\n", mode=0o600)
    write_file(os.path.join(root, "sub", "tail"), os.urandom(5000))
    os.link(os.path.join(root, "big"), os.path.join(root, "sub", "big-link"))
    os.symlink("../big", os.path.join(root, "sub", "sym"))
    os.mkfifo(os.path.join(root, "fifo"), 0o640)
    os.setxattr(os.path.join(root, "small"), "user.tag", b"v1")
    os.chown(os.path.join(root, "sub"), 123, 456)
    os.chmod(os.path.join(root, "sub", "deep"), 0o1777)
    os.utime(os.path.join(root, "small"), ns=(1_000_000_123, 2_000_000_456))


def tree(root):
    """Everything a copy must keep, by relative path; hard links as groups of paths."""
    out, inodes = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [""] + dirnames + filenames if dirpath == root else dirnames + filenames:
            path = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            entry = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                     st.st_nlink if stat.S_ISDIR(st.st_mode) else None, sorted((n, os.getxattr(path, n, follow_symlinks=False))
                     for n in os.listxattr(path, follow_symlinks=False)))
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    entry += (fh.read(),)
            elif stat.S_ISLNK(st.st_mode):
                entry += (os.readlink(path),)
            out[rel] = entry
            if not stat.S_ISDIR(st.st_mode):
                inodes.setdefault(st.st_ino, []).append(rel)
    return out, sorted(sorted(v) for v in inodes.values())


def test_clone_equals_source_and_writes_stay_apart(fs):
    base = fs.path("base")
    os.mkdir(base)
    make_tree(base)
    before = tree(base)
    made = snapshot_ok(fs, "base", "clone")
    assert made["inodes"] == 8 and made["files"] == 3 and made["directories"] == 3 and not made["readOnly"]
    assert made["sharedBlocks"] == (3 << 20) // 4096 + 1 + 2
    clone = fs.path("clone")
    assert tree(clone) == before
    assert os.stat(os.path.join(clone, "big")).st_ino != os.stat(os.path.join(base, "big")).st_ino
    # Writes to the clone (in place, appended, new files, xattrs) leave the source as it was.
    with open(os.path.join(clone, "big"), "r+b") as fh:
        fh.seek(4096 * 7 + 11)
        fh.write(b"X" * 9000)
    with open(os.path.join(clone, "small"), "ab") as fh:
        fh.write(b"more\n")
    os.setxattr(os.path.join(clone, "small"), "user.tag", b"v2")
    write_file(os.path.join(clone, "sub", "new"), b"new")
    os.unlink(os.path.join(clone, "sub", "tail"))
    assert tree(base) == before
    # And writes to the source leave the clone alone.
    clone_now = tree(clone)
    with open(os.path.join(base, "sub", "big-link"), "r+b") as fh:
        fh.write(b"Y" * 100)
    assert tree(clone) == clone_now
    # Absolute paths under the host mount work too; the copy of the copy is the copy.
    snapshot_ok(fs, clone, fs.path("clone2"))
    assert tree(fs.path("clone2")) == clone_now


def test_refusals(fs):
    os.mkdir(fs.path("r-src"))
    os.mkdir(fs.path("r-exists"))
    for target, want in [("r-exists", "File exists"), ("r-src/inside", "Invalid argument"), ("nope/x", "No such file"),
                         ("/elsewhere/x", "not under pmfsd's host mount"), ("../x", "'..' is not allowed")]:
        run = snapshot(fs, "r-src", target)
        assert run.returncode != 0 and want in run.stderr, (target, run.stderr)
    write_file(fs.path("r-file"), b"x")
    run = snapshot(fs, "r-file", "r-copy")
    assert run.returncode != 0 and "not a directory" in run.stderr, run.stderr
    assert not os.path.exists(fs.path("r-copy"))


def test_snapshot_is_one_point_while_a_writer_works(fs):
    """One writer appends record i to file i % 8 or creates file n<i>, each acknowledged before the next;
    the snapshot must hold records 0..N-1 for one N, nothing else."""
    work = fs.path("busy")
    os.mkdir(work)
    stop = threading.Event()
    count = [0]
    failure = []

    def writer():
        try:
            i = 0
            while not stop.is_set():
                if i % 5 == 4:
                    write_file(os.path.join(work, f"n{i}"), b"%d\n" % i)
                else:
                    fd = os.open(os.path.join(work, f"f{i % 8}"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                    os.write(fd, b"%d\n" % i)
                    os.close(fd)
                i += 1
                count[0] = i
        except Exception as e:   # reported by the test
            failure.append(e)

    t = threading.Thread(target=writer)
    t.start()
    try:
        shots = []
        for k in range(3):
            while count[0] < 200 * (k + 1):
                time.sleep(0.01)
            shots.append(snapshot_ok(fs, "busy", f"busy-{k}", *(["--read-only"] if k == 1 else [])))
    finally:
        stop.set()
        t.join(60)
    assert not failure, failure
    sizes = []
    for k in range(3):
        records = []
        root = fs.path(f"busy-{k}")
        for name in os.listdir(root):
            with open(os.path.join(root, name), "rb") as fh:
                lines = fh.read().split(b"\n")
            assert lines[-1] == b"", f"{name}: a torn record"
            records += [int(x) for x in lines[:-1]]
            if name.startswith("f"):
                assert all(int(x) % 8 == int(name[1:]) for x in lines[:-1])
        assert sorted(records) == list(range(len(records))), f"busy-{k} is not one point of the writer"
        assert len(records) >= 200 * (k + 1)
        sizes.append(len(records))
    assert sizes == sorted(sizes)


def test_read_only_snapshot_refuses_every_change(fs):
    base = fs.path("ro-base")
    os.mkdir(base)
    make_tree(base)
    before = tree(base)
    made = snapshot_ok(fs, "ro-base", "ro", "--read-only")
    assert made["readOnly"]
    ro = fs.path("ro")
    assert tree(ro) == before
    attempts = [
        lambda: open(os.path.join(ro, "big"), "r+b"),
        lambda: open(os.path.join(ro, "small"), "ab"),
        lambda: os.truncate(os.path.join(ro, "small"), 0),
        lambda: write_file(os.path.join(ro, "new"), b"x"),
        lambda: os.mkdir(os.path.join(ro, "sub", "d")),
        lambda: os.unlink(os.path.join(ro, "small")),
        lambda: os.rmdir(os.path.join(ro, "sub", "deep")),
        lambda: os.rename(os.path.join(ro, "small"), os.path.join(ro, "small2")),
        lambda: os.rename(os.path.join(ro, "small"), fs.path("escaped")),
        lambda: os.link(os.path.join(ro, "small"), fs.path("linked")),
        lambda: os.symlink("x", os.path.join(ro, "sub", "s2")),
        lambda: os.chmod(os.path.join(ro, "small"), 0o777),
        lambda: os.chown(os.path.join(ro, "small"), 1, 1),
        lambda: os.utime(os.path.join(ro, "small"), (1, 1)),
        lambda: os.setxattr(os.path.join(ro, "small"), "user.tag", b"v9"),
        lambda: os.removexattr(os.path.join(ro, "small"), "user.tag"),
        lambda: os.mkfifo(os.path.join(ro, "f2")),
    ]
    for i, attempt in enumerate(attempts):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS, (i, e.value)
    assert tree(ro) == before
    # A writable clone of the read-only snapshot takes changes again.
    snapshot_ok(fs, "ro", "ro-clone")
    write_file(os.path.join(fs.path("ro-clone"), "new"), b"ok")
    assert tree(ro) == before
