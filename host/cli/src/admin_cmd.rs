//! `guild rollout …`, `guild tool upload|revisions|disable|enable` and `guild cache
//! stats|purge`: the daemon's tool and cache administration routes, called over HTTP with the admin token from `GUILD_TOKEN`. Tables for
//! people; `--json` prints the daemon's answer as it came.

use crate::args::{CacheCommand, DaemonFlags, RolloutCommand, ToolCommand};
use crate::exit::{Exit, Failure};
use crate::out;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use serde_json::{Value, json};

/// Largest answer read from the daemon, bytes (a gate report of 1 000 runs fits many times).
const ANSWER_BYTES_MAX: usize = 64 << 20;

/// `guild tool new|upload|revisions|disable|enable`.
pub(crate) fn tool(command: ToolCommand) -> Result<Exit, Failure> {
    match command {
        ToolCommand::New(new) => crate::scaffold::new_tool(new),
        ToolCommand::Upload(a) => {
            let bytes = std::fs::read(&a.component)
                .map_err(|e| Failure::usage(format!("cannot read {}: {e}", a.component.display())))?;
            let path = match &a.name {
                Some(name) => format!("/v1/tools/{}/revisions", segment(name)),
                None => "/v1/tools".to_string(),
            };
            let answer = call(&a.daemon, Method::POST, &path, Body::Component(bytes, a.note.clone()))?;
            if a.daemon.json {
                return print_json(&answer);
            }
            out!(
                "{} revision {} ({}); current revision {}",
                text(&answer["name"]),
                answer["revision"],
                text(&answer["component"]),
                answer["current_revision"]
            );
            Ok(Exit::Success)
        }
        ToolCommand::Revisions(a) => {
            let answer =
                call(&a.daemon, Method::GET, &format!("/v1/tools/{}/revisions", segment(&a.name)), Body::None)?;
            if a.daemon.json {
                return print_json(&answer);
            }
            print_record(&answer);
            Ok(Exit::Success)
        }
        ToolCommand::Disable(a) => flag(&a, true),
        ToolCommand::Enable(a) => flag(&a, false),
    }
}

/// `guild cache stats|purge`.
pub(crate) fn cache(command: CacheCommand) -> Result<Exit, Failure> {
    match command {
        CacheCommand::Stats(a) => {
            let answer = call(&a.daemon, Method::GET, "/v1/cache", Body::None)?;
            if a.daemon.json {
                return print_json(&answer);
            }
            out!("{:<24} {:>9} {:>12} {:>8} {:>11}", "TOOL", "ENTRIES", "BYTES", "TTL_S", "ENTRIES_MAX");
            // A tool no longer cached (still holding entries) has no policy: shown as `-`.
            let cell = |v: &Value| if v.is_null() { "-".to_string() } else { v.to_string() };
            for tool in answer["tools"].as_array().into_iter().flatten() {
                out!(
                    "{:<24} {:>9} {:>12} {:>8} {:>11}",
                    text(&tool["tool"]),
                    cell(&tool["entries"]),
                    cell(&tool["bytes"]),
                    cell(&tool["policy"]["ttl_s"]),
                    cell(&tool["policy"]["entries_max"])
                );
            }
            Ok(Exit::Success)
        }
        CacheCommand::Purge(a) => {
            let path = match &a.tool {
                Some(tool) => format!("/v1/cache/{}", segment(tool)),
                None => "/v1/cache".to_string(),
            };
            let answer = call(&a.daemon, Method::DELETE, &path, Body::None)?;
            if a.daemon.json {
                return print_json(&answer);
            }
            out!("purged {} entries", answer["purged"]);
            Ok(Exit::Success)
        }
    }
}

fn flag(a: &crate::args::FlagArgs, disabled: bool) -> Result<Exit, Failure> {
    let body = json!({ "disabled": disabled, "tenant": a.tenant, "reason": a.reason });
    let answer = call(&a.daemon, Method::PUT, &format!("/v1/tools/{}/flags", segment(&a.name)), Body::Json(body))?;
    if a.daemon.json {
        return print_json(&answer);
    }
    // What is in force now, not what was asked: a tool off for everyone stays off for a tenant
    // switched back on.
    match answer.get("disabled") {
        Some(d) => out!("{} is off for everyone: {}", a.name, text(&d["reason"])),
        None => out!("{} is on for everyone not listed below", a.name),
    }
    for (tenant, d) in answer["tenants"].as_object().into_iter().flatten() {
        out!("{} is off for tenant {tenant}: {}", a.name, text(&d["reason"]));
    }
    Ok(Exit::Success)
}

/// `guild usage`: the daemon's usage rows as a table, CSV or its JSON.
pub(crate) fn usage(a: crate::args::UsageArgs) -> Result<Exit, Failure> {
    let mut query = vec![format!("group_by={}", segment(&a.group_by))];
    for (name, value) in [("tenant", a.tenant.as_deref()), ("tool", a.tool.as_deref()), ("agent", a.agent.as_deref())] {
        if let Some(value) = value {
            query.push(format!("{name}={}", segment(value)));
        }
    }
    for (name, value) in [("from", a.from), ("to", a.to)] {
        if let Some(value) = value {
            query.push(format!("{name}={value}"));
        }
    }
    let answer = call(&a.daemon, Method::GET, &format!("/v1/usage?{}", query.join("&")), Body::None)?;
    if a.daemon.json {
        return print_json(&answer);
    }
    let rows = answer["rows"].as_array().cloned().unwrap_or_default();
    if a.csv {
        out!("period,tenant,tool,agent,currency,runs,total");
        for row in &rows {
            let cell = |v: &Value| guild_server::usage::csv_cell(v.as_str().unwrap_or(""));
            out!(
                "{},{},{},{},{},{},{}",
                cell(&row["period"]),
                cell(&row["tenant"]),
                cell(&row["tool"]),
                cell(&row["agent"]),
                cell(&row["currency"]),
                row["runs"],
                cell(&row["total"])
            );
        }
        return Ok(Exit::Success);
    }
    out!("{:<22} {:<16} {:<24} {:<20} {:>8} {:>20}", "PERIOD", "TENANT", "TOOL", "AGENT", "RUNS", "TOTAL");
    for row in &rows {
        let cell = |v: &Value| v.as_str().unwrap_or("-").to_string();
        let total = format!("{} {}", cell(&row["total"]), cell(&row["currency"]));
        out!(
            "{:<22} {:<16} {:<24} {:<20} {:>8} {:>20}",
            cell(&row["period"]),
            cell(&row["tenant"]),
            cell(&row["tool"]),
            cell(&row["agent"]),
            row["runs"],
            total
        );
    }
    Ok(Exit::Success)
}

/// `guild rollout check|start|status|promote|rollback`.
pub(crate) fn rollout(command: RolloutCommand) -> Result<Exit, Failure> {
    match command {
        RolloutCommand::Check(a) => {
            let body = json!({
                "candidate": a.candidate,
                "last": a.last,
                "since_s": a.since.map(|d| d.as_secs()),
            });
            let path = format!("/v1/tools/{}/rollout/check", segment(&a.name));
            let answer = call(&a.daemon, Method::POST, &path, Body::Json(body))?;
            let passed = answer["passed"].as_bool().unwrap_or(false);
            if a.daemon.json {
                print_json(&answer)?;
            } else {
                out!("{}", text(&answer["table"]));
                out!("report {}", text(&answer["report"]));
                for reason in answer["failures"].as_array().into_iter().flatten() {
                    out!("gate: {}", text(reason));
                }
                out!("gate: {}", if passed { "passed" } else { "failed" });
            }
            Ok(if passed { Exit::Success } else { Exit::ToolError })
        }
        RolloutCommand::Start(a) => {
            let body = json!({
                "candidate": a.candidate,
                "percent": a.percent,
                "shadow_percent": a.shadow,
                "tenants": a.tenants,
                "force": a.force,
                "replace": a.replace,
                "reason": a.reason,
            });
            let path = format!("/v1/tools/{}/rollout", segment(&a.name));
            record_answer(&a.daemon, call(&a.daemon, Method::POST, &path, Body::Json(body))?)
        }
        RolloutCommand::Status(a) => {
            let answer = call(&a.daemon, Method::GET, &format!("/v1/tools/{}/rollout", segment(&a.name)), Body::None)?;
            if a.daemon.json {
                return print_json(&answer);
            }
            print_record(&answer);
            let mut verdicts = std::collections::BTreeMap::<String, u64>::new();
            for sample in answer["shadow"].as_array().into_iter().flatten() {
                *verdicts.entry(text(&sample["check"]["verdict"])).or_default() += 1;
            }
            if !verdicts.is_empty() {
                let counts: Vec<String> = verdicts.iter().map(|(v, n)| format!("{v} {n}")).collect();
                out!("shadow (newest verdicts kept): {}", counts.join(", "));
            }
            let w = &answer["window"];
            if answer["candidate"].is_null() && w["candidate_calls"].as_u64() == Some(0) {
                return Ok(Exit::Success);
            }
            out!(
                "window: candidate {} calls ({:.1}% failed, p99 {} µs), current {} calls ({:.1}% failed, p99 {} µs)",
                w["candidate_calls"],
                w["candidate_error_percent"].as_f64().unwrap_or(0.0),
                w["candidate_p99_us"],
                w["current_calls"],
                w["current_error_percent"].as_f64().unwrap_or(0.0),
                w["current_p99_us"]
            );
            Ok(Exit::Success)
        }
        RolloutCommand::Promote(a) => {
            let body = json!({ "force": a.force, "reason": a.reason });
            let path = format!("/v1/tools/{}/rollout/promote", segment(&a.name));
            record_answer(&a.daemon, call(&a.daemon, Method::POST, &path, Body::Json(body))?)
        }
        RolloutCommand::Rollback(a) => {
            let body = json!({ "to": a.to, "reason": a.reason });
            let path = format!("/v1/tools/{}/rollout/rollback", segment(&a.name));
            record_answer(&a.daemon, call(&a.daemon, Method::POST, &path, Body::Json(body))?)
        }
    }
}

fn record_answer(daemon: &DaemonFlags, answer: Value) -> Result<Exit, Failure> {
    if daemon.json {
        return print_json(&answer);
    }
    print_record(&answer);
    Ok(Exit::Success)
}

fn print_json(answer: &Value) -> Result<Exit, Failure> {
    out!("{}", serde_json::to_string_pretty(answer).unwrap_or_default());
    Ok(Exit::Success)
}

fn text(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_string)
}

/// A tool record as a table: one line per revision, then the candidate and the flags.
fn print_record(record: &Value) {
    out!("{} (generation {})", text(&record["name"]), record["generation"]);
    out!("{:>4}  {:<12} {:<10} {:<16} {:<13} {}", "REV", "STATE", "VERSION", "COMPONENT", "ADDED BY", "NOTE");
    for r in record["revisions"].as_array().into_iter().flatten() {
        let component = text(&r["component"]);
        out!(
            "{:>4}  {:<12} {:<10} {:<16} {:<13} {}",
            r["revision"].as_u64().unwrap_or(0),
            text(&r["state"]),
            text(&r["version"]),
            component.get(..16).unwrap_or(&component),
            text(&r["added_by"]),
            r["rolled_back"].as_str().map_or_else(|| text(&r["note"]), |why| format!("rolled back: {why}"))
        );
    }
    if let Some(c) = record.get("candidate").filter(|c| !c.is_null()) {
        let share = |bp: &Value| bp.as_f64().unwrap_or(0.0) / 100.0;
        let tenants = c["tenants"].as_array().map(|t| t.iter().map(text).collect::<Vec<_>>().join(","));
        out!(
            "candidate: revision {} at {}% of calls, shadow {}%{}{}",
            c["revision"],
            share(&c["ramp_bp"]),
            share(&c["shadow_bp"]),
            tenants.map(|t| format!(", tenants {t}")).unwrap_or_default(),
            if c["forced"].as_bool() == Some(true) { ", started with force" } else { "" }
        );
    }
    if let Some(d) = record["flags"].get("disabled") {
        out!("disabled for everyone: {}", text(&d["reason"]));
    }
    for (tenant, d) in record["flags"]["tenants"].as_object().into_iter().flatten() {
        out!("disabled for tenant {tenant}: {}", text(&d["reason"]));
    }
}

/// A tool name as one URL path segment.
fn segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

enum Body {
    None,
    Json(Value),
    Component(Vec<u8>, String),
}

/// Call the daemon; a non-2xx answer becomes a failure carrying its error code and message.
fn call(daemon: &DaemonFlags, method: Method, path: &str, body: Body) -> Result<Value, Failure> {
    let token = std::env::var("GUILD_TOKEN")
        .map_err(|_| Failure::usage("set GUILD_TOKEN to an admin tenant's token to talk to the daemon"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::host(format!("cannot start the async runtime: {e}")))?;
    let (status, bytes) = runtime.block_on(send(&daemon.url, &token, method, path, body))?;
    let value: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({}));
    if status.is_success() {
        return Ok(value);
    }
    let code = text(&value["error"]["code"]);
    let message = text(&value["error"]["message"]);
    let exit = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Exit::Denied,
        StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND => Exit::Usage,
        StatusCode::CONFLICT => Exit::ToolError,
        _ => Exit::Host,
    };
    Err(Failure::new(exit, format!("the daemon answered {status} {code}: {message}")))
}

async fn send(url: &str, token: &str, method: Method, path: &str, body: Body) -> Result<(StatusCode, Bytes), Failure> {
    let base: hyper::Uri = url.parse().map_err(|e| Failure::usage(format!("--url {url:?}: {e}")))?;
    if base.scheme_str() != Some("http") {
        return Err(Failure::usage(format!(
            "--url {url:?}: only http:// is spoken here; reach a TLS daemon through a local tunnel"
        )));
    }
    let authority = base.authority().ok_or_else(|| Failure::usage(format!("--url {url:?} has no host")))?.clone();
    let address = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
    let unreachable = |e: std::io::Error| Failure::host(format!("cannot reach the daemon at {url}: {e}"));
    let stream = tokio::net::TcpStream::connect(&address).await.map_err(unreachable)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| Failure::host(format!("cannot speak HTTP to {url}: {e}")))?;
    tokio::spawn(connection);
    let prefix = base.path().trim_end_matches('/');
    let builder = Request::builder()
        .method(method)
        .uri(format!("{prefix}{path}"))
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    let request = match body {
        Body::None => builder.body(Full::new(Bytes::new())),
        Body::Json(value) => builder
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(value.to_string()))),
        Body::Component(bytes, note) => builder
            .header(hyper::header::CONTENT_TYPE, "application/wasm")
            .header("guild-note", note)
            .body(Full::new(Bytes::from(bytes))),
    }
    .map_err(|e| Failure::usage(format!("cannot build the request: {e}")))?;
    let response =
        sender.send_request(request).await.map_err(|e| Failure::host(format!("the request to {url} failed: {e}")))?;
    let status = response.status();
    let limited = http_body_util::Limited::new(response.into_body(), ANSWER_BYTES_MAX);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| Failure::host(format!("cannot read the daemon's answer (at most {ANSWER_BYTES_MAX} bytes): {e}")))?
        .to_bytes();
    Ok((status, bytes))
}
