#!/usr/bin/env bash
# Guest benchmark: the same in-guest workloads (tools/guest/workloads/bench.sh)
# against Debian's virtiofsd (cache=auto, xattr on) and against pmfsd, in one run,
# on the same media:
#   disk  virtiofsd shares a directory on the root disk (PMFS_BENCH_DISK_DIR);
#         pmfsd's data file is in the same directory; its pool is on /dev/shm
#         (PMEM_IS_PMEM_FORCE=1: persistent memory is emulated).
#   ram   virtiofsd shares a fresh ext4 on a loop device backed by a file in
#         /dev/shm; pmfsd's pool and data file are on /dev/shm.
# Workloads: create/stat/unlink ops/s, 4 KiB write+fsync p50/p99, SQLite INSERTs/s
# (synchronous=FULL; WAL and DELETE journal), 1 MiB sequential write (+fsync) and
# read (guest cache dropped) MiB/s, stat latency while another process fsyncs. The back ends alternate, a fresh one per guest
# (virtiofsd, pmfsd, virtiofsd, pmfsd, ...); each figure is the median over the
# rounds, (min–max) beside it. Prints a Markdown table per media with the ratio
# pmfsd/virtiofsd. Under TCG emulation absolute figures mean little: compare columns.
# Usage: tools/bench/guest.sh [N]   (N: operations per metadata/4 KiB kind and
#                                    SQLite INSERTs; default 1000)
# Env: PMFS_BENCH_ROUNDS    guests per back end and media (default 3)
#      PMFS_BENCH_MEDIA     which media, in order (default "disk ram")
#      PMFS_BENCH_SEQ_MIB   sequential file size, MiB (default 256)
#      PMFS_BENCH_SQLITE_N  SQLite INSERTs (default N)
#      PMFS_BENCH_DISK_DIR  directory on the root disk (default /var/tmp)
#      PMFS_BENCH_TESTS     workloads, comma-separated (default: all but the par2_ ones)
#      PMFS_BENCH_QUEUES    N > 1: also run pmfsd with N request queues (a column of its
#                           own); with a 6.10+ guest kernel and N vCPUs, e.g.
#                           PMFS_GUEST_DIR=.guest-backports PMFS_GUEST_SMP=2 PMFS_BENCH_QUEUES=2
#                           PMFS_BENCH_TESTS=par2_write_fsync_4k,par2_create_close
#                           (build that guest with PMFS_GUEST_KERNEL_SUITE=bookworm-backports)
#      PMFS_BENCH_LOGS      keep each guest's markers, back-end log, all figures
#                           (results.tsv) and the report in this directory
#      PMFS_BIN             use the pmfsd and mkfs.pmfs in this directory (skips swift build)
#      PMFS_BENCH_PMFSD_ARGS more pmfsd arguments (e.g. --poll-microseconds 50)
#      PMFS_GUEST_MKFS_ARGS more mkfs.pmfs arguments for every pmfsd (tools/guest/pmfsd.sh),
#                           e.g. --zero-data (the data file written once, as a host would)
#      PMFS_GUEST_*         see tools/guest/run.sh (timeout, memory, guest directory, ...)
# Needs root (virtiofsd, losetup, mount). Takes about 5 minutes with the defaults.
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then sed -n '2,30s/^# \{0,1\}//p' "$0"; exit 0; fi
root=$(cd "$(dirname "$0")/../.." && pwd)
guest=$root/tools/guest
n=${1:-1000}
rounds=${PMFS_BENCH_ROUNDS:-3}
media_list=${PMFS_BENCH_MEDIA:-disk ram}
seq_mib=${PMFS_BENCH_SEQ_MIB:-256}
sqlite_n=${PMFS_BENCH_SQLITE_N:-$n}
disk_parent=${PMFS_BENCH_DISK_DIR:-/var/tmp}
tests=${PMFS_BENCH_TESTS:-create_close,stat,unlink,write_fsync_4k,sqlite_wal,sqlite_delete,seq_write_1m,seq_read_1m,stat_during_fsync}
queues=${PMFS_BENCH_QUEUES:-1}
backends="virtiofsd pmfsd"
(( queues > 1 )) && backends="$backends pmfsd-q$queues"
say() { echo "bench/guest: $*" >&2; }

[[ $(id -u) -eq 0 ]] || { say "needs root (virtiofsd, losetup, mount)"; exit 2; }
[[ $queues =~ ^[1-9][0-9]*$ ]] || { say "PMFS_BENCH_QUEUES must be a positive integer"; exit 2; }
[[ $n =~ ^[1-9][0-9]*$ && $rounds =~ ^[1-9][0-9]*$ && $seq_mib =~ ^[1-9][0-9]*$ && $sqlite_n =~ ^[1-9][0-9]*$ ]] ||
    { say "N, PMFS_BENCH_ROUNDS, PMFS_BENCH_SEQ_MIB and PMFS_BENCH_SQLITE_N must be positive integers"; exit 2; }
for m in $media_list; do [[ $m == disk || $m == ram ]] || { say "unknown media $m (disk, ram)"; exit 2; }; done
for c in losetup mkfs.ext4 mount umount mountpoint findmnt; do
    command -v "$c" >/dev/null || { say "missing $c"; exit 2; }
done

if [[ -z ${PMFS_BIN:-} ]]; then
    command -v swift >/dev/null || export PATH="/opt/swift/usr/bin:$PATH"
    (cd "$root" && swift build -c release --product pmfsd >/dev/null && swift build -c release --product mkfs.pmfs >/dev/null)
    export PMFS_BIN=$root/.build/release
fi
[[ -x $PMFS_BIN/pmfsd && -x $PMFS_BIN/mkfs.pmfs ]] || { say "no pmfsd/mkfs.pmfs in $PMFS_BIN"; exit 2; }
export PMFS_BIN
"$guest/build.sh" >/dev/null 2>&1 || "$guest/build.sh"   # quiet unless it fails (then again, visibly)

# Both back ends get the same room: pmfsd's data file and the loop device's ext4.
space_mib=$(( seq_mib + 1024 > 2048 ? seq_mib + 1024 : 2048 ))
export PMFS_GUEST_DATA_SIZE=${space_mib}M

work=$(mktemp -d /tmp/pmfs-bench-guest.XXXXXX)        # sockets, logs, results, mount point
ram=$(mktemp -d /dev/shm/pmfs-bench-guest.XXXXXX)     # pools, ram-media data file and loop image
disk=                                                 # disk-media shares and data files
mnt=$work/mnt loopdev= bepid= runpid=

# stop_backend [pmfsd|virtiofsd]: virtiofsd exits after its guest (give it 10 s);
# pmfsd waits for the next guest: SIGTERM, then up to 60 s to write back and stop.
stop_backend() {
    [[ -n $bepid ]] || return 0
    local i
    if [[ ${1:-} == virtiofsd ]]; then
        for i in $(seq 1 100); do kill -0 "$bepid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$bepid" 2>/dev/null && say "virtiofsd $bepid still running after its guest; stopping it"
    fi
    kill "$bepid" 2>/dev/null || true
    for i in $(seq 1 600); do kill -0 "$bepid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$bepid" 2>/dev/null; then
        say "back end $bepid did not stop on SIGTERM within 60 s; killing it"
        kill -9 "$bepid" 2>/dev/null || true
    fi
    bepid=
}
teardown_loop() {
    if mountpoint -q "$mnt" 2>/dev/null; then
        umount "$mnt" 2>/dev/null || { sleep 1; umount "$mnt" 2>/dev/null; } || umount -l "$mnt" ||
            say "could not unmount $mnt"
    fi
    if [[ -n $loopdev ]]; then
        losetup -d "$loopdev" 2>/dev/null || say "could not detach $loopdev"
        loopdev=
    fi
    rm -f "$ram/ext4.img"
}
cleanup() {
    set +e
    if [[ -n $runpid ]] && kill -0 "$runpid" 2>/dev/null; then
        # run.sh's child is timeout(1), in a process group of its own: it passes SIGTERM on to QEMU.
        for c in $(pgrep -P "$runpid"); do kill "$c" 2>/dev/null; done
        kill "$runpid" 2>/dev/null
        wait "$runpid" 2>/dev/null
    fi
    stop_backend
    teardown_loop
    [[ -n $disk ]] && rm -rf "$disk"
    rm -rf "$ram"
    mountpoint -q "$mnt" 2>/dev/null || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

setup_loop() {
    truncate -s "${space_mib}M" "$ram/ext4.img"
    loopdev=$(losetup -f --show "$ram/ext4.img")
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$loopdev"
    mkdir -p "$mnt"
    mount "$loopdev" "$mnt"
}

# run_one MEDIA ROUND BACKEND: one fresh back end, one guest; its BENCH lines go to results.
run_one() {
    local media=$1 r=$2 be=$3 share sock out datadir t0 q=1
    [[ $be == pmfsd-q* ]] && q=${be#pmfsd-q}
    if [[ $media == disk ]]; then share=$disk/share-$r-$be datadir=$disk
    else share=$mnt/share-$r-$be datadir=$ram; fi
    sock=$work/$media-$r-$be.sock out=$work/$media-$r-$be.out
    mkdir -p "$share"
    sync   # start each guest with nothing left to write back on the host
    if [[ $be == pmfsd* ]]; then
        bepid=$(PMFS_GUEST_QUEUES=$q PMFS_GUEST_POOL_DIR=$ram PMFS_GUEST_DATA_DIR=$datadir "$guest/pmfsd.sh" "$share" "$sock" ${PMFS_BENCH_PMFSD_ARGS:-})
    else
        bepid=$("$guest/virtiofsd.sh" "$share" "$sock")
    fi
    t0=$SECONDS
    # In the background, so that a signal reaches our trap at once (not after the guest).
    PMFS_GUEST_QUEUES=$q "$guest/run.sh" "$sock" pmfs bench "pmfs.n=$n" "pmfs.sqlite_n=$sqlite_n" "pmfs.seq_mib=$seq_mib" \
        "pmfs.tests=$tests" "pmfs.test_timeout=${PMFS_GUEST_TIMEOUT:-600}" >"$out" 2>"$out.err" &
    runpid=$!
    local rc=0
    wait "$runpid" || rc=$?
    runpid=
    if (( rc != 0 )); then
        cat "$out" "$out.err" >&2
        echo "----- back end log (last 20 lines) -----" >&2
        tail -n 20 "$sock.log" >&2 || true
        say "$media round $r, $be: the guest failed"
        exit 1
    fi
    stop_backend "$be"
    # pmfsd.sh removes its pool and data file a moment after pmfsd exits; do it now,
    # so that no deletion is left for the next guest's time.
    rm -f "$datadir/pmfs-guest-$media-$r-$be-"*.data "$ram/pmfs-guest-$media-$r-$be-"*.pool
    if [[ -n $(find "$share" -mindepth 1 -print -quit) ]]; then say "$media/$be: the share is not empty afterwards"; exit 1; fi
    rmdir "$share"
    if [[ -n ${PMFS_BENCH_LOGS:-} ]]; then
        mkdir -p "$PMFS_BENCH_LOGS"
        cp "$out" "$PMFS_BENCH_LOGS/$media-$r-$be.markers"
        cp "$sock.log" "$PMFS_BENCH_LOGS/$media-$r-$be.backend.log" 2>/dev/null || true
    fi
    # "PMFS-GUEST: BENCH kind median_us n=N key=value ..." -> media backend round kind key value
    tr -d '\r' <"$out" | awk -v m="$media" -v b="$be" -v r="$r" '
        $1 == "PMFS-GUEST:" && $2 == "BENCH" {
            for (i = 5; i <= NF; i++) { split($i, kv, "="); printf "%s\t%s\t%s\t%s\t%s\t%s\n", m, b, r, $3, kv[1], kv[2] }
        }' >>"$work/results.tsv"
    say "$media round $r/$rounds, $be: $((SECONDS - t0)) s"
}

# Rows: kind, BENCH key, which is better, label.
metrics='create_close	ops_s	higher	create+close (ops/s)
stat	ops_s	higher	stat, cold guest cache (ops/s)
unlink	ops_s	higher	unlink, cold guest cache (ops/s)
write_fsync_4k	p50	lower	4 KiB write+fsync p50 (µs)
write_fsync_4k	p99	lower	4 KiB write+fsync p99 (µs)
sqlite_wal	ops_s	higher	SQLite INSERT, WAL, synchronous=FULL (inserts/s)
sqlite_delete	ops_s	higher	SQLite INSERT, DELETE journal, synchronous=FULL (inserts/s)
seq_write_1m	mib_s	higher	1 MiB sequential write + fsync (MiB/s)
seq_read_1m	mib_s	higher	1 MiB sequential read, guest cache dropped (MiB/s)
stat_during_fsync	p50	lower	stat p50 while another process writes+fsyncs (µs)
par2_write_fsync_4k	ops_s	higher	2 processes (vCPU 0, 1) 4 KiB write+fsync (sum, ops/s)
par2_write_fsync_4k	p50	lower	2 processes (vCPU 0, 1) 4 KiB write+fsync p50 (µs)
par2_create_close	ops_s	higher	2 processes (vCPU 0, 1) create+close (sum, ops/s)'

fmt() { awk -v v="$1" 'BEGIN { if (v >= 100) printf "%.0f", v; else if (v >= 10) printf "%.1f", v; else printf "%.2f", v }'; }

# cell MEDIA BACKEND KIND KEY: "median (min–max)"; sets med, lo, hi.
cell() {
    local vals
    vals=$(awk -F'\t' -v m="$1" -v b="$2" -v k="$3" -v f="$4" '$1 == m && $2 == b && $4 == k && $5 == f { print $6 }' \
        "$work/results.tsv" | sort -g)
    [[ -n $vals ]] || { med= lo= hi=; echo "–"; return; }
    med=$(echo "$vals" | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }')
    lo=$(echo "$vals" | head -n 1) hi=$(echo "$vals" | tail -n 1)
    if (( rounds > 1 )); then echo "$(fmt "$med") ($(fmt "$lo")–$(fmt "$hi"))"; else fmt "$med"; fi
}

table() {
    local media=$1 kind key better label vc pc vmed vlo vhi qc= qcol=
    if (( queues > 1 )); then
        echo "| workload | better | virtiofsd | pmfsd | pmfsd, $queues queues | $queues queues / 1 | pmfsd/virtiofsd | pmfsd is |"
        echo "|---|---|---:|---:|---:|---:|---:|---|"
    else
        echo "| workload | better | virtiofsd | pmfsd | pmfsd/virtiofsd | pmfsd is |"
        echo "|---|---|---:|---:|---:|---|"
    fi
    while IFS=$'\t' read -r kind key better label; do
        grep -q "$kind" <<<"$tests" || continue
        if (( queues > 1 )); then
            cell "$media" "pmfsd-q$queues" "$kind" "$key" >"$work/cell"; qc=$(<"$work/cell"); local qmed=$med
        fi
        cell "$media" virtiofsd "$kind" "$key" >"$work/cell"; vc=$(<"$work/cell"); vmed=$med vlo=$lo vhi=$hi
        cell "$media" pmfsd "$kind" "$key" >"$work/cell"; pc=$(<"$work/cell")
        if (( queues > 1 )); then
            qcol="$qc | $(awk -v q="${qmed:-0}" -v p="${med:-0}" 'BEGIN { if (p > 0 && q > 0) printf "%.2f", q / p; else printf "–" }') | "
        fi
        if [[ -z $vmed || -z $med ]]; then
            echo "| $label | $better | $vc | $pc | $qcol– | not measured |"
            continue
        fi
        awk -v l="$label" -v b="$better" -v vc="$vc" -v pc="$pc" -v v="$vmed" -v p="$med" \
            -v vlo="$vlo" -v vhi="$vhi" -v plo="$lo" -v phi="$hi" -v rounds="$rounds" -v qcol="$qcol" 'BEGIN {
            ratio = (v > 0) ? p / v : 0
            f = (b == "higher") ? ratio : ((p > 0) ? v / p : 0)
            if (f >= 1.005) verdict = sprintf("%.2f× better", f)
            else if (f > 0 && f <= 0.995) verdict = sprintf("%.2f× worse", 1 / f)
            else verdict = "the same"
            if (rounds > 1 && plo <= vhi && vlo <= phi) verdict = verdict ", ranges overlap"
            printf "| %s | %s | %s | %s | %s%.2f | %s |\n", l, b, vc, pc, qcol, ratio, verdict
        }'
    done <<<"$metrics"
}

describe() {
    case $1 in
        disk) echo "disk: virtiofsd shares $disk ($(findmnt -T "$disk" -no FSTYPE,SOURCE | tr -s ' ' ' ')); pmfsd's data file there too, pool on /dev/shm" ;;
        ram) echo "ram: virtiofsd shares ext4 on $loopdev (a ${space_mib} MiB file in /dev/shm); pmfsd's pool and data file on /dev/shm" ;;
    esac
}

start=$SECONDS
load_before=$(uptime)
say "load before: $load_before"
say "$rounds round(s) per back end on: $media_list; n=$n, sqlite_n=$sqlite_n, seq ${seq_mib} MiB"
: >"$work/results.tsv"
report=$work/report.md
{
    echo "# Guest benchmark: pmfsd vs virtiofsd"
    echo
    echo "pmfsd from $PMFS_BIN (built $(date -u -r "$PMFS_BIN/pmfsd" '+%Y-%m-%d %H:%M UTC'); tree at $(git -C "$root" describe --always --dirty 2>/dev/null || echo '?')), virtiofsd $(/usr/lib/qemu/virtiofsd -V 2>/dev/null | head -n 1 || echo '?');" \
         "$(nproc) CPUs; $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "n=$n (create/stat/unlink, 4 KiB write+fsync), $sqlite_n SQLite INSERTs, ${seq_mib} MiB sequential;" \
         "$rounds round(s) per back end, alternating; each cell: median over rounds (min–max)."
    echo "mkfs.pmfs --data-size ${space_mib}M${PMFS_GUEST_MKFS_ARGS:+ $PMFS_GUEST_MKFS_ARGS}; virtiofsd -o cache=auto -o xattr."
    echo
} >"$report"
for media in $media_list; do
    if [[ $media == disk ]]; then
        disk=$(mktemp -d "$disk_parent/pmfs-bench-guest.XXXXXX")
        [[ $(findmnt -T "$disk" -no FSTYPE) != tmpfs ]] || say "warning: $disk is on tmpfs, not a disk"
    else
        setup_loop
    fi
    desc=$(describe "$media")
    for r in $(seq 1 "$rounds"); do
        for be in $backends; do run_one "$media" "$r" "$be"; done
    done
    { echo "## $desc"; echo; table "$media"; echo; } >>"$report"
    if [[ $media == disk ]]; then rm -rf "$disk"; disk=; else teardown_loop; fi
done
load_after=$(uptime)
say "load after: $load_after"
{
    echo "Load before: $load_before"
    echo "Load after:  $load_after"
    echo
    echo "TCG guest (kernel $(cat "${PMFS_GUEST_DIR:-$root/.guest}/kernel/version" 2>/dev/null || echo '?'), ${PMFS_GUEST_SMP:-1} vCPU(s)); latencies and rates on the guest's clock. The sequential read"
    echo "follows a guest drop_caches; the host's page cache is warm for both back ends."
    echo "Run time: $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s."
} >>"$report"
if [[ -n ${PMFS_BENCH_LOGS:-} ]]; then cp "$work/results.tsv" "$report" "$PMFS_BENCH_LOGS/"; fi
cat "$report"
