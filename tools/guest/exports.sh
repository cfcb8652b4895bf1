#!/usr/bin/env bash
# Exports end to end: one pmfsd serves two VMs at once, each confined to its own
# directory of one file system, while the host mounts the whole tree:
#   vm1  --socket S1,export=/vm1,uid-map=0:100000:65536   read-write, ids mapped
#   vm2  --socket S2,export=/vm2,read-only
# Both guests run the "export" workload at the same time: each sees only its
# own directory (the host put "owner" and "data" files in each), vm2 cannot
# change anything (EROFS), vm1's new file reaches the host as uid 100000. Then
# the host checks vm1's file, that vm2's directory and the root are as they
# were, and fsck.pmfs -n -f finds the pool clean after pmfsd stops.
# Usage: tools/guest/exports.sh        Env: PMFS_BIN (as integrity.sh), run.sh's
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
script_name=exports
. "$here/host.sh"
find_bins
prepare_host
trap 'cleanup_host 0' EXIT
trap 'exit 130' INT TERM

tree_sum() { (cd "$1" && find . -path ./vm1/guest-wrote -prune -o -print0 | LC_ALL=C sort -z |
              xargs -0 stat -c '%n %s %u %a' ) | sha256sum | cut -d' ' -f1; }

"$bin/mkfs.pmfs" --pool "$pool" --data "$work/data" --data-size 256M -q
# The exports must exist when pmfsd starts: make them through a first mount.
start_pmfsd
make_exports vm1 vm2
echo "not for guests" > "$mnt/host-only"
before=$(tree_sum "$mnt")
stop_pmfsd

start_pmfsd --socket "$work/vm1.sock,export=/vm1,uid-map=0:100000:65536" \
            --socket "$work/vm2.sock,export=/vm2,read-only"
start_guest vm1 "$work/vm1.sock" pmfs export pmfs.owner=vm1 pmfs.mapped_uid=100000
start_guest vm2 "$work/vm2.sock" pmfs export pmfs.owner=vm2 pmfs.readonly=1
wait_guests

# The host's view: vm1's file with the mapped owner; everything else as it was.
[[ $(cat "$mnt/vm1/guest-wrote") == "written by vm1" ]] || die "vm1's file on the host: $(cat "$mnt/vm1/guest-wrote" 2>&1)"
[[ $(stat -c %u "$mnt/vm1/guest-wrote") == 100000 ]] || die "vm1's file is owned by uid $(stat -c %u "$mnt/vm1/guest-wrote") on the host, want 100000"
after=$(tree_sum "$mnt")
[[ $after == "$before" ]] || { ls -laR "$mnt" >&2; die "the tree outside vm1's new file changed"; }
stop_pmfsd
out=$("$bin/fsck.pmfs" -n -f "$pool" 2>&1) || die "fsck.pmfs -n -f: $out"
say "ok: two VMs confined to their exports (one read-only, one with a uid map); fsck: $out"
