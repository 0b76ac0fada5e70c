//! The egress circuit breakers' settings: one breaker per upstream (`scheme://host:port`), shared
//! by every run of a runtime, so a dead upstream is refused at once instead of holding each run's
//! time and a connection attempt. The breaker itself is `guild-breaker`'s.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Consecutive failures (connection errors, timeouts, 5xx) that open the breaker.
    pub failures_to_open: u32,
    /// How long an open breaker refuses before letting one probe through.
    pub open_ms: u64,
    /// Upstreams tracked at once; past this a closed breaker is forgotten (never an open one).
    pub upstreams_max: usize,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self { failures_to_open: 5, open_ms: 30_000, upstreams_max: 10_000 }
    }
}

/// The table of one runtime's egress breakers.
pub(crate) fn breakers(settings: BreakerSettings) -> guild_breaker::Breakers {
    let breaker = guild_breaker::BreakerSettings {
        failures_to_open: settings.failures_to_open,
        open_for: Duration::from_millis(settings.open_ms),
    };
    guild_breaker::Breakers::new(breaker, settings.upstreams_max)
}
