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

# wait_for WHAT SECONDS COMMAND...: polls COMMAND ten times a second; dies
# naming WHAT if it has not succeeded within SECONDS.
wait_for() {
    local what=$1 limit=$2; shift 2
    for _ in $(seq 1 $((limit * 10))); do "$@" && return 0; sleep 0.1; done
    die "$what: not within ${limit} s"
}

# console_lines LOG: a guest console log's complete lines so far (a line still
# being written when QEMU was killed does not count), without carriage returns.
console_lines() {
    if [[ -n $(tail -c 1 "$1") ]]; then head -n -1 "$1"; else cat "$1"; fi | tr -d '\r'
}
