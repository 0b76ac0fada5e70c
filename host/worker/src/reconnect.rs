//! Waiting for Redis to come back: backoff between attempts, logged once per outage.

use super::Stop;
use guild_queue::{QueueError, RedisQueue};
use std::time::Duration;

/// Longest wait between reconnection attempts.
pub(super) const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Backoff between attempts to reach Redis again, logged once per outage.
#[derive(Default)]
pub(super) struct Reconnect {
    delay: Option<Duration>,
}

impl Reconnect {
    /// After a failed read: wait (or stop), and make sure the groups exist again. False when
    /// the worker is stopping.
    pub(super) async fn wait(&mut self, queue: &RedisQueue, name: &str, error: &QueueError, stop: &Stop) -> bool {
        let delay = self.delay.map_or(Duration::from_millis(100), |d| (d * 2).min(RECONNECT_MAX));
        if self.delay.is_none() {
            tracing::warn!(worker = %name, error = %error, "Redis is not answering; waiting for it");
        }
        self.delay = Some(delay);
        let mut stop = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return false,
        }
        if let Err(e) = queue.ensure_groups().await {
            tracing::debug!(error = %e, "Redis still away");
        }
        true
    }

    pub(super) fn succeeded(&mut self, name: &str) {
        if self.delay.take().is_some() {
            tracing::info!(worker = %name, "Redis answers again; consuming");
        }
    }
}
