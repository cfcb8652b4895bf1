# Helpers for guest workloads (busybox ash). A workload file defines functions
# named test_NAME and sets TESTS="NAME ..." (the order they run in). Each test
# runs in a child shell with `set -e`, inside its own empty directory
# $PMFS_WD/NAME, under a time limit (pmfs.test_timeout=, default 120 s); a test
# killed by that limit stops the workload (the back end is likely hung).
# Its stdout goes to the console; the last line of its stderr becomes the
# reason when it fails. A test passes by returning; it fails through fail,
# expect_* or any failing command; skip ends it as SKIP.

PMFS_PASSED=0
PMFS_FAILED=0
PMFS_SKIPPED=0
PMFS_HUNG=0

# t_report PASS|FAIL|SKIP NAME [REASON]
t_report() {
    case "$1" in
        PASS) PMFS_PASSED=$((PMFS_PASSED + 1)); echo "PMFS-GUEST: PASS $2" ;;
        SKIP) PMFS_SKIPPED=$((PMFS_SKIPPED + 1)); echo "PMFS-GUEST: SKIP $2 $3" ;;
        *) PMFS_FAILED=$((PMFS_FAILED + 1)); echo "PMFS-GUEST: FAIL $2 ${3:-failed}" ;;
    esac
}

result_line() {
    if [ "$PMFS_SKIPPED" -gt 0 ]; then
        echo "PMFS-GUEST: RESULT $PMFS_PASSED passed, $PMFS_FAILED failed, $PMFS_SKIPPED skipped"
    else
        echo "PMFS-GUEST: RESULT $PMFS_PASSED passed, $PMFS_FAILED failed"
    fi
}

run_test() {
    name=$1
    dir="$PMFS_WD/$name"
    if ! mkdir "$dir" 2>/tmp/test.err; then
        t_report FAIL "$name" "mkdir $dir: $(tail -n 1 /tmp/test.err)"
        return
    fi
    timeout -s KILL "${PMFS_TEST_TIMEOUT:-120}" /bin/sh -c \
        "set -e; . /pmfs/lib.sh; . /pmfs/workloads/$PMFS_WORKLOAD.sh; cd '$dir'; test_$name" 2>/tmp/test.err
    rc=$?
    reason=$(grep -v '^[[:space:]]*$' /tmp/test.err | tail -n 1 | cut -c1-200)
    case $rc in
        0) t_report PASS "$name" ;;
        77) t_report SKIP "$name" "${reason:-not supported}" ;;
        137) PMFS_HUNG=1
             t_report FAIL "$name" "killed after ${PMFS_TEST_TIMEOUT:-120}s (hung?) ${reason}" ;;
        *) t_report FAIL "$name" "${reason:-exit status $rc}" ;;
    esac
}

fail() { echo "$*" >&2; exit 1; }
skip() { echo "$*" >&2; exit 77; }

# expect_eq WHAT ACTUAL EXPECTED
expect_eq() {
    [ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"
}

# expect_fail WHAT COMMAND...: the command must fail.
expect_fail() {
    what=$1; shift
    if "$@" 2>/dev/null; then fail "$what: succeeded, should have failed"; fi
}

sha() { sha256sum "$@" | cut -d' ' -f1; }

# Drop the guest's page cache so the next read goes to the file system daemon.
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# Lock holders: `gt lock` in the background, steered through a fifo held open on
# file descriptor FD (7, 8 or 9); its answers go to NAME.out.
# holder_start NAME FD FILE KIND [START LEN]
holder_start() {
    h_name=$1 h_fd=$2; shift 2
    rm -f "$h_name.ctl" "$h_name.out"
    mkfifo "$h_name.ctl"
    gt lock "$@" < "$h_name.ctl" > "$h_name.out" 2>&1 &
    eval "exec $h_fd>$h_name.ctl"
}
# wait_line FILE REGEX: wait (10 s at most) for a line of FILE to match.
wait_line() {
    w_i=0
    until grep -q "$2" "$1" 2>/dev/null; do
        w_i=$((w_i + 1))
        [ $w_i -le 100 ] || fail "no '$2' in $1 after 10 s: $(tr '\n' ' ' < "$1")"
        sleep 0.1
    done
}
# holder_pid NAME: once it holds its lock, the holder's PID.
holder_pid() { wait_line "$1.out" '^locked pid '; sed -n 's/^locked pid //p' "$1.out"; }
# holder_cmd NAME FD CMD: unlock, close or close-other, and wait for it to be done.
holder_cmd() { echo "$3" >&"$2"; wait_line "$1.out" "^ok $3\$"; }
# holder_end FD: end of input; the holder exits (its locks go with it).
holder_end() { eval "exec $1>&-"; }
# lock_try FILE KIND [START LEN]: "free" if another process gets the lock at once, else "busy".
lock_try() {
    if l_out=$(gt lock "$@" </dev/null); then echo free
    elif [ "$l_out" = busy ]; then echo busy
    else echo "error: $l_out"; fi
}
