//! Content-addressed storage. A [`BlobStore`] keeps bytes under their blake3 digest, so anything
//! stored twice (a component run a thousand times, a mount that did not change) is kept once.
//! [`DirStore`] is the on-disk store a host and an auditor use; [`MemoryStore`] holds a bundle
//! read from an archive.

use crate::Digest;
use crate::behind::WriteBehind;
use crate::pack::{Key, Kind, Packs};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A blob store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No blob has this digest.
    #[error("blob {0} is not in the store")]
    NotFound(Digest),
    /// The stored bytes do not hash to their name.
    #[error("blob {expected} is corrupt: its contents hash to {found}")]
    Corrupt {
        /// The digest the blob is stored under and was asked for.
        expected: Digest,
        /// What its bytes hash to.
        found: Digest,
    },
    /// A blob (or bundle file) larger than the store will read.
    #[error("{digest} is {size_bytes} bytes, more than the store reads ({limit_bytes} bytes)")]
    TooLarge {
        /// The blob, or the bundle id whose manifest or signature file it is.
        digest: Digest,
        /// Its size as stored, in bytes.
        size_bytes: u64,
        /// The most the store reads: [`BLOB_BYTES_MAX`] for a blob, less for a bundle file.
        limit_bytes: u64,
    },
    /// No bundle has this id (or prefix).
    #[error("no bundle {0} in the store")]
    BundleNotFound(String),
    /// An id prefix matches several bundles.
    #[error("bundle id prefix {0} is ambiguous; give more characters")]
    AmbiguousPrefix(String),
    /// A stream being stored yielded more than its bound.
    #[error("the data is larger than {limit_bytes} bytes, its bound")]
    StreamTooLarge {
        /// The caller's `bytes_max` for [`BlobStore::put_stream`].
        limit_bytes: u64,
    },
    /// The file system failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory the store was reading or writing (`(stream)` for a reader).
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// Largest blob a store reads into memory: 2 GiB.
pub const BLOB_BYTES_MAX: u64 = 2 << 30;

/// Bytes kept under their digest.
pub trait BlobStore: Send + Sync {
    /// Store `bytes`; storing the same bytes again is free.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the store cannot write them (a write left to a background writer
    /// reports its failure from [`DirStore::flush`] instead).
    fn put(&self, bytes: &[u8]) -> Result<Digest, StoreError>;
    /// The bytes named `digest`, checked against it.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when no blob has `digest`; [`StoreError::Corrupt`] when its bytes
    /// do not hash to it; [`StoreError::TooLarge`] when it is over [`BLOB_BYTES_MAX`];
    /// [`StoreError::Io`] when reading fails.
    fn get(&self, digest: &Digest) -> Result<Vec<u8>, StoreError>;
    /// Whether `digest` is present (not checked).
    fn has(&self, digest: &Digest) -> bool;

    /// A file on disk holding `digest`, when the store keeps blobs as files: lets a read-only
    /// tree be rebuilt with hard links instead of copies.
    fn file_path(&self, _digest: &Digest) -> Option<PathBuf> {
        None
    }

    /// Store what `reader` yields, at most `bytes_max` bytes; returns its digest and size.
    /// Stores that keep blobs as files copy it through a buffer, never holding it whole; this
    /// default reads it into memory.
    ///
    /// # Errors
    /// [`StoreError::Io`] when reading or writing fails, [`StoreError::StreamTooLarge`] when the
    /// reader yields more than `bytes_max` bytes.
    fn put_stream(&self, reader: &mut dyn Read, bytes_max: u64) -> Result<(Digest, u64), StoreError> {
        let mut bytes = Vec::new();
        reader
            .take(bytes_max.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|source| StoreError::Io { path: "(stream)".into(), source })?;
        if bytes.len() as u64 > bytes_max {
            return Err(StoreError::StreamTooLarge { limit_bytes: bytes_max });
        }
        Ok((self.put(&bytes)?, bytes.len() as u64))
    }
}

/// Check that `bytes` really are `digest`.
pub(crate) fn checked(digest: &Digest, bytes: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    let found = Digest::of(&bytes);
    if found != *digest {
        return Err(StoreError::Corrupt { expected: *digest, found });
    }
    Ok(bytes)
}

/// A store in memory, for a bundle read from an archive (see [`crate::archive::import`]) and
/// for tests; nothing is kept past its drop.
#[derive(Default)]
pub struct MemoryStore {
    blobs: Mutex<HashMap<Digest, Vec<u8>>>,
}

impl MemoryStore {
    /// Insert bytes under a claimed digest without checking; `get` checks. Used when reading an
    /// archive, so a tampered blob is reported as corrupt rather than silently renamed.
    pub fn insert_unchecked(&self, digest: Digest, bytes: Vec<u8>) {
        self.blobs.lock().unwrap_or_else(|p| p.into_inner()).insert(digest, bytes);
    }

    /// Every digest held.
    pub fn digests(&self) -> Vec<Digest> {
        self.blobs.lock().unwrap_or_else(|p| p.into_inner()).keys().copied().collect()
    }
}

impl BlobStore for MemoryStore {
    fn put(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(bytes);
        self.blobs.lock().unwrap_or_else(|p| p.into_inner()).entry(digest).or_insert_with(|| bytes.to_vec());
        Ok(digest)
    }

    fn get(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let bytes = self.blobs.lock().unwrap_or_else(|p| p.into_inner()).get(digest).cloned();
        checked(digest, bytes.ok_or(StoreError::NotFound(*digest))?)
    }

    fn has(&self, digest: &Digest) -> bool {
        self.blobs.lock().unwrap_or_else(|p| p.into_inner()).contains_key(digest)
    }
}

/// The on-disk store: `blobs/<xx>/<digest>` and `bundles/<id>.json` (the manifest) with
/// `bundles/<id>.sig` (its signature). Opened with [`DirStore::open_write_behind`], writes land
/// in the background (see `behind.rs`), small ones appended to `packs/*.pack` (see `pack.rs`),
/// and are read from memory until they do. Readers look in packs, then in files.
///
/// ```
/// use guild_replay::{BlobStore, Digest, DirStore, StoreError};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let store = DirStore::open(dir.path())?;
/// let digest = store.put(b"mounted contents")?;
/// assert_eq!(digest, Digest::of(b"mounted contents")); // named by its blake3
/// assert_eq!(store.put(b"mounted contents")?, digest); // stored once however often put
/// assert_eq!(store.get(&digest)?, b"mounted contents"); // checked against its digest
/// assert!(matches!(store.get(&Digest::of(b"never stored")), Err(StoreError::NotFound(_))));
///
/// // Another handle on the same directory (an auditor's, later) reads what was written.
/// drop(store);
/// let reopened = DirStore::open(dir.path())?;
/// assert!(reopened.has(&digest));
/// assert_eq!(reopened.get(&digest)?, b"mounted contents");
/// # Ok(())
/// # }
/// ```
pub struct DirStore {
    root: PathBuf,
    behind: Option<WriteBehind>,
    packs: Arc<Packs>,
    /// Digests known to be stored, so a busy host does not stat the same blob on every run.
    /// The store is append-only while a host uses it.
    known: Mutex<std::collections::HashSet<Digest>>,
}

/// Digests [`DirStore`] remembers as present; past this it starts over.
const KNOWN_DIGESTS_MAX: usize = 100_000;

impl DirStore {
    /// Open (creating if needed) the store at `root`; every write lands before it returns.
    ///
    /// # Errors
    /// [`StoreError::Io`] when `blobs/`, `bundles/` or `packs/` cannot be created, or the packs
    /// cannot be read.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        for sub in ["blobs", "bundles"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(|source| io_error(&dir, source))?;
        }
        let packs_dir = root.join("packs");
        let packs = Packs::open(packs_dir.clone()).map_err(|source| io_error(&packs_dir, source))?;
        Ok(Self { root, behind: None, packs: Arc::new(packs), known: Mutex::default() })
    }

    /// Open the store at `root` with writes done by a background thread, holding at most
    /// `pending_bytes_max` in memory. [`DirStore::flush`] (and dropping the store) waits for them.
    ///
    /// # Errors
    /// As [`DirStore::open`]; [`StoreError::Io`] also when the writer thread cannot be started.
    pub fn open_write_behind(root: impl Into<PathBuf>, pending_bytes_max: u64) -> Result<Self, StoreError> {
        let mut store = Self::open(root)?;
        let behind = WriteBehind::start(pending_bytes_max, store.packs.clone())
            .map_err(|source| io_error(&store.root, source))?;
        store.behind = Some(behind);
        Ok(store)
    }

    /// Wait until every write has landed on disk.
    ///
    /// # Errors
    /// [`StoreError::Io`], at the store's root, while a background write keeps failing (it is
    /// tried again until it lands, and its bytes are read from memory meanwhile).
    pub fn flush(&self) -> Result<(), StoreError> {
        match &self.behind {
            Some(behind) => behind.flush().map_err(|e| StoreError::Io {
                path: self.root.display().to_string(),
                source: std::io::Error::other(e),
            }),
            None => Ok(()),
        }
    }

    /// Where the store lives.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `blobs/<first two hex digits>/<digest>`: 256 shards keep directories small.
    #[cfg(test)]
    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_slot(digest).path()
    }

    fn blob_slot(&self, digest: &Digest) -> Slot<'_> {
        Slot { root: &self.root, key: (Kind::Blob, *digest) }
    }

    fn bundle_slot(&self, id: &Digest, kind: Kind) -> Slot<'_> {
        Slot { root: &self.root, key: (kind, *id) }
    }

    fn write(&self, slot: &Slot<'_>, bytes: &[u8]) -> Result<(), StoreError> {
        if let Some(behind) = &self.behind
            && behind.queue(slot.key, || slot.path(), bytes)
        {
            return Ok(());
        }
        let path = slot.path();
        crate::file::write_file(&path, bytes).map_err(|source| io_error(&path, source))
    }

    fn pending(&self, slot: &Slot<'_>) -> Option<Arc<Vec<u8>>> {
        self.behind.as_ref().and_then(|b| b.read(&slot.key))
    }

    fn exists(&self, slot: &Slot<'_>) -> bool {
        self.held(slot) || slot.path().exists()
    }

    /// Waiting to be written, or in a pack this process has indexed: found without a file
    /// system call.
    fn held(&self, slot: &Slot<'_>) -> bool {
        self.pending(slot).is_some() || self.packs.contains(&slot.key)
    }

    /// The size of a stored entry, pending, packed or on disk; `None` when absent.
    fn size_of(&self, slot: &Slot<'_>) -> Result<Option<u64>, StoreError> {
        if let Some(bytes) = self.pending(slot) {
            return Ok(Some(bytes.len() as u64));
        }
        if let Some(len) = self.packs.len_of(&slot.key) {
            return Ok(Some(len));
        }
        let path = slot.path();
        match std::fs::metadata(&path) {
            Ok(meta) => Ok(Some(meta.len())),
            // Another process may have packed it since this one looked.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.packs.rescan().map_err(|source| io_error(&self.root.join("packs"), source))?;
                Ok(self.packs.len_of(&slot.key))
            }
            Err(e) => Err(io_error(&path, e)),
        }
    }

    /// A stored entry's bytes, pending, packed or on disk; `None` when absent.
    fn read(&self, slot: &Slot<'_>) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(bytes) = self.pending(slot) {
            return Ok(Some(bytes.as_ref().clone()));
        }
        let packs_error = |source| io_error(&self.root.join("packs"), source);
        if let Some(bytes) = self.packs.read(&slot.key).map_err(packs_error)? {
            return Ok(Some(bytes));
        }
        let path = slot.path();
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.packs.rescan().map_err(packs_error)?;
                self.packs.read(&slot.key).map_err(packs_error)
            }
            Err(e) => Err(io_error(&path, e)),
        }
    }

    /// Record a bundle's manifest and signature under its id.
    ///
    /// # Errors
    /// [`StoreError::Io`] when a file is written in place and cannot be; a write left to the
    /// background writer reports its failure from [`DirStore::flush`].
    pub fn put_bundle(&self, id: &Digest, manifest: &[u8], signature: &[u8]) -> Result<(), StoreError> {
        self.write(&self.bundle_slot(id, Kind::Signature), signature)?;
        self.write(&self.bundle_slot(id, Kind::Manifest), manifest)
    }

    /// A bundle's manifest and signature bytes.
    ///
    /// # Errors
    /// [`StoreError::BundleNotFound`] when the manifest or the signature is absent;
    /// [`StoreError::TooLarge`] when either is over 256 MiB; [`StoreError::Io`] when reading fails.
    pub fn get_bundle(&self, id: &Digest) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        let read = |slot: Slot| {
            let size_bytes = self.size_of(&slot)?.ok_or_else(|| StoreError::BundleNotFound(id.to_hex()))?;
            if size_bytes > BUNDLE_FILE_BYTES_MAX {
                return Err(StoreError::TooLarge { digest: *id, size_bytes, limit_bytes: BUNDLE_FILE_BYTES_MAX });
            }
            self.read(&slot)?.ok_or_else(|| StoreError::BundleNotFound(id.to_hex()))
        };
        Ok((read(self.bundle_slot(id, Kind::Manifest))?, read(self.bundle_slot(id, Kind::Signature))?))
    }

    /// Every bundle id in the store, sorted.
    ///
    /// # Errors
    /// [`StoreError::Io`] when `bundles/` or `packs/` cannot be listed.
    pub fn bundle_ids(&self) -> Result<Vec<Digest>, StoreError> {
        let dir = self.root.join("bundles");
        let id_of = |path: &Path| path.file_name()?.to_str()?.strip_suffix(".json")?.parse::<Digest>().ok();
        let mut ids: Vec<Digest> = std::fs::read_dir(&dir)
            .map_err(|source| io_error(&dir, source))?
            .filter_map(|entry| id_of(&entry.ok()?.path()))
            .collect();
        if let Some(behind) = &self.behind {
            ids.extend(behind.pending_of(Kind::Manifest));
        }
        self.packs.rescan().map_err(|source| io_error(&self.root.join("packs"), source))?;
        ids.extend(self.packs.keys_of(Kind::Manifest));
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Resolve a full id or a unique prefix of at least 6 hex characters.
    ///
    /// # Errors
    /// [`StoreError::BundleNotFound`] when `text` is shorter than 6 characters, not hex, or the
    /// prefix of no bundle (a full id is returned without looking); [`StoreError::AmbiguousPrefix`]
    /// when it is the prefix of several; [`StoreError::Io`] as [`DirStore::bundle_ids`].
    pub fn resolve(&self, text: &str) -> Result<Digest, StoreError> {
        if let Ok(id) = text.parse::<Digest>() {
            return Ok(id);
        }
        if text.len() < 6 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::BundleNotFound(text.to_string()));
        }
        let prefix = text.to_ascii_lowercase();
        let matches: Vec<Digest> =
            self.bundle_ids()?.into_iter().filter(|id| id.to_hex().starts_with(&prefix)).collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(StoreError::BundleNotFound(text.to_string())),
            _ => Err(StoreError::AmbiguousPrefix(text.to_string())),
        }
    }
}

/// Largest manifest or signature file the store reads.
const BUNDLE_FILE_BYTES_MAX: u64 = 256 << 20;

impl DirStore {
    fn is_known(&self, digest: &Digest) -> bool {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).contains(digest)
    }

    fn remember(&self, digest: Digest) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= KNOWN_DIGESTS_MAX {
            known.clear();
        }
        known.insert(digest);
    }
}

impl BlobStore for DirStore {
    fn put(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(bytes);
        if self.is_known(&digest) {
            return Ok(digest);
        }
        let slot = self.blob_slot(&digest);
        // A small blob this process writes behind goes to a pack: looking for a file of its own
        // (one a write in place or another process left) costs a path and a failed `stat` per
        // new blob, to save at most a duplicate pack record.
        let packable = self.behind.is_some() && bytes.len() <= crate::pack::PACKED_BYTES_MAX;
        if !self.held(&slot) && (packable || !slot.path().exists()) {
            self.write(&slot, bytes)?;
        }
        self.remember(digest);
        Ok(digest)
    }

    fn get(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let slot = self.blob_slot(digest);
        let size_bytes = self.size_of(&slot)?.ok_or(StoreError::NotFound(*digest))?;
        if size_bytes > BLOB_BYTES_MAX {
            return Err(StoreError::TooLarge { digest: *digest, size_bytes, limit_bytes: BLOB_BYTES_MAX });
        }
        checked(digest, self.read(&slot)?.ok_or(StoreError::NotFound(*digest))?)
    }

    fn has(&self, digest: &Digest) -> bool {
        self.is_known(digest) || self.exists(&self.blob_slot(digest))
    }

    /// Copy through a temporary file beside the blobs, hashing on the way, then rename it into
    /// place under its digest.
    fn put_stream(&self, reader: &mut dyn Read, bytes_max: u64) -> Result<(Digest, u64), StoreError> {
        let blobs = self.root.join("blobs");
        let tmp = blobs.join(format!(".stream.{}.{:?}", std::process::id(), std::thread::current().id()));
        let copied = (|| -> std::io::Result<(Digest, u64)> {
            let mut file = std::fs::File::create(&tmp)?;
            let mut hasher = blake3::Hasher::new();
            let mut buffer = vec![0u8; STREAM_BUFFER_BYTES];
            let mut total = 0u64;
            loop {
                let read = reader.read(&mut buffer)?;
                if read == 0 {
                    break;
                }
                total += read as u64;
                if total > bytes_max {
                    return Err(std::io::Error::other(TooLong));
                }
                hasher.update(&buffer[..read]);
                file.write_all(&buffer[..read])?;
            }
            Ok((Digest::from_bytes(*hasher.finalize().as_bytes()), total))
        })();
        let (digest, size) = match copied {
            Ok(done) => done,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                if e.get_ref().is_some_and(|inner| inner.is::<TooLong>()) {
                    return Err(StoreError::StreamTooLarge { limit_bytes: bytes_max });
                }
                return Err(io_error(&tmp, e));
            }
        };
        let slot = self.blob_slot(&digest);
        if self.is_known(&digest) || self.exists(&slot) {
            let _ = std::fs::remove_file(&tmp);
        } else {
            let path = slot.path();
            let placed =
                path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::rename(&tmp, &path));
            if let Err(e) = placed {
                let _ = std::fs::remove_file(&tmp);
                return Err(io_error(&path, e));
            }
        }
        self.remember(digest);
        Ok((digest, size))
    }

    /// Only blobs in files of their own can be hard-linked; packed ones are copied.
    fn file_path(&self, digest: &Digest) -> Option<PathBuf> {
        let slot = self.blob_slot(digest);
        let path = slot.path();
        (self.pending(&slot).is_none() && path.is_file()).then_some(path)
    }
}

/// The buffer [`DirStore::put_stream`] copies through.
const STREAM_BUFFER_BYTES: usize = 256 * 1024;

/// A stream ran past its bound.
#[derive(Debug)]
struct TooLong;

impl std::fmt::Display for TooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the stream is longer than its bound")
    }
}

impl std::error::Error for TooLong {}

/// Where an entry lives: a pack record under its key, or its own file (whose path is only made
/// when it is needed: most entries are packed).
struct Slot<'a> {
    root: &'a Path,
    key: Key,
}

impl Slot<'_> {
    /// `blobs/<first two hex digits>/<digest>` (256 shards keep directories small), or
    /// `bundles/<id>.json` and `bundles/<id>.sig`.
    fn path(&self) -> PathBuf {
        let (kind, digest) = &self.key;
        match kind {
            Kind::Blob => {
                let hex = digest.to_hex();
                self.root.join("blobs").join(&hex[..2]).join(hex)
            }
            Kind::Manifest => self.root.join("bundles").join(format!("{digest}.json")),
            Kind::Signature => self.root.join("bundles").join(format!("{digest}.sig")),
        }
    }
}

fn io_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io { path: path.display().to_string(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_deduplicated_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DirStore::open(dir.path()).expect("open");
        let a = store.put(b"component").expect("put");
        assert_eq!(store.put(b"component").expect("put"), a);
        let shard = dir.path().join("blobs").join(&a.to_hex()[..2]);
        assert_eq!(std::fs::read_dir(&shard).expect("dir").count(), 1);
        assert_eq!(store.get(&a).expect("get"), b"component");
        std::fs::write(shard.join(a.to_hex()), b"tampered").expect("write");
        assert!(matches!(store.get(&a), Err(StoreError::Corrupt { .. })));
        assert!(matches!(store.get(&Digest::of(b"absent")), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn write_behind_serves_reads_before_and_after_landing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DirStore::open_write_behind(dir.path(), 1 << 20).expect("open");
        let digests: Vec<Digest> = (0..200).map(|i| store.put(format!("blob {i}").as_bytes()).expect("put")).collect();
        let id = Digest::of(b"manifest");
        store.put_bundle(&id, b"{}", b"sig").expect("put");
        assert_eq!(store.get(&digests[7]).expect("get"), b"blob 7");
        assert_eq!(store.resolve(&id.to_hex()[..8]).expect("resolve"), id);
        store.flush().expect("flush");
        drop(store);
        let reopened = DirStore::open(dir.path()).expect("open");
        assert_eq!(reopened.get(&digests[199]).expect("landed"), b"blob 199");
        assert_eq!(reopened.get_bundle(&id).expect("landed").1, b"sig");
        let files = |sub: &str| walkdir_count(&dir.path().join(sub));
        assert_eq!((files("blobs"), files("bundles"), files("packs")), (0, 0, 1), "small entries land in one pack");
    }

    #[test]
    fn writes_from_many_threads_land_whole_and_large_ones_in_files_of_their_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(DirStore::open_write_behind(dir.path(), 64 << 20).expect("open"));
        let big = vec![7u8; crate::pack::PACKED_BYTES_MAX + 1];
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..500)
                        .map(|i| store.put(format!("thread {t} blob {i}").as_bytes()).expect("put"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let large = store.put(&big).expect("put");
        let ids: Vec<Digest> = (0..50u8)
            .map(|i| {
                let id = Digest::of(&[i]);
                store.put_bundle(&id, b"{}", &[i]).expect("put");
                id
            })
            .collect();
        let digests: Vec<Digest> = threads.into_iter().flat_map(|t| t.join().expect("thread")).collect();
        assert_eq!(store.bundle_ids().expect("ids").len(), 50, "pending manifests are listed");
        store.flush().expect("flush");
        drop(store);
        let reopened = DirStore::open(dir.path()).expect("open");
        for digest in &digests {
            assert!(reopened.get(digest).expect("landed").starts_with(b"thread "));
        }
        assert_eq!(reopened.get(&large).expect("landed"), big);
        assert!(reopened.blob_path(&large).is_file(), "a large blob has a file of its own");
        assert_eq!(reopened.bundle_ids().expect("ids"), {
            let mut sorted = ids.clone();
            sorted.sort();
            sorted
        });
    }

    fn walkdir_count(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| if e.path().is_dir() { walkdir_count(&e.path()) } else { 1 }).sum())
            .unwrap_or(0)
    }

    #[test]
    fn a_background_write_that_failed_lands_once_the_disk_lets_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DirStore::open_write_behind(dir.path(), 64 << 20).expect("open");
        // Too large for a pack, so a file of its own; its shard is a file, not a directory.
        let big = vec![7u8; (1 << 20) + 1];
        let digest = Digest::of(&big);
        let shard = store.blob_path(&digest).parent().expect("shard").to_path_buf();
        std::fs::create_dir_all(shard.parent().expect("blobs")).expect("blobs");
        std::fs::write(&shard, b"in the way").expect("block");
        assert_eq!(store.put(&big).expect("queued"), digest);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while store.flush().is_ok() {
            assert!(std::time::Instant::now() < deadline, "the write never failed");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(store.get(&digest).expect("served from memory meanwhile"), big);
        std::fs::remove_file(&shard).expect("unblock");
        while let Err(e) = store.flush() {
            assert!(std::time::Instant::now() < deadline, "never landed: {e}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        drop(store);
        assert_eq!(DirStore::open(dir.path()).expect("open").get(&digest).expect("landed"), big);
    }

    #[test]
    fn write_behind_past_its_budget_writes_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DirStore::open_write_behind(dir.path(), 16).expect("open");
        let big = store.put(&[9u8; 1000]).expect("put");
        assert!(store.blob_path(&big).exists(), "over budget: written before put returned");
    }

    #[test]
    fn bundle_ids_resolve_by_unique_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DirStore::open(dir.path()).expect("open");
        let id = Digest::of(b"manifest");
        store.put_bundle(&id, b"{}", b"sig").expect("put");
        assert_eq!(store.resolve(&id.to_hex()[..8]).expect("resolve"), id);
        assert!(matches!(store.resolve("abc"), Err(StoreError::BundleNotFound(_))));
        assert_eq!(store.get_bundle(&id).expect("get").1, b"sig");
    }
}
