#!/usr/bin/env bash
# Starts pmfsd as the guest's vhost-user-fs back end: a fresh file system (pool
# on /dev/shm with PMEM_IS_PMEM_FORCE=1, data file beside DIR), served on
# SOCKET. Prints pmfsd's PID once the socket listens; the pool is removed when
# pmfsd exits. DIR itself stays empty (pmfs keeps nothing in a host directory).
# Usage: tools/guest/pmfsd.sh DIR SOCKET [PMFSD-ARGS...]   (for check.sh: PMFS_GUEST_BACKEND)
# Env:   PMFS_BIN              directory with pmfsd and mkfs.pmfs (default .build/release, debug)
#        PMFS_GUEST_POOL_DIR   where the pool goes (default /dev/shm)
#        PMFS_GUEST_DATA_DIR   where the data file goes (default: DIR's parent)
#        PMFS_GUEST_DATA_SIZE  data file size for mkfs.pmfs (default 2G)
#        PMFS_GUEST_MKFS_ARGS  more mkfs.pmfs arguments (split on spaces), e.g. --zero-data
#        PMFS_GUEST_QUEUES     pmfsd's --queues (default 1): as many as run.sh gives the device
#        PMFS_GUEST_PMFSD_ARGS more pmfsd arguments (split on spaces), e.g. --locks shared
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=$1 sock=$2; shift 2
bin=${PMFS_BIN:-}
if [[ -z $bin ]]; then
    for b in "$root/.build/release" "$root/.build/debug"; do [[ -x $b/pmfsd ]] && { bin=$b; break; }; done
fi
[[ -n $bin && -x $bin/pmfsd ]] || { echo "pmfsd.sh: build pmfsd first (swift build --product pmfsd)" >&2; exit 2; }
export PMEM_IS_PMEM_FORCE=1
tag=$(basename "$sock" .sock)-$$
pool=${PMFS_GUEST_POOL_DIR:-/dev/shm}/pmfs-guest-$tag.pool
data=${PMFS_GUEST_DATA_DIR:-$(dirname "$dir")}/pmfs-guest-$tag.data
"$bin/mkfs.pmfs" --pool "$pool" --data "$data" --data-size "${PMFS_GUEST_DATA_SIZE:-2G}" -q ${PMFS_GUEST_MKFS_ARGS:-}
"$bin/pmfsd" --pool "$pool" --data "$data" --socket "$sock" --queues "${PMFS_GUEST_QUEUES:-1}" --log-level "${PMFS_LOG_LEVEL:-notice}" ${PMFS_GUEST_PMFSD_ARGS:-} "$@" \
    >"$sock.log" 2>&1 </dev/null &
pid=$!
( while kill -0 "$pid" 2>/dev/null; do sleep 1; done; rm -f "$pool" "$data" ) >/dev/null 2>&1 </dev/null &
for _ in $(seq 1 100); do
    [[ -S $sock ]] && { echo "$pid"; exit 0; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
echo "pmfsd.sh: pmfsd did not start; its log:" >&2
cat "$sock.log" >&2
exit 1
