#!/usr/bin/env bash
# Snapshot benchmark: clone time and space for one tree of FILES files (TOTAL_MIB in all, 100 directories)
#   pmfs:  pmfsctl snapshot SRC DST against a running pmfsd (pool on /dev/shm with PMEM_IS_PMEM_FORCE=1,
#          data file on /var/tmp), timed from the client; the daemon's own figure is how long writers waited
#   ext4:  cp -a SRC DST on /var/tmp (the root disk's ext4), then sync
#   XFS:   cp -a --reflink=always on XFS (mkfs.xfs -m reflink=1) on a loop device backed by /var/tmp,
#          when mkfs.xfs is installed (apt-get install xfsprogs)
# Space is the used-bytes growth df reports for each file system.
#
# Usage: tools/bench/snapshot.sh [--tiny]    (root: it mounts)
# Env:   FILES (10000), TOTAL_MIB (2048), PMFS_BUILD_DIR (.build/debug: the binaries' directory)
# --tiny: 200 files, 16 MiB, pmfs only (a smoke test: the script still works).
set -euo pipefail
cd "$(dirname "$0")/../.."

tiny=0
[[ ${1:-} == --tiny ]] && tiny=1
files=${FILES:-$([[ $tiny == 1 ]] && echo 200 || echo 10000)}
total_mib=${TOTAL_MIB:-$([[ $tiny == 1 ]] && echo 16 || echo 2048)}
build=${PMFS_BUILD_DIR:-.build/debug}
for b in pmfsd pmfsctl mkfs.pmfs fsck.pmfs pmfs-inspect; do
    [[ -x $build/$b ]] || { echo "$build/$b is missing: run swift build first" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "run as root (pmfsd and the XFS loop device mount)" >&2; exit 1; }

export PMEM_IS_PMEM_FORCE=1 PMEMOBJ_CONF="sds.at_create=0"
work=$(mktemp -d /var/tmp/pmfs-snapbench.XXXXXX)
pool_dir=$(mktemp -d /dev/shm/pmfs-snapbench.XXXXXX)
pmfsd_pid=""
xfs_mnt=""
cleanup() {
    [[ -n $pmfsd_pid ]] && kill "$pmfsd_pid" 2>/dev/null && wait "$pmfsd_pid" 2>/dev/null
    [[ -n $xfs_mnt ]] && umount "$xfs_mnt" 2>/dev/null
    rm -rf "$work" "$pool_dir"
}
trap cleanup EXIT

# make_tree DIR: 100 directories, FILES files of TOTAL_MIB in all (sizes vary ±50% around the mean), each fsynced.
make_tree() {
    python3 - "$1" "$files" "$total_mib" <<'EOF'
import os, random, sys
root, files, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) << 20
random.seed(1)
mean = total // files
block = os.urandom(1 << 20)
for d in range(100):
    os.makedirs(os.path.join(root, f"d{d:02}"), exist_ok=True)
for i in range(files):
    size = max(1, int(mean * random.uniform(0.5, 1.5)))
    with open(os.path.join(root, f"d{i % 100:02}", f"f{i:05}"), "wb") as f:
        while size > 0:
            n = min(size, len(block))
            f.write(block[:n])
            size -= n
        f.flush()
        os.fsync(f.fileno())   # on the disk before the clone: the clone's time is the clone's alone
EOF
}

used() { df --output=used -B1 "$1" | tail -1; }
now() { date +%s.%N; }
seconds() { python3 -c "print(f'{$2 - $1:.3f}')"; }
human() { python3 -c "n=$1; print(f'{n/2**20:.1f} MiB')"; }

echo "tree: $files files in 100 directories, $total_mib MiB"
echo

# ---- pmfs
data_mib=$((total_mib * 2 + 1024))
"$build/mkfs.pmfs" --pool "$pool_dir/p.pool" --data "$work/pmfs.data" --data-size "${data_mib}M" --pool-size 1G -q
mkdir -p "$work/pmfs"
"$build/pmfsd" --pool "$pool_dir/p.pool" --data "$work/pmfs.data" --mount "$work/pmfs" --control "$pool_dir/control.sock" \
    >"$pool_dir/pmfsd.log" 2>&1 &
pmfsd_pid=$!
for _ in $(seq 300); do [[ -S $pool_dir/control.sock ]] && break; sleep 0.1; done
[[ -S $pool_dir/control.sock ]] || { echo "pmfsd did not start:"; cat "$pool_dir/pmfsd.log"; exit 1; }
make_tree "$work/pmfs/base"
sync -f "$work/pmfs"
before=$(used "$work/pmfs")
t0=$(now)
reply=$("$build/pmfsctl" snapshot base clone --json --control "$pool_dir/control.sock")
t1=$(now)
after=$(used "$work/pmfs")
held=$(python3 -c "import json,sys; s=json.loads(sys.argv[1])['snapshot']; print(f\"{s['milliseconds']:.1f} ms for {s['inodes']} inodes, {s['sharedBlocks']} shared blocks\")" "$reply")
ro_t0=$(now)
"$build/pmfsctl" snapshot base snap --read-only --json --control "$pool_dir/control.sock" >/dev/null
ro_t1=$(now)
cmp -s "$work/pmfs/base/d42/f00042" "$work/pmfs/clone/d42/f00042" || { echo "pmfs clone differs from its source"; exit 1; }
kill "$pmfsd_pid"; wait "$pmfsd_pid"; pmfsd_pid=""
echo "pmfs   pmfsctl snapshot:            $(seconds "$t0" "$t1") s (writers held $held), space $(human $((after - before)))"
echo "pmfs   pmfsctl snapshot --read-only: $(seconds "$ro_t0" "$ro_t1") s"
"$build/pmfs-inspect" df --pool "$pool_dir/p.pool" | grep -i "shared" | sed 's/^/pmfs   pmfs-inspect: /'
"$build/fsck.pmfs" -f -n "$pool_dir/p.pool" >/dev/null && echo "pmfs   fsck.pmfs -f -n: clean"
rm -rf "$pool_dir/p.pool" "$work/pmfs.data"
[[ $tiny == 1 ]] && exit 0

# ---- ext4 (the root disk)
mkdir -p "$work/ext4"
make_tree "$work/ext4/base"
sync
before=$(used "$work/ext4")
t0=$(now)
cp -a "$work/ext4/base" "$work/ext4/clone"
t1=$(now)
sync
t2=$(now)
after=$(used "$work/ext4")
echo "ext4   cp -a:                       $(seconds "$t0" "$t1") s ($(seconds "$t0" "$t2") s with sync), space $(human $((after - before)))"
rm -rf "$work/ext4"

# ---- XFS with reflinks, on a loop device
if command -v mkfs.xfs >/dev/null; then
    truncate -s "$((total_mib * 2 + 1024))M" "$work/xfs.img"
    mkfs.xfs -q -m reflink=1 "$work/xfs.img"
    xfs_mnt="$work/xfs"
    mkdir -p "$xfs_mnt"
    mount -o loop "$work/xfs.img" "$xfs_mnt"
    make_tree "$xfs_mnt/base"
    sync
    before=$(used "$xfs_mnt")
    t0=$(now)
    cp -a --reflink=always "$xfs_mnt/base" "$xfs_mnt/clone"
    t1=$(now)
    sync
    t2=$(now)
    after=$(used "$xfs_mnt")
    echo "xfs    cp -a --reflink=always:      $(seconds "$t0" "$t1") s ($(seconds "$t0" "$t2") s with sync), space $(human $((after - before)))"
else
    echo "xfs    skipped: mkfs.xfs is not installed (apt-get install xfsprogs)"
fi
