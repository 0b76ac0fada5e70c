//! The rollout gate's verdict over many recorded runs: a [`GateReport`] gathers the
//! [`CandidateCheck`]s of one candidate revision (counts per verdict, the mean fuel delta, a
//! table for people), and a [`GatePolicy`] — a section of the daemon's configuration — says
//! how many of each difference a candidate may show and still be promoted.

use crate::candidate::{CandidateCheck, CandidateVerdict};
use guild_replay::Digest;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// How many checks ended with each verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictCounts {
    /// Checks whose verdict was `identical`.
    pub identical: u64,
    /// ... `output_changed`.
    pub output_changed: u64,
    /// ... `error_changed`.
    pub error_changed: u64,
    /// ... `missing_effect`.
    pub missing_effect: u64,
    /// ... `new_effect`.
    pub new_effect: u64,
    /// ... `limit`.
    pub limit: u64,
    /// ... `trap`.
    pub trap: u64,
}

impl VerdictCounts {
    /// The count of `verdict`.
    pub fn get(&self, verdict: CandidateVerdict) -> u64 {
        match verdict {
            CandidateVerdict::Identical => self.identical,
            CandidateVerdict::OutputChanged => self.output_changed,
            CandidateVerdict::ErrorChanged => self.error_changed,
            CandidateVerdict::MissingEffect => self.missing_effect,
            CandidateVerdict::NewEffect => self.new_effect,
            CandidateVerdict::Limit => self.limit,
            CandidateVerdict::Trap => self.trap,
        }
    }

    fn add(&mut self, verdict: CandidateVerdict) {
        let count = match verdict {
            CandidateVerdict::Identical => &mut self.identical,
            CandidateVerdict::OutputChanged => &mut self.output_changed,
            CandidateVerdict::ErrorChanged => &mut self.error_changed,
            CandidateVerdict::MissingEffect => &mut self.missing_effect,
            CandidateVerdict::NewEffect => &mut self.new_effect,
            CandidateVerdict::Limit => &mut self.limit,
            CandidateVerdict::Trap => &mut self.trap,
        };
        *count += 1;
    }
}

/// A candidate revision checked against recorded runs of the current one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateReport {
    /// The tool's name, shared by both revisions.
    pub tool: String,
    /// Component digest of the current revision, whose runs were recorded.
    pub current: Digest,
    /// Component digest of the candidate.
    pub candidate: Digest,
    /// One check per recorded run, in the order they were made.
    pub checks: Vec<CandidateCheck>,
    /// How many checks ended with each verdict.
    pub counts: VerdictCounts,
    /// Mean of the checks' `fuel_delta` (candidate minus recorded), units; 0 without checks.
    pub fuel_delta_mean: f64,
}

impl GateReport {
    /// Gather `checks` of `candidate` against runs of `current`, both revisions of `tool`.
    pub fn new(tool: impl Into<String>, current: Digest, candidate: Digest, checks: Vec<CandidateCheck>) -> Self {
        let mut counts = VerdictCounts::default();
        let mut delta_sum = 0i128;
        for check in &checks {
            counts.add(check.verdict);
            delta_sum += i128::from(check.fuel_delta);
        }
        #[expect(clippy::cast_precision_loss, reason = "a mean for people: 53 bits of precision is plenty")]
        let fuel_delta_mean = if checks.is_empty() { 0.0 } else { delta_sum as f64 / checks.len() as f64 };
        Self { tool: tool.into(), current, candidate, checks, counts, fuel_delta_mean }
    }

    /// Runs checked.
    pub fn runs(&self) -> u64 {
        self.checks.len() as u64
    }

    /// The report for people: a header, one line per run (bundle id, verdict, fuel delta, wall
    /// time in µs, detail), then the totals per verdict and the mean fuel delta.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let short = |d: &Digest| d.to_hex()[..12].to_string();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "gate: {} {} -> {} ({} runs)",
            self.tool,
            short(&self.current),
            short(&self.candidate),
            self.runs()
        );
        let _ = writeln!(out, "{:<12}  {:<14}  {:>12}  {:>9}  detail", "bundle", "verdict", "fuel delta", "wall µs");
        for check in &self.checks {
            let _ = writeln!(
                out,
                "{:<12}  {:<14}  {:>+12}  {:>9}  {}",
                short(&check.bundle),
                check.verdict.label(),
                check.fuel_delta,
                check.wall_time_us,
                check.detail
            );
        }
        let totals: Vec<String> = CandidateVerdict::ALL
            .iter()
            .map(|&v| (v, self.counts.get(v)))
            .filter(|&(_, n)| n > 0)
            .map(|(v, n)| format!("{} {n}", v.label()))
            .collect();
        if totals.is_empty() {
            let _ = writeln!(out, "total: no recorded runs were checked");
        } else {
            let _ = writeln!(out, "total: {}; mean fuel delta {:+.1} units", totals.join(", "), self.fuel_delta_mean);
        }
        out
    }
}

/// How many differences a candidate may show over the recorded runs and still pass the gate:
/// the `[gate]` section of the daemon's configuration. Every count is a number of runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatePolicy {
    /// Runs on which the candidate may trap. Default 0.
    pub traps_max: u64,
    /// Runs on which the candidate may hit a limit the original did not. Default 0.
    pub limits_max: u64,
    /// Runs on which the candidate may ask for an effect the recording lacks. Default 0.
    pub new_effects_max: u64,
    /// Runs on which the candidate may leave out a recorded effect. Default 0.
    pub missing_effects_max: u64,
    /// Runs on which the candidate may end differently (an error for output, or the reverse,
    /// or another error). Default 0.
    pub errors_changed_max: u64,
    /// Share of the runs, in percent (0 to 100), on which the output may differ. Default 0.
    pub output_changed_percent_max: f64,
    /// Recorded runs that must have been checked for the gate to decide at all. Default 1.
    pub min_runs: u64,
}

impl Default for GatePolicy {
    fn default() -> Self {
        Self {
            traps_max: 0,
            limits_max: 0,
            new_effects_max: 0,
            missing_effects_max: 0,
            errors_changed_max: 0,
            output_changed_percent_max: 0.0,
            min_runs: 1,
        }
    }
}

/// A [`GatePolicy`] that cannot judge anything.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "rollout.gate.output_changed_percent_max is {percent}; it must be a percentage from 0 to 100 \
     (0: no run may change its output)"
)]
pub struct GatePolicyError {
    /// The value configured.
    pub percent: f64,
}

impl GatePolicy {
    /// Check the policy once, where it is configured.
    ///
    /// # Errors
    /// [`GatePolicyError`] when `output_changed_percent_max` is not a number from 0 to 100.
    pub fn validate(&self) -> Result<(), GatePolicyError> {
        let percent = self.output_changed_percent_max;
        if (0.0..=100.0).contains(&percent) { Ok(()) } else { Err(GatePolicyError { percent }) }
    }

    /// Why `report` fails this policy, one sentence per broken bound naming the setting to
    /// change; empty when the candidate passes.
    pub fn evaluate(&self, report: &GateReport) -> Vec<String> {
        let mut reasons = Vec::new();
        let runs = report.runs();
        if runs < self.min_runs {
            reasons.push(format!(
                "only {runs} recorded run(s) were checked; the gate needs at least {} (rollout.gate.min_runs)",
                self.min_runs
            ));
        }
        let bounds = [
            (CandidateVerdict::Trap, self.traps_max, "trapped", "traps_max"),
            (CandidateVerdict::Limit, self.limits_max, "hit a limit the original did not", "limits_max"),
            (
                CandidateVerdict::NewEffect,
                self.new_effects_max,
                "asked for an effect the recording lacks",
                "new_effects_max",
            ),
            (
                CandidateVerdict::MissingEffect,
                self.missing_effects_max,
                "left out a recorded effect",
                "missing_effects_max",
            ),
            (CandidateVerdict::ErrorChanged, self.errors_changed_max, "ended differently", "errors_changed_max"),
        ];
        for (verdict, max, what, setting) in bounds {
            let count = report.counts.get(verdict);
            if count > max {
                reasons.push(format!(
                    "the candidate {what} on {count} of {runs} run(s); at most {max} allowed (rollout.gate.{setting})"
                ));
            }
        }
        let changed = report.counts.output_changed;
        #[expect(clippy::cast_precision_loss, reason = "run counts are far below 2^53")]
        let percent = if runs == 0 { 0.0 } else { changed as f64 * 100.0 / runs as f64 };
        if percent > self.output_changed_percent_max {
            reasons.push(format!(
                "the output changed on {changed} of {runs} run(s) ({percent:.1}%); at most {}% allowed \
                 (rollout.gate.output_changed_percent_max)",
                self.output_changed_percent_max
            ));
        }
        reasons
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(verdict: CandidateVerdict, fuel_delta: i64) -> CandidateCheck {
        CandidateCheck {
            bundle: Digest::of(&fuel_delta.to_le_bytes()),
            verdict,
            detail: verdict.label().to_string(),
            output_diff: Vec::new(),
            output_diff_truncated: false,
            effect: None,
            fuel_recorded_units: 100,
            fuel_candidate_units: 100u64.saturating_add_signed(fuel_delta),
            fuel_delta,
            wall_time_us: 50,
            notes: Vec::new(),
        }
    }

    fn report(verdicts: &[CandidateVerdict]) -> GateReport {
        let checks = verdicts.iter().enumerate().map(|(i, &v)| check(v, i64::try_from(i).unwrap_or(0) * 2)).collect();
        GateReport::new("greet", Digest::of(b"v1"), Digest::of(b"v2"), checks)
    }

    #[test]
    fn a_report_counts_verdicts_and_averages_fuel() {
        use CandidateVerdict::*;
        let report = report(&[Identical, Identical, OutputChanged, Trap]);
        assert_eq!(report.counts.identical, 2);
        assert_eq!(report.counts.get(OutputChanged), 1);
        assert_eq!(report.counts.trap, 1);
        assert!((report.fuel_delta_mean - 3.0).abs() < 1e-9, "{}", report.fuel_delta_mean);
        let table = report.table();
        assert_eq!(table.lines().count(), 2 + 4 + 1, "{table}");
        assert_eq!(
            table.lines().last(),
            Some("total: trap 1, output_changed 1, identical 2; mean fuel delta +3.0 units"),
            "{table}"
        );
        assert!(table.lines().nth(2).is_some_and(|l| l.contains("identical") && l.contains("+0")), "{table}");
        let back: GateReport = serde_json::from_str(&serde_json::to_string(&report).unwrap_or_default())
            .unwrap_or_else(|e| panic!("round trip: {e}"));
        assert_eq!(back, report);
    }

    #[test]
    fn the_default_policy_passes_only_identical_runs() {
        use CandidateVerdict::*;
        let policy = GatePolicy::default();
        assert!(policy.evaluate(&report(&[Identical, Identical])).is_empty());
        let reasons = policy.evaluate(&report(&[Identical, Trap, NewEffect, OutputChanged]));
        assert_eq!(reasons.len(), 3, "{reasons:#?}");
        assert!(reasons[0].contains("gate.traps_max"), "{reasons:#?}");
        assert!(reasons[1].contains("gate.new_effects_max"), "{reasons:#?}");
        assert!(reasons[2].contains("25.0%"), "{reasons:#?}");
        assert!(policy.evaluate(&report(&[]))[0].contains("gate.min_runs"));
    }

    #[test]
    fn a_policy_reads_from_config_with_defaults_and_refuses_unknown_fields() {
        let policy: GatePolicy = serde_json::from_str(r#"{"output_changed_percent_max": 30.0, "traps_max": 1}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(policy.min_runs, 1);
        assert_eq!(policy.traps_max, 1);
        use CandidateVerdict::*;
        assert!(policy.evaluate(&report(&[Identical, Identical, Identical, OutputChanged])).is_empty());
        assert!(serde_json::from_str::<GatePolicy>(r#"{"trap_max": 1}"#).is_err());
        assert_eq!(policy.validate(), Ok(()));
        for percent in [-1.0, 100.5, f64::NAN] {
            let bad = GatePolicy { output_changed_percent_max: percent, ..GatePolicy::default() };
            assert!(bad.validate().is_err_and(|e| e.to_string().contains("from 0 to 100")), "{percent}");
        }
    }
}
