#!/bin/bash
# Builds libfuse's own example server, passthrough_ll (Debian's fuse3 source
# package, the libfuse 3.14 that Debian 12 ships), for tools/bench/mount.py
# --libfuse: a FUSE server that only passes each request on to a kernel file
# system shows what the FUSE round trips cost on this kernel, apart from pmfs.
# Prints the binary's path; built once into .build-bench/libfuse.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=$ROOT/.build-bench/libfuse
BIN=$OUT/passthrough_ll
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
mkdir -p "$OUT/lists/partial" "$OUT/src"
command -v gcc >/dev/null && command -v pkg-config >/dev/null && dpkg -s libfuse3-dev >/dev/null 2>&1 || {
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libfuse3-dev pkg-config xz-utils >&2
}
# The source package comes through a list of its own: the machine's
# sources.list has no deb-src lines and stays as it is.
cat > "$OUT/src.sources" <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
APT=(-o Dir::Etc::SourceList="$OUT/src.sources" -o Dir::Etc::SourceParts=/nonexistent -o Dir::State::Lists="$OUT/lists")
apt-get "${APT[@]}" update -qq >&2
(cd "$OUT/src" && apt-get "${APT[@]}" source --download-only -qq fuse3 >&2 2>/dev/null)
tar -C "$OUT/src" -xf "$OUT"/src/fuse3_*.orig.tar.xz
EXAMPLE=$(ls -d "$OUT"/src/fuse-*/example | head -1)
gcc -O2 -o "$BIN" "$EXAMPLE/passthrough_ll.c" $(pkg-config --cflags --libs fuse3)
echo "$BIN"
