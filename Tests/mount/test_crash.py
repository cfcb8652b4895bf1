"""kill -9 of pmfsd in the middle of a write/fsync workload.

A child process appends self-checking records to files on the mount and fsyncs each one, then logs it
(offset, length, sequence number) to a file outside the mount; it also makes a new file now and then and
logs its name once created (namespace operations are durable when they return). pmfsd is killed with
SIGKILL while the child runs; the dead mount is lazily unmounted. fsck.pmfs -f -n then must find no damage:
exit 0, or problems only of the kinds an unclean stop leaves (the superblock state, the orphan list).
pmfsd is started again and every logged record and file must be there, intact. Another stop must leave
the pool clean."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import LONG, Pmfs, require_fuse

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "crash"))
from crashcheck import fsck_codes, fsck_problem, journal_problem  # noqa: E402  (shared with tools/crash/campaign.py)

CHILD = r'''
import hashlib, os, struct, sys, random
mnt, log_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
log = open(log_path, "a", buffering=1)
fds = [os.open(os.path.join(mnt, f"journal{i}"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) for i in range(3)]
offsets = [0, 0, 0]
seq = 0
try:
    while True:
        i = rng.randrange(3)
        body = rng.randbytes(rng.choice([16, 100, 3000, 4096, 9000, 70000]))
        rec = struct.pack("<QQ", seq, len(body)) + hashlib.sha256(body).digest() + body
        n = os.write(fds[i], rec)
        assert n == len(rec)
        (os.fsync if seq % 2 else os.fdatasync)(fds[i])
        log.write(f"rec {i} {offsets[i]} {len(rec)} {seq}\n")
        offsets[i] += n
        if seq % 10 == 0:
            name = os.path.join(mnt, "names", f"n{seq}")
            with open(name, "wb") as f:
                f.write(b"name %d" % seq)
                f.flush()
                os.fsync(f.fileno())
            log.write(f"name n{seq}\n")
        if seq % 25 == 0 and seq:
            # Unlinked while open: an orphan at the moment of the kill.
            p = os.path.join(mnt, f"orphan{seq}")
            fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
            os.write(fd, b"o" * 5000)
            os.unlink(p)
        seq += 1
except OSError as e:
    log.write(f"stopped {e.errno}\n")
'''



@pytest.mark.parametrize("round_", range(3 if LONG else 1))
def test_kill9_during_fsync_workload(round_):
    require_fuse()
    fs = Pmfs(name="pmfs-crash")
    child = None
    try:
        fs.start()
        os.mkdir(fs.path("names"))
        log_path = os.path.join(fs.data_dir, "child.log")
        open(log_path, "w").close()
        child = subprocess.Popen([sys.executable, "-c", CHILD, fs.mnt, log_path, str(round_)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/")
        # Let it run until it has fsynced a good number of records, then kill pmfsd under it.
        deadline = time.monotonic() + 60
        want = 300 + 200 * round_
        while time.monotonic() < deadline:
            with open(log_path) as f:
                if sum(1 for ln in f if ln.startswith("rec")) >= want:
                    break
            assert child.poll() is None, f"child died early: {child.stderr.read()}"
            time.sleep(0.05)
        fs.kill9()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise AssertionError("the child hung after pmfsd was killed (lazy unmount should fail its I/O)")

        with open(log_path) as f:
            lines = f.read().splitlines()
        records = [tuple(map(int, ln.split()[1:])) for ln in lines if ln.startswith("rec ")]
        names = [ln.split()[1] for ln in lines if ln.startswith("name ")]
        assert len(records) >= want, lines[-3:]

        rc, out = fs.fsck()
        codes = fsck_codes(out)
        print(f"fsck after kill -9: exit {rc}, codes {sorted(codes)}\n{out}")
        assert fsck_problem(rc, out) is None, f"fsck found damage after kill -9: {fsck_problem(rc, out)}"

        fs.start()
        assert "recovered after an unclean stop" in fs.stderr(), fs.stderr()[-2000:]
        for i in range(3):
            data = open(fs.path(f"journal{i}"), "rb").read()
            mine = [(seq, off, n) for j, off, n, seq in records if j == i]
            problem = journal_problem(f"journal{i}", data, mine)
            assert problem is None, problem
        for n in names:
            assert open(fs.path("names", n), "rb").read() == b"name %d" % int(n[1:])
        fs.stop()
        fs.assert_clean()
    finally:
        if child and child.poll() is None:
            child.kill()
            child.wait()
        fs.cleanup()


def test_restart_keeps_everything():
    """A clean stop and start: data, names, attributes and xattrs all come back."""
    require_fuse()
    fs = Pmfs(name="pmfs-restart")
    try:
        fs.start()
        blobs = {}
        os.makedirs(fs.path("a", "b"))
        for i in range(50):
            data = os.urandom(i * 3001)
            blobs[f"a/b/f{i}"] = data
            with open(fs.path("a", "b", f"f{i}"), "wb") as f:
                f.write(data)          # not fsynced: the clean stop writes it back
        os.symlink("b/f1", fs.path("a", "link"))
        os.link(fs.path("a", "b", "f2"), fs.path("a", "hard"))
        os.setxattr(fs.path("a"), "user.k", b"v")
        os.chmod(fs.path("a", "b", "f3"), 0o4711)
        os.utime(fs.path("a", "b", "f4"), ns=(123, 456_789))
        os.mkfifo(fs.path("a", "fifo"))
        with open(fs.path("sparse"), "wb") as f:
            f.seek(1 << 30)
            f.write(b"far")
        fs.stop()
        fs.assert_clean()
        fs.start()
        for rel, data in blobs.items():
            assert open(fs.path(rel), "rb").read() == data, rel
        assert os.readlink(fs.path("a", "link")) == "b/f1"
        assert os.stat(fs.path("a", "hard")).st_nlink == 2
        assert os.getxattr(fs.path("a"), "user.k") == b"v"
        assert os.stat(fs.path("a", "b", "f3")).st_mode & 0o7777 == 0o4711
        assert os.stat(fs.path("a", "b", "f4")).st_mtime_ns == 456_789
        st = os.stat(fs.path("sparse"))
        assert st.st_size == (1 << 30) + 3 and st.st_blocks <= 16
        with open(fs.path("sparse"), "rb") as f:
            f.seek(1 << 30)
            assert f.read() == b"far"
        fs.stop()
        fs.assert_clean()
    finally:
        fs.cleanup()


def test_kill9_during_namespace_churn():
    """kill -9 while processes create, write, rename, link and unlink in shared directories: fsck finds no
    damage, and every published file is either whole or empty (its data was never fsynced: allowed to be
    lost, but never torn or mixed with other data)."""
    import multiprocessing
    import test_stress as ts
    require_fuse()
    fs = Pmfs(name="pmfs-crashchurn")
    procs = []
    try:
        fs.start()
        root = fs.path("stress")
        os.mkdir(root)
        for i in range(ts.SHARED):
            os.mkdir(os.path.join(root, f"s{i}"))
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()
        deadline = time.time() + 60
        procs = [ctx.Process(target=ts.churner, args=(root, 500 + i, deadline, q)) for i in range(3)]
        for p in procs:
            p.start()
        time.sleep(3)
        fs.kill9()
        for p in procs:
            p.join(30)
            assert not p.is_alive(), "a churner hung after pmfsd was killed"
        rc, out = fs.fsck()
        codes = fsck_codes(out)
        print(f"fsck after kill -9: exit {rc}, codes {sorted(codes)}\n{out}")
        assert fsck_problem(rc, out) is None, f"fsck found damage after kill -9: {fsck_problem(rc, out)}"
        fs.start()
        published = 0
        for dirpath, _, names in os.walk(root):
            for n in names:
                if n.startswith("f-"):
                    published += 1
                    with open(os.path.join(dirpath, n), "rb") as f:
                        data = f.read()
                    if data:
                        problem = ts.check_payload(data)
                        assert problem is None, f"{n}: {problem}"
        assert published > 0
        fs.stop()
        fs.assert_clean()
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        fs.cleanup()
