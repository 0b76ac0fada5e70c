//! The Redis queue. Jobs wait in capability lanes, taken in priority and fair-turn order
//! (`lanes.rs`) by a worker reading the lanes it can serve; a job taken gets an entry in the
//! queue's stream, pending in the consumer group `workers` (its lease); every key under the
//! hash tag `guild:{<queue>}:` so a queue lives in one slot of a Redis Cluster; every step that
//! touches more than one key is one Lua script, so it is atomic. Key layout:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `leases` | stream | one entry per attempt of a job (`job` = id), added and leased to its worker (pending in group `workers`) when the worker takes it; acked and deleted when settled |
//! | `jobs` | stream | an earlier version's queue (jobs waited in it, read by `XREADGROUP`): workers move what it still holds into the lanes (`migrate_legacy`) |
//! | `job:<id>` | hash | `body` (the job JSON), `state`, `attempts`, `attempts_max`, `worker`, `entry`, `tenant`, `subject`, `tool`, `input` (its digest), `idem`, `dead_entry`, `lane`, `prio`, `agent`, `cancel` (0, or 1 once a cancel was asked for; absent in a hash an earlier version wrote); expires with the result |
//! | `lane:<len>:<lane>:…` | sorted set, lists, hash | the jobs queued in a capability lane: its priorities with jobs, per priority the tenants' turns and credits, per tenant its agents' turns, per agent its job ids (`lua/common.lua`) |
//! | `lanes` | hash | lane → its needs (JSON); at most `LANES_MAX` |
//! | `lanes:depth` | hash | lane → jobs queued in it |
//! | `lanes:served:<lane>` | sorted set | the workers reading a lane, by their last heartbeat (ms); a stopping worker leaves |
//! | `weights` | hash | tenant → its weight (jobs per turn) |
//! | `wake:<lane>` | list | a few tokens a waiting worker blocks on (`BLPOP`) |
//! | `result:<id>` | string | the [`JobResult`] JSON, for `results_ttl_s` |
//! | `key:<tenant length>:<tenant>:<key>` | string | the job an idempotency key names; expires with the result |
//! | `skey:<tenant length>:<tenant>:<subject length>:<subject>:<key>` | string | the same for an access token's subject |
//! | `delayed` | sorted set | job ids by the unix ms their retry is due |
//! | `dead` | stream | the dead-letter stream: job, tenant, tool, attempts, error, bundle, time |
//! | `done` | stream | every finished attempt (`kind` = completed, duplicate, retried or dead; `result` without the output) for the audit log; group `audit` |
//! | `finished` | pub/sub channel | the id of each job that gets its result (completed or dead), so a node awaiting it reads it at once |
//! | `stats` | hash | counters: completed, claims, retries, duplicates |
//! | `workers` | hash | worker name → its last heartbeat (with its advertisement and lanes) |
//! | `blob:<blake3>` | string | a component (kept without expiry, fetched by workers that lack it) or a bundle's part (for `results_ttl_s`; bundles share parts) |
//! | `tools` | hash | tool name → its record: revisions, current and candidate, ramp, flags (JSON) |
//! | `tools:generation` | string | a counter every tool record write increments: nodes poll it |
//! | `bundle:<blake3>` | hash | a bundle's `manifest`, `signature` and its parts under 4 KiB (`part:<blake3>`; larger ones in `blob:`s), for `results_ttl_s` |
//! | `cancel:<id>` | string | a request to cancel job `<id>` (an MCP task's), written with the job hash's `cancel` field (`lua/cancel.lua`), for `results_ttl_s` plus `CANCEL_HELD_FOR_TURN_S`; deleted by an operator's retry |
//! | `cache:<tool>:…` | string, sorted set, hash | the fleet's result cache entries, their use order, sizes and bytes; `cache:<tool>:f:<key>` an identical job in flight (`cache.rs`) |
//! | `cache:tools` | set | the tools that have result cache entries |
//!
//! Here: the settings, errors, key names, the Lua scripts (`lua/`) and the connection with its
//! breaker. Jobs through their lives are in `jobs.rs`, components and bundles in `blobs.rs`, the
//! done stream the audit trail reads in `done.rs`, counters and heartbeats in `stats.rs`.

use guild_breaker::{Breaker, BreakerSettings, Open};
use guild_replay::Digest;
use link::{Conn, Topology};
use redis::{RedisError, Script};
use serde::Deserialize;
use std::time::Duration;

mod blobs;
mod budget;
mod cache;
mod done;
mod durable;
mod gate;
mod jobs;
#[cfg(test)]
mod lane_tests;
mod link;
#[cfg(test)]
mod money_tests;
mod stats;
mod tools;
mod usage;

pub use blobs::INLINE_PART_BYTES_MAX;
pub use cache::{CACHE_VALUE_BYTES_MAX, SharedCacheStats};
pub use done::{DoneEntry, DoneRead, NoticeState};
pub use jobs::CANCEL_HELD_FOR_TURN_S;
pub use tools::{TOOL_RECORD_BYTES_MAX, TOOL_RECORDS_MAX};
pub use usage::UsageSums;

/// Consumer group of the job stream.
const WORKERS_GROUP: &str = "workers";
/// Consumer group of the done stream.
const AUDIT_GROUP: &str = "audit";
/// A worker heartbeat older than this is not live.
const WORKER_LIVE_MS: u64 = 30_000;
/// A heartbeat older than this is removed.
const WORKER_FORGET_MS: u64 = 3_600_000;

/// Where the shared Redis is and how the queue in it behaves: the `[redis]` section of the
/// daemon's and the worker's config, declared once here (`GUILD_REDIS__<FIELD>` overrides a
/// field). Without a `url`, the daemon runs everything in its own process.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// One Redis node: `redis://host:port/db` (or `rediss://`, `unix://`). Set this, `cluster` or
    /// `sentinel`; none of them: no Redis.
    pub url: Option<String>,
    /// A Redis Cluster: some of its nodes (`redis://host:port`, or `rediss://`); the rest are
    /// discovered, slot moves followed, a promoted replica found after a failover.
    pub cluster: Vec<String>,
    /// A master watched by Redis Sentinel: its name and the Sentinels to ask for it.
    pub sentinel: Option<SentinelSettings>,
    /// The ACL user for every Redis node (else the URL's, else `default`).
    pub username: Option<String>,
    /// Where the ACL password is: `env:VARIABLE` or `file:PATH` (read at start, as tool secrets
    /// are; never the password itself).
    pub password: Option<String>,
    /// A PEM file of the CA that signed the Redis nodes' TLS certificates (`rediss://`), where
    /// not one the system trusts.
    pub tls_ca_file: Option<std::path::PathBuf>,
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
    /// A bundle whose parts Redis lacks come to at most this many bytes is left in Redis for
    /// every node to serve; a larger one goes to `shared_store` (bytes).
    pub bundle_inline_bytes_max: u64,
    /// A bundle store every node mounts (NFS, a shared volume) for bundles larger than
    /// `bundle_inline_bytes_max`; without one they stay in the worker's own store. The queue
    /// never opens it: API nodes and workers do.
    pub shared_store: Option<std::path::PathBuf>,
    /// What a submitted job must reach before the caller is answered 200/202: `local` (the
    /// master has it) or `replica` (at least one replica has it too: `WAIT 1`).
    pub ack_durability: AckDurability,
    /// How long a submission waits for a replica to confirm it under `replica`, ms; past it the
    /// caller gets 503 (the job may still run: a resubmission with its idempotency key is safe).
    pub ack_timeout_ms: u64,
}

/// `[redis.sentinel]`: the master Redis Sentinel watches, and where the Sentinels are.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelSettings {
    /// The master's name in the Sentinels' config (`sentinel monitor <master> …`).
    pub master: String,
    /// The Sentinels: `redis://host:port` (`rediss://` for TLS to them and to the master).
    pub nodes: Vec<String>,
    /// Where the Sentinels' own password is (`requirepass` in their config): `env:VARIABLE`
    /// or `file:PATH`; none: they ask for none.
    #[serde(default)]
    pub password: Option<String>,
}

/// What a submitted job must reach before it is acknowledged to the caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckDurability {
    /// The master has it (and its append-only file, per `appendfsync`): lost if the master's
    /// machine is lost before a replica copied it.
    #[default]
    Local,
    /// At least one replica confirmed it (`WAIT 1 ack_timeout_ms`): it survives the loss of the
    /// master once that replica is promoted.
    Replica,
    /// The master fsynced it to its append-only file (`WAITAOF 1 0 ack_timeout_ms`, Redis 7.2
    /// or later, `appendonly yes`): it survives the master's process and machine restarting
    /// from its disk, whatever `appendfsync` says, but not the loss of that disk.
    Aof,
}

impl AckDurability {
    /// The setting's name in the config.
    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Replica => "replica",
            Self::Aof => "aof",
        }
    }

    /// What did not happen when a write was not confirmed in time, for messages.
    pub fn unconfirmed(self) -> &'static str {
        match self {
            Self::Local => "the master did not answer",
            Self::Replica => "no replica confirmed it",
            Self::Aof => "the master did not fsync it to its append-only file",
        }
    }
}

impl Default for RedisSettings {
    /// No Redis, and the defaults for everything else.
    fn default() -> Self {
        Self { url: None, ..Self::new("") }
    }
}

impl RedisSettings {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            cluster: Vec::new(),
            sentinel: None,
            username: None,
            password: None,
            tls_ca_file: None,
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
            shared_store: None,
            ack_durability: AckDurability::Local,
            ack_timeout_ms: 1_000,
        }
    }

    /// These settings when they name a Redis (a `url`, a `cluster` or a `sentinel`), else none.
    pub fn configured(&self) -> Option<&Self> {
        (self.url.is_some() || !self.cluster.is_empty() || self.sentinel.is_some()).then_some(self)
    }

    /// Where Redis is, in a few words for logs: the URL, the Cluster's first seed, or the
    /// Sentinels' master name (never a password).
    pub fn describe(&self) -> String {
        match (&self.url, self.cluster.first(), &self.sentinel) {
            (Some(url), ..) => redact(url),
            (None, Some(seed), _) => format!("cluster via {} ({} seeds)", redact(seed), self.cluster.len()),
            (None, None, Some(sentinel)) => {
                format!("master {:?} via {} sentinels", sentinel.master, sentinel.nodes.len())
            }
            (None, None, None) => "no Redis".into(),
        }
    }
}

/// `url` without a password it may carry: in its user part (`redis://user:secret@host` →
/// `redis://user:***@host`) or its query (`unix:///run/redis.sock?pass=secret` → `?pass=***`).
pub fn redact(url: &str) -> String {
    // The query starts after the user part: a `?` inside a password is the password's.
    let host_from = url.rfind('@').map_or(0, |at| at + 1);
    let (address, query) = match url[host_from..].find('?') {
        Some(at) => (&url[..host_from + at], Some(&url[host_from + at + 1..])),
        None => (url, None),
    };
    let mut out = match (address.split_once("://"), address.rfind('@')) {
        (Some((scheme, rest)), Some(at)) if at > scheme.len() => match rest[..at - scheme.len() - 3].split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{}", &address[at + 1..]),
            None => address.to_string(),
        },
        _ => address.to_string(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if matches!(name, "pass" | "password") => format!("{name}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out = format!("{out}?{}", pairs.join("&"));
    }
    out
}

/// Whether `url` carries a password (in its user part, or `pass=` for a socket): Guild takes
/// passwords only from `redis.password`'s source, never written into an address.
pub fn holds_password(url: &str) -> bool {
    redact(url) != url
}

/// Why a queue call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// Redis cannot be reached (or the circuit is open): retry later.
    #[error("the job queue (Redis) is unavailable: {error}; retry after {retry_after_s} s")]
    Unavailable {
        /// What failed: Redis's or the connection's error (while the circuit breaker is open,
        /// the last one it saw).
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

/// Is `e` the connection's or the topology's (a node down, a failover or slot move under way)
/// rather than an answer to the command? Then it is worth retrying once Redis settles.
fn is_connection_error(e: &RedisError) -> bool {
    use redis::ErrorKind;
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        // MOVED, ASK, TRYAGAIN, CLUSTERDOWN: a slot moving or a Cluster failing over.
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::MasterNameNotFoundBySentinel
                | ErrorKind::NoValidReplicasFoundBySentinel
                | ErrorKind::ClusterConnectionNotFound
        )
        || matches!(e.code(), Some("LOADING" | "TRYAGAIN" | "MASTERDOWN" | "READONLY" | "CLUSTERDOWN"))
}

fn from_redis(e: RedisError) -> QueueError {
    use redis::ErrorKind;
    if !is_connection_error(&e) {
        return QueueError::Redis(e.to_string());
    }
    // What the client's error means for an operator, where its own words do not say it.
    let error = match e.kind() {
        _ if e.is_cluster_error() => format!("the Redis Cluster is failing over or moving the queue's slot ({e})"),
        ErrorKind::ClusterConnectionNotFound => format!("no node of the Redis Cluster answers ({e})"),
        ErrorKind::MasterNameNotFoundBySentinel => {
            format!("the Sentinels name no master now: a failover under way, or a wrong redis.sentinel.master ({e})")
        }
        ErrorKind::NoValidReplicasFoundBySentinel => format!("the Sentinels name no usable node ({e})"),
        _ => e.to_string(),
    };
    QueueError::Unavailable { error, retry_after_s: 1 }
}

/// `WAITAOF`'s refusals, saying which setting to change.
fn aof_error(e: RedisError) -> QueueError {
    let text = e.to_string();
    if text.contains("unknown command") {
        QueueError::Settings(
            "redis.ack_durability = \"aof\" needs Redis 7.2 or later (WAITAOF), which this Redis is not: \
             upgrade it, or use \"replica\" or \"local\""
                .into(),
        )
    } else if text.contains("appendonly") {
        QueueError::Settings(
            "redis.ack_durability = \"aof\" needs the master's append-only file: set `appendonly yes` in Redis, \
             or use \"replica\" or \"local\""
                .into(),
        )
    } else {
        from_redis(e)
    }
}

impl From<Open> for QueueError {
    fn from(open: Open) -> Self {
        QueueError::Unavailable { retry_after_s: open.retry_after_s(), error: open.last_error }
    }
}

struct Scripts {
    submit: Script,
    start: Script,
    renew: Script,
    complete: Script,
    fail: Script,
    promote: Script,
    requeue: Script,
    take: Script,
    complete_take: Script,
    migrate: Script,
    cancel: Script,
}

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(include_str!("lua/common.lua"), include_str!(concat!("lua/", $file))))
    };
    // A script that takes or completes jobs (the functions of `jobs.lua`).
    (jobs $file:literal) => {
        Script::new(concat!(
            include_str!("lua/common.lua"),
            include_str!("lua/jobs.lua"),
            include_str!(concat!("lua/", $file))
        ))
    };
}

impl Scripts {
    fn new() -> Self {
        Self {
            submit: script!("submit.lua"),
            start: script!("start.lua"),
            renew: script!("renew.lua"),
            complete: script!(jobs "complete.lua"),
            fail: script!("fail.lua"),
            promote: script!("promote.lua"),
            requeue: script!("requeue.lua"),
            take: script!(jobs "take.lua"),
            complete_take: script!(jobs "complete_take.lua"),
            migrate: script!("migrate.lua"),
            cancel: script!("cancel.lua"),
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
    /// A key is its principal's. The tenant's name (and subject) are length-prefixed: tenant `a`
    /// with key `b:c` and tenant `a:b` with key `c` must not name the same job; a subject's keys
    /// live apart (`skey:`) from its tenant's static token's.
    fn idempotency(&self, (tenant, subject): (&str, Option<&str>), key: &str) -> String {
        match subject {
            None => format!("{}key:{}:{tenant}:{key}", self.prefix, tenant.len()),
            Some(subject) => {
                format!("{}skey:{}:{tenant}:{}:{subject}:{key}", self.prefix, tenant.len(), subject.len())
            }
        }
    }
    /// The workers reading `lane`, by their last heartbeat (ms).
    fn served(&self, lane: &str) -> String {
        format!("{}lanes:served:{lane}", self.prefix)
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
    topology: Topology,
    settings: RedisSettings,
    keys: Keys,
    scripts: Scripts,
    /// Commands that answer at once.
    conn: Conn,
    /// Blocking reads (XREADGROUP BLOCK), which would hold up everything behind them on `conn`.
    blocking: Conn,
    /// Submissions under `ack_durability = "replica"`: each is followed by a `WAIT`, which
    /// blocks its connection until a replica has the writes made on it (so not on `conn`).
    durable: Conn,
    /// The durable connection's writes: numbered, and how far a replica confirmed them.
    acks: durable::DurableAcks,
    /// When the audit writer last looked for pending done entries (unix ms).
    done_claimed_ms: std::sync::atomic::AtomicU64,
    breaker: std::sync::Arc<Breaker>,
}

impl RedisQueue {
    /// Connect lazily: nothing is sent until the first command, so a worker or daemon can
    /// start while Redis is down. Call it within a tokio runtime (the connections' tasks are
    /// spawned on it).
    ///
    /// # Errors
    /// [`QueueError::Settings`] when `settings` name no Redis or several shapes (`url`, `cluster`,
    /// `sentinel`), an address does not parse, or the password's or CA's file cannot be read.
    /// Nothing is sent, so a Redis that is down is not an error here.
    pub fn open(settings: RedisSettings) -> Result<Self, QueueError> {
        let topology = Topology::from_settings(&settings)?;
        let timeout = Duration::from_millis(settings.response_timeout_ms);
        let conn = topology.connect(timeout)?;
        // A blocking read waits up to a few seconds on the server; allow for that.
        let blocking = topology.connect(timeout + Duration::from_secs(10))?;
        let durable = topology.connect(timeout + Duration::from_millis(settings.ack_timeout_ms))?;
        // One failed call opens the circuit: callers get a fast 503 rather than each waiting
        // out a connection timeout.
        let breaker = Breaker::new(BreakerSettings {
            failures_to_open: 1,
            open_for: Duration::from_millis(settings.breaker_open_ms),
        });
        let keys = Keys::new(&settings.queue);
        Ok(Self {
            inner: std::sync::Arc::new(Inner {
                topology,
                settings,
                keys,
                scripts: Scripts::new(),
                conn,
                blocking,
                durable,
                acks: durable::DurableAcks::default(),
                done_claimed_ms: std::sync::atomic::AtomicU64::new(0),
                breaker,
            }),
        })
    }

    /// The `[redis]` settings this queue was opened with: URL, queue name, lease, attempts.
    pub fn settings(&self) -> &RedisSettings {
        &self.inner.settings
    }

    /// True while callers are refused fast because Redis failed.
    pub fn is_circuit_open(&self) -> bool {
        self.inner.breaker.is_open()
    }

    fn conn(&self) -> Conn {
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
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached or the circuit is open after a
    /// recent failure; [`QueueError::Redis`] when it answers `PING` with an error.
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.guarded(async {
            let ping = redis::cmd("PING");
            let _: String = self.conn().query_at(&ping, &self.inner.keys.key("stats")).await.map_err(from_redis)?;
            Ok(())
        })
        .await
    }

    /// Check, at start, that this Redis is the shape the settings name and can do what they ask:
    /// it answers, a `url` does not point at a Cluster node, and under `ack_durability = "aof"` it
    /// has `WAITAOF`.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Settings`] saying
    /// which setting to change otherwise.
    pub async fn check(&self) -> Result<(), QueueError> {
        let at = self.inner.keys.key("stats");
        let mut conn = self.conn();
        let _: String = conn.query_at(&redis::cmd("PING"), &at).await.map_err(from_redis)?;
        if let Conn::Node(_) = conn {
            let info: String = redis::cmd("INFO").arg("cluster").query_async(&mut conn).await.map_err(from_redis)?;
            if info.lines().any(|line| line.trim() == "cluster_enabled:1") {
                return Err(QueueError::Settings(format!(
                    "{} is a Redis Cluster node: list it in redis.cluster = [\"{}\"] instead of redis.url",
                    self.inner.settings.describe(),
                    self.inner.settings.url.as_deref().map(redact).unwrap_or_default(),
                )));
            }
        }
        if self.inner.settings.ack_durability != AckDurability::Local {
            // Each durable submission names its connection with `CLIENT INFO` (Redis 6.2+).
            let info: Result<String, RedisError> = redis::cmd("CLIENT").arg("INFO").query_async(&mut conn).await;
            if let Err(e) = info {
                return Err(if is_connection_error(&e) {
                    from_redis(e)
                } else {
                    QueueError::Settings(format!(
                        "redis.ack_durability = {:?} needs Redis 6.2 or later (CLIENT INFO: {e}): upgrade it, or use \"local\"",
                        self.inner.settings.ack_durability.name()
                    ))
                });
            }
        }
        if self.inner.settings.ack_durability == AckDurability::Aof {
            // Whether the command exists and the append-only file is on (this connection wrote
            // nothing yet, so there is nothing to wait for).
            let mut probe = redis::cmd("WAITAOF");
            probe.arg(1).arg(0).arg(100);
            let _: (i64, i64) = conn.query_at(&probe, &at).await.map_err(aof_error)?;
        }
        Ok(())
    }

    /// Create the consumer groups (and their streams) unless they exist. Safe to repeat; done
    /// again after an error says a group is missing (a Redis that restarted without its data).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses `XGROUP CREATE` for any reason but the group existing.
    pub async fn ensure_groups(&self) -> Result<(), QueueError> {
        let keys = &self.inner.keys;
        for (stream, group) in [(keys.key("leases"), WORKERS_GROUP), (keys.key("done"), AUDIT_GROUP)] {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_of_different_tenants_never_collide() {
        let keys = Keys::new("default");
        assert_ne!(keys.idempotency(("a", None), "b:c"), keys.idempotency(("a:b", None), "c"));
        assert_ne!(keys.idempotency(("ab", None), "c"), keys.idempotency(("a", None), "bc"));
        assert_ne!(keys.idempotency(("a", Some("s")), "k"), keys.idempotency(("a", None), "k"));
        assert_ne!(keys.idempotency(("a", Some("s:t")), "k"), keys.idempotency(("a", Some("s")), "t:k"));
    }

    /// Redis Cluster hashes only what is between the first `{` and `}`: every key of a queue
    /// must carry the same tag, or a script touching two of them fails with CROSSSLOT.
    #[test]
    fn every_key_of_a_queue_shares_one_hash_tag() {
        let keys = Keys::new("default");
        let digest = Digest::of(b"x");
        let all = [
            keys.key("leases"),
            keys.key("done"),
            keys.key("dead"),
            keys.key("delayed"),
            keys.key("stats"),
            keys.key("workers"),
            keys.key("finished"),
            keys.job("abc"),
            keys.result("abc"),
            keys.idempotency(("tenant", None), "key{with}braces"),
            keys.blob(&digest),
            keys.bundle(&digest),
            keys.served("gpu,label:zone=eu"),
            format!("{}abc", keys.job_prefix()),
        ];
        for key in all {
            let tag = key.split_once('{').and_then(|(_, rest)| rest.split_once('}')).map(|(tag, _)| tag);
            assert_eq!(tag, Some("default"), "{key}");
        }
    }

    #[test]
    fn a_described_url_never_shows_its_password() {
        assert_eq!(redact("unix:///run/r.sock?db=1&pass=hunter2"), "unix:///run/r.sock?db=1&pass=***");
        assert_eq!(redact("redis://:hunt?er2@h:1/0"), "redis://:***@h:1/0");
        assert!(holds_password("redis://:p@h:1") && !holds_password("redis://user@h:1"));
        assert_eq!(redact("redis://guild:s3cret@10.0.0.1:6379/0"), "redis://guild:***@10.0.0.1:6379/0");
        assert_eq!(redact("rediss://:s3cret@host:6380"), "rediss://:***@host:6380");
        assert_eq!(redact("redis://10.0.0.1:6379"), "redis://10.0.0.1:6379");
    }

    #[tokio::test]
    async fn a_password_is_read_from_its_source_and_a_missing_one_is_named() {
        let file = tempfile::NamedTempFile::new().expect("file");
        std::fs::write(file.path(), "from-a-file\n").expect("write");
        let settings = RedisSettings {
            password: Some(format!("file:{}", file.path().display())),
            ..RedisSettings::new("redis://127.0.0.1:1")
        };
        assert!(RedisQueue::open(settings).is_ok());
        let missing = RedisSettings {
            password: Some("env:GUILD_TEST_NO_SUCH_VARIABLE".into()),
            ..RedisSettings::new("redis://127.0.0.1:1")
        };
        let e = RedisQueue::open(missing).err().expect("refused");
        assert!(
            e.to_string().contains("redis.password") && e.to_string().contains("GUILD_TEST_NO_SUCH_VARIABLE"),
            "{e}"
        );
    }

    #[test]
    fn connection_failures_are_unavailable_and_urls_are_checked() {
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(from_redis(refused).is_unavailable());
        let e = RedisQueue::open(RedisSettings::new("not a url")).err().expect("refused");
        assert!(matches!(e, QueueError::Settings(_)), "{e}");
    }
}
