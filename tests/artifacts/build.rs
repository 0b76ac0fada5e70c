//! Builds every crate under `tools/` and `tests/fixtures/` for `wasm32-wasip2` once per test
//! build (in the manner of wasmtime's test-programs), and writes their paths as constants.
//!
//! The guest build uses its own target directory (`target/guild-wasm`) so it neither waits on
//! the outer cargo's lock nor discards the host build's artifacts. Tools written in Python or
//! JavaScript are built alongside, with their own toolchains (`lang.rs`).

#[path = "../../scripts/guests.rs"]
mod guests;
#[path = "lang.rs"]
mod lang;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

struct Guest {
    dir: PathBuf,
    package: String,
    artifact: String,
}

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..").canonicalize().expect("workspace root exists");
    for watched in ["tests/fixtures", "sdk", "wit", "scripts/guests.rs", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let mut guests = guests_in(&root.join("tools"));
    guests.extend(guests_in(&root.join("tests/fixtures")));
    let lang_tools = lang::lang_tools_in(&root.join("tools"));
    // Rust tools by crate; other languages by source file, so that `node_modules` is not scanned.
    for guest in guests.iter().filter(|g| g.dir.starts_with(root.join("tools"))) {
        println!("cargo:rerun-if-changed={}", guest.dir.display());
    }
    for tool in &lang_tools {
        lang::watch(&root, tool);
    }
    let target_dir = guests::target_dir(&root);
    let lang_out = target_dir.join("lang");
    let built = std::thread::scope(|scope| {
        let others: Vec<_> = lang_tools
            .iter()
            .map(|tool| scope.spawn(|| (tool.artifact.clone(), lang::build(&root, tool, &lang_out))))
            .collect();
        build(&root, &target_dir, &guests);
        others.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect::<Vec<_>>()
    });
    let out_dir = guests::out_dir(&target_dir);
    write_constants(&out_dir, &guests, &built);
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name}"))
}

/// Every crate directly under `dir`, with the name of the `.wasm` it produces.
fn guests_in(dir: &Path) -> Vec<Guest> {
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    entries.sort();
    entries
        .into_iter()
        .filter_map(|crate_dir| {
            let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).ok()?;
            let package = manifest_value(&manifest, "[package]", "name")?;
            let artifact = manifest_value(&manifest, "[lib]", "name")
                .or_else(|| manifest_value(&manifest, "[[bin]]", "name"))
                .unwrap_or_else(|| package.replace('-', "_"));
            Some(Guest { dir: crate_dir, package, artifact })
        })
        .collect()
}

/// The string value of `key` in `section` of a simple Cargo manifest.
fn manifest_value(manifest: &str, section: &str, key: &str) -> Option<String> {
    let mut in_section = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == section;
            continue;
        }
        if in_section
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            return Some(v.trim().trim_matches('"').to_string());
        }
    }
    None
}

fn build(root: &Path, target_dir: &Path, guests: &[Guest]) {
    let packages: Vec<&str> = guests.iter().map(|guest| guest.package.as_str()).collect();
    let status = guests::build(root, target_dir, &packages);
    assert!(
        status.success(),
        "building the guest tools for {} failed (is the target installed? `rustup target add {}`)",
        guests::TARGET,
        guests::TARGET
    );
}

fn write_constants(out_dir: &Path, guests: &[Guest], others: &[(String, PathBuf)]) {
    let mut code = String::new();
    let mut all = String::from("/// Every guest, as (artifact name, path).\npub const ALL: &[(&str, &str)] = &[\n");
    for guest in guests {
        let path = out_dir.join(format!("{}.wasm", guest.artifact));
        assert!(path.exists(), "{} was built but {} is missing", guest.package, path.display());
        let constant = guest.artifact.to_uppercase().replace('-', "_");
        writeln!(code, "/// `{}` built for wasm32-wasip2.", guest.package).expect("string write");
        writeln!(code, "pub const {constant}: &str = {:?};", path.display().to_string()).expect("string write");
        writeln!(all, "    ({:?}, {constant}),", guest.artifact).expect("string write");
    }
    for (artifact, path) in others {
        let constant = artifact.to_uppercase();
        writeln!(code, "/// `tools/{}` built with its language's toolchain.", artifact.replace('_', "-"))
            .expect("string write");
        writeln!(code, "pub const {constant}: &str = {:?};", path.display().to_string()).expect("string write");
        writeln!(all, "    ({artifact:?}, {constant}),").expect("string write");
    }
    all.push_str("];\n");
    code.push_str(&all);
    let out = PathBuf::from(env("OUT_DIR")).join("artifacts.rs");
    std::fs::write(out, code).expect("OUT_DIR is writable");
}
