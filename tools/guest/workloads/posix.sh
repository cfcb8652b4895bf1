# posix: a broader set of POSIX behaviours. Sizes are kept small enough for a
# TCG guest to finish in a couple of minutes; pmfs.big_mib= changes the large file.
TESTS="truncate chmod chown fifo append sparse large_file readdir_2000 rename_dir utimes excl mmap_shared
       posix_locks setlkw flock fallocate sqlite fio_verify"

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

# POSIX record locks between processes of the guest (fcntl F_SETLK/F_GETLK, which
# the guest kernel forwards to the back end: pmfs keeps the lock table).
test_posix_locks() {
    : > f
    holder_start a 7 f w 0 100
    pid=$(holder_pid a)
    expect_eq "F_GETLK over A's range" "$(gt getlk f w 0 0)" "w 0 100 pid $pid"
    expect_eq "F_GETLK for a read lock inside it" "$(gt getlk f r 50 10)" "w 0 100 pid $pid"
    expect_eq "F_GETLK past A's range" "$(gt getlk f w 100 0)" unlocked
    expect_eq "F_SETLK inside A's range" "$(lock_try f w 50 10)" busy
    expect_eq "F_SETLK read lock inside A's range" "$(lock_try f r 99 1)" busy
    expect_eq "F_SETLK past A's range" "$(lock_try f w 100 50)" free
    holder_cmd a 7 unlock
    expect_eq "F_GETLK after A's unlock" "$(gt getlk f w 0 0)" unlocked
    holder_end 7; wait

    # Read locks share; a write lock conflicts with them.
    holder_start b 8 f r 0 0
    pid=$(holder_pid b)
    expect_eq "second read lock" "$(lock_try f r 0 0)" free
    expect_eq "write lock over a read lock" "$(lock_try f w 10 10)" busy
    expect_eq "F_GETLK shows the read lock" "$(gt getlk f w 0 0)" "r 0 0 pid $pid"
    holder_end 8; wait
    expect_eq "released when the holder exits" "$(gt getlk f w 0 0)" unlocked

    # POSIX: closing any descriptor of the file drops the process's locks (FLUSH).
    holder_start a 7 f w 0 0
    holder_pid a >/dev/null
    expect_eq "held" "$(lock_try f w 0 0)" busy
    holder_cmd a 7 close-other
    expect_eq "after closing another descriptor" "$(gt getlk f w 0 0)" unlocked
    expect_eq "lock after close-other" "$(lock_try f w 0 0)" free
    holder_end 7; wait
}

# F_SETLKW waits in the back end until the conflicting lock goes away.
test_setlkw() {
    : > f
    holder_start a 7 f w 0 0
    holder_pid a >/dev/null
    holder_start w 8 f W 0 0
    sleep 1
    [ ! -s w.out ] || fail "F_SETLKW returned while the lock was held: $(cat w.out)"
    holder_cmd a 7 unlock
    pid=$(holder_pid w)
    expect_eq "F_GETLK shows the waiter's lock" "$(gt getlk f r 0 0)" "w 0 0 pid $pid"
    holder_end 8
    holder_end 7; wait
    expect_eq "all released" "$(gt getlk f w 0 0)" unlocked
}

# flock: whole-file locks per open file, independent of record locks (as on Linux).
test_flock() {
    : > f
    holder_start a 7 f ex
    holder_pid a >/dev/null
    expect_eq "flock ex over ex" "$(lock_try f ex)" busy
    expect_eq "flock sh over ex" "$(lock_try f sh)" busy
    expect_eq "fcntl lock beside flock" "$(lock_try f w 0 0)" free
    holder_cmd a 7 unlock
    expect_eq "flock ex after LOCK_UN" "$(lock_try f ex)" free
    holder_end 7; wait

    holder_start b 8 f sh
    holder_pid b >/dev/null
    expect_eq "flock sh over sh" "$(lock_try f sh)" free
    expect_eq "flock ex over sh" "$(lock_try f ex)" busy
    # Blocking LOCK_EX waits for the shared lock to go.
    holder_start w 9 f EX
    sleep 1
    [ ! -s w.out ] || fail "blocking flock returned while a shared lock was held: $(cat w.out)"
    holder_cmd b 8 unlock
    holder_pid w >/dev/null
    expect_eq "held by the waiter" "$(lock_try f sh)" busy
    # Closing the file drops its flock; FUSE sends that RELEASE asynchronously,
    # so give it a moment (a lock never released still fails).
    holder_cmd w 9 close
    i=0
    while [ "$(lock_try f ex)" != free ]; do
        i=$((i + 1)); [ $i -le 20 ] || fail "flock still held 2 s after its file was closed"
        sleep 0.1
    done
    holder_end 9; holder_end 8; wait
}

test_fallocate() {
    mib=1048576
    # Mode 0: allocates, extends the size, reads zeros.
    gt fallocate f 0 0 $mib
    expect_eq "size after fallocate" "$(stat -c %s f)" $mib
    [ "$(stat -c %b f)" -ge 2048 ] || fail "fallocate 1 MiB: only $(stat -c %b f) blocks"
    expect_eq "reads zeros" "$(sha f)" "$(head -c $mib /dev/zero | sha)"
    # KEEP_SIZE: allocates past the end, the size stays.
    printf abc > k
    gt fallocate k keep 0 $mib
    expect_eq "size with KEEP_SIZE" "$(stat -c %s k)" 3
    [ "$(stat -c %b k)" -ge 2048 ] || fail "fallocate KEEP_SIZE 1 MiB: only $(stat -c %b k) blocks"
    expect_eq "content with KEEP_SIZE" "$(cat k)" abc
    # PUNCH_HOLE: the range reads zeros, its blocks are freed, the size stays.
    head -c $((3 * mib)) /dev/urandom > orig
    cp orig p
    gt fsync p
    before=$(stat -c %b p)
    gt fallocate p punch $mib $mib
    expect_eq "size after punch" "$(stat -c %s p)" $((3 * mib))
    after=$(stat -c %b p)
    [ "$after" -le $((before - 2048)) ] || fail "punching 1 MiB: blocks $before -> $after"
    want=$( { head -c $mib orig; head -c $mib /dev/zero; tail -c $mib orig; } | sha)
    expect_eq "content after punch" "$(sha p)" "$want"
    expect_eq "SEEK_HOLE" "$(gt seek p hole 0)" $mib
    expect_eq "SEEK_DATA" "$(gt seek p data $mib)" $((2 * mib))
    # Unaligned punch: partial blocks are zeroed in place.
    gt fallocate p punch 5000 100
    want=$( { head -c 5000 orig; head -c 100 /dev/zero; tail -c +5101 orig | head -c $((mib - 5100));
              head -c $mib /dev/zero; tail -c $mib orig; } | sha)
    expect_eq "content after an unaligned punch" "$(sha p)" "$want"
    # ZERO_RANGE with KEEP_SIZE over the tail.
    gt fallocate p zero-keep $((3 * mib - 10)) 100
    expect_eq "size after ZERO_RANGE|KEEP_SIZE" "$(stat -c %s p)" $((3 * mib))
    expect_eq "tail after ZERO_RANGE" "$(tail -c 10 p | od -An -tx1 | tr -d ' \n')" 00000000000000000000
    drop_caches
    want=$( { head -c 5000 orig; head -c 100 /dev/zero; tail -c +5101 orig | head -c $((mib - 5100));
              head -c $mib /dev/zero; tail -c $mib orig | head -c $((mib - 10)); head -c 10 /dev/zero; } | sha)
    expect_eq "content after drop_caches" "$(sha p)" "$want"
}

test_sqlite() {
    # build.sh installs sqlite3 on the host and copies it in: missing is a failure.
    command -v sqlite3 >/dev/null || fail "sqlite3 not in the initramfs"
    sqlite3 db.sqlite 'PRAGMA journal_mode=WAL; CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT);' >/dev/null
    sqlite3 db.sqlite "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i<2000) INSERT INTO t SELECT i, 'v'||i FROM s;"
    expect_eq "count" "$(sqlite3 db.sqlite 'SELECT count(*) FROM t;')" 2000
    sqlite3 db.sqlite 'PRAGMA wal_checkpoint(TRUNCATE);' >/dev/null
    expect_eq "integrity" "$(sqlite3 db.sqlite 'PRAGMA integrity_check;')" ok
    sqlite3 db.sqlite 'PRAGMA journal_mode=DELETE;' >/dev/null
    drop_caches
    expect_eq "sum" "$(sqlite3 db.sqlite 'SELECT sum(k) FROM t;')" 2001000
}

test_fio_verify() {
    # fio checks its own data: a checksum header in every 4 KiB block, two jobs,
    # buffered and O_DIRECT (the guest's direct I/O path through virtiofs).
    command -v fio >/dev/null || fail "fio not in the initramfs"
    for direct in 0 1; do
        fio --name=v$direct --directory=. --size=4m --bs=4k --rw=randwrite --ioengine=psync --direct=$direct \
            --numjobs=2 --fsync=32 --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 --minimal >fio.out 2>&1 ||
            fail "fio direct=$direct: $(tail -n 3 fio.out | tr '\n' ' ')"
    done
    expect_eq "files" "$(ls | grep -c '^v[01]\.')" 4
}
