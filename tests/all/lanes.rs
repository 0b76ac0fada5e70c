//! Capability lanes and fair turns across a fleet: a real `redis-server`, a real `guild serve
//! --redis` and real `guild worker` processes. A GPU tool runs only on the worker with a
//! (lavapipe) GPU and waits, saying what for, while none is up; one tenant's flood of jobs does
//! not hold back another tenant's few by more than the turns allow.

use crate::Guild;
use crate::daemon::{Daemon, Reply, config_file, token_digest};
use crate::redis::{QUEUE_ENV, RedisServer, Worker, metric};
use guild_test_artifacts::{ECHO, MATMUL};
use serde_json::json;
use std::time::{Duration, Instant};

const FLOOD: &str = "flood-token";
const SINGLE: &str = "single-token";
/// Hides every Vulkan driver from a worker: `--gpu auto` then finds no adapter.
const NO_VULKAN: (&str, &str) = ("VK_ICD_FILENAMES", "/nonexistent/icd.json");

fn tenants_config() -> String {
    format!(
        r#"
[[tools]]
path = "{matmul}"

[[tools]]
path = "{echo}"

[[tenants]]
name = "flood"
token_blake3 = "{flood}"
tools = ["*"]
rate_per_second = 100000
burst = 100000
concurrency_max = 100000

[[tenants]]
name = "single"
token_blake3 = "{single}"
tools = ["*"]
priority_max = 6
"#,
        matmul = MATMUL,
        echo = ECHO,
        flood = token_digest(FLOOD),
        single = token_digest(SINGLE),
    )
}

fn start_fleet(api: &Guild, redis: &RedisServer) -> (Daemon, Vec<(&'static str, &'static str)>, String) {
    let file = config_file(api.home(), &tenants_config());
    let daemon = Daemon::start(api, &["--config", &file, "--redis", &redis.url()], QUEUE_ENV);
    (daemon, QUEUE_ENV.to_vec(), file)
}

/// Submit an async run; its id (retrying while the daemon answers 503 or 429).
fn submit(daemon: &Daemon, token: &str, body: &serde_json::Value) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply: Reply = daemon.run(token, body.clone());
        match reply.status {
            202 | 200 => return reply.json()["id"].as_str().expect("id").to_string(),
            503 | 429 => assert!(Instant::now() < deadline, "refused for a minute: {}", reply.code()),
            other => panic!("submission answered {other}: {}", String::from_utf8_lossy(&reply.body)),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn status(daemon: &Daemon, token: &str, id: &str) -> serde_json::Value {
    daemon.call("GET", &format!("/v1/runs/{id}"), token, "").json()
}

fn finished(body: &serde_json::Value) -> bool {
    !matches!(body["status"].as_str(), Some("queued" | "running" | "waiting_for_capability"))
}

fn matmul() -> serde_json::Value {
    json!({"tool": "matmul", "async": true, "input": {"a": [[1, 2], [3, 4]], "b": [[1, 0], [0, 1]]}})
}

#[test]
fn a_gpu_tool_runs_only_where_a_gpu_is_and_waits_for_one_saying_so() {
    let redis = RedisServer::start();
    let api = Guild::new();
    let (daemon, env, _file) = start_fleet(&api, &redis);
    let caches = [tempfile::tempdir().expect("cache"), tempfile::tempdir().expect("cache")];
    let gpu = Worker::start_with(&redis.url(), caches[0].path(), "gpu", 2, &env);
    let cpu_env: Vec<(&str, &str)> = env.iter().copied().chain([NO_VULKAN]).collect();
    let _cpu = Worker::start_with(&redis.url(), caches[1].path(), "cpu", 2, &cpu_env);

    let gpu_jobs: Vec<String> = (0..6).map(|_| submit(&daemon, FLOOD, &matmul())).collect();
    let echo = json!({"tool": "echo", "async": true, "input": {"message": "hi"}});
    let cpu_jobs: Vec<String> = (0..12).map(|_| submit(&daemon, FLOOD, &echo)).collect();
    for id in &gpu_jobs {
        let run = daemon.wait_run(FLOOD, id);
        assert_eq!(run["status"], "succeeded", "{run}\nworker log:\n{}", gpu.log());
        assert_eq!(run["worker"], "gpu", "a GPU job ran on a worker without a GPU: {run}");
        assert_eq!(run["output"]["c"], json!([[1.0, 2.0], [3.0, 4.0]]));
    }
    for id in &cpu_jobs {
        assert_eq!(daemon.wait_run(FLOOD, id)["status"], "succeeded");
    }

    // With the GPU worker gone, a GPU job waits and says for what; the CPU worker leaves it.
    gpu.stop();
    let waiting = submit(&daemon, FLOOD, &matmul());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut body = status(&daemon, FLOOD, &waiting);
    while body["status"] != "waiting_for_capability" {
        assert!(Instant::now() < deadline, "never shown as waiting for a capability: {body}");
        std::thread::sleep(Duration::from_millis(100));
        body = status(&daemon, FLOOD, &waiting);
    }
    assert_eq!(body["waiting_for"], "gpu", "{body}");
    assert_eq!(metric(&daemon, "guild_redis_jobs_waiting_for_capability{lane=\"gpu\"}"), 1.0);
    assert_eq!(metric(&daemon, "guild_redis_lane_workers{lane=\"gpu\"}"), 0.0);
    assert!(metric(&daemon, "guild_redis_lane_workers_needed{lane=\"gpu\"}") >= 1.0);
    promtool_accepts(&daemon);
    // A sync call would wait without end: it is told at once.
    let sync = daemon.run(FLOOD, json!({"tool": "matmul", "input": {"a": [[1]], "b": [[1]]}}));
    assert_eq!((sync.status, sync.code().as_str()), (503, "waiting_for_capability"), "{sync:?}");
    assert!(sync.headers.contains_key("retry-after"));
    assert!(String::from_utf8_lossy(&sync.body).contains("(gpu)"), "{}", String::from_utf8_lossy(&sync.body));
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(status(&daemon, FLOOD, &waiting)["status"], "waiting_for_capability", "no CPU fallback");
    // Another tenant cannot see it, waiting or not.
    assert_eq!(daemon.call("GET", &format!("/v1/runs/{waiting}"), SINGLE, "").status, 404);

    // A GPU worker comes up: the job runs there.
    let cache = tempfile::tempdir().expect("cache");
    let _again = Worker::start_with(&redis.url(), cache.path(), "gpu-again", 1, &env);
    let run = daemon.wait_run(FLOOD, &waiting);
    assert_eq!((run["status"].as_str(), run["worker"].as_str()), (Some("succeeded"), Some("gpu-again")), "{run}");
}

#[test]
fn one_tenants_flood_holds_another_tenants_jobs_back_by_a_turn_per_slot_at_most() {
    const FLOODED: usize = 5_000;
    const SINGLES: usize = 20;
    let redis = RedisServer::start();
    let api = Guild::new();
    let (daemon, env, _file) = start_fleet(&api, &redis);
    let echo = json!({"tool": "echo", "async": true, "input": {"message": "flood"}});
    // The flood is queued before any worker runs, four clients at a time.
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..FLOODED / 4 {
                    submit(&daemon, FLOOD, &echo);
                }
            });
        }
    });
    // At least the flood (a submission answered 503 under load and sent again is one more job).
    assert!(metric(&daemon, "guild_redis_lane_jobs{lane=\"default\"}") >= FLOODED as f64);
    let caches = [tempfile::tempdir().expect("cache"), tempfile::tempdir().expect("cache")];
    let slots = 4.0;
    let _workers: Vec<Worker> = caches
        .iter()
        .enumerate()
        .map(|(i, cache)| Worker::start_with(&redis.url(), cache.path(), &format!("w{i}"), 2, &env))
        .collect();
    // The fleet's pace on the flood: jobs finished per second, over a second of steady work.
    let completed = || metric(&daemon, "guild_redis_queue_events{event=\"completed\"}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while completed() < 50.0 {
        assert!(Instant::now() < deadline, "the workers did not start on the flood");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (start, before) = (Instant::now(), completed());
    std::thread::sleep(Duration::from_secs(1));
    let per_second = (completed() - before) / start.elapsed().as_secs_f64();
    assert!(per_second > 0.0);

    let submitted = Instant::now();
    let single = json!({"tool": "echo", "async": true, "input": {"message": "mine"}});
    let mine: Vec<String> = (0..SINGLES).map(|_| submit(&daemon, SINGLE, &single)).collect();
    let mut pending: Vec<&String> = mine.iter().collect();
    while !pending.is_empty() {
        pending.retain(|id| !finished(&status(&daemon, SINGLE, id)));
        assert!(submitted.elapsed() < Duration::from_secs(60), "{} jobs never finished", pending.len());
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = submitted.elapsed();
    let left = metric(&daemon, "guild_redis_lane_jobs{lane=\"default\"}");
    // Turn by turn, each of the 20 jobs waits for at most one flood job per slot: about 40 jobs
    // of work plus those already running. Three times that at the measured pace, plus a second
    // for polling and the submissions themselves, is the bound; first come first served would
    // have needed the whole remaining flood.
    let bound = Duration::from_secs_f64(3.0 * (2.0 * SINGLES as f64 + slots) / per_second + 1.0);
    let fifo = Duration::from_secs_f64(left / per_second);
    assert!(
        took <= bound,
        "the single tenant's {SINGLES} jobs took {took:?}; the bound is {bound:?} at {per_second:.0} jobs/s"
    );
    assert!(left > 1_000.0, "the flood was still queued ({left} jobs, {fifo:?} of work) when they finished");
    for id in &mine {
        assert_eq!(status(&daemon, SINGLE, id)["status"], "succeeded");
    }
    eprintln!(
        "fairness: {SINGLES} jobs behind a flood of {FLOODED} finished in {took:?} (bound {bound:?}, \
         {per_second:.0} jobs/s, {left} flood jobs left = {fifo:?} of work)"
    );
}

#[test]
fn a_priority_above_the_tenants_allowance_is_refused_and_within_it_goes_first() {
    let redis = RedisServer::start();
    let api = Guild::new();
    let (daemon, env, _file) = start_fleet(&api, &redis);
    let body = |priority: u8| json!({"tool": "echo", "async": true, "priority": priority, "input": {"message": "p"}});
    let refused = daemon.run(SINGLE, body(7));
    assert_eq!((refused.status, refused.code()), (403, "forbidden".to_string()));
    assert!(
        String::from_utf8_lossy(&refused.body).contains("priority_max"),
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert_eq!(daemon.run(SINGLE, body(10)).status, 400, "priorities run from 0 to 9");
    let low: Vec<String> = (0..30).map(|_| submit(&daemon, FLOOD, &body(4))).collect();
    let high = submit(&daemon, SINGLE, &body(6));
    let cache = tempfile::tempdir().expect("cache");
    let _worker = Worker::start_with(&redis.url(), cache.path(), "w", 1, &env);
    assert_eq!(daemon.wait_run(SINGLE, &high)["status"], "succeeded");
    for id in &low {
        assert_eq!(daemon.wait_run(FLOOD, id)["status"], "succeeded");
    }
    // One worker with one slot ran them one by one: the audit log has them in the order they
    // finished, and the higher priority came first though it was submitted last.
    let deadline = Instant::now() + Duration::from_secs(20);
    let order = loop {
        let text = std::fs::read_to_string(api.home().join("audit.log")).unwrap_or_default();
        let order: Vec<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["completion"] == "completed")
            .filter_map(|r| r["run"].as_str().map(str::to_string))
            .collect();
        if order.len() >= 31 || Instant::now() > deadline {
            break order;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(order.len(), 31, "every run is audited");
    assert_eq!(order.first(), Some(&high), "the higher priority ran first");
}

/// `promtool check metrics` passes the fleet's metrics, and every `guild_redis_*` metric the
/// alert rules and the dashboard read is one the daemon serves.
fn promtool_accepts(daemon: &Daemon) {
    let metrics = daemon.call("GET", "/metrics", "", "").body;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, &metrics).expect("write");
    let checked = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).expect("open"))
        .output()
        .expect("promtool runs (scripts/setup.sh installs it)");
    let said = format!("{}{}", String::from_utf8_lossy(&checked.stdout), String::from_utf8_lossy(&checked.stderr));
    assert!(checked.status.success(), "promtool check metrics: {said}");
    let metrics = String::from_utf8_lossy(&metrics);
    let rules = [
        include_str!("../../deploy/prometheus/alerts.yml"),
        include_str!("../../deploy/prometheus/recording-rules.yml"),
        include_str!("../../deploy/grafana-dashboard.json"),
    ]
    .concat();
    let names: std::collections::BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("guild_redis_"))
        .collect();
    assert!(!names.is_empty());
    for name in names {
        let served = metrics.contains(&format!("\n{name}{{")) || metrics.contains(&format!("\n{name} "));
        assert!(served, "the rules read {name}, which /metrics lacks");
    }
}
