"""pmfsd --config FILE: a real pmfsd started from a YAML file, flags over it, and SIGHUP reloads with guests connected.

The guests are played by pmfs-bench-vhost (a vhost-user front end: memfd memory, split rings, FUSE LOOKUP/OPEN/READ)
on the sockets the file names; what pmfsd serves is read back over its control socket (pmfsctl info --json).
"""
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import ENV, Pmfs, binary, require_fuse, serve, write_file
from test_control import cat, ctl_json, listeners, pmfsctl, wait_for


def sock(f, name):
    return os.path.join(f.pool_dir, name + ".sock")


def write_config(f, guests, extra="", level="info"):
    """The fixture's file: pool, data, mount and control from the file; `guests` is the YAML of the guests: section."""
    text = (f"# written by test_config\npool: {f.pool}\ndata: {f.data}\nmount: {f.mnt}\ncontrol: {f.control}\n"
            f"cache: none\nlog-level: {level}\n{extra}guests:\n{guests}")
    tmp = f.config + ".tmp"
    with open(tmp, "w") as out:
        out.write(text)
    os.replace(tmp, f.config)


def guest(name, path, *options):
    return f"  {name}:\n    socket: {path}\n" + "".join(f"    {o}\n" for o in options)


BASE = None   # the guests the fixture starts with


def base_guests(f):
    return guest("a", sock(f, "a")) + guest("tools", sock(f, "tools"), "read-only: true", "cache: auto")


def configure(f):
    f.control = os.path.join(f.pool_dir, "control.sock")
    f.config = os.path.join(f.pool_dir, "pmfs.yaml")
    write_config(f, base_guests(f))
    # A flag over the file's cache: none.
    f.start_args = ["--cache", "always"]


def ready(f):
    wait_for(lambda: os.path.exists(f.control), "the control socket", f)


@pytest.fixture(scope="module")
def fs():
    yield from serve("pmfs-config", configure, ready)


def by_socket(f):
    return {l["socket"]: l for l in listeners(f)}


def reload(f, expect):
    """SIGHUP; waits for the log line the reload ends with (`expect`), after this reload's start."""
    before = f.this_start_log().count("SIGHUP: reading")
    f.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: f.this_start_log().count("SIGHUP: reading") > before, "the reload to begin", f)

    def said():
        tail = f.this_start_log().split("SIGHUP: reading")[before + 1]
        return expect in tail and ("applied" in tail or "refused" in tail)
    wait_for(said, f"log line {expect!r}", f)
    return f.this_start_log().split("SIGHUP: reading")[before + 1]


def refuses(path):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        c.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    finally:
        c.close()
    return False


def test_the_file_starts_what_it_says_and_flags_override_it(fs):
    info = ctl_json(fs, "info")["info"]
    assert info["pool"] == fs.pool and info["data"] == fs.data and os.path.realpath(info["mount"]) == fs.mnt
    served = by_socket(fs)
    assert set(served) == {sock(fs, "a"), sock(fs, "tools")}
    a, tools = served[sock(fs, "a")], served[sock(fs, "tools")]
    assert a["origin"] == "config (a)" and tools["origin"] == "config (tools)"
    assert a["cache"] == "always", "--cache always overrides the file's cache: none"
    assert tools["cache"] == "auto" and tools["readOnly"] and not a["readOnly"], "a guest's own keys win over the defaults"
    assert a["locks"] == "shared", "locks: auto is shared when a reload may add guests"
    write_file(fs.path("hello"), b"hello from the host\n")
    for name in ("a", "tools"):
        got = cat(sock(fs, name), "hello")
        assert got.returncode == 0 and got.stdout == b"hello from the host\n", got.stderr


def test_sighup_starts_an_added_socket(fs):
    os.mkdir(fs.path("vmb"))
    write_file(fs.path("vmb", "f"), b"in vmb\n")
    before = {l["socket"]: l["id"] for l in listeners(fs)}
    write_config(fs, base_guests(fs) + guest("b", sock(fs, "b"), "export: /vmb", "uid-map: [\"0:100000:65536\"]"))
    log = reload(fs, "applied")
    assert "refused" not in log, log
    served = by_socket(fs)
    assert served[sock(fs, "b")]["export"] == "/vmb" and served[sock(fs, "b")]["origin"] == "config (b)"
    assert {s: served[s]["id"] for s in before} == before, "unchanged sockets are not served anew"
    got = cat(sock(fs, "b"), "f")
    assert got.returncode == 0 and got.stdout == b"in vmb\n", got.stderr


def test_sighup_stops_a_removed_socket_while_another_guest_keeps_its_session(fs):
    write_file(fs.path("held"), b"still served\n")
    write_config(fs, base_guests(fs) + guest("b", sock(fs, "b"), "export: /vmb"))
    reload(fs, "applied")
    assert sock(fs, "b") in by_socket(fs)
    cue = os.path.join(fs.pool_dir, "reloaded")
    holder = subprocess.Popen([binary("pmfs-bench-vhost"), "--socket", sock(fs, "a"), "--cat", "held", "--hold", "60",
                               "--read-again-when", cue], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        a_id = by_socket(fs)[sock(fs, "a")]["id"]
        wait_for(lambda: [s for s in ctl_json(fs, "sessions")["sessions"] if s.get("listener") == a_id and s["openHandles"] == 1],
                 "the guest on a connected with the file open", fs)
        # b and tools go; a stays, with its guest connected.
        write_config(fs, guest("a", sock(fs, "a")))
        log = reload(fs, "applied")
        assert "no longer served" in log, log
        served = by_socket(fs)
        assert set(served) == {sock(fs, "a")} and served[sock(fs, "a")]["id"] == a_id
        assert refuses(sock(fs, "b")) and refuses(sock(fs, "tools"))
        open(cue, "w").close()
        out, err = holder.communicate(timeout=60)
        assert holder.returncode == 0, err
        assert out == b"still served\n" * 2, "the session on a answered after the reload"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    got = cat(sock(fs, "a"), "held")
    assert got.returncode == 0 and got.stdout == b"still served\n", got.stderr


def test_sighup_ends_a_removed_sockets_session_cleanly(fs):
    """A guest connected on a socket the file drops loses its device; its session is ended as pmfsd ends any: the file
    it held open after the host unlinked it (an orphan only that session kept) is freed at once."""
    write_file(fs.path("doomed"), b"x" * 65536)
    write_config(fs, guest("a", sock(fs, "a")) + guest("b", sock(fs, "b")))
    reload(fs, "applied")
    holder = subprocess.Popen([binary("pmfs-bench-vhost"), "--socket", sock(fs, "b"), "--cat", "doomed", "--hold", "60"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        b_id = by_socket(fs)[sock(fs, "b")]["id"]
        wait_for(lambda: [s for s in ctl_json(fs, "sessions")["sessions"] if s.get("listener") == b_id and s["openHandles"] == 1],
                 "the guest on b connected with the file open", fs)
        os.unlink(fs.path("doomed"))
        held = os.statvfs(fs.mnt).f_ffree
        write_config(fs, guest("a", sock(fs, "a")))
        reload(fs, "applied")
        assert refuses(sock(fs, "b"))
        assert not [s for s in ctl_json(fs, "sessions")["sessions"] if s.get("listener") == b_id]
        wait_for(lambda: os.statvfs(fs.mnt).f_ffree == held + 1, "the orphan freed when b's session ended", fs)
    finally:
        holder.kill()
        holder.wait()


def test_sighup_serves_a_changed_socket_anew(fs):
    write_config(fs, guest("a", sock(fs, "a")))
    reload(fs, "applied")
    old = by_socket(fs)[sock(fs, "a")]
    write_config(fs, guest("a", sock(fs, "a"), "read-only: true"))
    reload(fs, "applied")
    new = by_socket(fs)[sock(fs, "a")]
    assert new["readOnly"] and new["id"] != old["id"]
    got = cat(sock(fs, "a"), "held")
    assert got.returncode == 0, got.stderr


@pytest.mark.parametrize("guests,extra,where", [
    ("  a:\n    socket: {a}\n    export: /no-such-dir\n", "", "guests.a: export=/no-such-dir: no such directory"),
    ("  a:\n    socket: {a}\n    devices: maybe\n", "", ":11: guests.a.devices: devices= must be allow or deny"),
    ("  a:\n    socket: {a}\n", "queues: 100\n", ":8: queues: must be 1...64"),
    ("  a:\n    socket: {a}\n", "qeues: 2\n", ":8: qeues: unknown key"),
    ("  a:\n    socket: {a}\n   bad indentation: [\n", "", ": YAML: "),
])
def test_sighup_with_a_bad_file_keeps_the_running_configuration(fs, guests, extra, where):
    write_config(fs, guest("a", sock(fs, "a")))
    reload(fs, "applied")
    before = listeners(fs)
    write_config(fs, guests.format(a=sock(fs, "a")), extra)
    log = reload(fs, "refused")
    assert f"configuration refused: {fs.config}" in log and where in log, log
    assert "the running configuration stays" in log
    assert listeners(fs) == before
    got = cat(sock(fs, "a"), "held")
    assert got.returncode == 0, got.stderr


def test_pmfsctl_reload_applies_the_file_and_reports_a_refusal(fs):
    os.makedirs(fs.path("vmc"), exist_ok=True)
    write_config(fs, base_guests(fs) + guest("c", sock(fs, "c"), "export: /vmc"))
    run = pmfsctl(fs, "reload")
    assert run.returncode == 0 and f"configuration {fs.config} applied: 3 guest socket(s)" in run.stdout, run
    assert sock(fs, "c") in by_socket(fs)
    assert "pmfsctl reload: reading" in fs.this_start_log()
    before = listeners(fs)
    write_config(fs, base_guests(fs), "queues: 100\n")
    run = pmfsctl(fs, "reload")
    assert run.returncode == 1, run
    assert f"configuration refused: {fs.config}:" in run.stderr and "queues: must be 1...64" in run.stderr, run.stderr
    assert "the running configuration stays" in run.stderr
    assert listeners(fs) == before
    write_config(fs, base_guests(fs))
    assert pmfsctl(fs, "reload").returncode == 0
    assert sock(fs, "c") not in by_socket(fs)


def test_sighup_changes_the_log_level_at_once(fs):
    write_config(fs, guest("a", sock(fs, "a")))
    reload(fs, "applied")
    write_config(fs, guest("a", sock(fs, "a")), level="warning")
    fs.proc.send_signal(signal.SIGHUP)   # its "applied" is a notice: not logged at warning
    wait_for(lambda: "log level warning (was info)" in f_log(fs), "the new log level", fs)
    start = len(f_log(fs))
    assert cat(sock(fs, "a"), "held").returncode == 0
    assert "front end connected" not in f_log(fs)[start:], "a notice at level warning"
    write_config(fs, guest("a", sock(fs, "a")))
    f_before = f_log(fs).count("front end connected")
    fs.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "log level info (was warning)" in f_log(fs)[start:], "the log level back to info", fs)
    assert cat(sock(fs, "a"), "held").returncode == 0
    wait_for(lambda: f_log(fs).count("front end connected") > f_before, "notices again at level info", fs)


def f_log(f):
    return f.this_start_log()


def test_sighup_logs_settings_that_need_a_restart(fs):
    write_config(fs, guest("a", sock(fs, "a")), "workers: 7\n")
    log = reload(fs, "applied")
    assert "workers: 7 in" in log and "needs a restart of pmfsd; 4 stays" in log, log
    other_pool = fs.config + ".pool"
    with open(fs.config) as f:
        text = f.read().replace(f"pool: {fs.pool}", f"pool: {other_pool}")
    with open(fs.config, "w") as f:
        f.write(text)
    log = reload(fs, "applied")
    assert f"pool: {other_pool} in" in log, log
    assert ctl_json(fs, "info")["info"]["pool"] == fs.pool
    write_config(fs, base_guests(fs))
    reload(fs, "applied")


def start_failure(config_text, *args):
    """pmfsd --config with `config_text`: its exit status and the last line of stderr."""
    require_fuse()
    f = Pmfs(name="pmfs-config-bad")
    try:
        path = os.path.join(f.pool_dir, "bad.yaml")
        with open(path, "w") as out:
            out.write(config_text.format(pool=f.pool, data=f.data, mnt=f.mnt, dir=f.pool_dir))
        run = subprocess.run([binary("pmfsd"), "--config", path, *args], env=ENV, capture_output=True, text=True, timeout=60)
        lines = run.stderr.strip().splitlines()
        return run.returncode, (lines[-1] if lines else ""), path
    finally:
        f.cleanup()


GOOD_HEAD = "pool: {pool}\ndata: {data}\nmount: {mnt}\n"


@pytest.mark.parametrize("text,args,message", [
    (GOOD_HEAD + "cache: sometimes\n", (), "{path}:4: cache: must be none, auto or always"),
    (GOOD_HEAD + "guests:\n  a:\n    socket: relative.sock\n", (), "{path}:6: guests.a.socket: an absolute path"),
    (GOOD_HEAD + "guests:\n  a:\n    export: /\n", (), "{path}:5: guests.a: no socket: PATH or fd: N"),
    (GOOD_HEAD + "guests:\n  a:\n    socket: {dir}/a.sock\n    export: /missing\n", (),
     "{path}:5: guests.a: export=/missing: no such directory in the file system"),
    (GOOD_HEAD + "pool: again\n", (), "{path}:"),
    (GOOD_HEAD + "workers: lots\n", (), "{path}:4: workers: expected an integer"),
    ("pool: [unclosed\n", (), "{path}:"),
])
def test_a_bad_file_at_start_exits_1_with_the_line_and_reason(text, args, message):
    rc, last, path = start_failure(text, *args)
    assert rc == 1, last
    assert last.startswith("pmfsd: " + message.format(path=path)), last


def test_a_flag_overrides_a_bad_value_in_the_file():
    """--cache-size on the command line wins: the file's value is not even looked at, so the start goes on (to the
    missing export, which fails it, proving the settings before it passed)."""
    rc, last, path = start_failure(GOOD_HEAD + "cache-size: tiny\nguests:\n  a:\n    socket: {dir}/a.sock\n    export: /missing\n",
                                   "--cache-size", "128M")
    assert rc == 1 and "export=/missing: no such directory" in last, last
