//! What a run reports to whoever called [`crate::Runtime`]: its [`Outcome`] (the vocabulary
//! type, from `guild-vocab`) with the figures, logs, policy and bundle around it.

use crate::logs::LogLine;
use guild_replay::Digest;
use guild_vocab::{EffectivePolicy, Limits, Outcome};
use serde::Serialize;
use std::time::Duration;

/// What one run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Tool name from `describe`.
    pub tool: String,
    /// Tool version from `describe`.
    pub tool_version: String,
    /// The component's digest.
    pub component: Digest,
    /// How it ended.
    pub outcome: Outcome,
    /// Fuel units burnt, wherever the guest stopped (a timed-out run's count may lag by up to
    /// [`FUEL_YIELD_INTERVAL_UNITS`](crate::FUEL_YIELD_INTERVAL_UNITS)).
    pub fuel_used_units: u64,
    /// Peak linear memory.
    pub memory_bytes_peak: u64,
    /// Wall time of instantiate + call.
    pub wall_time: Duration,
    /// Everything the tool logged or printed.
    pub logs: Vec<LogLine>,
    /// The policy the run had.
    pub policy: EffectivePolicy,
    /// The limits the run had.
    pub limits: Limits,
    /// The id of the run's bundle, when the runtime records.
    pub bundle: Option<Digest>,
    /// The reasons of the first outgoing requests refused or failed, for the operator (at most
    /// 16; `egress_refusals` counts them all).
    pub egress_denials: Vec<String>,
    /// Outgoing requests refused or failed.
    pub egress_refusals: u32,
    /// Outgoing requests the guest attempted (sent, refused or failed).
    pub egress_requests: u32,
    /// Of those sent, how many found the upstream failing (5xx, timeout, unreachable): a
    /// tool that failed after one may succeed if run again.
    pub egress_upstream_failures: u32,
    /// Bytes the run's bundle holds (its blobs, manifest and signature), 0 when not recorded.
    pub bundle_bytes: u64,
    /// What the bundle records of the run's priced quantities (fuel, wall time, memory, HTTP
    /// exchanges, bytes stored); `None` when not recorded.
    pub quantities: Option<guild_replay::cost::Quantities>,
    /// Each recorded HTTP exchange: the request's URL as the guest wrote it and the response
    /// body's blob in the bundle's store (for token counts); at most `http_requests_max`.
    pub http_exchanges: Vec<guild_replay::cost::Exchange>,
    /// What it cost under the run's price table ([`crate::RunFor::pricing`]), as its bundle's
    /// exec record says; `None` without a table or a recording.
    pub cost: Option<guild_replay::cost::Cost>,
    /// The tokens each LLM upstream of the run's price table (by its URL prefix) was used for,
    /// read from the recorded responses.
    pub tokens: Vec<(String, guild_replay::cost::TokenCount)>,
    /// When an egress limit or an upstream's `Retry-After` refused one of its requests: the
    /// longest it asked to wait, ms (a worker delays the job's retry by it).
    pub egress_throttled_ms: Option<u64>,
    /// Requests an egress limit or an upstream's throttle refused.
    pub egress_limited: u32,
    /// For a run made in [`RunMode::Hermetic`](crate::RunMode): its action digest and whether its
    /// result may stand for it. `None` for a live run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hermetic: Option<crate::Hermetic>,
}

impl RunReport {
    /// Tell the operator why the run's outgoing requests were refused (the tool only learns that
    /// they were): the reasons name the operator's rules, which are not the caller's to see.
    pub fn log_egress_refusals(&self) {
        for reason in &self.egress_denials {
            tracing::info!(reason = %reason, "egress refused");
        }
        let unlisted =
            self.egress_refusals.saturating_sub(u32::try_from(self.egress_denials.len()).unwrap_or(u32::MAX));
        if unlisted > 0 {
            tracing::info!(more = unlisted, "egress refused more requests than are listed");
        }
    }
}
