//! The records: what is said about a run or an event, and how each line is chained and hashed.

use guild_replay::Digest;
use guild_replay::canonical::to_canonical_bytes;
use guild_vocab::{AttemptEnd, PolicyRecord};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What the daemon says about a finished run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The run id (for an event: the run, bundle or stream entry it is about).
    pub run: String,
    /// The tenant the run was for, by name: whose run this record is.
    pub tenant: String,
    /// The subject within the tenant it ran for: an OAuth access token's `sub` (hashed where
    /// `[oauth] subject_record = "blake3"`); absent for a tenant's static token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The caller's agent label (`Guild-Agent`, MCP `_meta` `guild/agent`), when it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The tool's name.
    pub tool: String,
    /// blake3 of its component.
    pub tool_digest: Digest,
    /// Which revision of the tool's name ran, when the host keeps revisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    /// blake3 of the input.
    pub input_digest: Digest,
    /// The effective policy and limits the run had (or the grants, for a run that never
    /// resolved them); none for a record of an event.
    pub grants: Option<PolicyRecord>,
    /// `output`, `dead`, or the run's failure code as `guild_vocab::FailureCode` writes it
    /// (`tool_error`, `limit`, `trap`, `cancelled`, `denied`, `host_failure`, …); for an event,
    /// its kind.
    pub outcome: String,
    /// Fuel units the run burnt (0 for a run that never started, and for an event).
    pub fuel_used_units: u64,
    /// What the run cost under the daemon's `[pricing]`, from what its bundle records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<guild_replay::cost::Cost>,
    /// The bundle, when one was sealed.
    pub bundle: Option<Digest>,
    /// The caller's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// For a job run by a `guild worker`: which attempt this was, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// For a job run by a `guild worker`: the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// For a job run by a `guild worker`: `completed` (this attempt's result is the job's),
    /// `duplicate` (another attempt finished first: at-least-once), `retried` (it failed in a
    /// way worth retrying; another attempt follows) or `dead` (the last attempt failed; the job
    /// is in the dead-letter stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<AttemptEnd>,
    /// For a record about something other than a finished run: what happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<AuditEvent>,
    /// The OpenTelemetry trace the run belongs to (32 hex digits), when tracing was on where it
    /// ran: from an audit record to the run's spans. Absent from older records, which hash as
    /// they always did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// Something besides a finished run that the audit trail must show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// `admin_read`: an admin read another tenant's run or bundle; `corrupt_done_entry`: a
    /// finished job's entry in Redis could not be read, and was moved to the dead-letter stream.
    pub kind: String,
    /// Who: the admin tenant, or `redis`.
    pub actor: String,
    /// What was read (`bundle <id>`, `run <id>`), or what was wrong.
    pub detail: String,
}

impl AuditEntry {
    /// A record of `event`, about `subject` (a run or bundle id, a stream entry) of `tenant`.
    pub fn event(event: AuditEvent, subject: &str, tenant: &str) -> Self {
        let none = Digest::from_bytes([0; 32]);
        Self {
            run: subject.to_string(),
            tenant: tenant.to_string(),
            subject: None,
            agent: None,
            tool: String::new(),
            tool_digest: none,
            revision: None,
            input_digest: none,
            grants: None,
            outcome: event.kind.clone(),
            fuel_used_units: 0,
            cost: None,
            bundle: None,
            idempotency_key: None,
            attempt: None,
            worker: None,
            completion: None,
            event: Some(event),
            trace_id: None,
        }
    }
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1, 2, 3, … without gaps.
    pub seq: u64,
    /// When it was written, ms since the Unix epoch.
    pub time_unix_ms: u64,
    /// `hash` of the record before (all zeros for the first).
    pub prev: Digest,
    /// What the record says, flattened into the same JSON object as the chain's fields.
    #[serde(flatten)]
    pub entry: AuditEntry,
    /// blake3 of this record's canonical form without `hash`.
    pub hash: Digest,
}

impl AuditRecord {
    pub(crate) fn compute_hash(&self) -> Digest {
        // Destructured, so that a field added to the record cannot be left out of its hash.
        let AuditRecord { seq, time_unix_ms, prev, entry, hash: _ } = self;
        let unhashed = Unhashed { seq: *seq, time_unix_ms: *time_unix_ms, prev, entry };
        // A record is plain data: hashing the empty bytes in its place would chain a lie.
        Digest::of(&to_canonical_bytes(&unhashed).expect("an audit record is plain data"))
    }
}

/// A record as it is hashed: every field of [`AuditRecord`] but `hash`, in the same JSON object.
#[derive(Serialize)]
struct Unhashed<'a> {
    seq: u64,
    time_unix_ms: u64,
    prev: &'a Digest,
    #[serde(flatten)]
    entry: &'a AuditEntry,
}

/// The log could not be opened, written or trusted.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file operation failed.
    #[error("audit log {path}: {source}")]
    Io {
        /// The audit log being opened, read or written.
        path: PathBuf,
        /// What failed: the operating system's error, or the writer thread's report of one.
        source: std::io::Error,
    },
    /// The chain is broken at a record.
    #[error("audit log {path}: record at line {line} (seq {seq}) is broken: {reason}")]
    Broken {
        /// The audit log whose chain is broken.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// The seq the line should have had.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// The writer thread has stopped.
    #[error("the audit log writer has stopped; the run's record was not written")]
    Stopped,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash as records written before the canonical serializer computed it: the record as a
    /// JSON value, `hash` removed, keys sorted. Logs already on disk must keep verifying.
    fn hash_via_value(record: &AuditRecord) -> Digest {
        let mut value = serde_json::to_value(record).expect("plain data");
        value.as_object_mut().expect("an object").remove("hash");
        Digest::of(&to_canonical_bytes(&value).expect("plain data"))
    }

    #[test]
    fn the_hash_is_that_of_the_record_without_its_hash_as_before() {
        let grants = PolicyRecord::granted(Default::default(), Default::default());
        let entry = AuditEntry {
            run: "run-1".into(),
            tenant: "alice \"quoted\"".into(),
            subject: None,
            agent: None,
            tool: "wc".into(),
            tool_digest: Digest::of(b"wc"),
            revision: None,
            input_digest: Digest::of(b"input"),
            grants: Some(grants),
            outcome: "output".into(),
            fuel_used_units: 42,
            cost: None,
            bundle: Some(Digest::of(b"bundle")),
            idempotency_key: Some("key\u{1}".into()),
            attempt: Some(2),
            worker: Some("worker-1".into()),
            completion: Some(AttemptEnd::Completed),
            event: Some(AuditEvent { kind: "admin_read".into(), actor: "root".into(), detail: "run run-1".into() }),
            trace_id: None,
        };
        let mut record = AuditRecord {
            seq: 7,
            time_unix_ms: 1_764_000_000_000,
            prev: Digest::of(b"prev"),
            entry,
            hash: Digest::of(b""),
        };
        assert_eq!(record.compute_hash(), hash_via_value(&record));
        record.entry.grants = None;
        record.entry.attempt = None;
        record.entry.event = None;
        assert_eq!(record.compute_hash(), hash_via_value(&record));
    }
}
