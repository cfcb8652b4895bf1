#!/usr/bin/env bash
# Runs workloads end to end: for each, a fresh back end on a fresh directory, one
# guest, then cleanup. Builds the guest first (cached).
# Usage: tools/guest/check.sh [WORKLOAD...]        (default: smoke posix bench)
# Env:   PMFS_GUEST_BACKEND  a command run as `BACKEND DIR SOCKET` that starts a
#                            vhost-user-fs back end in the background, returns once
#                            SOCKET accepts connections and prints the back end's PID
#                            (default: tools/guest/virtiofsd.sh, Debian's virtiofsd)
#        PMFS_GUEST_KERNEL_ARGS  kernel command-line words for every run (e.g. pmfs.n=200)
#        and those of run.sh (PMFS_GUEST_TIMEOUT, ...)
# Prints "guest: N passed, N failed" (workloads) last; exits non-zero if any failed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
backend=${PMFS_GUEST_BACKEND:-$here/virtiofsd.sh}
workloads=("$@")
(( ${#workloads[@]} )) || workloads=(smoke posix bench)

"$here/build.sh" || exit 1
work=$(mktemp -d /tmp/pmfs-guest-check.XXXXXX)
pid=
cleanup() {
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null; sleep 0.5; kill -9 "$pid" 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

passed=0 failed=0
for w in "${workloads[@]}"; do
    share="$work/share-$w" sock="$work/$w.sock"
    mkdir -p "$share"
    if ! pid=$($backend "$share" "$sock"); then
        echo "guest/check: $w: the back end did not start" >&2
        failed=$((failed + 1)); continue
    fi
    # shellcheck disable=SC2086
    if "$here/run.sh" "$sock" pmfs "$w" ${PMFS_GUEST_KERNEL_ARGS:-}; then
        leftover=$(find "$share" -mindepth 1 | head -n 3)
        if [[ -n "$leftover" ]]; then
            echo "guest/check: $w: the share is not empty afterwards: $leftover" >&2
            failed=$((failed + 1))
        else
            passed=$((passed + 1))
        fi
    else
        failed=$((failed + 1))
        [[ -f "$sock.log" ]] && { echo "----- back end log (last 20 lines) -----"; tail -n 20 "$sock.log"; }
    fi
    # The back end serves one connection; give it a moment to exit, then make sure.
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill "$pid" 2>/dev/null; sleep 0.5; kill -9 "$pid" 2>/dev/null; fi
    pid=
done
echo "guest: $passed passed, $failed failed"
(( failed == 0 ))
