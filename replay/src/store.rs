//! Content-addressed storage. A [`BlobStore`] keeps bytes under their blake3 digest, so anything
//! stored twice (a component run a thousand times, a mount that did not change) is kept once.
//! [`DirStore`] is the on-disk store a host and an auditor use; [`MemoryStore`] holds a bundle
//! read from an archive.

use crate::Digest;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A blob store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No blob has this digest.
    #[error("blob {0} is not in the store")]
    NotFound(Digest),
    /// The stored bytes do not hash to their name.
    #[error("blob {expected} is corrupt: its contents hash to {found}")]
    Corrupt {
        /// Its name.
        expected: Digest,
        /// What its bytes hash to.
        found: Digest,
    },
    /// A blob larger than the store will read.
    #[error("blob {digest} is {size_bytes} bytes, more than the {limit_bytes}-byte limit (blob_bytes_max)")]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// Its size.
        size_bytes: u64,
        /// The limit.
        limit_bytes: u64,
    },
    /// No bundle has this id (or prefix).
    #[error("no bundle {0} in the store")]
    BundleNotFound(String),
    /// An id prefix matches several bundles.
    #[error("bundle id prefix {0} is ambiguous; give more characters")]
    AmbiguousPrefix(String),
    /// The file system failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Largest blob a store reads into memory: 2 GiB.
pub const BLOB_BYTES_MAX: u64 = 2 << 30;

/// Bytes kept under their digest.
pub trait BlobStore: Send + Sync {
    /// Store `bytes`; storing the same bytes again is free.
    fn put(&self, bytes: &[u8]) -> Result<Digest, StoreError>;
    /// The bytes named `digest`, checked against it.
    fn get(&self, digest: &Digest) -> Result<Vec<u8>, StoreError>;
    /// Whether `digest` is present (not checked).
    fn has(&self, digest: &Digest) -> bool;
}

/// Check that `bytes` really are `digest`.
pub(crate) fn checked(digest: &Digest, bytes: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    let found = Digest::of(&bytes);
    if found != *digest {
        return Err(StoreError::Corrupt { expected: *digest, found });
    }
    Ok(bytes)
}

/// An in-memory store.
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

/// The on-disk store: `blobs/<digest>` and `bundles/<id>.json` (the manifest) with
/// `bundles/<id>.sig` (its signature).
pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    /// Open (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        for sub in ["blobs", "bundles"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(|source| io_error(&dir, source))?;
        }
        Ok(Self { root })
    }

    /// Where the store lives.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `blobs/<first two hex digits>/<digest>`: 256 shards keep directories small.
    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join("blobs").join(&hex[..2]).join(hex)
    }

    /// Record a bundle's manifest and signature under its id.
    pub fn put_bundle(&self, id: &Digest, manifest: &[u8], signature: &[u8]) -> Result<(), StoreError> {
        let dir = self.root.join("bundles");
        write_atomically(&dir.join(format!("{id}.sig")), signature)?;
        write_atomically(&dir.join(format!("{id}.json")), manifest)
    }

    /// A bundle's manifest and signature bytes.
    pub fn get_bundle(&self, id: &Digest) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        let dir = self.root.join("bundles");
        let read = |path: PathBuf| {
            std::fs::read(&path).map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => StoreError::BundleNotFound(id.to_hex()),
                _ => io_error(&path, source),
            })
        };
        Ok((read(dir.join(format!("{id}.json")))?, read(dir.join(format!("{id}.sig")))?))
    }

    /// Every bundle id in the store, sorted.
    pub fn bundle_ids(&self) -> Result<Vec<Digest>, StoreError> {
        let dir = self.root.join("bundles");
        let mut ids: Vec<Digest> = std::fs::read_dir(&dir)
            .map_err(|source| io_error(&dir, source))?
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                name.strip_suffix(".json")?.parse().ok()
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Resolve a full id or a unique prefix of at least 6 hex characters.
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

impl BlobStore for DirStore {
    fn put(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(bytes);
        let path = self.blob_path(&digest);
        if !path.exists() {
            if let Some(shard) = path.parent() {
                std::fs::create_dir_all(shard).map_err(|source| io_error(shard, source))?;
            }
            write_atomically(&path, bytes)?;
        }
        Ok(digest)
    }

    fn get(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let size_bytes = match std::fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::NotFound(*digest)),
            Err(e) => return Err(io_error(&path, e)),
        };
        if size_bytes > BLOB_BYTES_MAX {
            return Err(StoreError::TooLarge { digest: *digest, size_bytes, limit_bytes: BLOB_BYTES_MAX });
        }
        let bytes = std::fs::read(&path).map_err(|source| io_error(&path, source))?;
        checked(digest, bytes)
    }

    fn has(&self, digest: &Digest) -> bool {
        self.blob_path(digest).exists()
    }
}

fn io_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io { path: path.display().to_string(), source }
}

/// Write beside `path` and rename into place: readers never see half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension(format!("tmp.{}.{:?}", std::process::id(), std::thread::current().id()));
    let result = (|| {
        // Not fsynced: every run writes a bundle, and a sync per file would cost more than the
        // run. A crash can lose the newest bundles; it cannot make a wrong one pass, because
        // every read checks the digest.
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|source| io_error(path, source))
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
