#!/usr/bin/env bash
# Reloading the configuration under real guests: pmfsd runs from a --config
# file with one VM (vm1, export /vm1) that appends and fsyncs records without
# pause (workload "reload"). While it writes, the host
#   1. adds a socket for vm2 (export /vm2) to the file and runs `pmfsctl
#      reload`: the new socket serves a second VM, which boots and passes the
#      "export" workload;
#   2. reloads a bad file: refused with its line and reason (exit 1), nothing
#      changes;
#   3. drops vm2's socket again: it stops listening, vm1's listener stays;
# then cues vm1 to stop. vm1 must never have seen an error, its session must
# be the one it started with (same listener, never restarted), the host must
# read the same number of records, whole and in order, and fsck.pmfs -n -f
# must find the pool clean after pmfsd stops.
# Usage: tools/guest/reload.sh        Env: PMFS_BIN (as integrity.sh), run.sh's
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
script_name=reload
. "$here/host.sh"
find_bins
[[ -x $bin/pmfsctl ]] || { say "no pmfsctl in $bin: swift build first"; exit 2; }
prepare_host
trap 'cleanup_host 0' EXIT
trap 'exit 130' INT TERM

config=$work/pmfs.yaml control=$work/control.sock
ctl() { "$bin/pmfsctl" "$1" --control "$control" "${@:2}"; }

# write_config GUEST...: the file with these guests (vm1, vm2) and, after
# them, any extra top-level lines in $extra.
write_config() {
    local g
    { echo "# written by tools/guest/reload.sh"
      echo "control: $control"
      echo "guests:"
      for g in "$@"; do printf '  %s:\n    socket: %s\n    export: /%s\n' "$g" "$work/$g.sock" "$g"; done
      printf '%s' "${extra:-}"
    } > "$config.tmp"
    mv "$config.tmp" "$config"
}

# listener_of SOCKET: its listener id in `pmfsctl info --json`, or nothing.
listener_of() {
    ctl info --json | python3 -c 'import json, sys
for e in json.load(sys.stdin)["info"]["exports"]:
    if e["socket"] == sys.argv[1]: print(e["id"])' "$1"
}

# session_since LISTENER: when the session on that listener connected.
session_since() {
    ctl sessions --json | python3 -c 'import json, sys
for s in json.load(sys.stdin)["sessions"]:
    if s.get("listener") == int(sys.argv[1]) and s.get("since") is not None: print(s["since"])' "$1"
}

stream_size() { stat -c %s "$mnt/vm1/stream" 2>/dev/null || echo 0; }
stream_grew_past() { (( $(stream_size) > $1 )); }

"$bin/mkfs.pmfs" --pool "$pool" --data "$work/data" --data-size 256M -q
start_pmfsd
make_exports vm1 vm2
stop_pmfsd

write_config vm1
start_pmfsd --config "$config"
wait_for "the control socket and vm1's socket" 30 test -S "$control" -a -S "$work/vm1.sock"
vm1_id=$(listener_of "$work/vm1.sock")
[[ -n $vm1_id ]] || die "pmfsctl info does not list vm1's socket"
start_guest vm1 "$work/vm1.sock" pmfs reload pmfs.test_timeout=1200
wait_for "vm1 writing records" 600 stream_grew_past 0
vm1_since=$(session_since "$vm1_id")
[[ -n $vm1_since ]] || die "pmfsctl sessions shows no connected session on vm1's listener"

# 1. A new socket, served at once: a second VM boots on it.
write_config vm1 vm2
out=$(ctl reload) || die "pmfsctl reload (vm2 added): $out"
wait_for "vm2's socket" 30 test -S "$work/vm2.sock"
"$here/run.sh" "$work/vm2.sock" pmfs export pmfs.owner=vm2 > "$work/vm2.out" 2>&1 \
    || { cat "$work/vm2.out" >&2; die "vm2 failed on the socket the reload added"; }
grep -h '^guest/run: .*: ok' "$work/vm2.out" >&2
[[ $(cat "$mnt/vm2/guest-wrote") == "written by vm2" ]] || die "vm2's file on the host: $(cat "$mnt/vm2/guest-wrote" 2>&1)"
size=$(stream_size)
wait_for "vm1 writing after the first reload" 120 stream_grew_past "$size"

# 2. A bad file: refused with where and why; the running configuration stays.
extra=$'queues: 100\n' write_config vm1 vm2
if out=$(ctl reload 2>&1); then die "pmfsctl reload accepted queues: 100: $out"; fi
[[ $out == *"$config"*"queues"* ]] || die "the refusal does not name the file and the key: $out"
[[ $(listener_of "$work/vm2.sock") != "" ]] || die "vm2's socket went away after a refused reload"

# 3. vm2's socket dropped: it stops listening; vm1 is not disturbed.
write_config vm1
out=$(ctl reload) || die "pmfsctl reload (vm2 dropped): $out"
wait_for "vm2's socket to go" 30 test ! -S "$work/vm2.sock"
[[ -z $(listener_of "$work/vm2.sock") ]] || die "pmfsctl info still lists vm2's socket"
[[ $(listener_of "$work/vm1.sock") == "$vm1_id" ]] || die "vm1's listener changed across the reloads"
[[ $(session_since "$vm1_id") == "$vm1_since" ]] || die "vm1's session was restarted across the reloads"
size=$(stream_size)
wait_for "vm1 writing after the last reload" 120 stream_grew_past "$size"

touch "$mnt/vm1/stop-writing"
wait_guests
records=$(sed -n 's/.*PMFS-GUEST: RECORDS \([0-9]*\).*/\1/p' "$work/vm1.out" | tail -n 1)
[[ -n $records ]] || die "vm1 did not say how many records it wrote"
host_lines=$(wc -l < "$mnt/vm1/stream")
(( host_lines == records )) || die "the host reads $host_lines records, vm1 wrote $records"
awk '$1 != "record" || $2 + 0 != NR - 1 { exit 1 }' "$mnt/vm1/stream" || die "the host reads the stream out of order"
stop_pmfsd
out=$("$bin/fsck.pmfs" -n -f "$pool" 2>&1) || die "fsck.pmfs -n -f: $out"
say "ok: vm1 wrote $records records through three reloads (a socket added and served a second VM, a bad file refused, the socket dropped); fsck: $out"
