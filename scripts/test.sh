#!/usr/bin/env bash
# Runs every test. The conformance suites read ../shared/conformance (or $RBUILD_CONFORMANCE) and print one
# "N passed, M failed" line per set; tests that need root, runc or a registry skip with a message outside CI.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test -p rbuild-frontend --test tests conformance -- --nocapture
cargo test --workspace --no-fail-fast
