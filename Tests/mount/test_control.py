"""pmfsd's control socket (pmfsctl, serve-fd) and pmfsd started the way libvirt starts a virtiofs binary.

The launcher tests do what libvirt does (src/qemu/qemu_virtiofs.c): make a listening Unix socket, start
`pmfsd --fd=N -o source=DIR,...` with that descriptor inherited, close its own copy, and SIGTERM the process
when the VM stops. A vhost-user front end (pmfs-bench-vhost --cat: memfd memory, split rings, FUSE
LOOKUP/OPEN/READ) plays QEMU and the guest on the socket.
"""
import array
import errno
import json
import os
import signal
import socket
import stat
import subprocess
import time

import pytest

from conftest import ENV, Pmfs, binary, require_fuse, serve, write_file


@pytest.fixture(scope="module")
def fs():
    """A served file system with a control socket (pmfsd's --control is opt-in)."""
    yield from serve("pmfs-control", with_control, control_ready)


def with_control(f):
    f.control = os.path.join(f.pool_dir, "control.sock")
    f.start_args = ["--control", f.control]


def control_ready(f):
    wait_for(lambda: os.path.exists(f.control), "the control socket", f)


def wait_for(condition, what, f, timeout=15):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s; pmfsd stderr:\n{f.stderr()[-3000:]}"
        time.sleep(0.05)


def pmfsctl(f, *args):
    return subprocess.run([binary("pmfsctl"), *args, "--control", f.control], capture_output=True, text=True, timeout=30)


def ctl_json(f, command):
    run = pmfsctl(f, command, "--json")
    assert run.returncode == 0, run.stderr
    reply = json.loads(run.stdout)
    assert reply["ok"], reply
    return reply


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)   # blocking: waits while the backlog is full
    s.settimeout(10)
    return s


def read_line(s):
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def closed_by_peer(s):
    """True when the other end closed (recv returns EOF, or a reset)."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def listening_socket(path):
    if os.path.exists(path):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)
    return s


def listeners(f):
    return ctl_json(f, "info")["info"]["exports"]


def launch(f, sock_path, source, *extra, control=None):
    """Starts the launcher as libvirt would; returns (process, stderr path). Our copy of the socket is closed."""
    lsock = listening_socket(sock_path)
    fd = lsock.fileno()
    err_path = sock_path + ".stderr"
    env = dict(ENV, PMFS_CONTROL=control or f.control)
    if control is False:   # as libvirt starts it: no hint, the launcher looks in /run/pmfs
        del env["PMFS_CONTROL"]
    with open(err_path, "w") as err:
        proc = subprocess.Popen([binary("pmfsd"), f"--fd={fd}", "-o", f"source={source}", *extra],
                                pass_fds=[fd], env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    lsock.close()
    return proc, err_path


def cat(sock_path, path, hold=None):
    args = [binary("pmfs-bench-vhost"), "--socket", sock_path, "--cat", path]
    if hold:
        args += ["--hold", str(hold)]
    return subprocess.run(args, capture_output=True, timeout=60)


def test_pmfsctl_info_and_sessions(fs):
    assert stat.S_IMODE(os.stat(fs.control).st_mode) == 0o600
    info = ctl_json(fs, "info")["info"]
    assert info["pool"] == fs.pool and info["data"] == fs.data
    assert os.path.realpath(info["mount"]) == fs.mnt
    assert info["pid"] == fs.proc.pid
    table = pmfsctl(fs, "info")
    assert table.returncode == 0 and fs.pool in table.stdout and "LISTENER" in table.stdout
    sessions = ctl_json(fs, "sessions")["sessions"]
    host = [s for s in sessions if s.get("listener") is None]
    assert len(host) == 1 and host[0]["connected"] and host[0]["export"] == "/"
    os.mkdir(fs.path("held"))
    fd = os.open(fs.path("held"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        held = [s for s in ctl_json(fs, "sessions")["sessions"] if s.get("listener") is None][0]
        assert held["openHandles"] >= 1 and held["heldInodes"] >= 1   # the directory (the root is never looked up)
    finally:
        os.close(fd)
    table = pmfsctl(fs, "sessions")
    assert table.returncode == 0 and "host mount" in table.stdout and "since" in table.stdout


def test_control_refuses_garbage_and_oversize_and_keeps_serving(fs):
    s = connect(fs.control)
    s.sendall(b"this is not json\n")
    reply = json.loads(read_line(s))
    assert not reply["ok"] and "not a control request" in reply["error"]
    assert closed_by_peer(s)
    s.close()

    s = connect(fs.control)
    s.sendall(b"{" + b"x" * 5000)   # no newline: longer than a request may be
    reply = json.loads(read_line(s))
    assert not reply["ok"] and "longer than 4096" in reply["error"]
    assert closed_by_peer(s)
    s.close()

    # A well-formed request for an unknown command is answered; the connection stays usable.
    s = connect(fs.control)
    s.sendall(b'{"command":"reformat"}\n')
    reply = json.loads(read_line(s))
    assert not reply["ok"] and "unknown command" in reply["error"]
    s.sendall(b'{"command":"info"}\n')
    assert json.loads(read_line(s))["info"]["pool"] == fs.pool
    s.close()

    # Many silent clients at once do not stop others from being answered.
    silent = [connect(fs.control) for _ in range(20)]
    try:
        assert ctl_json(fs, "info")["info"]["pool"] == fs.pool
    finally:
        for c in silent:
            c.close()


def test_control_socket_answers_root_only(fs):
    """The socket is 0600; with the mode opened up, the peer credentials check still refuses others."""
    os.chmod(fs.control, 0o666)
    os.chmod(fs.pool_dir, 0o711)
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.setgid(65534)
                os.setuid(65534)
                c = connect(fs.control)
                # Refused at once, before any request (sending one could meet a closed socket).
                os.write(w, read_line(c) or b"EOF")
            except BaseException as e:
                os.write(w, repr(e).encode())
            os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        out = os.read(r, 65536)
        os.close(r)
    finally:
        os.chmod(fs.control, 0o600)
        os.chmod(fs.pool_dir, 0o700)
    reply = json.loads(out)
    assert not reply["ok"] and "permission denied" in reply["error"]
    assert "pool" not in out.decode()


def test_serve_fd_needs_a_listening_socket_and_good_options(fs):
    os.mkdir(fs.path("sfd"))
    s = connect(fs.control)
    r, w = os.pipe()
    socket.send_fds(s, [b'{"command":"serve-fd","options":"export=/sfd"}\n'], [r])
    reply = json.loads(read_line(s))
    assert not reply["ok"] and "not a listening stream socket" in reply["error"]
    os.close(r), os.close(w)
    lsock = listening_socket(os.path.join(fs.pool_dir, "sfd.sock"))
    socket.send_fds(s, [b'{"command":"serve-fd","options":"export=/no-such-dir"}\n'], [lsock.fileno()])
    reply = json.loads(read_line(s))
    assert not reply["ok"] and "no such directory" in reply["error"]
    socket.send_fds(s, [b'{"command":"serve-fd","options":"export=/sfd,bogus"}\n'], [lsock.fileno()])
    reply = json.loads(read_line(s))
    assert not reply["ok"] and "unknown option 'bogus'" in reply["error"]
    s.sendall(b'{"command":"serve-fd","options":"export=/sfd"}\n')
    reply = json.loads(read_line(s))
    assert not reply["ok"] and "SCM_RIGHTS" in reply["error"]
    # A good one is served until this connection closes.
    socket.send_fds(s, [b'{"command":"serve-fd","options":"export=/sfd,read-only,cache=none"}\n'], [lsock.fileno()])
    reply = json.loads(read_line(s))
    assert reply["ok"], reply
    mine = [l for l in listeners(fs) if l["id"] == reply["listener"]]
    assert mine and mine[0]["export"] == "/sfd" and mine[0]["readOnly"] and mine[0]["cache"] == "none"
    s.close()
    wait_for(lambda: not [l for l in listeners(fs) if l["id"] == reply["listener"]], "listener gone after its connection closed", fs)
    lsock.close()


def test_libvirt_launch_serves_the_socket_confined_to_its_directory(fs):
    os.mkdir(fs.path("vm1"))
    write_file(fs.path("vm1", "hello"), b"hello from the host\n")
    write_file(fs.path("secret"), b"outside vm1\n")
    sock_path = os.path.join(fs.pool_dir, "vm1.sock")
    proc, err_path = launch(fs, sock_path, fs.path("vm1") + "/", "-o", "cache=auto,xattr,posix_lock,flock",
                            "--thread-pool-size=4", "-o", "sandbox=chroot")
    try:
        wait_for(lambda: [l for l in listeners(fs) if l["export"] == "/vm1"] or proc.poll() is not None, "listener for /vm1", fs)
        assert proc.poll() is None, open(err_path).read()
        mine = [l for l in listeners(fs) if l["export"] == "/vm1"][0]
        assert mine["cache"] == "auto" and mine["locks"] == "shared" and mine["origin"] == f"control (pid {proc.pid})"
        assert mine["socket"].endswith(f"({sock_path})"), mine   # the descriptor and the path libvirt bound it to
        log = open(err_path).read()
        assert "--thread-pool-size=4 ignored" in log and "sandbox=chroot ignored" in log

        got = cat(sock_path, "hello")
        assert got.returncode == 0, got.stderr
        assert got.stdout == b"hello from the host\n"
        # The guest's root is vm1: ".." of it is itself, and the host's root is out of reach.
        for path in ("secret", "../secret", "../../secret", "../vm1/hello/../../secret"):
            out = cat(sock_path, path)
            assert out.returncode == 2 and b"No such file" in out.stderr, (path, out)

        # While a guest holds a file open, sessions shows it connected with the handle.
        holder = subprocess.Popen([binary("pmfs-bench-vhost"), "--socket", sock_path, "--cat", "hello", "--hold", "30"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            def session():
                return [s for s in ctl_json(fs, "sessions")["sessions"] if s.get("listener") == mine["id"]]
            wait_for(lambda: session() and session()[0]["openHandles"] == 1, "a connected session with one open handle", fs)
            assert session()[0]["connected"] and session()[0]["since"] > time.time() - 120
        finally:
            holder.kill()
            holder.wait()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    assert rc == 0, open(err_path).read()
    # The daemon stopped listening: the socket refuses connections, and info no longer lists it.
    wait_for(lambda: not [l for l in listeners(fs) if l["export"] == "/vm1"], "listener removed", fs)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises(ConnectionRefusedError):
        c.connect(sock_path)
    c.close()
    # The file system and the host mount go on.
    assert open(fs.path("vm1", "hello"), "rb").read() == b"hello from the host\n"


def test_libvirt_launch_refuses_a_source_outside_the_mount(fs):
    sock_path = os.path.join(fs.pool_dir, "out.sock")
    proc, err_path = launch(fs, sock_path, "/tmp", "-o", "cache=auto")
    assert proc.wait(timeout=30) == 1
    err = open(err_path).read().strip().splitlines()
    assert err[-1].startswith("pmfsd: source=/tmp is not inside the pmfs mount"), err
    assert not [l for l in listeners(fs) if l["origin"] == f"control (pid {proc.pid})"]


def test_libvirt_launch_without_a_daemon_fails(fs):
    sock_path = os.path.join(fs.pool_dir, "nodaemon.sock")
    proc, err_path = launch(fs, sock_path, fs.mnt, control=os.path.join(fs.pool_dir, "nobody.sock"))
    assert proc.wait(timeout=30) == 1
    assert "cannot connect to the pmfsd control socket" in open(err_path).read()


def test_print_capabilities_still_works():
    run = subprocess.run([binary("pmfsd"), "--print-capabilities"], capture_output=True, text=True, env=ENV, timeout=30)
    assert run.returncode == 0 and json.loads(run.stdout) == {"type": "fs"}


def test_launcher_exits_nonzero_when_the_daemon_stops():
    require_fuse()
    other = Pmfs(name="pmfs-control-stop")
    with_control(other)
    try:
        other.start()
        control_ready(other)
        proc, err_path = launch(other, os.path.join(other.pool_dir, "vm.sock"), other.mnt)
        wait_for(lambda: listeners(other) or proc.poll() is not None, "a listener", other)
        assert proc.poll() is None, open(err_path).read()
        assert listeners(other)[0]["export"] == "/"
        write_file(other.path("x"), b"x")   # host traffic, which the stop's transport check looks for
        other.stop()
        assert proc.wait(timeout=30) == 1
        assert "closed the connection" in open(err_path).read()
        other.assert_clean()
    finally:
        other.cleanup()


def test_libvirt_launch_finds_its_daemon_in_run_pmfs():
    """libvirt cannot tell the binary which daemon to ask: without --control or PMFS_CONTROL the launcher asks
    every /run/pmfs/*control.sock and picks the daemon whose mount holds the source."""
    require_fuse()
    other = Pmfs(name="pmfs-control-run")
    os.makedirs("/run/pmfs", mode=0o700, exist_ok=True)
    other.control = f"/run/pmfs/test-{os.getpid()}.control.sock"
    other.start_args = ["--control", other.control]
    try:
        other.start()
        control_ready(other)
        os.mkdir(other.path("vmx"))
        write_file(other.path("vmx", "f"), b"found\n")
        sock_path = os.path.join(other.pool_dir, "vmx.sock")
        proc, err_path = launch(other, sock_path, other.path("vmx"), control=False)
        try:
            wait_for(lambda: [l for l in listeners(other) if l["export"] == "/vmx"] or proc.poll() is not None, "listener for /vmx", other)
            assert proc.poll() is None, open(err_path).read()
            got = cat(sock_path, "f")
            assert got.returncode == 0 and got.stdout == b"found\n", got.stderr
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, open(err_path).read()
        outside, err_path = launch(other, os.path.join(other.pool_dir, "o.sock"), other.pool_dir, control=False)
        assert outside.wait(timeout=30) == 1
        assert "is not inside the pmfs mount of any running pmfsd" in open(err_path).read()
        other.stop()
        other.assert_clean()
        assert not os.path.exists(other.control), "pmfsd left its control socket behind"
    finally:
        other.cleanup()
        if os.path.exists(other.control):
            os.unlink(other.control)


def test_control_connections_are_bounded(fs):
    """256 connections at most (the next one is told so and closed), and a connection that holds no guest socket
    and sends no request for 10 s is closed: silent clients cannot keep the slots."""
    held = [connect(fs.control) for _ in range(256)]
    extra = connect(fs.control)   # accepted after the 256 (the backlog is in order): one too many
    reply = json.loads(read_line(extra))
    assert not reply["ok"] and "too many control connections" in reply["error"]
    assert closed_by_peer(extra)
    extra.close()
    start = time.monotonic()
    for c in held:
        c.settimeout(20)
    assert all(closed_by_peer(c) for c in held)
    assert 8 < time.monotonic() - start < 15
    for c in held:
        c.close()
    assert ctl_json(fs, "info")["info"]["pool"] == fs.pool


def test_flush_makes_cached_writes_durable():
    """pmfsctl flush writes back what the daemon's cache holds and flushes the device: after it, a kill -9 loses
    nothing, although no one called fsync (the background write-back waits 5 s for a dirty block)."""
    for f in serve("pmfs-flush", with_control, control_ready):
        data = os.urandom(1 << 20)
        write_file(f.path("cached"), data)   # closed: the kernel has handed every page to pmfsd
        first = ctl_json(f, "flush")["flush"]
        assert first["dirtyBytes"] >= len(data), first
        again = ctl_json(f, "flush")["flush"]
        assert again["dirtyBytes"] == 0, again
        run = pmfsctl(f, "flush")
        assert run.returncode == 0 and run.stdout.startswith("flushed: 0 KiB"), run
        f.kill9()
        f.start()
        with open(f.path("cached"), "rb") as got:
            assert got.read() == data


def test_reload_without_a_config_file_says_so(fs):
    os.listdir(fs.mnt)   # the mount is served meanwhile
    run = pmfsctl(fs, "reload")
    assert run.returncode == 1 and "started without --config" in run.stderr, run


def test_end_session_releases_the_guests_files_and_keeps_listening():
    """pmfsctl end-session LISTENER: the guest's session ends as its going away would (the orphan only it kept
    open is freed), the socket keeps listening and the next front end is served."""
    def configure(f):
        with_control(f)
        f.guest_socket = os.path.join(f.pool_dir, "vm.sock")
        f.start_args += ["--socket", f.guest_socket]
    for f in serve("pmfs-end-session", configure, control_ready):
        write_file(f.path("doomed"), b"x" * 65536)
        holder = subprocess.Popen([binary("pmfs-bench-vhost"), "--socket", f.guest_socket, "--cat", "doomed", "--hold", "60"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            (mine,) = listeners(f)

            def session():
                return [s for s in ctl_json(f, "sessions")["sessions"] if s.get("listener") == mine["id"]][0]
            wait_for(lambda: session()["openHandles"] == 1, "the guest connected with the file open", f)
            os.unlink(f.path("doomed"))
            held = os.statvfs(f.mnt).f_ffree
            run = pmfsctl(f, "end-session", str(mine["id"]))
            assert run.returncode == 0 and "session ended" in run.stdout, run
            assert not session()["connected"] and session()["openHandles"] == 0
            wait_for(lambda: os.statvfs(f.mnt).f_ffree == held + 1, "the orphan freed when the session ended", f)
            again = pmfsctl(f, "end-session", str(mine["id"]))
            assert again.returncode == 1 and "no guest is connected" in again.stderr, again
            unknown = pmfsctl(f, "end-session", "999")
            assert unknown.returncode == 1 and "no listener 999" in unknown.stderr, unknown
            write_file(f.path("after"), b"served again\n")
            got = cat(f.guest_socket, "after")
            assert got.returncode == 0 and got.stdout == b"served again\n", got.stderr
            assert "ending its guest's session (asked by pmfsctl" in f.this_start_log()
        finally:
            holder.kill()
            holder.wait()


def test_sessions_count_requests_and_locks(fs):
    """pmfsctl sessions: the host mount's requests grow with its traffic, its lock records are counted while held,
    and --rate shows requests per second over the interval."""
    import fcntl

    def host():
        return [s for s in ctl_json(fs, "sessions")["sessions"] if s.get("listener") is None][0]
    before = host()["requests"]
    path = fs.path("counted")
    for i in range(50):
        write_file(path, b"x" * i)
    assert host()["requests"] >= before + 100   # each write_file: at least a CREATE/OPEN and a WRITE or RELEASE
    with open(path, "r+b") as f:
        fcntl.lockf(f, fcntl.LOCK_EX, 1, 0)
        fcntl.lockf(f, fcntl.LOCK_EX, 1, 5)   # a second record: not merged with the first
        assert host()["lockRecords"] == 2
        fcntl.lockf(f, fcntl.LOCK_UN, 0, 0)
    assert host()["lockRecords"] == 0
    run = pmfsctl(fs, "sessions", "--rate", "0.5")
    assert run.returncode == 0 and "REQ/S" in run.stdout and "REQUESTS" in run.stdout and "LOCKS" in run.stdout, run


def ctl_ok(f, *args):
    run = pmfsctl(f, *args, "--json")
    assert run.returncode == 0, run.stderr
    reply = json.loads(run.stdout)
    assert reply["ok"], reply
    return reply


def write_durably(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_df_shows_blocks_used_by_an_fsynced_file_and_shared_by_a_snapshot(fs):
    """pmfsctl df: the pool's numbers agree with statvfs of the mount; a file written and fsynced takes its blocks
    from the free count, one inode from the free inodes; a snapshot of it shares those blocks; the cache shows."""
    ctl_json(fs, "flush")   # nothing of earlier tests left to write back while we count
    before = ctl_json(fs, "df")["df"]
    vfs = os.statvfs(fs.mnt)
    assert before["totalBlocks"] == vfs.f_blocks and before["freeBlocks"] == vfs.f_bfree, (before, vfs)
    assert before["totalInodes"] == vfs.f_files and before["freeInodes"] == vfs.f_ffree
    assert before["blockSize"] == vfs.f_bsize and before["poolBytes"] > 0
    assert before["cache"]["frames"] > 0 and before["cache"]["frameBytes"] == before["blockSize"]
    block = before["blockSize"]
    n = 256
    os.mkdir(fs.path("df-src"))
    write_durably(fs.path("df-src", "data"), os.urandom(n * block))
    after = ctl_json(fs, "df")["df"]
    assert before["freeBlocks"] - n - 8 <= after["freeBlocks"] <= before["freeBlocks"] - n, (before, after)
    used = lambda df: df["totalInodes"] - df["freeInodes"]
    assert used(after) == used(before) + 2   # the directory and the file
    run = pmfsctl(fs, "snapshot", "df-src", "df-copy")
    assert run.returncode == 0, run.stderr
    shared = ctl_json(fs, "df")["df"]["sharing"]
    assert shared["blocks"] >= n and shared["references"] >= shared["blocks"] + n, shared
    table = pmfsctl(fs, "df")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["TOTAL", "USED", "FREE", "USE%"] and lines[1].split()[0] == "blocks", table.stdout
    assert "shared blocks:" in table.stdout and "clones save" in table.stdout and "cache:" in table.stdout, table.stdout


def test_stat_shows_what_the_mount_shows(fs):
    """pmfsctl stat PATH (relative, or absolute under the mount) answers the attributes os.stat gives through the
    mount, for a file, a directory and a symbolic link (not followed); a file's mapped blocks after fsync."""
    os.mkdir(fs.path("st"))
    path = fs.path("st", "file")
    write_durably(path, b"z" * 10000)
    os.chmod(path, 0o640)
    os.chown(path, 1234, 5678)
    os.symlink("file", fs.path("st", "link"))
    st = os.lstat(path)
    for asked in ("st/file", "./st//file", path):
        got = ctl_ok(fs, "stat", asked)["stat"]
        assert got["type"] == "regular file" and got["ino"] == st.st_ino and got["mode"] == st.st_mode, (asked, got)
        assert (got["uid"], got["gid"], got["size"], got["links"]) == (1234, 5678, 10000, 1), got
        assert got["mtime"]["seconds"] == int(st.st_mtime) and got["blocks"] == st.st_blocks, (got, st)
        assert got["extents"]["mappedBlocks"] == -(-10000 // os.statvfs(fs.mnt).f_bsize) and not got["readOnly"], got
    directory = ctl_ok(fs, "stat", "st")["stat"]
    assert directory["type"] == "directory" and directory["ino"] == os.lstat(fs.path("st")).st_ino and "extents" not in directory
    link = ctl_ok(fs, "stat", "st/link")["stat"]
    assert link["type"] == "symbolic link" and link["linkTarget"] == "file" and link["ino"] == os.lstat(fs.path("st", "link")).st_ino
    os.symlink(b"odd\x01\xff\\", os.path.join(fs.path("st").encode(), b"odd"))   # shown as pmfs-inspect shows names
    assert ctl_ok(fs, "stat", "st/odd")["stat"]["linkTarget"] == "odd\\x01\\xff\\x5c"
    root = ctl_ok(fs, "stat", fs.mnt)["stat"]
    assert root["type"] == "directory" and root["ino"] == os.stat(fs.mnt).st_ino
    table = pmfsctl(fs, "stat", "st/file")
    assert table.returncode == 0 and f"Inode: {st.st_ino}" in table.stdout and "(-rw-r-----)" in table.stdout, table
    assert "Uid: 1234   Gid: 5678" in table.stdout and "Extents:" in table.stdout, table.stdout


def test_stat_refuses_bad_paths_clearly_and_pmfsd_serves_on(fs):
    os.mkdir(fs.path("bad"))
    write_file(fs.path("bad", "f"), b"x")
    for asked, want in [("bad/missing", "No such file or directory"), ("bad/" + "n" * 256, "File name too long"),
                        ("bad/../bad", "'..' is not allowed"), ("/elsewhere/bad", "not under pmfsd's host mount"),
                        ("bad/f/x", "f is not a directory")]:
        run = pmfsctl(fs, "stat", asked)
        assert run.returncode == 1 and want in run.stderr, (asked, run)
    # A name with a NUL, which no command line can carry: straight onto the socket.
    s = connect(fs.control)
    s.sendall(b'{"command":"stat","path":"bad/f\\u0000x"}\n')
    reply = json.loads(read_line(s))
    assert not reply["ok"] and "Invalid argument" in reply["error"], reply
    s.sendall(b'{"command":"stat"}\n')
    reply = json.loads(read_line(s))
    assert not reply["ok"] and "needs a path" in reply["error"], reply
    s.close()
    assert os.listdir(fs.path("bad")) == ["f"]
    assert ctl_ok(fs, "stat", "bad/f")["stat"]["size"] == 1


def test_stats_count_requests_fsyncs_and_transactions(fs):
    """pmfsctl stats without --metrics: the host session's requests, fsyncs, device flushes and committed
    transactions all grow with a workload of written and fsynced files; no registry is said so."""
    def host(stats):
        return [s for s in stats["sessions"] if s["name"].startswith("host mount")][0]
    before = ctl_json(fs, "stats")["stats"]
    assert "metrics" not in before and "hostTransport" in before
    os.mkdir(fs.path("busy"))
    for i in range(20):
        write_durably(fs.path("busy", f"f{i}"), b"y" * 5000)
    after = ctl_json(fs, "stats")["stats"]
    assert host(after)["requests"] >= host(before)["requests"] + 60, (before, after)   # CREATE, WRITE, FSYNC, ... each
    assert host(after)["inFlight"] >= 0
    assert after["fsyncs"] >= before["fsyncs"] + 20 and after["deviceFlushes"] > before["deviceFlushes"], (before, after)
    assert after["transactionsCommitted"] >= before["transactionsCommitted"] + 40, (before, after)
    table = pmfsctl(fs, "stats")
    assert table.returncode == 0 and "IN FLIGHT" in table.stdout and "fsyncs" in table.stdout, table
    assert "no metrics registry" in table.stdout, table.stdout


def test_stats_include_the_metrics_registry_when_it_is_on():
    def configure(f):
        with_control(f)
        f.start_args += ["--metrics", "127.0.0.1:0"]
    for f in serve("pmfs-stats-metrics", configure, control_ready):
        write_durably(f.path("m"), b"m" * 4096)
        stats = ctl_json(f, "stats")["stats"]
        samples = {m["series"]: m["value"] for m in stats["metrics"]}
        assert not any("_bucket" in series for series in samples), samples
        fsyncs = [v for k, v in samples.items() if k.startswith("pmfs_fsyncs_total")]
        assert fsyncs and float(fsyncs[0]) >= 1 and float(fsyncs[0]) == stats["fsyncs"], (fsyncs, stats["fsyncs"])
        assert any(k.startswith("pmfs_fuse_requests_total") and 'session="host"' in k and float(v) > 0 for k, v in samples.items())
        table = pmfsctl(f, "stats")
        assert table.returncode == 0 and "METRIC" in table.stdout and "pmfs_fuse_requests_total" in table.stdout, table
        assert "zero sample(s) not shown" in table.stdout, table.stdout
