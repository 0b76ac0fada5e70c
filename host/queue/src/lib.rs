//! guild-queue: where runs wait. Two queues, with different contracts (a slot, a lease):
//!
//! - `embedded`: the default, in-process and bounded ([`RunQueue`]): at most
//!   `runs_in_flight_max` runs execute and at most `depth_max` wait; one machine needs nothing
//!   else. It is an admission gate, not a carrier: the run it admits stays in memory, its grants
//!   never serialized.
//! - `redis`: a shared queue ([`RedisQueue`]) that API nodes enqueue into and `guild worker`
//!   processes on any machine consume: a stream with a consumer group, leases renewed while a
//!   job runs and taken over (`XAUTOCLAIM`) when a worker dies, retries with backoff through a
//!   delayed set, a dead-letter stream, idempotency keys, expiring results, components and
//!   bundles by digest, and a circuit breaker so callers get a fast 503 when Redis is down.
//!
//! The Redis queue carries a job as plain data ([`Job`]): tool digest, input, the vocabulary's
//! typed grants and limits, idempotency key, attempts; its [`JobResult`] comes back the same
//! way. Every loop that talks to Redis waits on the one backoff in `retry.rs`. This crate knows
//! nothing of wasmtime: it moves jobs, it does not run them.

mod budget;
mod cache;
mod embedded;
mod gate;
mod job;
mod lanes;
mod redis;
mod retry;

pub use budget::{
    AGENT_LABEL_BYTES_MAX, AGENTS_MAX_DEFAULT, BudgetLine, BudgetPlan, BudgetStore, Exhausted, LocalBudgets, RunMeter,
    Spent, TOKENS_PER_ANSWER_MAX, check_agent_label, now_unix_s, period_start,
};
pub use cache::{CACHE_STORED_SKEW_MS_MAX, CacheKey, CacheRecord, CachedValue, EntryRejected, JobCache, check_entry};
pub use embedded::{QueueFull, RunQueue, Slot, Ticket};
pub use gate::{
    EGRESS_THROTTLE_MS_MAX_DEFAULT, EgressGates, EgressLimit, GATE_HOLD_LEASE_MS, GATE_KEYS_MAX_DEFAULT, Held,
    RunAdmitted, RunRefused,
};
pub use job::{
    Accepted, Completion, DeadJob, Disposition, Job, JobResult, JobState, JobStatus, LaneStats, Lease, QueueStats,
    WorkerStats, now_unix_ms,
};
pub use lanes::{
    Advertisement, DEFAULT_LANE, FairTurns, GpuAdvert, LABEL_BYTES_MAX, LABELS_MAX, LANES_MAX, Needs, PRIORITY_DEFAULT,
    PRIORITY_MAX, Place, WEIGHT_MAX, check_labels, machine_memory_bytes, parse_label,
};
pub use redis::{
    AckDurability, CACHE_VALUE_BYTES_MAX, CANCEL_HELD_FOR_TURN_S, DoneEntry, DoneRead, INLINE_PART_BYTES_MAX,
    NoticeState, QueueError, RedisQueue, RedisSettings, SentinelSettings, SharedCacheStats, TOOL_RECORD_BYTES_MAX,
    TOOL_RECORDS_MAX, UsageSums, holds_password, redact,
};
pub use retry::{REDIS_RETRY_MAX, backoff_ms, redis_retry};
