//! The result cache's plain data, shared by the daemon (entries kept in memory and on disk) and
//! the Redis queue (entries shared by a fleet): the key of an entry, the entry itself, what a
//! job says about caching, and the check an entry passes against its signed bundle before it
//! may answer anyone.

use guild_replay::{BlobStore, Bundle, Digest, PublicKey};
use serde::{Deserialize, Serialize};

/// The key of an entry: the action digest, for one tenant — no tenant is ever answered from
/// another's run, nor learns from a hit that another made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(Digest);

impl CacheKey {
    /// The key of `action` for `tenant`: blake3 over a domain tag, the tenant's name (length
    /// first, so no two (tenant, action) pairs share bytes) and the action digest.
    pub fn new(tenant: &str, action: &Digest) -> Self {
        let mut bytes = Vec::with_capacity(64 + tenant.len());
        bytes.extend_from_slice(b"guild result cache key v1\0");
        bytes.extend_from_slice(&(tenant.len() as u64).to_le_bytes());
        bytes.extend_from_slice(tenant.as_bytes());
        bytes.extend_from_slice(action.as_bytes());
        Self(Digest::of(&bytes))
    }

    /// 64 hex digits.
    pub fn to_hex(&self) -> String {
        self.0.to_hex()
    }
}

/// One cached result: whose run, of what, where its proof is, and what it cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheRecord {
    /// Whose run it was.
    pub tenant: String,
    /// The tool's name.
    pub tool: String,
    /// The revision that ran.
    pub revision: u32,
    /// The run's action digest.
    pub action: Digest,
    /// The run's signed bundle.
    pub bundle: Digest,
    /// Fuel the run burnt: a caller with less fuel than this is not answered from the entry.
    pub fuel_used_units: u64,
    /// Size of the output, bytes.
    pub output_bytes: u64,
    /// When the run was stored, ms since the Unix epoch.
    pub stored_unix_ms: u64,
}

/// An entry as Redis holds it: the record and the output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachedValue {
    /// Whose run, of what, and its bundle.
    pub record: CacheRecord,
    /// The output JSON text.
    pub output: String,
}

/// What a job of a cached tool carries: the bounds its worker keeps the shared entries to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobCache {
    /// How long an entry may answer after its run, s.
    pub ttl_s: u64,
    /// Entries kept for the tool in Redis (all tenants together).
    pub entries_max: u64,
    /// Bytes of output kept for the tool in Redis.
    pub bytes_max: u64,
}

/// Check an entry against its bundle (`manifest` and `signature`, parts in `store`): the bundle
/// opens (documents, digests, signature), is signed by one of `trusted`, records the entry's
/// action digest, was made for the entry's tenant, burnt the entry's fuel, and ended in an output
/// with the digest of `output` (when given) — or, when not, whose bytes `store` holds. Returns
/// the output.
///
/// # Errors
/// What failed, for the operator (the entry is then dropped and the call runs).
pub fn check_entry(
    store: &dyn BlobStore,
    manifest: &[u8],
    signature: &[u8],
    trusted: &[PublicKey],
    record: &CacheRecord,
    output: Option<&str>,
) -> Result<String, String> {
    let id = record.bundle;
    let bundle = Bundle::open(store, manifest, signature, None).map_err(|e| format!("bundle {id}: {e}"))?;
    if !trusted.contains(&bundle.signer) {
        return Err(format!("bundle {id} is signed by {}, a key this node does not trust", bundle.signer));
    }
    if bundle.action.action_digest != Some(record.action) {
        return Err(format!("bundle {id} does not record the entry's action digest"));
    }
    if bundle.action.principal.as_ref().map(|p| p.tenant.as_str()) != Some(record.tenant.as_str()) {
        return Err(format!("bundle {id} was not made for the entry's tenant"));
    }
    if bundle.result.fuel_used_units != record.fuel_used_units {
        return Err(format!("bundle {id} burnt other fuel than the entry says"));
    }
    let recorded = bundle.result.output.ok_or_else(|| format!("bundle {id} holds no output"))?;
    let text = match output {
        Some(text) => text.to_string(),
        None => {
            let bytes = store.get(&recorded.digest).map_err(|e| format!("bundle {id}'s output cannot be read: {e}"))?;
            String::from_utf8(bytes).map_err(|_| format!("bundle {id}'s output is not UTF-8"))?
        }
    };
    if Digest::of(text.as_bytes()) != recorded.digest || text.len() as u64 != recorded.size_bytes {
        return Err(format!("bundle {id}'s output does not match the entry's"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_per_tenant_and_cannot_be_confused_across_the_boundary() {
        let action = Digest::of(b"a");
        assert_ne!(CacheKey::new("acme", &action), CacheKey::new("globex", &action));
        assert_eq!(CacheKey::new("acme", &action), CacheKey::new("acme", &action));
        assert_ne!(CacheKey::new("ab", &action), CacheKey::new("a", &action));
    }
}
