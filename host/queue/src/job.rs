//! Jobs and their results as plain data: what an API node puts on a shared queue and what a
//! worker on any machine needs to run it, then what it leaves for every node to read.

use guild_replay::Digest;
use guild_vocab::{Failure, Grants, Limits, PolicyRecord, RunStatus};
use serde::{Deserialize, Serialize};

/// One run to do, as it travels between machines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The run id (32 hex characters), also the job's key.
    pub id: String,
    /// The tenant that submitted it, by name: the run's owner and whose grants it carries.
    pub tenant: String,
    /// The subject within the tenant it runs for (an OAuth access token's `sub`, as recorded),
    /// named in the bundle's principal; absent for a tenant's static token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The tool's name, for logs and metrics.
    pub tool: String,
    /// blake3 of the component: workers fetch it by this.
    pub tool_digest: Digest,
    /// Which revision of the tool's name the API node routed the call to (named in the bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    /// The input JSON text.
    pub input: String,
    /// blake3 of `input`.
    pub input_digest: Digest,
    /// The grants the run gets. Secret values never travel (they are not serialized), only
    /// their names and where they may go: a worker reads the values from its own configuration.
    pub grants: Grants,
    /// The limits the run gets.
    pub limits: Limits,
    /// The caller's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// Attempts allowed before the job goes to the dead-letter stream.
    pub attempts_max: u32,
    /// When it was submitted, ms since the Unix epoch.
    pub submitted_unix_ms: u64,
    /// For a cached tool: the bounds of its shared entries. The worker then runs it hermetic,
    /// answers it from an entry when one fits, and stores its result when its tape proves it
    /// reusable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::JobCache>,
    /// The API node's `[pricing]`: the worker prices the run with it, from what its bundle
    /// records, so a job's cost is the one a run here would have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<guild_replay::cost::PriceTable>,
    /// The budgets the run counts against (reserved by the API node): the worker holds its LLM
    /// requests to them, in the budgets the fleet shares in Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<crate::BudgetPlan>,
    /// The caller's agent label, for the ledger and the audit record; within its tenant's turns,
    /// each label takes its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// 0 to [`PRIORITY_MAX`](crate::PRIORITY_MAX): higher is taken first.
    #[serde(default = "priority_default")]
    pub priority: u8,
    /// What the worker must have: its lane.
    #[serde(default, skip_serializing_if = "crate::Needs::is_empty")]
    pub needs: crate::Needs,
    /// The tenant's weight: jobs it takes per turn (1 to [`WEIGHT_MAX`](crate::WEIGHT_MAX)).
    #[serde(default = "weight_default")]
    pub weight: u32,
    /// Held to a run limit's turn: queued in its lane this many ms after Redis took it (by
    /// Redis's clock, so clocks that disagree do not move the turn); none: at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// The W3C trace context of the API node's enqueue span, when tracing is on there: the
    /// worker's spans join the caller's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<guild_telemetry::TraceContext>,
}

fn priority_default() -> u8 {
    crate::PRIORITY_DEFAULT
}

fn weight_default() -> u32 {
    1
}

/// How a job ended: what `GET /v1/runs/{id}` shows on every node and what the audit log keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// The run id.
    pub id: String,
    /// The tenant that submitted it, by name: the only one (besides an admin) it answers.
    pub tenant: String,
    /// The subject within the tenant it ran for, as the job named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The caller's agent label, as the job named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The tool's name.
    pub tool: String,
    /// blake3 of the component.
    pub tool_digest: Digest,
    /// Which revision of the tool's name ran, when the API node routed it to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    /// blake3 of the input.
    pub input_digest: Digest,
    /// The caller's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// Succeeded, failed (deterministically: tool error, limit, denial, trap) or dead
    /// (retryable failures until the last attempt).
    pub status: RunStatus,
    /// Why it failed; null on success.
    pub error: Option<Failure>,
    /// The tool's output text, on success.
    pub output: Option<String>,
    /// The attempt's bundle, when one was sealed.
    pub bundle: Option<Digest>,
    /// Fuel burnt by the attempt.
    pub fuel_used_units: u64,
    /// Wall time of the attempt, µs.
    pub wall_time_us: u64,
    /// The effective policy and limits the attempt had (for the audit log); none for a job
    /// whose body could not be read.
    pub policy: Option<PolicyRecord>,
    /// Which attempt this was, from 1.
    pub attempt: u32,
    /// The worker that ran it.
    pub worker: String,
    /// For a cached tool: what the result cache did — `hit` or `merged` (answered with another
    /// run's output and bundle, no fuel burnt), `stored`, or `miss: WHY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// What the attempt cost under the job's `pricing`, from what its bundle records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<guild_replay::cost::Cost>,
    /// The tokens each LLM upstream of the job's price table (by URL prefix) was used for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<(String, guild_replay::cost::TokenCount)>,
    /// The W3C trace context of the worker's span for this attempt, when tracing is on there:
    /// the API node's audit write joins the trace, and `GET /v1/runs/{id}` shows its trace id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<guild_telemetry::TraceContext>,
}

/// A job a worker holds: it runs it, renews the lease while it does, then completes or fails it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// The job. When its body could not be read (a node of another version wrote a field this
    /// one does not know), only what could be read: see `unreadable`.
    pub job: Job,
    /// Why the job's body could not be read, naming the field; the worker fails such a job
    /// (`bad_job`) rather than guess.
    pub unreadable: Option<String>,
    /// The stream entry that delivered it; the lease is on this entry.
    pub entry: String,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// Whether a cancel was asked for when it was taken (`None`: not looked at then; ask
    /// [`crate::RedisQueue::cancel_requested`]).
    pub cancel_asked: Option<bool>,
}

impl Job {
    /// Read a job's body as a worker takes it: the job, or what could be read of it and why the
    /// rest could not (so that it can be failed with a reason instead of lost).
    pub fn read(body: &str) -> (Self, Option<String>) {
        match serde_json::from_str(body) {
            Ok(job) => (job, None),
            Err(e) => {
                let value: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
                let text = |field: &str| value.get(field).and_then(|v| v.as_str()).unwrap_or_default().to_string();
                let digest = |field: &str| value.get(field).and_then(|v| v.as_str()).and_then(|h| h.parse().ok());
                let none = Digest::from_bytes([0; 32]);
                let job = Self {
                    id: text("id"),
                    tenant: text("tenant"),
                    subject: value.get("subject").and_then(|v| v.as_str()).map(str::to_string),
                    tool: text("tool"),
                    tool_digest: digest("tool_digest").unwrap_or(none),
                    revision: None,
                    input: String::new(),
                    input_digest: digest("input_digest").unwrap_or(none),
                    grants: Grants::default(),
                    limits: Limits::default(),
                    idempotency_key: value.get("idempotency_key").and_then(|v| v.as_str()).map(str::to_string),
                    attempts_max: 1,
                    submitted_unix_ms: 0,
                    cache: None,
                    pricing: None,
                    budget: None,
                    agent: value.get("agent").and_then(|v| v.as_str()).map(str::to_string),
                    priority: crate::PRIORITY_DEFAULT,
                    needs: crate::Needs::default(),
                    weight: 1,
                    delay_ms: None,
                    trace: None,
                };
                (job, Some(format!("the job's body does not fit this worker's version: {e}")))
            }
        }
    }
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting in the stream.
    Queued,
    /// A worker holds it.
    Running,
    /// Waiting out a retry's backoff.
    Delayed,
    /// Finished; its result is kept.
    Done,
    /// Out of attempts; in the dead-letter stream.
    Dead,
}

impl JobState {
    /// The word the API shows.
    pub fn word(self) -> &'static str {
        match self {
            Self::Queued | Self::Delayed => "queued",
            Self::Running => "running",
            Self::Done | Self::Dead => "finished",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "delayed" => Self::Delayed,
            "done" => Self::Done,
            "dead" => Self::Dead,
            _ => return None,
        })
    }
}

/// A job's state as any node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStatus {
    /// For a queued job whose lane no live worker serves: the lane (what it needs, such as
    /// `gpu`). It waits rather than run degraded.
    pub waiting_for_capability: Option<String>,
    /// The tenant that submitted it.
    pub tenant: String,
    /// The subject within the tenant that submitted it (an OAuth access token's); `None` for a
    /// static token.
    pub subject: Option<String>,
    /// The tool's name.
    pub tool: String,
    /// blake3 of its input (an idempotency key must name the same tool and input).
    pub input_digest: Option<Digest>,
    /// Where it is.
    pub state: JobState,
    /// Attempts started so far.
    pub attempts: u32,
    /// Its result, once done or dead (until it expires).
    pub result: Option<JobResult>,
    /// Why this node cannot read the job's result, when it has one it cannot read (a node of
    /// another version wrote it); the job's owner is still known, so it is told, not others.
    pub unreadable_result: Option<String>,
}

/// What a submission did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The job's id: the submitted one, or the first job's for a reused idempotency key.
    pub id: String,
    /// True when the idempotency key already named a job.
    pub existing: bool,
    /// False when `ack_durability = "replica"` asked a replica to confirm the job and none did
    /// within `ack_timeout_ms`: the job is queued (and may run), but not acknowledged as durable.
    pub confirmed: bool,
}

/// What completing a job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// This attempt's result is the job's result.
    Recorded,
    /// Another attempt already finished the job, or took it over after this worker's lease
    /// lapsed: this attempt is kept as a duplicate (its bundle and audit record remain).
    Duplicate,
}

/// What failing an attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Back in the queue after this delay.
    Retry {
        /// The backoff, ms.
        delay_ms: u64,
    },
    /// That was the last attempt: the job is in the dead-letter stream.
    Dead,
    /// The lease had lapsed and another worker holds the job.
    Duplicate,
}

/// One entry of the dead-letter stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadJob {
    /// The job id.
    pub id: String,
    /// The tenant that submitted it, by name.
    pub tenant: String,
    /// The tool's name.
    pub tool: String,
    /// Attempts made, each ending in a retryable failure: at least the job's `attempts_max`.
    pub attempts: u32,
    /// The last attempt's error (none when it could not be read back).
    pub error: Option<Failure>,
    /// The last attempt's bundle, if it sealed one.
    pub bundle: Option<Digest>,
    /// When it died, ms since the Unix epoch.
    pub dead_unix_ms: u64,
}

/// Counts for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Jobs waiting in the stream, not yet delivered.
    pub depth: u64,
    /// Jobs delivered to a worker and not yet finished.
    pub pending: u64,
    /// Jobs waiting out a retry backoff.
    pub delayed: u64,
    /// Jobs in the dead-letter stream.
    pub dead: u64,
    /// Jobs taken over from workers whose lease lapsed, ever.
    pub claims: u64,
    /// Retries scheduled, ever.
    pub retries: u64,
    /// Jobs completed, ever.
    pub completed: u64,
    /// Attempts that finished after another attempt had (at-least-once duplicates), ever.
    pub duplicates: u64,
    /// Live workers: name and jobs completed since it started.
    pub workers: Vec<WorkerStats>,
    /// Per lane: jobs queued, and whether a live worker serves it.
    pub lanes: Vec<LaneStats>,
}

/// One lane's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneStats {
    /// The lane's name ([`DEFAULT_LANE`](crate::DEFAULT_LANE), or its needs such as `gpu`).
    pub lane: String,
    /// Jobs queued in it.
    pub depth: u64,
    /// Live workers that read it.
    pub workers: u64,
}

/// A worker's heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// The worker's consumer name in the queue's group (`guild worker --name`, by default
    /// `worker-<host>-<pid>`): the `worker` label of its metrics.
    pub name: String,
    /// Jobs it completed since it started.
    pub completed: u64,
    /// Jobs it runs now.
    pub running: u64,
    /// Jobs it may run at once (`--concurrency`).
    #[serde(default)]
    pub slots: u64,
    /// Its last heartbeat, ms since the Unix epoch.
    pub seen_unix_ms: u64,
    /// What it has: GPU, memory, architecture, labels.
    #[serde(default)]
    pub advertisement: crate::Advertisement,
    /// The lanes it reads, most demanding first.
    #[serde(default)]
    pub lanes: Vec<String>,
    /// This process's own random id: two live workers sending the same `name` (a mistake:
    /// their heartbeats overwrite each other) are told apart by it.
    #[serde(default)]
    pub instance: String,
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_round_trips_as_json() {
        let job = Job {
            id: "ab".repeat(16),
            tenant: "alice".into(),
            subject: Some("agent-7".into()),
            tool: "wc".into(),
            tool_digest: Digest::of(b"component"),
            revision: None,
            input: "{}".into(),
            input_digest: Digest::of(b"{}"),
            grants: Grants::default(),
            limits: Limits { fuel_units: 1, ..Limits::default() },
            idempotency_key: Some("k".into()),
            attempts_max: 3,
            submitted_unix_ms: 1,
            cache: None,
            pricing: None,
            budget: None,
            agent: None,
            priority: crate::PRIORITY_DEFAULT,
            needs: crate::Needs::default(),
            weight: 1,
            delay_ms: None,
            trace: None,
        };
        let text = serde_json::to_string(&job).expect("serializes");
        assert_eq!(serde_json::from_str::<Job>(&text).expect("parses"), job);
    }

    #[test]
    fn a_job_from_a_node_that_disagrees_is_refused_naming_the_field() {
        let mut value = serde_json::to_value(job_with_limits()).expect("serializes");
        value["limits"]["fuel"] = 1.into();
        let err = serde_json::from_value::<Job>(value).expect_err("an unknown limit");
        assert!(err.to_string().contains("unknown field `fuel`"), "{err}");
        let mut value = serde_json::to_value(job_with_limits()).expect("serializes");
        value["grants"]["mounts"] = serde_json::json!([{ "host_path": "/d", "guest_path": "/d", "access": "all" }]);
        let err = serde_json::from_value::<Job>(value).expect_err("an unknown access");
        assert!(err.to_string().contains("unknown variant `all`"), "{err}");
    }

    #[test]
    fn an_unreadable_job_keeps_its_id_and_says_why() {
        let mut value = serde_json::to_value(job_with_limits()).expect("serializes");
        value["limits"]["fuel"] = 1.into();
        let (job, unreadable) = Job::read(&value.to_string());
        assert_eq!(job.id, "cd".repeat(16));
        assert_eq!(job.tenant, "bob");
        assert!(unreadable.expect("unreadable").contains("unknown field `fuel`"));
        let (read, unreadable) = Job::read(&serde_json::to_string(&job_with_limits()).expect("serializes"));
        assert_eq!((read, unreadable), (job_with_limits(), None));
    }

    fn job_with_limits() -> Job {
        Job {
            id: "cd".repeat(16),
            tenant: "bob".into(),
            subject: None,
            tool: "wc".into(),
            tool_digest: Digest::of(b"component"),
            revision: None,
            input: "{}".into(),
            input_digest: Digest::of(b"{}"),
            grants: Grants::default(),
            limits: Limits::default(),
            idempotency_key: None,
            attempts_max: 1,
            submitted_unix_ms: 1,
            cache: None,
            pricing: None,
            budget: None,
            agent: None,
            priority: crate::PRIORITY_DEFAULT,
            needs: crate::Needs::default(),
            weight: 1,
            delay_ms: None,
            trace: None,
        }
    }
}
