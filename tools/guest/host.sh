# Host-side helpers for the scripts that run pmfsd and guests together
# (integrity.sh, exports.sh, libvirt.sh, crash.sh). Source after setting
# `here`, `root` and `script_name`.

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

# prepare_host: builds the guest image and kernel (build.sh), and sets what
# every host-side run uses: `work` (a new directory under /tmp), `pool` (on
# /dev/shm, so PMEM_IS_PMEM_FORCE=1 is exported), `mnt` (the host mount point,
# made) and an empty `pmfsd_pid`.
prepare_host() {
    "$here/build.sh"
    export PMEM_IS_PMEM_FORCE=1
    work=$(mktemp -d "/tmp/pmfs-$script_name.XXXXXX")
    pool=/dev/shm/pmfs-$script_name-$$.pool
    mnt=$work/mnt
    mkdir -p "$mnt"
    pmfsd_pid=
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

# The scripts' pmfsd: `pool`, `mnt` and `work` are set by the script; the data
# file is $work/data and the log $work/pmfsd.log.

# start_pmfsd [ARGS...]: pmfsd on the host mount plus ARGS; returns once the
# mount is up and every `--socket PATH[,OPTIONS]` of ARGS listens.
start_pmfsd() {
    local a sockets=() next=
    for a in "$@"; do
        [[ $next == socket ]] && sockets+=("${a%%,*}")
        next=; [[ $a == --socket ]] && next=socket
    done
    rm -f "${sockets[@]}"
    echo "----- pmfsd $*" >> "$work/pmfsd.log"
    "$bin/pmfsd" --pool "$pool" --data "$work/data" --mount "$mnt" --log-level notice "$@" >> "$work/pmfsd.log" 2>&1 < /dev/null &
    pmfsd_pid=$!
    pmfsd_serving() {
        kill -0 "$pmfsd_pid" 2>/dev/null || die "pmfsd exited while starting"
        mountpoint -q "$mnt" || return 1
        local s
        for s in "${sockets[@]}"; do [[ -S $s ]] || return 1; done
    }
    wait_for "pmfsd mounting $mnt${sockets:+ and listening on ${sockets[*]}}" 30 pmfsd_serving
}

# make_exports NAME...: on the host mount, a directory per name holding what
# the "export" workload expects there: "owner" (the name) and "data".
make_exports() {
    local vm
    for vm in "$@"; do
        mkdir "$mnt/$vm"
        echo "$vm" > "$mnt/$vm/owner"
        printf 'export %s\n' "$vm" > "$mnt/$vm/data"
    done
}

# start_guest NAME SOCKET WORKLOAD [KERNEL-ARGS...]: boots a guest (run.sh) in
# the background, its output in $work/NAME.out; wait_guests waits for all.
guest_names=() guest_pids=()
start_guest() {
    local name=$1; shift
    "$here/run.sh" "$@" > "$work/$name.out" 2>&1 &
    guest_pids+=($!) guest_names+=("$name")
}

# wait_guests: waits for every guest start_guest booted; dies if one failed
# (after showing its output), else shows their "ok" lines.
wait_guests() {
    local i ok=1
    for i in "${!guest_pids[@]}"; do
        wait "${guest_pids[$i]}" || { cat "$work/${guest_names[$i]}.out" >&2; ok=0; }
    done
    (( ok )) || die "a guest failed"
    for i in "${!guest_names[@]}"; do grep -h '^guest/run: .*: ok' "$work/${guest_names[$i]}.out" >&2; done
    guest_names=() guest_pids=()
}

# stop_pmfsd: SIGTERM; pmfsd must unmount, write back, exit 0 and say so.
stop_pmfsd() {
    kill -TERM "$pmfsd_pid"
    for _ in $(seq 1 600); do kill -0 "$pmfsd_pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pmfsd_pid" 2>/dev/null && die "pmfsd still running 60 s after SIGTERM"
    local rc=0
    wait "$pmfsd_pid" || rc=$?
    pmfsd_pid=
    (( rc == 0 )) || die "pmfsd exited with status $rc after SIGTERM"
    tail -n 2 "$work/pmfsd.log" | grep -q 'stopped cleanly' || die "pmfsd did not report a clean stop"
    ! mountpoint -q "$mnt" || die "$mnt still mounted after pmfsd exited"
}

# cleanup_host KEEP: the scripts' EXIT trap (call it first, so it sees the exit
# status): kills a QEMU left running ($work/qemu.pid), stops pmfsd (SIGTERM,
# SIGKILL after 10 s), detaches the mount, removes the pool and, unless KEEP is
# 1, the work directory.
cleanup_host() {
    local rc=$? keep=${1:-0}
    set +e
    [[ -f $work/qemu.pid ]] && kill -9 "$(cat "$work/qemu.pid")" 2>/dev/null
    if [[ -n ${pmfsd_pid:-} ]]; then
        kill -TERM "$pmfsd_pid" 2>/dev/null
        for _ in $(seq 1 50); do kill -0 "$pmfsd_pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pmfsd_pid" 2>/dev/null
    fi
    mountpoint -q "$mnt" && umount -l "$mnt"
    rm -f "$pool"
    if [[ $keep == 1 ]]; then say "work directory kept: $work"; else rm -rf "$work"; fi
    exit $rc
}
