//! `guild tool new` scaffolds a crate that builds to a working component with one cargo command.

use crate::Guild;
use std::path::PathBuf;
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
