//! The audit log: one JSON line per finished run — who (tenant), what (tool digest, input
//! digest), under which grants, how it ended, and which bundle resulted. Append-only and
//! hash-chained: each record's `hash` is blake3 over its canonical form (without `hash`), which
//! includes `prev`, the hash of the record before. Records are written by one thread in
//! batches, each batch fsynced before any of its runs is answered (group commit). A small
//! `.head` file beside the log names the last record, so cutting records off the end is
//! detected too.

use guild_replay::Digest;
use guild_replay::canonical::to_canonical_bytes;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// Records written per batch at most (one fsync each).
const BATCH_RECORDS_MAX: usize = 4096;
/// Size of the `.head` file: `{"seq":…,"hash":"…"}` is under 110 bytes.
const HEAD_BYTES: usize = 128;
/// Longest line `verify` reads: a record is a few hundred bytes; a longer line is damage.
const RECORD_BYTES_MAX: usize = 1024 * 1024;

/// What the daemon says about a finished run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The run id.
    pub run: String,
    /// Who asked.
    pub tenant: String,
    /// The tool's name.
    pub tool: String,
    /// blake3 of its component.
    pub tool_digest: Digest,
    /// blake3 of the input.
    pub input_digest: Digest,
    /// The effective policy and limits the run had.
    pub grants: serde_json::Value,
    /// `output`, `tool_error`, `limit`, `trap`, `denied`, `host_failure`.
    pub outcome: String,
    /// Fuel burnt.
    pub fuel_used_units: u64,
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
    pub completion: Option<String>,
    /// For a record about something other than a finished run: what happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<AuditEvent>,
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
            tool: String::new(),
            tool_digest: none,
            input_digest: none,
            grants: serde_json::Value::Null,
            outcome: event.kind.clone(),
            fuel_used_units: 0,
            bundle: None,
            idempotency_key: None,
            attempt: None,
            worker: None,
            completion: None,
            event: Some(event),
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
    /// The run.
    #[serde(flatten)]
    pub entry: AuditEntry,
    /// blake3 of this record's canonical form without `hash`.
    pub hash: Digest,
}

impl AuditRecord {
    fn compute_hash(&self) -> Digest {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.remove("hash");
        }
        Digest::of(&to_canonical_bytes(&value).unwrap_or_default())
    }
}

/// The log could not be opened, written or trusted.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file operation failed.
    #[error("audit log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The chain is broken at a record.
    #[error("audit log {path}: record at line {line} (seq {seq}) is broken: {reason}")]
    Broken {
        /// The file.
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

/// The last record of a log (or of its head file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Its seq (0 for an empty log).
    pub seq: u64,
    /// Its hash (zeros for an empty log).
    pub hash: Digest,
}

impl Head {
    const EMPTY: Head = Head { seq: 0, hash: Digest::from_bytes([0; 32]) };
}

fn head_path(log: &Path) -> PathBuf {
    let mut name = log.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".head");
    log.with_file_name(name)
}

/// Check the whole chain of the log at `path` and its head file, calling `each` for every good
/// record. Names the first broken record: unparsable or truncated line, wrong seq, wrong
/// `prev`, wrong `hash`, or records missing from the end.
pub fn verify(path: &Path, mut each: impl FnMut(&AuditRecord)) -> Result<Head, AuditError> {
    let io = |source| AuditError::Io { path: path.to_path_buf(), source };
    let mut head = Head::EMPTY;
    let file = match File::open(path) {
        Ok(file) => Some(file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    let broken =
        |line: u64, seq: u64, reason: String| AuditError::Broken { path: path.to_path_buf(), line, seq, reason };
    if let Some(file) = file {
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        let mut number = 0u64;
        loop {
            line.clear();
            let read = (&mut reader).take(RECORD_BYTES_MAX as u64 + 1).read_until(b'\n', &mut line).map_err(io)?;
            if read == 0 {
                break;
            }
            number += 1;
            let seq = head.seq + 1;
            if line.last() != Some(&b'\n') {
                return Err(broken(number, seq, "the line is truncated (no newline at its end)".into()));
            }
            let record: AuditRecord = serde_json::from_slice(&line[..line.len() - 1])
                .map_err(|e| broken(number, seq, format!("not a valid record: {e}")))?;
            if record.seq != seq {
                return Err(broken(number, seq, format!("seq is {}, expected {seq}", record.seq)));
            }
            if record.prev != head.hash {
                return Err(broken(number, seq, "prev does not match the hash of the record before".into()));
            }
            if record.compute_hash() != record.hash {
                return Err(broken(number, seq, "hash does not match its contents (edited?)".into()));
            }
            head = Head { seq: record.seq, hash: record.hash };
            each(&record);
        }
    }
    match std::fs::read(head_path(path)) {
        // Opened and closed before any record was appended: nothing to compare.
        Ok(bytes) if head.seq == 0 && bytes.iter().all(u8::is_ascii_whitespace) => {}
        Ok(bytes) => {
            let recorded: Head = serde_json::from_slice(&bytes).map_err(|e| {
                broken(
                    head.seq + 1,
                    head.seq + 1,
                    format!("the head file {} is unreadable: {e}", head_path(path).display()),
                )
            })?;
            if recorded.seq > head.seq || (recorded.seq == head.seq && recorded.hash != head.hash) {
                return Err(broken(
                    head.seq + 1,
                    head.seq + 1,
                    format!(
                        "the log ends at seq {} but its head file names seq {}: records were removed",
                        head.seq, recorded.seq
                    ),
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && head.seq == 0 => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(broken(head.seq, head.seq, format!("the head file {} is missing", head_path(path).display())));
        }
        Err(e) => return Err(io(e)),
    }
    Ok(head)
}

enum Request {
    Append(Box<AuditEntry>, oneshot::Sender<Result<u64, String>>),
}

/// The open log: appends go to its writer thread.
pub struct AuditLog {
    sender: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    path: PathBuf,
}

/// Where the writer appends: the log file (in tests, one that fails on demand).
trait LogFile: Send {
    /// Append `bytes` and make them durable.
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    /// Cut the file back to `len` bytes, durably.
    fn truncate(&mut self, len: u64) -> std::io::Result<()>;
}

impl LogFile for File {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes)?;
        self.sync_data()
    }

    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.set_len(len)?;
        self.sync_data()
    }
}

impl AuditLog {
    /// Open (or create) the log at `path`, verifying the chain first; `each` sees every
    /// existing record (the daemon rebuilds its run index from them).
    ///
    /// # Errors
    /// [`AuditError::Broken`] when the chain does not verify (the daemon then refuses to
    /// start), [`AuditError::Io`] when the files cannot be opened.
    pub fn open(path: &Path, each: impl FnMut(&AuditRecord)) -> Result<Self, AuditError> {
        Self::open_with(path, each, |file| Box::new(file))
    }

    fn open_with(
        path: &Path,
        each: impl FnMut(&AuditRecord),
        wrap: impl FnOnce(File) -> Box<dyn LogFile>,
    ) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io { path: path.to_path_buf(), source };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let head = verify(path, each)?;
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let head_file =
            OpenOptions::new().create(true).write(true).truncate(false).open(head_path(path)).map_err(io)?;
        let (sender, receiver) = mpsc::channel();
        let mut writer = Writer { file: wrap(file), len, head_file, head };
        let thread =
            std::thread::Builder::new().name("guild-audit".into()).spawn(move || writer.serve(receiver)).map_err(io)?;
        Ok(Self { sender: Mutex::new(Some(sender)), writer: Mutex::new(Some(thread)), path: path.to_path_buf() })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append a record; resolves once it is on disk (fsynced). Returns its seq.
    pub async fn append(&self, entry: AuditEntry) -> Result<u64, AuditError> {
        let (done, wait) = oneshot::channel();
        {
            let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
            let sender = sender.as_ref().ok_or(AuditError::Stopped)?;
            sender.send(Request::Append(Box::new(entry), done)).map_err(|_| AuditError::Stopped)?;
        }
        match wait.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(reason)) => Err(AuditError::Io { path: self.path.clone(), source: std::io::Error::other(reason) }),
            Err(_) => Err(AuditError::Stopped),
        }
    }

    /// Append several records, written together; resolves once all are on disk.
    pub async fn append_many(&self, entries: Vec<AuditEntry>) -> Result<(), AuditError> {
        let mut waits = Vec::with_capacity(entries.len());
        {
            let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
            let sender = sender.as_ref().ok_or(AuditError::Stopped)?;
            for entry in entries {
                let (done, wait) = oneshot::channel();
                sender.send(Request::Append(Box::new(entry), done)).map_err(|_| AuditError::Stopped)?;
                waits.push(wait);
            }
        }
        for wait in waits {
            match wait.await {
                Ok(Ok(_)) => {}
                Ok(Err(reason)) => {
                    return Err(AuditError::Io { path: self.path.clone(), source: std::io::Error::other(reason) });
                }
                Err(_) => return Err(AuditError::Stopped),
            }
        }
        Ok(())
    }

    /// Is the writer thread still taking records?
    pub fn is_running(&self) -> bool {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        writer.as_ref().is_some_and(|w| !w.is_finished())
    }

    /// Write what is queued and stop the writer; later appends fail.
    pub fn close(&self) {
        self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

struct Writer {
    file: Box<dyn LogFile>,
    /// Bytes of the log that hold whole, fsynced records.
    len: u64,
    head_file: File,
    head: Head,
}

impl Writer {
    fn serve(&mut self, receiver: mpsc::Receiver<Request>) {
        while let Ok(first) = receiver.recv() {
            let mut batch = vec![first];
            while batch.len() < BATCH_RECORDS_MAX {
                match receiver.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            if !self.write_batch(batch) {
                // The log could not be brought back to its last good record: take no more
                // (appends fail, /readyz fails) rather than append after a torn line.
                tracing::error!("the audit log could not be repaired after a failed write; its writer has stopped");
                return;
            }
        }
    }

    /// Write one batch; on failure cut the log back to its last good record. False when even
    /// that failed.
    fn write_batch(&mut self, batch: Vec<Request>) -> bool {
        let mut text = Vec::new();
        let mut waiters = Vec::with_capacity(batch.len());
        let mut head = self.head;
        let time_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        for Request::Append(entry, done) in batch {
            let mut record =
                AuditRecord { seq: head.seq + 1, time_unix_ms, prev: head.hash, entry: *entry, hash: Head::EMPTY.hash };
            record.hash = record.compute_hash();
            match serde_json::to_vec(&record) {
                Ok(line) => {
                    text.extend_from_slice(&line);
                    text.push(b'\n');
                    head = Head { seq: record.seq, hash: record.hash };
                    waiters.push((done, record.seq));
                }
                Err(e) => {
                    let _ = done.send(Err(e.to_string()));
                }
            }
        }
        let written = self.file.append(&text).and_then(|()| {
            let head_text = serde_json::to_vec(&head).expect("a head is a number and a digest");
            write_head(&mut self.head_file, &head_text)
        });
        match written {
            Ok(()) => {
                self.head = head;
                self.len += text.len() as u64;
                for (done, seq) in waiters {
                    let _ = done.send(Ok(seq));
                }
                true
            }
            Err(e) => {
                // Part of the batch may be on disk: cut it off, so the log ends at its last good
                // record and still verifies. The head file is rewritten only after a
                // successful append, so it names that record already.
                let repaired = self.file.truncate(self.len);
                for (done, _) in waiters {
                    let _ = done.send(Err(format!("{e}; the record was not written")));
                }
                repaired.is_ok()
            }
        }
    }
}

/// The head is written after the log's fsync and not fsynced itself: after a crash it can only
/// lag the log (which `verify` accepts), never run ahead of it — one fsync per batch, not two.
/// It is padded to a fixed size and written in one call at offset 0, within one disk sector.
fn write_head(file: &mut File, text: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut padded = [b' '; HEAD_BYTES];
    padded[HEAD_BYTES - 1] = b'\n';
    let len = text.len().min(HEAD_BYTES - 1);
    padded[..len].copy_from_slice(&text[..len]);
    file.write_all_at(&padded, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> AuditEntry {
        AuditEntry {
            run: format!("run{n}"),
            tenant: "alice".into(),
            tool: "wc".into(),
            tool_digest: Digest::of(b"wc"),
            input_digest: Digest::of(&n.to_le_bytes()),
            grants: serde_json::json!({ "mounts": [] }),
            outcome: "output".into(),
            fuel_used_units: n,
            bundle: Some(Digest::of(b"bundle")),
            idempotency_key: None,
            attempt: None,
            worker: None,
            completion: None,
            event: None,
        }
    }

    /// A log file that fails the `fail_at`-th append after writing half of it (a full disk),
    /// and every truncation when `truncate_fails`.
    struct FailingFile {
        file: File,
        appends: u32,
        fail_at: u32,
        truncate_fails: bool,
    }

    impl LogFile for FailingFile {
        fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            self.appends += 1;
            if self.appends == self.fail_at {
                self.file.write_all(&bytes[..bytes.len() / 2])?;
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            self.file.append(bytes)
        }

        fn truncate(&mut self, len: u64) -> std::io::Result<()> {
            if self.truncate_fails {
                return Err(std::io::Error::from_raw_os_error(5)); // EIO
            }
            self.file.truncate(len)
        }
    }

    fn failing_log(path: &Path, fail_at: u32, truncate_fails: bool) -> AuditLog {
        AuditLog::open_with(path, |_| {}, |file| Box::new(FailingFile { file, appends: 0, fail_at, truncate_fails }))
            .expect("open")
    }

    #[test]
    fn a_failed_write_is_cut_off_and_the_log_goes_on_and_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let log = failing_log(&path, 2, false);
        runtime.block_on(async {
            assert_eq!(log.append(entry(1)).await.expect("first"), 1);
            let failed = log.append(entry(2)).await.expect_err("the disk filled up");
            assert!(failed.to_string().contains("not written"), "{failed}");
            assert_eq!(log.append(entry(3)).await.expect("the writer carries on"), 2);
        });
        assert!(log.is_running());
        log.close();
        let mut runs = Vec::new();
        let head = verify(&path, |r| runs.push(r.entry.run.clone())).expect("no torn line was left behind");
        assert_eq!((head.seq, runs), (2, vec!["run1".to_string(), "run3".to_string()]));
        assert!(AuditLog::open(&path, |_| {}).is_ok(), "a restarted daemon opens it");
    }

    #[test]
    fn a_log_that_cannot_be_repaired_stops_its_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let log = failing_log(&path, 1, true);
        runtime.block_on(async {
            assert!(log.append(entry(1)).await.is_err());
            for _ in 0..100 {
                if !log.is_running() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert!(!log.is_running(), "readiness fails");
            assert!(matches!(log.append(entry(2)).await, Err(AuditError::Stopped)), "no append after a torn line");
        });
    }

    /// Append `records` records; returns the seq of the last.
    fn write_log(path: &Path, records: u64) -> u64 {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let log = AuditLog::open(path, |_| {}).expect("open");
        let last = runtime.block_on(async {
            let mut last = 0;
            for n in 1..=records {
                last = log.append(entry(n)).await.expect("append");
            }
            last
        });
        log.close();
        last
    }

    #[test]
    fn chain_survives_reopen_and_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        assert_eq!(write_log(&path, 0), 0);
        assert_eq!(write_log(&path, 0), 0, "a log closed with no records opens again");
        assert_eq!(write_log(&path, 3), 3);
        assert_eq!(write_log(&path, 2), 5, "reopened: the chain continues");
        let mut runs = Vec::new();
        let head = verify(&path, |r| runs.push(r.entry.run.clone())).expect("intact");
        assert_eq!(head.seq, 5);
        assert_eq!(runs, ["run1", "run2", "run3", "run1", "run2"]);
    }

    #[test]
    fn tampering_and_truncation_name_the_first_broken_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        write_log(&path, 4);
        let text = std::fs::read_to_string(&path).expect("read");

        let edited = text.replacen("\"tenant\":\"alice\"", "\"tenant\":\"mallory\"", 2);
        let edited = edited.replacen("\"tenant\":\"mallory\"", "\"tenant\":\"alice\"", 1);
        std::fs::write(&path, &edited).expect("write");
        match verify(&path, |_| {}) {
            Err(AuditError::Broken { seq: 2, line: 2, reason, .. }) => assert!(reason.contains("hash"), "{reason}"),
            other => panic!("edit of record 2 not caught: {other:?}"),
        }

        std::fs::write(&path, &text[..text.len() - 10]).expect("truncate mid-record");
        match verify(&path, |_| {}) {
            Err(AuditError::Broken { seq: 4, reason, .. }) => assert!(reason.contains("truncated"), "{reason}"),
            other => panic!("truncation not caught: {other:?}"),
        }

        let whole_lines: Vec<&str> = text.lines().take(3).collect();
        std::fs::write(&path, whole_lines.join("\n") + "\n").expect("cut the last record");
        match verify(&path, |_| {}) {
            Err(AuditError::Broken { seq: 4, reason, .. }) => assert!(reason.contains("removed"), "{reason}"),
            other => panic!("a removed last record not caught: {other:?}"),
        }

        let mut lines: Vec<&str> = text.lines().collect();
        lines.remove(1);
        std::fs::write(&path, lines.join("\n") + "\n").expect("drop record 2");
        match verify(&path, |_| {}) {
            Err(AuditError::Broken { seq: 2, reason, .. }) => assert!(reason.contains("seq is 3"), "{reason}"),
            other => panic!("a removed middle record not caught: {other:?}"),
        }
        assert!(AuditLog::open(&path, |_| {}).is_err(), "a broken log is not appended to");
    }
}
