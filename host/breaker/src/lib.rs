//! guild-breaker: the one circuit breaker Guild puts in front of things that fail — each egress
//! upstream, and Redis. After `failures_to_open` consecutive failures the breaker opens and
//! refuses at once for `open_for`; then it lets one call through to probe. The probe's outcome
//! closes the breaker or opens it again.
//!
//! Every admitted call holds an [`Attempt`]. An attempt that is dropped without saying how it
//! went (its future was cancelled by a disconnecting client, a run's timeout, or an early
//! return) counts as a failure if it was the probe, so a breaker can never be left half-open
//! waiting for a report that will not come; a dropped ordinary attempt counts as nothing.
//!
//! Hand-written: a breaker is a few lines of state, and this one's contract (cancellation-safe
//! probes, a bounded keyed table a guest cannot flush) is what Guild needs of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker (at least 1).
    pub failures_to_open: u32,
    /// How long an open breaker refuses before letting one probe through.
    pub open_for: Duration,
}

/// The breaker refused: how long until it lets a probe through, and why it opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// Time until the next probe is let through (zero while a probe is out).
    pub retry_after: Duration,
    /// Consecutive failures so far.
    pub failures: u32,
    /// The last failure's description.
    pub last_error: String,
}

impl Open {
    /// Whole seconds until a retry is worth it, at least 1 (for `Retry-After`).
    pub fn retry_after_s(&self) -> u64 {
        // Whole seconds rounded up: `as_secs` rounds down, so add one for any part second.
        let whole = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        whole.max(1)
    }
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
    last_error: String,
}

/// The breaker of one thing that fails (an upstream, Redis): closed, open, or half-open with
/// one probe out. Shared behind an `Arc` by every caller of that thing.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    state: Mutex<State>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Arc<Self> {
        let settings = BreakerSettings { failures_to_open: settings.failures_to_open.max(1), ..settings };
        Arc::new(Self { settings, state: Mutex::default() })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a call go through now? `Ok` holds the attempt, which must be told how the call went.
    ///
    /// # Errors
    /// [`Open`] while the breaker is open, or half-open with its probe still out.
    pub fn admit(self: &Arc<Self>) -> Result<Attempt, Open> {
        let mut state = self.lock();
        let Some(until) = state.open_until else {
            return Ok(Attempt { breaker: self.clone(), probe: false, settled: false });
        };
        let now = Instant::now();
        if now < until || state.probing {
            return Err(Open {
                retry_after: until.saturating_duration_since(now),
                failures: state.failures,
                last_error: state.last_error.clone(),
            });
        }
        state.probing = true;
        Ok(Attempt { breaker: self.clone(), probe: true, settled: false })
    }

    /// True while the breaker is open or half-open.
    pub fn is_open(&self) -> bool {
        self.lock().open_until.is_some()
    }

    fn succeeded(&self) {
        let mut state = self.lock();
        *state = State::default();
    }

    fn failed(&self, error: &str) {
        let mut state = self.lock();
        state.failures = state.failures.saturating_add(1);
        state.probing = false;
        state.last_error = error.to_string();
        if state.failures >= self.settings.failures_to_open {
            state.open_until = Some(Instant::now() + self.settings.open_for);
        }
    }
}

/// One admitted call. Say how it went with [`Attempt::succeeded`] or [`Attempt::failed`];
/// dropping it unsaid counts as a failure when it was the probe.
#[derive(Debug)]
#[must_use = "an attempt must be told how the call went"]
pub struct Attempt {
    breaker: Arc<Breaker>,
    probe: bool,
    settled: bool,
}

impl Attempt {
    /// The call worked: the breaker closes (its failure count starts over).
    pub fn succeeded(mut self) {
        self.settled = true;
        self.breaker.succeeded();
    }

    /// The call failed on the thing the breaker guards.
    pub fn failed(mut self, error: &str) {
        self.settled = true;
        self.breaker.failed(error);
    }

    /// Whether this attempt is the half-open breaker's one probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.breaker.failed("the probe was abandoned before it finished");
        }
    }
}

/// Breakers by key (an egress upstream), at most `keys_max` of them. Past that, a breaker that is
/// closed is forgotten to make room, never an open one: failing many distinct keys cannot
/// reset the breakers of the keys that are really down. When every tracked breaker is open, a
/// new key goes untracked (admitted, its failures not counted) until one closes.
#[derive(Debug)]
pub struct Breakers {
    settings: BreakerSettings,
    keys_max: usize,
    table: Mutex<HashMap<String, Arc<Breaker>>>,
}

impl Breakers {
    /// An empty table.
    pub fn new(settings: BreakerSettings, keys_max: usize) -> Self {
        Self { settings, keys_max: keys_max.max(1), table: Mutex::default() }
    }

    /// The breaker of `key`, created when missing (`None` when the table is full of open ones).
    pub fn breaker(&self, key: &str) -> Option<Arc<Breaker>> {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(breaker) = table.get(key) {
            return Some(breaker.clone());
        }
        if table.len() >= self.keys_max {
            let closed = table.iter().find(|(_, b)| !b.is_open()).map(|(k, _)| k.clone());
            table.remove(&closed?);
        }
        let breaker = Breaker::new(self.settings);
        table.insert(key.to_string(), breaker.clone());
        Some(breaker)
    }

    /// Admit a call to `key`.
    ///
    /// # Errors
    /// [`Open`] while that key's breaker refuses.
    pub fn admit(&self, key: &str) -> Result<Option<Attempt>, Open> {
        match self.breaker(key) {
            Some(breaker) => breaker.admit().map(Some),
            None => Ok(None),
        }
    }

    /// Every tracked key, with whether its breaker refuses calls now, sorted by key.
    pub fn states(&self) -> Vec<(String, bool)> {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let mut states: Vec<(String, bool)> = table.iter().map(|(k, b)| (k.clone(), b.is_open())).collect();
        states.sort();
        states
    }

    /// Breakers tracked now.
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when none is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(failures_to_open: u32, open_ms: u64) -> BreakerSettings {
        BreakerSettings { failures_to_open, open_for: Duration::from_millis(open_ms) }
    }

    #[test]
    fn opens_after_failures_probes_once_after_the_cool_down_and_closes_on_success() {
        let breaker = Breaker::new(settings(2, 50));
        breaker.admit().expect("closed").failed("refused");
        breaker.admit().expect("one failure is not enough").failed("refused");
        let open = breaker.admit().expect_err("open");
        assert_eq!((open.failures, open.last_error.as_str()), (2, "refused"));
        assert!(open.retry_after_s() >= 1);
        std::thread::sleep(Duration::from_millis(60));
        let probe = breaker.admit().expect("one probe after the cool-down");
        assert!(probe.is_probe());
        assert!(breaker.admit().is_err(), "only one probe at a time");
        probe.succeeded();
        assert!(!breaker.is_open());
        assert!(!breaker.admit().expect("closed again").is_probe());
    }

    #[test]
    fn a_dropped_probe_is_a_failure_and_the_breaker_probes_again_later() {
        let breaker = Breaker::new(settings(1, 30));
        breaker.admit().expect("closed").failed("down");
        std::thread::sleep(Duration::from_millis(40));
        let probe = breaker.admit().expect("probe");
        drop(probe); // its future was cancelled after admission
        let open = breaker.admit().expect_err("the abandoned probe reopened the breaker");
        assert!(open.last_error.contains("abandoned"), "{open:?}");
        std::thread::sleep(Duration::from_millis(40));
        breaker.admit().expect("a new probe is let through: the breaker is not stuck").succeeded();
        assert!(!breaker.is_open());
    }

    #[test]
    fn a_dropped_ordinary_attempt_counts_as_nothing() {
        let breaker = Breaker::new(settings(1, 30));
        drop(breaker.admit().expect("closed"));
        assert!(!breaker.is_open());
    }

    #[test]
    fn a_full_table_forgets_closed_breakers_never_open_ones() {
        let breakers = Breakers::new(settings(1, 60_000), 2);
        breakers.admit("down").expect("admitted").expect("tracked").failed("refused");
        for i in 0..100 {
            // A guest failing many distinct hosts.
            if let Some(attempt) = breakers.admit(&format!("h{i}")).expect("admitted") {
                attempt.succeeded();
            }
        }
        assert!(breakers.len() <= 2);
        assert!(breakers.admit("down").is_err(), "the open breaker survived the flood");
        breakers.admit("other").expect("admitted").expect("tracked").failed("refused");
        assert!(breakers.admit("third").expect("admitted while full of open breakers").is_none());
    }
}
