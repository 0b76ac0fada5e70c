//! Components and bundles kept in Redis as content-addressed parts, for workers and API nodes
//! on other machines.

use super::{QueueError, RedisQueue, from_redis};
use guild_replay::{Digest, Manifest, MemoryStore};

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
    /// (`blobs`, content-addressed, so bundles share them), then its manifest and signature.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached; [`QueueError::Redis`] when it
    /// refuses a write. The writes are one pipeline, not a transaction: parts may be kept without
    /// the bundle.
    pub async fn put_bundle(
        &self,
        id: &Digest,
        manifest: &[u8],
        signature: &[u8],
        blobs: &[(Digest, Vec<u8>)],
    ) -> Result<(), QueueError> {
        let ttl = self.inner.settings.results_ttl_s;
        let mut pipe = redis::pipe();
        for (digest, bytes) in blobs {
            pipe.cmd("SET").arg(self.inner.keys.blob(digest)).arg(bytes).arg("EX").arg(ttl).ignore();
        }
        let key = self.inner.keys.bundle(id);
        pipe.cmd("HSET").arg(&key).arg("manifest").arg(manifest).arg("signature").arg(signature).ignore();
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
            let keys: Vec<String> = digests.iter().map(|d| self.inner.keys.blob(d)).collect();
            let blobs: Vec<Option<Vec<u8>>> =
                redis::cmd("MGET").arg(keys).query_async(&mut self.conn()).await.map_err(from_redis)?;
            let store = MemoryStore::default();
            for (digest, bytes) in digests.into_iter().zip(blobs) {
                let Some(bytes) = bytes else { return Ok(None) };
                store.insert_unchecked(digest, bytes);
            }
            Ok(Some((manifest, signature, store)))
        })
        .await
    }
}
