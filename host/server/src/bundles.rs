//! Serving bundles over the network: finding one by its full id (this node's store, then Redis,
//! then the shared store), reading whom it belongs to from its own signed `action.json`, and
//! streaming its archive from the blocking pool, a chunk at a time, never built whole in memory.

use crate::daemon::Daemon;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use guild_replay::{Action, BlobStore, Digest, Manifest, Principal, StoreError, archive};
use std::sync::Arc;

/// Chunks of an archive in flight to a slow client at most; the export waits for it past that.
const ARCHIVE_CHUNKS_QUEUED_MAX: usize = 16;
/// Bytes of one chunk.
const ARCHIVE_CHUNK_BYTES: usize = 64 * 1024;

/// A finished run's output text, read back from its bundle (none when it cannot be).
pub(crate) fn read_output(daemon: &Daemon, finished: &crate::runs::Finished) -> Option<String> {
    let output = finished.bundle.and_then(|id| {
        let (manifest, _) = daemon.store().get_bundle(&id).ok()?;
        let manifest: guild_replay::Manifest = serde_json::from_slice(&manifest).ok()?;
        let result = daemon.store().get(&manifest.result.digest).ok()?;
        let result: guild_replay::RunResult = serde_json::from_slice(&result).ok()?;
        daemon.store().get(&result.output?.digest).ok()
    });
    output.and_then(|bytes| String::from_utf8(bytes).ok())
}

/// A bundle found somewhere this node can read: its manifest, signature and parts.
pub(crate) struct BundleCopy {
    id: Digest,
    manifest: Vec<u8>,
    signature: Vec<u8>,
    store: Arc<dyn BlobStore>,
}

/// Why a bundle could not be looked for.
pub(crate) enum FindError {
    /// Redis cannot be reached.
    Unavailable(String),
    /// A store failed (not: the bundle is absent).
    Failed(String),
}

/// The bundle `id`: from this node's store, else (with `--redis`) from Redis or the shared store.
pub(crate) async fn find(daemon: &Daemon, id: &Digest) -> Result<Option<BundleCopy>, FindError> {
    let local: Arc<dyn BlobStore> = daemon.store().clone();
    if let Some(copy) = from_dir(daemon.store().clone(), local, *id).await? {
        return Ok(Some(copy));
    }
    let Some(remote) = daemon.remote() else { return Ok(None) };
    match remote.queue.get_bundle(id).await {
        Ok(Some((manifest, signature, store))) => {
            return Ok(Some(BundleCopy { id: *id, manifest, signature, store: Arc::new(store) }));
        }
        Ok(None) => {}
        Err(e) if e.is_unavailable() => return Err(FindError::Unavailable(e.to_string())),
        Err(e) => return Err(FindError::Failed(e.to_string())),
    }
    match remote.shared_store.clone() {
        Some(shared) => from_dir(shared.clone(), shared, *id).await,
        None => Ok(None),
    }
}

async fn from_dir(
    dir: Arc<guild_replay::DirStore>,
    store: Arc<dyn BlobStore>,
    id: Digest,
) -> Result<Option<BundleCopy>, FindError> {
    let found = tokio::task::spawn_blocking(move || dir.get_bundle(&id))
        .await
        .map_err(|e| FindError::Failed(format!("the store task failed: {e}")))?;
    match found {
        Ok((manifest, signature)) => Ok(Some(BundleCopy { id, manifest, signature, store })),
        Err(StoreError::BundleNotFound(_)) => Ok(None),
        Err(e) => Err(FindError::Failed(e.to_string())),
    }
}

/// The bundle `id` wherever this node can read it ([`find`]), opened and verified (its
/// signature and every part), with the store its parts are in.
///
/// # Errors
/// A description for people when it cannot be looked for, is absent, or does not verify.
pub(crate) async fn open(daemon: &Daemon, id: &Digest) -> Result<(guild_replay::Bundle, Arc<dyn BlobStore>), String> {
    let copy = match find(daemon, id).await {
        Ok(Some(copy)) => copy,
        Ok(None) => return Err(format!("bundle {id} is not kept anywhere this node can read")),
        Err(FindError::Unavailable(e) | FindError::Failed(e)) => return Err(format!("bundle {id}: {e}")),
    };
    let BundleCopy { manifest, signature, store, .. } = copy;
    tokio::task::spawn_blocking(move || {
        guild_replay::Bundle::open(store.as_ref(), &manifest, &signature, None)
            .map(|bundle| (bundle, store))
            .map_err(|e| format!("bundle does not verify: {e}"))
    })
    .await
    .map_err(|e| format!("the store task failed: {e}"))?
}

impl BundleCopy {
    /// Whom the bundle says the run was for (`None`: a bundle without one, readable by admins
    /// only). Also checks that every part is here, so a broken bundle fails before streaming.
    ///
    /// # Errors
    /// A description when the manifest or `action.json` cannot be read or a part is missing.
    pub(crate) async fn owner(&self) -> Result<Option<Principal>, String> {
        let (store, manifest, id) = (self.store.clone(), self.manifest.clone(), self.id);
        let owner = tokio::task::spawn_blocking(move || {
            let parsed: Manifest = serde_json::from_slice(&manifest)
                .map_err(|e| format!("bundle {id}: its manifest is unreadable: {e}"))?;
            if let Some(missing) = parsed.parts().find(|part| !store.has(&part.digest)) {
                return Err(format!("bundle {id} is incomplete here: part {} is missing", missing.digest));
            }
            let action = store.get(&parsed.action.digest).map_err(|e| format!("bundle {id}: {e}"))?;
            let action: Action = serde_json::from_slice(&action)
                .map_err(|e| format!("bundle {id}: its action.json is unreadable: {e}"))?;
            Ok(action.principal)
        });
        owner.await.map_err(|e| format!("the store task failed: {e}"))?
    }

    /// The bundle's `.tar.zst` archive in memory, when it is at most `bytes_max` (`None` past
    /// that, or when the export fails): for an answer that must carry it whole.
    pub(crate) async fn archive(&self, bytes_max: usize) -> Option<Vec<u8>> {
        let (store, manifest, signature) = (self.store.clone(), self.manifest.clone(), self.signature.clone());
        tokio::task::spawn_blocking(move || {
            let mut out = Bounded { bytes: Vec::new(), bytes_max };
            archive::export(store.as_ref(), &manifest, &signature, &mut out).ok().map(|()| out.bytes)
        })
        .await
        .ok()
        .flatten()
    }

    /// The bundle's `.tar.zst` archive as a streamed response body. A failure after the first
    /// bytes were sent ends the body early (the archive would not open), and is logged.
    pub(crate) fn stream(self) -> Response {
        let (chunks, body) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(ARCHIVE_CHUNKS_QUEUED_MAX);
        let BundleCopy { id, manifest, signature, store } = self;
        tokio::task::spawn_blocking(move || {
            let writer = std::io::BufWriter::with_capacity(ARCHIVE_CHUNK_BYTES, ChunkWriter(chunks.clone()));
            if let Err(e) = archive::export(store.as_ref(), &manifest, &signature, writer) {
                tracing::error!(bundle = %id, error = %e, "exporting the bundle failed part way; the response was cut short");
                let _ = chunks.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        });
        let stream = futures_util::stream::unfold(body, |mut body| async move { body.recv().await.map(|c| (c, body)) });
        ([(axum::http::header::CONTENT_TYPE, "application/zstd")], axum::body::Body::from_stream(stream))
            .into_response()
    }
}

/// A buffer that refuses to grow past `bytes_max`.
struct Bounded {
    bytes: Vec<u8>,
    bytes_max: usize,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len().saturating_add(buf.len()) > self.bytes_max {
            return Err(std::io::Error::other("the archive is larger than an answer may carry"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Hands what the export writes to the response, waiting while the client is slow; fails once
/// the client is gone, which stops the export.
struct ChunkWriter(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>);

impl std::io::Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Bounded;
    use std::io::Write;

    #[test]
    fn an_archive_buffer_refuses_to_grow_past_its_bound() {
        let mut out = Bounded { bytes: Vec::new(), bytes_max: 8 };
        out.write_all(b"12345678").expect("fits");
        assert!(out.write_all(b"9").is_err(), "one byte past bytes_max");
        assert_eq!(out.bytes, b"12345678");
    }
}
