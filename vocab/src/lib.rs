//! Guild's vocabulary: what a run is allowed and what became of it, as types every part of the
//! host shares — the runtime that enforces them, the queue that carries them between machines,
//! the bundle and the audit trail that record them, and the API, MCP and CLI that show them.
//!
//! - [`Grants`] (mounts, [`egress`] rules, secret grants) and the [`EffectivePolicy`] a run gets
//!   from them and what its tool asks for ([`ToolInfo`]'s [`Capabilities`]);
//! - [`Limits`], and the [`LimitHit`] that names the flag raising one;
//! - [`Outcome`] (with its label, status and message as methods), [`RunStatus`], and the
//!   [`Failure`] a failed run records, with its [`FailureCode`];
//! - [`PolicyRecord`]: what a run was allowed, as the queue and the audit trail keep it.
//!
//! JSON is only at the edges: these types serialize to the shapes the API, Redis values, bundles
//! and the audit log hold, and a value from a node of another version that does not fit is a
//! decode error that names the field. Nothing here depends on wasmtime.

pub mod egress;
mod engine;
mod info;
pub mod limits;
mod outcome;
mod policy;
pub mod rollout;

pub use egress::{EgressRule, RuleError, Secret, SecretGrant, SecretSource};
pub use engine::{Determinism, EngineFingerprint};
pub use info::{Access, Capabilities, DirRequest, ToolInfo};
pub use limits::{LimitHit, Limits, human_bytes, human_ms};
pub use outcome::{AttemptEnd, Failure, FailureCode, Outcome, PolicyRecord, RunStatus, ToolErrorKind};
pub use policy::{EffectivePolicy, Grants, Mount, PolicyError};
pub use rollout::{Candidate, Disabled, Flags, GuardRails, Revision, RolloutError, Route, ToolRecord, check_tool_name};
