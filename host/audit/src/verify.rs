//! Checking a log's whole chain and its head file.

use crate::record::{AuditError, AuditRecord};
use guild_replay::Digest;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Longest line `verify` reads: a record is a few hundred bytes; a longer line is damage.
/// Longest record line read back, bytes; the writer refuses to write a longer one.
pub(crate) const RECORD_BYTES_MAX: usize = 1024 * 1024;

/// The last record of a log (or of its head file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Its seq (0 for an empty log).
    pub seq: u64,
    /// Its hash (zeros for an empty log).
    pub hash: Digest,
}

impl Head {
    pub(crate) const EMPTY: Head = Head { seq: 0, hash: Digest::from_bytes([0; 32]) };
}

pub(crate) fn head_path(log: &Path) -> PathBuf {
    let mut name = log.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".head");
    log.with_file_name(name)
}

/// Check the whole chain of the log at `path` and its head file, calling `each` for every good
/// record.
///
/// # Errors
/// [`AuditError::Broken`], naming the first broken record: an unparsable or truncated line, a wrong
/// seq, `prev` or `hash`, or records missing from the end (the head file names a later record, or
/// is missing or unreadable); [`AuditError::Io`] when the log or its head file cannot be read. A
/// log that does not exist is empty, not broken.
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
