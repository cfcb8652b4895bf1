# churn: for tools/guest/integrity.sh's kill test. Holds a POSIX write lock and
# a flock on /mnt/$PMFS_DIR/locks/guestlock (then prints "PMFS-GUEST: LOCKED"),
# and writes files under files/churn/ with renames and unlinks in between until
# QEMU is killed (at most pmfs.churn_max= files, default 2000), printing
# "PMFS-GUEST: SUM <sha256> churn/cN" after each file's fsync returned.
TESTS="churn"

INTEGRITY_DIR=/mnt/${PMFS_DIR:-integrity}

test_churn() {
    d=$INTEGRITY_DIR/files/churn
    mkdir -p "$INTEGRITY_DIR/locks" "$d"
    lock=$INTEGRITY_DIR/locks/guestlock
    : > "$lock"
    holder_start posix 7 "$lock" w 0 0
    holder_start flock 8 "$lock" ex
    holder_pid posix >/dev/null
    holder_pid flock >/dev/null
    echo "PMFS-GUEST: LOCKED"
    i=0
    while [ $i -lt "${PMFS_CHURN_MAX:-2000}" ]; do
        head -c $(( (i * 7919) % 3000000 + 1 )) /dev/urandom > /tmp/c
        cat /tmp/c > "$d/tmp"
        : > "$d/empty-$i"
        mv "$d/tmp" "$d/c$i"
        rm "$d/empty-$i"
        gt fsync "$d/c$i"
        echo "PMFS-GUEST: SUM $(sha /tmp/c) churn/c$i"
        i=$((i + 1))
    done
    holder_end 8
    holder_end 7
    wait
}
