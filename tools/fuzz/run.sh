#!/usr/bin/env bash
# Builds the libFuzzer targets and runs each for a bounded time:
#   fuse    FUSEServer.handle in front of the real pmfs operations (tools/fuzz/FUSEDecoderFuzz.swift)
#   walker  the virtqueue descriptor walker (tools/fuzz/DescriptorWalkerFuzz.swift)
#   vhost   the vhost-user control plane of a real back end (tools/fuzz/VhostControlFuzz.swift)
# Usage: tools/fuzz/run.sh [fuse|walker|vhost ...]      (default: all, side by side)
# PMFS_FUZZ_SECONDS  run time of each target (default 60)
# PMFS_FUZZ_BUILD_ONLY=1  build, do not run
# Exits non-zero if a target crashes, leaks, times out or fails to build, and
# prints the reproducer's path and the command that replays it.
#
# Everything lives in .build-fuzz (never .build): the library modules built by
# SwiftPM with -sanitize=fuzzer,address (coverage + ASan), then each target
# compiled by swiftc and linked against their objects (SwiftPM cannot build a
# libFuzzer executable: libFuzzer brings its own main). See tools/fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v swift >/dev/null || export PATH="/opt/swift/usr/bin:$PATH"

root=$PWD
scratch=$root/.build-fuzz
out=$scratch/fuzz
seconds=${PMFS_FUZZ_SECONDS:-60}
config=${PMFS_FUZZ_CONFIG:-release}
targets=("$@")
(( ${#targets[@]} )) || targets=(fuse walker vhost)

declare -A source=([fuse]=FUSEDecoderFuzz.swift [walker]=DescriptorWalkerFuzz.swift [vhost]=VhostControlFuzz.swift)
declare -A modules=([fuse]="PMFSServer PMFSCheck" [walker]="VhostUser" [vhost]="PMFSServer VhostUser VhostUserFrontEnd")
declare -A maxlen=([fuse]=8192 [walker]=4096 [vhost]=2048)
# The file system keeps state (caches, tables) from input to input, so the
# per-input leak check would run on nearly every input and cost 10x; leaks are
# still reported at exit.
declare -A options=([fuse]="-detect_leaks=0" [walker]="" [vhost]="-detect_leaks=0")
for t in "${targets[@]}"; do
    [[ -n ${source[$t]:-} ]] || { echo "fuzz: unknown target '$t' (fuse, walker, vhost)" >&2; exit 2; }
done

# 1. The library modules, instrumented. One SwiftPM target per invocation.
start=$SECONDS
needed=()
for t in "${targets[@]}"; do needed+=(${modules[$t]}); done
mkdir -p "$out"
build_module() {
    swift build --scratch-path "$scratch" -c "$config" --target "$1" \
        -Xswiftc -sanitize=fuzzer,address -Xswiftc -enable-testing >"$out/build-$1.log" 2>&1
}
for m in $(printf '%s\n' "${needed[@]}" | sort -u); do
    # Once more on failure: a first build here links the benchmark plugin's
    # tool too, and ld.gold has been seen to stop on it with an internal error
    # (format_file_lineno) and swift-build to crash; the second build passed.
    if ! build_module "$m" && { echo "fuzz: building $m failed once; again (log kept as build-$m.first.log)" >&2
                                cp "$out/build-$m.log" "$out/build-$m.first.log"; ! build_module "$m"; }; then
        if grep -q "error:" "$out/build-$m.log"; then grep "error:" "$out/build-$m.log" | head -n 40 >&2; else tail -n 40 "$out/build-$m.log" >&2; fi
        echo "fuzz: building $m failed (log: $out/build-$m.log)" >&2
        exit 1
    fi
done

# 2. Each target: its modules' objects (transitively, from SwiftPM's build
#    description), their C module maps, and the C libraries.
link_plan() {   # prints one argument per line
    python3 - "$scratch/$config/description.json" "$@" <<'EOF'
import glob, json, os, sys
d = json.load(open(sys.argv[1]))
deps, commands = d["targetDependencyMap"], d["swiftCommands"]
roots = sys.argv[2:]
closure = set(roots)
for r in roots:
    closure.update(deps[r])
def command(module):
    for key, c in commands.items():
        if c.get("moduleName") == module and not key.endswith("-tool.module"):
            return c
args = ["-I", os.path.dirname(command(roots[0])["moduleOutputPath"])]
for r in roots:
    other = command(r)["otherArguments"]
    for i, a in enumerate(other):
        if a == "-Xcc" and i + 1 < len(other) and (other[i + 1].startswith("-fmodule-map-file=") or other[i + 1] == "-I"):
            args += other[i:i + 2] if other[i + 1] != "-I" else other[i:i + 4]
build = os.path.dirname(os.path.dirname(command(roots[0])["moduleOutputPath"]))
objects = []
for m in sorted(closure):
    c = command(m)
    # A C target has no Swift command: its objects sit in its build directory.
    objects += c["objects"] if c else sorted(glob.glob(os.path.join(build, m + ".build", "*.o")))
missing = [o for o in objects if not os.path.exists(o)]
if missing:
    sys.exit("fuzz: missing objects (stale build description?): " + " ".join(missing))
print("\n".join(args + objects))
EOF
}
for t in "${targets[@]}"; do
    mapfile -t plan < <(link_plan ${modules[$t]})
    (( ${#plan[@]} )) || { echo "fuzz: no link plan for $t" >&2; exit 1; }
    # A failed compile must not leave the last good binary to be run.
    rm -f "$out/fuzz-$t"
    status=0
    swiftc -sanitize=fuzzer,address -parse-as-library -swift-version 6 -g -O \
        -module-cache-path "$(readlink -f "$scratch/$config")/ModuleCache" \
        "tools/fuzz/${source[$t]}" "${plan[@]}" -lpmemobj -lpmem -luring \
        -o "$out/fuzz-$t" >"$out/compile-$t.log" 2>&1 || status=$?
    grep -v "Cannot export local symbol" "$out/compile-$t.log" >&2 || true
    [[ $status -eq 0 && -x $out/fuzz-$t ]] || { echo "fuzz: compiling fuzz-$t failed (log: $out/compile-$t.log)" >&2; exit 1; }
done
echo "fuzz: built ${targets[*]} in $((SECONDS - start)) s ($out)"
[[ ${PMFS_FUZZ_BUILD_ONLY:-0} == 1 ]] && exit 0

# 3. Run them side by side. Seeds are written by the targets themselves
#    (PMFS_FUZZ_WRITE_SEEDS); the corpus in .build-fuzz grows from run to run;
#    tools/fuzz/regressions/<target> holds inputs that once crashed.
pids=()
for t in "${targets[@]}"; do
    mkdir -p "$out/corpus/$t" "$out/artifacts/$t" "$out/seeds"
    rm -rf "$out/seeds/$t"
    extra=()
    [[ -d tools/fuzz/regressions/$t ]] && extra+=("$root/tools/fuzz/regressions/$t")
    (
        cd "$out"
        # Swift's own backtracer would race ASan and libFuzzer for the crash.
        # The outer timeout only guards against a hang libFuzzer's own -timeout misses.
        SWIFT_BACKTRACE=enable=no PMFS_FUZZ_WRITE_SEEDS="$out/seeds/$t" exec timeout -s KILL $((seconds + 300)) "./fuzz-$t" \
            -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len="${maxlen[$t]}" ${options[$t]} \
            -print_final_stats=1 -artifact_prefix="$out/artifacts/$t/" \
            "$out/corpus/$t" "$out/seeds/$t" "${extra[@]}"
    ) >"$out/$t.log" 2>&1 &
    pids+=($!)
done
failed=0
for i in "${!targets[@]}"; do
    t=${targets[$i]}
    rc=0
    wait "${pids[$i]}" || rc=$?
    # File systems of fuzzer processes that are gone (a crash skips the clean-up).
    for f in /dev/shm/pmfs-fuzz-*; do
        [[ -e $f ]] || continue
        p=${f#/dev/shm/pmfs-fuzz-}
        kill -0 "${p%%.*}" 2>/dev/null || rm -f "$f"
    done
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$t.log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out/$t.log")
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[^ ]+' "$out/$t.log" | tail -n 1 || true)
    if (( rc == 0 )); then
        echo "fuzz: $t ok: ${execs:-?} inputs in ${seconds} s (${rate:-?}/s), $cov"
    else
        failed=1
        echo "fuzz: $t FAILED (exit $rc); the end of $out/$t.log:"
        tail -n 60 "$out/$t.log" | sed 's/^/    /'
        for f in $(grep -oE 'Test unit written to [^ ]+' "$out/$t.log" | awk '{print $NF}'); do
            echo "fuzz: reproducer: $f"
            echo "fuzz: replay with: SWIFT_BACKTRACE=enable=no $out/fuzz-$t $f"
        done
        for d in $(grep -oE 'inputs since the last check are in [^ ]+' "$out/$t.log" | awk '{print $NF}'); do
            echo "fuzz: no single reproducer: the inputs since the last pool check are in $d"
            echo "fuzz: replay them in order with: PMFS_FUZZ_CHECK_EVERY=1 SWIFT_BACKTRACE=enable=no $out/fuzz-$t $d*"
        done
    fi
done
exit $failed
