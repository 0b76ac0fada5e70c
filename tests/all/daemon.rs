//! A real `guild serve` process for the daemon tests, and a small HTTP/1.1 client over
//! loopback (one connection per call, so every call is independent).

use crate::Guild;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The blake3 digest of a token, as a tenant's `token_blake3`.
pub(crate) fn token_digest(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// The admin tenant `root`'s token in [`three_tenants`].
pub(crate) const ROOT: &str = "root-token";
/// Tenant `alice`'s token in [`three_tenants`].
pub(crate) const ALICE: &str = "alice-token";
/// Tenant `bob`'s token in [`three_tenants`].
pub(crate) const BOB: &str = "bob-token";

/// A config with `tools` (`[[tools]]` entries) and three tenants that may call them all: `root`
/// (an admin), `alice` and `bob`, with the tokens [`ROOT`], [`ALICE`] and [`BOB`].
pub(crate) fn three_tenants(tools: &str) -> String {
    format!(
        r#"
{tools}

[[tenants]]
name = "root"
token_blake3 = "{root}"
tools = ["*"]
admin = true

[[tenants]]
name = "alice"
token_blake3 = "{alice}"
tools = ["*"]

[[tenants]]
name = "bob"
token_blake3 = "{bob}"
tools = ["*"]
"#,
        root = token_digest(ROOT),
        alice = token_digest(ALICE),
        bob = token_digest(BOB),
    )
}

/// A running daemon.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) port: u16,
    /// Every line it wrote to stderr so far.
    pub(crate) log: Arc<Mutex<Vec<String>>>,
}

/// One HTTP response.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) body: Vec<u8>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, String::from_utf8_lossy(&self.body))
    }
}

impl Reply {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, String::from_utf8_lossy(&self.body)))
    }

    /// The error code of an error body.
    pub(crate) fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_string()
    }
}

impl Daemon {
    /// `guild serve --listen 127.0.0.1:0 ARGS...` with `env`; waits until it listens.
    pub(crate) fn start(guild: &Guild, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = guild.command();
        command.args(["serve", "--listen", "127.0.0.1:0"]).args(args);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.stderr(Stdio::piped()).spawn().expect("guild serve starts");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut port = None;
        let mut line = String::new();
        while port.is_none() {
            line.clear();
            let read = stderr.read_line(&mut line).expect("stderr readable");
            assert!(read > 0, "guild serve exited before listening: {:?}", log.lock().expect("log"));
            log.lock().expect("log").push(line.trim_end().to_string());
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(addr) = event["fields"]["addr"].as_str()
            {
                port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
            }
        }
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                sink.lock().expect("log").push(line);
            }
        });
        Self { child, port: port.expect("port"), log }
    }

    /// One exchange with optional extra headers.
    pub(crate) fn call_with(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) -> Reply {
        call(self.port, method, path, token, body, extra)
    }

    pub(crate) fn call(&self, method: &str, path: &str, token: &str, body: &str) -> Reply {
        self.call_with(method, path, token, body.as_bytes(), &[])
    }

    /// POST /v1/runs.
    pub(crate) fn run(&self, token: &str, body: serde_json::Value) -> Reply {
        self.call("POST", "/v1/runs", token, &body.to_string())
    }

    /// Wait until the async run `id` has finished; its body.
    pub(crate) fn wait_run(&self, token: &str, id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let body = self.call("GET", &format!("/v1/runs/{id}"), token, "").json();
            if !matches!(body["status"].as_str(), Some("queued" | "running" | "waiting_for_capability")) {
                return body;
            }
            assert!(Instant::now() < deadline, "run {id} did not finish: {body}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send SIGTERM (the daemon starts draining).
    pub(crate) fn signal_term(&self) {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    }

    /// Send SIGTERM and wait for the exit code.
    pub(crate) fn terminate(mut self) -> Option<i32> {
        self.signal_term();
        self.child.wait().expect("exits").code()
    }

    /// Wait for the process to exit; its code.
    pub(crate) fn wait(mut self) -> Option<i32> {
        self.child.wait().expect("exits").code()
    }

    /// Resident memory of the daemon process, bytes.
    pub(crate) fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }

    pub(crate) fn log_lines(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn call(port: u16, method: &str, path: &str, token: &str, body: &[u8], extra: &[(&str, &str)]) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    // An explicit `host` in `extra` replaces the loopback one (to test Host checks).
    let host = if extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) { "" } else { "host: 127.0.0.1\r\n" };
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\n{host}authorization: Bearer {token}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write head");
    // A server may answer (413) and close before reading a large body.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
    let headers: BTreeMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = response[split..].to_vec();
    if headers.get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        body = dechunk(&body);
    }
    Reply { status, headers, body }
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

/// Write `text` as a config file in `dir`; its path.
pub(crate) fn config_file(dir: &Path, text: &str) -> String {
    let path = dir.join("guild.toml");
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

/// A loopback HTTP server that answers 200 and counts the requests it got.
pub(crate) struct Counter {
    pub(crate) port: u16,
    requests: Arc<std::sync::atomic::AtomicUsize>,
}

impl Counter {
    pub(crate) fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
            }
        });
        Self { port, requests }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/probe", self.port)
    }

    pub(crate) fn count(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}
