//! Bundles: the signed record of one run. The manifest names every part by digest and size; its
//! own blake3 is the bundle id; the signature covers the id (alone, or through the Merkle root
//! of a batch of ids signed together, see [`crate::sign`]). Parts are blobs in a
//! [`BlobStore`], so a component run a thousand times is stored once.
//!
//! - `action.json` — what was asked (component, tool, input, policy, limits, engine, and the
//!   principal it was for);
//! - the tape — every effect the guest observed (see [`crate::Tape`]);
//! - `result.json` — how it ended, fuel, output trees, the tape head;
//! - `exec.json` — where and when it ran: signed, but not part of the determinism check.

use crate::Digest;
use crate::canonical::{is_canonical, to_canonical_bytes};
use crate::sign::{BundleSignature, HostKey, Inclusion, PublicKey, SignatureError};
use crate::store::{BlobStore, StoreError};
use crate::tape::{Effect, Tape, TapeError};
use crate::tree::{TreeError, TreeLimits, walk_blobs};
use guild_vocab::{EffectivePolicy, EngineFingerprint, Limits, Outcome};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The format every document of this version carries.
pub const FORMAT: &str = "guild-bundle/1";

/// A blob by digest and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobRef {
    /// blake3 of the bytes.
    pub digest: Digest,
    /// Number of bytes.
    pub size_bytes: u64,
}

/// `manifest.json`: every part of a bundle by digest and size. Its canonical bytes' blake3 is
/// the bundle id, and the signature covers that id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The bundle format's version, [`FORMAT`]; any other is refused.
    pub format: String,
    /// `action.json`, the [`Action`]: what was asked.
    pub action: BlobRef,
    /// The tape, as JSON lines.
    pub tape: BlobRef,
    /// `result.json`, the [`RunResult`]: how the run ended.
    pub result: BlobRef,
    /// `exec.json`: where and when it ran, outside the determinism check.
    pub exec: BlobRef,
    /// Every other blob the bundle needs, sorted by digest.
    pub blobs: Vec<BlobRef>,
}

impl Manifest {
    /// Every part the bundle needs from a store: its four documents, then its blobs.
    pub fn parts(&self) -> impl Iterator<Item = &BlobRef> {
        [&self.action, &self.tape, &self.result, &self.exec].into_iter().chain(&self.blobs)
    }

    /// The bytes the bundle records, as its stored size is priced: its blobs and its action,
    /// tape and result documents. Its exec record (which holds the run's cost), manifest and
    /// signature — together about a kilobyte — are not counted, so the cost can be signed in.
    pub fn recorded_bytes(&self) -> u64 {
        self.blobs.iter().chain([&self.action, &self.tape, &self.result]).map(|b| b.size_bytes).sum()
    }
}

/// The tool a bundle ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolRef {
    /// Name from `describe`.
    pub name: String,
    /// Version from `describe`.
    pub version: String,
    /// Which revision of its name the host ran, when the host keeps revisions (a daemon or
    /// worker does; `guild run` does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
}

/// `action.json`: what was asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// The bundle format's version, [`FORMAT`]; any other is refused.
    pub format: String,
    /// The component's bytes, a blob of the bundle: what a replay loads and runs.
    pub component: BlobRef,
    /// The tool's name and version.
    pub tool: ToolRef,
    /// The input JSON.
    pub input: BlobRef,
    /// The effective policy the run had: granted ∩ asked for.
    pub policy: EffectivePolicy,
    /// The limits the run had.
    pub limits: Limits,
    /// The engine it ran on: a replay on another refuses, naming both.
    pub engine: EngineFingerprint,
    /// On whose behalf the run was made, when a host with tenants made it: who may read the
    /// bundle back (`GET /v1/bundles/{id}`). Absent for runs made from the command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<Principal>,
    /// For a hermetic run (a cacheable tool's): its action digest — blake3 over the component,
    /// revision, canonical input, mounted trees, the policy and the limits that can change the
    /// result, and the engine — from which its seed and clock readings were derived. A result
    /// cache entry names the bundle whose action digest is its key. Absent for any other run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_digest: Option<Digest>,
}

/// Who a run was for: a tenant, and the subject within it (a person or agent; the tenant itself
/// for a static token).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    /// The tenant's name, as the daemon's configuration declares it.
    pub tenant: String,
    /// The subject within the tenant.
    pub subject: String,
}

impl Principal {
    /// The principal of a tenant's static token: the tenant itself.
    pub fn tenant(name: &str) -> Self {
        Self { tenant: name.to_string(), subject: name.to_string() }
    }

    /// The principal of tenant `name` acting for `subject` (an OAuth access token's `sub`, as
    /// recorded), or, without one, the tenant itself.
    pub fn of(name: &str, subject: Option<&str>) -> Self {
        Self { tenant: name.to_string(), subject: subject.unwrap_or(name).to_string() }
    }
}

/// A writable mount's contents when the run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputTree {
    /// Where the guest saw it.
    pub guest_path: String,
    /// Root of its tree.
    pub tree: Digest,
}

/// `result.json`: how the run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunResult {
    /// How the run ended. An output is only its label here (`{"status": "output"}`): the output
    /// itself is the `output` blob.
    pub outcome: Outcome,
    /// The output JSON, when there was one.
    pub output: Option<BlobRef>,
    /// Fuel units the run burnt, which a replay must match (unless it timed out or was cancelled).
    pub fuel_used_units: u64,
    /// Writable mounts at the end.
    pub output_trees: Vec<OutputTree>,
    /// The tape's head digest.
    pub tape_head: Digest,
    /// Events on the tape.
    pub tape_events: u64,
}

/// A sealed bundle, ready to store or export.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// blake3 of `manifest`.
    pub id: Digest,
    /// Canonical manifest bytes.
    pub manifest: Vec<u8>,
    /// Canonical signature bytes.
    pub signature: Vec<u8>,
    /// Bytes the bundle holds: every blob it lists, its manifest and its signature.
    pub size_bytes: u64,
}

/// Gathers a bundle's blobs as a run proceeds, then seals it.
pub struct BundleWriter<'a> {
    store: &'a dyn BlobStore,
    blobs: BTreeMap<Digest, u64>,
}

impl<'a> BundleWriter<'a> {
    /// A writer putting blobs into `store`.
    pub fn new(store: &'a dyn BlobStore) -> Self {
        Self { store, blobs: BTreeMap::new() }
    }

    /// Store `bytes` as part of the bundle.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the store cannot write `bytes`.
    pub fn add_blob(&mut self, bytes: &[u8]) -> Result<BlobRef, StoreError> {
        let digest = self.store.put(bytes)?;
        self.blobs.insert(digest, bytes.len() as u64);
        Ok(BlobRef { digest, size_bytes: bytes.len() as u64 })
    }

    /// Make a blob already in the store (a component stored when it was loaded) part of the
    /// bundle.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when `blob` is not in the store. Its size is taken as given: a
    /// wrong one makes a bundle that fails [`Bundle::open`].
    pub fn add_stored(&mut self, blob: &BlobRef) -> Result<(), StoreError> {
        if !self.store.has(&blob.digest) {
            return Err(StoreError::NotFound(blob.digest));
        }
        self.blobs.insert(blob.digest, blob.size_bytes);
        Ok(())
    }

    /// Make the tree `root` (already captured into the store) part of the bundle.
    ///
    /// # Errors
    /// As [`walk_blobs`]: [`TreeError::Store`] when a node is missing or corrupt,
    /// [`TreeError::BadNode`] or [`TreeError::BadName`] when one is malformed,
    /// [`TreeError::TooLarge`] past `limits`.
    pub fn add_tree(&mut self, root: &Digest, limits: TreeLimits) -> Result<(), TreeError> {
        for (digest, size) in walk_blobs(self.store, root, limits)? {
            self.blobs.insert(digest, size);
        }
        Ok(())
    }

    /// Write the documents, build the manifest and sign it alone (a batch of one).
    ///
    /// # Errors
    /// [`StoreError::Io`] when the store cannot write one of the four documents.
    pub fn seal(
        self,
        action: &Action,
        tape: &Tape,
        result: &RunResult,
        exec: &(impl Serialize + ?Sized),
        key: &HostKey,
    ) -> Result<Sealed, StoreError> {
        let unsigned = self.finish(action, tape, result, exec)?;
        let signature = key.sign(&unsigned.id);
        Ok(unsigned.sign(&signature))
    }

    /// Write the documents and build the manifest, whose id is then signed (alone or in a
    /// batch, [`HostKey::sign_batch`]) and given to [`Unsigned::sign`].
    ///
    /// # Errors
    /// [`StoreError::Io`] when the store cannot write one of the four documents.
    pub fn finish(
        self,
        action: &Action,
        tape: &Tape,
        result: &RunResult,
        exec: &(impl Serialize + ?Sized),
    ) -> Result<Unsigned, StoreError> {
        self.finish_with(action, tape, result, |_| exec)
    }

    /// [`BundleWriter::finish`] with the exec record made once the bytes the bundle records
    /// are known ([`Manifest::recorded_bytes`]): a record that prices them can then be signed
    /// with the bundle, since it is not among them.
    ///
    /// # Errors
    /// As [`BundleWriter::finish`].
    pub fn finish_with<E: Serialize>(
        mut self,
        action: &Action,
        tape: &Tape,
        result: &RunResult,
        exec: impl FnOnce(u64) -> E,
    ) -> Result<Unsigned, StoreError> {
        let put = |bytes: Vec<u8>| -> Result<BlobRef, StoreError> {
            Ok(BlobRef { digest: self.store.put(&bytes)?, size_bytes: bytes.len() as u64 })
        };
        let action = put(to_canonical_bytes(action).expect(PLAIN))?;
        let result_ref = put(to_canonical_bytes(result).expect(PLAIN))?;
        let tape_ref = put(tape.to_jsonl())?;
        for doc in [action, result_ref, tape_ref] {
            self.blobs.remove(&doc.digest);
        }
        let recorded: u64 =
            self.blobs.values().sum::<u64>() + action.size_bytes + result_ref.size_bytes + tape_ref.size_bytes;
        let exec = put(to_canonical_bytes(&exec(recorded)).expect(PLAIN))?;
        self.blobs.remove(&exec.digest);
        let manifest = Manifest {
            format: FORMAT.to_string(),
            action,
            tape: tape_ref,
            result: result_ref,
            exec,
            blobs: self
                .blobs
                .iter()
                .map(|(digest, size_bytes)| BlobRef { digest: *digest, size_bytes: *size_bytes })
                .collect(),
        };
        let manifest = to_canonical_bytes(&manifest).expect(PLAIN);
        let id = Digest::of(&manifest);
        let blob_bytes: u64 = self.blobs.values().sum();
        Ok(Unsigned { id, manifest, blob_bytes })
    }
}

// Serializing these plain documents cannot fail (no maps with non-string keys); an empty
// document stored in their place would be signed and then never verify.
const PLAIN: &str = "a bundle document is plain data";

/// A bundle whose parts are written and whose manifest, and so id, is fixed: only its signature
/// is missing.
#[derive(Debug, Clone)]
pub struct Unsigned {
    /// blake3 of `manifest`: what the signature covers.
    pub id: Digest,
    /// Canonical manifest bytes.
    pub manifest: Vec<u8>,
    /// Bytes of the blobs the manifest lists besides its four documents.
    blob_bytes: u64,
}

impl Unsigned {
    /// The sealed bundle, with `signature` (made over [`Unsigned::id`]) as its signature entry.
    pub fn sign(self, signature: &BundleSignature) -> Sealed {
        let signature = to_canonical_bytes(signature).expect(PLAIN);
        let size_bytes = self.blob_bytes + self.manifest.len() as u64 + signature.len() as u64;
        Sealed { id: self.id, manifest: self.manifest, signature, size_bytes }
    }
}

/// Why a bundle is not valid. Each variant is one class an auditor can act on.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The manifest is not a canonical manifest of this format.
    #[error("manifest is invalid: {0}")]
    Manifest(String),
    /// The signature is missing, malformed, wrong, or not the required key's.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A part is missing or its bytes do not match its digest.
    #[error(transparent)]
    Blob(#[from] StoreError),
    /// A part's size differs from the manifest.
    #[error("blob {digest} is {found} bytes; the manifest says {expected}")]
    Size {
        /// The part whose size differs.
        digest: Digest,
        /// Its size in bytes as the manifest lists it.
        expected: u64,
        /// Its size in bytes in the store.
        found: u64,
    },
    /// A document does not parse or is not canonical.
    #[error("{name} is invalid: {reason}")]
    Document {
        /// The document: `action.json`, `result.json`, `exec.json` or `input`.
        name: &'static str,
        /// What is wrong: the parser's message, `not canonical JSON`, a wrong format.
        reason: String,
    },
    /// The tape is malformed or its chain broken.
    #[error(transparent)]
    Tape(#[from] TapeError),
    /// The result's tape head does not match the tape.
    #[error(
        "result.json names tape head {expected} ({expected_events} events) but the tape ends at {found} ({found_events} events)"
    )]
    TapeHead {
        /// The tape head `result.json` names.
        expected: Digest,
        /// The number of events `result.json` names.
        expected_events: u64,
        /// The head of the tape as stored.
        found: Digest,
        /// The number of events on the stored tape.
        found_events: u64,
    },
    /// Something a document points at is not in the manifest.
    #[error("{what} {digest} is referenced but not listed in the manifest")]
    Unlisted {
        /// What referenced it (`the output`, `mount tree /data`, `the body of response 4`).
        what: String,
        /// The referenced blob, missing from the manifest's list.
        digest: Digest,
    },
    /// A tree is malformed (names escaping their directory, too large).
    #[error(transparent)]
    Tree(#[from] TreeError),
}

/// A bundle [`Bundle::open`] verified: its signature, every part's digest and size, its
/// documents and its tape's chain.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle id: blake3 of the manifest's canonical bytes.
    pub id: Digest,
    /// The manifest, parsed: every part by digest and size.
    pub manifest: Manifest,
    /// Who signed it.
    pub signer: PublicKey,
    /// Its place in the batch of bundles signed together; `None` when it was signed alone in the
    /// form before batching.
    pub inclusion: Option<Inclusion>,
    /// What was asked.
    pub action: Action,
    /// What the guest observed.
    pub tape: Tape,
    /// How it ended.
    pub result: RunResult,
    /// Where and when it ran.
    pub exec: serde_json::Value,
}

impl Bundle {
    /// Check everything about a bundle whose parts are in `store`: the manifest, the signature
    /// (against `required_key` when given), every blob's digest and size, the documents, the
    /// tape's chain and head, and that every referenced blob and tree is listed.
    ///
    /// # Errors
    /// The first check that fails: [`VerifyError::Manifest`] (not canonical, another format, blobs
    /// unsorted or twice), [`VerifyError::Signature`] (malformed, wrong, or not `required_key`'s),
    /// [`VerifyError::Blob`] or [`VerifyError::Size`] (a part missing, corrupt or of another size),
    /// [`VerifyError::Document`], [`VerifyError::Tape`] or [`VerifyError::TapeHead`] (a document,
    /// the tape or its head wrong), [`VerifyError::Unlisted`] or [`VerifyError::Tree`] (a
    /// referenced blob or tree not listed or malformed).
    ///
    /// # Example
    /// Seal a tiny bundle as a host would, then open it as an auditor would:
    ///
    /// ```
    /// use guild_replay::{
    ///     Action, Bundle, BundleWriter, Effect, FORMAT, HostKey, MemoryStore, RunResult, Tape, ToolRef,
    ///     VerifyError,
    /// };
    /// use guild_vocab::{EffectivePolicy, Limits, Outcome};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::default();
    /// let key = HostKey::generate()?;
    ///
    /// // The host: store the run's parts, record what the guest observed, seal.
    /// let mut writer = BundleWriter::new(&store);
    /// let component = writer.add_blob(b"\0asm (a component's bytes)")?;
    /// let input = writer.add_blob(br#"{"text":"a b c"}"#)?;
    /// let output = writer.add_blob(br#"{"words":3}"#)?;
    /// let mut tape = Tape::new();
    /// tape.push(0, Effect::RandomSeed { seed: "ab".repeat(32) })?;
    /// let action = Action {
    ///     format: FORMAT.into(),
    ///     component,
    ///     tool: ToolRef { name: "wc".into(), version: "0.1.0".into(), revision: None },
    ///     input,
    ///     policy: EffectivePolicy::default(),
    ///     limits: Limits::default(),
    ///     engine: guild_vocab::EngineFingerprint { engine: "wasmtime 48.0.8".into(), ..Default::default() },
    ///     principal: None,
    ///     action_digest: None,
    /// };
    /// let result = RunResult {
    ///     outcome: Outcome::Output { output: String::new() }, // the output is its own blob
    ///     output: Some(output),
    ///     fuel_used_units: 5_000,
    ///     output_trees: vec![],
    ///     tape_head: tape.head(),
    ///     tape_events: tape.events().len() as u64,
    /// };
    /// let exec = serde_json::json!({"host": "example"});
    /// let sealed = writer.seal(&action, &tape, &result, &exec, &key)?;
    ///
    /// // The auditor: the bundle verifies, its id is the manifest's blake3, and its input is back.
    /// let bundle = Bundle::open(&store, &sealed.manifest, &sealed.signature, Some(&key.public()))?;
    /// assert_eq!(bundle.id, sealed.id);
    /// assert_eq!(bundle.input(&store)?, r#"{"text":"a b c"}"#);
    /// assert_eq!(bundle.result.fuel_used_units, 5_000);
    ///
    /// // Signed by another key than the one required: refused.
    /// let stranger = HostKey::generate()?.public();
    /// let refused = Bundle::open(&store, &sealed.manifest, &sealed.signature, Some(&stranger));
    /// assert!(matches!(refused, Err(VerifyError::Signature(_))));
    /// # Ok(())
    /// # }
    /// ```
    pub fn open(
        store: &dyn BlobStore,
        manifest_bytes: &[u8],
        signature_bytes: &[u8],
        required_key: Option<&PublicKey>,
    ) -> Result<Self, VerifyError> {
        if !is_canonical(manifest_bytes) {
            return Err(VerifyError::Manifest("not canonical JSON".into()));
        }
        let manifest: Manifest =
            serde_json::from_slice(manifest_bytes).map_err(|e| VerifyError::Manifest(e.to_string()))?;
        if manifest.format != FORMAT {
            return Err(VerifyError::Manifest(format!("format {:?}, expected {FORMAT:?}", manifest.format)));
        }
        let id = Digest::of(manifest_bytes);
        let signature = signature_document(signature_bytes)?;
        let signer = signature.verify(&id, required_key)?;
        let inclusion = signature.batch;

        let listed: BTreeSet<Digest> = manifest.blobs.iter().map(|b| b.digest).collect();
        if listed.len() != manifest.blobs.len() || !manifest.blobs.windows(2).all(|w| w[0].digest < w[1].digest) {
            return Err(VerifyError::Manifest("blobs are not sorted and unique".into()));
        }
        for blob in manifest.blobs.iter().chain([&manifest.action, &manifest.tape, &manifest.result, &manifest.exec]) {
            fetch(store, blob)?;
        }
        let action: Action = document(store, &manifest.action, "action.json")?;
        let result: RunResult = document(store, &manifest.result, "result.json")?;
        let exec: serde_json::Value = document(store, &manifest.exec, "exec.json")?;
        let tape = Tape::from_jsonl(&fetch(store, &manifest.tape)?)?;
        if action.format != FORMAT {
            return Err(VerifyError::Document { name: "action.json", reason: format!("format {:?}", action.format) });
        }
        if result.tape_head != tape.head() || result.tape_events != tape.events().len() as u64 {
            return Err(VerifyError::TapeHead {
                expected: result.tape_head,
                expected_events: result.tape_events,
                found: tape.head(),
                found_events: tape.events().len() as u64,
            });
        }
        let bundle = Self { id, manifest, signer, inclusion, action, tape, result, exec };
        bundle.check_references(store, &listed)?;
        Ok(bundle)
    }

    fn check_references(&self, store: &dyn BlobStore, listed: &BTreeSet<Digest>) -> Result<(), VerifyError> {
        let require = |what: &str, digest: &Digest| {
            if listed.contains(digest) {
                Ok(())
            } else {
                Err(VerifyError::Unlisted { what: what.to_string(), digest: *digest })
            }
        };
        require("the component", &self.action.component.digest)?;
        require("the input", &self.action.input.digest)?;
        if let Some(output) = &self.result.output {
            require("the output", &output.digest)?;
        }
        let mut trees: Vec<(String, Digest)> =
            self.result.output_trees.iter().map(|t| (format!("output tree {}", t.guest_path), t.tree)).collect();
        for event in self.tape.events() {
            match &event.effect {
                Effect::Mount { guest_path, tree, .. } => trees.push((format!("mount tree {guest_path}"), *tree)),
                Effect::Http { request, response, .. } => {
                    if let Some(body) = &request.body {
                        require(&format!("the body of request {}", event.seq), body)?;
                    }
                    if let Some(response) = response {
                        require(&format!("the body of response {}", event.seq), &response.body)?;
                    }
                }
                Effect::GpuDispatch { outputs, .. } => {
                    for (i, digest) in outputs.iter().filter_map(|o| o.digest.as_ref()).enumerate() {
                        require(&format!("output {i} of gpu dispatch {}", event.seq), digest)?;
                    }
                }
                _ => {}
            }
        }
        for (what, root) in trees {
            for (digest, _) in walk_blobs(store, &root, TreeLimits::default())? {
                require(&what, &digest)?;
            }
        }
        Ok(())
    }

    /// The input JSON.
    ///
    /// # Errors
    /// [`VerifyError::Blob`] when the input blob is missing or corrupt, [`VerifyError::Size`] when
    /// its size is not the action's, [`VerifyError::Document`] when it is not UTF-8.
    pub fn input(&self, store: &dyn BlobStore) -> Result<String, VerifyError> {
        let bytes = fetch(store, &self.action.input)?;
        String::from_utf8(bytes).map_err(|e| VerifyError::Document { name: "input", reason: e.to_string() })
    }
}

fn fetch(store: &dyn BlobStore, blob: &BlobRef) -> Result<Vec<u8>, VerifyError> {
    let bytes = store.get(&blob.digest)?;
    if bytes.len() as u64 != blob.size_bytes {
        return Err(VerifyError::Size { digest: blob.digest, expected: blob.size_bytes, found: bytes.len() as u64 });
    }
    Ok(bytes)
}

/// A signature document, bounded before it is parsed and held to its one encoding (canonical
/// JSON, lowercase hex, no explicit nulls), so one signature has one byte string wherever it is
/// stored, archived or compared.
fn signature_document(bytes: &[u8]) -> Result<BundleSignature, SignatureError> {
    if bytes.len() > crate::SIGNATURE_DOCUMENT_BYTES_MAX {
        return Err(SignatureError::Malformed(format!(
            "{} bytes, more than a signature document's {} (SIGNATURE_DOCUMENT_BYTES_MAX)",
            bytes.len(),
            crate::SIGNATURE_DOCUMENT_BYTES_MAX
        )));
    }
    let signature: BundleSignature =
        serde_json::from_slice(bytes).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    let lowercase_hex = |text: &str| text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !lowercase_hex(&signature.public_key)
        || !lowercase_hex(&signature.signature)
        || to_canonical_bytes(&signature).ok().as_deref() != Some(bytes)
    {
        return Err(SignatureError::Malformed(
            "not in its one encoding (canonical JSON, lowercase hex, no nulls)".into(),
        ));
    }
    Ok(signature)
}

fn document<T: DeserializeOwned>(store: &dyn BlobStore, blob: &BlobRef, name: &'static str) -> Result<T, VerifyError> {
    let bytes = fetch(store, blob)?;
    if !is_canonical(&bytes) {
        return Err(VerifyError::Document { name, reason: "not canonical JSON".into() });
    }
    serde_json::from_slice(&bytes).map_err(|e| VerifyError::Document { name, reason: e.to_string() })
}
