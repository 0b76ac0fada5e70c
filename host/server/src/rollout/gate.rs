//! The replay gate on the daemon: the newest recorded runs of a tool's current revision, found
//! in the audit log (streamed, keeping only the last N that match), each bundle opened wherever
//! this node can read it and verified, the candidate run against it with every effect answered
//! from its tape ([`guild_runtime::Runtime::check_candidate`]), and the report judged by the
//! configured [`guild_runtime::GatePolicy`]. The report is kept in the store as canonical JSON
//! (content-addressed) beside its signature by the host key, and the check is audited. Shadow
//! runs use the same check on a live call's fresh bundle, after the caller has its answer.

use super::{Actor, ChangeError};
use crate::daemon::Daemon;
use crate::registry::RegisteredTool;
use guild_audit::AuditRecord;
use guild_replay::{BlobStore, Digest};
use guild_runtime::{CandidateCheck, GateReport, ReplayOptions};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::io::BufRead as _;
use std::sync::{Arc, Mutex};

/// Longest audit log line read while looking for runs, bytes; a longer one is skipped.
const AUDIT_LINE_BYTES_MAX: usize = 1 << 20;

/// A gate's verdict on a candidate, and where its evidence is kept.
#[derive(Debug, Clone, Serialize)]
pub struct GateOutcome {
    /// Whether the candidate passes the configured policy.
    pub passed: bool,
    /// Why it does not: one sentence per broken bound, and each run that could not be checked.
    pub failures: Vec<String>,
    /// blake3 of the report's canonical JSON in the store.
    pub report_digest: Digest,
    /// blake3 of the report's signature document (by the host key) in the store.
    pub signature_digest: Digest,
    /// The candidate's revision number.
    pub candidate_revision: u32,
    /// The current revision's number.
    pub current_revision: u32,
    /// The report.
    pub report: GateReport,
}

/// A shadow verdict kept for `guild rollout status`.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowSample {
    /// The live call's bundle.
    pub bundle: Digest,
    /// The candidate revision shadowed.
    pub revision: u32,
    /// What the candidate did against the call's tape.
    pub check: CandidateCheck,
}

/// Shadow runs: a small lane of their own and the newest verdicts per tool.
pub struct Shadows {
    lane: Arc<tokio::sync::Semaphore>,
    kept_max: usize,
    samples: Mutex<HashMap<String, VecDeque<ShadowSample>>>,
}

impl Shadows {
    /// A lane of `in_flight_max` shadow runs at once, keeping `kept_max` verdicts per tool.
    pub fn new(in_flight_max: usize, kept_max: usize) -> Self {
        Self {
            lane: Arc::new(tokio::sync::Semaphore::new(in_flight_max.max(1))),
            kept_max: kept_max.max(1),
            samples: Mutex::new(HashMap::new()),
        }
    }

    /// The newest shadow verdicts of `tool`, oldest first.
    pub fn samples(&self, tool: &str) -> Vec<ShadowSample> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.get(tool).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    fn keep(&self, tool: &str, sample: ShadowSample) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let kept = samples.entry(tool.to_string()).or_default();
        if kept.len() >= self.kept_max {
            kept.pop_front();
        }
        kept.push_back(sample);
    }
}

impl Daemon {
    /// Check revision `candidate` of `name` against the newest `last` recorded runs of its current
    /// revision (within `since_s` seconds, if given), keep the signed report and audit the check.
    ///
    /// # Errors
    /// [`ChangeError::Unknown`]; [`ChangeError::Rollout`] for a `last` past
    /// `rollout.check_runs_max`, an unknown revision, or a candidate that is the current
    /// revision; [`ChangeError::Store`] when the audit log cannot be read, a revision is not
    /// loaded here, or the report cannot be kept or signed; [`ChangeError::NotAudited`].
    pub async fn check_revision(
        &self,
        name: &str,
        candidate: u32,
        last: Option<u64>,
        since_s: Option<u64>,
        actor: &Actor<'_>,
    ) -> Result<GateOutcome, ChangeError> {
        let config = self.rollout().config();
        guild_vocab::rollout::bounded("the reason", actor.reason)?;
        let invalid = |m: String| ChangeError::Rollout(guild_vocab::RolloutError::Invalid(m));
        let last = last.unwrap_or(config.check_runs_default);
        if last == 0 || last > config.check_runs_max {
            return Err(invalid(format!(
                "a check takes 1 to {} recorded runs (rollout.check_runs_max), not {last}",
                config.check_runs_max
            )));
        }
        let named = self.tools().named(name).ok_or_else(|| ChangeError::Unknown(name.to_string()))?;
        if named.record.revision(candidate).is_none() {
            return Err(ChangeError::Rollout(guild_vocab::RolloutError::NoRevision {
                name: name.to_string(),
                revision: candidate,
            }));
        }
        if candidate == named.record.current {
            return Err(ChangeError::Rollout(guild_vocab::RolloutError::AlreadyCurrent {
                name: name.to_string(),
                revision: candidate,
            }));
        }
        let current = named.current().clone();
        let tool = named.revision(candidate).cloned().ok_or_else(|| {
            ChangeError::Store(format!("revision {candidate} of {name:?} is not loaded on this node"))
        })?;
        let since_unix_ms = since_s.map(|s| guild_queue::now_unix_ms().saturating_sub(s.saturating_mul(1000)));
        let (path, wanted, digest) = (self.audit().path().to_path_buf(), name.to_string(), *current.tool.digest());
        let bundles = tokio::task::spawn_blocking(move || recorded_runs(&path, &wanted, &digest, last, since_unix_ms))
            .await
            .map_err(|e| ChangeError::Store(e.to_string()))?
            .map_err(ChangeError::Store)?;
        let mut checks = Vec::with_capacity(bundles.len());
        let mut failures = Vec::new();
        for id in &bundles {
            match self.check_one(id, &tool).await {
                Ok(check) => checks.push(check),
                Err(e) => failures.push(format!("run {id} could not be checked: {e}")),
            }
        }
        let report = GateReport::new(name, *current.tool.digest(), *tool.tool.digest(), checks);
        failures.splice(0..0, config.gate.evaluate(&report));
        let (report_digest, signature_digest) = self.keep_signed(&report).await?;
        let passed = failures.is_empty();
        let outcome = GateOutcome {
            passed,
            failures,
            report_digest,
            signature_digest,
            candidate_revision: candidate,
            current_revision: current.revision,
            report,
        };
        let counts = serde_json::to_string(&outcome.report.counts).unwrap_or_default();
        let detail = format!(
            "candidate revision {candidate} against {} runs of revision {}: {counts}, fuel delta mean {:.0}; {}; report {report_digest}: {}",
            outcome.report.runs(),
            current.revision,
            outcome.report.fuel_delta_mean,
            if passed { "passed" } else { "failed" },
            actor.reason
        );
        self.audit_tool_event("rollout_checked", actor.name, name, &detail).await?;
        Ok(outcome)
    }

    async fn check_one(&self, id: &Digest, candidate: &RegisteredTool) -> Result<CandidateCheck, String> {
        let (bundle, store) = crate::bundles::open(self, id).await?;
        self.runtime()
            .check_candidate(&bundle, store.as_ref(), &candidate.tool, &ReplayOptions::default())
            .await
            .map_err(|e| e.to_string())
    }

    /// Keep `report` in the store as canonical JSON, and its signature beside it.
    async fn keep_signed(&self, report: &GateReport) -> Result<(Digest, Digest), ChangeError> {
        let store_error = |e: String| ChangeError::Store(format!("cannot keep the gate report: {e}"));
        let bytes = guild_replay::canonical::to_canonical_bytes(report).map_err(|e| store_error(e.to_string()))?;
        let digest = self.store().put(&bytes).map_err(|e| store_error(e.to_string()))?;
        let signature = self.runtime().sign(digest).await.map_err(|e| store_error(e.to_string()))?;
        let signed = guild_replay::canonical::to_canonical_bytes(&signature).map_err(|e| store_error(e.to_string()))?;
        let signature_digest = self.store().put(&signed).map_err(|e| store_error(e.to_string()))?;
        Ok((digest, signature_digest))
    }

    /// After a live call of the current revision sealed `bundle`, run `candidate` against its
    /// tape in the shadow lane (skipped when the lane is full) and count the verdict. Never
    /// touches the caller's answer, quota or any real upstream.
    pub(crate) fn shadow(self: &Arc<Self>, bundle: Digest, candidate: Arc<RegisteredTool>) {
        let shadows = &self.rollout().shadows;
        let Ok(permit) = shadows.lane.clone().try_acquire_owned() else {
            self.metrics().shadow_runs.with_label_values(&[&candidate.name, "skipped"]).inc();
            return;
        };
        let daemon = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let verdict = match daemon.check_one(&bundle, &candidate).await {
                Ok(check) => {
                    let label = check.verdict.label();
                    daemon.rollout().shadows.keep(
                        &candidate.name,
                        ShadowSample { bundle, revision: candidate.revision, check: check.clone() },
                    );
                    label
                }
                Err(e) => {
                    tracing::warn!(tool = %candidate.name, %bundle, error = %e, "a shadow run could not be made");
                    "failed"
                }
            };
            daemon.metrics().shadow_runs.with_label_values(&[&candidate.name, verdict]).inc();
        });
    }
}

/// The newest `last` runs of `tool` whose component is `digest` and that left a bundle, from the
/// audit log at `path` (oldest first).
fn recorded_runs(
    path: &std::path::Path,
    tool: &str,
    digest: &Digest,
    last: u64,
    since_unix_ms: Option<u64>,
) -> Result<Vec<Digest>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read the audit log {}: {e}", path.display()))?;
    let mut reader = std::io::BufReader::new(file);
    let keep = usize::try_from(last).unwrap_or(usize::MAX);
    let mut found: VecDeque<Digest> = VecDeque::with_capacity(keep.min(4096));
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = std::io::Read::take(&mut reader, AUDIT_LINE_BYTES_MAX as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read the audit log: {e}"))?;
        if read == 0 {
            break;
        }
        if line.len() > AUDIT_LINE_BYTES_MAX {
            // Skip the rest of an overlong line without holding it.
            reader.skip_until(b'\n').map_err(|e| format!("cannot read the audit log: {e}"))?;
            continue;
        }
        let Ok(record) = serde_json::from_slice::<AuditRecord>(&line) else { continue };
        let entry = &record.entry;
        let matches = entry.event.is_none()
            && entry.tool == tool
            && entry.tool_digest == *digest
            && entry.completion.is_none_or(guild_vocab::AttemptEnd::is_final)
            && since_unix_ms.is_none_or(|since| record.time_unix_ms >= since);
        if let (true, Some(bundle)) = (matches, entry.bundle) {
            if found.len() == keep {
                found.pop_front();
            }
            found.push_back(bundle);
        }
    }
    Ok(found.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use guild_runtime::CandidateVerdict;

    fn sample(n: u8) -> ShadowSample {
        let bundle = Digest::of(&[n]);
        let check = CandidateCheck {
            bundle,
            verdict: CandidateVerdict::Identical,
            detail: String::new(),
            output_diff: Vec::new(),
            output_diff_truncated: false,
            effect: None,
            fuel_recorded_units: 1,
            fuel_candidate_units: 1,
            fuel_delta: 0,
            wall_time_us: 1,
            notes: Vec::new(),
        };
        ShadowSample { bundle, revision: 2, check }
    }

    #[test]
    fn shadow_verdicts_kept_are_bounded_and_the_newest() {
        let shadows = Shadows::new(1, 3);
        for n in 0..10 {
            shadows.keep("t", sample(n));
        }
        let kept: Vec<Digest> = shadows.samples("t").iter().map(|s| s.bundle).collect();
        assert_eq!(kept, [7, 8, 9].map(|n| Digest::of(&[n])));
    }

    #[test]
    fn the_audit_scan_keeps_the_newest_matching_runs_and_skips_overlong_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let digest = Digest::of(b"component");
        let mut text = String::new();
        for n in 0..10u8 {
            let bundle = Digest::of(&[n]);
            let tool = if n % 2 == 0 { "greet" } else { "other" };
            let line = serde_json::json!({"seq": n, "time_unix_ms": 1, "prev": digest, "run": "r", "tenant": "t",
                "tool": tool, "tool_digest": digest, "input_digest": digest, "grants": null, "outcome": "output",
                "fuel_used_units": 1, "bundle": bundle, "idempotency_key": null, "hash": digest});
            text.push_str(&format!("{line}\n"));
            if n == 4 {
                text.push_str(&"x".repeat(AUDIT_LINE_BYTES_MAX + 10));
                text.push('\n');
            }
        }
        std::fs::write(&path, text).expect("write");
        let found = recorded_runs(&path, "greet", &digest, 3, None).expect("scanned");
        assert_eq!(found, [4, 6, 8].map(|n| Digest::of(&[n])));
    }
}
