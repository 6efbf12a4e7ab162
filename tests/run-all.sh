#!/usr/bin/env bash
# Runs every test Tandem has: formatting and lints, the Rust unit, property and end-to-end
# tests (against the real binary on loopback ports), and the Node tests of client/ that
# drive the server with the stock y-websocket provider. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --all-targets --locked -- -D warnings

step "Rust tests"
if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
cargo nextest run --locked --all-targets --no-fail-fast

if [ -n "${TANDEM_TEST_POSTGRES_URL:-}" ]; then
  step "end-to-end tests again, every server on PostgreSQL (TANDEM_TEST_STORE=postgres)"
  TANDEM_TEST_STORE=postgres cargo nextest run --locked --tests --no-fail-fast -E 'kind(test)'
fi

step "build the server binary for the Node tests"
cargo build --locked --bin tandem
export TANDEM_BIN="$PWD/target/debug/tandem"

step "Node and browser tests (client/: stock y-websocket provider, TandemChat, Chromium)"
cd client
npm ci --no-audit --no-fund
npm test
