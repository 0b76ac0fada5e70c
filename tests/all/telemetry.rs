//! OpenTelemetry traces end to end: a real OTLP/HTTP receiver on loopback (its requests decoded
//! with the official `opentelemetry-proto` messages), an API node, Redis, a worker and an
//! upstream; then MCP over stdio with `_meta` context; then a collector that went away.

use crate::Guild;
use crate::daemon::Daemon;
use crate::mcp::RawMcp;
use crate::redis::{QUEUE_ENV, RedisServer, TOKEN, Worker};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One span as the collector received it.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: BTreeMap<String, String>,
}

/// An OTLP/HTTP protobuf receiver: `POST /v1/traces`, every span kept.
struct Collector {
    port: u16,
    spans: Arc<Mutex<Vec<Span>>>,
    stop: Arc<AtomicBool>,
}

impl Collector {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (kept, stopped) = (spans.clone(), stop.clone());
        std::thread::spawn(move || {
            // The listener is dropped when stopped: the port then refuses connections.
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (kept, stopped) = (kept.clone(), stopped.clone());
                        std::thread::spawn(move || serve(stream, &kept, &stopped));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { port, spans, stop }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
    }

    /// The spans of `trace_id`, once `done` holds for them (or the deadline passed).
    fn trace(&self, trace_id: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans: Vec<Span> =
                self.spans.lock().expect("spans").iter().filter(|s| s.trace_id == trace_id).cloned().collect();
            if done(&spans) || Instant::now() > deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Answer the requests of one connection (kept alive) until it closes or the collector stops.
fn serve(stream: TcpStream, kept: &Mutex<Vec<Span>>, stopped: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    while !stopped.load(Ordering::SeqCst) {
        let mut length = 0usize;
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(_) => continue,
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP trace export request");
        let mut received = Vec::new();
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let attributes = span
                        .attributes
                        .iter()
                        .map(|kv| {
                            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                Some(AnyValue::StringValue(s)) => s.clone(),
                                Some(AnyValue::IntValue(i)) => i.to_string(),
                                Some(AnyValue::BoolValue(b)) => b.to_string(),
                                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                                other => format!("{other:?}"),
                            };
                            (kv.key.clone(), value)
                        })
                        .collect();
                    received.push(Span {
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                        attributes,
                    });
                }
            }
        }
        kept.lock().expect("spans").extend(received);
        let _ =
            writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An upstream that answers `{"value":42}` and keeps the `traceparent` of each request.
fn upstream() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && stream.read_exact(&mut byte).is_ok() {
                request.push(byte[0]);
            }
            let text = String::from_utf8_lossy(&request).to_string();
            let parent = text
                .lines()
                .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("traceparent")))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default();
            kept.lock().expect("seen").push(parent);
            let body = r#"{"value":42}"#;
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    (port, seen)
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// A caller's trace it did not sample.
const UNSAMPLED_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

fn named<'a>(spans: &'a [Span], name: &str) -> Option<&'a Span> {
    spans.iter().find(|s| s.name == name)
}

#[test]
fn an_async_run_through_redis_is_one_trace_from_the_api_to_the_upstream_and_the_audit() {
    let collector = Collector::start();
    let (port, seen) = upstream();
    let redis = RedisServer::start();
    let api = Guild::new();
    let rule = format!("http://127.0.0.1:{port}");
    let endpoint = collector.endpoint();
    // Configured the standard way, plus a short batch delay so the test need not wait.
    let traced = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("GUILD_TELEMETRY__SCHEDULED_DELAY_MS", "100")];
    let env: Vec<(&str, &str)> = QUEUE_ENV.iter().copied().chain(traced).collect();
    let daemon = Daemon::start(&api, &["--redis", &redis.url(), "--allow-host", &rule], &env);
    let cache = tempfile::tempdir().expect("cache");
    let worker = Worker::start_with(&redis.url(), cache.path(), "traced", 1, &traced);

    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let input = json!({"url": format!("http://127.0.0.1:{port}/value"), "json_pointer": "/value"});
    let body = json!({"tool": "http-get", "input": input, "async": true}).to_string();
    let reply = daemon.call_with("POST", "/v1/runs", TOKEN, body.as_bytes(), &[("traceparent", &traceparent)]);
    assert_eq!(reply.status, 202, "{}", String::from_utf8_lossy(&reply.body));
    let id = reply.json()["id"].as_str().expect("id").to_string();
    let run = daemon.wait_run(TOKEN, &id);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["trace_id"], CALLER_TRACE, "GET /v1/runs shows the run's trace: {run}");
    let bundle = run["bundle"].as_str().expect("bundle").to_string();

    let wanted = [
        "POST /v1/runs",
        "admission",
        "send default",
        "process default",
        "execute_tool http-get",
        "instantiate",
        "guest run",
        "GET",
        "seal",
        "settle",
        "audit write",
    ];
    let spans = collector.trace(CALLER_TRACE, |spans| wanted.iter().all(|w| named(spans, w).is_some()));
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    for name in wanted {
        assert!(named(&spans, name).is_some(), "the trace has {name:?}: {names:?}\nworker: {}", worker.log());
    }
    // One tree: the request's parent is the caller's span; the worker's consumer span hangs from
    // the API node's producer span; the run from the consumer; the guest's request from the run.
    let span = |name: &str| named(&spans, name).expect("present");
    assert_eq!(span("POST /v1/runs").parent, CALLER_SPAN);
    assert_eq!(span("process default").parent, span("send default").span_id);
    assert_eq!(span("execute_tool http-get").parent, span("process default").span_id);
    assert_eq!(span("guest run").parent, span("execute_tool http-get").span_id);
    assert_eq!(span("GET").parent, span("guest run").span_id);
    assert_eq!(span("seal").parent, span("execute_tool http-get").span_id);
    let run_span = &span("execute_tool http-get").attributes;
    assert_eq!(run_span.get("guild.bundle.id"), Some(&bundle), "{run_span:?}");
    assert_eq!(run_span.get("guild.outcome").map(String::as_str), Some("output"));
    assert_eq!(run_span.get("guild.tenant").map(String::as_str), Some("default"));
    assert_eq!(run_span.get("gen_ai.operation.name").map(String::as_str), Some("execute_tool"));
    assert!(run_span.get("guild.fuel_used_units").is_some_and(|f| f.parse::<u64>().unwrap_or(0) > 0));
    let egress = &span("GET").attributes;
    assert_eq!(egress.get("http.response.status_code").map(String::as_str), Some("200"), "{egress:?}");
    assert_eq!(egress.get("server.port"), Some(&port.to_string()));

    // The upstream was told the trace, with the egress span as its parent.
    let told = seen.lock().expect("seen").clone();
    assert_eq!(told, [format!("00-{CALLER_TRACE}-{}-01", span("GET").span_id)], "the upstream's traceparent");
    // The audit record names the trace too (and so does the run after a restart).
    crate::redis::wait_audited(&api, std::slice::from_ref(&id), Duration::from_secs(10));
    let audited = crate::redis::audit_records(&api).into_iter().find(|r| r["run"] == id.as_str()).expect("audited");
    assert_eq!(audited["trace_id"], CALLER_TRACE, "{audited}");
    // The bundle names the trace, and records the header as the host's, not the guest's; a
    // replay neither needs nor compares it.
    let archive = daemon.call("GET", &format!("/v1/bundles/{bundle}"), TOKEN, "");
    assert_eq!(archive.status, 200);
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("run.tar.zst");
    std::fs::write(&path, &archive.body).expect("write bundle");
    let path = path.to_str().expect("utf-8");
    let inspected = Guild::new().run(&["bundle", "inspect", path]);
    assert!(inspected.stdout.contains(&format!("trace     {CALLER_TRACE}")), "{}", inspected.stdout);
    assert!(inspected.stdout.contains("host added traceparent"), "{}", inspected.stdout);
    Guild::new().run(&["replay", path]).expect_code(0);

    // A caller that did not sample its trace: the job carries the trace (its flag unset) to the
    // worker, so nothing of the run is exported under any trace, yet the run and the upstream
    // name the caller's trace.
    let spans = || collector.spans.lock().expect("spans").clone();
    let unsampled = format!("00-{UNSAMPLED_TRACE}-{CALLER_SPAN}-00");
    let reply = daemon.call_with("POST", "/v1/runs", TOKEN, body.as_bytes(), &[("traceparent", &unsampled)]);
    assert_eq!(reply.status, 202, "{}", String::from_utf8_lossy(&reply.body));
    let id = reply.json()["id"].as_str().expect("id").to_string();
    let run = daemon.wait_run(TOKEN, &id);
    assert_eq!((&run["status"], &run["trace_id"]), (&json!("succeeded"), &json!(UNSAMPLED_TRACE)), "{run}");
    crate::redis::wait_audited(&api, std::slice::from_ref(&id), Duration::from_secs(10));
    // Several batch delays of both processes.
    std::thread::sleep(Duration::from_millis(600));
    // Only the first run's trace, and the polls of `GET /v1/runs/{id}` (each its own trace).
    let after = spans();
    let stray: Vec<_> =
        after.iter().filter(|s| s.trace_id != CALLER_TRACE && !s.name.starts_with("GET /v1/")).collect();
    assert!(stray.is_empty(), "no span of the unsampled run, under any trace: {stray:?}");
    let told = seen.lock().expect("seen").clone();
    assert!(
        told.last().is_some_and(|t| t.starts_with(&format!("00-{UNSAMPLED_TRACE}-")) && t.ends_with("-00")),
        "{told:?}"
    );
}

#[test]
fn an_mcp_call_over_stdio_joins_the_trace_its_meta_names_and_logs_carry_trace_ids() {
    let collector = Collector::start();
    let guild = Guild::new();
    let endpoint = collector.endpoint();
    let mut command = guild.command();
    command
        .arg("mcp")
        .env("GUILD_TELEMETRY__ENDPOINT", &endpoint)
        .env("GUILD_TELEMETRY__SCHEDULED_DELAY_MS", "100")
        .env("GUILD_LOG", "info")
        .stderr(std::process::Stdio::piped());
    let mut session = RawMcp::start(command);
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    session.send(&format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"echo","arguments":{{"message":"m"}},"_meta":{{"traceparent":"{traceparent}"}}}}}}"#
    ));
    let ran = session.answer();
    assert_eq!(ran["result"]["structuredContent"]["message"], "m", "{ran}");
    let (status, mut child) = session.finish();
    assert!(status.success());
    // Flushed at exit.
    let spans = collector.trace(CALLER_TRACE, |spans| named(spans, "execute_tool echo").is_some());
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let call = named(&spans, "tools/call echo").unwrap_or_else(|| panic!("an MCP span: {names:?}"));
    assert_eq!(call.parent, CALLER_SPAN);
    assert_eq!(call.attributes.get("mcp.method.name").map(String::as_str), Some("tools/call"));
    assert_eq!(call.attributes.get("jsonrpc.request.id").map(String::as_str), Some("7"));
    let run = named(&spans, "execute_tool echo").unwrap_or_else(|| panic!("a run span: {names:?}"));
    assert_eq!(run.parent, call.span_id);
    assert!(named(&spans, "audit write").is_some(), "{names:?}");
    // A log line inside the run names its trace and span.
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr");
    let finished = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["message"] == "run finished")
        .unwrap_or_else(|| panic!("a run-finished line: {stderr}"));
    assert_eq!(finished["trace_id"], CALLER_TRACE, "{finished}");
    assert_eq!(finished["span_id"].as_str(), Some(run.span_id.as_str()), "{finished}");
}

#[test]
fn with_the_collector_gone_runs_still_succeed_and_dropped_spans_are_counted() {
    let collector = Collector::start();
    let guild = Guild::new();
    let endpoint = collector.endpoint();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("GUILD_TELEMETRY__SCHEDULED_DELAY_MS", "50"),
        ("GUILD_TELEMETRY__EXPORT_TIMEOUT_MS", "500"),
        ("GUILD_TOKEN", TOKEN),
    ];
    let daemon = Daemon::start(&guild, &[], &env);
    let echo = |message: &str| daemon.run(TOKEN, json!({"tool": "echo", "input": {"message": message}}));
    assert_eq!(echo("before").status, 200);
    let before = Instant::now();
    let first = echo("before");
    let traced = before.elapsed();
    assert_eq!(first.status, 200);
    // An OpenMetrics scrape shows the run as its latency bucket's exemplar.
    let trace_id = first.json()["trace_id"].as_str().expect("a traced run's trace id").to_string();
    let scrape =
        daemon.call_with("GET", "/metrics", "", b"", &[("accept", "application/openmetrics-text; version=1.0.0")]);
    let text = String::from_utf8_lossy(&scrape.body).to_string();
    assert!(
        scrape.headers.get("content-type").is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        scrape.headers
    );
    let exemplar = format!("# {{trace_id=\"{trace_id}\"}}");
    assert!(
        text.lines().any(|l| l.starts_with("guild_run_duration_seconds_bucket{")
            && l.contains("tool=\"echo\"")
            && l.contains(&exemplar)),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"));
    collector.stop();
    let dropped = |daemon: &Daemon| crate::redis::metric(daemon, "guild_telemetry_spans_dropped_total");
    assert_eq!(dropped(&daemon), 0.0, "nothing dropped while the collector answered");
    let started = Instant::now();
    for n in 0..20 {
        let reply = echo(&format!("after {n}"));
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    }
    // Far from a timing test: a run never waits for an export (whose timeout is 500 ms here).
    let per_run = started.elapsed() / 20;
    assert!(per_run < Duration::from_millis(400), "{per_run:?} a run with the collector gone ({traced:?} before)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while dropped(&daemon) == 0.0 {
        assert!(Instant::now() < deadline, "the dropped-span counter rises: {:?}", daemon.log_lines());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_unsampled_caller_is_not_exported_yet_its_trace_id_reaches_the_run_and_the_upstream() {
    let collector = Collector::start();
    let (port, seen) = upstream();
    let guild = Guild::new();
    let rule = format!("http://127.0.0.1:{port}");
    let endpoint = collector.endpoint();
    // The default sampler, parentbased_always_on: the caller's decision holds.
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("GUILD_TELEMETRY__SCHEDULED_DELAY_MS", "50"),
        ("GUILD_TOKEN", TOKEN),
    ];
    let daemon = Daemon::start(&guild, &["--allow-host", &rule], &env);
    let input = json!({"url": format!("http://127.0.0.1:{port}/value"), "json_pointer": "/value"});
    let body = json!({"tool": "http-get", "input": input}).to_string();
    let call = |traceparent: &str| {
        let reply = daemon.call_with("POST", "/v1/runs", TOKEN, body.as_bytes(), &[("traceparent", traceparent)]);
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
        reply.json()
    };
    let unsampled = call(&format!("00-{UNSAMPLED_TRACE}-{CALLER_SPAN}-00"));
    assert_eq!(unsampled["trace_id"], UNSAMPLED_TRACE, "the run names its caller's trace: {unsampled}");
    let sampled = call(&format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"));
    assert_eq!(sampled["trace_id"], CALLER_TRACE);
    // The sampled call's spans arrive; by then the unsampled one's would have (same batch or
    // earlier), and none did.
    let spans = collector.trace(CALLER_TRACE, |spans| named(spans, "execute_tool http-get").is_some());
    assert!(named(&spans, "execute_tool http-get").is_some(), "{spans:?}");
    assert!(collector.trace(UNSAMPLED_TRACE, |_| true).is_empty(), "nothing of an unsampled trace is exported");
    // Nor under a trace of its own: a span that lost the unsampled trace would start one, and
    // the default sampler would keep it.
    let stray: Vec<_> =
        collector.spans.lock().expect("spans").iter().filter(|s| s.trace_id != CALLER_TRACE).cloned().collect();
    assert!(stray.is_empty(), "only the sampled call's spans: {stray:?}");
    // The upstream was told both traces, the unsampled one with its sampled flag unset.
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].starts_with(&format!("00-{UNSAMPLED_TRACE}-")) && seen[0].ends_with("-00"), "{seen:?}");
    assert!(seen[1].starts_with(&format!("00-{CALLER_TRACE}-")) && seen[1].ends_with("-01"), "{seen:?}");
    // An exemplar leads to a trace the collector has: the sampled run's, never an unsampled
    // one's, not even one that ran after it (so in its bucket it would have taken its place).
    const LATER_UNSAMPLED: &str = "0af7651916cd43dd8448eb211c80319d";
    assert_eq!(call(&format!("00-{LATER_UNSAMPLED}-{CALLER_SPAN}-00"))["trace_id"], LATER_UNSAMPLED);
    let scrape =
        daemon.call_with("GET", "/metrics", "", b"", &[("accept", "application/openmetrics-text; version=1.0.0")]);
    let text = String::from_utf8_lossy(&scrape.body).to_string();
    assert!(text.contains(&format!("# {{trace_id=\"{CALLER_TRACE}\"}}")), "{text}");
    assert!(
        !text.contains(UNSAMPLED_TRACE) && !text.contains(LATER_UNSAMPLED),
        "an unsampled trace is no exemplar: {text}"
    );
    // Its log lines name it too, from the context its tasks carry (no span of it exists).
    let deadline = Instant::now() + Duration::from_secs(10);
    let finished_in = |trace: &str| {
        daemon
            .log_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|l| l["fields"]["message"] == "run finished" && l["trace_id"] == trace && l["span_id"].is_string())
    };
    while !finished_in(UNSAMPLED_TRACE) {
        assert!(Instant::now() < deadline, "a run-finished line in the unsampled trace: {:?}", daemon.log_lines());
        std::thread::sleep(Duration::from_millis(50));
    }
}
