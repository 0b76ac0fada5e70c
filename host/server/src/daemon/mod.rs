//! The daemon's state and its run pipeline, for a caller `auth.rs` already authenticated: tool
//! and tenant checks → schema → idempotency → tenant admission (rate, concurrency, fuel budget)
//! → bounded queue → run on the shared runtime (recorded) → audit record (fsynced) → metrics.
//! With `--redis` the run becomes a job for `guild worker`s instead (`remote.rs`). Every run executes in its own
//! task, so a client that disconnects never cuts a run, its bundle or its audit record short.

use crate::config::McpConfig;
use crate::drain::DrainToken;
use crate::metrics::Metrics;
use crate::principal::Bearer;
use crate::principal::Owner;
use crate::registry::{InvalidInput, RegisteredTool, Registry, Unroutable};
use crate::remote::{self, Remote};
use crate::runs::{Finished, Inserted, RunEntry, RunState, RunTable, new_run_id, request_digest};
use crate::tenants::{Admission, Refusal, Tenant};
use guild_audit::{AuditEntry, AuditEvent, AuditLog};
use guild_queue::{QueueError, QueueFull, RunQueue};
use guild_replay::{Digest, DirStore};
use guild_runtime::CancellationToken;
use guild_runtime::Runtime;
use std::sync::Arc;
use std::time::Duration;

/// How long a sync call keeps reading a finished remote job's output while Redis is away (a
/// failover takes seconds) before it answers 202 with the run to fetch instead.
const OUTPUT_READ_RETRY: Duration = Duration::from_secs(5);
use tokio::sync::{oneshot, watch};
use tracing::Instrument;

mod cached;
mod execute;
mod rollout;

use execute::Job;

/// Everything the handlers share. Its parts are private: the API, MCP and the Redis side reach
/// them through the few operations below, and the Redis audit writer gets only narrow handles
/// (the audit log, the metrics and the drain token), never the daemon itself.
pub struct Daemon {
    /// The run pipeline.
    runtime: Arc<Runtime>,
    /// Where bundles go.
    store: Arc<DirStore>,
    /// The tools callers may run, by name, each with its grants, limits and input schema.
    tools: Registry,
    /// Who may call (swapped whole by a config reload).
    tenants: std::sync::RwLock<Arc<Vec<Arc<Tenant>>>>,
    /// The bounded run queue.
    queue: Arc<RunQueue>,
    /// Runs by id.
    runs: RunTable,
    /// The audit log.
    audit: Arc<AuditLog>,
    /// The Prometheus metrics `/metrics` serves.
    metrics: Arc<Metrics>,
    /// Largest run request body, bytes.
    request_bytes_max: usize,
    /// Largest uploaded component, bytes.
    component_bytes_max: usize,
    /// The `/mcp` endpoint's Host and Origin allow-lists and session bounds.
    mcp: McpConfig,
    /// Bounds on the HTTP listener.
    http: crate::http::HttpConfig,
    /// With `--redis`: runs go to the shared queue for `guild worker`s instead of running here.
    remote: Option<Arc<Remote>>,
    /// The task writing remote jobs' audit records.
    auditing: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    drain: DrainToken,
    tools_changed: watch::Sender<u64>,
    /// Tool records' store, revisions' components, rollouts' guard rails.
    rollout: crate::rollout::RolloutState,
    /// Hermetic runs' results by action digest, and identical calls in flight.
    cache: crate::cache::ResultCache,
    /// How to stop each MCP task still running here, by run id (entries leave when the run ends).
    task_cancels: std::sync::Mutex<std::collections::HashMap<String, CancellationToken>>,
    /// With `[oauth]`: the resource server checking JWT access tokens.
    oauth: Option<Arc<crate::oauth::OAuth>>,
    /// With `[pricing]`: what runs cost (swapped whole by a config reload).
    pricing: std::sync::RwLock<Option<Arc<guild_replay::cost::PriceTable>>>,
    /// What runs cost, summed per hour, tenant and tool (refilled from the audit log at start).
    usage: Arc<crate::usage::Usage>,
    /// Where money and token budgets are kept: in process, or with `--redis` in Redis for the
    /// whole fleet.
    budgets: Arc<dyn guild_queue::BudgetStore>,
    /// Keyed egress limits and upstream throttles its runs' requests are held to, and run-level
    /// limits (in process, or Redis).
    pub(crate) gate: Arc<guild_queue::EgressGates>,
    /// `[[run_limits]]` (swapped whole by a config reload).
    pub(crate) run_limits: std::sync::RwLock<Vec<crate::config::RunLimitConfig>>,
}

/// The parts a daemon is assembled from (see `start`).
pub(crate) struct Parts {
    /// The run pipeline.
    pub(crate) runtime: Arc<Runtime>,
    /// Where bundles go.
    pub(crate) store: Arc<DirStore>,
    /// The tools callers may run, by name, each with its grants, limits and input schema.
    pub(crate) tools: Registry,
    /// Who may call.
    pub(crate) tenants: Vec<Arc<Tenant>>,
    /// The bounded run queue.
    pub(crate) queue: Arc<RunQueue>,
    /// Runs by id (restored from the audit log at start).
    pub(crate) runs: RunTable,
    /// The audit log.
    pub(crate) audit: AuditLog,
    /// The Prometheus metrics `/metrics` serves.
    pub(crate) metrics: Metrics,
    /// Largest run request body, bytes.
    pub(crate) request_bytes_max: usize,
    /// Largest uploaded component, bytes.
    pub(crate) component_bytes_max: usize,
    /// The `/mcp` endpoint's settings.
    pub(crate) mcp: McpConfig,
    /// Bounds on the HTTP listener.
    pub(crate) http: crate::http::HttpConfig,
    /// With `--redis`: the shared queue's side.
    pub(crate) remote: Option<Arc<Remote>>,
    /// Tool records' store and revisions' components.
    pub(crate) rollout: crate::rollout::RolloutState,
    /// The result cache.
    pub(crate) cache: crate::cache::ResultCache,
    /// With `[oauth]`: the resource server.
    pub(crate) oauth: Option<Arc<crate::oauth::OAuth>>,
    /// With `[pricing]`: the price table.
    pub(crate) pricing: Option<guild_replay::cost::PriceTable>,
    /// The usage ledger, refilled from the audit log.
    pub(crate) usage: Arc<crate::usage::Usage>,
    /// Where budgets are kept: in process (refilled from the audit log), or Redis.
    pub(crate) budgets: Arc<dyn guild_queue::BudgetStore>,
    /// Keyed egress limits and upstream throttles: in process, or Redis.
    pub(crate) gate: Arc<guild_queue::EgressGates>,
    /// `[[run_limits]]`.
    pub(crate) run_limits: Vec<crate::config::RunLimitConfig>,
}

/// Why a caller is not shown a run or bundle.
#[derive(Debug)]
pub(crate) enum Hidden {
    /// It is another tenant's (answered like one that does not exist).
    NotTheirs,
    /// An admin's read could not be audited.
    NotAudited(String),
}

/// A request to run a tool, as the API received it.
#[derive(Debug)]
pub struct RunRequest {
    /// The registered tool's name, as `GET /v1/tools` lists it.
    pub tool: String,
    /// The input JSON, checked against the tool's input schema before anything runs.
    pub input: serde_json::Value,
    /// Answer 202 at once rather than wait.
    pub asynchronous: bool,
    /// Resubmissions with the same key return the first run.
    pub idempotency_key: Option<String>,
    /// Stops the run once cancelled (an MCP client's `notifications/cancelled`); the run
    /// still ends in a bundle, whose outcome says cancelled.
    pub cancel: Option<CancellationToken>,
    /// Who within the tenant it is for: an OAuth access token's subject (as recorded), named
    /// in the bundle's `action.json` principal and the audit record. `None`: the tenant itself.
    pub subject: Option<String>,
    /// The caller's agent label (checked by `guild_queue::check_agent_label`): counted against
    /// the tenant's per-agent budgets, named in the audit record and the usage ledger.
    pub agent: Option<String>,
    /// 0 to 9, higher first; none: the tenant's `priority`. Above the tenant's `priority_max`
    /// it is refused (403).
    pub priority: Option<u8>,
}

/// The priority a run of `tenant` gets: the one asked for, within the tenant's allowance, or
/// the tenant's own.
///
/// # Errors
/// A message naming the allowance (for `Rejection::Forbidden`) when the request asks for more.
fn priority_for(tenant: &Tenant, asked: Option<u8>) -> Result<u8, String> {
    let (own, max) = tenant.priority;
    match asked {
        None => Ok(own),
        Some(p) if p <= max => Ok(p),
        Some(p) => Err(format!(
            "priority {p} is above tenant {}'s allowance of {max}; ask for 0 to {max}, or ask the operator to raise \
             the tenant's priority_max",
            tenant.name
        )),
    }
}

/// Why a run request was refused before it became a run.
#[derive(Debug)]
pub enum Rejection {
    /// The tenant may not call the tool.
    Forbidden(String),
    /// No such tool.
    UnknownTool(String),
    /// The input does not match the schema.
    InvalidInput(InvalidInput),
    /// The idempotency key names a different request.
    KeyConflict {
        /// The idempotency key the caller sent.
        key: String,
        /// The run it names.
        run: String,
    },
    /// The tenant's limits refuse it.
    Tenant {
        /// The tenant's name.
        tenant: String,
        /// Which of its limits refused: rate, concurrency or fuel budget.
        refusal: Refusal,
    },
    /// The tool is switched off for the caller.
    Disabled {
        /// The tool's name.
        tool: String,
        /// What the operator said.
        reason: String,
    },
    /// The queue is full or draining.
    Queue(QueueFull),
    /// The shared queue (Redis) cannot be reached.
    Unavailable {
        /// What failed, for the caller: Redis unreachable, too many jobs awaited on this node,
        /// a job that expired under its idempotency key.
        message: String,
        /// Seconds until worth retrying.
        retry_after_s: u64,
    },
    /// A sync run of a tool whose lane no live worker reads: it would wait without end (an
    /// async one is accepted and waits, showing `waiting_for_capability`).
    NoCapableWorker {
        /// The tool.
        tool: String,
        /// Its lane: what it needs (`gpu`, `label:zone=eu`).
        lane: String,
    },
}

/// What a submission gives back.
pub enum Submitted {
    /// The run finished (sync), with its output text when it produced one.
    Finished {
        /// The run's entry in the run table: id, tenant, tool, state.
        entry: RunEntry,
        /// How it ended.
        finished: Arc<Finished>,
        /// Its output text.
        output: Option<String>,
    },
    /// Accepted (async) or an idempotent resubmission of a run not yet finished.
    Accepted {
        /// The run's entry in the run table, to poll with `GET /v1/runs/{id}`.
        entry: RunEntry,
        /// True for a resubmission.
        replayed: bool,
    },
    /// An idempotent resubmission of a finished run.
    Replayed {
        /// The first run's entry in the run table, which the key named.
        entry: RunEntry,
        /// How it ended.
        finished: Arc<Finished>,
        /// Its output text, when known here (else it is read from the bundle).
        output: Option<String>,
    },
}

impl Daemon {
    /// Assemble the daemon's state.
    pub(crate) fn new(parts: Parts) -> Self {
        let Parts {
            runtime,
            store,
            tools,
            tenants,
            queue,
            runs,
            audit,
            metrics,
            request_bytes_max,
            component_bytes_max,
            mcp,
            http,
            remote,
            rollout,
            cache,
            oauth,
            pricing,
            usage,
            budgets,
            gate,
            run_limits,
        } = parts;
        metrics.show_budgets(&tenants);
        Self {
            runtime,
            store,
            tools,
            tenants: std::sync::RwLock::new(Arc::new(tenants)),
            queue,
            runs,
            audit: Arc::new(audit),
            metrics: Arc::new(metrics),
            request_bytes_max,
            component_bytes_max,
            mcp,
            http,
            remote,
            auditing: std::sync::Mutex::new(None),
            drain: DrainToken::default(),
            tools_changed: watch::Sender::new(0),
            rollout,
            cache,
            task_cancels: std::sync::Mutex::new(std::collections::HashMap::new()),
            oauth,
            pricing: std::sync::RwLock::new(pricing.map(Arc::new)),
            usage,
            budgets,
            gate,
            run_limits: std::sync::RwLock::new(run_limits),
        }
    }

    /// The usage ledger.
    pub(crate) fn usage(&self) -> &crate::usage::Usage {
        &self.usage
    }

    /// With `[pricing]`: the price table in force.
    pub(crate) fn pricing(&self) -> Option<Arc<guild_replay::cost::PriceTable>> {
        self.pricing.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Put `config`'s egress and run limits in force for the requests and runs checked from now
    /// on (a config reload).
    pub(crate) fn set_limits(&self, config: &crate::config::DaemonConfig) {
        self.gate.set_limits(config.egress_limits(), config.egress_throttle_ms_max);
        *self.run_limits.write().unwrap_or_else(|p| p.into_inner()) = config.run_limits.clone();
    }

    /// Put `pricing` in force for the runs that finish from now on (a config reload).
    pub(crate) fn set_pricing(&self, pricing: Option<guild_replay::cost::PriceTable>) {
        *self.pricing.write().unwrap_or_else(|p| p.into_inner()) = pricing.map(Arc::new);
    }

    /// With `[oauth]`: the resource server checking access tokens.
    pub(crate) fn oauth(&self) -> Option<&crate::oauth::OAuth> {
        self.oauth.as_deref()
    }

    /// The configured tenant named `name`.
    pub(crate) fn tenant_named(&self, name: &str) -> Option<Arc<Tenant>> {
        self.tenants().iter().find(|t| t.name == name).cloned()
    }

    /// Tool records' store, revisions' components and rollouts' guard rails.
    pub(crate) fn rollout(&self) -> &crate::rollout::RolloutState {
        &self.rollout
    }

    /// Hermetic runs' results by action digest.
    pub(crate) fn cache(&self) -> &crate::cache::ResultCache {
        &self.cache
    }

    /// Keep `cancel` as the way to stop run `entry` (an MCP task) until the run ends.
    pub(crate) fn remember_task(self: &Arc<Self>, entry: &RunEntry, cancel: CancellationToken) {
        self.task_cancels.lock().unwrap_or_else(|p| p.into_inner()).insert(entry.id.clone(), cancel);
        let (daemon, id, mut state) = (self.clone(), entry.id.clone(), entry.state.clone());
        tokio::spawn(async move {
            let _ = state.wait_for(|s| matches!(s, RunState::Finished(_))).await;
            daemon.task_cancels.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        });
    }

    /// Stop the MCP task that is run `id`; false when no such task runs here.
    pub(crate) fn cancel_task(&self, id: &str) -> bool {
        match self.task_cancels.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            Some(cancel) => {
                cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// The tools callers may run, by name, each with its grants, limits and input schema.
    pub fn tools(&self) -> &Registry {
        &self.tools
    }

    /// Who may call.
    pub fn tenants(&self) -> Arc<Vec<Arc<Tenant>>> {
        self.tenants.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Put `tenants` in place of the configured ones (a config reload).
    pub(crate) fn set_tenants(&self, tenants: Vec<Arc<Tenant>>) {
        self.metrics.show_budgets(&tenants);
        *self.tenants.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tenants);
    }

    /// The run pipeline.
    pub(crate) fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Where bundles go.
    pub(crate) fn store(&self) -> &Arc<DirStore> {
        &self.store
    }

    /// The Prometheus metrics `/metrics` serves.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The audit log.
    pub(crate) fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Runs by id.
    pub(crate) fn runs(&self) -> &RunTable {
        &self.runs
    }

    /// The bounded run queue.
    pub(crate) fn queue(&self) -> &RunQueue {
        &self.queue
    }

    /// With `--redis`: the shared queue's side.
    pub(crate) fn remote(&self) -> Option<&Arc<Remote>> {
        self.remote.as_ref()
    }

    /// Largest run request body, bytes (`request_bytes_max`).
    pub(crate) fn request_bytes_max(&self) -> usize {
        self.request_bytes_max
    }

    /// Largest uploaded component, bytes (`component_bytes_max`).
    pub(crate) fn component_bytes_max(&self) -> usize {
        self.component_bytes_max
    }

    /// The `/mcp` endpoint's settings.
    pub(crate) fn mcp_config(&self) -> &McpConfig {
        &self.mcp
    }

    /// Bounds on the HTTP listener.
    pub(crate) fn http_config(&self) -> &crate::http::HttpConfig {
        &self.http
    }

    /// With `--redis`: start writing the audit records of finished jobs.
    pub fn start_auditing(self: &Arc<Self>) {
        if let Some(remote) = self.remote.clone() {
            tokio::spawn(remote.clone().notice_loop());
            let task = tokio::spawn(remote.audit_loop(
                self.audit.clone(),
                self.metrics.clone(),
                self.usage.clone(),
                self.drain.clone(),
            ));
            *self.auditing.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        }
    }

    /// Say that tools were added or removed (MCP sessions announce `tools/list_changed`).
    pub fn tools_changed(&self) {
        self.tools_changed.send_modify(|version| *version += 1);
    }

    /// Wakes whenever [`Daemon::tools_changed`] is called.
    pub fn watch_tools(&self) -> watch::Receiver<u64> {
        self.tools_changed.subscribe()
    }

    /// The tenant whose token this is.
    pub fn tenant_for(&self, token: &str) -> Option<Arc<Tenant>> {
        let digest = blake3::hash(token.as_bytes());
        self.tenants().iter().find(|t| t.owns(&digest)).cloned()
    }

    /// Whether `caller` (with what its `bearer` token grants) may see the run or bundle `id`
    /// that belongs to `owner` (`None`: it names no owner): its own ([`Bearer::owns`]), or, for
    /// an admin, anyone's — an admin's look at another principal's is written to the audit log
    /// before it is allowed.
    ///
    /// # Errors
    /// [`Hidden::NotTheirs`] (answer as if it did not exist), or [`Hidden::NotAudited`].
    pub(crate) async fn authorize(
        &self,
        (caller, bearer): (&Tenant, &Bearer),
        owner: Option<Owner<'_>>,
        what: &str,
        id: &str,
    ) -> Result<(), Hidden> {
        if owner.is_some_and(|owner| bearer.owns(caller, owner)) {
            return Ok(());
        }
        if !(caller.admin && bearer.may_admin()) {
            return Err(Hidden::NotTheirs);
        }
        let actor = match &bearer.subject {
            Some(subject) => format!("{} (subject {subject})", caller.name),
            None => caller.name.clone(),
        };
        let owner_tenant = owner.map(|o| o.tenant).unwrap_or_default();
        let event = AuditEvent { kind: "admin_read".into(), actor, detail: format!("{what} {id}") };
        self.record_event(event, id, owner_tenant).await.map_err(Hidden::NotAudited)?;
        tracing::info!(admin = %caller.name, owner = owner_tenant, what, id, "admin read another principal's data");
        Ok(())
    }

    /// Write `event`, about `about` (a run, bundle, tool…) of `tenant`, to the audit log and
    /// count it.
    ///
    /// # Errors
    /// The audit log's error, as text, when the record was not written.
    pub(crate) async fn record_event(&self, event: AuditEvent, about: &str, tenant: &str) -> Result<(), String> {
        self.audit.append(AuditEntry::event(event, about, tenant)).await.map_err(|e| e.to_string())?;
        self.metrics.audit_records.inc();
        Ok(())
    }

    /// Stop taking runs: `/readyz` fails, new runs get 503.
    pub fn start_draining(&self) {
        self.drain.start();
        self.queue.close();
    }

    /// True once draining started.
    pub fn is_draining(&self) -> bool {
        self.drain.is_draining()
    }

    /// Submit a run for `tenant`.
    ///
    /// # Errors
    /// `Rejection::Forbidden` when the tenant may not call the tool; `Rejection::UnknownTool` when
    /// no tool has that name; `Rejection::InvalidInput` when the input does not match the tool's
    /// schema; `Rejection::KeyConflict` when the idempotency key names another request;
    /// `Rejection::Tenant` when the tenant's concurrency, rate or fuel budget refuses it;
    /// `Rejection::Queue` when the run queue is full or draining; `Rejection::Unavailable` (with
    /// `--redis`) when Redis cannot be reached or this node awaits as many jobs as it may.
    pub async fn submit(self: &Arc<Self>, tenant: &Arc<Tenant>, request: RunRequest) -> Result<Submitted, Rejection> {
        if !tenant.tools.allows(&request.tool) {
            return Err(Rejection::Forbidden(format!(
                "tenant {} may not call tool {:?}; ask the operator to add it to the tenant's tools",
                tenant.name, request.tool
            )));
        }
        // A retried call (same idempotency key) lands on the same revision; any other call is
        // routed by a fresh random key.
        let routing_key = request.idempotency_key.clone().unwrap_or_else(new_run_id);
        let routed = self.tools.route(&request.tool, &tenant.name, &routing_key).map_err(|why| match why {
            Unroutable::Unknown => Rejection::UnknownTool(request.tool.clone()),
            Unroutable::Disabled(disabled) => {
                self.metrics.rejections.with_label_values(&[&tenant.name, "tool_disabled"]).inc();
                Rejection::Disabled { tool: request.tool.clone(), reason: disabled.reason }
            }
        })?;
        let tool = routed.tool.clone();
        let priority = priority_for(tenant, request.priority).map_err(Rejection::Forbidden)?;
        let input = request.input.to_string();
        let input_digest = Digest::of(input.as_bytes());
        let request_digest = request_digest(&tool.name, &input_digest);
        if let Some(remote) = self.remote.clone() {
            let digests = (input_digest, request_digest);
            return self.submit_remote(&remote, tenant, routed, (request, priority), input, digests).await;
        }
        let key = request.idempotency_key.as_deref();
        if let Some(key) = key
            && let Some(existing) = self.runs.by_key((&tenant.name, request.subject.as_deref()), key)
        {
            if existing.request_digest == request_digest {
                return wait_existing(existing, request.asynchronous).await;
            }
            return Err(Rejection::KeyConflict { key: key.to_string(), run: existing.id });
        }
        let (admission, turn) = self
            .admit(tenant, &tool, (request.agent.as_deref(), request.asynchronous))
            .instrument(admission_span(&tenant.name))
            .await?;
        // After admission: checking input costs up to the schema checker's fuel, so it is the
        // tenant's rate, concurrency and budgets that bound how often a caller can ask for it.
        check_input(&tool, &input).await.map_err(Rejection::InvalidInput)?;
        let place = guild_queue::Place {
            priority,
            tenant: tenant.name.clone(),
            agent: request.agent.clone().unwrap_or_default(),
        };
        let ticket = self.queue.enter(place, tenant.weight).map_err(|full| {
            let reason = if full.draining { "draining" } else { "queue_full" };
            self.metrics.rejections.with_label_values(&[&tenant.name, reason]).inc();
            Rejection::Queue(full)
        })?;
        let (entry, state) = match self.runs.insert(
            &tenant.name,
            (request.subject.as_deref(), request.agent.as_deref()),
            &tool.name,
            request_digest,
            key,
            RunState::Queued,
        ) {
            Inserted::New(entry, state) => (entry, state),
            // A concurrent submission with the same key won the race: answer with its run.
            Inserted::Existing(entry) => return wait_existing(entry, request.asynchronous).await,
            Inserted::Conflict(run) => {
                return Err(Rejection::KeyConflict { key: key.unwrap_or_default().to_string(), run });
            }
        };
        self.metrics.queue_depth.set(self.queue.depth() as i64);
        let (done, finished) = oneshot::channel();
        let cancel = request.cancel.unwrap_or_default();
        let key = request.idempotency_key.clone();
        let shadow = routed.shadow;
        let not_before = (!turn.is_zero()).then(|| tokio::time::Instant::now() + turn);
        let job = Job { tool, input, input_digest, admission, ticket, state, done, key, cancel, shadow, not_before };
        let span = tracing::info_span!("run", run_id = %entry.id, tenant = %tenant.name, tool = %entry.tool);
        // A child of the caller's request (or MCP call) span; an async run's outlives it.
        let traced = guild_runtime::trace::run_span(&entry.id, &entry.tool, Some(job.tool.revision), &tenant.name);
        let traced = guild_telemetry::carried(traced);
        tokio::spawn(traced.scope(self.clone().execute(job, entry.clone())).instrument(span));
        if request.asynchronous {
            return Ok(Submitted::Accepted { entry, replayed: false });
        }
        match finished.await {
            Ok((finished, output)) => Ok(Submitted::Finished { entry, finished, output }),
            // The task ended without answering (it panicked): report what the table says.
            Err(_) => wait_existing(entry, false).await,
        }
    }

    /// Admit a run of `tool` for `tenant` (`agent`, `asynchronous`): its run limits, its
    /// tenant's limits, its budgets. A sync run waits here for its turn under the run limits'
    /// rates; an async one is handed the wait (its turn), to start no sooner.
    async fn admit(
        &self,
        tenant: &Arc<Tenant>,
        tool: &RegisteredTool,
        (agent, asynchronous): (Option<&str>, bool),
    ) -> Result<(Admission, Duration), Rejection> {
        let refused = |refusal: crate::tenants::Refusal| {
            self.metrics.rejections.with_label_values(&[&tenant.name, refusal.code()]).inc();
            Rejection::Tenant { tenant: tenant.name.clone(), refusal }
        };
        // Run-level limits first: a run waiting for room holds nothing of its tenant's.
        let limits = {
            let run_limits = self.run_limits.read().unwrap_or_else(|p| p.into_inner());
            crate::config::RunLimitConfig::for_run(&run_limits, (&tenant.name, &tool.name, agent), asynchronous)
        };
        let admitted = self.gate.admit_run(&limits).await.map_err(|r| {
            if r.unavailable {
                self.metrics.rejections.with_label_values(&[&tenant.name, "queue_unavailable"]).inc();
                return Rejection::Unavailable { message: r.refusal.reason, retry_after_s: 1 };
            }
            refused(if r.in_flight {
                crate::tenants::Refusal::RunConcurrency(r.refusal)
            } else {
                crate::tenants::Refusal::RunLimit(r.refusal)
            })
        })?;
        let guild_queue::RunAdmitted { held, mut wait } = admitted;
        if !asynchronous && !wait.is_zero() {
            // Within wait_ms_max (a sync run's turn is never further).
            tokio::time::sleep(wait).await;
            wait = Duration::ZERO;
        }
        let mut admission = tenant.admit(tool.limits.fuel_units).map_err(refused)?;
        admission.hold(held);
        // A money budget holds back what the run could cost at most: its limits, priced.
        let pricing = self.pricing();
        let worst = || pricing.as_ref().map_or(rust_decimal::Decimal::ZERO, |p| p.price_worst(&tool.limits).total.0);
        match tenant.reserve_budgets(&mut admission, (&tool.name, agent), worst, &self.budgets).await {
            Ok(Ok(())) => Ok((admission, wait)),
            Ok(Err(refusal)) => Err(refused(refusal)),
            Err(e) => {
                self.metrics.rejections.with_label_values(&[&tenant.name, "queue_unavailable"]).inc();
                Err(Rejection::Unavailable { message: format!("the budgets cannot be checked: {e}"), retry_after_s: 1 })
            }
        }
    }

    /// A meter for a run's LLM requests when `[pricing]` names LLM upstreams: holding them to
    /// the budgets `admission` reserved against, if any, and their answers to what the table
    /// needs to read their usage.
    pub(crate) fn meter_for(&self, admission: &Admission) -> Option<Arc<dyn guild_replay::cost::TokenMeter>> {
        let pricing = self.pricing().filter(|p| !p.llm.is_empty())?;
        let plan = admission.budget().map(|(_, plan)| plan.clone());
        Some(Arc::new(guild_queue::RunMeter::new(self.budgets.clone(), plan, pricing)))
    }

    /// With `--redis`: enqueue the run as a job for the workers (in its tool's lane, at
    /// `priority`, in its tenant's turns), then wait for its result (sync) or answer 202 (async).
    /// The tenant's fuel is settled when the result arrives.
    async fn submit_remote(
        self: &Arc<Self>,
        remote: &Arc<Remote>,
        tenant: &Arc<Tenant>,
        routed: crate::registry::Routed,
        (request, priority): (RunRequest, u8),
        input: String,
        (input_digest, request_digest): (Digest, Digest),
    ) -> Result<Submitted, Rejection> {
        let crate::registry::Routed { tool, shadow, .. } = routed;
        let job_id = new_run_id();
        if self.is_draining() {
            return Err(Rejection::Queue(QueueFull { depth: 0, retry_after_s: 5, draining: true }));
        }
        let unavailable = |e: QueueError| {
            self.metrics.rejections.with_label_values(&[&tenant.name, "queue_unavailable"]).inc();
            self.metrics.redis.up.set(0);
            let retry_after_s = match &e {
                QueueError::Unavailable { retry_after_s, .. } => *retry_after_s,
                _ => 1,
            };
            Rejection::Unavailable { message: e.to_string(), retry_after_s }
        };
        if !request.asynchronous && !tool.needs.is_empty() {
            // A sync caller would wait for a worker nobody may start: told at once instead.
            let lane = tool.needs.lane();
            if !remote.queue.lane_served(&lane).await.map_err(unavailable)? {
                return Err(Rejection::NoCapableWorker { tool: tool.name.clone(), lane });
            }
        }
        let (admission, turn) = self
            .admit(tenant, &tool, (request.agent.as_deref(), request.asynchronous))
            .instrument(admission_span(&tenant.name))
            .await?;
        // After admission, as for a run here.
        check_input(&tool, &input).await.map_err(Rejection::InvalidInput)?;
        // The producer span the worker's spans hang from: what the job carries.
        let enqueue = guild_telemetry::span!(
            "enqueue",
            otel.name = %format_args!("send {}", remote.queue.settings().queue),
            otel.kind = "producer",
            messaging.system = "redis",
            messaging.operation.type = "send",
            messaging.destination.name = %remote.queue.settings().queue,
            messaging.message.id = tracing::field::Empty,
            error.r#type = tracing::field::Empty,
        );
        enqueue.record("messaging.message.id", tracing::field::display(&job_id));
        remote.push_component(&tool).instrument(enqueue.clone()).await.map_err(|e| {
            remote.forget_pushed();
            unavailable(e)
        })?;
        let mut limits = tool.limits.clone();
        limits.fuel_units = admission.fuel_units;
        let job = guild_queue::Job {
            id: job_id,
            tenant: tenant.name.clone(),
            subject: request.subject.clone(),
            tool: tool.name.clone(),
            tool_digest: *tool.tool.digest(),
            revision: Some(tool.revision),
            // A command's fixed arguments: the worker knows no tool configuration.
            input: tool.tool.with_args_prefix(&input).into_owned(),
            input_digest,
            grants: tool.grants.clone(),
            limits,
            idempotency_key: request.idempotency_key.clone(),
            attempts_max: remote.queue.settings().attempts_max,
            submitted_unix_ms: guild_queue::now_unix_ms(),
            cache: tool.cache.as_ref().map(|p| guild_queue::JobCache {
                ttl_s: p.ttl_s,
                entries_max: p.entries_max as u64,
                bytes_max: p.bytes_max,
            }),
            // The worker prices the run with this node's table.
            pricing: self.pricing().map(|p| (*p).clone()),
            budget: admission.budget().map(|(_, plan)| plan.clone()),
            agent: request.agent.clone(),
            priority,
            needs: tool.needs.clone(),
            weight: tenant.weight,
            // Held to a run limit's turn: queued in its lane only then.
            delay_ms: (!turn.is_zero()).then(|| u64::try_from(turn.as_millis()).unwrap_or(u64::MAX).max(1)),
            // An unsampled trace has no enqueue span: the job carries the trace it is in all the
            // same (its sampled flag unset), so the worker's spans stay out of the export too.
            trace: guild_telemetry::TraceContext::of(&enqueue).or_else(guild_telemetry::TraceContext::current),
        };
        // Waited for before it exists, so a node waiting for too many jobs refuses a new one
        // rather than enqueue a job nobody here can answer for.
        let busy = |message: String| Rejection::Unavailable { message, retry_after_s: 1 };
        let state = remote.watch(&job.id).map_err(busy)?;
        let accepted = remote.queue.submit(&job).instrument(enqueue.clone()).await.map_err(|e| {
            enqueue.record("error.type", "queue_unavailable");
            remote.forget_pushed();
            unavailable(e)
        })?;
        drop(enqueue);
        // Queued, but not confirmed durable (ack_durability = "replica" or "aof"): not acknowledged.
        // A new job may still run, so what it holds is held until it ends, as for any other.
        let settings = remote.queue.settings();
        let unconfirmed = |id: &str| {
            self.metrics.rejections.with_label_values(&[&tenant.name, "queue_unavailable"]).inc();
            let again = match &request.idempotency_key {
                Some(key) => format!("submitting it again with idempotency key {key:?} is the same job"),
                None => "give an idempotency key to resubmit safely".to_string(),
            };
            Rejection::Unavailable {
                message: format!(
                    "job {id} was queued but {} within {} ms (redis.ack_durability = {:?}): it may still run; {again}",
                    settings.ack_durability.unconfirmed(),
                    settings.ack_timeout_ms,
                    settings.ack_durability.name(),
                ),
                retry_after_s: 1,
            }
        };
        if !accepted.confirmed && accepted.existing {
            return Err(unconfirmed(&accepted.id));
        }
        let entry = |id: String, state| RunEntry {
            id,
            tenant: tenant.name.clone(),
            subject: request.subject.clone(),
            agent: request.agent.clone(),
            tool: tool.name.clone(),
            request_digest,
            at_unix_ms: guild_queue::now_unix_ms(),
            state,
        };
        if accepted.existing {
            drop(admission);
            let status = remote.queue.status(&accepted.id).await.map_err(unavailable)?;
            let key = request.idempotency_key.unwrap_or_default();
            let Some(status) = status else {
                return Err(Rejection::Unavailable {
                    message: format!("idempotency key {key:?} names job {} which just expired; retry", accepted.id),
                    retry_after_s: 1,
                });
            };
            if status.tenant != tenant.name {
                // Keys are per tenant; a job of another tenant behind one is a bug to refuse, not
                // a result to hand out.
                tracing::error!(run_id = %accepted.id, "an idempotency key led to another tenant's job");
                return Err(Rejection::Unavailable {
                    message: "the idempotency key cannot be used".into(),
                    retry_after_s: 1,
                });
            }
            if status.tool != tool.name || status.input_digest != Some(input_digest) {
                return Err(Rejection::KeyConflict { key, run: accepted.id });
            }
            if let Some(result) = status.result {
                let finished = Arc::new(remote::finished(&result));
                let (_, state) = watch::channel(RunState::Finished(finished.clone()));
                return Ok(Submitted::Replayed { entry: entry(accepted.id, state), finished, output: result.output });
            }
            let state = remote.watch(&accepted.id).map_err(busy)?;
            // It may have finished since the look above, its notice finding no waiter here.
            remote.look_again(&accepted.id).await.map_err(unavailable)?;
            let waiting = self.wait_remote(remote, entry(accepted.id, state), request.asynchronous, true);
            return waiting.instrument(wait_span()).await;
        }
        tracing::info!(run_id = %job.id, tenant = %tenant.name, tool = %tool.name, "job enqueued");
        let mut settling = state.clone();
        let (guarded, guarded_tool) = (self.clone(), tool.clone());
        tokio::spawn(async move {
            if settling.wait_for(|s| matches!(s, RunState::Finished(_))).await.is_ok() {
                let finished = match &*settling.borrow() {
                    RunState::Finished(finished) => finished.clone(),
                    _ => return drop(admission),
                };
                guarded.guard_call(&guarded_tool, &finished);
                // A worker's cache result, counted where the call came in.
                if let Some(cache) = &finished.cache {
                    guarded.metrics.cache.requests.with_label_values(&[&guarded_tool.name, cache.label()]).inc();
                }
                // A call answered from another run has no tape of its own to shadow.
                let reused = finished.cache.as_ref().is_some_and(crate::cache::CacheState::cached);
                if let (Some(candidate), Some(bundle), false) = (shadow, finished.bundle, reused) {
                    guarded.shadow(bundle, candidate);
                }
                // Each attempt's cost was charged to the budgets by the worker that ran it: only
                // the reservation comes back here.
                return admission.settle(finished.fuel_used_units, None);
            }
            drop(admission);
        });
        if !accepted.confirmed {
            return Err(unconfirmed(&job.id));
        }
        self.wait_remote(remote, entry(job.id, state), request.asynchronous, false).instrument(wait_span()).await
    }

    async fn wait_remote(
        &self,
        remote: &Remote,
        entry: RunEntry,
        asynchronous: bool,
        replayed: bool,
    ) -> Result<Submitted, Rejection> {
        if asynchronous {
            return Ok(Submitted::Accepted { entry, replayed });
        }
        let mut state = entry.state.clone();
        let _ = state.wait_for(|s| matches!(s, RunState::Finished(_))).await;
        let finished = match &*state.borrow() {
            RunState::Finished(finished) => finished.clone(),
            _ => return Ok(Submitted::Accepted { entry, replayed }),
        };
        // The output is in the result, in Redis (waiters are told only the state). Read again
        // while Redis is away (a failover); a caller that cannot be given the output is answered
        // 202 with the run to fetch, never a success without it.
        let output = if finished.status != guild_runtime::RunStatus::Succeeded {
            // Ended without an output to show (or told by this node: expired, unreadable).
            match remote.queue.status(&entry.id).await {
                Ok(Some(status)) => status.result.and_then(|r| r.output),
                _ => None,
            }
        } else {
            let mut backoff = guild_queue::redis_retry(Duration::from_millis(100));
            let deadline = tokio::time::Instant::now() + OUTPUT_READ_RETRY;
            loop {
                match remote.queue.status(&entry.id).await {
                    Ok(Some(status)) if status.result.is_some() => break status.result.and_then(|r| r.output),
                    // Its result not (or no longer) where it should be, or unreadable here.
                    Ok(None) => return Ok(Submitted::Accepted { entry, replayed }),
                    Err(e) if !e.is_unavailable() => return Ok(Submitted::Accepted { entry, replayed }),
                    Ok(Some(_)) | Err(_) => {}
                }
                if tokio::time::Instant::now() >= deadline {
                    return Ok(Submitted::Accepted { entry, replayed });
                }
                tokio::time::sleep(backoff.next().unwrap_or(guild_queue::REDIS_RETRY_MAX)).await;
            }
        };
        Ok(if replayed {
            Submitted::Replayed { entry, finished, output }
        } else {
            Submitted::Finished { entry, finished, output }
        })
    }

    /// Shut down: stop taking runs, wait for queued and running ones up to `deadline`, close
    /// the audit log and flush bundles to disk. Returns whether every run finished in time.
    /// (With `--redis`, queued jobs stay in Redis for the workers; finished attempts not yet
    /// audited stay in the done stream for the next node.)
    ///
    /// # Errors
    /// The [`StoreError`](guild_replay::StoreError) of the first bundle write the store failed in
    /// the background ([`DirStore::flush`]). Runs still going at the deadline are not an error:
    /// they make the result `false`.
    pub async fn drain(&self, deadline: Duration) -> Result<bool, guild_replay::StoreError> {
        self.start_draining();
        let drained = self.queue.drained(deadline).await;
        let auditing = self.auditing.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(audit) = auditing {
            let _ = tokio::time::timeout(deadline, audit).await;
        }
        self.audit.close();
        self.store.flush()?;
        Ok(drained)
    }
}

/// Admission's span: the run limits, the tenant's limits and budgets a run is held to.
fn admission_span(tenant: &str) -> tracing::Span {
    guild_telemetry::span!("admission", guild.tenant = %tenant)
}

/// A sync caller's wait for a worker to finish its job.
fn wait_span() -> tracing::Span {
    guild_telemetry::span!("wait", otel.name = "wait for result")
}

async fn wait_existing(entry: RunEntry, asynchronous: bool) -> Result<Submitted, Rejection> {
    let mut state = entry.state.clone();
    if !asynchronous {
        // Wait for the first submission to finish; a closed channel means it already has.
        let _ = state.wait_for(|s| matches!(s, RunState::Finished(_))).await;
    }
    let current = state.borrow().clone();
    Ok(match current {
        RunState::Finished(finished) => Submitted::Replayed { entry, finished, output: None },
        _ => Submitted::Accepted { entry, replayed: true },
    })
}

/// Inputs up to this size are checked against the tool's schema on the calling task; larger ones
/// on the blocking pool, since checking costs fuel in proportion to their bytes (a 4 MiB input
/// may take ~0.3 s) and an async worker must not stall for that long. Bytes of JSON text.
pub(crate) const INPUT_CHECK_INLINE_BYTES_MAX: usize = 64 * 1024;

/// Check `input` (JSON text) against `tool`'s input schema ([`RegisteredTool::validate`]).
async fn check_input(tool: &Arc<RegisteredTool>, input: &str) -> Result<(), InvalidInput> {
    if input.len() <= INPUT_CHECK_INLINE_BYTES_MAX {
        return tool.validate(input);
    }
    let (tool, input) = (tool.clone(), input.to_string());
    match tokio::task::spawn_blocking(move || tool.validate(&input)).await {
        Ok(checked) => checked,
        Err(stopped) => {
            Err(InvalidInput { field: "/".into(), message: format!("the check stopped: {stopped}"), unchecked: true })
        }
    }
}
