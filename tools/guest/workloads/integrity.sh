# integrity: writes a tree of random files of varied sizes and shapes (large,
# odd-sized, sparse, overwritten, appended, truncated, renamed, hard-linked, in
# nested directories) and an SQLite database, fsyncs them, and prints one line
# per file, "PMFS-GUEST: SUM <sha256> <path under files/>", plus
# "PMFS-GUEST: SQLITE count=N sum=S". The files stay in the share, under
# /mnt/$PMFS_DIR (pmfs.dir=, default integrity), for tools/guest/integrity.sh to
# verify on the host and in later guests; check.sh would fail it as leaving files.
# Every operation is done twice, on a reference tree in the guest's tmpfs and on
# the share, so each sum comes from the reference, not from what pmfs returns.
TESTS="files sqlite"

INTEGRITY_DIR=/mnt/${PMFS_DIR:-integrity}
REF=/tmp/integrity-ref

# rnd N: N random bytes in /tmp/rnd, to go to both trees.
rnd() { head -c "$1" /dev/urandom > /tmp/rnd; }
# both 'COMMAND': run it (eval) in the reference tree, then in the share's.
both() {
    (cd "$REF" && eval "$1") || fail "in the reference tree: $1"
    (cd "$INTEGRITY_DIR/files" && eval "$1") || fail "in the share: $1"
}
# put PATH SIZE: a new file of SIZE random bytes.
put() { rnd "$2"; both "cat /tmp/rnd > \"$1\""; }
# patch PATH OFFSET SIZE: overwrite SIZE random bytes at OFFSET (any alignment), keeping the rest.
patch() { rnd "$3"; both "dd if=/tmp/rnd of=\"$1\" bs=$3 seek=$2 oflag=seek_bytes conv=notrunc 2>/dev/null"; }

test_files() {
    [ ! -e "$INTEGRITY_DIR" ] || fail "$INTEGRITY_DIR already exists (the integrity run needs a fresh share)"
    mkdir -p "$INTEGRITY_DIR/files" "$REF"
    mib=1048576
    both 'mkdir -p small big sparse a/b/c/d/e many links renamed "dir with spaces" appended'
    put empty 0
    put one 1
    for n in 511 4095 4096 4097 12345 65537; do put "small/s$n" $n; done
    put big/1m-plus-1 $((mib + 1))
    put big/3m $((3 * mib))
    put big/5m-odd $((5 * mib + 333))
    put big/8m $((8 * mib))
    i=1
    for d in a a/b a/b/c a/b/c/d a/b/c/d/e; do put "$d/deep-$i" $((i * 1000 + 7)); i=$((i + 1)); done
    i=1
    while [ $i -le 10 ]; do put "many/f-$i" $((i * 1021 + i)); i=$((i + 1)); done
    put "dir with spaces/file with spaces.bin" 5000
    put "ünïcode-名前.dat" 3333

    # Sparse: data, holes and odd sizes.
    rnd 777;  both 'cat /tmp/rnd > sparse/hole-middle'
    rnd 4096; both 'dd if=/tmp/rnd of=sparse/hole-middle bs=4096 seek=512 conv=notrunc 2>/dev/null'
    both "truncate -s $((3 * mib + 123)) sparse/hole-middle"
    rnd 1000; both 'cat /tmp/rnd > sparse/tail-hole'
    both "truncate -s $((mib + 5)) sparse/tail-hole"
    both "truncate -s $((4 * mib + 1)) sparse/only-hole"
    both ': > sparse/scattered'
    for k in 0 7 100 513 1024; do
        rnd 4096; both "dd if=/tmp/rnd of=sparse/scattered bs=4096 seek=$k conv=notrunc 2>/dev/null"
    done
    patch sparse/scattered 5000 3000      # unaligned write into a hole

    # Overwrites at odd offsets, appends, a truncation.
    put overwritten $((2 * mib))
    patch overwritten 123457 10000
    patch overwritten 1048000 1000        # across a 1 MiB boundary
    i=1
    while [ $i -le 50 ]; do rnd $((i * 131 + 1)); both 'cat /tmp/rnd >> appended/log'; i=$((i + 1)); done
    put truncated $((2 * mib))
    both 'truncate -s 777777 truncated'

    # Renames and a hard link.
    put tmp-to-rename 70000
    both 'mv tmp-to-rename renamed/moved'
    both 'mv many/f-10 renamed/f-10-moved'
    both 'ln big/3m links/3m-link'

    # fsync every file and directory, then compare each against its reference
    # with the guest's caches dropped (so the data comes from the back end).
    cd "$INTEGRITY_DIR/files"
    find . -type f | while read -r f; do gt fsync "$f"; done
    find . -type d | while read -r d; do gt fsync "$d"; done
    gt fsync "$INTEGRITY_DIR"
    drop_caches
    n=0
    cd "$REF"
    find . -type f | sed 's|^\./||' | LC_ALL=C sort > /tmp/ref.list
    (cd "$INTEGRITY_DIR/files" && find . -type f | sed 's|^\./||' | LC_ALL=C sort) > /tmp/share.list
    cmp -s /tmp/ref.list /tmp/share.list || fail "files in the share differ from the reference: $(diff /tmp/ref.list /tmp/share.list | grep '^[-+][^-+]' | head -n 3 | tr '\n' ' ')"
    while read -r f; do
        want=$(sha "$f")
        got=$(sha "$INTEGRITY_DIR/files/$f")
        [ "$got" = "$want" ] || fail "$f: sha256 $got in the share, $want written"
        [ "$(stat -c %s "$INTEGRITY_DIR/files/$f")" = "$(stat -c %s "$f")" ] || fail "$f: size differs"
        echo "PMFS-GUEST: SUM $want $f"
        n=$((n + 1))
    done < /tmp/ref.list
    echo "PMFS-GUEST: FILES $n"
    [ "$n" -ge 30 ] || fail "only $n files"
    rm -rf "$REF"
}

# An SQLite database (rollback journal) with a few transactions; its content is
# checked by queries, not by sha256 (the page layout is sqlite's business).
test_sqlite() {
    command -v sqlite3 >/dev/null || fail "sqlite3 not in the initramfs"
    db=$INTEGRITY_DIR/db.sqlite
    # boots: one row per later guest (verify.sh), so the host sees every change.
    sqlite3 "$db" 'CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT, b BLOB); CREATE TABLE boots(name TEXT);'
    sqlite3 "$db" "BEGIN; WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i<5000)
                   INSERT INTO t SELECT i, 'v'||i, randomblob(200) FROM s; COMMIT;"
    sqlite3 "$db" 'DELETE FROM t WHERE k % 10 = 0;'
    sqlite3 "$db" "UPDATE t SET v = 'u'||k WHERE k % 7 = 0;"
    expect_eq "integrity_check" "$(sqlite3 "$db" 'PRAGMA integrity_check;')" ok
    drop_caches
    expect_eq "integrity_check after drop_caches" "$(sqlite3 "$db" 'PRAGMA integrity_check;')" ok
    got=$(sqlite3 "$db" "SELECT 'count=' || count(*) || ' sum=' || sum(k) || ' u=' || sum(v LIKE 'u%') FROM t;")
    expect_eq "contents" "$got" "count=4500 sum=11250000 u=643"
    gt fsync "$db"
    echo "PMFS-GUEST: SQLITE $got"
}
