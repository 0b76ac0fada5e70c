//! The Redis queue. One stream per queue with the consumer group `workers`; every key under the
//! hash tag `guild:{<queue>}:` so a queue lives in one slot of a Redis Cluster; every step that
//! touches more than one key is one Lua script, so it is atomic. Key layout:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `jobs` | stream | one entry per delivery of a job (`job` = id); acked and deleted when settled |
//! | `job:<id>` | hash | `body` (the job JSON), `state`, `attempts`, `attempts_max`, `worker`, `entry`, `tenant`, `tool`, `idem`; expires with the result |
//! | `result:<id>` | string | the [`JobResult`] JSON, for `results_ttl_s` |
//! | `key:<tenant length>:<tenant>:<key>` | string | the job an idempotency key names; expires with the result |
//! | `delayed` | sorted set | job ids by the unix ms their retry is due |
//! | `dead` | stream | the dead-letter stream: job, tenant, tool, attempts, error, bundle |
//! | `done` | stream | every finished attempt (`kind` = completed, duplicate or dead) for the audit log; group `audit` |
//! | `stats` | hash | counters: completed, claims, retries, duplicates |
//! | `workers` | hash | worker name → its last heartbeat |
//! | `component:<blake3>` | string | component bytes, fetched by workers that lack them |
//! | `bundle:<blake3>` | string | a bundle archive, for `results_ttl_s` |

use crate::job::{
    Accepted, Completion, DeadJob, Disposition, Job, JobResult, JobState, JobStatus, Lease, QueueStats, WorkerStats,
    now_unix_ms,
};
use guild_breaker::{Breaker, BreakerSettings, Open};
use guild_replay::{Digest, Manifest, MemoryStore};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use redis::{RedisError, Script, Value};
use std::time::Duration;

/// Consumer group of the job stream.
const WORKERS_GROUP: &str = "workers";
/// Consumer group of the done stream.
const AUDIT_GROUP: &str = "audit";
/// A worker heartbeat older than this is not live.
const WORKER_LIVE_MS: u64 = 30_000;
/// A heartbeat older than this is removed.
const WORKER_FORGET_MS: u64 = 3_600_000;

/// How the Redis queue behaves. Every field has a name in the daemon's `[redis]` config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://host:port/db` (or `rediss://`, `unix://`).
    pub url: String,
    /// The queue's name: its keys live under `guild:{<queue>}:`.
    pub queue: String,
    /// A worker that has not renewed its lease for this long is taken to be dead and its job
    /// is handed to another (ms).
    pub lease_ms: u64,
    /// Attempts a job gets before it goes to the dead-letter stream.
    pub attempts_max: u32,
    /// First retry's backoff (ms); doubles per attempt, with jitter.
    pub backoff_base_ms: u64,
    /// Longest backoff (ms).
    pub backoff_max_ms: u64,
    /// How long results, finished jobs, idempotency keys and bundles are kept (s).
    pub results_ttl_s: u64,
    /// How long dead jobs are kept for `guild jobs retry` (s).
    pub dead_ttl_s: u64,
    /// Entries the dead-letter stream keeps (oldest trimmed first).
    pub dead_kept_max: u64,
    /// Entries the done stream keeps while no API node audits them (oldest trimmed first).
    pub done_kept_max: u64,
    /// After a connection failure, callers get 503 at once for this long (ms).
    pub breaker_open_ms: u64,
    /// A command that takes longer than this fails (ms).
    pub response_timeout_ms: u64,
    /// Bundles up to this size go to Redis for every node to serve (bytes).
    pub bundle_inline_bytes_max: u64,
}

impl RedisSettings {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            queue: "default".into(),
            lease_ms: 30_000,
            attempts_max: 5,
            backoff_base_ms: 1_000,
            backoff_max_ms: 60_000,
            results_ttl_s: 86_400,
            dead_ttl_s: 7 * 86_400,
            dead_kept_max: 100_000,
            done_kept_max: 100_000,
            breaker_open_ms: 1_000,
            response_timeout_ms: 3_000,
            bundle_inline_bytes_max: 8 * 1024 * 1024,
        }
    }
}

/// Why a queue call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// Redis cannot be reached (or the circuit is open): retry later.
    #[error("the job queue (Redis) is unavailable: {error}; retry after {retry_after_s} s")]
    Unavailable {
        /// What failed.
        error: String,
        /// Seconds until worth retrying.
        retry_after_s: u64,
    },
    /// Redis answered with an error.
    #[error("Redis refused a queue command: {0}")]
    Redis(String),
    /// Something in Redis is not what Guild wrote.
    #[error("the job queue holds unreadable data: {0}")]
    Corrupt(String),
    /// The settings are wrong (a URL that does not parse).
    #[error("redis settings: {0}")]
    Settings(String),
}

impl QueueError {
    /// True when the failure is the connection's: worth waiting and retrying.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(e.code(), Some("LOADING" | "TRYAGAIN" | "MASTERDOWN" | "READONLY" | "CLUSTERDOWN"))
}

fn from_redis(e: RedisError) -> QueueError {
    if is_connection_error(&e) {
        QueueError::Unavailable { error: e.to_string(), retry_after_s: 1 }
    } else {
        QueueError::Redis(e.to_string())
    }
}

impl From<Open> for QueueError {
    fn from(open: Open) -> Self {
        QueueError::Unavailable { retry_after_s: open.retry_after_s(), error: open.last_error }
    }
}

/// Bytes of a corrupt done entry kept in the dead-letter stream, for a person to look at.
const CORRUPT_RAW_BYTES_KEPT: usize = 4096;

/// At most `bytes` of `text`, on a character boundary.
fn clip(text: &str, bytes: usize) -> String {
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// One entry of the done stream: a finished attempt, or one that cannot be read.
#[derive(Debug, Clone, PartialEq)]
pub enum DoneRead {
    /// A finished attempt.
    Entry(Box<DoneEntry>),
    /// An entry whose result does not parse (written by another version, or damaged).
    Corrupt {
        /// The stream entry.
        entry: String,
        /// Why it cannot be read.
        reason: String,
        /// The start of what it holds.
        raw: String,
    },
}

/// A finished attempt read from the done stream by an API node's audit writer.
#[derive(Debug, Clone, PartialEq)]
pub struct DoneEntry {
    /// The stream entry; pass it to [`RedisQueue::ack_done`] once audited.
    pub entry: String,
    /// `completed`, `duplicate`, `retried` or `dead`.
    pub kind: String,
    /// The attempt's result.
    pub result: JobResult,
}

struct Scripts {
    submit: Script,
    start: Script,
    renew: Script,
    complete: Script,
    fail: Script,
    promote: Script,
    requeue: Script,
}

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(include_str!("lua/common.lua"), include_str!(concat!("lua/", $file))))
    };
}

impl Scripts {
    fn new() -> Self {
        Self {
            submit: script!("submit.lua"),
            start: script!("start.lua"),
            renew: script!("renew.lua"),
            complete: script!("complete.lua"),
            fail: script!("fail.lua"),
            promote: script!("promote.lua"),
            requeue: script!("requeue.lua"),
        }
    }
}

/// The queue's key names.
struct Keys {
    prefix: String,
}

impl Keys {
    fn new(queue: &str) -> Self {
        Self { prefix: format!("guild:{{{queue}}}:") }
    }
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
    fn job_prefix(&self) -> String {
        self.key("job:")
    }
    fn job(&self, id: &str) -> String {
        format!("{}job:{id}", self.prefix)
    }
    fn result(&self, id: &str) -> String {
        format!("{}result:{id}", self.prefix)
    }
    /// The tenant's name is length-prefixed: tenant `a` with key `b:c` and tenant `a:b` with key
    /// `c` must not name the same job.
    fn idempotency(&self, tenant: &str, key: &str) -> String {
        format!("{}key:{}:{tenant}:{key}", self.prefix, tenant.len())
    }
    fn blob(&self, digest: &Digest) -> String {
        format!("{}blob:{digest}", self.prefix)
    }
    fn bundle(&self, digest: &Digest) -> String {
        format!("{}bundle:{digest}", self.prefix)
    }
}

/// A connection to one queue in Redis. Cheap to clone; reconnects on its own.
#[derive(Clone)]
pub struct RedisQueue {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    settings: RedisSettings,
    keys: Keys,
    scripts: Scripts,
    /// Commands that answer at once.
    conn: ConnectionManager,
    /// Blocking reads (XREADGROUP BLOCK), which would hold up everything behind them on `conn`.
    blocking: ConnectionManager,
    breaker: std::sync::Arc<Breaker>,
}

fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
}

impl RedisQueue {
    /// Connect lazily: nothing is sent until the first command, so a worker or daemon can
    /// start while Redis is down. Fails only for a URL that does not parse. Call it within a
    /// tokio runtime (the connections' tasks are spawned on it).
    pub fn open(settings: RedisSettings) -> Result<Self, QueueError> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| QueueError::Settings(format!("url {:?}: {e}", settings.url)))?;
        let timeout = Duration::from_millis(settings.response_timeout_ms);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config(timeout))
            .map_err(|e| QueueError::Settings(e.to_string()))?;
        // A blocking read waits up to a few seconds on the server; allow for that.
        let blocking =
            ConnectionManager::new_lazy_with_config(client.clone(), manager_config(timeout + Duration::from_secs(10)))
                .map_err(|e| QueueError::Settings(e.to_string()))?;
        // One failed call opens the circuit: callers get a fast 503 rather than each waiting
        // out a connection timeout.
        let breaker = Breaker::new(BreakerSettings {
            failures_to_open: 1,
            open_for: Duration::from_millis(settings.breaker_open_ms),
        });
        let keys = Keys::new(&settings.queue);
        Ok(Self {
            inner: std::sync::Arc::new(Inner {
                client,
                settings,
                keys,
                scripts: Scripts::new(),
                conn,
                blocking,
                breaker,
            }),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &RedisSettings {
        &self.inner.settings
    }

    /// True while callers are refused fast because Redis failed.
    pub fn is_circuit_open(&self) -> bool {
        self.inner.breaker.is_open()
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// Run `call` behind the circuit breaker: the API's calls, which must answer fast. A call
    /// whose future is dropped (its client went away) and was the breaker's probe counts as a
    /// failure, so the breaker probes again later instead of refusing for ever.
    async fn guarded<T>(&self, call: impl Future<Output = Result<T, QueueError>>) -> Result<T, QueueError> {
        let attempt = self.inner.breaker.admit()?;
        let result = call.await;
        match &result {
            Err(QueueError::Unavailable { error, .. }) => attempt.failed(error),
            _ => attempt.succeeded(),
        }
        result
    }

    /// Is Redis answering? (Behind the breaker: `/readyz` asks this.)
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.guarded(async {
            let _: String = redis::cmd("PING").query_async(&mut self.conn()).await.map_err(from_redis)?;
            Ok(())
        })
        .await
    }

    /// Create the consumer groups (and their streams) unless they exist. Safe to repeat; done
    /// again after an error says a group is missing (a Redis that restarted without its data).
    pub async fn ensure_groups(&self) -> Result<(), QueueError> {
        let keys = &self.inner.keys;
        for (stream, group) in [(keys.key("jobs"), WORKERS_GROUP), (keys.key("done"), AUDIT_GROUP)] {
            let created: Result<String, RedisError> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&stream)
                .arg(group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut self.conn())
                .await;
            match created {
                Ok(_) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(from_redis(e)),
            }
        }
        Ok(())
    }

    /// Put a job in the queue, unless its tenant's idempotency key (or its id) already names
    /// one. Only a job Redis has taken is acknowledged.
    pub async fn submit(&self, job: &Job) -> Result<Accepted, QueueError> {
        let keys = &self.inner.keys;
        let body = serde_json::to_string(job).map_err(|e| QueueError::Corrupt(e.to_string()))?;
        let mut invocation = self.inner.scripts.submit.key(keys.key("jobs"));
        invocation.key(keys.job(&job.id));
        if let Some(key) = &job.idempotency_key {
            invocation.key(keys.idempotency(&job.tenant, key));
        }
        invocation
            .arg(&job.id)
            .arg(body)
            .arg(&job.tenant)
            .arg(&job.tool)
            .arg(job.attempts_max)
            .arg(job.input_digest.to_hex());
        self.guarded(async {
            let (new, id): (i64, String) = invocation.invoke_async(&mut self.conn()).await.map_err(from_redis)?;
            Ok(Accepted { id, existing: new == 0 })
        })
        .await
    }

    /// A job's state and, once finished, its result; `None` for an unknown (or expired) job.
    pub async fn status(&self, id: &str) -> Result<Option<JobStatus>, QueueError> {
        let keys = &self.inner.keys;
        self.guarded(async {
            let mut pipe = redis::pipe();
            pipe.cmd("HMGET").arg(keys.job(id)).arg(&["state", "attempts", "tenant", "tool", "input"]);
            pipe.cmd("GET").arg(keys.result(id));
            let ((state, attempts, tenant, tool, input), result): (JobFields, Option<String>) =
                pipe.query_async(&mut self.conn()).await.map_err(from_redis)?;
            let result = result.map(|text| parse_result(&text)).transpose()?;
            let (Some(state), Some(tenant), Some(tool)) = (state, tenant, tool) else {
                // The job hash can expire a moment before its result: the result still answers.
                return Ok(result.map(|result| JobStatus {
                    tenant: result.tenant.clone(),
                    tool: result.tool.clone(),
                    input_digest: Some(result.input_digest),
                    state: if result.status == "dead" { JobState::Dead } else { JobState::Done },
                    attempts: result.attempt,
                    result: Some(result),
                }));
            };
            let state = JobState::parse(&state).ok_or_else(|| QueueError::Corrupt(format!("job state {state:?}")))?;
            let input_digest = input.and_then(|hex| hex.parse().ok());
            Ok(Some(JobStatus { tenant, tool, input_digest, state, attempts: attempts.unwrap_or(0), result }))
        })
        .await
    }

    /// Wait up to `block` for new jobs for `worker`, at most `count`, and start them.
    pub async fn take(&self, worker: &str, count: usize, block: Duration) -> Result<Vec<Lease>, QueueError> {
        let keys = &self.inner.keys;
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(WORKERS_GROUP)
            .arg(worker)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(keys.key("jobs"))
            .arg(">")
            .query_async(&mut self.inner.blocking.clone())
            .await
            .map_err(from_redis)?;
        let delivered: Vec<(String, String)> = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|entry| {
                let id = entry.get::<String>("job").unwrap_or_default();
                (entry.id, id)
            })
            .collect();
        self.start(worker, &delivered, false).await
    }

    /// Take over jobs whose worker has not renewed its lease for `lease_ms` (it died), looking
    /// through the pending entries from `cursor` (`0-0` at first); returns the leases and where
    /// to look next time (`0-0` once the whole list was seen), so no entry is out of reach
    /// however many live ones come before it.
    pub async fn reclaim(&self, worker: &str, count: usize, cursor: &str) -> Result<(Vec<Lease>, String), QueueError> {
        let keys = &self.inner.keys;
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(keys.key("jobs"))
            .arg(WORKERS_GROUP)
            .arg(worker)
            .arg(self.inner.settings.lease_ms)
            .arg(cursor)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn())
            .await
            .map_err(from_redis)?;
        let claimed: Vec<(String, String)> =
            reply.claimed.into_iter().map(|e| (e.id.clone(), e.get::<String>("job").unwrap_or_default())).collect();
        Ok((self.start(worker, &claimed, true).await?, reply.next_stream_id))
    }

    async fn start(&self, worker: &str, entries: &[(String, String)], claimed: bool) -> Result<Vec<Lease>, QueueError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let keys = &self.inner.keys;
        let mut invocation = self.inner.scripts.start.key(keys.key("jobs"));
        invocation.key(keys.key("stats")).arg(worker).arg(keys.job_prefix()).arg(if claimed { "1" } else { "0" });
        for (entry, id) in entries {
            invocation.arg(entry).arg(id);
        }
        let started: Vec<(String, String, u32, u32)> =
            invocation.invoke_async(&mut self.conn()).await.map_err(from_redis)?;
        started
            .into_iter()
            .map(|(entry, body, attempt, _)| {
                let job: Job =
                    serde_json::from_str(&body).map_err(|e| QueueError::Corrupt(format!("job body: {e}")))?;
                Ok(Lease { job, entry, attempt })
            })
            .collect()
    }

    /// Keep holding a running job; false when the lease was lost (another worker took it).
    pub async fn renew(&self, worker: &str, lease: &Lease) -> Result<bool, QueueError> {
        let keys = &self.inner.keys;
        let held: i64 = self
            .inner
            .scripts
            .renew
            .key(keys.key("jobs"))
            .key(keys.job(&lease.job.id))
            .arg(&lease.entry)
            .arg(worker)
            .invoke_async(&mut self.conn())
            .await
            .map_err(from_redis)?;
        Ok(held == 1)
    }

    /// `script` with the keys every settling script starts with: stream, job, result, done
    /// stream, stats.
    fn settling<'a>(&'a self, script: &'a Script, id: &str) -> redis::ScriptInvocation<'a> {
        let keys = &self.inner.keys;
        let mut invocation = script.key(keys.key("jobs"));
        invocation.key(keys.job(id)).key(keys.result(id)).key(keys.key("done")).key(keys.key("stats"));
        invocation
    }

    /// The attempt finished (output or a deterministic failure): settle the job with `result`.
    pub async fn complete(&self, worker: &str, lease: &Lease, result: &JobResult) -> Result<Completion, QueueError> {
        let keys = &self.inner.keys;
        let settings = &self.inner.settings;
        let text = serde_json::to_string(result).map_err(|e| QueueError::Corrupt(e.to_string()))?;
        let said: String = self
            .settling(&self.inner.scripts.complete, &lease.job.id)
            .arg(&lease.entry)
            .arg(worker)
            .arg(text)
            .arg(settings.results_ttl_s)
            .arg(settings.done_kept_max)
            .arg(keys.key("finished"))
            .arg(&lease.job.id)
            .invoke_async(&mut self.conn())
            .await
            .map_err(from_redis)?;
        Ok(if said == "recorded" { Completion::Recorded } else { Completion::Duplicate })
    }

    /// The attempt (`attempt`, its result) failed in a way worth retrying: back off
    /// (`delay_ms`), or, on the last attempt, bury the job in the dead-letter stream with
    /// `last` (status `dead`) as its result. Either way the attempt goes to the done stream.
    pub async fn fail(
        &self,
        worker: &str,
        lease: &Lease,
        delay_ms: u64,
        attempt: &JobResult,
        last: &JobResult,
    ) -> Result<Disposition, QueueError> {
        let keys = &self.inner.keys;
        let settings = &self.inner.settings;
        let text = serde_json::to_string(last).map_err(|e| QueueError::Corrupt(e.to_string()))?;
        let attempt = serde_json::to_string(attempt).map_err(|e| QueueError::Corrupt(e.to_string()))?;
        let now = now_unix_ms();
        let said: String = self
            .settling(&self.inner.scripts.fail, &lease.job.id)
            .key(keys.key("delayed"))
            .key(keys.key("dead"))
            .arg(&lease.entry)
            .arg(worker)
            .arg(&lease.job.id)
            .arg(now + delay_ms)
            .arg(text)
            .arg(settings.results_ttl_s)
            .arg(settings.dead_ttl_s)
            .arg(settings.done_kept_max)
            .arg(settings.dead_kept_max)
            .arg(last.error.to_string())
            .arg(last.bundle.map(|b| b.to_hex()).unwrap_or_default())
            .arg(now)
            .arg(keys.key("finished"))
            .arg(attempt)
            .invoke_async(&mut self.conn())
            .await
            .map_err(from_redis)?;
        Ok(match said.as_str() {
            "retry" => Disposition::Retry { delay_ms },
            "dead" => Disposition::Dead,
            _ => Disposition::Duplicate,
        })
    }

    /// Move retries whose backoff is over back into the stream; returns how many.
    pub async fn promote(&self) -> Result<u64, QueueError> {
        let keys = &self.inner.keys;
        self.inner
            .scripts
            .promote
            .key(keys.key("delayed"))
            .key(keys.key("jobs"))
            .arg(now_unix_ms())
            .arg(256)
            .arg(keys.job_prefix())
            .invoke_async(&mut self.conn())
            .await
            .map_err(from_redis)
    }

    /// The dead-letter stream, oldest first, at most `count`.
    pub async fn dead(&self, count: usize) -> Result<Vec<DeadJob>, QueueError> {
        let keys = &self.inner.keys;
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(keys.key("dead"))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn())
            .await
            .map_err(from_redis)?;
        Ok(reply
            .ids
            .into_iter()
            .map(|entry| DeadJob {
                id: entry.get("job").unwrap_or_default(),
                tenant: entry.get("tenant").unwrap_or_default(),
                tool: entry.get("tool").unwrap_or_default(),
                attempts: entry.get("attempts").unwrap_or_default(),
                error: entry
                    .get::<String>("error")
                    .and_then(|text| serde_json::from_str(&text).ok())
                    .unwrap_or_default(),
                bundle: entry.get::<String>("bundle").and_then(|hex| hex.parse::<Digest>().ok()),
                dead_unix_ms: entry.get("time").unwrap_or_default(),
            })
            .collect())
    }

    /// Put a dead job back in the queue with fresh attempts; false when it is not dead.
    pub async fn requeue(&self, id: &str) -> Result<bool, QueueError> {
        let keys = &self.inner.keys;
        let moved: i64 = self
            .inner
            .scripts
            .requeue
            .key(keys.key("jobs"))
            .key(keys.job(id))
            .key(keys.result(id))
            .key(keys.key("dead"))
            .arg(id)
            .invoke_async(&mut self.conn())
            .await
            .map_err(from_redis)?;
        Ok(moved == 1)
    }

    /// Counts for metrics (each one cheap: lengths and counters).
    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        let keys = &self.inner.keys;
        self.guarded(async {
            let mut pipe = redis::pipe();
            pipe.cmd("XLEN").arg(keys.key("jobs"));
            pipe.cmd("XPENDING").arg(keys.key("jobs")).arg(WORKERS_GROUP);
            pipe.cmd("ZCARD").arg(keys.key("delayed"));
            pipe.cmd("XLEN").arg(keys.key("dead"));
            pipe.cmd("HGETALL").arg(keys.key("stats"));
            pipe.cmd("HGETALL").arg(keys.key("workers"));
            let (length, pending, delayed, dead, counters, workers): (
                u64,
                Value,
                u64,
                u64,
                std::collections::HashMap<String, u64>,
                std::collections::HashMap<String, String>,
            ) = pipe.query_async(&mut self.conn()).await.map_err(from_redis)?;
            let pending = match pending {
                Value::Array(items) => match items.first() {
                    Some(Value::Int(n)) => *n as u64,
                    _ => 0,
                },
                _ => 0,
            };
            let now = now_unix_ms();
            let mut live = Vec::new();
            let mut forget = Vec::new();
            for (name, text) in workers {
                let Ok(stats) = serde_json::from_str::<WorkerStats>(&text) else { continue };
                let age = now.saturating_sub(stats.seen_unix_ms);
                if age <= WORKER_LIVE_MS {
                    live.push(stats);
                } else if age > WORKER_FORGET_MS {
                    forget.push(name);
                }
            }
            if !forget.is_empty() {
                let _: Result<i64, _> =
                    redis::cmd("HDEL").arg(keys.key("workers")).arg(forget).query_async(&mut self.conn()).await;
            }
            live.sort_by(|a, b| a.name.cmp(&b.name));
            let counter = |name: &str| counters.get(name).copied().unwrap_or(0);
            Ok(QueueStats {
                depth: length.saturating_sub(pending),
                pending,
                delayed,
                dead,
                claims: counter("claims"),
                retries: counter("retries"),
                completed: counter("completed"),
                duplicates: counter("duplicates"),
                workers: live,
            })
        })
        .await
    }

    /// A worker says it is alive, and how much it has done.
    pub async fn heartbeat(&self, stats: &WorkerStats) -> Result<(), QueueError> {
        let text = serde_json::to_string(stats).map_err(|e| QueueError::Corrupt(e.to_string()))?;
        let _: i64 = redis::cmd("HSET")
            .arg(self.inner.keys.key("workers"))
            .arg(&stats.name)
            .arg(text)
            .query_async(&mut self.conn())
            .await
            .map_err(from_redis)?;
        Ok(())
    }

    /// Make a component available to every worker, as a blob kept without expiry (components
    /// are few; bundles that include one share it).
    pub async fn put_component(&self, digest: &Digest, bytes: &[u8]) -> Result<(), QueueError> {
        let key = self.inner.keys.blob(digest);
        self.guarded(async {
            let _: String =
                redis::cmd("SET").arg(key).arg(bytes).query_async(&mut self.conn()).await.map_err(from_redis)?;
            Ok(())
        })
        .await
    }

    /// A component's bytes, checked against its digest; `None` when Redis does not hold it.
    pub async fn get_component(&self, digest: &Digest) -> Result<Option<Vec<u8>>, QueueError> {
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.inner.keys.blob(digest))
            .query_async(&mut self.conn())
            .await
            .map_err(from_redis)?;
        match bytes {
            Some(bytes) if Digest::of(&bytes) != *digest => {
                Err(QueueError::Corrupt(format!("component {digest} in Redis does not hash to its name")))
            }
            other => Ok(other),
        }
    }

    /// Which of these blobs Redis holds; those it holds are kept at least `results_ttl_s` more
    /// (blobs kept without expiry, such as components, stay so).
    pub async fn keep_blobs(&self, digests: &[Digest]) -> Result<Vec<bool>, QueueError> {
        let ttl = self.inner.settings.results_ttl_s;
        let mut pipe = redis::pipe();
        for digest in digests {
            let key = self.inner.keys.blob(digest);
            pipe.cmd("EXISTS").arg(&key);
            pipe.cmd("EXPIRE").arg(&key).arg(ttl).arg("GT").ignore();
        }
        let exists: Vec<i64> = pipe.query_async(&mut self.conn()).await.map_err(from_redis)?;
        Ok(exists.into_iter().map(|e| e == 1).collect())
    }

    /// Keep a bundle for every node to serve, for `results_ttl_s`: its parts Redis lacks
    /// (`blobs`, content-addressed, so bundles share them), then its manifest and signature.
    pub async fn put_bundle(
        &self,
        id: &Digest,
        manifest: &[u8],
        signature: &[u8],
        blobs: &[(Digest, Vec<u8>)],
    ) -> Result<(), QueueError> {
        let ttl = self.inner.settings.results_ttl_s;
        let mut pipe = redis::pipe();
        for (digest, bytes) in blobs {
            pipe.cmd("SET").arg(self.inner.keys.blob(digest)).arg(bytes).arg("EX").arg(ttl).ignore();
        }
        let key = self.inner.keys.bundle(id);
        pipe.cmd("HSET").arg(&key).arg("manifest").arg(manifest).arg("signature").arg(signature).ignore();
        pipe.cmd("EXPIRE").arg(&key).arg(ttl).ignore();
        let () = pipe.query_async(&mut self.conn()).await.map_err(from_redis)?;
        Ok(())
    }

    /// A bundle some worker left: its manifest, signature and parts (each checked when read);
    /// `None` when Redis does not hold it (or lost a part).
    pub async fn get_bundle(&self, id: &Digest) -> Result<Option<(Vec<u8>, Vec<u8>, MemoryStore)>, QueueError> {
        let key = self.inner.keys.bundle(id);
        self.guarded(async {
            let (manifest, signature): (Option<Vec<u8>>, Option<Vec<u8>>) = redis::cmd("HMGET")
                .arg(&key)
                .arg("manifest")
                .arg("signature")
                .query_async(&mut self.conn())
                .await
                .map_err(from_redis)?;
            let (Some(manifest), Some(signature)) = (manifest, signature) else { return Ok(None) };
            let parsed: Manifest =
                serde_json::from_slice(&manifest).map_err(|e| QueueError::Corrupt(format!("bundle {id}: {e}")))?;
            let digests: Vec<Digest> = parsed.parts().map(|part| part.digest).collect();
            let keys: Vec<String> = digests.iter().map(|d| self.inner.keys.blob(d)).collect();
            let blobs: Vec<Option<Vec<u8>>> =
                redis::cmd("MGET").arg(keys).query_async(&mut self.conn()).await.map_err(from_redis)?;
            let store = MemoryStore::default();
            for (digest, bytes) in digests.into_iter().zip(blobs) {
                let Some(bytes) = bytes else { return Ok(None) };
                store.insert_unchecked(digest, bytes);
            }
            Ok(Some((manifest, signature, store)))
        })
        .await
    }

    /// Finished attempts for this API node's audit log: first its own unacknowledged ones
    /// (after a restart), those another node left for `idle` (it died), then new ones.
    pub async fn read_done(&self, consumer: &str, count: usize, block: Duration) -> Result<Vec<DoneRead>, QueueError> {
        let stream = self.inner.keys.key("done");
        let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&stream)
            .arg(AUDIT_GROUP)
            .arg(consumer)
            .arg(self.inner.settings.lease_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn())
            .await
            .map_err(from_redis)?;
        let mut entries = claimed.claimed;
        if entries.is_empty() {
            let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(AUDIT_GROUP)
                .arg(consumer)
                .arg("COUNT")
                .arg(count)
                .arg("BLOCK")
                .arg(block.as_millis() as u64)
                .arg("STREAMS")
                .arg(&stream)
                .arg(">")
                .query_async(&mut self.inner.blocking.clone())
                .await
                .map_err(from_redis)?;
            entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
        }
        Ok(entries
            .into_iter()
            .map(|entry| {
                let text: String = entry.get("result").unwrap_or_default();
                match parse_result(&text) {
                    Ok(result) => DoneRead::Entry(Box::new(DoneEntry {
                        kind: entry.get("kind").unwrap_or_default(),
                        result,
                        entry: entry.id,
                    })),
                    Err(e) => DoneRead::Corrupt {
                        entry: entry.id,
                        reason: e.to_string(),
                        raw: clip(&text, CORRUPT_RAW_BYTES_KEPT),
                    },
                }
            })
            .collect())
    }

    /// Move a done-stream entry that cannot be read to the dead-letter stream (with why, and
    /// the start of what it held) and acknowledge it, so the audit writer goes on.
    pub async fn bury_done(&self, entry: &str, reason: &str, raw: &str) -> Result<(), QueueError> {
        let keys = &self.inner.keys;
        let done = keys.key("done");
        let error = serde_json::json!({ "status": "corrupt_done_entry", "message": reason }).to_string();
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("XADD")
            .arg(keys.key("dead"))
            .arg("MAXLEN")
            .arg("~")
            .arg(self.inner.settings.dead_kept_max)
            .arg("*")
            .arg(&[("job", entry), ("kind", "corrupt_done_entry"), ("error", error.as_str()), ("raw", raw)])
            .arg(&[("time", now_unix_ms())])
            .ignore();
        pipe.cmd("XACK").arg(&done).arg(AUDIT_GROUP).arg(entry).ignore();
        pipe.cmd("XDEL").arg(&done).arg(entry).ignore();
        let () = pipe.query_async(&mut self.conn()).await.map_err(from_redis)?;
        Ok(())
    }

    /// The audit records of these entries are on disk: acknowledge and remove them.
    pub async fn ack_done(&self, entries: &[String]) -> Result<(), QueueError> {
        if entries.is_empty() {
            return Ok(());
        }
        let stream = self.inner.keys.key("done");
        let mut pipe = redis::pipe();
        pipe.cmd("XACK").arg(&stream).arg(AUDIT_GROUP).arg(entries).ignore();
        pipe.cmd("XDEL").arg(&stream).arg(entries).ignore();
        let () = pipe.query_async(&mut self.conn()).await.map_err(from_redis)?;
        Ok(())
    }
}

/// `state`, `attempts`, `tenant`, `tool`, `input` of a job hash.
type JobFields = (Option<String>, Option<u32>, Option<String>, Option<String>, Option<String>);

impl RedisQueue {
    /// Send the id of every job that gets its result (completed or dead) to `notices`, until
    /// the connection drops (then an error: subscribe again, and look for what was missed).
    /// A notice that does not fit in `notices` is dropped: the caller's periodic sweep of all
    /// awaited results finds that job anyway.
    pub async fn listen_finished(&self, notices: &tokio::sync::mpsc::Sender<String>) -> Result<(), QueueError> {
        use futures_util::StreamExt;
        let mut pubsub = self.inner.client.get_async_pubsub().await.map_err(from_redis)?;
        pubsub.subscribe(self.inner.keys.key("finished")).await.map_err(from_redis)?;
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            if let Ok(id) = message.get_payload::<String>() {
                match notices.try_send(id) {
                    Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {}
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                }
            }
        }
        Err(QueueError::Unavailable { error: "the notice subscription was dropped".into(), retry_after_s: 1 })
    }

    /// Which of these jobs Redis still knows (a job hash or a result), one round trip per
    /// thousand: an awaited job it no longer knows expired before its result was read.
    pub async fn known(&self, ids: &[String]) -> Result<Vec<bool>, QueueError> {
        let mut known = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1_000) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("EXISTS").arg(self.inner.keys.job(id)).arg(self.inner.keys.result(id));
            }
            let counts: Vec<u32> = pipe.query_async(&mut self.conn()).await.map_err(from_redis)?;
            known.extend(counts.into_iter().map(|n| n > 0));
        }
        Ok(known)
    }

    /// The results of these jobs, where they have one (one round trip per thousand).
    pub async fn results(&self, ids: &[String]) -> Result<Vec<Option<JobResult>>, QueueError> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1_000) {
            let keys: Vec<String> = chunk.iter().map(|id| self.inner.keys.result(id)).collect();
            let texts: Vec<Option<String>> =
                redis::cmd("MGET").arg(keys).query_async(&mut self.conn()).await.map_err(from_redis)?;
            for text in texts {
                found.push(text.map(|t| parse_result(&t)).transpose()?);
            }
        }
        Ok(found)
    }
}

fn parse_result(text: &str) -> Result<JobResult, QueueError> {
    serde_json::from_str(text).map_err(|e| QueueError::Corrupt(format!("job result: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_of_different_tenants_never_collide() {
        let keys = Keys::new("default");
        assert_ne!(keys.idempotency("a", "b:c"), keys.idempotency("a:b", "c"));
        assert_ne!(keys.idempotency("ab", "c"), keys.idempotency("a", "bc"));
    }

    /// Redis Cluster hashes only what is between the first `{` and `}`: every key of a queue
    /// must carry the same tag, or a script touching two of them fails with CROSSSLOT.
    #[test]
    fn every_key_of_a_queue_shares_one_hash_tag() {
        let keys = Keys::new("default");
        let digest = Digest::of(b"x");
        let all = [
            keys.key("jobs"),
            keys.key("done"),
            keys.key("dead"),
            keys.key("delayed"),
            keys.key("stats"),
            keys.key("workers"),
            keys.key("finished"),
            keys.job("abc"),
            keys.result("abc"),
            keys.idempotency("tenant", "key{with}braces"),
            keys.blob(&digest),
            keys.bundle(&digest),
            format!("{}abc", keys.job_prefix()),
        ];
        for key in all {
            let tag = key.split_once('{').and_then(|(_, rest)| rest.split_once('}')).map(|(tag, _)| tag);
            assert_eq!(tag, Some("default"), "{key}");
        }
    }

    #[test]
    fn connection_failures_are_unavailable_and_urls_are_checked() {
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(from_redis(refused).is_unavailable());
        let e = RedisQueue::open(RedisSettings::new("not a url")).err().expect("refused");
        assert!(matches!(e, QueueError::Settings(_)), "{e}");
    }
}
