#!/usr/bin/env bash
# Sets up a fresh machine and runs every check Guild has: the dependency policy (deny.toml),
# formatting, clippy on every target, and all tests (unit tests, the example tools' own tests,
# and the end-to-end tests that run the real `guild` binary against real tools and hostile
# fixtures).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# Licenses, bans and sources read only Cargo.lock and `cargo metadata`; the advisories check
# needs the network (README, "The two commands"). cargo-deny is setup.sh's pinned one.
echo "== cargo deny check bans licenses sources"
PATH="$PWD/.toolchains/cargo-deny/bin:$PATH" cargo deny --log-level warn check --hide-inclusion-graph bans licenses sources
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
