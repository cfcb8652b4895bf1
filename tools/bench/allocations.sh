#!/usr/bin/env bash
# Heap allocations per request of a running pmfsd, through its real transports:
# malloc calls counted by a perf uprobe on libc's malloc in the pmfsd process,
# divided by the requests its metrics counted meanwhile. Two back ends:
#   vhost: pmfs-bench-vhost drives a guest socket (GETATTR, LOOKUP, READ,
#          WRITE, WRITE+FSYNC, FSYNC of one writer and of 8 in one kick);
#   mount: the host mount, FUSE io_uring and /dev/fuse (statx that must ask
#          the server: GETATTR; a 4 KiB pwrite + fsync loop: WRITE and FSYNC).
# Pool and data on /dev/shm (PMEM_IS_PMEM_FORCE=1). Root; needs perf (linux-perf).
# Usage: tools/bench/allocations.sh [SECONDS-PER-WORKLOAD (default 2)]
# Env:   PMFS_BIN (default .build/release)
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-2}
bin=${PMFS_BIN:-$PWD/.build/release}
command -v perf >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null; }
libc=$(ldconfig -p | awk '/libc.so.6 .*x86-64/ {print $NF; exit}')
perf probe -q -x "$libc" --add malloc 2>/dev/null || true
export PMEM_IS_PMEM_FORCE=1
work=$(mktemp -d /dev/shm/pmfs-allocs.XXXX)
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    mountpoint -q "$work/mnt" 2>/dev/null && umount -l "$work/mnt"
    rm -rf "$work"
}
trap cleanup EXIT
port=9471
requests() { curl -s "127.0.0.1:$port/metrics" | awk '/^pmfs_fuse_requests_total/ {s += $2} END {print s + 0}'; }
# count LABEL COMMAND...: the command runs once to warm up, then again under perf.
count() {
    local label=$1; shift
    "$@" >/dev/null
    local before; before=$(requests)
    perf stat -x, -e probe_libc:malloc -p "$pid" -o "$work/stat" -- "$@" >/dev/null
    local after; after=$(requests)
    local mallocs; mallocs=$(awk -F, '/malloc/ {print $1}' "$work/stat")
    awk -v l="$label" -v m="$mallocs" -v r=$((after - before)) \
        'BEGIN { printf "| %s | %d | %d | %.3f |\n", l, r, m, (r > 0 ? m / r : 0) }'
}
start() {   # start ARGS...: a fresh file system served by pmfsd with metrics
    rm -rf "$work/fs"; mkdir -p "$work/fs"
    "$bin/mkfs.pmfs" --pool "$work/fs/pool" --data "$work/fs/data" --data-size 1G --zero-data --quiet --force
    "$bin/pmfsd" --pool "$work/fs/pool" --data "$work/fs/data" --metrics "127.0.0.1:$port" "$@" 2>"$work/fs/log" &
    pid=$!
    for _ in $(seq 100); do curl -s "127.0.0.1:$port/metrics" >/dev/null 2>&1 && break; sleep 0.1; done
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }

echo "| transport, workload | requests | mallocs | per request |"
echo "|---|---:|---:|---:|"
start --socket "$work/sock"
for _ in $(seq 100); do [ -S "$work/sock" ] && break; sleep 0.1; done
for w in getattr lookup read write write-fsync fsync-1 fsync-N; do
    # Enough iterations for the whole count window; --warmup readies the file.
    count "vhost, $w" timeout $((secs + 1)) "$bin/pmfs-bench-vhost" --socket "$work/sock" --iterations 100000000 --workloads "$w" || true
done
stop
cat > "$work/loop.py" <<'EOF'
import ctypes, os, sys, time
path, what, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
end = time.monotonic() + seconds
if what == "statx":   # AT_STATX_FORCE_SYNC: the kernel asks the server every time
    libc, buf = ctypes.CDLL(None), ctypes.create_string_buffer(256)
    while time.monotonic() < end: libc.statx(-100, path.encode(), 0x2000, 0x7ff, buf)
else:
    fd, block = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644), os.urandom(4096)
    while time.monotonic() < end: os.pwrite(fd, block, 0); os.fsync(fd)
EOF
mkdir -p "$work/mnt"
for t in uring device; do
    start --mount "$work/mnt" --fuse-transport "$t"
    for _ in $(seq 100); do mountpoint -q "$work/mnt" && break; sleep 0.1; done
    touch "$work/mnt/f"
    count "host $t, GETATTR (statx)" python3 "$work/loop.py" "$work/mnt/f" statx "$secs"
    count "host $t, WRITE + FSYNC" python3 "$work/loop.py" "$work/mnt/g" fsync "$secs"
    stop
    umount -l "$work/mnt" 2>/dev/null || true
done
echo
echo "pmfsd $bin; pool and data on /dev/shm (PMEM_IS_PMEM_FORCE=1); mallocs by a uprobe on $libc, requests from pmfsd's metrics (on)"
