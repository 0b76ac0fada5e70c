//! Cost: a daemon with a `[pricing]` table answers each run with what it cost — in the API
//! answer, the audit record, MCP `_meta` and the metrics — and `guild bundle cost` re-derives the
//! same figures from the bundle alone.

use crate::Guild;
use crate::daemon::{Counter, Daemon, config_file, token_digest};
use guild_test_artifacts::{ECHO, HTTP_GET};
use serde_json::{Value, json};

const ALICE: &str = "alice-token";
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
    let derived = guild.run(&["bundle", "cost", bundle, "--config", &file, "--json"]);
    assert_eq!(derived.code, 0, "{derived:?}");
    let derived: Value = serde_json::from_str(derived.stdout.trim()).expect("JSON");
    assert_eq!(&derived["cost"], cost, "re-derived from the bundle");
    assert_eq!(derived["quantities"]["egress_requests"], 1);

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
}

#[test]
fn a_price_table_must_be_exact_and_named() {
    let guild = Guild::new();
    for (table, says) in [
        ("currency = \"USD\"\nwall_second = 0.1\n", "pricing"),
        ("currency = \"USD\"\nwall_second = \"-1\"\n", "negative"),
        ("currency = \"usd\"\n", "pricing.currency"),
    ] {
        let file = config_file(guild.home(), &format!("[pricing]\n{table}"));
        let refused = guild.run(&["serve", "--config", &file, "--listen", "127.0.0.1:0"]);
        assert_ne!(refused.code, 0, "{table}");
        assert!(refused.stderr.contains(says), "{table}: {}", refused.stderr);
    }
}

/// An LLM upstream on loopback: every answer reports 12 prompt and 30 completion tokens.
fn llm_upstream() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 8192];
            let _ = stream.read(&mut request);
            let body =
                r#"{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":12,"completion_tokens":30}}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body.as_bytes());
        }
    });
    port
}

#[test]
fn llm_tokens_are_priced_from_the_recorded_responses() {
    let guild = Guild::new();
    let port = llm_upstream();
    let text = format!(
        r#"
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
"#,
        alice = token_digest(ALICE),
    );
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

    let derived = guild.run(&["bundle", "cost", run["bundle"].as_str().expect("bundle"), "--config", &file, "--json"]);
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
    assert!((3000..=3600).contains(&retry), "the rest of the period: {retry}");
    assert!(String::from_utf8_lossy(&refused.body).contains("tenants.cost_budget"));
}
