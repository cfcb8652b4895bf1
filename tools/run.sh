#!/usr/bin/env bash
# Builds pmfs (release), makes the file system if there is none yet (or with
# --reformat), shows it, and serves it: pmfsd mounts it on the host through
# /dev/fuse and runs in the foreground until Ctrl-C / SIGTERM (which unmounts
# and closes the pool cleanly). The vhost-user socket for guests comes later.
#
#   PMFS_POOL       metadata pool         (default /dev/shm/pmfs/pmfs.pool)
#   PMFS_DATA       data device or file   (default /var/lib/pmfs/data.img)
#   PMFS_DATA_SIZE  size of a new data file (default 4G, preallocated)
#   PMFS_MOUNT      host mount point      (default /mnt/pmfs)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v swift >/dev/null || export PATH="/opt/swift/usr/bin:$PATH"

pool=${PMFS_POOL:-/dev/shm/pmfs/pmfs.pool}
data=${PMFS_DATA:-/var/lib/pmfs/data.img}
data_size=${PMFS_DATA_SIZE:-4G}
mount_point=${PMFS_MOUNT:-/mnt/pmfs}
reformat=0
for arg in "$@"; do
    case $arg in
        --reformat) reformat=1 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; echo "usage: tools/run.sh [--reformat]"; exit 0 ;;
        *) echo "run.sh: unknown argument '$arg' (usage: tools/run.sh [--reformat])" >&2; exit 2 ;;
    esac
done

# The pool is on /dev/shm: PMDK must treat it as persistent memory (cache
# flushes), or every commit goes through msync.
export PMEM_IS_PMEM_FORCE=1

echo "run.sh: building (release)"
swift build -c release
bin=$(swift build -c release --show-bin-path)

mkdir -p "$(dirname "$pool")" "$(dirname "$data")"
if (( reformat )); then
    "$bin/mkfs.pmfs" --pool "$pool" --data "$data" --data-size "$data_size" --label pmfs --force
elif [[ -e $pool ]]; then
    # Reuse it, but only if the pool is sound and the data device is its own.
    if ! "$bin/pmfs-inspect" info --pool "$pool" --data "$data" >/dev/null; then
        echo "run.sh: $pool cannot be used as it is; see above (fsck.pmfs may repair it," \
             "or run tools/run.sh --reformat to start afresh, losing its contents)" >&2
        exit 1
    fi
    echo "run.sh: using the existing file system in $pool"
elif ! "$bin/mkfs.pmfs" --pool "$pool" --data "$data" --data-size "$data_size" --label pmfs; then
    echo "run.sh: could not make a file system; if $data belongs to a file system whose pool" \
         "is gone (/dev/shm is emptied at boot), run tools/run.sh --reformat" >&2
    exit 1
fi

echo
"$bin/pmfs-inspect" info --pool "$pool" --data "$data"
echo
"$bin/pmfs-inspect" df --pool "$pool"
echo
"$bin/pmfs-inspect" tree --pool "$pool"

serve() {
    mkdir -p "$mount_point"
    echo
    echo "run.sh: serving on $mount_point (Ctrl-C to stop)"
    exec "$bin/pmfsd" --pool "$pool" --data "$data" --mount "$mount_point"
}
serve
