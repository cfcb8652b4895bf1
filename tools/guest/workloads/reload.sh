# reload: a guest that keeps writing while the host reloads pmfsd's
# configuration around it (tools/guest/reload.sh). It appends numbered
# records to /mnt/stream, fsyncing each, until the host makes
# /mnt/stop-writing; every append and fsync must succeed, and the stream must
# then read back whole and in order. It prints "PMFS-GUEST: RECORDS N" for the
# host to compare with what the host mount sees.
TESTS="write_through_reloads"

test_write_through_reloads() {
    rec=0
    : > /mnt/stream
    while [ ! -e /mnt/stop-writing ]; do
        printf 'record %d\n' "$rec" >> /mnt/stream || fail "append of record $rec failed"
        gt fsync /mnt/stream || fail "fsync after record $rec failed"
        rec=$((rec + 1))
        [ "$rec" -lt 200000 ] || fail "no stop cue from the host after $rec records"
    done
    expect_eq "records read back" "$(wc -l < /mnt/stream | tr -d ' ')" "$rec"
    awk '$1 != "record" || $2 + 0 != NR - 1 { print "line " NR ": " $0 > "/dev/stderr"; bad = 1 } END { exit bad }' /mnt/stream \
        || fail "the stream is out of order"
    echo "PMFS-GUEST: RECORDS $rec"
}
