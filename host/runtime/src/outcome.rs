//! How a run ended and what it reports: the types every caller of [`crate::Runtime`] reads.

use crate::logs::LogLine;
use crate::policy::EffectivePolicy;
use crate::{LimitHit, Limits};
use guild_replay::Digest;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The kind of error a tool returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolErrorKind {
    /// Bad input.
    InvalidInput,
    /// The tool failed.
    Failed,
    /// The tool was refused something.
    Denied,
}

impl ToolErrorKind {
    /// Its name as the API, MCP and bundles write it: `invalid_input`, `failed`, `denied`.
    pub fn label(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid_input",
            Self::Failed => "failed",
            Self::Denied => "denied",
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// `run` returned JSON.
    Output {
        /// The JSON text.
        output: String,
    },
    /// `run` returned an error.
    ToolError {
        /// Which kind.
        kind: ToolErrorKind,
        /// The tool's message.
        message: String,
    },
    /// A limit stopped the run.
    Limit(LimitHit),
    /// The guest trapped (a panic, an `unreachable`, an out-of-bounds access, an exit).
    Trap {
        /// What happened, with the tail of the guest's stderr.
        message: String,
    },
    /// Whoever asked for the run cancelled it before it ended.
    Cancelled {
        /// Wall time from the call to the cancellation (a replay stops at the same point).
        after_ms: u64,
    },
}

impl Outcome {
    /// The outcome's label in metrics and the audit log: `output`, `tool_error`, `limit`, `trap`,
    /// `cancelled` (its `status` tag).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Output { .. } => "output",
            Self::ToolError { .. } => "tool_error",
            Self::Limit(_) => "limit",
            Self::Trap { .. } => "trap",
            Self::Cancelled { .. } => "cancelled",
        }
    }

    /// The run's status as the API and the queue write it: `succeeded` when the tool returned
    /// output, else `failed`.
    pub fn run_status(&self) -> &'static str {
        match self {
            Self::Output { .. } => "succeeded",
            _ => "failed",
        }
    }

    /// The tool's output text, when it returned one.
    pub fn into_output(self) -> Option<String> {
        match self {
            Self::Output { output } => Some(output),
            _ => None,
        }
    }

    /// What went wrong, for a person (empty for output): the one wording the CLI, the API, MCP
    /// and workers print.
    pub fn message(&self) -> String {
        match self {
            Self::Output { .. } => String::new(),
            Self::ToolError { kind, message } => format!("tool error ({}): {message}", kind.label()),
            Self::Limit(hit) => hit.to_string(),
            Self::Trap { message } => format!("trap: {message}"),
            Self::Cancelled { after_ms } => format!("cancelled by the client after {}", crate::human_ms(*after_ms)),
        }
    }

    /// The outcome as a failed run's `error` records it — its fields and its [`Outcome::message`]
    /// — or `None` for output.
    pub fn error_record(&self) -> Option<serde_json::Value> {
        if matches!(self, Self::Output { .. }) {
            return None;
        }
        let mut error = serde_json::to_value(self).expect("an outcome is plain data");
        if let Some(object) = error.as_object_mut() {
            object.insert("message".into(), self.message().into());
        }
        Some(error)
    }
}

/// What one run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Tool name from `describe`.
    pub tool: String,
    /// Tool version.
    pub tool_version: String,
    /// The component's digest.
    pub component: Digest,
    /// How it ended.
    pub outcome: Outcome,
    /// Fuel burnt.
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
