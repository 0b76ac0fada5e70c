//! Write-behind for [`crate::DirStore`]: files are handed to one background thread and served
//! from memory until they land, so recording a run costs no file-system round trips on the
//! run's path. Small entries land in pack files (`pack.rs`), large ones in files of their own.
//! Bounded: past `pending_bytes_max` a write is done in place (backpressure), and dropping the
//! store waits for everything to land. A write that fails (a full disk) is tried again, backing
//! off up to [`RETRY_DELAY_MAX`], until it lands; meanwhile flushes report the failure and reads
//! are served from memory.

use crate::pack::{Key, PACKED_BYTES_MAX, Packs};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Default bound on bytes waiting to be written.
pub const PENDING_BYTES_MAX_DEFAULT: u64 = 64 << 20;
/// Files queued before a writer blocks (also bounded by bytes).
const QUEUE_FILES_MAX: usize = 65_536;
/// The longest wait before trying a failed write again.
pub(crate) const RETRY_DELAY_MAX: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Default)]
struct Pending {
    files: HashMap<PathBuf, (Arc<Vec<u8>>, Key)>,
    bytes: u64,
    /// Why the write being tried again failed, reported by [`WriteBehind::flush`] until it lands.
    failed: Option<String>,
}

struct Shared {
    pending: Mutex<Pending>,
    landed: Condvar,
    /// Set when the store is dropped: a write still failing is given up.
    closing: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The background writer.
pub(crate) struct WriteBehind {
    shared: Arc<Shared>,
    sender: Option<SyncSender<PathBuf>>,
    thread: Option<JoinHandle<()>>,
    pending_bytes_max: u64,
}

impl WriteBehind {
    pub(crate) fn start(pending_bytes_max: u64, packs: Arc<Packs>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            landed: Condvar::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
        });
        let (sender, receiver) = sync_channel(QUEUE_FILES_MAX);
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("guild-store-writer".into())
            .spawn(move || drain(&worker, &packs, receiver))?;
        Ok(Self { shared, sender: Some(sender), thread: Some(thread), pending_bytes_max })
    }

    /// Queue `bytes` for `path` (packed under `key` when small); false when the queue is full
    /// and the caller should write now.
    pub(crate) fn queue(&self, path: &Path, key: Key, bytes: &[u8]) -> bool {
        let mut pending = self.shared.lock();
        if pending.files.contains_key(path) {
            return true;
        }
        if pending.bytes + bytes.len() as u64 > self.pending_bytes_max {
            return false;
        }
        let Some(sender) = &self.sender else { return false };
        if sender.try_send(path.to_path_buf()).is_err() {
            return false;
        }
        pending.bytes += bytes.len() as u64;
        pending.files.insert(path.to_path_buf(), (Arc::new(bytes.to_vec()), key));
        true
    }

    /// The bytes of a file not yet written.
    pub(crate) fn read(&self, path: &Path) -> Option<Arc<Vec<u8>>> {
        self.shared.lock().files.get(path).map(|(bytes, _)| bytes.clone())
    }

    /// Paths waiting under `dir`.
    pub(crate) fn pending_in(&self, dir: &Path) -> Vec<PathBuf> {
        self.shared.lock().files.keys().filter(|p| p.parent() == Some(dir)).cloned().collect()
    }

    /// Wait until everything queued has been written; or, while a write keeps failing, why.
    pub(crate) fn flush(&self) -> Result<(), String> {
        let mut pending = self.shared.lock();
        while !pending.files.is_empty() && pending.failed.is_none() {
            pending = self.shared.landed.wait(pending).unwrap_or_else(|p| p.into_inner());
        }
        match &pending.failed {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish the queue and stop; a write still failing
        // is given up rather than waited for.
        self.shared.closing.store(true, std::sync::atomic::Ordering::Release);
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn drain(shared: &Shared, packs: &Packs, receiver: Receiver<PathBuf>) {
    for path in receiver {
        let Some((bytes, key)) = shared.lock().files.get(&path).cloned() else { continue };
        let mut delay = std::time::Duration::from_millis(10);
        loop {
            let written = if bytes.len() <= PACKED_BYTES_MAX {
                packs.append(key, &bytes)
            } else {
                crate::file::write_file(&path, &bytes)
            };
            let mut pending = shared.lock();
            match written {
                Ok(()) => {
                    pending.files.remove(&path);
                    pending.bytes = pending.bytes.saturating_sub(bytes.len() as u64);
                    pending.failed = None;
                    shared.landed.notify_all();
                    break;
                }
                // Kept in memory so reads still work; flush reports it until it lands.
                Err(e) => {
                    pending.failed = Some(format!("{}: {e}", path.display()));
                    shared.landed.notify_all();
                }
            }
            drop(pending);
            if shared.closing.load(std::sync::atomic::Ordering::Acquire) {
                break;
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(RETRY_DELAY_MAX);
        }
    }
}
