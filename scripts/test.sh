#!/usr/bin/env bash
# Sets up a fresh machine and runs every check Guild has: formatting, clippy on every target,
# and all tests (unit tests, the example tools' own tests, and the end-to-end tests that run the
# real `guild` binary against real tools and hostile fixtures).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
