//! Tools in other languages get what Rust tools get: the Python `summarize-csv` (componentize-py)
//! and the JavaScript `markdown-links` (componentize-js), built from source by
//! `guild-test-artifacts`, run through the real binary under fuel limits, inside their mounts,
//! recorded and replayed.

use crate::{Guild, Ran, listing, mount, tree};
use guild_test_artifacts::{MARKDOWN_LINKS, SUMMARIZE_CSV};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// A home kept under `target/` between test runs: interpreter components take many seconds to
/// compile, so they compile once into its cache instead of once per test. Its host key is made
/// once, before any test uses it, so that parallel tests never race to create it.
pub(crate) fn shared_home() -> PathBuf {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let home = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
            .join("guild-lang-test-home");
        Guild::with_shared_cache(&home).run(&["key", "show"]).expect_code(0);
        home
    })
    .clone()
}

/// A `guild` sharing the compiled cache, with `component` already compiled into it (by the
/// first test that asks; the others wait rather than compile it again).
pub(crate) fn guild_with(component: &str) -> Guild {
    static COMPILED: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let guild = Guild::with_shared_cache(&shared_home());
    let mut compiled = COMPILED.get_or_init(Mutex::default).lock().unwrap_or_else(|e| e.into_inner());
    if !compiled.iter().any(|c| c == component) {
        guild.run(&["describe", component]).expect_code(0);
        compiled.push(component.to_string());
    }
    guild
}

fn bundle_id(ran: &Ran) -> String {
    ran.summary()["bundle"].as_str().unwrap_or_else(|| panic!("no bundle id: {ran:?}")).to_string()
}

/// Replays `ran`'s bundle from its exported archive on a fresh store and asserts it is identical.
fn replays_identically(guild: &Guild, ran: &Ran) {
    let id = bundle_id(ran);
    let archive = guild.home().join("run.tar.zst");
    guild.run(&["bundle", "export", &id, "-o", archive.to_str().expect("utf-8")]).expect_code(0);
    let auditor = Guild::with_shared_cache(&shared_home());
    let replayed = auditor.run(&["replay", archive.to_str().expect("utf-8"), "--json"]);
    replayed.expect_code(0);
    let report = replayed.json();
    assert!(report["report"]["mismatch"].is_null(), "{report:#}");
    assert_eq!(report["report"]["fuel_replayed_units"], ran.summary()["fuel_used_units"], "{report:#}");
}

const PEOPLE_CSV: &str = "name,age,city\nann,31,Oslo\nbob,45,Lima\ncid,,Oslo\n";

#[test]
fn python_summarize_csv_reports_column_statistics_and_logs() {
    let guild = guild_with(SUMMARIZE_CSV);
    let data = tree(&[("people.csv", PEOPLE_CSV)]);
    let ran = guild.run_tool(
        SUMMARIZE_CSV,
        r#"{"path":"/data/people.csv"}"#,
        &["--dir", &mount(data.path(), "/data", "ro"), "--logs"],
    );
    let out = ran.expect_code(0).json();
    assert_eq!(out["rows"], 3);
    let age = &out["columns"][1];
    assert_eq!((age["name"].as_str(), age["kind"].as_str()), (Some("age"), Some("number")));
    assert_eq!((age["filled"].as_u64(), age["empty"].as_u64()), (Some(2), Some(1)));
    assert_eq!((age["min"].as_f64(), age["max"].as_f64(), age["mean"].as_f64()), (Some(31.0), Some(45.0), Some(38.0)));
    assert_eq!(out["columns"][2]["top"][0], serde_json::json!(["Oslo", 2]));
    ran.expect_stderr("summarized /data/people.csv: 3 rows, 3 columns");
    assert_eq!(ran.summary()["log_lines"], 1, "{ran:?}");

    let info = guild.run(&["describe", SUMMARIZE_CSV]).json();
    assert_eq!(info["name"], "summarize-csv");
    assert_eq!(info["capabilities"]["dirs"][0]["guest_path"], "/data");
    assert_eq!(info["capabilities"]["dirs"][0]["access"], "read-only");
    assert_eq!(info["input_schema"]["required"], serde_json::json!(["path"]));

    let bad = guild.run_tool(
        SUMMARIZE_CSV,
        r#"{"path":"/data/people.csv","colour":1}"#,
        &["--dir", &mount(data.path(), "/data", "ro")],
    );
    bad.expect_code(2).expect_stderr("unknown field(s): colour");
}

#[test]
fn python_tool_hits_fuel_and_memory_limits_and_cannot_leave_its_mount() {
    let guild = guild_with(SUMMARIZE_CSV);
    let scene = tree(&[("data/people.csv", PEOPLE_CSV), ("secret.csv", "password\nhunter2\n")]);
    std::os::unix::fs::symlink(scene.path().join("secret.csv"), scene.path().join("data/link.csv")).expect("symlink");
    let data = mount(&scene.path().join("data"), "/data", "ro");

    let starved =
        guild.run_tool(SUMMARIZE_CSV, r#"{"path":"/data/people.csv"}"#, &["--dir", &data, "--fuel", "200000"]);
    starved.expect_code(3).expect_stderr("fuel exhausted: used 200000 of 200000 units (raise --fuel)");
    // The interpreter's 13 MiB memory image does not fit in 8 MiB: refused at instantiation.
    let cramped =
        guild.run_tool(SUMMARIZE_CSV, r#"{"path":"/data/people.csv"}"#, &["--dir", &data, "--memory", "8MiB"]);
    cramped.expect_code(3).expect_stderr("memory limit 8 MiB reached (raise --memory)");

    for escape in ["/data/../secret.csv", "/data/link.csv"] {
        let ran = guild.run_tool(SUMMARIZE_CSV, &format!(r#"{{"path":"{escape}"}}"#), &["--dir", &data]);
        ran.expect_code(4).expect_stderr("denied").expect_stderr("Operation not permitted");
        assert!(!ran.stdout.contains("hunter2"), "{ran:?}");
    }
    // No mount at that path: the file does not exist for the tool.
    let ran = guild.run_tool(SUMMARIZE_CSV, r#"{"path":"/etc/passwd"}"#, &["--dir", &data]);
    ran.expect_code(1).expect_stderr("No such file or directory");
}

#[test]
fn python_runs_replay_identically_including_a_fuel_stop() {
    let guild = guild_with(SUMMARIZE_CSV);
    let data = tree(&[("people.csv", PEOPLE_CSV)]);
    let dir = mount(data.path(), "/data", "ro");
    let ok = guild.run_tool(SUMMARIZE_CSV, r#"{"path":"/data/people.csv"}"#, &["--dir", &dir]);
    replays_identically(&guild, ok.expect_code(0));
    let starved = guild.run_tool(SUMMARIZE_CSV, r#"{"path":"/data/people.csv"}"#, &["--dir", &dir, "--fuel", "300000"]);
    replays_identically(&guild, starved.expect_code(3));
}

const README_MD: &str = "# Docs\n\nSee [the guide](guide/intro.md#start), [gone](missing.md) and \
                         [Rust](https://www.rust-lang.org).\n\n```\n[not a link](in-code.md)\n```\n\
                         [ref]: ../outside.md\n";

fn docs() -> tempfile::TempDir {
    tree(&[
        ("README.md", README_MD),
        ("guide/intro.md", "Back to [the start](../README.md).\n"),
        ("guide/notes.txt", "[x](y)"),
    ])
}

#[test]
fn javascript_markdown_links_lists_links_and_flags_broken_ones() {
    let guild = guild_with(MARKDOWN_LINKS);
    let docs = docs();
    let ran = guild.run_tool(MARKDOWN_LINKS, "{}", &["--dir", &mount(docs.path(), "/data", "ro"), "--logs"]);
    let out = ran.expect_code(0).json();
    assert_eq!(out["files"], 2, "{out:#}");
    let links = out["links"].as_array().expect("links");
    let targets: Vec<&str> = links.iter().filter_map(|l| l["target"].as_str()).collect();
    assert_eq!(
        targets,
        ["guide/intro.md#start", "missing.md", "https://www.rust-lang.org", "../outside.md", "../README.md"]
    );
    assert_eq!(links[1]["broken"], "/data/missing.md does not exist");
    assert_eq!(links[3]["broken"], "/outside.md is outside the mount");
    assert!(links[0].get("broken").is_none() && links[4].get("broken").is_none(), "{out:#}");
    assert_eq!((links[2]["kind"].as_str(), links[4]["line"].as_u64()), (Some("external"), Some(1)));
    assert_eq!(out["broken"], 2);
    ran.expect_stderr("markdown-links /data: 2 files, 5 links, 2 broken");

    let info = guild.run(&["describe", MARKDOWN_LINKS]).json();
    assert_eq!(info["name"], "markdown-links");
    assert_eq!(info["capabilities"]["dirs"][0]["guest_path"], "/data");
    assert_eq!(info["input_schema"]["additionalProperties"], false);
    guild.run_tool(MARKDOWN_LINKS, r#"{"path":3}"#, &[]).expect_code(2).expect_stderr("path must be an absolute path");
}

#[test]
fn javascript_tool_hits_fuel_and_memory_limits_and_cannot_leave_its_mount() {
    let guild = guild_with(MARKDOWN_LINKS);
    let scene = tree(&[("data/README.md", README_MD), ("secret.md", "[token](https://example.com/hunter2)\n")]);
    std::os::unix::fs::symlink(scene.path().join("secret.md"), scene.path().join("data/link.md")).expect("symlink");
    let data = mount(&scene.path().join("data"), "/data", "ro");
    let before = listing(scene.path());

    let starved = guild.run_tool(MARKDOWN_LINKS, "{}", &["--dir", &data, "--fuel", "2000000"]);
    starved.expect_code(3).expect_stderr("fuel exhausted: used 2000000 of 2000000 units (raise --fuel)");
    let cramped = guild.run_tool(MARKDOWN_LINKS, "{}", &["--dir", &data, "--memory", "8MiB"]);
    cramped.expect_code(3).expect_stderr("memory limit 8 MiB reached (raise --memory)");

    for escape in ["/data/../secret.md", "/data/link.md"] {
        let ran = guild.run_tool(MARKDOWN_LINKS, &format!(r#"{{"path":"{escape}"}}"#), &["--dir", &data]);
        ran.expect_code(4).expect_stderr("denied").expect_stderr("not-permitted");
        assert!(!ran.stdout.contains("hunter2"), "{ran:?}");
    }
    let ran = guild.run_tool(MARKDOWN_LINKS, r#"{"path":"/etc"}"#, &["--dir", &data]);
    ran.expect_code(4).expect_stderr("/etc is not under a mounted directory");
    assert_eq!(listing(scene.path()), before, "nothing was written");
}

#[test]
fn javascript_runs_replay_identically_including_a_fuel_stop() {
    let guild = guild_with(MARKDOWN_LINKS);
    let docs = docs();
    let dir = mount(docs.path(), "/data", "ro");
    let ok = guild.run_tool(MARKDOWN_LINKS, "{}", &["--dir", &dir]);
    replays_identically(&guild, ok.expect_code(0));
    let starved = guild.run_tool(MARKDOWN_LINKS, "{}", &["--dir", &dir, "--fuel", "3000000"]);
    replays_identically(&guild, starved.expect_code(3));
}

/// Every call gets a fresh instance, interpreter state included: both tools count the calls
/// their instance has served in a module-level variable and log it, and two calls of one loaded
/// tool on one runtime (its pooled slots reused) each see the count start over.
#[tokio::test]
async fn interpreter_globals_do_not_survive_into_the_next_call() {
    use guild_runtime::{Access, Grants, Limits, Mount, Outcome, Runtime, RuntimeConfig};
    let data = tree(&[("people.csv", PEOPLE_CSV), ("notes.md", "See [the guide](guide.md).\n")]);
    let grants = Grants {
        mounts: vec![Mount {
            host_path: data.path().to_path_buf(),
            guest_path: "/data".into(),
            access: Access::ReadOnly,
        }],
        ..Grants::default()
    };
    let cases = [(SUMMARIZE_CSV, r#"{"path":"/data/people.csv"}"#), (MARKDOWN_LINKS, r#"{"path":"/data/notes.md"}"#)];
    // Compiled once by the CLI into the shared home; the same engine settings find it there.
    let config = RuntimeConfig { cache_dir: Some(shared_home().join("cache")), ..RuntimeConfig::default() };
    let runtime = Runtime::new(config).expect("runtime");
    for (component, input) in cases {
        guild_with(component);
        let (tool, _) = runtime.load_file(component.as_ref()).await.expect("load");
        for call in 1..=3 {
            let report = runtime.run(&tool, input, &grants, &Limits::default()).await.expect("run");
            assert!(matches!(report.outcome, Outcome::Output { .. }), "{component} call {call}: {:?}", report.outcome);
            let logged: Vec<&str> = report.logs.iter().map(|line| line.message.as_str()).collect();
            assert!(
                logged.iter().any(|m| m.ends_with("(call 1 of this instance)")),
                "{component} call {call} saw state left by an earlier call: {logged:?}"
            );
        }
    }
}
