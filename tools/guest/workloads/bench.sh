# bench: timed loops, one BENCH line each (gt bench: latencies in µs from the
# guest's monotonic clock, ops/s, MiB/s). Figures under TCG are dominated by
# emulation: compare back ends in the same kind of run only.
#   pmfs.n=        count for the metadata and 4 KiB kinds (default 500)
#   pmfs.sqlite_n= INSERTs for sqlite_wal / sqlite_delete (default: pmfs.n)
#   pmfs.seq_mib=  MiB for seq_write_1m / seq_read_1m (default 64)
#   pmfs.tests=    which tests, comma-separated (default: all, in this order)
# stat_during_fsync: stat latency while another process writes 8 MiB files with
# fsync in a loop (does one slow request hold up the others?).
TESTS=$(echo "${PMFS_TESTS:-write_fsync_4k,create_close,stat,unlink,mkdir,open_close,sqlite_wal,sqlite_delete,seq_write_1m,seq_read_1m,stat_during_fsync}" | tr , ' ')

bench() { gt bench "$1" . "${2:-${PMFS_N:-500}}"; }

test_write_fsync_4k() { bench write_fsync_4k; }
test_create_close() { bench create_close; }
test_stat() { bench stat; }
test_unlink() { bench unlink; }
test_mkdir() { bench mkdir; }
test_open_close() { bench open_close; }
test_sqlite_wal() { bench sqlite_wal "${PMFS_SQLITE_N:-${PMFS_N:-500}}"; }
test_sqlite_delete() { bench sqlite_delete "${PMFS_SQLITE_N:-${PMFS_N:-500}}"; }
test_seq_write_1m() { bench seq_write_1m "${PMFS_SEQ_MIB:-64}"; }
test_seq_read_1m() { bench seq_read_1m "${PMFS_SEQ_MIB:-64}"; }

test_stat_during_fsync() {
    mkdir bg
    ( while [ ! -e bg/stop ]; do dd if=/dev/zero of=bg/f bs=1M count=8 conv=fsync 2>/dev/null; done ) &
    writer=$!
    bench stat >bench.out
    rc=$?
    touch bg/stop
    wait "$writer"
    sed 's/BENCH stat /BENCH stat_during_fsync /' bench.out
    rm -rf bg bench.out
    return "$rc"
}
