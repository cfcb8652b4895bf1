#!/usr/bin/env python3
"""kill -9 crash campaign of pmfsd through the host mount.

Each point: pmfsd serves the file system (the same pool, point after point; a new one every
--reformat-every points), workers of one mix run in a new directory, pmfsd is killed with SIGKILL at a
random moment once every worker has made progress, the dead mount is lazily unmounted, `fsck.pmfs -f -n`
may report only what an unclean stop leaves, pmfsd starts again and every operation the workers logged as
returned is checked (tools/crash/workload.py); so is the previous point's directory, unchanged since it was
checked. Mixes: fsync (appends + fsync/fdatasync, 3 writer processes: group commit), metadata (namespace,
setattr and xattr churn), data (overwrites, truncates, fallocate, punched holes, large sequential writes,
O_DIRECT, clones by copy_file_range, fsync/fdatasync), mixed (all three at once); `all` takes them in turn.

    python3 tools/crash/campaign.py --points 1000 --seed 1          # the manual campaign
    python3 tools/crash/campaign.py --points 12 --seed 7 --bin .build-x/debug

A failure prints the point's seed; `--seed S --points 1 --mix M` with a fresh pool reruns that point's
workload (the kill moment is timing, not seed). Exit status 1 on any failure. Needs root and /dev/fuse.
"""
import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MIXES = {"fsync": ["fsync"] * 3, "metadata": ["metadata"] * 3, "data": ["data"] * 2,
         "mixed": ["fsync", "fsync", "metadata", "data"]}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--mix", choices=[*MIXES, "all"], default="all")
    # Through a guest (a vhost-user front end driving pmfsd without QEMU) is not built yet.
    ap.add_argument("--via", choices=["mount"], default="mount", help="the transport: the host FUSE mount")
    ap.add_argument("--bin", default=str(ROOT / ".build" / "debug"), help="pmfsd, mkfs.pmfs, fsck.pmfs")
    ap.add_argument("--reformat-every", type=int, default=50, help="a new file system every N points")
    ap.add_argument("--keep", action="store_true", help="keep the pool, data file and logs of a failure")
    ap.add_argument("--minutes", type=float, help="stop starting points after this long (the summary still prints)")
    ap.add_argument("--min-ms", type=int, default=50)
    ap.add_argument("--max-ms", type=int, default=500)
    return ap.parse_args()


args = parse_args()
os.environ["PMFS_BUILD_DIR"] = str(Path(args.bin).resolve())
sys.path[:0] = [str(ROOT / "Tests" / "mount"), str(HERE)]
import pytest  # noqa: E402  (conftest's Pmfs reports its failures with pytest.fail)
from conftest import Pmfs, mount_entry  # noqa: E402
from crashcheck import fsck_problem  # noqa: E402
import workload  # noqa: E402

# The previous point's files are read again up to this size; larger ones are compared by size and mtime.
SNAPSHOT_CONTENT_LIMIT = 64 << 10
HARNESS_ERRORS = (AssertionError, OSError, pytest.fail.Exception)


class PointFailed(Exception):
    pass


def wait_for_progress(logs, procs, timeout=60):
    """Until every worker logged a few returned operations (or one died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise PointFailed(f"a worker exited with {p.returncode} while pmfsd served: {p.stderr.read()[-2000:]}")
        if all(os.path.exists(log) and workload.read_log(log)[1].__len__() >= 3 for log in logs):
            return
        time.sleep(0.02)
    raise PointFailed("the workers made no progress in 60 s")


def run_point(fs, point, seed, mix, prev):
    """One kill point; returns (operations verified, fsck exit code). `prev` is the last point's
    (directory, snapshot) to check again."""
    rng = random.Random(seed)
    d = fs.path(f"p{point}")
    os.mkdir(d)
    logs, procs = [], []
    try:
        for w, kind in enumerate(MIXES[mix]):
            wd = os.path.join(d, f"w{w}-{kind}")
            os.mkdir(wd)
            log = os.path.join(fs.data_dir, f"p{point}-w{w}.log")
            logs.append((kind, wd, log))
            procs.append(subprocess.Popen([sys.executable, str(HERE / "workload.py"), kind, wd, log, str(rng.getrandbits(32))],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd="/"))
        wait_for_progress([lg for _, _, lg in logs], procs)
        time.sleep(rng.uniform(args.min_ms, args.max_ms) / 1000)
        fs.kill9()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                raise PointFailed("a worker hung after pmfsd was killed (the lazy unmount should fail its I/O)")
            if p.returncode != 0:
                raise PointFailed(f"a worker failed (exit {p.returncode}) other than by the dead mount: {p.stderr.read()[-2000:]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    rc, out = fs.fsck()
    problem = fsck_problem(rc, out)
    if problem:
        raise PointFailed(problem)
    fs.start()
    if "recovered after an unclean stop" not in fs.stderr().split("--- start")[-1]:
        raise PointFailed("pmfsd did not say it recovered after an unclean stop")
    verified = 0
    for kind, wd, log in logs:
        problem = workload.CHECK[kind](wd, log)
        if problem:
            raise PointFailed(f"{kind} worker: {problem}")
        ops, done, _ = workload.read_log(log)
        verified += len(done)
    if prev:
        pdir, snapshot = prev
        if workload.scan_tree(pdir, SNAPSHOT_CONTENT_LIMIT) != snapshot:
            raise PointFailed(f"{pdir}, checked at the last point and untouched since, changed")
        shutil.rmtree(pdir)   # churn for the next point, and bounded space
    return verified, rc, (d, workload.scan_tree(d, SNAPSHOT_CONTENT_LIMIT))


def stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main():
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    if not os.path.exists("/dev/fuse") or os.geteuid() != 0:
        sys.exit("the crash campaign needs root and /dev/fuse")
    master = random.Random(args.seed)
    print(f"crash campaign: {args.points} points, seed {args.seed}, mix {args.mix}, via {args.via}, bin {args.bin}", flush=True)
    totals = {"points": 0, "kills": 0, "fsck_clean": 0, "fsck_unclean_only": 0, "ops": 0}
    failures = []
    fs, prev = None, None
    started = time.monotonic()
    try:
        for point in range(args.points):
            seed = master.getrandbits(32)
            if args.minutes and time.monotonic() - started > args.minutes * 60:
                print(f"time budget of {args.minutes} min reached after {point} points", flush=True)
                break
            mix = list(MIXES)[point % len(MIXES)] if args.mix == "all" else args.mix
            if fs is None or point % args.reformat_every == 0:
                if fs is not None:
                    fs.stop()
                    fs.assert_clean()
                    fs.cleanup()
                fs, prev = Pmfs(name="pmfs-campaign"), None
                fs.start()
            t0 = time.monotonic()
            try:
                verified, rc, prev = run_point(fs, point, seed, mix, prev)
            except (PointFailed, *HARNESS_ERRORS) as e:
                failures.append((point, seed, mix, str(e)))
                print(f"point {point:4d} {mix:8s} seed {seed:10d}: FAIL {str(e)[:3000]}", flush=True)
                if args.keep:
                    print(f"  kept: pool {fs.pool}, data {fs.data}, logs {fs.data_dir}; pmfsd stderr {fs.stderr_path}", flush=True)
                    if fs.proc is not None:
                        fs.kill9()
                    fs = None
                else:
                    fs.cleanup()
                    fs = None
                continue
            totals["points"] += 1
            totals["kills"] += 1
            totals["fsck_clean" if rc == 0 else "fsck_unclean_only"] += 1
            totals["ops"] += verified
            print(f"point {point:4d} {mix:8s} seed {seed:10d}: ok, fsck exit {rc}, {verified} ops verified "
                  f"({time.monotonic() - t0:.1f} s)", flush=True)
        if fs is not None:
            fs.stop()
            fs.assert_clean()
    except KeyboardInterrupt:
        print("interrupted: the summary covers the points done", flush=True)
    finally:
        if fs is not None:
            fs.cleanup()
    print(f"summary: {totals['points'] + len(failures)} points, {totals['kills'] + len(failures)} kills, {totals['points']} passed, "
          f"fsck clean {totals['fsck_clean']}, unclean-stop codes only {totals['fsck_unclean_only']}, "
          f"{totals['ops']} ops verified, {len(failures)} failures, {time.monotonic() - started:.0f} s", flush=True)
    for point, seed, mix, why in failures:
        print(f"  FAILED point {point} mix {mix} seed {seed} (campaign seed {args.seed}): {why.splitlines()[0][:300]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
