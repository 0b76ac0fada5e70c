//! Any WASI program is a tool: a plain Rust `fn main` (a `wasi:cli/command` component) and the
//! WASI test suite's preview-1 modules, run through `guild run` and the runtime API under the
//! same limits, mounts, recording and replay as `guild-tool` components.

use crate::{Guild, mount, tree};
use guild_replay::{Bundle, DirStore, HostKey};
use guild_runtime::{
    CommandConfig, CommandOutput, Grants, LimitHit, Limits, Mount, Outcome, RecordingConfig, ReplayOptions, Runtime,
    RuntimeConfig, ToolErrorKind,
};
use guild_test_artifacts::WASI_COMMAND;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

fn recording_runtime(home: &Path) -> (Runtime, Arc<DirStore>) {
    let store = Arc::new(DirStore::open(home.join("store")).expect("store"));
    let recording = RecordingConfig::new(store.clone(), Arc::new(HostKey::generate().expect("key")));
    let config =
        RuntimeConfig { recording: Some(recording), cache_dir: Some(home.join("cache")), ..RuntimeConfig::default() };
    (Runtime::new(config).expect("runtime"), store)
}

fn output_of(outcome: &Outcome) -> CommandOutput {
    match outcome {
        Outcome::Output { output } => {
            CommandOutput::parse(output).unwrap_or_else(|| panic!("not a command output: {output}"))
        }
        other => panic!("no output: {other:?}"),
    }
}

async fn replays_identically(runtime: &Runtime, store: &DirStore, bundle: guild_replay::Digest) {
    let (manifest, signature) = store.get_bundle(&bundle).expect("bundle stored");
    let bundle = Bundle::open(store, &manifest, &signature, None).expect("bundle verifies");
    let replayed = runtime.replay(&bundle, store, &ReplayOptions::default()).await.expect("replays");
    assert_eq!(replayed.mismatch, None, "{replayed:?}");
    assert_eq!(replayed.fuel_replayed_units, replayed.fuel_recorded_units);
}

#[test]
fn guild_run_passes_arguments_streams_and_the_exit_code_through() {
    let guild = Guild::new();
    let ran = guild.run(&["run", WASI_COMMAND, "--", "echo", "a", "b c"]).expect_code(0).stdout.clone();
    assert_eq!(ran, "wasi_command\na\nb c\n");
    // `exit` from inside nested calls is the program's answer: its streams and its code.
    let exited = guild.run(&["run", WASI_COMMAND, "--", "exit", "1"]);
    exited.expect_code(1);
    assert_eq!((exited.stdout.as_str(), exited.stderr.as_str()), ("exiting\n", "on stderr\n"));
    let env = guild.run(&["run", WASI_COMMAND, "--env", "GREETING=hello there", "--", "env", "GREETING", "HOME"]);
    assert_eq!(env.expect_code(0).stdout, "GREETING=hello there\nHOME=\n");
    // stdin is passed through, and an absent one is at its end at once.
    let mut child = guild
        .command()
        .args(["run", WASI_COMMAND, "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("guild starts");
    child.stdin.take().expect("stdin").write_all(b"piped in\n").expect("write stdin");
    let out = child.wait_with_output().expect("guild ends");
    assert_eq!((out.status.code(), out.stdout.as_slice()), (Some(0), b"piped in\n".as_slice()));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "read 9 bytes\n");
    guild.run(&["run", WASI_COMMAND, "--", "cat"]).expect_code(0).expect_stderr("read 0 bytes");
    // A trap is a trap, not an exit code of the program's: 134, as under `wasmtime run`.
    let panicked = guild.run(&["run", WASI_COMMAND, "--", "panic"]);
    panicked.expect_code(134).expect_stderr("guild: trap").expect_stderr("asked to panic");
    assert_eq!(panicked.stderr.matches("asked to panic").count(), 1, "passed through once: {panicked:?}");
    // guild-tool components keep their own interface.
    guild.run(&["run", guild_test_artifacts::ECHO, "--", "x"]).expect_code(2).expect_stderr("for WASI commands");
    // --input and command flags together are one too many ways to say the input.
    guild
        .run(&["run", WASI_COMMAND, "--input", r#"{"args": ["echo", "x"]}"#, "--", "echo", "y"])
        .expect_code(2)
        .expect_stderr("not both");
    // stdin is read whole (a recorded run keeps all its input), up to --stdin-bytes.
    let mut child = guild
        .command()
        .args(["run", WASI_COMMAND, "--stdin-bytes", "1000", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("guild starts");
    let _ = child.stdin.take().expect("stdin").write_all(&[b'x'; 5000]);
    let out = child.wait_with_output().expect("guild ends");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--stdin-bytes"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn the_runtime_runs_a_command_with_its_input_document_and_replays_it() {
    let home = tempfile::tempdir().expect("tempdir");
    let (runtime, store) = recording_runtime(home.path());
    let (loaded, _) = runtime.load(&std::fs::read(WASI_COMMAND).expect("fixture")).await.expect("load");
    assert!(loaded.is_command());
    let config = CommandConfig {
        name: "fixture".into(),
        description: "the test command".into(),
        env_allowed: Some(vec!["LANG".into()]),
        args_prefix: vec!["echo".into()],
    };
    let tool = loaded.configured(config).expect("a command");
    assert_eq!((tool.info().name.as_str(), tool.info().description.as_str()), ("fixture", "the test command"));
    assert_eq!(tool.info().input_schema["properties"]["env"]["properties"]["LANG"]["type"], "string");

    let report = runtime.run(&tool, r#"{"args": ["one"]}"#, &Grants::default(), &Limits::default()).await.expect("run");
    assert_eq!(output_of(&report.outcome).stdout, b"fixture\none\n", "argv: fixture, echo (the prefix), one");
    replays_identically(&runtime, &store, report.bundle.expect("recorded")).await;

    let denied = runtime.run(&tool, r#"{"env": {"HOME": "/"}}"#, &Grants::default(), &Limits::default()).await;
    let denied = denied.expect("ran");
    assert!(
        matches!(&denied.outcome, Outcome::ToolError { kind: ToolErrorKind::Denied, message } if message.contains("HOME")),
        "{:?}",
        denied.outcome
    );
    let invalid = runtime.run(&tool, r#"{"argv": []}"#, &Grants::default(), &Limits::default()).await.expect("ran");
    assert!(matches!(invalid.outcome, Outcome::ToolError { kind: ToolErrorKind::InvalidInput, .. }));

    // stdin in, binary stdout out as base64, under the recorded name; and it replays.
    let plain =
        loaded.configured(CommandConfig { name: "fixture".into(), ..CommandConfig::default() }).expect("command");
    let input = r#"{"args": ["cat"], "stdin": "/wA=", "stdin_encoding": "base64"}"#;
    let report = runtime.run(&plain, input, &Grants::default(), &Limits::default()).await.expect("run");
    let Outcome::Output { output } = &report.outcome else { panic!("{:?}", report.outcome) };
    let doc: serde_json::Value = serde_json::from_str(output).expect("JSON");
    assert_eq!((doc["stdout"].as_str(), doc["stdout_encoding"].as_str()), (Some("/wA="), Some("base64")));
    assert_eq!(doc["stderr"], "read 2 bytes\n");
    replays_identically(&runtime, &store, report.bundle.expect("recorded")).await;

    // Output past its bound ends the run with the output limit.
    let limits = Limits { output_bytes_max: 4, ..Limits::default() };
    let report =
        runtime.run(&plain, r#"{"args": ["echo", "long enough"]}"#, &Grants::default(), &limits).await.expect("run");
    assert!(matches!(report.outcome, Outcome::Limit(LimitHit::Output { limit_bytes: 4 })), "{:?}", report.outcome);
}

#[tokio::test]
async fn a_command_reads_its_mounts_and_nothing_else() {
    let data = tree(&[("notes.txt", "inside the mount")]);
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let (tool, _) = runtime.load_file(WASI_COMMAND.as_ref()).await.expect("load");
    let grants = Grants {
        mounts: vec![Mount {
            host_path: data.path().to_path_buf(),
            guest_path: "/data".into(),
            access: guild_runtime::Access::ReadOnly,
        }],
        ..Grants::default()
    };
    let read = |path: &str| format!(r#"{{"args": ["read", "{path}"]}}"#);
    let report = runtime.run(&tool, &read("/data/notes.txt"), &grants, &Limits::default()).await.expect("run");
    assert_eq!(output_of(&report.outcome).stdout, b"inside the mount");
    let secret = tree(&[("secret.txt", "outside")]);
    let outside = secret.path().join("secret.txt");
    for path in ["/etc/passwd", "/data/../secret.txt", "/data/../../etc/passwd", outside.to_str().expect("utf-8")] {
        let report = runtime.run(&tool, &read(path), &grants, &Limits::default()).await.expect("run");
        let out = output_of(&report.outcome);
        assert_ne!(out.exit_code, 0, "{path} was read: {:?}", String::from_utf8_lossy(&out.stdout));
        assert!(out.stdout.is_empty());
        assert!(String::from_utf8_lossy(&out.stderr).starts_with("cannot read"), "{path}");
    }
    // The same over the CLI: a mount the command reads, and the same refusal outside it.
    let guild = Guild::new();
    let dir = mount(data.path(), "/data", "ro");
    let ran = guild.run(&["run", WASI_COMMAND, "--dir", &dir, "--", "read", "/data/notes.txt"]);
    assert_eq!(ran.expect_code(0).stdout, "inside the mount");
    guild.run(&["run", WASI_COMMAND, "--dir", &dir, "--", "read", "/data/../secret.txt"]).expect_code(1);
}

#[tokio::test]
async fn fuel_and_time_limits_stop_a_looping_command() {
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let (tool, _) = runtime.load_file(WASI_COMMAND.as_ref()).await.expect("load");
    let input = r#"{"args": ["loop"]}"#;
    let limits = Limits { fuel_units: 50_000_000, ..Limits::default() };
    let report = runtime.run(&tool, input, &Grants::default(), &limits).await.expect("run");
    assert!(matches!(report.outcome, Outcome::Limit(LimitHit::Fuel { .. })), "{:?}", report.outcome);
    let limits = Limits { fuel_units: u64::MAX / 2, timeout_ms: 300, ..Limits::default() };
    let report = runtime.run(&tool, input, &Grants::default(), &limits).await.expect("run");
    assert!(matches!(report.outcome, Outcome::Limit(LimitHit::Timeout { limit_ms: 300 })), "{:?}", report.outcome);
    let guild = Guild::new();
    guild.run(&["run", WASI_COMMAND, "--fuel", "50000000", "--", "loop"]).expect_code(3).expect_stderr("fuel");
}

/// The WASI test suite's prebuilt programs, when this machine has them.
fn suite_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("WASI_TESTSUITE") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/wasi-testsuite"),
    };
    dir.join("tests").is_dir().then_some(dir)
}

/// The suite's tests Guild passed when this was recorded (`scripts/wasi-testsuite.py`): 71 of 72,
/// as wasmtime 48.0.8 (README, "WASI commands"; both fail `remove_directory_trailing_slashes`).
const SUITE_PASSING: &str = include_str!("wasi_testsuite_passing.txt");

#[test]
fn the_wasi_test_suite_passes_at_least_as_recorded() {
    let Some(suite) = suite_dir() else {
        eprintln!("skipped: no WASI test suite (../shared/wasi-testsuite or WASI_TESTSUITE)");
        return;
    };
    let results = tempfile::tempdir().expect("tempdir");
    let json = results.path().join("results.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/wasi-testsuite.py");
    let mut command = std::process::Command::new("python3");
    command.arg(script).args(["--guild", env!("CARGO_BIN_EXE_guild"), "--suite"]).arg(&suite).arg("--json").arg(&json);
    // Side by side with wasmtime only when a WASMTIME binary is given.
    if let Some(wasmtime) = std::env::var_os("WASMTIME") {
        command.arg("--wasmtime").arg(wasmtime);
    } else {
        command.env_remove("WASMTIME");
    }
    let out = command.output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&json)
            .unwrap_or_else(|e| panic!("no results ({e}): {stdout} {}", String::from_utf8_lossy(&out.stderr))),
    )
    .expect("results JSON");
    let passed: Vec<&str> = summary["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|r| r["guild"] == "pass")
        .filter_map(|r| r["test"].as_str())
        .collect();
    let missing: Vec<&str> = SUITE_PASSING.lines().filter(|t| !t.is_empty() && !passed.contains(t)).collect();
    assert!(missing.is_empty(), "Guild no longer passes {missing:?}:\n{stdout}");
    if let Some(wasmtime_only) = summary["wasmtime_only"].as_array() {
        let unexplained: Vec<&str> =
            wasmtime_only.iter().filter_map(|t| t.as_str()).filter(|t| !KNOWN_DIFFERENCES.contains(t)).collect();
        assert!(unexplained.is_empty(), "wasmtime passes {unexplained:?}, Guild does not:\n{stdout}");
    }
}

/// Tests `wasmtime run` passes and Guild does not, each with its reason in the README. None since
/// preview-1 modules run on wasmtime-wasi's own preview 1, as under `wasmtime run`.
const KNOWN_DIFFERENCES: &[&str] = &[];

#[test]
fn the_daemon_serves_a_configured_command_over_http() {
    use crate::daemon::{Daemon, config_file, token_digest};
    use serde_json::json;
    let guild = Guild::new();
    let data = tree(&[("notes.txt", "served from the mount")]);
    let config = format!(
        r#"
[[tools]]
path = "{command}"
name = "fixture"
description = "Echoes, reads and exits, as its arguments say"
env = ["GREETING"]
[[tools.mounts]]
host = "{data}"
guest = "/data"

[[tools]]
path = "{command}"
name = "shout"
description = "Echoes a fixed word first"
args = ["echo", "fixed"]

[[tenants]]
name = "root"
token_blake3 = "{root}"
tools = ["*"]
"#,
        command = WASI_COMMAND,
        data = data.path().display(),
        root = token_digest("root-token"),
    );
    let config = config_file(guild.home(), &config);
    let daemon = Daemon::start(&guild, &["--config", &config], &[]);
    let tools = daemon.call("GET", "/v1/tools", "root-token", "").json();
    let listed = tools["tools"].as_array().and_then(|t| t.iter().find(|t| t["name"] == "fixture")).cloned();
    let listed = listed.unwrap_or_else(|| panic!("the command is listed: {tools}"));
    // The listing says what the operator set up: no fixed arguments here, one read-only mount.
    assert_eq!(
        listed["description"], "Echoes, reads and exits, as its arguments say. Mounted: /data (read-only).",
        "{listed}"
    );
    assert_eq!(
        listed["command"],
        json!({"args_prefix": [], "mounts": [{"guest_path": "/data", "access": "read-only"}]})
    );
    let shout = tools["tools"].as_array().and_then(|t| t.iter().find(|t| t["name"] == "shout")).cloned();
    let shout = shout.unwrap_or_else(|| panic!("the second command is listed: {tools}"));
    assert_eq!(shout["command"], json!({"args_prefix": ["echo", "fixed"], "mounts": []}), "{shout}");
    let description = shout["description"].as_str().unwrap_or_default();
    assert!(description.contains("arguments echo fixed first (do not repeat them"), "{description}");
    let reply = daemon.run("root-token", json!({"tool": "shout", "input": {"args": ["x"]}}));
    assert_eq!(reply.json()["output"]["stdout"], "shout\nfixed\nx\n", "{}", reply.json());

    let run = |input: serde_json::Value| daemon.run("root-token", json!({"tool": "fixture", "input": input}));
    let reply = run(json!({"args": ["echo", "over", "http"]}));
    assert_eq!(reply.status, 200, "{}", reply.json());
    let output = &reply.json()["output"];
    assert_eq!((output["exit_code"].as_i64(), output["stdout"].as_str()), (Some(0), Some("fixture\nover\nhttp\n")));
    let reply = run(json!({"args": ["read", "/data/notes.txt"]}));
    assert_eq!(reply.json()["output"]["stdout"], "served from the mount", "{}", reply.json());
    let reply = run(json!({"args": ["exit", "1"]}));
    assert_eq!(reply.json()["output"]["exit_code"], 1, "exit(1) is an output: {}", reply.json());
    let reply = run(json!({"args": ["env", "GREETING"], "env": {"GREETING": "hi"}}));
    assert_eq!(reply.json()["output"]["stdout"], "GREETING=hi\n", "{}", reply.json());
    let reply = run(json!({"args": ["env"], "env": {"PATH": "/bin"}}));
    // The input schema names only the operator's variables, so the daemon refuses others first.
    assert_eq!((reply.code().as_str(), reply.json()["error"]["field"].as_str()), ("invalid_input", Some("/env/PATH")));
    daemon.terminate();
}

/// `guild mcp ARGS…` spoken to over stdio, one JSON-RPC frame a line, initialized.
struct McpStdio {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl McpStdio {
    fn start(guild: &Guild, args: &[&str]) -> Self {
        let mut child = guild
            .command()
            .arg("mcp")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("guild mcp starts");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut mcp = Self { child, stdin, stdout };
        let init = serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
        assert!(mcp.ask(init).expect("answered")["result"]["serverInfo"].is_object());
        mcp.ask(serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        mcp
    }

    /// Send `frame`; its answer when it has an id.
    fn ask(&mut self, frame: serde_json::Value) -> Option<serde_json::Value> {
        use std::io::BufRead as _;
        writeln!(self.stdin, "{frame}").expect("write");
        self.stdin.flush().expect("flush");
        frame.get("id")?;
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read");
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}")))
    }

    /// `tools/call` of `name` with `arguments`: the command's output document.
    fn call(&mut self, name: &str, arguments: serde_json::Value) -> serde_json::Value {
        let call = serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": name, "arguments": arguments}});
        let called = self.ask(call).expect("answered");
        let text = called["result"]["content"][0]["text"].as_str().unwrap_or_else(|| panic!("a text result: {called}"));
        serde_json::from_str(text).expect("the output document")
    }

    /// Close stdin; the server exits cleanly.
    fn finish(self) {
        let Self { mut child, stdin, .. } = self;
        drop(stdin);
        assert!(child.wait().expect("exits").success());
    }
}

#[test]
fn an_mcp_client_lists_and_calls_a_command_over_stdio() {
    let guild = Guild::new();
    let data = tree(&[("notes.txt", "read over MCP")]);
    let dir = mount(data.path(), "/data", "ro");
    let mut mcp = McpStdio::start(&guild, &["--no-examples", "--tool", WASI_COMMAND, "--dir", &dir]);
    let listed = mcp.ask(serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).expect("answered");
    let tools = listed["result"]["tools"].as_array().cloned().unwrap_or_default();
    let command = tools.iter().find(|t| t["name"] == "wasi_command").unwrap_or_else(|| panic!("listed: {listed}"));
    assert_eq!(command["inputSchema"]["properties"]["args"]["type"], "array", "{command}");
    let description = command["description"].as_str().unwrap_or_default();
    assert!(description.ends_with("Mounted: /data (read-only)."), "{command}");
    assert_eq!(command["_meta"]["guild/command"]["mounts"][0]["guest_path"], "/data", "{command}");
    let output = mcp.call("wasi_command", serde_json::json!({"args": ["read", "/data/notes.txt"]}));
    assert_eq!((output["exit_code"].as_i64(), output["stdout"].as_str()), (Some(0), Some("read over MCP")), "{output}");
    // A nonzero exit is the run's output, and an error result an agent notices.
    let call = serde_json::json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
        "name": "wasi_command", "arguments": {"args": ["exit", "1"]}}});
    let called = mcp.ask(call).expect("answered");
    assert_eq!(called["result"]["isError"], true, "{called}");
    assert_eq!(called["result"]["_meta"]["guild/exit_code"], 1, "{called}");
    assert_eq!(called["result"]["structuredContent"]["exit_code"], 1, "{called}");
    mcp.finish();
}

/// A program built from its published crate by `tools/third-party/build.sh`, when it has been.
fn third_party(name: &str) -> Option<PathBuf> {
    let guild_wasm = Path::new(WASI_COMMAND).ancestors().nth(3)?;
    let built = guild_wasm.join(format!("third-party/{name}.wasm"));
    built.is_file().then_some(built)
}

#[tokio::test]
async fn a_third_party_program_runs_as_a_tool_over_http_and_replays() {
    use crate::daemon::{Daemon, config_file, token_digest};
    use serde_json::json;
    let Some(hexyl) = third_party("hexyl") else {
        eprintln!("skipped: hexyl is not built (tools/third-party/build.sh)");
        return;
    };
    let data = tree(&[("greeting.txt", "hi")]);
    let guild = Guild::new();
    let config = format!(
        r#"
[[tools]]
path = "{hexyl}"
name = "hexdump"
description = "A hex dump of stdin, or of files under /data named in args"
args = ["--color=never", "--border=none"]
[[tools.mounts]]
host = "{data}"
guest = "/data"

[[tenants]]
name = "root"
token_blake3 = "{root}"
tools = ["*"]
"#,
        hexyl = hexyl.display(),
        data = data.path().display(),
        root = token_digest("root-token"),
    );
    let config = config_file(guild.home(), &config);
    let daemon = Daemon::start(&guild, &["--config", &config], &[]);
    let run = |input: serde_json::Value| daemon.run("root-token", json!({"tool": "hexdump", "input": input}));
    let reply = run(json!({"stdin": "hello"}));
    let output = &reply.json()["output"];
    assert_eq!(output["exit_code"], 0, "{}", reply.json());
    assert!(output["stdout"].as_str().unwrap_or_default().contains("68 65 6c 6c 6f"), "{output}");
    let reply = run(json!({"args": ["/data/greeting.txt"]}));
    assert!(reply.json()["output"]["stdout"].as_str().unwrap_or_default().contains("68 69"), "{}", reply.json());
    let reply = run(json!({"args": ["/etc/passwd"]}));
    assert_ne!(reply.json()["output"]["exit_code"], 0, "outside its mount: {}", reply.json());
    daemon.terminate();

    // Recorded through the runtime, and replayed identically.
    let home = tempfile::tempdir().expect("tempdir");
    let (runtime, store) = recording_runtime(home.path());
    let (tool, _) = runtime.load_file(&hexyl).await.expect("hexyl loads");
    let report = runtime
        .run(&tool, r#"{"args": ["--color=never"], "stdin": "replay me"}"#, &Grants::default(), &Limits::default())
        .await
        .expect("run");
    assert_eq!(output_of(&report.outcome).exit_code, 0);
    replays_identically(&runtime, &store, report.bundle.expect("recorded")).await;
}

#[test]
fn a_second_third_party_program_serves_over_http_and_mcp() {
    use crate::daemon::{Daemon, config_file, token_digest};
    use serde_json::json;
    let Some(sd) = third_party("sd") else {
        eprintln!("skipped: sd is not built (tools/third-party/build.sh)");
        return;
    };
    let guild = Guild::new();
    let config = format!(
        r#"
[[tools]]
path = "{sd}"
name = "replace"
description = "Find and replace in stdin: args are FIND REPLACE (a regular expression)"

[[tenants]]
name = "root"
token_blake3 = "{root}"
tools = ["*"]
"#,
        sd = sd.display(),
        root = token_digest("root-token"),
    );
    let config = config_file(guild.home(), &config);
    let daemon = Daemon::start(&guild, &["--config", &config], &[]);
    let reply =
        daemon.run("root-token", json!({"tool": "replace", "input": {"args": ["(\\d)", "<$1>"], "stdin": "a1 b2"}}));
    let output = &reply.json()["output"];
    assert_eq!(
        (output["exit_code"].as_i64(), output["stdout"].as_str()),
        (Some(0), Some("a<1> b<2>")),
        "{}",
        reply.json()
    );
    let reply = daemon.run("root-token", json!({"tool": "replace", "input": {"args": ["(", "x"], "stdin": "y"}}));
    assert_ne!(reply.json()["output"]["exit_code"], 0, "a bad pattern is the program's own error: {}", reply.json());
    daemon.terminate();

    let mut mcp = McpStdio::start(&guild, &["--no-examples", "--tool", &sd.display().to_string()]);
    let listed = mcp.ask(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).expect("answered");
    assert!(listed["result"]["tools"].as_array().is_some_and(|t| t.iter().any(|t| t["name"] == "sd")), "{listed}");
    let output = mcp.call("sd", json!({"args": ["world", "mcp"], "stdin": "hello world"}));
    assert_eq!((output["exit_code"].as_i64(), output["stdout"].as_str()), (Some(0), Some("hello mcp")), "{output}");
    mcp.finish();
}
