#!/usr/bin/env python3
"""Metadata ops/s and 4 KiB write+fsync latency on a pmfs mount, side by side
with tmpfs, an ext4 loop mount and native ext4, in one run. Run as root after a build:
    python3 tools/bench/mount.py [--files N] [--syncs N] [--fuse-transport uring,device] [--ram]
                                 [--writers 8] [--seconds 2] [--libfuse $(bash tools/bench/libfuse-passthrough.sh)]
pmfs: pool on /dev/shm with PMEM_IS_PMEM_FORCE=1, data file (mkfs.pmfs --zero-data) on /var/tmp (disk), or on /dev/shm with --ram.
ext4 (loop): an image on the same media as pmfs's data; ext4 (native): /var/tmp itself (the root disk).
--fuse-transport: one pmfsd per transport given (auto, uring, device), each measured in its own column.
Group commit: fsyncs/s of one writer process, then of --writers processes at once (each overwrites
4 KiB of its own file and fsyncs, for --seconds), and their ratio.
Ratios are against ext4 on the same media: the loop mount with --ram, native ext4 on disk.
--libfuse PASSTHROUGH_LL: also libfuse's example server (multithreaded, default_permissions as pmfs's
mount, /dev/fuse) over that same ext4, with pmfs's ratios to it: what any FUSE server pays here.
PMFS_BUILD_DIR picks the binaries (default .build/release, else .build/debug)."""
import argparse, os, shutil, signal, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def build_dir():
    given = os.environ.get("PMFS_BUILD_DIR")
    candidates = [given] if given else [os.path.join(ROOT, ".build", d) for d in ("release", "debug")]
    for p in candidates:
        if os.path.exists(os.path.join(p, "pmfsd")):
            return p
    sys.exit("build first: swift build -c release (pmfsd and mkfs.pmfs)")

def wait_for_transport(log_path, transport):
    """pmfsd logs the transport once INIT is answered; under uring it must be io_uring."""
    for _ in range(100):
        with open(log_path, errors="replace") as f:
            text = f.read()
        if "transport " in text:
            if transport == "uring" and "transport io_uring" not in text:
                sys.exit("pmfsd did not serve through io_uring:\n" + text)
            return text.split("transport ", 1)[1].split("\n", 1)[0]
        time.sleep(0.1)
    sys.exit("pmfsd never said which transport it uses")

def mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)

def measure(path, files, syncs, writers, seconds):
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
    one = fsync_rate(d, 1, seconds)
    many = fsync_rate(d, writers, seconds)
    shutil.rmtree(d)
    return dict(create=create, stat=stat, unlink=unlink,
                p50=statistics.median(lat), p99=lat[int(len(lat) * 0.99) - 1],
                fsync1=one, fsyncN=many, group=many / one)

def fsync_rate(d, writers, seconds):
    """fsyncs/s of WRITERS processes, each overwriting 4 KiB of its own file and
    fsyncing in a loop for SECONDS. Processes, not threads: Python threads
    take turns on the interpreter lock between the system calls, which showed
    as tmpfs doing fewer fsyncs with 8 threads than with one."""
    block = os.urandom(4096)
    paths = [os.path.join(d, "w%d" % i) for i in range(writers)]
    for p in paths:
        fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
        os.pwrite(fd, block, 0)
        os.fsync(fd)
        os.close(fd)
    counts_r, counts_w = os.pipe()
    go_r, go_w = os.pipe()
    pids = []
    for p in paths:
        pid = os.fork()
        if pid == 0:
            os.close(counts_r); os.close(go_w)
            fsync_writer(p, block, seconds, go_r, counts_w)
        pids.append(pid)
    os.close(counts_w); os.close(go_r)
    t0 = time.perf_counter()
    os.write(go_w, b"x" * writers)
    failed = [pid for pid in pids if os.waitpid(pid, 0)[1] != 0]
    elapsed = time.perf_counter() - t0
    os.close(go_w)
    out = b""
    while chunk := os.read(counts_r, 4096):
        out += chunk
    os.close(counts_r)
    if failed:
        sys.exit("%d fsync writer(s) failed in %s" % (len(failed), d))
    for p in paths:
        os.unlink(p)
    return sum(int(x) for x in out.split()) / elapsed

def fsync_writer(path, block, seconds, go, counts):
    """A writer process: waits for the start on GO, overwrites and fsyncs
    PATH for SECONDS, writes its count to COUNTS; exits 0 only if all went well."""
    code = 1
    try:
        fd = os.open(path, os.O_WRONLY)
        os.read(go, 1)
        deadline, n = time.perf_counter() + seconds, 0
        while time.perf_counter() < deadline:
            os.pwrite(fd, block, 0)
            os.fsync(fd)
            n += 1
        os.write(counts, b"%d\n" % n)
        code = 0
    finally:
        os._exit(code)

def start_pmfsd(bins, env, pool, data, mnt, transport, log_path):
    # --zero-data: the data file written once, as README says to run on a host
    # file system (fsyncs into preallocated, unwritten blocks commit its journal).
    subprocess.run([os.path.join(bins, "mkfs.pmfs"), "--pool", pool, "--data", data, "--data-size", "2G", "--zero-data", "-q"],
                   check=True, env=env)
    log = open(log_path, "w")
    daemon = subprocess.Popen([os.path.join(bins, "pmfsd"), "--pool", pool, "--data", data, "--mount", mnt,
                               "--fuse-transport", transport], env=env, stdout=log, stderr=log)
    for _ in range(100):
        if mounted(mnt):
            break
        time.sleep(0.1)
    return daemon, wait_for_transport(log_path, transport)

def start_libfuse(binary, source, mnt, log_path):
    """libfuse's passthrough_ll serving SOURCE at MNT, with the kernel checking
    permissions as it does for pmfs's mount."""
    log = open(log_path, "w")
    daemon = subprocess.Popen([binary, "-f", "-o", "source=%s,default_permissions,allow_other" % source, mnt],
                              stdout=log, stderr=log)
    for _ in range(100):
        if mounted(mnt):
            return daemon
        time.sleep(0.1)
    daemon.kill()
    sys.exit("%s did not mount %s" % (binary, mnt))

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--syncs", type=int, default=2000)
    ap.add_argument("--fuse-transport", default="auto",
                    help="comma-separated pmfsd host transports to measure side by side: auto, uring, device")
    ap.add_argument("--ram", action="store_true", help="pmfs data file and the ext4 loop image on /dev/shm")
    ap.add_argument("--writers", type=int, default=8, help="concurrent fsync writers for the group-commit rows")
    ap.add_argument("--seconds", type=float, default=2.0, help="duration of each group-commit measurement")
    ap.add_argument("--libfuse", metavar="PASSTHROUGH_LL",
                    help="libfuse's passthrough_ll (tools/bench/libfuse-passthrough.sh builds it), measured over ext4 too")
    args = ap.parse_args()
    transports = [t for t in args.fuse_transport.split(",") if t]
    if not transports or any(t not in ("auto", "uring", "device") for t in transports):
        sys.exit("--fuse-transport: a comma-separated list of auto, uring, device")
    bins = build_dir()
    work = tempfile.mkdtemp(prefix="pmfs-bench-", dir="/var/tmp")
    shm = tempfile.mkdtemp(prefix="pmfs-bench-", dir="/dev/shm")
    media = shm if args.ram else work
    env = dict(os.environ, PMEM_IS_PMEM_FORCE="1")
    pmfs_names = ["pmfs (%s)" % t for t in transports]
    ref = "ext4 (loop)" if args.ram else "ext4 (native)"
    fuse_ref = "libfuse over %s" % ref if args.libfuse else None
    names = pmfs_names + ["tmpfs", "ext4 (loop)", "ext4 (native)"] + ([fuse_ref] if fuse_ref else [])
    mnt = {n: os.path.join(work, "m%d" % i) for i, n in enumerate(names)}
    mnt["ext4 (native)"] = os.path.join(work, "native")
    for p in mnt.values():
        os.mkdir(p)
    daemons = []
    results, how = {}, {}
    try:
        for t, n in zip(transports, pmfs_names):
            d, how[n] = start_pmfsd(bins, env, "%s/%s.pool" % (shm, t), "%s/%s.img" % (media, t), mnt[n], t,
                                    "%s/%s.log" % (shm, t))
            daemons.append(d)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2G", "tmpfs", mnt["tmpfs"]], check=True)
        subprocess.run(["truncate", "-s", "2G", media + "/ext4.img"], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", media + "/ext4.img"], check=True)
        subprocess.run(["mount", "-o", "loop", media + "/ext4.img", mnt["ext4 (loop)"]], check=True)
        if fuse_ref:
            source = os.path.join(mnt[ref], "libfuse-source")
            os.mkdir(source)
            daemons.append(start_libfuse(args.libfuse, source, mnt[fuse_ref], "%s/libfuse.log" % shm))
        for name in names:
            results[name] = measure(mnt[name], args.files, args.syncs, max(1, args.writers), args.seconds)
    finally:
        if fuse_ref:
            subprocess.run(["umount", mnt[fuse_ref]], stderr=subprocess.DEVNULL)
        for d in daemons:
            d.send_signal(signal.SIGTERM)
            d.wait(timeout=60)
        for name in ("tmpfs", "ext4 (loop)"):
            subprocess.run(["umount", mnt[name]], stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)
    refs = [ref] + ([fuse_ref] if fuse_ref else [])
    pairs = [(n, r) for r in refs for n in pmfs_names]
    print("| measure | " + " | ".join(names) + " | " + " | ".join("%s/%s" % p for p in pairs) + " |")
    print("|---|" + "---:|" * (len(names) + len(pairs)))
    for key, label, fmt in (("create", "create+close (ops/s)", "%.0f"), ("stat", "stat (ops/s)", "%.0f"),
                            ("unlink", "unlink (ops/s)", "%.0f"), ("p50", "4 KiB write+fsync p50 (µs)", "%.1f"),
                            ("p99", "4 KiB write+fsync p99 (µs)", "%.1f"),
                            ("fsync1", "fsyncs/s, 1 writer", "%.0f"),
                            ("fsyncN", "fsyncs/s, %d writers" % args.writers, "%.0f"),
                            ("group", "%d writers / 1 writer" % args.writers, "%.2f")):
        r = [results[n][key] for n in names]
        ratios = ["%.2f" % (results[n][key] / results[r][key]) for n, r in pairs]
        print("| %s | %s | %s |" % (label, " | ".join(fmt % v for v in r), " | ".join(ratios)))
    print("\n%d files, %d fsyncs; pmfs binaries from %s; pool on /dev/shm (PMEM_IS_PMEM_FORCE=1), pmfs data (written once, "
          "--zero-data) and the ext4 loop image on %s; ext4 (native) is /var/tmp" % (args.files, args.syncs, bins,
                                                               "/dev/shm (RAM)" if args.ram else "/var/tmp (disk)"))
    for n in pmfs_names:
        print("%s: transport %s" % (n, how[n]))
    if fuse_ref:
        print("%s: %s (/dev/fuse, multithreaded) serving a directory of %s" % (fuse_ref, args.libfuse, ref))

if __name__ == "__main__":
    main()
