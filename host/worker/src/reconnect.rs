//! Waiting for Redis to come back: backoff between attempts, logged once per outage.

use super::Stop;
use guild_queue::{QueueError, REDIS_RETRY_MAX, RedisQueue, redis_retry};
use std::time::Duration;

/// Backoff between attempts to reach Redis again, logged once per outage.
#[derive(Default)]
pub(super) struct Reconnect {
    /// The outage's schedule; none while Redis answers.
    backoff: Option<backon::ExponentialBackoff>,
    /// When the outage began, and when it was last said to go on.
    since: Option<(std::time::Instant, std::time::Instant)>,
}

/// While Redis stays away, the worker says so again this often (a wrong password or master
/// name looks like an outage that never ends).
const STILL_AWAY_EVERY: Duration = Duration::from_secs(60);

impl Reconnect {
    /// After a failed read: wait (or stop), and make sure the groups exist again. False when
    /// the worker is stopping.
    pub(super) async fn wait(&mut self, queue: &RedisQueue, name: &str, error: &QueueError, stop: &Stop) -> bool {
        let now = std::time::Instant::now();
        match &mut self.since {
            None => {
                tracing::warn!(worker = %name, error = %error, "Redis is not answering; waiting for it");
                self.since = Some((now, now));
            }
            Some((began, said)) if said.elapsed() >= STILL_AWAY_EVERY => {
                let away_s = began.elapsed().as_secs();
                tracing::warn!(worker = %name, error = %error, away_s, "Redis is still not answering; waiting for it (check redis settings if this goes on)");
                *said = now;
            }
            Some(_) => {}
        }
        let delay = self
            .backoff
            .get_or_insert_with(|| redis_retry(Duration::from_millis(100)))
            .next()
            .unwrap_or(REDIS_RETRY_MAX);
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
        self.since = None;
        if self.backoff.take().is_some() {
            tracing::info!(worker = %name, "Redis answers again; consuming");
        }
    }
}
