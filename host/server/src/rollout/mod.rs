//! Changing a tool safely: revisions, the replay gate, the canary ramp, shadow runs, automatic
//! and manual rollback, and flags. Here: the state the daemon keeps for them, who asks for a
//! change, why one fails; where records live (`records.rs`: a file, or Redis for a fleet), the
//! gate's report and the shadow lane (`gate.rs`), the guard rails (`guard.rs`). The operations
//! themselves are the daemon's (`daemon/rollout.rs`): every change one read–change–write of the
//! tool's record, audited, and other nodes following Redis's generation counter.

pub mod gate;
pub mod guard;
pub mod records;

use guild_vocab::{RolloutError, ToolRecord};
use std::time::Duration;

/// How often a node of a fleet polls Redis for changed tool records.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

/// Writes of one record tried before a change is given up as contended.
pub(crate) const CHANGE_ATTEMPTS_MAX: usize = 8;

/// Why a change to a tool was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// No tool has the name.
    #[error("no tool is named {0:?}")]
    Unknown(String),
    /// The record refuses the change.
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    /// The record could not be read or written, or a revision loaded.
    #[error("{0}")]
    Store(String),
    /// Other nodes kept changing the record.
    #[error("tool {0:?} is being changed by other nodes; try again")]
    Contended(String),
    /// The gate refused the candidate.
    #[error("{0}")]
    Gate(String),
    /// The change was made (and is in force) but its audit record could not be written.
    #[error("the change was made but its audit record could not be written: {0}")]
    NotAudited(String),
}

impl ChangeError {
    /// The stable error code the API answers with.
    pub fn code(&self) -> &'static str {
        match self {
            ChangeError::Unknown(_) => "unknown_tool",
            ChangeError::Rollout(e) => e.code(),
            ChangeError::Store(_) | ChangeError::NotAudited(_) => "host_failure",
            ChangeError::Contended(_) => "conflict",
            ChangeError::Gate(_) => "gate_failed",
        }
    }
}

/// Who asks for a change, and why: both go into the audit record.
pub struct Actor<'a> {
    /// The admin tenant, or `guard` / `config` for the host itself.
    pub name: &'a str,
    /// What they said.
    pub reason: &'a str,
}

/// One line for the audit record: the state a change left.
pub(crate) fn describe_change(record: &ToolRecord) -> String {
    let mut text = format!("current revision {}", record.current);
    if let Some(c) = &record.candidate {
        text.push_str(&format!(
            ", candidate revision {} at {}% (shadow {}%)",
            c.revision,
            f64::from(c.ramp_bp) / 100.0,
            f64::from(c.shadow_bp) / 100.0
        ));
        if !c.tenants.is_empty() {
            text.push_str(&format!(" for {} named tenants", c.tenants.len()));
        }
        if c.forced {
            text.push_str(", started with force over its gate");
        }
    }
    if let Some(d) = &record.flags.disabled {
        text.push_str(&format!(", disabled: {}", d.reason));
    }
    if !record.flags.tenants.is_empty() {
        text.push_str(&format!(", disabled for {} tenants", record.flags.tenants.len()));
    }
    text
}

/// The state the daemon keeps for rollouts.
pub struct RolloutState {
    /// Where records are kept.
    pub records: records::RecordStore,
    /// Where revisions' components are kept.
    pub components: records::Components,
    /// One change at a time on this node.
    pub changing: tokio::sync::Mutex<()>,
    /// Ramping candidates' guard rails.
    pub guards: guard::Guards,
    /// Shadow runs' lane and newest verdicts.
    pub shadows: gate::Shadows,
    /// The `[rollout]` config: the gate's policy and bounds (replaced by a config reload).
    pub config: std::sync::RwLock<crate::config::RolloutConfig>,
}

impl RolloutState {
    /// The `[rollout]` config in force now.
    pub fn config(&self) -> crate::config::RolloutConfig {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
