//! What checking an OAuth access token adds to a call, printed as Markdown (`cargo bench --bench
//! oauth`): `guild_server::oauth::OAuth::verify` — the check every request with a JWT goes
//! through before its body is read — against an issuer on loopback (its metadata and JWKS fetched
//! once, the key cached):
//!
//! 1. **A token seen before**: the same token again (an agent's calls within the token's
//!    lifetime), answered from the verified tokens kept until their `exp`.
//! 2. **A new token**: every call with a token never seen (a distinct `jti`), so the signature,
//!    `iss`, `aud`, `exp`, `nbf` and the claims are checked in full: ES256 (P-256, checked by
//!    ring), EdDSA (Ed25519) and RS256 (2048-bit), both in pure Rust (jsonwebtoken's
//!    `rust_crypto`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use guild_server::oauth::{OAuth, OAuthConfig};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const AUDIENCE: &str = "https://guild.bench/mcp";
/// Timed checks of a token seen before.
const SEEN: u32 = 200_000;
/// Timed checks of new tokens, per algorithm.
const NEW: u32 = 2_000;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
    rt.block_on(bench());
}

/// An RSA key made for the tests (2048 bits).
const RSA_TEST_KEY: &[u8] = include_bytes!("../host/server/src/oauth/testdata/test-only-rsa-2048.pem");

/// An ES256, EdDSA or RS256 key and its JWK.
fn key(alg: Algorithm) -> (EncodingKey, serde_json::Value) {
    let kid = format!("{alg:?}");
    if alg == Algorithm::RS256 {
        let key = EncodingKey::from_rsa_pem(RSA_TEST_KEY).expect("pem");
        let mut jwk =
            serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&key, alg).expect("jwk")).expect("jwk");
        jwk["kid"] = kid.into();
        (key, jwk)
    } else if alg == Algorithm::ES256 {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let raw = pair.public_key_raw();
        let jwk = json!({ "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65]) });
        (EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("pem"), jwk)
    } else {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let jwk = json!({ "kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
            "x": URL_SAFE_NO_PAD.encode(pair.public_key_raw()) });
        (EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).expect("pem"), jwk)
    }
}

/// An issuer on loopback serving its metadata and `keys`; its URL.
fn issuer(keys: Vec<serde_json::Value>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://127.0.0.1:{}", listener.local_addr().expect("addr").port());
    let issuer = url.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = [0u8; 4096];
            let read = stream.read(&mut request).unwrap_or(0);
            let text = String::from_utf8_lossy(&request[..read]).to_string();
            let body = if text.contains("jwks") {
                json!({ "keys": keys })
            } else {
                json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/jwks") })
            }
            .to_string();
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body.as_bytes());
        }
    });
    url
}

fn sign(alg: Algorithm, key: &EncodingKey, issuer: &str, jti: u32) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("time").as_secs();
    let claims = json!({ "iss": issuer, "aud": AUDIENCE, "sub": "agent-7", "guild_tenant": "bench",
        "scope": "guild:tools", "exp": now + 3600, "jti": jti });
    let mut header = Header::new(alg);
    header.kid = Some(format!("{alg:?}"));
    jsonwebtoken::encode(&header, &claims, key).expect("sign")
}

async fn bench() {
    // Before anything signs: the provider the daemon checks tokens with (ring for ECDSA).
    guild_server::oauth::install_crypto_provider();
    let (es, es_jwk) = key(Algorithm::ES256);
    let (ed, ed_jwk) = key(Algorithm::EdDSA);
    let (rs, rs_jwk) = key(Algorithm::RS256);
    let url = issuer(vec![es_jwk, ed_jwk, rs_jwk]);
    let config = OAuthConfig {
        issuer: url.clone(),
        audience: AUDIENCE.into(),
        verified_tokens_max: NEW as usize * 4,
        ..OAuthConfig::default()
    };
    let oauth = OAuth::new(config).expect("oauth");
    oauth.prefetch().await.expect("the issuer's keys");

    let seen = sign(Algorithm::ES256, &es, &url, 0);
    oauth.verify(&seen).await.expect("a good token");
    let started = Instant::now();
    for _ in 0..SEEN {
        std::hint::black_box(oauth.verify(std::hint::black_box(&seen)).await.expect("a good token"));
    }
    let seen_per = started.elapsed() / SEEN;

    let mut rows = vec![("a token seen before (ES256 or EdDSA)".to_string(), seen_per, SEEN)];
    for (alg, key) in [(Algorithm::ES256, &es), (Algorithm::EdDSA, &ed), (Algorithm::RS256, &rs)] {
        let tokens: Vec<String> = (1..=NEW).map(|jti| sign(alg, key, &url, jti)).collect();
        let started = Instant::now();
        for token in &tokens {
            std::hint::black_box(oauth.verify(token).await.expect("a good token"));
        }
        rows.push((format!("a new {alg:?} token (signature and claims checked)"), started.elapsed() / NEW, NEW));
    }
    println!("| check | per call | calls timed |");
    println!("|---|---|---|");
    for (what, per, n) in rows {
        println!("| {what} | {} | {n} |", micros(per));
    }
}

fn micros(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}
