//! Jobs through their lives: submitted, taken, renewed, reclaimed, completed or failed,
//! promoted from the delay set, dead, requeued; and their status and results.

use super::{QueueError, RedisQueue, WORKER_LIVE_MS, WORKERS_GROUP, from_redis};
use crate::job::{Accepted, Completion, DeadJob, Disposition, Job, JobResult, JobState, JobStatus, Lease, now_unix_ms};
use crate::{DEFAULT_LANE, LANES_MAX, PRIORITY_MAX, WEIGHT_MAX};
use guild_replay::Digest;
use guild_vocab::RunStatus;
use redis::Script;
use redis::streams::StreamAutoClaimReply;
use std::time::Duration;

/// How much longer than `results_ttl_s` a cancel request is kept, s: the longest a job may be
/// held to a run limit's turn (`run_limits.delay_ms_max`, at most a day) before it is taken.
pub const CANCEL_HELD_FOR_TURN_S: u64 = 86_400;

/// `state`, `attempts`, `tenant`, `tool`, `input`, `subject`, `lane` of a job hash.
type JobFields =
    (Option<String>, Option<u32>, Option<String>, Option<String>, Option<String>, Option<String>, Option<String>);

impl RedisQueue {
    /// Put a job in the queue, unless its tenant's idempotency key (or its id) already names
    /// one: in its lane (its `needs`), at its priority, behind its tenant's and agent's earlier
    /// jobs. Only a job Redis has taken is acknowledged.
    ///
    /// # Errors
    /// [`QueueError::Redis`] naming `LANES_MAX` when the job's lane would be one more than
    /// [`LANES_MAX`]. Under `ack_durability = "replica"` or `"aof"`, `confirmed: false` when no
    /// replica (or fsync) confirmed the job within `ack_timeout_ms` (it may still run), and
    /// [`QueueError::Settings`] when this Redis cannot do `aof`.
    /// [`QueueError::Unavailable`] when Redis cannot be reached or the circuit is open after a
    /// recent failure (the job may have been taken all the same: submitting it again is safe, its
    /// id or idempotency key names it); [`QueueError::Redis`] when Redis refuses the script.
    pub async fn submit(&self, job: &Job) -> Result<Accepted, QueueError> {
        let keys = &self.inner.keys;
        let body = serde_json::to_string(job).expect("a job is plain data");
        let mut script_keys = vec![keys.key("leases"), keys.job(&job.id)];
        if let Some(key) = &job.idempotency_key {
            script_keys.push(keys.idempotency((&job.tenant, job.subject.as_deref()), key));
        }
        let needs = serde_json::to_string(&job.needs).expect("needs are plain data");
        let args: Vec<String> = vec![
            job.id.clone(),
            body,
            job.tenant.clone(),
            job.tool.clone(),
            job.attempts_max.to_string(),
            job.input_digest.to_hex(),
            job.subject.clone().unwrap_or_default(),
            keys.prefix.clone(),
            job.needs.lane(),
            needs,
            job.priority.min(PRIORITY_MAX).to_string(),
            job.agent.clone().unwrap_or_default(),
            job.weight.clamp(1, WEIGHT_MAX).to_string(),
            LANES_MAX.to_string(),
            job.delay_ms.unwrap_or(0).to_string(),
        ];
        let script = &self.inner.scripts.submit;
        self.guarded(async {
            if self.inner.settings.ack_durability == crate::AckDurability::Local {
                let mut invocation = script.prepare_invoke();
                invocation.key(&script_keys).arg(&args);
                let (new, id): (i64, String) = invocation.invoke_async(&mut self.conn()).await.map_err(from_redis)?;
                return Ok(Accepted { existing: new == 0 && id != job.id, id, confirmed: true });
            }
            // On a connection of its own (a wait holds the connection it is sent on), with
            // `CLIENT INFO` in the same request: only a wait on that very connection confirms it.
            let mut evalsha = redis::cmd("EVALSHA");
            evalsha.arg(script.get_hash()).arg(script_keys.len()).arg(&script_keys).arg(&args);
            let mut pipe = redis::pipe();
            pipe.cmd("CLIENT").arg("INFO");
            pipe.add_command(evalsha);
            let mut durable = self.inner.durable.clone();
            let answered = match self.on_one_connection(&mut durable, &pipe).await {
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    // A master that never ran it (a new one, after a failover): load it, once.
                    script.load_async(&mut durable).await.map_err(from_redis)?;
                    self.on_one_connection(&mut durable, &pipe).await
                }
                answered => answered,
            };
            let (connection, mut replies) = answered.map_err(from_redis)?;
            let reply = replies.pop().ok_or_else(|| QueueError::Corrupt("no reply to the submit script".into()))?;
            let (new, id): (i64, String) = redis::from_redis_value(reply)
                .map_err(|e| QueueError::Corrupt(format!("the submit script's reply: {e}")))?;
            // A pipeline the client sent again (a dropped connection) finds this very job: it is
            // new to the caller all the same. Only an idempotency key's other job is "existing".
            let existing = new == 0 && id != job.id;
            let seq = self.inner.acks.written();
            let confirmed = self.confirm(seq, &connection).await.map_err(|e| match e {
                QueueError::Settings(why) => QueueError::Settings(format!(
                    "job {id} was queued but cannot be confirmed durable: {why}; it may still run"
                )),
                other => other,
            })?;
            Ok(Accepted { id, existing, confirmed })
        })
        .await
    }

    /// A job's state and, once finished, its result (or why this node cannot read it); `None`
    /// for an unknown (or expired) job.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached or the circuit is open after a
    /// recent failure; [`QueueError::Redis`] when it refuses a read; [`QueueError::Corrupt`] when
    /// the job's state does not parse, or its hash is gone and its result does not parse (then
    /// nothing says whose job it was).
    pub async fn status(&self, id: &str) -> Result<Option<JobStatus>, QueueError> {
        let keys = &self.inner.keys;
        self.guarded(async {
            let mut pipe = redis::pipe();
            pipe.cmd("HMGET")
                .arg(keys.job(id))
                .arg(&["state", "attempts", "tenant", "tool", "input", "subject", "lane"]);
            pipe.cmd("GET").arg(keys.result(id));
            let ((state, attempts, tenant, tool, input, subject, lane), result): (JobFields, Option<String>) =
                pipe.query_async(&mut self.conn()).await.map_err(from_redis)?;
            let subject = subject.filter(|s| !s.is_empty());
            let (result, unreadable_result) = match result.map(|text| parse_result(&text)) {
                Some(Ok(result)) => (Some(result), None),
                Some(Err(e)) => (None, Some(e)),
                None => (None, None),
            };
            let (Some(state), Some(tenant), Some(tool)) = (state, tenant, tool) else {
                if let Some(e) = unreadable_result {
                    return Err(e);
                }
                // The job hash can expire a moment before its result: the result still answers.
                return Ok(result.map(|result| JobStatus {
                    tenant: result.tenant.clone(),
                    subject: result.subject.clone(),
                    tool: result.tool.clone(),
                    input_digest: Some(result.input_digest),
                    state: if result.status == RunStatus::Dead { JobState::Dead } else { JobState::Done },
                    attempts: result.attempt,
                    result: Some(result),
                    unreadable_result: None,
                    waiting_for_capability: None,
                }));
            };
            let state = JobState::parse(&state).ok_or_else(|| QueueError::Corrupt(format!("job state {state:?}")))?;
            let input_digest = input.and_then(|hex| hex.parse().ok());
            let unreadable_result = unreadable_result.map(|e| e.to_string());
            let attempts = attempts.unwrap_or(0);
            let waiting_for_capability = match (state, lane) {
                (JobState::Queued, Some(lane)) if lane != DEFAULT_LANE => {
                    // A failure here leaves the job shown as queued (the status itself was read).
                    let live = self.read_lane_served(&lane).await.unwrap_or(true);
                    (!live).then_some(lane)
                }
                _ => None,
            };
            Ok(Some(JobStatus {
                tenant,
                subject,
                tool,
                input_digest,
                state,
                attempts,
                result,
                unreadable_result,
                waiting_for_capability,
            }))
        })
        .await
    }

    /// Whether a live worker reads `lane` (its latest heartbeat is at most 30 s old); the
    /// default lane is always read.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached or the circuit is open after a
    /// recent failure; [`QueueError::Redis`] when it refuses the read.
    pub async fn lane_served(&self, lane: &str) -> Result<bool, QueueError> {
        if lane == DEFAULT_LANE {
            return Ok(true);
        }
        self.guarded(self.read_lane_served(lane)).await
    }

    async fn read_lane_served(&self, lane: &str) -> Result<bool, QueueError> {
        // The latest heartbeat of a worker reading the lane.
        let served: Vec<(String, u64)> = redis::cmd("ZRANGE")
            .arg(self.inner.keys.served(lane))
            .arg(-1)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut self.conn())
            .await
            .map_err(from_redis)?;
        Ok(served.first().is_some_and(|(_, seen)| now_unix_ms().saturating_sub(*seen) <= WORKER_LIVE_MS))
    }

    /// Take up to `count` jobs for `worker` from `lanes` (the lanes it serves, most demanding
    /// first), waiting up to `block` when none is queued, and start them: the highest priority
    /// first, then the tenants' and agents' turns (`lanes.rs`).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses the take script or the wait. A job whose body does not parse is still leased,
    /// marked `unreadable`.
    pub async fn take(
        &self,
        worker: &str,
        lanes: &[String],
        count: usize,
        block: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        let (leases, next_due) = self.take_now(worker, lanes, count).await?;
        if !leases.is_empty() || block.is_zero() || lanes.is_empty() {
            return Ok(leases);
        }
        // A job of the delayed set due sooner than the wait is taken at its time.
        let block = match next_due {
            None => block,
            Some(in_ms) => block.min(Duration::from_millis(in_ms.max(1))),
        };
        // A submission leaves a token in its lane's wake list: one waiting worker gets it.
        let keys = &self.inner.keys;
        let mut wait = redis::cmd("BLPOP");
        for lane in lanes {
            wait.arg(keys.key(&format!("wake:{lane}")));
        }
        let _: Option<(String, String)> =
            wait.arg(block.as_secs_f64()).query_async(&mut self.inner.blocking.clone()).await.map_err(from_redis)?;
        Ok(self.take_now(worker, lanes, count).await?.0)
    }

    /// The take script once: the leases, and in how many ms the delayed set's next job is due
    /// (by Redis's clock; none when it is empty).
    async fn take_now(
        &self,
        worker: &str,
        lanes: &[String],
        count: usize,
    ) -> Result<(Vec<Lease>, Option<u64>), QueueError> {
        let keys = &self.inner.keys;
        let mut invocation = self.inner.scripts.take.key(keys.key("leases"));
        invocation.key(keys.key("stats")).key(keys.key("delayed"));
        invocation.arg(worker).arg(&keys.prefix).arg(keys.job_prefix()).arg(count);
        for lane in lanes {
            invocation.arg(lane);
        }
        let (started, next_due): (Vec<Taken>, i64) =
            invocation.invoke_async(&mut self.conn()).await.map_err(from_redis)?;
        let leases = started.into_iter().map(taken).collect();
        Ok((leases, u64::try_from(next_due).ok()))
    }

    /// Move what a queue written by an earlier version (one stream, `jobs`, read by
    /// `XREADGROUP`) still holds into the lanes: entries never delivered, and entries whose old
    /// worker's lease lapsed. Safe to repeat; nothing to do (one `EXISTS`) once it is gone.
    /// Returns how many jobs were moved.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses a read or the script.
    pub async fn migrate_legacy(&self, worker: &str) -> Result<u64, QueueError> {
        let keys = &self.inner.keys;
        let legacy = keys.key("jobs");
        let exists: bool = redis::cmd("EXISTS").arg(&legacy).query_async(&mut self.conn()).await.map_err(from_redis)?;
        if !exists {
            return Ok(0);
        }
        let mut entries: Vec<(String, String, &str)> = Vec::new();
        let fresh: Result<Option<redis::streams::StreamReadReply>, _> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(WORKERS_GROUP)
            .arg(worker)
            .arg("COUNT")
            .arg(256)
            .arg("STREAMS")
            .arg(&legacy)
            .arg(">")
            .query_async(&mut self.conn())
            .await;
        match fresh {
            Ok(reply) => entries.extend(reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).map(|e| {
                let id = e.get::<String>("job").unwrap_or_default();
                (e.id, id, "fresh")
            })),
            // No group on the old stream: no worker of that version ever read it.
            Err(e) if e.code() == Some("NOGROUP") => {}
            Err(e) => return Err(from_redis(e)),
        }
        if let Ok(lapsed) = redis::cmd("XAUTOCLAIM")
            .arg(&legacy)
            .arg(WORKERS_GROUP)
            .arg(worker)
            .arg(self.inner.settings.lease_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(256)
            .query_async::<StreamAutoClaimReply>(&mut self.conn())
            .await
        {
            entries.extend(
                lapsed
                    .claimed
                    .into_iter()
                    .map(|e| (e.id.clone(), e.get::<String>("job").unwrap_or_default(), "lapsed")),
            );
        }
        let mut moved = 0;
        for (entry, id, how) in entries {
            let requeued: i64 = self
                .inner
                .scripts
                .migrate
                .key(&legacy)
                .key(keys.job(&id))
                .arg(&entry)
                .arg(&id)
                .arg(&keys.prefix)
                .arg(how)
                .invoke_async(&mut self.conn())
                .await
                .map_err(from_redis)?;
            moved += u64::try_from(requeued).unwrap_or(0);
        }
        // Emptied: gone, so later looks are one EXISTS (an old worker still holding an entry keeps
        // it until it settles that entry).
        let _: Result<i64, _> = redis::Script::new(
            "if redis.call('XLEN', KEYS[1]) == 0 then return redis.call('DEL', KEYS[1]) end return 0",
        )
        .key(&legacy)
        .invoke_async(&mut self.conn())
        .await;
        Ok(moved)
    }

    /// Take over jobs whose worker has not renewed its lease for `lease_ms` (it died), looking
    /// through the pending entries from `cursor` (`0-0` at first); returns the leases and where
    /// to look next time (`0-0` once the whole list was seen), so no entry is out of reach
    /// however many live ones come before it.
    ///
    /// # Errors
    /// As [`RedisQueue::take`].
    pub async fn reclaim(&self, worker: &str, count: usize, cursor: &str) -> Result<(Vec<Lease>, String), QueueError> {
        let keys = &self.inner.keys;
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(keys.key("leases"))
            .arg(WORKERS_GROUP)
            .arg(worker)
            .arg(self.inner.settings.lease_ms)
            .arg(cursor)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn())
            .await
            .map_err(from_redis)?;
        let claimed: Vec<(String, String)> =
            reply.claimed.into_iter().map(|e| (e.id.clone(), e.get::<String>("job").unwrap_or_default())).collect();
        Ok((self.start(worker, &claimed, true).await?, reply.next_stream_id))
    }

    async fn start(&self, worker: &str, entries: &[(String, String)], claimed: bool) -> Result<Vec<Lease>, QueueError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let keys = &self.inner.keys;
        let mut invocation = self.inner.scripts.start.key(keys.key("leases"));
        invocation.key(keys.key("stats")).arg(worker).arg(keys.job_prefix()).arg(if claimed { "1" } else { "0" });
        for (entry, id) in entries {
            invocation.arg(entry).arg(id);
        }
        let started: Vec<(String, String, u32)> =
            invocation.invoke_async(&mut self.conn()).await.map_err(from_redis)?;
        Ok(started
            .into_iter()
            .map(|(entry, body, attempt)| {
                let named = entries.iter().find(|(e, _)| *e == entry).map(|(_, id)| id.clone()).unwrap_or_default();
                lease(entry, &body, attempt, named, None)
            })
            .collect())
    }

    /// Keep holding a running job; false when the lease was lost (another worker took it).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses the script. A lost lease is `Ok(false)`, not an error.
    pub async fn renew(&self, worker: &str, lease: &Lease) -> Result<bool, QueueError> {
        let keys = &self.inner.keys;
        let held: i64 = self
            .inner
            .scripts
            .renew
            .key(keys.key("leases"))
            .key(keys.job(&lease.job.id))
            .arg(&lease.entry)
            .arg(worker)
            .invoke_async(&mut self.conn())
            .await
            .map_err(from_redis)?;
        Ok(held == 1)
    }

    /// Ask for job `id` to be cancelled: the worker running it stops it (its lease renewal looks
    /// every `lease_ms / 3`), and a worker that takes it later ends it at once, cancelled. The
    /// request is kept for `results_ttl_s` plus [`CANCEL_HELD_FOR_TURN_S`], so it outlasts a job
    /// held to a run limit's turn (at most a day) before any worker takes it; while the job's hash
    /// lives, its `cancel` field says the same to the take. An operator's
    /// [`RedisQueue::requeue`] of the dead job forgets both.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses the script.
    pub async fn request_cancel(&self, id: &str) -> Result<(), QueueError> {
        let keys = &self.inner.keys;
        let ttl_s = self.settings().results_ttl_s.max(1).saturating_add(CANCEL_HELD_FOR_TURN_S);
        self.guarded(async {
            self.inner
                .scripts
                .cancel
                .key(keys.key(&format!("cancel:{id}")))
                .key(keys.job(id))
                .arg(ttl_s)
                .invoke_async::<()>(&mut self.conn())
                .await
                .map_err(from_redis)
        })
        .await
    }

    /// Whether job `id` was asked to be cancelled.
    ///
    /// # Errors
    /// As [`RedisQueue::request_cancel`].
    pub async fn cancel_requested(&self, id: &str) -> Result<bool, QueueError> {
        let key = self.inner.keys.key(&format!("cancel:{id}"));
        self.guarded(async {
            redis::cmd("EXISTS").arg(key).query_async::<bool>(&mut self.conn()).await.map_err(from_redis)
        })
        .await
    }

    /// `script` with the keys every settling script starts with: stream, job, result, done
    /// stream, stats.
    fn settling<'a>(&'a self, script: &'a Script, id: &str) -> redis::ScriptInvocation<'a> {
        let keys = &self.inner.keys;
        let mut invocation = script.key(keys.key("leases"));
        invocation.key(keys.job(id)).key(keys.result(id)).key(keys.key("done")).key(keys.key("stats"));
        invocation
    }

    /// The attempt finished (output or a deterministic failure): settle the job with `result`.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses the script. A job already settled (its lease lost) is [`Completion::Duplicate`], not
    /// an error.
    pub async fn complete(&self, worker: &str, lease: &Lease, result: &JobResult) -> Result<Completion, QueueError> {
        let said: String = self
            .completing(&self.inner.scripts.complete, worker, lease, result)
            .invoke_async(&mut self.conn())
            .await
            .map_err(from_redis)?;
        Ok(completion(&said))
    }

    /// [`RedisQueue::complete`], then, in the same request, take up to `count` jobs from `lanes`
    /// as [`RedisQueue::take`] would without waiting: a worker's slot goes from one job to the
    /// next in one round trip. The completion stands whatever the taking finds (no job, or a
    /// stream without its consumer group: then no job, and the next plain take says why).
    ///
    /// # Errors
    /// As [`RedisQueue::complete`]. On an error neither the completion nor the taking is known
    /// to have happened: a script whose reply was lost may have leased jobs to `worker` that it
    /// never learns of (they run once their lease lapses and a take-over finds them). Settle
    /// again with [`RedisQueue::complete`], which takes nothing (a second completion is a
    /// duplicate).
    pub async fn complete_take(
        &self,
        worker: &str,
        lease: &Lease,
        result: &JobResult,
        lanes: &[String],
        count: usize,
    ) -> Result<(Completion, Vec<Lease>), QueueError> {
        let keys = &self.inner.keys;
        let mut invocation = self.completing(&self.inner.scripts.complete_take, worker, lease, result);
        invocation.key(keys.key("delayed"));
        invocation.arg(&keys.prefix).arg(keys.job_prefix()).arg(count);
        for lane in lanes {
            invocation.arg(lane);
        }
        let (said, started, _next_due): (String, Vec<Taken>, i64) =
            invocation.invoke_async(&mut self.conn()).await.map_err(from_redis)?;
        let leases = started.into_iter().map(taken).collect();
        Ok((completion(&said), leases))
    }

    /// The complete script's invocation for this attempt's `result` (its keys and first eight
    /// arguments: `complete_take` adds its own after them).
    fn completing<'a>(
        &'a self,
        script: &'a Script,
        worker: &str,
        lease: &Lease,
        result: &JobResult,
    ) -> redis::ScriptInvocation<'a> {
        let keys = &self.inner.keys;
        let settings = &self.inner.settings;
        let text = serde_json::to_string(result).expect("a job result is plain data");
        // The done stream's copy leaves the output out: an API node's audit writer reads it in
        // batches, and the output (up to `output_bytes_max`) is in the result key.
        let audited = JobResult { output: None, ..result.clone() };
        let audited = serde_json::to_string(&audited).expect("a job result is plain data");
        let mut invocation = self.settling(script, &lease.job.id);
        invocation
            .arg(&lease.entry)
            .arg(worker)
            .arg(text)
            .arg(settings.results_ttl_s)
            .arg(settings.done_kept_max)
            .arg(keys.key("finished"))
            .arg(&lease.job.id)
            .arg(audited);
        invocation
    }

    /// The attempt (`attempt`, its result) failed in a way worth retrying: back off
    /// (`delay_ms`), or, on the last attempt, bury the job in the dead-letter stream with
    /// `last` (status `dead`) as its result. Either way the attempt goes to the done stream.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses the script. A job already settled (its lease lost) is [`Disposition::Duplicate`],
    /// not an error.
    pub async fn fail(
        &self,
        worker: &str,
        lease: &Lease,
        delay_ms: u64,
        attempt: &JobResult,
        last: &JobResult,
    ) -> Result<Disposition, QueueError> {
        let keys = &self.inner.keys;
        let settings = &self.inner.settings;
        let text = serde_json::to_string(last).expect("a job result is plain data");
        let attempt = serde_json::to_string(attempt).expect("a job result is plain data");
        let now = now_unix_ms();
        let said: String = self
            .settling(&self.inner.scripts.fail, &lease.job.id)
            .key(keys.key("delayed"))
            .key(keys.key("dead"))
            .arg(&lease.entry)
            .arg(worker)
            .arg(&lease.job.id)
            .arg(delay_ms)
            .arg(text)
            .arg(settings.results_ttl_s)
            .arg(settings.dead_ttl_s)
            .arg(settings.done_kept_max)
            .arg(settings.dead_kept_max)
            .arg(serde_json::to_string(&last.error).expect("a failure is plain data"))
            .arg(last.bundle.map(|b| b.to_hex()).unwrap_or_default())
            .arg(now)
            .arg(keys.key("finished"))
            .arg(attempt)
            .invoke_async(&mut self.conn())
            .await
            .map_err(from_redis)?;
        Ok(match said.as_str() {
            "retry" => Disposition::Retry { delay_ms },
            "dead" => Disposition::Dead,
            _ => Disposition::Duplicate,
        })
    }

    /// Queue again the retries whose backoff is over (in their lanes, at their priority); returns
    /// how many.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses the script.
    pub async fn promote(&self) -> Result<u64, QueueError> {
        let keys = &self.inner.keys;
        self.inner
            .scripts
            .promote
            .key(keys.key("delayed"))
            .arg(256)
            .arg(keys.job_prefix())
            .arg(&keys.prefix)
            .invoke_async(&mut self.conn())
            .await
            .map_err(from_redis)
    }

    /// The dead-letter stream, oldest first, at most `count`.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses the read. A field that does not parse is left empty, not an error.
    pub async fn dead(&self, count: usize) -> Result<Vec<DeadJob>, QueueError> {
        let keys = &self.inner.keys;
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(keys.key("dead"))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn())
            .await
            .map_err(from_redis)?;
        Ok(reply
            .ids
            .into_iter()
            .map(|entry| DeadJob {
                id: entry.get("job").unwrap_or_default(),
                tenant: entry.get("tenant").unwrap_or_default(),
                tool: entry.get("tool").unwrap_or_default(),
                attempts: entry.get("attempts").unwrap_or_default(),
                error: entry.get::<String>("error").and_then(|text| serde_json::from_str(&text).ok()),
                bundle: entry.get::<String>("bundle").and_then(|hex| hex.parse::<Digest>().ok()),
                dead_unix_ms: entry.get("time").unwrap_or_default(),
            })
            .collect())
    }

    /// Put a dead job back in the queue with fresh attempts; false when it is not dead.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses the script.
    pub async fn requeue(&self, id: &str) -> Result<bool, QueueError> {
        let keys = &self.inner.keys;
        let moved: i64 = self
            .inner
            .scripts
            .requeue
            .key(keys.job(id))
            .key(keys.result(id))
            .key(keys.key("dead"))
            .arg(id)
            .arg(&keys.prefix)
            .invoke_async(&mut self.conn())
            .await
            .map_err(from_redis)?;
        Ok(moved == 1)
    }

    /// Which of these jobs Redis still knows (a job hash or a result), one round trip per
    /// thousand: an awaited job it no longer knows expired before its result was read.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses a command.
    pub async fn known(&self, ids: &[String]) -> Result<Vec<bool>, QueueError> {
        let mut known = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1_000) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("EXISTS").arg(self.inner.keys.job(id)).arg(self.inner.keys.result(id));
            }
            let counts: Vec<u32> = pipe.query_async(&mut self.conn()).await.map_err(from_redis)?;
            known.extend(counts.into_iter().map(|n| n > 0));
        }
        Ok(known)
    }

    /// The results of these jobs, where they have one (one round trip per thousand): each read,
    /// or [`QueueError::Corrupt`] naming the field when this node cannot read it.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses a read.
    pub async fn results(&self, ids: &[String]) -> Result<Vec<Option<Result<JobResult, QueueError>>>, QueueError> {
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1_000) {
            let keys: Vec<String> = chunk.iter().map(|id| self.inner.keys.result(id)).collect();
            let texts: Vec<Option<String>> =
                redis::cmd("MGET").arg(keys).query_async(&mut self.conn()).await.map_err(from_redis)?;
            // One result this node cannot read (a node of another version wrote it) is that job's
            // answer, not every job's.
            found.extend(texts.into_iter().map(|text| text.map(|t| parse_result(&t))));
        }
        Ok(found)
    }
}

/// A lease on stream `entry` for the job `body` holds; `named`: the job its stream entry names
/// (the attempt settles that one, whatever the body says).
/// A job the take script started: its stream entry, body, attempt, id, and 1 when a cancel
/// was asked for.
type Taken = (String, String, u32, String, i64);

fn lease(entry: String, body: &str, attempt: u32, named: String, cancel_asked: Option<bool>) -> Lease {
    let (mut job, mut unreadable) = Job::read(body);
    if job.id != named {
        if unreadable.is_none() {
            unreadable = Some(format!("the job's body names job {:?}, its stream entry {named:?}", job.id));
        }
        job.id = named;
    }
    Lease { job, unreadable, entry, attempt, cancel_asked }
}

/// The lease on a job the take script started.
fn taken((entry, body, attempt, id, cancel): Taken) -> Lease {
    lease(entry, &body, attempt, id, Some(cancel == 1))
}

fn completion(said: &str) -> Completion {
    if said == "recorded" { Completion::Recorded } else { Completion::Duplicate }
}

pub(super) fn parse_result(text: &str) -> Result<JobResult, QueueError> {
    serde_json::from_str(text).map_err(|e| QueueError::Corrupt(format!("job result: {e}")))
}
