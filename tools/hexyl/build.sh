#!/bin/sh
# hexyl, the hex viewer (https://crates.io/crates/hexyl, MIT OR Apache-2.0): a third-party
# program, unmodified, built for wasm32-wasip2 from its published crate. Guild runs it as a WASI
# command (stdin or a mounted file in, the hex dump on stdout). Not a workspace member: this
# recipe is all the project keeps of it.
#
#   tools/hexyl/build.sh [OUT_DIR]    # default: $CARGO_TARGET_DIR/guild-wasm/third-party (or target/)
#
# Without --locked: hexyl's own lock file pins rustix 0.38.38, which predates wasm32-wasip2's
# stable std (`use of unstable library feature wasip2`); the resolver picks versions that build.
set -eu
VERSION=0.17.0
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${1:-$TARGET/guild-wasm/third-party}
mkdir -p "$OUT"
CARGO_TARGET_DIR="$TARGET/guild-wasm/third-party-build" \
    cargo install hexyl --version "=$VERSION" --target wasm32-wasip2 --root "$OUT/hexyl-$VERSION" --quiet
cp "$OUT/hexyl-$VERSION/bin/hexyl.wasm" "$OUT/hexyl.wasm"
echo "$OUT/hexyl.wasm"
