//! Sharing each attempt's bundle: its parts and documents into Redis for every API node to
//! serve, or into the shared store when they are too large for Redis.

use super::Worker;
use guild_replay::{BlobRef, BlobStore, Digest, DirStore, Manifest};
use std::collections::HashSet;
use std::time::Duration;

/// Parts at least this large are shared between bundles in Redis (smaller ones travel inside
/// each bundle's hash), and remembered as present there.
const KNOWN_BLOB_BYTES_MIN: u64 = guild_queue::INLINE_PART_BYTES_MAX as u64;
/// At most this many are remembered (then forgotten all at once).
const KNOWN_BLOBS_MAX: usize = 10_000;

impl Worker {
    /// Share the bundle; whether every node can now read it (a result cache entry may name only
    /// such a bundle).
    /// While Redis is away (a failover, a slot moving) it tries again, for as long as settling
    /// the job would.
    pub(super) async fn share_bundle(&self, id: &Digest) -> bool {
        let deadline = tokio::time::Instant::now() + self.settle_window();
        let mut backoff = guild_queue::redis_retry(Duration::from_millis(50));
        loop {
            match self.try_share_bundle(id).await {
                Ok(()) => return true,
                Err(Unshared::Unavailable(e)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(bundle = %id, error = %e, "cannot share the bundle yet; retrying");
                    tokio::time::sleep(backoff.next().unwrap_or(guild_queue::REDIS_RETRY_MAX)).await;
                }
                Err(Unshared::Unavailable(e) | Unshared::Failed(e)) => {
                    tracing::warn!(bundle = %id, error = %e, "cannot share the bundle; it stays in this worker's store");
                    return false;
                }
            }
        }
    }

    /// Leave the bundle in Redis for every API node to serve: the parts Redis lacks (a tool's
    /// component is already there), its manifest and signature. A bundle whose new parts exceed
    /// `bundle_inline_bytes_max` goes to the shared store instead, or stays here.
    async fn try_share_bundle(&self, id: &Digest) -> Result<(), Unshared> {
        let (store, bundle) = (self.store.clone(), *id);
        // One trip to the blocking pool for what every bundle sends: its documents and its small
        // parts (this run's own: its action, tape, result, input, output).
        let (manifest, signature, parts, small) = blocking(move || {
            let (manifest, signature) = store.get_bundle(&bundle).map_err(|e| e.to_string())?;
            let parsed: Manifest = serde_json::from_slice(&manifest).map_err(|e| e.to_string())?;
            let parts: Vec<BlobRef> = parsed.parts().cloned().collect();
            let mut read = HashSet::new();
            let small = parts
                .iter()
                .filter(|p| p.size_bytes < KNOWN_BLOB_BYTES_MIN && read.insert(p.digest))
                .map(|p| store.get(&p.digest).map(|bytes| (p.digest, bytes)).map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, String>>()?;
            Ok((manifest, signature, parts, small))
        })
        .await?;
        // Large parts (a component, a mounted file) are often in Redis already: ask, unless this
        // worker saw them there lately.
        let fresh = Duration::from_secs(self.queue.settings().results_ttl_s / 2);
        let mut large: Vec<BlobRef> = parts.iter().filter(|p| p.size_bytes >= KNOWN_BLOB_BYTES_MIN).cloned().collect();
        large.sort_by_key(|p| p.digest);
        large.dedup_by_key(|p| p.digest);
        let (recent, asked): (Vec<BlobRef>, Vec<BlobRef>) = {
            let known = self.known_blobs.lock().unwrap_or_else(|p| p.into_inner());
            large.into_iter().partition(|p| known.get(&p.digest).is_some_and(|seen| seen.elapsed() < fresh))
        };
        let digests: Vec<Digest> = asked.iter().map(|p| p.digest).collect();
        let present = if digests.is_empty() { Vec::new() } else { self.queue.keep_blobs(&digests).await? };
        let skip: HashSet<Digest> = recent
            .iter()
            .map(|p| p.digest)
            .chain(asked.iter().zip(&present).filter(|(_, here)| **here).map(|(p, _)| p.digest))
            .collect();
        let missing_large: Vec<&BlobRef> = asked.iter().filter(|p| !skip.contains(&p.digest)).collect();
        let missing_bytes: u64 = small.iter().map(|(_, bytes)| bytes.len() as u64).sum::<u64>()
            + missing_large.iter().map(|p| p.size_bytes).sum::<u64>();
        let limit = self.queue.settings().bundle_inline_bytes_max;
        if missing_bytes > limit {
            let Some(shared) = self.shared_store.clone() else {
                return Err(Unshared::Failed(format!(
                    "its new parts ({missing_bytes} bytes) exceed redis.bundle_inline_bytes_max ({limit}) and no redis.shared_store is set"
                )));
            };
            let store = self.store.clone();
            let id = *id;
            return tokio::task::spawn_blocking(move || {
                copy_bundle(&store, &shared, &id, &parts, &manifest, &signature)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(Unshared::Failed);
        }
        let mut blobs = small;
        if !missing_large.is_empty() {
            let (store, wanted) = (self.store.clone(), missing_large.iter().map(|p| p.digest).collect::<Vec<_>>());
            blobs.extend(
                blocking(move || {
                    wanted
                        .into_iter()
                        .map(|d| store.get(&d).map(|bytes| (d, bytes)).map_err(|e| e.to_string()))
                        .collect::<Result<Vec<_>, String>>()
                })
                .await?,
            );
        }
        // Parts skipped because this worker saw them lately are kept as long as this bundle.
        let kept: Vec<Digest> = skip.iter().copied().collect();
        self.queue.put_bundle(id, &manifest, &signature, &blobs, &kept).await?;
        // Remember large parts (components, mounted files) so later bundles skip asking for them.
        let mut known = self.known_blobs.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() > KNOWN_BLOBS_MAX {
            known.clear();
        }
        let now = std::time::Instant::now();
        for part in &asked {
            known.insert(part.digest, now);
        }
        Ok(())
    }
}

/// Why a bundle was not shared.
enum Unshared {
    /// Redis is away: worth trying again.
    Unavailable(String),
    /// Anything else (the store, a bound): trying again would not help.
    Failed(String),
}

impl From<guild_queue::QueueError> for Unshared {
    fn from(e: guild_queue::QueueError) -> Self {
        if e.is_unavailable() { Self::Unavailable(e.to_string()) } else { Self::Failed(e.to_string()) }
    }
}

impl From<String> for Unshared {
    fn from(e: String) -> Self {
        Self::Failed(e)
    }
}

/// Run store reads and writes on the blocking pool, off the async workers.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(work).await.map_err(|e| format!("the store task failed: {e}"))?
}

/// Copy a bundle from the worker's store into the shared one: its parts, then its documents.
fn copy_bundle(
    store: &DirStore,
    shared: &DirStore,
    id: &Digest,
    parts: &[BlobRef],
    manifest: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    for part in parts {
        if !shared.has(&part.digest) {
            shared.put(&store.get(&part.digest).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        }
    }
    shared.put_bundle(id, manifest, signature).map_err(|e| e.to_string())?;
    shared.flush().map_err(|e| e.to_string())
}
