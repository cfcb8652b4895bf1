#!/usr/bin/env bash
# Installs what pmfs needs to build and test on a fresh Debian 12 machine.
# Run as root (or with sudo available). Safe to run again: it installs only
# what is missing.
set -euo pipefail

# PMDK (libpmemobj, libpmem) holds the metadata; liburing drives the data
# device; libseccomp loads pmfsd's system-call allow-list; pmdk-tools gives
# pmempool for looking at pools by hand. The mount tests drive real programs
# (sqlite3, git, tar, rsync, fio) through a pmfs mount.
packages=(libpmemobj-dev libpmem-dev liburing-dev libseccomp-dev pmdk-tools pkg-config build-essential git
          sqlite3 rsync tar attr e2fsprogs util-linux python3 fio)

as_root=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "setup.sh: run as root (or install sudo)" >&2; exit 1; }
    as_root=(sudo)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
    echo "setup.sh: installing ${missing[*]}"
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
    echo "setup.sh: system packages already installed"
fi

# The Swift toolchain is not a Debian package; these machines have it in /opt/swift.
if ! command -v swift >/dev/null; then
    if [[ -x /opt/swift/usr/bin/swift ]]; then
        # For later login shells; tools/*.sh find it on their own.
        echo 'case ":$PATH:" in *:/opt/swift/usr/bin:*) ;; *) export PATH="/opt/swift/usr/bin:$PATH" ;; esac' |
            "${as_root[@]}" tee /etc/profile.d/pmfs-swift.sh >/dev/null
        export PATH="/opt/swift/usr/bin:$PATH"
        echo "setup.sh: Swift is in /opt/swift/usr/bin (added to PATH in /etc/profile.d/pmfs-swift.sh;" \
             "run 'export PATH=/opt/swift/usr/bin:\$PATH' in this shell)"
    else
        echo "setup.sh: no Swift toolchain found (need Swift 6.1 or later, e.g. in /opt/swift)" >&2
        exit 1
    fi
fi
echo "setup.sh: $(swift --version 2>/dev/null | head -n 1)"
