//! Assembling the daemon from its configuration, and its lifecycle: serve until a shutdown
//! signal, then drain — stop accepting, let requests and queued runs finish up to the drain
//! deadline, close the audit log and flush bundles to disk.

use crate::config::{ConfigError, DaemonConfig, TenantConfig};
use crate::daemon::Daemon;
use crate::metrics::Metrics;
use crate::registry::{Base, Named};
use crate::registry::{Registry, ToolSource, ToolSpec};
use crate::remote::Remote;
use crate::rollout::RolloutState;
use crate::rollout::records::{Components, RecordStore};
use crate::runs::{Finished, RunTable};
use crate::tenants::Tenant;
use guild_audit::{AuditError, AuditLog, AuditRecord};
use guild_queue::{RedisQueue, RunQueue};
use guild_replay::{Digest, DirStore};
use guild_runtime::{AttemptEnd, Failure, FailureCode, RunStatus, Runtime};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What `start` needs besides the config.
pub struct DaemonSetup {
    /// The validated configuration.
    pub config: DaemonConfig,
    /// The runtime (recording into `store`).
    pub runtime: Arc<Runtime>,
    /// The bundle store.
    pub store: Arc<DirStore>,
    /// Audit log and uploaded components live here.
    pub state_dir: PathBuf,
    /// The token of the `default` tenant, used when the config names no tenants.
    pub default_token: Option<String>,
    /// Tools to register beside the config's (the embedded examples, `--tool` flags).
    pub extra_tools: Vec<ToolSpec>,
}

/// The pieces `start` returns besides the daemon.
pub struct DaemonParts {
    /// The assembled daemon that the HTTP routes and MCP share, its runs restored.
    pub daemon: Arc<Daemon>,
    /// Runs restored from the audit log.
    pub runs_restored: usize,
}

/// The daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration (or a tool it names) is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The audit log is broken or unwritable.
    #[error("{0}; `guild audit verify` names the break; move the log aside to start a new chain")]
    Audit(#[from] AuditError),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Build the daemon: tenants, tools (config, extra, uploaded), the audit log (verified, and
/// the run table refilled from it), metrics and the queue.
///
/// # Errors
/// [`StartError::Config`] when no tenant is configured and no token given, a tool cannot be loaded
/// or registered, the descriptor limit cannot be raised for the configured runs, or the Redis URL
/// or shared store is unusable; [`StartError::Audit`] when the audit log does not verify or cannot
/// be opened; [`StartError::Metrics`] when the metrics cannot be registered.
pub async fn start(setup: DaemonSetup) -> Result<DaemonParts, StartError> {
    let DaemonSetup { config, runtime, store, state_dir, default_token, extra_tools } = setup;
    let tenants = tenants(&config, default_token)?;
    let tools = Registry::default();
    let mut specs = ToolSpec::from_config(&config)?;
    specs.extend(extra_tools);
    tools.load(&runtime, specs).await?;
    let remote = match config.redis.configured() {
        Some(settings) => {
            let queue = RedisQueue::open(settings.clone()).map_err(|e| ConfigError::new("redis", e.to_string()))?;
            let shared = shared_store(&config)?;
            Some(Arc::new(Remote::new(queue, node_name(config.listen.port()), shared)))
        }
        None => None,
    };
    let rollout = RolloutState {
        records: match &remote {
            Some(remote) => RecordStore::Redis(remote.queue.clone()),
            None => RecordStore::file(&state_dir),
        },
        components: Components { dir: state_dir.join("tools"), redis: remote.as_ref().map(|r| r.queue.clone()) },
        changing: tokio::sync::Mutex::new(()),
        guards: Default::default(),
        shadows: crate::rollout::gate::Shadows::new(
            config.rollout.shadow_in_flight_max,
            config.rollout.shadow_kept_max,
        ),
        config: std::sync::RwLock::new(config.rollout.clone()),
    };
    if let Some(remote) = &remote {
        let settings = remote.queue.settings();
        remote.queue.check().await.map_err(|e| ConfigError::new("redis", format!("{}: {e}", settings.describe())))?;
        tracing::info!(redis = %settings.describe(), queue = %settings.queue, ack_durability = settings.ack_durability.name(), "jobs go to Redis");
    }
    reconcile(&runtime, &tools, &rollout, uploaded(&state_dir.join("tools")))
        .await
        .map_err(|message| ConfigError::new("tools", message))?;
    reserve_descriptors(&config, &tools)?;
    // A budget for a tool the config does not name may be a typo (or a tool uploaded later).
    let named: std::collections::BTreeSet<String> = tools.all().iter().map(|t| t.name.clone()).collect();
    for (i, limit) in config.run_limits.iter().enumerate() {
        if let Some(tool) = limit.tool.as_ref().filter(|tool| !named.contains(*tool)) {
            tracing::warn!(
                "run_limits[{i}].tool names {tool:?}, which no tool here is called; it applies only once one is"
            );
        }
    }
    for (i, tenant) in config.tenants.iter().enumerate() {
        for tool in tenant.tool_budgets.keys().filter(|tool| !named.contains(*tool)) {
            tracing::warn!(
                "tenants[{i}].tool_budgets names {tool:?}, which no tool here is called (tools: {}); its budget applies \
                 only once a tool of that name is uploaded",
                named.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    let runs = RunTable::new(config.queue.runs_kept_max);
    let mut runs_restored = 0;
    let usage = crate::usage::Usage::new(crate::usage::USAGE_HOURS_KEPT_DEFAULT, crate::usage::USAGE_ROWS_MAX_DEFAULT);
    // With Redis every node adds to and answers from the fleet's ledger.
    let usage = Arc::new(match &remote {
        Some(remote) => usage.shared(remote.queue.clone(), crate::usage::USAGE_ROWS_PER_HOUR_MAX_DEFAULT),
        None => usage,
    });
    // One node keeps its budgets in process: what its runs spent this period comes back from the
    // audit log, as the ledger does (a fleet's are in Redis).
    let local_budgets = Arc::new(guild_queue::LocalBudgets::new());
    let now_unix_s = guild_queue::now_unix_s();
    let audit = AuditLog::open(&state_dir.join("audit.log"), |record| {
        let entry = &record.entry;
        if let Some(cost) = &entry.cost {
            let who = (entry.tenant.as_str(), entry.subject.as_deref(), entry.agent.as_deref());
            usage.add(record.time_unix_ms, who, &entry.tool, cost);
            if remote.is_none() {
                restore_budget(&local_budgets, &tenants, record, cost, now_unix_s);
            }
        }
        if entry.event.is_some() {
            return;
        }
        if let (Some(remote), Some(attempt), Some(worker)) = (&remote, entry.attempt, &entry.worker) {
            remote.remember_audited(&entry.run, attempt, worker);
        }
        // A job's duplicate and retried attempts are in the log too; its run is the final one.
        // With Redis, a job a worker ran is answered from Redis (its output, worker and attempts
        // are there, not in this node's store): only this node's own runs come back here.
        let ran_here = entry.attempt.is_none() || remote.is_none();
        if ran_here && entry.completion.is_none_or(AttemptEnd::is_final) {
            restore(&runs, record);
            runs_restored += 1;
        }
    })?;
    let metrics = Metrics::new(env!("CARGO_PKG_VERSION"), guild_runtime::wasmtime_version(), remote.is_some())?;
    metrics.queue_depth_max.set(i64::try_from(config.queue.depth_max).unwrap_or(i64::MAX));
    for tool in tools.all() {
        metrics.register_tool(&tool.name, tool.revision);
        if tool.cache.is_some() {
            metrics.register_cached_tool(&tool.name);
        }
        if let Some(named) = tools.named(&tool.name) {
            let ramp = named.record.candidate.as_ref().map_or(0.0, |c| f64::from(c.ramp_bp) / 10_000.0);
            metrics.rollout_ramp.with_label_values(&[&tool.name]).set(ramp);
        }
    }
    for tenant in &tenants {
        metrics.register_tenant(&tenant.name);
    }
    let queue =
        RunQueue::new(config.queue.runs_in_flight_max, config.queue.depth_max, config.queue.runs_committing_max);
    let mut trusted: Vec<guild_replay::PublicKey> = runtime.public_key().into_iter().collect();
    // Validation checked every key parses.
    trusted.extend(config.cache.trusted_keys.iter().filter_map(|k| k.parse::<guild_replay::PublicKey>().ok()));
    let cache = crate::cache::ResultCache::open(
        state_dir.join("results"),
        store.clone(),
        trusted,
        config.cache.flight_waiters_max,
    );
    cache.retain(&cached_tools(&tools));
    let oauth = config.oauth.clone().map(crate::oauth::OAuth::new).transpose()?.map(Arc::new);
    if let Some(oauth) = oauth.clone() {
        // The issuer's keys are fetched now, not at the first call; if the issuer cannot be
        // reached yet, calls fetch them (and answer 503 `auth_unavailable` until it can).
        tokio::spawn(async move {
            if let Err(e) = oauth.prefetch().await {
                tracing::warn!(error = %e, "the OAuth issuer's keys were not fetched at start; calls will try again");
            }
        });
    }
    let budgets: Arc<dyn guild_queue::BudgetStore> = match &remote {
        Some(remote) => Arc::new(remote.queue.clone()),
        None => local_budgets,
    };
    let limits = config.egress_limits();
    let gate = Arc::new(match &remote {
        Some(remote) => guild_queue::EgressGates::shared(limits, config.egress_throttle_ms_max, remote.queue.clone()),
        None => guild_queue::EgressGates::local(limits, config.egress_throttle_ms_max),
    });
    let daemon = Daemon::new(crate::daemon::Parts {
        runtime,
        store,
        tools,
        tenants,
        queue,
        runs,
        audit,
        metrics,
        request_bytes_max: config.request_bytes_max,
        component_bytes_max: config.component_bytes_max,
        mcp: config.mcp.clone(),
        http: config.http.clone(),
        remote,
        rollout,
        cache,
        oauth,
        pricing: config.pricing.clone(),
        usage,
        budgets,
        gate,
        run_limits: config.run_limits.clone(),
    });
    let daemon = Arc::new(daemon);
    daemon.start_auditing();
    tokio::spawn(daemon.clone().follow());
    Ok(DaemonParts { daemon, runs_restored })
}

/// Every cached tool's name and cache policy.
pub(crate) fn cached_tools(tools: &Registry) -> Vec<(String, crate::cache::CachePolicy)> {
    tools.all().iter().filter_map(|t| Some((t.name.clone(), t.cache.clone()?))).collect()
}

/// Raise the descriptor limit and check that runs at their bounds leave the daemon its own (an
/// API node with `--redis` runs nothing itself).
fn reserve_descriptors(config: &DaemonConfig, tools: &Registry) -> Result<(), ConfigError> {
    let limit = crate::descriptors::raise_limit().map_err(|e| ConfigError::new("queue.runs_in_flight_max", e))?;
    let runs = if config.redis.configured().is_some() { 0 } else { config.queue.runs_in_flight_max };
    let budget = crate::descriptors::Budget {
        runs: runs as u64,
        resources_per_run: u64::from(resources_per_run(tools)),
        connections: config.http.connections_max as u64,
        egress_connections: if runs == 0 { 0 } else { config.egress_connections_max as u64 },
    };
    budget.check(limit).map_err(|e| ConfigError::new("queue.runs_in_flight_max", e))
}

/// The most WASI resources any registered tool's runs may hold (uploads get the default).
fn resources_per_run(tools: &Registry) -> u32 {
    tools
        .all()
        .iter()
        .map(|t| t.limits.wasi_resources_max)
        .max()
        .unwrap_or(0)
        .max(guild_runtime::WASI_RESOURCES_MAX_DEFAULT)
}

/// The bundle store every node shares (`redis.shared_store`), opened.
///
/// # Errors
/// [`ConfigError`] for `redis.shared_store` when the store cannot be opened (or created) there.
pub fn shared_store(config: &DaemonConfig) -> Result<Option<Arc<DirStore>>, ConfigError> {
    let Some(path) = &config.redis.shared_store else { return Ok(None) };
    DirStore::open(path)
        .map(|store| Some(Arc::new(store)))
        .map_err(|e| ConfigError::new("redis.shared_store", format!("cannot open {}: {e}", path.display())))
}

/// This machine's name, for the names API nodes and workers go by in a Redis queue.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "host".into())
}

/// This node's name among the API nodes of a Redis queue: host, port and process.
fn node_name(port: u16) -> String {
    format!("api-{}-{port}-{}", host_name(), std::process::id())
}

fn tenants(config: &DaemonConfig, default_token: Option<String>) -> Result<Vec<Arc<Tenant>>, ConfigError> {
    let requests_max = config.http.tenant_requests_max;
    let tenant = |config: &TenantConfig| Arc::new(Tenant::from_config(config).with_requests_max(requests_max));
    if !config.tenants.is_empty() {
        return Ok(config.tenants.iter().map(tenant).collect());
    }
    let token = default_token.ok_or_else(|| ConfigError {
        field: "tenants".into(),
        message: "no tenants are configured and no token was given; set GUILD_TOKEN or add [[tenants]]".into(),
    })?;
    let default = TenantConfig {
        name: "default".into(),
        token_blake3: Some(Digest::of(token.as_bytes()).to_hex()),
        tools: vec!["*".into()],
        admin: true,
        // The operator's own token: no token bucket below what the machine can run.
        rate_per_second: crate::config::DEFAULT_TENANT_RATE_PER_SECOND,
        burst: crate::config::DEFAULT_TENANT_BURST,
        concurrency_max: crate::config::CONCURRENCY_MAX_DEFAULT,
        fuel_budget_units: None,
        fuel_budget_period_s: crate::config::FUEL_BUDGET_PERIOD_S_DEFAULT,
        cost_budget: None,
        token_budget: None,
        budget_period_s: crate::config::COST_BUDGET_PERIOD_S_DEFAULT,
        tool_budgets: std::collections::BTreeMap::new(),
        agent_cost_budget: None,
        agent_token_budget: None,
        agents_max: guild_queue::AGENTS_MAX_DEFAULT,
        priority: guild_queue::PRIORITY_DEFAULT,
        // The operator's own: any priority.
        priority_max: Some(guild_queue::PRIORITY_MAX),
        weight: 1,
    };
    Ok(vec![tenant(&default)])
}

/// Bring the tools the config registered together with the persisted tool records: keep a
/// copy of each config component (so every revision can be loaded again), install the store's
/// records (their revisions loaded), and add components uploaded by an older version that no
/// record names. A record whose first revision came from the config is served only while the
/// config names it.
///
/// # Errors
/// For people: the store cannot be read or written, or a record's current revision cannot be
/// loaded.
async fn reconcile(
    runtime: &Runtime,
    tools: &Registry,
    rollout: &RolloutState,
    legacy: Vec<ToolSpec>,
) -> Result<(), String> {
    let components = &rollout.components;
    // Components uploaded before revisions were kept are taken in once: on the first start
    // that finds no record at all.
    let first_start = rollout.records.load().await?.is_empty();
    let configured: Vec<Arc<Named>> = tools.names();
    for named in &configured {
        adopt(runtime, tools, rollout, named, false).await?;
    }
    for record in rollout.records.load().await? {
        let name = record.name.clone();
        if configured.iter().any(|n| n.record.name == name) {
            continue;
        }
        if record.revisions.first().is_some_and(|r| r.added_by == "config") {
            tracing::info!(tool = %name, "the config no longer names this tool: it is not served (its revisions are kept)");
            continue;
        }
        match components.named(runtime, record, Base::default(), None, false).await {
            Ok(named) => {
                tools.install(named);
            }
            Err(e) => tracing::error!(tool = %name, error = %e, "a stored tool cannot be loaded; it is not served"),
        }
    }
    for spec in legacy.into_iter().filter(|_| first_start) {
        let Some(digest) = spec.digest else { continue };
        if tools.names().iter().any(|n| n.record.find(&digest.to_hex()).is_some()) {
            continue;
        }
        let ToolSource::File(path) = &spec.source else { continue };
        let (tool, _) = runtime.load_file(path).await.map_err(|e| format!("{}: {e}", path.display()))?;
        let name = tool.info().name.clone();
        let revision = crate::registry::revision_of(&tool, "upload", "uploaded before revisions were kept");
        let (record, read) = match tools.named(&name) {
            Some(named) => {
                let mut record = named.record.clone();
                record.add(revision).map_err(|e| e.to_string())?;
                (record, named.record.generation)
            }
            None => (guild_vocab::ToolRecord::new(&name, revision), 0),
        };
        let base = tools.named(&name).map(|n| n.base.clone()).unwrap_or_default();
        if rollout.records.put(&record, read).await? {
            let reuse = tools.named(&name);
            tools.install(components.named(runtime, record, base, reuse.as_deref(), false).await?);
        }
    }
    Ok(())
}

/// Take a tool the config names (`configured`: its component as revision 1 of a fresh record,
/// under the config's grants and limits) into the store and the registry: keep a copy of its
/// component; write the record of a name the store does not know; add a component the stored
/// record lacks as a new revision and make it current (changing the config is a deploy); then
/// install the stored record with every revision registered under the config's base (`rebase`:
/// again, for a reload that may have changed the grants or limits).
///
/// Returns the revision the config made current, when it named a component anew.
///
/// # Errors
/// For people: the component cannot be kept, the store read or written (or kept being written
/// by other nodes), or the current revision loaded.
pub(crate) async fn adopt(
    runtime: &Runtime,
    tools: &Registry,
    rollout: &RolloutState,
    configured: &Named,
    rebase: bool,
) -> Result<Option<u32>, String> {
    let components = &rollout.components;
    let tool = configured.current();
    let bytes = tool.component_bytes().map_err(|e| format!("cannot read tool {:?}: {e}", tool.name))?;
    components.keep(tool.tool.digest(), &bytes)?;
    if let Some(redis) = &components.redis {
        redis.put_component(tool.tool.digest(), &bytes).await.map_err(|e| e.to_string())?;
    }
    let digest = tool.tool.digest().to_hex();
    let name = &configured.record.name;
    for _ in 0..8 {
        let stored = rollout.records.read(name).await?;
        let mut made_current = None;
        let (record, read) = match &stored {
            None => (configured.record.clone(), Some(0)),
            Some(stored) if stored.find(&digest).is_some() => {
                if stored.current_revision().component != digest {
                    tracing::warn!(
                        tool = %name,
                        "the config names a component that is a revision of this tool but not its current one; \
                         the current revision is served (use `guild rollout` to change it)"
                    );
                }
                (stored.clone(), None)
            }
            Some(stored) => {
                let mut record = stored.clone();
                let (n, _) = record
                    .add(crate::registry::revision_of(&tool.tool, "config", "the config names it"))
                    .map_err(|e| e.to_string())?;
                record.current = n;
                record.candidate = None;
                made_current = Some(n);
                tracing::info!(tool = %record.name, revision = n, "the config names a new component: it is the current revision");
                (record, Some(stored.generation))
            }
        };
        if let Some(read) = read
            && !rollout.records.put(&record, read).await?
        {
            continue;
        }
        let reuse = tools.named(name);
        let reuse = reuse.as_deref().filter(|_| !rebase).unwrap_or(configured);
        let loaded = components.named(runtime, record, configured.base.clone(), Some(reuse), rebase).await?;
        tools.install(loaded);
        return Ok(made_current);
    }
    Err(format!("the record of tool {name:?} kept being changed by other nodes; start again"))
}

/// Components uploaded through `POST /v1/tools` before a restart.
fn uploaded(dir: &std::path::Path) -> Vec<ToolSpec> {
    let mut paths: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    paths.retain(|p| p.extension().is_some_and(|x| x == "wasm"));
    paths.sort();
    paths
        .into_iter()
        .map(|path| ToolSpec {
            field: format!("uploaded tool {}", path.display()),
            digest: path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()),
            source: ToolSource::File(path),
            name: None,
            grants: Default::default(),
            limits: Default::default(),
            only_requested_mounts: false,
            command: Default::default(),
            cache: None,
            needs: Default::default(),
        })
        .collect()
}

fn restore(runs: &RunTable, record: &AuditRecord) {
    let entry = &record.entry;
    // The log keeps the label, not the whole failure: that is in the bundle.
    let (status, error) = match entry.outcome.as_str() {
        "output" => (RunStatus::Succeeded, None),
        "dead" => (RunStatus::Dead, None),
        label => (RunStatus::Failed, FailureCode::parse(label).map(|code| Failure::host(code, ""))),
    };
    let finished = Finished {
        status,
        error,
        bundle: entry.bundle,
        fuel_used_units: entry.fuel_used_units,
        wall_time_us: 0,
        revision: entry.revision,
        cache: match entry.completion {
            Some(guild_vocab::AttemptEnd::CacheHit) => Some(crate::cache::CacheState::Hit),
            Some(guild_vocab::AttemptEnd::CacheMerged) => Some(crate::cache::CacheState::Merged),
            _ => None,
        },
        // The audit record keeps the run's cost: restored with it.
        cost: entry.cost.clone().map(Arc::new),
        trace_id: entry.trace_id.clone(),
    };
    runs.restore(
        (entry.run.clone(), record.time_unix_ms),
        (&entry.tenant, entry.subject.as_deref(), entry.agent.as_deref()),
        &entry.tool,
        &entry.input_digest,
        entry.idempotency_key.as_deref(),
        finished,
    );
}

/// Count a run read back from the audit log against its tenant's budgets, if it finished in the
/// tenant's period now running: its money and the tokens its cost lines name.
fn restore_budget(
    budgets: &guild_queue::LocalBudgets,
    tenants: &[Arc<Tenant>],
    record: &guild_audit::AuditRecord,
    cost: &guild_replay::cost::Cost,
    now_unix_s: u64,
) {
    let entry = &record.entry;
    let Some(tenant) = tenants.iter().find(|t| t.name == entry.tenant) else { return };
    let Some(plan) = tenant.plan_for((&entry.tool, entry.agent.as_deref()), rust_decimal::Decimal::ZERO, now_unix_s)
    else {
        return;
    };
    if record.time_unix_ms / 1000 < plan.period_start_unix_s {
        return;
    }
    let tokens = cost
        .lines
        .iter()
        .filter(|l| l.resource.ends_with("_tokens"))
        .filter_map(|l| rust_decimal::prelude::ToPrimitive::to_u64(&l.quantity.0))
        .fold(0u64, u64::saturating_add);
    budgets.restore(&plan, tokens, cost.total.0);
}

/// Serve on `listener` until `shutdown` resolves; then drain: refuse new runs and fail
/// `/readyz` for `notice` while still accepting connections, stop accepting, finish the requests
/// in flight and the queued runs (up to `drain`), close the audit log, flush bundles. Returns
/// whether everything finished within the deadline.
///
/// # Errors
/// An I/O error when the bundles cannot be written to disk after draining. An `accept` that fails
/// is retried, not returned.
pub async fn run(
    daemon: Arc<Daemon>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    notice: Duration,
    drain: Duration,
) -> std::io::Result<bool> {
    let draining = daemon.clone();
    let started = Arc::new(std::sync::Mutex::new(None));
    let began = started.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!(
            notice_ms = u64::try_from(notice.as_millis()).unwrap_or(u64::MAX),
            "shutting down: no new runs; draining"
        );
        draining.start_draining();
        tokio::time::sleep(notice).await;
        *began.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
    };
    // Requests in flight (a sync run waiting for its result) get the drain deadline, and the
    // queue whatever of it is left: one deadline for both.
    crate::http::serve(listener, crate::api::router(daemon.clone()), daemon.http_config().clone(), signal, drain)
        .await?;
    let spent = started.lock().unwrap_or_else(|p| p.into_inner()).map_or(Duration::ZERO, |t| t.elapsed());
    let drained = daemon
        .drain(drain.saturating_sub(spent))
        .await
        .map_err(|e| std::io::Error::other(format!("bundles could not be written: {e}")))?;
    tracing::info!(drained, "stopped");
    Ok(drained)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_tenant_is_held_back_by_the_queue_not_a_token_bucket() {
        let (config, _) = DaemonConfig::load("", std::path::Path::new("guild.toml"), []).expect("defaults");
        let tenants = tenants(&config, Some("token".into())).expect("the default tenant");
        // Far past a configured tenant's burst (2000): every admission is let through.
        for _ in 0..10_000 {
            drop(tenants[0].admit(1).expect("no rate limit for the operator's own token"));
        }
    }
}
