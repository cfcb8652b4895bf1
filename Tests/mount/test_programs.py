"""Real programs on the mount: sqlite3 (WAL and rollback journal), git, tar, rsync -aX.
They need the Debian packages sqlite3, git, tar, rsync and attr (getfattr); a missing one skips its test."""
import os
import random
import shutil
import stat
import subprocess
import tempfile

import pytest

from conftest import LONG, read_file, write_file


def need(tool):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (apt-get install {tool})")


def run(args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{args[:3]} exit {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    return r.stdout


# ------------------------------------------------------------------ sqlite3


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_sqlite_transactions(d, journal):
    need("sqlite3")
    n = 30_000 if LONG else 10_000
    db = os.path.join(d, "test.db")
    lines = [f"PRAGMA journal_mode={journal};", "PRAGMA synchronous=FULL;",
             "CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT UNIQUE, v BLOB);"]
    rng = random.Random(42)
    for i in range(n):
        # One transaction each: an insert, sometimes an update and a delete of older rows.
        stmts = [f"INSERT INTO t(k, v) VALUES('key{i}', randomblob({rng.randrange(10, 2000)}));"]
        if i % 7 == 3:
            stmts.append(f"UPDATE t SET v = randomblob(3000) WHERE id = {rng.randrange(1, i + 1)};")
        if i % 11 == 5:
            stmts.append(f"DELETE FROM t WHERE k = 'key{rng.randrange(0, i)}';")
        lines.append("BEGIN; " + " ".join(stmts) + " COMMIT;")
    lines.append("PRAGMA integrity_check;")
    lines.append("SELECT count(*) FROM t;")
    script = "\n".join(lines) + "\n"
    out = run(["sqlite3", "-batch", "-bail", db], input=script, timeout=600).split()
    assert out[0] == journal
    assert out[-2] == "ok", out[-5:]
    count = int(out[-1])
    assert n * 0.8 < count <= n
    # Again from a fresh process, and once more after dropping the kernel's caches of the file.
    out2 = run(["sqlite3", "-batch", db, "PRAGMA integrity_check; SELECT count(*) FROM t;"]).split()
    assert out2 == ["ok", str(count)]
    if journal == "wal":
        run(["sqlite3", db, "PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode=delete;"])
        assert not os.path.exists(db + "-wal") or os.path.getsize(db + "-wal") == 0
    run(["sqlite3", db, "VACUUM;"])
    assert run(["sqlite3", db, "PRAGMA integrity_check; SELECT count(*) FROM t;"]).split() == ["ok", str(count)]


# ------------------------------------------------------------------ git


def test_git_repository(d):
    need("git")
    n = 6000 if LONG else 3000
    repo = os.path.join(d, "repo")
    os.mkdir(repo)
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com", GIT_CONFIG_NOSYSTEM="1", HOME=d)
    git = lambda *a: run(["git", "-C", repo, *a], env=env, timeout=600)  # noqa: E731
    git("init", "-q", "-b", "main")
    rng = random.Random(3)
    for i in range(n):
        sub = os.path.join(repo, f"dir{i % 50:02d}", f"sub{i % 7}")
        os.makedirs(sub, exist_ok=True)
        write_file(os.path.join(sub, f"file{i:05d}.txt"), (f"file {i}\n" * rng.randrange(1, 200)).encode())
    os.symlink("dir00/sub0/file00000.txt", os.path.join(repo, "link"))
    git("add", "-A")
    git("commit", "-q", "-m", "first")
    assert git("status", "--porcelain") == ""
    # Change some, remove some, rename some: status sees exactly that.
    write_file(os.path.join(repo, "dir01", "sub1", "file00001.txt"), b"changed\n")
    os.unlink(os.path.join(repo, "dir02", "sub2", "file00002.txt"))
    os.rename(os.path.join(repo, "dir03", "sub3", "file00003.txt"), os.path.join(repo, "renamed.txt"))
    status = sorted(git("status", "--porcelain").splitlines())
    assert status == sorted([" M dir01/sub1/file00001.txt", " D dir02/sub2/file00002.txt",
                             " D dir03/sub3/file00003.txt", "?? renamed.txt"]), status
    git("add", "-A")
    git("commit", "-q", "-m", "second")
    git("gc", "-q", "--aggressive", "--prune=now")
    fsck = subprocess.run(["git", "-C", repo, "fsck", "--full", "--strict"], capture_output=True, text=True, env=env)
    assert fsck.returncode == 0 and "error" not in fsck.stderr.lower(), fsck.stderr
    assert git("rev-list", "--count", "HEAD").strip() == "2"
    # A clone on the mount checks out the same tree.
    clone = os.path.join(d, "clone")
    run(["git", "clone", "-q", repo, clone], env=env, timeout=600)
    diff = subprocess.run(["diff", "-r", "--no-dereference", "-x", ".git", repo, clone], capture_output=True, text=True)
    assert diff.returncode == 0, diff.stdout[-2000:]


# ------------------------------------------------------------------ tar


def make_tree(root, rng, files=400):
    """A tree with files of many sizes (holes too), directories, symlinks, hard links and odd modes."""
    os.makedirs(root)
    paths = []
    for i in range(files):
        sub = os.path.join(root, f"d{i % 13}", f"e{i % 5}")
        os.makedirs(sub, exist_ok=True)
        p = os.path.join(sub, f"f{i}")
        size = rng.choice([0, 1, 100, 4095, 4096, 4097, 70_000, 300_000])
        write_file(p, rng.randbytes(size))
        os.chmod(p, rng.choice([0o644, 0o600, 0o755, 0o444, 0o4755, 0o2755]))
        os.utime(p, ns=(rng.randrange(1, 2**33) * 10**9, rng.randrange(1, 2**33) * 10**9 + rng.randrange(10**9)))
        paths.append(p)
    sparse = os.path.join(root, "sparse")
    with open(sparse, "wb") as f:
        f.seek(5 << 20)
        f.write(b"end")
    for i in range(30):
        os.link(paths[i], os.path.join(root, f"hard{i}"))
        os.symlink(os.path.relpath(paths[i + 30], root), os.path.join(root, f"sym{i}"))
    os.symlink("/absolute/dangling", os.path.join(root, "dangling"))
    os.mkfifo(os.path.join(root, "fifo"))
    os.makedirs(os.path.join(root, "empty", "dir"))
    os.chmod(os.path.join(root, "d1"), 0o700)
    return paths


def test_tar_extract_and_compare(d):
    need("tar")
    rng = random.Random(11)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        src = os.path.join(tmp, "src")
        make_tree(src, rng)
        archive = os.path.join(tmp, "t.tar")
        run(["tar", "-C", src, "--format=posix", "--sparse", "-cf", archive, "."])    # pax: ns mtimes
        dst = os.path.join(d, "x")
        os.mkdir(dst)
        run(["tar", "-C", dst, "-xpf", archive], timeout=300)
        # tar's own comparison: contents, modes, owners, mtimes, link targets.
        out = run(["tar", "-C", dst, "--compare", "-f", archive])
        assert out == ""
        diff = subprocess.run(["diff", "-r", "--no-dereference", "-x", "fifo", src, dst], capture_output=True, text=True)
        assert diff.returncode == 0, diff.stdout[-3000:] + diff.stderr[-3000:]
        for i in range(30):
            a = os.lstat(os.path.join(dst, f"hard{i}"))
            b = os.lstat(os.path.join(dst, os.path.relpath(os.path.join(src, f"d{i % 13}", f"e{i % 5}", f"f{i}"), src)))
            assert a.st_ino == b.st_ino and a.st_nlink == 2
        for root, dirs, files in os.walk(src):
            for name in files + dirs:
                s = os.lstat(os.path.join(root, name))
                t = os.lstat(os.path.join(dst, os.path.relpath(os.path.join(root, name), src)))
                assert stat.S_IMODE(s.st_mode) == stat.S_IMODE(t.st_mode), name
                if not stat.S_ISDIR(s.st_mode) and not stat.S_ISLNK(s.st_mode):
                    assert s.st_mtime_ns == t.st_mtime_ns, name
        assert os.stat(os.path.join(dst, "sparse")).st_blocks <= 64
        assert stat.S_ISFIFO(os.lstat(os.path.join(dst, "fifo")).st_mode)     # diff cannot compare fifos
        # And back: archive the mount, extract elsewhere, compare again.
        again = os.path.join(tmp, "again")
        os.mkdir(again)
        run(["bash", "-c", f"tar -C {dst} -cf - . | tar -C {again} -xpf -"])
        diff = subprocess.run(["diff", "-r", "--no-dereference", "-x", "fifo", src, again], capture_output=True, text=True)
        assert diff.returncode == 0, diff.stdout[-3000:]


# ------------------------------------------------------------------ rsync -aX


def xattrs_of(root):
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            out[os.path.relpath(p, root)] = {n: os.getxattr(p, n) for n in os.listxattr(p) if n.startswith("user.")}
    return out


def test_rsync_round_trip_with_xattrs(d):
    need("rsync")
    rng = random.Random(5)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        src = os.path.join(tmp, "src")
        paths = make_tree(src, rng, files=200)
        for i, p in enumerate(paths):
            if i % 3 == 0:
                os.setxattr(p, "user.index", str(i).encode())
            if i % 5 == 0:
                os.setxattr(p, "user.blob", rng.randbytes(rng.randrange(0, 3000)))
        os.setxattr(os.path.join(src, "d3"), "user.dir", b"directory attribute")
        want = xattrs_of(src)
        assert sum(len(v) for v in want.values()) > 100
        mid = os.path.join(d, "mid") + "/"
        run(["rsync", "-aHX", "--sparse", src + "/", mid], timeout=300)
        assert xattrs_of(mid) == want
        back = os.path.join(tmp, "back") + "/"
        run(["rsync", "-aHX", mid, back], timeout=300)
        assert xattrs_of(back) == want
        diff = subprocess.run(["diff", "-r", "--no-dereference", "-x", "fifo", src, back], capture_output=True, text=True)
        assert diff.returncode == 0, diff.stdout[-3000:]
        assert stat.S_ISFIFO(os.lstat(os.path.join(mid, "fifo")).st_mode)
        assert stat.S_ISFIFO(os.lstat(os.path.join(back, "fifo")).st_mode)
        # A second rsync finds nothing to do (sizes and mtimes kept on the mount).
        out = run(["rsync", "-aHXi", src + "/", mid])
        assert out.strip() == "", out[:2000]
        # --checksum compares contents through the mount.
        out = run(["rsync", "-aHXic", src + "/", mid])
        assert out.strip() == "", out[:2000]
        if shutil.which("getfattr"):
            dump = run(["getfattr", "-h", "-R", "-d", "-m", "user.", "--absolute-names", mid])
            assert "user.index" in dump
        for i in range(30):
            assert read_file(os.path.join(mid, f"hard{i}")) == read_file(paths[i])


# ------------------------------------------------------------------ fio


@pytest.mark.parametrize("direct", [0, 1])
def test_fio_random_io_verifies(d, direct):
    """fio's own verification: random 4 KiB writes from two jobs (each on its
    own file) with a checksum header in every block, read back and checked;
    then a mixed random read/write run over the same files."""
    need("fio")
    common = ["fio", "--directory", d, "--size=16m", "--bs=4k", "--ioengine=psync", f"--direct={direct}",
              "--numjobs=2", "--group_reporting", "--minimal", "--verify_state_save=0"]
    run(common + ["--name=verify", "--rw=randwrite", "--verify=crc32c", "--verify_fatal=1",
                  "--do_verify=1", "--fsync=64"], timeout=600)
    run(common + ["--name=verify", "--rw=randrw", "--rwmixread=50", "--verify=crc32c", "--verify_fatal=1",
                  "--do_verify=1", "--runtime=5", "--time_based=0"], timeout=600)
    names = sorted(os.listdir(d))
    assert names == ["verify.0.0", "verify.1.0"], names
    assert all(os.path.getsize(os.path.join(d, n)) == 16 << 20 for n in names)
