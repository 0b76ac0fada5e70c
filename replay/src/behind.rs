//! Write-behind for [`crate::DirStore`]: files are handed to one background thread and served
//! from memory until they land, so recording a run costs no file-system round trips on the
//! run's path. Small entries land in pack files (`pack.rs`), large ones in files of their own.
//! Bounded: past `pending_bytes_max` a write is done in place (backpressure), and dropping the
//! store waits for everything to land. A write that fails (a full disk) is tried again, backing
//! off up to [`RETRY_DELAY_MAX`], until it lands; meanwhile flushes report the failure and reads
//! are served from memory. Entries are keyed by (kind, digest), not by path: a path is made
//! only for an entry large enough for a file of its own. The writer takes everything queued as
//! one batch, so a burst of runs costs it one wake-up, not one per file.

use crate::pack::{Key, PACKED_BYTES_MAX, Packs};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Default bound on bytes waiting to be written.
pub const PENDING_BYTES_MAX_DEFAULT: u64 = 64 << 20;
/// Files queued before a writer writes in place (also bounded by bytes).
const QUEUE_FILES_MAX: usize = 65_536;
/// Entries queued that wake an idle writer at once; fewer wait up to [`LINGER`], so a busy
/// store costs the writer one wake-up per batch rather than one per run.
const WAKE_AT_ENTRIES: usize = 64;
/// The longest an entry waits in memory before the writer takes it (reads are served from
/// memory meanwhile; [`WriteBehind::flush`] does not wait for it).
const LINGER: std::time::Duration = std::time::Duration::from_millis(5);
/// The longest wait before trying a failed write again.
pub(crate) const RETRY_DELAY_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// An entry waiting to land: its bytes, and its own file's path when it is too large to pack.
struct Entry {
    bytes: Arc<Vec<u8>>,
    file: Option<PathBuf>,
}

#[derive(Default)]
struct Pending {
    files: HashMap<Key, Entry>,
    /// Keys in the order they came, not yet taken by the writer.
    queue: VecDeque<Key>,
    bytes: u64,
    /// Why the write being tried again failed, reported by [`WriteBehind::flush`] until it lands.
    failed: Option<String>,
    /// The writer is waiting for work: it wakes when [`WAKE_AT_ENTRIES`] are queued, at a flush,
    /// or after [`LINGER`]. While it is writing, new entries join its next batch.
    writer_idle: bool,
    /// A flush is waiting: the writer takes what is queued without lingering.
    flushing: usize,
    /// The store is being dropped: the writer finishes the queue and stops.
    closed: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Entries queued (the writer waits on this).
    work: Condvar,
    /// Entries landed or a write failed (flushes wait on this).
    landed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The background writer.
pub(crate) struct WriteBehind {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    pending_bytes_max: u64,
}

impl WriteBehind {
    pub(crate) fn start(pending_bytes_max: u64, packs: Arc<Packs>) -> std::io::Result<Self> {
        let shared =
            Arc::new(Shared { pending: Mutex::new(Pending::default()), work: Condvar::new(), landed: Condvar::new() });
        let worker = shared.clone();
        let thread =
            std::thread::Builder::new().name("guild-store-writer".into()).spawn(move || drain(&worker, &packs))?;
        Ok(Self { shared, thread: Some(thread), pending_bytes_max })
    }

    /// Queue `bytes` under `key` (packed when small; in the file at `path()` when not); false
    /// when the queue is full and the caller should write now.
    pub(crate) fn queue(&self, key: Key, path: impl FnOnce() -> PathBuf, bytes: &[u8]) -> bool {
        let file = (bytes.len() > PACKED_BYTES_MAX).then(path);
        let mut pending = self.shared.lock();
        if pending.files.contains_key(&key) {
            return true;
        }
        if pending.closed
            || pending.bytes + bytes.len() as u64 > self.pending_bytes_max
            || pending.queue.len() >= QUEUE_FILES_MAX
        {
            return false;
        }
        pending.bytes += bytes.len() as u64;
        pending.files.insert(key, Entry { bytes: Arc::new(bytes.to_vec()), file });
        pending.queue.push_back(key);
        let wake = pending.writer_idle && pending.queue.len() >= WAKE_AT_ENTRIES;
        if wake {
            pending.writer_idle = false;
        }
        drop(pending);
        if wake {
            self.shared.work.notify_one();
        }
        true
    }

    /// The bytes of an entry not yet written.
    pub(crate) fn read(&self, key: &Key) -> Option<Arc<Vec<u8>>> {
        self.shared.lock().files.get(key).map(|entry| entry.bytes.clone())
    }

    /// The digests of the entries of `kind` waiting.
    pub(crate) fn pending_of(&self, kind: crate::pack::Kind) -> Vec<crate::Digest> {
        self.shared.lock().files.keys().filter(|(k, _)| *k == kind).map(|(_, digest)| *digest).collect()
    }

    /// Wait until everything queued has been written; or, while a write keeps failing, why.
    pub(crate) fn flush(&self) -> Result<(), String> {
        let mut pending = self.shared.lock();
        pending.flushing += 1;
        self.shared.work.notify_one();
        while !pending.files.is_empty() && pending.failed.is_none() {
            pending = self.shared.landed.wait(pending).unwrap_or_else(|p| p.into_inner());
        }
        pending.flushing -= 1;
        match &pending.failed {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        // The writer finishes the queue and stops; a write still failing is given up rather
        // than waited for.
        self.shared.lock().closed = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer: take everything queued as one batch (one wake-up however many runs queued it),
/// write it, and make it visible as landed under one lock.
fn drain(shared: &Shared, packs: &Packs) {
    loop {
        let batch: Vec<(Key, Arc<Vec<u8>>, Option<PathBuf>)> = {
            let mut pending = shared.lock();
            loop {
                let urgent = pending.closed || pending.flushing > 0 || pending.queue.len() >= WAKE_AT_ENTRIES;
                if pending.queue.is_empty() && pending.closed {
                    return;
                }
                if !pending.queue.is_empty() && urgent {
                    break;
                }
                pending.writer_idle = true;
                let (guard, waited) = shared.work.wait_timeout(pending, LINGER).unwrap_or_else(|p| p.into_inner());
                pending = guard;
                if waited.timed_out() && !pending.queue.is_empty() {
                    break;
                }
            }
            pending.writer_idle = false;
            let queued: Vec<Key> = pending.queue.drain(..).collect();
            queued
                .into_iter()
                .filter_map(|key| pending.files.get(&key).map(|e| (key, e.bytes.clone(), e.file.clone())))
                .collect()
        };
        let mut landed = Vec::with_capacity(batch.len());
        for (key, bytes, file) in batch {
            write_until_landed(shared, packs, key, &bytes, file.as_ref(), &mut landed);
        }
        settle(shared, &mut landed, None);
    }
}

/// Write one entry, trying again (backing off) while it fails, until it lands or the store
/// closes (then it is given up, and stays unlanded for flushes to report).
fn write_until_landed(
    shared: &Shared,
    packs: &Packs,
    key: Key,
    bytes: &[u8],
    file: Option<&PathBuf>,
    landed: &mut Vec<(Key, u64)>,
) {
    let mut delay = std::time::Duration::from_millis(10);
    loop {
        let written = match file {
            None => packs.append(key, bytes),
            Some(path) => crate::file::write_file(path, bytes),
        };
        match written {
            Ok(()) => {
                landed.push((key, bytes.len() as u64));
                return;
            }
            // Kept in memory so reads still work; flush reports it until it lands.
            Err(e) => {
                let what = file.map_or_else(|| format!("pack record {}", key.1), |p| p.display().to_string());
                settle(shared, landed, Some(format!("{what}: {e}")));
            }
        }
        if shared.lock().closed {
            return;
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(RETRY_DELAY_MAX);
    }
}

/// Forget the entries in `landed` (reads now find them on disk), record `failed`, and wake the
/// flushes.
fn settle(shared: &Shared, landed: &mut Vec<(Key, u64)>, failed: Option<String>) {
    let mut pending = shared.lock();
    for (key, len) in landed.drain(..) {
        pending.files.remove(&key);
        pending.bytes = pending.bytes.saturating_sub(len);
    }
    pending.failed = failed;
    drop(pending);
    shared.landed.notify_all();
}
