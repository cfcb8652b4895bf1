#!/usr/bin/env python3
"""Metadata ops/s and 4 KiB write+fsync latency on a pmfs mount, side by side
with tmpfs and an ext4 loop mount, in one run. Run as root after a build:
    python3 tools/bench/mount.py [--files N] [--syncs N]
pmfs: pool on /dev/shm with PMEM_IS_PMEM_FORCE=1, data file on /var/tmp (disk).
ext4: a loop-mounted image on /var/tmp (the same disk)."""
import argparse, os, shutil, signal, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def build_dir():
    for d in ("release", "debug"):
        p = os.path.join(ROOT, ".build", d)
        if os.path.exists(os.path.join(p, "pmfsd")):
            return p
    sys.exit("build first: swift build -c release (pmfsd and mkfs.pmfs)")

def mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)

def measure(path, files, syncs):
    d = os.path.join(path, "bench")
    os.mkdir(d)
    names = [os.path.join(d, "f%06d" % i) for i in range(files)]
    t = time.perf_counter()
    for n in names:
        os.close(os.open(n, os.O_CREAT | os.O_WRONLY, 0o644))
    create = files / (time.perf_counter() - t)
    t = time.perf_counter()
    for n in names:
        os.stat(n)
    stat = files / (time.perf_counter() - t)
    t = time.perf_counter()
    for n in names:
        os.unlink(n)
    unlink = files / (time.perf_counter() - t)
    block = os.urandom(4096)
    fd = os.open(os.path.join(d, "log"), os.O_CREAT | os.O_WRONLY, 0o644)
    lat = []
    for i in range(syncs):
        t = time.perf_counter()
        os.pwrite(fd, block, i * 4096)
        os.fsync(fd)
        lat.append((time.perf_counter() - t) * 1e6)
    os.close(fd)
    lat.sort()
    shutil.rmtree(d)
    return dict(create=create, stat=stat, unlink=unlink,
                p50=statistics.median(lat), p99=lat[int(len(lat) * 0.99) - 1])

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--syncs", type=int, default=2000)
    args = ap.parse_args()
    bins = build_dir()
    work = tempfile.mkdtemp(prefix="pmfs-bench-", dir="/var/tmp")
    shm = tempfile.mkdtemp(prefix="pmfs-bench-", dir="/dev/shm")
    env = dict(os.environ, PMEM_IS_PMEM_FORCE="1")
    mnt = {k: os.path.join(work, k) for k in ("pmfs", "tmpfs", "ext4")}
    for p in mnt.values():
        os.mkdir(p)
    daemon = None
    results = {}
    try:
        subprocess.run([os.path.join(bins, "mkfs.pmfs"), "--pool", shm + "/p.pool", "--data", work + "/data.img",
                        "--data-size", "2G", "-q"], check=True, env=env)
        daemon = subprocess.Popen([os.path.join(bins, "pmfsd"), "--pool", shm + "/p.pool", "--data", work + "/data.img",
                                   "--mount", mnt["pmfs"], "--log-level", "warning"], env=env)
        for _ in range(100):
            if mounted(mnt["pmfs"]):
                break
            time.sleep(0.1)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2G", "tmpfs", mnt["tmpfs"]], check=True)
        subprocess.run(["truncate", "-s", "2G", work + "/ext4.img"], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", work + "/ext4.img"], check=True)
        subprocess.run(["mount", "-o", "loop", work + "/ext4.img", mnt["ext4"]], check=True)
        for name in ("pmfs", "tmpfs", "ext4"):
            results[name] = measure(mnt[name], args.files, args.syncs)
    finally:
        for name in ("tmpfs", "ext4"):
            subprocess.run(["umount", mnt[name]], stderr=subprocess.DEVNULL)
        if daemon:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)
    print("| measure | pmfs | tmpfs | ext4 (loop) | pmfs/ext4 |")
    print("|---|---:|---:|---:|---:|")
    for key, label, fmt in (("create", "create+close (ops/s)", "%.0f"), ("stat", "stat (ops/s)", "%.0f"),
                            ("unlink", "unlink (ops/s)", "%.0f"), ("p50", "4 KiB write+fsync p50 (µs)", "%.1f"),
                            ("p99", "4 KiB write+fsync p99 (µs)", "%.1f")):
        r = [results[n][key] for n in ("pmfs", "tmpfs", "ext4")]
        print("| %s | %s | %s | %s | %.2f |" % (label, fmt % r[0], fmt % r[1], fmt % r[2], r[0] / r[2]))
    print("\n%d files, %d fsyncs; pmfs binaries from %s" % (args.files, args.syncs, bins))

if __name__ == "__main__":
    main()
