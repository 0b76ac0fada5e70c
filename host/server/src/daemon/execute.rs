//! Running an accepted run here: wait for a slot, run it on the shared runtime (recorded), give
//! the slot back, write its audit record, publish its state and count it in the metrics.

use super::Daemon;
use super::cached::Ran;
use crate::cache::{CachePolicy, CacheState};
use crate::registry::RegisteredTool;
use crate::runs::{Finished, RunEntry, RunState};
use crate::tenants::Admission;
use guild_audit::AuditEntry;
use guild_queue::Ticket;
use guild_replay::Digest;
use guild_runtime::{CancellationToken, PolicyRecord, RunError, RunReport, RunStatus};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;
use tracing::Instrument as _;

impl Daemon {
    pub(super) async fn execute(self: Arc<Self>, job: Job, entry: RunEntry) {
        let Job { tool, input, input_digest, admission, ticket, state, done, key, cancel, shadow, not_before } = job;
        let queued = Instant::now();
        tracing::info!("run queued");
        let waiting = guild_telemetry::span!("queue wait");
        // Held to a run limit's turn (an async run): its place in the queue counts meanwhile. A
        // cancellation ends the wait (the run then ends cancelled at once), and so does a drain
        // (the run ends not started, answered and audited as such).
        let mut shutting_down = false;
        if let Some(at) = not_before {
            while tokio::time::Instant::now() < at && !cancel.is_cancelled() {
                if self.is_draining() {
                    shutting_down = true;
                    break;
                }
                let left = at.saturating_duration_since(tokio::time::Instant::now());
                tokio::time::sleep(left.min(std::time::Duration::from_millis(100))).await;
            }
        }
        let slot = if shutting_down {
            drop(ticket);
            Err(guild_queue::QueueFull { depth: 0, retry_after_s: 5, draining: true })
        } else {
            ticket.start().await
        };
        drop(waiting);
        self.metrics.queue_wait_seconds.observe(queued.elapsed().as_secs_f64());
        self.metrics.queue_depth.set(self.queue.depth() as i64);
        self.metrics.runs_in_flight.set(self.queue.in_flight() as i64);
        let _ = state.send(RunState::Running);
        let mut limits = tool.limits.clone();
        limits.fuel_units = admission.fuel_units;
        let started = Instant::now();
        let ran = match &slot {
            Ok(_) => {
                let meter = self.meter_for(&admission);
                self.run_call(&tool, &input, &limits, (cancel, meter), &entry).await
            }
            Err(_) => {
                Ran::Report(Err(RunError::Host("the daemon is shutting down; the run was not started".into())), None)
            }
        };
        self.queue.observe(started.elapsed());
        // The guest has returned and the bundle is sealed: the slot goes to the next run while
        // this one's audit record waits for the log's group commit. The answer still waits for
        // it, and draining waits for committing runs, so no record can miss the log's close.
        let committing = match slot {
            Ok(slot) => Some(slot.commit().await),
            Err(_) => None,
        };
        self.metrics.runs_in_flight.set(self.queue.in_flight() as i64);
        self.metrics.runs_committing.set(self.queue.committing() as i64);
        let verify = match &ran {
            Ran::Reused { cached, merged: false, .. } if sampled(&entry.id, tool.cache.as_ref()) => {
                Some(cached.clone())
            }
            _ => None,
        };
        // Inside the run's span: its trace, read once for the answer, the audit record and, when
        // the trace is sampled (an exemplar must lead to a trace the collector has), the latency
        // bucket's exemplar.
        let span = tracing::Span::current();
        let (trace_id, trace_sampled) =
            guild_telemetry::trace_of(&span).map_or((None, false), |(trace, sampled)| (Some(trace), sampled));
        let exemplar = trace_id.as_deref().filter(|_| trace_sampled);
        let (mut finished, output, mut audit) = self.conclude(&tool, &entry, (input_digest, key, exemplar), ran);
        audit.trace_id.clone_from(&trace_id);
        finished.trace_id = trace_id;
        guild_runtime::trace::record_end(
            &span,
            finished.label(),
            finished.fuel_used_units,
            finished.bundle.as_ref(),
            finished.error.as_ref().map(|f| f.code.as_str()),
        );
        if let Some(cost) = &finished.cost {
            let who = (entry.tenant.as_str(), entry.subject.as_deref(), entry.agent.as_deref());
            self.usage().record(guild_queue::now_unix_ms(), who, &tool.name, cost).await;
        }
        admission.settle(finished.fuel_used_units, finished.cost.as_deref());
        let finished = Arc::new(finished);
        let audit_span = guild_telemetry::span!("audit write");
        match self.audit.append(audit).instrument(audit_span).await {
            Ok(_) => self.metrics.audit_records.inc(),
            Err(e) => tracing::error!(error = %e, "the run's audit record was not written"),
        }
        tracing::info!(
            status = %finished.status,
            outcome = finished.label(),
            fuel_used_units = finished.fuel_used_units,
            wall_time_us = finished.wall_time_us,
            bundle = %finished.bundle.map(|b| b.to_hex()).unwrap_or_default(),
            "run finished"
        );
        drop(committing);
        self.metrics.runs_committing.set(self.queue.committing() as i64);
        self.guard_call(&tool, &finished);
        let _ = state.send(RunState::Finished(finished.clone()));
        let bundle = finished.bundle;
        // A call answered from another run has no tape of its own to shadow.
        let reused = finished.cache.as_ref().is_some_and(CacheState::cached);
        let _ = done.send((finished, output));
        // After the answer: a shadow never adds latency to the call it shadows.
        if let (Some(candidate), Some(bundle), false) = (shadow, bundle, reused) {
            self.shadow(bundle, candidate);
        }
        if let Some(cached) = verify {
            match self.cache().verifying.clone().try_acquire_owned() {
                Ok(permit) => {
                    let daemon = self.clone();
                    tokio::spawn(async move {
                        daemon.verify_hit(cached).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    self.metrics.cache.verify.with_label_values(&[&tool.name, "skipped"]).inc();
                }
            }
        }
    }

    /// Turn a run's result into its table entry, output, metrics and audit record (`exemplar`:
    /// the run's trace, when it is sampled, for the latency bucket's exemplar).
    fn conclude(
        &self,
        tool: &RegisteredTool,
        entry: &RunEntry,
        (input_digest, key, exemplar): (Digest, Option<String>, Option<&str>),
        ran: Ran,
    ) -> (Finished, Option<String>, AuditEntry) {
        let mut audit = AuditEntry {
            run: entry.id.clone(),
            tenant: entry.tenant.clone(),
            subject: entry.subject.clone(),
            agent: entry.agent.clone(),
            tool: tool.name.clone(),
            tool_digest: *tool.tool.digest(),
            revision: Some(tool.revision),
            input_digest,
            grants: Some(PolicyRecord::granted(tool.grants.clone(), tool.limits.clone())),
            outcome: String::new(),
            fuel_used_units: 0,
            cost: None,
            bundle: None,
            idempotency_key: key,
            attempt: None,
            worker: None,
            completion: None,
            event: None,
            trace_id: None,
        };
        let (result, cache) = match ran {
            Ran::Report(result, cache) => (result, cache),
            Ran::Reused { cached, merged, wall_time } => {
                let revision = cached.record.revision;
                let label = if merged { "cache_merged" } else { "cache_hit" };
                self.metrics.runs.with_label_values(&[&tool.name, &revision.to_string(), &entry.tenant, label]).inc();
                audit.revision = Some(revision);
                audit.bundle = Some(cached.record.bundle);
                audit.outcome = "output".into();
                audit.completion =
                    Some(if merged { guild_vocab::AttemptEnd::CacheMerged } else { guild_vocab::AttemptEnd::CacheHit });
                let finished = Finished {
                    status: RunStatus::Succeeded,
                    error: None,
                    bundle: Some(cached.record.bundle),
                    fuel_used_units: 0,
                    wall_time_us: u64::try_from(wall_time.as_micros()).unwrap_or(u64::MAX),
                    revision: Some(revision),
                    cache: Some(if merged { CacheState::Merged } else { CacheState::Hit }),
                    cost: None,
                    trace_id: None,
                };
                return (finished, Some(cached.output.to_string()), audit);
            }
        };
        let (mut finished, output) = match result {
            Ok(report) => {
                report.log_egress_refusals();
                self.observe(tool, &entry.tenant, &report, exemplar);
                audit.bundle = report.bundle;
                audit.fuel_used_units = report.fuel_used_units;
                let cost = self.price(tool, &entry.tenant, &report);
                audit.cost = cost.as_deref().cloned();
                let (mut finished, output, policy) = finished_from_report(report, tool.revision);
                finished.cost = cost;
                audit.grants = Some(policy);
                (finished, output)
            }
            Err(error) => {
                let code = error.code();
                let revision = tool.revision.to_string();
                self.metrics.runs.with_label_values(&[&tool.name, &revision, &entry.tenant, code.as_str()]).inc();
                let finished =
                    Finished { revision: Some(tool.revision), ..Finished::failed(RunStatus::Failed, error.failure()) };
                (finished, None)
            }
        };
        finished.cache = cache;
        audit.outcome = finished.label().to_string();
        (finished, output, audit)
    }

    /// What a run of `tool` for `tenant` cost, as it was priced when sealed (at the table in
    /// force when it started), counted in `guild_cost_total` and `guild_tokens_total`; `None`
    /// without a price table or a bundle.
    fn price(&self, tool: &RegisteredTool, tenant: &str, report: &RunReport) -> Option<Arc<guild_replay::cost::Cost>> {
        let cost = report.cost.clone()?;
        self.metrics.count_tokens(tenant, &tool.name, &report.tokens);
        self.metrics.count_cost(tenant, &tool.name, &cost);
        Some(Arc::new(cost))
    }

    fn observe(&self, registered: &RegisteredTool, tenant: &str, report: &RunReport, exemplar: Option<&str>) {
        let (tool, revision) = (registered.name.as_str(), registered.revision.to_string());
        let label = report.outcome.label();
        self.metrics.runs.with_label_values(&[tool, &revision, tenant, label]).inc();
        self.metrics.fuel_used.with_label_values(&[tenant]).inc_by(report.fuel_used_units);
        // A sampled run is its bucket's exemplar.
        self.metrics.observe_run((tool, &revision), report.wall_time.as_secs_f64(), exemplar);
        self.metrics.run_fuel_units.with_label_values(&[tool, &revision]).observe(report.fuel_used_units as f64);
        self.metrics.bundle_bytes.inc_by(report.bundle_bytes);
        let refused = report.egress_denials.len() as u64;
        let attempted = u64::from(report.egress_requests);
        if attempted > 0 {
            self.metrics.egress.with_label_values(&[tool, "attempted"]).inc_by(attempted);
        }
        if refused > 0 {
            self.metrics.egress.with_label_values(&[tool, "refused"]).inc_by(refused);
        }
        if report.egress_limited > 0 {
            self.metrics.egress.with_label_values(&[tool, "limited"]).inc_by(u64::from(report.egress_limited));
        }
    }
}

/// A run accepted for local execution, with everything its task needs.
pub(super) struct Job {
    pub(super) tool: Arc<RegisteredTool>,
    pub(super) input: String,
    pub(super) input_digest: Digest,
    pub(super) admission: Admission,
    pub(super) ticket: Ticket,
    pub(super) state: tokio::sync::watch::Sender<RunState>,
    pub(super) done: oneshot::Sender<(Arc<Finished>, Option<String>)>,
    pub(super) key: Option<String>,
    pub(super) cancel: CancellationToken,
    /// The candidate to run against this call's tape once it is answered, if drawn.
    pub(super) shadow: Option<Arc<RegisteredTool>>,
    /// Held to a run limit's turn (an async run): it starts no sooner.
    pub(super) not_before: Option<tokio::time::Instant>,
}

/// The run's table entry, its output, and the policy it had (for the audit record).
fn finished_from_report(report: RunReport, revision: u32) -> (Finished, Option<String>, PolicyRecord) {
    let wall_time_us = u64::try_from(report.wall_time.as_micros()).unwrap_or(u64::MAX);
    let finished = Finished {
        status: report.outcome.run_status(),
        error: report.outcome.failure(),
        bundle: report.bundle,
        fuel_used_units: report.fuel_used_units,
        wall_time_us,
        revision: Some(revision),
        cache: None,
        cost: None,
        trace_id: None,
    };
    (finished, report.outcome.into_output(), PolicyRecord::resolved(report.policy, report.limits))
}

/// Whether run `id`'s hit is among the `verify_sample` share replayed in the background (drawn
/// from the run id, which is random).
fn sampled(id: &str, policy: Option<&CachePolicy>) -> bool {
    let Some(sample) = policy.map(|p| p.verify_sample).filter(|s| *s > 0.0) else { return false };
    let hash = blake3::hash(id.as_bytes());
    let draw = u64::from_le_bytes(hash.as_bytes()[..8].try_into().unwrap_or_default());
    (draw as f64 / u64::MAX as f64) < sample
}
