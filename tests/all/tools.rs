//! The shipped example tools, run through `guild run` against real directories.

use crate::{Guild, mount, tree};
use guild_test_artifacts::{GREP, HASH, JSON_QUERY, WC};

fn docs() -> tempfile::TempDir {
    tree(&[
        ("README.md", "Guild runs tools.\nIt runs them safely.\n"),
        ("notes/todo.txt", "write tests\nrun tests\nship\n"),
        ("notes/empty.txt", ""),
        ("data.json", r#"{"users":[{"name":"ada","langs":["rust","ml"]},{"name":"grace","langs":["cobol"]}]}"#),
    ])
}

#[test]
fn wc_counts_a_mounted_tree() {
    let dir = docs();
    let ran = Guild::new().run_tool(WC, "{}", &["--dir", &mount(dir.path(), "/data", "ro")]);
    let out = ran.expect_code(0).json();
    assert_eq!(out["files"].as_array().map(Vec::len), Some(4), "{out}");
    let readme =
        out["files"].as_array().expect("files").iter().find(|f| f["path"] == "/data/README.md").expect("README");
    assert_eq!(
        (readme["lines"].as_u64(), readme["words"].as_u64(), readme["bytes"].as_u64()),
        (Some(2), Some(7), Some(39))
    );
    let expected_bytes: u64 = ["README.md", "notes/todo.txt", "notes/empty.txt", "data.json"]
        .iter()
        .map(|f| std::fs::metadata(dir.path().join(f)).expect("meta").len())
        .sum();
    assert_eq!(out["total"]["bytes"].as_u64(), Some(expected_bytes));
    assert_eq!(out["total"]["lines"].as_u64(), Some(5));
}

#[test]
fn wc_reports_a_missing_path_as_a_tool_failure() {
    let dir = docs();
    Guild::new().run_tool(WC, r#"{"path":"/data/nope"}"#, &["--dir", &mount(dir.path(), "/data", "ro")]).expect_code(1);
}

#[test]
fn grep_finds_lines_with_numbers() {
    let dir = docs();
    let input = r#"{"pattern":"tests?$","ignore_case":true}"#;
    let out = Guild::new().run_tool(GREP, input, &["--dir", &mount(dir.path(), "/data", "ro")]).expect_code(0).json();
    let found: Vec<(String, u64)> = out["matches"]
        .as_array()
        .expect("matches")
        .iter()
        .map(|m| (m["file"].as_str().expect("file").to_string(), m["line_number"].as_u64().expect("line")))
        .collect();
    assert_eq!(found, [("/data/notes/todo.txt".to_string(), 1), ("/data/notes/todo.txt".to_string(), 2)]);
    assert_eq!(out["truncated"], false);
}

#[test]
fn grep_rejects_a_bad_regex_as_invalid_input() {
    let dir = docs();
    Guild::new()
        .run_tool(GREP, r#"{"pattern":"(unclosed"}"#, &["--dir", &mount(dir.path(), "/data", "ro")])
        .expect_code(2)
        .expect_stderr("tool error (invalid_input)");
}

#[test]
fn hash_matches_blake3_for_text_and_files() {
    let dir = docs();
    let guild = Guild::new();
    let out = guild.run_tool(HASH, r#"{"text":"hello"}"#, &[]).expect_code(0).json();
    assert_eq!(out["digest"], blake3::hash(b"hello").to_hex().as_str());

    let args = ["--dir".to_string(), mount(dir.path(), "/data", "ro")];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let file = guild.run_tool(HASH, r#"{"path":"/data/README.md"}"#, &args).expect_code(0).json();
    let readme = std::fs::read(dir.path().join("README.md")).expect("readme");
    assert_eq!(file["digest"], blake3::hash(&readme).to_hex().as_str());

    let first = guild.run_tool(HASH, r#"{"path":"/data"}"#, &args).expect_code(0).json();
    let again = guild.run_tool(HASH, r#"{"path":"/data"}"#, &args).expect_code(0).json();
    assert_eq!(first["digest"], again["digest"]);
    assert_eq!(first["files"].as_array().map(Vec::len), Some(4));
    std::fs::write(dir.path().join("notes/empty.txt"), "no longer empty").expect("write");
    let changed = guild.run_tool(HASH, r#"{"path":"/data"}"#, &args).expect_code(0).json();
    assert_ne!(first["digest"], changed["digest"]);
    guild.run_tool(HASH, r#"{"text":"a","path":"/data"}"#, &args).expect_code(2);
}

#[test]
fn json_query_reads_inline_documents_and_mounted_files() {
    let dir = docs();
    let guild = Guild::new();
    let inline = r#"{"document":{"a":{"b":[1,2,{"c":"deep"}]}},"query":"a.b[2].c"}"#;
    assert_eq!(guild.run_tool(JSON_QUERY, inline, &[]).expect_code(0).json()["result"], "deep");

    let mounted = r#"{"path":"/data/data.json","query":"users[*].name"}"#;
    let out = guild.run_tool(JSON_QUERY, mounted, &["--dir", &mount(dir.path(), "/data", "ro")]).expect_code(0).json();
    assert_eq!(out["result"], serde_json::json!(["ada", "grace"]));
    let last = r#"{"path":"/data/data.json","query":"users[-1].langs[0]"}"#;
    let out = guild.run_tool(JSON_QUERY, last, &["--dir", &mount(dir.path(), "/data", "ro")]).expect_code(0).json();
    assert_eq!(out["result"], "cobol");

    guild.run_tool(JSON_QUERY, r#"{"document":{},"query":"a[5"}"#, &[]).expect_code(2).expect_stderr("position");
    guild.run_tool(JSON_QUERY, r#"{"document":{"a":1},"query":"b"}"#, &[]).expect_code(1).expect_stderr("not found");
}

#[test]
fn every_shipped_tool_describes_itself() {
    let guild = Guild::new();
    for (name, path) in [("wc", WC), ("grep", GREP), ("hash", HASH), ("json-query", JSON_QUERY)] {
        let info = guild.run(&["describe", path]).expect_code(0).json();
        assert_eq!(info["name"], name);
        assert_eq!(info["input_schema"]["type"], "object", "{name}");
        assert!(!info["description"].as_str().unwrap_or_default().is_empty(), "{name}");
    }
}
