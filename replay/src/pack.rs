//! Pack files: a long-running host's background writer appends small blobs and bundle
//! documents to a few large files (`packs/*.pack`) instead of creating one file each. Creating
//! a file costs far more than appending to one (on this project's reference disk it was most of
//! a daemon's CPU per trivial run); a store holding millions of runs also stays a few thousand
//! files.
//!
//! A pack starts with [`MAGIC`]; each record is `kind (u8) | digest (32 bytes) | length (u32
//! LE) | bytes`. Packs are append-only and never rewritten; each process appends to packs of
//! its own, so several processes can share a store. Readers index every pack when the store
//! opens (and look again for new packs on a miss). A record cut off by a crash ends its pack's
//! index there; nothing after it was acknowledged as durable anyway (store writes are not
//! fsynced, see `store.rs`), and every blob read is still checked against its digest.

use crate::Digest;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// First bytes of every pack.
const MAGIC: &[u8; 8] = b"GUILDPK1";
/// Bytes of a record header.
const HEADER_BYTES: usize = 1 + 32 + 4;
/// A pack is closed and a new one started past this size.
const PACK_BYTES_MAX: u64 = 256 << 20;
/// Larger entries get a file of their own (they are few, and hard-linkable into mounts).
pub(crate) const PACKED_BYTES_MAX: usize = 1 << 20;
/// Bytes appended to a pack after which the kernel is asked to start writing them out
/// (`sync_file_range`, Linux: it does not wait for the writes to finish, though starting them can
/// block this thread, the store's background writer, on a busy disk). Left to itself, the kernel
/// writes a busy daemon's packs out in one burst of tens of MB once they have been dirty for 30 s
/// (`vm.dirty_expire_centisecs`), and every audit `fdatasync` in that moment waits behind the
/// burst on ext4: measured here, a daemon's p99 went from 16 ms to 84–291 ms after 30 s of load
/// (`benches/RESULTS.md`, 2026-12-02). Started a MiB at a time, the writes stay small and steady.
/// Not a durability promise: store writes are still not fsynced (`store.rs`).
const PACK_WRITEBACK_BYTES: u64 = 1 << 20;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// A content-addressed blob.
    Blob = 0,
    /// A bundle's manifest, keyed by the bundle id.
    Manifest = 1,
    /// A bundle's signature, keyed by the bundle id.
    Signature = 2,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Blob),
            1 => Some(Self::Manifest),
            2 => Some(Self::Signature),
            _ => None,
        }
    }
}

/// A record's key.
pub(crate) type Key = (Kind, Digest);

#[derive(Debug, Clone)]
struct Location {
    pack: Arc<PathBuf>,
    offset: u64,
    len: u32,
}

/// The packs of one store: the index of every record, and this process's open pack.
pub(crate) struct Packs {
    dir: PathBuf,
    index: RwLock<HashMap<Key, Location>>,
    /// Each pack indexed so far, with where its next record starts.
    scanned: Mutex<HashMap<PathBuf, u64>>,
    writer: Mutex<Option<Writer>>,
}

struct Writer {
    path: Arc<PathBuf>,
    file: File,
    len: u64,
    /// Where the bytes the kernel was not yet asked to write out start.
    written_back_to: u64,
}

impl Writer {
    /// Ask the kernel to start writing out the whole pages appended since the last time, once
    /// they are [`PACK_WRITEBACK_BYTES`] or more, up to a 4 KiB boundary (a page on x86-64 and
    /// most arm64 kernels: the page still being filled is left, so the next append does not
    /// write into a page under I/O). The call is advice: refused, it leaves
    /// the writing to the kernel's own time, is not an error of the append, and is not made again
    /// for those bytes.
    fn start_writeback(&mut self) {
        const PAGE_BYTES: u64 = 4096;
        let end = self.len & !(PAGE_BYTES - 1);
        let Some(pending) = end.checked_sub(self.written_back_to) else { return };
        if pending < PACK_WRITEBACK_BYTES {
            return;
        }
        #[cfg(target_os = "linux")]
        if let (Ok(offset), Ok(bytes)) = (i64::try_from(self.written_back_to), i64::try_from(pending)) {
            use std::os::fd::AsRawFd;
            // SAFETY: sync_file_range reads no memory of ours; the descriptor is this writer's
            // open file, borrowed for the call, and a bad range is an error return, not UB.
            #[allow(unsafe_code)]
            let _ = unsafe { libc::sync_file_range(self.file.as_raw_fd(), offset, bytes, libc::SYNC_FILE_RANGE_WRITE) };
        }
        self.written_back_to = end;
    }
}

impl Packs {
    /// Index every pack under `dir` (created if missing).
    pub(crate) fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let packs = Self {
            dir,
            index: RwLock::new(HashMap::new()),
            scanned: Mutex::new(HashMap::new()),
            writer: Mutex::new(None),
        };
        packs.rescan()?;
        Ok(packs)
    }

    /// Index packs written since the last scan (by other processes).
    pub(crate) fn rescan(&self) -> std::io::Result<()> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pack"))
            .collect();
        paths.sort();
        for path in paths {
            let from = self.scanned.lock().unwrap_or_else(|p| p.into_inner()).get(&path).copied();
            // This process's own packs are indexed as they are written (and the writer's lock,
            // which a slow append holds, is not waited for here).
            if from == Some(u64::MAX) {
                continue;
            }
            let (found, next) = scan(&path, from)?;
            // A pack this process started meanwhile keeps its mark (indexed as written).
            let mut scanned = self.scanned.lock().unwrap_or_else(|p| p.into_inner());
            let mark = scanned.entry(path.clone()).or_insert(next);
            if *mark != u64::MAX {
                *mark = next;
            }
            drop(scanned);
            let pack = Arc::new(path);
            let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
            for (key, offset, len) in found {
                index.entry(key).or_insert(Location { pack: pack.clone(), offset, len });
            }
        }
        Ok(())
    }

    /// Is `key` in a pack?
    pub(crate) fn contains(&self, key: &Key) -> bool {
        self.index.read().unwrap_or_else(|p| p.into_inner()).contains_key(key)
    }

    /// Size of the record `key`.
    pub(crate) fn len_of(&self, key: &Key) -> Option<u64> {
        self.index.read().unwrap_or_else(|p| p.into_inner()).get(key).map(|l| u64::from(l.len))
    }

    /// Bytes of the record `key`.
    pub(crate) fn read(&self, key: &Key) -> std::io::Result<Option<Vec<u8>>> {
        let Some(location) = self.index.read().unwrap_or_else(|p| p.into_inner()).get(key).cloned() else {
            return Ok(None);
        };
        let file = File::open(location.pack.as_path())?;
        let mut bytes = vec![0u8; location.len as usize];
        file.read_exact_at(&mut bytes, location.offset)?;
        Ok(Some(bytes))
    }

    /// Every key of a kind.
    pub(crate) fn keys_of(&self, kind: Kind) -> Vec<Digest> {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        index.keys().filter(|(k, _)| *k == kind).map(|(_, d)| *d).collect()
    }

    /// Append a record to this process's pack (starting a new one when needed) and index it.
    pub(crate) fn append(&self, key: Key, bytes: &[u8]) -> std::io::Result<()> {
        if self.contains(&key) {
            return Ok(());
        }
        let len = u32::try_from(bytes.len()).map_err(|_| std::io::Error::other("record too large for a pack"))?;
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if writer.as_ref().is_none_or(|w| w.len >= PACK_BYTES_MAX) {
            *writer = Some(self.new_pack()?);
        }
        let Some(current) = writer.as_mut() else { return Err(std::io::Error::other("no pack open")) };
        let mut record = Vec::with_capacity(HEADER_BYTES + bytes.len());
        record.push(key.0 as u8);
        record.extend_from_slice(key.1.as_bytes());
        record.extend_from_slice(&len.to_le_bytes());
        record.extend_from_slice(bytes);
        if let Err(e) = current.file.write_all(&record) {
            // Part of the record may be on disk (a full disk): this pack's length is no longer
            // known, so the next record starts a new pack. A reader stops at the torn record.
            *writer = None;
            return Err(e);
        }
        let offset = current.len + HEADER_BYTES as u64;
        current.len += record.len() as u64;
        current.start_writeback();
        let location = Location { pack: current.path.clone(), offset, len };
        self.index.write().unwrap_or_else(|p| p.into_inner()).insert(key, location);
        Ok(())
    }

    fn new_pack(&self) -> std::io::Result<Writer> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
        let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
        let name = format!("{millis:013}-{}-{}.pack", std::process::id(), crate::hex::encode(&nonce));
        let path = self.dir.join(name);
        let mut file = std::fs::OpenOptions::new().create_new(true).append(true).open(&path)?;
        file.write_all(MAGIC)?;
        self.scanned.lock().unwrap_or_else(|p| p.into_inner()).insert(path.clone(), u64::MAX);
        Ok(Writer { path: Arc::new(path), file, len: MAGIC.len() as u64, written_back_to: 0 })
    }
}

/// A record found by [`scan`]: its key, the offset of its bytes, their length.
type Found = (Key, u64, u32);

/// The records of one pack from `from` (its start when `None`), up to the first incomplete or
/// unreadable one; and where the next record will start.
fn scan(path: &Path, from: Option<u64>) -> std::io::Result<(Vec<Found>, u64)> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut reader = BufReader::new(file);
    let mut position = match from {
        // This process's own pack: already indexed as written.
        Some(u64::MAX) => return Ok((Vec::new(), u64::MAX)),
        Some(position) => {
            reader.seek(SeekFrom::Start(position))?;
            position
        }
        None => {
            let mut magic = [0u8; 8];
            if reader.read_exact(&mut magic).is_err() || &magic != MAGIC {
                return Ok((Vec::new(), size.max(MAGIC.len() as u64)));
            }
            MAGIC.len() as u64
        }
    };
    let mut records = Vec::new();
    let mut header = [0u8; HEADER_BYTES];
    while position + HEADER_BYTES as u64 <= size {
        reader.read_exact(&mut header)?;
        let Some(kind) = Kind::from_byte(header[0]) else { break };
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&header[1..33]);
        let len = u32::from_le_bytes([header[33], header[34], header[35], header[36]]);
        let offset = position + HEADER_BYTES as u64;
        if offset + u64::from(len) > size {
            break;
        }
        records.push(((kind, Digest::from_bytes(digest)), offset, len));
        reader.seek(SeekFrom::Current(i64::from(len)))?;
        position = offset + u64::from(len);
    }
    Ok((records, position))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let packs = Packs::open(dir.path().join("packs")).expect("open");
        let a = (Kind::Blob, Digest::of(b"a"));
        let m = (Kind::Manifest, Digest::of(b"id"));
        packs.append(a, b"a").expect("append");
        packs.append(m, b"{}").expect("append");
        packs.append(a, b"a").expect("a duplicate is a no-op");
        assert_eq!(packs.read(&a).expect("read"), Some(b"a".to_vec()));
        drop(packs);

        let pack =
            std::fs::read_dir(dir.path().join("packs")).expect("dir").next().expect("one").expect("entry").path();
        let mut file = std::fs::OpenOptions::new().append(true).open(&pack).expect("open");
        file.write_all(&[0u8; 20]).expect("a torn header");
        let reopened = Packs::open(dir.path().join("packs")).expect("reopen");
        assert_eq!(reopened.read(&m).expect("read"), Some(b"{}".to_vec()));
        assert_eq!(reopened.keys_of(Kind::Manifest), vec![m.1]);
        assert_eq!(reopened.read(&(Kind::Blob, Digest::of(b"b"))).expect("read"), None);
    }

    #[test]
    fn a_pack_is_written_out_a_mib_at_a_time_and_reads_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let packs = Packs::open(dir.path().join("packs")).expect("open");
        let record = vec![7u8; 100 << 10];
        let mut keys = Vec::new();
        for i in 0u32..25 {
            let key = (Kind::Blob, Digest::of(&i.to_le_bytes()));
            packs.append(key, &record).expect("append");
            keys.push(key);
            let writer = packs.writer.lock().expect("lock");
            let writer = writer.as_ref().expect("open pack");
            // What the kernel was not asked to write out yet is always under a MiB and a page,
            // and the asking stops at a page's start.
            assert!(writer.len - writer.written_back_to < PACK_WRITEBACK_BYTES + 4096, "{i}");
            assert_eq!(writer.written_back_to % 4096, 0, "{i}");
            if writer.len >= PACK_WRITEBACK_BYTES + 4096 {
                assert!(writer.written_back_to >= PACK_WRITEBACK_BYTES, "{i}");
            }
        }
        for key in &keys {
            assert_eq!(packs.read(key).expect("read").as_deref(), Some(&record[..]));
        }
    }

    #[test]
    fn another_process_packs_are_found_on_rescan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reader = Packs::open(dir.path().to_path_buf()).expect("open");
        let writer = Packs::open(dir.path().to_path_buf()).expect("open");
        let key = (Kind::Blob, Digest::of(b"late"));
        writer.append(key, b"late").expect("append");
        assert!(!reader.contains(&key));
        reader.rescan().expect("rescan");
        assert_eq!(reader.read(&key).expect("read"), Some(b"late".to_vec()));
        let later = (Kind::Blob, Digest::of(b"later"));
        writer.append(later, b"later").expect("append to the same pack");
        reader.rescan().expect("rescan");
        assert_eq!(reader.read(&later).expect("read"), Some(b"later".to_vec()), "a grown pack is read on");
    }
}
