//! The daemon's configuration: one TOML file, every field overridable from `GUILD_*` environment
//! variables, validated once at start with errors that name the field. Nothing downstream
//! re-checks what this module accepted.

use guild_runtime::Limits;
use guild_runtime::egress::EgressRule;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod env;
pub mod oauth;
#[cfg(test)]
mod tests;

/// Default listen address: loopback only.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8480";
/// Default cap on a request body (a run request; component uploads have their own).
pub const REQUEST_BYTES_MAX_DEFAULT: usize = 4 * 1024 * 1024;
/// Default cap on an uploaded component (`POST /v1/tools`): interpreter components are tens of MB.
pub const COMPONENT_BYTES_MAX_DEFAULT: usize = 128 * 1024 * 1024;
/// Default number of runs waiting for a slot before the daemon answers 429.
pub const QUEUE_DEPTH_MAX_DEFAULT: usize = 1024;
/// Default number of finished runs whose audit record may wait for the log's group commit at
/// once (their execution slots already free); one more keeps its slot until there is room.
pub const RUNS_COMMITTING_MAX_DEFAULT: usize = 1024;
/// Runs executing at once per CPU by default: a run's slot is free once its guest returns, so
/// this covers runs parked in host calls (egress, GPU) and the seal after the guest returns.
pub const RUNS_IN_FLIGHT_PER_CPU_DEFAULT: usize = 4;
/// The most runs one daemon executes at once: the engine's instance pool holds this many
/// (`guild_runtime::CONCURRENT_RUNS_MAX_DEFAULT`).
pub const RUNS_IN_FLIGHT_MAX_CEILING: usize = guild_runtime::CONCURRENT_RUNS_MAX_DEFAULT as usize;
/// Default time SIGTERM waits for queued and running runs before exiting.
pub const DRAIN_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Default number of finished runs whose status is kept in memory (older ones are read back
/// from the audit log index and their bundles).
pub const RUNS_KEPT_MAX_DEFAULT: usize = 100_000;
/// Default rate limit of a tenant, runs per second.
pub const RATE_PER_SECOND_DEFAULT: f64 = 1000.0;
/// Default burst of a tenant's token bucket, runs.
pub const BURST_DEFAULT: u32 = 2000;
/// Rate of the `default` tenant a daemon makes when no tenants are configured (the operator's
/// own token), runs per second: far above what any machine runs, so only the queue's bounds
/// (`queue.runs_in_flight_max`, `queue.depth_max`) push back — a configured tenant keeps
/// [`RATE_PER_SECOND_DEFAULT`].
pub const DEFAULT_TENANT_RATE_PER_SECOND: f64 = 1_000_000.0;
/// Burst of that tenant's token bucket, runs.
pub const DEFAULT_TENANT_BURST: u32 = 1_000_000;
/// Default concurrency cap of a tenant, runs at once (queued or running).
pub const CONCURRENCY_MAX_DEFAULT: u32 = 256;
/// Default length of a tenant's fuel-budget period.
pub const FUEL_BUDGET_PERIOD_S_DEFAULT: u64 = 3600;
/// Default length of a tenant's cost-budget period: a day.
pub const COST_BUDGET_PERIOD_S_DEFAULT: u64 = 86_400;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Address to listen on. `GUILD_LISTEN`.
    #[serde(default = "listen_default")]
    pub listen: SocketAddr,
    /// The bundle store. Defaults to HOME/store. `GUILD_STORE`.
    #[serde(default)]
    pub store: Option<PathBuf>,
    /// Where the audit log, uploaded tools and the generated token live. Defaults to HOME.
    #[serde(default)]
    pub state: Option<PathBuf>,
    /// Largest run request body, bytes.
    #[serde(default = "request_bytes_max_default")]
    pub request_bytes_max: usize,
    /// Largest uploaded component, bytes.
    #[serde(default = "component_bytes_max_default")]
    pub component_bytes_max: usize,
    /// `json` (default) or `text`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// The run queue.
    #[serde(default)]
    pub queue: QueueConfig,
    /// Tools to register at start.
    #[serde(default)]
    pub tools: Vec<ToolConfig>,
    /// Who may call. Empty: one admin tenant, `default`, whose token is `GUILD_TOKEN` or generated.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// Secret values by name: `env:VAR` or `file:PATH`. Values never reach logs or bundles.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// The MCP endpoint, `/mcp`.
    #[serde(default)]
    pub mcp: McpConfig,
    /// The shared Redis queue; without a `url` runs execute in this process.
    #[serde(default)]
    pub redis: RedisConfig,
    /// Bounds on the HTTP listener: connections, header size, header read time.
    #[serde(default)]
    pub http: crate::http::HttpConfig,
    /// How bundles sealed at about the same moment share one signature: `leaves_max` (bundles per
    /// signature, default 1024) and `wait_us` (how long a batch may wait to fill, default 0, at
    /// most 10 000).
    #[serde(default)]
    pub signing: guild_runtime::SignBatchLimits,
    /// What checking a value against a tool's own JSON Schema may use: `fuel_units` (one compile
    /// or one check, default 500 000 000) plus `fuel_units_per_byte` of the schema or value
    /// (default 1 000), and `memory_bytes` (default 256 MiB). A check past them refuses the
    /// input (`invalid_input`) or fails the run.
    #[serde(default)]
    pub schema_check: guild_runtime::SchemaCheckLimits,
    /// Outgoing HTTP connections the runs of this process may hold open at once (in use or
    /// kept alive); a request that finds them all taken waits up to its connect timeout.
    #[serde(default = "egress_connections_max_default")]
    pub egress_connections_max: usize,
    /// Keyed egress limits: requests per second to an upstream, or spending a secret, across
    /// every run here (with Redis, across the fleet).
    #[serde(default)]
    pub egress_limits: Vec<EgressLimitConfig>,
    /// Run-level limits: runs per second of a tenant, of one of its tools, or of each of its
    /// agents, across every node here (with Redis, the fleet).
    #[serde(default)]
    pub run_limits: Vec<RunLimitConfig>,
    /// Longest an upstream's `Retry-After` (on a 429 or 503) holds it back, ms (at most a day;
    /// 0 turns throttles off).
    #[serde(default = "egress_throttle_ms_max_default")]
    pub egress_throttle_ms_max: u64,
    /// Changing tools safely: the replay gate's policy and bounds, shadow runs.
    #[serde(default)]
    pub rollout: RolloutConfig,
    /// The result cache's shared settings: keys trusted besides this host's, waiters per flight.
    #[serde(default)]
    pub cache: crate::cache::CacheConfig,
    /// The OAuth 2.1 resource server: JWT access tokens from this issuer are accepted besides
    /// the tenants' static tokens. Unset: static tokens only.
    #[serde(default)]
    pub oauth: Option<oauth::OAuthConfig>,
    /// What runs cost: prices per fuel, wall time, memory, HTTP exchange and stored byte, as
    /// exact decimal strings in one currency. Unset: runs carry no cost. Reloadable.
    #[serde(default)]
    pub pricing: Option<guild_replay::cost::PriceTable>,
    /// OpenTelemetry traces: the OTLP/HTTP collector, sampler and export bounds; the standard
    /// `OTEL_*` variables fill what it leaves unset. With neither, tracing is off and costs
    /// nothing. Read at start.
    #[serde(default)]
    pub telemetry: guild_telemetry::TelemetryConfig,
}

/// Default of [`RolloutConfig::check_runs_default`].
pub const CHECK_RUNS_DEFAULT: u64 = 100;
/// Default of [`RolloutConfig::check_runs_max`].
pub const CHECK_RUNS_MAX_DEFAULT: u64 = 1000;
/// Default of [`RolloutConfig::shadow_in_flight_max`].
pub const SHADOW_IN_FLIGHT_MAX_DEFAULT: usize = 2;
/// Default of [`RolloutConfig::shadow_kept_max`].
pub const SHADOW_KEPT_MAX_DEFAULT: usize = 100;

/// `[rollout]`: the replay gate and shadow runs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// `[rollout.gate]`: how many differences a candidate may show and still pass (counts of
    /// runs; `output_changed_percent_max` in percent; `min_runs`).
    pub gate: guild_runtime::GatePolicy,
    /// Recorded runs a check takes when the request names no `last`.
    pub check_runs_default: u64,
    /// Most recorded runs one check may take (`last` above it is refused).
    pub check_runs_max: u64,
    /// Shadow runs at once on this node; a shadow drawn while they are all busy is skipped
    /// (counted as `skipped`), never queued behind callers.
    pub shadow_in_flight_max: usize,
    /// Shadow verdicts kept per tool for `guild rollout status` (the newest).
    pub shadow_kept_max: usize,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            gate: guild_runtime::GatePolicy::default(),
            check_runs_default: CHECK_RUNS_DEFAULT,
            check_runs_max: CHECK_RUNS_MAX_DEFAULT,
            shadow_in_flight_max: SHADOW_IN_FLIGHT_MAX_DEFAULT,
            shadow_kept_max: SHADOW_KEPT_MAX_DEFAULT,
        }
    }
}

fn egress_throttle_ms_max_default() -> u64 {
    guild_queue::EGRESS_THROTTLE_MS_MAX_DEFAULT
}

/// Largest `egress_throttle_ms_max`, ms: a day.
pub const EGRESS_THROTTLE_MS_MAX: u64 = 86_400_000;

/// Longest a request may be set to wait for room under an egress limit, ms.
pub const EGRESS_WAIT_MS_MAX: u64 = 60_000;
/// Longest an async run may be held to a run limit's turn, ms: a day.
pub const RUN_DELAY_MS_MAX: u64 = 86_400_000;
/// Default of an egress limit's `wait_ms_max`, ms.
pub const EGRESS_WAIT_MS_DEFAULT: u64 = 1_000;

fn egress_wait_default() -> u64 {
    EGRESS_WAIT_MS_DEFAULT
}

fn one() -> u32 {
    1
}

/// `[[run_limits]]`: runs per second of a tenant (of one of its tools, of each agent label).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunLimitConfig {
    /// The tenant whose runs it limits.
    pub tenant: String,
    /// Only its runs of this tool.
    #[serde(default)]
    pub tool: Option<String>,
    /// `"*"`: each agent label's runs apart (a run naming none is not limited by it); a label:
    /// only that agent's.
    #[serde(default)]
    pub agent: Option<String>,
    /// Sustained runs per second; none: no rate (give `concurrency_max` then).
    #[serde(default)]
    pub rate_per_second: Option<f64>,
    /// Runs in flight at once — admitted and not yet ended, queued or running, on every node
    /// with Redis; none: no bound.
    #[serde(default)]
    pub concurrency_max: Option<u32>,
    /// Runs that may start at once (default 1: none ahead of the rate).
    #[serde(default = "one")]
    pub burst: u32,
    /// Longest a run waits for room before it starts, ms (at most 60 000; 0, the default:
    /// answered 429 `rate_limited` at once, with `Retry-After`).
    #[serde(default)]
    pub wait_ms_max: u64,
    /// An async run over the rate is accepted (202) and queued to start at its turn, up to this
    /// far ahead, ms (at most a day; 0, the default: as a sync run, waited for up to
    /// `wait_ms_max`, then 429). A place in flight is still waited for only `wait_ms_max`.
    #[serde(default)]
    pub delay_ms_max: u64,
}

impl RunLimitConfig {
    /// The limits of `limits` (the config's, in order) a run of `tool` for `tenant` and `agent`
    /// counts against, keyed as the gates keep them. For an `asynchronous` run, a limit with a
    /// `delay_ms_max` lets its rate's turn come that far ahead (its place in flight is still
    /// waited for only `wait_ms_max`: the limit is split in two).
    pub fn for_run(
        limits: &[Self],
        (tenant, tool, agent): (&str, &str, Option<&str>),
        asynchronous: bool,
    ) -> Vec<guild_queue::EgressLimit> {
        let all = limits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.tenant == tenant && l.tool.as_deref().is_none_or(|t| t == tool))
            .filter_map(|(i, l)| {
                let mut key = format!("run:tenant {tenant}");
                if let Some(tool) = &l.tool {
                    key.push_str(&format!(" tool {tool}"));
                }
                match (l.agent.as_deref(), agent) {
                    (None, _) => {}
                    (Some("*"), Some(agent)) => key.push_str(&format!(" agent {agent}")),
                    (Some(wanted), Some(agent)) if wanted == agent => key.push_str(&format!(" agent {agent}")),
                    _ => return None,
                }
                Some((
                    guild_queue::EgressLimit {
                        key,
                        rate_per_second: l.rate_per_second,
                        concurrency_max: l.concurrency_max,
                        burst: l.burst,
                        wait_ms_max: l.wait_ms_max,
                        setting: format!("run_limits[{i}]"),
                    },
                    l.delay_ms_max,
                ))
            });
        let mut out = Vec::new();
        for (limit, delay_ms_max) in all {
            match (asynchronous && delay_ms_max > 0, limit.rate_per_second) {
                (true, Some(_)) => {
                    let wait_ms_max = limit.wait_ms_max.max(delay_ms_max);
                    if limit.concurrency_max.is_some() {
                        out.push(guild_queue::EgressLimit { rate_per_second: None, ..limit.clone() });
                    }
                    out.push(guild_queue::EgressLimit { concurrency_max: None, wait_ms_max, ..limit });
                }
                _ => out.push(limit),
            }
        }
        out
    }
}

/// `[[egress_limits]]`: one keyed rate limit on outgoing requests.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressLimitConfig {
    /// Requests to this upstream, `scheme://host[:port]` (any path).
    #[serde(default)]
    pub upstream: Option<String>,
    /// Requests that carry this secret (a `[secrets]` name), wherever they go.
    #[serde(default)]
    pub secret: Option<String>,
    /// Sustained requests per second; none: no rate (give `concurrency_max` then).
    #[serde(default)]
    pub rate_per_second: Option<f64>,
    /// Requests in flight at once (each from its start to its answer read whole), across the
    /// fleet with Redis: "at most 10 parallel calls to this API"; none: no bound.
    #[serde(default)]
    pub concurrency_max: Option<u32>,
    /// Requests that may go at once (default 1: none ahead of the rate).
    #[serde(default = "one")]
    pub burst: u32,
    /// Longest a request waits for room, ms (at most 60 000); past it, it is refused.
    #[serde(default = "egress_wait_default")]
    pub wait_ms_max: u64,
}

impl DaemonConfig {
    /// The keyed egress limits, as the gates keep them (validated).
    pub fn egress_limits(&self) -> Vec<guild_queue::EgressLimit> {
        self.egress_limits
            .iter()
            .enumerate()
            .filter_map(|(i, limit)| {
                let key = match (&limit.upstream, &limit.secret) {
                    (Some(upstream), None) => {
                        format!("upstream:{}", guild_vocab::egress::gate::parse_upstream(upstream).ok()?)
                    }
                    (None, Some(secret)) => format!("secret:{secret}"),
                    _ => return None,
                };
                Some(guild_queue::EgressLimit {
                    key,
                    rate_per_second: limit.rate_per_second,
                    concurrency_max: limit.concurrency_max,
                    burst: limit.burst,
                    wait_ms_max: limit.wait_ms_max,
                    setting: format!("egress_limits[{i}]"),
                })
            })
            .collect()
    }
}

/// A keyed limit has a positive rate, a concurrency bound of at least 1, or both.
fn check_rate_or_bound(
    (rate, bound): (Option<f64>, Option<u32>),
    what: &str,
    field: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    if let Some(rate) = rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(ConfigError::new(
            field("rate_per_second"),
            format!("must be a positive number of {what} per second"),
        ));
    }
    if bound == Some(0) {
        return Err(ConfigError::new(
            field("concurrency_max"),
            format!("must be at least 1 ({what} in flight at once)"),
        ));
    }
    if rate.is_none() && bound.is_none() {
        return Err(ConfigError::new(
            field("rate_per_second"),
            format!("give rate_per_second ({what} per second), concurrency_max ({what} in flight at once), or both"),
        ));
    }
    Ok(())
}

fn egress_connections_max_default() -> usize {
    guild_runtime::egress::HTTP_CONNECTIONS_MAX_DEFAULT
}

/// `[redis]`: with a `url`, the daemon enqueues runs into Redis for `guild worker` processes
/// on any machine instead of running them itself (`guild serve --redis URL`). The fields are the
/// queue's own settings.
pub type RedisConfig = guild_queue::RedisSettings;

/// Check `[redis]`, naming the field to change.
fn validate_redis(redis: &RedisConfig) -> Result<(), ConfigError> {
    let shown = |url: &str| guild_queue::redact(url);
    if let Some(url) = &redis.url
        && !["redis://", "rediss://", "unix://", "redis+unix://"].iter().any(|s| url.starts_with(s))
    {
        return Err(ConfigError::new("redis.url", format!("is {:?}; use redis://HOST:PORT/DB", shown(url))));
    }
    let addresses =
        redis.url.iter().map(|url| ("redis.url", url)).chain(redis.cluster.iter().map(|url| ("redis.cluster", url)));
    let sentinels = redis.sentinel.iter().flat_map(|s| s.nodes.iter().map(|url| ("redis.sentinel.nodes", url)));
    for (field, url) in addresses.chain(sentinels) {
        if guild_queue::holds_password(url) {
            return Err(ConfigError::new(
                field,
                format!(
                    "{:?} holds a password: give it as redis.password = \"env:VARIABLE\" or \"file:PATH\" (redis.sentinel.password for the Sentinels')",
                    shown(url)
                ),
            ));
        }
    }
    let shapes = [redis.url.is_some(), !redis.cluster.is_empty(), redis.sentinel.is_some()];
    if shapes.iter().filter(|set| **set).count() > 1 {
        return Err(ConfigError::new(
            "redis",
            "set one of redis.url (one node), redis.cluster (its seed nodes) and redis.sentinel, not several",
        ));
    }
    let tcp = |url: &String| ["redis://", "rediss://"].iter().any(|s| url.starts_with(s));
    if let Some(url) = redis.cluster.iter().find(|url| !tcp(url)) {
        return Err(ConfigError::new("redis.cluster", format!("holds {:?}; use redis://HOST:PORT", shown(url))));
    }
    // A Cluster has one database: `SELECT` is refused there.
    let names_database = |url: &str| {
        let path = url.split_once("://").and_then(|(_, rest)| rest.split_once('/')).map(|(_, db)| db);
        path.is_some_and(|db| !db.is_empty() && db != "0")
    };
    if let Some(url) = redis.cluster.iter().find(|url| names_database(url)) {
        return Err(ConfigError::new(
            "redis.cluster",
            format!("{:?} names a database; a Redis Cluster has only database 0: drop the /N", shown(url)),
        ));
    }
    if let Some(sentinel) = &redis.sentinel {
        if sentinel.master.is_empty() {
            return Err(ConfigError::new("redis.sentinel.master", "name the master the Sentinels watch"));
        }
        if sentinel.nodes.is_empty() {
            return Err(ConfigError::new("redis.sentinel.nodes", "list the Sentinels: [\"redis://HOST:26379\", …]"));
        }
        if let Some(url) = sentinel.nodes.iter().find(|url| !tcp(url)) {
            return Err(ConfigError::new(
                "redis.sentinel.nodes",
                format!("holds {:?}; use redis://HOST:PORT", shown(url)),
            ));
        }
        if let Some(source) = &sentinel.password
            && let Err(e) = guild_runtime::egress::SecretSource::parse(source)
        {
            return Err(ConfigError::new("redis.sentinel.password", e));
        }
    }
    let tls = redis.url.iter().chain(&redis.cluster).chain(redis.sentinel.iter().flat_map(|s| &s.nodes));
    if redis.tls_ca_file.is_some() && !tls.clone().any(|url| url.starts_with("rediss://")) {
        return Err(ConfigError::new(
            "redis.tls_ca_file",
            "is set but no address uses TLS: write rediss:// for the nodes it signs, or drop it",
        ));
    }
    if let Some(source) = &redis.password
        && let Err(e) = guild_runtime::egress::SecretSource::parse(source)
    {
        return Err(ConfigError::new("redis.password", format!("{e} (the password is never written in the config)")));
    }
    if redis.queue.is_empty() || redis.queue.contains(['{', '}', ':']) {
        return Err(ConfigError::new("redis.queue", "must be a non-empty name without `{`, `}` or `:`"));
    }
    for (field, value, least) in [
        ("redis.lease_ms", redis.lease_ms, 100),
        ("redis.attempts_max", u64::from(redis.attempts_max), 1),
        ("redis.backoff_base_ms", redis.backoff_base_ms, 1),
        ("redis.results_ttl_s", redis.results_ttl_s, 1),
        ("redis.dead_ttl_s", redis.dead_ttl_s, 1),
        ("redis.dead_kept_max", redis.dead_kept_max, 1),
        ("redis.done_kept_max", redis.done_kept_max, 1_000),
        ("redis.response_timeout_ms", redis.response_timeout_ms, 10),
        ("redis.ack_timeout_ms", redis.ack_timeout_ms, 1),
    ] {
        if value < least {
            return Err(ConfigError::new(field, format!("is {value}; must be at least {least}")));
        }
    }
    if redis.backoff_max_ms < redis.backoff_base_ms {
        return Err(ConfigError::new("redis.backoff_max_ms", "must be at least redis.backoff_base_ms"));
    }
    Ok(())
}

/// The MCP endpoint (`/mcp`, streamable HTTP). It takes the same bearer tokens as the API;
/// these two lists guard it against DNS rebinding, where a web page reaches a daemon on
/// loopback through a name it controls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpConfig {
    /// `Host` header values accepted, as `name` (any port) or `name:port`. Defaults to the
    /// loopback names; a daemon reached by another name must list it.
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted, as `scheme://host:port` (`:*` for any port). Requests without
    /// an `Origin` (agents, not browsers) always pass; empty refuses every browser origin.
    pub allowed_origins: Vec<String>,
    /// Live sessions (of the initialize-handshake protocol generations) at once; one more
    /// `initialize` is answered 503.
    pub sessions_max: usize,
    /// Live sessions of one tenant at once; one more `initialize` of that tenant is answered
    /// 503, so no tenant can take every session.
    pub tenant_sessions_max: usize,
    /// A session with no traffic for this long is closed, ms.
    pub session_idle_ms: u64,
    /// Tools one `tools/list` page holds; a longer list continues at its `nextCursor`.
    pub tools_page_max: usize,
}

/// Default for [`McpConfig::sessions_max`].
pub const MCP_SESSIONS_MAX_DEFAULT: usize = 256;
/// Default for [`McpConfig::tenant_sessions_max`].
pub const MCP_TENANT_SESSIONS_MAX_DEFAULT: usize = 64;
/// Default for [`McpConfig::session_idle_ms`].
pub const MCP_SESSION_IDLE_MS_DEFAULT: u64 = 300_000;
/// Default for [`McpConfig::tools_page_max`].
pub const MCP_TOOLS_PAGE_MAX_DEFAULT: usize = 100;

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            allowed_hosts: ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec(),
            allowed_origins: Vec::new(),
            sessions_max: MCP_SESSIONS_MAX_DEFAULT,
            tenant_sessions_max: MCP_TENANT_SESSIONS_MAX_DEFAULT,
            session_idle_ms: MCP_SESSION_IDLE_MS_DEFAULT,
            tools_page_max: MCP_TOOLS_PAGE_MAX_DEFAULT,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (the default, for log shippers).
    #[default]
    Json,
    /// Human-readable lines.
    Text,
}

/// The bounded run queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Runs executing at once, at most [`RUNS_IN_FLIGHT_MAX_CEILING`]. Defaults to
    /// [`RUNS_IN_FLIGHT_PER_CPU_DEFAULT`] per CPU, capped at the ceiling.
    pub runs_in_flight_max: usize,
    /// Runs waiting for a slot; one more gets 429 with `Retry-After`.
    pub depth_max: usize,
    /// Finished runs waiting for their audit record's group commit, slot already freed
    /// (default [`RUNS_COMMITTING_MAX_DEFAULT`]).
    pub runs_committing_max: usize,
    /// How long SIGTERM waits for queued and running runs.
    pub drain_timeout_ms: u64,
    /// After SIGTERM, how long the daemon still accepts connections while `/readyz` answers 503
    /// and new runs get 503 `draining`, so a load balancer stops routing to it first.
    pub drain_notice_ms: u64,
    /// Finished runs kept in memory for `GET /v1/runs/{id}` and idempotency keys.
    pub runs_kept_max: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            runs_in_flight_max: runs_in_flight_default(),
            depth_max: QUEUE_DEPTH_MAX_DEFAULT,
            runs_committing_max: RUNS_COMMITTING_MAX_DEFAULT,
            drain_timeout_ms: DRAIN_TIMEOUT_MS_DEFAULT,
            drain_notice_ms: 0,
            runs_kept_max: RUNS_KEPT_MAX_DEFAULT,
        }
    }
}

/// [`RUNS_IN_FLIGHT_PER_CPU_DEFAULT`] per CPU this process may use, within the ceiling.
fn runs_in_flight_default() -> usize {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    (cpus * RUNS_IN_FLIGHT_PER_CPU_DEFAULT).min(RUNS_IN_FLIGHT_MAX_CEILING)
}

/// One tool (or a directory of them) and what it is granted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolConfig {
    /// A component file, or a directory whose `*.wasm` files are each registered.
    pub path: PathBuf,
    /// The name clients call it by; defaults to the name it gives in `describe`.
    #[serde(default)]
    pub name: Option<String>,
    /// Pin: refuse to start unless the file's blake3 is this (hex).
    #[serde(default)]
    pub digest: Option<String>,
    /// Directories mounted into its runs.
    #[serde(default)]
    pub mounts: Vec<MountConfig>,
    /// Egress rules (`[METHODS ]SCHEME://HOST[:PORT][/PREFIX]`).
    #[serde(default)]
    pub allow_hosts: Vec<EgressRule>,
    /// Secrets it may use, with where each may be sent.
    #[serde(default)]
    pub secrets: Vec<SecretGrantConfig>,
    /// Per-run limits (fields of `Limits`; unset ones keep their defaults).
    #[serde(default)]
    pub limits: Limits,
    /// A WASI command's description for agents (a `guild-tool` component describes itself).
    #[serde(default)]
    pub description: Option<String>,
    /// Environment variables a WASI command's caller may set; any other is refused.
    #[serde(default)]
    pub env: Vec<String>,
    /// Arguments every run of a WASI command gets before the caller's.
    #[serde(default)]
    pub args: Vec<String>,
    /// Cache its results: `true` for the defaults, or a table (`ttl_s`, `entries_max`,
    /// `bytes_max`, `verify_sample`). Its runs are then hermetic — seed and clocks derived from
    /// the action digest — and a run whose tape shows no effect outside the digest answers
    /// every identical later call of the same tenant.
    #[serde(default)]
    pub cache: Option<crate::cache::CacheSetting>,
    /// What a Redis worker must have to run it (`labels`, `memory_bytes_min`, `arch`, `gpu`):
    /// its jobs go to the lane only such workers read. A tool whose `describe` says it uses GPU
    /// kernels needs a GPU whatever this says.
    #[serde(default)]
    pub needs: guild_queue::Needs,
}

/// A directory mount.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    /// Directory on the host.
    pub host: PathBuf,
    /// Where the tool sees it, e.g. `/data`.
    pub guest: String,
    /// `ro` (default) or `rw`.
    #[serde(default = "access_default")]
    pub access: String,
}

/// A secret a tool may use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretGrantConfig {
    /// The secret's name (defined under `[secrets]`).
    pub name: String,
    /// Where it may be sent: an egress rule.
    pub to: EgressRule,
}

/// A tenant: one bearer token, what it may call, and how much.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Name in logs, metrics and the audit log.
    pub name: String,
    /// blake3 of the bearer token, hex (`guild token new` prints a token and its digest).
    /// Unset: the tenant has no static token and is reached only with OAuth access tokens
    /// whose tenant claim names it (`[oauth]` must be configured then).
    #[serde(default)]
    pub token_blake3: Option<String>,
    /// Tool names it may call; `["*"]` for all.
    #[serde(default)]
    pub tools: Vec<String>,
    /// May upload components (`POST /v1/tools`).
    #[serde(default)]
    pub admin: bool,
    /// Sustained runs per second.
    #[serde(default = "rate_default")]
    pub rate_per_second: f64,
    /// Runs it may start at once above the sustained rate.
    #[serde(default = "burst_default")]
    pub burst: u32,
    /// Runs queued or running at once.
    #[serde(default = "concurrency_default")]
    pub concurrency_max: u32,
    /// Fuel its runs may burn per period; unset: unlimited.
    #[serde(default)]
    pub fuel_budget_units: Option<u64>,
    /// Length of the fuel-budget period, seconds.
    #[serde(default = "fuel_period_default")]
    pub fuel_budget_period_s: u64,
    /// Money its runs may cost per period, a decimal string in `[pricing]`'s currency
    /// (`"25.00"`); unset: unlimited. Each run reserves what its limits could cost at most before
    /// it starts and keeps what it did cost; a spent budget answers 429 `budget_exhausted`.
    #[serde(default)]
    pub cost_budget: Option<String>,
    /// LLM tokens (input and output, of `[[pricing.llm]]` upstreams) its runs may use per
    /// period; unset: unlimited. Once used up, runs' further LLM requests are denied and new
    /// runs answer 429 `budget_exhausted`.
    #[serde(default)]
    pub token_budget: Option<u64>,
    /// Length of every budget period of the tenant (money and tokens), seconds; periods start
    /// on multiples of it since the Unix epoch (3600: on the hour, UTC).
    #[serde(default = "cost_period_default", alias = "cost_budget_period_s")]
    pub budget_period_s: u64,
    /// Budgets of single tools, by tool name: `{ cost = "5.00", tokens = 100000 }`.
    #[serde(default)]
    pub tool_budgets: BTreeMap<String, ToolBudget>,
    /// Money each agent label (a caller's `Guild-Agent` header or MCP `_meta` `guild/agent`)
    /// may spend per period, a decimal string; unset: unlimited.
    #[serde(default)]
    pub agent_cost_budget: Option<String>,
    /// LLM tokens each agent label may use per period; unset: unlimited.
    #[serde(default)]
    pub agent_token_budget: Option<u64>,
    /// Most agent labels the tenant may spend under in one period; a run naming another is
    /// answered 429 `budget_exhausted`.
    #[serde(default = "agents_max_default")]
    pub agents_max: u64,
    /// Its runs' priority, 0 to 9 (higher is taken first from a queue with waiting runs).
    #[serde(default = "priority_default")]
    pub priority: u8,
    /// The highest priority a request of it may ask for (`priority` in the run request, MCP
    /// `_meta` `guild/priority`); none: its `priority`.
    #[serde(default)]
    pub priority_max: Option<u8>,
    /// Runs it takes per turn while other tenants wait at the same priority (1 to 1000).
    #[serde(default = "weight_default")]
    pub weight: u32,
}

fn priority_default() -> u8 {
    guild_queue::PRIORITY_DEFAULT
}

fn weight_default() -> u32 {
    1
}

/// One tool's budget within a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolBudget {
    /// Money per period, a decimal string.
    #[serde(default)]
    pub cost: Option<String>,
    /// LLM tokens per period.
    #[serde(default)]
    pub tokens: Option<u64>,
}

/// Longest budget period, seconds: a year of 366 days.
pub const BUDGET_PERIOD_S_MAX: u64 = 366 * 86_400;

fn agents_max_default() -> u64 {
    guild_queue::AGENTS_MAX_DEFAULT
}

fn listen_default() -> SocketAddr {
    LISTEN_DEFAULT.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8480)))
}
fn request_bytes_max_default() -> usize {
    REQUEST_BYTES_MAX_DEFAULT
}
fn component_bytes_max_default() -> usize {
    COMPONENT_BYTES_MAX_DEFAULT
}
fn access_default() -> String {
    "ro".into()
}
fn rate_default() -> f64 {
    RATE_PER_SECOND_DEFAULT
}
fn burst_default() -> u32 {
    BURST_DEFAULT
}
fn concurrency_default() -> u32 {
    CONCURRENCY_MAX_DEFAULT
}
fn fuel_period_default() -> u64 {
    FUEL_BUDGET_PERIOD_S_DEFAULT
}
fn cost_period_default() -> u64 {
    COST_BUDGET_PERIOD_S_DEFAULT
}

/// A configuration that cannot be used, naming the field (or variable) and what to change.
#[derive(Debug, thiserror::Error)]
#[error("config: {field}: {message}")]
pub struct ConfigError {
    /// `tenants[1].rate_per_second`, `GUILD_QUEUE__DEPTH_MAX`, or the file.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

impl DaemonConfig {
    /// Parse `text` (the file's contents; empty for none), apply `GUILD_*` overrides from `env`,
    /// and validate. Returns the config and the `GUILD_*` variables that were not understood.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file when `text` is not TOML or does not fit the schema, the
    /// variable when a `GUILD_*` override cannot go where it points, or the field when a value is
    /// out of range or inconsistent with another (a tool's mount, secret or digest, a tenant,
    /// `[redis]`).
    pub fn load(
        text: &str,
        origin: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Self, Vec<String>), ConfigError> {
        let mut table: toml::Table =
            text.parse().map_err(|e: toml::de::Error| ConfigError::new(origin.display().to_string(), e.to_string()))?;
        let ignored = env::apply(&mut table, env)?;
        // An empty seed list would read as "no Redis" and run everything here, unnoticed.
        if let Some(toml::Value::Array(seeds)) = table.get("redis").and_then(|redis| redis.get("cluster"))
            && seeds.is_empty()
        {
            return Err(ConfigError::new("redis.cluster", "is empty: list the Cluster's seed nodes, or remove it"));
        }
        let config: DaemonConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::new(origin.display().to_string(), e.to_string()))?;
        config.validate()?;
        Ok((config, ignored))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        validate_redis(&self.redis)?;
        if let Some(oauth) = &self.oauth {
            oauth.validate()?;
        }
        if let Some(pricing) = &self.pricing {
            pricing.validate().map_err(|e| ConfigError::new("pricing.currency", e))?;
        }
        let rollout = &self.rollout;
        if rollout.check_runs_max == 0 || rollout.check_runs_default == 0 {
            return Err(ConfigError::new("rollout.check_runs_max", "a check takes at least one run"));
        }
        if rollout.check_runs_default > rollout.check_runs_max {
            return Err(ConfigError::new(
                "rollout.check_runs_default",
                format!(
                    "is {}; at most rollout.check_runs_max ({})",
                    rollout.check_runs_default, rollout.check_runs_max
                ),
            ));
        }
        let percent = rollout.gate.output_changed_percent_max;
        if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
            return Err(ConfigError::new(
                "rollout.gate.output_changed_percent_max",
                format!("is {percent}; use 0 to 100"),
            ));
        }
        if self.http.connections_max == 0 {
            return Err(ConfigError::new("http.connections_max", "must be at least 1"));
        }
        if self.http.header_bytes_max < crate::http::HEADER_BYTES_MIN {
            return Err(ConfigError::new(
                "http.header_bytes_max",
                format!("must be at least {} bytes", crate::http::HEADER_BYTES_MIN),
            ));
        }
        if self.http.header_read_timeout_ms < 100 {
            return Err(ConfigError::new("http.header_read_timeout_ms", "must be at least 100 ms"));
        }
        if self.http.body_read_timeout_ms < 100 {
            return Err(ConfigError::new("http.body_read_timeout_ms", "must be at least 100 ms"));
        }
        if self.http.tenant_requests_max == 0 {
            return Err(ConfigError::new("http.tenant_requests_max", "must be at least 1"));
        }
        if self.mcp.sessions_max == 0 {
            return Err(ConfigError::new("mcp.sessions_max", "must be at least 1"));
        }
        if self.mcp.tenant_sessions_max == 0 {
            return Err(ConfigError::new("mcp.tenant_sessions_max", "must be at least 1"));
        }
        if self.mcp.tools_page_max == 0 {
            return Err(ConfigError::new("mcp.tools_page_max", "must be at least 1 tool"));
        }
        if self.mcp.session_idle_ms < 1000 {
            return Err(ConfigError::new("mcp.session_idle_ms", "must be at least 1000 ms"));
        }
        if self.egress_connections_max == 0 {
            return Err(ConfigError::new("egress_connections_max", "must be at least 1"));
        }
        if self.request_bytes_max == 0 {
            return Err(ConfigError::new("request_bytes_max", "must be at least 1 byte"));
        }
        if self.queue.runs_in_flight_max == 0 {
            return Err(ConfigError::new("queue.runs_in_flight_max", "must be at least 1"));
        }
        if self.queue.runs_in_flight_max > RUNS_IN_FLIGHT_MAX_CEILING {
            return Err(ConfigError::new(
                "queue.runs_in_flight_max",
                format!("must be at most {RUNS_IN_FLIGHT_MAX_CEILING}, the runs the engine's instance pool holds"),
            ));
        }
        if self.queue.runs_committing_max == 0 {
            return Err(ConfigError::new("queue.runs_committing_max", "must be at least 1"));
        }
        if self.signing.leaves_max == 0 {
            return Err(ConfigError::new("signing.leaves_max", "must be at least 1 bundle per signature"));
        }
        if self.signing.wait_us > guild_runtime::SIGN_BATCH_WAIT_US_MAX {
            return Err(ConfigError::new(
                "signing.wait_us",
                format!("is {} µs; must be at most {} µs", self.signing.wait_us, guild_runtime::SIGN_BATCH_WAIT_US_MAX),
            ));
        }
        if self.queue.runs_kept_max == 0 {
            return Err(ConfigError::new("queue.runs_kept_max", "must be at least 1"));
        }
        if self.schema_check.fuel_units < guild_runtime::SCHEMA_CHECK_FUEL_UNITS_MIN {
            return Err(ConfigError::new(
                "schema_check.fuel_units",
                format!(
                    "must be at least {} units (compiling an ordinary schema takes tens of millions)",
                    guild_runtime::SCHEMA_CHECK_FUEL_UNITS_MIN
                ),
            ));
        }
        if self.schema_check.memory_bytes < guild_runtime::SCHEMA_CHECK_MEMORY_BYTES_MIN {
            return Err(ConfigError::new(
                "schema_check.memory_bytes",
                format!(
                    "must be at least {} bytes (the checker's own memory)",
                    guild_runtime::SCHEMA_CHECK_MEMORY_BYTES_MIN
                ),
            ));
        }
        for (i, tool) in self.tools.iter().enumerate() {
            let field = |f: &str| format!("tools[{i}].{f}");
            tool.needs.check().map_err(|e| ConfigError::new(field("needs"), e))?;
            if let Some(digest) = &tool.digest
                && digest.parse::<guild_replay::Digest>().is_err()
            {
                return Err(ConfigError::new(field("digest"), "must be 64 hex digits (a blake3 digest)"));
            }
            for (j, mount) in tool.mounts.iter().enumerate() {
                if mount.access != "ro" && mount.access != "rw" {
                    return Err(ConfigError::new(
                        field(&format!("mounts[{j}].access")),
                        format!("is {:?}; use \"ro\" or \"rw\"", mount.access),
                    ));
                }
                if !mount.guest.starts_with('/') {
                    return Err(ConfigError::new(
                        field(&format!("mounts[{j}].guest")),
                        "must be an absolute path such as /data",
                    ));
                }
            }
            if let Some(policy) = tool.cache.as_ref().and_then(crate::cache::CacheSetting::policy)
                && let Err((name, message)) = policy.validate()
            {
                return Err(ConfigError::new(field(&format!("cache.{name}")), message));
            }
            for (j, grant) in tool.secrets.iter().enumerate() {
                if !self.secrets.contains_key(&grant.name) {
                    return Err(ConfigError::new(
                        field(&format!("secrets[{j}].name")),
                        format!("no secret {:?} is defined under [secrets]", grant.name),
                    ));
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, tenant) in self.tenants.iter().enumerate() {
            let field = |f: &str| format!("tenants[{i}].{f}");
            if tenant.priority > guild_queue::PRIORITY_MAX {
                return Err(ConfigError::new(
                    field("priority"),
                    format!("is {}; use 0 to {}", tenant.priority, guild_queue::PRIORITY_MAX),
                ));
            }
            if let Some(max) = tenant.priority_max
                && (max > guild_queue::PRIORITY_MAX || max < tenant.priority)
            {
                return Err(ConfigError::new(
                    field("priority_max"),
                    format!(
                        "is {max}; use the tenant's priority ({}) to {}",
                        tenant.priority,
                        guild_queue::PRIORITY_MAX
                    ),
                ));
            }
            if !(1..=guild_queue::WEIGHT_MAX).contains(&tenant.weight) {
                return Err(ConfigError::new(
                    field("weight"),
                    format!("is {}; use 1 to {}", tenant.weight, guild_queue::WEIGHT_MAX),
                ));
            }
            if tenant.name.is_empty() || !names.insert(tenant.name.as_str()) {
                return Err(ConfigError::new(field("name"), format!("{:?} is empty or used twice", tenant.name)));
            }
            match &tenant.token_blake3 {
                Some(digest) if digest.parse::<guild_replay::Digest>().is_err() => {
                    return Err(ConfigError::new(
                        field("token_blake3"),
                        "must be 64 hex digits: the blake3 of the token (`guild token new` prints both)",
                    ));
                }
                None if self.oauth.is_none() => {
                    return Err(ConfigError::new(
                        field("token_blake3"),
                        "is missing: give the blake3 of the tenant's token (`guild token new` prints both), or configure [oauth] so its callers bring access tokens",
                    ));
                }
                _ => {}
            }
            if !(tenant.rate_per_second.is_finite() && tenant.rate_per_second > 0.0) {
                return Err(ConfigError::new(
                    field("rate_per_second"),
                    format!("must be a positive number of runs per second (got {})", tenant.rate_per_second),
                ));
            }
            if tenant.burst == 0 {
                return Err(ConfigError::new(field("burst"), "must be at least 1 run"));
            }
            if tenant.concurrency_max == 0 {
                return Err(ConfigError::new(field("concurrency_max"), "must be at least 1 run"));
            }
            if tenant.fuel_budget_period_s == 0 {
                return Err(ConfigError::new(field("fuel_budget_period_s"), "must be at least 1 second"));
            }
            if !(1..=BUDGET_PERIOD_S_MAX).contains(&tenant.budget_period_s) {
                return Err(ConfigError::new(
                    field("budget_period_s"),
                    format!("must be 1 to {BUDGET_PERIOD_S_MAX} seconds (a year)"),
                ));
            }
            let mut money = vec![("cost_budget".to_string(), tenant.cost_budget.as_ref())];
            let mut tokens = vec![("token_budget".to_string(), tenant.token_budget)];
            money.push(("agent_cost_budget".into(), tenant.agent_cost_budget.as_ref()));
            tokens.push(("agent_token_budget".into(), tenant.agent_token_budget));
            for (tool, budget) in &tenant.tool_budgets {
                money.push((format!("tool_budgets.{tool}.cost"), budget.cost.as_ref()));
                tokens.push((format!("tool_budgets.{tool}.tokens"), budget.tokens));
            }
            for (name, budget) in money {
                let Some(budget) = budget else { continue };
                guild_replay::cost::Price::parse(budget).map_err(|e| ConfigError::new(field(&name), e))?;
                if self.pricing.is_none() {
                    return Err(ConfigError::new(
                        field(&name),
                        "a cost budget needs a [pricing] table to price the runs with",
                    ));
                }
            }
            for (name, _) in tokens.iter().filter(|(_, t)| t.is_some()) {
                if self.pricing.as_ref().is_none_or(|p| p.llm.is_empty()) {
                    return Err(ConfigError::new(
                        field(name),
                        "a token budget needs [[pricing.llm]] upstreams, whose responses say the tokens used",
                    ));
                }
            }
        }
        if self.egress_throttle_ms_max > EGRESS_THROTTLE_MS_MAX {
            return Err(ConfigError::new(
                "egress_throttle_ms_max",
                format!("must be at most {EGRESS_THROTTLE_MS_MAX} ms (a day); 0 turns throttles off"),
            ));
        }
        for (i, limit) in self.run_limits.iter().enumerate() {
            let field = |f: &str| format!("run_limits[{i}].{f}");
            if !self.tenants.iter().any(|t| t.name == limit.tenant) {
                return Err(ConfigError::new(
                    field("tenant"),
                    format!("{:?} is not a configured tenant", limit.tenant),
                ));
            }
            if let Some(agent) = limit.agent.as_deref().filter(|a| *a != "*") {
                guild_queue::check_agent_label(agent).map_err(|e| ConfigError::new(field("agent"), e))?;
            }
            check_rate_or_bound((limit.rate_per_second, limit.concurrency_max), "runs", &field)?;
            if limit.burst == 0 {
                return Err(ConfigError::new(field("burst"), "must be at least 1 run"));
            }
            if limit.wait_ms_max > EGRESS_WAIT_MS_MAX {
                return Err(ConfigError::new(field("wait_ms_max"), format!("must be at most {EGRESS_WAIT_MS_MAX} ms")));
            }
            if limit.delay_ms_max > 0 && limit.rate_per_second.is_none() {
                return Err(ConfigError::new(
                    field("delay_ms_max"),
                    "holds an async run to a rate's turn, and this limit has no rate_per_second (a place in flight is \
                     waited for only wait_ms_max)",
                ));
            }
            if limit.delay_ms_max > RUN_DELAY_MS_MAX {
                return Err(ConfigError::new(
                    field("delay_ms_max"),
                    format!("must be at most {RUN_DELAY_MS_MAX} ms (a day)"),
                ));
            }
        }
        for (i, limit) in self.egress_limits.iter().enumerate() {
            let field = |f: &str| format!("egress_limits[{i}].{f}");
            match (&limit.upstream, &limit.secret) {
                (Some(upstream), None) => {
                    guild_vocab::egress::gate::parse_upstream(upstream)
                        .map_err(|e| ConfigError::new(field("upstream"), e))?;
                }
                (None, Some(secret)) if !self.secrets.contains_key(secret) => {
                    return Err(ConfigError::new(field("secret"), format!("{secret:?} is not defined in [secrets]")));
                }
                (None, Some(_)) => {}
                _ => {
                    return Err(ConfigError::new(
                        format!("egress_limits[{i}]"),
                        if limit.upstream.is_some() {
                            "names both an upstream and a secret: give one of them (a limit per key)"
                        } else {
                            "needs one of upstream = \"scheme://host[:port]\" or secret = \"NAME\""
                        },
                    ));
                }
            }
            check_rate_or_bound((limit.rate_per_second, limit.concurrency_max), "requests", &field)?;
            if limit.burst == 0 {
                return Err(ConfigError::new(field("burst"), "must be at least 1 request"));
            }
            if limit.wait_ms_max > EGRESS_WAIT_MS_MAX {
                return Err(ConfigError::new(field("wait_ms_max"), format!("must be at most {EGRESS_WAIT_MS_MAX} ms")));
            }
        }
        if self.cache.flight_waiters_max == 0 {
            return Err(ConfigError::new("cache.flight_waiters_max", "must be at least 1"));
        }
        for (i, key) in self.cache.trusted_keys.iter().enumerate() {
            if key.parse::<guild_replay::PublicKey>().is_err() {
                return Err(ConfigError::new(
                    format!("cache.trusted_keys[{i}]"),
                    "must be an ed25519 public key in hex (`guild key show` on that node prints it)",
                ));
            }
        }
        for (name, source) in &self.secrets {
            if guild_runtime::egress::SecretSource::parse(source).is_err() {
                return Err(ConfigError::new(
                    format!("secrets.{name}"),
                    "must be \"env:VARIABLE\" or \"file:/path\" (values are never written in the config)",
                ));
            }
        }
        Ok(())
    }
}
