#!/usr/bin/env bash
# Builds everything and runs the whole test suite: the Swift tests (engine,
# checker, data tier, crash tests, tools, transports), the mount tests (a real
# pmfsd host mount driven through the kernel and by real programs, and 12 points of
# the kill -9 crash campaign, tools/crash), and a real
# QEMU guest on pmfsd's vhost-user-fs socket (smoke, posix, and the integrity run
# through restarts and a killed QEMU). Exits non-zero on any failure.
# PMFS_TEST_SKIP_GUEST=1 skips the guest (it installs QEMU and a Debian kernel).
# After the Swift tests, a bounded fuzz run (tools/fuzz: the FUSE engine over a
# real pool, the descriptor walker, the vhost-user control plane; about 2
# minutes, built in .build-fuzz).
# PMFS_TEST_SKIP_FUZZ=1 skips it; PMFS_FUZZ_SECONDS sets each target's run time.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v swift >/dev/null || export PATH="/opt/swift/usr/bin:$PATH"

# Test pools live on /dev/shm: emulated persistent memory (the tests set this too).
export PMEM_IS_PMEM_FORCE=1

swift build --build-tests
swift test "$@"

if [[ ${PMFS_TEST_SKIP_FUZZ:-0} != 1 ]]; then
    tools/fuzz/run.sh
fi

if [[ -d Tests/mount ]]; then
    python3 -m pytest --version >/dev/null 2>&1 || python3 -m pip install -q pytest
    # Both host transports. The full suite runs on what pmfsd picks by default
    # (auto): FUSE over io_uring on a kernel that has it, asserted (uring makes
    # every pmfsd prove requests came through the rings); /dev/fuse read/write,
    # the fallback on older kernels, gets the I/O, name and lock tests
    # (about a minute more), with the data on the inline engine (the suite's
    # data files are in /var/tmp, where auto picks io_uring; inline is what
    # memory-backed media get).
    # Without io_uring in the kernel, all on /dev/fuse.
    modprobe -q fuse 2>/dev/null || true
    if [[ -e /sys/module/fuse/parameters/enable_uring ]]; then
        PMFS_FUSE_TRANSPORT=uring python3 -m pytest -q Tests/mount
        PMFS_FUSE_TRANSPORT=device PMFSD_ARGS="${PMFSD_ARGS:-} --io-engine inline" \
            python3 -m pytest -q Tests/mount/test_io.py Tests/mount/test_names.py Tests/mount/test_locks.py
    else
        echo "test.sh: this kernel has no FUSE over io_uring: mount tests on /dev/fuse only"
        PMFS_FUSE_TRANSPORT=device python3 -m pytest -q Tests/mount
    fi
fi

if [[ ${PMFS_TEST_SKIP_GUEST:-0} != 1 ]]; then
    # The binaries just built, not an older release build. About 2 minutes under
    # TCG: smoke and posix on one request queue, the integrity run on two, two
    # exports, two crash points, smoke on a 6.12 guest with two vCPUs and two queues.
    export PMFS_BIN="$PWD/.build/debug"
    # Locks in pmfsd's shared table (a lone guest would keep them in its kernel).
    PMFS_GUEST_PMFSD_ARGS="--locks shared" PMFS_GUEST_BACKEND="$PWD/tools/guest/pmfsd.sh" tools/guest/check.sh smoke posix
    PMFS_GUEST_QUEUES=2 tools/guest/integrity.sh
    # Two VMs at once, each confined to its export (one read-only, one uid-mapped).
    tools/guest/exports.sh
    # Two VMs started the libvirt way (pmfsd --fd=N -o source=...), handed to one pmfsd.
    tools/guest/libvirt.sh
    # A VM writing while the configuration is reloaded: a socket added (a second VM served), a bad file, the socket dropped.
    tools/guest/reload.sh
    # Two VMs from two writable clones of one base tree (pmfsctl snapshot): each sees only its own changes.
    tools/guest/clones.sh
    # pmfsd killed with SIGKILL under a guest's fsyncs, twice: what the guest saw return stays.
    tools/guest/crash.sh 2
    # Linux 6.12 (bookworm-backports) spreads requests over the queues by vCPU:
    # smoke on 2 vCPUs and 2 queues checks that both carry requests.
    PMFS_GUEST_KERNEL_SUITE=bookworm-backports tools/guest/build.sh
    PMFS_GUEST_DIR="$PWD/.guest-backports" PMFS_GUEST_SMP=2 PMFS_GUEST_QUEUES=2 \
        PMFS_GUEST_BACKEND="$PWD/tools/guest/pmfsd.sh" tools/guest/check.sh smoke
fi
