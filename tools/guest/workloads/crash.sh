# crash: for tools/guest/crash.sh, which kills pmfsd with SIGKILL while this runs.
# In /mnt/$PMFS_DIR: appends random records (16 B to 70 KB) to "journal" and
# fsyncs it, writes files f<i> (1 B to 200 KB) and fdatasyncs them, and unlinks
# every third one; after each call returns it prints a marker the host checks:
#   PMFS-GUEST: ACK <offset> <length> <sha256>   journal bytes fsynced
#   PMFS-GUEST: SUM <sha256> f<i>                a file fdatasynced
#   PMFS-GUEST: GONE f<i>                        an unlink returned
# It runs until pmfsd dies under it (the host then kills QEMU) or for
# pmfs.crash_max= rounds (default 100000).
TESTS="crash"

test_crash() {
    d=/mnt/${PMFS_DIR:-crash}
    mkdir -p "$d" || return 1
    j=$d/journal
    : > "$j" || return 1
    off=0
    i=0
    while [ $i -lt "${PMFS_CRASH_MAX:-100000}" ]; do
        n=$(( (i * 7919) % 70000 + 16 ))
        head -c $n /dev/urandom > /tmp/r
        cat /tmp/r >> "$j" && gt fsync "$j" || return 1
        echo "PMFS-GUEST: ACK $off $n $(sha /tmp/r)"
        off=$((off + n))
        head -c $(( (i * 104729) % 200000 + 1 )) /dev/urandom > /tmp/f
        cat /tmp/f > "$d/f$i" && gt fdatasync "$d/f$i" || return 1
        echo "PMFS-GUEST: SUM $(sha /tmp/f) f$i"
        if [ $((i % 3)) = 2 ]; then
            rm "$d/f$((i - 2))" || return 1
            echo "PMFS-GUEST: GONE f$((i - 2))"
        fi
        i=$((i + 1))
    done
}
