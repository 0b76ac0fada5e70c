//! The audit log: one JSON line per finished run — who (tenant), what (tool digest, input
//! digest), under which grants, how it ended, and which bundle resulted — and per event an
//! auditor must see (an admin's read of another tenant's run or bundle, a corrupt Redis entry). Append-only and
//! hash-chained: each record's `hash` is blake3 over its canonical form (without `hash`), which
//! includes `prev`, the hash of the record before. Records are written by one thread in
//! batches, each batch fsynced before any of its runs is answered (group commit). A small
//! `.head` file beside the log names the last record, so cutting records off the end is
//! detected too.
//!
//! This crate holds the format (the records and their hashes), the verifier an auditor runs
//! (`guild audit verify`) and the daemon's writer. It has no wasmtime, HTTP or Redis in its
//! tree, so an auditor's build of it is small.

mod record;
mod verify;
mod writer;

pub use record::{AuditEntry, AuditError, AuditEvent, AuditRecord};
pub use verify::{Head, verify};
pub use writer::AuditLog;
