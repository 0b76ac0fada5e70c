//! Ed25519 signatures over bundle ids. A host signs the bundles it writes with its key (created
//! on first use, kept beside the store); an auditor checks the signature, optionally against a
//! public key they trust.
//!
//! Two forms, both verified:
//! - **batched** ([`SIGNATURE_FORMAT`], what hosts write): one signature over the Merkle root of
//!   the ids of the bundles sealed together ([`crate::merkle`]) and the number of them, each
//!   bundle carrying its leaf index and inclusion path, so it still verifies alone. A bundle
//!   sealed alone is a batch of one: its path is empty.
//! - **single** (no `format` field, what hosts wrote before batching): a signature over the id.

use crate::merkle;
use crate::{Digest, hex};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// Domain separation: a bundle signature can never be replayed as another kind of signature.
const CONTEXT: &[u8] = b"guild-bundle-v1\0";

/// Domain separation for a batch's signature: never read as a single bundle's, nor as anything
/// else's.
const BATCH_CONTEXT: &[u8] = b"guild-bundle-batch-v2\0";

/// The `format` of a batched signature document; a document without `format` is the single form.
pub const SIGNATURE_FORMAT: &str = "guild-signature/2";

/// The most bytes a signature document may have: the batched form with the longest inclusion
/// path ([`crate::merkle::INCLUSION_PATH_LEN_MAX`] digests of 66 characters each) is under 5 KiB.
/// A larger one is refused before it is parsed.
pub const SIGNATURE_DOCUMENT_BYTES_MAX: usize = 8 * 1024;

/// The only algorithm bundles use.
pub const ALGORITHM: &str = "ed25519";

/// A host key could not be read, written, generated or parsed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file's path, as given.
        path: String,
        /// The operating system's error (not found, permission denied, ...).
        source: std::io::Error,
    },
    /// The key file does not hold a key.
    #[error("key file {path} does not hold a 64-character hex ed25519 secret key")]
    Malformed {
        /// The key file's path, as given.
        path: String,
    },
    /// The OS gave no randomness.
    #[error("cannot generate a key: no randomness from the operating system ({0})")]
    Random(String),
    /// Not a public key.
    #[error("{0:?} is not an ed25519 public key (64 hex characters)")]
    BadPublicKey(String),
}

/// A bundle's signature is missing, malformed or wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Not a signature document.
    #[error("signature is malformed: {0}")]
    Malformed(String),
    /// The signature does not match the bundle id and key.
    #[error("signature does not verify for bundle {id} under key {key}")]
    Invalid {
        /// The id of the bundle whose signature failed.
        id: Digest,
        /// The key it claims.
        key: String,
    },
    /// The batch signature does not verify over the root the bundle's inclusion path leads to.
    #[error(
        "batch signature does not verify for bundle {id} as leaf {leaf_index} of {tree_size} under key {key}: the bundle is not the one signed at that place, or its signature, path, index or tree size was altered"
    )]
    NotInBatch {
        /// The id of the bundle whose signature failed.
        id: Digest,
        /// The leaf index the signature document claims.
        leaf_index: u64,
        /// The number of bundles the document says were signed together.
        tree_size: u64,
        /// The key it claims.
        key: String,
    },
    /// The inclusion path cannot belong to the place it claims in a batch of that size.
    #[error(
        "inclusion path of {path_len} nodes cannot place a bundle at leaf {leaf_index} of {tree_size}: the signature document was altered or is not this bundle's"
    )]
    BadPath {
        /// The leaf index the signature document claims.
        leaf_index: u64,
        /// The number of bundles the document says were signed together.
        tree_size: u64,
        /// The number of hashes in its path.
        path_len: usize,
    },
    /// Signed by a key other than the one required.
    #[error("bundle is signed by {found}, not by the required key {expected}")]
    WrongKey {
        /// The public key the caller required (`guild bundle verify --key`), hex.
        expected: String,
        /// The public key that did sign, hex.
        found: String,
    },
}

/// An ed25519 public key, written as hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = hex::decode::<32>(s.trim()).ok_or_else(|| KeyError::BadPublicKey(s.to_string()))?;
        VerifyingKey::from_bytes(&bytes).map(Self).map_err(|_| KeyError::BadPublicKey(s.to_string()))
    }
}

/// A host's signing key.
pub struct HostKey(SigningKey);

impl HostKey {
    /// A secret for `purpose`, derived from this key's private half with blake3's key derivation:
    /// the same for one key and purpose, and nothing anyone without the private key can compute
    /// (a hermetic run's seed mixes it in, so another tenant cannot predict its randomness).
    pub fn derive_secret(&self, purpose: &str) -> [u8; 32] {
        blake3::derive_key(purpose, self.0.as_bytes())
    }

    /// A fresh random key.
    ///
    /// # Errors
    /// [`KeyError::Random`] when the operating system gives no randomness.
    pub fn generate() -> Result<Self, KeyError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self(SigningKey::from_bytes(&secret)))
    }

    /// Load the key at `path`, creating it (readable by its owner only) when absent.
    ///
    /// # Errors
    /// [`KeyError::Io`] when the file cannot be read, or (absent) its directory or the file cannot
    /// be created; [`KeyError::Malformed`] when it does not hold 64 hex characters;
    /// [`KeyError::Random`] as [`HostKey::generate`]. Processes that create the key at the same
    /// moment (workers sharing a home) all end up with the one that landed first.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io { path: path.display().to_string(), source };
        let read = |text: String| {
            let secret = hex::decode::<32>(text.trim())
                .ok_or_else(|| KeyError::Malformed { path: path.display().to_string() })?;
            Ok(Self(SigningKey::from_bytes(&secret)))
        };
        match std::fs::read_to_string(path) {
            Ok(text) => read(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io)?;
                }
                match publish_private(path, &hex::encode(&key.0.to_bytes())) {
                    Ok(()) => Ok(key),
                    // Another process published its key first, whole: use that one.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        read(std::fs::read_to_string(path).map_err(io)?)
                    }
                    Err(e) => Err(io(e)),
                }
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Sign one bundle id alone: a batch of one, whose inclusion path is empty.
    pub fn sign(&self, id: &Digest) -> BundleSignature {
        self.sign_batch(std::slice::from_ref(id)).pop().expect("one signature per id")
    }

    /// Sign the ids of bundles sealed together with one ed25519 signature over their Merkle root:
    /// one [`SIGNATURE_FORMAT`] document per id, in order, each verifying alone. Costs one
    /// signature (~20–40 µs) plus about two short hashes per id. Empty for no ids.
    pub fn sign_batch(&self, ids: &[Digest]) -> Vec<BundleSignature> {
        let Some((root, paths)) = merkle::root_and_paths(ids) else { return Vec::new() };
        let tree_size = ids.len() as u64;
        let signature = hex::encode(&self.0.sign(&batch_message(&root, tree_size)).to_bytes());
        let public_key = self.public().to_string();
        paths
            .into_iter()
            .zip(0..)
            .map(|(path, leaf_index)| BundleSignature {
                format: Some(SIGNATURE_FORMAT.to_string()),
                algorithm: ALGORITHM.to_string(),
                public_key: public_key.clone(),
                signature: signature.clone(),
                batch: Some(Inclusion { tree_size, leaf_index, path }),
            })
            .collect()
    }

    /// Sign a bundle id in the single form hosts wrote before batching (`guild-bundle-v1`), which
    /// verifiers still accept: for tests and tools that must make such a bundle.
    pub fn sign_single(&self, id: &Digest) -> BundleSignature {
        BundleSignature {
            format: None,
            algorithm: ALGORITHM.to_string(),
            public_key: self.public().to_string(),
            signature: hex::encode(&self.0.sign(&message(id)).to_bytes()),
            batch: None,
        }
    }
}

/// What the single form signs: `guild-bundle-v1\0 ‖ id`.
fn message(id: &Digest) -> Vec<u8> {
    let mut message = CONTEXT.to_vec();
    message.extend_from_slice(id.as_bytes());
    message
}

/// What a batch signs: `guild-bundle-batch-v2\0 ‖ tree_size (8 bytes, big-endian) ‖ root`.
fn batch_message(root: &Digest, tree_size: u64) -> Vec<u8> {
    let mut message = BATCH_CONTEXT.to_vec();
    message.extend_from_slice(&tree_size.to_be_bytes());
    message.extend_from_slice(root.as_bytes());
    message
}

/// Write `text` to `path`, which must not exist, so that no reader ever sees it half written:
/// into a file of its own beside it first, then linked into place (which fails, `AlreadyExists`,
/// when another process got there first).
fn publish_private(path: &Path, text: &str) -> std::io::Result<()> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let temp = path.with_extension(format!("tmp.{}.{:?}.{nanos}", std::process::id(), std::thread::current().id()));
    let linked = write_private(&temp, text).and_then(|()| std::fs::hard_link(&temp, path));
    let _ = std::fs::remove_file(&temp);
    linked
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// The `signature` entry of a bundle, as canonical JSON. Batched (what hosts write):
/// `{"algorithm":"ed25519","batch":{"leaf_index":i,"path":[hex…],"tree_size":n},
/// "format":"guild-signature/2","public_key":hex,"signature":hex}`; single (older bundles): the
/// same without `batch` and `format`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSignature {
    /// [`SIGNATURE_FORMAT`] for the batched form; absent for the single form. Any other is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// The signature algorithm: always [`ALGORITHM`] (`ed25519`); anything else is refused.
    pub algorithm: String,
    /// The signer's public key, hex.
    pub public_key: String,
    /// The signature, hex: over `guild-bundle-batch-v2\0 ‖ tree_size (u64, big-endian) ‖ root`
    /// in the batched form, over `guild-bundle-v1\0 ‖ id` in the single form.
    pub signature: String,
    /// Where the bundle sits in the batch signed together: present exactly in the batched form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Inclusion>,
}

/// A bundle's place in the batch of bundles signed together, and the proof that it is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inclusion {
    /// How many bundles were signed together (the Merkle tree's leaves), at least 1. Signed.
    pub tree_size: u64,
    /// This bundle's leaf, from 0, below `tree_size`.
    pub leaf_index: u64,
    /// Sibling hashes from the bundle's leaf up to the root: empty in a batch of one, at most
    /// [`merkle::INCLUSION_PATH_LEN_MAX`].
    pub path: Vec<Digest>,
}

impl BundleSignature {
    /// Check this signature over `id`, alone: in the batched form, that the inclusion path leads
    /// from `id` at its leaf index to a root the signature covers with that tree size; in the
    /// single form, that the signature covers `id`. With `required`, also that it is that key's.
    ///
    /// # Errors
    /// [`SignatureError::Malformed`] when the algorithm is not ed25519, the format unknown (or
    /// `batch` present without it, or absent with it), or the key or signature is not hex of the
    /// right length; [`SignatureError::WrongKey`] when `required` is given and did not sign;
    /// [`SignatureError::BadPath`] when the path cannot belong to its leaf index in a tree of its
    /// size; [`SignatureError::NotInBatch`] (batched) or [`SignatureError::Invalid`] (single)
    /// when the signature does not verify.
    pub fn verify(&self, id: &Digest, required: Option<&PublicKey>) -> Result<PublicKey, SignatureError> {
        let batch = match (self.format.as_deref(), &self.batch) {
            (None, None) => None,
            (Some(SIGNATURE_FORMAT), Some(batch)) => Some(batch),
            (Some(SIGNATURE_FORMAT), None) => {
                return Err(SignatureError::Malformed(format!("a {SIGNATURE_FORMAT} signature without its batch")));
            }
            (None, Some(_)) => return Err(SignatureError::Malformed("a batch without a format".into())),
            (Some(other), _) => {
                return Err(SignatureError::Malformed(format!(
                    "unknown signature format {other:?} (this verifier knows {SIGNATURE_FORMAT:?} and the single form); upgrade guild"
                )));
            }
        };
        if self.algorithm != ALGORITHM {
            return Err(SignatureError::Malformed(format!("unknown algorithm {:?}", self.algorithm)));
        }
        let key: PublicKey = self.public_key.parse().map_err(|e: KeyError| SignatureError::Malformed(e.to_string()))?;
        if let Some(required) = required
            && *required != key
        {
            return Err(SignatureError::WrongKey { expected: required.to_string(), found: key.to_string() });
        }
        let bytes = hex::decode::<64>(&self.signature)
            .ok_or_else(|| SignatureError::Malformed("signature is not 128 hex characters".into()))?;
        let signature = Signature::from_bytes(&bytes);
        let Some(batch) = batch else {
            key.0
                .verify_strict(&message(id), &signature)
                .map_err(|_| SignatureError::Invalid { id: *id, key: key.to_string() })?;
            return Ok(key);
        };
        let Inclusion { tree_size, leaf_index, ref path } = *batch;
        let root = merkle::root_from_path(id, leaf_index, tree_size, path).ok_or(SignatureError::BadPath {
            leaf_index,
            tree_size,
            path_len: path.len(),
        })?;
        key.0.verify_strict(&batch_message(&root, tree_size), &signature).map_err(|_| SignatureError::NotInBatch {
            id: *id,
            leaf_index,
            tree_size,
            key: key.to_string(),
        })?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_creating_the_key_at_once_all_get_the_one_that_landed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys").join("host.key");
        let keys: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| HostKey::load_or_create(&path).expect("a key").public().to_string()))
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
        assert_eq!(HostKey::load_or_create(&path).expect("again").public().to_string(), keys[0]);
        let left: Vec<_> = std::fs::read_dir(path.parent().expect("dir")).expect("dir").flatten().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn sign_verify_and_reject() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys/host.key");
        let key = HostKey::load_or_create(&path).expect("create");
        let again = HostKey::load_or_create(&path).expect("load");
        assert_eq!(key.public(), again.public());
        let id = Digest::of(b"bundle");
        let signature = key.sign(&id);
        assert_eq!(signature.verify(&id, Some(&key.public())), Ok(key.public()));
        assert!(matches!(signature.verify(&Digest::of(b"other"), None), Err(SignatureError::NotInBatch { .. })));
        let stranger = HostKey::generate().expect("key").public();
        assert!(matches!(signature.verify(&id, Some(&stranger)), Err(SignatureError::WrongKey { .. })));
        let mut flipped = signature.clone();
        flipped.signature.replace_range(0..2, if &flipped.signature[0..2] == "00" { "01" } else { "00" });
        assert!(signature.verify(&id, None).is_ok());
        assert!(flipped.verify(&id, None).is_err());
        let parsed: PublicKey = key.public().to_string().parse().expect("parses");
        assert_eq!(parsed, key.public());
    }

    /// A single-form document exactly as hosts wrote it before batching (key: 32 bytes of 0x07,
    /// id: blake3 of `bundle`), made by that code.
    const SINGLE_FORM: &str = r#"{"algorithm":"ed25519","public_key":"ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c","signature":"a7fa6c2648ffbc967b9b660a0b32307f1672555037db1de00a5208c36c1db3cc08cafef5ba03e1385c97f6cd4ee49749ec9e36f48324ceebd543c4e15fd4cb03"}"#;

    fn fixed_key() -> HostKey {
        HostKey(SigningKey::from_bytes(&[7; 32]))
    }

    #[test]
    fn a_signature_written_before_batching_still_verifies_and_is_still_made_the_same() {
        let key = fixed_key();
        let id = Digest::of(b"bundle");
        let old: BundleSignature = serde_json::from_str(SINGLE_FORM).expect("parses");
        assert_eq!(old.verify(&id, Some(&key.public())), Ok(key.public()));
        assert!(matches!(old.verify(&Digest::of(b"other"), None), Err(SignatureError::Invalid { .. })));
        let again = crate::canonical::to_canonical_bytes(&key.sign_single(&id)).expect("json");
        assert_eq!(String::from_utf8(again).expect("utf-8"), SINGLE_FORM);
    }

    #[test]
    fn a_batch_signature_verifies_each_bundle_alone_and_not_across_the_form() {
        let key = fixed_key();
        let ids: Vec<Digest> = (0..5).map(|i| Digest::of(&[i])).collect();
        let signatures = key.sign_batch(&ids);
        assert_eq!(signatures.len(), 5);
        for (id, signature) in ids.iter().zip(&signatures) {
            assert_eq!(signature.verify(id, Some(&key.public())), Ok(key.public()));
        }
        assert!(signatures.windows(2).all(|w| w[0].signature == w[1].signature), "one signature for the batch");
        let json =
            String::from_utf8(crate::canonical::to_canonical_bytes(&signatures[3]).expect("json")).expect("utf-8");
        assert!(json.starts_with(r#"{"algorithm":"ed25519","batch":{"leaf_index":3,"path":[""#), "{json}");
        assert!(json.contains(r#""tree_size":5},"format":"guild-signature/2","#), "{json}");

        // A batch of one: the root is the id's leaf hash, the path empty.
        let alone = key.sign(&ids[0]);
        assert_eq!(alone.batch, Some(Inclusion { tree_size: 1, leaf_index: 0, path: vec![] }));
        assert!(alone.verify(&ids[0], None).is_ok());
        // Neither form's signature passes for the other.
        let single = key.sign_single(&ids[0]);
        let posing = BundleSignature { format: None, batch: None, ..alone.clone() };
        assert!(matches!(posing.verify(&ids[0], None), Err(SignatureError::Invalid { .. })));
        let posing = BundleSignature { signature: single.signature, ..alone };
        assert!(matches!(posing.verify(&ids[0], None), Err(SignatureError::NotInBatch { .. })));
    }

    #[test]
    fn every_tampering_with_a_batch_signature_is_refused_with_its_reason() {
        let key = fixed_key();
        let ids: Vec<Digest> = (0..6).map(|i| Digest::of(&[i])).collect();
        let signatures = key.sign_batch(&ids);
        let (id, good) = (&ids[2], &signatures[2]);
        let edit = |change: &dyn Fn(&mut BundleSignature)| {
            let mut signature = good.clone();
            change(&mut signature);
            signature.verify(id, None)
        };
        fn batch(s: &mut BundleSignature) -> &mut Inclusion {
            s.batch.as_mut().expect("batch")
        }
        let not_in_batch = |r: Result<PublicKey, SignatureError>| matches!(r, Err(SignatureError::NotInBatch { .. }));
        let bad_path = |r: Result<PublicKey, SignatureError>| matches!(r, Err(SignatureError::BadPath { .. }));

        assert!(not_in_batch(edit(&|s| batch(s).path[0] = Digest::of(b"flipped"))), "a path node");
        assert!(not_in_batch(edit(&|s| batch(s).leaf_index = 3)), "another index");
        assert!(bad_path(edit(&|s| batch(s).leaf_index = 6)), "an index past the end");
        assert!(not_in_batch(edit(&|s| batch(s).tree_size = 7)), "a larger tree of the same depth");
        assert!(bad_path(edit(&|s| batch(s).tree_size = 2)), "a smaller tree");
        assert!(bad_path(edit(&|s| batch(s).tree_size = 0)), "no tree");
        assert!(bad_path(edit(&|s| batch(s).path.push(Digest::of(b"more")))), "a longer path");
        assert!(
            bad_path(edit(&|s| {
                batch(s).path.pop();
            })),
            "a shorter path"
        );
        assert!(matches!(edit(&|s| s.format = Some("guild-signature/3".into())), Err(SignatureError::Malformed(_))));
        assert!(matches!(edit(&|s| s.format = None), Err(SignatureError::Malformed(_))));
        assert!(matches!(edit(&|s| s.batch = None), Err(SignatureError::Malformed(_))));
        let overlong = edit(&|s| batch(s).path = vec![Digest::of(b"x"); merkle::INCLUSION_PATH_LEN_MAX + 1]);
        assert!(bad_path(overlong));

        // Two bundles of one batch swapping their signature documents; a path from another batch.
        assert!(not_in_batch(signatures[3].verify(id, None)));
        assert!(not_in_batch(signatures[2].verify(&ids[3], None)));
        let other = key.sign_batch(&[ids[0], ids[1], *id, ids[4], ids[5], Digest::of(b"new")]);
        let mut mixed = good.clone();
        mixed.batch = other[2].batch.clone();
        assert_ne!(mixed.batch, good.batch);
        assert!(not_in_batch(mixed.verify(id, None)), "another batch's path under this batch's signature");
        assert!(other[2].verify(id, None).is_ok());
        let message = edit(&|s| batch(s).leaf_index = 3).expect_err("refused").to_string();
        assert!(message.contains("as leaf 3 of 6"), "{message}");
    }
}
