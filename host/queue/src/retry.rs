//! Every backoff Guild waits out, in one place. Between attempts to reach Redis again, for every
//! loop that talks to it (a worker's reads and settlements, an API node's audit writer and
//! notice listener): exponential from a first delay, doubling, capped at [`REDIS_RETRY_MAX`],
//! never giving up — a schedule from `backon`, slept on by the loop itself so that it can also
//! watch for shutdown. Before a failed job's next attempt ([`backoff_ms`]): the same doubling
//! from `redis.backoff_base_ms` to `redis.backoff_max_ms`, jittered, and kept in Redis as a due
//! time rather than slept on.

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

/// The backoff before retry number `attempt` (1 for the first retry): exponential from
/// `base_ms`, capped at `max_ms`, with "full jitter" — a uniform draw between half and all of
/// it — so that jobs failed together do not come back together.
pub fn backoff_ms(attempt: u32, base_ms: u64, max_ms: u64) -> u64 {
    let exponential = base_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(32)).min(max_ms);
    let mut bytes = [0u8; 8];
    let draw = if getrandom::fill(&mut bytes).is_ok() { u64::from_le_bytes(bytes) } else { crate::now_unix_ms() };
    let half = exponential / 2;
    half + draw % (exponential - half + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_is_capped_and_jittered() {
        for attempt in 1..=3 {
            let full = 100u64 << (attempt - 1);
            for _ in 0..50 {
                let delay = backoff_ms(attempt, 100, 10_000);
                assert!((full / 2..=full).contains(&delay), "attempt {attempt}: {delay} ms");
            }
        }
        assert!(backoff_ms(40, 100, 10_000) <= 10_000);
        let draws: std::collections::BTreeSet<u64> = (0..20).map(|_| backoff_ms(5, 1000, 60_000)).collect();
        assert!(draws.len() > 1, "jittered");
    }

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
