//! A circuit breaker per upstream (`scheme://host:port`), shared by every run of a runtime: after
//! repeated failures a dead upstream is refused at once instead of holding a run's time and a
//! connection attempt; after a cool-down one request is let through to probe it.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Consecutive failures (connection errors, timeouts, 5xx) that open the breaker.
    pub failures_to_open: u32,
    /// How long an open breaker refuses before letting one probe through.
    pub open_ms: u64,
    /// Upstreams tracked at once; past this the least recently failing are forgotten.
    pub upstreams_max: usize,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self { failures_to_open: 5, open_ms: 30_000, upstreams_max: 10_000 }
    }
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    opened_at: Option<Instant>,
    probing: bool,
}

/// All breakers of a runtime.
#[derive(Debug, Default)]
pub(crate) struct Breakers {
    settings: BreakerSettings,
    upstreams: Mutex<HashMap<String, State>>,
}

impl Breakers {
    pub(crate) fn new(settings: BreakerSettings) -> Self {
        Self { settings, upstreams: Mutex::default() }
    }

    /// `Err(reason)` while `upstream`'s breaker is open.
    pub(crate) fn admit(&self, upstream: &str) -> Result<(), String> {
        let mut upstreams = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        let Some(state) = upstreams.get_mut(upstream) else { return Ok(()) };
        let Some(opened_at) = state.opened_at else { return Ok(()) };
        let open_for = Duration::from_millis(self.settings.open_ms);
        let waited = opened_at.elapsed();
        if waited >= open_for && !state.probing {
            state.probing = true;
            return Ok(());
        }
        let left = open_for.saturating_sub(waited);
        Err(format!(
            "egress refused: circuit open for {upstream} after {} consecutive failures; next try in {:.1}s",
            state.failures,
            left.as_secs_f64()
        ))
    }

    /// Record how a request to `upstream` went.
    pub(crate) fn record(&self, upstream: &str, ok: bool) {
        let mut upstreams = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            upstreams.remove(upstream);
            return;
        }
        if upstreams.len() >= self.settings.upstreams_max && !upstreams.contains_key(upstream) {
            upstreams.clear();
        }
        let state = upstreams.entry(upstream.to_string()).or_default();
        state.failures = state.failures.saturating_add(1);
        state.probing = false;
        if state.failures >= self.settings.failures_to_open {
            state.opened_at = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_probes_after_the_cool_down_and_closes_on_success() {
        let breakers = Breakers::new(BreakerSettings { failures_to_open: 2, open_ms: 50, upstreams_max: 10 });
        let up = "http://10.0.0.1:80";
        breakers.record(up, false);
        assert!(breakers.admit(up).is_ok());
        breakers.record(up, false);
        let refused = breakers.admit(up).expect_err("open");
        assert!(refused.contains("circuit open") && refused.contains("2 consecutive failures"), "{refused}");
        std::thread::sleep(Duration::from_millis(60));
        assert!(breakers.admit(up).is_ok(), "one probe after the cool-down");
        assert!(breakers.admit(up).is_err(), "only one probe at a time");
        breakers.record(up, true);
        assert!(breakers.admit(up).is_ok(), "closed again");
    }
}
