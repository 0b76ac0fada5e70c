//! The replay gate on the daemon: the newest recorded runs of a tool's current revision, found
//! in the audit log (streamed, keeping only the last N that match), each bundle opened wherever
//! this node can read it and verified, the candidate run against it with every effect answered
//! from its tape ([`guild_runtime::Runtime::check_candidate`]), and the report judged by the
//! configured [`guild_runtime::GatePolicy`]. The report is kept in the store as canonical JSON
//! (content-addressed) beside its signature by the host key, and the check is audited. Shadow
//! runs use the same check on a live call's fresh bundle, after the caller has its answer.

use guild_audit::AuditRecord;
use guild_replay::Digest;
use guild_runtime::{CandidateCheck, GateReport};
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
    pub(crate) lane: Arc<tokio::sync::Semaphore>,
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

    pub(crate) fn keep(&self, tool: &str, sample: ShadowSample) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let kept = samples.entry(tool.to_string()).or_default();
        if kept.len() >= self.kept_max {
            kept.pop_front();
        }
        kept.push_back(sample);
    }
}

/// The newest `last` runs of `tool` whose component is `digest` and that left a bundle, from the
/// audit log at `path` (oldest first).
pub(crate) fn recorded_runs(
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
            // A call answered from another run names that run's bundle: take the run once.
            && !entry.completion.is_some_and(guild_vocab::AttemptEnd::is_reuse)
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
