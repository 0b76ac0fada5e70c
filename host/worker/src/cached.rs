//! A cached tool's job: made hermetic, looked up in the fleet's shared entries by (tenant,
//! action digest), answered from an entry that passes its check against its signed bundle, or
//! from an identical job in flight on any worker, else run — and its result stored, once its
//! bundle is shared, when its tape proves it reusable.

use super::Worker;
use guild_queue::{CacheKey, CacheRecord, CachedValue, EntryRejected, Job, JobCache};
use guild_replay::{BlobStore, DirStore};
use guild_runtime::{CancellationToken, Grants, Outcome, RunError, RunFor, RunMode, RunReport, Tool};
use std::time::{Duration, Instant};

/// How long a job waits for an identical one in flight beyond its own timeout.
const FLIGHT_WAIT_GRACE: Duration = Duration::from_secs(5);
/// How often a waiting job looks whether the flight it waits for has landed.
const FLIGHT_POLL: Duration = Duration::from_millis(20);

/// How a cached job was answered (one per job, moved once: its size does not matter).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Ran {
    /// It ran here, with what to do about the cache once its bundle is shared.
    Report(Result<RunReport, RunError>, After),
    /// Answered from an entry (`merged`: one an identical job in flight stored meanwhile).
    Reused {
        /// The entry.
        value: CachedValue,
        /// Whether it waited for a flight.
        merged: bool,
        /// From the lookup to the answer.
        wall_time: Duration,
    },
}

/// What a run of a cached job still owes the cache.
pub(crate) struct After {
    /// The entry's key, when the run was hermetic; else why not (`miss: …`).
    key: Result<CacheKey, String>,
    /// Whether this job leads the flight of `key` (and must land it).
    leading: bool,
    bounds: JobCache,
}

impl Worker {
    pub(crate) async fn run_cached(
        &self,
        tool: &Tool,
        job: &Job,
        grants: &Grants,
        bounds: JobCache,
        run_for: &RunFor<'_>,
        cancel: CancellationToken,
    ) -> Ran {
        let limits = &job.limits;
        let scope = Some(guild_replay::Digest::of(job.tenant.as_bytes()));
        let mode = RunMode::Hermetic { revision: job.revision, scope };
        let prepared = match self.runtime.prepare(tool, &job.input, grants, limits, mode).await {
            Ok(prepared) => prepared,
            Err(error) => {
                return Ran::Report(Err(error), After { key: Err("not started".into()), leading: false, bounds });
            }
        };
        let (key, action) = match prepared.action() {
            Some(Ok(action)) => (CacheKey::new(&job.tenant, action), *action),
            why => {
                let why = why.and_then(Result::err).map_or_else(|| "not hermetic".to_string(), ToString::to_string);
                let report = self.runtime.run_prepared(tool, prepared, grants, limits, cancel, Some(run_for)).await;
                return Ran::Report(report, After { key: Err(why), leading: false, bounds });
            }
        };
        let started = Instant::now();
        let deadline = started + limits.timeout() + FLIGHT_WAIT_GRACE;
        let mut merged = false;
        let mut leading = false;
        loop {
            match self.queue.cache_get(&job.tool, &key).await {
                // An entry answers only for the key it is stored under: this tenant, this tool,
                // this revision and this action (Redis holds what anyone with access wrote).
                Ok(Some(value)) if !stored_under(&value, job, &action) => {
                    tracing::warn!(tool = %job.tool, bundle = %value.record.bundle, "a shared result cache entry is stored under another action's key; dropped");
                    let _ = self.queue.cache_evict(&job.tool, &key).await;
                }
                Ok(Some(value)) => match self.check(&value).await {
                    Ok(()) if value.record.fuel_used_units <= limits.fuel_units => {
                        return Ran::Reused { value, merged, wall_time: started.elapsed() };
                    }
                    Ok(()) => break,
                    Err(EntryRejected::Untrusted(why)) => {
                        // Another node's, signed by a key this one is not told to trust: good for
                        // that node, not for answering here. Run, and leave it.
                        tracing::info!(tool = %job.tool, why, "a shared result cache entry is not trusted here; the job runs");
                        break;
                    }
                    Err(EntryRejected::Invalid(why)) => {
                        tracing::warn!(tool = %job.tool, bundle = %value.record.bundle, why, "a shared result cache entry failed its check and was dropped");
                        let _ = self.queue.cache_evict(&job.tool, &key).await;
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the shared result cache cannot be read; the job runs");
                    break;
                }
            }
            let flight_ms = u64::try_from((limits.timeout() + FLIGHT_WAIT_GRACE).as_millis()).unwrap_or(u64::MAX);
            match self.queue.cache_fly(&job.tool, &key, &job.id, flight_ms).await {
                Ok(true) => {
                    // The flight before may have landed between the read and this mark: read
                    // once more, now that no identical job can start.
                    if let Ok(Some(value)) = self.queue.cache_get(&job.tool, &key).await
                        && stored_under(&value, job, &action)
                        && value.record.fuel_used_units <= limits.fuel_units
                        && self.check(&value).await.is_ok()
                    {
                        let _ = self.queue.cache_land(&job.tool, &key, &job.id).await;
                        return Ran::Reused { value, merged, wall_time: started.elapsed() };
                    }
                    leading = true;
                    break;
                }
                Ok(false) if Instant::now() < deadline => {
                    merged = true;
                    while Instant::now() < deadline && self.queue.cache_flying(&job.tool, &key).await.unwrap_or(false) {
                        tokio::time::sleep(FLIGHT_POLL).await;
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                _ => break,
            }
        }
        let report = self.runtime.run_prepared(tool, prepared, grants, limits, cancel, Some(run_for)).await;
        Ran::Report(report, After { key: Ok(key), leading, bounds })
    }

    /// Once the run's bundle is shared: store its result when its tape proved it reusable, and
    /// land the flight it led. Returns what the cache did (`stored`, `miss: …`).
    pub(crate) async fn settle_cache(
        &self,
        job: &Job,
        after: After,
        report: &Result<RunReport, RunError>,
        shared: bool,
    ) -> String {
        let key = match after.key {
            Ok(key) => key,
            Err(why) => return format!("miss: {why}"),
        };
        let state = match report {
            Ok(report) => match (&report.hermetic, &report.outcome, report.bundle) {
                (Some(hermetic), Outcome::Output { .. }, Some(_)) if hermetic.reusable.is_ok() && !shared => {
                    // An entry other nodes could not check against its bundle would only be
                    // dropped by them: not stored (set redis.shared_store for large bundles).
                    "miss: bundle not shared (too large for Redis, and no shared store)".to_string()
                }
                (Some(hermetic), Outcome::Output { output }, Some(bundle)) if hermetic.reusable.is_ok() => {
                    let value = CachedValue {
                        record: CacheRecord {
                            tenant: job.tenant.clone(),
                            tool: job.tool.clone(),
                            revision: job.revision.unwrap_or(1),
                            action: hermetic.action.unwrap_or(bundle),
                            bundle,
                            fuel_used_units: report.fuel_used_units,
                            output_bytes: output.len() as u64,
                            stored_unix_ms: guild_queue::now_unix_ms(),
                        },
                        output: output.clone(),
                    };
                    match self.queue.cache_put(&key, &value, after.bounds).await {
                        Ok(_) => "stored".to_string(),
                        Err(e) => format!("miss: not stored ({e})"),
                    }
                }
                (Some(hermetic), ..) => match &hermetic.reusable {
                    Err(why) => format!("miss: {why}"),
                    Ok(()) => "miss: not recorded".to_string(),
                },
                (None, ..) => "miss: not hermetic".to_string(),
            },
            Err(error) => format!("miss: run failed ({})", error.code().as_str()),
        };
        if after.leading {
            let _ = self.queue.cache_land(&job.tool, &key, &job.id).await;
        }
        state
    }

    /// Check a shared entry against its bundle: from Redis, else the shared store, else this
    /// worker's own.
    async fn check(&self, value: &CachedValue) -> Result<(), EntryRejected> {
        let id = value.record.bundle;
        let trusted = &self.trusted_keys;
        if let Ok(Some((manifest, signature, parts))) = self.queue.get_bundle(&id).await {
            return guild_queue::check_entry(
                &parts,
                &manifest,
                &signature,
                trusted,
                &value.record,
                Some(&value.output),
            )
            .map(drop);
        }
        let stores: Vec<std::sync::Arc<DirStore>> =
            self.shared_store.iter().cloned().chain(std::iter::once(self.store.clone())).collect();
        let (record, output, trusted) = (value.record.clone(), value.output.clone(), trusted.clone());
        tokio::task::spawn_blocking(move || {
            for store in stores {
                if let Ok((manifest, signature)) = store.get_bundle(&record.bundle) {
                    let parts: &dyn BlobStore = store.as_ref();
                    return guild_queue::check_entry(parts, &manifest, &signature, &trusted, &record, Some(&output))
                        .map(drop);
                }
            }
            Err(EntryRejected::Invalid(format!(
                "bundle {} is in neither Redis nor a store this worker reads",
                record.bundle
            )))
        })
        .await
        .unwrap_or_else(|e| Err(EntryRejected::Invalid(e.to_string())))
    }
}

/// Whether `value` is an entry of the key it was read under: `job`'s tenant, tool and revision,
/// and `action` (Redis holds what anyone with access wrote).
fn stored_under(value: &CachedValue, job: &Job, action: &guild_replay::Digest) -> bool {
    let record = &value.record;
    record.tenant == job.tenant
        && record.tool == job.tool
        && Some(record.revision) == job.revision.or(Some(1))
        && record.action == *action
}
