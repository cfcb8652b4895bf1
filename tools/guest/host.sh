# Host-side helpers for the scripts that run pmfsd and guests together
# (integrity.sh, exports.sh). Source after setting `root` and `script_name`.

say() { echo "guest/$script_name: $*" >&2; }

# die MESSAGE: fail, with the tail of $work/pmfsd.log when there is one.
die() {
    say "FAILED: $*"
    [[ -f ${work:-}/pmfsd.log ]] && { echo "----- pmfsd log (last 15 lines) -----" >&2; tail -n 15 "$work/pmfsd.log" >&2; }
    exit 1
}

# find_bins: sets `bin` to $PMFS_BIN, else the first of .build/release and
# .build/debug that has pmfsd, mkfs.pmfs and fsck.pmfs; exits 2 if none does.
find_bins() {
    local b p
    bin=${PMFS_BIN:-}
    if [[ -z $bin ]]; then
        for b in "$root/.build/release" "$root/.build/debug"; do
            [[ -x $b/pmfsd && -x $b/mkfs.pmfs && -x $b/fsck.pmfs ]] && { bin=$b; break; }
        done
    fi
    for p in pmfsd mkfs.pmfs fsck.pmfs; do
        [[ -n $bin && -x $bin/$p ]] || { say "no $p in ${bin:-.build}: swift build first"; exit 2; }
    done
}
