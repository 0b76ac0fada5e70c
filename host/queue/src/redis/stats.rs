//! Counters for operators: the queue's statistics and the workers' heartbeats.

use super::{QueueError, RedisQueue, WORKER_FORGET_MS, WORKER_LIVE_MS, WORKERS_GROUP, from_redis};
use crate::job::{QueueStats, WorkerStats, now_unix_ms};
use redis::Value;

impl RedisQueue {
    /// Counts for metrics (each one cheap: lengths and counters).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached or the circuit is open after a
    /// recent failure; [`QueueError::Redis`] when it refuses a read (`NOGROUP` before
    /// [`RedisQueue::ensure_groups`] has made the `workers` group).
    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        let keys = &self.inner.keys;
        self.guarded(async {
            let mut pipe = redis::pipe();
            pipe.cmd("XLEN").arg(keys.key("jobs"));
            pipe.cmd("XPENDING").arg(keys.key("jobs")).arg(WORKERS_GROUP);
            pipe.cmd("ZCARD").arg(keys.key("delayed"));
            pipe.cmd("XLEN").arg(keys.key("dead"));
            pipe.cmd("HGETALL").arg(keys.key("stats"));
            pipe.cmd("HGETALL").arg(keys.key("workers"));
            let (length, pending, delayed, dead, counters, workers): (
                u64,
                Value,
                u64,
                u64,
                std::collections::HashMap<String, u64>,
                std::collections::HashMap<String, String>,
            ) = pipe.query_async(&mut self.conn()).await.map_err(from_redis)?;
            let pending = match pending {
                Value::Array(items) => match items.first() {
                    Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                    _ => 0,
                },
                _ => 0,
            };
            let now = now_unix_ms();
            let mut live = Vec::new();
            let mut forget = Vec::new();
            for (name, text) in workers {
                let Ok(stats) = serde_json::from_str::<WorkerStats>(&text) else { continue };
                let age = now.saturating_sub(stats.seen_unix_ms);
                if age <= WORKER_LIVE_MS {
                    live.push(stats);
                } else if age > WORKER_FORGET_MS {
                    forget.push(name);
                }
            }
            if !forget.is_empty() {
                let _: Result<i64, _> =
                    redis::cmd("HDEL").arg(keys.key("workers")).arg(forget).query_async(&mut self.conn()).await;
            }
            live.sort_by(|a, b| a.name.cmp(&b.name));
            let counter = |name: &str| counters.get(name).copied().unwrap_or(0);
            Ok(QueueStats {
                depth: length.saturating_sub(pending),
                pending,
                delayed,
                dead,
                claims: counter("claims"),
                retries: counter("retries"),
                completed: counter("completed"),
                duplicates: counter("duplicates"),
                workers: live,
            })
        })
        .await
    }

    /// A worker says it is alive, and how much it has done.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses the write.
    pub async fn heartbeat(&self, stats: &WorkerStats) -> Result<(), QueueError> {
        let text = serde_json::to_string(stats).expect("worker stats are plain data");
        let _: i64 = redis::cmd("HSET")
            .arg(self.inner.keys.key("workers"))
            .arg(&stats.name)
            .arg(text)
            .query_async(&mut self.conn())
            .await
            .map_err(from_redis)?;
        Ok(())
    }
}
