//! Counters for operators: the queue's statistics and the workers' heartbeats.

use super::{QueueError, RedisQueue, WORKER_FORGET_MS, WORKER_LIVE_MS, WORKERS_GROUP, from_redis};
use crate::Needs;
use crate::job::{LaneStats, QueueStats, WorkerStats, now_unix_ms};
use redis::Value;
use std::collections::HashMap;

/// Lane depths, `XPENDING`'s summary, delayed and dead counts, counters, heartbeats.
type StatsReply = (HashMap<String, i64>, Value, u64, u64, HashMap<String, u64>, HashMap<String, String>);

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
            pipe.cmd("HGETALL").arg(keys.key("lanes:depth"));
            pipe.cmd("XPENDING").arg(keys.key("leases")).arg(WORKERS_GROUP);
            pipe.cmd("ZCARD").arg(keys.key("delayed"));
            pipe.cmd("XLEN").arg(keys.key("dead"));
            pipe.cmd("HGETALL").arg(keys.key("stats"));
            pipe.cmd("HGETALL").arg(keys.key("workers"));
            let (lane_depths, pending, delayed, dead, counters, workers): StatsReply =
                pipe.query_async(&mut self.conn()).await.map_err(from_redis)?;
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
            let mut lanes: Vec<LaneStats> = lane_depths
                .into_iter()
                .map(|(lane, depth)| {
                    let workers = live.iter().filter(|w| w.lanes.contains(&lane)).count() as u64;
                    LaneStats { lane, depth: u64::try_from(depth).unwrap_or(0), workers }
                })
                .collect();
            lanes.sort_by(|a, b| a.lane.cmp(&b.lane));
            let counter = |name: &str| counters.get(name).copied().unwrap_or(0);
            Ok(QueueStats {
                depth: lanes.iter().map(|l| l.depth).sum(),
                pending,
                delayed,
                dead,
                claims: counter("claims"),
                retries: counter("retries"),
                completed: counter("completed"),
                duplicates: counter("duplicates"),
                workers: live,
                lanes,
            })
        })
        .await
    }

    /// A worker says it is alive, how much it has done, and which lanes it reads (so a job in
    /// a lane no live worker reads shows `waiting_for_capability`).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses the write.
    pub async fn heartbeat(&self, stats: &WorkerStats) -> Result<(), QueueError> {
        let keys = &self.inner.keys;
        let text = serde_json::to_string(stats).expect("worker stats are plain data");
        let mut pipe = redis::pipe();
        pipe.cmd("HSET").arg(keys.key("workers")).arg(&stats.name).arg(text).ignore();
        let forget_before = stats.seen_unix_ms.saturating_sub(WORKER_FORGET_MS);
        for lane in &stats.lanes {
            let served = keys.served(lane);
            pipe.cmd("ZADD").arg(&served).arg(stats.seen_unix_ms).arg(&stats.name).ignore();
            pipe.cmd("ZREMRANGEBYSCORE").arg(&served).arg("-inf").arg(forget_before).ignore();
        }
        let () = pipe.query_async(&mut self.conn()).await.map_err(from_redis)?;
        Ok(())
    }

    /// A worker that stops says so: it no longer counts as live, nor as reading its lanes, so a
    /// job only it could run shows `waiting_for_capability` at once.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses the write.
    pub async fn retire(&self, stats: &WorkerStats) -> Result<(), QueueError> {
        let keys = &self.inner.keys;
        let mut pipe = redis::pipe();
        pipe.cmd("HDEL").arg(keys.key("workers")).arg(&stats.name).ignore();
        for lane in &stats.lanes {
            pipe.cmd("ZREM").arg(keys.served(lane)).arg(&stats.name).ignore();
        }
        let () = pipe.query_async(&mut self.conn()).await.map_err(from_redis)?;
        Ok(())
    }

    /// The last heartbeat of the worker named `name`, if it sent one that this node can read.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses the read.
    pub async fn worker(&self, name: &str) -> Result<Option<WorkerStats>, QueueError> {
        let text: Option<String> = redis::cmd("HGET")
            .arg(self.inner.keys.key("workers"))
            .arg(name)
            .query_async(&mut self.conn())
            .await
            .map_err(from_redis)?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// The lanes jobs were queued in (at most [`LANES_MAX`](crate::LANES_MAX)), with what each
    /// needs: a worker reads those its advertisement meets.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses the read. A lane whose needs do not parse (a node of another version wrote it)
    /// is left out.
    pub async fn lanes(&self) -> Result<Vec<(String, Needs)>, QueueError> {
        let all: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.inner.keys.key("lanes"))
            .query_async(&mut self.conn())
            .await
            .map_err(from_redis)?;
        Ok(all.into_iter().filter_map(|(lane, text)| Some((lane, serde_json::from_str(&text).ok()?))).collect())
    }
}
