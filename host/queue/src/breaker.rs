//! A circuit breaker in front of Redis for callers that must answer fast: after a failure,
//! calls fail at once for `open_ms` instead of each waiting out a connection timeout; then one
//! call is let through to probe, and a success closes the circuit again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The breaker.
#[derive(Debug)]
pub struct Breaker {
    open_for: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Calls fail at once until then.
    open_until: Option<Instant>,
    /// A probe is out (half-open): others still fail fast.
    probing: bool,
    last_error: String,
}

/// The circuit is open: how long until the next probe, and the failure that opened it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// Seconds until a call is tried again (at least 1).
    pub retry_after_s: u64,
    /// What failed.
    pub error: String,
}

impl Breaker {
    /// A closed breaker that opens for `open_for` after a failure.
    pub fn new(open_for: Duration) -> Self {
        Self { open_for, state: Mutex::new(State { open_until: None, probing: false, last_error: String::new() }) }
    }

    /// May a call go through now?
    pub fn admit(&self) -> Result<(), Open> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(until) = state.open_until else { return Ok(()) };
        let now = Instant::now();
        if now < until || state.probing {
            let left = until.saturating_duration_since(now);
            return Err(Open { retry_after_s: left.as_secs().max(1), error: state.last_error.clone() });
        }
        state.probing = true;
        Ok(())
    }

    /// The call worked: close the circuit.
    pub fn succeeded(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.open_until = None;
        state.probing = false;
    }

    /// The call failed on the connection: open the circuit.
    pub fn failed(&self, error: &str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.open_until = Some(Instant::now() + self.open_for);
        state.probing = false;
        state.last_error = error.to_string();
    }

    /// True while calls fail fast.
    pub fn is_open(&self) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).open_until.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_on_failure_fails_fast_then_probes_once() {
        let breaker = Breaker::new(Duration::from_millis(50));
        assert!(breaker.admit().is_ok());
        breaker.failed("connection refused");
        let open = breaker.admit().expect_err("open");
        assert_eq!(open.error, "connection refused");
        assert!(open.retry_after_s >= 1);
        std::thread::sleep(Duration::from_millis(60));
        assert!(breaker.admit().is_ok(), "one probe");
        assert!(breaker.admit().is_err(), "others wait for the probe");
        breaker.succeeded();
        assert!(breaker.admit().is_ok());
        assert!(!breaker.is_open());
    }
}
