#!/usr/bin/env bash
# Data-integrity run: one pmfs file system, served by pmfsd to QEMU guests (its
# vhost-user socket) and to the host (its FUSE mount) at once, through restarts,
# guest reboots and a QEMU killed with SIGKILL:
# pmfsd listens on two sockets, two VMs' worth (the second VM's device asks for
# one request queue more than pmfsd offers, which pmfsd must serve anyway):
#   A  guest "integrity" writes ~40 random files (large, odd-sized, sparse,
#      overwritten, renamed, hard-linked, nested) and an SQLite database, fsyncs
#      them and prints each file's sha256;
#      while a second VM runs "smoke" on the other socket at the same time;
#      the host checks every sum (and the database) through its mount; pmfsd is
#      stopped with SIGTERM and must exit 0; fsck.pmfs -n -f must find the pool
#      clean; pmfsd starts again and the host checks again;
#   B  guest "verify", on the second socket (another VM than A), checks the sums (a manifest the host writes into the share)
#      and the database, sees the POSIX lock and flock the host holds through its
#      mount, and writes more files (the host checks them);
#   C  guest "churn", on the same pmfsd (a new guest after a clean exit): holds a
#      POSIX lock and a flock the host must see, writes and fsyncs files until
#      QEMU is killed with SIGKILL. pmfsd must keep running, drop the dead guest's
#      locks and keep every file whose fsync the guest reported;
#   D  guest "verify" again (a new guest after the kill): everything checks;
#   then pmfsd is stopped (fsck), started with the mount only, the host checks
#   everything a last time, and it is stopped (fsck) again.
# Usage: tools/guest/integrity.sh
# Env: PMFS_GUEST_QUEUES     request queues for the device and pmfsd (default 1)
#      PMFS_BIN              directory with pmfsd, mkfs.pmfs, fsck.pmfs (default:
#                            .build/release if it has all three, else .build/debug)
#      PMFS_INTEGRITY_KEEP   1: keep the work directory (logs, data file) at the end
#      and those of run.sh (PMFS_GUEST_TIMEOUT, PMFS_GUEST_VERBOSE, ...)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
queues=${PMFS_GUEST_QUEUES:-1}
script_name=integrity
. "$here/host.sh"
find_bins
command -v sqlite3 >/dev/null || { say "no sqlite3 on the host (tools/setup.sh installs it)"; exit 2; }
[[ -e /dev/fuse && $(id -u) -eq 0 ]] || { say "needs root and /dev/fuse (pmfsd mounts on the host)"; exit 2; }

prepare_host
gt=${PMFS_GUEST_DIR:-$root/.guest}/gt     # static, runs on the host too
sock=$work/fs.sock
sock2=$work/fs2.sock            # a second VM's socket
dir=integrity                   # the workloads' pmfs.dir
files=$mnt/$dir/files
manifest=$work/manifest         # "sha256  path" under files/, everything that must be there

# The host's lock holders (fds 7 and 8) go first: pmfsd then stops without waiting for them.
cleanup() { local rc=$?; exec 7>&- 8>&-; (exit $rc); cleanup_host "${PMFS_INTEGRITY_KEEP:-0}"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

fsck() {
    local out rc=0
    out=$("$bin/fsck.pmfs" -n -f "$pool" 2>&1) || rc=$?
    (( rc == 0 )) || die "fsck.pmfs -n -f: exit status $rc: $out"
    say "fsck: $out"
}

# guest NAME WORKLOAD [KERNEL-ARGS...]: one guest to the end; its console log is
# $work/NAME.log. Env SOCK picks the socket (default $sock).
guest() {
    local name=$1; shift
    if ! PMFS_GUEST_QUEUES=$queues PMFS_GUEST_LOG="$work/$name.log" \
            "$here/run.sh" "${SOCK:-$sock}" pmfs "$@" pmfs.dir="$dir" > "$work/$name.out" 2>&1; then
        cat "$work/$name.out" >&2
        die "guest $name ($1) failed"
    fi
    grep '^guest/run: .*: ok' "$work/$name.out" >&2
}

# console NAME: the guest's complete console lines so far (a line still being
# written when QEMU was killed does not count).
console() { console_lines "$work/$1.log"; }
# sums NAME: the "sha256  path" lines of the guest's SUM markers.
sums() { console "$1" | sed -n 's/^PMFS-GUEST: SUM \([0-9a-f]\{64\}\) \(.*\)$/\1  \2/p'; }

# verify_host WHEN: every file of the manifest, no other file, and the database,
# through the host mount.
verify_host() {
    local out
    [[ -d $files ]] || die "$1: no $files"
    out=$(cd "$files" && sha256sum --quiet --strict -c "$manifest" 2>&1) ||
        die "$1: sha256 mismatch through the host mount: $(head -n 5 <<< "$out")"
    diff <(sed 's/^[0-9a-f]\{64\}  //' "$manifest" | LC_ALL=C sort) \
         <(cd "$files" && find . -type f | sed 's|^\./||' | LC_ALL=C sort) > "$work/files.diff" ||
        die "$1: the files under $files differ from the manifest (< missing, > extra): $(grep '^[<>]' "$work/files.diff" | head -n 5)"
    out=$(sqlite3 -readonly "$mnt/$dir/db.sqlite" 'PRAGMA integrity_check;' \
          "SELECT 'count=' || count(*) || ' sum=' || sum(k) || ' u=' || sum(v LIKE 'u%') FROM t;" \
          "SELECT 'boots=' || coalesce(group_concat(name, ','), '') FROM (SELECT name FROM boots ORDER BY rowid);" 2>&1) ||
        die "$1: sqlite3 on the host: $out"
    [[ $out == "ok"$'\n'"$sqlite_contents"$'\n'"boots=$boots" ]] ||
        die "$1: the database through the host mount: got '${out//$'\n'/; }', want ok; $sqlite_contents; boots=$boots"
    say "$1: $(wc -l < "$manifest") files and the database check out through the host mount"
}

# host_hold NAME FD FILE KIND [START LEN]: a host process holding a lock through
# the host mount (gt lock), until file descriptor FD is closed.
host_hold() {
    local name=$1 fd=$2; shift 2
    mkfifo "$work/$name.ctl"
    "$gt" lock "$@" < "$work/$name.ctl" > "$work/$name.out" 2>&1 &
    eval "exec $fd>\"\$work/\$name.ctl\""
    for _ in $(seq 1 100); do grep -q '^locked' "$work/$name.out" && return 0; sleep 0.1; done
    die "the host could not take its lock ($*): $(cat "$work/$name.out")"
}
# host_try FILE KIND [START LEN]: free or busy, for a new host process.
host_try() {
    local out
    if out=$("$gt" lock "$@" < /dev/null); then echo free
    elif [[ $out == busy ]]; then echo busy
    else echo "error: $out"; fi
}
host_free() { [[ $(host_try "$@") == free ]]; }
host_unlocked() { [[ $("$gt" getlk "$1" w 0 0) == unlocked ]]; }
# wait_for WHAT SECONDS COMMAND...: poll until the command succeeds.

start=$(date +%s)
say "work directory $work, $queues request queue(s), binaries in $bin"
"$bin/mkfs.pmfs" --pool "$pool" --data "$work/data" --data-size 2G -q
start_pmfsd --socket "$sock" --socket "$sock2" --queues "$queues"

# A: write, then check through the host mount, across a clean restart; a
# second VM works on the same file system meanwhile.
PMFS_GUEST_QUEUES=$((queues + 1)) PMFS_GUEST_LOG="$work/A2.log" \
    "$here/run.sh" "$sock2" pmfs smoke > "$work/A2.out" 2>&1 &
second_vm=$!
guest A integrity
wait "$second_vm" || { cat "$work/A2.out" >&2; die "the second VM (smoke, $((queues + 1)) queues on pmfsd's $queues) failed"; }
grep '^guest/run: .*: ok' "$work/A2.out" >&2
sums A > "$manifest"
n=$(wc -l < "$manifest")
want=$(console A | sed -n 's/^PMFS-GUEST: FILES //p')
[[ -n $want && $n == "$want" ]] || die "guest A printed $n SUM lines, FILES '${want}'"
sqlite_contents=$(console A | sed -n 's/^PMFS-GUEST: SQLITE //p')
boots=           # the verify guests so far, as their transactions recorded them
[[ -n $sqlite_contents ]] || die "guest A printed no SQLITE line"
verify_host "after guest A"
stop_pmfsd
fsck
start_pmfsd --socket "$sock" --socket "$sock2" --queues "$queues"
verify_host "after a restart"

# B: a new guest checks it all against the host's manifest and sees the host's locks.
cp "$manifest" "$mnt/$dir/MANIFEST.sha256"
mkdir -p "$mnt/$dir/locks"
: > "$mnt/$dir/locks/hostlock"
host_hold hold-posix 7 "$mnt/$dir/locks/hostlock" w 0 100
host_hold hold-flock 8 "$mnt/$dir/locks/hostlock" ex
SOCK=$sock2 guest B verify pmfs.boot=B pmfs.hostlock=1
console B | grep -q '^PMFS-GUEST: PASS host_locks' || die "guest B did not check the host's locks"
[[ $(host_try "$mnt/$dir/locks/hostlock" w 0 1) == busy ]] || die "the host's POSIX lock is gone after guest B"
exec 7>&- 8>&-
wait_for "the host's locks released" 10 host_free "$mnt/$dir/locks/hostlock" ex
sums B >> "$manifest"
boots=B
verify_host "after guest B"

# C: the same pmfsd serves a new guest; QEMU is killed in the middle of its writes.
disconnects=$(grep -c 'front end disconnected' "$work/pmfsd.log" || true)
rm -f "$work/qemu.pid"
PMFS_GUEST_QUEUES=$queues PMFS_GUEST_LOG="$work/C.log" PMFS_GUEST_QEMU_ARGS="-pidfile $work/qemu.pid" \
    "$here/run.sh" "$sock" pmfs churn pmfs.dir="$dir" > "$work/C.out" 2>&1 &
run_pid=$!
guest_running() { kill -0 "$run_pid" 2>/dev/null || { cat "$work/C.out" >&2; die "guest C ended by itself"; }; }
c_locked() { guest_running; [[ -f $work/C.log ]] && console C | grep -q '^PMFS-GUEST: LOCKED'; }
wait_for "guest C's locks" 120 c_locked
lock=$mnt/$dir/locks/guestlock
got=$("$gt" getlk "$lock" w 0 0)
[[ $got == "w 0 0 pid "* ]] || die "F_GETLK on the host: got '$got', want guest C's write lock"
[[ $(host_try "$lock" w 10 10) == busy ]] || die "the host got a POSIX lock guest C holds"
[[ $(host_try "$lock" ex) == busy ]] || die "the host got a flock guest C holds"
c_wrote() { guest_running; (( $(sums C | wc -l) >= 5 )); }
wait_for "guest C's first 5 files" 180 c_wrote
kill -9 "$(cat "$work/qemu.pid")"
wait "$run_pid" || true
rm -f "$work/qemu.pid"
console C | grep -q '^PMFS-GUEST: RESULT' && die "guest C finished before it was killed"
kill -0 "$pmfsd_pid" 2>/dev/null || die "pmfsd exited after QEMU was killed"
c_gone() { (( $(grep -c 'front end disconnected' "$work/pmfsd.log" || true) > disconnects )); }
wait_for "pmfsd noticing the killed QEMU" 10 c_gone
wait_for "guest C's POSIX lock dropped" 10 host_unlocked "$lock"
wait_for "guest C's flock dropped" 10 host_free "$lock" ex
sums C >> "$manifest"
say "guest C killed after $(sums C | wc -l) fsynced files"
# What C was writing when it died may be anything: only the reported files count.
comm -13 <(sed -n 's/^[0-9a-f]\{64\}  \(churn\/.*\)/\1/p' "$manifest" | LC_ALL=C sort) \
         <(cd "$files" && find churn -type f | LC_ALL=C sort) > "$work/unreported"
while read -r f; do say "removing $f (in flight when QEMU died, $(stat -c %s "$files/$f") bytes)"; rm -f "$files/$f"; done < "$work/unreported"
verify_host "after QEMU was killed"

# D: a new guest after the killed one.
cp "$manifest" "$mnt/$dir/MANIFEST.sha256"
guest D verify pmfs.boot=D
sums D >> "$manifest"
boots=B,D
verify_host "after guest D"

# Last: a clean stop, fsck, and the host mount alone.
stop_pmfsd
fsck
start_pmfsd
verify_host "after the last restart"
stop_pmfsd
fsck
say "ok: $(wc -l < "$manifest") files through 4 guests (one killed) and 3 pmfsd starts in $(($(date +%s) - start)) s"
