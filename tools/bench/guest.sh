#!/usr/bin/env bash
# Guest benchmark, side by side in one run: the same guest workload (bench)
# against Debian's virtiofsd (cache=auto, xattr on) and against pmfsd, each on a
# fresh back end; prints per-operation medians (µs, guest clock) and the ratio.
# Under TCG emulation absolute figures mean little: compare the columns.
# Usage: tools/bench/guest.sh [N]   (operations per kind, default 1000)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
n=${1:-1000}
command -v swift >/dev/null || export PATH="/opt/swift/usr/bin:$PATH"
(cd "$root" && swift build -c release --product pmfsd >/dev/null && swift build -c release --product mkfs.pmfs >/dev/null)
export PMFS_BIN=$root/.build/release PMFS_GUEST_KERNEL_ARGS="pmfs.n=$n"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$root/tools/guest/check.sh" bench >"$out/virtiofsd.log" 2>&1 || { cat "$out/virtiofsd.log"; exit 1; }
PMFS_GUEST_BACKEND="$root/tools/guest/pmfsd.sh" "$root/tools/guest/check.sh" bench >"$out/pmfsd.log" 2>&1 || { cat "$out/pmfsd.log"; exit 1; }
echo "| operation (median µs in the guest) | virtiofsd | pmfsd | pmfsd/virtiofsd |"
echo "|---|---:|---:|---:|"
grep -h "BENCH" "$out/virtiofsd.log" | while read -r _ _ kind v _; do
    p=$(grep -h "BENCH $kind " "$out/pmfsd.log" | awk '{print $4}')
    printf "| %s | %s | %s | %s |\n" "$kind" "$v" "$p" "$(awk -v a="$p" -v b="$v" 'BEGIN{printf "%.2f", a/b}')"
done
echo
echo "n=$n per operation; TCG guest (Debian 6.1 kernel); pmfsd pool on /dev/shm (PMEM_IS_PMEM_FORCE=1), data on disk."
