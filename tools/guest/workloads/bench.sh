# bench: timed loops, one BENCH line each (gt bench: latencies in µs from the
# guest's monotonic clock, ops/s, MiB/s). Figures under TCG are dominated by
# emulation: compare back ends in the same kind of run only.
#   pmfs.n=        count for the metadata and 4 KiB kinds (default 500)
#   pmfs.sqlite_n= INSERTs for sqlite_wal / sqlite_delete (default: pmfs.n)
#   pmfs.seq_mib=  MiB for seq_write_1m / seq_read_1m (default 64)
#   pmfs.tests=    which tests, comma-separated (default: all, in this order)
# stat_during_fsync: stat latency while another process writes 8 MiB files with
# fsync in a loop (does one slow request hold up the others?).
# par2_write_fsync_4k, par2_create_close (not in the default list): two processes
# at once, pinned to vCPUs 0 and 1 (a 6.10+ guest kernel sends each vCPU's
# requests on its own request queue); one BENCH line: ops_s is the sum of both,
# the percentiles the mean of the two processes' (p99: the larger).
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

# par2 KIND: KIND in two processes at once, one per vCPU, in directories of their own.
par2() {
    mkdir par0 par1
    (cd par0 && taskset 1 gt bench "$1" . "${PMFS_N:-500}") >par0.out &
    a=$!
    (cd par1 && taskset 2 gt bench "$1" . "${PMFS_N:-500}") >par1.out &
    b=$!
    wait "$a"; ra=$?
    wait "$b"; rb=$?
    awk -v kind="par2_$1" '
        $2 == "BENCH" { k++; for (i = 5; i <= NF; i++) { split($i, kv, "="); v[kv[1], k] = kv[2] } }
        END {
            p99 = v["p99", 1] > v["p99", 2] ? v["p99", 1] : v["p99", 2]
            printf "PMFS-GUEST: BENCH %s %.1f n=%d p10=%.1f p50=%.1f p90=%.1f p99=%.1f mean=%.1f ops_s=%.1f\n", kind,
                (v["p50", 1] + v["p50", 2]) / 2, v["n", 1] + v["n", 2], (v["p10", 1] + v["p10", 2]) / 2,
                (v["p50", 1] + v["p50", 2]) / 2, (v["p90", 1] + v["p90", 2]) / 2, p99,
                (v["mean", 1] + v["mean", 2]) / 2, v["ops_s", 1] + v["ops_s", 2]
        }' par0.out par1.out
    rm -rf par0 par1 par0.out par1.out
    [ "$ra" = 0 ] && [ "$rb" = 0 ]
}
test_par2_write_fsync_4k() { par2 write_fsync_4k; }
test_par2_create_close() { par2 create_close; }

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
