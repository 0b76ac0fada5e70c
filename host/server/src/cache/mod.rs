//! The result cache: the answer of a hermetic run, kept under its action digest for the tenant
//! it ran for, handed back instead of running the same computation again — with the original
//! signed bundle, which anyone can replay, as its proof.
//!
//! An entry is `(tenant, action digest) → (bundle, output, fuel)`. It is only ever made from a
//! run whose tape showed no effect outside its action digest (`guild_runtime::Hermetic`), and
//! its key includes the tenant, so no tenant is ever answered from another's run (nor learns
//! from a hit that another ran the same thing). Entries live in memory, bounded per tool by
//! count and output bytes (least recently used first out) and by age, and on disk under
//! `HOME/results/TOOL/KEY.json`, so a restarted daemon keeps them; an entry read from disk is
//! trusted only once its bundle opens (signature by a trusted key, digests), names the same
//! action and tenant, and holds the output — else it is dropped and the call runs.
//! Identical calls in flight at once run once (`flight.rs`).

mod flight;

pub(crate) use guild_queue::{CacheKey, CacheRecord as EntryRecord};
use guild_replay::{Digest, DirStore, PublicKey};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) use flight::{Flights, Joined};

/// Default of [`CachePolicy::ttl_s`]: a day.
pub const CACHE_TTL_S_DEFAULT: u64 = 86_400;
/// Default of [`CachePolicy::entries_max`].
pub const CACHE_ENTRIES_MAX_DEFAULT: usize = 10_000;
/// Default of [`CachePolicy::bytes_max`]: 64 MiB of outputs per tool.
pub const CACHE_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;
/// Default of [`CacheConfig::flight_waiters_max`].
pub const CACHE_FLIGHT_WAITERS_MAX_DEFAULT: usize = 1024;
/// Sampled hits replayed at once in the background (`verify_sample`); a hit drawn while they
/// are all busy is not replayed (counted as `skipped`), so hits cannot pile replays up.
pub const CACHE_VERIFY_IN_FLIGHT_MAX: usize = 2;
/// Largest entry file read back from disk, bytes (an entry is a few hundred).
pub const CACHE_ENTRY_FILE_BYTES_MAX: u64 = 64 * 1024;

/// A tool entry's `cache`: `true` (the defaults), `false`, or a table of [`CachePolicy`].
#[derive(Debug, Clone, PartialEq)]
pub enum CacheSetting {
    /// `cache = true` / `cache = false`.
    On(bool),
    /// `[tools.cache]` with its fields.
    Table(CachePolicy),
}

impl<'de> Deserialize<'de> for CacheSetting {
    /// A boolean, or a table read as a [`CachePolicy`] — whose errors name the field (an
    /// unknown one, or one of the wrong type).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match toml::Value::deserialize(deserializer)? {
            toml::Value::Boolean(on) => Ok(Self::On(on)),
            table @ toml::Value::Table(_) => CachePolicy::deserialize(table).map(Self::Table).map_err(D::Error::custom),
            other => Err(D::Error::custom(format!(
                "cache is a {}; use true, false, or a table with ttl_s, entries_max, bytes_max, verify_sample",
                other.type_str()
            ))),
        }
    }
}

impl CacheSetting {
    /// The policy when caching is on.
    pub fn policy(&self) -> Option<CachePolicy> {
        match self {
            Self::On(true) => Some(CachePolicy::default()),
            Self::On(false) => None,
            Self::Table(policy) => Some(policy.clone()),
        }
    }
}

/// How one tool's results are cached.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CachePolicy {
    /// How long an entry may answer after its run, s.
    pub ttl_s: u64,
    /// Entries kept for the tool (all tenants together); the least recently used goes first.
    pub entries_max: usize,
    /// Bytes of outputs kept for the tool; the least recently used entries go first.
    pub bytes_max: u64,
    /// Fraction of hits (0 to 1) whose bundle is replayed in the background; a replay that
    /// differs evicts the entry, counts `guild_cache_verify_total{result="mismatch"}` and is
    /// audited (`cache_mismatch`).
    pub verify_sample: f64,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            ttl_s: CACHE_TTL_S_DEFAULT,
            entries_max: CACHE_ENTRIES_MAX_DEFAULT,
            bytes_max: CACHE_BYTES_MAX_DEFAULT,
            verify_sample: 0.0,
        }
    }
}

impl CachePolicy {
    /// Check the bounds, naming the field under `prefix` (`tools[0].cache`).
    ///
    /// # Errors
    /// The field and what to change when a bound is zero or the sample is outside 0..=1.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.ttl_s == 0 {
            return Err(("ttl_s", "is 0; use at least 1 (seconds), or `cache = false`".into()));
        }
        if self.entries_max == 0 {
            return Err(("entries_max", "is 0; use at least 1, or `cache = false`".into()));
        }
        if self.bytes_max == 0 {
            return Err(("bytes_max", "is 0; use at least 1 (bytes), or `cache = false`".into()));
        }
        if !(0.0..=1.0).contains(&self.verify_sample) {
            return Err(("verify_sample", format!("is {}; use a fraction from 0 to 1", self.verify_sample)));
        }
        Ok(())
    }
}

/// `[cache]`: settings every cached tool shares.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Public keys (hex) besides this host's whose bundles an entry read back may name: the
    /// keys of the other nodes sharing this node's home or Redis.
    pub trusted_keys: Vec<String>,
    /// Calls that may wait at once for one identical call in flight; one more runs on its own.
    pub flight_waiters_max: usize,
    /// Bytes of read-only mounts a cached tool's hermetic run rebuilds as its snapshot; a call
    /// with larger mounts runs live, and its result is not cached.
    pub hermetic_mount_bytes_max: u64,
    /// File identities a hermetic run numbers for its guest; past it the host's are answered and
    /// the result is not cached.
    pub hermetic_identities_max: usize,
    /// Bytes a hermetic run's open directory listings hold at once (each entry its name plus
    /// 32); one more listing answers the guest `insufficient-memory`.
    pub hermetic_listings_bytes_max: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            trusted_keys: Vec::new(),
            flight_waiters_max: CACHE_FLIGHT_WAITERS_MAX_DEFAULT,
            hermetic_mount_bytes_max: guild_runtime::HERMETIC_MOUNT_BYTES_MAX,
            hermetic_identities_max: guild_runtime::HERMETIC_IDENTITIES_MAX,
            hermetic_listings_bytes_max: guild_runtime::HERMETIC_LISTINGS_BYTES_MAX,
        }
    }
}

impl CacheConfig {
    /// The bounds of a hermetic run this section sets.
    pub fn hermetic(&self) -> guild_runtime::HermeticBounds {
        guild_runtime::HermeticBounds {
            mount_bytes_max: self.hermetic_mount_bytes_max,
            identities_max: self.hermetic_identities_max,
            listings_bytes_max: self.hermetic_listings_bytes_max,
        }
    }
}

/// What the result cache did for one call, as its answer says (`cache`) and metrics count it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheState {
    /// Answered from an entry: not run.
    Hit,
    /// Answered by an identical call in flight at the same moment: not run.
    Merged,
    /// Run, hermetic, and its result stored.
    Stored,
    /// Run, and not stored, for this reason (`http request`, `outcome trap`, …).
    Miss(String),
}

impl CacheState {
    /// The state a worker wrote into a job's result (`hit`, `merged`, `stored`, `miss: …`).
    pub fn parse(text: &str) -> Self {
        match text {
            "hit" => Self::Hit,
            "merged" => Self::Merged,
            "stored" => Self::Stored,
            other => Self::Miss(other.strip_prefix("miss: ").unwrap_or(other).to_string()),
        }
    }

    /// Whether the answer is another run's (`"cached": true`).
    pub fn cached(&self) -> bool {
        matches!(self, Self::Hit | Self::Merged)
    }

    /// `hit`, `merged`, `stored` or `miss`: the `result` label of `guild_cache_requests_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Merged => "merged",
            Self::Stored => "stored",
            Self::Miss(_) => "miss",
        }
    }
}

impl std::fmt::Display for CacheState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Miss(why) => write!(f, "miss: {why}"),
            other => f.write_str(other.label()),
        }
    }
}

fn file_name(key: &CacheKey) -> String {
    format!("{}.json", key.to_hex())
}

/// A cached answer: the entry and its output.
#[derive(Debug)]
pub(crate) struct Cached {
    pub(crate) record: EntryRecord,
    pub(crate) output: Arc<str>,
}

/// What a lookup found.
pub(crate) enum Lookup {
    /// An entry that answers.
    Hit(Arc<Cached>),
    /// None (or one that expired, or needs more fuel than the caller has).
    Miss,
    /// An entry read back from disk that failed its check: dropped; the call runs.
    Rejected {
        /// The bundle it named.
        bundle: Digest,
        /// What was wrong.
        why: String,
    },
}

struct Entry {
    record: EntryRecord,
    /// Held once checked; `None` for an entry read back from disk and not yet checked.
    output: Option<Arc<str>>,
    /// Its place in the least-recently-used order.
    tick: u64,
}

#[derive(Default)]
struct ToolEntries {
    entries: HashMap<CacheKey, Entry>,
    /// Least recently used first.
    order: BTreeMap<u64, CacheKey>,
    bytes: u64,
    tick: u64,
}

impl ToolEntries {
    fn touch(&mut self, key: &CacheKey) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(entry) = self.entries.get_mut(key) {
            self.order.remove(&entry.tick);
            entry.tick = tick;
            self.order.insert(tick, *key);
        }
    }

    fn remove(&mut self, key: &CacheKey) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.order.remove(&entry.tick);
        self.bytes = self.bytes.saturating_sub(entry.record.output_bytes);
        Some(entry)
    }

    /// Drop the least recently used entries until `policy` holds; returns their keys.
    fn shrink(&mut self, policy: &CachePolicy) -> Vec<CacheKey> {
        let mut gone = Vec::new();
        while self.entries.len() > policy.entries_max || self.bytes > policy.bytes_max {
            let Some((_, key)) = self.order.pop_first() else { break };
            if let Some(entry) = self.entries.remove(&key) {
                self.bytes = self.bytes.saturating_sub(entry.record.output_bytes);
            }
            gone.push(key);
        }
        gone
    }
}

/// One tool's figures for `guild cache stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCacheStats {
    /// The tool's name.
    pub tool: String,
    /// Entries held.
    pub entries: usize,
    /// Bytes of output they hold.
    pub bytes: u64,
}

/// The daemon's result cache.
pub struct ResultCache {
    /// `HOME/cache`: one directory per tool, one file per entry.
    dir: PathBuf,
    /// Where bundles are.
    store: Arc<DirStore>,
    /// Keys whose bundles an entry read back may name.
    trusted: Vec<PublicKey>,
    tools: Mutex<HashMap<String, ToolEntries>>,
    /// Identical calls in flight.
    pub(crate) flights: Flights,
    /// Room for background replays of sampled hits.
    pub(crate) verifying: Arc<tokio::sync::Semaphore>,
}

impl ResultCache {
    /// A cache persisted under `dir`, whose bundles are in `store`, trusting bundles signed by
    /// `trusted`. Entries already on disk are indexed (not yet checked: each is checked on its
    /// first hit); files that are not entries are left alone, unreadable entries removed.
    pub fn open(dir: PathBuf, store: Arc<DirStore>, trusted: Vec<PublicKey>, flight_waiters_max: usize) -> Self {
        let cache = Self {
            dir,
            store,
            trusted,
            tools: Mutex::new(HashMap::new()),
            flights: Flights::new(flight_waiters_max),
            verifying: Arc::new(tokio::sync::Semaphore::new(CACHE_VERIFY_IN_FLIGHT_MAX)),
        };
        cache.index();
        cache
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, ToolEntries>> {
        self.tools.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn index(&self) {
        let Ok(tools) = std::fs::read_dir(&self.dir) else { return };
        let mut indexed = self.lock();
        for tool_dir in tools.flatten() {
            let Ok(files) = std::fs::read_dir(tool_dir.path()) else { continue };
            for file in files.flatten() {
                let path = file.path();
                if path.extension().is_none_or(|x| x != "json") {
                    continue;
                }
                let Some(record) = read_record(&path) else {
                    tracing::warn!(path = %path.display(), "an unreadable result cache entry was removed");
                    let _ = std::fs::remove_file(&path);
                    continue;
                };
                let key = CacheKey::new(&record.tenant, &record.action);
                if path.file_name().and_then(|n| n.to_str()) != Some(file_name(&key).as_str()) {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                let tool = indexed.entry(record.tool.clone()).or_default();
                tool.tick += 1;
                let tick = tool.tick;
                tool.bytes = tool.bytes.saturating_add(record.output_bytes);
                tool.order.insert(tick, key);
                tool.entries.insert(key, Entry { record, output: None, tick });
            }
        }
    }

    /// The entry for `key` of `tool` that may answer a caller with `fuel_units` of fuel:
    /// unexpired under `policy`, burnt no more than that, and (for one read back from disk)
    /// checked against its bundle first.
    pub(crate) async fn lookup(&self, tool: &str, policy: &CachePolicy, key: &CacheKey, fuel_units: u64) -> Lookup {
        let unchecked = {
            let mut tools = self.lock();
            let Some(entries) = tools.get_mut(tool) else { return Lookup::Miss };
            let Some(entry) = entries.entries.get(key) else { return Lookup::Miss };
            let expired = now_unix_ms().saturating_sub(entry.record.stored_unix_ms) > policy.ttl_s.saturating_mul(1000);
            if expired {
                entries.remove(key);
                drop(tools);
                self.delete_file(tool, key);
                return Lookup::Miss;
            }
            if entry.record.fuel_used_units > fuel_units {
                return Lookup::Miss;
            }
            match &entry.output {
                Some(output) => {
                    let cached = Arc::new(Cached { record: entry.record.clone(), output: output.clone() });
                    entries.touch(key);
                    return Lookup::Hit(cached);
                }
                None => entry.record.clone(),
            }
        };
        let (store, trusted) = (self.store.clone(), self.trusted.clone());
        let record = unchecked.clone();
        let checked = tokio::task::spawn_blocking(move || check(&store, &trusted, &record))
            .await
            .unwrap_or_else(|e| Err(format!("the check stopped: {e}")));
        match checked {
            Ok(output) => {
                let mut tools = self.lock();
                if let Some(entries) = tools.get_mut(tool)
                    && let Some(entry) = entries.entries.get_mut(key)
                    && entry.record == unchecked
                {
                    entry.output = Some(output.clone());
                    entries.touch(key);
                }
                Lookup::Hit(Arc::new(Cached { record: unchecked, output }))
            }
            Err(why) => {
                self.evict(tool, key);
                Lookup::Rejected { bundle: unchecked.bundle, why }
            }
        }
    }

    /// Keep `record` with its `output` under `key`, then drop the least recently used entries
    /// past `policy`'s bounds. An output larger than `bytes_max` is not kept (returns false).
    pub(crate) fn store(&self, policy: &CachePolicy, key: CacheKey, record: EntryRecord, output: Arc<str>) -> bool {
        if record.output_bytes > policy.bytes_max {
            return false;
        }
        let tool = record.tool.clone();
        let gone = {
            let mut tools = self.lock();
            let entries = tools.entry(tool.clone()).or_default();
            entries.remove(&key);
            entries.tick += 1;
            let tick = entries.tick;
            entries.bytes = entries.bytes.saturating_add(record.output_bytes);
            entries.order.insert(tick, key);
            entries.entries.insert(key, Entry { record: record.clone(), output: Some(output), tick });
            entries.shrink(policy)
        };
        for key in gone {
            self.delete_file(&tool, &key);
        }
        if let Err(e) = self.write_file(&key, &record) {
            tracing::warn!(tool = %tool, error = %e, "a result cache entry was kept in memory only");
        }
        true
    }

    /// Hold entries only for `cached` tools, each within its policy: the rest (a tool whose
    /// caching was turned off, or that is gone) are dropped, from memory and disk. Run at start,
    /// once the config's tools are known, and at every reload.
    pub(crate) fn retain(&self, cached: &[(String, CachePolicy)]) {
        let gone: Vec<String> =
            self.lock().keys().filter(|name| !cached.iter().any(|(n, _)| n == *name)).cloned().collect();
        for name in gone {
            self.purge(Some(&name));
        }
        for (name, policy) in cached {
            self.bound(name, policy);
        }
    }

    /// Drop the entry `key` of `tool` (a failed check or replay).
    pub(crate) fn evict(&self, tool: &str, key: &CacheKey) {
        if let Some(entries) = self.lock().get_mut(tool) {
            entries.remove(key);
        }
        self.delete_file(tool, key);
    }

    /// Drop every entry of `tool`, or of every tool; returns how many went.
    pub fn purge(&self, tool: Option<&str>) -> usize {
        let gone: Vec<(String, ToolEntries)> = {
            let mut tools = self.lock();
            match tool {
                Some(name) => tools.remove_entry(name).into_iter().collect(),
                None => tools.drain().collect(),
            }
        };
        let mut count = 0;
        for (name, entries) in gone {
            count += entries.entries.len();
            let _ = std::fs::remove_dir_all(self.dir.join(&name));
        }
        count
    }

    /// Entries and bytes held per tool, by name.
    pub fn stats(&self) -> Vec<ToolCacheStats> {
        let mut stats: Vec<_> = self
            .lock()
            .iter()
            .map(|(tool, entries)| ToolCacheStats {
                tool: tool.clone(),
                entries: entries.entries.len(),
                bytes: entries.bytes,
            })
            .collect();
        stats.sort_by(|a, b| a.tool.cmp(&b.tool));
        stats
    }

    /// Apply `policy`'s bounds to `tool` at once (after a config reload lowered them).
    pub(crate) fn bound(&self, tool: &str, policy: &CachePolicy) {
        let gone = match self.lock().get_mut(tool) {
            Some(entries) => entries.shrink(policy),
            None => return,
        };
        for key in gone {
            self.delete_file(tool, &key);
        }
    }

    fn path(&self, tool: &str, key: &CacheKey) -> PathBuf {
        self.dir.join(tool).join(file_name(key))
    }

    fn write_file(&self, key: &CacheKey, record: &EntryRecord) -> std::io::Result<()> {
        let dir = self.dir.join(&record.tool);
        std::fs::create_dir_all(&dir)?;
        let bytes = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        guild_replay::file::write_file(&dir.join(file_name(key)), &bytes)
    }

    fn delete_file(&self, tool: &str, key: &CacheKey) {
        let _ = std::fs::remove_file(self.path(tool, key));
    }
}

fn read_record(path: &Path) -> Option<EntryRecord> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path).ok()?.take(CACHE_ENTRY_FILE_BYTES_MAX + 1).read_to_end(&mut bytes).ok()?;
    if bytes.len() as u64 > CACHE_ENTRY_FILE_BYTES_MAX {
        return None;
    }
    serde_json::from_slice(&bytes).ok()
}

/// Check an entry against its bundle in `store` (see [`guild_queue::check_entry`]).
fn check(store: &DirStore, trusted: &[PublicKey], record: &EntryRecord) -> Result<Arc<str>, String> {
    let id = record.bundle;
    let (manifest, signature) = store.get_bundle(&id).map_err(|e| format!("bundle {id} cannot be read: {e}"))?;
    guild_queue::check_entry(store, &manifest, &signature, trusted, record, None)
        .map(Arc::from)
        .map_err(|e| e.to_string())
}

/// Now, ms since the Unix epoch.
pub(crate) fn now_unix_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis())
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tool: &str, n: u8, bytes: u64) -> (CacheKey, EntryRecord) {
        let action = Digest::of(&[n]);
        let record = EntryRecord {
            tenant: "acme".into(),
            tool: tool.into(),
            revision: 1,
            action,
            bundle: Digest::of(b"bundle"),
            fuel_used_units: 10,
            output_bytes: bytes,
            stored_unix_ms: now_unix_ms(),
        };
        (CacheKey::new("acme", &action), record)
    }

    fn cache(dir: &Path) -> ResultCache {
        let store = Arc::new(DirStore::open(dir.join("store")).expect("store"));
        ResultCache::open(dir.join("cache"), store, Vec::new(), 8)
    }

    #[tokio::test]
    async fn entries_are_bounded_by_count_and_bytes_least_recently_used_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = cache(dir.path());
        let policy = CachePolicy { entries_max: 2, bytes_max: 10, ..CachePolicy::default() };
        let (k1, r1) = record("hash", 1, 4);
        let (k2, r2) = record("hash", 2, 4);
        let (k3, r3) = record("hash", 3, 4);
        cache.store(&policy, k1, r1, Arc::from("aaaa"));
        cache.store(&policy, k2, r2, Arc::from("bbbb"));
        // Using the first makes the second the least recently used.
        assert!(matches!(cache.lookup("hash", &policy, &k1, 100).await, Lookup::Hit(_)));
        cache.store(&policy, k3, r3, Arc::from("cccc"));
        assert!(matches!(cache.lookup("hash", &policy, &k2, 100).await, Lookup::Miss));
        assert!(matches!(cache.lookup("hash", &policy, &k1, 100).await, Lookup::Hit(_)));
        assert_eq!(cache.stats(), vec![ToolCacheStats { tool: "hash".into(), entries: 2, bytes: 8 }]);
        // Past the byte bound (entries of 4 bytes, 10 allowed): the oldest go.
        let (k4, r4) = record("hash", 4, 8);
        cache.store(&policy, k4, r4, Arc::from("dddddddd"));
        assert_eq!(cache.stats()[0].entries, 1);
        // An output over the whole bound is never kept.
        let (k5, r5) = record("hash", 5, 11);
        cache.store(&policy, k5, r5, Arc::from("eeeeeeeeeee"));
        assert!(matches!(cache.lookup("hash", &policy, &k5, 100).await, Lookup::Miss));
        // A caller with less fuel than the run burnt is not answered from it.
        assert!(matches!(cache.lookup("hash", &policy, &k4, 9).await, Lookup::Miss));
        assert_eq!(cache.purge(Some("hash")), 1);
        assert!(cache.stats().is_empty());
    }

    #[test]
    fn an_entry_file_past_its_bound_is_not_read_but_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (key, record) = record("hash", 1, 4);
        let tool_dir = dir.path().join("cache/hash");
        std::fs::create_dir_all(&tool_dir).expect("mkdir");
        let mut bytes = serde_json::to_vec(&record).expect("JSON");
        std::fs::write(tool_dir.join(file_name(&key)), &bytes).expect("write");
        assert_eq!(cache(dir.path()).stats()[0].entries, 1, "an entry of the right size is indexed");
        bytes.resize(usize::try_from(CACHE_ENTRY_FILE_BYTES_MAX).expect("64 KiB") + 1, b' ');
        std::fs::write(tool_dir.join(file_name(&key)), &bytes).expect("write");
        assert!(cache(dir.path()).stats().is_empty(), "one past CACHE_ENTRY_FILE_BYTES_MAX is not");
        assert!(!tool_dir.join(file_name(&key)).exists());
    }

    #[tokio::test]
    async fn an_expired_entry_answers_nothing_and_an_entry_read_back_is_checked_against_its_bundle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = CachePolicy { ttl_s: 1, ..CachePolicy::default() };
        let (key, mut old) = record("hash", 1, 4);
        old.stored_unix_ms -= 5_000;
        {
            let cache = cache(dir.path());
            cache.store(&policy, key, old, Arc::from("aaaa"));
            assert!(matches!(cache.lookup("hash", &policy, &key, 100).await, Lookup::Miss));
            assert!(cache.stats()[0].entries == 0);
            let (key, fresh) = record("hash", 2, 4);
            cache.store(&policy, key, fresh, Arc::from("bbbb"));
        }
        // Read back after a restart: its bundle is not in the store, so it is rejected and gone.
        let cache = cache(dir.path());
        let (key, _) = record("hash", 2, 4);
        assert!(matches!(cache.lookup("hash", &policy, &key, 100).await, Lookup::Rejected { .. }));
        assert!(matches!(cache.lookup("hash", &policy, &key, 100).await, Lookup::Miss));
        assert!(!cache.path("hash", &key).exists());
    }
}
