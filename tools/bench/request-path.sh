#!/usr/bin/env bash
# The request path without a transport (Benchmarks/RequestPathBenchmarks):
# GETATTR, LOOKUP (+ FORGET), READ 4 KiB, WRITE 4 KiB and WRITE + FSYNC (alone, and grouped as the
# vhost-user back end commits a pass's FSYNCs) handed to FUSEServer as
# the vhost-user back end hands a guest's descriptor chain, in front of the real
# PMFSOperations; pool and data file on /dev/shm, PMEM_IS_PMEM_FORCE=1 (emulated
# PM). Prints time and heap allocations (malloc count) per request.
# Usage: tools/bench/request-path.sh [filter-regex]
# Env:   SCRATCH (build dir, default .build-bench), BENCH_ARGS (extra plugin options).
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v swift >/dev/null || export PATH="/opt/swift/usr/bin:$PATH"
# shellcheck disable=SC2086
PMEM_IS_PMEM_FORCE=1 PMEMOBJ_CONF="sds.at_create=0" swift package --scratch-path "${SCRATCH:-.build-bench}" benchmark \
    --target RequestPathBenchmarks --filter "${1:-.*}" --no-progress ${BENCH_ARGS:-}
