#!/usr/bin/env bash
# Installs what Guild needs on a fresh Debian machine with rustup: the wasm32-wasip2 target for
# the tools. Safe to run again; it only installs what is missing.
set -euo pipefail

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install Rust 1.95 with rustup first" >&2
    exit 1
fi
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
