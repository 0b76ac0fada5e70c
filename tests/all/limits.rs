//! Keyed egress limits and upstream back-pressure: a rate limit on an upstream holds one node's
//! runs to it; a limit on a secret holds two workers' to it together; an upstream's 429 with
//! `Retry-After` keeps every worker away until then, and the jobs it held back run after it.

use crate::Guild;
use crate::cost::ALICE;
use crate::daemon::{Daemon, config_file, token_digest};
use crate::redis::{QUEUE_ENV, RedisServer, Worker};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A loopback upstream that notes when each request came and answers the first `busy` of them
/// 429 with `Retry-After: 2`.
fn upstream(busy: usize) -> (u16, Arc<Mutex<Vec<Instant>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 8192];
            let _ = stream.read(&mut request);
            let count = {
                let mut log = log.lock().expect("log");
                log.push(Instant::now());
                log.len()
            };
            let (status, extra) =
                if count <= busy { ("429 Too Many Requests", "retry-after: 2\r\n") } else { ("200 OK", "") };
            let body = r#"{"value":42}"#;
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body.as_bytes());
        }
    });
    (port, seen)
}

/// The shortest time any `n + 1` consecutive requests took.
fn tightest(seen: &[Instant], n: usize) -> Duration {
    seen.windows(n + 1).map(|w| w[n] - w[0]).min().unwrap_or(Duration::MAX)
}

#[test]
fn an_upstream_limit_spaces_one_nodes_requests_and_refuses_past_its_wait() {
    let guild = Guild::new();
    let (port, seen) = upstream(0);
    let text = format!(
        r#"
[[tools]]
path = "{hostile}"
allow_hosts = ["http://127.0.0.1:{port}"]

[[egress_limits]]
upstream = "http://127.0.0.1:{port}"
rate_per_second = 5
wait_ms_max = 5000

[[tenants]]
name = "alice"
token_blake3 = "{alice}"
tools = ["*"]
"#,
        hostile = guild_test_artifacts::HOSTILE,
        alice = token_digest(ALICE),
    );
    let file = config_file(guild.home(), &text);
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    let url = format!("http://127.0.0.1:{port}/post");
    let posts = |count: u64| json!({"tool": "hostile", "input": {"attack": "refused-posts", "url": url, "body_bytes": 4, "count": count}});
    let run = daemon.run(ALICE, posts(8)).json();
    assert_eq!(run["output"]["value"], 0, "all 8 went, spaced: {run}");
    let times = seen.lock().expect("log").clone();
    assert_eq!(times.len(), 8);
    // 5 a second: any 6 in a row took at least a second (less a scheduling margin).
    assert!(tightest(&times, 5) >= Duration::from_millis(900), "{:?}", tightest(&times, 5));

    // Runs at once share the limit; a wait past its bound is refused, naming it.
    let file = config_file(guild.home(), &text.replace("wait_ms_max = 5000", "wait_ms_max = 100"));
    drop(daemon);
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    let run = daemon.run(ALICE, posts(3)).json();
    assert_eq!(run["output"]["value"], 2, "one went; the next two would wait 200 and 400 ms: {run}");
    let inspect = guild.run(&["bundle", "inspect", run["bundle"].as_str().expect("bundle")]);
    assert!(
        inspect.stdout.contains("limited to 5 requests/s") && inspect.stdout.contains("egress_limits[0]"),
        "{}",
        inspect.stdout
    );
    let metrics = String::from_utf8_lossy(&daemon.call("GET", "/metrics", ALICE, "").body).to_string();
    assert!(metrics.contains(r#"guild_egress_requests_total{decision="limited",tool="hostile"} 2"#), "{metrics}");
}

/// A config for a fleet: http-get sending the secret TOKEN to the upstream on `port`, limited
/// to 5 requests a second wherever it runs.
fn fleet_config(port: u16) -> String {
    format!(
        r#"
[[tools]]
path = "{http_get}"
allow_hosts = ["http://127.0.0.1:{port}"]
secrets = [{{ name = "TOKEN", to = "http://127.0.0.1:{port}" }}]

[secrets]
TOKEN = "env:GUILD_LIMITS_TOKEN"

[[egress_limits]]
secret = "TOKEN"
rate_per_second = 5
wait_ms_max = 10000

[[tenants]]
name = "alice"
token_blake3 = "{alice}"
tools = ["*"]
"#,
        http_get = guild_test_artifacts::HTTP_GET,
        alice = token_digest(ALICE),
    )
}

/// An API node with `text` as its config and two workers with four slots each, on `redis`.
struct Fleet {
    daemon: Daemon,
    _workers: Vec<Worker>,
    _caches: [tempfile::TempDir; 2],
    _api: Guild,
}

fn fleet(redis: &RedisServer, text: &str) -> Fleet {
    let api = Guild::new();
    let file = config_file(api.home(), text);
    let env = [("GUILD_LIMITS_TOKEN", "s3cret"), ("GUILD_CONFIG", file.as_str())];
    let env: Vec<(&str, &str)> = QUEUE_ENV.iter().copied().chain(env).collect();
    let daemon = Daemon::start(&api, &["--config", &file, "--redis", &redis.url()], &env);
    let caches = [tempfile::tempdir().expect("cache"), tempfile::tempdir().expect("cache")];
    let workers = caches
        .iter()
        .enumerate()
        .map(|(i, cache)| Worker::start_with(&redis.url(), cache.path(), &format!("w{i}"), 4, &env))
        .collect();
    Fleet { daemon, _workers: workers, _caches: caches, _api: api }
}

/// `n` calls to the upstream on `port`, submitted at once, each waited for and succeeded.
fn run_calls(daemon: &Daemon, port: u16, n: usize) {
    let ids: Vec<String> =
        (0..n).map(|_| daemon.run(ALICE, call(port)).json()["id"].as_str().expect("id").to_string()).collect();
    for id in &ids {
        let run = daemon.wait_run(ALICE, id);
        assert_eq!(run["status"], "succeeded", "{run}");
    }
}

fn call(port: u16) -> serde_json::Value {
    json!({"tool": "http-get", "async": true, "input": {
        "url": format!("http://127.0.0.1:{port}/value"),
        "headers": {"authorization": "Bearer {{secret:TOKEN}}"},
        "json_pointer": "/value"}})
}

#[test]
fn a_secret_limit_holds_across_two_workers_and_a_retry_after_keeps_the_fleet_away() {
    let redis = RedisServer::start();
    let (port, seen) = upstream(0);
    let fleet = fleet(&redis, &fleet_config(port));
    run_calls(&fleet.daemon, port, 12);
    let times = seen.lock().expect("log").clone();
    assert_eq!(times.len(), 12);
    // Eight slots on two machines, one budget of 5 requests a second.
    assert!(tightest(&times, 5) >= Duration::from_millis(900), "{:?}", tightest(&times, 5));

    // Back-pressure: the upstream says 429, Retry-After 2 — no worker calls it for 2 s, and the
    // jobs held back run after that.
    let (port, seen) = upstream(1);
    let api = Guild::new();
    let file = config_file(api.home(), &fleet_config(port).replace("rate_per_second = 5", "rate_per_second = 1000"));
    let env = [("GUILD_LIMITS_TOKEN", "s3cret"), ("GUILD_CONFIG", file.as_str())];
    let env: Vec<(&str, &str)> = QUEUE_ENV.iter().copied().chain(env).collect();
    let daemon = Daemon::start(&api, &["--config", &file, "--redis", &redis.url()], &env);
    let first = daemon.run(ALICE, call(port)).json()["id"].as_str().expect("id").to_string();
    assert_eq!(daemon.wait_run(ALICE, &first)["output"]["status"], 429, "the first call is told 429");
    let held: Vec<String> =
        (0..4).map(|_| daemon.run(ALICE, call(port)).json()["id"].as_str().expect("id").to_string()).collect();
    for id in &held {
        let run = daemon.wait_run(ALICE, id);
        assert_eq!(run["status"], "succeeded", "a held-back job runs after the Retry-After: {run}");
    }
    let times = seen.lock().expect("log").clone();
    assert_eq!(times.len(), 5, "one 429, then each held-back job once");
    let quiet = times[1] - times[0];
    assert!(quiet >= Duration::from_millis(1900), "nobody called it for {quiet:?} after its Retry-After: 2");
}

#[test]
fn run_limits_hold_a_tenants_tool_and_each_agent_on_one_node_and_across_a_fleet() {
    let text = format!(
        r#"
[[tools]]
path = "{echo}"

[[tools]]
path = "{hash}"

[[run_limits]]
tenant = "alice"
tool = "echo"
rate_per_second = 1
burst = 2

[[run_limits]]
tenant = "alice"
tool = "hash"
agent = "*"
rate_per_second = 1

[[tenants]]
name = "alice"
token_blake3 = "{alice}"
tools = ["*"]
"#,
        echo = guild_test_artifacts::ECHO,
        hash = guild_test_artifacts::HASH,
        alice = token_digest(ALICE),
    );
    let guild = Guild::new();
    let file = config_file(guild.home(), &text);
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    let echo = json!({"tool": "echo", "input": {"message": "hi"}});
    for _ in 0..2 {
        assert_eq!(daemon.run(ALICE, echo.clone()).status, 200, "the burst");
    }
    let refused = daemon.run(ALICE, echo.clone());
    assert_eq!((refused.status, refused.code().as_str()), (429, "rate_limited"), "{refused:?}");
    assert!(refused.headers.contains_key("retry-after"));
    let says = String::from_utf8_lossy(&refused.body).to_string();
    assert!(says.contains("tenant alice tool echo is limited to 1 runs/s") && says.contains("run_limits[0]"), "{says}");
    // Each agent has its own room under the second limit.
    let hash = |agent: &str| {
        let body = json!({"tool": "hash", "input": {"text": "a b"}}).to_string();
        daemon.call_with("POST", "/v1/runs", ALICE, body.as_bytes(), &[("guild-agent", agent)]).status
    };
    assert_eq!((hash("a"), hash("b"), hash("a")), (200, 200, 429));

    // A reload puts new limits in force at once.
    std::fs::write(&file, text.replace("rate_per_second = 1\nburst = 2", "rate_per_second = 1000\nburst = 1000"))
        .expect("write");
    let pid = daemon.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().expect("kill").success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.log_lines().iter().any(|l| l.contains("[[run_limits]]")) {
        assert!(Instant::now() < deadline, "the reload is logged: {:?}", daemon.log_lines());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(daemon.run(ALICE, echo.clone()).status, 200, "the raised limit");

    // With a wait allowed, the run waits its turn instead.
    drop(daemon);
    let file = config_file(guild.home(), &text.replace("burst = 2", "burst = 2\nwait_ms_max = 3000"));
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(daemon.run(ALICE, echo.clone()).status, 200);
    }
    assert!(started.elapsed() >= Duration::from_millis(800), "the third waited its turn: {:?}", started.elapsed());

    // Two API nodes on one Redis share the room. A slow refill: the worker's first job compiles
    // the component, which may take longer than a second on a loaded machine.
    let redis = RedisServer::start();
    let (guild_a, guild_b) = (Guild::new(), Guild::new());
    let text = text.replacen("rate_per_second = 1\nburst = 2", "rate_per_second = 0.05\nburst = 2", 1);
    let (file_a, file_b) = (config_file(guild_a.home(), &text), config_file(guild_b.home(), &text));
    let a = Daemon::start(&guild_a, &["--config", &file_a, "--redis", &redis.url()], QUEUE_ENV);
    let b = Daemon::start(&guild_b, &["--config", &file_b, "--redis", &redis.url()], QUEUE_ENV);
    let cache = tempfile::tempdir().expect("cache");
    let _worker = Worker::start_with(&redis.url(), cache.path(), "w", 2, &[]);
    assert_eq!(a.run(ALICE, echo.clone()).status, 200);
    assert_eq!(b.run(ALICE, echo.clone()).status, 200);
    let refused = a.run(ALICE, echo);
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (429, "rate_limited"),
        "the fleet's burst is spent: {refused:?}"
    );
}

/// A loopback upstream that takes `hold` to answer each request, and keeps the most requests it
/// had in flight at once and how many it answered.
/// Requests in flight now, the most at once, and answered.
type InFlight = Arc<Mutex<(usize, usize, usize)>>;

fn slow_upstream(hold: Duration) -> (u16, InFlight) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let state: InFlight = Arc::new(Mutex::new((0, 0, 0)));
    let shared = state.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let state = shared.clone();
            std::thread::spawn(move || {
                let mut request = [0u8; 8192];
                let _ = stream.read(&mut request);
                {
                    let mut s = state.lock().expect("state");
                    s.0 += 1;
                    s.1 = s.1.max(s.0);
                }
                std::thread::sleep(hold);
                state.lock().expect("state").0 -= 1;
                let body = r#"{"value":42}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body.as_bytes());
                state.lock().expect("state").2 += 1;
            });
        }
    });
    (port, state)
}

#[test]
fn a_secret_in_flight_limit_holds_across_two_workers() {
    let redis = RedisServer::start();
    let (port, state) = slow_upstream(Duration::from_millis(300));
    let text = fleet_config(port)
        .replace("rate_per_second = 5\nwait_ms_max = 10000", "concurrency_max = 2\nwait_ms_max = 20000");
    assert!(text.contains("concurrency_max = 2"), "{text}");
    run_calls(&fleet(&redis, &text).daemon, port, 10);
    let (now, most, answered) = *state.lock().expect("state");
    assert_eq!((now, answered), (0, 10));
    // Eight slots on two machines, one secret allowed two requests in flight.
    assert_eq!(most, 2, "the upstream saw {most} requests at once");
}

#[test]
fn a_run_in_flight_limit_refuses_past_it_and_frees_its_place_when_the_run_ends() {
    let text = format!(
        r#"
[[tools]]
path = "{hostile}"

[[run_limits]]
tenant = "alice"
tool = "hostile"
concurrency_max = 1

[[tenants]]
name = "alice"
token_blake3 = "{alice}"
tools = ["*"]
"#,
        hostile = guild_test_artifacts::HOSTILE,
        alice = token_digest(ALICE),
    );
    let guild = Guild::new();
    let file = config_file(guild.home(), &text);
    let daemon = Daemon::start(&guild, &["--config", &file], &[]);
    let sleep = json!({"tool": "hostile", "input": {"attack": "sleep"}, "async": true});
    let first = daemon.run(ALICE, sleep.clone());
    assert_eq!(first.status, 202);
    let refused = daemon.run(ALICE, sleep.clone());
    assert_eq!((refused.status, refused.code().as_str()), (429, "concurrency_limited"), "{refused:?}");
    let says = String::from_utf8_lossy(&refused.body).to_string();
    assert!(
        says.contains("allows 1 in flight at once and that many runs are") && says.contains("run_limits[0]"),
        "{says}"
    );
    daemon.wait_run(ALICE, first.json()["id"].as_str().expect("id"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let again = daemon.run(ALICE, json!({"tool": "hostile", "input": {"attack": "spin", "rounds": 1}}));
        if again.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the place never came back: {again:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn async_runs_over_a_rate_are_queued_for_their_turn_on_one_node_and_across_a_fleet() {
    let text = format!(
        r#"
[[tools]]
path = "{echo}"

[[run_limits]]
tenant = "alice"
tool = "echo"
rate_per_second = 2
delay_ms_max = 10000

[[tenants]]
name = "alice"
token_blake3 = "{alice}"
tools = ["*"]
"#,
        echo = guild_test_artifacts::ECHO,
        alice = token_digest(ALICE),
    );
    let check = |daemon: &Daemon| {
        let started = Instant::now();
        let body = json!({"tool": "echo", "input": {"message": "later"}, "async": true});
        let ids: Vec<String> = (0..5)
            .map(|_| {
                let reply = daemon.run(ALICE, body.clone());
                assert_eq!(reply.status, 202, "accepted, to start at its turn: {reply:?}");
                reply.json()["id"].as_str().expect("id").to_string()
            })
            .collect();
        // A sync run may not wait (wait_ms_max 0): refused while the turns are taken.
        let sync = daemon.run(ALICE, json!({"tool": "echo", "input": {"message": "now"}}));
        assert_eq!((sync.status, sync.code().as_str()), (429, "rate_limited"), "{sync:?}");
        for id in &ids {
            assert_eq!(daemon.wait_run(ALICE, id)["status"], "succeeded");
        }
        // Five turns at 2 a second: the last comes 2 s after the first.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(1_900), "all five ran within {took:?}");
    };
    let guild = Guild::new();
    let file = config_file(guild.home(), &text);
    check(&Daemon::start(&guild, &["--config", &file], &[]));

    let redis = RedisServer::start();
    let api = Guild::new();
    let file = config_file(api.home(), &text);
    let daemon = Daemon::start(&api, &["--config", &file, "--redis", &redis.url()], QUEUE_ENV);
    let cache = tempfile::tempdir().expect("cache");
    let _worker = Worker::start(&redis.url(), cache.path(), "w", 4);
    check(&daemon);
}
