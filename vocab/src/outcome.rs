//! How a run ended: its [`Outcome`] (with the label, status and message every surface prints),
//! the [`RunStatus`] the API and the queue show, and the [`Failure`] a failed run records — the
//! same JSON in an API body, a Redis result and a bundle, decoded here with errors that name the
//! field.

use crate::Limits;
use crate::limits::{LimitHit, human_ms};
use crate::policy::{EffectivePolicy, Grants};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The kind of error a tool returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolErrorKind {
    /// The input was malformed or did not match the tool's schema (exit code 2 from `guild run`).
    InvalidInput,
    /// The tool tried and failed (exit code 1 from `guild run`).
    Failed,
    /// The tool was refused a file, host or secret it needed (exit code 4).
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
        /// The JSON text. Empty in a bundle's `result.json`, which keeps the output as a blob of
        /// its own (see [`Outcome::without_output`]); never empty otherwise.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        output: String,
    },
    /// `run` returned an error.
    ToolError {
        /// Invalid input, failed or denied: which `tool-error` case the tool returned.
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

    /// The run's status as the API and the queue write it: succeeded when the tool returned
    /// output, else failed.
    pub fn run_status(&self) -> RunStatus {
        match self {
            Self::Output { .. } => RunStatus::Succeeded,
            _ => RunStatus::Failed,
        }
    }

    /// The exit code `guild run` ends with: 0 output; 1 the tool failed (its error, a trap, a
    /// cancellation); 2 the tool refused its input; 3 a limit stopped it; 4 it was denied
    /// something.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Output { .. } => 0,
            Self::ToolError { kind: ToolErrorKind::InvalidInput, .. } => 2,
            Self::ToolError { kind: ToolErrorKind::Denied, .. } => 4,
            Self::ToolError { kind: ToolErrorKind::Failed, .. } | Self::Trap { .. } | Self::Cancelled { .. } => 1,
            Self::Limit(_) => 3,
        }
    }

    /// The outcome as a bundle's `result.json` records it: an output only as its label (the
    /// output itself is a blob beside it).
    pub fn without_output(&self) -> Self {
        match self {
            Self::Output { .. } => Self::Output { output: String::new() },
            other => other.clone(),
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
            Self::Cancelled { after_ms } => format!("cancelled by the client after {}", human_ms(*after_ms)),
        }
    }

    /// The outcome as a failed run's `error` records it (its fields and its
    /// [`Outcome::message`]), or `None` for output.
    pub fn failure(&self) -> Option<Failure> {
        let code = match self {
            Self::Output { .. } => return None,
            Self::ToolError { .. } => FailureCode::ToolError,
            Self::Limit(_) => FailureCode::Limit,
            Self::Trap { .. } => FailureCode::Trap,
            Self::Cancelled { .. } => FailureCode::Cancelled,
        };
        Some(Failure { code, message: self.message(), outcome: Some(self.clone()) })
    }
}

/// Where a run stands once it ended, as `GET /v1/runs/{id}`, the queue and MCP show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The tool returned output.
    Succeeded,
    /// It ended any other way: a tool error, a limit, a trap, a cancellation, a refusal or a
    /// host failure (see its [`Failure`]).
    Failed,
    /// A job that failed in a way worth retrying on every attempt it was allowed: it is in the
    /// dead-letter stream.
    Dead,
}

impl RunStatus {
    /// `succeeded`, `failed` or `dead`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Dead => "dead",
        }
    }
}

impl RunStatus {
    /// A finished run's label in metrics and the audit log, from its status and failure:
    /// `output`, `dead`, or the failure's code (`tool_error`, `limit`, `denied`, …) — for a run
    /// that ended in an outcome, that outcome's [`Outcome::label`].
    pub fn label(self, failure: Option<&Failure>) -> &'static str {
        match (self, failure) {
            (Self::Succeeded, _) => "output",
            (Self::Dead, _) => "dead",
            (Self::Failed, Some(failure)) => failure.code.as_str(),
            (Self::Failed, None) => "failed",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one attempt at a queued job ended, as the done stream and the audit log say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptEnd {
    /// This attempt's result is the job's.
    Completed,
    /// Another attempt finished first (at-least-once): this one is kept, not used.
    Duplicate,
    /// It failed in a way worth retrying; another attempt follows.
    Retried,
    /// It was the last attempt and failed: the job is in the dead-letter stream.
    Dead,
    /// Not run: answered from the result cache with an earlier run's output and bundle.
    CacheHit,
    /// Not run: answered by an identical call that was in flight at the same moment.
    CacheMerged,
}

impl AttemptEnd {
    /// `completed`, `duplicate`, `retried`, `dead`, `cache_hit` or `cache_merged`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Duplicate => "duplicate",
            Self::Retried => "retried",
            Self::Dead => "dead",
            Self::CacheHit => "cache_hit",
            Self::CacheMerged => "cache_merged",
        }
    }

    /// The ending named `text`, if there is one.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Completed, Self::Duplicate, Self::Retried, Self::Dead, Self::CacheHit, Self::CacheMerged]
            .into_iter()
            .find(|end| end.as_str() == text)
    }

    /// Whether the job ends with this attempt (its result is the job's, or it is dead, or it
    /// was answered from an earlier or concurrent run).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Dead | Self::CacheHit | Self::CacheMerged)
    }

    /// Whether the call was answered with another run's result (its bundle is that run's).
    pub fn is_reuse(self) -> bool {
        matches!(self, Self::CacheHit | Self::CacheMerged)
    }
}

/// Why a run failed, as its `error.status` says: an [`Outcome`]'s label when the run ended in
/// one, else the host's code for a run that never did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// The tool returned an error ([`Outcome::ToolError`]).
    ToolError,
    /// A limit stopped it ([`Outcome::Limit`]).
    Limit,
    /// The guest trapped ([`Outcome::Trap`]).
    Trap,
    /// The caller cancelled it ([`Outcome::Cancelled`]).
    Cancelled,
    /// The grants are not acceptable for the tool: it never started.
    Denied,
    /// The limits exceed what the engine was built for: it never started.
    BadLimits,
    /// Every run slot was taken.
    Busy,
    /// The host failed, not the tool (a store, a component that could not be loaded, a
    /// shutdown).
    HostFailure,
    /// The job on the queue could not be read by the worker that took it.
    BadJob,
    /// The tool failed after an upstream it called failed (5xx, timeout, unreachable): worth
    /// running again.
    UpstreamFailure,
    /// The job left Redis before any node read its result.
    Expired,
    /// Every worker that took the job stopped before finishing it.
    WorkerLost,
    /// The job finished, but the node asked cannot read its result (a node of another version
    /// wrote it). Only ever said by that node, never stored.
    UnreadableResult,
    /// A finished job's entry in Redis could not be read (it was moved to the dead-letter
    /// stream with what it held).
    CorruptDoneEntry,
    /// The operator switched the tool off (for the job's tenant, or everyone) after the job was
    /// queued: the worker did not run it.
    ToolDisabled,
}

impl FailureCode {
    /// Its name as the API, MCP, metrics and the audit log write it (`tool_error`, `denied`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ToolError => "tool_error",
            Self::Limit => "limit",
            Self::Trap => "trap",
            Self::Cancelled => "cancelled",
            Self::Denied => "denied",
            Self::BadLimits => "bad_limits",
            Self::Busy => "busy",
            Self::HostFailure => "host_failure",
            Self::BadJob => "bad_job",
            Self::UpstreamFailure => "upstream_failure",
            Self::Expired => "expired",
            Self::WorkerLost => "worker_lost",
            Self::UnreadableResult => "unreadable_result",
            Self::CorruptDoneEntry => "corrupt_done_entry",
            Self::ToolDisabled => "tool_disabled",
        }
    }

    /// Every code, in declaration order.
    pub const ALL: [Self; 15] = [
        Self::ToolError,
        Self::Limit,
        Self::Trap,
        Self::Cancelled,
        Self::Denied,
        Self::BadLimits,
        Self::Busy,
        Self::HostFailure,
        Self::BadJob,
        Self::UpstreamFailure,
        Self::Expired,
        Self::CorruptDoneEntry,
        Self::WorkerLost,
        Self::UnreadableResult,
        Self::ToolDisabled,
    ];

    /// The code named `text`, if there is one.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.as_str() == text)
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed run's `error`: `{"status": code, "message": …}` plus, when the run ended in an
/// [`Outcome`], that outcome's own fields (`kind`, `limit`, `used_units`, …). One shape in the
/// API's bodies, MCP's `guild/error`, Redis results and the dead-letter stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub struct Failure {
    /// Why, in one word.
    pub code: FailureCode,
    /// What went wrong, for a person (the same wording as [`Outcome::message`]).
    pub message: String,
    /// The outcome, when the run ended in one and its fields are known (a run restored from
    /// the audit log knows only its label).
    pub outcome: Option<Outcome>,
}

impl Failure {
    /// A run that never ended in an outcome: refused, or failed by the host.
    pub fn host(code: FailureCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), outcome: None }
    }
}

impl From<Failure> for serde_json::Value {
    fn from(failure: Failure) -> Self {
        // The outcome's fields go with it only when it is the outcome the code names: whatever a
        // caller put together, what is written reads back.
        let outcome = failure.outcome.as_ref().filter(|o| o.label() == failure.code.as_str());
        let mut object = match outcome.map(serde_json::to_value) {
            Some(Ok(serde_json::Value::Object(fields))) => fields,
            _ => serde_json::Map::new(),
        };
        object.insert("status".into(), failure.code.as_str().into());
        object.insert("message".into(), failure.message.into());
        serde_json::Value::Object(object)
    }
}

impl TryFrom<serde_json::Value> for Failure {
    type Error = String;

    fn try_from(value: serde_json::Value) -> Result<Self, String> {
        let serde_json::Value::Object(mut fields) = value else {
            return Err("error: expected an object with `status` and `message`".into());
        };
        let code: FailureCode = match fields.get("status") {
            Some(status) => serde_json::from_value(status.clone()).map_err(|e| format!("error.status: {e}"))?,
            None => return Err("error.status: missing".into()),
        };
        let message = match fields.get("message") {
            Some(serde_json::Value::String(text)) => text.clone(),
            Some(_) => return Err("error.message: expected a string".into()),
            None => String::new(),
        };
        let ended =
            matches!(code, FailureCode::ToolError | FailureCode::Limit | FailureCode::Trap | FailureCode::Cancelled);
        if !ended {
            return Ok(Self { code, message, outcome: None });
        }
        // The record's `message` is `Outcome::message`: a tool's or a trap's own words carry a
        // prefix there, taken off again to rebuild the outcome.
        let prefix = match code {
            FailureCode::ToolError => {
                fields.get("kind").and_then(|k| k.as_str()).map(|k| format!("tool error ({k}): "))
            }
            FailureCode::Trap => Some("trap: ".to_string()),
            _ => None,
        };
        let own = prefix.as_deref().and_then(|p| message.strip_prefix(p)).unwrap_or(&message).to_string();
        fields.insert("message".into(), serde_json::Value::String(own));
        // Fields beyond `status` and `message` must make an outcome; without them only the label
        // is known (a run restored from the audit log), and so it is when the message does not
        // read as that outcome's.
        let detailed = fields.keys().any(|key| key != "status" && key != "message");
        let outcome = match serde_json::from_value::<Outcome>(serde_json::Value::Object(fields)) {
            Ok(outcome) if outcome.message() == message => Some(outcome),
            Ok(_) => None,
            Err(e) if detailed => return Err(format!("error ({}): {e}", code.as_str())),
            Err(_) => None,
        };
        Ok(Self { code, message, outcome })
    }
}

/// What a run was allowed, as the queue's results and the audit trail record it: the effective
/// policy once the runtime resolved it (else the grants it was given), and its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRecord {
    /// Granted ∩ asked for, once resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<EffectivePolicy>,
    /// What the run was given, when it never got as far as resolving a policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<Grants>,
    /// The limits the run had (fuel, memory, time, output, ...), whether or not it started.
    pub limits: Limits,
}

impl PolicyRecord {
    /// The record of a run that resolved `policy`.
    pub fn resolved(policy: EffectivePolicy, limits: Limits) -> Self {
        Self { policy: Some(policy), grants: None, limits }
    }

    /// The record of a run given `grants` that never resolved them.
    pub fn granted(grants: Grants, limits: Limits) -> Self {
        Self { policy: None, grants: Some(grants), limits }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_keeps_its_json_shape_both_ways() {
        let outcome = Outcome::Limit(LimitHit::Fuel { used_units: 5, limit_units: 5 });
        let failure = outcome.failure().expect("a limit is a failure");
        let value = serde_json::to_value(&failure).expect("serializes");
        assert_eq!(value["status"], "limit");
        assert_eq!(value["limit"], "fuel");
        assert_eq!(value["used_units"], 5);
        assert_eq!(value["message"], outcome.message());
        assert_eq!(serde_json::from_value::<Failure>(value).expect("decodes"), failure);

        let tool = Outcome::ToolError { kind: ToolErrorKind::InvalidInput, message: "no".into() };
        let value = serde_json::to_value(tool.failure().expect("failure")).expect("serializes");
        assert_eq!(value["kind"], "invalid_input");
        assert_eq!(value["message"], "tool error (invalid_input): no");
        let again: Failure = serde_json::from_value(value.clone()).expect("decodes");
        assert_eq!(again.outcome, Some(tool.clone()), "the tool's own words, without the prefix");
        assert_eq!(serde_json::to_value(again).expect("serializes"), value, "stable through a round trip");

        let trap = Outcome::Trap { message: "unreachable".into() };
        let value = serde_json::to_value(trap.failure().expect("failure")).expect("serializes");
        let again: Failure = serde_json::from_value(value).expect("decodes");
        assert_eq!(again.outcome, Some(trap), "a trap is rebuilt from its message");
        let restored: Failure =
            serde_json::from_value(serde_json::json!({ "status": "trap", "message": "" })).expect("decodes");
        assert_eq!((restored.code, restored.outcome), (FailureCode::Trap, None), "only the label known");

        let host = Failure::host(FailureCode::Denied, "capability denied: x");
        let value = serde_json::to_value(&host).expect("serializes");
        assert_eq!(value, serde_json::json!({ "status": "denied", "message": "capability denied: x" }));
        assert_eq!(serde_json::from_value::<Failure>(value).expect("decodes"), host);
        assert!(Outcome::Output { output: "{}".into() }.failure().is_none());
    }

    #[test]
    fn a_mismatched_failure_names_the_field() {
        let err = serde_json::from_value::<Failure>(serde_json::json!({ "status": "exploded", "message": "" }))
            .expect_err("an unknown code");
        assert!(err.to_string().contains("error.status"), "{err}");
        let err = serde_json::from_value::<Failure>(serde_json::json!({ "status": "limit", "limit": "warp" }))
            .expect_err("an unknown limit");
        assert!(err.to_string().contains("error (limit)"), "{err}");
        let err = serde_json::from_value::<PolicyRecord>(serde_json::json!({ "limits": { "fuel": 1 } }))
            .expect_err("a limit this node does not know");
        assert!(err.to_string().contains("fuel"), "{err}");
    }

    #[test]
    fn a_finished_runs_label_is_its_outcomes() {
        let outcomes = [
            Outcome::Output { output: "{}".into() },
            Outcome::ToolError { kind: ToolErrorKind::Denied, message: "no".into() },
            Outcome::Limit(LimitHit::Memory { limit_bytes: 1 }),
            Outcome::Trap { message: "x".into() },
            Outcome::Cancelled { after_ms: 3 },
        ];
        for outcome in outcomes {
            let failure = outcome.failure();
            assert_eq!(outcome.run_status().label(failure.as_ref()), outcome.label(), "{outcome:?}");
        }
        assert_eq!(RunStatus::Dead.label(None), "dead");
        assert_eq!(RunStatus::Failed.label(Some(&Failure::host(FailureCode::Denied, "x"))), "denied");
    }

    #[test]
    fn a_policy_record_is_either_resolved_or_granted() {
        let granted = PolicyRecord::granted(Grants::default(), Limits::default());
        let value = serde_json::to_value(&granted).expect("serializes");
        assert!(value.get("policy").is_none() && value.get("grants").is_some());
        assert_eq!(serde_json::from_value::<PolicyRecord>(value).expect("decodes"), granted);
        assert_eq!(RunStatus::Dead.to_string(), "dead");
        assert_eq!(FailureCode::parse("host_failure"), Some(FailureCode::HostFailure));
        for code in FailureCode::ALL {
            let json = serde_json::to_value(code).expect("serializes");
            assert_eq!(json, code.as_str(), "serde and as_str agree");
            assert_eq!(FailureCode::parse(code.as_str()), Some(code));
        }
    }
}

#[cfg(test)]
mod round_trips {
    use super::*;

    /// A tool error's or a trap's failure does not come back as the outcome it was made from:
    /// the decoded outcome's `message` is the failure's (already prefixed) wording, so its
    /// `message()` prefixes twice; a trap's outcome is dropped (only `status` and `message`).
    #[test]
    fn a_failure_decodes_to_the_outcome_it_was_made_from() {
        let tool = Outcome::ToolError { kind: ToolErrorKind::Failed, message: "no".into() };
        let failure = tool.failure().expect("failure");
        let back: Failure = serde_json::from_value(serde_json::to_value(&failure).expect("ser")).expect("de");
        assert_eq!(back.outcome.as_ref().map(Outcome::message), Some(tool.message()), "{back:?}");

        let trap = Outcome::Trap { message: "unreachable".into() };
        let failure = trap.failure().expect("failure");
        let back: Failure = serde_json::from_value(serde_json::to_value(&failure).expect("ser")).expect("de");
        assert_eq!(back.outcome, Some(trap), "a trap keeps its outcome");
    }

    /// Failure's fields are public, so a value this version builds can serialize to JSON this
    /// version refuses (`status` is the failure's code, the rest the outcome's fields).
    #[test]
    fn every_failure_this_version_writes_it_can_read() {
        let failure = Failure {
            code: FailureCode::ToolError,
            message: "x".into(),
            outcome: Some(Outcome::Cancelled { after_ms: 1 }),
        };
        let value = serde_json::to_value(&failure).expect("ser");
        serde_json::from_value::<Failure>(value.clone()).unwrap_or_else(|e| panic!("{value} does not read back: {e}"));
    }
}
