# export: a guest served an export (pmfsd --socket S,export=/DIR,...) sees that
# directory as its whole share and nothing beside it. The host put a file "owner"
# holding the export's name (pmfs.owner=) and a file "data" into it beforehand.
#   pmfs.owner=NAME     the export's name, in /mnt/owner
#   pmfs.readonly=1     the export is read-only: every change fails with EROFS
#   pmfs.mapped_uid=N   the export has a uid map: files the host's root owns show
#                       as 65534 and our own new files as root here (the host
#                       checks they are N there)
TESTS="own_tree no_other_tree read change ids"

# The share's entries other than the workloads' own directories.
share_entries() { ls -a /mnt | grep -v '^pmfs-guest\.' | grep -vx '\.\|\.\.' | sort | tr '\n' ' '; }

test_own_tree() {
    expect_eq owner "$(cat /mnt/owner)" "$PMFS_OWNER"
    expect_eq entries "$(share_entries)" "data owner "
}

test_no_other_tree() {
    # Nothing of the rest of the tree is reachable: no other export's owner file.
    found=$(find /mnt -name owner -exec cat {} \; 2>/dev/null | sort | tr '\n' ' ')
    expect_eq "owner files" "$found" "$PMFS_OWNER "
}

test_read() {
    expect_eq data "$(sha256sum /mnt/data | cut -d' ' -f1)" "$(printf 'export %s\n' "$PMFS_OWNER" | sha256sum | cut -d' ' -f1)"
}

test_change() {
    if [ "${PMFS_READONLY:-0}" = 1 ]; then
        expect_fail "create" sh -c ': > /mnt/new'
        expect_fail "mkdir" mkdir /mnt/newdir
        expect_fail "unlink" rm -f /mnt/data
        expect_fail "rename" mv /mnt/data /mnt/data2
        expect_fail "write" sh -c 'echo x >> /mnt/data'
        err=$(mkdir /mnt/newdir 2>&1 || true)
        case $err in *"Read-only file system"*) ;; *) fail "mkdir: want EROFS, got: $err" ;; esac
        expect_eq entries "$(share_entries)" "data owner "
        return 0
    fi
    printf 'written by %s\n' "$PMFS_OWNER" > /mnt/guest-wrote
    sync
    expect_eq "read back" "$(cat /mnt/guest-wrote)" "written by $PMFS_OWNER"
}

test_ids() {
    [ -n "${PMFS_MAPPED_UID:-}" ] || skip "no uid map on this export"
    expect_eq "host root's file" "$(stat -c %u /mnt/owner)" 65534
    if [ "${PMFS_READONLY:-0}" != 1 ]; then expect_eq "our file" "$(stat -c %u /mnt/guest-wrote)" 0; fi
}
