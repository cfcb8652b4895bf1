"""pmfsd --metrics: a real pmfsd, its host mount, and its Prometheus endpoint scraped over HTTP.

The counters must move by what the test did through the mount (bytes written at least the bytes
written, fsyncs exactly the fsyncs done), the gauges must be sane, other paths 404, and a bad
--metrics value must stop pmfsd at start with exit 1.
"""
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import ENV, Pmfs, binary, mount_entry, require_fuse, serve

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def parse(text):
    """{(name, frozenset of (label, value)): value} from the Prometheus text format."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        key = (m.group(1), labels)
        assert key not in out, f"sample twice: {line!r}"
        out[key] = float(m.group(3))
    return out


def metrics_url(fs):
    """Sets fs.url from the address pmfsd logs for its --metrics endpoint."""
    deadline = time.monotonic() + 10
    while not (m := re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", fs.this_start_log())):
        assert time.monotonic() < deadline, f"pmfsd did not log its metrics address:\n{fs.stderr()}"
        time.sleep(0.02)
    fs.url = m.group(1)


@pytest.fixture(scope="module")
def served():
    def configure(fs):
        fs.sock = os.path.join(fs.pool_dir, "vm.sock")
        fs.start_args = ["--metrics", "127.0.0.1:0", "--socket", fs.sock]

    yield from serve("pmfs-metrics", configure, metrics_url)


def scrape(fs):
    with urllib.request.urlopen(fs.url, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(r.read().decode())


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_counters_move_by_what_the_mount_did(served):
    before = scrape(served)
    data = os.urandom(3 * 65536 + 123)
    fsyncs = 3
    path = served.path("counted")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(fsyncs):
            os.write(fd, data[i * len(data) // fsyncs:(i + 1) * len(data) // fsyncs])
            os.fsync(fd)
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        assert f.read() == data
    # The read came to pmfsd (an open drops the kernel's pages): each block counts as a hit or a miss.
    missing = f"missing-{time.monotonic_ns()}"
    assert not os.path.exists(served.path(missing))
    after = scrape(served)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("pmfs_fuse_written_bytes_total", session="host") >= len(data)
    assert delta("pmfs_fuse_read_bytes_total", session="host") >= len(data)
    assert delta("pmfs_fuse_requests_total", session="host", opcode="fsync") == fsyncs
    assert delta("pmfs_fsyncs_total") == fsyncs
    assert delta("pmfs_fuse_request_duration_seconds_count", session="host", **{"class": "fsync"}) == fsyncs
    assert delta("pmfs_fuse_request_duration_seconds_count", session="host", **{"class": "write"}) >= 1
    assert delta("pmfs_fuse_requests_total", session="host", opcode="write") >= 1
    assert delta("pmfs_fuse_requests_total", session="host", opcode="create") == 1
    # The LOOKUP of the missing name answered ENOENT.
    assert delta("pmfs_fuse_request_errors_total", session="host", opcode="lookup") >= 1
    assert delta("pmfs_fuse_errors_by_errno_total", session="host", errno="ENOENT") >= 1
    assert delta("pmfs_fuse_errors_by_errno_total", session="host", errno="EIO") == 0
    assert delta("pmfs_cache_hits_total") + delta("pmfs_cache_misses_total") >= len(data) // 4096
    assert delta("pmfs_fuse_request_errors_total", session="host", opcode="fsync") == 0
    # Each fsync wrote its dirty blocks to the device and flushed it.
    assert delta("pmfs_device_bytes_total", op="write") >= len(data)
    assert delta("pmfs_device_requests_total", op="write") >= 1
    assert delta("pmfs_device_flushes_total") >= 1
    # Each flush is timed; the create and each fsync's commit are pool transactions; none aborted.
    assert delta("pmfs_device_flush_duration_seconds_count") == delta("pmfs_device_flushes_total")
    # The fsyncs wrote the cache's dirty blocks back; each device batch is timed by its op.
    assert delta("pmfs_cache_written_back_bytes_total") >= len(data)
    assert 1 <= delta("pmfs_device_batch_duration_seconds_count", op="write") <= delta("pmfs_device_requests_total", op="write")
    assert delta("pmfs_device_batch_duration_seconds_count", op="read") <= delta("pmfs_device_requests_total", op="read")
    assert delta("pmfs_pool_transactions_total", outcome="committed") >= 1 + fsyncs
    assert delta("pmfs_pool_transactions_total", outcome="aborted") == 0
    # Histogram buckets are cumulative and end at the count.
    buckets = sorted((float(dict(k[1])["le"]), v) for k, v in after.items()
                     if k[0] == "pmfs_fuse_request_duration_seconds_bucket" and {("class", "fsync"), ("session", "host")} <= k[1])
    assert buckets[-1][0] == float("inf")
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    assert buckets[-1][1] == value(after, "pmfs_fuse_request_duration_seconds_count", session="host", **{"class": "fsync"})


def test_gauges_are_sane_and_follow_the_file_system(served):
    s = scrape(served)
    assert 0 <= value(s, "pmfs_inodes_free") <= value(s, "pmfs_inodes") and value(s, "pmfs_inodes") > 0
    assert 0 <= value(s, "pmfs_data_blocks_free") <= value(s, "pmfs_data_blocks") and value(s, "pmfs_data_blocks") > 0
    assert value(s, "pmfs_data_block_size_bytes") == os.statvfs(served.mnt).f_bsize
    assert 0 <= value(s, "pmfs_cache_frames_dirty") <= value(s, "pmfs_cache_frames_used") <= value(s, "pmfs_cache_frames")
    assert value(s, "pmfs_cache_frames") > 0
    assert 0 < value(s, "pmfs_pool_object_bytes") < value(s, "pmfs_pool_bytes")
    assert value(s, "pmfs_pool_bytes") == os.path.getsize(served.pool)
    # A new file takes an inode; a file held open is a handle of the host session.
    free_before = value(s, "pmfs_inodes_free")
    handles_before = value(s, "pmfs_open_handles", session="host")
    with open(served.path("held"), "wb") as f:
        f.write(b"x" * 10000)
        held = scrape(served)
        assert value(held, "pmfs_inodes_free") == free_before - 1
        assert value(held, "pmfs_open_handles", session="host") == handles_before + 1
        # The write sits in the write-back cache until written back.
        assert value(held, "pmfs_cache_frames_dirty") >= 1
    # RELEASE reaches pmfsd after close returns.
    deadline = time.monotonic() + 10
    while value(scrape(served), "pmfs_open_handles", session="host") != handles_before:
        assert time.monotonic() < deadline, "the handle was not released"
        time.sleep(0.05)


def test_a_guest_session_is_counted_under_its_socket(served):
    """pmfs-bench-vhost plays QEMU and a guest on the socket: its requests count under the socket's
    session label, not the host's; the connection shows while it lasts and ends with it."""
    before = scrape(served)
    assert value(before, "pmfs_vhost_connected", session=served.sock) == 0
    n = 300
    bench = subprocess.Popen([binary("pmfs-bench-vhost"), "--socket", served.sock, "--iterations", str(n), "--warmup", "0",
                              "--workloads", "getattr,write-fsync"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen_connected = False
    while bench.poll() is None:
        s = scrape(served)
        seen_connected |= value(s, "pmfs_vhost_connected", session=served.sock) == 1 and \
            value(s, "pmfs_vhost_queues_running", session=served.sock) >= 1
        # One request at a time: never more than one waits behind the one being served.
        assert 0 <= value(s, "pmfs_vhost_queue_depth", session=served.sock) <= 1
        time.sleep(0.01)
    out, err = bench.communicate()
    assert bench.returncode == 0, err
    deadline = time.monotonic() + 10
    while value(after := scrape(served), "pmfs_vhost_connected", session=served.sock) != 0:
        assert time.monotonic() < deadline, "the front end's disconnection did not show"
        time.sleep(0.05)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert seen_connected, "no scrape saw the front end connected with a running queue"
    assert delta("pmfs_fuse_requests_total", session=served.sock, opcode="getattr") >= n
    assert delta("pmfs_fuse_requests_total", session=served.sock, opcode="fsync") >= n
    assert delta("pmfs_fuse_written_bytes_total", session=served.sock) >= n
    assert delta("pmfs_fuse_request_duration_seconds_count", session=served.sock, **{"class": "fsync"}) >= n
    assert delta("pmfs_fuse_requests_total", session="host", opcode="fsync") == 0
    assert delta("pmfs_fsyncs_total") >= n
    assert value(after, "pmfs_vhost_queues_running", session=served.sock) == 0
    assert ("pmfs_vhost_queue_depth", frozenset({("session", served.sock)})) in after
    assert value(after, "pmfs_vhost_queue_depth", session=served.sock) == 0


def test_other_paths_and_methods_are_refused(served):
    base = served.url.rsplit("/", 1)[0]
    for path in ("/", "/metric", "/metrics/x", "/favicon.ico"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + path, timeout=10)
        assert e.value.code == 404, path
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(served.url, data=b"x", method="POST"), timeout=10)
    assert e.value.code == 405
    # A query string is still the metrics.
    with urllib.request.urlopen(served.url + "?x=1", timeout=10) as r:
        assert r.status == 200


def test_a_hostile_client_is_cut_off_and_others_still_served(served):
    host, port = served.url.split("//")[1].split("/")[0].split(":")
    # One endless header: the connection is closed, unanswered, long before it ends.
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nX: ")
        got = b""
        try:
            for _ in range(64):
                s.sendall(b"a" * 4096)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            got = s.recv(4096)
        except ConnectionResetError:
            pass
        assert b"200 OK" not in got
    # Many idle connections: past the limit they are closed at once; the endpoint lives on.
    idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(40)]
    try:
        closed = 0
        for s in idle[20:]:
            s.settimeout(5)
            try:
                closed += s.recv(1) == b""
            except (ConnectionResetError, socket.timeout):
                pass
        assert closed >= 1, "no connection past the limit was closed"
    finally:
        for s in idle:
            s.close()
    time.sleep(0.2)
    assert value(scrape(served), "pmfs_inodes") > 0


def start_failure(args):
    """pmfsd with these arguments must fail at start: (exit code, stderr)."""
    fs = Pmfs(name="pmfs-metrics-bad")
    try:
        run = subprocess.run([binary("pmfsd"), "--pool", fs.pool, "--data", fs.data, "--mount", fs.mnt, *args],
                             env=ENV, capture_output=True, text=True, timeout=60)
        assert mount_entry(fs.mnt) is None, "pmfsd mounted despite the bad --metrics"
        return run.returncode, run.stderr
    finally:
        fs.cleanup()


@pytest.mark.parametrize("bad", ["localhost:9464", "127.0.0.1", "127.0.0.1:65536", "::1:9464", "[::1]", "9464", ""])
def test_a_bad_metrics_value_fails_the_start(bad):
    require_fuse()
    rc, err = start_failure(["--metrics", bad])
    assert rc == 1, err
    assert "--metrics" in err, err


def test_an_address_in_use_fails_the_start():
    require_fuse()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        rc, err = start_failure(["--metrics", f"127.0.0.1:{taken.getsockname()[1]}"])
    assert rc == 1, err
    assert "cannot listen" in err, err


def test_a_waiting_lock_is_a_request_in_flight(served):
    """pmfs_fuse_requests_in_flight counts a SETLKW that waits for its lock (deferred), and drops once it is
    answered."""
    import sys
    path = served.path("locked")
    with open(path, "wb") as f:
        f.write(b"x")
    hold = "import fcntl, sys, time\nf = open(sys.argv[1], 'r+b')\nfcntl.lockf(f, fcntl.LOCK_EX)\nprint('held', flush=True)\nsys.stdin.read()\n"
    holder = subprocess.Popen([sys.executable, "-c", hold, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    waiter = None
    try:
        assert holder.stdout.readline().strip() == "held"
        waiter = subprocess.Popen([sys.executable, "-c", "import fcntl, sys\nf = open(sys.argv[1], 'r+b')\nfcntl.lockf(f, fcntl.LOCK_EX)\n", path])
        deadline = time.monotonic() + 10
        while value(scrape(served), "pmfs_fuse_requests_in_flight", session="host") < 1:
            assert time.monotonic() < deadline, "the waiting SETLKW never showed as in flight"
            time.sleep(0.05)
        holder.stdin.close()   # the holder exits, its lock goes, the waiter gets it
        assert waiter.wait(timeout=20) == 0
        deadline = time.monotonic() + 10
        while value(scrape(served), "pmfs_fuse_requests_in_flight", session="host") != 0:
            assert time.monotonic() < deadline, "in-flight requests did not return to 0 once the lock was granted"
            time.sleep(0.05)
    finally:
        for p in (holder, waiter):
            if p and p.poll() is None:
                p.kill()
                p.wait()


def test_writes_past_a_full_cache_are_throttled_and_counted():
    """With a 1 MiB write-back cache, writing 16 MiB without fsync fills it with dirty blocks: later
    writes must write back to make room. Each such wait is counted and timed, by op, and the bytes it
    wrote back are counted; the file reads back whole."""
    def configure(fs):
        fs.start_args = ["--metrics", "127.0.0.1:0"]

    for fs in serve("pmfs-metrics-small-cache", configure, metrics_url, cache_size="1M"):
        before = scrape(fs)
        chunk = os.urandom(1 << 20)
        with open(fs.path("big"), "wb") as f:
            for _ in range(16):
                f.write(chunk)
        after = scrape(fs)

        def delta(name, **labels):
            return value(after, name, **labels) - value(before, name, **labels)

        assert value(after, "pmfs_cache_frames") == 256
        assert delta("pmfs_cache_throttled_total", op="write") >= 1
        assert delta("pmfs_cache_throttle_duration_seconds_count", op="write") == delta("pmfs_cache_throttled_total", op="write")
        assert delta("pmfs_cache_throttle_duration_seconds_sum", op="write") > 0
        # The cache holds at most 1 MiB: the rest of the 16 was written back to make room (or by the timer).
        assert delta("pmfs_cache_written_back_bytes_total") >= 15 << 20
        with open(fs.path("big"), "rb") as f:
            assert f.read() == chunk * 16
