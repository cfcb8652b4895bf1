#!/usr/bin/env bash
# Metadata-engine benchmarks (Benchmarks/MetadataBenchmarks): create, lookup,
# rename, unlink with 1 and 2 threads, and lookup in a 1,000,000-entry directory.
#
# Runs the suite twice, because libpmem reads PMEM_IS_PMEM_FORCE once at load:
#   1. pool on /dev/shm with PMEM_IS_PMEM_FORCE=1 (emulated PM: real cache flushes)
#   2. pool on /var/tmp without it (a disk file: msync per flush, ~0.5 ms a transaction)
# and prints one throughput table per run (operations per second, all threads together).
#
# Usage: tools/bench/metadata.sh [filter-regex]     e.g. tools/bench/metadata.sh '.*create.*'
# Env:   SCRATCH (build dir, default .build-bench), BENCH_ARGS (extra plugin options).
set -euo pipefail
cd "$(dirname "$0")/../.."

scratch=${SCRATCH:-.build-bench}
filter=${1:-.*}

run() {
    # shellcheck disable=SC2086
    swift package --scratch-path "$scratch" benchmark --target MetadataBenchmarks --filter "$filter" \
        --grouping metric --no-progress ${BENCH_ARGS:-}
}

export PMEMOBJ_CONF="sds.at_create=0"

echo "### Pool on /dev/shm, PMEM_IS_PMEM_FORCE=1 (emulated persistent memory)"
(export PMEM_IS_PMEM_FORCE=1; run)

echo
echo "### Pool on /var/tmp (disk file), PMEM_IS_PMEM_FORCE unset"
(unset PMEM_IS_PMEM_FORCE; run)
