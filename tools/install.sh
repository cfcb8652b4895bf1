#!/usr/bin/env bash
# Installs pmfs on this host: the binaries, the systemd units, an example
# configuration, QEMU's vhost-user descriptor, the manual pages and the docs; --uninstall removes exactly
# what an install put there (a list kept in $PREFIX/share/pmfs/installed-files).
#
# Usage: tools/install.sh [--prefix /usr/local] [--systemd-dir /etc/systemd/system]
#                         [--etc-dir /etc/pmfs] [--from BIN_DIR] [--no-man] [--uninstall]
#   --from BIN_DIR   install binaries already built there (default: a release build now)
#   --no-man         skip the manual pages (they need a release build of every tool)
# DESTDIR is honoured (for packaging); systemd is told to reload when it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v swift >/dev/null || export PATH="/opt/swift/usr/bin:$PATH"

prefix=/usr/local
systemd_dir=/etc/systemd/system
etc_dir=/etc/pmfs
from=""
man=1
uninstall=0
while (( $# )); do
    case $1 in
        --prefix) prefix=$2; shift ;;
        --systemd-dir) systemd_dir=$2; shift ;;
        --etc-dir) etc_dir=$2; shift ;;
        --from) from=$2; shift ;;
        --no-man) man=0 ;;
        --uninstall) uninstall=1 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
root=${DESTDIR:-}
manifest=$root$prefix/share/pmfs/installed-files
tools=(pmfsd pmfsctl mkfs.pmfs fsck.pmfs pmfs-inspect)

reload_systemd() {
    [[ -z $root && -d /run/systemd/system ]] && systemctl daemon-reload || true
}

if (( uninstall )); then
    [[ -f $manifest ]] || { echo "install.sh: nothing installed under $prefix (no $manifest)" >&2; exit 1; }
    while IFS= read -r f; do rm -f "$root$f"; done < "$manifest"
    rm -f "$manifest"
    # pmfs's own directories, if nothing else is in them now.
    for d in "$prefix/share/qemu/vhost-user" "$prefix/share/qemu" "$prefix/share/doc/pmfs/design" "$prefix/share/doc/pmfs" "$prefix/share/pmfs" "$etc_dir"; do
        rmdir "$root$d" 2>/dev/null || true
    done
    reload_systemd
    echo "install.sh: removed pmfs from $prefix"
    exit 0
fi

if [[ -z $from ]]; then
    swift build -c release --product pmfsd >/dev/null
    for t in "${tools[@]:1}"; do swift build -c release --product "$t" >/dev/null; done
    from=$(swift build -c release --show-bin-path)
fi
for t in "${tools[@]}"; do [[ -x $from/$t ]] || { echo "install.sh: $from/$t is missing" >&2; exit 1; }; done

installed=()
# put MODE SOURCE DEST: installs one file and records it.
put() {
    install -D -m "$1" "$2" "$root$3"
    installed+=("$3")
}
for t in "${tools[@]}"; do put 0755 "$from/$t" "$prefix/bin/$t"; done
docdir=$prefix/share/doc/pmfs
put 0644 README.md "$docdir/README.md"
for d in design/*.md; do put 0644 "$d" "$docdir/$d"; done
units=$(mktemp -d)
trap 'rm -rf "$units"' EXIT
for u in pmfsd@.service pmfsd@.socket; do
    sed "s|@BINDIR@|$prefix/bin|g; s|@DOCDIR@|$docdir|g" "tools/systemd/$u" > "$units/$u"
    put 0644 "$units/$u" "$systemd_dir/$u"
done
put 0644 tools/systemd/example.yaml "$etc_dir/example.yaml"
put 0644 tools/systemd/example.env "$etc_dir/example.env"
# QEMU's vhost-user back-end descriptor (docs/interop/vhost-user.json), which libvirt reads.
sed "s|@BINDIR@|$prefix/bin|g" tools/qemu/50-pmfs.json > "$units/50-pmfs.json"
put 0644 "$units/50-pmfs.json" "$prefix/share/qemu/vhost-user/50-pmfs.json"
if (( man )); then
    # The plugin runs each tool (--experimental-dump-help) from a build of its configuration.
    config=release
    [[ $(basename "$from") == debug ]] && config=debug
    mkdir -p "$units/man"
    swift package --allow-writing-to-directory "$units" generate-manual --configuration "$config" --output-directory "$units/man" >/dev/null
    for t in "${tools[@]}"; do
        [[ -f $units/man/$t.1 ]] && put 0644 "$units/man/$t.1" "$prefix/share/man/man1/$t.1"
    done
fi
mkdir -p "$(dirname "$manifest")"
printf '%s\n' "${installed[@]}" > "$manifest"
reload_systemd
echo "install.sh: installed ${#installed[@]} files under $prefix, $systemd_dir and $etc_dir (list: $manifest)"
echo "install.sh: next: a pool (mkfs.pmfs), /etc/pmfs/NAME.yaml (from example.yaml), systemctl enable --now pmfsd@NAME.socket pmfsd@NAME.service"
