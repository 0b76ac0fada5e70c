//! Jobs across machines through Redis: a real `redis-server` per test on a free loopback port,
//! a real `guild serve --redis` and real `guild worker` processes, killed with SIGKILL.

use crate::Guild;
use crate::daemon::Daemon;
use guild_test_artifacts::{HOSTILE, REV_V1, REV_V2};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) const TOKEN: &str = "redis-test-token";

/// A `redis-server` of our own: append-only file on and fsynced before each reply (what an
/// operator sets for "nothing acknowledged is lost"), in a temporary directory.
pub(crate) struct RedisServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

impl RedisServer {
    pub(crate) fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = spawn_redis(dir.path(), port);
        Self { child, port, dir }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL it (no shutdown save: only what the append-only file holds survives).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start it again on the same port and directory.
    fn restart(&mut self) {
        self.child = spawn_redis(self.dir.path(), self.port);
    }

    /// One command through redis-cli; its output.
    fn cli(&self, args: &[&str]) -> String {
        let out =
            Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn set_bytes(&self, key: &str, value: &[u8]) {
        let mut child = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "-x", "SET", key])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-cli");
        child.stdin.take().expect("stdin").write_all(value).expect("write");
        assert!(child.wait().expect("redis-cli").success());
    }
}

fn spawn_redis(dir: &Path, port: u16) -> Child {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
        .args(["--appendfsync", "always", "--maxmemory-policy", "noeviction", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server starts (scripts/setup.sh installs it)");
    if answers(port, Duration::from_secs(10)) {
        child
    } else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not answer on port {port}");
    }
}

/// Does a Redis answer PING on `port` within `within`?
pub(crate) fn answers(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.write_all(b"PING\r\n");
            let mut reply = [0u8; 7];
            if stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n" {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Settings that make leases and backoffs short enough for a test.
pub(crate) const QUEUE_ENV: &[(&str, &str)] = &[
    ("GUILD_TOKEN", TOKEN),
    ("GUILD_REDIS__LEASE_MS", "1000"),
    ("GUILD_REDIS__BACKOFF_BASE_MS", "50"),
    ("GUILD_REDIS__BACKOFF_MAX_MS", "200"),
    ("GUILD_REDIS__ATTEMPTS_MAX", "3"),
    ("GUILD_REDIS__BREAKER_OPEN_MS", "200"),
];

/// A `guild worker` process; its log goes to a file beside its home.
pub(crate) struct Worker {
    child: Child,
    log: PathBuf,
    _guild: Guild,
}

impl Worker {
    pub(crate) fn start(redis: &str, cache: &Path, name: &str, concurrency: usize) -> Self {
        Self::start_with(redis, cache, name, concurrency, &[])
    }

    pub(crate) fn start_with(redis: &str, cache: &Path, name: &str, concurrency: usize, env: &[(&str, &str)]) -> Self {
        Self::spawn(&["--redis", redis], cache, name, concurrency, env)
    }

    /// A worker that finds its Redis in `env` (`GUILD_REDIS__CLUSTER`, `GUILD_REDIS__SENTINEL…`).
    pub(crate) fn start_configured(cache: &Path, name: &str, concurrency: usize, env: &[(&str, &str)]) -> Self {
        Self::spawn(&[], cache, name, concurrency, env)
    }

    fn spawn(redis: &[&str], cache: &Path, name: &str, concurrency: usize, env: &[(&str, &str)]) -> Self {
        let guild = Guild::with_shared_cache(cache);
        let log = guild.home().join("worker.log");
        let child = guild
            .command()
            .arg("worker")
            .args(redis)
            .args(["--concurrency", &concurrency.to_string(), "--name", name])
            .envs(QUEUE_ENV.iter().chain(env).copied())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("guild worker starts");
        Self { child, log, _guild: guild }
    }

    pub(crate) fn alive(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for it to drain and exit.
    pub(crate) fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        let _ = self.child.wait();
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `guild serve --redis` with the example tools and the hostile fixture.
fn api_node(guild: &Guild, redis: &RedisServer) -> Daemon {
    Daemon::start(guild, &["--redis", &redis.url(), "--tool", HOSTILE], QUEUE_ENV)
}

/// The hostile fixture's `spin` result for `rounds` (the same mixing loop).
pub(crate) fn spin(rounds: u64) -> u64 {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = x.wrapping_add(i);
    }
    x
}

/// Submit an async job, retrying while the daemon answers 503 (Redis away) or 429 (the
/// tenant's jobs in flight are at its cap) — what a client does. Returns the job id once the
/// daemon acknowledged it.
pub(crate) fn submit(daemon: &Daemon, body: &serde_json::Value) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reply = daemon.run(TOKEN, body.clone());
        match reply.status {
            202 | 200 => return reply.json()["id"].as_str().expect("id").to_string(),
            503 | 429 => {
                assert!(reply.headers.contains_key("retry-after"), "{} without Retry-After", reply.status);
                let expected = if reply.status == 503 { "queue_unavailable" } else { "concurrency_limited" };
                assert_eq!(reply.code(), expected);
            }
            other => panic!("submission answered {other}: {}", String::from_utf8_lossy(&reply.body)),
        }
        assert!(Instant::now() < deadline, "the daemon refused submissions for a minute");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until every job has a result; their bodies by id.
pub(crate) fn wait_all(daemon: &Daemon, ids: &[String], within: Duration) -> BTreeMap<String, serde_json::Value> {
    wait_all_or(daemon, ids, within, &|_| String::new())
}

/// [`wait_all`], with `describe` adding what Redis holds for a job that never finished.
fn wait_all_or(
    daemon: &Daemon,
    ids: &[String],
    within: Duration,
    describe: &dyn Fn(&str) -> String,
) -> BTreeMap<String, serde_json::Value> {
    let deadline = Instant::now() + within;
    let mut done = BTreeMap::new();
    while done.len() < ids.len() {
        for id in ids {
            if done.contains_key(id) {
                continue;
            }
            let reply = daemon.call("GET", &format!("/v1/runs/{id}"), TOKEN, "");
            if reply.status != 200 {
                continue;
            }
            let body = reply.json();
            if !matches!(body["status"].as_str(), Some("queued" | "running" | "waiting_for_capability")) {
                done.insert(id.clone(), body);
            }
        }
        if Instant::now() > deadline {
            let waiting: Vec<String> = ids
                .iter()
                .filter(|id| !done.contains_key(*id))
                .take(5)
                .map(|id| {
                    let body = daemon.call("GET", &format!("/v1/runs/{id}"), TOKEN, "").json();
                    format!("{body} {}", describe(id))
                })
                .collect();
            panic!("{} of {} jobs finished in {within:?}; still waiting: {waiting:?}", done.len(), ids.len());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done
}

/// The audit log's records, as JSON: its complete lines (a daemon may be appending the last one
/// as it is read; a line ends with its newline once written whole).
pub(crate) fn audit_records(guild: &Guild) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(guild.home().join("audit.log")).unwrap_or_default();
    text.split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

/// Wait until the audit log holds a `completed` (or `dead`) record for each of `ids`; returns
/// how many such records each has.
pub(crate) fn wait_audited(guild: &Guild, ids: &[String], within: Duration) -> BTreeMap<String, usize> {
    let deadline = Instant::now() + within;
    loop {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for record in audit_records(guild) {
            if matches!(record["completion"].as_str(), Some("completed" | "dead")) {
                *counts.entry(record["run"].as_str().unwrap_or_default().to_string()).or_default() += 1;
            }
        }
        if ids.iter().all(|id| counts.contains_key(id)) || Instant::now() > deadline {
            return counts;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Jobs the live worker `name` completed, from its last heartbeat (0 before its first).
fn worker_completed(daemon: &Daemon, name: &str) -> f64 {
    let text = String::from_utf8(daemon.call("GET", "/metrics", "", "").body).expect("utf-8");
    let series = format!("guild_redis_worker_completed_jobs{{worker=\"{name}\"}}");
    text.lines().find_map(|l| l.strip_prefix(&series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

pub(crate) fn metric(daemon: &Daemon, name: &str) -> f64 {
    let text = String::from_utf8(daemon.call("GET", "/metrics", "", "").body).expect("utf-8");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[test]
#[expect(clippy::cast_possible_truncation, reason = "random bits cut to the size needed")]
fn a_thousand_jobs_complete_exactly_once_while_workers_are_killed() {
    let redis = RedisServer::start();
    let api = Guild::new();
    let daemon = api_node(&api, &redis);
    let cache = tempfile::tempdir().expect("cache");
    let workers = Arc::new(Mutex::new(
        (0..3).map(|i| Worker::start(&redis.url(), cache.path(), &format!("w{i}"), 4)).collect::<Vec<_>>(),
    ));
    // Jobs of ~5–10 ms of CPU each, every input different so every output can be checked.
    let rounds = |i: u64| 400_000 + i;
    let ids: Vec<String> = std::thread::scope(|scope| {
        let killer = scope.spawn(|| {
            let mut kills = 0;
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            while kills < 10 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                std::thread::sleep(Duration::from_millis(150 + seed % 250));
                let mut workers = workers.lock().expect("workers");
                let victim = (seed % workers.len() as u64) as usize;
                workers[victim].kill();
                workers[victim] = Worker::start(&redis.url(), cache.path(), &format!("w{victim}-{kills}"), 4);
                kills += 1;
            }
        });
        let submitters: Vec<_> = (0..4u64)
            .map(|t| {
                let daemon = &daemon;
                scope.spawn(move || {
                    (0..250u64)
                        .map(|j| {
                            let i = t * 250 + j;
                            let body = json!({"tool": "hostile", "input": {"attack": "spin", "rounds": rounds(i)}, "async": true});
                            (i, submit(daemon, &body))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut ids: Vec<(u64, String)> = submitters.into_iter().flat_map(|s| s.join().expect("submitter")).collect();
        killer.join().expect("killer");
        ids.sort();
        ids.into_iter().map(|(_, id)| id).collect()
    });
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 1000, "a thousand distinct jobs");
    let describe = |id: &str| {
        let job = redis.cli(&["HGETALL", &format!("guild:{{default}}:job:{id}")]);
        let pending = redis.cli(&["XPENDING", "guild:{default}:leases", "workers", "-", "+", "20"]);
        let delayed = redis.cli(&["ZRANGE", "guild:{default}:delayed", "0", "-1", "WITHSCORES"]);
        format!("job: {job:?}; pending: {pending:?}; delayed: {delayed:?}")
    };
    let results = wait_all_or(&daemon, &ids, Duration::from_secs(120), &describe);
    for (i, id) in ids.iter().enumerate() {
        let body = &results[id];
        assert_eq!(body["status"], "succeeded", "job {id}: {body}");
        assert_eq!(body["output"]["value"], spin(rounds(i as u64)), "job {id} has its own output");
    }
    let audited = wait_audited(&api, &ids, Duration::from_secs(30));
    for id in &ids {
        assert_eq!(audited.get(id), Some(&1), "job {id} is recorded as completed exactly once in the audit log");
    }
    assert_eq!(metric(&daemon, "guild_redis_queue_events{event=\"completed\"}"), 1000.0, "completed once each");
    assert!(
        metric(&daemon, "guild_redis_queue_events{event=\"claims\"}") >= 1.0,
        "killed workers' jobs were taken over"
    );
    // Attempts that finished after another did are kept, and visible, as duplicates.
    let duplicates = audit_records(&api).iter().filter(|r| r["completion"] == "duplicate").count() as f64;
    assert_eq!(metric(&daemon, "guild_redis_queue_events{event=\"duplicates\"}"), duplicates);
    let audit = api.run(&["audit", "verify"]);
    audit.expect_code(0);
}

#[test]
fn a_redis_restart_loses_no_accepted_job_and_workers_resume() {
    let mut redis = RedisServer::start();
    let api = Guild::new();
    let daemon = api_node(&api, &redis);
    let cache = tempfile::tempdir().expect("cache");
    let workers: Vec<Worker> = (0..2).map(|i| Worker::start(&redis.url(), cache.path(), &format!("w{i}"), 2)).collect();
    let body = |i: u64| json!({"tool": "hostile", "input": {"attack": "spin", "rounds": 200_000 + i}, "async": true});
    let mut ids: Vec<String> = (0..150).map(|i| submit(&daemon, &body(i))).collect();
    redis.kill();
    // While Redis is down, runs are refused at once with 503 and Retry-After.
    let started = Instant::now();
    let refused = daemon.run(TOKEN, body(9_999));
    assert_eq!(refused.status, 503, "{}", String::from_utf8_lossy(&refused.body));
    assert_eq!(refused.code(), "queue_unavailable");
    assert!(refused.headers.contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(2), "refused fast: {:?}", started.elapsed());
    assert_eq!(daemon.call("GET", "/readyz", "", "").status, 503, "not ready without Redis");
    std::thread::sleep(Duration::from_millis(700));
    redis.restart();
    // Every worker consumes again: jobs submitted after the restart (which no worker can have
    // held before it) are completed by each of them. Batches until both have taken some.
    let mut after_restart: Vec<String> = Vec::new();
    // Generous: on a loaded 2-core machine a worker's backoff (up to 5 s) and its in-flight
    // settlements can keep it out of several batches.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut next = 150;
    loop {
        let batch: Vec<String> = (next..next + 40).map(|i| submit(&daemon, &body(i))).collect();
        next += 40;
        wait_all(&daemon, &batch, Duration::from_secs(60));
        after_restart.extend(batch);
        let audited = wait_audited(&api, &after_restart, Duration::from_secs(10));
        assert!(after_restart.iter().all(|id| audited.contains_key(id)), "every job after the restart audited");
        let by_worker: BTreeSet<String> = audit_records(&api)
            .iter()
            .filter(|r| r["completion"] == "completed" && after_restart.iter().any(|id| r["run"] == id.as_str()))
            .filter_map(|r| r["worker"].as_str().map(str::to_string))
            .collect();
        if by_worker.len() == workers.len() {
            break;
        }
        if Instant::now() >= deadline {
            let tails: Vec<String> = workers
                .iter()
                .map(|w| {
                    let log = w.log();
                    let tail: Vec<&str> = log.lines().rev().take(30).collect();
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                })
                .collect();
            panic!(
                "only {by_worker:?} consumed after the restart; the workers' last log lines:\n{}",
                tails.join("\n---\n")
            );
        }
    }
    ids.extend(after_restart);
    let results = wait_all(&daemon, &ids, Duration::from_secs(120));
    assert!(results.values().all(|b| b["status"] == "succeeded"), "every accepted job completed");
    assert_eq!(daemon.call("GET", "/readyz", "", "").status, 200);
    let audited = wait_audited(&api, &ids, Duration::from_secs(30));
    assert!(ids.iter().all(|id| audited.get(id) == Some(&1)), "each accepted job audited as completed once");
    // Each live worker's throughput is on every API node's /metrics (from its heartbeats).
    std::thread::sleep(Duration::from_millis(600));
    for i in 0..workers.len() {
        assert!(worker_completed(&daemon, &format!("w{i}")) > 0.0, "w{i} in guild_redis_worker_completed_jobs");
    }
}

#[test]
fn a_worker_started_before_redis_consumes_once_it_is_up() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let cache = tempfile::tempdir().expect("cache");
    let worker = Worker::start(&url, cache.path(), "early", 1);
    std::thread::sleep(Duration::from_millis(800));
    // Bring Redis up on that port.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut redis = RedisServer { child: spawn_redis(dir.path(), port), port, dir };
    let api = Guild::new();
    let daemon = api_node(&api, &redis);
    let reply = daemon.run(TOKEN, json!({"tool": "echo", "input": {"message": "hello"}}));
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let body = reply.json();
    assert_eq!(body["output"]["message"], "hello");
    // Any node serves the bundle: this one never ran the job; the worker left it in Redis.
    let bundle = body["bundle"].as_str().expect("bundle");
    let archive = daemon.call("GET", &format!("/v1/bundles/{bundle}"), TOKEN, "");
    assert_eq!(archive.status, 200);
    let path = api.home().join("job.bundle");
    std::fs::write(&path, &archive.body).expect("write bundle");
    Guild::new().run(&["replay", path.to_str().expect("utf-8")]).expect_code(0);
    let log = worker.log();
    assert!(log.contains("Redis is not answering"), "{log}");
    assert!(log.contains("Redis answers again"), "{log}");
    redis.kill();
}

#[test]
fn poison_jobs_go_to_the_dead_letter_stream_and_can_be_retried() {
    let redis = RedisServer::start();
    let api = Guild::new();
    let daemon = api_node(&api, &redis);
    // Enqueue while no worker runs, then damage the component in Redis: every attempt fails
    // with a host error (retryable) until the attempts run out.
    let body = json!({"tool": "hostile", "input": {"attack": "spin", "rounds": 10}, "async": true});
    let id = submit(&daemon, &body);
    let component = std::fs::read(HOSTILE).expect("hostile component");
    let key = format!("guild:{{default}}:blob:{}", blake3::hash(&component).to_hex());
    assert_eq!(redis.cli(&["EXISTS", &key]), "1", "the API node put the component in Redis");
    redis.set_bytes(&key, b"not the component");
    let cache = tempfile::tempdir().expect("cache");
    let mut worker = Worker::start(&redis.url(), cache.path(), "w", 2);
    let finished = wait_all(&daemon, std::slice::from_ref(&id), Duration::from_secs(60));
    let run = &finished[&id];
    assert_eq!(run["status"], "dead", "{run}");
    assert_eq!(run["attempts"], 3, "{run}");
    assert!(run["error"]["message"].as_str().unwrap_or_default().contains("does not hash to its name"), "{run}");
    let url = redis.url();
    let jobs = |args: &[&str]| {
        let mut all = vec!["jobs"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--redis", &url]);
        api.run(&all)
    };
    let dead = jobs(&["dead", "--json"]);
    dead.expect_code(0);
    let entry: serde_json::Value =
        serde_json::from_str(dead.stdout.lines().next().expect("one dead job")).expect("json");
    assert_eq!(entry["id"], id.as_str());
    assert_eq!(entry["attempts"], 3);
    let table = jobs(&["dead"]);
    assert!(table.stdout.contains(&id) && table.stdout.contains("does not hash to its name"), "{}", table.stdout);
    assert_eq!(metric(&daemon, "guild_redis_queue_jobs{state=\"dead\"}"), 1.0);
    assert!(metric(&daemon, "guild_redis_queue_events{event=\"retries\"}") >= 2.0);
    let audited = wait_audited(&api, std::slice::from_ref(&id), Duration::from_secs(10));
    assert_eq!(audited.get(&id), Some(&1), "the dead job has its audit record");
    // Mend the component; a fresh worker (the old one only ever saw the damage) runs the retry.
    redis.set_bytes(&key, &component);
    worker.kill();
    let _worker = Worker::start(&redis.url(), cache.path(), "w2", 2);
    jobs(&["retry", &id]).expect_code(0);
    jobs(&["retry", &id]).expect_code(2).expect_stderr("not in the dead-letter stream");
    let run = &wait_all(&daemon, std::slice::from_ref(&id), Duration::from_secs(60))[&id];
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(jobs(&["dead"]).stdout.trim(), "no dead jobs");
}

#[test]
fn idempotency_keys_hold_under_concurrent_resubmission() {
    let redis = RedisServer::start();
    let api = Guild::new();
    let daemon = api_node(&api, &redis);
    let cache = tempfile::tempdir().expect("cache");
    let _worker = Worker::start(&redis.url(), cache.path(), "w", 2);
    let keyed = json!({"tool": "echo", "input": {"message": "once"}, "idempotency_key": "order-17"});
    let replies: Vec<(u16, serde_json::Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                scope.spawn(|| {
                    let reply = daemon.run(TOKEN, keyed.clone());
                    (reply.status, reply.json())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client")).collect()
    });
    let ids: BTreeSet<&str> = replies.iter().map(|(_, b)| b["id"].as_str().expect("id")).collect();
    assert_eq!(ids.len(), 1, "sixteen submissions, one job: {replies:?}");
    assert!(replies.iter().all(|(s, b)| *s == 200 && b["output"]["message"] == "once"), "{replies:?}");
    let id = ids.into_iter().next().expect("id").to_string();
    let conflict =
        daemon.run(TOKEN, json!({"tool": "echo", "input": {"message": "other"}, "idempotency_key": "order-17"}));
    assert_eq!(conflict.status, 409);
    assert_eq!(conflict.code(), "idempotency_key_reused");
    let audited = wait_audited(&api, std::slice::from_ref(&id), Duration::from_secs(10));
    let records = audit_records(&api).iter().filter(|r| r["run"] == id.as_str()).count();
    assert_eq!((audited.get(&id), records), (Some(&1), 1), "one run, one record");
    assert_eq!(metric(&daemon, "guild_redis_queue_events{event=\"completed\"}"), 1.0);
    // A second API node on the same Redis answers for the job and its key.
    let other = Guild::new();
    let second = api_node(&other, &redis);
    let again = second.run(TOKEN, keyed);
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["id"], id.as_str());
    assert_eq!(again.headers.get("idempotent-replayed").map(String::as_str), Some("true"));
    let body = second.call("GET", &format!("/v1/runs/{id}"), TOKEN, "").json();
    assert_eq!(body["output"]["message"], "once");
}

#[test]
fn bundles_too_large_for_redis_are_served_from_the_shared_store() {
    let redis = RedisServer::start();
    let shared = tempfile::tempdir().expect("shared store");
    let shared_path = shared.path().to_str().expect("utf-8");
    // Every bundle is "too large" for Redis here.
    let env = [("GUILD_REDIS__BUNDLE_INLINE_BYTES_MAX", "1"), ("GUILD_REDIS__SHARED_STORE", shared_path)];
    let api = Guild::new();
    let all_env: Vec<(&str, &str)> = QUEUE_ENV.iter().chain(&env).copied().collect();
    let daemon = Daemon::start(&api, &["--redis", &redis.url()], &all_env);
    let cache = tempfile::tempdir().expect("cache");
    let _worker = Worker::start_with(&redis.url(), cache.path(), "w", 1, &env);
    let reply = daemon.run(TOKEN, json!({"tool": "echo", "input": {"message": "big"}}));
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let bundle = reply.json()["bundle"].as_str().expect("bundle").to_string();
    assert_eq!(redis.cli(&["EXISTS", &format!("guild:{{default}}:bundle:{bundle}")]), "0", "not in Redis");
    assert!(shared.path().read_dir().expect("shared store").next().is_some(), "in the shared store");
    let archive = daemon.call("GET", &format!("/v1/bundles/{bundle}"), TOKEN, "");
    assert_eq!(archive.status, 200, "served from the shared store");
    let path = api.home().join("big.bundle");
    std::fs::write(&path, &archive.body).expect("write bundle");
    Guild::new().run(&["replay", path.to_str().expect("utf-8")]).expect_code(0);
}

/// An HTTP server on loopback that answers 503 to its first `failures` requests, then 200
/// with `{"value": 42}`; counts what it answered.
fn flaky_upstream(failures: usize) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && stream.read_exact(&mut byte).is_ok() {
                request.push(byte[0]);
            }
            let n = count.fetch_add(1, Ordering::SeqCst);
            let (status, body) =
                if n < failures { ("503 Service Unavailable", "busy") } else { ("200 OK", r#"{"value":42}"#) };
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    (port, served)
}

#[test]
fn a_tool_failed_by_its_upstream_is_retried_and_each_attempt_audited() {
    let (port, served) = flaky_upstream(1);
    let redis = RedisServer::start();
    let api = Guild::new();
    let rule = format!("http://127.0.0.1:{port}");
    let daemon = Daemon::start(&api, &["--redis", &redis.url(), "--allow-host", &rule], QUEUE_ENV);
    let cache = tempfile::tempdir().expect("cache");
    let _worker = Worker::start(&redis.url(), cache.path(), "w", 1);
    let input = json!({"url": format!("http://127.0.0.1:{port}/value"), "json_pointer": "/value"});
    let reply = daemon.run(TOKEN, json!({"tool": "http-get", "input": input}));
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let body = reply.json();
    assert_eq!(body["status"], "succeeded", "{body}");
    assert_eq!(body["output"]["json"], 42);
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 2, "one 503, then the retry's 200");
    let id = body["id"].as_str().expect("id").to_string();
    assert_eq!(daemon.call("GET", &format!("/v1/runs/{id}"), TOKEN, "").json()["attempts"], 2);
    wait_audited(&api, std::slice::from_ref(&id), Duration::from_secs(10));
    let attempts: Vec<(String, u64)> = audit_records(&api)
        .iter()
        .filter(|r| r["run"] == id.as_str())
        .map(|r| (r["completion"].as_str().unwrap_or_default().to_string(), r["attempt"].as_u64().unwrap_or_default()))
        .collect();
    assert_eq!(attempts, vec![("retried".to_string(), 1), ("completed".to_string(), 2)], "each attempt audited");
    // A tool error with nothing upstream failing is the job's result: no retry.
    let reply = daemon.run(TOKEN, json!({"tool": "http-get", "input": {"url": "ftp://nowhere"}}));
    let body = reply.json();
    assert_eq!(body["status"], "failed", "{body}");
    let id = body["id"].as_str().expect("id");
    assert_eq!(daemon.call("GET", &format!("/v1/runs/{id}"), TOKEN, "").json()["attempts"], 1);
}

#[test]
fn a_corrupt_done_entry_is_buried_with_an_audit_record_and_auditing_goes_on() {
    let redis = RedisServer::start();
    let api = Guild::new();
    let daemon = api_node(&api, &redis);
    let cache = tempfile::tempdir().expect("cache");
    let _worker = Worker::start(&redis.url(), cache.path(), "w", 2);
    let first = submit(&daemon, &json!({"tool": "echo", "input": {"message": "before"}, "async": true}));
    wait_audited(&api, std::slice::from_ref(&first), Duration::from_secs(30));
    // What another version, or damage, might leave in the done stream.
    let entry = redis.cli(&["XADD", "guild:{default}:done", "*", "kind", "completed", "result", "{not a result"]);
    let second = submit(&daemon, &json!({"tool": "echo", "input": {"message": "after"}, "async": true}));
    let audited = wait_audited(&api, std::slice::from_ref(&second), Duration::from_secs(30));
    assert_eq!(audited.get(&second), Some(&1), "auditing carried on past the corrupt entry");
    let events: Vec<serde_json::Value> =
        audit_records(&api).into_iter().filter(|r| r["event"]["kind"] == "corrupt_done_entry").collect();
    assert_eq!(events.len(), 1, "one record for the corrupt entry");
    assert!(events[0]["event"]["detail"].as_str().expect("detail").contains(&entry), "{events:?}");
    let dead = api.run(&["jobs", "dead", "--json", "--redis", &redis.url()]);
    let dead: Vec<serde_json::Value> = dead.stdout.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert!(dead.iter().any(|d| d["id"] == entry.as_str() && d["error"]["status"] == "corrupt_done_entry"), "{dead:?}");
    assert_eq!(redis.cli(&["XLEN", "guild:{default}:done"]), "0", "nothing is left to redeliver");
    drop(daemon);
    api.run(&["audit", "verify"]).expect_code(0);
}

#[test]
fn a_sync_wait_for_a_job_redis_forgot_ends_with_a_clear_error() {
    let redis = RedisServer::start();
    let api = Guild::new();
    let daemon = api_node(&api, &redis);
    // No worker: the job waits in Redis, and a sync caller waits for it...
    let port = daemon.port;
    let waiting = std::thread::spawn(move || {
        let body = json!({"tool": "echo", "input": {"message": "lost"}});
        crate::daemon::call(port, "POST", "/v1/runs", TOKEN, body.to_string().as_bytes(), &[])
    });
    std::thread::sleep(Duration::from_millis(500));
    // ...until Redis loses it (FLUSHALL stands for an expiry or a lost node).
    redis.cli(&["FLUSHALL"]);
    let reply = waiting.join().expect("caller");
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let run = reply.json();
    assert_eq!((run["status"].as_str(), run["error"]["status"].as_str()), (Some("failed"), Some("expired")), "{run}");
}

/// A "Redis" on `port` that accepts connections and never answers, until `stop` is set.
fn silent_redis(port: u16, stop: Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<()> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            if let Ok((stream, _)) = listener.accept() {
                held.push(stream);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

/// The breaker in front of Redis: a probe whose caller gave up mid-call (its future dropped, as
/// when an HTTP client disconnects) counts as a failure, so the breaker probes again later
/// instead of answering 503 for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_probe_dropped_mid_call_does_not_stick_the_breaker_open() {
    let port = free_port();
    let settings = guild_queue::RedisSettings {
        breaker_open_ms: 200,
        ..guild_queue::RedisSettings::new(format!("redis://127.0.0.1:{port}/"))
    };
    let queue = guild_queue::RedisQueue::open(settings).expect("queue");
    assert!(queue.ping().await.is_err(), "nothing listens");
    assert!(queue.is_circuit_open());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let silent = silent_redis(port, stop.clone());
    // Once the client reconnects (it may first report its last failure), a probe reaches the
    // silent Redis and waits; its caller gives up.
    let mut dropped = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if tokio::time::timeout(Duration::from_millis(300), queue.ping()).await.is_err() {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "no probe ever waited on the silent Redis");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    silent.join().expect("silent redis");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut real = spawn_redis(dir.path(), port);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answered = false;
    while Instant::now() < deadline {
        if queue.ping().await.is_ok() {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = real.kill();
    let _ = real.wait();
    assert!(answered, "the breaker stayed open after its probe was dropped");
}

// ---------------------------------------------------------------------------------------------
// Attacks on the Redis seams (branch `attack`): each test fails on the code as it is.

const PREFIX: &str = "guild:{default}:";

/// The ids of the jobs Redis holds now.
fn job_ids(redis: &RedisServer) -> BTreeSet<String> {
    redis
        .cli(&["--scan", "--pattern", &format!("{PREFIX}job:*")])
        .lines()
        .filter_map(|k| k.strip_prefix(&format!("{PREFIX}job:")).map(str::to_string))
        .collect()
}

/// Wait for one more job than `before` to be in Redis; its id.
fn new_job(redis: &RedisServer, before: &BTreeSet<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(id) = job_ids(redis).difference(before).next() {
            return id.clone();
        }
        assert!(Instant::now() < deadline, "no job appeared in Redis");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Settle job `id` as a worker's complete.lua does, with `result` as the result JSON (what a
/// worker of another version writes).
fn settle_as_worker(redis: &RedisServer, id: &str, result: &serde_json::Value) {
    let text = result.to_string();
    redis.cli(&["HSET", &format!("{PREFIX}job:{id}"), "state", "done", "worker", ""]);
    redis.cli(&["SET", &format!("{PREFIX}result:{id}"), &text]);
    redis.cli(&["XADD", &format!("{PREFIX}done"), "*", "kind", "completed", "result", &text]);
    redis.cli(&["PUBLISH", &format!("{PREFIX}finished"), id]);
}

/// A succeeded result for job `id`, from its body; `limits` as its policy's limits.
fn result_of(redis: &RedisServer, id: &str, limits: serde_json::Value) -> serde_json::Value {
    let body: serde_json::Value =
        serde_json::from_str(&redis.cli(&["HGET", &format!("{PREFIX}job:{id}"), "body"])).expect("job body");
    json!({
        "id": id, "tenant": body["tenant"], "tool": body["tool"], "tool_digest": body["tool_digest"],
        "input_digest": body["input_digest"], "idempotency_key": null, "status": "succeeded", "error": null,
        "output": "{\"ok\":true}", "bundle": null, "fuel_used_units": 1, "wall_time_us": 1,
        "policy": { "limits": limits }, "attempt": 1, "worker": "newer-worker",
    })
}

/// A sync `POST /v1/runs` on another thread; its reply arrives on the receiver.
fn sync_run(port: u16, message: &str) -> std::sync::mpsc::Receiver<crate::daemon::Reply> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let body = json!({"tool": "echo", "input": {"message": message}}).to_string();
    std::thread::spawn(move || {
        let _ = sender.send(crate::daemon::call(port, "POST", "/v1/runs", TOKEN, body.as_bytes(), &[]));
    });
    receiver
}

/// A worker of a newer version writes a result whose policy names a limit this API node does
/// not know (`Limits` and `PolicyRecord` deny unknown fields). The result is in Redis, the
/// notice is published, yet the sync caller is never answered: `status()` and `results()` fail
/// `Corrupt`, so neither the notice nor the sweep wakes it, and the audit writer buries the done
/// entry without notifying. It waits until the result expires (results_ttl_s, 24 h), holding
/// its tenant's request slot and concurrency admission; GET answers 503 `queue_unavailable`.
#[test]
fn a_result_written_by_a_newer_worker_still_ends_the_sync_wait() {
    let redis = RedisServer::start();
    let api = Guild::new();
    let daemon = api_node(&api, &redis);
    // Control: a result this version can read ends the wait at once.
    let before = job_ids(&redis);
    let control = sync_run(daemon.port, "control");
    let id = new_job(&redis, &before);
    settle_as_worker(&redis, &id, &result_of(&redis, &id, json!({ "fuel_units": 1 })));
    let reply = control.recv_timeout(Duration::from_secs(10)).expect("a readable result ends the wait");
    assert_eq!((reply.status, reply.json()["output"].clone()), (200, json!({"ok": true})));
    // The same result, with one limit more.
    let before = job_ids(&redis);
    let waiting = sync_run(daemon.port, "newer");
    let id = new_job(&redis, &before);
    settle_as_worker(&redis, &id, &result_of(&redis, &id, json!({ "fuel_units": 1, "gpu_time_ms_max": 5 })));
    let get = daemon.call("GET", &format!("/v1/runs/{id}"), TOKEN, "");
    let reply = waiting.recv_timeout(Duration::from_secs(15));
    assert!(
        reply.is_ok(),
        "the sync caller is still waiting 15 s after its job's result was written (GET answers {} {})",
        get.status,
        String::from_utf8_lossy(&get.body)
    );
    let reply = reply.expect("answered");
    assert_eq!(reply.json()["error"]["status"], "unreadable_result", "{}", reply.json());
    // Its owner is told why; the field the result holds is named.
    assert_eq!(
        (get.status, get.code()),
        (500, "unreadable_result".to_string()),
        "{}",
        String::from_utf8_lossy(&get.body)
    );
    assert!(String::from_utf8_lossy(&get.body).contains("gpu_time_ms_max"));
}

/// An API node restarted restores, from its audit log, the jobs it audited into its own run
/// table; `GET /v1/runs/{id}` then answers from that table (label only: message "", output read
/// from this node's store, which never had the worker's bundle) instead of from Redis, which
/// still holds the whole result: a succeeded run with `"output": null`.
#[test]
fn a_restarted_api_node_still_shows_a_remote_jobs_output() {
    let redis = RedisServer::start();
    let api = Guild::new();
    let cache = tempfile::tempdir().expect("cache");
    let _worker = Worker::start(&redis.url(), cache.path(), "w", 1);
    let daemon = api_node(&api, &redis);
    let reply = daemon.run(TOKEN, json!({"tool": "echo", "input": {"message": "kept"}}));
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let first = reply.json();
    let id = first["id"].as_str().expect("id").to_string();
    assert!(!first["output"].is_null(), "{first}");
    wait_audited(&api, std::slice::from_ref(&id), Duration::from_secs(30));
    daemon.terminate();
    let daemon = api_node(&api, &redis);
    let again = daemon.call("GET", &format!("/v1/runs/{id}"), TOKEN, "").json();
    assert_eq!(again["output"], first["output"], "before the restart: {first}\nafter: {again}");
}

/// One job hash a node of another version wrote without `attempts_max` (or without `body`):
/// start.lua's reply for it no longer decodes as (entry, body, attempt, attempts_max), so the
/// whole `take` fails, after the script already marked every job of the batch running. The
/// healthy job taken with it is stranded: `reclaim` claims the same batch again each lease and
/// fails the same way, for ever; nothing is failed `bad_job`.
#[test]
fn one_job_hash_of_another_version_does_not_strand_the_jobs_taken_with_it() {
    let redis = RedisServer::start();
    let api = Guild::new();
    let daemon = api_node(&api, &redis);
    let odd = submit(&daemon, &json!({"tool": "echo", "input": {"message": "odd"}, "async": true}));
    let healthy = submit(&daemon, &json!({"tool": "echo", "input": {"message": "healthy"}, "async": true}));
    redis.cli(&["HDEL", &format!("{PREFIX}job:{odd}"), "attempts_max"]);
    let cache = tempfile::tempdir().expect("cache");
    let worker = Worker::start(&redis.url(), cache.path(), "w", 2);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut body = serde_json::Value::Null;
    while Instant::now() < deadline {
        body = daemon.call("GET", &format!("/v1/runs/{healthy}"), TOKEN, "").json();
        if body["status"] == "succeeded" {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let attempts = redis.cli(&["HGET", &format!("{PREFIX}job:{healthy}"), "attempts"]);
    panic!("the healthy job never finished: {body} (attempts {attempts}); worker log:\n{}", worker.log());
}

/// A job body whose `id` is not the job's (a buggy node; the stream entry and the hash key name
/// another): the worker settles the body's id, not the job it was delivered. The lease is on
/// the real job, whose stream entry is acknowledged and deleted as a "duplicate" while its hash
/// stays `running` without expiry: lost, with no result and no dead letter.
#[test]
fn a_job_body_naming_another_id_is_not_lost() {
    let redis = RedisServer::start();
    let api = Guild::new();
    let daemon = api_node(&api, &redis);
    let id = submit(&daemon, &json!({"tool": "echo", "input": {"message": "mine"}, "async": true}));
    let key = format!("{PREFIX}job:{id}");
    let mut body: serde_json::Value = serde_json::from_str(&redis.cli(&["HGET", &key, "body"])).expect("body");
    body["id"] = json!("0".repeat(32));
    redis.cli(&["HSET", &key, "body", &body.to_string()]);
    let cache = tempfile::tempdir().expect("cache");
    let worker = Worker::start(&redis.url(), cache.path(), "w", 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut run = serde_json::Value::Null;
    while Instant::now() < deadline {
        run = daemon.call("GET", &format!("/v1/runs/{id}"), TOKEN, "").json();
        if !matches!(run["status"].as_str(), Some("queued" | "running" | "waiting_for_capability")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let state = redis.cli(&["HGET", &key, "state"]);
    let pending = redis.cli(&["XLEN", &format!("{PREFIX}leases")]);
    panic!("job {id} never ended: {run} (hash state {state}, stream length {pending}); worker log:\n{}", worker.log());
}

/// The greeting an API node answers for "margaret" (revision 1: `hello margaret`, revision 2:
/// `hello, margaret!`), run by the workers.
fn greeting(daemon: &Daemon) -> String {
    let reply = daemon.run(TOKEN, json!({ "tool": "greet", "input": { "name": "margaret" } }));
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    reply.json()["output"]["greeting"].as_str().unwrap_or_default().to_string()
}

/// How long until `done` holds, polling every 10 ms (at most 10 s).
/// How long a node may take to follow another here: a node polls every 200 ms, so it follows
/// well within a second on a quiet machine; on a machine busy compiling it took 2.2 s once, so
/// the test allows more: it checks that nodes follow, not how fast this machine is.
const FOLLOW_WITHIN: Duration = Duration::from_secs(5);

fn until(done: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "never happened");
        std::thread::sleep(Duration::from_millis(10));
    }
    started.elapsed()
}

#[test]
fn rollouts_and_flags_reach_a_second_api_node_and_a_worker_through_redis() {
    let redis = RedisServer::start();
    let (guild_a, guild_b) = (Guild::new(), Guild::new());
    let a = Daemon::start(&guild_a, &["--redis", &redis.url(), "--tool", REV_V1], QUEUE_ENV);
    let b = Daemon::start(&guild_b, &["--redis", &redis.url(), "--tool", REV_V1], QUEUE_ENV);
    let cache = tempfile::tempdir().expect("cache");
    let worker = Worker::start(&redis.url(), cache.path(), "w1", 2);
    assert_eq!(greeting(&b), "hello margaret");

    // Revision 2 is uploaded on A and ramped to every call there; B follows.
    let v2 = std::fs::read(REV_V2).expect("rev-v2");
    let uploaded = a.call_with("POST", "/v1/tools", TOKEN, &v2, &[]);
    assert_eq!(uploaded.status, 201, "{}", String::from_utf8_lossy(&uploaded.body));
    let start = json!({ "candidate": "2", "percent": 100, "force": true, "reason": "fleet test" });
    let started = a.call("POST", "/v1/tools/greet/rollout", TOKEN, &start.to_string());
    assert_eq!(started.status, 200, "{}", String::from_utf8_lossy(&started.body));
    let candidate_on_b = |n: Option<u64>| {
        let record = b.call("GET", "/v1/tools/greet/revisions", TOKEN, "").json();
        record["candidate"]["revision"].as_u64() == n
    };
    let took = until(|| candidate_on_b(Some(2)));
    assert!(took < FOLLOW_WITHIN, "B saw the rollout after {took:?}");
    assert_eq!(greeting(&b), "hello, margaret!", "B routes to the candidate, which a worker runs");

    // A rollback on A: B's next calls go to revision 1.
    let back = a.call("POST", "/v1/tools/greet/rollout/rollback", TOKEN, r#"{"reason":"fleet test"}"#);
    assert_eq!(back.status, 200, "{}", String::from_utf8_lossy(&back.body));
    let took = until(|| candidate_on_b(None));
    assert!(took < FOLLOW_WITHIN, "B saw the rollback after {took:?}");
    assert_eq!(greeting(&b), "hello margaret");

    // Jobs queued while no worker runs, then the tool is switched off on A: B refuses new calls
    // within a second, and the worker that starts next fails the queued jobs `tool_disabled`.
    drop(worker);
    let queued: Vec<String> = (0..3)
        .map(|_| {
            let reply = b.run(TOKEN, json!({ "tool": "greet", "input": { "name": "ada" }, "async": true }));
            assert_eq!(reply.status, 202, "{}", String::from_utf8_lossy(&reply.body));
            reply.json()["id"].as_str().expect("id").to_string()
        })
        .collect();
    let off = a.call("PUT", "/v1/tools/greet/flags", TOKEN, r#"{"disabled":true,"reason":"incident 9"}"#);
    assert_eq!(off.status, 200, "{}", String::from_utf8_lossy(&off.body));
    // Probed asynchronously: no worker runs now, so a sync call would wait for one.
    let took =
        until(|| b.run(TOKEN, json!({ "tool": "greet", "input": { "name": "ada" }, "async": true })).status == 403);
    assert!(took < FOLLOW_WITHIN, "B refused the disabled tool after {took:?}");
    let _worker = Worker::start(&redis.url(), cache.path(), "w2", 2);
    let results = wait_all(&b, &queued, Duration::from_secs(30));
    for (id, body) in results {
        assert_eq!(body["error"]["status"], "tool_disabled", "job {id}: {body}");
    }
}

#[test]
fn a_result_cached_through_one_api_node_answers_the_same_call_on_another_and_fleet_calls_run_once() {
    let redis = RedisServer::start();
    let (guild_a, guild_b) = (Guild::new(), Guild::new());
    let text =
        crate::daemon::three_tenants(&format!("[[tools]]\npath = \"{}\"\ncache = true", guild_test_artifacts::HASH));
    let (file_a, file_b) =
        (crate::daemon::config_file(guild_a.home(), &text), crate::daemon::config_file(guild_b.home(), &text));
    let a = Daemon::start(&guild_a, &["--config", &file_a, "--redis", &redis.url()], QUEUE_ENV);
    let b = Daemon::start(&guild_b, &["--config", &file_b, "--redis", &redis.url()], QUEUE_ENV);
    let cache = tempfile::tempdir().expect("cache");
    let _worker = Worker::start(&redis.url(), cache.path(), "w1", 4);
    let call = json!({"tool": "hash", "input": {"text": "the fleet computes this once"}});

    let first = a.run(crate::daemon::ALICE, call.clone()).json();
    assert_eq!(first["cache"], "stored", "{first}");
    let second = b.run(crate::daemon::ALICE, call.clone()).json();
    assert_eq!(second["cache"], "hit", "the second node is answered from the shared entry: {second}");
    assert_eq!(second["cached"], true);
    assert_eq!(second["fuel_used_units"], 0);
    assert_eq!(second["bundle"], first["bundle"]);
    assert_eq!(second["output"], first["output"]);
    // The hit is bob's own only when bob ran it: another tenant is never answered from alice's.
    let bobs = b.run(crate::daemon::BOB, call).json();
    assert_eq!(bobs["cache"], "stored", "{bobs}");
    assert_ne!(bobs["bundle"], first["bundle"]);

    // Twelve identical calls at once through both nodes: one job runs, the rest are answered.
    let nodes = Arc::new([a, b]);
    let call = json!({"tool": "hash", "input": {"text": "twelve at once"}});
    let threads: Vec<_> = (0..12)
        .map(|i| {
            let (nodes, call) = (nodes.clone(), call.clone());
            std::thread::spawn(move || nodes[i % 2].run(crate::daemon::ALICE, call).json())
        })
        .collect();
    let answers: Vec<serde_json::Value> = threads.into_iter().map(|t| t.join().expect("caller")).collect();
    let ran = answers.iter().filter(|a| a["cache"] == "stored").count();
    assert_eq!(ran, 1, "{answers:#?}");
    assert!(answers.iter().all(|a| a["status"] == "succeeded" && a["output"] == answers[0]["output"]));
    let fuel: u64 = answers.iter().map(|a| a["fuel_used_units"].as_u64().unwrap_or(0)).sum();
    assert!(fuel > 0 && answers.iter().filter(|a| a["fuel_used_units"].as_u64() > Some(0)).count() == 1);

    // The fleet's entries, seen and purged from either node; the audit trail names the hits.
    let [a, b] = Arc::try_unwrap(nodes).unwrap_or_else(|_| panic!("callers are done"));
    let stats = b.call("GET", "/v1/cache", crate::daemon::ROOT, "").json();
    assert_eq!(stats["tools"][0]["entries"], 3, "{stats}");
    let deadline = Instant::now() + Duration::from_secs(10);
    // Each finished job is audited by one of the nodes, whichever read it from the done stream.
    let hit_audited = || {
        [&guild_a, &guild_b]
            .iter()
            .flat_map(|g| audit_records(g))
            .any(|r| r["completion"] == "cache_hit" && r["bundle"] == first["bundle"] && r["fuel_used_units"] == 0)
    };
    while !hit_audited() {
        assert!(Instant::now() < deadline, "no audit record of the hit");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(a.call("DELETE", "/v1/cache/hash", crate::daemon::ROOT, "").json()["purged"], 3);
    let again =
        b.run(crate::daemon::ALICE, json!({"tool": "hash", "input": {"text": "the fleet computes this once"}})).json();
    assert_eq!(again["cache"], "stored", "{again}");
}

/// A shared cache entry larger than `CACHE_VALUE_BYTES_MAX` (put there by something other than
/// Guild) is refused by its size, without being read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_cache_entry_past_its_bound_is_refused_unread() {
    let redis = RedisServer::start();
    let queue = guild_queue::RedisQueue::open(guild_queue::RedisSettings::new(redis.url())).expect("queue");
    let key = guild_queue::CacheKey::new("alice", &guild_replay::Digest::of(b"an action"));
    let entry = format!("guild:{{default}}:cache:hash:e:{}", key.to_hex());
    // `redis-cli -x` takes the value from stdin: 16 MiB do not fit on a command line.
    let set = |value: Vec<u8>| {
        let mut child = Command::new("redis-cli")
            .args(["-u", &redis.url(), "-x", "SET", &entry])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-cli");
        child.stdin.take().expect("stdin").write_all(&value).expect("value");
        assert!(child.wait().expect("redis-cli").success());
    };
    set(vec![b'x'; guild_queue::CACHE_VALUE_BYTES_MAX + 1]);
    let refused = queue.cache_get("hash", &key).await.expect_err("too large");
    let text = refused.to_string();
    assert!(text.contains(&format!("at most {} are read", guild_queue::CACHE_VALUE_BYTES_MAX)), "{text}");
    // A small one is read (and, not being an entry, refused as one).
    set(b"{}".to_vec());
    let refused = queue.cache_get("hash", &key).await.expect_err("not an entry");
    assert!(!refused.to_string().contains("at most"), "{refused}");
}

/// A job a worker ran is priced with the API node's `[pricing]` (the job carries it): the
/// answer, the node's audit record of the attempt and its usage ledger say the same cost.
#[test]
fn a_job_a_worker_ran_is_priced_with_the_api_nodes_table() {
    let redis = RedisServer::start();
    let guild = Guild::new();
    let text = format!(
        "[[tools]]\npath = \"{}\"\n\n[pricing]\ncurrency = \"USD\"\nfuel_per_million = \"0.002\"\nwall_second = \"0.01\"\n",
        guild_test_artifacts::ECHO
    );
    let file = crate::daemon::config_file(guild.home(), &text);
    let daemon = Daemon::start(&guild, &["--config", &file, "--redis", &redis.url()], QUEUE_ENV);
    let cache = tempfile::tempdir().expect("cache");
    let _worker = Worker::start(&redis.url(), cache.path(), "w1", 1);
    let run = daemon.run(TOKEN, json!({"tool": "echo", "input": {"message": "priced"}})).json();
    let cost = run["cost"].clone();
    assert_eq!(cost["currency"], "USD", "{run}");
    let resources: Vec<&str> =
        cost["lines"].as_array().expect("lines").iter().filter_map(|l| l["resource"].as_str()).collect();
    assert_eq!(resources, ["fuel", "wall_time"]);
    let id = run["id"].as_str().expect("id").to_string();
    assert_eq!(wait_audited(&guild, std::slice::from_ref(&id), Duration::from_secs(30)).get(&id), Some(&1));
    let record = audit_records(&guild).into_iter().find(|r| r["run"] == id.as_str()).expect("the record");
    assert_eq!(record["cost"], cost, "the audit record of the attempt");
    // The ledger takes the attempt just after its record is written: wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let usage = loop {
        let usage = daemon.call("GET", "/v1/usage?group_by=tool", TOKEN, "").json();
        if usage["rows"][0].is_object() || Instant::now() > deadline {
            break usage;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(usage["rows"][0]["tool"], "echo", "{usage}");
    assert_eq!(usage["rows"][0]["total"], cost["total"], "{usage}");
}

#[test]
fn a_fleet_of_two_api_nodes_and_a_worker_shares_one_ledger_and_one_token_budget() {
    use crate::cost::{ALICE, llm_calls, llm_config, llm_upstream};
    let redis = RedisServer::start();
    let port = llm_upstream();
    let (guild_a, guild_b) = (Guild::new(), Guild::new());
    // 42 tokens an answer: three calls spend the fleet's budget.
    let text = llm_config(port, "token_budget = 126\nbudget_period_s = 3600");
    let (file_a, file_b) =
        (crate::daemon::config_file(guild_a.home(), &text), crate::daemon::config_file(guild_b.home(), &text));
    let a = Daemon::start(&guild_a, &["--config", &file_a, "--redis", &redis.url()], QUEUE_ENV);
    let b = Daemon::start(&guild_b, &["--config", &file_b, "--redis", &redis.url()], QUEUE_ENV);
    let cache = tempfile::tempdir().expect("cache");
    let _worker = Worker::start(&redis.url(), cache.path(), "w1", 2);
    let first = a.run(ALICE, llm_calls(port, 2)).json();
    assert_eq!(first["output"]["value"], 0, "{first}");
    let second = b.run(ALICE, llm_calls(port, 1)).json();
    assert_eq!(second["output"]["value"], 0, "{second}");
    // The worker charged 126 tokens to the budget the fleet shares: either node refuses now.
    for node in [&a, &b] {
        let refused = node.run(ALICE, llm_calls(port, 1));
        assert_eq!((refused.status, refused.code().as_str()), (429, "budget_exhausted"), "{refused:?}");
    }
    // Both nodes answer from one ledger: the two runs' costs, summed exactly.
    let total = |run: &serde_json::Value| -> rust_decimal::Decimal {
        run["cost"]["total"].as_str().expect("total").parse().expect("decimal")
    };
    let expected = (total(&first) + total(&second)).normalize().to_string();
    assert_eq!(expected, "0.000216", "3 × (12 × 0.000001 + 30 × 0.000002)");
    for node in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(15);
        let usage = loop {
            let usage = node.call("GET", "/v1/usage?group_by=tool", ALICE, "").json();
            if usage["rows"][0]["total"] == expected.as_str() || Instant::now() > deadline {
                break usage;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(usage["rows"][0]["total"], expected.as_str(), "{usage}");
        assert_eq!(usage["rows"][0]["runs"], 2, "{usage}");
        assert_eq!(usage["rows"][0]["by_resource"]["output_tokens"], "0.00018", "{usage}");
    }
    // The node that audited each job counted its tokens.
    let tokens: u64 = [&a, &b]
        .iter()
        .flat_map(|node| {
            let text = String::from_utf8_lossy(&node.call("GET", "/metrics", ALICE, "").body).to_string();
            text.lines()
                .filter(|l| l.starts_with("guild_tokens_total{") && l.contains(r#"kind="output""#))
                .filter_map(|l| l.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()))
                .collect::<Vec<_>>()
        })
        .sum();
    assert_eq!(tokens, 90, "3 calls × 30 output tokens, counted where audited");
}

#[test]
fn every_attempt_of_a_retried_job_is_charged_to_the_ledger_and_the_budget() {
    use crate::cost::ALICE;
    let (port, served) = flaky_upstream(1);
    let redis = RedisServer::start();
    let api = Guild::new();
    let text = format!(
        "[[tools]]\npath = \"{}\"\nallow_hosts = [\"http://127.0.0.1:{port}\"]\n\n[pricing]\ncurrency = \"USD\"\negress_request = \"1\"\n\n[[tenants]]\nname = \"alice\"\ntoken_blake3 = \"{}\"\ntools = [\"*\"]\ncost_budget = \"100000\"\nbudget_period_s = 3600\n",
        guild_test_artifacts::HTTP_GET,
        crate::daemon::token_digest(ALICE),
    );
    let file = crate::daemon::config_file(api.home(), &text);
    let daemon = Daemon::start(&api, &["--config", &file, "--redis", &redis.url()], QUEUE_ENV);
    let cache = tempfile::tempdir().expect("cache");
    let _worker = Worker::start(&redis.url(), cache.path(), "w", 1);
    let input = json!({"url": format!("http://127.0.0.1:{port}/value"), "json_pointer": "/value"});
    let body = daemon.run(ALICE, json!({"tool": "http-get", "input": input})).json();
    assert_eq!(body["status"], "succeeded", "{body}");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 2, "one 503, then the retry's 200");
    let id = body["id"].as_str().expect("id").to_string();
    wait_audited(&api, std::slice::from_ref(&id), Duration::from_secs(10));
    // Both attempts made a priced request: both records carry their cost.
    let costs: Vec<serde_json::Value> =
        audit_records(&api).iter().filter(|r| r["run"] == id.as_str()).map(|r| r["cost"]["total"].clone()).collect();
    assert_eq!(costs, [json!("1"), json!("1")], "each attempt's cost in its record");
    let deadline = Instant::now() + Duration::from_secs(10);
    let usage = loop {
        let usage = daemon.call("GET", "/v1/usage", ALICE, "").json();
        if usage["rows"][0]["runs"] == 2 || Instant::now() > deadline {
            break usage;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        (usage["rows"][0]["runs"].clone(), usage["rows"][0]["total"].clone()),
        (json!(2), json!("2")),
        "{usage}"
    );
    // And the budget kept both attempts once the reservation came back.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let key = format!("guild:{{default}}:budget:5:alice:{}", now / 3600 * 3600);
    let deadline = Instant::now() + Duration::from_secs(10);
    let spent = loop {
        let spent = redis.cli(&["HGET", &key, "m:tenant"]);
        if spent == "2" || Instant::now() > deadline {
            break spent;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(spent, "2", "both attempts charged, the reservation given back");
}

#[test]
fn the_queue_tells_an_autoscaler_how_many_workers_it_needs() {
    let redis = RedisServer::start();
    let api = Guild::new();
    let daemon = api_node(&api, &redis);
    let needed = |daemon: &Daemon| -> i64 {
        let text = String::from_utf8_lossy(&daemon.call("GET", "/metrics", TOKEN, "").body).to_string();
        text.lines()
            .find_map(|l| l.strip_prefix("guild_redis_workers_needed "))
            .and_then(|n| n.trim().parse().ok())
            .expect("guild_redis_workers_needed")
    };
    assert_eq!(needed(&daemon), 0, "nothing waits");
    let ids: Vec<String> = (0..3)
        .map(|i| submit(&daemon, &json!({"tool": "echo", "input": {"message": format!("m{i}")}, "async": true})))
        .collect();
    assert_eq!(needed(&daemon), 3, "three jobs wait and no worker runs: a slot each");
    // The autoscaler example reads this metric, and the lane's for GPU workers.
    let keda = include_str!("../../deploy/keda-scaledobject.yaml");
    assert!(keda.contains("max(guild_redis_workers_needed)"), "{keda}");
    assert!(keda.contains(r#"max(guild_redis_lane_workers_needed{lane="gpu"})"#), "{keda}");
    assert_eq!(metric(&daemon, r#"guild_redis_lane_workers_needed{lane="default"}"#), 3.0, "a slot each, no mean yet");
    let cache = tempfile::tempdir().expect("cache");
    let _worker = Worker::start(&redis.url(), cache.path(), "w", 4);
    for id in &ids {
        assert_eq!(daemon.wait_run(TOKEN, id)["status"], "succeeded");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while needed(&daemon) != 0 {
        assert!(Instant::now() < deadline, "an idle queue needs no worker busy");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `redis-server` replicating `master` (port), on a port of its own, in a directory of its
/// own (a replica writes the master's snapshot there); killed when dropped.
struct Replica(Child, u16, #[allow(dead_code, reason = "kept until the replica is gone")] tempfile::TempDir);

impl Replica {
    fn start(master: u16, port: u16) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--replicaof", "127.0.0.1", &master.to_string(), "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("redis-cli").args(["-p", &port.to_string(), "INFO", "replication"]).output();
            let text = out.map(|o| String::from_utf8_lossy(&o.stdout).to_string()).unwrap_or_default();
            if text.contains("master_link_status:up") {
                break;
            }
            assert!(Instant::now() < deadline, "the replica never synced: {text}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self(child, port, dir)
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-p", &self.1.to_string()]).args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Replica {
    /// SIGSTOP: still connected to its master, it confirms nothing.
    fn pause(&self) {
        assert!(Command::new("kill").args(["-STOP", &self.0.id().to_string()]).status().expect("kill").success());
    }

    /// SIGCONT.
    fn resume(&self) {
        let _ = Command::new("kill").args(["-CONT", &self.0.id().to_string()]).status();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `guild serve --redis` acknowledging a job once a replica has it (300 ms to confirm).
fn replica_durable_api_node(api: &Guild, redis: &RedisServer) -> Daemon {
    let env: Vec<(&str, &str)> = QUEUE_ENV
        .iter()
        .copied()
        .chain([("GUILD_REDIS__ACK_DURABILITY", "replica"), ("GUILD_REDIS__ACK_TIMEOUT_MS", "300")])
        .collect();
    Daemon::start(api, &["--redis", &redis.url(), "--tool", HOSTILE], &env)
}

#[test]
fn with_replica_durability_a_job_is_acknowledged_only_once_a_replica_has_it() {
    let redis = RedisServer::start();
    let replica_port = free_port();
    let replica = Replica::start(redis.port, replica_port);
    let api = Guild::new();
    let daemon = replica_durable_api_node(&api, &redis);
    let body = json!({"tool": "echo", "input": {"message": "kept twice"}, "async": true});
    for _ in 0..20 {
        let reply = daemon.run(TOKEN, body.clone());
        assert_eq!(reply.status, 202, "{}", String::from_utf8_lossy(&reply.body));
        let id = reply.json()["id"].as_str().expect("id").to_string();
        // Acknowledged: the replica has the job already, so losing the master now loses nothing.
        assert_eq!(replica.cli(&["EXISTS", &format!("{PREFIX}job:{id}")]), "1", "job {id} not on the replica");
    }
    // Without a replica nothing can be confirmed: refused fast, saying why, never hanging.
    drop(replica);
    let started = Instant::now();
    let refused = daemon.run(TOKEN, body.clone());
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!((refused.status, refused.code().as_str()), (503, "queue_unavailable"), "{refused:?}");
    assert!(refused.headers.contains_key("retry-after"));
    let says = String::from_utf8_lossy(&refused.body).to_string();
    assert!(says.contains("no replica confirmed") && says.contains("ack_durability"), "{says}");
    // A replica back: acknowledged again.
    let _replica = Replica::start(redis.port, replica_port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = daemon.run(TOKEN, body.clone());
        if reply.status == 202 {
            break;
        }
        assert!(Instant::now() < deadline, "never acknowledged again: {reply:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_second_live_worker_with_the_same_name_is_told_so() {
    let redis = RedisServer::start();
    let caches = [tempfile::tempdir().expect("cache"), tempfile::tempdir().expect("cache")];
    let _first = Worker::start(&redis.url(), caches[0].path(), "twin", 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.cli(&["HEXISTS", &format!("{PREFIX}workers"), "twin"]) != "1" {
        assert!(Instant::now() < deadline, "the first worker never sent a heartbeat");
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = Worker::start(&redis.url(), caches[1].path(), "twin", 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !second.log().contains("another worker with this name") {
        assert!(Instant::now() < deadline, "not told: {}", second.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `aof` waits for the master's fsync with `WAITAOF`, which Redis has from 7.2: on an older one
/// the API node refuses to start, naming what to change, rather than tell callers a job is
/// durable when it is not.
#[test]
fn aof_durability_on_a_redis_without_waitaof_says_what_to_change() {
    let redis = RedisServer::start();
    let version = redis.cli(&["INFO", "server"]);
    let version = version.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or_default().to_string();
    let major_minor: Vec<u32> = version.split('.').take(2).filter_map(|p| p.parse().ok()).collect();
    let api = Guild::new();
    let env: Vec<(&str, &str)> = QUEUE_ENV.iter().copied().chain([("GUILD_REDIS__ACK_DURABILITY", "aof")]).collect();
    if major_minor < vec![7, 2] {
        let out = api
            .command()
            .args(["serve", "--listen", "127.0.0.1:0", "--redis", &redis.url(), "--tool", HOSTILE])
            .envs(env.iter().copied())
            .output()
            .expect("guild serve");
        assert!(!out.status.success(), "started on Redis {version} with aof");
        let says = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(says.contains("Redis 7.2") && says.contains("ack_durability"), "{says}");
        assert!(says.contains("redis://127.0.0.1"), "names the Redis: {says}");
    } else {
        // The test servers run with appendonly yes: fsynced, so acknowledged.
        let daemon = Daemon::start(&api, &["--redis", &redis.url(), "--tool", HOSTILE], &env);
        let reply = daemon.run(TOKEN, json!({"tool": "echo", "input": {"message": "fsynced"}, "async": true}));
        assert_eq!(reply.status, 202, "{}", String::from_utf8_lossy(&reply.body));
    }
}

/// A `url` that points at a Redis Cluster node is named as such at start (not a `MOVED` later).
#[test]
fn a_url_pointing_at_a_cluster_node_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Its cluster bus listens on the port + 10000.
    let port = std::iter::repeat_with(free_port).find(|p| *p <= 55_535).expect("a port");
    let mut node = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--cluster-enabled", "yes"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    assert!(answers(port, Duration::from_secs(10)));
    let api = Guild::new();
    let out = api
        .command()
        .args(["serve", "--listen", "127.0.0.1:0", "--redis", &format!("redis://127.0.0.1:{port}/"), "--tool", HOSTILE])
        .envs(QUEUE_ENV.iter().copied())
        .output()
        .expect("guild serve");
    let _ = node.kill();
    let _ = node.wait();
    assert!(!out.status.success());
    let says = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(says.contains("is a Redis Cluster node") && says.contains("redis.cluster"), "{says}");
}

/// A wait covers only the writes made on the connection it is sent on. With the only replica
/// stopped (SIGSTOP: connected, confirming nothing) and every client connection killed over and
/// over (so the API node's durable connection keeps being replaced), no submission may be
/// acknowledged: a wait on a new connection must not vouch for a write made on the old one.
#[test]
fn a_wait_on_a_replaced_connection_never_confirms_a_write_made_on_the_old_one() {
    let redis = RedisServer::start();
    let replica = Replica::start(redis.port, free_port());
    let api = Guild::new();
    let daemon = replica_durable_api_node(&api, &redis);
    replica.pause();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let acknowledged: Vec<String> = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let submitters: Vec<_> = (0..20)
            .map(|t| {
                let daemon = &daemon;
                scope.spawn(move || {
                    let mut acknowledged = Vec::new();
                    for i in 0..15 {
                        let body = json!({"tool": "echo", "input": {"message": format!("{t}/{i}")}, "async": true});
                        let reply = daemon.run(TOKEN, body);
                        match reply.status {
                            202 | 200 => acknowledged.push(reply.json()["id"].as_str().unwrap_or_default().to_string()),
                            503 => assert_eq!(reply.code(), "queue_unavailable"),
                            other => panic!("{other}: {}", String::from_utf8_lossy(&reply.body)),
                        }
                    }
                    acknowledged
                })
            })
            .collect();
        let all = submitters.into_iter().flat_map(|s| s.join().expect("submitter")).collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        all
    });
    replica.resume();
    assert!(acknowledged.is_empty(), "acknowledged with no replica confirming: {acknowledged:?}");
}

/// Under `replica`, an attempt is audited only once a replica has it. The audit writer mostly
/// sits in a blocking read that a worker's completion wakes; the wait after that read must cover
/// the completion that woke it: with the only replica stopped, a job that ran is not audited
/// until the replica is back.
#[test]
fn an_attempt_is_audited_only_once_a_replica_has_it() {
    let redis = RedisServer::start();
    let replica = Replica::start(redis.port, free_port());
    let api = Guild::new();
    let daemon = replica_durable_api_node(&api, &redis);
    let cache = tempfile::tempdir().expect("cache");
    let _worker = Worker::start(&redis.url(), cache.path(), "w", 1);
    let first = submit(&daemon, &json!({"tool": "echo", "input": {"message": "before"}, "async": true}));
    assert_eq!(wait_audited(&api, std::slice::from_ref(&first), Duration::from_secs(30)).get(&first), Some(&1));
    // Let the audit writer settle into its blocking read, then stop the replica.
    std::thread::sleep(Duration::from_millis(700));
    replica.pause();
    let refused = daemon.run(TOKEN, json!({"tool": "echo", "input": {"message": "while stopped"}, "async": true}));
    assert_eq!(refused.status, 503, "{refused:?}");
    let says = String::from_utf8_lossy(&refused.body).to_string();
    let id =
        says.split("job ").nth(1).and_then(|rest| rest.split_whitespace().next()).expect("the job's id").to_string();
    // It runs all the same ("it may still run")...
    let deadline = Instant::now() + Duration::from_secs(20);
    while redis.cli(&["HGET", &format!("{PREFIX}job:{id}"), "state"]) != "done" {
        assert!(Instant::now() < deadline, "the job never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    // ...but no replica has its completion: not audited.
    std::thread::sleep(Duration::from_millis(1500));
    let audited = wait_audited(&api, std::slice::from_ref(&id), Duration::from_millis(10));
    replica.resume();
    assert!(!audited.contains_key(&id), "audited while no replica had it");
    // The replica back: audited, once.
    assert_eq!(wait_audited(&api, std::slice::from_ref(&id), Duration::from_secs(30)).get(&id), Some(&1));
}
