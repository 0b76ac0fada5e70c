//! Building Guild's own Rust guests (the example tools, the test artifacts, the schema checker)
//! for `wasm32-wasip2` from a build script: one nested `cargo build`, the same way for each.
//! Included with `#[path]` by `build.rs`, `host/runtime/build.rs` and `tests/artifacts/build.rs`.
//!
//! Guests build into one directory of their own (`<target>/guild-wasm`), so that a nested build
//! neither waits on the outer cargo's lock nor discards the host build's artifacts, and the three
//! build scripts share each other's work.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

/// The target guests are built for.
pub(crate) const TARGET: &str = "wasm32-wasip2";
/// The cargo profile guests are built with (small, fast components).
pub(crate) const PROFILE: &str = "wasm";

/// Where guests build: `guild-wasm` under `CARGO_TARGET_DIR`, else under `<root>/target`.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target")).join("guild-wasm")
}

/// Where the `.wasm` files of guests built into `target_dir` land.
pub(crate) fn out_dir(target_dir: &Path) -> PathBuf {
    target_dir.join(TARGET).join(PROFILE)
}

/// Build `packages` of the workspace at `root` into `target_dir`; the caller says what a failure
/// means.
pub(crate) fn build(root: &Path, target_dir: &Path, packages: &[&str]) -> ExitStatus {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--target", TARGET, "--profile", PROFILE, "--target-dir"])
        .arg(target_dir)
        // Flags meant for the host build (coverage, clippy's wrapper) must not reach the guests.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET");
    for package in packages {
        cmd.args(["-p", package]);
    }
    cmd.status().expect("cargo can be started")
}
