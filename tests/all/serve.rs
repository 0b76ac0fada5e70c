//! `guild serve`: the real binary as a daemon, called over HTTP on loopback — the embedded
//! default, tenants and their limits, schema checks, backpressure, draining, restarts and the
//! audit log.

use crate::Guild;
use crate::daemon::{Daemon, config_file, token_digest};
use guild_test_artifacts::{COSTLY_SCHEMA, ECHO, HOSTILE};
use serde_json::json;
use std::time::Duration;

#[test]
fn the_embedded_default_serves_the_examples_and_runs_replay_and_survive_a_restart() {
    let guild = Guild::new();
    let data = crate::tree(&[("a.txt", "one two\nthree\n")]);
    let dir = crate::mount(data.path(), "/data", "ro");
    let env = [("GUILD_TOKEN", "secret-token")];
    let daemon = Daemon::start(&guild, &["--dir", &dir], &env);

    assert_eq!(daemon.call("GET", "/healthz", "", "").status, 200);
    assert_eq!(daemon.call("GET", "/readyz", "", "").status, 200);
    let reply = daemon.call("GET", "/v1/tools", "wrong", "");
    assert_eq!((reply.status, reply.code().as_str()), (401, "unauthorized"));
    let tools = daemon.call("GET", "/v1/tools", "secret-token", "").json();
    let names: Vec<&str> =
        tools["tools"].as_array().expect("tools").iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["echo", "grep", "hash", "http-get", "json-query", "wc"]);
    assert!(tools["tools"][0]["input_schema"].is_object(), "schemas are listed");

    let reply = daemon.run("secret-token", json!({"tool": "wc", "input": {"path": "/data"}}));
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let run = reply.json();
    assert_eq!(run["status"], "succeeded", "{run}");
    let cli = guild.run(&["run", guild_test_artifacts::WC, "--dir", &dir, "--input", r#"{"path":"/data"}"#]);
    assert_eq!(cli.json(), run["output"], "the daemon and the CLI give the same output");

    let id = run["id"].as_str().expect("run id").to_string();
    let bundle = run["bundle"].as_str().expect("bundle id").to_string();
    let stored = daemon.call("GET", &format!("/v1/runs/{id}"), "secret-token", "").json();
    assert_eq!((stored["output"].clone(), stored["bundle"].as_str()), (run["output"].clone(), Some(bundle.as_str())));
    assert_eq!(daemon.call("GET", "/v1/runs/0123456789abcdef", "secret-token", "").status, 404);
    let archive = daemon.call("GET", &format!("/v1/bundles/{bundle}"), "secret-token", "");
    assert_eq!(archive.status, 200);
    let file = data.path().join("../run.tar.zst");
    std::fs::write(&file, &archive.body).expect("write");
    Guild::new().run(&["replay", file.to_str().expect("utf-8")]).expect_code(0);
    let _ = std::fs::remove_file(&file);

    let accepted = daemon.run("secret-token", json!({"tool": "echo", "input": {"message": "later"}, "async": true}));
    assert_eq!(accepted.status, 202);
    let finished = daemon.wait_run("secret-token", accepted.json()["id"].as_str().expect("id"));
    assert_eq!(
        (finished["status"].as_str(), finished["output"].clone()),
        (Some("succeeded"), json!({"message": "later"}))
    );

    let keyed = json!({"tool": "echo", "input": {"message": "once"}, "idempotency_key": "k-1"});
    let first = daemon.run("secret-token", keyed.clone()).json();
    assert_eq!(daemon.terminate(), Some(0), "SIGTERM shuts down cleanly");

    // After a restart the run ids, idempotency keys and the audit chain are all still there.
    let daemon = Daemon::start(&guild, &["--dir", &dir], &env);
    let again = daemon.call("GET", &format!("/v1/runs/{id}"), "secret-token", "").json();
    assert_eq!(again["output"], run["output"], "{again}");
    let resubmitted = daemon.run("secret-token", keyed);
    assert_eq!(resubmitted.headers.get("idempotent-replayed").map(String::as_str), Some("true"));
    assert_eq!(resubmitted.json()["id"], first["id"]);
    assert_eq!(resubmitted.json()["output"], json!({"message": "once"}));
    drop(daemon);
    let verified = guild.run(&["audit", "verify"]);
    verified.expect_code(0);
    assert!(verified.stdout.contains("3 records"), "{verified:?}");
}

/// The daemon checks every input against the tool's own input schema; one too costly to check
/// (2^22 visits of one rule) is refused at the checker's fuel limit, as `invalid_input` on the
/// whole input, and an output too costly to check fails the run; the daemon keeps answering.
#[test]
fn input_and_output_too_costly_to_check_stop_at_the_checkers_limit() {
    let guild = Guild::new();
    let config = format!(
        "[[tools]]\npath = \"{COSTLY_SCHEMA}\"\n\n[[tenants]]\nname = \"root\"\ntoken_blake3 = \"{}\"\ntools = [\"*\"]\n",
        token_digest(ROOT)
    );
    let config = config_file(guild.home(), &config);
    let daemon = Daemon::start(&guild, &["--config", &config], &[]);
    let run = |input: serde_json::Value| daemon.run(ROOT, json!({"tool": "costly-schema", "input": input}));

    let refused = run(json!({"in": "x"}));
    assert_eq!((refused.status, refused.code().as_str()), (400, "invalid_input"), "{}", refused.json());
    assert_eq!(refused.json()["error"]["field"], "/", "{}", refused.json());
    let message = refused.json()["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("schema_check.fuel_units"), "{message}");

    let failed = run(json!({"in": "xy", "out": "x"}));
    assert_eq!(failed.status, 200, "{}", failed.json());
    assert_eq!(failed.json()["status"], "failed", "{}", failed.json());
    assert!(failed.json().to_string().contains("schema_check.fuel_units"), "{}", failed.json());

    let fine = run(json!({"in": "xy", "out": "xy"}));
    assert_eq!(
        (fine.json()["status"].as_str(), fine.json()["output"].clone()),
        (Some("succeeded"), json!({"out": "xy"}))
    );

    // Past 64 KiB an input is checked on the blocking pool: the same answers.
    let pad = "p".repeat(100 * 1024);
    let refused = run(json!({"in": "x", "pad": pad}));
    assert_eq!((refused.status, refused.code().as_str()), (400, "invalid_input"), "{}", refused.json());
    assert!(refused.json()["error"]["message"].as_str().unwrap_or_default().contains("could not be checked"));
    let fine = run(json!({"in": "xy", "out": "xy", "pad": pad}));
    assert_eq!(fine.json()["status"], "succeeded", "{}", fine.json());
}

const ALICE: &str = "alice-token";
const BOB: &str = "bob-token";
const ROOT: &str = "root-token";

fn tenants_config(extra: &str) -> String {
    format!(
        r#"
[[tools]]
path = "{echo}"

[[tools]]
path = "{hostile}"
[tools.limits]
timeout_ms = 300

[[tenants]]
name = "alice"
token_blake3 = "{alice}"
tools = ["echo"]
rate_per_second = 1.0
burst = 3

[[tenants]]
name = "bob"
token_blake3 = "{bob}"
tools = ["*"]
fuel_budget_units = 100000

[[tenants]]
name = "root"
token_blake3 = "{root}"
tools = ["*"]
admin = true
{extra}
"#,
        echo = ECHO,
        hostile = HOSTILE,
        alice = token_digest(ALICE),
        bob = token_digest(BOB),
        root = token_digest(ROOT),
    )
}

#[test]
fn tenants_get_401_403_400_413_and_429_with_clear_codes() {
    let guild = Guild::new();
    let config = config_file(guild.home(), &tenants_config(""));
    let daemon = Daemon::start(&guild, &["--config", &config], &[("GUILD_REQUEST_BYTES_MAX", "2048")]);
    let echo = |m: &str| json!({"tool": "echo", "input": {"message": m}});

    assert_eq!(daemon.run("nobody", echo("x")).code(), "unauthorized");
    let reply = daemon.run(ALICE, json!({"tool": "hostile", "input": {"attack": "loop"}}));
    assert_eq!((reply.status, reply.code().as_str()), (403, "forbidden"));
    assert!(reply.json()["error"]["message"].as_str().unwrap_or("").contains("alice may not call"), "{}", reply.json());
    let tools = daemon.call("GET", "/v1/tools", ALICE, "").json();
    assert_eq!(tools["tools"].as_array().map(Vec::len), Some(1), "alice sees only what she may call");

    let reply = daemon.run(ROOT, json!({"tool": "echo", "input": {"mesage": "typo"}}));
    assert_eq!((reply.status, reply.code().as_str()), (400, "invalid_input"));
    assert_eq!(reply.json()["error"]["field"], "/mesage", "{}", reply.json());
    let reply = daemon.run(ROOT, json!({"tool": "echo", "input": {"message": 7}}));
    assert_eq!(reply.json()["error"]["field"], "/message", "{}", reply.json());

    let big = json!({"tool": "echo", "input": {"message": "x".repeat(4096)}});
    let reply = daemon.run(ROOT, big);
    assert_eq!((reply.status, reply.code().as_str()), (413, "request_too_large"));
    assert!(reply.json()["error"]["message"].as_str().unwrap_or("").contains("request_bytes_max"));
    assert_eq!(daemon.call("GET", "/v2/nothing", ROOT, "").code(), "not_found");
    assert_eq!(daemon.call("DELETE", "/v1/runs", ROOT, "").code(), "method_not_allowed");

    // alice: burst 3 at 1 run/s.
    let statuses: Vec<u16> = (0..5).map(|i| daemon.run(ALICE, echo(&i.to_string())).status).collect();
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    let limited = daemon.run(ALICE, echo("again"));
    assert_eq!((limited.status, limited.code().as_str()), (429, "rate_limited"));
    assert!(limited.headers.get("retry-after").is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1)));

    // bob: a fuel budget of 100k units per hour; an echo costs a few thousand.
    let mut refused = None;
    for i in 0..200 {
        let reply = daemon.run(BOB, echo(&i.to_string()));
        if reply.status != 200 {
            refused = Some(reply);
            break;
        }
    }
    let refused = refused.expect("bob runs out of fuel budget");
    assert_eq!((refused.status, refused.code().as_str()), (429, "fuel_budget_exhausted"));

    // Uploading a component needs an admin tenant; a malformed one is refused with its reason.
    let wasm = std::fs::read(ECHO).expect("echo component");
    let reply = daemon.call_with("POST", "/v1/tools", BOB, &wasm, &[]);
    assert_eq!((reply.status, reply.code().as_str()), (403, "forbidden"));
    let reply = daemon.call_with("POST", "/v1/tools", ROOT, b"\0asm not really", &[]);
    assert_eq!((reply.status, reply.code().as_str()), (400, "invalid_component"));
    let wc = std::fs::read(guild_test_artifacts::WC).expect("wc component");
    let reply = daemon.call_with("POST", "/v1/tools", ROOT, &wc, &[("content-type", "application/wasm")]);
    assert_eq!(reply.status, 201, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.json()["name"], "wc");
    assert_eq!(daemon.run(ROOT, json!({"tool": "wc", "input": {"path": "/"}})).json()["tool"], "wc");

    let metrics = String::from_utf8(daemon.call("GET", "/metrics", "", "").body).expect("utf-8");
    assert!(metrics.contains(r#"guild_rejections_total{reason="rate_limited",tenant="alice"} "#), "{metrics}");
    assert!(
        metrics.contains(r#"guild_runs_total{outcome="output",revision="1",tenant="alice",tool="echo"} 3"#),
        "{metrics}"
    );
    let run_lines: Vec<String> = daemon.log_lines().into_iter().filter(|l| l.contains("run finished")).collect();
    let line: serde_json::Value = serde_json::from_str(&run_lines[0]).expect("JSON log line");
    for field in ["run_id", "tenant", "tool"] {
        assert!(line["span"][field].is_string(), "{field} on every run line: {line}");
    }
}

#[test]
fn a_flood_beyond_the_queue_gets_429s_while_accepted_runs_complete_and_memory_stays_bounded() {
    let guild = Guild::new();
    let config = config_file(guild.home(), &tenants_config("[queue]\nruns_in_flight_max = 2\ndepth_max = 4\n"));
    let daemon = Daemon::start(&guild, &["--config", &config], &[]);
    let sleep = json!({"tool": "hostile", "input": {"attack": "sleep"}});
    let rss_before = daemon.rss_bytes();
    let port = daemon.port;
    let threads: Vec<_> = (0..40)
        .map(|_| {
            let body = sleep.to_string();
            std::thread::spawn(move || crate::daemon::call(port, "POST", "/v1/runs", ROOT, body.as_bytes(), &[]))
        })
        .collect();
    let replies: Vec<_> = threads.into_iter().map(|t| t.join().expect("client thread")).collect();
    let accepted: Vec<_> = replies.iter().filter(|r| r.status == 200).collect();
    let refused: Vec<_> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(accepted.len() + refused.len(), 40, "only 200 or 429");
    assert!(accepted.len() >= 6, "the slots and the queue were used: {} accepted", accepted.len());
    assert!(refused.len() >= 10, "a flood beyond the queue is refused: {} refused", refused.len());
    for reply in &refused {
        assert_eq!(reply.code(), "queue_full");
        assert!(reply.headers.contains_key("retry-after"), "429 carries Retry-After");
    }
    for reply in &accepted {
        let run = reply.json();
        assert_eq!(run["error"]["status"], "limit", "each accepted run ran to its 300 ms limit: {run}");
        assert!(run["bundle"].is_string());
    }
    let grown = daemon.rss_bytes().saturating_sub(rss_before);
    assert!(grown < 256 * 1024 * 1024, "memory stays bounded under a flood: grew {grown} bytes");

    let metrics = daemon.call("GET", "/metrics", "", "");
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let dashboard = include_str!("../../deploy/grafana-dashboard.json");
    let used = dashboard_metric_names(dashboard);
    assert!(used.len() >= 10, "the dashboard uses the metrics: {used:?}");
    // The fleet's `guild_redis_*` series are served only with `--redis` (the lanes test checks them).
    for name in used.into_iter().filter(|name| !name.starts_with("guild_redis_")) {
        assert!(text.contains(&format!("# TYPE {name} ")), "the Grafana dashboard uses {name}, which /metrics lacks");
    }
    assert!(!text.contains("guild_redis_up"), "a daemon without Redis shows no Redis series (its alert would page)");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, &metrics.body).expect("write");
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).expect("open"))
        .output()
        .expect("promtool (Debian package prometheus; scripts/setup.sh installs it)");
    assert!(
        promtool.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&promtool.stdout),
        String::from_utf8_lossy(&promtool.stderr)
    );
}

#[test]
fn sigterm_mid_load_drains_queued_runs_and_loses_no_bundle_or_audit_record() {
    let guild = Guild::new();
    let config =
        config_file(guild.home(), &tenants_config("[queue]\nruns_in_flight_max = 2\ndrain_notice_ms = 1500\n"));
    let daemon = Daemon::start(&guild, &["--config", &config], &[]);
    let ids: Vec<String> = (0..16)
        .map(|_| {
            let reply = daemon.run(ROOT, json!({"tool": "hostile", "input": {"attack": "sleep"}, "async": true}));
            assert_eq!(reply.status, 202, "{}", String::from_utf8_lossy(&reply.body));
            assert!(reply.headers.get("location").is_some_and(|l| l.starts_with("/v1/runs/")));
            reply.json()["id"].as_str().expect("id").to_string()
        })
        .collect();
    // Same key, many clients at once: one run.
    let port = daemon.port;
    let keyed: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(move || {
                let body = json!({"tool": "echo", "input": {"message": "k"}, "idempotency_key": "same"}).to_string();
                crate::daemon::call(port, "POST", "/v1/runs", ROOT, body.as_bytes(), &[]).json()["id"].clone()
            })
        })
        .collect();
    let keyed_ids: std::collections::BTreeSet<String> =
        keyed.into_iter().map(|t| t.join().expect("client").as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(keyed_ids.len(), 1, "concurrent resubmissions share one run: {keyed_ids:?}");

    let store = guild.home().join("store");
    let started = std::time::Instant::now();
    daemon.signal_term();
    std::thread::sleep(Duration::from_millis(300));
    let ready = daemon.call("GET", "/readyz", "", "");
    assert_eq!(ready.status, 503, "draining: not ready");
    let refused = daemon.run(ROOT, json!({"tool": "echo", "input": {"message": "late"}}));
    assert_eq!((refused.status, refused.code().as_str()), (503, "draining"));
    assert_eq!(daemon.wait(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(20), "drained within the deadline");

    let audit = std::fs::read_to_string(guild.home().join("audit.log")).expect("audit log");
    let records: Vec<serde_json::Value> = audit.lines().map(|l| serde_json::from_str(l).expect("record")).collect();
    assert_eq!(records.len(), 17, "16 queued runs and one keyed run, each recorded once");
    for id in &ids {
        let record = records.iter().find(|r| r["run"] == id.as_str()).expect("every queued run finished");
        let bundle = record["bundle"].as_str().expect("a bundle");
        Guild::new().run(&["--store", store.to_str().expect("utf-8"), "bundle", "verify", bundle]).expect_code(0);
    }
    guild.run(&["audit", "verify"]).expect_code(0);
}

#[test]
fn a_tampered_or_truncated_audit_log_is_detected_and_refused() {
    let guild = Guild::new();
    let env = [("GUILD_TOKEN", "t")];
    let daemon = Daemon::start(&guild, &["--no-examples", "--tool", ECHO], &env);
    for i in 0..3 {
        assert_eq!(daemon.run("t", json!({"tool": "echo", "input": {"message": i.to_string()}})).status, 200);
    }
    drop(daemon);
    let log = guild.home().join("audit.log");
    let text = std::fs::read_to_string(&log).expect("log");
    guild.run(&["audit", "verify"]).expect_code(0);

    std::fs::write(&log, text.replacen("\"tenant\":\"default\"", "\"tenant\":\"mallory\"", 1)).expect("edit");
    let ran = guild.run(&["audit", "verify"]);
    ran.expect_code(10).expect_stderr("seq 1").expect_stderr("hash does not match");

    std::fs::write(&log, &text[..text.len() - 20]).expect("truncate");
    guild.run(&["audit", "verify"]).expect_code(10).expect_stderr("truncated");

    let two: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(&log, two).expect("drop the last record");
    guild.run(&["audit", "verify"]).expect_code(10).expect_stderr("records were removed");

    let mut command = guild.command();
    let refused = command.args(["serve", "--listen", "127.0.0.1:0", "--no-examples"]).env("GUILD_TOKEN", "t").output();
    let refused = refused.expect("runs");
    assert_eq!(refused.status.code(), Some(2), "the daemon does not append to a broken chain");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("audit log"));
}

#[test]
fn config_errors_name_the_field() {
    let guild = Guild::new();
    let config =
        config_file(guild.home(), "[queue]\ndepth_max = 4\n[[tenants]]\nname = \"a\"\ntoken_blake3 = \"nope\"\n");
    let ran = guild.run(&["serve", "--config", &config]);
    ran.expect_code(2).expect_stderr("tenants[0].token_blake3");
    let mut command = guild.command();
    let ran =
        command.args(["serve", "--config", &config]).env("GUILD_QUEUE__DEPTH_MAX", "many").output().expect("runs");
    assert!(String::from_utf8_lossy(&ran.stderr).contains("depth_max"), "{}", String::from_utf8_lossy(&ran.stderr));
}

/// Metric families named in a dashboard (`guild_…`, without histogram suffixes).
fn dashboard_metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for (start, _) in text.match_indices("guild_") {
        let name: String =
            text[start..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit()).collect();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name.clone(), |n, s| n.strip_suffix(s).map(str::to_string).unwrap_or(n));
        if family != "guild_" && !family.ends_with("daemon") {
            names.insert(family);
        }
    }
    names
}
