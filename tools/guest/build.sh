#!/usr/bin/env bash
# Builds the test guest: Debian 12's kernel (as an uncompressed vmlinux, which
# boots about twice as fast under TCG), the virtio-fs modules, and a busybox
# initramfs with the workloads. Safe to run again: the kernel is fetched once,
# the initramfs is rebuilt only when its inputs change.
# Usage: tools/guest/build.sh            (output in $PMFS_GUEST_DIR, default .guest/)
# Env:   PMFS_GUEST_DIR          where the output goes (default .guest/, or .guest-backports/
#                                for the backports kernel)
#        PMFS_GUEST_KERNEL_SUITE bookworm (default: Debian 12's 6.1) or bookworm-backports
#                                (6.12, whose virtiofs spreads requests over several queues);
#                                the backports suite is used for this one download only
#        PMFS_GUEST_KERNEL_PKG   kernel package (default: what the suite's linux-image-amd64
#                                depends on)
#        PMFS_GUEST_EXTRA_BINS   more host programs to copy in with their libraries
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
suite=${PMFS_GUEST_KERNEL_SUITE:-bookworm}
case $suite in
    bookworm) default_out=$repo/.guest ;;
    bookworm-backports) default_out=$repo/.guest-backports ;;
    *) echo "guest/build: PMFS_GUEST_KERNEL_SUITE=$suite: use bookworm or bookworm-backports" >&2; exit 2 ;;
esac
out=${PMFS_GUEST_DIR:-$default_out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
log() { echo "guest/build: $*" >&2; }

# Modules the guest needs; their dependencies are added and ordered below.
root_modules=(virtio_pci virtiofs)

# 1. Host packages. sqlite3 and fio are copied into the guest (posix and integrity use them).
packages=(qemu-system-x86 qemu-system-common busybox-static cpio gcc libc6-dev python3 xz-utils sqlite3 fio)
as_root=()
[[ $(id -u) -eq 0 ]] || as_root=(sudo)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
updated=0
if (( ${#missing[@]} )); then
    log "installing ${missing[*]}"
    "${as_root[@]}" apt-get update -qq
    updated=1
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
[[ -x /usr/lib/qemu/virtiofsd ]] || log "warning: /usr/lib/qemu/virtiofsd missing (qemu-system-common)"

# 2. Kernel package: download once; keep the vmlinuz and the modules we load
#    (dependencies first, from each .ko's modinfo "depends="), drop the rest.
# The backports suite gets its own apt lists and cache under $out/apt, so the
# host's package sources stay as they are.
apt_opts=()
if [[ $suite != bookworm ]]; then
    apt_dir="$out/apt"
    mkdir -p "$apt_dir/sources" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$suite" > "$apt_dir/sources/$suite.sources"
    apt_opts=(-o Dir::Etc::sourcelist=/dev/null -o "Dir::Etc::sourceparts=$apt_dir/sources"
              -o "Dir::State::lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")
fi
kdir="$out/kernel"
if [[ ! -f "$kdir/done" || "$(cat "$kdir/roots" 2>/dev/null)" != "${root_modules[*]}" ]]; then
    pkg=${PMFS_GUEST_KERNEL_PKG:-}
    if [[ -z "$pkg" ]]; then
        if (( ${#apt_opts[@]} )); then "${as_root[@]}" apt-get "${apt_opts[@]}" update -qq
        elif (( ! updated )); then "${as_root[@]}" apt-get update -qq; fi
        pkg=$(apt-cache "${apt_opts[@]}" depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
        [[ -n "$pkg" ]] || { log "cannot find the kernel package behind linux-image-amd64 in $suite"; exit 1; }
    fi
    log "fetching $pkg ($suite)"
    rm -rf "$kdir" "$out/download"
    mkdir -p "$out/download" "$kdir/modules"
    # apt downloads as _apt when that user can write the directory, else as root with a warning.
    (cd "$out/download" && apt-get "${apt_opts[@]}" download -qq "$pkg" 2> >(grep -v 'unsandboxed as root' >&2))
    dpkg-deb -x "$out/download"/*.deb "$out/download/root"
    kver=$(ls "$out/download/root/lib/modules")
    moddir="$out/download/root/lib/modules/$kver"
    cp "$out/download/root/boot/vmlinuz-$kver" "$kdir/vmlinuz"

    declare -A seen=()
    order=()
    # A module may be built in (6.12 builds virtio_pci and virtiofs in) or
    # xz-compressed (6.12's .ko.xz): busybox insmod wants a plain .ko.
    add_module() {
        local m=$1 f deps d
        [[ -n "${seen[$m]:-}" ]] && return
        seen[$m]=1
        if grep -qE "/${m//_/[-_]}\.ko\$" "$moddir/modules.builtin" 2>/dev/null; then return; fi
        f=$(find "$moddir/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" \) -print -quit)
        [[ -n "$f" ]] || { log "module $m not in $moddir"; exit 1; }
        if [[ $f == *.xz ]]; then xz -dc "$f" > "$kdir/modules/$m.ko"; else cp "$f" "$kdir/modules/"; fi
        deps=$(tr '\0' '\n' < "$kdir/modules/$m.ko" | sed -n 's/^depends=//p' | head -n 1)
        for d in ${deps//,/ }; do add_module "${d//-/_}"; done
        order+=("$m")
    }
    for m in "${root_modules[@]}"; do add_module "$m"; done
    : > "$kdir/modules.order"
    (( ${#order[@]} == 0 )) || printf '%s\n' "${order[@]}" > "$kdir/modules.order"
    echo "$kver" > "$kdir/version"
    echo "$pkg" > "$kdir/package"
    echo "${root_modules[*]}" > "$kdir/roots"
    rm -rf "$out/download"
    touch "$kdir/done"
fi
kver=$(cat "$kdir/version")
mapfile -t order < "$kdir/modules.order"

# 3. Uncompressed vmlinux: the bzImage's payload (at setup_sects + payload_offset,
#    boot protocol 2.08+) decompressed; an ELF with a PVH entry QEMU can boot directly.
if [[ ! -f "$kdir/vmlinux" ]]; then
    log "decompressing the kernel"
    python3 - "$kdir/vmlinuz" "$kdir/vmlinux.tmp" <<'EOF'
import gzip, lzma, struct, subprocess, sys, zlib
src, dst = sys.argv[1], sys.argv[2]
img = open(src, "rb").read()
if img[0x202:0x206] != b"HdrS":
    sys.exit("not a bzImage: " + src)
setup_sects = img[0x1F1] or 4
payload_offset, payload_length = struct.unpack_from("<II", img, 0x248)
start = (setup_sects + 1) * 512 + payload_offset
payload = img[start:start + payload_length]
magic = payload[:6]
if magic.startswith(b"\xfd7zXZ\x00"):
    data = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
elif magic.startswith(b"\x1f\x8b"):
    data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
elif magic.startswith(b"\x5d\x00\x00"):
    data = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload)
elif magic.startswith(b"\x28\xb5\x2f\xfd"):
    data = subprocess.run(["zstd", "-dc"], input=payload[:-4], capture_output=True, check=True).stdout
else:
    sys.exit("unknown kernel compression, magic " + magic.hex())
if data[:4] != b"\x7fELF":
    sys.exit("decompressed kernel is not an ELF file")
open(dst, "wb").write(data)
EOF
    mv "$kdir/vmlinux.tmp" "$kdir/vmlinux"
fi

# 4. The guest tool, static.
gt="$out/gt"
if [[ ! -x "$gt" || "$here/gt.c" -nt "$gt" ]]; then
    log "compiling gt"
    gcc -static -O2 -Wall -Wextra -o "$gt.tmp" "$here/gt.c"
    mv "$gt.tmp" "$gt"
fi

# 5. Initramfs, rebuilt when an input changed.
extra_bins=(sqlite3 fio ${PMFS_GUEST_EXTRA_BINS:-})
inputs_sum=$( {
    echo "$kver ${order[*]} ${extra_bins[*]}"
    sha256sum "$here/init" "$here/lib.sh" "$here"/workloads/*.sh "$gt" /bin/busybox
    for b in "${extra_bins[@]}"; do p=$(command -v "$b" || true); if [[ -n "$p" ]]; then sha256sum "$p"; fi; done
} | sha256sum | cut -d' ' -f1)
if [[ -f "$out/initramfs.cpio.gz" && "$(cat "$out/initramfs.sum" 2>/dev/null)" == "$inputs_sum" ]]; then
    log "up to date in $out (kernel $kver)"
    exit 0
fi

log "building the initramfs"
staging="$out/initramfs"
rm -rf "$staging"
mkdir -p "$staging"/{bin,sbin,dev,proc,sys,tmp,mnt,pmfs/modules,pmfs/workloads}
cp /bin/busybox "$staging/bin/busybox"
ln -s busybox "$staging/bin/sh"
cp "$gt" "$staging/bin/gt"
install -m 0755 "$here/init" "$staging/init"
cp "$here/lib.sh" "$staging/pmfs/lib.sh"
cp "$here"/workloads/*.sh "$staging/pmfs/workloads/"
for m in "${order[@]}"; do cp "$kdir/modules/$m.ko" "$staging/pmfs/modules/"; done
cp "$kdir/modules.order" "$staging/pmfs/modules.order"

# Dynamic programs: the binary plus every library ldd names, at the same paths.
copy_with_libs() {
    local bin=$1 lib
    cp "$bin" "$staging/bin/"
    for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
        mkdir -p "$staging$(dirname "$lib")"
        cp -L "$lib" "$staging$lib"
    done
}
included=()
for b in "${extra_bins[@]}"; do
    p=$(command -v "$b" || true)
    if [[ -n "$p" ]]; then copy_with_libs "$p"; included+=("$b"); fi
done

(cd "$staging" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) | gzip -1 > "$out/initramfs.cpio.gz.tmp"
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
echo "$inputs_sum" > "$out/initramfs.sum"
rm -rf "$staging"
log "done in $out: kernel $kver, modules ${order[*]}, extra programs: ${included[*]:-none}," \
    "initramfs $(du -h "$out/initramfs.cpio.gz" | cut -f1)"
