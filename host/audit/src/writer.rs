//! The daemon's writer: one thread appending batches, each fsynced before its runs are
//! answered (group commit), and cut back to the last whole record when a write fails.

use crate::record::{AuditEntry, AuditError, AuditRecord};
use crate::verify::{Head, head_path, verify};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// Records written per batch at most (one fsync each).
const BATCH_RECORDS_MAX: usize = 4096;
/// About the size of one record's line, bytes (a run's grants and limits make most of it).
const RECORD_BYTES_TYPICAL: usize = 640;
/// Size of the `.head` file: `{"seq":…,"hash":"…"}` is under 110 bytes.
const HEAD_BYTES: usize = 128;

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
    ///
    /// # Errors
    /// [`AuditError::Stopped`] after [`AuditLog::close`] or once the writer thread has stopped;
    /// [`AuditError::Io`] when the write or its fsync fails (the log is cut back to its last whole
    /// record).
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
    ///
    /// # Errors
    /// As [`AuditLog::append`], for the first record that fails; records before it may be on disk.
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
        // A record's line is ~600 bytes: one allocation for the batch instead of a copy per growth.
        let mut text = Vec::with_capacity(batch.len() * RECORD_BYTES_TYPICAL);
        let mut waiters = Vec::with_capacity(batch.len());
        let mut head = self.head;
        let time_unix_ms = u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis())
            .unwrap_or(u64::MAX);
        for Request::Append(entry, done) in batch {
            let mut record =
                AuditRecord { seq: head.seq + 1, time_unix_ms, prev: head.hash, entry: *entry, hash: Head::EMPTY.hash };
            record.hash = record.compute_hash();
            match serde_json::to_vec(&record) {
                // A line the verifier would not read back would break the chain at the next start:
                // refused here, the chain untouched.
                Ok(line) if line.len() >= crate::verify::RECORD_BYTES_MAX => {
                    let _ = done.send(Err(format!(
                        "the record is {} bytes; an audit record is at most {} bytes",
                        line.len(),
                        crate::verify::RECORD_BYTES_MAX
                    )));
                }
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
    use guild_replay::Digest;

    fn entry(n: u64) -> AuditEntry {
        AuditEntry {
            run: format!("run{n}"),
            tenant: "alice".into(),
            subject: None,
            agent: None,
            tool: "wc".into(),
            tool_digest: Digest::of(b"wc"),
            revision: None,
            input_digest: Digest::of(&n.to_le_bytes()),
            grants: Some(guild_vocab::PolicyRecord::granted(Default::default(), Default::default())),
            outcome: "output".into(),
            fuel_used_units: n,
            cost: None,
            bundle: Some(Digest::of(b"bundle")),
            idempotency_key: None,
            attempt: None,
            worker: None,
            completion: None,
            event: None,
            trace_id: None,
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
    fn a_record_too_long_to_verify_is_refused_and_the_chain_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let log = AuditLog::open(&path, |_| {}).expect("open");
        let mut huge = entry(1);
        huge.idempotency_key = Some("k".repeat(crate::verify::RECORD_BYTES_MAX));
        let refused = rt.block_on(log.append(huge)).expect_err("refused");
        assert!(refused.to_string().contains("at most"), "{refused}");
        assert_eq!(rt.block_on(log.append(entry(2))).expect("appended"), 1, "the chain goes on at seq 1");
        log.close();
        drop(log);
        crate::verify::verify(&path, |_| {}).expect("the log verifies");
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
