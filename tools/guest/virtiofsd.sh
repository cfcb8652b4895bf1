#!/usr/bin/env bash
# Starts Debian's virtiofsd (QEMU 7.2, C), the reference vhost-user-fs back end,
# serving DIR on SOCKET. It runs in the background, serves one guest connection
# and then exits by itself. Prints its PID once the socket is there; its log
# goes to SOCKET.log. Needs root.
# Usage: tools/guest/virtiofsd.sh DIR SOCKET [MORE VIRTIOFSD ARGS...]
#   default options: -o source=DIR -o cache=auto -o xattr
#   env PMFS_VIRTIOFSD (default /usr/lib/qemu/virtiofsd)
set -euo pipefail
if (( $# < 2 )); then
    sed -n '2,9s/^# \{0,1\}//p' "$0" >&2
    exit 2
fi
dir=$1 sock=$2
shift 2
bin=${PMFS_VIRTIOFSD:-/usr/lib/qemu/virtiofsd}
[[ -x "$bin" ]] || { echo "virtiofsd.sh: no $bin (apt-get install qemu-system-common)" >&2; exit 1; }
[[ -d "$dir" ]] || { echo "virtiofsd.sh: $dir is not a directory" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "virtiofsd.sh: virtiofsd needs root" >&2; exit 1; }

rm -f "$sock"
"$bin" --socket-path="$sock" -o source="$dir" -o cache=auto -o xattr "$@" </dev/null >"$sock.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
    [[ -S "$sock" ]] && { echo "$pid"; exit 0; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
echo "virtiofsd.sh: virtiofsd did not create $sock; its log:" >&2
cat "$sock.log" >&2
kill "$pid" 2>/dev/null || true
exit 1
