# smoke: one quick check of each basic operation. Each test runs in its own
# empty directory (see lib.sh).
TESTS="create write_read stat rename unlink mkdir_rmdir symlink hardlink xattr fsync readdir statfs queues"

# 14,893 bytes: printf 'pmfs smoke %s\n' $(seq 1 1000)
SMOKE_SHA=e782748b849270885a425e1a441d399633fe17c86b07eb68a48e195d7858ef4e
smoke_content() { printf 'pmfs smoke %s\n' $(seq 1 1000); }

test_create() {
    : > f
    [ -f f ] || fail "f not a regular file after create"
    expect_eq size "$(stat -c %s f)" 0
    expect_eq listing "$(ls)" f
}

test_write_read() {
    smoke_content > f
    expect_eq "sha256 (cached)" "$(sha f)" "$SMOKE_SHA"
    drop_caches
    expect_eq "sha256 (after drop_caches)" "$(sha f)" "$SMOKE_SHA"
    expect_eq "bytes 1000-1015" "$(dd if=f bs=1 skip=1000 count=15 2>/dev/null)" "$(smoke_content | dd bs=1 skip=1000 count=15 2>/dev/null)"
}

test_stat() {
    smoke_content > f
    chmod 0644 f
    expect_eq "size" "$(stat -c %s f)" 14893
    expect_eq "type" "$(stat -c %F f)" "regular file"
    expect_eq "mode" "$(stat -c %a f)" 644
    expect_eq "links" "$(stat -c %h f)" 1
    now=$(date +%s)
    mtime=$(stat -c %Y f)
    [ $((now - mtime)) -lt 600 ] && [ $((mtime - now)) -lt 600 ] || fail "mtime $mtime far from now $now"
    [ "$(stat -c %F .)" = directory ] || fail "directory reported as $(stat -c %F .)"
}

test_rename() {
    smoke_content > a
    mv a b
    [ ! -e a ] || fail "a still exists after rename"
    expect_eq "sha256 b" "$(sha b)" "$SMOKE_SHA"
    echo other > c
    mv b c        # replaces an existing file
    expect_eq "sha256 c after rename over it" "$(sha c)" "$SMOKE_SHA"
    mkdir d
    mv c d/c      # across directories
    expect_eq "listing" "$(ls -R | tr '\n' ' ')" ".: d  ./d: c "
}

test_unlink() {
    echo x > f
    rm f
    [ ! -e f ] || fail "f still exists after unlink"
    expect_eq "listing" "$(ls -A)" ""
    expect_fail "cat after unlink" cat f
}

test_mkdir_rmdir() {
    mkdir -p a/b/c
    [ -d a/b/c ] || fail "a/b/c missing"
    expect_eq "links of a (2 + one subdir)" "$(stat -c %h a)" 3
    echo x > a/b/c/f
    expect_fail "rmdir of a non-empty directory" rmdir a/b/c
    rm a/b/c/f
    rmdir a/b/c a/b a
    expect_eq "listing" "$(ls -A)" ""
}

test_symlink() {
    smoke_content > target
    ln -s target link
    expect_eq "readlink" "$(readlink link)" target
    expect_eq "type" "$(stat -c %F link)" "symbolic link"
    expect_eq "sha256 through link" "$(sha link)" "$SMOKE_SHA"
    ln -s missing dangling
    expect_fail "open dangling link" cat dangling
    rm link
    [ -f target ] || fail "removing the link removed the target"
}

test_hardlink() {
    smoke_content > a
    ln a b
    expect_eq "links" "$(stat -c %h a)" 2
    expect_eq "same inode" "$(stat -c %i b)" "$(stat -c %i a)"
    echo appended >> b
    expect_eq "content seen through a" "$(tail -n 1 a)" appended
    rm a
    expect_eq "links after unlink" "$(stat -c %h b)" 1
}

test_xattr() {
    : > f
    gt setxattr f user.pmfs hello || { rc=$?; [ $rc -eq 77 ] && skip "xattrs not supported by the backend"; exit $rc; }
    expect_eq "getxattr" "$(gt getxattr f user.pmfs)" hello
    gt setxattr f user.pmfs world
    expect_eq "getxattr after replace" "$(gt getxattr f user.pmfs)" world
    gt listxattr f | grep -qx user.pmfs || fail "listxattr lacks user.pmfs: $(gt listxattr f | tr '\n' ' ')"
    gt removexattr f user.pmfs
    expect_fail "getxattr after remove" gt getxattr f user.pmfs
}

test_fsync() {
    smoke_content > f
    gt fsync f
    gt fdatasync f
    sync f
    drop_caches
    expect_eq "sha256 after fsync" "$(sha f)" "$SMOKE_SHA"
    gt fsync .   # a directory too
}

test_readdir() {
    for i in $(seq 1 50); do : > "f$i"; done
    mkdir sub
    ln -s f1 link
    expect_eq "entries" "$(ls -A | wc -l)" 52
    expect_eq "names" "$(ls -A | sort | sha)" "$( (seq 1 50 | sed 's/^/f/'; echo link; echo sub) | sort | sha)"
}

test_statfs() {
    line=$(df -k . | tail -n 1)
    total=$(echo "$line" | awk '{print $2}')
    [ "$total" -gt 0 ] 2>/dev/null || fail "df reports size '$total': $line"
}

# The device's request queues (run.sh's PMFS_GUEST_QUEUES, passed as pmfs.queues=)
# were all set up: the virtiofs driver names their interrupts requests.0 ... N-1.
# Linux 6.1 sends every request on the first one; 6.10+ sends each vCPU's on its
# own queue, so there, with as many vCPUs as queues, work on each vCPU must raise
# each queue's interrupt count.
test_queues() {
    n=$(grep -c -- '-requests\.[0-9]*$' /proc/interrupts || true)
    [ "$n" = "${PMFS_QUEUES:-1}" ] ||
        fail "$n request queue(s) in /proc/interrupts, want ${PMFS_QUEUES:-1}: $(grep -o 'virtio[0-9]*-.*' /proc/interrupts | tr '\n' ' ')"
    major=$(uname -r | cut -d. -f1) minor=$(uname -r | cut -d. -f2)
    [ "$n" -gt 1 ] && [ "$(nproc)" -ge "$n" ] && { [ "$major" -gt 6 ] || { [ "$major" -eq 6 ] && [ "$minor" -ge 10 ]; }; } || return 0
    before=$(queue_interrupts)
    cpu=0
    while [ "$cpu" -lt "$n" ]; do
        taskset -c "$cpu" sh -c 'i=0; while [ $i -lt 50 ]; do touch q.$i; rm q.$i; i=$((i + 1)); done'
        cpu=$((cpu + 1))
    done
    after=$(queue_interrupts)
    q=0
    for b in $before; do
        set -- $after; shift "$q"; a=$1
        [ "$a" -gt "$b" ] || fail "request queue $q: interrupts $b before, $a after work on every vCPU (all: $before -> $after)"
        q=$((q + 1))
    done
}

# Interrupt counts of the request queues, in queue order, summed over CPUs.
queue_interrupts() {
    grep -- '-requests\.[0-9]*$' /proc/interrupts |
        awk '{ s = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i; split($NF, q, "."); print q[2], s }' |
        sort -n | awk '{ printf "%s ", $2 }'
}
