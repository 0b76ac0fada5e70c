//! Where tool records live and how a record becomes loaded revisions: a JSON file in the
//! daemon's state directory for one node, the queue's `tools` hash in Redis for a fleet (every
//! API node polls its generation counter and installs what changed). A revision's component is
//! read from the components directory (`<state>/tools/<blake3>.wasm`, where uploads and copies
//! of the config's components are kept), else from Redis, where the node that added it put it.

use crate::registry::{Base, Named, RegisteredTool, ToolSource};
use guild_queue::RedisQueue;
use guild_replay::Digest;
use guild_runtime::Runtime;
use guild_vocab::ToolRecord;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest tools file read at start, bytes.
pub const TOOLS_FILE_BYTES_MAX: u64 = 64 << 20;

/// Where the records are kept.
pub enum RecordStore {
    /// One node: `tools.json` in the state directory, written whole then renamed.
    File {
        /// The file.
        path: PathBuf,
        /// One writer at a time.
        lock: tokio::sync::Mutex<()>,
    },
    /// A fleet: the queue's `tools` hash.
    Redis(RedisQueue),
}

impl RecordStore {
    /// Records in `state_dir/tools.json`.
    pub fn file(state_dir: &Path) -> Self {
        Self::File { path: state_dir.join("tools.json"), lock: tokio::sync::Mutex::new(()) }
    }

    /// Every record.
    ///
    /// # Errors
    /// What the file or Redis said, for people: a file past [`TOOLS_FILE_BYTES_MAX`] or that
    /// does not decode, Redis unreachable or holding a record that does not decode.
    pub async fn load(&self) -> Result<Vec<ToolRecord>, String> {
        match self {
            Self::File { path, .. } => Ok(read_file(path)?.into_values().collect()),
            Self::Redis(queue) => queue.tool_records().await.map_err(|e| e.to_string()),
        }
    }

    /// The record of `name`, as stored now.
    ///
    /// # Errors
    /// As [`RecordStore::load`].
    pub async fn read(&self, name: &str) -> Result<Option<ToolRecord>, String> {
        match self {
            Self::File { path, .. } => Ok(read_file(path)?.remove(name)),
            Self::Redis(queue) => queue.tool_record(name).await.map_err(|e| e.to_string()),
        }
    }

    /// Write `record` if the stored one is still at generation `read` (0: none). Returns
    /// whether it was written.
    ///
    /// # Errors
    /// The file cannot be written, or Redis cannot be reached.
    pub async fn put(&self, record: &ToolRecord, read: u64) -> Result<bool, String> {
        match self {
            Self::File { path, lock } => {
                record.validate().map_err(|e| e.to_string())?;
                let size = serde_json::to_vec(record).map_or(0, |b| b.len());
                if size > guild_queue::TOOL_RECORD_BYTES_MAX {
                    return Err(format!(
                        "the record of tool {:?} would be {size} bytes; at most {} are kept",
                        record.name,
                        guild_queue::TOOL_RECORD_BYTES_MAX
                    ));
                }
                let _one = lock.lock().await;
                let mut all = read_file(path)?;
                let stored = all.get(&record.name).map_or(0, |r| r.generation);
                if stored != read {
                    return Ok(false);
                }
                if read == 0 && all.len() >= guild_queue::TOOL_RECORDS_MAX {
                    return Err(format!(
                        "{} tool names are kept, the most there may be; no new name can be added",
                        guild_queue::TOOL_RECORDS_MAX
                    ));
                }
                all.insert(record.name.clone(), record.clone());
                let text = serde_json::to_vec_pretty(&all).expect("tool records are plain data");
                write_synced(path, &text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                Ok(true)
            }
            Self::Redis(queue) => queue.put_tool_record(record, read).await.map_err(|e| e.to_string()),
        }
    }

    /// The counter that grows with every write (Redis), for followers to poll.
    pub fn redis(&self) -> Option<&RedisQueue> {
        match self {
            Self::Redis(queue) => Some(queue),
            Self::File { .. } => None,
        }
    }
}

fn read_file(path: &Path) -> Result<BTreeMap<String, ToolRecord>, String> {
    let bytes = match std::fs::metadata(path) {
        Ok(meta) if meta.len() > TOOLS_FILE_BYTES_MAX => {
            return Err(format!("{} is {} bytes; at most {TOOLS_FILE_BYTES_MAX} are read", path.display(), meta.len()));
        }
        Ok(_) => std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let records: BTreeMap<String, ToolRecord> =
        serde_json::from_slice(&bytes).map_err(|e| format!("{} does not decode: {e}", path.display()))?;
    for (name, record) in &records {
        record.validate().map_err(|e| format!("{}: {e}; move the file aside to start afresh", path.display()))?;
        if &record.name != name {
            return Err(format!("{}: the record under {name:?} names the tool {:?}", path.display(), record.name));
        }
    }
    Ok(records)
}

/// Where the components of revisions are kept on this node.
#[derive(Clone)]
pub struct Components {
    /// `<state>/tools`: `<blake3>.wasm` per component.
    pub dir: PathBuf,
    /// With a fleet: where a component another node added is fetched from.
    pub redis: Option<RedisQueue>,
}

impl Components {
    /// The file a component is kept in.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{digest}.wasm"))
    }

    /// Keep `bytes` (whose blake3 is `digest`) unless kept already; returns whether it was
    /// written now.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn keep(&self, digest: &Digest, bytes: &[u8]) -> Result<bool, String> {
        let path = self.path(digest);
        if path.exists() {
            return Ok(false);
        }
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| write_synced(&path, bytes))
            .map(|()| true)
            .map_err(|e| format!("cannot keep the component in {}: {e}", self.dir.display()))
    }

    /// Load revision `revision` of `record` under `base`.
    ///
    /// # Errors
    /// For people: the component is neither kept here nor in Redis, or does not load.
    pub async fn load(
        &self,
        runtime: &Runtime,
        record: &ToolRecord,
        base: &Base,
        revision: u32,
    ) -> Result<Arc<RegisteredTool>, String> {
        let entry = record
            .revisions
            .iter()
            .find(|r| r.revision == revision)
            .ok_or_else(|| format!("no revision {revision}"))?;
        let digest: Digest = entry.component.parse().map_err(|e| format!("revision {revision}: {e}"))?;
        let path = self.path(&digest);
        if !path.exists() {
            let fetched = match &self.redis {
                Some(redis) => redis.get_component(&digest).await.map_err(|e| e.to_string())?,
                None => None,
            };
            let bytes = fetched.ok_or_else(|| {
                format!("the component {digest} of revision {revision} of {:?} is not kept here", record.name)
            })?;
            self.keep(&digest, &bytes)?;
        }
        let (tool, _) = runtime.load_file(&path).await.map_err(|e| e.to_string())?;
        if *tool.digest() != digest {
            return Err(format!("{} does not hash to its name", path.display()));
        }
        Ok(Arc::new(base.register(&record.name, revision, tool, ToolSource::File(path))))
    }

    /// `record` with its revisions loaded: those `reuse` holds are taken from it (registered
    /// again under `base` when `rebase`: the config changed its grants or limits), the rest
    /// loaded. A revision that cannot be loaded is left out (and logged) unless it is the
    /// current one.
    ///
    /// # Errors
    /// The current revision cannot be loaded.
    pub async fn named(
        &self,
        runtime: &Runtime,
        record: ToolRecord,
        base: Base,
        reuse: Option<&Named>,
        rebase: bool,
    ) -> Result<Named, String> {
        let mut loaded = BTreeMap::new();
        for entry in &record.revisions {
            let kept = reuse
                .and_then(|n| n.loaded().values().find(|t| t.tool.digest().to_hex() == entry.component))
                .map(|t| match (rebase, t.revision == entry.revision) {
                    (false, true) => t.clone(),
                    _ => Arc::new(base.register(&record.name, entry.revision, t.tool.clone(), t.source.clone())),
                });
            let tool = match kept {
                Some(tool) => tool,
                None => match self.load(runtime, &record, &base, entry.revision).await {
                    Ok(tool) => tool,
                    Err(e) if entry.revision != record.current => {
                        tracing::warn!(tool = %record.name, revision = entry.revision, error = %e, "a revision cannot be loaded here; calls routed to it get the current revision");
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            loaded.insert(entry.revision, tool);
        }
        Ok(Named::new(record, base, loaded))
    }
}

/// Write `bytes` beside `path`, flush them to disk, then rename into place: a reader (or a
/// restart after a crash) sees the old file or the new one, never half of one.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let partial = path.with_extension("partial");
    let result = (|| {
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(bytes)?;
        file.sync_data()?;
        std::fs::rename(&partial, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use guild_vocab::rollout::{REVISIONS_MAX, ROLLOUT_TEXT_BYTES_MAX};
    use guild_vocab::{Revision, ToolRecord};

    fn revision(n: usize, text: &str) -> Revision {
        Revision {
            revision: 0,
            component: format!("{n:064x}"),
            version: text.into(),
            description: text.into(),
            added_unix_ms: 1,
            added_by: text.into(),
            note: text.into(),
            rolled_back: None,
        }
    }

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    #[test]
    fn a_record_past_its_size_is_refused_when_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RecordStore::file(dir.path());
        let text = "t".repeat(ROLLOUT_TEXT_BYTES_MAX);
        let mut record = ToolRecord::new("big", revision(0, &text));
        for n in 1..REVISIONS_MAX {
            record.add(revision(n, &text)).expect("room");
        }
        let refused = block_on(store.put(&record, 0)).expect_err("too large");
        assert!(refused.contains("at most"), "{refused}");
        assert!(block_on(store.load()).expect("load").is_empty(), "nothing written");
    }

    #[test]
    fn names_past_their_count_are_refused_and_a_bad_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RecordStore::file(dir.path());
        let all: BTreeMap<String, ToolRecord> = (0..guild_queue::TOOL_RECORDS_MAX)
            .map(|n| {
                let name = format!("tool-{n}");
                (name.clone(), ToolRecord::new(&name, revision(n, "")))
            })
            .collect();
        std::fs::write(dir.path().join("tools.json"), serde_json::to_vec(&all).expect("json")).expect("write");
        let one_more = ToolRecord::new("one-more", revision(0, ""));
        let refused = block_on(store.put(&one_more, 0)).expect_err("full");
        assert!(refused.contains("no new name"), "{refused}");
        let known = all.get("tool-1").expect("tool-1").clone();
        assert!(block_on(store.put(&known, known.generation)).expect("an existing name may change"));

        // A file past TOOLS_FILE_BYTES_MAX is refused before it is read (a sparse file here).
        let big = std::fs::File::create(dir.path().join("tools.json")).expect("create");
        big.set_len(TOOLS_FILE_BYTES_MAX + 1).expect("grow");
        let refused = block_on(store.load()).expect_err("too large");
        assert!(refused.contains("at most"), "{refused}");

        std::fs::write(dir.path().join("tools.json"), br#"{"x": {"name": "y"}}"#).expect("write");
        let broken = block_on(store.load()).expect_err("does not decode");
        assert!(broken.contains("tools.json"), "{broken}");
    }
}
