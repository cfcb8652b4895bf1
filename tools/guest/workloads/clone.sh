# clone: a guest served a writable clone of a base tree (pmfsctl snapshot base
# NAME, then --socket S,export=/NAME) runs the program the tree holds and
# changes its copy; the host then checks that the base and the other clone did
# not see it. The host's base tree: bin/workload.sh, etc/hostname ("base"),
# data/big (1 MiB), data/log, data/remove-me.
#   pmfs.owner=NAME     the clone's name
TESTS="starts_from_base runs_its_program sees_its_changes"

test_starts_from_base() {
    expect_eq hostname "$(cat /mnt/etc/hostname)" base
    expect_eq "log lines" "$(wc -l < /mnt/data/log)" 1
    [ -f /mnt/data/remove-me ] || fail "data/remove-me missing before the workload"
}

test_runs_its_program() {
    # The program is part of the cloned tree: booting a workload from the clone.
    sh /mnt/bin/workload.sh "$PMFS_OWNER" || fail "bin/workload.sh exited $?"
    sync
}

test_sees_its_changes() {
    expect_eq hostname "$(cat /mnt/etc/hostname)" "$PMFS_OWNER"
    expect_eq "log" "$(tail -n 1 /mnt/data/log)" "ran in $PMFS_OWNER"
    [ ! -e /mnt/data/remove-me ] || fail "data/remove-me still there"
    expect_eq "new file" "$(cat /mnt/data/new)" "made by $PMFS_OWNER"
    # The block the program rewrote in the middle of the shared 1 MiB file.
    expect_eq "rewritten block" "$(dd if=/mnt/data/big bs=4096 skip=128 count=1 2>/dev/null | tr -d '\n' | cut -c1-3)" \
        "$(printf '%s' "$PMFS_OWNER" | cut -c1-3)"
}
