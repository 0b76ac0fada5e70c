//! Changing a tool safely, end to end with the real binary: `greet` revision 1 (`rev-v1`)
//! serves traffic; later revisions are uploaded (never changing what callers get), checked by
//! the replay gate against the recorded runs, ramped on a share of calls, shadowed, rolled back
//! by their guard rails or by hand, promoted; the tool is switched off and on; the config is
//! reloaded on SIGHUP; and with Redis, a second API node and a worker follow within a second.

use crate::Guild;
use crate::daemon::{Counter, Daemon, Reply, config_file, token_digest};
use guild_test_artifacts::{ECHO, REV_V1, REV_V2, REV_V3, REV_V4, REV_V5};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const ROOT: &str = "root-token";
const ALICE: &str = "alice-token";

fn config(tool: &str, extra: &str) -> String {
    format!(
        r#"
[[tools]]
path = "{tool}"

[[tenants]]
name = "root"
token_blake3 = "{root}"
tools = ["*"]
admin = true

[[tenants]]
name = "alice"
token_blake3 = "{alice}"
tools = ["*"]

{extra}
"#,
        root = token_digest(ROOT),
        alice = token_digest(ALICE),
    )
}

fn greet(daemon: &Daemon, token: &str, input: Value, key: Option<&str>) -> Reply {
    let mut body = json!({ "tool": "greet", "input": input });
    if let Some(key) = key {
        body["idempotency_key"] = key.into();
    }
    daemon.run(token, body)
}

fn upload(daemon: &Daemon, component: &str, note: &str) -> Value {
    let bytes = std::fs::read(component).expect("component");
    let reply = daemon.call_with("POST", "/v1/tools", ROOT, &bytes, &[("guild-note", note)]);
    assert!(matches!(reply.status, 200 | 201), "upload: {} {}", reply.status, String::from_utf8_lossy(&reply.body));
    reply.json()
}

fn admin(daemon: &Daemon, method: &str, path: &str, body: Value) -> Reply {
    daemon.call(method, path, ROOT, &body.to_string())
}

fn revisions(daemon: &Daemon) -> Value {
    let reply = admin(daemon, "GET", "/v1/tools/greet/revisions", Value::Null);
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    reply.json()
}

fn audit_kinds(guild: &Guild) -> Vec<String> {
    let text = std::fs::read_to_string(guild.home().join("audit.log")).expect("audit log");
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|r| r["event"]["kind"].as_str().map(str::to_string))
        .collect()
}

/// The value of one series on `/metrics` (0 when absent).
fn metric(daemon: &Daemon, series: &str) -> u64 {
    let text = String::from_utf8_lossy(&daemon.call("GET", "/metrics", ROOT, "").body).to_string();
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse::<u64>().ok())).unwrap_or(0)
}

const NAMES: [&str; 10] = ["ada", "grace", "barbara", "al", "margaret", "linus", "edsger", "kay", "tony", "frances"];

#[test]
fn a_candidate_is_gated_ramped_shadowed_rolled_back_and_promoted() {
    let guild = Guild::new();
    let counter = Counter::start();
    let file = config_file(guild.home(), &config(REV_V1, ""));
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);

    // Revision 1 serves traffic; its runs are recorded.
    for (i, name) in NAMES.iter().cycle().take(30).enumerate() {
        let reply = greet(&daemon, ALICE, json!({ "name": name, "n": i, "url": counter.url() }), None);
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.json()["output"]["greeting"], format!("hello {name}"));
    }

    // Uploading v2 adds revision 2 and changes nothing for callers.
    let v2 = upload(&daemon, REV_V2, "longer names get punctuation");
    assert_eq!((v2["revision"].as_u64(), v2["current_revision"].as_u64()), (Some(2), Some(1)), "{v2}");
    let reply = greet(&daemon, ALICE, json!({ "name": "margaret" }), None);
    assert_eq!(reply.json()["output"]["greeting"], "hello margaret", "an upload changes nothing for callers");
    assert_eq!(reply.json()["revision"], 1, "the answer names the revision that ran");
    let v2_digest = v2["component"].as_str().expect("digest").to_string();

    // Admin routes are the admin's alone.
    let refused = daemon.call("GET", "/v1/tools/greet/revisions", ALICE, "");
    assert_eq!((refused.status, refused.code().as_str()), (403, "forbidden"));
    let refused = daemon.call("POST", "/v1/tools/greet/rollout/rollback", ALICE, "{}");
    assert_eq!(refused.status, 403);

    // The gate: v2 changes the output on exactly the runs with names longer than 5 bytes.
    let check = admin(&daemon, "POST", "/v1/tools/greet/rollout/check", json!({ "candidate": v2_digest, "last": 30 }));
    assert_eq!(check.status, 200, "{}", String::from_utf8_lossy(&check.body));
    let check = check.json();
    assert_eq!(check["checks"].as_array().map(Vec::len), Some(30), "{check}");
    // The newest 30 runs: the first of the 30 above is one too old; the "margaret" call is new.
    let long = NAMES.iter().cycle().take(30).skip(1).chain(["margaret"].iter()).filter(|n| n.len() > 5).count() as u64;
    assert_eq!(check["counts"]["output_changed"].as_u64(), Some(long), "{}", check["table"]);
    assert_eq!(check["counts"]["identical"].as_u64(), Some(30 - long), "{}", check["table"]);
    for c in check["checks"].as_array().expect("checks") {
        if c["verdict"] == "output_changed" {
            assert_eq!(c["output_diff"][0]["path"], "/greeting", "{c}");
        }
    }
    assert_eq!(check["passed"], false, "the default policy allows no output change");
    let report = check["report"].as_str().expect("the report's digest");
    assert!(guild.home().join("store").exists(), "the report is kept in the store ({report})");

    // v3 asks for an HTTP request the tape does not have: named, never sent.
    let v3 = upload(&daemon, REV_V3, "probes a URL");
    let check = admin(&daemon, "POST", "/v1/tools/greet/rollout/check", json!({ "candidate": "3", "last": 10 })).json();
    assert_eq!(check["counts"]["new_effect"].as_u64(), Some(10), "{}", check["table"]);
    assert!(check["checks"][0]["effect"].as_str().unwrap_or_default().contains(&counter.url()), "{check}");
    assert_eq!(counter.count(), 0, "a candidate's request never reaches a real server");

    // v4 traps: the gate refuses to start it.
    let v4 = upload(&daemon, REV_V4, "traps");
    let refused =
        admin(&daemon, "POST", "/v1/tools/greet/rollout", json!({ "candidate": v4["component"], "percent": 10 }));
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (409, "gate_failed"),
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert!(refused.json()["error"]["message"].as_str().unwrap_or_default().contains("trap"), "names the traps");

    // Shadow: v3 runs on every call's tape after the reply; callers get v1; nothing reaches the
    // counting server.
    let started = admin(
        &daemon,
        "POST",
        "/v1/tools/greet/rollout",
        json!({ "candidate": v3["component"], "percent": 0, "shadow_percent": 100, "force": true, "reason": "shadow v3" }),
    );
    assert_eq!(started.status, 200, "{}", String::from_utf8_lossy(&started.body));
    for i in 0..10 {
        let reply = greet(&daemon, ALICE, json!({ "name": "ada", "n": i, "url": counter.url() }), None);
        assert_eq!(reply.json()["output"]["greeting"], "hello ada");
    }
    // Each call is shadowed, or skipped when the shadow lane (2 at once) is busy.
    let deadline = Instant::now() + Duration::from_secs(20);
    let shadowed = loop {
        let shadowed = metric(&daemon, r#"guild_shadow_runs_total{tool="greet",verdict="new_effect"}"#);
        if shadowed + metric(&daemon, r#"guild_shadow_runs_total{tool="greet",verdict="skipped"}"#) == 10 {
            break shadowed;
        }
        assert!(Instant::now() < deadline, "ten shadow verdicts or skips");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(shadowed >= 1, "the shadow lane ran some: {shadowed}");
    assert_eq!(counter.count(), 0, "a shadow run never reaches a real server");
    let status = admin(&daemon, "GET", "/v1/tools/greet/rollout", Value::Null).json();
    assert_eq!(status["shadow"].as_array().map(|s| s.len() as u64), Some(shadowed), "{status}");

    // Canary: v2 on 20% of 500 calls, chosen by (tenant, idempotency key); a retried key stays.
    let started = admin(
        &daemon,
        "POST",
        "/v1/tools/greet/rollout",
        json!({ "candidate": "2", "percent": 20, "force": true, "reason": "canary" }),
    );
    assert_eq!((started.status, started.code().as_str()), (409, "conflict"), "revision 3 is the candidate now");
    let started = admin(
        &daemon,
        "POST",
        "/v1/tools/greet/rollout",
        // Guard rails that never judge: this part is about the share of calls (on a loaded machine
        // the candidate's p99 alone could roll it back half way).
        json!({ "candidate": "2", "percent": 20, "force": true, "replace": true, "reason": "canary",
                "guard": { "min_calls": 1_000_000 } }),
    );
    assert_eq!(started.status, 200, "{}", String::from_utf8_lossy(&started.body));
    let mut by_key = Vec::new();
    for i in 0..500 {
        let key = format!("call-{i}");
        let reply = greet(&daemon, ALICE, json!({ "name": "margaret" }), Some(&key));
        let greeting = reply.json()["output"]["greeting"].as_str().unwrap_or_default().to_string();
        by_key.push((key, greeting));
    }
    let on_candidate = by_key.iter().filter(|(_, g)| g == "hello, margaret!").count();
    // Binomial(500, 0.2): mean 100, sd 8.9; 60..=140 is past 4.4 sd either way.
    assert!((60..=140).contains(&on_candidate), "{on_candidate} of 500 calls went to the candidate");
    for (key, greeting) in by_key.iter().take(50) {
        let again = greet(&daemon, ALICE, json!({ "name": "margaret" }), Some(key));
        assert_eq!(again.json()["output"]["greeting"].as_str(), Some(greeting.as_str()), "key {key} moved");
    }
    let metrics = String::from_utf8_lossy(&daemon.call("GET", "/metrics", ROOT, "").body).to_string();
    assert!(
        metrics.contains(r#"guild_runs_total{outcome="output",revision="2",tenant="alice",tool="greet"}"#),
        "{metrics}"
    );

    // Automatic rollback: v5 fails 30% of its calls; its guard rails send it back.
    let v5 = upload(&daemon, REV_V5, "fails 30%");
    let started = admin(
        &daemon,
        "POST",
        "/v1/tools/greet/rollout",
        json!({ "candidate": v5["component"], "percent": 50, "force": true, "replace": true, "guard": { "min_calls": 20, "window_s": 60, "p99_ratio_max": 1000.0, "fuel_ratio_max": 1000.0 } }),
    );
    assert_eq!(started.status, 200, "{}", String::from_utf8_lossy(&started.body));
    let mut rolled_back = false;
    for i in 0..400 {
        greet(&daemon, ALICE, json!({ "name": "kay", "n": i }), None);
        if i % 10 == 9 {
            let record = revisions(&daemon);
            if record["candidate"].is_null() {
                assert!(
                    record["revisions"][4]["rolled_back"].as_str().unwrap_or_default().contains("error rate"),
                    "{record}"
                );
                rolled_back = true;
                break;
            }
        }
    }
    assert!(rolled_back, "the failing candidate was rolled back within its window");
    for n in 0..30 {
        let reply = greet(&daemon, ALICE, json!({ "name": "kay", "n": n * 10 }), None);
        assert_eq!(
            reply.status,
            200,
            "after the rollback every call goes to revision 1: {}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    // Counted once its audit record is written, which may come just after the record changed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&daemon, r#"guild_rollbacks_total{tool="greet",trigger="guard"}"#) != 1 {
        assert!(Instant::now() < deadline, "the automatic rollback is counted once");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Promotion and rollback by hand.
    admin(&daemon, "POST", "/v1/tools/greet/rollout", json!({ "candidate": "2", "percent": 5, "force": true }));
    let forced = admin(&daemon, "POST", "/v1/tools/greet/rollout/promote", json!({}));
    assert_eq!(
        (forced.status, forced.code().as_str()),
        (400, "bad_request"),
        "a forced start needs a forced promotion"
    );
    let promoted = admin(&daemon, "POST", "/v1/tools/greet/rollout/promote", json!({ "force": true, "reason": "ok" }));
    assert_eq!(promoted.json()["current"], 2);
    assert_eq!(
        greet(&daemon, ALICE, json!({ "name": "margaret" }), None).json()["output"]["greeting"],
        "hello, margaret!"
    );
    let back = admin(&daemon, "POST", "/v1/tools/greet/rollout/rollback", json!({ "to": "1", "reason": "back" }));
    assert_eq!(back.json()["current"], 1);
    assert_eq!(
        greet(&daemon, ALICE, json!({ "name": "margaret" }), None).json()["output"]["greeting"],
        "hello margaret"
    );

    // Flags: off for alice with a reason, then for everyone, then on again.
    let off = admin(
        &daemon,
        "PUT",
        "/v1/tools/greet/flags",
        json!({ "disabled": true, "tenant": "alice", "reason": "incident 42" }),
    );
    assert_eq!(off.status, 200, "{}", String::from_utf8_lossy(&off.body));
    let refused = greet(&daemon, ALICE, json!({ "name": "ada" }), None);
    assert_eq!((refused.status, refused.code().as_str()), (403, "tool_disabled"));
    assert!(refused.json()["error"]["message"].as_str().unwrap_or_default().contains("incident 42"));
    assert_eq!(greet(&daemon, ROOT, json!({ "name": "ada" }), None).status, 200, "only alice's calls are off");
    let unnamed = admin(&daemon, "PUT", "/v1/tools/greet/flags", json!({ "disabled": true }));
    assert_eq!(unnamed.status, 400, "a reason is required");
    admin(&daemon, "PUT", "/v1/tools/greet/flags", json!({ "disabled": false, "tenant": "alice" }));
    assert_eq!(greet(&daemon, ALICE, json!({ "name": "ada" }), None).status, 200);

    let kinds = audit_kinds(&guild);
    for kind in [
        "tool_revision_added",
        "rollout_checked",
        "rollout_started",
        "rollout_rolled_back_automatically",
        "rollout_promoted_forced",
        "rollout_rolled_back",
        "tool_disabled",
        "tool_enabled",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "the audit log has {kind}: {kinds:?}");
    }

    // Everything survives a restart: revisions, current revision, flags.
    drop(daemon);
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    let record = revisions(&daemon);
    assert_eq!(record["revisions"].as_array().map(Vec::len), Some(5), "{record}");
    assert_eq!(record["current"], 1);
    assert_eq!(greet(&daemon, ALICE, json!({ "name": "ada" }), None).status, 200);
}

#[test]
fn sighup_reloads_the_config_and_a_broken_one_keeps_the_old() {
    let guild = Guild::new();
    let file = config_file(guild.home(), &config(REV_V1, ""));
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    let hangup = || {
        let pid = daemon.child.id().to_string();
        let status = std::process::Command::new("kill").args(["-HUP", &pid]).status().expect("kill");
        assert!(status.success());
    };
    let tools = |daemon: &Daemon| -> Vec<String> {
        let body = daemon.call("GET", "/v1/tools", ROOT, "").json();
        body["tools"].as_array().expect("tools").iter().filter_map(|t| t["name"].as_str().map(str::to_string)).collect()
    };
    assert_eq!(tools(&daemon), ["greet"]);

    // A broken file: refused, the old config stays.
    std::fs::write(&file, "[[tools]]\npath = 12\n").expect("write");
    hangup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.log_lines().iter().any(|l| l.contains("the old one stays in force")) {
        assert!(Instant::now() < deadline, "the refusal is logged: {:?}", daemon.log_lines());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(daemon.log_lines().iter().any(|l| l.contains("tools[0].path") || l.contains("path")), "names the field");
    assert_eq!(greet(&daemon, ALICE, json!({ "name": "ada" }), None).status, 200, "the old config serves");

    // A candidate that changes outputs fails the default gate ...
    for _ in 0..3 {
        assert_eq!(greet(&daemon, ALICE, json!({ "name": "margaret" }), None).status, 200);
    }
    upload(&daemon, REV_V2, "punctuation");
    let check =
        || admin(&daemon, "POST", "/v1/tools/greet/rollout/check", json!({ "candidate": "2", "last": 3 })).json();
    assert_eq!(check()["passed"], false);

    // A good file: a second tool appears, and the gate allows changed outputs.
    let next = config(
        REV_V1,
        &format!("[[tools]]\npath = \"{ECHO}\"\n\n[rollout.gate]\noutput_changed_percent_max = 100.0\n"),
    );
    std::fs::write(&file, &next).expect("write");
    hangup();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tools(&daemon).len() < 2 {
        assert!(Instant::now() < deadline, "the reload took effect: {:?}", daemon.log_lines());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The reload's audit record is appended once the new config is in force, so it may trail
    // the tool list by a group commit.
    while !audit_kinds(&guild).iter().any(|k| k == "config_reloaded") {
        assert!(Instant::now() < deadline, "the reload is audited: {:?}", audit_kinds(&guild));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(check()["passed"], true, "the reloaded [rollout.gate] is in force");
}

#[test]
fn bad_names_oversized_texts_unknown_tenants_and_a_corrupt_record_are_refused() {
    let guild = Guild::new();
    let file = config_file(guild.home(), &config(REV_V1, ""));
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    let v2 = std::fs::read(REV_V2).expect("rev-v2");
    for name in ["..", "a%2Fb", "x%0Ay", "%20", &"l".repeat(65)] {
        let reply = daemon.call_with("POST", &format!("/v1/tools/{name}/revisions"), ROOT, &v2, &[]);
        assert_eq!((reply.status, reply.code().as_str()), (400, "bad_request"), "{name}");
    }
    let note = "n".repeat(2000);
    let reply = daemon.call_with("POST", "/v1/tools", ROOT, &v2, &[("guild-note", &note)]);
    assert_eq!(reply.status, 400, "an oversized note is refused");
    let wc = std::fs::read(guild_test_artifacts::WC).expect("wc");
    let reply = daemon.call_with("POST", "/v1/tools/greet/revisions", ROOT, &wc, &[]);
    assert_eq!(reply.status, 400, "another tool is not a revision of greet");
    assert!(reply.json()["error"]["message"].as_str().unwrap_or_default().contains("describes itself as"));
    let reply = admin(&daemon, "POST", "/v1/tools/greet/rollout/check", json!({ "candidate": "1", "last": 100_000 }));
    assert_eq!(reply.status, 400, "a check past rollout.check_runs_max is refused");
    let reason = "r".repeat(2000);
    let reply = admin(&daemon, "POST", "/v1/tools/greet/rollout/check", json!({ "candidate": "1", "reason": reason }));
    assert_eq!(reply.status, 400, "an oversized reason is refused");
    upload(&daemon, REV_V2, "");
    let reply = admin(
        &daemon,
        "POST",
        "/v1/tools/greet/rollout",
        json!({ "candidate": "2", "percent": 10, "force": true, "tenants": ["nobody"] }),
    );
    assert_eq!((reply.status, reply.code().as_str()), (404, "unknown_tenant"));
    // A digest prefix names a revision.
    let record = revisions(&daemon);
    let prefix = &record["revisions"][1]["component"].as_str().expect("digest")[..10];
    let reply = admin(&daemon, "POST", "/v1/tools/greet/rollout/check", json!({ "candidate": prefix, "last": 1 }));
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(revisions(&daemon)["revisions"].as_array().map(Vec::len), Some(2), "nothing refused was kept");
    drop(daemon);

    // Nothing refused comes back at the next start either.
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    assert_eq!(revisions(&daemon)["revisions"].as_array().map(Vec::len), Some(2));
    drop(daemon);

    // A record that does not hold together stops the start with the file named.
    let path = guild.home().join("tools.json");
    let mut records: Value = serde_json::from_slice(&std::fs::read(&path).expect("tools.json")).expect("json");
    records["greet"]["current"] = 99.into();
    std::fs::write(&path, records.to_string()).expect("write");
    let ran = guild.run(&["serve", "--listen", "127.0.0.1:0", "--config", &file]);
    ran.expect_code(2).expect_stderr("tools.json").expect_stderr("current revision 99");
}
