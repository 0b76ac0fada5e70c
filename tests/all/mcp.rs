//! MCP: a client nobody here wrote — the official MCP Python SDK (PyPI `mcp`, installed by
//! scripts/setup.sh) driven by tests/mcp/client.py — against the real `guild mcp` over stdio and
//! `/mcp` on the real `guild serve`. Every call must leave a bundle that `guild replay`
//! reproduces, the cancelled one included.

use crate::Guild;
use crate::daemon::Daemon;
use guild_test_artifacts::HOSTILE;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// The Python client script, beside the tests.
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/client.py");

/// Run the client script with `args`; its report.
pub(crate) fn client(args: &[&str]) -> Value {
    let output = Command::new("python3")
        .arg(CLIENT)
        .args(args)
        .output()
        .expect("python3 runs (scripts/setup.sh installs the MCP Python SDK)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the MCP client failed (is the `mcp` package installed? run scripts/setup.sh)\nstdout: {stdout}\nstderr: {stderr}"
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("the client's report is not JSON ({e}): {stdout}"))
}

/// What every transport must show: the tools with their schemas; outputs as structured content
/// and text with the bundle in `_meta`; a denial, a limit and bad input as tool errors with the
/// CLI's messages; an unknown tool as a protocol error; progress, then a cancelled run.
pub(crate) fn check_report(report: &Value) {
    let tools = report["tools"].as_object().expect("tools listed");
    for name in ["echo", "wc", "grep", "hash", "json-query", "http-get", "hostile"] {
        assert!(tools.contains_key(name), "{name} is not listed: {:?}", tools.keys());
    }
    let echo = &tools["echo"];
    assert_eq!(echo["description"], "Returns the message it is given, unchanged.");
    assert_eq!(echo["input_schema"]["properties"]["message"]["type"], "string", "{echo}");
    assert_eq!(tools["hostile"]["input_schema"]["type"], "object", "MCP input schemas are objects");

    let calls = &report["calls"];
    for name in ["echo", "wc", "grep", "hash", "json_query"] {
        let call = &calls[name];
        assert_eq!(call["is_error"], false, "{name}: {call}");
        let bundle = call["meta"]["guild/bundle"].as_str().unwrap_or_default();
        assert_eq!(bundle.len(), 64, "{name} names its bundle in _meta: {call}");
        let text: Value = serde_json::from_str(call["text"][0].as_str().expect("text")).expect("text is the JSON");
        if call["structured"].is_object() {
            assert_eq!(text, call["structured"], "{name}: text and structured content agree");
        }
    }
    assert_eq!(calls["echo"]["structured"], serde_json::json!({ "message": "hello from an MCP client" }));
    assert_eq!(calls["wc"]["structured"]["total"]["words"], 3, "{}", calls["wc"]);

    let error_text = |name: &str| -> String {
        let call = &calls[name];
        assert_eq!(call["is_error"], true, "{name} is a tool error: {call}");
        call["text"][0].as_str().unwrap_or_default().to_string()
    };
    let denied = error_text("denied");
    assert!(denied.contains("denied"), "{denied}");
    assert_eq!(calls["denied"]["meta"]["guild/bundle"].as_str().map(str::len), Some(64), "a denial is recorded too");
    let limit = error_text("limit");
    assert!(limit.starts_with("fuel exhausted") && limit.contains("raise --fuel"), "{limit}");
    let invalid = error_text("invalid");
    assert!(invalid.starts_with("input does not match the tool's schema"), "{invalid}");
    let unknown = report["unknown_tool"].as_str().unwrap_or_default();
    assert!(unknown.contains("no_such_tool"), "an unknown tool is a protocol error: {unknown}");

    for cancel in [&report["cancel"], &report["cancel_computing"]] {
        let progress = cancel["progress"].as_array().expect("progress");
        assert!(!progress.is_empty(), "a run asked for progress reports it: {cancel}");
        assert!(progress[0]["message"].as_str().unwrap_or_default().starts_with("running for"), "{cancel}");
        assert_eq!(progress[0]["total"], 10_000.0, "out of the tool's timeout: {cancel}");
        assert!(cancel["finished"].is_null(), "the cancelled call did not answer: {cancel}");
    }
}

/// Every run in the audit log: (tool, outcome). Checks that both cancelled runs' bundles say so,
/// and that `guild replay` reproduces every bundle.
pub(crate) fn replay_every_run(guild: &Guild, audit_log: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(audit_log).unwrap_or_else(|e| panic!("{}: {e}", audit_log.display()));
    let mut runs = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let record: Value = serde_json::from_str(line).expect("an audit record is JSON");
        if record.get("event").is_some() {
            // A change to the tools (the upload added a revision), not a run.
            continue;
        }
        let tool = record["tool"].as_str().unwrap_or_default().to_string();
        let outcome = record["outcome"].as_str().unwrap_or_default().to_string();
        let bundle = record["bundle"].as_str().unwrap_or_else(|| panic!("every run has a bundle: {record}"));
        let replayed = guild.run(&["replay", bundle]);
        assert_eq!(replayed.code, 0, "{tool} ({outcome}) replays: {replayed:#?}");
        runs.push((tool, outcome));
    }
    let cancelled = runs.iter().filter(|(tool, outcome)| tool == "hostile" && outcome == "cancelled").count();
    assert_eq!(cancelled, 2, "the cancelled runs' bundles say cancelled: {runs:?}");
    runs
}

#[test]
fn the_python_sdk_client_uses_guild_mcp_over_stdio() {
    let guild = Guild::new();
    let data = crate::tree(&[("a.txt", "guild runs tools\n")]);
    let dir = crate::mount(data.path(), "/data", "ro");
    let home = guild.home().to_str().expect("utf-8").to_string();
    let guild_binary = env!("CARGO_BIN_EXE_guild");
    let report = client(&["stdio", guild_binary, "--home", &home, "mcp", "--dir", &dir, "--tool", HOSTILE]);
    check_report(&report);
    let runs = replay_every_run(&guild, &guild.home().join("mcp/session-0/audit.log"));
    assert_eq!(runs.len(), 9, "one bundle per call that ran: {runs:?}");
}

#[test]
fn the_python_sdk_client_uses_mcp_over_http_with_a_token() {
    let guild = Guild::new();
    let data = crate::tree(&[("a.txt", "guild runs tools\n")]);
    let dir = crate::mount(data.path(), "/data", "ro");
    let daemon = Daemon::start(&guild, &["--dir", &dir], &[("GUILD_TOKEN", "mcp-token")]);
    let url = format!("http://127.0.0.1:{}/mcp", daemon.port);

    let report = client(&["http", &url, "mcp-token", HOSTILE]);
    assert_eq!(report["list_changed"]["announced"], true, "an upload is announced: {}", report["list_changed"]);
    check_report(&report);
    replay_every_run(&guild, &guild.home().join("audit.log"));
}

#[test]
fn mcp_over_http_refuses_bad_tokens_foreign_hosts_and_browser_origins() {
    let guild = Guild::new();
    let daemon = Daemon::start(&guild, &[], &[("GUILD_TOKEN", "mcp-token")]);
    let ping = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let accept = ("accept", "application/json, text/event-stream");
    let json = ("content-type", "application/json");

    let reply = daemon.call_with("POST", "/mcp", "wrong", ping, &[accept, json]);
    assert_eq!((reply.status, reply.code().as_str()), (401, "unauthorized"));
    assert_eq!(reply.headers.get("www-authenticate").map(String::as_str), Some("Bearer"));

    // DNS rebinding: a page served from evil.example resolving to 127.0.0.1.
    let reply = daemon.call_with("POST", "/mcp", "mcp-token", ping, &[accept, json, ("host", "evil.example")]);
    assert_eq!(reply.status, 403, "a foreign Host is refused: {}", String::from_utf8_lossy(&reply.body));
    let origin = ("origin", "http://evil.example");
    let reply = daemon.call_with("POST", "/mcp", "mcp-token", ping, &[accept, json, origin]);
    assert_eq!(reply.status, 403, "a browser Origin is refused: {}", String::from_utf8_lossy(&reply.body));
}

/// The MCP Inspector's CLI (npm `@modelcontextprotocol/inspector`, installed by scripts/setup.sh
/// under tests/mcp), installed beside the client script.
const INSPECTOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/node_modules/.bin/mcp-inspector");

/// `mcp-inspector --cli TARGET... ARGS...`: its exit code and the JSON it printed.
fn inspector(target: &[&str], args: &[&str]) -> (i32, Value) {
    let output = Command::new(INSPECTOR)
        .args(["--cli", "--connect-timeout", "120000"])
        .args(target)
        .args(args)
        .output()
        .expect("the MCP Inspector runs (scripts/setup.sh installs it under tests/mcp)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Results go to stdout; a failure is one JSON line on stderr.
    let text = if stdout.trim().is_empty() { stderr.lines().last().unwrap_or_default() } else { stdout.trim() };
    let value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("the Inspector printed no JSON ({e}): {stdout}\n{stderr}"));
    (output.status.code().unwrap_or(-1), value)
}

#[test]
fn the_mcp_inspector_cli_lists_and_calls_tools_over_stdio_and_http() {
    let guild = Guild::new();
    let data = crate::tree(&[("a.txt", "guild runs tools\n")]);
    let dir = crate::mount(data.path(), "/data", "ro");
    let home = guild.home().join("stdio");
    let home = home.to_str().expect("utf-8");
    let stdio = [env!("CARGO_BIN_EXE_guild"), "--home", home, "mcp", "--dir", &dir, "--tool", HOSTILE];

    let (code, listed) = inspector(&stdio, &["--method", "tools/list"]);
    assert_eq!(code, 0, "{listed}");
    let names: Vec<&str> =
        listed["tools"].as_array().expect("tools").iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["echo", "grep", "hash", "hostile", "http-get", "json-query", "wc"]);

    let (code, wc) = inspector(&stdio, &["--method", "tools/call", "--tool-name", "wc", "--tool-arg", "path=/data"]);
    assert_eq!((code, &wc["isError"]), (0, &Value::Bool(false)), "{wc}");
    assert_eq!(wc["structuredContent"]["total"]["words"], 3, "{wc}");
    let call = ["--method", "tools/call", "--tool-name"];
    let (_, denied) = inspector(&stdio, &[&call[..], &["http-get", "--tool-arg", "url=http://127.0.0.1:9/"]].concat());
    assert_eq!(denied["isError"], true, "{denied}");
    assert!(denied["content"][0]["text"].as_str().unwrap_or_default().contains("denied"), "{denied}");
    let (_, limit) = inspector(&stdio, &[&call[..], &["hostile", "--tool-arg", "attack=loop"]].concat());
    assert_eq!(limit["isError"], true, "{limit}");
    assert!(limit["content"][0]["text"].as_str().unwrap_or_default().starts_with("fuel exhausted"), "{limit}");
    for result in [&wc, &denied, &limit] {
        let bundle = result["_meta"]["guild/bundle"].as_str().expect("the bundle is in _meta");
        let replayed = guild.run(&["--home", home, "replay", bundle]);
        assert_eq!(replayed.code, 0, "{replayed:#?}");
    }

    let daemon = Daemon::start(&guild, &[], &[("GUILD_TOKEN", "mcp-token")]);
    let url = format!("http://127.0.0.1:{}/mcp", daemon.port);
    let http = ["--transport", "http", "--server-url", &url, "--header", "Authorization: Bearer mcp-token"];
    let (code, echo) = inspector(&[], &[&http[..], &call[..], &["echo", "--tool-arg", "message=over http"]].concat());
    assert_eq!((code, &echo["structuredContent"]), (0, &serde_json::json!({ "message": "over http" })), "{echo}");
    let wrong = ["--transport", "http", "--server-url", &url, "--header", "Authorization: Bearer wrong"];
    let (code, refused) = inspector(&[], &[&wrong[..], &["--method", "tools/list"]].concat());
    assert_ne!(code, 0, "a wrong token is refused: {refused}");
    assert_eq!(refused["error"]["code"], "auth_required", "{refused}");
}

/// Frames a strict client or a broken one may send, and the one answer each must get:
/// (frame, expected id, expected code). Notifications get none.
fn bad_frames() -> Vec<(String, Value, i64)> {
    let call = |params: &str| format!(r#"{{"jsonrpc":"2.0","id":"c","method":"tools/call",{params}}}"#);
    vec![
        // A JavaScript client cutting an emoji in half.
        (
            r#"{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"echo","arguments":{"message":"truncated emoji: \ud83d"}}}"#.into(),
            Value::from(11),
            -32602,
        ),
        (r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#.into(), Value::Null, -32600),
        ("{this is not json".into(), Value::Null, -32700),
        (call(r#""params":{"name":"echo","arguments":"a string"}"#), Value::from("c"), -32602),
        (call(r#""params":{"name":"echo","arguments":[1,2]}"#), Value::from("c"), -32602),
        (call(r#""params":null"#), Value::from("c"), -32602),
        (call(r#""params":{"arguments":{}}"#), Value::from("c"), -32602),
        (r#"{"jsonrpc":"2.0","id":12,"method":"no/such/method"}"#.into(), Value::from(12), -32601),
    ]
}

fn check_answer(answer: &Value, id: &Value, code: i64, frame: &str) {
    assert_eq!(answer["jsonrpc"], "2.0", "{frame} -> {answer}");
    assert!(answer.as_object().is_some_and(|o| o.contains_key("id")), "{frame} -> {answer} has no id");
    assert_eq!(&answer["id"], id, "{frame} -> {answer}");
    assert_eq!(answer["error"]["code"], code, "{frame} -> {answer}");
    assert!(answer["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{answer}");
}

#[test]
fn every_stdio_frame_gets_exactly_one_answer_with_the_right_code() {
    let guild = Guild::new();
    let mut command = guild.command();
    command.arg("mcp").stderr(std::process::Stdio::piped());
    let mut session = RawMcp::start(command);
    for (frame, id, code) in bad_frames() {
        session.send(&frame);
        check_answer(&session.answer(), &id, code, &frame);
    }
    // What `_meta` says of the caller is checked: a priority is 0 to 9, an agent label a label.
    let meta = |id: u32, meta: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"m"}},"_meta":{meta}}}}}"#
        )
    };
    for (id, bad) in
        [(41, r#"{"guild/priority":12}"#), (42, r#"{"guild/priority":"high"}"#), (43, r#"{"guild/agent":"a b"}"#)]
    {
        let frame = meta(id, bad);
        session.send(&frame);
        check_answer(&session.answer(), &Value::from(id), -32602, &frame);
    }
    session.send(&meta(44, r#"{"guild/priority":9,"guild/agent":"planner"}"#));
    let ran = session.answer();
    assert_eq!(ran["result"]["structuredContent"]["message"], "m", "{ran}");
    // A malformed notification is not answered; the next request is, in order.
    session.send(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":7}"#);
    session.send(r#"{"jsonrpc":"2.0","id":99,"method":"ping"}"#);
    let pong = session.answer();
    assert_eq!((pong["id"].as_i64(), pong["result"].is_object()), (Some(99), true), "{pong}");
    let (status, mut child) = session.finish();
    assert!(status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("stderr");
    assert!(stderr.contains("dropped an MCP frame"), "a dropped frame is logged at warn: {stderr}");
}

#[test]
fn every_http_frame_gets_exactly_one_json_rpc_answer() {
    let guild = Guild::new();
    let daemon = Daemon::start(&guild, &[], &[("GUILD_TOKEN", "rpc-token")]);
    let headers = [("accept", "application/json, text/event-stream"), ("content-type", "application/json")];
    // An unknown method is rmcp's to answer (after its session and protocol checks).
    for (frame, id, code) in bad_frames().into_iter().filter(|(_, _, code)| *code != -32601) {
        let reply = daemon.call_with("POST", "/mcp", "rpc-token", frame.as_bytes(), &headers);
        assert_eq!(reply.status, 400, "{frame}: {}", String::from_utf8_lossy(&reply.body));
        check_answer(&reply.json(), &id, code, &frame);
    }
}

#[test]
fn a_request_id_in_flight_cannot_be_reused_over_stdio() {
    let guild = Guild::new();
    let mut command = guild.command();
    command.args(["mcp", "--tool", HOSTILE]).stderr(std::process::Stdio::null());
    let mut session = RawMcp::start(command);
    let sleep = r#"{"jsonrpc":"2.0","id":"same","method":"tools/call","params":{"name":"hostile","arguments":{"attack":"sleep"}}}"#;
    session.send(sleep);
    std::thread::sleep(std::time::Duration::from_millis(300));
    session.send(sleep);
    let refused = session.answer();
    assert_eq!((refused["id"].as_str(), refused["error"]["code"].as_i64()), (Some("same"), Some(-32600)), "{refused}");
    session.send(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"same"}}"#);
    session.send(r#"{"jsonrpc":"2.0","id":"after","method":"ping"}"#);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let next = session.answer();
        if next["id"] == "after" {
            ids.push("after");
            break;
        }
    }
    assert_eq!(ids, ["after"], "the stream goes on");
    let _ = session.finish();
}

/// A `guild mcp` process spoken to in raw JSON-RPC lines, past `initialize`.
pub(crate) struct RawMcp {
    pub(crate) child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl RawMcp {
    /// Spawn `command` (a `guild mcp …`, its stderr set by the caller) with piped stdin and
    /// stdout, and initialize the session.
    pub(crate) fn start(mut command: std::process::Command) -> Self {
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("guild mcp starts");
        let stdin = child.stdin.take();
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut session = Self { child, stdin, stdout };
        session.send(
            r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#,
        );
        assert!(session.answer()["result"]["serverInfo"].is_object());
        session.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        session
    }

    /// Write one frame.
    pub(crate) fn send(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("open");
        stdin.write_all(format!("{line}\n").as_bytes()).expect("write");
        stdin.flush().expect("flush");
    }

    /// Read the next answer.
    pub(crate) fn answer(&mut self) -> Value {
        use std::io::BufRead;
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read");
        serde_json::from_str::<Value>(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
    }

    /// Close stdin (the client is done) and wait for the process; its exit status.
    pub(crate) fn finish(mut self) -> (std::process::ExitStatus, std::process::Child) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("exits");
        (status, self.child)
    }
}
