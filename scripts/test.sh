#!/usr/bin/env bash
# Runs every test. The conformance suites read ../shared/conformance (or $RBUILD_CONFORMANCE) and print one
# "N passed, M failed" line per set; tests that need root, runc or a registry skip with a message outside CI.
# The last line is the total over every test binary, "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test -p rbuild-frontend --test tests conformance -- --nocapture
first=$?
cargo test --workspace --all-targets --no-fail-fast 2>&1 | tee "$log"
second=${PIPESTATUS[0]}
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;/) p += $(i-1); if ($(i) ~ /^failed;/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
[ "$first" -eq 0 ] && [ "$second" -eq 0 ]
