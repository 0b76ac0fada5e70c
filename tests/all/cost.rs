//! Cost: a daemon with a `[pricing]` table answers each run with what it cost — in the API
//! answer, the audit record, MCP `_meta` and the metrics — and `guild bundle cost` re-derives the
//! same figures from the bundle alone.

use crate::Guild;
use crate::daemon::{Counter, Daemon, config_file, token_digest};
use guild_test_artifacts::{ECHO, HTTP_GET};
use serde_json::{Value, json};

pub(crate) const ALICE: &str = "alice-token";
const BOB: &str = "bob-token";

#[test]
fn a_run_answers_with_its_cost_and_its_bundle_gives_the_same() {
    let guild = Guild::new();
    let upstream = Counter::start();
    let text = format!(
        r#"
[[tools]]
path = "{ECHO}"

[[tools]]
path = "{HTTP_GET}"
allow_hosts = ["http://127.0.0.1:{port}"]

[pricing]
currency = "USD"
fuel_per_million = "0.002"
wall_second = "0.01"
memory_mib_second = "0.0001"
egress_request = "0.0005"
egress_mib = "0.1"
bundle_mib = "0.02"

[[tenants]]
name = "alice"
token_blake3 = "{alice}"
tools = ["*"]

[[tenants]]
name = "bob"
token_blake3 = "{bob}"
tools = ["*"]
"#,
        port = upstream.port,
        alice = token_digest(ALICE),
        bob = token_digest(BOB),
    );
    let file = config_file(guild.home(), &text);
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    let run = daemon.run(ALICE, json!({ "tool": "http-get", "input": { "url": upstream.url() } })).json();
    let cost = &run["cost"];
    assert_eq!(cost["currency"], "USD", "{run}");
    let lines: Vec<&str> =
        cost["lines"].as_array().expect("lines").iter().filter_map(|l| l["resource"].as_str()).collect();
    assert_eq!(lines, ["fuel", "wall_time", "memory", "egress_requests", "egress_bytes", "bundle_bytes"]);
    let requests = cost["lines"].as_array().expect("lines").iter().find(|l| l["resource"] == "egress_requests");
    assert_eq!(requests.expect("a line")["quantity"], "1");
    assert_eq!(requests.expect("a line")["amount"], "0.0005");
    // Amounts are exact decimal strings, and they add up to the total exactly.
    let total: rust_decimal::Decimal = cost["total"].as_str().expect("total").parse().expect("decimal");
    let sum: rust_decimal::Decimal = cost["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| l["amount"].as_str().expect("amount").parse::<rust_decimal::Decimal>().expect("decimal"))
        .sum();
    assert_eq!(sum, total);

    // The audit record says the same.
    let log = std::fs::read_to_string(guild.home().join("audit.log")).expect("audit log");
    let record: Value = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON"))
        .find(|r| r["run"] == run["id"])
        .expect("the run's record");
    assert_eq!(&record["cost"], cost);

    // The bundle alone, priced at the same table, gives the same figures.
    let bundle = run["bundle"].as_str().expect("bundle");
    let derived = guild.run_landed(&["bundle", "cost", bundle, "--config", &file, "--json"]);
    assert_eq!(derived.code, 0, "{derived:?}");
    let derived: Value = serde_json::from_str(derived.stdout.trim()).expect("JSON");
    assert_eq!(&derived["cost"], cost, "re-derived from the bundle");
    assert_eq!(derived["quantities"]["egress_requests"], 1);
    // And the bundle carries that cost, signed with it (its exec record).
    assert_eq!(&derived["recorded"], cost);
    assert_eq!(derived["matches_recorded"], true);
    let text = guild.run(&["bundle", "cost", bundle, "--config", &file]);
    assert!(text.stdout.contains("the bundle's signed cost agrees"), "{}", text.stdout);
    assert_eq!(guild.run(&["bundle", "cost", bundle, "--config", &file, "--check"]).code, 0);
    // At another table the figure differs from the one signed in: --check says so.
    let elsewhere = tempfile::tempdir().expect("a directory");
    let dearer = text_of(&file).replace("egress_request = \"0.0005\"", "egress_request = \"0.5\"");
    let dearer = config_file(elsewhere.path(), &dearer);
    let differs = guild.run(&["bundle", "cost", bundle, "--config", &dearer, "--check"]);
    assert_eq!(differs.code, 18, "{differs:?}");
    assert!(differs.stdout.contains("when sealed"), "{}", differs.stdout);

    // MCP carries it in _meta, and the metrics count it.
    let session = crate::isolation::McpSession::open(&daemon, ALICE);
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "priced"}}});
    let answer =
        crate::isolation::messages(&session.post_as(ALICE, &call)).into_iter().find(|m| m["id"] == 7).expect("answer");
    assert_eq!(answer["result"]["_meta"]["guild/cost"]["currency"], "USD", "{answer}");
    let metrics = String::from_utf8_lossy(&daemon.call("GET", "/metrics", ALICE, "").body).to_string();
    assert!(
        metrics.contains(
            r#"guild_cost_total{currency="USD",resource="egress_requests",tenant="alice",tool="http-get"} 0.0005"#
        ),
        "{metrics}"
    );

    // Another tenant sees none of alice's usage: asking for her rows reads exactly as asking for
    // a tenant nobody has.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while daemon.call("GET", "/v1/usage", ALICE, "").json()["rows"][0]["runs"] != 2 {
        assert!(std::time::Instant::now() < deadline, "alice's two runs are in the ledger");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(daemon.call("GET", "/v1/usage", BOB, "").json(), json!({"rows": []}));
    let hers = daemon.call("GET", "/v1/usage?tenant=alice&group_by=tenant,tool,agent", BOB, "");
    let nobodys = daemon.call("GET", "/v1/usage?tenant=nobody&group_by=tenant,tool,agent", BOB, "");
    assert_eq!((hers.status, hers.body.clone()), (nobodys.status, nobodys.body), "the same answer");
    assert_eq!(hers.json(), json!({"rows": []}));
}

fn text_of(file: &str) -> String {
    std::fs::read_to_string(file).expect("the config")
}

#[test]
fn a_price_table_must_be_exact_and_named() {
    let guild = Guild::new();
    for (table, says) in [
        ("currency = \"USD\"\nwall_second = 0.1\n", "pricing"),
        ("currency = \"USD\"\nwall_second = \"-1\"\n", "negative"),
        ("currency = \"usd\"\n", "pricing.currency"),
        (
            "currency = \"USD\"\n\n[[tenants]]\nname = \"a\"\ntoken_blake3 = \"0000000000000000000000000000000000000000000000000000000000000000\"\ncost_budget = \"1\"\nbudget_period_s = 99999999999\n",
            "budget_period_s",
        ),
    ] {
        let file = config_file(guild.home(), &format!("[pricing]\n{table}"));
        let refused = guild.run(&["serve", "--config", &file, "--listen", "127.0.0.1:0"]);
        assert_ne!(refused.code, 0, "{table}");
        assert!(refused.stderr.contains(says), "{table}: {}", refused.stderr);
    }
}

/// An upstream on loopback whose every answer `answer` makes from the request's text: its extra
/// header lines and its body.
fn fake_upstream(answer: fn(&str) -> (&'static str, &'static [u8])) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 8192];
            let n = stream.read(&mut request).unwrap_or(0);
            let (extra, body) = answer(&String::from_utf8_lossy(&request[..n]));
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
        }
    });
    port
}

/// An LLM upstream on loopback: every answer reports 12 prompt and 30 completion tokens.
pub(crate) fn llm_upstream() -> u16 {
    fake_upstream(|_| {
        ("", br#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":30}}"#)
    })
}

#[test]
fn llm_tokens_are_priced_from_the_recorded_responses() {
    let guild = Guild::new();
    let port = llm_upstream();
    let text = llm_config(port, "");
    let file = config_file(guild.home(), &text);
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let run = daemon.run(ALICE, json!({ "tool": "http-get", "input": { "url": url } })).json();
    let lines = run["cost"]["lines"].as_array().expect("lines").clone();
    let tokens: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["resource"].as_str().unwrap_or(""),
                l["quantity"].as_str().unwrap_or(""),
                l["amount"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(tokens, [("input_tokens", "12", "0.000012"), ("output_tokens", "30", "0.00006")], "{run}");
    assert_eq!(lines[0]["upstream"], format!("http://127.0.0.1:{port}/v1/"));
    assert_eq!(run["cost"]["total"], "0.000072");
    // A request elsewhere on the same host is no LLM call.
    let other =
        daemon.run(ALICE, json!({ "tool": "http-get", "input": { "url": format!("http://127.0.0.1:{port}/health") } }));
    assert_eq!(other.json()["cost"]["lines"], json!([]));

    let derived =
        guild.run_landed(&["bundle", "cost", run["bundle"].as_str().expect("bundle"), "--config", &file, "--json"]);
    assert_eq!(derived.code, 0, "{derived:?}");
    let derived: Value = serde_json::from_str(derived.stdout.trim()).expect("JSON");
    assert_eq!(derived["cost"], run["cost"], "the bundle's recorded response gives the same tokens");
    let metrics = String::from_utf8_lossy(&daemon.call("GET", "/metrics", ALICE, "").body).to_string();
    let series = format!(
        r#"guild_tokens_total{{kind="output",tenant="alice",tool="http-get",upstream="http://127.0.0.1:{port}/v1/"}} 30"#
    );
    assert!(metrics.contains(&series), "{metrics}");
}

#[test]
fn a_spent_cost_budget_turns_the_next_run_into_429_until_the_period_ends() {
    let guild = Guild::new();
    let text = format!(
        r#"
[[tools]]
path = "{hostile}"

[tools.limits]
fuel_units = 1000000000

[pricing]
currency = "USD"
fuel_per_million = "0.001"

[[tenants]]
name = "alice"
token_blake3 = "{alice}"
tools = ["*"]
cost_budget = "2.5"
cost_budget_period_s = 3600
"#,
        hostile = guild_test_artifacts::HOSTILE,
        alice = token_digest(ALICE),
    );
    let file = config_file(guild.home(), &text);
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    // Each run spins until its billion fuel units are gone: 1 USD, its worst case too.
    let spin = json!({ "tool": "hostile", "input": { "attack": "loop" } });
    for _ in 0..2 {
        let run = daemon.run(ALICE, spin.clone()).json();
        assert_eq!(run["cost"]["total"], "1", "{run}");
    }
    // 2 spent + 1 reserved would pass 2.5: refused before it starts.
    let refused = daemon.run(ALICE, spin);
    assert_eq!((refused.status, refused.code().as_str()), (429, "budget_exhausted"));
    let retry: u64 = refused.headers.get("retry-after").expect("Retry-After").parse().expect("seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    assert!(retry.abs_diff(now / 3600 * 3600 + 3600 - now) <= 2, "the rest of the hour: {retry}");
    assert!(String::from_utf8_lossy(&refused.body).contains("tenants.cost_budget"));
}

/// A config with `[pricing]` naming the loopback LLM upstream on `port`, the hostile fixture
/// and http-get allowed to reach it, and tenant alice with `budgets` (TOML lines of its table).
pub(crate) fn llm_config(port: u16, budgets: &str) -> String {
    format!(
        r#"
[[tools]]
path = "{HOSTILE}"
allow_hosts = ["http://127.0.0.1:{port}"]

[[tools]]
path = "{HTTP_GET}"
allow_hosts = ["http://127.0.0.1:{port}"]

[pricing]
currency = "USD"

[[pricing.llm]]
url = "http://127.0.0.1:{port}/v1/"
style = "openai"
input_token = "0.000001"
output_token = "0.000002"

[[tenants]]
name = "alice"
token_blake3 = "{alice}"
tools = ["*"]
{budgets}
"#,
        HOSTILE = guild_test_artifacts::HOSTILE,
        alice = token_digest(ALICE),
    )
}

/// A run of the hostile fixture that posts to the LLM `count` times; its output's `value` is
/// how many were refused.
pub(crate) fn llm_calls(port: u16, count: u64) -> Value {
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    json!({ "tool": "hostile", "input": { "attack": "refused-posts", "url": url, "body_bytes": 16, "count": count } })
}

#[test]
fn a_token_budget_stops_the_third_llm_call_of_a_run_then_the_next_run() {
    let guild = Guild::new();
    let port = llm_upstream();
    // Each answer says 42 tokens: two calls use the 84 of the budget.
    let file = config_file(guild.home(), &llm_config(port, "token_budget = 84\nbudget_period_s = 3600"));
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    // Written otherwise than the upstream reads it (the scheme's case, a dot segment): still the
    // LLM's, still counted.
    let mut calls = llm_calls(port, 3);
    calls["input"]["url"] = json!(format!("HTTP://127.0.0.1:{port}/v1/./chat/completions"));
    let run = daemon.run(ALICE, calls).json();
    assert_eq!(run["output"]["value"], 1, "the third call is refused: {run}");
    let tokens: Vec<&str> = run["cost"]["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .filter(|l| l["upstream"].is_string())
        .filter_map(|l| l["quantity"].as_str())
        .collect();
    assert_eq!(tokens, ["24", "60"], "two calls' tokens are charged: {run}");
    // The tool was told "denied"; the tape (and so the operator) says which budget.
    let bundle = run["bundle"].as_str().expect("bundle");
    let inspect = guild.run_landed(&["bundle", "inspect", bundle]);
    assert!(inspect.stdout.contains("token budget of 84 tokens"), "{}", inspect.stdout);
    assert!(inspect.stdout.contains("tenants.token_budget"), "{}", inspect.stdout);
    // The replay answers the refusal from the tape: the same run, bit for bit.
    let replay = guild.run(&["replay", bundle]);
    assert_eq!(replay.code, 0, "{replay:?}");

    // The budget is spent: the next run is refused before it starts, until the next hour.
    let refused = daemon.run(ALICE, llm_calls(port, 1));
    assert_eq!((refused.status, refused.code().as_str()), (429, "budget_exhausted"), "{refused:?}");
    let retry: u64 = refused.headers.get("retry-after").expect("Retry-After").parse().expect("seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let next_hour = now / 3600 * 3600 + 3600;
    assert!(retry.abs_diff(next_hour - now) <= 2, "Retry-After {retry} is the next period's start");

    // A restart does not give the period's budget back: it is read back from the audit log.
    drop(daemon);
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    let refused = daemon.run(ALICE, llm_calls(port, 1));
    assert_eq!((refused.status, refused.code().as_str()), (429, "budget_exhausted"), "{refused:?}");
}

#[test]
fn agents_have_budgets_of_their_own_a_bounded_number_and_rows_in_the_ledger() {
    let guild = Guild::new();
    let port = llm_upstream();
    let budgets = "agent_token_budget = 42\nagents_max = 2\n\n[tenants.tool_budgets.http-get]\ncost = \"1\"";
    let file = config_file(guild.home(), &llm_config(port, budgets));
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    let as_agent = |agent: &str, call: Value| {
        daemon.call_with("POST", "/v1/runs", ALICE, call.to_string().as_bytes(), &[("guild-agent", agent)])
    };
    // Planner's one call spends its 42 tokens: its next run is refused; another agent's is not.
    let first = as_agent("planner", llm_calls(port, 1));
    assert_eq!(first.status, 200, "{first:?}");
    let refused = as_agent("planner", llm_calls(port, 1));
    assert_eq!((refused.status, refused.code().as_str()), (429, "budget_exhausted"));
    let says = String::from_utf8_lossy(&refused.body).to_string();
    assert!(says.contains("agent planner's token budget") && says.contains("agent_token_budget"), "{says}");
    assert_eq!(as_agent("critic", llm_calls(port, 1)).status, 200);
    // A third label is past agents_max.
    let third = as_agent("intruder", llm_calls(port, 1));
    assert_eq!(third.status, 429);
    assert!(String::from_utf8_lossy(&third.body).contains("tenants.agents_max"));
    // A label that is not one is refused as a bad request.
    assert_eq!(as_agent("two words", llm_calls(port, 1)).status, 400);

    // The ledger keeps each agent's runs apart; the audit record names the agent.
    let usage = daemon.call("GET", "/v1/usage?group_by=agent", ALICE, "").json();
    let agents: Vec<(Value, Value)> =
        usage["rows"].as_array().expect("rows").iter().map(|r| (r["agent"].clone(), r["runs"].clone())).collect();
    assert_eq!(agents, [(json!("critic"), json!(1)), (json!("planner"), json!(1))], "{usage}");
    let log = std::fs::read_to_string(guild.home().join("audit.log")).expect("audit log");
    assert!(log.lines().any(|l| l.contains(r#""agent":"planner""#)), "{log}");
    let csv = daemon.call("GET", "/v1/usage?group_by=agent&format=csv", ALICE, "");
    assert!(
        String::from_utf8_lossy(&csv.body)
            .starts_with("period,tenant,tool,agent,currency,runs,total\n,,,critic,USD,1,")
    );
    // `guild usage` shows the agents apart, and filters by one.
    let usage = |args: &[&str]| {
        let out = guild
            .command()
            .arg("usage")
            .args(args)
            .env("GUILD_URL", format!("http://127.0.0.1:{}", daemon.port))
            .env("GUILD_TOKEN", ALICE)
            .output()
            .expect("guild usage");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let csv = usage(&["--group-by", "agent", "--csv"]);
    assert!(csv.starts_with("period,tenant,tool,agent,currency,runs,total\n,,,critic,USD,1,"), "{csv}");
    let table = usage(&["--group-by", "tool,agent", "--agent", "planner"]);
    assert!(table.contains("AGENT") && table.contains("planner") && !table.contains("critic"), "{table}");
    // An agent named twice, differently, is refused rather than one of them picked.
    let mut call = llm_calls(port, 1);
    call["agent"] = json!("critic");
    assert_eq!(as_agent("planner", call).status, 400);
}

#[test]
fn the_alerts_pass_their_unit_tests_on_the_metrics_a_daemon_serves() {
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    let checked = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(rules.join("recording-rules.yml"))
        .arg(rules.join("alerts.yml"))
        .output()
        .expect("promtool runs (scripts/setup.sh installs it)");
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    // Every alert fires where it should and stays quiet where it should not.
    let tested = std::process::Command::new("promtool")
        .args(["test", "rules"])
        .arg(rules.join("alerts.test.yml"))
        .output()
        .expect("promtool runs (scripts/setup.sh installs it)");
    assert!(tested.status.success(), "{}", String::from_utf8_lossy(&tested.stdout));

    let guild = Guild::new();
    let port = llm_upstream();
    let budgets = "cost_budget = \"10\"\ntoken_budget = 1000\nbudget_period_s = 86400\nfuel_budget_units = 100000000000\n\n[tenants.tool_budgets.http-get]\ntokens = 500";
    let file = config_file(guild.home(), &llm_config(port, budgets));
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    assert_eq!(daemon.run(ALICE, json!({ "tool": "http-get", "input": { "url": url } })).status, 200);
    let metrics = String::from_utf8_lossy(&daemon.call("GET", "/metrics", ALICE, "").body).to_string();
    for series in [
        r#"guild_budget_limit{budget="tenant",tenant="alice",unit="money"} 10"#,
        r#"guild_budget_limit{budget="tenant",tenant="alice",unit="tokens"} 1000"#,
        r#"guild_budget_limit{budget="tool:http-get",tenant="alice",unit="tokens"} 500"#,
        r#"guild_budget_period_seconds{tenant="alice"} 86400"#,
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
    // Every metric the rules read is one the daemon serves (the fleet's, with `--redis`: the
    // lanes test checks those). The breaker's series exists once an upstream was called.
    let text = ["recording-rules.yml", "alerts.yml"]
        .map(|file| std::fs::read_to_string(rules.join(file)).expect("rules"))
        .concat();
    let names: std::collections::BTreeSet<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("guild_") && !word.starts_with("guild_redis_"))
        .map(|word| word.trim_end_matches("_bucket").trim_end_matches("_count").trim_end_matches("_sum"))
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let served = metrics.contains(&format!("\n{name}{{"))
            || metrics.contains(&format!("\n{name} "))
            || metrics.contains(&format!("\n{name}_bucket{{"));
        assert!(served, "the rules read {name}, which /metrics lacks");
    }
}

#[test]
fn gpu_time_is_priced_by_where_it_ran_and_the_bundle_agrees() {
    let input = json!({ "a": [[1, 2, 3], [4, 5, 6]], "b": [[1, 0], [0, 1], [1, 1]] });
    for (mode, priced, unpriced) in [("cpu", "gpu_cpu", "gpu_device"), ("device", "gpu_device", "gpu_cpu")] {
        let guild = Guild::new();
        let text = format!(
            "[[tools]]\npath = \"{}\"\n\n[pricing]\ncurrency = \"USD\"\ngpu_device_ms = \"0.0002\"\ngpu_cpu_ms = \"0.00001\"\n\n[[tenants]]\nname = \"alice\"\ntoken_blake3 = \"{}\"\ntools = [\"*\"]\n",
            guild_test_artifacts::MATMUL,
            token_digest(ALICE),
        );
        let file = config_file(guild.home(), &text);
        let env = [("GUILD_GPU", mode), ("XDG_RUNTIME_DIR", "/tmp")];
        let daemon = Daemon::start(&guild, &["--config", &file], &env);
        let run = daemon.run(ALICE, json!({ "tool": "matmul", "input": input.clone() })).json();
        let lines = run["cost"]["lines"].as_array().expect("lines").clone();
        let line = lines.iter().find(|l| l["resource"] == priced).unwrap_or_else(|| panic!("{mode}: {run}"));
        assert_eq!(line["unit"], "ms");
        assert!(line["quantity"].as_str().is_some_and(|q| q != "0"), "{run}");
        assert!(!lines.iter().any(|l| l["resource"] == unpriced), "{mode}: {run}");
        let bundle = run["bundle"].as_str().expect("bundle");
        let derived = guild.run_landed(&["bundle", "cost", bundle, "--config", &file, "--json"]);
        assert_eq!(derived.code, 0, "{mode}: {derived:?}");
        let derived: Value = serde_json::from_str(derived.stdout.trim()).expect("JSON");
        assert_eq!(derived["cost"], run["cost"], "{mode}: re-derived from the bundle");
        assert_eq!(derived["matches_recorded"], true);
    }
}

/// An LLM upstream on loopback that answers `/v1/nousage` with no usage and `/v1/gzip` with a
/// compressed body.
fn sly_upstream() -> u16 {
    fake_upstream(|request| {
        if request.contains("/v1/gzip") {
            ("content-encoding: gzip\r\n", b"\x1f\x8b\x08\x00\x00\x00\x00\x00")
        } else {
            ("", br#"{"choices":[{"message":{"content":"free"}}]}"#)
        }
    })
}

#[test]
fn an_llm_answer_whose_usage_cannot_be_read_is_refused_to_the_guest_and_replays() {
    let guild = Guild::new();
    let port = sly_upstream();
    // No budget: the answers are still held to what the price table needs to read.
    let text = llm_config(port, "")
        .replace("output_token = \"0.000002\"", "output_token = \"0.000002\"\nusage_required = true");
    let file = config_file(guild.home(), &text);
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    for (path, says) in [("nousage", "says no token usage"), ("gzip", "must come uncompressed")] {
        let url = format!("http://127.0.0.1:{port}/v1/{path}");
        let run = daemon.run(ALICE, json!({ "tool": "http-get", "input": { "url": url } })).json();
        assert_eq!(run["status"], "failed", "{path}: the guest does not get the answer: {run}");
        let bundle = run["bundle"].as_str().expect("bundle");
        let inspect = guild.run_landed(&["bundle", "inspect", bundle]);
        assert!(inspect.stdout.contains(says), "{path}: {}", inspect.stdout);
        // The refusal came after the request was sent: the replay compares its body and agrees.
        assert_eq!(guild.run(&["replay", bundle]).code, 0, "{path}");
    }
}
