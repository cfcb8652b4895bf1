"""pmfsd's sandbox (--sandbox namespace, the default): once set up, every thread of the daemon is in a
private mount namespace, holds only CAP_CHOWN, and runs under the seccomp allow-list, while the host still
sees and uses the mount; a system call off the list kills the daemon (--seccomp kill) or is logged by the
kernel (--seccomp log). PMFS_SANDBOX_TEST_HOOK=1 gives the control socket a hidden command that makes its
thread (a serving thread) call personality(2), which the list does not have.
"""
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import ENV, Pmfs, mount_entry, read_file, require_fuse, serve, write_file

SYS_PERSONALITY = 135   # x86_64
CAP_CHOWN_ONLY = 0x1
FORBIDDEN = {"command": "sandbox-test-forbidden-call"}


def with_control(hook=False, *args):
    def configure(f):
        f.control = os.path.join(f.pool_dir, "control.sock")
        f.start_args = ["--control", f.control, *args]
        if hook:
            f.env = dict(ENV, PMFS_SANDBOX_TEST_HOOK="1")
    return configure


def control_ready(f):
    deadline = time.monotonic() + 15
    while "[Pmfsd] sandbox" not in f.this_start_log() or not os.path.exists(f.control):
        assert time.monotonic() < deadline, f"pmfsd never logged its sandbox; stderr:\n{f.stderr()[-3000:]}"
        time.sleep(0.05)


def call(f, request):
    """One control request; the reply, or None if the connection closed without one."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(f.control)
        s.sendall((json.dumps(request) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                return None
            data += chunk
        return json.loads(data)


def threads(pid):
    """(tid, status fields, mount namespace) of each thread of pid that runs user code (not io_uring's workers)."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{base}/comm") as c:
                if c.read().startswith("iou-"):
                    continue
            with open(f"{base}/status") as s:
                fields = dict(line.rstrip("\n").split(":\t", 1) for line in s if ":\t" in line)
            out.append((int(tid), fields, os.readlink(f"{base}/ns/mnt")))
        except FileNotFoundError:
            continue   # ended meanwhile
    return out


def test_every_thread_is_confined_and_the_host_uses_the_mount():
    for f in serve("pmfs-sandbox", with_control(), control_ready):
        log = f.this_start_log()
        assert "sandbox: private mount namespace; capabilities: CAP_CHOWN kept; seccomp allow-list" in log, log
        write_file(f.path("seen-by-host"), b"x" * 100_000)
        assert read_file(f.path("seen-by-host")) == b"x" * 100_000
        ours = os.readlink("/proc/self/ns/mnt")
        listed = threads(f.proc.pid)
        assert len(listed) > 3, listed
        for tid, status, namespace in listed:
            assert status["Seccomp"] == "2", (tid, status)
            assert status["NoNewPrivs"] == "1", (tid, status)
            assert int(status["CapEff"], 16) == CAP_CHOWN_ONLY, (tid, status["CapEff"])
            assert int(status["CapPrm"], 16) == CAP_CHOWN_ONLY, (tid, status["CapPrm"])
            assert int(status["CapBnd"], 16) == CAP_CHOWN_ONLY, (tid, status["CapBnd"])
            assert namespace != ours, (tid, namespace)
        assert len({n for _, _, n in listed}) == 1, listed
        # The daemon's namespace has no copy of the host mount (only the host needs it).
        with open(f"/proc/{f.proc.pid}/mountinfo") as m:
            assert f.mnt not in [line.split()[4] for line in m], "the host mount is in the daemon's namespace"
        # Without PMFS_SANDBOX_TEST_HOOK the hidden command does not exist.
        reply = call(f, FORBIDDEN)
        assert reply and not reply["ok"] and "unknown command" in reply["error"], reply
        # It still serves: the control socket answers, new files come and go.
        assert call(f, {"command": "info"})["ok"]
        os.unlink(f.path("seen-by-host"))


def test_forbidden_call_kills_the_daemon():
    require_fuse()
    f = Pmfs(name="pmfs-sandbox-kill")
    try:
        with_control(True)(f)
        f.start()
        control_ready(f)
        fd = os.open(f.path("before"), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"kept")
        os.fsync(fd)   # durable before the kill: the write-back cache dies with the process
        os.close(fd)
        proc = f.proc
        assert call(f, FORBIDDEN) is None, "the daemon answered a call the allow-list forbids"
        assert proc.wait(timeout=15) == -signal.SIGSYS, f.stderr()[-3000:]
        f.proc = None
        # The whole process is gone (SECCOMP_RET_KILL_PROCESS): the host mount is left dead, as after kill -9.
        with pytest.raises(OSError):
            os.stat(f.path("before"))
        subprocess.run(["umount", "-l", f.mnt], check=True)
        # The next start recovers and has the file.
        f.start()
        control_ready(f)
        assert read_file(f.path("before")) == b"kept"
        f.stop()
        f.assert_clean()
    finally:
        f.cleanup()


def kernel_log():
    run = subprocess.run(["dmesg"], capture_output=True, text=True)
    return run.stdout if run.returncode == 0 else None


def test_log_mode_logs_the_forbidden_call_and_serves_on():
    for f in serve("pmfs-sandbox-log", with_control(True, "--seccomp", "log"), control_ready):
        assert "others logged" in f.this_start_log()
        reply = call(f, FORBIDDEN)
        assert reply and reply["ok"], reply
        write_file(f.path("after"), b"still serving")
        assert read_file(f.path("after")) == b"still serving"
        log = kernel_log()
        if log is None:
            pytest.skip("dmesg is not readable here: the audit line cannot be checked")
        pid = f.proc.pid
        deadline = time.monotonic() + 5
        while not any(f"pid={pid} " in line and f"syscall={SYS_PERSONALITY} " in line for line in log.splitlines()):
            assert time.monotonic() < deadline, f"no audit line for pid {pid} syscall {SYS_PERSONALITY}"
            time.sleep(0.2)
            log = kernel_log()


def test_sandbox_none_leaves_the_daemon_as_started():
    for f in serve("pmfs-sandbox-none", with_control(True, "--sandbox", "none"), control_ready):
        assert "sandbox off (--sandbox none)" in f.this_start_log()
        write_file(f.path("plain"), b"served as before")
        assert read_file(f.path("plain")) == b"served as before"
        ours = os.readlink("/proc/self/ns/mnt")
        for tid, status, namespace in threads(f.proc.pid):
            assert status["Seccomp"] == "0", (tid, status)
            assert int(status["CapEff"], 16) != CAP_CHOWN_ONLY, (tid, status["CapEff"])
            assert namespace == ours, (tid, namespace)
        # No filter: the forbidden call just happens.
        reply = call(f, FORBIDDEN)
        assert reply and reply["ok"], reply
