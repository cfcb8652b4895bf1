#!/usr/bin/env bash
# Daemon-side benchmark: per-request latency of pmfsd and of Debian's virtiofsd
# through a vhost-user front end on the host (pmfs-bench-vhost: a real Unix
# socket, memfd guest memory, split rings, kick and call eventfds, as QEMU sets
# them up; no guest kernel, no TCG), both back ends serving at once on the same
# media and measured in turns (PMFS_BENCH_ROUNDS per workload, the order reversed
# every round), so that a disk whose speed drifts by the minute weighs on both:
#   ram   pmfsd: pool and data file on /dev/shm; virtiofsd: a tmpfs directory
#         (not durable: the issue's yardstick)
#   disk  pmfsd: pool on /dev/shm, data file (written once, --zero-data) on the
#         root disk; virtiofsd: a directory on the root disk's ext4
# The pool is emulated persistent memory (/dev/shm + PMEM_IS_PMEM_FORCE=1).
# Prints a Markdown table per media: p50 and p99 µs, ops/s, and pmfsd/virtiofsd.
# Usage: tools/bench/vhost.sh [ITERATIONS]   (default 2000)
# Env: PMFS_BENCH_MEDIA (default "ram disk"), PMFS_BENCH_DISK_DIR (default /var/tmp),
#      PMFS_BENCH_PMFSD_ARGS (more pmfsd arguments), PMFS_BENCH_WORKLOADS,
#      PMFS_BENCH_ROUNDS (default 10), PMFS_BIN (binaries; default: a release
#      build), PMFS_BENCH_SKIP_VIRTIOFSD=1.
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then sed -n '2,20s/^# \{0,1\}//p' "$0"; exit 0; fi
root=$(cd "$(dirname "$0")/../.." && pwd)
n=${1:-2000}
media_list=${PMFS_BENCH_MEDIA:-ram disk}
disk_parent=${PMFS_BENCH_DISK_DIR:-/var/tmp}
virtiofsd=${PMFS_VIRTIOFSD:-/usr/lib/qemu/virtiofsd}
workloads=${PMFS_BENCH_WORKLOADS:-getattr,lookup,create,unlink,write-fsync,write-fdatasync,fsync-1,fsync-N}
export PMEM_IS_PMEM_FORCE=1
if [[ -z ${PMFS_BIN:-} ]]; then
    command -v swift >/dev/null || export PATH="/opt/swift/usr/bin:$PATH"
    (cd "$root" && swift build -c release >/dev/null)
    PMFS_BIN=$root/.build/release
fi
[[ -x $virtiofsd || ${PMFS_BENCH_SKIP_VIRTIOFSD:-0} == 1 ]] || { echo "vhost.sh: $virtiofsd missing (apt-get install qemu-system-common)" >&2; exit 1; }

work=$(mktemp -d /dev/shm/pmfs-vbench.XXXXXX)
disk_work=$(mktemp -d "$disk_parent/pmfs-vbench.XXXXXX")
daemons=()
stop_daemons() {
    for pid in "${daemons[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${daemons[@]}"; do wait "$pid" 2>/dev/null || true; done
    daemons=()
    rm -f "$work"/*.sock
}
cleanup() {
    stop_daemons
    rm -rf "$work" "$disk_work"
}
trap cleanup EXIT

start_pmfsd() {   # media
    local data=$work/data.img
    [[ $1 == disk ]] && data=$disk_work/data.img
    rm -f "$work/pool" "$data"
    "$PMFS_BIN/mkfs.pmfs" --pool "$work/pool" --data "$data" --data-size 2G --zero-data --quiet
    # shellcheck disable=SC2086
    "$PMFS_BIN/pmfsd" --pool "$work/pool" --data "$data" --socket "$work/pmfsd.sock" ${PMFS_BENCH_PMFSD_ARGS:-} \
        2> "$work/pmfsd.log" &
    daemons+=($!)
}

start_virtiofsd() {   # media
    local dir=$work/tmpfs
    if [[ $1 == disk ]]; then dir=$disk_work/dir; fi
    rm -rf "$dir"; mkdir -p "$dir"
    "$virtiofsd" --socket-path="$work/virtiofsd.sock" -o source="$dir" -o cache=none 2> "$work/virtiofsd.log" &
    daemons+=($!)
}

# measure MEDIA: both back ends at once, in turns; output in $work/BACKEND-MEDIA.tsv
measure() {
    local args=(--socket "$work/pmfsd.sock" --label pmfsd)
    start_pmfsd "$1"
    if [[ ${PMFS_BENCH_SKIP_VIRTIOFSD:-0} != 1 ]]; then
        start_virtiofsd "$1"
        args+=(--socket "$work/virtiofsd.sock" --label virtiofsd)
    fi
    "$PMFS_BIN/pmfs-bench-vhost" "${args[@]}" --rounds "${PMFS_BENCH_ROUNDS:-10}" --iterations "$n" \
        --workloads "$workloads" > "$work/$1.tsv"
    stop_daemons
    if [[ ${PMFS_BENCH_SKIP_VIRTIOFSD:-0} == 1 ]]; then
        tail -n +2 "$work/$1.tsv" > "$work/pmfsd-$1.tsv"
        : > "$work/virtiofsd-$1.tsv"
        return
    fi
    for backend in pmfsd virtiofsd; do
        awk -F'\t' -v b="$backend" 'NR > 1 && $1 == b { sub(/^[^\t]*\t/, ""); print }' "$work/$1.tsv" > "$work/$backend-$1.tsv"
    done
}

report() {   # media
    echo
    echo "### $1 (pmfsd: pool on /dev/shm, emulated PM; $n requests per workload, in ${PMFS_BENCH_ROUNDS:-10} turns)"
    echo
    echo "| workload | pmfsd p50 µs | p99 | ops/s | virtiofsd p50 µs | p99 | ops/s | p50 ratio |"
    echo "|---|---|---|---|---|---|---|---|"
    join -t $'\t' <(sort "$work/pmfsd-$1.tsv") <(sort "$work/virtiofsd-$1.tsv" 2>/dev/null) -a 1 |
        awk -F'\t' '{ r = ($5 > 0) ? sprintf("%.2f", $2 / $5) : "-"; printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, r }'
}

for media in $media_list; do measure "$media"; done
for media in $media_list; do report "$media"; done
