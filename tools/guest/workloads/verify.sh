# verify: for tools/guest/integrity.sh, in a later guest: checks what the
# integrity workload (and earlier guests) left under /mnt/$PMFS_DIR (pmfs.dir=,
# default integrity): every file against MANIFEST.sha256, which the host writes
# there (paths under files/), that no other file is there, and the SQLite
# database (integrity_check, contents, then a transaction that adds this boot's
# name to its boots table). Then writes a few files under files/boot-$PMFS_BOOT/
# and prints their "PMFS-GUEST: SUM <sha256> <path>" lines for the host to verify.
# pmfs.hostlock=1: the host holds a POSIX write lock on bytes 0-99 and a flock
# on locks/hostlock through its own mount; the guest must see both (pmfsd keeps
# one lock table for all its sessions).
TESTS="manifest sqlite host_locks write_more"

INTEGRITY_DIR=/mnt/${PMFS_DIR:-integrity}
# What integrity.sh's sqlite test leaves; each transaction here leaves it so too.
SQLITE_CONTENTS="count=4500 sum=11250000 u=643"

test_manifest() {
    m=$INTEGRITY_DIR/MANIFEST.sha256
    [ -s "$m" ] || fail "no manifest at $m"
    cd "$INTEGRITY_DIR/files"
    if ! sha256sum -c "$m" > /tmp/check.out 2>&1; then
        fail "sha256 check failed: $(grep -v ': OK$' /tmp/check.out | head -n 3 | tr '\n' ' ')"
    fi
    n=$(grep -c ': OK$' /tmp/check.out)
    expect_eq "files checked" "$n" "$(wc -l < "$m" | tr -d ' ')"
    find . -type f | sed 's|^\./||' | LC_ALL=C sort > /tmp/share.list
    sed 's/^[0-9a-f]\{64\}  //' "$m" | LC_ALL=C sort > /tmp/manifest.list
    cmp -s /tmp/share.list /tmp/manifest.list ||
        fail "files differ from the manifest: $(diff /tmp/manifest.list /tmp/share.list | grep '^[-+][^-+]' | head -n 3 | tr '\n' ' ')"
    echo "PMFS-GUEST: VERIFIED $n files"
}

test_sqlite() {
    db=$INTEGRITY_DIR/db.sqlite
    [ -s "$db" ] || fail "no database at $db"
    q="SELECT 'count=' || count(*) || ' sum=' || sum(k) || ' u=' || sum(v LIKE 'u%') FROM t;"
    expect_eq "integrity_check" "$(sqlite3 "$db" 'PRAGMA integrity_check;')" ok
    expect_eq "contents" "$(sqlite3 "$db" "$q")" "$SQLITE_CONTENTS"
    b=${PMFS_BOOT:-x}
    sqlite3 "$db" "BEGIN; INSERT INTO t VALUES(100000, 'x', randomblob(50000)); INSERT INTO boots VALUES('$b');
                   UPDATE t SET b = randomblob(300) WHERE k % 97 = 1; DELETE FROM t WHERE k = 100000; COMMIT;"
    drop_caches
    expect_eq "integrity_check after a transaction" "$(sqlite3 "$db" 'PRAGMA integrity_check;')" ok
    expect_eq "contents after a transaction" "$(sqlite3 "$db" "$q")" "$SQLITE_CONTENTS"
    expect_eq "this boot recorded" "$(sqlite3 "$db" "SELECT count(*) FROM boots WHERE name = '$b';")" 1
    [ ! -e "$db-journal" ] || fail "$db-journal left behind"
}

test_host_locks() {
    [ "${PMFS_HOSTLOCK:-0}" = 1 ] || skip "the host holds no lock in this run"
    f=$INTEGRITY_DIR/locks/hostlock
    got=$(gt getlk "$f" w 0 0)
    case "$got" in
        "w 0 100 pid "*) ;;
        *) fail "F_GETLK: got '$got', want the host's write lock on bytes 0-99" ;;
    esac
    expect_eq "F_SETLK inside the host's range" "$(lock_try "$f" w 50 10)" busy
    expect_eq "F_SETLK read lock inside the host's range" "$(lock_try "$f" r 0 1)" busy
    expect_eq "F_SETLK past the host's range" "$(lock_try "$f" w 100 10)" free
    expect_eq "flock the host holds" "$(lock_try "$f" ex)" busy
}

test_write_more() {
    b=boot-${PMFS_BOOT:-x}
    d=$INTEGRITY_DIR/files/$b
    mkdir "$d"
    for n in 1 4096 100000 $((2 * 1048576 + 17)); do
        head -c $n /dev/urandom > /tmp/w
        cat /tmp/w > "$d/w$n"
        gt fsync "$d/w$n"
        echo "PMFS-GUEST: SUM $(sha /tmp/w) $b/w$n"
    done
    gt fsync "$d"
}
