//! Bundles as files: a `.tar.zst` with normalised entries (sorted, zero mtimes and owners, fixed
//! modes, ustar headers, one zstd level), so the same bundle always packs to the same bytes.
//! Reading one is defensive: only known entry names, regular files, bounded sizes and counts,
//! and every part checked by [`crate::Bundle::open`] afterwards.

use crate::Digest;
use crate::bundle::Manifest;
use crate::store::{BlobStore, MemoryStore, StoreError};
use std::collections::BTreeMap;
use std::io::{Read, Write};

/// Named entries, in the order they are written.
const MANIFEST: &str = "manifest.json";
const SIGNATURE: &str = "signature";
const ACTION: &str = "action.json";
const TAPE: &str = "tape.jsonl";
const RESULT: &str = "result.json";
const EXEC: &str = "exec.json";
/// The zstd level archives use: changing it changes every archive's bytes.
const ZSTD_LEVEL: i32 = 9;

/// Bounds on an archive being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Entries in the archive.
    pub entries_max: u64,
    /// Bytes of one entry, decompressed.
    pub entry_bytes_max: u64,
    /// Bytes of all entries, decompressed: the bound on a decompression bomb.
    pub total_bytes_max: u64,
}

/// Default archive bounds.
pub const ARCHIVE_LIMITS_DEFAULT: ArchiveLimits =
    ArchiveLimits { entries_max: 250_000, entry_bytes_max: 1 << 30, total_bytes_max: 4 << 30 };

impl Default for ArchiveLimits {
    fn default() -> Self {
        ARCHIVE_LIMITS_DEFAULT
    }
}

/// An archive could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Not a zstd-compressed tar, or truncated.
    #[error("not a readable bundle archive (.tar.zst): {0}")]
    Unreadable(String),
    /// An entry name outside the format.
    #[error(
        "archive entry {0:?} is not part of a bundle (allowed: manifest.json, signature, action.json, tape.jsonl, result.json, exec.json, blobs/<blake3>)"
    )]
    UnexpectedEntry(String),
    /// The same entry twice.
    #[error("archive entry {0:?} appears twice")]
    DuplicateEntry(String),
    /// A required entry is absent.
    #[error("archive has no {0}")]
    MissingEntry(&'static str),
    /// A bound was exceeded.
    #[error("archive {what} exceeds {limit} ({setting})")]
    TooLarge {
        /// What went past the bound, for the message (`entry blobs/… of 5000000000 bytes`).
        what: String,
        /// The bound, in the unit its setting names (entries or bytes).
        limit: u64,
        /// The [`ArchiveLimits`] field holding the bound (`entry_bytes_max`, ...).
        setting: &'static str,
    },
    /// The manifest cannot be read well enough to place the documents.
    #[error("archive manifest is invalid: {0}")]
    Manifest(String),
    /// A blob needed for export is missing.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing to the output, or compressing into it, failed (a full disk, a closed pipe).
    #[error("cannot write the archive: {0}")]
    Write(#[from] std::io::Error),
}

/// Write the bundle `manifest` + `signature` with all its parts from `store` to `out`.
///
/// # Errors
/// [`ArchiveError::Manifest`] when `manifest` does not parse or a blob's file is not the size it
/// lists; [`ArchiveError::Store`] when a part is missing from `store`, corrupt or unreadable;
/// [`ArchiveError::Write`] when writing to `out` fails.
pub fn export(store: &dyn BlobStore, manifest: &[u8], signature: &[u8], out: impl Write) -> Result<(), ArchiveError> {
    let parsed: Manifest = serde_json::from_slice(manifest).map_err(|e| ArchiveError::Manifest(e.to_string()))?;
    let encoder = zstd::stream::Encoder::new(out, ZSTD_LEVEL)?;
    let mut tar = tar::Builder::new(encoder);
    tar.mode(tar::HeaderMode::Deterministic);
    append(&mut tar, MANIFEST, manifest)?;
    append(&mut tar, SIGNATURE, signature)?;
    for (name, blob) in [(ACTION, parsed.action), (TAPE, parsed.tape), (RESULT, parsed.result), (EXEC, parsed.exec)] {
        append(&mut tar, name, &store.get(&blob.digest)?)?;
    }
    for blob in &parsed.blobs {
        let name = format!("blobs/{}", blob.digest);
        match store.file_path(&blob.digest) {
            // A blob in a file of its own (a component, a large mounted file) is streamed into
            // the archive and checked against its digest on the way, never read whole.
            Some(path) => append_file(&mut tar, &name, &path, blob)?,
            None => append(&mut tar, &name, &store.get(&blob.digest)?)?,
        }
    }
    let encoder = tar.into_inner()?;
    encoder.finish()?.flush()?;
    Ok(())
}

fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    path: &std::path::Path,
    blob: &crate::BlobRef,
) -> Result<(), ArchiveError> {
    let file =
        std::fs::File::open(path).map_err(|source| StoreError::Io { path: path.display().to_string(), source })?;
    let size = file.metadata().map_err(|source| StoreError::Io { path: path.display().to_string(), source })?.len();
    if size != blob.size_bytes {
        return Err(ArchiveError::Manifest(format!(
            "blob {} is {size} bytes in the store but {} in the manifest",
            blob.digest, blob.size_bytes
        )));
    }
    let header = entry_header(name, size)?;
    let mut reader = Hashing { inner: file, hasher: blake3::Hasher::new() };
    tar.append(&header, &mut reader)?;
    let found = Digest::from_bytes(*reader.hasher.finalize().as_bytes());
    if found != blob.digest {
        return Err(StoreError::Corrupt { expected: blob.digest, found }.into());
    }
    Ok(())
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        Ok(read)
    }
}

fn append<W: Write>(tar: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    tar.append(&entry_header(name, bytes.len() as u64)?, bytes)
}

/// The header of one archive entry: a regular file of `size` bytes, with no owner, time or
/// mode of its own, so the same bundle always packs to the same bytes.
fn entry_header(name: &str, size: u64) -> std::io::Result<tar::Header> {
    let mut header = tar::Header::new_ustar();
    header.set_path(name)?;
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    Ok(header)
}

/// What an archive held: its parts in a store, and the manifest and signature bytes.
pub struct Imported {
    /// Every part, under the digest the archive claims (checked when read).
    pub store: MemoryStore,
    /// The manifest bytes.
    pub manifest: Vec<u8>,
    /// The signature bytes.
    pub signature: Vec<u8>,
}

/// Read an archive within `limits`. Nothing is checked beyond the container here; pass the
/// result to [`crate::Bundle::open`].
///
/// # Errors
/// [`ArchiveError::Unreadable`] when `input` is not a zstd-compressed tar or is truncated;
/// [`ArchiveError::TooLarge`] past `limits`; [`ArchiveError::UnexpectedEntry`],
/// [`ArchiveError::DuplicateEntry`] or [`ArchiveError::MissingEntry`] for an entry outside the
/// format (or not a regular file), twice, or absent; [`ArchiveError::Store`] when a `blobs/` entry
/// does not hash to its name; [`ArchiveError::Manifest`] when the manifest does not parse.
pub fn import(input: impl Read, limits: ArchiveLimits) -> Result<Imported, ArchiveError> {
    let unreadable = |e: std::io::Error| ArchiveError::Unreadable(e.to_string());
    let decoder = zstd::stream::Decoder::new(input).map_err(unreadable)?;
    let mut archive = tar::Archive::new(decoder);
    let mut named: BTreeMap<&'static str, Vec<u8>> = BTreeMap::new();
    let store = MemoryStore::default();
    let mut seen_blobs = std::collections::BTreeSet::new();
    let (mut entries, mut total) = (0u64, 0u64);
    for entry in archive.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        entries += 1;
        if entries > limits.entries_max {
            return Err(too_large(
                format!("has more than {} entries", limits.entries_max),
                limits.entries_max,
                "entries_max",
            ));
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(ArchiveError::UnexpectedEntry(name));
        }
        let size = entry.header().size().map_err(unreadable)?;
        if size > limits.entry_bytes_max {
            return Err(too_large(format!("entry {name} of {size} bytes"), limits.entry_bytes_max, "entry_bytes_max"));
        }
        total = total.saturating_add(size);
        if total > limits.total_bytes_max {
            return Err(too_large(
                format!("content of more than {} bytes", limits.total_bytes_max),
                limits.total_bytes_max,
                "total_bytes_max",
            ));
        }
        let mut bytes = Vec::with_capacity(size.min(1 << 20) as usize);
        entry.by_ref().take(size).read_to_end(&mut bytes).map_err(unreadable)?;
        if bytes.len() as u64 != size {
            return Err(ArchiveError::Unreadable(format!("entry {name} is truncated")));
        }
        if let Some(hex) = name.strip_prefix("blobs/") {
            let digest: Digest = hex.parse().map_err(|_| ArchiveError::UnexpectedEntry(name.clone()))?;
            if !seen_blobs.insert(digest) {
                return Err(ArchiveError::DuplicateEntry(name));
            }
            // Every blob entry, referenced or not, holds what its name says: nothing in an
            // archive that verifies is content the signature does not vouch for.
            let found = Digest::of(&bytes);
            if found != digest {
                return Err(ArchiveError::Store(StoreError::Corrupt { expected: digest, found }));
            }
            store.insert_unchecked(digest, bytes);
            continue;
        }
        let known = [MANIFEST, SIGNATURE, ACTION, TAPE, RESULT, EXEC]
            .into_iter()
            .find(|k| *k == name)
            .ok_or_else(|| ArchiveError::UnexpectedEntry(name.clone()))?;
        if named.insert(known, bytes).is_some() {
            return Err(ArchiveError::DuplicateEntry(name));
        }
    }
    let mut take = |name: &'static str| named.remove(name).ok_or(ArchiveError::MissingEntry(name));
    let manifest = take(MANIFEST)?;
    let signature = take(SIGNATURE)?;
    let parsed: Manifest = serde_json::from_slice(&manifest).map_err(|e| ArchiveError::Manifest(e.to_string()))?;
    for (name, blob) in [(ACTION, parsed.action), (TAPE, parsed.tape), (RESULT, parsed.result), (EXEC, parsed.exec)] {
        store.insert_unchecked(blob.digest, take(name)?);
    }
    Ok(Imported { store, manifest, signature })
}

fn too_large(what: String, limit: u64, setting: &'static str) -> ArchiveError {
    ArchiveError::TooLarge { what, limit, setting }
}
