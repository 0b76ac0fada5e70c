//! Builds the example tools for `wasm32-wasip2` and embeds them in the `guild` binary, so that
//! `guild serve` with no configuration serves them by name (`wc`, `grep`, …) from any directory.
//!
//! The guests build into `target/guild-wasm`, the same directory the test artifacts use, so a
//! test build and this one share the work.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

/// (directory under tools/, package, artifact name).
const EMBEDDED: &[(&str, &str, &str)] = &[
    ("echo", "guild-tool-echo", "echo"),
    ("wc", "guild-tool-wc", "wc"),
    ("grep", "guild-tool-grep", "grep"),
    ("hash", "guild-tool-hash", "hash"),
    ("json-query", "guild-tool-json-query", "json_query"),
    ("http-get", "guild-tool-http-get", "http_get"),
];

fn main() {
    // The binary's ~89k relative relocations packed into a bitmap (DT_RELR, glibc 2.36 and later):
    // the loader reads ~40 KiB instead of 2 MiB and applies them in less time at every start,
    // and the binary stays position-independent.
    let target = |name: &str| std::env::var(name).unwrap_or_default();
    if target("CARGO_CFG_TARGET_OS") == "linux" && target("CARGO_CFG_TARGET_ENV") == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    // Each embedded tool's own directory, not all of tools/ (a JS tool's node_modules is huge).
    for (dir, _, _) in EMBEDDED {
        println!("cargo:rerun-if-changed={}", root.join("tools").join(dir).display());
    }
    for watched in ["sdk", "wit", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("guild-wasm");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--target", "wasm32-wasip2", "--profile", "wasm", "--target-dir"])
        .arg(&target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET");
    for (_, package, _) in EMBEDDED {
        cmd.args(["-p", package]);
    }
    let status = cmd.status().expect("cargo can be started");
    assert!(
        status.success(),
        "building the example tools for wasm32-wasip2 failed; run scripts/setup.sh \
         (`rustup target add wasm32-wasip2`) and try again"
    );
    let out = target_dir.join("wasm32-wasip2").join("wasm");
    let mut code = String::from("/// The example tools, as (artifact, component bytes).\n");
    code.push_str("pub(crate) const EMBEDDED_TOOLS: &[(&str, &[u8])] = &[\n");
    for (_, _, artifact) in EMBEDDED {
        let path = out.join(format!("{artifact}.wasm"));
        assert!(path.exists(), "{} is missing after the build", path.display());
        writeln!(code, "    ({artifact:?}, include_bytes!({:?})),", path.display().to_string()).expect("string write");
    }
    code.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("embedded_tools.rs");
    std::fs::write(dest, code).expect("OUT_DIR is writable");
}
