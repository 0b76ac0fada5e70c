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

/// Why an entry may not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryRejected {
    /// Its bundle is signed by a key this node does not trust (another node's, when the fleet's
    /// `cache.trusted_keys` do not name each other): the entry may be good for others, so it is
    /// left in place and the call runs.
    Untrusted(String),
    /// It does not hold together: dropped.
    Invalid(String),
}

impl std::fmt::Display for EntryRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Untrusted(why) | Self::Invalid(why) => f.write_str(why),
        }
    }
}

/// How far in the future an entry's `stored_unix_ms` may be (clock skew between nodes), ms.
pub const CACHE_STORED_SKEW_MS_MAX: u64 = 60_000;

/// Check an entry against its bundle (`manifest` and `signature`, parts in `store`): the bundle
/// opens (documents, digests, signature), is signed by one of `trusted`, records the entry's
/// action digest, was made for the entry's tenant, burnt the entry's fuel, and ended in an output
/// with the digest of `output` (when given) — or, when not, whose bytes `store` holds — of the
/// entry's size; and the run was one whose result may be reused: its policy mounts nothing
/// writable and its tape holds no HTTP exchange and no GPU dispatch on a device. An entry stored
/// in the future (past [`CACHE_STORED_SKEW_MS_MAX`]) is refused: it would never expire. Returns
/// the output.
///
/// # Errors
/// [`EntryRejected::Untrusted`] for a bundle signed by a key not in `trusted`;
/// [`EntryRejected::Invalid`], saying what failed, for anything else.
pub fn check_entry(
    store: &dyn BlobStore,
    manifest: &[u8],
    signature: &[u8],
    trusted: &[PublicKey],
    record: &CacheRecord,
    output: Option<&str>,
) -> Result<String, EntryRejected> {
    check_entry_at(store, manifest, signature, trusted, record, output, crate::now_unix_ms())
}

fn check_entry_at(
    store: &dyn BlobStore,
    manifest: &[u8],
    signature: &[u8],
    trusted: &[PublicKey],
    record: &CacheRecord,
    output: Option<&str>,
    now_unix_ms: u64,
) -> Result<String, EntryRejected> {
    let id = record.bundle;
    let bundle = Bundle::open(store, manifest, signature, None)
        .map_err(|e| EntryRejected::Invalid(format!("bundle {id}: {e}")))?;
    if !trusted.contains(&bundle.signer) {
        return Err(EntryRejected::Untrusted(format!(
            "bundle {id} is signed by {}, a key this node does not trust (cache.trusted_keys)",
            bundle.signer
        )));
    }
    invalid_unless(record.stored_unix_ms <= now_unix_ms.saturating_add(CACHE_STORED_SKEW_MS_MAX), || {
        format!("the entry of bundle {id} says it was stored in the future")
    })?;
    invalid_unless(!bundle.action.policy.mounts.iter().any(|m| m.access == guild_vocab::Access::ReadWrite), || {
        format!("bundle {id} had a writable mount: its result cannot be reused")
    })?;
    let outside = bundle.tape.events().iter().any(|e| match &e.effect {
        guild_replay::Effect::Http { .. } => true,
        guild_replay::Effect::GpuDispatch { device, .. } => device != "cpu-reference",
        _ => false,
    });
    invalid_unless(!outside, || format!("bundle {id}'s tape reaches outside its action: its result cannot be reused"))?;
    check_bundle(store, &bundle, record, output).map_err(EntryRejected::Invalid)
}

fn invalid_unless(holds: bool, why: impl FnOnce() -> String) -> Result<(), EntryRejected> {
    if holds { Ok(()) } else { Err(EntryRejected::Invalid(why())) }
}

fn check_bundle(
    store: &dyn BlobStore,
    bundle: &Bundle,
    record: &CacheRecord,
    output: Option<&str>,
) -> Result<String, String> {
    let id = record.bundle;
    if bundle.action.action_digest != Some(record.action) {
        return Err(format!("bundle {id} does not record the entry's action digest"));
    }
    if bundle.action.principal.as_ref().map(|p| p.tenant.as_str()) != Some(record.tenant.as_str()) {
        return Err(format!("bundle {id} was not made for the entry's tenant"));
    }
    if bundle.result.fuel_used_units != record.fuel_used_units {
        return Err(format!("bundle {id} burnt other fuel than the entry says"));
    }
    let recorded = bundle.result.output.as_ref().ok_or_else(|| format!("bundle {id} holds no output"))?;
    let text = match output {
        Some(text) => text.to_string(),
        None => {
            let bytes = store.get(&recorded.digest).map_err(|e| format!("bundle {id}'s output cannot be read: {e}"))?;
            String::from_utf8(bytes).map_err(|_| format!("bundle {id}'s output is not UTF-8"))?
        }
    };
    if Digest::of(text.as_bytes()) != recorded.digest
        || text.len() as u64 != recorded.size_bytes
        || text.len() as u64 != record.output_bytes
    {
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
