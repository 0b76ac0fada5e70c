//! The error a tool returns: invalid input, failure, or denial, each with a message for people.

use crate::bindings::exports::guild::tool::tool as wit;
use std::fmt;

/// Why a tool run produced no output. The host maps each kind to its own exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolError {
    /// The input was well-formed JSON but not acceptable (exit code 2 from `guild run`).
    InvalidInput(String),
    /// The tool tried and failed (exit code 1).
    Failed(String),
    /// The tool was refused a file, host or secret it needed (exit code 4).
    Denied(String),
}

impl ToolError {
    /// The input is not acceptable.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::InvalidInput(message.into())
    }

    /// The tool failed.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    /// The tool was refused something.
    pub fn denied(message: impl Into<String>) -> Self {
        Self::Denied(message.into())
    }

    /// Classify an I/O error on `path`: permission problems are denials, the rest failures.
    pub fn io(path: impl fmt::Display, error: std::io::Error) -> Self {
        let message = format!("{path}: {error}");
        match error.kind() {
            std::io::ErrorKind::PermissionDenied => Self::Denied(message),
            _ => Self::Failed(message),
        }
    }

    pub(crate) fn into_wit(self) -> wit::ToolError {
        match self {
            Self::InvalidInput(m) => wit::ToolError::InvalidInput(m),
            Self::Failed(m) => wit::ToolError::Failed(m),
            Self::Denied(m) => wit::ToolError::Denied(m),
        }
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidInput(m) => write!(f, "invalid input: {m}"),
            Self::Failed(m) => write!(f, "failed: {m}"),
            Self::Denied(m) => write!(f, "denied: {m}"),
        }
    }
}

impl std::error::Error for ToolError {}
