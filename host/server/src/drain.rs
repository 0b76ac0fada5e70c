//! The drain token: set once, when the daemon starts shutting down. `/readyz` turns not ready,
//! new runs are refused, and the loops that serve the daemon (the Redis audit writer) stop at
//! their next turn. A clone is all such a loop needs of the daemon.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the daemon is draining; clones share one flag.
#[derive(Debug, Clone, Default)]
pub(crate) struct DrainToken(Arc<AtomicBool>);

impl DrainToken {
    /// Start draining (for good).
    pub(crate) fn start(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// True once draining started.
    pub(crate) fn is_draining(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}
