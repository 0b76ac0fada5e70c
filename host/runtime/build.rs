//! Builds Guild's JSON Schema checker (`host/schema-check`) for `wasm32-wasip2` and hands its
//! path to the crate (`GUILD_SCHEMA_CHECK_WASM`), which embeds it: every check of a value against
//! a tool's own schema runs inside it, under fuel (`src/schema_check.rs`).
//!
//! The guest builds into `target/guild-wasm`, the directory the example tools and the test
//! artifacts use, so that it neither waits on the outer cargo's lock nor discards its work.

#[path = "../../scripts/guests.rs"]
mod guests;

use std::path::PathBuf;

const PACKAGE: &str = "guild-schema-check";
const ARTIFACT: &str = "schema_check";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..").canonicalize().expect("the workspace root exists");
    for watched in ["host/schema-check", "scripts/guests.rs", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = guests::target_dir(&root);
    let status = guests::build(&root, &target_dir, &[PACKAGE]);
    assert!(
        status.success(),
        "building the schema checker for wasm32-wasip2 failed; run scripts/setup.sh \
         (`rustup target add wasm32-wasip2`) and try again"
    );
    let artifact = guests::out_dir(&target_dir).join(format!("{ARTIFACT}.wasm"));
    assert!(artifact.exists(), "{} is missing after the build", artifact.display());
    println!("cargo:rustc-env=GUILD_SCHEMA_CHECK_WASM={}", artifact.display());
    let bytes = std::fs::read(&artifact).expect("the schema checker can be read");
    println!("cargo:rustc-env=GUILD_SCHEMA_CHECK_ID={}", build_id(&bytes));
}

/// Names one build of the checker in the compiled-code cache's keys: 128 bits of two FNV-1a
/// hashes (of the bytes, and of the bytes after a different start) and the length. Not a defence
/// against forgery (the cache's directory is what keeps others out), only a name no other build
/// of the checker will have.
fn build_id(bytes: &[u8]) -> String {
    let fnv = |basis: u64| {
        bytes.iter().fold(basis, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3))
    };
    format!("{:016x}{:016x}{:x}", fnv(0xcbf2_9ce4_8422_2325), fnv(0x6c62_272e_07bb_0142), bytes.len())
}
