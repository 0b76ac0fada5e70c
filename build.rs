//! Builds the example tools for `wasm32-wasip2` and embeds them in the `guild` binary, so that
//! `guild serve` with no configuration serves them by name (`wc`, `grep`, …) from any directory.
//!
//! The guests build into `target/guild-wasm`, the same directory the test artifacts use, so a
//! test build and this one share the work.
//!
//! On Linux with a glibc that loads packed relative relocations (2.36 and later), the binary is
//! linked with them packed (see `packs_relative_relocations`).

#[path = "scripts/guests.rs"]
mod guests;

use std::fmt::Write as _;
use std::path::PathBuf;

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
    if packs_relative_relocations() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    // Each embedded tool's own directory, not all of tools/ (a JS tool's node_modules is huge).
    for (dir, _, _) in EMBEDDED {
        println!("cargo:rerun-if-changed={}", root.join("tools").join(dir).display());
    }
    for watched in ["sdk", "wit", "scripts/guests.rs", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = guests::target_dir(&root);
    let packages: Vec<&str> = EMBEDDED.iter().map(|(_, package, _)| *package).collect();
    let status = guests::build(&root, &target_dir, &packages);
    assert!(
        status.success(),
        "building the example tools for wasm32-wasip2 failed; run scripts/setup.sh \
         (`rustup target add wasm32-wasip2`) and try again"
    );
    let out = guests::out_dir(&target_dir);
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

/// Whether to link the binary with its relative relocations packed into a bitmap (`DT_RELR`): its
/// ~89k take ~28 KB instead of a 2.1 MB table the loader reads and applies at every start (a
/// `guild run` starts ~10% sooner), and it stays position-independent. Only when building on and
/// for Linux with glibc, and only when this machine's glibc can load such a binary (it defines
/// `GLIBC_ABI_DT_RELR`, 2.36 and later): the linker requires that version of the C library
/// without checking it, so a binary packed here does not start where glibc is older.
fn packs_relative_relocations() -> bool {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux" || var("CARGO_CFG_TARGET_ENV") != "gnu" || var("TARGET") != var("HOST") {
        return false;
    }
    const LIBC: &[&str] = &[
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib/aarch64-linux-gnu/libc.so.6",
        "/lib64/libc.so.6",
        "/usr/lib64/libc.so.6",
        "/usr/lib/libc.so.6",
    ];
    let needle = b"GLIBC_ABI_DT_RELR";
    LIBC.iter().filter_map(|path| std::fs::read(path).ok()).any(|libc| libc.windows(needle.len()).any(|w| w == needle))
}
