//! The result cache, end to end with the real binary: identical calls of a cached tool run once
//! (the rest are hits or merged waiters, charged no fuel), a changed mounted byte is a new
//! action, hermetic runs see the same clock twice and replay, a tool that reaches the network is
//! never cached and says why, an entry whose bundle was tampered with is rejected and
//! recomputed, and no tenant is ever answered from another's run. Also the tool annotations that
//! state what a tool's grants let it do (idempotent when cached).

use crate::Guild;
use crate::daemon::{ALICE, BOB, Counter, Daemon, ROOT, config_file, three_tenants};
use guild_test_artifacts::{HASH, HOSTILE, HTTP_GET};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The value of one Prometheus series, 0 when absent.
fn metric(daemon: &Daemon, series: &str) -> u64 {
    let text = String::from_utf8_lossy(&daemon.call("GET", "/metrics", ROOT, "").body).to_string();
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse::<u64>().ok())).unwrap_or(0)
}

fn audit_events(guild: &Guild, kind: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(guild.home().join("audit.log")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("audit line is JSON"))
        .filter(|r| r["event"]["kind"] == kind)
        .collect()
}

#[test]
fn fifty_identical_calls_over_a_mounted_tree_run_once_and_a_changed_byte_is_a_new_action() {
    let guild = Guild::new();
    let data = crate::tree(&[("a.txt", "alpha\n"), ("sub/b.txt", "beta\n"), ("sub/c.txt", "gamma\n")]);
    let tools = format!(
        "[[tools]]\npath = \"{HASH}\"\ncache = true\n[[tools.mounts]]\nhost = \"{}\"\nguest = \"/data\"\n",
        data.path().display()
    );
    let file = config_file(guild.home(), &three_tenants(&tools));
    let daemon = Arc::new(Daemon::start(&guild, &["--config", &file], &[]));
    let call = json!({"tool": "hash", "input": {"path": "/data"}});
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let (daemon, call) = (daemon.clone(), call.clone());
            std::thread::spawn(move || daemon.run(ALICE, call))
        })
        .collect();
    let answers: Vec<Value> = threads
        .into_iter()
        .map(|t| {
            let reply = t.join().expect("caller thread");
            assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
            reply.json()
        })
        .collect();
    let stored: Vec<&Value> = answers.iter().filter(|a| a["cache"] == "stored").collect();
    assert_eq!(stored.len(), 1, "one call ran and stored its result: {answers:#?}");
    let first = stored[0];
    assert_eq!(first["cached"], false);
    assert!(first["fuel_used_units"].as_u64().expect("fuel") > 0);
    for answer in &answers {
        assert_eq!(answer["status"], "succeeded");
        assert_eq!(answer["output"], first["output"], "every call got the same digest");
        assert_eq!(answer["bundle"], first["bundle"], "every answer names the one run's bundle");
        if answer["cache"] != "stored" {
            assert_eq!(answer["cached"], true, "{answer}");
            assert!(matches!(answer["cache"].as_str(), Some("hit" | "merged")), "{answer}");
            assert_eq!(answer["fuel_used_units"], 0, "a reused answer charges no fuel: {answer}");
        }
    }
    let fuel: u64 = answers.iter().map(|a| a["fuel_used_units"].as_u64().unwrap_or(0)).sum();
    assert_eq!(fuel, first["fuel_used_units"].as_u64().expect("fuel"), "fuel was charged once");
    let hits = metric(&daemon, r#"guild_cache_requests_total{result="hit",tool="hash"}"#);
    let merged = metric(&daemon, r#"guild_cache_requests_total{result="merged",tool="hash"}"#);
    assert_eq!(hits + merged, 49, "the other 49 were hits or merged waiters");
    assert_eq!(metric(&daemon, r#"guild_cache_requests_total{result="stored",tool="hash"}"#), 1);
    assert_eq!(
        metric(&daemon, r#"guild_cache_fuel_saved_units_total{tool="hash"}"#),
        49 * first["fuel_used_units"].as_u64().expect("fuel")
    );

    // Each reused call has its own run id and audit record, pointing at the original bundle.
    let records: Vec<Value> = std::fs::read_to_string(guild.home().join("audit.log"))
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .filter(|r: &Value| r["tool"] == "hash")
        .collect();
    assert_eq!(records.len(), 50);
    let reused = records.iter().filter(|r| matches!(r["completion"].as_str(), Some("cache_hit" | "cache_merged")));
    assert!(reused.clone().all(|r| r["bundle"] == first["bundle"] && r["fuel_used_units"] == 0));
    assert_eq!(reused.count(), 49);

    // The run's bundle replays offline, its mount rebuilt from the recorded tree.
    let bundle = first["bundle"].as_str().expect("bundle");
    assert!(guild.run(&["replay", bundle]).expect_code(0).stdout.contains("replay identical"));

    // One changed byte in one mounted file: another action, run again.
    std::fs::write(data.path().join("sub/b.txt"), "bets\n").expect("edit");
    let changed = daemon.run(ALICE, call.clone()).json();
    assert_eq!(changed["cache"], "stored", "{changed}");
    assert_ne!(changed["output"]["digest"], first["output"]["digest"]);
    assert_eq!(daemon.run(ALICE, call.clone()).json()["cache"], "hit");

    // Another tenant with the same call is never answered from alice's run, and cannot see or
    // purge the cache.
    let bobs = daemon.run(BOB, call.clone()).json();
    assert_eq!(bobs["cache"], "stored", "{bobs}");
    assert_ne!(bobs["bundle"], changed["bundle"]);
    assert_eq!(daemon.call("GET", "/v1/cache", BOB, "").status, 403);
    assert_eq!(daemon.call("DELETE", "/v1/cache/hash", BOB, "").status, 403);
    let stats = daemon.call("GET", "/v1/cache", ROOT, "").json();
    assert_eq!(stats["tools"][0]["tool"], "hash");
    assert_eq!(stats["tools"][0]["entries"], 3, "alice's two actions and bob's one: {stats}");
    assert_eq!(stats["tools"][0]["policy"]["ttl_s"], 86_400);

    // Purged: the next call runs again; the purge is audited.
    assert_eq!(daemon.call("DELETE", "/v1/cache/hash", ROOT, "").json()["purged"], 3);
    assert_eq!(daemon.run(ALICE, call).json()["cache"], "stored");
    assert_eq!(audit_events(&guild, "cache_purged").len(), 1);
}

#[test]
fn a_hermetic_run_reads_the_same_clock_and_randomness_twice_and_replays_identically() {
    let guild = Guild::new();
    let tools = format!("[[tools]]\npath = \"{HOSTILE}\"\n[tools.cache]\nttl_s = 3600\nverify_sample = 1.0\n");
    let file = config_file(guild.home(), &three_tenants(&tools));
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    let call = json!({"tool": "hostile", "input": {"attack": "entropy"}});
    let first = daemon.run(ALICE, call.clone()).json();
    assert_eq!(first["cache"], "stored", "{first}");
    // A second, fresh run of the same action (the entry purged) sees the same wall clock,
    // monotonic clock and random numbers: the same output from a new bundle.
    assert_eq!(daemon.call("DELETE", "/v1/cache", ROOT, "").status, 200);
    let second = daemon.run(ALICE, call.clone()).json();
    assert_eq!(second["cache"], "stored", "{second}");
    assert_eq!(second["output"], first["output"], "hermetic: the same clocks and randomness");
    assert_ne!(second["bundle"], first["bundle"], "a new run, a new bundle");
    let padding = first["output"]["padding"].as_str().expect("padding");
    assert!(padding.starts_with("wall=10000000"), "the synthetic wall clock (2001-09-09): {padding}");
    // A hit is replayed in the background (verify_sample = 1): it matches.
    let hit = daemon.run(ALICE, call).json();
    assert_eq!(hit["cache"], "hit");
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&daemon, r#"guild_cache_verify_total{result="match",tool="hostile"}"#) == 0 {
        assert!(Instant::now() < deadline, "the sampled hit was not replayed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // And an auditor replays the bundle offline, bit for bit.
    let bundle = second["bundle"].as_str().expect("bundle");
    assert!(guild.run(&["replay", bundle]).expect_code(0).stdout.contains("replay identical"));

    // Timers run on the same virtual time: an hour's sleep passes at once (a live run would hit
    // its 10 s timeout), the same on every run and in the replay.
    let started = Instant::now();
    let slept = daemon.run(ALICE, json!({"tool": "hostile", "input": {"attack": "sleep"}})).json();
    assert_eq!(slept["status"], "succeeded", "{slept}");
    assert_eq!(slept["cache"], "stored", "{slept}");
    assert!(started.elapsed() < Duration::from_secs(5), "the hour passed in virtual time");
    let bundle = slept["bundle"].as_str().expect("bundle");
    assert!(guild.run(&["replay", bundle]).expect_code(0).stdout.contains("replay identical"));
}

#[test]
fn a_tool_that_reaches_the_network_is_never_cached_and_says_why() {
    let guild = Guild::new();
    let upstream = Counter::start();
    let port = upstream.port;
    let tools =
        format!("[[tools]]\npath = \"{HTTP_GET}\"\ncache = true\nallow_hosts = [\"http://127.0.0.1:{port}\"]\n");
    let file = config_file(guild.home(), &three_tenants(&tools));
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    let call = json!({"tool": "http-get", "input": {"url": format!("http://127.0.0.1:{port}/x")}});
    for _ in 0..2 {
        let answer = daemon.run(ALICE, call.clone()).json();
        assert_eq!(answer["status"], "succeeded", "{answer}");
        assert_eq!(answer["cached"], false);
        assert_eq!(answer["cache"], "miss: http request", "{answer}");
    }
    assert_eq!(upstream.count(), 2, "both calls reached the upstream");
    assert_eq!(metric(&daemon, r#"guild_cache_requests_total{result="miss",tool="http-get"}"#), 2);
    let stats = daemon.call("GET", "/v1/cache", ROOT, "").json();
    assert_eq!(stats["tools"][0]["entries"], 0, "{stats}");
}

#[test]
fn an_entry_whose_bundle_was_tampered_with_is_rejected_audited_and_recomputed() {
    let guild = Guild::new();
    let tools = format!("[[tools]]\npath = \"{HASH}\"\ncache = true\n");
    let file = config_file(guild.home(), &three_tenants(&tools));
    let call = json!({"tool": "hash", "input": {"text": "tamper with me"}});
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    let first = daemon.run(ALICE, call.clone()).json();
    assert_eq!(first["cache"], "stored", "{first}");
    assert_eq!(daemon.terminate(), Some(0));
    // The entry outlives the daemon...
    let entries = std::fs::read_dir(guild.home().join("results/hash")).expect("entries on disk").count();
    assert_eq!(entries, 1);
    // ...but the output its bundle holds is edited in the store (one character, in place).
    let output = serde_json::to_string(&first["output"]).expect("JSON");
    let digest = first["output"]["digest"].as_str().expect("digest");
    let mut edited = 0;
    for pack in std::fs::read_dir(guild.home().join("store/packs")).expect("packs").flatten() {
        let mut bytes = std::fs::read(pack.path()).expect("pack");
        if let Some(at) = bytes.windows(digest.len()).position(|w| w == digest.as_bytes()) {
            bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
            std::fs::write(pack.path(), bytes).expect("write pack");
            edited += 1;
        }
    }
    assert_eq!(edited, 1, "the output {output} is in one pack");
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    let again = daemon.run(ALICE, call.clone()).json();
    assert_eq!(again["cache"], "stored", "the entry was rejected and the call ran again: {again}");
    assert_eq!(again["output"], first["output"], "recomputed, not the edited bytes");
    assert_eq!(metric(&daemon, r#"guild_cache_requests_total{result="rejected",tool="hash"}"#), 1);
    let rejected = audit_events(&guild, "cache_entry_rejected");
    assert_eq!(rejected.len(), 1, "the rejection is audited");
    assert_eq!(rejected[0]["run"], first["bundle"]);
    // The new entry answers.
    assert_eq!(daemon.run(ALICE, call).json()["cache"], "hit");
}

/// What `/v1/tools` (and MCP's `tools/list`) says a tool may do is what its grants let it do:
/// the annotations follow the grants, and a config reload that changes a grant changes them.
#[test]
fn annotations_state_what_the_grants_let_a_tool_do_and_follow_a_reload() {
    let guild = Guild::new();
    let data = crate::tree(&[("a.txt", "alpha\n")]);
    let tools = |http_rule: &str, access: &str| {
        format!(
            "[[tools]]\npath = \"{HASH}\"\ncache = true\n[[tools.mounts]]\nhost = \"{dir}\"\nguest = \"/data\"\naccess = \"{access}\"\n\n\
             [[tools]]\npath = \"{HTTP_GET}\"\nallow_hosts = [\"{http_rule}\"]\n",
            dir = data.path().display()
        )
    };
    let file = config_file(guild.home(), &three_tenants(&tools("GET http://127.0.0.1:9", "ro")));
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    let annotations = |daemon: &Daemon, name: &str| -> Value {
        let body = daemon.call("GET", "/v1/tools", ALICE, "").json();
        let tool = body["tools"].as_array().expect("tools").iter().find(|t| t["name"] == name).cloned();
        tool.expect("listed")["annotations"].clone()
    };
    let hash = annotations(&daemon, "hash");
    assert_eq!(hash["readOnlyHint"], true, "{hash}");
    assert_eq!(hash["destructiveHint"], false);
    assert_eq!(hash["idempotentHint"], true, "cached");
    assert_eq!(hash["openWorldHint"], false);
    let http = annotations(&daemon, "http-get");
    assert_eq!(http["readOnlyHint"], true, "only GET is allowed: {http}");
    assert_eq!(http["openWorldHint"], true);

    // The operator grants any method and a writable mount: the annotations say so.
    std::fs::write(&file, three_tenants(&tools("http://127.0.0.1:9", "rw"))).expect("write");
    let pid = daemon.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().expect("kill").success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while annotations(&daemon, "http-get")["readOnlyHint"] != false {
        assert!(Instant::now() < deadline, "the reload took effect: {:?}", daemon.log_lines());
        std::thread::sleep(Duration::from_millis(50));
    }
    let http = annotations(&daemon, "http-get");
    assert_eq!((http["destructiveHint"].clone(), http["idempotentHint"].clone()), (json!(true), json!(false)));
    // `hash` asks only to read /data: granted read-write, it still gets read-only (the lesser of
    // grant and request), and its annotations say what it gets, not what was granted.
    let hash = annotations(&daemon, "hash");
    assert_eq!(hash["readOnlyHint"], true, "{hash}");
}

/// Sampled hits are replayed at most `CACHE_VERIFY_IN_FLIGHT_MAX` at once: a burst of hits on a
/// slow call verifies a few and counts the rest `skipped`; every hit is still answered.
#[test]
fn a_burst_of_sampled_hits_replays_a_bounded_few_and_counts_the_rest_skipped() {
    let guild = Guild::new();
    let tools = format!("[[tools]]\npath = \"{HOSTILE}\"\n[tools.cache]\nttl_s = 3600\nverify_sample = 1.0\n");
    let file = config_file(guild.home(), &three_tenants(&tools));
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    // Over a second of work: its replays outlast the burst of hits by far.
    let call = json!({"tool": "hostile", "input": {"attack": "spin", "rounds": 150_000_000u64}});
    let stored = daemon.run(ALICE, call.clone()).json();
    assert_eq!(stored["cache"], "stored", "{stored}");
    let port = daemon.port;
    let burst: Vec<_> = (0..12)
        .map(|_| {
            let body = call.to_string();
            std::thread::spawn(move || crate::daemon::call(port, "POST", "/v1/runs", ALICE, body.as_bytes(), &[]))
        })
        .collect();
    for hit in burst {
        assert_eq!(hit.join().expect("a hit").json()["cache"], "hit");
    }
    let skipped = metric(&daemon, r#"guild_cache_verify_total{result="skipped",tool="hostile"}"#);
    assert!(skipped >= 6, "at most 2 replays at a time over the burst: {skipped} skipped, {stored}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&daemon, r#"guild_cache_verify_total{result="match",tool="hostile"}"#) + skipped < 12 {
        assert!(Instant::now() < deadline, "the verified ones never matched");
        std::thread::sleep(Duration::from_millis(100));
    }
}
