#!/usr/bin/env bash
# Builds everything (the tool tests run the built executables) and runs the
# whole test suite. Exits non-zero if the build or any test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v swift >/dev/null || export PATH="/opt/swift/usr/bin:$PATH"

# Test pools live on /dev/shm: emulated persistent memory (the tests set this too).
export PMEM_IS_PMEM_FORCE=1

swift build --build-tests
swift test "$@"
