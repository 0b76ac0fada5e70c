//! Outgoing HTTP under the host's rules: which requests a run may make ([`rules`]), the
//! `wasi:http` hook that enforces and records them (`hook`), and the connection to a checked
//! address (`connect`).

pub mod breaker;
pub(crate) mod connect;
pub(crate) mod hook;
pub mod rules;
pub mod secrets;

pub use breaker::BreakerSettings;
pub use rules::{Destination, EgressRule, RuleError, blocked_reason};
pub use secrets::{Secret, SecretGrant, SecretSource};
