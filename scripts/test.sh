#!/usr/bin/env bash
# Every test of the project, on a fresh machine of the lab's kind (run as root).
# Installs the system packages the tests need, then lints, builds and tests.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

log "toolchain: $(cargo --version)"

log "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

log "unit, fixture, property and no-allocation tests"
cargo test --workspace --locked

log "benches, once each in test mode (they check their own inputs)"
cargo test -p xlane-benches --benches --locked

log "demo (in-memory two-node cluster)"
cargo run --release --locked -p xlane-engine --example two_nodes

log "all tests passed"
