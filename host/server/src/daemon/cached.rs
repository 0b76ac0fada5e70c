//! A cached tool's call: prepared hermetic, looked up by (tenant, action digest), answered from
//! the cache or from an identical call in flight, else run — and its result stored when its
//! tape proves it reusable.

use super::Daemon;
use crate::cache::{CacheKey, CachePolicy, CacheState, Cached, EntryRecord, Joined, Lookup, now_unix_ms};
use crate::registry::RegisteredTool;
use crate::runs::RunEntry;
use guild_audit::AuditEvent;
use guild_runtime::{CancellationToken, Limits, Outcome, Prepared, RunError, RunFor, RunMode, RunReport};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a call waits for an identical one in flight beyond that call's own timeout.
const FLIGHT_WAIT_GRACE: Duration = Duration::from_secs(5);

/// How a call was answered (one per call, moved once: its size does not matter).
#[allow(clippy::large_enum_variant)]
pub(super) enum Ran {
    /// It ran here (or could not start), with what the cache did.
    Report(Result<RunReport, RunError>, Option<CacheState>),
    /// It was answered with another run's result: an entry (`merged: false`) or an identical
    /// call in flight (`merged: true`).
    Reused {
        /// The entry that answered.
        cached: Arc<Cached>,
        /// Whether a call in flight answered it.
        merged: bool,
        /// From the lookup to the answer.
        wall_time: Duration,
    },
}

impl Daemon {
    /// Run `tool`'s call: through the result cache when the tool has a cache policy, else as
    /// any run.
    pub(super) async fn run_call(
        &self,
        tool: &RegisteredTool,
        input: &str,
        limits: &Limits,
        (cancel, meter): (CancellationToken, Option<Arc<dyn guild_replay::cost::TokenMeter>>),
        entry: &RunEntry,
    ) -> Ran {
        let principal = guild_runtime::Principal::of(&entry.tenant, entry.subject.as_deref());
        let run_for = RunFor {
            principal: &principal,
            revision: Some(tool.revision),
            meter,
            pricing: self.pricing(),
            gate: Some(self.gate.clone() as Arc<dyn guild_vocab::egress::EgressGate>),
        };
        let Some(policy) = &tool.cache else {
            let report = self.runtime().run_as(&tool.tool, input, &tool.grants, limits, cancel, Some(&run_for)).await;
            return Ran::Report(report, None);
        };
        // A hit's wall time is what the cache cost it: preparing (the mounts' trees, the digest)
        // and the lookup.
        let started = Instant::now();
        let scope = Some(guild_replay::Digest::of(entry.tenant.as_bytes()));
        let mode = RunMode::Hermetic { revision: Some(tool.revision), scope };
        let prepared = match self.runtime().prepare(&tool.tool, input, &tool.grants, limits, mode).await {
            Ok(prepared) => prepared,
            Err(error) => return Ran::Report(Err(error), Some(CacheState::Miss("not started".into()))),
        };
        let action = match prepared.action() {
            Some(Ok(action)) => *action,
            why => {
                let why = why.and_then(Result::err).map_or_else(|| "not hermetic".to_string(), ToString::to_string);
                let report = self
                    .runtime()
                    .run_prepared(&tool.tool, prepared, &tool.grants, limits, cancel, Some(&run_for))
                    .await;
                self.count(tool, &CacheState::Miss(why.clone()));
                return Ran::Report(report, Some(CacheState::Miss(why)));
            }
        };
        let key = CacheKey::new(&entry.tenant, &action);
        // At most twice: a flight that landed without an entry sends its waiters to look again
        // and lead (or wait once more); after that, a call runs on its own.
        for _ in 0..2 {
            // Against the tool's own fuel limit, not what is left of the tenant's budget: a hit
            // burns nothing, so a tenant near its budget still gets the answers it already paid for.
            match self.cache.lookup(&tool.name, policy, &key, tool.limits.fuel_units).await {
                Lookup::Hit(cached) => return self.reused(tool, cached, false, started),
                Lookup::Rejected { bundle, why } => self.rejected(tool, entry, bundle, &why).await,
                Lookup::Miss => {}
            }
            match self.cache.flights.join(key) {
                Joined::Leader(leader) => {
                    // The flight before this one may have landed between the lookup and the
                    // join: look once more, now that no identical call can start.
                    if let Lookup::Hit(cached) =
                        self.cache.lookup(&tool.name, policy, &key, tool.limits.fuel_units).await
                    {
                        leader.land(Some(cached.clone()));
                        return self.reused(tool, cached, false, started);
                    }
                    let (report, state, stored) =
                        self.run_and_store(tool, policy, key, prepared, limits, cancel, &run_for).await;
                    leader.land(stored);
                    return Ran::Report(report, Some(state));
                }
                Joined::Waiter(waiter) => {
                    let wait = limits.timeout() + FLIGHT_WAIT_GRACE;
                    let landed = tokio::select! {
                        landed = tokio::time::timeout(wait, waiter.landed()) => landed.ok().flatten(),
                        () = cancel.cancelled() => None,
                    };
                    match landed {
                        Some(cached) if cached.record.fuel_used_units <= tool.limits.fuel_units => {
                            return self.reused(tool, cached, true, started);
                        }
                        _ if cancel.is_cancelled() => break,
                        _ => continue,
                    }
                }
                Joined::Crowded => break,
            }
        }
        let (report, state, _) = self.run_and_store(tool, policy, key, prepared, limits, cancel, &run_for).await;
        Ran::Report(report, Some(state))
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_and_store(
        &self,
        tool: &RegisteredTool,
        policy: &CachePolicy,
        key: CacheKey,
        prepared: Prepared,
        limits: &Limits,
        cancel: CancellationToken,
        run_for: &RunFor<'_>,
    ) -> (Result<RunReport, RunError>, CacheState, Option<Arc<Cached>>) {
        let report =
            self.runtime().run_prepared(&tool.tool, prepared, &tool.grants, limits, cancel, Some(run_for)).await;
        let (state, stored) = match &report {
            Ok(report) => match (&report.hermetic, &report.outcome, report.bundle) {
                (Some(hermetic), Outcome::Output { output }, Some(bundle)) if hermetic.reusable.is_ok() => {
                    let record = EntryRecord {
                        tenant: run_for.principal.tenant.clone(),
                        tool: tool.name.clone(),
                        revision: tool.revision,
                        action: hermetic.action.unwrap_or(bundle),
                        bundle,
                        fuel_used_units: report.fuel_used_units,
                        output_bytes: output.len() as u64,
                        stored_unix_ms: now_unix_ms(),
                    };
                    let cached = Arc::new(Cached { record: record.clone(), output: Arc::from(output.as_str()) });
                    if self.cache.store(policy, key, record, cached.output.clone()) {
                        (CacheState::Stored, Some(cached))
                    } else {
                        let why =
                            format!("output of {} bytes is larger than bytes_max ({})", output.len(), policy.bytes_max);
                        (CacheState::Miss(why), None)
                    }
                }
                (Some(hermetic), ..) => match &hermetic.reusable {
                    Err(why) => (CacheState::Miss(why.to_string()), None),
                    Ok(()) => (CacheState::Miss("not recorded".into()), None),
                },
                (None, ..) => (CacheState::Miss("not hermetic".into()), None),
            },
            Err(error) => (CacheState::Miss(format!("run failed ({})", error.code().as_str())), None),
        };
        self.count(tool, &state);
        (report, state, stored)
    }

    /// Replay a sampled hit's bundle in the background; a replay that differs (or cannot be
    /// made) evicts the entry, is counted and audited (`cache_mismatch`), and logged as an error
    /// for the operator's alerts.
    pub(super) async fn verify_hit(self: Arc<Self>, cached: Arc<Cached>) {
        let record = &cached.record;
        let store = self.store().clone();
        let id = record.bundle;
        let opened = tokio::task::spawn_blocking(move || {
            let (manifest, signature) = store.get_bundle(&id).map_err(|e| e.to_string())?;
            guild_replay::Bundle::open(store.as_ref(), &manifest, &signature, None).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let verdict = match opened {
            Ok(bundle) => match self.runtime().replay(&bundle, self.store().as_ref(), &Default::default()).await {
                Ok(report) => match report.mismatch {
                    None if report.fuel_replayed_units == record.fuel_used_units => Ok(()),
                    None => Err("the replay burnt other fuel".to_string()),
                    Some(mismatch) => Err(format!("the replay differs: {mismatch:?}")),
                },
                Err(e) => Err(format!("the bundle cannot be replayed: {e}")),
            },
            Err(e) => Err(format!("the bundle cannot be opened: {e}")),
        };
        let result = if verdict.is_ok() { "match" } else { "mismatch" };
        self.metrics().cache.verify.with_label_values(&[&record.tool, result]).inc();
        let Err(why) = verdict else { return };
        self.cache.evict(&record.tool, &CacheKey::new(&record.tenant, &record.action));
        tracing::error!(tool = %record.tool, bundle = %record.bundle, why, "a cached result did not replay; the entry was evicted");
        let event = AuditEvent { kind: "cache_mismatch".into(), actor: "cache".into(), detail: why };
        if let Err(e) = self.record_event(event, &record.bundle.to_hex(), &record.tenant).await {
            tracing::error!(error = %e, "the cache mismatch's audit record was not written");
        }
    }

    fn reused(&self, tool: &RegisteredTool, cached: Arc<Cached>, merged: bool, started: Instant) -> Ran {
        let state = if merged { CacheState::Merged } else { CacheState::Hit };
        self.count(tool, &state);
        self.metrics().cache.fuel_saved_units.with_label_values(&[&tool.name]).inc_by(cached.record.fuel_used_units);
        Ran::Reused { cached, merged, wall_time: started.elapsed() }
    }

    fn count(&self, tool: &RegisteredTool, state: &CacheState) {
        self.metrics().cache.requests.with_label_values(&[&tool.name, state.label()]).inc();
    }

    /// An entry read back failed its check: count it, say it, and audit it; the call runs.
    async fn rejected(&self, tool: &RegisteredTool, entry: &RunEntry, bundle: guild_replay::Digest, why: &str) {
        self.metrics().cache.requests.with_label_values(&[&tool.name, "rejected"]).inc();
        tracing::warn!(tool = %tool.name, bundle = %bundle, why, "a result cache entry failed its check and was dropped");
        let event = AuditEvent { kind: "cache_entry_rejected".into(), actor: "cache".into(), detail: why.to_string() };
        if let Err(e) = self.record_event(event, &bundle.to_hex(), &entry.tenant).await {
            tracing::error!(error = %e, "the rejected cache entry's audit record was not written");
        }
    }
}
