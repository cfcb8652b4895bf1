#!/usr/bin/env bash
# Data-tier benchmark: pmfs against plain ext4 file I/O on the same disk, one run, and the
# first write to a block shared with a clone (copy-on-write) against one to an unshared block.
# Usage: tools/bench/data.sh [DIRECTORY-ON-DISK] [FILE-MiB]
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v swift >/dev/null || export PATH="/opt/swift/usr/bin:$PATH"
swift build -c release --product pmfs-bench-data >/dev/null
exec .build/release/pmfs-bench-data "${1:-/var/tmp}" "${2:-1024}"
