"""GETLK/SETLK/SETLKW (POSIX record locks) and flock, between processes and open files, INTERRUPT."""
import ctypes
import errno
import fcntl
import os
import signal
import struct
import time

from conftest import libc, write_file

FLOCK_FMT = "hhxxxxqqixxxx"        # struct flock on x86_64/aarch64: 32 bytes


def flock_struct(type_, start=0, length=0, whence=os.SEEK_SET, pid=0):
    return struct.pack(FLOCK_FMT, type_, whence, start, length, pid)


def getlk(fd, type_, start=0, length=0):
    out = fcntl.fcntl(fd, fcntl.F_GETLK, flock_struct(type_, start, length))
    t, whence, s, ln, pid = struct.unpack(FLOCK_FMT, out)
    return t, s, ln, pid


class Child:
    """A forked child that runs steps on command through pipes: the other lock owner."""

    def __init__(self, body):
        self.to_r, self.to_w = os.pipe()
        self.from_r, self.from_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self.to_w)
            os.close(self.from_r)
            code = 0
            try:
                body(self)
            except BaseException as e:  # noqa: BLE001
                self.say(f"error {type(e).__name__}: {e}")
                code = 1
            os._exit(code)
        os.close(self.to_r)
        os.close(self.from_w)

    # child side
    def say(self, msg):
        os.write(self.from_w, (msg + "\n").encode())

    def wait_for(self):
        buf = b""
        while not buf.endswith(b"\n"):
            b = os.read(self.to_r, 1)
            if not b:
                raise EOFError
            buf += b
        return buf.decode().strip()

    # parent side
    def tell(self, msg):
        os.write(self.to_w, (msg + "\n").encode())

    def hear(self, timeout=10):
        import select
        buf = b""
        deadline = time.monotonic() + timeout
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            r, _, _ = select.select([self.from_r], [], [], max(0, left))
            if not r:
                raise TimeoutError(f"child said nothing within {timeout} s (so far {buf!r})")
            b = os.read(self.from_r, 1)
            if not b:
                raise EOFError(f"child exited (so far {buf!r})")
            buf += b
        return buf.decode().strip()

    def quiet_for(self, seconds):
        import select
        r, _, _ = select.select([self.from_r], [], [], seconds)
        return not r

    def join(self):
        _, status = os.waitpid(self.pid, 0)
        os.close(self.to_w)
        os.close(self.from_r)
        return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)


def test_posix_lock_conflict_between_processes(d):
    p = os.path.join(d, "f")
    write_file(p, b"x" * 1000)

    def body(c):
        fd = os.open(p, os.O_RDWR)
        fcntl.lockf(fd, fcntl.LOCK_EX, 100, 0)          # bytes 0..99
        c.say("locked")
        c.wait_for()
        os.close(fd)                                     # close drops the lock
        c.say("closed")
        c.wait_for()
    child = Child(body)
    try:
        assert child.hear() == "locked"
        fd = os.open(p, os.O_RDWR)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 50)
                raise AssertionError("conflicting lock was granted")
            except OSError as e:
                assert e.errno in (errno.EAGAIN, errno.EACCES)
            try:
                fcntl.fcntl(fd, fcntl.F_SETLK, flock_struct(fcntl.F_RDLCK, 0, 1))
                raise AssertionError("read lock over a write lock was granted")
            except OSError as e:
                assert e.errno in (errno.EAGAIN, errno.EACCES)
            # Outside the held range: no conflict.
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 100)
            t, s, ln, pid = getlk(fd, fcntl.F_WRLCK, 0, 50)
            assert t == fcntl.F_WRLCK
            assert pid == child.pid
            assert (s, ln) == (0, 100)
            child.tell("close")
            assert child.hear() == "closed"
            t, _, _, _ = getlk(fd, fcntl.F_WRLCK, 0, 50)
            assert t == fcntl.F_UNLCK
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 50)
        finally:
            os.close(fd)
        child.tell("bye")
    finally:
        assert child.join() == 0


def test_read_locks_share(d):
    p = os.path.join(d, "f")
    write_file(p, b"x")

    def body(c):
        fd = os.open(p, os.O_RDONLY)
        fcntl.fcntl(fd, fcntl.F_SETLK, flock_struct(fcntl.F_RDLCK))
        c.say("read-locked")
        c.wait_for()
        os.close(fd)
    child = Child(body)
    try:
        assert child.hear() == "read-locked"
        fd = os.open(p, os.O_RDWR)
        try:
            fcntl.fcntl(fd, fcntl.F_SETLK, flock_struct(fcntl.F_RDLCK))     # shared: granted
            t, _, _, pid = getlk(fd, fcntl.F_WRLCK)
            assert t == fcntl.F_RDLCK and pid == child.pid
            try:
                fcntl.fcntl(fd, fcntl.F_SETLK, flock_struct(fcntl.F_WRLCK))   # upgrade conflicts with the child
                raise AssertionError("write lock granted over another process's read lock")
            except OSError as e:
                assert e.errno in (errno.EAGAIN, errno.EACCES)
        finally:
            os.close(fd)
        child.tell("bye")
    finally:
        assert child.join() == 0


def test_own_locks_never_conflict_and_split(d):
    p = os.path.join(d, "f")
    write_file(p, b"x")
    fd = os.open(p, os.O_RDWR)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLK, flock_struct(fcntl.F_WRLCK, 0, 100))
        fcntl.fcntl(fd, fcntl.F_SETLK, flock_struct(fcntl.F_RDLCK, 40, 10))    # converts the middle
        fcntl.fcntl(fd, fcntl.F_SETLK, flock_struct(fcntl.F_UNLCK, 0, 10))

        def body(c):
            fd2 = os.open(p, os.O_RDWR)
            res = []
            for start in (5, 20, 45, 95, 200):
                t, s, ln, pid = getlk(fd2, fcntl.F_RDLCK, start, 1)
                res.append(f"{start}:{t}")
            c.say(" ".join(res))
            os.close(fd2)
        child = Child(body)
        answer = child.hear()
        assert child.join() == 0
        # 5: unlocked; 20: write; 45: read (a read test passes); 95: write; 200: free.
        u, w = fcntl.F_UNLCK, fcntl.F_WRLCK
        assert answer == f"5:{u} 20:{w} 45:{u} 95:{w} 200:{u}", answer
    finally:
        os.close(fd)


def waiting_child(p, open_flags, wait):
    """A child that blocks in `wait(fd)` (a libc call: Python's own wrappers
    retry after EINTR, PEP 475) on its own open file of `p`, a SIGALRM handler
    installed so that the signal interrupts it. It says "rc=R errno=E" when
    the wait returns, then waits to be told "bye". Returned once it is about
    to wait."""
    def body(c):
        fd2 = os.open(p, open_flags)
        signal.signal(signal.SIGALRM, lambda *a: None)
        c.say("waiting")
        rc = wait(fd2)
        c.say(f"rc={rc} errno={ctypes.get_errno() if rc < 0 else 0}")
        c.wait_for()
        os.close(fd2)
    child = Child(body)
    assert child.hear() == "waiting"
    return child


def setlkw(fd2):
    return libc.fcntl(fd2, fcntl.F_SETLKW, ctypes.create_string_buffer(flock_struct(fcntl.F_WRLCK), 32))


def flock_ex(fd2):
    return libc.flock(fd2, fcntl.LOCK_EX)


def interrupt(child):
    time.sleep(0.3)
    os.kill(child.pid, signal.SIGALRM)
    assert child.hear(timeout=10) == f"rc=-1 errno={errno.EINTR}"


def test_setlkw_waits_until_released(d):
    p = os.path.join(d, "f")
    write_file(p, b"x")
    fd = os.open(p, os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    try:
        child = waiting_child(p, os.O_RDWR, setlkw)
        assert child.quiet_for(0.5), "SETLKW returned while the lock was held"
        t, _, _, pid = getlk_other(p)
        assert t == fcntl.F_WRLCK
        fcntl.lockf(fd, fcntl.LOCK_UN)
        assert child.hear(timeout=10) == "rc=0 errno=0"
        t, _, _, pid = getlk(fd, fcntl.F_WRLCK)
        assert t == fcntl.F_WRLCK and pid == child.pid
        child.tell("bye")
        assert child.join() == 0
    finally:
        os.close(fd)


def getlk_other(p):
    """F_GETLK from a third process (our own locks never conflict with us)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        fd = os.open(p, os.O_RDONLY)
        os.write(w, repr(getlk(fd, fcntl.F_WRLCK)).encode())
        os._exit(0)
    os.close(w)
    out = os.read(r, 1000)
    os.close(r)
    os.waitpid(pid, 0)
    return eval(out)  # noqa: S307 - our own repr of a tuple of ints


def test_setlkw_interrupted_by_signal(d):
    p = os.path.join(d, "f")
    write_file(p, b"x")
    fd = os.open(p, os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    try:
        child = waiting_child(p, os.O_RDWR, setlkw)
        interrupt(child)
        # The interrupted waiter holds nothing and left nothing queued: unlock, relock from a third process.
        fcntl.lockf(fd, fcntl.LOCK_UN)
        t, _, _, _ = getlk_other(p)
        assert t == fcntl.F_UNLCK
        child.tell("bye")
        assert child.join() == 0
    finally:
        os.close(fd)


def test_setlkw_deadlock_detection_or_wait(d):
    """Two processes each holding one range and wanting the other's: the kernel does not detect deadlocks
    for FUSE, so we only check that releasing one side lets the other proceed."""
    p = os.path.join(d, "f")
    write_file(p, b"x" * 10)
    fd = os.open(p, os.O_RDWR)
    fcntl.fcntl(fd, fcntl.F_SETLK, flock_struct(fcntl.F_WRLCK, 0, 1))

    def body(c):
        fd2 = os.open(p, os.O_RDWR)
        fcntl.fcntl(fd2, fcntl.F_SETLK, flock_struct(fcntl.F_WRLCK, 1, 1))
        c.say("holding 1")
        fcntl.fcntl(fd2, fcntl.F_SETLKW, flock_struct(fcntl.F_WRLCK, 0, 1))
        c.say("got 0")
        os.close(fd2)
    child = Child(body)
    try:
        assert child.hear() == "holding 1"
        time.sleep(0.2)
        fcntl.fcntl(fd, fcntl.F_SETLK, flock_struct(fcntl.F_UNLCK, 0, 1))
        assert child.hear() == "got 0"
    finally:
        os.close(fd)
        assert child.join() == 0


def test_flock_conflict_between_open_files(d):
    p = os.path.join(d, "f")
    write_file(p, b"x")
    a = os.open(p, os.O_RDONLY)
    b = os.open(p, os.O_RDONLY)
    try:
        fcntl.flock(a, fcntl.LOCK_EX)
        try:
            fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
            raise AssertionError("second exclusive flock granted")
        except OSError as e:
            assert e.errno == errno.EWOULDBLOCK
        try:
            fcntl.flock(b, fcntl.LOCK_SH | fcntl.LOCK_NB)
            raise AssertionError("shared flock granted over an exclusive one")
        except OSError as e:
            assert e.errno == errno.EWOULDBLOCK
        fcntl.flock(a, fcntl.LOCK_SH)                       # downgrade
        fcntl.flock(b, fcntl.LOCK_SH | fcntl.LOCK_NB)       # shared with shared
        fcntl.flock(a, fcntl.LOCK_UN)
        fcntl.flock(b, fcntl.LOCK_UN)
        fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(a)
        os.close(b)
    # Closing the last descriptor drops the flock.
    c = os.open(p, os.O_RDONLY)
    try:
        fcntl.flock(c, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(c)


def test_flock_inherited_and_released_on_last_close(d):
    p = os.path.join(d, "f")
    write_file(p, b"x")
    fd = os.open(p, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    dup = os.dup(fd)
    os.close(fd)                       # the open file lives on in dup: still locked
    other = os.open(p, os.O_RDONLY)
    try:
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            raise AssertionError("flock lost when one of two descriptors was closed")
        except OSError as e:
            assert e.errno == errno.EWOULDBLOCK
        os.close(dup)
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(other)


def test_flock_wait_between_processes(d):
    p = os.path.join(d, "f")
    write_file(p, b"x")
    fd = os.open(p, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        child = waiting_child(p, os.O_RDONLY, flock_ex)
        assert child.quiet_for(0.5), "flock returned while the lock was held"
        fcntl.flock(fd, fcntl.LOCK_UN)
        assert child.hear() == "rc=0 errno=0"
        child.tell("bye")
        assert child.join() == 0
    finally:
        os.close(fd)


def test_posix_lock_released_when_process_dies(d):
    p = os.path.join(d, "f")
    write_file(p, b"x")

    def body(c):
        fd2 = os.open(p, os.O_RDWR)
        fcntl.lockf(fd2, fcntl.LOCK_EX)
        c.say("locked")
        c.wait_for()
        os.kill(os.getpid(), signal.SIGKILL)
    child = Child(body)
    assert child.hear() == "locked"
    fd = os.open(p, os.O_RDWR)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            raise AssertionError("lock granted while the child holds it")
        except OSError as e:
            assert e.errno in (errno.EAGAIN, errno.EACCES)
        child.tell("die")
        assert child.join() == -signal.SIGKILL
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW = 36, 37, 38


def test_ofd_locks_conflict_between_open_files(d):
    p = os.path.join(d, "f")
    write_file(p, b"x")
    a = os.open(p, os.O_RDWR)
    b = os.open(p, os.O_RDWR)
    try:
        fcntl.fcntl(a, F_OFD_SETLK, flock_struct(fcntl.F_WRLCK, 0, 10))
        try:
            fcntl.fcntl(b, F_OFD_SETLK, flock_struct(fcntl.F_WRLCK, 5, 1))
            raise AssertionError("OFD lock of another open file granted in the same process")
        except OSError as e:
            assert e.errno in (errno.EAGAIN, errno.EACCES)
        t, _, s, ln, pid = struct.unpack(FLOCK_FMT, fcntl.fcntl(b, F_OFD_GETLK, flock_struct(fcntl.F_WRLCK, 0, 1)))
        assert t == fcntl.F_WRLCK and (s, ln) == (0, 10)
        fcntl.fcntl(b, F_OFD_SETLK, flock_struct(fcntl.F_WRLCK, 10, 10))     # beside it: fine
    finally:
        os.close(a)
        os.close(b)


def test_ofd_lock_released_on_last_close(d):
    """An OFD lock belongs to the open file: its last close must drop the lock. The kernel sends no
    unlock for it (FUSE skips the FL_CLOSE_POSIX unlock, FLUSH names the process's POSIX owner, and
    RELEASE carries an owner only for flock), so the server must drop the locks set through a
    handle when that handle is released."""
    p = os.path.join(d, "f")
    write_file(p, b"x")
    a = os.open(p, os.O_RDWR)
    fcntl.fcntl(a, F_OFD_SETLK, flock_struct(fcntl.F_WRLCK))
    os.close(a)

    def body(c):
        # Another process: a new open file could reuse the closed one's address, and so its owner id.
        deadline = time.monotonic() + 5
        fd = os.open(p, os.O_RDWR)
        try:
            while True:        # RELEASE is asynchronous: allow it a moment
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    c.say("free")
                    return
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        c.say(f"still locked: {e!r}")
                        return
                    time.sleep(0.05)
        finally:
            os.close(fd)
    child = Child(body)
    assert child.hear() == "free", "OFD lock still held 5 s after its open file was closed"
    assert child.join() == 0


def test_close_of_any_descriptor_drops_posix_locks(d):
    p = os.path.join(d, "f")
    write_file(p, b"x")
    a = os.open(p, os.O_RDWR)
    fcntl.lockf(a, fcntl.LOCK_EX)
    other = os.open(p, os.O_RDONLY)
    os.close(other)             # POSIX: this drops the lock taken through `a`

    def body(c):
        fd = os.open(p, os.O_RDWR)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            c.say("free")
        except OSError as e:
            c.say(f"locked {e.errno}")
        finally:
            os.close(fd)
    try:
        child = Child(body)
        assert child.hear() == "free"
        assert child.join() == 0
    finally:
        os.close(a)


def test_flock_wait_interrupted_by_signal(d):
    p = os.path.join(d, "f")
    write_file(p, b"x")
    fd = os.open(p, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        child = waiting_child(p, os.O_RDONLY, flock_ex)
        interrupt(child)
        fcntl.flock(fd, fcntl.LOCK_UN)
        # Nothing was left queued for the interrupted waiter: a new open file gets the lock at once.
        other = os.open(p, os.O_RDONLY)
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
        child.tell("bye")
        assert child.join() == 0
    finally:
        os.close(fd)


def test_flock_free_as_soon_as_close_returns(d):
    # The kernel sends RELEASE after close(2) has returned; a lock asked for
    # next must still find the flock gone (over /dev/fuse, another worker may
    # read the second request first). Many rounds, as the window is small.
    p = os.path.join(d, "f")
    write_file(p, b"x")
    other = os.open(p, os.O_RDONLY)
    try:
        for _ in range(300):
            fd = os.open(p, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.close(fd)
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(other, fcntl.LOCK_UN)
    finally:
        os.close(other)
