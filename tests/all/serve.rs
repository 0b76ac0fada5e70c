//! `guild serve`: the real binary as a daemon, called over HTTP on loopback.

use crate::Guild;
use guild_test_artifacts::{ECHO, WC};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};

struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(guild: &Guild, token: &str, tools: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let mut command = guild.command();
        command.env("GUILD_TOKEN", token).args(["serve", "--listen", &format!("127.0.0.1:{port}")]);
        for tool in tools {
            command.args(["--tool", tool]);
        }
        let mut child = command.stderr(Stdio::piped()).spawn().expect("guild serve starts");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        stderr.read_line(&mut line).expect("first line");
        assert!(line.contains("serving 2 tools on"), "{line}");
        std::thread::spawn(move || for _ in stderr.lines() {});
        Self { child, port }
    }

    /// One HTTP/1.1 exchange; returns the status and the body.
    fn call(&self, method: &str, path: &str, token: &str, body: &str) -> (u16, Vec<u8>) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).expect("read");
        let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
        let head = String::from_utf8_lossy(&response[..split]).into_owned();
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
        let mut body = response[split..].to_vec();
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        (status, body)
    }

    fn json(&self, method: &str, path: &str, token: &str, body: &str) -> (u16, serde_json::Value) {
        let (status, bytes) = self.call(method, path, token, body);
        (
            status,
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes))),
        )
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = body.windows(2).position(|w| w == b"\r\n").expect("chunk size");
        let size = usize::from_str_radix(std::str::from_utf8(&body[..end]).expect("hex").trim(), 16).expect("size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[end + 2..end + 2 + size]);
        body = &body[end + 2 + size + 2..];
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn runs_over_http_leave_replayable_bundles_and_the_daemon_drains_on_sigterm() {
    let guild = Guild::new();
    let mut daemon = Daemon::start(&guild, "secret-token", &[ECHO, WC]);

    assert_eq!(daemon.call("GET", "/healthz", "", "").0, 200);
    let (status, body) = daemon.json("GET", "/v1/tools", "wrong", "");
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")));
    let (status, tools) = daemon.json("GET", "/v1/tools", "secret-token", "");
    assert_eq!(status, 200);
    let names: Vec<&str> =
        tools["tools"].as_array().expect("tools").iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["echo", "wc"]);

    let (status, run) =
        daemon.json("POST", "/v1/runs", "secret-token", r#"{"tool":"echo","input":{"message":"over http"}}"#);
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["output"], serde_json::json!({"message": "over http"}));
    let cli = guild.run(&["run", ECHO, "--input", r#"{"message":"over http"}"#]);
    assert_eq!(cli.json(), run["output"], "the daemon and the CLI give the same output");

    let (status, error) = daemon.json("POST", "/v1/runs", "secret-token", r#"{"tool":"nope"}"#);
    assert_eq!((status, error["error"]["code"].as_str()), (404, Some("unknown_tool")));
    let (status, error) = daemon.json("POST", "/v1/runs", "secret-token", "{not json");
    assert_eq!((status, error["error"]["code"].as_str()), (400, Some("bad_request")));

    let id = run["bundle"].as_str().expect("bundle id");
    let (status, stored) = daemon.json("GET", &format!("/v1/runs/{id}"), "secret-token", "");
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["output"], run["output"]);
    assert_eq!(stored["outcome"]["status"], "output");
    let (status, _) = daemon.json("GET", "/v1/runs/0123456789abcdef", "secret-token", "");
    assert_eq!(status, 404);
    let (status, archive) = daemon.call("GET", &format!("/v1/bundles/{id}"), "secret-token", "");
    assert_eq!(status, 200);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("run.tar.zst");
    std::fs::write(&file, archive).expect("write");
    let auditor = Guild::new();
    auditor.run(&["replay", file.to_str().expect("utf-8")]).expect_code(0);

    let pid = daemon.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let status = daemon.child.wait().expect("exits");
    assert_eq!(status.code(), Some(0), "SIGTERM must shut down cleanly");
}
