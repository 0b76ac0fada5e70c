//! `guild tool new` scaffolds a crate that builds to a working component with one cargo command.

use crate::Guild;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A target directory kept between test runs, so the scaffold's dependencies build once.
fn scaffold_target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("guild-scaffold-test")
}

#[test]
fn a_scaffolded_tool_builds_and_runs() {
    let guild = Guild::new();
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("word-stats");
    guild.run(&["tool", "new", "word-stats", "--path", dir.to_str().expect("utf-8")]).expect_code(0);
    guild
        .run(&["tool", "new", "word-stats", "--path", dir.to_str().expect("utf-8")])
        .expect_code(2)
        .expect_stderr("already exists");
    guild.run(&["tool", "new", "Bad_Name"]).expect_code(2).expect_stderr("is not a tool name");

    let status = Command::new(env!("CARGO"))
        .args(["build", "--release"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", scaffold_target_dir())
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .status()
        .expect("cargo starts");
    assert!(status.success(), "the scaffold did not build");
    let wasm = scaffold_target_dir().join("wasm32-wasip2/release/word_stats.wasm");

    let ran =
        guild.run(&["run", wasm.to_str().expect("utf-8"), "--input", r#"{"text":"the cat saw the dog"}"#, "--logs"]);
    let output = ran.expect_code(0).json();
    assert_eq!(output["words"], 5);
    assert_eq!(output["most_frequent"][0], serde_json::json!(["the", 2]));
    ran.expect_stderr("counted 5 words");
    let info = guild.run(&["describe", wasm.to_str().expect("utf-8")]).json();
    assert_eq!(info["name"], "word-stats");
}

/// The repository root, where `scripts/setup.sh` put the Python and JavaScript toolchains.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fixed place for a language scaffold, emptied first: the same sources build the same
/// component, which then compiles once into the shared cache instead of once per test run.
fn lang_scaffold_dir(name: &str) -> PathBuf {
    let dir = scaffold_target_dir().join("lang").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.parent().expect("has parent")).expect("mkdir");
    dir
}

/// What a new user does with any scaffolded tool once built: run it on text and on a mounted
/// file, hit the fuel limit, try to leave the mount, and replay a run.
fn exercise(component: &Path, fuel_limit_units: &str) {
    let guild = Guild::with_shared_cache(&crate::lang::shared_home());
    let component = component.to_str().expect("utf-8");
    let ran = guild.run_tool(component, r#"{"text":"the cat saw the dog"}"#, &["--logs"]);
    let output = ran.expect_code(0).json();
    assert_eq!((output["words"].as_u64(), &output["most_frequent"][0]), (Some(5), &serde_json::json!(["the", 2])));
    ran.expect_stderr("counted 5 words");

    let scene = crate::tree(&[("notes/todo.txt", "the end the start"), ("secret.txt", "hunter2")]);
    let notes = crate::mount(&scene.path().join("notes"), "/data", "ro");
    let read = guild.run_tool(component, r#"{"path":"/data/todo.txt","top":1}"#, &["--dir", &notes]);
    assert_eq!(read.expect_code(0).json()["most_frequent"], serde_json::json!([["the", 2]]));
    let escape = guild.run_tool(component, r#"{"path":"/data/../secret.txt"}"#, &["--dir", &notes]);
    escape.expect_code(4).expect_stderr("denied");
    guild
        .run_tool(component, r#"{"text":"a b"}"#, &["--fuel", fuel_limit_units])
        .expect_code(3)
        .expect_stderr("fuel exhausted");

    let id = read.summary()["bundle"].as_str().expect("bundle id").to_string();
    let replayed = guild.run(&["replay", &id]);
    assert!(replayed.expect_code(0).stdout.starts_with("replay identical"), "{replayed:?}");
    let info = guild.run(&["describe", component]).json();
    assert_eq!(info["capabilities"]["dirs"][0]["guest_path"], "/data");
}

#[test]
fn a_scaffolded_python_tool_builds_with_its_documented_command_and_runs() {
    let guild = Guild::new();
    let dir = lang_scaffold_dir("word-count");
    guild
        .run(&["tool", "new", "word-count", "--lang", "python", "--path", dir.to_str().expect("utf-8")])
        .expect_code(0);
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("README");
    let documented = "componentize-py -d wit -w guild-tool componentize app -o word_count.wasm";
    assert!(readme.contains(documented), "{readme}");

    // The README's command, with the toolchain scripts/setup.sh installed instead of a venv.
    let toolchain = repo().join(".toolchains/python");
    let mut words = documented.split(' ');
    words.next();
    let status = Command::new("python3")
        .arg(toolchain.join("bin/componentize-py"))
        .args(words)
        .current_dir(&dir)
        .env("PYTHONPATH", &toolchain)
        .status()
        .expect("python3 starts");
    assert!(status.success(), "the Python scaffold did not build (run `bash scripts/setup.sh` first?)");
    exercise(&dir.join("word_count.wasm"), "10000");
}

#[test]
fn a_scaffolded_javascript_tool_builds_with_its_documented_command_and_runs() {
    let guild = Guild::new();
    let dir = lang_scaffold_dir("word-js");
    guild.run(&["tool", "new", "word-js", "--lang", "js", "--path", dir.to_str().expect("utf-8")]).expect_code(0);
    let readme = std::fs::read_to_string(dir.join("README.md")).expect("README");
    assert!(readme.contains("npm install && npm run build"), "{readme}");

    // `npm install` would fetch what the example tool already has, pinned alike.
    let installed = repo().join("tools/markdown-links/node_modules");
    assert!(installed.is_dir(), "{} is missing; run `bash scripts/setup.sh`", installed.display());
    std::os::unix::fs::symlink(&installed, dir.join("node_modules")).expect("symlink");
    let status = Command::new("npm").args(["run", "build"]).current_dir(&dir).status().expect("npm starts");
    assert!(status.success(), "the JavaScript scaffold did not build");
    exercise(&dir.join("word_js.wasm"), "10000");
}
