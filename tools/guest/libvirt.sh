#!/usr/bin/env bash
# Two VMs started the way libvirt starts a virtiofs binary, served by one pmfsd:
# the daemon serves the file system with a host mount and a control socket;
# for each VM a listening socket is made and `pmfsd --fd=N -o source=MOUNT/vmN,...`
# is started with it (src/qemu/qemu_virtiofs.c's command line), which hands the
# socket to the daemon. Each guest runs the "export" workload: it sees only its
# own directory. Then the launchers get SIGTERM (libvirt stopping the VMs): the
# sockets refuse connections and the daemon lists no guest socket; the host sees
# what the guests wrote, and fsck.pmfs -n -f finds the pool clean.
# Usage: tools/guest/libvirt.sh        Env: PMFS_BIN (as integrity.sh), run.sh's
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
script_name=libvirt
. "$here/host.sh"
find_bins
[[ -x $bin/pmfsctl ]] || { say "no pmfsctl in $bin: swift build first"; exit 2; }
prepare_host
control=$work/control.sock
launchers=()
# The launchers go first (libvirt stopping the VMs), then what cleanup_host does.
cleanup() { local rc=$? p; for p in "${launchers[@]}"; do kill -TERM "$p" 2>/dev/null; done; (exit $rc); cleanup_host 0; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# What libvirt does: a listening socket, the binary started with it as --fd=N,
# and no copy of it kept (python execs the launcher, so the launcher's pid is $!).
launch_py='
import os, socket, sys
path, binary, source, log = sys.argv[1:5]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path); s.listen(1)
fd = s.detach(); os.set_inheritable(fd, True)
out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.dup2(out, 1); os.dup2(out, 2)
os.execv(binary, [binary, f"--fd={fd}", "-o", f"source={source},cache=auto,xattr,posix_lock,flock", "--thread-pool-size=16"])
'
listed() { "$bin/pmfsctl" info --json --control "$control" | grep -q "\"export\":\"$1\""; }
unlisted() { ! listed "$1"; }
refuses() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])' "$1" 2>/dev/null && return 1 || return 0; }

"$bin/mkfs.pmfs" --pool "$pool" --data "$work/data" --data-size 256M -q
start_pmfsd --control "$control"
wait_for "the control socket" 10 test -S "$control"
make_exports vm1 vm2
echo "not for guests" > "$mnt/host-only"

for vm in vm1 vm2; do
    PMFS_CONTROL=$control python3 -c "$launch_py" "$work/$vm.sock" "$bin/pmfsd" "$mnt/$vm" "$work/$vm.launcher.log" &
    launchers+=($!)
done
for vm in vm1 vm2; do wait_for "the daemon serving /$vm" 20 listed "/$vm"; done
"$bin/pmfsctl" info --control "$control" >&2
start_guest vm1 "$work/vm1.sock" pmfs export pmfs.owner=vm1
start_guest vm2 "$work/vm2.sock" pmfs export pmfs.owner=vm2
wait_guests

# libvirt stops the VMs: SIGTERM to each launcher, which exits 0.
for p in "${launchers[@]}"; do
    kill -TERM "$p"
    rc=0; wait "$p" || rc=$?
    (( rc == 0 )) || { cat "$work"/*.launcher.log >&2; die "a launcher exited with $rc after SIGTERM"; }
done
launchers=()
for vm in vm1 vm2; do
    wait_for "/$vm no longer served" 10 unlisted "/$vm"
    refuses "$work/$vm.sock" || die "$vm's socket still accepts connections after its launcher stopped"
done
for vm in vm1 vm2; do
    [[ $(cat "$mnt/$vm/guest-wrote") == "written by $vm" ]] || die "$vm's file on the host: $(cat "$mnt/$vm/guest-wrote" 2>&1)"
done
[[ $(cat "$mnt/host-only") == "not for guests" ]] || die "host-only changed"
stop_pmfsd
out=$("$bin/fsck.pmfs" -n -f "$pool" 2>&1) || die "fsck.pmfs -n -f: $out"
say "ok: two VMs started the libvirt way, each confined to its directory of one pmfsd's file system; fsck: $out"
