# posix: a broader set of POSIX behaviours. Sizes are kept small enough for a
# TCG guest to finish in a couple of minutes; pmfs.big_mib= changes the large file.
TESTS="truncate chmod chown fifo append sparse large_file readdir_2000 rename_dir utimes excl mmap_shared sqlite"

test_truncate() {
    printf '0123456789' > f
    truncate -s 4 f
    expect_eq "after shrink" "$(cat f)" 0123
    truncate -s 8192 f
    expect_eq "size after grow" "$(stat -c %s f)" 8192
    expect_eq "grown tail is zeros" "$(dd if=f bs=1 skip=4 2>/dev/null | tr -d '\0' | wc -c)" 0
    drop_caches
    expect_eq "head after drop_caches" "$(head -c 4 f)" 0123
    truncate -s 0 f
    expect_eq "size after truncate to 0" "$(stat -c %s f)" 0
}

test_chmod() {
    : > f
    for m in 600 640 755 4755 2755 1777 000 644; do
        chmod "$m" f
        expect_eq "mode $m" "$(stat -c %a f)" "$(printf %o $((0$m)))"
    done
    mkdir d
    chmod 700 d
    expect_eq "directory mode" "$(stat -c %a d)" 700
}

test_chown() {
    : > f
    chown 1234:5678 f
    expect_eq "owner" "$(stat -c %u:%g f)" 1234:5678
    chown 0:0 f
    expect_eq "owner back to root" "$(stat -c %u:%g f)" 0:0
    ln -s f l
    chown -h 42:43 l
    expect_eq "symlink owner (lchown)" "$(stat -c %u:%g l)" 42:43
    expect_eq "target untouched" "$(stat -c %u:%g f)" 0:0
}

test_fifo() {
    mkfifo p
    expect_eq "type" "$(stat -c %F p)" fifo
    mknod q p
    expect_eq "type (mknod)" "$(stat -c %F q)" fifo
    # A fifo on the share is local to the guest: writer and reader meet in the guest kernel.
    (echo through-the-fifo > p) &
    expect_eq "data" "$(cat p)" through-the-fifo
    wait
    rm p q
}

test_append() {
    for i in $(seq 1 100); do echo "line $i" >> f; done
    expect_eq "lines" "$(wc -l < f)" 100
    expect_eq "content" "$(sha f)" "$(seq 1 100 | sed 's/^/line /' | sha)"
    drop_caches
    expect_eq "last line after drop_caches" "$(tail -n 1 f)" "line 100"
}

test_sparse() {
    echo start > f
    echo end | dd of=f bs=1M seek=16 conv=notrunc 2>/dev/null
    expect_eq "size" "$(stat -c %s f)" $((16 * 1048576 + 4))
    drop_caches
    expect_eq "hole reads zeros" "$(dd if=f bs=4096 skip=1 count=100 2>/dev/null | tr -d '\0' | wc -c)" 0
    expect_eq "tail" "$(tail -c 4 f)" end
}

test_large_file() {
    mib=${PMFS_BIG_MIB:-64}
    want=$(dd if=/dev/urandom bs=1M count="$mib" 2>/dev/null | tee f | sha)
    expect_eq "size" "$(stat -c %s f)" $((mib * 1048576))
    expect_eq "sha256 (cached)" "$(sha f)" "$want"
    drop_caches
    expect_eq "sha256 (after drop_caches)" "$(sha f)" "$want"
    cp f g
    drop_caches
    expect_eq "sha256 of a copy" "$(sha g)" "$want"
    expect_eq "1 MiB in the middle" "$(dd if=f bs=1M skip=$((mib / 2)) count=1 2>/dev/null | sha)" \
        "$(dd if=g bs=1M skip=$((mib / 2)) count=1 2>/dev/null | sha)"
}

test_readdir_2000() {
    n=2000
    mkdir d
    i=1
    while [ $i -le $n ]; do : > "d/entry-$i"; i=$((i + 1)); done
    drop_caches
    expect_eq "entries" "$(ls -A d | wc -l)" $n
    expect_eq "names" "$(ls -A d | sort | sha)" "$(seq 1 $n | sed 's/^/entry-/' | sort | sha)"
    expect_eq "find agrees" "$(find d -type f | wc -l)" $n
    rm -r d
    [ ! -e d ] || fail "d still exists after rm -r"
}

test_rename_dir() {
    mkdir -p a/x
    echo data > a/x/f
    mv a b
    expect_eq "file under the renamed directory" "$(cat b/x/f)" data
    mkdir c
    mv b/x c/
    expect_eq "moved subdirectory" "$(cat c/x/f)" data
    mkdir -p e/full && : > e/full/f
    expect_fail "rename over a non-empty directory" mv -T c e
}

test_utimes() {
    : > f
    touch -d '2001-02-03 04:05:06' f
    expect_eq "mtime" "$(date -u -d @"$(stat -c %Y f)" '+%Y-%m-%d %H:%M:%S')" "$(date -u -d '2001-02-03 04:05:06' '+%Y-%m-%d %H:%M:%S')"
    drop_caches
    expect_eq "mtime after drop_caches" "$(stat -c %Y f)" "$(date -d '2001-02-03 04:05:06' +%s)"
}

test_excl() {
    : > f
    set -C   # noclobber: > uses O_EXCL
    expect_fail "O_EXCL create of an existing file" sh -c 'set -C; : > f'
    : > g 2>/dev/null || fail "O_EXCL create of a new file failed"
    set +C
}

test_mmap_shared() {
    gt mmap f 1048576
}

test_sqlite() {
    command -v sqlite3 >/dev/null || skip "sqlite3 not in the initramfs"
    sqlite3 db.sqlite 'PRAGMA journal_mode=WAL; CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT);' >/dev/null
    sqlite3 db.sqlite "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i<2000) INSERT INTO t SELECT i, 'v'||i FROM s;"
    expect_eq "count" "$(sqlite3 db.sqlite 'SELECT count(*) FROM t;')" 2000
    sqlite3 db.sqlite 'PRAGMA wal_checkpoint(TRUNCATE);' >/dev/null
    expect_eq "integrity" "$(sqlite3 db.sqlite 'PRAGMA integrity_check;')" ok
    sqlite3 db.sqlite 'PRAGMA journal_mode=DELETE;' >/dev/null
    drop_caches
    expect_eq "sum" "$(sqlite3 db.sqlite 'SELECT sum(k) FROM t;')" 2001000
}
