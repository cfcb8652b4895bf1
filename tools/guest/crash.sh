#!/usr/bin/env bash
# kill -9 crash campaign of pmfsd through a real guest. Each point, on the same
# pool: pmfsd serves a QEMU guest (vhost-user-fs) and the host mount; the guest
# runs the "crash" workload (fsynced journal appends, fdatasynced files,
# unlinks; a console marker after each call returned); once it has reported a
# random number of calls, pmfsd is killed with SIGKILL, then QEMU. fsck.pmfs
# -f -n may find only what an unclean stop leaves; pmfsd starts again (host
# mount only), must say it recovered, and every reported call must be there:
# each acknowledged journal record byte for byte, each reported file with its
# sum, each reported unlink gone. Then pmfsd stops cleanly and the next point
# begins.
# Usage: tools/guest/crash.sh [POINTS]   (default 2: the CI run; the manual
#        campaign: tools/guest/crash.sh 1000)
# Env: PMFS_BIN (as integrity.sh), PMFS_CRASH_SEED (the random kill points),
#      PMFS_CRASH_KEEP=1 keeps the work directory, and run.sh's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
script_name=crash
. "$here/host.sh"
find_bins
points=${1:-2}
[[ $points =~ ^[1-9][0-9]*$ ]] || { say "POINTS must be a positive number"; exit 2; }
[[ -e /dev/fuse && $(id -u) -eq 0 ]] || { say "needs root and /dev/fuse (pmfsd mounts on the host)"; exit 2; }
prepare_host
RANDOM=${PMFS_CRASH_SEED:-$$}
sock=$work/fs.sock
trap 'cleanup_host "${PMFS_CRASH_KEEP:-0}"' EXIT
trap 'exit 130' INT TERM

# reported POINT: how many calls the point's guest reported so far.
reported() { console_lines "$work/p$1.log" | grep -c '^PMFS-GUEST: \(ACK\|SUM\|GONE\) ' || true; }

# check_point POINT: every call the guest reported is there (on the host mount).
check_point() {
    console_lines "$work/p$1.log" | python3 "$here/crashpoint.py" "$mnt/p$1"
}

# fsck_after_kill: exit 0, or 4 with only what an unclean stop leaves.
fsck_after_kill() {
    local out rc=0
    out=$("$bin/fsck.pmfs" -f -n "$pool" 2>&1) || rc=$?
    PYTHONPATH="$root/tools/crash" python3 -c '
import sys
from crashcheck import fsck_problem
problem = fsck_problem(int(sys.argv[1]), sys.stdin.read())
if problem: print(problem, file=sys.stderr); sys.exit(1)' "$rc" <<< "$out" || die "fsck.pmfs -f -n after the kill (exit $rc)"
}

"$bin/mkfs.pmfs" --pool "$pool" --data "$work/data" --data-size 1G -q
start=$(date +%s)
total=0
for ((p = 0; p < points; p++)); do
    start_pmfsd --socket "$sock"
    rm -f "$work/qemu.pid"
    want=$((RANDOM % 20 + 3))
    PMFS_GUEST_LOG="$work/p$p.log" PMFS_GUEST_QEMU_ARGS="-pidfile $work/qemu.pid" \
        "$here/run.sh" "$sock" pmfs crash pmfs.dir="p$p" > "$work/p$p.out" 2>&1 &
    run_pid=$!
    guest_progress() {
        kill -0 "$run_pid" 2>/dev/null || { cat "$work/p$p.out" >&2; die "point $p: the guest ended by itself"; }
        [[ -f $work/p$p.log ]] && (( $(reported "$p") >= want ))
    }
    wait_for "point $p: $want calls reported by the guest" 300 guest_progress
    sleep "0.$((RANDOM % 10))"
    kill -9 "$pmfsd_pid"
    wait "$pmfsd_pid" 2>/dev/null || true
    pmfsd_pid=
    kill -9 "$(cat "$work/qemu.pid")" 2>/dev/null || true
    wait "$run_pid" 2>/dev/null || true
    rm -f "$work/qemu.pid"
    umount -l "$mnt" 2>/dev/null || true
    fsck_after_kill
    start_pmfsd
    tail -n 20 "$work/pmfsd.log" | grep -q 'recovered' || die "point $p: pmfsd did not say it recovered after the kill"
    summary=$(check_point "$p") || die "point $p: a call the guest saw return is not there"
    stop_pmfsd
    total=$((total + $(reported "$p")))
    say "point $p: killed after $(reported "$p") reported calls; $summary; ok"
done
say "ok: $points points, $total reported calls verified, in $(($(date +%s) - start)) s"
