//! Components and bundles kept in Redis as content-addressed parts, for workers and API nodes
//! on other machines.

use super::{QueueError, RedisQueue, from_redis};
use guild_replay::{Digest, Manifest, MemoryStore};

/// Parts of a bundle smaller than this (bytes) are kept in the bundle's own hash, larger ones
/// as shared `blob:` keys. The same bound as the worker's: it asks Redis only about parts at
/// least this large, and sends smaller ones with every bundle.
pub const INLINE_PART_BYTES_MAX: usize = 4096;

/// The bundle hash's field holding an inline part.
fn inline_field(digest: &Digest) -> String {
    format!("part:{digest}")
}

impl RedisQueue {
    /// Make a component available to every worker, as a blob kept without expiry (components
    /// are few; bundles that include one share it).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached or the circuit is open after a
    /// recent failure; [`QueueError::Redis`] when it refuses the write (out of memory, say).
    pub async fn put_component(&self, digest: &Digest, bytes: &[u8]) -> Result<(), QueueError> {
        let key = self.inner.keys.blob(digest);
        self.guarded(async {
            let _: String =
                redis::cmd("SET").arg(key).arg(bytes).query_async(&mut self.conn()).await.map_err(from_redis)?;
            Ok(())
        })
        .await
    }

    /// A component's bytes, checked against its digest; `None` when Redis does not hold it.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses the read; [`QueueError::Corrupt`] when the bytes it holds do not hash to `digest`.
    pub async fn get_component(&self, digest: &Digest) -> Result<Option<Vec<u8>>, QueueError> {
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.inner.keys.blob(digest))
            .query_async(&mut self.conn())
            .await
            .map_err(from_redis)?;
        match bytes {
            Some(bytes) if Digest::of(&bytes) != *digest => {
                Err(QueueError::Corrupt(format!("component {digest} in Redis does not hash to its name")))
            }
            other => Ok(other),
        }
    }

    /// Which of these blobs Redis holds; those it holds are kept at least `results_ttl_s` more
    /// (blobs kept without expiry, such as components, stay so).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses a command.
    pub async fn keep_blobs(&self, digests: &[Digest]) -> Result<Vec<bool>, QueueError> {
        let ttl = self.inner.settings.results_ttl_s;
        let mut pipe = redis::pipe();
        for digest in digests {
            let key = self.inner.keys.blob(digest);
            pipe.cmd("EXISTS").arg(&key);
            pipe.cmd("EXPIRE").arg(&key).arg(ttl).arg("GT").ignore();
        }
        let exists: Vec<i64> = pipe.query_async(&mut self.conn()).await.map_err(from_redis)?;
        Ok(exists.into_iter().map(|e| e == 1).collect())
    }

    /// Keep a bundle for every node to serve, for `results_ttl_s`: its parts Redis lacks
    /// (`blobs`), then its manifest and signature. Parts under [`INLINE_PART_BYTES_MAX`] (a run's
    /// own action, tape, input, output, result) go into the bundle's hash with its manifest: one
    /// `HSET` and one `EXPIRE` for the whole bundle; larger ones (a component, a mounted file)
    /// are content-addressed `blob:` keys that bundles share.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses a write. The writes are one pipeline, not a transaction: shared parts may be kept
    /// without the bundle.
    ///
    /// `kept` names the bundle's parts already in Redis as `blob:` keys (not sent): each is
    /// kept at least as long as the bundle (`EXPIRE … GT`; a component, kept without expiry,
    /// stays so).
    pub async fn put_bundle(
        &self,
        id: &Digest,
        manifest: &[u8],
        signature: &[u8],
        blobs: &[(Digest, Vec<u8>)],
        kept: &[Digest],
    ) -> Result<(), QueueError> {
        let ttl = self.inner.settings.results_ttl_s;
        let mut pipe = redis::pipe();
        for digest in kept {
            pipe.cmd("EXPIRE").arg(self.inner.keys.blob(digest)).arg(ttl).arg("GT").ignore();
        }
        let (inline, shared): (Vec<_>, Vec<_>) =
            blobs.iter().partition(|(_, bytes)| bytes.len() < INLINE_PART_BYTES_MAX);
        for (digest, bytes) in shared {
            pipe.cmd("SET").arg(self.inner.keys.blob(digest)).arg(bytes).arg("EX").arg(ttl).ignore();
        }
        let key = self.inner.keys.bundle(id);
        let hset = pipe.cmd("HSET").arg(&key).arg("manifest").arg(manifest).arg("signature").arg(signature);
        for (digest, bytes) in inline {
            hset.arg(inline_field(digest)).arg(bytes);
        }
        hset.ignore();
        pipe.cmd("EXPIRE").arg(&key).arg(ttl).ignore();
        let () = pipe.query_async(&mut self.conn()).await.map_err(from_redis)?;
        Ok(())
    }

    /// A bundle some worker left: its manifest, signature and parts (each checked when read);
    /// `None` when Redis does not hold it (or lost a part).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached or the circuit is open after a
    /// recent failure; [`QueueError::Redis`] when it refuses a read; [`QueueError::Corrupt`] when
    /// the manifest does not parse. Parts are not checked here: [`guild_replay::Bundle::open`]
    /// does.
    pub async fn get_bundle(&self, id: &Digest) -> Result<Option<(Vec<u8>, Vec<u8>, MemoryStore)>, QueueError> {
        let key = self.inner.keys.bundle(id);
        self.guarded(async {
            let (manifest, signature): (Option<Vec<u8>>, Option<Vec<u8>>) = redis::cmd("HMGET")
                .arg(&key)
                .arg("manifest")
                .arg("signature")
                .query_async(&mut self.conn())
                .await
                .map_err(from_redis)?;
            let (Some(manifest), Some(signature)) = (manifest, signature) else { return Ok(None) };
            let parsed: Manifest =
                serde_json::from_slice(&manifest).map_err(|e| QueueError::Corrupt(format!("bundle {id}: {e}")))?;
            let digests: Vec<Digest> = parsed.parts().map(|part| part.digest).collect();
            if digests.is_empty() {
                return Ok(Some((manifest, signature, MemoryStore::default())));
            }
            // Each part in the bundle's own hash (small ones), else in a shared `blob:` key (large
            // ones, and every part of a bundle an earlier version kept).
            let fields: Vec<String> = digests.iter().map(inline_field).collect();
            let inline: Vec<Option<Vec<u8>>> =
                redis::cmd("HMGET").arg(&key).arg(fields).query_async(&mut self.conn()).await.map_err(from_redis)?;
            let elsewhere: Vec<&Digest> =
                digests.iter().zip(&inline).filter(|(_, bytes)| bytes.is_none()).map(|(d, _)| d).collect();
            let mut shared: Vec<Option<Vec<u8>>> = if elsewhere.is_empty() {
                Vec::new()
            } else {
                let keys: Vec<String> = elsewhere.iter().map(|d| self.inner.keys.blob(d)).collect();
                redis::cmd("MGET").arg(keys).query_async(&mut self.conn()).await.map_err(from_redis)?
            };
            shared.reverse();
            let store = MemoryStore::default();
            for (digest, bytes) in digests.into_iter().zip(inline) {
                let bytes = match bytes {
                    Some(bytes) => bytes,
                    None => match shared.pop().flatten() {
                        Some(bytes) => bytes,
                        None => return Ok(None),
                    },
                };
                store.insert_unchecked(digest, bytes);
            }
            Ok(Some((manifest, signature, store)))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::money_tests::server;
    use super::*;
    use guild_replay::BlobRef;

    /// A manifest naming `parts` (the first four as its documents).
    fn manifest(parts: &[(Digest, Vec<u8>)]) -> Vec<u8> {
        let refs: Vec<BlobRef> =
            parts.iter().map(|(digest, bytes)| BlobRef { digest: *digest, size_bytes: bytes.len() as u64 }).collect();
        let manifest = Manifest {
            format: guild_replay::FORMAT.to_string(),
            action: refs[0],
            tape: refs[1],
            result: refs[2],
            exec: refs[3],
            blobs: refs[4..].to_vec(),
        };
        serde_json::to_vec(&manifest).expect("a manifest is plain data")
    }

    /// A bundle's small parts live in its hash and its large ones in shared `blob:` keys, and all
    /// come back; a bundle kept the earlier way (every part a `blob:` key) still reads, and one
    /// missing a part reads as absent.
    #[tokio::test]
    async fn small_parts_travel_in_the_bundles_hash_and_large_ones_are_shared() {
        let (_server, queue) = server().await;
        let bytes: Vec<Vec<u8>> = vec![
            b"action".to_vec(),
            b"tape".to_vec(),
            b"result".to_vec(),
            b"exec".to_vec(),
            vec![7u8; INLINE_PART_BYTES_MAX],
        ];
        let parts: Vec<(Digest, Vec<u8>)> = bytes.into_iter().map(|b| (Digest::of(&b), b)).collect();
        let text = manifest(&parts);
        let id = Digest::of(&text);
        queue.put_bundle(&id, &text, b"sig", &parts, &[]).await.expect("kept");
        let mut conn = queue.conn();
        let fields: Vec<String> =
            redis::cmd("HKEYS").arg(queue.inner.keys.bundle(&id)).query_async(&mut conn).await.expect("hkeys");
        assert_eq!(fields.len(), 2 + 4, "manifest, signature and the four small parts: {fields:?}");
        let blob = |d: &Digest| redis::cmd("EXISTS").arg(queue.inner.keys.blob(d)).clone();
        let large: bool = blob(&parts[4].0).query_async(&mut conn).await.expect("exists");
        let small: bool = blob(&parts[0].0).query_async(&mut conn).await.expect("exists");
        assert!(large && !small, "only the large part is a shared key");
        let (read, signature, store) = queue.get_bundle(&id).await.expect("read").expect("held");
        assert_eq!((read, signature), (text.clone(), b"sig".to_vec()));
        for (digest, bytes) in &parts {
            assert_eq!(guild_replay::BlobStore::get(&store, digest).expect("part"), *bytes);
        }
        // The earlier way: every part a blob: key, the hash holding only the documents.
        let earlier = Digest::of(b"earlier");
        let mut pipe = redis::pipe();
        for (digest, bytes) in &parts {
            pipe.cmd("SET").arg(queue.inner.keys.blob(digest)).arg(bytes).ignore();
        }
        pipe.cmd("HSET").arg(queue.inner.keys.bundle(&earlier)).arg("manifest").arg(&text).arg("signature").arg("s");
        pipe.ignore();
        let () = pipe.query_async(&mut conn).await.expect("kept the earlier way");
        let (_, _, store) = queue.get_bundle(&earlier).await.expect("read").expect("held");
        assert_eq!(guild_replay::BlobStore::get(&store, &parts[1].0).expect("part"), parts[1].1);
        // A shared part the worker did not send (it saw it lately) is kept as long as the
        // bundle that names it.
        let () = redis::cmd("EXPIRE")
            .arg(queue.inner.keys.blob(&parts[4].0))
            .arg(5)
            .query_async(&mut conn)
            .await
            .expect("ttl");
        let again = Digest::of(b"again");
        queue.put_bundle(&again, &text, b"sig", &parts[..4], &[parts[4].0]).await.expect("kept");
        let ttl: i64 =
            redis::cmd("TTL").arg(queue.inner.keys.blob(&parts[4].0)).query_async(&mut conn).await.expect("ttl");
        assert!(ttl > 5, "the shared part's time was extended: {ttl}");
        // A part gone from both places: the bundle is not held.
        let () = redis::cmd("DEL").arg(queue.inner.keys.blob(&parts[4].0)).query_async(&mut conn).await.expect("del");
        assert!(queue.get_bundle(&id).await.expect("read").is_none());
    }
}
