#!/usr/bin/env bash
# Clones end to end: two VMs start from two writable clones of one base tree
# (`pmfsctl snapshot base vm1`, `... base vm2`: the files share their blocks
# copy-on-write), each served as its own export. Each guest runs the program
# the tree holds (bin/workload.sh), which rewrites a block in the middle of a
# shared 1 MiB file, appends to a log, changes /etc/hostname, removes a file and
# makes one. Then the host checks that each clone holds only its own guest's
# changes, that the base is byte for byte as it was, that the clones still
# share all but the rewritten blocks with the base (pmfs-inspect du), and that
# fsck.pmfs -n -f finds the pool clean.
# Usage: tools/guest/clones.sh        Env: PMFS_BIN (as integrity.sh), run.sh's
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
script_name=clones
. "$here/host.sh"
find_bins
prepare_host
trap 'cleanup_host 0' EXIT
trap 'exit 130' INT TERM

tree_sum() { (cd "$1" && find . -print0 | LC_ALL=C sort -z | xargs -0 sh -c 'for f; do
                 if [ -f "$f" ]; then sha256sum "$f"; else stat -c "%n %F" "$f"; fi; done' sh) | sha256sum | cut -d' ' -f1; }
# The first and last byte offsets (0-based) where two files of one size differ, "-" if none.
differ_range() { cmp -l "$1" "$2" | awk 'NR == 1 { first = $1 } { last = $1 } END { print (NR ? (first - 1) " " (last - 1) : "-") }'; }

"$bin/mkfs.pmfs" --pool "$pool" --data "$work/data" --data-size 256M -q
control=$work/control.sock
start_pmfsd --control "$control"
base=$mnt/base
mkdir -p "$base/bin" "$base/etc" "$base/data"
cat > "$base/bin/workload.sh" <<'PROGRAM'
#!/bin/sh
# The base image's program: what a VM started from a clone runs.
name=$1
root=$(dirname "$0")/..
printf '%s\n' "$name" > "$root/etc/hostname"
echo "ran in $name" >> "$root/data/log"
rm "$root/data/remove-me"
echo "made by $name" > "$root/data/new"
yes "$name" | head -c 4096 | dd of="$root/data/big" bs=4096 seek=128 conv=notrunc 2>/dev/null
PROGRAM
echo base > "$base/etc/hostname"
echo "made on the host" > "$base/data/log"
echo "remove me" > "$base/data/remove-me"
head -c $((1 << 20)) /dev/urandom > "$base/data/big"
sync -f "$base/data/big"
before=$(tree_sum "$base")
cp "$base/data/big" "$work/big.base"
for vm in vm1 vm2; do
    "$bin/pmfsctl" snapshot base "$vm" --control "$control" >&2 || die "pmfsctl snapshot base $vm"
done
stop_pmfsd

start_pmfsd --control "$control" --socket "$work/vm1.sock,export=/vm1" --socket "$work/vm2.sock,export=/vm2"
start_guest vm1 "$work/vm1.sock" pmfs clone pmfs.owner=vm1
start_guest vm2 "$work/vm2.sock" pmfs clone pmfs.owner=vm2
wait_guests

after=$(tree_sum "$base")
[[ $after == "$before" ]] || { ls -laR "$base" >&2; die "the base tree changed"; }
for vm in vm1 vm2; do
    [[ $(cat "$mnt/$vm/etc/hostname") == "$vm" ]] || die "$vm/etc/hostname: $(cat "$mnt/$vm/etc/hostname")"
    [[ $(cat "$mnt/$vm/data/log") == $'made on the host\nran in '"$vm" ]] || die "$vm/data/log: $(cat "$mnt/$vm/data/log")"
    [[ ! -e $mnt/$vm/data/remove-me && $(cat "$mnt/$vm/data/new") == "made by $vm" ]] || die "$vm/data: $(ls "$mnt/$vm/data")"
    read -r first last <<< "$(differ_range "$work/big.base" "$mnt/$vm/data/big")"
    # Within block 128 (bytes 524288..528383); its ends may match the random base by chance.
    [[ $first != - ]] && (( first >= 524288 && last <= 528383 )) ||
        die "$vm/data/big differs from the base at bytes $first..${last:-}, want only within 524288..528383 (block 128)"
done
cmp -s "$mnt/vm1/data/big" "$mnt/vm2/data/big" && die "vm1's and vm2's data/big are the same: one saw the other's write"
stop_pmfsd
out=$("$bin/fsck.pmfs" -n -f "$pool" 2>&1) || die "fsck.pmfs -n -f: $out"
# The 1 MiB file is 256 blocks: in each clone one was copied, 255 are still shared.
du=$("$bin/pmfs-inspect" du --pool "$pool" /vm1 2>&1) || die "pmfs-inspect du /vm1: $du"
shared=$(sed -n 's/^shared: *\([0-9]*\) block.*/\1/p' <<< "$du")
(( shared >= 255 )) || die "vm1 shares $shared blocks with the rest, want at least 255: $du"
say "ok: two VMs ran from two clones of one base tree, each saw only its own changes, the base is unchanged, $shared blocks still shared; fsck: $out"
