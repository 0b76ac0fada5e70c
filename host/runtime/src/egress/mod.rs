//! Outgoing HTTP under the host's rules: which requests a run may make ([`rules`]), and the
//! `wasi:http` hook that enforces them.

pub mod rules;

pub use rules::{Destination, EgressRule, RuleError, blocked_reason};
