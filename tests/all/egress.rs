//! Outgoing HTTP through the host's rules, against real HTTP servers on 127.0.0.1 that each test
//! starts and stops itself.

use crate::Guild;
use guild_test_artifacts::HTTP_GET;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// A small HTTP/1.1 server on a free loopback port, answering from `route` until dropped.
struct Upstream {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || serve(stream, port, &log));
            }
        });
        Self { port, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }
}

fn serve(stream: TcpStream, port: u16, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    log.lock().expect("lock").push(format!("{head}\n{}", String::from_utf8_lossy(&body)));
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let token =
        head.lines().find_map(|l| l.strip_prefix("authorization: Bearer ")).unwrap_or("none").trim().to_string();
    if path == "/transfer-coded" {
        // A transfer coding besides chunked: what the client passes on is still compressed.
        let mut stream = stream;
        let chunk = format!("token={token}");
        let response = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len()
        );
        let _ = stream.write_all(response.as_bytes());
        return;
    }
    let (status, extra, body) = match path.as_str() {
        "/json" => {
            ("200 OK", "content-type: application/json\r\n".to_string(), r#"{"data":[{"name":"guild"}]}"#.to_string())
        }
        "/redirect" => ("302 Found", format!("location: http://localhost:{port}/json\r\n"), String::new()),
        "/big" => ("200 OK", String::new(), "x".repeat(200_000)),
        "/headers" => ("200 OK", String::new(), head.clone()),
        // What the request before this one sent (an upstream that stores a value and returns it).
        "/last" => {
            let seen = log.lock().expect("lock");
            ("200 OK", String::new(), seen.iter().rev().nth(1).cloned().unwrap_or_default())
        }
        // The request's head, claimed to be compressed (the host cannot look inside).
        "/gzip" => ("200 OK", "content-encoding: gzip\r\n".to_string(), head.clone()),
        // The bearer token sent back as the name of a header.
        "/header-name" => ("200 OK", format!("x-{token}: 1\r\n"), String::new()),
        // The bearer token sent back as a content coding, which the host refuses, quoting it.
        "/coded-as-token" => ("200 OK", format!("content-encoding: {token}\r\n"), String::new()),
        _ => ("404 Not Found", String::new(), "no such page".to_string()),
    };
    let response =
        format!("HTTP/1.1 {status}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
    let mut stream = stream;
    let _ = stream.write_all(response.as_bytes());
}

fn get(url: &str) -> String {
    serde_json::json!({ "url": url }).to_string()
}

#[test]
fn egress_is_denied_by_default_and_allowed_by_an_explicit_rule() {
    let upstream = Upstream::start();
    let guild = Guild::new();
    let denied = guild.run_tool(HTTP_GET, &get(&upstream.url("/json")), &[]);
    denied.expect_code(4).expect_stderr("matches no rule (rules: none)");
    assert!(upstream.requests().is_empty(), "a denied request reached the server");

    let rule = format!("http://127.0.0.1:{}", upstream.port);
    let input = serde_json::json!({ "url": upstream.url("/json"), "json_pointer": "/data/0/name" }).to_string();
    let ran = guild.run_tool(HTTP_GET, &input, &["--allow-host", &rule]);
    let out = ran.expect_code(0).json();
    assert_eq!(out["status"], 200);
    assert_eq!(out["json"], "guild");
    assert_eq!(upstream.requests().len(), 1);
}

#[test]
fn a_name_resolving_to_a_blocked_address_is_refused() {
    let upstream = Upstream::start();
    let guild = Guild::new();
    let by_name = format!("http://localhost:{}/json", upstream.port);
    guild
        .run_tool(HTTP_GET, &get(&by_name), &["--allow-host", &format!("http://localhost:{}", upstream.port)])
        .expect_code(4)
        .expect_stderr("localhost resolves to 127.0.0.1, a loopback address");
    guild
        .run_tool(HTTP_GET, &get("http://169.254.169.254/latest/meta-data/"), &["--allow-host", "http://*"])
        .expect_code(4)
        .expect_stderr("169.254.169.254 is a link-local/metadata address");
    guild
        .run_tool(HTTP_GET, &get(&upstream.url("/json")), &["--allow-host", "http://*:*"])
        .expect_code(4)
        .expect_stderr("127.0.0.1 is a loopback address");
    assert!(upstream.requests().is_empty());
}

#[test]
fn redirects_are_not_followed_by_the_host() {
    let upstream = Upstream::start();
    let rule = format!("http://127.0.0.1:{}", upstream.port);
    let ran = Guild::new().run_tool(HTTP_GET, &get(&upstream.url("/redirect")), &["--allow-host", &rule]);
    let out = ran.expect_code(0).json();
    assert_eq!(out["status"], 302);
    assert_eq!(upstream.requests().len(), 1, "the host must not follow the redirect itself");
    // A tool that follows it makes a new request, checked anew: this one is to a name.
    let location = out["headers"]["location"].as_str().expect("location").to_string();
    Guild::new()
        .run_tool(HTTP_GET, &get(&location), &["--allow-host", &rule])
        .expect_code(4)
        .expect_stderr("matches no rule");
    assert_eq!(upstream.requests().len(), 1);
}

#[test]
fn ports_methods_and_paths_in_rules_are_enforced() {
    let upstream = Upstream::start();
    let guild = Guild::new();
    let other_port = format!("http://127.0.0.1:{}", upstream.port.wrapping_add(1));
    guild.run_tool(HTTP_GET, &get(&upstream.url("/json")), &["--allow-host", &other_port]).expect_code(4);
    let post_only = format!("POST http://127.0.0.1:{}", upstream.port);
    guild.run_tool(HTTP_GET, &get(&upstream.url("/json")), &["--allow-host", &post_only]).expect_code(4);
    let wrong_path = format!("http://127.0.0.1:{}/api/", upstream.port);
    guild.run_tool(HTTP_GET, &get(&upstream.url("/json")), &["--allow-host", &wrong_path]).expect_code(4);
    let any_port = "http://127.0.0.1:*".to_string();
    guild.run_tool(HTTP_GET, &get(&upstream.url("/json")), &["--allow-host", &any_port]).expect_code(0);
    assert_eq!(upstream.requests().len(), 1);
}

#[test]
fn response_size_and_request_count_are_capped() {
    let upstream = Upstream::start();
    let rule = format!("http://127.0.0.1:{}", upstream.port);
    let guild = Guild::new();
    guild
        .run_tool(HTTP_GET, &get(&upstream.url("/big")), &["--allow-host", &rule, "--http-response-bytes", "64KiB"])
        .expect_code(1)
        .expect_stderr("response body larger than 65536 bytes (raise --http-response-bytes)");
    guild
        .run_tool(HTTP_GET, &get(&upstream.url("/json")), &["--allow-host", &rule, "--http-requests", "0"])
        .expect_code(4)
        .expect_stderr("more than 0 requests in one run (raise --http-requests)");
}

#[test]
fn an_exchange_replays_from_the_tape_without_the_network() {
    let upstream = Upstream::start();
    let rule = format!("http://127.0.0.1:{}", upstream.port);
    let guild = Guild::new();
    let ran = guild.run_tool(HTTP_GET, &get(&upstream.url("/json")), &["--allow-host", &rule]);
    ran.expect_code(0);
    let id = ran.summary()["bundle"].as_str().expect("bundle").to_string();
    let before = upstream.requests().len();
    let replay = guild.run(&["replay", &id]);
    assert!(replay.expect_code(0).stdout.contains("replay identical"), "{replay:?}");
    assert_eq!(upstream.requests().len(), before, "replay must not touch the network");
    let inspect = guild.run(&["bundle", "inspect", &id]);
    assert!(inspect.stdout.contains(&format!("http GET {} → 200", upstream.url("/json"))), "{}", inspect.stdout);
}

/// Every file under `dir`, searched for `needle`.
fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    crate::listing(dir)
        .into_iter()
        .map(|p| dir.join(p))
        .filter(|p| {
            p.is_file() && std::fs::read(p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .collect()
}

#[test]
fn a_secret_reaches_only_the_granted_host_and_never_the_guest_logs_or_bundle() {
    const VALUE: &str = "tok-9f8e7d6c5b4a-guild";
    let upstream = Upstream::start();
    let guild = Guild::new();
    let rule = format!("http://127.0.0.1:{}", upstream.port);
    let input = serde_json::json!({
        "url": upstream.url("/headers"),
        "headers": { "authorization": "Bearer {{secret:TOKEN}}" },
    })
    .to_string();
    let run = |grant: &str| {
        let output = guild
            .command()
            .env("GUILD_TEST_TOKEN", VALUE)
            .args(["run", HTTP_GET, "--input", &input, "--allow-host", &rule, "--logs"])
            .args(["--secret", "TOKEN=env:GUILD_TEST_TOKEN", "--grant-secret", grant])
            .output()
            .expect("guild runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    let (code, stdout, stderr) = run(&format!("TOKEN={rule}"));
    assert_eq!(code, Some(0), "{stderr}");
    let seen = upstream.requests();
    assert!(seen[0].contains(&format!("Bearer {VALUE}")), "the server did not get the secret: {seen:?}");
    assert!(
        stdout.contains("Bearer {{secret:TOKEN}}"),
        "the echoed header must come back as the placeholder: {stdout}"
    );
    assert!(!stdout.contains(VALUE) && !stderr.contains(VALUE), "the value leaked to the guest's output or logs");
    assert!(
        files_containing(guild.home(), VALUE).is_empty(),
        "the value reached the store: {:?}",
        files_containing(guild.home(), VALUE)
    );

    let elsewhere = format!("TOKEN=http://127.0.0.1:{}", upstream.port.wrapping_add(1));
    let (code, stdout, stderr) = run(&elsewhere);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!("secret TOKEN may not be sent to GET http://127.0.0.1:{}/headers", upstream.port)),
        "{stderr}"
    );
    assert!(!stdout.contains(VALUE) && !stderr.contains(VALUE));
    assert_eq!(upstream.requests().len(), 1, "a refused secret must not reach the server");

    let plain = Guild::new().run_tool(HTTP_GET, &input, &["--allow-host", &rule]);
    plain.expect_code(4).expect_stderr("secret TOKEN is not granted to this run");
}

#[tokio::test]
async fn a_dead_upstream_trips_the_breaker_and_then_fails_fast() {
    use guild_runtime::egress::{BreakerSettings, EgressRule};
    use guild_runtime::{Grants, Limits, Runtime, RuntimeConfig};
    let dead_port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let runtime = Runtime::new(RuntimeConfig {
        breakers: BreakerSettings { failures_to_open: 3, open_ms: 60_000, ..BreakerSettings::default() },
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let (tool, _) = runtime.load_file(HTTP_GET.as_ref()).await.expect("load");
    let grants = Grants {
        egress: vec![EgressRule::parse(&format!("http://127.0.0.1:{dead_port}")).expect("rule")],
        ..Grants::default()
    };
    let input = get(&format!("http://127.0.0.1:{dead_port}/"));
    for attempt in 0..3 {
        let report = runtime.run(&tool, &input, &grants, &Limits::default()).await.expect("run");
        assert!(
            report.egress_denials[0].contains("connection refused"),
            "attempt {attempt}: {:?}",
            report.egress_denials
        );
    }
    let started = std::time::Instant::now();
    let report = runtime.run(&tool, &input, &grants, &Limits::default()).await.expect("run");
    assert!(report.egress_denials[0].contains("circuit open for http://127.0.0.1"), "{:?}", report.egress_denials);
    assert!(report.egress_denials[0].contains("after 3 consecutive failures"), "{:?}", report.egress_denials);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn raw_sockets_stay_denied() {
    let upstream = Upstream::start();
    let address = format!("127.0.0.1:{}", upstream.port);
    let input = serde_json::json!({ "attack": "socket", "address": address }).to_string();
    let rule = format!("http://{address}");
    Guild::new()
        .run_tool(guild_test_artifacts::HOSTILE, &input, &["--allow-host", &rule])
        .expect_code(4)
        .expect_stderr("raw socket to 127.0.0.1");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(upstream.requests().is_empty(), "a raw socket reached the server");
}

/// A TLS server on loopback with a certificate for 127.0.0.1 issued by a fresh test CA; returns
/// its port and the CA's PEM.
fn tls_upstream() -> (u16, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("key");
    let server_params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    let server_cert = server_params.signed_by(&server_key, &issuer).expect("cert");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .expect("server config");
    let config = std::sync::Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let Ok(connection) = rustls::ServerConnection::new(config) else { return };
                let mut tls = rustls::StreamOwned::new(connection, tcp);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && tls.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let body = "secure hello";
                let _ =
                    write!(tls, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                let _ = tls.flush();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    (port, ca_cert.pem())
}

#[test]
fn https_is_verified_against_the_roots_and_an_added_ca() {
    let (port, ca_pem) = tls_upstream();
    let dir = crate::tree(&[("ca.pem", &ca_pem)]);
    let ca_file = dir.path().join("ca.pem");
    let guild = Guild::new();
    let rule = format!("https://127.0.0.1:{port}");
    let input = get(&format!("https://127.0.0.1:{port}/"));
    // Unknown issuer: the webpki roots do not trust the test CA.
    guild.run_tool(HTTP_GET, &input, &["--allow-host", &rule]).expect_code(1).expect_stderr("Tls");
    let ran = guild.run_tool(HTTP_GET, &input, &["--allow-host", &rule, "--tls-ca", ca_file.to_str().expect("utf-8")]);
    let out = ran.expect_code(0).json();
    assert_eq!(out["status"], 200);
    assert_eq!(out["body"], "secure hello");
    guild
        .run_tool(HTTP_GET, &input, &["--allow-host", &rule, "--tls-ca", "/nonexistent.pem"])
        .expect_code(2)
        .expect_stderr("cannot read CA file /nonexistent.pem");
}

/// A stock static file server (Python's `http.server`) over `dir` on a free loopback port.
struct StaticServer {
    child: std::process::Child,
    port: u16,
}

impl StaticServer {
    fn start(dir: &std::path::Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let mut child = std::process::Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 runs");
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self { child, port };
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("http.server did not start on port {port}");
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn rules_are_checked_on_the_path_the_upstream_will_serve() {
    let site = crate::tree(&[("public/file.txt", "public data"), ("private.txt", "PRIVATE DATA")]);
    let server = StaticServer::start(site.path());
    let base = format!("http://127.0.0.1:{}", server.port);
    let rule = format!("GET {base}/public/");
    let guild = Guild::new();
    let fetch = |path: &str| guild.run_tool(HTTP_GET, &get(&format!("{base}{path}")), &["--allow-host", &rule]);
    let out = fetch("/public/file.txt").expect_code(0).json();
    assert_eq!(out["body"], "public data");
    // Dot segments are resolved before matching, and the resolved path is what is sent.
    let dotted = fetch("/public/./nested/../file.txt").expect_code(0).json();
    assert_eq!(dotted["body"], "public data");
    // A wildcard rule beside the address rule does not inherit its exemption: the loopback
    // address stays blocked for every path the address rule does not cover.
    let wild = |path: &str| {
        let args = ["--allow-host", &rule, "--allow-host", "http://*:*"];
        guild.run_tool(HTTP_GET, &get(&format!("{base}{path}")), &args)
    };
    wild("/private.txt").expect_code(4).expect_stderr("127.0.0.1 is a loopback address");
    assert_eq!(wild("/public/file.txt").expect_code(0).json()["body"], "public data");
    for escape in [
        "/public/../private.txt",
        "/public/%2e%2e/private.txt",
        "/public/%2E%2E/private.txt",
        "/public/.%2e/private.txt",
        "/public/..%2fprivate.txt",
        "/public/..%2Fprivate.txt",
        "/public/%2e%2e%2fprivate.txt",
        "/public/..%5cprivate.txt",
        "/public/%252e%252e/private.txt",
        "/public//../private.txt",
        "/public/..;/private.txt",
        "/public",
        "/publicity",
    ] {
        let ran = fetch(escape);
        assert_eq!(ran.code, 4, "{escape} must be refused: {ran:?}");
        assert!(!ran.stdout.contains("PRIVATE") && !ran.stderr.contains("PRIVATE"), "{escape} leaked");
    }
    fetch("/public/..%2fprivate.txt").expect_stderr("ambiguous").expect_stderr("%2F");
}

#[test]
fn a_secret_granted_to_a_path_is_not_sent_along_a_dotted_one() {
    const VALUE: &str = "path-bound-secret-0451";
    let upstream = Upstream::start();
    let guild = Guild::new();
    let base = format!("http://127.0.0.1:{}", upstream.port);
    let with_secret = |path: &str| {
        let input = serde_json::json!({
            "url": format!("{base}{path}"),
            "headers": { "authorization": "Bearer {{secret:TOKEN}}" },
        })
        .to_string();
        guild
            .command()
            .env("PATH_SECRET", VALUE)
            .args(["run", HTTP_GET, "--input", &input, "--allow-host", &base])
            .args(["--secret", "TOKEN=env:PATH_SECRET", "--grant-secret", &format!("TOKEN={base}/headers")])
            .output()
            .expect("guild runs")
    };
    assert!(with_secret("/headers").status.success());
    assert!(upstream.requests().iter().any(|r| r.contains(VALUE)), "granted path: sent");
    let before = upstream.requests().len();
    let dotted = with_secret("/headers/../json");
    assert_eq!(dotted.status.code(), Some(4), "{}", String::from_utf8_lossy(&dotted.stderr));
    assert!(String::from_utf8_lossy(&dotted.stderr).contains("may not be sent to"));
    assert_eq!(upstream.requests().len(), before, "nothing was sent");
}

/// An HTTP/1.1 upstream that keeps connections alive, counting the connections it accepted.
fn keep_alive_upstream() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut stream = stream;
                loop {
                    // One request head, up to its blank line; the connection's end closes it.
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let body = r#"{"kept":"alive"}"#;
                    let response = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                    if stream.write_all(response.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, accepted)
}

#[test]
fn connections_are_kept_alive_per_checked_address_across_runs() {
    let (port, accepted) = keep_alive_upstream();
    let guild = Guild::new();
    let config = format!(
        "[[tools]]\npath = \"{HTTP_GET}\"\nallow_hosts = [\"http://127.0.0.1:{port}\"]\n\n[[tenants]]\nname = \"t\"\n\
         token_blake3 = \"{}\"\ntools = [\"*\"]\n",
        crate::daemon::token_digest("keep-token")
    );
    let config = crate::daemon::config_file(guild.home(), &config);
    let daemon = crate::daemon::Daemon::start(&guild, &["--config", &config], &[]);
    let url = format!("http://127.0.0.1:{port}/a");
    for _ in 0..4 {
        let reply = daemon.run("keep-token", serde_json::json!({"tool": "http-get", "input": {"url": url}}));
        assert_eq!(reply.json()["output"]["status"], 200, "{}", reply.json());
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "four runs, one pooled connection");
}

#[test]
fn a_secret_reflected_compressed_or_returned_later_never_reaches_the_guest() {
    const VALUE: &str = "reflected-secret-7d1c";
    let upstream = Upstream::start();
    let guild = Guild::new();
    let base = format!("http://127.0.0.1:{}", upstream.port);
    let run = |path: &str, with_secret: bool| {
        let mut headers = serde_json::Map::new();
        if with_secret {
            headers.insert("authorization".into(), "Bearer {{secret:TOKEN}}".into());
        }
        let input = serde_json::json!({ "url": format!("{base}{path}"), "headers": headers }).to_string();
        let output = guild
            .command()
            .env("REFLECTED", VALUE)
            .args(["run", HTTP_GET, "--input", &input, "--allow-host", &base, "--summary-json"])
            .args(["--secret", "TOKEN=env:REFLECTED", "--grant-secret", &format!("TOKEN={base}")])
            .output()
            .expect("guild runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // A compressed answer could hide the value from the host's scrubbing: refused.
    let (code, stdout, stderr) = run("/gzip", true);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("content-encoding gzip") && !stdout.contains(VALUE), "{stderr}");
    assert!(upstream.requests().last().is_some_and(|r| r.contains("accept-encoding: identity")));
    let summary: serde_json::Value = serde_json::from_str(stderr.lines().last().expect("summary")).expect("json");
    let bundle = summary["bundle"].as_str().expect("bundle");
    guild.run(&["replay", bundle]).expect_code(0);
    // A value stored by the upstream and returned to a later request without the secret.
    let (code, _, _) = run("/headers", true);
    assert_eq!(code, Some(0));
    let (code, stdout, stderr) = run("/last", false);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stdout.contains(VALUE) && stdout.contains("{{secret:TOKEN}}"), "{stdout}");
    // A transfer coding the client does not undo, and a coding named by the value itself: both
    // refused, and the refusal (on the tape, in the log) never quotes the value.
    let (code, stdout, stderr) = run("/transfer-coded", true);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("transfer-encoding gzip, chunked") && !stdout.contains(VALUE), "{stderr}");
    let (code, stdout, stderr) = run("/coded-as-token", true);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!stdout.contains(VALUE) && !stderr.contains(VALUE) && stderr.contains("{{secret:TOKEN}}"), "{stderr}");
    // A value sent back as a header's name: that header is left out.
    let (code, stdout, stderr) = run("/header-name", true);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stdout.contains(VALUE), "{stdout}");
    assert!(files_containing(guild.home(), VALUE).is_empty(), "{:?}", files_containing(guild.home(), VALUE));
}

#[test]
fn the_upstream_is_told_only_the_host_that_was_checked() {
    let upstream = Upstream::start();
    let guild = Guild::new();
    let rule = format!("http://127.0.0.1:{}", upstream.port);
    // `attacker.example:80@127.0.0.1` is checked as 127.0.0.1, yet a server may read the host
    // before the '@': refused before anything is sent.
    let userinfo = get(&format!("http://attacker.example:80@127.0.0.1:{}/headers", upstream.port));
    guild.run_tool(HTTP_GET, &userinfo, &["--allow-host", &rule]).expect_code(4).expect_stderr("userinfo");
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
    // A port written with a leading zero reaches the server as the port that was checked.
    let padded = get(&format!("http://127.0.0.1:0{}/headers", upstream.port));
    guild.run_tool(HTTP_GET, &padded, &["--allow-host", &rule]).expect_code(0);
    let seen = upstream.requests();
    assert!(seen[0].contains(&format!("host: 127.0.0.1:{}\r\n", upstream.port)), "{seen:?}");
}
