# bench: timed loops, one BENCH line each (median µs per operation, from the
# guest's monotonic clock). pmfs.n= sets the count (default 500). Figures under
# TCG are dominated by emulation: compare back ends in the same kind of run only.
TESTS="write_fsync_4k create_close stat unlink mkdir open_close"

bench() { gt bench "$1" . "${PMFS_N:-500}"; }

test_write_fsync_4k() { bench write_fsync_4k; }
test_create_close() { bench create_close; }
test_stat() { bench stat; }
test_unlink() { bench unlink; }
test_mkdir() { bench mkdir; }
test_open_close() { bench open_close; }
