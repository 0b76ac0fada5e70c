//! Outgoing HTTP under the host's rules: which requests a run may make ([`rules`], on the path
//! the upstream will act on: [`path`]), the `wasi:http` hook that enforces and records them
//! (`hook`), and the connections to checked addresses, pooled per address and TLS name and
//! bounded host-wide (`connect`).

pub mod breaker;
pub(crate) mod connect;
pub use connect::{HTTP_CONNECTIONS_MAX_DEFAULT, tls_config};
pub(crate) mod hook;
// The rules themselves are vocabulary, shared with everything that carries or records a policy.
pub use guild_vocab::egress::{path, rules, secrets};

pub use breaker::BreakerSettings;
pub use rules::{Destination, EgressRule, RuleError, blocked_reason};
pub use secrets::{Secret, SecretGrant, SecretSource};
