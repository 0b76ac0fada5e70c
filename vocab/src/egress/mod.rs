//! What outgoing HTTP a run may make, with no I/O: the operator's [`rules`] (matched on the path
//! the upstream will act on: [`path`]) and the [`secrets`] a request may carry to where their
//! grants allow. The runtime's `wasi:http` hook enforces them.

pub mod gate;
pub mod path;
pub mod rules;
pub mod secrets;

pub use gate::{EgressGate, GateFuture, GatePass, GateRefusal};
pub use rules::{Destination, EgressRule, RuleError, blocked_reason};
pub use secrets::{Secret, SecretGrant, SecretSource};
