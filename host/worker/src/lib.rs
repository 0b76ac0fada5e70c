//! `guild worker`: runs jobs from the Redis queue on any machine. It takes up to `concurrency`
//! jobs at a time, renews each job's lease while it runs, takes over jobs of workers that died
//! (`XAUTOCLAIM`), promotes retries whose backoff is over, and says it is alive. A job's
//! component is fetched from Redis by digest the first time and compiled into the local cache.
//! Each attempt is recorded as a bundle and shared (`share.rs`): left in Redis for every node to
//! serve, or, when its new parts exceed `bundle_inline_bytes_max`, copied to the shared store
//! (else it stays in this worker's store).
//!
//! Redis going away never stops a worker: every loop waits with backoff and carries on when
//! it answers again, recreating the consumer groups if Redis lost them.

use guild_queue::{
    Advertisement, Completion, DEFAULT_LANE, Disposition, JobResult, Lease, QueueError, REDIS_RETRY_MAX, RedisQueue,
    WorkerStats, backoff_ms, now_unix_ms, redis_retry,
};
use guild_replay::{Digest, DirStore};
use guild_runtime::egress::Secret;
use guild_runtime::{
    Failure, FailureCode, Grants, LoadError, Outcome, PolicyRecord, RunError, RunReport, RunStatus, Runtime, Tool,
    ToolErrorKind,
};
use guild_telemetry::SPAN_TARGET;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tracing::Instrument;

mod cached;
mod flags;
mod reconnect;
mod share;

use reconnect::Reconnect;

/// How long a read waits for jobs before the loop looks around (shutdown, reconnects).
const TAKE_BLOCK: Duration = Duration::from_millis(1_000);
/// How often a worker looks up the queue's lanes again (a tool with new needs makes one).
const LANES_LOOK_EVERY: Duration = Duration::from_millis(1_000);

/// A task aborted when this drops (however its owner ends).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Counts a running job down when it drops.
struct Running<'a>(&'a AtomicU64);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a worker needs.
pub struct WorkerSetup {
    /// The Redis job queue this worker takes jobs from and reports results to.
    pub queue: RedisQueue,
    /// The runtime, recording into `store`.
    pub runtime: Arc<Runtime>,
    /// Where this worker's bundles are sealed.
    pub store: Arc<DirStore>,
    /// Its name in the consumer group and in metrics (unique per process).
    pub name: String,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Secret values jobs may be granted (by name); they never travel through Redis.
    pub secrets: Vec<Secret>,
    /// Where bundles too large for Redis go, when every node shares a store.
    pub shared_store: Option<Arc<DirStore>>,
    /// Keys whose bundles a shared result cache entry may name (this worker's own, and the
    /// config's `cache.trusted_keys`): an entry naming a bundle signed by any other is dropped.
    pub trusted_keys: Vec<guild_replay::PublicKey>,
    /// The fleet's keyed egress limits and upstream throttles (in Redis), from the config's
    /// `[[egress_limits]]`.
    pub gate: Arc<dyn guild_vocab::egress::EgressGate>,
    /// What this worker has (GPU, memory, architecture, labels): it reads the lanes whose
    /// needs this meets.
    pub advertisement: Advertisement,
}

/// What a worker did, for its last log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSummary {
    /// Attempts whose result became their job's.
    pub completed: u64,
    /// Attempts that finished after another attempt had.
    pub duplicates: u64,
    /// Attempts that failed and were scheduled again.
    pub retried: u64,
    /// Jobs this worker moved to the dead-letter stream.
    pub dead: u64,
}

struct Worker {
    queue: RedisQueue,
    runtime: Arc<Runtime>,
    store: Arc<DirStore>,
    name: String,
    secrets: Vec<Secret>,
    shared_store: Option<Arc<DirStore>>,
    trusted_keys: Vec<guild_replay::PublicKey>,
    gate: Arc<dyn guild_vocab::egress::EgressGate>,
    /// Jobs it runs at once.
    slots: u64,
    /// Large blobs Redis is known to hold, with when that was checked (asking again after half
    /// of `results_ttl_s` refreshes their expiry).
    known_blobs: Mutex<HashMap<Digest, std::time::Instant>>,
    /// The tool records' flags, checked before each job.
    flags: flags::Flags,
    advertisement: Advertisement,
    /// This process in its heartbeats: its pid and start time.
    instance: String,
    /// The lanes it reads, most demanding first, and when they were last looked up.
    lanes: Mutex<(Vec<String>, Option<std::time::Instant>)>,
    completed: AtomicU64,
    duplicates: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    running: AtomicU64,
    /// Set once the worker is told to stop: a slot takes no next job.
    stopping: std::sync::atomic::AtomicBool,
    /// When the take loop next takes over lapsed leases (ms since `started`, a monotonic clock):
    /// from then a slot goes back to it rather than take its next job itself.
    reclaim_due_ms: AtomicU64,
    started: std::time::Instant,
}

/// Run jobs until `shutdown` resolves; then take no more, let the running ones finish (up to
/// `drain`) and return. Jobs still running then keep their lease entries and are taken over
/// by another worker once the lease lapses.
pub async fn run_worker(
    setup: WorkerSetup,
    shutdown: impl Future<Output = ()> + Send,
    drain: Duration,
) -> WorkerSummary {
    let concurrency = setup.concurrency.max(1);
    let worker = Arc::new(Worker {
        queue: setup.queue,
        runtime: setup.runtime,
        store: setup.store,
        name: setup.name,
        secrets: setup.secrets,
        shared_store: setup.shared_store,
        trusted_keys: setup.trusted_keys,
        gate: setup.gate,
        slots: setup.concurrency.max(1) as u64,
        known_blobs: Mutex::new(HashMap::new()),
        flags: flags::Flags::new(),
        advertisement: setup.advertisement,
        instance: format!("{}-{}", std::process::id(), now_unix_ms()),
        lanes: Mutex::new((vec![DEFAULT_LANE.to_string()], None)),
        completed: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        retried: AtomicU64::new(0),
        dead: AtomicU64::new(0),
        running: AtomicU64::new(0),
        stopping: std::sync::atomic::AtomicBool::new(false),
        reclaim_due_ms: AtomicU64::new(0),
        started: std::time::Instant::now(),
    });
    // Its lanes and advertisement are known before it takes a job.
    worker.lanes().await;
    worker.check_name_unique().await;
    worker.heartbeat().await;
    worker.migrate_legacy().await;
    let slots = Arc::new(Semaphore::new(concurrency));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let taking = tokio::spawn(worker.clone().take_loop(slots.clone(), concurrency, stop.clone()));
    let upkeep = tokio::spawn(worker.clone().upkeep_loop(stop.clone()));
    shutdown.await;
    tracing::info!(worker = %worker.name, "stopping: no new jobs; finishing the running ones");
    worker.stopping.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let _ = taking.await;
    let _ = upkeep.await;
    let all = u32::try_from(concurrency).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain, slots.acquire_many(all)).await.is_err() {
        tracing::warn!(worker = %worker.name, "the drain deadline passed with jobs running; their leases will lapse");
    }
    // Gone from the live workers and their lanes at once (a worker that dies drops out once
    // its heartbeat is old).
    if let Err(e) = worker.queue.retire(&worker.stats()).await {
        tracing::debug!(error = %e, "could not say this worker stopped");
    }
    worker.summary()
}

impl Worker {
    fn summary(&self) -> WorkerSummary {
        WorkerSummary {
            completed: self.completed.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
        }
    }

    async fn heartbeat(&self) {
        if let Err(e) = self.queue.heartbeat(&self.stats()).await {
            tracing::debug!(error = %e, "heartbeat not sent");
        }
    }

    /// Say so, loudly, when another live worker sends this worker's name: their heartbeats would
    /// overwrite each other (wrong live workers, lanes and counts). Not refused: a worker
    /// restarted at once after a crash finds its previous process's heartbeat, live for 30 s.
    async fn check_name_unique(&self) {
        if let Ok(Some(other)) = self.queue.worker(&self.name).await
            && other.instance != self.instance
            && now_unix_ms().saturating_sub(other.seen_unix_ms) < 30_000
        {
            tracing::error!(
                worker = %self.name,
                other_instance = %other.instance,
                "another worker with this name sent a heartbeat in the last 30 s: unless it is this worker's \
                 previous process, give each worker its own --name (their heartbeats overwrite each other)"
            );
        }
    }

    /// Jobs an earlier version queued in its one stream go to their lanes (a rolling upgrade).
    async fn migrate_legacy(&self) {
        match self.queue.migrate_legacy(&self.name).await {
            Ok(0) => {}
            Ok(moved) => tracing::info!(moved, "moved jobs an earlier version queued into their lanes"),
            Err(e) => tracing::debug!(error = %e, "could not look for an earlier version's jobs"),
        }
    }

    fn stats(&self) -> WorkerStats {
        WorkerStats {
            name: self.name.clone(),
            completed: self.completed.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
            slots: self.slots,
            seen_unix_ms: now_unix_ms(),
            advertisement: self.advertisement.clone(),
            lanes: self.lanes_now().0,
            instance: self.instance.clone(),
        }
    }

    fn lanes_now(&self) -> (Vec<String>, Option<std::time::Instant>) {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The lanes this worker reads: those whose needs its advertisement meets, most demanding
    /// first, looked up again when the last look is older than `LANES_LOOK_EVERY`.
    async fn lanes(&self) -> Vec<String> {
        let (lanes, looked) = self.lanes_now();
        if looked.is_some_and(|at| at.elapsed() < LANES_LOOK_EVERY) {
            return lanes;
        }
        match self.queue.lanes().await {
            Ok(all) => {
                let mut mine: Vec<(usize, String)> = all
                    .into_iter()
                    .filter(|(lane, needs)| lane != DEFAULT_LANE && needs.met_by(&self.advertisement))
                    .map(|(lane, needs)| (needs.weight(), lane))
                    .collect();
                mine.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
                let mut lanes: Vec<String> = mine.into_iter().map(|(_, lane)| lane).collect();
                lanes.push(DEFAULT_LANE.to_string());
                *self.lanes.lock().unwrap_or_else(|p| p.into_inner()) =
                    (lanes.clone(), Some(std::time::Instant::now()));
                lanes
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not look up the queue's lanes");
                lanes
            }
        }
    }

    /// Take jobs whenever a slot is free: every quarter lease first those of workers whose lease
    /// lapsed (they died), then new ones.
    async fn take_loop(self: Arc<Self>, slots: Arc<Semaphore>, concurrency: usize, stop: Stop) {
        let mut reconnect = Reconnect::default();
        let reclaim_every = upkeep_period(self.queue.settings().lease_ms);
        let mut reclaimed_at = tokio::time::Instant::now();
        let every_ms = u64::try_from(reclaim_every.as_millis()).unwrap_or(u64::MAX);
        self.reclaim_due_ms.store(self.since_start_ms().saturating_add(every_ms), Ordering::Relaxed);
        let mut cursor = "0-0".to_string();
        loop {
            if *stop.borrow() {
                return;
            }
            let Ok(first) = slots.clone().acquire_owned().await else { return };
            let mut permits = vec![first];
            while permits.len() < concurrency {
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            if reclaimed_at.elapsed() >= reclaim_every {
                reclaimed_at = tokio::time::Instant::now();
                self.reclaim_due_ms.store(self.since_start_ms().saturating_add(every_ms), Ordering::Relaxed);
                match self.queue.reclaim(&self.name, permits.len(), &cursor).await {
                    Ok((leases, next)) => {
                        cursor = next;
                        for lease in leases {
                            let Some(permit) = permits.pop() else { break };
                            tracing::warn!(run_id = %lease.job.id, attempt = lease.attempt, "took over a job whose worker's lease lapsed");
                            self.clone().spawn_job(lease, permit);
                        }
                        if permits.is_empty() {
                            continue;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "reclaim failed"),
                }
            }
            let lanes = self.lanes().await;
            match self.queue.take(&self.name, &lanes, permits.len(), TAKE_BLOCK.min(reclaim_every)).await {
                Ok(leases) => {
                    reconnect.succeeded(&self.name);
                    for (lease, permit) in leases.into_iter().zip(permits.drain(..)) {
                        self.clone().spawn_job(lease, permit);
                    }
                }
                Err(e) => {
                    drop(permits);
                    // Redis may come back without what it held.
                    self.known_blobs.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    if !reconnect.wait(&self.queue, &self.name, &e, &stop).await {
                        return;
                    }
                }
            }
        }
    }

    /// Every quarter lease: promote due retries, send a heartbeat.
    async fn upkeep_loop(self: Arc<Self>, mut stop: Stop) {
        let period = upkeep_period(self.queue.settings().lease_ms);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.changed() => return,
            }
            if let Err(e) = self.queue.promote().await {
                tracing::debug!(error = %e, "promoting retries failed");
            }
            self.migrate_legacy().await;
            self.heartbeat().await;
        }
    }

    /// Run `lease` in a task holding `permit` (a slot); the slot then goes on to the job taken
    /// when this one completed, if any, and is freed once there is none.
    fn spawn_job(self: Arc<Self>, lease: Lease, permit: tokio::sync::OwnedSemaphorePermit) {
        tokio::spawn(async move {
            let mut next = Some(lease);
            while let Some(lease) = next.take() {
                let (span, traced) = self.job_spans(&lease);
                next = traced.scope(self.run_one(lease)).instrument(span).await;
            }
            drop(permit);
        });
    }

    /// The log span of an attempt, and what it runs in of the trace of the call that enqueued the
    /// job: its consumer span, or when that trace was not sampled, the trace's context alone.
    fn job_spans(&self, lease: &Lease) -> (tracing::Span, guild_telemetry::Traced) {
        let span = tracing::info_span!(
            "job",
            run_id = %lease.job.id,
            tenant = %lease.job.tenant,
            tool = %lease.job.tool,
            attempt = lease.attempt
        );
        let queue = &self.queue.settings().queue;
        let waited_ms = guild_queue::now_unix_ms().saturating_sub(lease.job.submitted_unix_ms);
        let traced = guild_telemetry::root(lease.job.trace.as_ref(), "job", || {
            guild_telemetry::span!(
                "job",
                otel.name = %format_args!("process {queue}"),
                otel.kind = "consumer",
                messaging.system = "redis",
                messaging.operation.type = "process",
                messaging.destination.name = %queue,
                messaging.message.id = %lease.job.id,
                guild.job.attempt = lease.attempt,
                guild.queue.wait_ms = waited_ms,
                guild.worker = %self.name,
                error.r#type = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            )
        });
        (span, traced)
    }

    /// Milliseconds since this worker started, on a clock that never goes back.
    fn since_start_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// One attempt, counted as running; the job taken for this slot when it completed, if any.
    async fn run_one(self: &Arc<Self>, lease: Lease) -> Option<Lease> {
        self.running.fetch_add(1, Ordering::Relaxed);
        // Counted down however the attempt ends, a panic included.
        let _running = Running(&self.running);
        self.attempt(lease).await
    }

    /// The lanes to take this slot's next job from as a job completes, or `None` when the slot
    /// should go back to the take loop: the worker is stopping, or it is time to take over the
    /// jobs of workers whose lease lapsed (the take loop does that first).
    async fn next_lanes(&self) -> Option<Vec<String>> {
        if self.stopping.load(Ordering::Relaxed) || self.since_start_ms() >= self.reclaim_due_ms.load(Ordering::Relaxed)
        {
            return None;
        }
        Some(self.lanes().await)
    }

    /// One attempt: hold the lease, run, settle; the job taken for this slot when it completed.
    async fn attempt(self: &Arc<Self>, lease: Lease) -> Option<Lease> {
        // Cancelled when the job is asked to be (an MCP task's `tasks/cancel` on any API node).
        let cancel = guild_runtime::CancellationToken::new();
        // Stopped however the attempt ends: a panic in it unwinds through this guard, so the lease
        // lapses and another worker takes the job over (never renewed for ever by a dead attempt).
        let renew = self.clone().renew_loop(lease.clone(), cancel.clone());
        let renewing = AbortOnDrop(tokio::spawn(guild_telemetry::here().scope(renew)));
        let result = if lease.attempt > lease.job.attempts_max {
            // Its workers kept dying while running it: do not try a fifth time.
            Err(AttemptFailure::retryable(
                FailureCode::WorkerLost,
                format!("the job's worker stopped before finishing on {} attempts", lease.attempt - 1),
            ))
        } else {
            self.execute(&lease, cancel).await
        };
        // Renewed until settled: settling may wait out a failover, longer than a lease.
        let settling = guild_telemetry::span!("settle");
        let next = self.settle(&lease, result).instrument(settling).await;
        drop(renewing);
        next
    }

    async fn renew_loop(self: Arc<Self>, lease: Lease, cancel: guild_runtime::CancellationToken) {
        let period = Duration::from_millis((self.queue.settings().lease_ms / 3).max(10));
        loop {
            tokio::time::sleep(period).await;
            if self.queue.cancel_requested(&lease.job.id).await.unwrap_or(false) {
                cancel.cancel();
            }
            let renewal = guild_telemetry::span!("lease renew");
            match self.queue.renew(&self.name, &lease).instrument(renewal).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        "lost the job's lease: another worker took it over; this attempt will be a duplicate"
                    );
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "could not renew the job's lease"),
            }
        }
    }

    async fn execute(
        &self,
        lease: &Lease,
        cancel: guild_runtime::CancellationToken,
    ) -> Result<JobResult, AttemptFailure> {
        let job = &lease.job;
        let cancel_asked = match lease.cancel_asked {
            Some(asked) => asked,
            None => self.queue.cancel_requested(&job.id).await.unwrap_or(false),
        };
        if cancel_asked {
            return Err(AttemptFailure::deterministic(
                FailureCode::Cancelled,
                "the job was cancelled before it started".to_string(),
            ));
        }
        if let Some(why) = &lease.unreadable {
            // In a rolling upgrade a worker of the version that wrote it may read it: retried,
            // and dead (with why) only once every attempt found it unreadable.
            return Err(AttemptFailure::retryable(FailureCode::BadJob, why.clone()));
        }
        if let Some(disabled) = self.flags.disabled(&self.queue, &job.tool, &job.tenant).await {
            return Err(AttemptFailure::deterministic(
                FailureCode::ToolDisabled,
                format!("tool {:?} is disabled by the operator: {}", job.tool, disabled.reason),
            ));
        }
        let tool = self.tool(&job.tool_digest).await?;
        // A command runs and is recorded under the name the API node called it by; its input
        // (fixed arguments included) was checked there.
        let config = guild_runtime::CommandConfig { name: job.tool.clone(), ..guild_runtime::CommandConfig::default() };
        let tool = tool.configured(config).map_or(tool, Arc::new);
        let grants = Grants { secrets: self.secrets.clone(), ..job.grants.clone() };
        let limits = &job.limits;
        let principal = guild_runtime::Principal::of(&job.tenant, job.subject.as_deref());
        // The job's LLM requests are held to the budgets its API node reserved against, which
        // the fleet shares in Redis.
        let meter = match &job.pricing {
            Some(pricing) if !pricing.llm.is_empty() => {
                let store: Arc<dyn guild_queue::BudgetStore> = Arc::new(self.queue.clone());
                let meter = guild_queue::RunMeter::new(store, job.budget.clone(), Arc::new(pricing.clone()));
                Some(Arc::new(meter) as Arc<dyn guild_replay::cost::TokenMeter>)
            }
            _ => None,
        };
        let pricing = job.pricing.clone().map(Arc::new);
        let gate = Some(self.gate.clone());
        let run_for = guild_runtime::RunFor { principal: &principal, revision: job.revision, meter, pricing, gate };
        let (report, after) = match job.cache {
            Some(bounds) => match self.run_cached(&tool, job, &grants, bounds, &run_for, cancel).await {
                cached::Ran::Report(report, after) => (report, Some(after)),
                cached::Ran::Reused { value, merged, wall_time } => {
                    return Ok(JobResult {
                        status: RunStatus::Succeeded,
                        output: Some(value.output),
                        bundle: Some(value.record.bundle),
                        wall_time_us: u64::try_from(wall_time.as_micros()).unwrap_or(u64::MAX),
                        cache: Some(if merged { "merged" } else { "hit" }.to_string()),
                        ..self.empty_result(lease)
                    });
                }
            },
            None => {
                let run = self.runtime.run_as(&tool, &job.input, &grants, limits, cancel, Some(&run_for));
                let traced = guild_runtime::trace::run_span(&job.id, &job.tool, job.revision, &job.tenant);
                let report = run.instrument(traced.clone()).await;
                match &report {
                    _ if traced.is_disabled() => {}
                    Ok(report) => guild_runtime::trace::record_end(
                        &traced,
                        report.outcome.label(),
                        report.fuel_used_units,
                        report.bundle.as_ref(),
                        report.outcome.failure().as_ref().map(|f| f.code.as_str()),
                    ),
                    Err(error) => {
                        guild_runtime::trace::record_end(&traced, "error", 0, None, Some(error.code().as_str()));
                    }
                }
                (report, None)
            }
        };
        let mut shared = false;
        if let (Ok(report), Some(_)) = (&report, &after)
            && let Some(bundle) = report.bundle
        {
            // Shared before the entry naming it, so whoever reads the entry finds the bundle.
            shared = self.share_bundle(&bundle).await;
        }
        let cache = match after {
            Some(after) => Some(self.settle_cache(job, after, &report, shared).await),
            None => None,
        };
        let report = match report {
            Ok(report) => report,
            Err(error) => {
                let failure = FailureInfo {
                    code: error.code(),
                    message: error.to_string(),
                    bundle: None,
                    priced: (None, Vec::new()),
                    delay_ms: None,
                };
                // Denials and bad limits come out the same on every machine; the rest may not.
                return Err(if matches!(error, RunError::Denied(_) | RunError::Limits(_)) {
                    AttemptFailure::Deterministic(failure)
                } else {
                    AttemptFailure::Retryable(failure)
                });
            }
        };
        report.log_egress_refusals();
        self.charge_attempt(job, &report).await;
        if let (Some(bundle), None) = (report.bundle, &cache) {
            self.share_bundle(&bundle).await;
        }
        // A tool that failed after an upstream failed it (5xx, timeout, unreachable) may
        // succeed later: retry it; every other ending is the job's.
        let upstream = report.egress_upstream_failures;
        let tool_failed = matches!(
            report.outcome,
            Outcome::ToolError { kind: ToolErrorKind::Failed | ToolErrorKind::Denied, .. } | Outcome::Trap { .. }
        );
        // A tool failed because an egress limit or an upstream's Retry-After held its request
        // back: retried once that time has passed, not at once.
        if let (Some(wait_ms), true) = (report.egress_throttled_ms, tool_failed) {
            let message =
                format!("{} (an egress limit or an upstream's Retry-After: {wait_ms} ms)", report.outcome.message());
            let priced = (report.cost.clone(), report.tokens.clone());
            return Err(AttemptFailure::Retryable(FailureInfo {
                code: FailureCode::UpstreamFailure,
                message,
                bundle: report.bundle,
                priced,
                delay_ms: Some(wait_ms),
            }));
        }
        let tool_failed =
            matches!(report.outcome, Outcome::ToolError { kind: ToolErrorKind::Failed, .. } | Outcome::Trap { .. });
        if upstream > 0 && tool_failed {
            let bundle = report.bundle;
            let message = format!(
                "{} (after {upstream} upstream request(s) failed: 5xx, timeout or unreachable)",
                report.outcome.message()
            );
            // The attempt ran and cost what it cost: its record and the ledger keep that.
            let priced = (report.cost.clone(), report.tokens.clone());
            return Err(AttemptFailure::Retryable(FailureInfo {
                code: FailureCode::UpstreamFailure,
                message,
                bundle,
                priced,
                delay_ms: None,
            }));
        }
        Ok(JobResult { cache, ..self.result(lease, report) })
    }

    /// The component, from the runtime's loaded tools, else from Redis (then compiled, or loaded
    /// from the local cache) — once, however many jobs ask for it at the same time.
    async fn tool(&self, digest: &Digest) -> Result<Arc<Tool>, AttemptFailure> {
        let fetch = || async {
            match self.queue.get_component(digest).await {
                Ok(Some(bytes)) => Ok(bytes),
                Ok(None) => Err(LoadError::Unavailable(format!(
                    "component {digest} is not in Redis; an API node puts it there when it enqueues a job"
                ))),
                Err(e) => Err(LoadError::Unavailable(format!("component {digest}: {e}"))),
            }
        };
        self.runtime.load_by_digest(digest, fetch).await.map_err(|e| match e {
            LoadError::Unavailable(_) | LoadError::Store(_) => {
                AttemptFailure::retryable(FailureCode::HostFailure, e.to_string())
            }
            other => AttemptFailure::deterministic(
                FailureCode::HostFailure,
                format!("cannot load component {digest}: {other}"),
            ),
        })
    }

    fn result(&self, lease: &Lease, report: RunReport) -> JobResult {
        // Priced as it was sealed, at the job's table (the API node's `[pricing]`): the cost its
        // bundle's exec record holds.
        let cost = report.cost.clone();
        let tokens = report.tokens.clone();
        let policy = Some(PolicyRecord::resolved(report.policy, report.limits));
        // The same status, error and output the daemon gives a run it executes itself: both
        // read them from the outcome.
        JobResult {
            status: report.outcome.run_status(),
            error: report.outcome.failure(),
            bundle: report.bundle,
            fuel_used_units: report.fuel_used_units,
            wall_time_us: u64::try_from(report.wall_time.as_micros()).unwrap_or(u64::MAX),
            output: report.outcome.into_output(),
            policy,
            cost,
            tokens,
            ..self.empty_result(lease)
        }
    }

    /// Charge what an attempt cost (besides its tokens, which its meter charged as they came)
    /// to the budgets the job counts against: every attempt that ran, retried, duplicate or
    /// last, is paid for where it ran. The API node only gives the reservation back.
    async fn charge_attempt(&self, job: &guild_queue::Job, report: &RunReport) {
        let (Some(plan), Some(cost)) = (&job.budget, &report.cost) else { return };
        let money = cost.amount_besides_tokens();
        if money.is_zero() {
            return;
        }
        if let Err(e) = guild_queue::BudgetStore::spend(&self.queue, plan, 0, money).await {
            tracing::error!(error = %e, "the attempt's cost could not be charged to its budgets");
        }
    }

    fn empty_result(&self, lease: &Lease) -> JobResult {
        let job = &lease.job;
        JobResult {
            id: job.id.clone(),
            tenant: job.tenant.clone(),
            subject: job.subject.clone(),
            agent: job.agent.clone(),
            tool: job.tool.clone(),
            tool_digest: job.tool_digest,
            revision: job.revision,
            input_digest: job.input_digest,
            idempotency_key: job.idempotency_key.clone(),
            status: RunStatus::Failed,
            error: None,
            output: None,
            bundle: None,
            fuel_used_units: 0,
            wall_time_us: 0,
            policy: lease.unreadable.is_none().then(|| PolicyRecord::granted(job.grants.clone(), job.limits.clone())),
            attempt: lease.attempt,
            worker: self.name.clone(),
            cache: None,
            cost: None,
            tokens: Vec::new(),
            // Inside the attempt's span: the API node's audit write joins its trace.
            trace: guild_telemetry::TraceContext::current().map(guild_telemetry::TraceContext::parent_only),
        }
    }

    /// Complete or fail the job in Redis, retrying while Redis is away: the attempt's result
    /// is not dropped for a blip or a failover. If Redis stays away past two leases (at least
    /// [`SETTLE_RETRY_MIN`]), the job is left to be taken over and run again (at least once);
    /// if another worker took it over meanwhile, whichever settles first wins and the other is
    /// recorded as a duplicate.
    /// A job that completes takes the next job for its slot in the same request (see
    /// [`Worker::next_lanes`]): that job is returned.
    async fn settle(&self, lease: &Lease, result: Result<JobResult, AttemptFailure>) -> Option<Lease> {
        let deadline = tokio::time::Instant::now() + self.settle_window();
        let mut backoff = redis_retry(Duration::from_millis(50));
        // Only the first try takes a next job: a try whose reply was lost may have taken one
        // this worker never learns of, and each retry would strand another.
        let mut first = true;
        loop {
            let settled = match &result {
                Ok(result) => self.complete(lease, result, first).await,
                Err(AttemptFailure::Deterministic(f)) => {
                    let result = JobResult { status: RunStatus::Failed, ..f.result(self.empty_result(lease)) };
                    self.complete(lease, &result, first).await
                }
                Err(AttemptFailure::Retryable(f)) => self.retry(lease, f).await.map(|()| None),
            };
            first = false;
            match settled {
                Ok(next) => return next,
                Err(e) if e.is_unavailable() && tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "cannot settle the job yet; retrying");
                    tokio::time::sleep(backoff.next().unwrap_or(REDIS_RETRY_MAX)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot settle the job; it will be taken over and run again");
                    return None;
                }
            }
        }
    }

    /// How long a finished attempt keeps trying Redis (to settle, to share its bundle): two
    /// leases, at least [`SETTLE_RETRY_MIN`].
    fn settle_window(&self) -> Duration {
        Duration::from_millis(self.queue.settings().lease_ms.saturating_mul(2)).max(SETTLE_RETRY_MIN)
    }

    /// Complete the job; with `take_next`, also take the slot's next job in the same request.
    async fn complete(&self, lease: &Lease, result: &JobResult, take_next: bool) -> Result<Option<Lease>, QueueError> {
        let lanes = if take_next { self.next_lanes().await } else { None };
        let (completion, next) = match lanes {
            Some(lanes) => {
                let (completion, mut taken) = self.queue.complete_take(&self.name, lease, result, &lanes, 1).await?;
                (completion, taken.pop())
            }
            None => (self.queue.complete(&self.name, lease, result).await?, None),
        };
        match completion {
            Completion::Recorded => {
                self.completed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(status = %result.status, fuel_used_units = result.fuel_used_units, wall_time_us = result.wall_time_us, "job finished");
            }
            Completion::Duplicate => {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("job finished, but another attempt had already: recorded as a duplicate");
            }
        }
        Ok(next)
    }

    async fn retry(&self, lease: &Lease, failure: &FailureInfo) -> Result<(), QueueError> {
        let settings = self.queue.settings();
        let backoff = backoff_ms(lease.attempt, settings.backoff_base_ms, settings.backoff_max_ms);
        let delay = failure.delay_ms.map_or(backoff, |wait| wait.max(backoff));
        let attempt = JobResult { status: RunStatus::Failed, ..failure.result(self.empty_result(lease)) };
        let last = JobResult { status: RunStatus::Dead, ..attempt.clone() };
        match self.queue.fail(&self.name, lease, delay, &attempt, &last).await? {
            Disposition::Retry { delay_ms } => {
                self.retried.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    target: SPAN_TARGET,
                    delay_ms,
                    failure = failure.code.as_str(),
                    "retry scheduled"
                );
                tracing::warn!(error = %failure.message, delay_ms, "attempt failed; retrying after a backoff");
            }
            Disposition::Dead => {
                self.dead.fetch_add(1, Ordering::Relaxed);
                tracing::info!(target: SPAN_TARGET, failure = failure.code.as_str(), "dead-lettered");
                tracing::error!(error = %failure.message, "attempt failed and was the last: the job is in the dead-letter stream");
            }
            Disposition::Duplicate => {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %failure.message, "attempt failed after another worker took the job over");
            }
        }
        Ok(())
    }
}

/// The shortest time a worker keeps trying to settle a finished attempt while Redis is away:
/// longer than a Sentinel or Cluster failover takes (seconds), so a failover does not make a
/// finished job run again.
pub const SETTLE_RETRY_MIN: Duration = Duration::from_secs(30);

/// How often a worker promotes retries, takes over lapsed leases and says it is alive.
fn upkeep_period(lease_ms: u64) -> Duration {
    Duration::from_millis((lease_ms / 4).clamp(50, 1_000))
}

/// Why an attempt produced no report.
enum AttemptFailure {
    /// The same on any machine (a denial, bad limits, a component that does not load): the job
    /// completes, failed, without a retry.
    Deterministic(FailureInfo),
    /// Might work elsewhere or later (a host error, a lost worker): retried with backoff.
    Retryable(FailureInfo),
}

struct FailureInfo {
    code: FailureCode,
    message: String,
    bundle: Option<Digest>,
    /// What the attempt cost, and its tokens, when it ran.
    priced: (Option<guild_replay::cost::Cost>, Vec<(String, guild_replay::cost::TokenCount)>),
    /// Retry no sooner than this, ms (an upstream's Retry-After, an egress limit's wait).
    delay_ms: Option<u64>,
}

impl AttemptFailure {
    fn retryable(code: FailureCode, message: String) -> Self {
        Self::Retryable(FailureInfo { code, message, bundle: None, priced: (None, Vec::new()), delay_ms: None })
    }
    fn deterministic(code: FailureCode, message: String) -> Self {
        Self::Deterministic(FailureInfo { code, message, bundle: None, priced: (None, Vec::new()), delay_ms: None })
    }
}

impl FailureInfo {
    fn result(&self, base: JobResult) -> JobResult {
        JobResult {
            error: Some(Failure::host(self.code, self.message.clone())),
            bundle: self.bundle,
            cost: self.priced.0.clone(),
            tokens: self.priced.1.clone(),
            ..base
        }
    }
}

type Stop = tokio::sync::watch::Receiver<bool>;
