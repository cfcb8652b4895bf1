"""Fixtures for the pmfs mount tests: a real pmfsd serving a fresh file system through /dev/fuse.

Each test module gets its own file system (module-scoped `pmfs`): a new pool on /dev/shm and a new
data file in /var/tmp, pmfsd from .build/debug mounting it on a new directory. At the end of the
module pmfsd is stopped with SIGTERM, must exit 0, and `fsck.pmfs -f -n` must find the pool clean.

Run with `python3 -m pytest -q Tests/mount` after `swift build` (pmfsd, mkfs.pmfs, fsck.pmfs).
PMFS_MOUNT_TEST_LONG=1 turns on the long mode (bigger counts, longer stress).
PMFS_BUILD_DIR overrides where the binaries are (default .build/debug).
PMFSD_ARGS adds arguments to every pmfsd, e.g. "--io-engine threads" or "--write-through".
PMFS_FUSE_TRANSPORT=auto|uring|device picks the host transport (`--fuse-transport`; pmfsd's default is
auto); with uring, each pmfsd must say at start that it serves through io_uring and, when stopped, that
requests came through it.
"""
import ctypes
import ctypes.util
import os
import pickle
import re
import shutil
import signal
import subprocess
import tempfile
import time
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("PMFS_BUILD_DIR", ROOT / ".build" / "debug"))
LONG = os.environ.get("PMFS_MOUNT_TEST_LONG", "") not in ("", "0")
ENV = dict(os.environ, PMEM_IS_PMEM_FORCE="1")
TRANSPORT = os.environ.get("PMFS_FUSE_TRANSPORT", "")

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def binary(name):
    path = BUILD / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `swift build --product {name}` first")
    return str(path)


def unescape_mountinfo(field):
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_entry(path):
    """The /proc/self/mountinfo line mounted at `path`, split into fields, or None."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and unescape_mountinfo(fields[4]) == path:
                return fields
    return None


def fuse_type(fields):
    sep = fields.index("-")
    return fields[sep + 1]


class Pmfs:
    """One pmfs file system: its pool, data file, mount point and (while served) pmfsd."""

    def __init__(self, data_size="2G", cache_size=None, name="pmfs", mkfs_args=()):
        self.pool_dir = tempfile.mkdtemp(prefix=f"{name}-pool-", dir="/dev/shm")
        self.data_dir = tempfile.mkdtemp(prefix=f"{name}-data-", dir="/var/tmp")
        self.mnt_dir = tempfile.mkdtemp(prefix=f"{name}-mnt-", dir="/tmp")
        self.pool = os.path.join(self.pool_dir, "p.pool")
        self.data = os.path.join(self.data_dir, "data.img")
        self.mnt = os.path.realpath(self.mnt_dir)
        self.cache_size = cache_size
        self.proc = None
        self.stderr_path = os.path.join(self.pool_dir, "pmfsd.stderr")
        self.stderr_file = None
        self.starts = 0
        self.start_args = []   # extra pmfsd arguments for this file system (after PMFSD_ARGS and the transport)
        self.config = None     # a --config file naming the pool, data and mount, in place of those flags
        self.env = ENV   # pmfsd's environment
        run = subprocess.run([binary("mkfs.pmfs"), "--pool", self.pool, "--data", self.data, "--data-size", data_size, "-q", *mkfs_args],
                             env=ENV, capture_output=True, text=True)
        if run.returncode != 0:
            self.cleanup()
            pytest.fail(f"mkfs.pmfs failed ({run.returncode}): {run.stderr}")

    def stderr(self):
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def start(self, timeout=30):
        assert self.proc is None, "pmfsd already running"
        if self.config:
            args = [binary("pmfsd"), "--config", self.config]
        else:
            args = [binary("pmfsd"), "--pool", self.pool, "--data", self.data, "--mount", self.mnt]
        if self.cache_size:
            args += ["--cache-size", self.cache_size]
        if TRANSPORT:
            args += ["--fuse-transport", TRANSPORT]
        args += os.environ.get("PMFSD_ARGS", "").split()
        args += self.start_args
        self.stderr_file = open(self.stderr_path, "a")
        self.stderr_file.write(f"--- start {self.starts}\n")
        self.stderr_file.flush()
        self.starts += 1
        self.proc = subprocess.Popen(args, env=self.env, stdin=subprocess.DEVNULL, stdout=self.stderr_file, stderr=self.stderr_file)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fields = mount_entry(self.mnt)
            if fields is not None:
                assert fuse_type(fields) == "fuse.pmfs", f"unexpected mount at {self.mnt}: {fields}"
                if self.transport() == "uring":
                    self.expect_log("transport io_uring", deadline)
                return self
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                pytest.fail(f"pmfsd exited with {rc} before mounting {self.mnt}; stderr:\n{self.stderr()}")
            time.sleep(0.02)
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        pytest.fail(f"{self.mnt} did not appear in /proc/self/mountinfo within {timeout} s; pmfsd stderr:\n{self.stderr()}")

    def stop(self, timeout=60):
        """SIGTERM; pmfsd must unmount, write back and exit 0."""
        assert self.proc is not None, "pmfsd is not running"
        proc, self.proc = self.proc, None
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            state = stuck_state(proc.pid, self.mnt)
            proc.kill()
            proc.wait()
            subprocess.run(["umount", "-l", self.mnt], capture_output=True)
            raise AssertionError(f"pmfsd did not exit within {timeout} s of SIGTERM; {state}\nstderr:\n{self.stderr()}")
        assert rc == 0, f"pmfsd exited with {rc} after SIGTERM; stderr:\n{self.stderr()}"
        assert mount_entry(self.mnt) is None, f"{self.mnt} still mounted after pmfsd exited"
        if self.transport() == "uring":
            self.expect_ring_requests()

    def transport(self):
        """The --fuse-transport this pmfsd gets (the last one given wins)."""
        given = [a for a in self.start_args if a in ("auto", "uring", "device")]
        return given[-1] if given else TRANSPORT

    def this_start_log(self):
        """pmfsd's stderr since its last start."""
        return self.stderr().rsplit(f"--- start {self.starts - 1}\n", 1)[-1]

    def expect_log(self, text, deadline):
        """Waits until pmfsd's log of this start says `text` (it logs the transport once INIT is answered)."""
        while text not in self.this_start_log():
            assert time.monotonic() < deadline, f"pmfsd never logged {text!r}; stderr:\n{self.stderr()}"
            time.sleep(0.02)

    def expect_ring_requests(self):
        """The stop log counts requests per transport: under uring, most must have come through io_uring."""
        log = self.this_start_log()
        m = re.search(r"host mount: (\d+) request\(s\) over io_uring, (\d+) over /dev/fuse", log)
        assert m, f"pmfsd did not log its request counts; stderr:\n{log}"
        ring, device = int(m.group(1)), int(m.group(2))
        assert ring > 0 and ring >= device, f"PMFS_FUSE_TRANSPORT=uring but {ring} request(s) over io_uring, {device} over /dev/fuse"

    def kill9(self):
        """SIGKILL pmfsd, then lazily unmount the dead mount."""
        assert self.proc is not None
        proc, self.proc = self.proc, None
        proc.kill()
        proc.wait()
        if mount_entry(self.mnt) is not None:
            subprocess.run(["umount", "-l", self.mnt], check=True)
        assert mount_entry(self.mnt) is None

    def fsck(self):
        """(exit code, output) of fsck.pmfs -f -n."""
        run = subprocess.run([binary("fsck.pmfs"), "-f", "-n", self.pool], env=ENV, capture_output=True, text=True)
        return run.returncode, run.stdout + run.stderr

    def assert_clean(self):
        rc, out = self.fsck()
        assert rc == 0, f"fsck.pmfs -f -n {self.pool} exit {rc}:\n{out}\npmfsd stderr:\n{self.stderr()[-4000:]}"
        return out

    def path(self, *parts):
        return os.path.join(self.mnt, *parts)

    def cleanup(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        if mount_entry(self.mnt) is not None:
            subprocess.run(["umount", "-l", self.mnt], capture_output=True)
        if self.stderr_file:
            self.stderr_file.close()
        for d in (self.pool_dir, self.data_dir, self.mnt_dir):
            shutil.rmtree(d, ignore_errors=True)


def stuck_state(pid, mnt):
    """What a stop that hangs needs explained: who still uses the mount, and where pmfsd's threads wait."""
    users = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        links = [f"/proc/{p}/cwd", f"/proc/{p}/root"]
        try:
            links += [f"/proc/{p}/fd/{n}" for n in os.listdir(f"/proc/{p}/fd")]
        except OSError:
            pass
        for link in links:
            try:
                if os.readlink(link).startswith(mnt):
                    users.append(f"{p} {link.rsplit('/', 1)[-1]}")
            except OSError:
                pass
    threads = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task")):
        try:
            base = f"/proc/{pid}/task/{tid}"
            name = open(f"{base}/comm").read().strip()
            wchan = open(f"{base}/wchan").read().strip()
            threads.append(f"{tid} {name} {wchan}")
        except OSError:
            pass
    fields = mount_entry(mnt)
    return (f"mounted: {fields is not None}; users of {mnt}: {users or 'none'}; "
            f"pmfsd threads (tid name wchan): {'; '.join(threads)}")


def require_fuse():
    if not os.path.exists("/dev/fuse"):
        pytest.skip("/dev/fuse is missing: the mount tests need FUSE")
    if os.geteuid() != 0:
        pytest.skip("the mount tests need root (pmfsd mounts with mount(2))")


def serve(name, configure=None, ready=None, **kw):
    """A context: a fresh file system, served; stopped and checked clean at the end. `configure(fs)`
    runs before pmfsd starts (extra arguments naming the fs's own paths), `ready(fs)` once it has
    started (waiting for what those arguments make)."""
    require_fuse()
    fs = Pmfs(name=name, **kw)
    try:
        if configure:
            configure(fs)
        fs.start()
        if ready:
            ready(fs)
        yield fs
        os.chdir("/")
        fs.stop()
        fs.assert_clean()
    finally:
        fs.cleanup()


@pytest.fixture(scope="module")
def pmfs(request):
    """A fresh pmfs served by pmfsd for one test module, fsck'ed clean after it."""
    yield from serve("pmfs-" + request.module.__name__.split(".")[-1])


_counter = [0]


@pytest.fixture
def d(pmfs, request):
    """A new, empty directory on the mount for one test."""
    _counter[0] += 1
    name = f"t{_counter[0]}-{request.node.name[:60]}".replace("[", "_").replace("]", "_").replace("/", "_")
    path = pmfs.path(name)
    os.mkdir(path)
    return path


# ---------------------------------------------------------------- helpers for tests


def as_user(uid, gid, func, *args, groups=()):
    """Runs func(*args) in a forked child with the given credentials (no capabilities)
    and returns its result, or raises the exception it raised."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            result = ("ok", func(*args))
        except BaseException as e:  # noqa: BLE001 - sent to the parent
            try:
                pickle.dumps(e)
                result = ("err", e)
            except Exception:
                result = ("err", RuntimeError(traceback.format_exc()))
        with os.fdopen(w, "wb") as f:
            pickle.dump(result, f)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child failed: {status}"
    kind, value = pickle.loads(data)
    if kind == "err":
        raise value
    return value


def errno_of(func, *args, **kw):
    """The errno func raises (OSError), or None if it succeeds."""
    try:
        func(*args, **kw)
    except OSError as e:
        return e.errno
    return None


def write_file(path, data, mode=0o644):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def cerr(rc):
    """Raises OSError from errno if a libc call returned -1."""
    if rc == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return rc


class TestTimeout(Exception):
    pass


@pytest.fixture(autouse=True)
def _timeout():
    """Fails a test that hangs (a lock never granted, a request never answered) instead of the whole run."""
    limit = 1200 if LONG else 300

    def expired(signum, frame):
        raise TestTimeout(f"test still running after {limit} s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(limit)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
