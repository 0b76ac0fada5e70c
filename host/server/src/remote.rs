//! The daemon with `--redis`: runs become jobs in the shared queue, `guild worker` processes
//! run them, and this node
//! - hands each tool's component to Redis the first time it enqueues it (again after Redis
//!   failed, in case it came back empty);
//! - answers sync requests and settles tenants' fuel when the job's result arrives;
//! - writes the audit record of every finished attempt, reading them from the done stream
//!   (with the other API nodes, in one consumer group: each attempt lands in one node's log);
//! - answers `GET /v1/runs/{id}` and `GET /v1/bundles/{id}` for jobs any node enqueued.

use crate::drain::DrainToken;
use crate::metrics::Metrics;
use crate::runs::{Finished, FinishedBody, RunBody, RunState};
use guild_audit::{AuditEntry, AuditLog};
use guild_queue::{
    DoneEntry, DoneRead, JobResult, JobStatus, NoticeState, QueueError, REDIS_RETRY_MAX, RedisQueue, redis_retry,
};
use guild_replay::Digest;
use guild_runtime::{Failure, FailureCode, RunStatus};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How many finished attempts the audit writer takes at once.
const AUDIT_BATCH_MAX: usize = 512;
/// Attempt keys remembered to drop redeliveries (after a crash between fsync and ack).
const AUDITED_REMEMBERED_MAX: usize = 100_000;
/// How often awaited jobs' results are read, in case a notice was missed, and Redis asked
/// whether it still knows them.
const SWEEP: Duration = Duration::from_secs(2);
/// Awaited jobs a sweep looks at, at most, while no notice can have been missed (the next
/// sweep goes on from where this one stopped, so a deep queue costs Redis a bounded number of
/// reads a second, not one per awaited job); after a notice was dropped or the subscription
/// was made again, while there is no subscription, and at least every `SWEEP_FULL_EVERY`, a
/// sweep looks at every awaited job.
const SWEEP_IDS_MAX: usize = 1_000;
/// The longest between two sweeps that look at every awaited job (a backstop should notices
/// stop arriving without the subscription failing).
const SWEEP_FULL_EVERY: Duration = Duration::from_secs(30);
/// Finished-job notices queued for the waiters at most; past it notices are dropped, and the
/// sweep finds those jobs instead.
const NOTICES_QUEUED_MAX: usize = 4096;
/// Notices whose results are read in one request, at most: the notices that arrived while the
/// last read was under way are looked up together.
const NOTICES_BATCH_MAX: usize = 256;
/// Jobs awaited at once by this node's callers (sync requests, idempotent resubmissions); one
/// more is refused with 503 rather than remembered without bound.
pub const REMOTE_WAITERS_MAX: usize = 100_000;

/// The Redis side of a daemon.
pub struct Remote {
    /// The Redis job queue: jobs go in, results and the done stream come back from it.
    pub queue: RedisQueue,
    /// The store every node shares for bundles too large for Redis, if there is one.
    pub shared_store: Option<Arc<guild_replay::DirStore>>,
    /// This node's consumer name in the audit group.
    node: String,
    /// Jobs awaited at once at most.
    waiters_max: usize,
    waiters: Mutex<HashMap<String, Vec<watch::Sender<RunState>>>>,
    pushed: Mutex<HashSet<Digest>>,
    audited: Mutex<Remembered>,
    /// Awaited jobs the last sweep found unknown to Redis, since when (unknown in every sweep
    /// since); at most `waiters_max`, a subset of the waiters then.
    unknown: Mutex<HashMap<String, std::time::Instant>>,
    /// Whether finished-job notices are arriving, and whether one may have been missed (then
    /// the next sweep looks at every awaited job).
    notices: Arc<NoticeState>,
    /// Where the last bounded sweep stopped (the next one starts after this id), and when a
    /// sweep last looked at every awaited job.
    sweep_at: Mutex<(String, Option<std::time::Instant>)>,
}

#[derive(Default)]
struct Remembered {
    keys: HashSet<String>,
    order: VecDeque<String>,
}

impl Remembered {
    fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    /// True the first time `key` is seen.
    fn insert(&mut self, key: String) -> bool {
        if !self.keys.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        while self.order.len() > AUDITED_REMEMBERED_MAX {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
        true
    }
}

fn attempt_key(run: &str, attempt: u32, worker: &str) -> String {
    format!("{run}/{attempt}/{worker}")
}

impl Remote {
    /// A node called `node` (unique among API nodes) on `queue`.
    pub fn new(queue: RedisQueue, node: String, shared_store: Option<Arc<guild_replay::DirStore>>) -> Self {
        Self {
            queue,
            shared_store,
            node,
            waiters_max: REMOTE_WAITERS_MAX,
            waiters: Mutex::new(HashMap::new()),
            pushed: Mutex::new(HashSet::new()),
            audited: Mutex::new(Remembered::default()),
            unknown: Mutex::new(HashMap::new()),
            notices: Arc::new(NoticeState::default()),
            sweep_at: Mutex::new((String::new(), None)),
        }
    }

    /// Await at most `waiters_max` jobs at once (default [`REMOTE_WAITERS_MAX`]).
    pub fn with_waiters_max(mut self, waiters_max: usize) -> Self {
        self.waiters_max = waiters_max.max(1);
        self
    }

    /// An attempt already in the audit log (from the log, at start).
    pub fn remember_audited(&self, run: &str, attempt: u32, worker: &str) {
        self.audited.lock().unwrap_or_else(|p| p.into_inner()).insert(attempt_key(run, attempt, worker));
    }

    /// Put the tool's component in Redis unless this node already did.
    ///
    /// # Errors
    /// [`QueueError::Corrupt`] when the file the tool was registered from can no longer be read,
    /// or no longer holds the component registered (workers would refuse it by its digest);
    /// otherwise as [`RedisQueue::put_component`].
    pub async fn push_component(&self, tool: &crate::registry::RegisteredTool) -> Result<(), QueueError> {
        let digest = *tool.tool.digest();
        if self.pushed.lock().unwrap_or_else(|p| p.into_inner()).contains(&digest) {
            return Ok(());
        }
        let bytes =
            tool.component_bytes().map_err(|e| QueueError::Corrupt(format!("component of {}: {e}", tool.name)))?;
        check_component(&tool.name, &digest, &bytes)?;
        self.queue.put_component(&digest, &bytes).await?;
        self.pushed.lock().unwrap_or_else(|p| p.into_inner()).insert(digest);
        Ok(())
    }

    /// Forget which components were pushed (Redis failed; it may come back without them).
    pub fn forget_pushed(&self) {
        self.pushed.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// A state channel for job `id` that turns `Finished` when its result arrives (or when
    /// Redis forgets the job before its result was read).
    ///
    /// # Errors
    /// A message when `waiters_max` jobs (`REMOTE_WAITERS_MAX` unless set) are awaited already.
    pub fn watch(&self, id: &str) -> Result<watch::Receiver<RunState>, String> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if waiters.len() >= self.waiters_max && !waiters.contains_key(id) {
            waiters.retain(|_, senders| {
                senders.retain(|s| !s.is_closed());
                !senders.is_empty()
            });
            if waiters.len() >= self.waiters_max {
                return Err(format!(
                    "this node is waiting for {} jobs already; retry, or ask asynchronously",
                    self.waiters_max
                ));
            }
        }
        let (sender, receiver) = watch::channel(RunState::Queued);
        waiters.entry(id.to_string()).or_default().push(sender);
        Ok(receiver)
    }

    /// Wake waiters as their jobs finish, wherever they were audited: a notice (Redis pub/sub)
    /// names each job that got its result; every `SWEEP` the results of all awaited jobs are
    /// read at once, for notices missed while the subscription was down.
    pub async fn notice_loop(self: Arc<Self>) {
        let (sender, mut notices) = tokio::sync::mpsc::channel(NOTICES_QUEUED_MAX);
        let listener = self.clone();
        tokio::spawn(async move {
            let mut backoff = redis_retry(Duration::from_millis(100));
            loop {
                if let Err(e) = listener.queue.listen_finished(&sender, &listener.notices).await {
                    tracing::debug!(error = %e, "finished-job notices interrupted; subscribing again");
                }
                if sender.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff.next().unwrap_or(REDIS_RETRY_MAX)).await;
            }
        });
        let mut sweep = tokio::time::interval(SWEEP);
        let mut batch = Vec::with_capacity(NOTICES_BATCH_MAX);
        loop {
            tokio::select! {
                received = notices.recv_many(&mut batch, NOTICES_BATCH_MAX) => {
                    if received == 0 {
                        return;
                    }
                    self.resolve_notices(&mut batch).await;
                }
                _ = sweep.tick() => self.sweep().await,
            }
        }
    }

    /// Wake the waiters of the jobs these notices name (one read for all of them); a job none
    /// waits for here costs nothing. A read that fails leaves them to the next sweep, which
    /// then looks at every awaited job.
    async fn resolve_notices(&self, ids: &mut Vec<String>) {
        {
            let waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            ids.retain(|id| waiters.contains_key(id));
        }
        ids.sort_unstable();
        ids.dedup();
        if !ids.is_empty() {
            match self.queue.results(ids).await {
                Ok(results) => {
                    // A notice names a finished job: one without a result expired since.
                    self.resolve(ids, results);
                }
                Err(_) => self.notices.missed.store(true, Ordering::Release),
            }
        }
        ids.clear();
    }

    /// Wake the waiters of the jobs whose results were read; the ids with none yet.
    fn resolve(&self, ids: &[String], results: Vec<Option<Result<JobResult, QueueError>>>) -> Vec<String> {
        let mut unresolved = Vec::new();
        for (id, result) in ids.iter().zip(results) {
            match result {
                Some(Ok(result)) => self.notify(&result),
                Some(Err(e)) => self.unreadable(id, &e.to_string()),
                None => unresolved.push(id.clone()),
            }
        }
        unresolved
    }

    /// Look once at the result of job `id`, awaited here since after a look that found none:
    /// its notice may have come in between, found no waiter and been dropped.
    ///
    /// # Errors
    /// As [`RedisQueue::results`].
    pub(crate) async fn look_again(&self, id: &str) -> Result<(), QueueError> {
        let ids = [id.to_string()];
        let results = self.queue.results(&ids).await?;
        self.resolve(&ids, results);
        Ok(())
    }

    /// The awaited jobs this sweep looks at, and whether that is every one: all of them after a
    /// notice may have been missed, while no subscription stands, or once `SWEEP_FULL_EVERY`
    /// passed since the last such sweep; else at most `SWEEP_IDS_MAX`, going on from where the
    /// last sweep stopped (run ids are random, so the turn goes round every awaited job).
    fn sweep_ids(&self) -> (Vec<String>, bool) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        waiters.retain(|_, senders| {
            senders.retain(|s| !s.is_closed());
            !senders.is_empty()
        });
        let mut ids: Vec<String> = waiters.keys().cloned().collect();
        drop(waiters);
        let mut at = self.sweep_at.lock().unwrap_or_else(|p| p.into_inner());
        let (after, full_at) = &mut *at;
        let missed = self.notices.missed.swap(false, Ordering::AcqRel);
        let unsubscribed = !self.notices.subscribed.load(Ordering::Acquire);
        let overdue = full_at.is_none_or(|t| t.elapsed() >= SWEEP_FULL_EVERY);
        if missed || unsubscribed || overdue || ids.len() <= SWEEP_IDS_MAX {
            *full_at = Some(std::time::Instant::now());
            return (ids, true);
        }
        // The next ids in order after the last sweep's, wrapping round to the first.
        let (mut next, mut first): (Vec<String>, Vec<String>) = ids.drain(..).partition(|id| *id > *after);
        for part in [&mut next, &mut first] {
            if part.len() > SWEEP_IDS_MAX {
                part.select_nth_unstable(SWEEP_IDS_MAX - 1);
                part.truncate(SWEEP_IDS_MAX);
            }
        }
        next.sort_unstable();
        first.sort_unstable();
        next.extend(first);
        next.truncate(SWEEP_IDS_MAX);
        if let Some(last) = next.last() {
            after.clone_from(last);
        }
        (next, false)
    }

    async fn sweep(&self) {
        let (ids, full) = self.sweep_ids();
        if ids.is_empty() {
            return;
        }
        let results = match self.queue.results(&ids).await {
            Ok(results) => results,
            Err(_) => {
                // What this sweep was to find is still to be found: the next looks at everything.
                if full {
                    self.notices.missed.store(true, Ordering::Release);
                }
                return;
            }
        };
        let unresolved = self.resolve(&ids, results);
        // A job Redis no longer knows will never get a result: its waiters are told so — once
        // every sweep for a while found it unknown, as one look may come before its submission
        // lands (after its confirmation wait), or from a node that just came back with older
        // data in a failover.
        let Ok(known) = self.queue.known(&unresolved).await else { return };
        let settings = self.queue.settings();
        // Longer than a submission can take to land (its confirmation wait and its timeout).
        let grace = (SWEEP * 2).max(Duration::from_millis(settings.ack_timeout_ms + settings.response_timeout_ms));
        let now = std::time::Instant::now();
        let expired: Vec<String> = {
            let mut unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
            let mut expired = Vec::new();
            for (id, known) in unresolved.into_iter().zip(known) {
                if known {
                    unknown.remove(&id);
                    continue;
                }
                let since = *unknown.entry(id.clone()).or_insert(now);
                if now.duration_since(since) >= grace {
                    unknown.remove(&id);
                    expired.push(id);
                }
            }
            // Only awaited jobs are remembered (a sweep may not have looked at all of them).
            let waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            unknown.retain(|id, _| waiters.contains_key(id));
            expired
        };
        for id in &expired {
            self.expire(id);
        }
    }

    fn expire(&self, id: &str) {
        self.end_waiters(
            id,
            Failure::host(
                FailureCode::Expired,
                "the job is no longer in Redis and its result was never read (it expired, or Redis lost it); \
                 submit it again, or raise redis.results_ttl_s",
            ),
        );
    }

    /// The job finished, but this node cannot read its result (a node of another version wrote
    /// it): its waiters are told so, not left waiting for a result that will never parse here.
    fn unreadable(&self, id: &str, reason: &str) {
        tracing::warn!(run_id = %id, reason, "a finished job's result cannot be read by this node");
        let message = format!(
            "the job finished, but its result in Redis cannot be read by this node ({reason}); \
             a node of the version that ran it can show it"
        );
        self.end_waiters(id, Failure::host(FailureCode::UnreadableResult, message));
    }

    fn end_waiters(&self, id: &str, failure: Failure) {
        let Some(senders) = self.waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(id) else { return };
        let finished = Arc::new(Finished::failed(RunStatus::Failed, failure));
        for sender in senders {
            let _ = sender.send(RunState::Finished(finished.clone()));
        }
    }

    fn notify(&self, result: &JobResult) {
        let Some(senders) = self.waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(&result.id) else { return };
        let finished = Arc::new(finished(result));
        for sender in senders {
            let _ = sender.send(RunState::Finished(finished.clone()));
        }
    }

    /// Write audit records for finished attempts until the daemon drains; wakes waiters.
    pub(crate) async fn audit_loop(
        self: Arc<Self>,
        log: Arc<AuditLog>,
        metrics: Arc<Metrics>,
        usage: Arc<crate::usage::Usage>,
        drain: DrainToken,
    ) {
        let first = Duration::from_millis(100);
        let mut backoff = redis_retry(first);
        let mut ready = false;
        while !drain.is_draining() {
            if !ready {
                ready = self.queue.ensure_groups().await.is_ok();
            }
            let entries = match self.queue.read_done(&self.node, AUDIT_BATCH_MAX, Duration::from_millis(500)).await {
                Ok(entries) => {
                    backoff = redis_retry(first);
                    entries
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read finished jobs; retrying");
                    ready = false;
                    self.forget_pushed();
                    tokio::time::sleep(backoff.next().unwrap_or(REDIS_RETRY_MAX)).await;
                    continue;
                }
            };
            let (entries, corrupt): (Vec<DoneRead>, Vec<DoneRead>) =
                entries.into_iter().partition(|read| matches!(read, DoneRead::Entry(_)));
            for read in corrupt {
                if let DoneRead::Corrupt { entry, reason, raw } = read {
                    self.bury(&log, &metrics, &entry, &reason, &raw).await;
                }
            }
            let entries: Vec<DoneEntry> = entries
                .into_iter()
                .filter_map(|read| match read {
                    DoneRead::Entry(entry) => Some(*entry),
                    DoneRead::Corrupt { .. } => None,
                })
                .collect();
            if entries.is_empty() {
                continue;
            }
            if let Err(e) = self.audit(&log, (&metrics, &usage), &entries).await {
                tracing::error!(error = %e, "cannot write audit records of finished jobs; they stay in Redis");
                tokio::time::sleep(backoff.next().unwrap_or(REDIS_RETRY_MAX)).await;
                continue;
            }
            let acked: Vec<String> = entries.iter().map(|e| e.entry.clone()).collect();
            if let Err(e) = self.queue.ack_done(&acked).await {
                tracing::warn!(error = %e, "audited jobs not acknowledged; they will be delivered again and skipped");
            }
            for entry in &entries {
                if entry.kind.is_final() {
                    self.notify(&entry.result);
                }
            }
        }
    }

    /// An entry that cannot be read goes to the dead-letter stream with an audit record of its
    /// own, so the audit trail shows it and the writer goes on with the rest.
    async fn bury(&self, log: &AuditLog, metrics: &Metrics, entry: &str, reason: &str, raw: &str) {
        tracing::error!(
            entry,
            reason,
            "a finished job's entry in Redis cannot be read; moving it to the dead-letter stream"
        );
        let event = guild_audit::AuditEvent {
            kind: "corrupt_done_entry".into(),
            actor: "redis".into(),
            detail: format!("done-stream entry {entry} cannot be read ({reason}); moved to the dead-letter stream"),
        };
        if let Err(e) = log.append(AuditEntry::event(event, entry, "")).await {
            // Left in the done stream: redelivered (and tried again) later.
            return tracing::error!(error = %e, "cannot audit the corrupt entry; it stays in Redis");
        }
        metrics.audit_records.inc();
        if let Err(e) = self.queue.bury_done(entry, reason, raw).await {
            tracing::warn!(error = %e, entry, "the corrupt entry was audited but not moved; it will be audited again");
        }
    }

    async fn audit(
        &self,
        log: &AuditLog,
        (metrics, usage): (&Metrics, &crate::usage::Usage),
        entries: &[DoneEntry],
    ) -> Result<(), guild_audit::AuditError> {
        // An attempt is marked audited only once its record is on disk: after a failed write,
        // the redelivered entries are written, not skipped.
        let (keys, records): (Vec<String>, Vec<AuditEntry>) = {
            let audited = self.audited.lock().unwrap_or_else(|p| p.into_inner());
            let mut batch = HashSet::new();
            entries
                .iter()
                .filter_map(|entry| {
                    let r = &entry.result;
                    let key = attempt_key(&r.id, r.attempt, &r.worker);
                    (!audited.contains(&key) && batch.insert(key.clone())).then(|| (key, audit_entry(entry)))
                })
                .unzip()
        };
        let count = records.len() as u64;
        // One span per traced attempt, in its run's trace: the batch's write is each one's.
        let spans: Vec<guild_telemetry::Traced> = entries
            .iter()
            .filter_map(|entry| {
                let trace = entry.result.trace.as_ref()?;
                let span = guild_telemetry::root(Some(trace), "audit write", || {
                    guild_telemetry::span!(
                        parent: None,
                        "audit write",
                        guild.run.id = %entry.result.id,
                        guild.audit.batch_records = count,
                    )
                });
                Some(span)
            })
            .collect();
        log.append_many(records).await?;
        drop(spans);
        {
            let mut audited = self.audited.lock().unwrap_or_else(|p| p.into_inner());
            for key in keys {
                audited.insert(key);
            }
        }
        metrics.audit_records.inc_by(count);
        for entry in entries {
            let r = &entry.result;
            let revision = r.revision.map(|n| n.to_string()).unwrap_or_default();
            metrics.runs.with_label_values(&[&r.tool, &revision, &r.tenant, finished(r).label()]).inc();
            metrics.fuel_used.with_label_values(&[&r.tenant]).inc_by(r.fuel_used_units);
            // Every attempt that ran was priced by its worker: its cost is in the ledger and
            // the metrics of the node that audits it, as its record is in this node's log.
            if let Some(cost) = &r.cost {
                let who = (r.tenant.as_str(), r.subject.as_deref(), r.agent.as_deref());
                usage.record(guild_queue::now_unix_ms(), who, &r.tool, cost).await;
                metrics.count_cost(&r.tenant, &r.tool, cost);
                metrics.count_tokens(&r.tenant, &r.tool, &r.tokens);
            }
        }
        Ok(())
    }
}

fn audit_entry(done: &DoneEntry) -> AuditEntry {
    let r = &done.result;
    AuditEntry {
        run: r.id.clone(),
        tenant: r.tenant.clone(),
        subject: r.subject.clone(),
        agent: r.agent.clone(),
        tool: r.tool.clone(),
        tool_digest: r.tool_digest,
        revision: r.revision,
        input_digest: r.input_digest,
        grants: r.policy.clone(),
        outcome: finished(r).label().to_string(),
        fuel_used_units: r.fuel_used_units,
        cost: r.cost.clone(),
        bundle: r.bundle,
        idempotency_key: r.idempotency_key.clone(),
        attempt: Some(r.attempt),
        worker: Some(r.worker.clone()),
        // A job a worker answered with another run's result says so, like one answered here.
        completion: Some(match r.cache.as_deref() {
            Some("hit") => guild_vocab::AttemptEnd::CacheHit,
            Some("merged") => guild_vocab::AttemptEnd::CacheMerged,
            _ => done.kind,
        }),
        event: None,
        trace_id: r.trace.as_ref().map(|t| t.trace_id().to_string()),
    }
}

/// A job result as the run table's `Finished`.
pub(crate) fn finished(result: &JobResult) -> Finished {
    Finished {
        status: result.status,
        error: result.error.clone(),
        bundle: result.bundle,
        fuel_used_units: result.fuel_used_units,
        wall_time_us: result.wall_time_us,
        revision: result.revision,
        cache: result.cache.as_deref().map(crate::cache::CacheState::parse),
        cost: result.cost.clone().map(Arc::new),
        trace_id: result.trace.as_ref().map(|t| t.trace_id().to_string()),
    }
}

/// Whether `bytes`, read again from the file `tool` was registered from, are still the component
/// registered as `digest`: a file changed since would reach workers under a digest it lacks.
fn check_component(tool: &str, digest: &Digest, bytes: &[u8]) -> Result<(), QueueError> {
    let found = Digest::of(bytes);
    if found == *digest {
        return Ok(());
    }
    Err(QueueError::Corrupt(format!(
        "the component file of tool {tool} changed since it was registered (registered {digest}, the file now \
         holds {found}); restart the daemon, or upload the new component as a tool of its own"
    )))
}

/// What `GET /v1/runs/{id}` shows for a job in Redis: the same body as for a run of this node,
/// with its attempts and, once finished, the worker that ran it; the JSON text.
pub(crate) fn run_body(id: &str, status: &JobStatus) -> String {
    let finished = status.result.as_ref().map(|result| (finished(result), result));
    let body = RunBody {
        id,
        status: match (&finished, &status.waiting_for_capability) {
            (Some((f, _)), _) => f.status.as_str(),
            (None, Some(_)) => "waiting_for_capability",
            (None, None) => status.state.word(),
        },
        tool: &status.tool,
        attempts: Some(status.attempts),
        waiting_for: status.waiting_for_capability.as_deref(),
        finished: finished.as_ref().map(|(f, result)| FinishedBody {
            worker: Some(&result.worker),
            ..FinishedBody::new(f, result.output.clone())
        }),
    };
    serde_json::to_string(&body).expect("a run body is plain data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_file_changed_since_registration_is_not_pushed() {
        let digest = Digest::of(b"the component");
        assert!(check_component("wc", &digest, b"the component").is_ok());
        let refused = check_component("wc", &digest, b"another one").expect_err("changed");
        assert!(refused.to_string().contains("changed since it was registered"), "{refused}");
    }

    #[tokio::test]
    async fn awaited_jobs_are_bounded_and_a_gone_caller_frees_its_place() {
        // Lazy: nothing is sent to Redis for waiting.
        let queue = RedisQueue::open(guild_queue::RedisSettings::new("redis://127.0.0.1:1/")).expect("queue");
        let remote = Remote::new(queue, "node".into(), None).with_waiters_max(2);
        let first = remote.watch("a").expect("room");
        let _second = remote.watch("b").expect("room");
        let _again = remote.watch("a").expect("another caller of an awaited job takes no new place");
        let refused = remote.watch("c").expect_err("full");
        assert!(refused.contains("waiting for 2 jobs"), "{refused}");
        drop(first);
        drop(_again);
        assert!(remote.watch("c").is_ok(), "a place whose callers went away is reused");
    }

    #[tokio::test]
    async fn a_sweep_of_a_deep_queue_looks_at_a_bounded_window_in_turn_unless_a_notice_was_missed() {
        let queue = RedisQueue::open(guild_queue::RedisSettings::new("redis://127.0.0.1:1/")).expect("queue");
        let remote = Remote::new(queue, "node".into(), None);
        let awaited = SWEEP_IDS_MAX * 2 + 10;
        let _receivers: Vec<_> = (0..awaited).map(|i| remote.watch(&format!("job-{i:05}")).expect("room")).collect();
        let (all, full) = remote.sweep_ids();
        assert!(full && all.len() == awaited, "no subscription yet: every awaited job is looked at");
        // As `listen_finished` does once subscribed.
        remote.notices.subscribed.store(true, Ordering::Release);
        remote.notices.missed.store(true, Ordering::Release);
        let (all, full) = remote.sweep_ids();
        assert!(full && all.len() == awaited, "the subscription was just made: a notice may have been missed");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 {
            let (window, full) = remote.sweep_ids();
            assert!(!full && window.len() <= SWEEP_IDS_MAX, "bounded: {}", window.len());
            seen.extend(window);
        }
        assert_eq!(seen.len(), awaited, "three bounded sweeps in turn cover every awaited job");
        let (wrapped, _) = remote.sweep_ids();
        assert_eq!(wrapped.first().map(String::as_str), Some("job-00990"), "the turn goes on where it stopped");
        remote.notices.missed.store(true, Ordering::Release);
        assert_eq!(remote.sweep_ids().0.len(), awaited, "a missed notice makes the next sweep look at every job");
        remote.notices.subscribed.store(false, Ordering::Release);
        assert_eq!(remote.sweep_ids().0.len(), awaited, "so does a subscription that is down");
        remote.notices.subscribed.store(true, Ordering::Release);
        assert!(!remote.sweep_ids().1, "bounded again once notices arrive");
        remote.sweep_at.lock().expect("lock").1 = Some(std::time::Instant::now() - SWEEP_FULL_EVERY);
        assert!(remote.sweep_ids().1, "and every SWEEP_FULL_EVERY a sweep looks at everything all the same");
    }

    #[tokio::test]
    async fn a_failed_read_of_notices_makes_the_next_sweep_look_at_every_awaited_job() {
        // Nothing listens on port 1: the read of the notices' results fails.
        let queue = RedisQueue::open(guild_queue::RedisSettings::new("redis://127.0.0.1:1/")).expect("queue");
        let remote = Remote::new(queue, "node".into(), None);
        let _receivers: Vec<_> =
            (0..SWEEP_IDS_MAX + 1).map(|i| remote.watch(&format!("job-{i:05}")).expect("room")).collect();
        remote.notices.subscribed.store(true, Ordering::Release);
        let _ = remote.sweep_ids();
        assert!(!remote.sweep_ids().1, "bounded while notices arrive");
        remote.resolve_notices(&mut vec!["job-00001".to_string()]).await;
        assert!(remote.sweep_ids().1, "the notice whose result could not be read is looked for by a full sweep");
        remote.notices.missed.store(true, Ordering::Release);
        remote.sweep().await;
        assert!(remote.sweep_ids().1, "a full sweep whose read failed leaves the next one full");
    }
}
