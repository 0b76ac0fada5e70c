//! The tenant boundary and the listener, tried as another tenant and as an unauthenticated
//! client would: every route and MCP session that an id names answers only for its owner (an
//! admin excepted, and audited), with the same 404 as for an id that does not exist; no body is
//! read before its sender is authenticated; headers, idle connections and slow clients are
//! bounded; and the daemon keeps answering while heavy work runs.

use crate::Guild;
use crate::daemon::{ALICE, BOB, Daemon, ROOT, Reply, config_file, three_tenants};
use guild_test_artifacts::{ECHO, HOSTILE, MATMUL, WC};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn config(extra: &str) -> String {
    config_with_tools("", extra)
}

fn config_with_tools(tools: &str, extra: &str) -> String {
    three_tenants(&format!("[[tools]]\npath = \"{ECHO}\"\n{tools}\n{extra}"))
}

fn same_answer(a: &Reply, b: &Reply, what: &str) {
    assert_eq!(a.status, 404, "{what}: {}", String::from_utf8_lossy(&a.body));
    assert_eq!((a.status, &a.body), (b.status, &b.body), "{what}: someone else's must look exactly like nothing");
}

fn audit_events(guild: &Guild) -> Vec<Value> {
    let text = std::fs::read_to_string(guild.home().join("audit.log")).expect("audit log");
    text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|r| r["event"].is_object()).collect()
}

#[test]
fn another_tenants_runs_and_bundles_look_exactly_like_absent_ones() {
    let guild = Guild::new();
    let daemon = Daemon::start(&guild, &["--config", &config_file(guild.home(), &config(""))], &[]);
    let run = daemon.run(ALICE, json!({"tool": "echo", "input": {"message": "alice's"}})).json();
    let (id, bundle) = (run["id"].as_str().expect("id"), run["bundle"].as_str().expect("bundle"));
    let absent_run = "0123456789abcdef0123456789abcdef";
    let absent_bundle = "ab".repeat(32);

    let theirs = daemon.call("GET", &format!("/v1/runs/{id}"), BOB, "");
    let nothing = daemon.call("GET", &format!("/v1/runs/{absent_run}"), BOB, "");
    same_answer(&theirs, &nothing, "GET /v1/runs/{id}");
    let theirs = daemon.call("GET", &format!("/v1/bundles/{bundle}"), BOB, "");
    let nothing = daemon.call("GET", &format!("/v1/bundles/{absent_bundle}"), BOB, "");
    same_answer(&theirs, &nothing, "GET /v1/bundles/{id}");
    // No prefixes over the network, not even for the owner: a prefix is a search.
    let prefix = daemon.call("GET", &format!("/v1/bundles/{}", &bundle[..12]), ALICE, "");
    same_answer(&prefix, &nothing, "GET /v1/bundles/{prefix}");
    for malformed in ["..%2f..%2fkeys", "ZZZ", &"a".repeat(65)] {
        let reply = daemon.call("GET", &format!("/v1/bundles/{malformed}"), ALICE, "");
        same_answer(&reply, &nothing, "a malformed id");
    }

    assert_eq!(
        daemon.call("GET", &format!("/v1/runs/{id}"), ALICE, "").json()["output"],
        json!({"message": "alice's"})
    );
    let archive = daemon.call("GET", &format!("/v1/bundles/{bundle}"), ALICE, "");
    assert_eq!(archive.status, 200);
    let file = guild.home().join("alice.tar.zst");
    std::fs::write(&file, &archive.body).expect("write");
    Guild::new().run(&["bundle", "verify", file.to_str().expect("utf-8")]).expect_code(0);

    // An admin may look, and every look at another tenant's data is in the audit log.
    assert!(audit_events(&guild).is_empty());
    assert_eq!(daemon.call("GET", &format!("/v1/runs/{id}"), ROOT, "").status, 200);
    assert_eq!(daemon.call("GET", &format!("/v1/bundles/{bundle}"), ROOT, "").status, 200);
    let events = audit_events(&guild);
    let details: Vec<&str> = events.iter().filter_map(|e| e["event"]["detail"].as_str()).collect();
    assert_eq!(details, [format!("run {id}"), format!("bundle {bundle}")], "{events:?}");
    assert!(events.iter().all(|e| e["event"]["kind"] == "admin_read" && e["event"]["actor"] == "root"));
    assert!(events.iter().all(|e| e["tenant"] == "alice"), "the record names whose data was read");
    drop(daemon);
    guild.run(&["audit", "verify"]).expect_code(0);
}

/// An MCP client of the initialize-handshake generation over raw HTTP.
pub(crate) struct McpSession {
    port: u16,
    token: &'static str,
    id: String,
}

const ACCEPT: (&str, &str) = ("accept", "application/json, text/event-stream");
const JSON: (&str, &str) = ("content-type", "application/json");
const PROTOCOL: (&str, &str) = ("mcp-protocol-version", "2025-06-18");

/// The JSON-RPC messages of a response (a JSON body or an event stream).
pub(crate) fn messages(reply: &Reply) -> Vec<Value> {
    let text = String::from_utf8_lossy(&reply.body);
    if reply.headers.get("content-type").is_some_and(|t| t.contains("event-stream")) {
        return text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect();
    }
    serde_json::from_str(&text).map(|v| vec![v]).unwrap_or_default()
}

impl McpSession {
    pub(crate) fn open(daemon: &Daemon, token: &'static str) -> Self {
        Self::open_with(daemon, token, json!({}))
    }

    fn open_with(daemon: &Daemon, token: &'static str, capabilities: Value) -> Self {
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": capabilities, "clientInfo": {"name": "raw", "version": "1"}}});
        let reply = daemon.call_with("POST", "/mcp", token, init.to_string().as_bytes(), &[ACCEPT, JSON]);
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
        let id = reply.headers.get("mcp-session-id").expect("a session id").clone();
        let session = Self { port: daemon.port, token, id };
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        assert_eq!(session.post_as(token, &initialized).status, 202);
        session
    }

    pub(crate) fn post_as(&self, token: &str, body: &Value) -> Reply {
        let headers = [ACCEPT, JSON, PROTOCOL, ("mcp-session-id", self.id.as_str())];
        crate::daemon::call(self.port, "POST", "/mcp", token, body.to_string().as_bytes(), &headers)
    }

    fn call_as(&self, token: &str, method: &str) -> Reply {
        let headers = [ACCEPT, PROTOCOL, ("mcp-session-id", self.id.as_str())];
        crate::daemon::call(self.port, method, "/mcp", token, b"", &headers)
    }

    fn list_tools(&self) -> Reply {
        self.post_as(self.token, &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
    }
}

#[test]
fn an_mcp_session_answers_only_the_tenant_that_opened_it() {
    let guild = Guild::new();
    let daemon = Daemon::start(&guild, &["--config", &config_file(guild.home(), &config(""))], &[]);
    let alices = McpSession::open(&daemon, ALICE);
    let listed = alices.list_tools();
    assert_eq!(listed.status, 200);
    assert!(messages(&listed).iter().any(|m| m["result"]["tools"].is_array()), "{:?}", messages(&listed));

    let nobodys = McpSession { port: daemon.port, token: BOB, id: "6b1e1a1e-0000-4000-8000-000000000000".into() };
    let list = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"});
    same_answer(&alices.post_as(BOB, &list), &nobodys.post_as(BOB, &list), "POST into another tenant's session");
    same_answer(&alices.call_as(BOB, "GET"), &nobodys.call_as(BOB, "GET"), "attaching to its event stream");
    let (deleted, nothing) = (alices.call_as(BOB, "DELETE"), nobodys.call_as(BOB, "DELETE"));
    assert_eq!((deleted.status, &deleted.body), (nothing.status, &nothing.body), "DELETE of another's session");
    assert_eq!(alices.list_tools().status, 200, "bob's DELETE did not end alice's session");
    assert_eq!(alices.call_as(ALICE, "DELETE").status, 202, "alice may end her own");
    assert_eq!(alices.list_tools().status, 404);
}

#[test]
fn live_mcp_sessions_are_bounded() {
    let guild = Guild::new();
    let config = config("[mcp]\nsessions_max = 2\n");
    let daemon = Daemon::start(&guild, &["--config", &config_file(guild.home(), &config)], &[]);
    let first = McpSession::open(&daemon, ALICE);
    let _second = McpSession::open(&daemon, BOB);
    let init = json!({"jsonrpc": "2.0", "id": 7, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
    let third = daemon.call_with("POST", "/mcp", ALICE, init.to_string().as_bytes(), &[ACCEPT, JSON]);
    assert_eq!(third.status, 503);
    assert!(third.headers.contains_key("retry-after"));
    let error = third.json();
    assert_eq!(error["id"], 7);
    assert!(error["error"]["message"].as_str().expect("message").contains("mcp.sessions_max"), "{error}");
    // However the content type is spelled.
    for spelling in ["Application/JSON", "application/json; charset=utf-8", "text/plain"] {
        let reply =
            daemon.call_with("POST", "/mcp", ALICE, init.to_string().as_bytes(), &[ACCEPT, ("content-type", spelling)]);
        assert_ne!(reply.status, 200, "{spelling}: a third session was opened");
    }
    assert_eq!(first.call_as(ALICE, "DELETE").status, 202);
    let fourth = daemon.call_with("POST", "/mcp", ALICE, init.to_string().as_bytes(), &[ACCEPT, JSON]);
    assert_eq!(fourth.status, 200, "a closed session frees its place");
}

#[test]
fn no_tenant_can_take_every_mcp_session_and_idle_ones_give_their_place_back() {
    let guild = Guild::new();
    let config = config("[mcp]\nsessions_max = 4\ntenant_sessions_max = 2\nsession_idle_ms = 1500\n");
    let daemon = Daemon::start(&guild, &["--config", &config_file(guild.home(), &config)], &[]);
    let _first = McpSession::open(&daemon, ALICE);
    let _second = McpSession::open(&daemon, ALICE);
    let init = json!({"jsonrpc": "2.0", "id": 8, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
    let third = daemon.call_with("POST", "/mcp", ALICE, init.to_string().as_bytes(), &[ACCEPT, JSON]);
    assert_eq!(third.status, 503);
    let error = third.json();
    assert!(error["error"]["message"].as_str().expect("message").contains("mcp.tenant_sessions_max"), "{error}");
    // Another tenant still gets a session.
    let _bob = McpSession::open(&daemon, BOB);
    // Sessions unused past session_idle_ms are closed and their places given back.
    std::thread::sleep(Duration::from_millis(2000));
    let again = daemon.call_with("POST", "/mcp", ALICE, init.to_string().as_bytes(), &[ACCEPT, JSON]);
    assert_eq!(again.status, 200, "idle sessions gave their places back");
}

/// Send `head` (and `body`) on a fresh connection; the status line of the answer and how long it
/// took, reading at most `within`.
fn raw(port: u16, head: &str, body: &[u8], within: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(within)).expect("timeout");
    stream.write_all(head.as_bytes()).expect("head");
    let _ = stream.write_all(body);
    let mut answer = vec![0u8; 512];
    let read = stream.read(&mut answer).unwrap_or(0);
    let status = String::from_utf8_lossy(&answer[..read]).lines().next().unwrap_or_default().to_string();
    (status, started.elapsed())
}

#[test]
fn no_body_is_read_before_its_sender_is_authenticated() {
    let guild = Guild::new();
    let daemon = Daemon::start(&guild, &["--config", &config_file(guild.home(), &config(""))], &[]);
    // 128 MiB announced, one KiB sent: the answer comes without the rest ever being read.
    for (path, token) in [("/v1/tools", ""), ("/v1/runs", ""), ("/v1/tools", BOB), ("/mcp", "")] {
        let auth = if token.is_empty() { String::new() } else { format!("authorization: Bearer {token}\r\n") };
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{auth}content-type: application/json\r\ncontent-length: 134217728\r\n\r\n"
        );
        let (status, took) = raw(daemon.port, &head, &[b'x'; 1024], Duration::from_secs(10));
        let expected = if token.is_empty() { "401" } else { "403" };
        assert!(status.contains(expected), "POST {path}: {status:?}");
        assert!(took < Duration::from_secs(3), "POST {path} answered only after {took:?}");
    }
}

#[test]
fn headers_idle_connections_and_slow_clients_are_bounded() {
    let guild = Guild::new();
    let limits = "[http]\nconnections_max = 3\nheader_bytes_max = 16384\nheader_read_timeout_ms = 600\n";
    let daemon = Daemon::start(&guild, &["--config", &config_file(guild.home(), &config(limits))], &[]);
    let big = format!("GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-padding: {}\r\n\r\n", "p".repeat(32 * 1024));
    let (status, _) = raw(daemon.port, &big, b"", Duration::from_secs(5));
    assert!(status.contains("431"), "{status:?}");

    // Connections that send nothing, more than there are places, opened again as they are
    // closed: a client that sends its request is still served, at once, and the connection
    // idle longest is the one closed to make room.
    let mut idle: Vec<TcpStream> =
        (0..12).map(|_| TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect")).collect();
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..5 {
        let (status, took) =
            raw(daemon.port, "GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n", b"", Duration::from_secs(10));
        assert!(status.contains("200"), "{status:?}");
        assert!(took < Duration::from_millis(300), "served after {took:?}, not by closing an idle connection");
        idle.push(TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect"));
    }
    let first = &mut idle[0];
    first.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    assert_eq!(first.read(&mut [0u8; 16]).unwrap_or(0), 0, "the longest idle connection was closed");
    drop(idle);

    // A client trickling its headers is cut off.
    let mut slow = TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").expect("write");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(4), "a slow client held its connection {:?}", started.elapsed());
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
}

#[test]
fn healthz_keeps_answering_while_an_export_and_a_cpu_gpu_run_are_in_progress() {
    let guild = Guild::new();
    let data = tempfile::tempdir().expect("tempdir");
    // Incompressible, so exporting its bundle (zstd) takes a while.
    let mut noise = vec![0u8; 48 << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for chunk in noise.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(data.path().join("noise.bin"), &noise).expect("write");
    let extra = format!(
        "[[tools]]\npath = \"{WC}\"\n[[tools.mounts]]\nhost = \"{}\"\nguest = \"/data\"\naccess = \"ro\"\n\n\
         [[tools]]\npath = \"{MATMUL}\"\n[tools.limits]\ntimeout_ms = 120000\n",
        data.path().display()
    );
    let text = config_with_tools(&extra, "");
    let daemon = Daemon::start(&guild, &["--config", &config_file(guild.home(), &text), "--gpu", "cpu"], &[]);
    let counted = daemon.run(ALICE, json!({"tool": "wc", "input": {"path": "/data"}})).json();
    let bundle = counted["bundle"].as_str().unwrap_or_else(|| panic!("{counted}")).to_string();

    let port = daemon.port;
    let export = std::thread::spawn(move || {
        let started = Instant::now();
        let reply = crate::daemon::call(port, "GET", &format!("/v1/bundles/{bundle}"), ALICE, b"", &[]);
        (reply.status, reply.body.len(), started.elapsed())
    });
    let matmul = json!({"tool": "matmul", "input": {"random": {"m": 384, "k": 384, "n": 384}, "repeat": 4}});
    let gpu = std::thread::spawn(move || {
        let started = Instant::now();
        let reply = crate::daemon::call(port, "POST", "/v1/runs", ALICE, matmul.to_string().as_bytes(), &[]);
        (reply.status, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(50));
    let mut latencies = Vec::new();
    while !(export.is_finished() && gpu.is_finished()) && latencies.len() < 200 {
        let started = Instant::now();
        assert_eq!(daemon.call("GET", "/healthz", "", "").status, 200);
        latencies.push(started.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, bytes, export_took) = export.join().expect("export");
    assert_eq!(status, 200);
    assert!(bytes > 40 << 20, "the whole archive arrived ({bytes} bytes)");
    let (status, gpu_took) = gpu.join().expect("gpu run");
    assert_eq!(status, 200);
    latencies.sort();
    assert!(latencies.len() >= 5, "the work took {export_took:?} and {gpu_took:?}: too short to measure");
    let p90 = latencies[latencies.len() * 9 / 10];
    let worst = *latencies.last().expect("some");
    assert!(p90 < Duration::from_millis(50), "p90 {p90:?}, worst {worst:?} over {} probes", latencies.len());
    assert!(worst < Duration::from_millis(250), "worst {worst:?} (p90 {p90:?})");
}

#[test]
fn output_that_breaks_its_contract_fails_alike_over_the_api_and_mcp() {
    let guild = Guild::new();
    let tools = format!("[[tools]]\npath = \"{}\"\n", guild_test_artifacts::LIAR);
    let daemon = Daemon::start(&guild, &["--config", &config_file(guild.home(), &config_with_tools(&tools, ""))], &[]);
    let lie = json!({"raw": r#"{"s":"a\ud800b"}"#});
    let run = daemon.run(ALICE, json!({"tool": "liar", "input": lie})).json();
    assert_eq!((run["status"].as_str(), run["error"]["kind"].as_str()), (Some("failed"), Some("failed")), "{run}");
    assert!(run["error"]["message"].as_str().expect("message").contains("not valid JSON"), "{run}");
    assert!(run["bundle"].is_string(), "the breach is on record");

    let session = McpSession::open(&daemon, ALICE);
    let call = |input: &Value| {
        let request =
            json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "liar", "arguments": input}});
        messages(&session.post_as(ALICE, &request)).into_iter().find(|m| m["id"] == 5).expect("an answer")
    };
    let broken = call(&lie);
    assert_eq!(broken["result"]["isError"], true, "{broken}");
    assert!(broken["result"]["content"][0]["text"].as_str().expect("text").contains("not valid JSON"), "{broken}");
    let array = call(&json!({"raw": "[1]"}));
    assert_eq!(array["result"]["isError"], true, "an array breaks the declared object schema: {array}");
    let fine = call(&json!({"raw": r#"{"s":"ok"}"#}));
    assert_eq!(fine["result"]["structuredContent"], json!({"s": "ok"}), "{fine}");
}

#[test]
fn a_tenant_sending_bodies_slowly_holds_neither_its_connection_nor_everyones() {
    let guild = Guild::new();
    let limits = "[http]\nbody_read_timeout_ms = 800\ntenant_requests_max = 2\n";
    let daemon = Daemon::start(&guild, &["--config", &config_file(guild.home(), &config(limits))], &[]);
    let slow_head = format!(
        "POST /v1/runs HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {BOB}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n"
    );
    // Bob's two places are taken by bodies that trickle in...
    let slow: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect");
            stream.write_all(slow_head.as_bytes()).expect("head");
            stream.write_all(b"{").expect("a byte");
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // ...so his third request is refused, while alice is served.
    let third = daemon.run(BOB, json!({"tool": "echo", "input": {"message": "x"}}));
    assert_eq!((third.status, third.code().as_str()), (429, "too_many_requests"));
    assert!(third.headers.contains_key("retry-after"));
    assert_eq!(daemon.run(ALICE, json!({"tool": "echo", "input": {"message": "x"}})).status, 200);
    // A body that does not arrive in time ends its request, and frees the place.
    for mut stream in slow {
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut answer = vec![0u8; 256];
        let started = Instant::now();
        let read = stream.read(&mut answer).unwrap_or(0);
        let status = String::from_utf8_lossy(&answer[..read]).lines().next().unwrap_or_default().to_string();
        assert!(status.contains("400") || read == 0, "{status:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "held {:?}", started.elapsed());
    }
    assert_eq!(daemon.run(BOB, json!({"tool": "echo", "input": {"message": "x"}})).status, 200);
}

#[test]
fn runs_at_their_bounds_must_leave_the_daemon_its_descriptors() {
    let guild = Guild::new();
    let greedy =
        config_with_tools("[tools.limits]\nwasi_resources_max = 100000\n", "[queue]\nruns_in_flight_max = 64\n");
    let ran = guild.run(&["serve", "--listen", "127.0.0.1:0", "--config", &config_file(guild.home(), &greedy)]);
    ran.expect_code(2).expect_stderr("file descriptors").expect_stderr("wasi_resources_max");
}

#[test]
fn an_upload_that_cannot_be_kept_is_not_registered() {
    let guild = Guild::new();
    let daemon = Daemon::start(&guild, &["--config", &config_file(guild.home(), &config(""))], &[]);
    // Where uploads are kept is taken by a file: the upload cannot be made durable.
    std::fs::remove_dir_all(guild.home().join("tools")).expect("the components directory");
    std::fs::write(guild.home().join("tools"), b"not a directory").expect("write");
    let wc = std::fs::read(WC).expect("wc");
    let reply = daemon.call_with("POST", "/v1/tools", ROOT, &wc, &[]);
    assert_eq!(
        (reply.status, reply.code().as_str()),
        (500, "host_failure"),
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let tools = daemon.call("GET", "/v1/tools", ROOT, "").json();
    let names: Vec<&str> =
        tools["tools"].as_array().expect("tools").iter().filter_map(|t| t["name"].as_str()).collect();
    assert!(!names.contains(&"wc"), "a tool a restart would lose was announced: {names:?}");
}

/// Attack (branch `attack`): `authenticate` in mcp_http.rs holds the tenant's request place
/// only until rmcp returns the response head; a `tools/call` in a session is answered with an
/// event stream at once while the tool runs, so the place is back before the call ends. With
/// `tenant_requests_max = 1` and a tool call in flight over MCP, the REST API still serves the
/// tenant (a REST call in flight makes it 429, as the test above shows).
#[test]
fn an_mcp_tool_call_in_flight_holds_its_tenants_request_place() {
    let guild = Guild::new();
    let tools = format!("[[tools]]\npath = \"{HOSTILE}\"\n");
    let text = config_with_tools(&tools, "[http]\ntenant_requests_max = 1\n");
    let daemon = Daemon::start(&guild, &["--config", &config_file(guild.home(), &text)], &[]);
    let session = McpSession::open(&daemon, ALICE);
    let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "hostile", "arguments": {"attack": "sleep"}}});
    let body = call.to_string();
    let mut stream = TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect");
    let head = format!(
        "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {ALICE}\r\naccept: {}\r\ncontent-type: application/json\r\nmcp-protocol-version: 2025-06-18\r\nmcp-session-id: {}\r\ncontent-length: {}\r\n\r\n{body}",
        ACCEPT.1,
        session.id,
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("write");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut answer = vec![0u8; 512];
    let read = stream.read(&mut answer).expect("the response head");
    let status = String::from_utf8_lossy(&answer[..read]).lines().next().unwrap_or_default().to_string();
    assert!(status.contains("200"), "{status}");
    std::thread::sleep(Duration::from_millis(300));
    let meanwhile = daemon.call("GET", "/v1/tools", ALICE, "");
    assert_eq!(
        (meanwhile.status, meanwhile.code().as_str()),
        (429, "too_many_requests"),
        "alice's one request place is free while her MCP tool call still runs"
    );
}

#[test]
fn a_tool_disabled_for_a_tenant_leaves_its_mcp_list_and_its_calls_are_refused() {
    let guild = Guild::new();
    let daemon = Daemon::start(&guild, &["--config", &config_file(guild.home(), &config(""))], &[]);
    let (alices, bobs) = (McpSession::open(&daemon, ALICE), McpSession::open(&daemon, BOB));
    let listed = |session: &McpSession| -> Vec<String> {
        messages(&session.list_tools())
            .iter()
            .flat_map(|m| m["result"]["tools"].as_array().cloned().unwrap_or_default())
            .filter_map(|t| t["name"].as_str().map(str::to_string))
            .collect()
    };
    assert!(listed(&alices).contains(&"echo".to_string()));
    let off = json!({"disabled": true, "tenant": "alice", "reason": "audit in progress"});
    let reply = daemon.call("PUT", "/v1/tools/echo/flags", ROOT, &off.to_string());
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert!(!listed(&alices).contains(&"echo".to_string()), "the tool left alice's list");
    assert!(listed(&bobs).contains(&"echo".to_string()), "bob still has it");
    let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "hi"}}});
    let answer = messages(&alices.post_as(ALICE, &call));
    let result = answer.iter().find(|m| m["id"] == 9).unwrap_or_else(|| panic!("answered: {answer:?}"));
    assert_eq!(result["result"]["isError"], true, "{result}");
    let text = result["result"]["content"][0]["text"].as_str().unwrap_or_default();
    assert!(text.starts_with("tool_disabled") && text.contains("audit in progress"), "{text}");
    let answer = messages(&bobs.post_as(BOB, &call));
    let result = answer.iter().find(|m| m["id"] == 9).unwrap_or_else(|| panic!("answered: {answer:?}"));
    assert_eq!(result["result"]["isError"], false, "bob's call runs: {result}");
}

/// `tools/list` pages hold at most `mcp.tools_page_max` tools, by name; the cursor carries on
/// after the last one, whatever was added meanwhile; a cursor tools/list never gave is refused.
#[test]
fn mcp_tools_list_pages_by_name_with_a_stable_cursor() {
    let guild = Guild::new();
    let more = format!(
        "[[tools]]\npath = \"{}\"\n\n[[tools]]\npath = \"{}\"\n\n[[tools]]\npath = \"{}\"\n",
        guild_test_artifacts::WC,
        guild_test_artifacts::HASH,
        guild_test_artifacts::GREP
    );
    let text = config_with_tools(&more, "[mcp]\ntools_page_max = 2\n");
    let daemon = Daemon::start(&guild, &["--config", &config_file(guild.home(), &text)], &[]);
    let session = McpSession::open(&daemon, ALICE);
    let page = |cursor: Option<&str>| -> Value {
        let params = cursor.map_or_else(|| json!({}), |c| json!({ "cursor": c }));
        let reply =
            session.post_as(ALICE, &json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": params}));
        messages(&reply).into_iter().find(|m| m["id"] == 7).expect("an answer")
    };
    let (mut names, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let answer = page(cursor.as_deref());
        let tools = answer["result"]["tools"].as_array().expect("tools").clone();
        assert!(tools.len() <= 2, "{answer}");
        names.extend(tools.iter().map(|t| t["name"].as_str().expect("name").to_string()));
        pages += 1;
        match answer["result"]["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(names, ["echo", "grep", "hash", "wc"], "every tool once, by name");
    assert_eq!(pages, 2);
    let refused = page(Some("not a cursor"));
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
}

/// Each run's bundle is an MCP resource of its tenant's: listed newest first and read (a summary
/// and the archive `guild replay` takes); another tenant gets what a bundle nobody has gets.
#[test]
fn bundles_are_mcp_resources_of_their_own_tenant_only() {
    use base64::Engine;
    let guild = Guild::new();
    let daemon = Daemon::start(&guild, &["--config", &config_file(guild.home(), &config(""))], &[]);
    let run = daemon.run(ALICE, json!({"tool": "echo", "input": {"message": "mine"}})).json();
    let bundle = run["bundle"].as_str().expect("bundle").to_string();
    let uri = format!("guild://bundles/{bundle}");
    let ask = |session: &McpSession, token: &str, method: &str, params: Value| -> Value {
        let reply = session.post_as(token, &json!({"jsonrpc": "2.0", "id": 9, "method": method, "params": params}));
        messages(&reply).into_iter().find(|m| m["id"] == 9).expect("an answer")
    };
    let alices = McpSession::open(&daemon, ALICE);
    let listed = ask(&alices, ALICE, "resources/list", json!({}));
    let resources = listed["result"]["resources"].as_array().expect("resources").clone();
    assert_eq!(resources.len(), 1, "{listed}");
    assert_eq!(resources[0]["uri"], uri.as_str());
    let read = ask(&alices, ALICE, "resources/read", json!({ "uri": uri }));
    let contents = read["result"]["contents"].as_array().expect("contents").clone();
    let summary: Value = serde_json::from_str(contents[0]["text"].as_str().expect("text")).expect("JSON");
    assert_eq!(summary["bundle"], bundle.as_str());
    assert_eq!(summary["principal"]["tenant"], "alice");
    let archive =
        base64::engine::general_purpose::STANDARD.decode(contents[1]["blob"].as_str().expect("blob")).expect("base64");
    assert_eq!(&archive[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd archive");
    let path = guild.home().join("from-mcp.tar.zst");
    std::fs::write(&path, archive).expect("write");
    assert!(guild.run(&["replay", path.to_str().expect("utf-8")]).expect_code(0).stdout.contains("replay identical"));

    // Bob: nothing listed, and alice's bundle reads like one nobody has.
    let bobs = McpSession::open(&daemon, BOB);
    let listed = ask(&bobs, BOB, "resources/list", json!({}));
    assert_eq!(listed["result"]["resources"], json!([]), "{listed}");
    let theirs = ask(&bobs, BOB, "resources/read", json!({ "uri": uri }));
    let nobodys = ask(&bobs, BOB, "resources/read", json!({ "uri": format!("guild://bundles/{}", "0".repeat(64)) }));
    assert_eq!(theirs["error"]["code"], -32002, "{theirs}");
    assert_eq!(theirs["error"]["code"], nobodys["error"]["code"]);
    let bad = ask(&alices, ALICE, "resources/list", json!({ "cursor": "no such run" }));
    assert_eq!(bad["error"]["code"], -32602, "{bad}");
    // A cursor naming alice's run pages nothing of hers for bob: the answer of a cursor nobody gave.
    let run_id = run["id"].as_str().expect("run id");
    let crossed = ask(&bobs, BOB, "resources/list", json!({ "cursor": run_id }));
    assert_eq!(crossed["error"], ask(&bobs, BOB, "resources/list", json!({ "cursor": "no such run" }))["error"]);
}

/// A client that takes tasks gets a `tools/call` answered at once as a task, whose id is the
/// run's: it is fetched from any later session (the run never depended on the connection),
/// cancelled, and answers only the tenant that started it.
#[test]
fn mcp_tool_calls_become_tasks_that_outlive_their_session_and_answer_only_their_tenant() {
    let guild = Guild::new();
    let hostile = format!("[[tools]]\npath = \"{}\"\n", guild_test_artifacts::HOSTILE);
    let text = config_with_tools(&hostile, "");
    let daemon = Daemon::start(&guild, &["--config", &config_file(guild.home(), &text)], &[]);
    let tasks = json!({"extensions": {"io.modelcontextprotocol/tasks": {}}});
    let ask = |session: &McpSession, token: &str, method: &str, params: Value| -> Value {
        let reply = session.post_as(token, &json!({"jsonrpc": "2.0", "id": 11, "method": method, "params": params}));
        messages(&reply).into_iter().find(|m| m["id"] == 11).expect("an answer")
    };
    let first = McpSession::open_with(&daemon, ALICE, tasks.clone());
    let created = ask(
        &first,
        ALICE,
        "tools/call",
        json!({"name": "echo", "arguments": {"message": "later"}, "_meta": {"guild/task": true}}),
    );
    assert_eq!(created["result"]["resultType"], "task", "{created}");
    let task = created["result"]["taskId"].as_str().expect("a task id").to_string();
    // The session ends; the task does not.
    assert_eq!(first.call_as(ALICE, "DELETE").status / 100, 2);
    let second = McpSession::open_with(&daemon, ALICE, tasks.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    let done = loop {
        let got = ask(&second, ALICE, "tasks/get", json!({ "taskId": task }));
        if got["result"]["status"] != "working" {
            break got;
        }
        assert!(Instant::now() < deadline, "the task never finished: {got}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(done["result"]["status"], "completed", "{done}");
    assert_eq!(done["result"]["result"]["structuredContent"]["message"], "later", "{done}");

    // Another tenant: the same answer as for a task nobody started.
    let bobs = McpSession::open_with(&daemon, BOB, tasks.clone());
    let theirs = ask(&bobs, BOB, "tasks/get", json!({ "taskId": task }));
    let nobodys = ask(&bobs, BOB, "tasks/get", json!({ "taskId": "0".repeat(32) }));
    assert_eq!(theirs["error"]["code"], nobodys["error"]["code"], "{theirs} {nobodys}");
    assert!(theirs["error"].is_object(), "{theirs}");
    assert!(ask(&bobs, BOB, "tasks/cancel", json!({ "taskId": task }))["error"].is_object());

    // A long call, cancelled: its task ends cancelled.
    let sleeping = ask(
        &second,
        ALICE,
        "tools/call",
        json!({"name": "hostile", "arguments": {"attack": "sleep"}, "_meta": {"guild/task": true}}),
    );
    let sleeper = sleeping["result"]["taskId"].as_str().expect("a task id").to_string();
    let cancelled = ask(&second, ALICE, "tasks/cancel", json!({ "taskId": sleeper }));
    assert!(cancelled["error"].is_null(), "{cancelled}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = ask(&second, ALICE, "tasks/get", json!({ "taskId": sleeper }));
        if got["result"]["status"] == "cancelled" {
            break;
        }
        assert!(Instant::now() < deadline, "the task was not cancelled: {got}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A client that does not take tasks, or does not ask for one, is answered as before.
    let plain = McpSession::open(&daemon, ALICE);
    let asks = json!({"name": "echo", "arguments": {"message": "now"}, "_meta": {"guild/task": true}});
    let direct = ask(&plain, ALICE, "tools/call", asks);
    assert_eq!(direct["result"]["structuredContent"]["message"], "now", "{direct}");
    let direct = ask(&second, ALICE, "tools/call", json!({"name": "echo", "arguments": {"message": "now"}}));
    assert_eq!(direct["result"]["structuredContent"]["message"], "now", "{direct}");
}

/// A session of the 2025 generation that started a task is told when the task ends:
/// `notifications/tasks` on its standalone stream, carrying what `tasks/get` answers.
#[test]
fn a_task_that_ends_is_announced_to_the_session_that_started_it() {
    let guild = Guild::new();
    let daemon = Daemon::start(&guild, &["--config", &config_file(guild.home(), &config(""))], &[]);
    let tasks = json!({"extensions": {"io.modelcontextprotocol/tasks": {}}});
    let session = McpSession::open_with(&daemon, ALICE, tasks);
    let mut stream = TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let get = format!(
        "GET /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {ALICE}\r\naccept: text/event-stream\r\n\
         mcp-session-id: {}\r\nmcp-protocol-version: 2025-06-18\r\n\r\n",
        session.id
    );
    stream.write_all(get.as_bytes()).expect("GET");
    let mut seen = String::new();
    let mut buf = [0u8; 8192];
    while !seen.contains("\r\n\r\n") {
        let n = stream.read(&mut buf).expect("the stream's head");
        assert!(n > 0, "the stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");

    let call = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "told"}, "_meta": {"guild/task": true}}});
    let created = messages(&session.post_as(ALICE, &call)).into_iter().find(|m| m["id"] == 5).expect("answer");
    let task = created["result"]["taskId"].as_str().expect("a task id").to_string();
    let note = loop {
        if let Some(note) = seen
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|m| m["method"] == "notifications/tasks")
        {
            break note;
        }
        let n = stream.read(&mut buf).unwrap_or_else(|e| panic!("no notifications/tasks came ({e}): {seen}"));
        assert!(n > 0, "the stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    };
    assert_eq!(note["params"]["taskId"], task.as_str(), "{note}");
    assert_eq!(note["params"]["status"], "completed", "{note}");
    assert_eq!(note["params"]["result"]["structuredContent"]["message"], "told", "{note}");
}

/// How the `hostile` runs the audit log holds ended, in order.
fn hostile_outcomes(guild: &Guild) -> Vec<String> {
    let log = std::fs::read_to_string(guild.home().join("audit.log")).unwrap_or_default();
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["tool"] == "hostile")
        .map(|r| r["outcome"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Wait until the audit log holds `n` `hostile` runs; how they ended.
fn wait_hostile(guild: &Guild, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let outcomes = hostile_outcomes(guild);
        if outcomes.len() >= n {
            return outcomes;
        }
        assert!(Instant::now() < deadline, "{outcomes:?}, not {n} runs");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// On one session: a slow call and a fast one answered out of order, each once under its own
/// id; a cancellation sent twice and one for an id nobody used (the run ends cancelled, once); a
/// client that drops its stream in the middle of a call — which, in a session, is no
/// cancellation (MCP's streamable HTTP): the run goes on to its end. The session goes on
/// answering.
#[test]
fn mcp_stays_correct_with_answers_out_of_order_repeated_cancels_and_dropped_streams() {
    let guild = Guild::new();
    let hostile =
        format!("[[tools]]\npath = \"{}\"\n\n[tools.limits]\ntimeout_ms = 3000\n", guild_test_artifacts::HOSTILE);
    let text = config_with_tools(&hostile, "");
    let daemon = Daemon::start(&guild, &["--config", &config_file(guild.home(), &text)], &[]);
    let session = McpSession::open(&daemon, ALICE);
    let (port, id) = (daemon.port, session.id.clone());
    let slow = std::thread::spawn(move || {
        let call = json!({"jsonrpc": "2.0", "id": 31, "method": "tools/call",
            "params": {"name": "hostile", "arguments": {"attack": "sleep"}}});
        let headers = [ACCEPT, JSON, PROTOCOL, ("mcp-session-id", id.as_str())];
        crate::daemon::call(port, "POST", "/mcp", ALICE, call.to_string().as_bytes(), &headers)
    });
    std::thread::sleep(Duration::from_millis(300));
    let fast = json!({"jsonrpc": "2.0", "id": 32, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "fast"}}});
    let answers = messages(&session.post_as(ALICE, &fast));
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(
        (answers[0]["id"].as_i64(), &answers[0]["result"]["structuredContent"]["message"]),
        (Some(32), &json!("fast"))
    );
    assert!(!slow.is_finished(), "the slow call is still in flight");

    for request in [31, 31, 999] {
        let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request}});
        assert_eq!(session.post_as(ALICE, &cancel).status, 202, "cancelling {request}");
    }
    let slow = slow.join().expect("the slow call's thread");
    let answered = messages(&slow);
    assert!(answered.iter().all(|m| m["id"] == 31 || m["id"].is_null()), "only its own answer: {answered:?}");
    assert!(answered.iter().filter(|m| m["id"] == 31).count() <= 1, "at most one answer: {answered:?}");
    assert_eq!(wait_hostile(&guild, 1), ["cancelled"]);

    // A client that drops its stream once the call reports progress.
    let call = json!({"jsonrpc": "2.0", "id": 33, "method": "tools/call",
        "params": {"name": "hostile", "arguments": {"attack": "sleep"}, "_meta": {"progressToken": "p"}}});
    let body = call.to_string();
    let mut stream = TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let head = format!(
        "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {ALICE}\r\naccept: {}\r\ncontent-type: \
         application/json\r\nmcp-protocol-version: 2025-06-18\r\nmcp-session-id: {}\r\ncontent-length: {}\r\n\r\n",
        ACCEPT.1,
        session.id,
        body.len()
    );
    stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body.as_bytes())).expect("POST");
    let (mut seen, mut buf) = (String::new(), [0u8; 4096]);
    while !seen.contains("notifications/progress") {
        let n = stream.read(&mut buf).expect("progress comes");
        assert!(n > 0, "the stream closed before any progress: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    drop(stream);
    let outcomes = wait_hostile(&guild, 2);
    assert_eq!(outcomes[1], "limit", "the run went on to its timeout: {outcomes:?}");
    assert_eq!(session.list_tools().status, 200, "the session goes on");
    assert_eq!(daemon.call("GET", "/healthz", "", "").status, 200);
}

/// An upstream on loopback that answers `slow` after `delay`; its port.
fn slow_upstream(delay: Duration) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                std::thread::sleep(delay);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nslow");
            });
        }
    });
    port
}

/// With Redis, a task started through one API node is a durable job: a 20-second call whose
/// client and node both go away is fetched from another node once it ends.
#[test]
fn an_mcp_task_started_on_one_api_node_is_fetched_from_another() {
    use crate::redis::{QUEUE_ENV, RedisServer, Worker};
    let redis = RedisServer::start();
    let (guild_a, guild_b) = (Guild::new(), Guild::new());
    let slow = slow_upstream(Duration::from_secs(20));
    let tools = format!(
        "[[tools]]\npath = \"{}\"\n\n[[tools]]\npath = \"{}\"\nallow_hosts = [\"http://127.0.0.1:{slow}\"]\n\n\
         [tools.limits]\ntimeout_ms = 60000\n",
        guild_test_artifacts::HOSTILE,
        guild_test_artifacts::HTTP_GET,
    );
    let text = config_with_tools(&tools, "");
    let (file_a, file_b) = (config_file(guild_a.home(), &text), config_file(guild_b.home(), &text));
    let a = Daemon::start(&guild_a, &["--config", &file_a, "--redis", &redis.url()], QUEUE_ENV);
    let b = Daemon::start(&guild_b, &["--config", &file_b, "--redis", &redis.url()], QUEUE_ENV);
    let cache = tempfile::tempdir().expect("cache");
    let _worker = Worker::start(&redis.url(), cache.path(), "w1", 2);
    let tasks = json!({"extensions": {"io.modelcontextprotocol/tasks": {}}});
    let ask = |session: &McpSession, method: &str, params: Value| -> Value {
        let reply = session.post_as(ALICE, &json!({"jsonrpc": "2.0", "id": 12, "method": method, "params": params}));
        messages(&reply).into_iter().find(|m| m["id"] == 12).expect("an answer")
    };
    let on_a = McpSession::open_with(&a, ALICE, tasks.clone());
    let started = Instant::now();
    let url = format!("http://127.0.0.1:{slow}/answer");
    let created =
        ask(&on_a, "tools/call", json!({"name": "http-get", "arguments": {"url": url}, "_meta": {"guild/task": true}}));
    let task = created["result"]["taskId"].as_str().expect("a task id").to_string();
    // The client and its node go away at once.
    drop(on_a);
    drop(a);
    let on_b = McpSession::open_with(&b, ALICE, tasks);
    assert_eq!(ask(&on_b, "tasks/get", json!({ "taskId": task }))["result"]["status"], "working");
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let got = ask(&on_b, "tasks/get", json!({ "taskId": task }));
        if got["result"]["status"] != "working" {
            break got;
        }
        assert!(Instant::now() < deadline, "node B never answered the task: {got}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(done["result"]["status"], "completed", "{done}");
    assert!(started.elapsed() >= Duration::from_secs(20), "the call took its 20 s: {:?}", started.elapsed());
    let answer = &done["result"]["result"]["structuredContent"];
    assert_eq!((answer["status"].as_u64(), answer["body"].as_str()), (Some(200), Some("slow")), "{done}");

    // A long task started through B is cancelled through B: its worker stops the job.
    let sleeping = ask(
        &on_b,
        "tools/call",
        json!({"name": "hostile", "arguments": {"attack": "sleep"}, "_meta": {"guild/task": true}}),
    );
    let sleeper = sleeping["result"]["taskId"].as_str().expect("a task id").to_string();
    let cancelled = ask(&on_b, "tasks/cancel", json!({ "taskId": sleeper }));
    assert!(cancelled["error"].is_null(), "{cancelled}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = ask(&on_b, "tasks/get", json!({ "taskId": sleeper }));
        if got["result"]["status"] == "cancelled" {
            break;
        }
        assert!(Instant::now() < deadline, "the job was not cancelled: {got}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
