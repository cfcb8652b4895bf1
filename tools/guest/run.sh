#!/usr/bin/env bash
# Boots the test guest against a vhost-user-fs back end listening on SOCKET,
# mounts the share named TAG and runs WORKLOAD (a file in tools/guest/workloads/).
# Exits 0 only if the guest printed "PMFS-GUEST: RESULT k passed, 0 failed".
# Prints the PMFS-GUEST markers on success, the whole console log on failure.
# Usage: tools/guest/run.sh SOCKET TAG WORKLOAD [KERNEL-ARGS...]
#   KERNEL-ARGS: more kernel command-line words, e.g. pmfs.n=1000 (bench count),
#   pmfs.big_mib=16 (posix large file), pmfs.test_timeout=300 (per test, s).
# Env: PMFS_GUEST_DIR      build output (default .guest/; run build.sh first)
#      PMFS_GUEST_TIMEOUT  hard limit for the whole guest, s (default 600)
#      PMFS_GUEST_ACCEL    auto|tcg|kvm (default auto: kvm only if it can really work)
#      PMFS_GUEST_SMP      vCPUs (default 1)   PMFS_GUEST_MEM  MiB (default 1024)
#      PMFS_GUEST_QUEUES   request queues of the device (num-request-queues, default 1;
#                          the back end must offer as many, e.g. pmfsd --queues N);
#                          the guest gets pmfs.queues=N and smoke checks it
#      PMFS_GUEST_KERNEL   vmlinux|vmlinuz (default vmlinux, boots faster)
#      PMFS_GUEST_LOG      keep the console log at this path
#      PMFS_GUEST_VERBOSE  1: stream the console while it runs
#      PMFS_GUEST_QEMU_ARGS  more QEMU arguments (split on spaces)
set -uo pipefail
if (( $# < 3 )); then
    sed -n '2,21s/^# \{0,1\}//p' "$0" >&2
    exit 2
fi
sock=$1 tag=$2 workload=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
out=${PMFS_GUEST_DIR:-$here/../../.guest}
timeout_s=${PMFS_GUEST_TIMEOUT:-600}
mem=${PMFS_GUEST_MEM:-1024}
smp=${PMFS_GUEST_SMP:-1}
queues=${PMFS_GUEST_QUEUES:-1}
[[ $queues =~ ^[1-9][0-9]*$ ]] || { echo "guest/run: PMFS_GUEST_QUEUES=$queues is not a positive number" >&2; exit 2; }
kernel="$out/kernel/${PMFS_GUEST_KERNEL:-vmlinux}"
initrd="$out/initramfs.cpio.gz"
say() { echo "guest/run: $*" >&2; }

[[ -f "$kernel" && -f "$initrd" ]] || { say "no guest in $out: run tools/guest/build.sh"; exit 2; }
[[ -f "$here/workloads/$workload.sh" ]] || { say "no workload $workload in $here/workloads"; exit 2; }
for _ in $(seq 1 50); do [[ -S "$sock" ]] && break; sleep 0.1; done
[[ -S "$sock" ]] || { say "no socket at $sock (start the back end first)"; exit 2; }

# KVM only where it can run a stock kernel: a real /dev/kvm on a CPU with vmx/svm.
# (PVM hosts have /dev/kvm from kvm_pvm without vmx/svm; a stock guest hangs there.)
accel=${PMFS_GUEST_ACCEL:-auto}
if [[ $accel == auto ]]; then
    accel=tcg
    if [[ -r /dev/kvm && -w /dev/kvm && ! -d /sys/module/kvm_pvm ]] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
        accel=kvm
    fi
fi
cpu=max
[[ $accel == kvm ]] && cpu=host

log=${PMFS_GUEST_LOG:-$(mktemp /tmp/pmfs-guest.XXXXXX.log)}
keep_log=${PMFS_GUEST_LOG:+1}
cmdline="console=ttyS0 quiet panic=-1 pmfs.tag=$tag pmfs.workload=$workload pmfs.queues=$queues $*"

qemu=(qemu-system-x86_64 -nodefaults -no-user-config -no-reboot
      -machine pc -accel "$accel" -cpu "$cpu" -smp "$smp" -m "${mem}M"
      -object "memory-backend-memfd,id=mem,size=${mem}M,share=on" -numa node,memdev=mem
      -chardev "socket,id=c0,path=$sock"
      -device vhost-user-fs-pci,chardev=c0,tag="$tag",queue-size=1024,num-request-queues="$queues"
      -kernel "$kernel" -initrd "$initrd" -append "$cmdline"
      -display none -vga none -serial stdio -monitor none
      ${PMFS_GUEST_QEMU_ARGS:-})

say "$workload on $sock (tag $tag, $queues request queue(s), $accel, timeout ${timeout_s}s)"
start=$(date +%s.%N)
if [[ ${PMFS_GUEST_VERBOSE:-0} == 1 ]]; then
    timeout -k 5 "$timeout_s" "${qemu[@]}" </dev/null 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
else
    timeout -k 5 "$timeout_s" "${qemu[@]}" </dev/null >"$log" 2>&1
    rc=$?
fi
elapsed=$(echo "$(date +%s.%N) - $start" | bc 2>/dev/null || echo "?")
elapsed=$(printf '%.1f' "$elapsed" 2>/dev/null || echo "$elapsed")

result=$(tr -d '\r' < "$log" | grep -E '^PMFS-GUEST: RESULT [0-9]+ passed, [0-9]+ failed' | tail -n 1)
boot=$(tr -d '\r' < "$log" | sed -n 's/^PMFS-GUEST: BOOT \([0-9.]*s\).*/\1/p' | head -n 1)
failed=$(echo "$result" | sed -n 's/.* passed, \([0-9]*\) failed.*/\1/p')
passed=$(echo "$result" | sed -n 's/.*RESULT \([0-9]*\) passed.*/\1/p')

status=0
why=
if (( rc == 124 || rc == 137 )); then status=1; why="timed out after ${timeout_s}s"
elif [[ -z "$result" ]]; then status=1; why="no RESULT line (qemu exit $rc)"
elif [[ "$failed" != 0 ]]; then status=1; why="$failed failed"
elif (( passed == 0 )); then status=1; why="nothing passed"
fi

if (( status == 0 )); then
    [[ ${PMFS_GUEST_VERBOSE:-0} == 1 ]] || tr -d '\r' < "$log" | grep '^PMFS-GUEST: '
    say "$workload: ok, ${result#PMFS-GUEST: RESULT } (guest booted at ${boot:-?}, ${elapsed}s in all)"
else
    if [[ ${PMFS_GUEST_VERBOSE:-0} != 1 ]]; then
        echo "----- guest console ($log) -----"
        tr -d '\r' < "$log"
        echo "----- end of guest console -----"
    fi
    say "$workload: FAILED: $why (guest booted at ${boot:-?}, ${elapsed}s in all)"
fi
[[ -n "$keep_log" ]] || rm -f "$log"
exit "$status"
