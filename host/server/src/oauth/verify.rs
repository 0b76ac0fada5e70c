//! Whose code checks an access token's signature: ring — already Guild's TLS crypto — for the
//! RSA and ECDSA keys a JWKS holds, several times faster than the pure-Rust code of
//! jsonwebtoken's RustCrypto provider (a new token, RS256: 80 → 27 µs, ES256: 281 → 64 µs;
//! benches/RESULTS.md, "OAuth"), which keeps Ed25519 (faster there), signing and key utilities.
//! The provider is installed once per process, before the first token is checked.

use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier, rust_crypto};
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

/// The verifier of `alg` for `key`: ring's for RSA and ECDSA (the keys a JWK gives: RSA as its
/// modulus and exponent, an EC key as its uncompressed point), RustCrypto's for the rest —
/// Ed25519 among them, which ed25519-dalek checks faster than ring here (42 against 54 µs a new
/// token).
fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    use ring::signature as ring_sig;
    let check: Check = match (alg, key.kind(), key.family()) {
        (Algorithm::RS256, DecodingKeyKind::RsaModulusExponent { n, e }, _) => {
            Check::Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA256, n.clone(), e.clone())
        }
        (Algorithm::RS384, DecodingKeyKind::RsaModulusExponent { n, e }, _) => {
            Check::Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA384, n.clone(), e.clone())
        }
        (Algorithm::RS512, DecodingKeyKind::RsaModulusExponent { n, e }, _) => {
            Check::Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA512, n.clone(), e.clone())
        }
        (Algorithm::PS256, DecodingKeyKind::RsaModulusExponent { n, e }, _) => {
            Check::Rsa(&ring_sig::RSA_PSS_2048_8192_SHA256, n.clone(), e.clone())
        }
        (Algorithm::PS384, DecodingKeyKind::RsaModulusExponent { n, e }, _) => {
            Check::Rsa(&ring_sig::RSA_PSS_2048_8192_SHA384, n.clone(), e.clone())
        }
        (Algorithm::PS512, DecodingKeyKind::RsaModulusExponent { n, e }, _) => {
            Check::Rsa(&ring_sig::RSA_PSS_2048_8192_SHA512, n.clone(), e.clone())
        }
        (Algorithm::ES256, DecodingKeyKind::SecretOrDer(point), AlgorithmFamily::Ec) => {
            Check::Raw(&ring_sig::ECDSA_P256_SHA256_FIXED, point.clone())
        }
        (Algorithm::ES384, DecodingKeyKind::SecretOrDer(point), AlgorithmFamily::Ec) => {
            Check::Raw(&ring_sig::ECDSA_P384_SHA384_FIXED, point.clone())
        }
        _ => return (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(alg, key),
    };
    Ok(Box::new(RingVerifier { alg: *alg, check }))
}

/// A public key and how ring checks a signature with it.
enum Check {
    /// An RSA key as its modulus and exponent (big-endian), with its padding and digest.
    Rsa(&'static ring::signature::RsaParameters, Vec<u8>, Vec<u8>),
    /// An ECDSA point, as the algorithm takes its bytes.
    Raw(&'static dyn ring::signature::VerificationAlgorithm, Vec<u8>),
}

/// A key of a token's issuer, checked by ring.
struct RingVerifier {
    alg: Algorithm,
    check: Check,
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, message: &[u8], signature: &Vec<u8>) -> Result<(), signature::Error> {
        let checked = match &self.check {
            Check::Rsa(params, n, e) => {
                ring::signature::RsaPublicKeyComponents { n, e }.verify(params, message, signature)
            }
            Check::Raw(algorithm, public) => {
                ring::signature::UnparsedPublicKey::new(*algorithm, public).verify(message, signature)
            }
        };
        checked.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use jsonwebtoken::EncodingKey;
    use jsonwebtoken::jwk::Jwk;

    /// `key` signs, ring (through [`new_verifier`]) checks: the right message passes, another
    /// fails, and the verifier names its algorithm.
    fn round_trip(alg: Algorithm, key: &EncodingKey, decoding: Option<DecodingKey>) {
        let decoding = decoding.unwrap_or_else(|| {
            DecodingKey::from_jwk(&Jwk::from_encoding_key(key, alg).expect("jwk")).expect("decoding key")
        });
        let message = b"header.claims";
        let signature = jsonwebtoken::crypto::sign(message, key, alg).expect("sign");
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature).expect("base64");
        let verifier = new_verifier(&alg, &decoding).expect("verifier");
        assert_eq!(verifier.algorithm(), alg);
        verifier.verify(message, &signature).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert!(verifier.verify(b"header.other", &signature).is_err(), "{alg:?} took another message");
    }

    #[test]
    fn every_family_a_jwks_holds_is_checked() {
        let rsa = EncodingKey::from_rsa_pem(include_bytes!("testdata/test-only-rsa-2048.pem")).expect("pem");
        for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS512] {
            round_trip(alg, &rsa, None);
        }
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        round_trip(Algorithm::ES256, &EncodingKey::from_ec_pem(p256.serialize_pem().as_bytes()).expect("pem"), None);
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
        round_trip(Algorithm::ES384, &EncodingKey::from_ec_pem(p384.serialize_pem().as_bytes()).expect("pem"), None);
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        // A JWK's `x`, as the issuer's JWKS gives an Ed25519 key.
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ed.public_key_raw());
        let decoding = DecodingKey::from_ed_components(&x).expect("decoding key");
        round_trip(
            Algorithm::EdDSA,
            &EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).expect("pem"),
            Some(decoding),
        );
    }
}
