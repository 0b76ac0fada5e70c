#!/bin/sh
# Third-party programs, unmodified, built for wasm32-wasip2 from their published crates: Guild
# runs them as WASI commands. Not workspace members: this recipe is all the project keeps of them.
#
#   hexyl 0.17.0  the hex viewer (https://crates.io/crates/hexyl, MIT OR Apache-2.0): stdin or a
#                 mounted file in, the hex dump on stdout
#   sd 1.0.0      find and replace (https://crates.io/crates/sd, MIT): stdin to stdout (files it
#                 would map into memory, which WASI has no call for: `unsupported`, under
#                 `wasmtime run` too)
#
#   tools/third-party/build.sh [OUT_DIR]    # default: $CARGO_TARGET_DIR/guild-wasm/third-party (or target/)
#
# Writes OUT_DIR/NAME.wasm for each; one already there is kept. Without --locked: hexyl's own
# lock file pins rustix 0.38.38, which predates wasm32-wasip2's stable std (`use of unstable
# library feature wasip2`); the resolver picks versions that build.
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${1:-$TARGET/guild-wasm/third-party}
mkdir -p "$OUT"
for program in hexyl=0.17.0 sd=1.0.0; do
    name=${program%%=*}
    version=${program#*=}
    if [ -f "$OUT/$name.wasm" ]; then
        continue
    fi
    CARGO_TARGET_DIR="$TARGET/guild-wasm/third-party-build" \
        cargo install "$name" --version "=$version" --target wasm32-wasip2 --root "$OUT/$name-$version" --quiet
    cp "$OUT/$name-$version/bin/$name.wasm" "$OUT/$name.wasm"
    echo "$OUT/$name.wasm"
done
