//! Waiting between attempts to reach Redis again, for every loop that talks to it (a worker's
//! reads and settlements, an API node's audit writer and notice listener): exponential from a
//! first delay, doubling, capped at [`REDIS_RETRY_MAX`], never giving up — a schedule from
//! `backon`, slept on by the loop itself so that it can also watch for shutdown.

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use std::time::Duration;

/// The longest wait between two attempts to reach Redis.
pub const REDIS_RETRY_MAX: Duration = Duration::from_secs(5);

/// A fresh schedule: `first`, then twice as long each time up to [`REDIS_RETRY_MAX`], endless.
/// Start a new one once Redis answers again.
pub fn redis_retry(first: Duration) -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(first)
        .with_max_delay(REDIS_RETRY_MAX)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_first_delay_up_to_the_cap_and_never_ends() {
        let delays: Vec<Duration> = redis_retry(Duration::from_millis(100)).take(10).collect();
        // backon multiplies in f32: compare whole milliseconds.
        let millis: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(millis[..4], [100, 200, 400, 800]);
        assert!(delays.iter().all(|d| *d <= REDIS_RETRY_MAX));
        assert_eq!(delays[9], REDIS_RETRY_MAX);
        assert_eq!(redis_retry(Duration::from_millis(50)).nth(1000), Some(REDIS_RETRY_MAX));
    }
}
