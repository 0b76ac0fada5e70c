//! Whose code checks an access token's signature: jsonwebtoken's RustCrypto provider, except for
//! ECDSA (ES256, ES384), which ring checks — ring is already Guild's TLS crypto, and its P-256
//! verification is several times faster than the pure-Rust one (a new ES256 token: 281 µs with
//! RustCrypto, 59 µs with ring; benches/RESULTS.md, "OAuth"). The provider is installed once per
//! process, before the first token is checked.

use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier, rust_crypto};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::signature::{self, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};
use std::sync::OnceLock;

/// Install Guild's provider as jsonwebtoken's default (once; a provider installed before by
/// someone else is left in place). [`super::OAuth::new`] calls it; a process that also signs or
/// builds JWKs (which pins jsonwebtoken's default at first use) calls it first.
pub fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let provider = Box::leak(Box::new(CryptoProvider {
            signer_factory: rust_crypto::DEFAULT_PROVIDER.signer_factory,
            verifier_factory: new_verifier,
            key_utils: rust_crypto::DEFAULT_PROVIDER.key_utils.clone(),
        }));
        if provider.install_default().is_err() {
            tracing::debug!("a jsonwebtoken crypto provider was installed already; it checks access tokens");
        }
    });
}

/// The verifier of `alg` for `key`: ring's for ECDSA, RustCrypto's for the rest.
fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    let ring_alg: &'static ring::signature::EcdsaVerificationAlgorithm = match alg {
        Algorithm::ES256 => &ring::signature::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &ring::signature::ECDSA_P384_SHA384_FIXED,
        _ => return (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(alg, key),
    };
    match key.kind() {
        // A key from a JWK's x and y: the uncompressed point, 0x04 ‖ x ‖ y, as ring takes it.
        DecodingKeyKind::SecretOrDer(point) if key.family() == AlgorithmFamily::Ec => {
            Ok(Box::new(RingEcdsa { alg: *alg, ring_alg, point: point.clone() }))
        }
        _ => Err(ErrorKind::InvalidKeyFormat.into()),
    }
}

/// An ECDSA public key, checked by ring.
struct RingEcdsa {
    alg: Algorithm,
    ring_alg: &'static ring::signature::EcdsaVerificationAlgorithm,
    point: Vec<u8>,
}

impl Verifier<Vec<u8>> for RingEcdsa {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        ring::signature::UnparsedPublicKey::new(self.ring_alg, &self.point)
            .verify(message, signature)
            .map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingEcdsa {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}
