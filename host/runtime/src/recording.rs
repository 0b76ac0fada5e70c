//! Turning a run into a bundle: the prelude every tape starts with (the random seed, then each
//! mount's Merkle tree), and sealing action, tape, result and exec into a signed bundle in the
//! store (signed alone, or in a batch with other runs' bundles through the host's
//! [`BatchSigner`]).

use crate::error::RunError;
use crate::hermetic::MountedTree;
use crate::record::Recorder;
use crate::run::types::{Execution, Tool};
use crate::signer::{BatchSigner, SignBatchLimits};
use crate::{LimitHit, Limits};
use guild_replay::cost::{Cost, Quantities};
use guild_replay::tree::{self, FileDigestCache, TreeError, TreeLimits};
use guild_replay::{
    Action, BlobRef, BlobStore, BundleSignature, BundleWriter, Digest, DirStore, Effect, FORMAT, HostKey, OutputTree,
    RunResult, Sealed, ToolRef, Unsigned,
};
use guild_vocab::Access;
use guild_vocab::EffectivePolicy;
use guild_vocab::EngineFingerprint;
use guild_vocab::Outcome;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where and how runs are recorded.
#[derive(Clone)]
pub struct RecordingConfig {
    /// The store bundles and their blobs go to.
    pub store: Arc<DirStore>,
    /// The key bundles are signed with.
    pub key: Arc<HostKey>,
    /// Bounds on each mount's recorded tree.
    pub tree_limits: TreeLimits,
    /// Digests of files already stored, so an unchanged mount is not hashed again each run.
    pub file_digests: Arc<FileDigestCache>,
    /// Signs the bundles of runs sealed at about the same moment together, with `key`; `None`:
    /// each bundle is signed alone, as a batch of one, in its own run.
    pub signer: Option<Arc<BatchSigner>>,
}

impl RecordingConfig {
    /// Record into `store`, signing each bundle alone with `key`, with default tree limits: for a
    /// host that makes one run at a time (`guild run`).
    pub fn new(store: Arc<DirStore>, key: Arc<HostKey>) -> Self {
        Self {
            store,
            key,
            tree_limits: TreeLimits::default(),
            file_digests: Arc::new(FileDigestCache::default()),
            signer: None,
        }
    }

    /// Record into `store` as [`RecordingConfig::new`], signing bundles sealed at about the same
    /// moment together, within `limits`, through a signer its clones share: for a host that makes
    /// runs at once (a daemon, a worker).
    ///
    /// # Errors
    /// The operating system's error when the signer's thread cannot be started.
    pub fn batched(store: Arc<DirStore>, key: Arc<HostKey>, limits: SignBatchLimits) -> std::io::Result<Self> {
        let signer = Arc::new(BatchSigner::start(key.clone(), limits)?);
        Ok(Self { signer: Some(signer), ..Self::new(store, key) })
    }

    /// The signature document for bundle `id`: from the shared signer when there is one, else
    /// signed alone at once.
    ///
    /// # Errors
    /// [`RunError::Record`] when the signer has stopped.
    pub(crate) async fn sign(&self, id: Digest) -> Result<BundleSignature, RunError> {
        match &self.signer {
            Some(signer) => signer.sign(id).await.map_err(|e| RunError::Record(e.to_string())),
            None => Ok(self.key.sign(&id)),
        }
    }

    /// Give the bundle `unsigned` its `signature` and record it in the store.
    ///
    /// # Errors
    /// [`RunError::Record`] when the store cannot write it.
    pub(crate) fn store_signed(&self, unsigned: Unsigned, signature: &BundleSignature) -> Result<Sealed, RunError> {
        let sealed = unsigned.sign(signature);
        self.store
            .put_bundle(&sealed.id, &sealed.manifest, &sealed.signature)
            .map_err(|e| RunError::Record(e.to_string()))?;
        Ok(sealed)
    }
}

fn tree_error(error: TreeError) -> RunError {
    match &error {
        TreeError::TooLarge { what, setting, .. } => {
            let raise = match *setting {
                "tree bytes_max" => "raise --mount-bytes",
                "tree entries_max" => "raise --mount-entries",
                _ => "mount a shallower directory",
            };
            RunError::Limits(format!("a mount is too large to record ({what}); {raise}"))
        }
        TreeError::BadName { name } => RunError::Limits(format!(
            "a mount holds {name:?}, a name a bundle cannot record (no '\\', NUL, '.' or '..'); rename or remove it"
        )),
        _ => RunError::Record(error.to_string()),
    }
}

/// A mount as it was captured before the run: its tree (stored) and its size.
pub(crate) struct CapturedMount {
    pub(crate) mounted: MountedTree,
    pub(crate) entries: u64,
    pub(crate) bytes: u64,
}

/// Capture each mount's Merkle tree as the guest will find it, storing its files and
/// directories for the bundle.
pub(crate) fn capture_mounts(
    store: &dyn BlobStore,
    policy: &EffectivePolicy,
    tree_limits: TreeLimits,
    file_digests: Option<&FileDigestCache>,
) -> Result<Vec<CapturedMount>, RunError> {
    policy
        .mounts
        .iter()
        .map(|mount| {
            let summary =
                tree::capture_cached(&mount.host_path, store, tree_limits, file_digests).map_err(tree_error)?;
            Ok(CapturedMount {
                mounted: MountedTree { guest_path: mount.guest_path.clone(), access: mount.access, tree: summary.root },
                entries: summary.entries,
                bytes: summary.bytes,
            })
        })
        .collect()
}

/// Record what every tape starts with: the seed, then each mount as the guest will find it.
pub(crate) fn record_prelude(recorder: &Recorder, seed: &[u8; 32], mounts: &[CapturedMount]) {
    recorder.record(Effect::RandomSeed { seed: Digest::from_bytes(*seed).to_hex() });
    for mount in mounts {
        recorder.record(Effect::Mount {
            guest_path: mount.mounted.guest_path.clone(),
            access: mount.mounted.access.to_string(),
            tree: mount.mounted.tree,
            entries: mount.entries,
            bytes: mount.bytes,
        });
    }
}

/// A snapshot directory older than this is left over from a process that died mid-run, s.
pub(crate) const SNAPSHOT_STALE_S: u64 = 3600;

/// Remove snapshot directories a process that died mid-run left under the store (older than
/// [`SNAPSHOT_STALE_S`]: a live run's are younger). Failures are ignored: the next start tries
/// again.
pub(crate) fn sweep_snapshots(store: &DirStore) {
    let Ok(entries) = std::fs::read_dir(store.root().join("snapshots")) else { return };
    let stale = std::time::Duration::from_secs(SNAPSHOT_STALE_S);
    for entry in entries.flatten() {
        let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age > stale));
        if old {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Rebuild each captured (read-only) mount from its tree in a directory of its own under the
/// store (so that files can be hard-linked from it), and the policy that mounts those instead of
/// the host's directories. The directories go when the returned guard is dropped.
pub(crate) fn snapshot_mounts(
    recording: &RecordingConfig,
    mounts: &[CapturedMount],
    policy: &EffectivePolicy,
) -> Result<(tempfile::TempDir, EffectivePolicy), RunError> {
    let host = |e: std::io::Error| RunError::Host(format!("cannot make a hermetic run's mounts: {e}"));
    let parent = recording.store.root().join("snapshots");
    std::fs::create_dir_all(&parent).map_err(host)?;
    let dir = tempfile::tempdir_in(&parent).map_err(host)?;
    let mut snapshot = policy.clone();
    for (index, mount) in snapshot.mounts.iter_mut().enumerate() {
        let captured = mounts
            .iter()
            .find(|m| m.mounted.guest_path == mount.guest_path)
            .ok_or_else(|| RunError::Host(format!("mount {} was not captured", mount.guest_path)))?;
        let path = dir.path().join(format!("mount-{index}"));
        std::fs::create_dir(&path).map_err(host)?;
        tree::materialize(
            recording.store.as_ref(),
            &captured.mounted.tree,
            &path,
            recording.tree_limits,
            tree::Materialize::LinkReadOnly,
        )
        .map_err(tree_error)?;
        mount.host_path = path;
    }
    Ok((dir, snapshot))
}

/// Bounds on the trees a run's bundle holds: the mounts' own, plus what the run may have
/// written into them within its quotas, so a run that wrote up to its quota can still be sealed.
pub(crate) fn sealed_tree_limits(tree_limits: TreeLimits, limits: &Limits) -> TreeLimits {
    TreeLimits {
        bytes_max: tree_limits.bytes_max.saturating_add(limits.mount_write_bytes_max),
        entries_max: tree_limits.entries_max.saturating_add(limits.mount_write_entries_max),
        ..tree_limits
    }
}

/// The trees of the writable mounts, after the run, and the limit the run hit if one of them
/// outgrew what a bundle may record (that mount's tree is then left out, and the run ends with
/// that limit: it is still sealed, and a replay ends the same way).
pub(crate) fn output_trees(
    store: &dyn BlobStore,
    policy: &EffectivePolicy,
    tree_limits: TreeLimits,
    file_digests: Option<&FileDigestCache>,
) -> Result<(Vec<OutputTree>, Option<LimitHit>), RunError> {
    let mut trees = Vec::new();
    let mut overflow = None;
    for mount in policy.mounts.iter().filter(|m| m.access == Access::ReadWrite) {
        match tree::capture_cached(&mount.host_path, store, tree_limits, file_digests) {
            Ok(summary) => trees.push(OutputTree { guest_path: mount.guest_path.clone(), tree: summary.root }),
            Err(TreeError::TooLarge { what, setting, .. }) => {
                let advice = match setting {
                    "tree bytes_max" => "raise --mount-bytes, or empty the mount",
                    "tree entries_max" => "raise --mount-entries, or empty the mount",
                    _ => "nest its directories less deep",
                };
                overflow.get_or_insert(LimitHit::MountWrite {
                    guest_path: mount.guest_path.clone(),
                    what: format!("after the run it holds {what}, more than a bundle records"),
                    flag: advice.to_string(),
                });
            }
            Err(TreeError::BadName { name }) => {
                overflow.get_or_insert(LimitHit::MountWrite {
                    guest_path: mount.guest_path.clone(),
                    what: format!("after the run it holds {name:?}, a name a bundle cannot record"),
                    flag: "rename or remove that entry".to_string(),
                });
            }
            Err(e) => return Err(tree_error(e)),
        }
    }
    Ok((trees, overflow))
}

/// `exec.json`: where and how the run was made — signed, but not compared by a replay.
/// What sealing measured and priced of a run.
pub(crate) struct Priced {
    /// Its quantities, the bytes its bundle records included.
    pub(crate) quantities: Quantities,
    /// Its cost under the run's price table, when it had one.
    pub(crate) cost: Option<Cost>,
    /// The tokens each of the table's LLM upstreams (by URL prefix) was used for.
    pub(crate) tokens: Vec<(String, guild_replay::cost::TokenCount)>,
}

#[derive(Clone, serde::Serialize)]
struct ExecRecord {
    guild_version: &'static str,
    hostname: &'static str,
    /// When the run finished, ms since the Unix epoch.
    finished_at_unix_ms: u64,
    wall_time_us: u64,
    memory_bytes_peak: u64,
    /// Time its GPU dispatches took on a device, µs.
    gpu_device_us: u64,
    /// Time its GPU dispatches took on the CPU reference, µs.
    gpu_cpu_us: u64,
    log_lines: usize,
    /// What the run cost under the host's price table (its lines and exact total); absent
    /// without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    cost: Option<Cost>,
    /// The OpenTelemetry trace the run belongs to (32 hex digits), when tracing was on.
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    /// The run's own span in that trace (16 hex digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    span_id: Option<String>,
}

/// This machine's name, read once.
fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|n| n.trim().to_string()).unwrap_or_default()
    })
}

impl RecordingConfig {
    /// Write a finished run's parts into the store and build its manifest: a bundle that then
    /// needs only its signature ([`RecordingConfig::sign`], [`RecordingConfig::store_signed`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn seal_unsigned(
        &self,
        fingerprint: &EngineFingerprint,
        tool: &Tool,
        input: &str,
        policy: &EffectivePolicy,
        limits: &Limits,
        execution: &Execution,
        recorder: &Recorder,
        run_for: Option<&crate::RunFor<'_>>,
        action_digest: Option<Digest>,
        (measured, exchanges): (&Quantities, &[guild_replay::cost::Exchange]),
    ) -> Result<(Unsigned, Option<LimitHit>, Priced), RunError> {
        let store_error = |e: guild_replay::StoreError| RunError::Record(e.to_string());
        let store: &dyn BlobStore = self.store.as_ref();
        let tree_limits = sealed_tree_limits(self.tree_limits, limits);
        let (output_trees, overflow) = output_trees(store, policy, tree_limits, Some(&self.file_digests))?;
        let outcome = match &overflow {
            Some(hit) => Outcome::Limit(hit.clone()),
            None => execution.outcome.clone(),
        };
        let (tape, _) = recorder.finish();
        let mut writer = BundleWriter::new(store);
        let component = BlobRef { digest: *tool.digest(), size_bytes: tool.size_bytes() };
        writer.add_stored(&component).map_err(store_error)?;
        let input = writer.add_blob(input.as_bytes()).map_err(store_error)?;
        for blob in recorder.take_blobs() {
            writer.add_blob(&blob).map_err(store_error)?;
        }
        let output = match &outcome {
            Outcome::Output { output } => Some(writer.add_blob(output.as_bytes()).map_err(store_error)?),
            _ => None,
        };
        let mut roots: Vec<Digest> = output_trees.iter().map(|t| t.tree).collect();
        roots.extend(tape.events().iter().filter_map(|e| match &e.effect {
            Effect::Mount { tree, .. } => Some(*tree),
            _ => None,
        }));
        for root in roots {
            writer.add_tree(&root, tree_limits).map_err(tree_error)?;
        }
        let info = tool.info();
        let action = Action {
            format: FORMAT.to_string(),
            component,
            tool: ToolRef {
                name: info.name.clone(),
                version: info.version.clone(),
                revision: run_for.and_then(|r| r.revision),
            },
            input,
            policy: policy.clone(),
            limits: limits.clone(),
            engine: fingerprint.clone(),
            principal: run_for.map(|r| r.principal.clone()),
            action_digest,
        };
        let result = RunResult {
            outcome: outcome.without_output(),
            output,
            fuel_used_units: execution.fuel_used_units,
            output_trees,
            tape_head: tape.head(),
            tape_events: tape.events().len() as u64,
        };
        let exec = ExecRecord {
            guild_version: env!("CARGO_PKG_VERSION"),
            hostname: hostname(),
            finished_at_unix_ms: u64::try_from(
                SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis(),
            )
            .unwrap_or(u64::MAX),
            wall_time_us: u64::try_from(execution.wall_time.as_micros()).unwrap_or(u64::MAX),
            memory_bytes_peak: execution.memory_bytes_peak,
            gpu_device_us: execution.gpu_time.device_us,
            gpu_cpu_us: execution.gpu_time.cpu_us,
            log_lines: execution.logs.len(),
            cost: None,
            trace_id: execution.trace.as_ref().map(|(trace, _)| trace.clone()),
            span_id: execution.trace.as_ref().map(|(_, span)| span.clone()),
        };
        // The cost is reckoned once the bytes the bundle records are known, and signed in with
        // its exec record (which is not among them).
        let mut priced = Priced { quantities: *measured, cost: None, tokens: Vec::new() };
        let priced_exec = |recorded_bytes: u64| {
            let quantities = Quantities { bundle_bytes: recorded_bytes, ..*measured };
            let pricing = run_for.and_then(|r| r.pricing.as_deref());
            let (cost, tokens) = match pricing {
                Some(table) => {
                    let (cost, tokens) = table.price_recorded(&quantities, exchanges, store);
                    (Some(cost), table.llm.iter().map(|llm| llm.url.clone()).zip(tokens).collect())
                }
                None => (None, Vec::new()),
            };
            priced = Priced { quantities, cost: cost.clone(), tokens };
            ExecRecord { cost, ..exec.clone() }
        };
        let unsigned = writer.finish_with(&action, &tape, &result, priced_exec).map_err(store_error)?;
        Ok((unsigned, overflow, priced))
    }
}
