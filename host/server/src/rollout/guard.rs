//! Guard rails of a ramping candidate: the calls of the candidate and of the current revision
//! over a sliding window, judged after each call once the candidate has its minimum sample. A
//! breach is said once per rollout (the caller rolls the candidate back).

use crate::runs::Finished;
use guild_vocab::{Candidate, FailureCode, RunStatus};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Calls one tool's window keeps, both revisions together; the oldest go first.
pub const GUARD_CALLS_MAX: usize = 10_000;

/// One finished call, as the guard rails see it.
#[derive(Debug, Clone, Copy)]
struct Call {
    at: Instant,
    candidate: bool,
    failed: bool,
    trapped: bool,
    wall_us: u64,
    fuel: u64,
}

/// The window of one tool's rollout.
struct Window {
    /// Which rollout it is for: the candidate revision and when it started.
    rollout: (u32, u64),
    calls: VecDeque<Call>,
    tripped: bool,
}

/// The windows of every tool with a ramping candidate.
#[derive(Default)]
pub struct Guards {
    windows: Mutex<HashMap<String, Window>>,
}

/// What the window says now, for `guild rollout status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WindowStats {
    /// Calls of the candidate in the window.
    pub candidate_calls: u64,
    /// Calls of the current revision in the window.
    pub current_calls: u64,
    /// Share of the candidate's calls that failed, percent.
    pub candidate_error_percent: f64,
    /// Share of the current revision's calls that failed, percent.
    pub current_error_percent: f64,
    /// p99 wall time of the candidate's calls, µs.
    pub candidate_p99_us: u64,
    /// p99 wall time of the current revision's calls, µs.
    pub current_p99_us: u64,
    /// Mean fuel of the candidate's calls.
    pub candidate_fuel_mean: f64,
    /// Mean fuel of the current revision's calls.
    pub current_fuel_mean: f64,
}

impl Guards {
    /// Count a finished call of `tool` (by the candidate or not) and judge the window. Returns
    /// the reason to roll the candidate back, once per rollout.
    pub fn observe(
        &self,
        tool: &str,
        candidate: &Candidate,
        by_candidate: bool,
        finished: &Finished,
    ) -> Option<String> {
        let now = Instant::now();
        let call = Call {
            at: now,
            candidate: by_candidate,
            failed: finished.status != RunStatus::Succeeded,
            trapped: finished.error.as_ref().is_some_and(|f| f.code == FailureCode::Trap),
            wall_us: finished.wall_time_us,
            fuel: finished.fuel_used_units,
        };
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let rollout = (candidate.revision, candidate.started_unix_ms);
        let window = windows.entry(tool.to_string()).or_insert_with(|| Window {
            rollout,
            calls: VecDeque::new(),
            tripped: false,
        });
        if window.rollout != rollout {
            *window = Window { rollout, calls: VecDeque::new(), tripped: false };
        }
        if window.calls.len() >= GUARD_CALLS_MAX {
            window.calls.pop_front();
        }
        window.calls.push_back(call);
        let horizon = Duration::from_secs(candidate.guard.window_s);
        while window.calls.front().is_some_and(|c| now.duration_since(c.at) > horizon) {
            window.calls.pop_front();
        }
        if window.tripped {
            return None;
        }
        let reason = judge(&window.calls, candidate)?;
        window.tripped = true;
        Some(reason)
    }

    /// The window of `tool`'s rollout now.
    pub fn stats(&self, tool: &str) -> WindowStats {
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.get(tool).map(|w| stats(&w.calls)).unwrap_or_default()
    }

    /// Forget `tool`'s window (its rollout ended).
    pub fn forget(&self, tool: &str) {
        self.windows.lock().unwrap_or_else(|p| p.into_inner()).remove(tool);
    }
}

struct Side {
    calls: u64,
    failed: u64,
    trapped: u64,
    p99_us: u64,
    fuel_mean: f64,
}

fn side<'a>(calls: impl Iterator<Item = &'a Call>) -> Side {
    let mut walls = Vec::new();
    let (mut failed, mut trapped, mut fuel) = (0, 0, 0u128);
    for call in calls {
        walls.push(call.wall_us);
        failed += u64::from(call.failed);
        trapped += u64::from(call.trapped);
        fuel += u128::from(call.fuel);
    }
    walls.sort_unstable();
    let n = walls.len();
    let p99_us = if n == 0 { 0 } else { walls[((n * 99).div_ceil(100)).saturating_sub(1).min(n - 1)] };
    let fuel_mean = if n == 0 { 0.0 } else { fuel as f64 / n as f64 };
    Side { calls: n as u64, failed, trapped, p99_us, fuel_mean }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 * 100.0 / whole as f64 }
}

fn stats(calls: &VecDeque<Call>) -> WindowStats {
    let (c, k) = (side(calls.iter().filter(|c| c.candidate)), side(calls.iter().filter(|c| !c.candidate)));
    WindowStats {
        candidate_calls: c.calls,
        current_calls: k.calls,
        candidate_error_percent: percent(c.failed, c.calls),
        current_error_percent: percent(k.failed, k.calls),
        candidate_p99_us: c.p99_us,
        current_p99_us: k.p99_us,
        candidate_fuel_mean: c.fuel_mean,
        current_fuel_mean: k.fuel_mean,
    }
}

/// The first guard rail the window breaks, said for people.
fn judge(calls: &VecDeque<Call>, candidate: &Candidate) -> Option<String> {
    let guard = &candidate.guard;
    // Counted before anything is sorted: most calls come before the minimum sample.
    if (calls.iter().filter(|c| c.candidate).count() as u64) < guard.min_calls.max(1) {
        return None;
    }
    let (c, k) = (side(calls.iter().filter(|c| c.candidate)), side(calls.iter().filter(|c| !c.candidate)));
    let window = guard.window_s;
    let errors = percent(c.failed, c.calls);
    if errors > guard.error_rate_max_percent {
        return Some(format!(
            "error rate {errors:.1}% over {} calls in {window} s is above the guard's {}%",
            c.calls, guard.error_rate_max_percent
        ));
    }
    let traps = percent(c.trapped, c.calls);
    if traps > guard.trap_rate_max_percent {
        return Some(format!(
            "trap rate {traps:.1}% over {} calls in {window} s is above the guard's {}%",
            c.calls, guard.trap_rate_max_percent
        ));
    }
    if k.calls >= guard.min_calls.max(1) {
        if k.p99_us > 0 && c.p99_us as f64 > k.p99_us as f64 * guard.p99_ratio_max {
            return Some(format!(
                "p99 duration {} µs is more than {}x the current revision's {} µs",
                c.p99_us, guard.p99_ratio_max, k.p99_us
            ));
        }
        if k.fuel_mean > 0.0 && c.fuel_mean > k.fuel_mean * guard.fuel_ratio_max {
            return Some(format!(
                "mean fuel {:.0} per call is more than {}x the current revision's {:.0}",
                c.fuel_mean, guard.fuel_ratio_max, k.fuel_mean
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use guild_vocab::{Failure, GuardRails};

    fn candidate(min_calls: u64) -> Candidate {
        Candidate {
            revision: 2,
            ramp_bp: 5000,
            shadow_bp: 0,
            tenants: Vec::new(),
            started_unix_ms: 1,
            started_by: "admin".into(),
            gate_report: None,
            forced: false,
            guard: GuardRails { min_calls, ..GuardRails::default() },
        }
    }

    fn finished(ok: bool) -> Finished {
        Finished {
            status: if ok { RunStatus::Succeeded } else { RunStatus::Failed },
            error: (!ok).then(|| Failure::host(FailureCode::ToolError, "no")),
            bundle: None,
            fuel_used_units: 100,
            wall_time_us: 50,
            revision: None,
            cache: None,
            cost: None,
            trace_id: None,
        }
    }

    #[test]
    fn a_failing_candidate_trips_once_after_its_minimum_sample() {
        let guards = Guards::default();
        let rollout = candidate(20);
        let mut trips = Vec::new();
        for i in 0..100 {
            let ok = i % 10 >= 3;
            if let Some(reason) = guards.observe("t", &rollout, true, &finished(ok)) {
                trips.push((i, reason));
            }
            guards.observe("t", &rollout, false, &finished(true));
        }
        assert_eq!(trips.len(), 1, "{trips:?}");
        assert_eq!(trips[0].0, 19, "judged once 20 candidate calls were in");
        assert!(trips[0].1.contains("error rate 30.0%"), "{}", trips[0].1);
    }

    #[test]
    fn a_healthy_candidate_is_left_alone_and_a_new_rollout_starts_a_new_window() {
        let guards = Guards::default();
        let rollout = candidate(5);
        for _ in 0..50 {
            assert!(guards.observe("t", &rollout, true, &finished(true)).is_none());
        }
        assert_eq!(guards.stats("t").candidate_calls, 50);
        let next = Candidate { started_unix_ms: 2, ..rollout };
        guards.observe("t", &next, true, &finished(true));
        assert_eq!(guards.stats("t").candidate_calls, 1);
    }

    #[test]
    fn the_window_is_bounded() {
        let guards = Guards::default();
        let rollout = Candidate { guard: GuardRails { min_calls: u64::MAX, ..GuardRails::default() }, ..candidate(1) };
        for _ in 0..GUARD_CALLS_MAX + 10 {
            guards.observe("t", &rollout, false, &finished(true));
        }
        assert_eq!(guards.stats("t").current_calls, GUARD_CALLS_MAX as u64);
    }
}
