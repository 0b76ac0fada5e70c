//! Ed25519 signatures over bundle ids. A host signs every bundle it writes with its key (created
//! on first use, kept beside the store); an auditor checks the signature, optionally against a
//! public key they trust.

use crate::{Digest, hex};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// Domain separation: a bundle signature can never be replayed as another kind of signature.
const CONTEXT: &[u8] = b"guild-bundle-v1\0";

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

    /// Sign a bundle id.
    pub fn sign(&self, id: &Digest) -> BundleSignature {
        let signature = self.0.sign(&message(id));
        BundleSignature {
            algorithm: ALGORITHM.to_string(),
            public_key: self.public().to_string(),
            signature: hex::encode(&signature.to_bytes()),
        }
    }
}

fn message(id: &Digest) -> Vec<u8> {
    let mut message = CONTEXT.to_vec();
    message.extend_from_slice(id.as_bytes());
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

/// The `signature` entry of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSignature {
    /// The signature algorithm: always [`ALGORITHM`] (`ed25519`); anything else is refused.
    pub algorithm: String,
    /// The signer's public key, hex.
    pub public_key: String,
    /// The signature over `guild-bundle-v1\0 ‖ id`, hex.
    pub signature: String,
}

impl BundleSignature {
    /// Check this signature over `id`; with `required`, also that it is that key's.
    ///
    /// # Errors
    /// [`SignatureError::Malformed`] when the algorithm is not ed25519 or the key or signature is
    /// not hex of the right length; [`SignatureError::WrongKey`] when `required` is given and did
    /// not sign; [`SignatureError::Invalid`] when the signature does not verify over `id`.
    pub fn verify(&self, id: &Digest, required: Option<&PublicKey>) -> Result<PublicKey, SignatureError> {
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
        key.0
            .verify_strict(&message(id), &signature)
            .map_err(|_| SignatureError::Invalid { id: *id, key: key.to_string() })?;
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
        assert!(matches!(signature.verify(&Digest::of(b"other"), None), Err(SignatureError::Invalid { .. })));
        let stranger = HostKey::generate().expect("key").public();
        assert!(matches!(signature.verify(&id, Some(&stranger)), Err(SignatureError::WrongKey { .. })));
        let mut flipped = signature.clone();
        flipped.signature.replace_range(0..2, if &flipped.signature[0..2] == "00" { "01" } else { "00" });
        assert!(signature.verify(&id, None).is_ok());
        assert!(flipped.verify(&id, None).is_err());
        let parsed: PublicKey = key.public().to_string().parse().expect("parses");
        assert_eq!(parsed, key.public());
    }
}
