use super::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::io::{Read, Write};
use std::sync::Mutex as StdMutex;

/// A loopback HTTP server answering GETs from a table of paths (200 with the body, else 404).
struct Documents {
    url: String,
    table: Arc<StdMutex<HashMap<String, String>>>,
    /// Requests answered so far.
    served: Arc<std::sync::atomic::AtomicUsize>,
    /// How long each answer waits, ms.
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Documents {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://127.0.0.1:{}", listener.local_addr().expect("addr").port());
        let table: Arc<StdMutex<HashMap<String, String>>> = Arc::default();
        let (served, delay_ms) =
            (Arc::<std::sync::atomic::AtomicUsize>::default(), Arc::<std::sync::atomic::AtomicU64>::default());
        let (documents, count, delay) = (table.clone(), served.clone(), delay_ms.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(delay.load(std::sync::atomic::Ordering::SeqCst)));
                let mut request = [0u8; 4096];
                let read = stream.read(&mut request).unwrap_or(0);
                let line = String::from_utf8_lossy(&request[..read]).lines().next().unwrap_or_default().to_string();
                let path = line.split(' ').nth(1).unwrap_or_default().to_string();
                let body = documents.lock().expect("table").get(&path).cloned();
                let (status, body) = match body {
                    Some(body) => ("200 OK", body),
                    None => ("404 Not Found", String::new()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body.as_bytes());
            }
        });
        Self { url, table, served, delay_ms }
    }

    fn served(&self) -> usize {
        self.served.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn set(&self, path: &str, body: impl Into<String>) {
        self.table.lock().expect("table").insert(path.to_string(), body.into());
    }
}

/// An ES256 key: what signs tokens, and its JWK.
fn es256_key(kid: &str) -> (jsonwebtoken::EncodingKey, serde_json::Value) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let raw = pair.public_key_raw();
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
    });
    (jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("pem"), jwk)
}

fn config(issuer: &str) -> OAuthConfig {
    OAuthConfig { issuer: issuer.into(), audience: "https://guild.test/mcp".into(), ..OAuthConfig::default() }
}

/// An issuer serving its metadata and `keys`.
fn issuer(keys: &[serde_json::Value]) -> Documents {
    let documents = Documents::start();
    documents.set(
        "/.well-known/oauth-authorization-server",
        serde_json::json!({ "issuer": documents.url, "jwks_uri": format!("{}/jwks", documents.url) }).to_string(),
    );
    documents.set("/jwks", serde_json::json!({ "keys": keys }).to_string());
    documents
}

fn sign(key: &jsonwebtoken::EncodingKey, kid: &str, claims: serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, key).expect("sign")
}

fn claims(issuer: &str) -> serde_json::Value {
    serde_json::json!({
        "iss": issuer, "aud": "https://guild.test/mcp", "sub": "agent-7", "guild_tenant": "alice",
        "exp": now_unix_s() + 600, "scope": "guild:tools:echo openid",
    })
}

#[test]
fn the_section_names_the_field_that_is_wrong() {
    assert!(config("https://login.example").validate().is_ok());
    assert!(config("http://127.0.0.1:9000").validate().is_ok(), "loopback http is allowed");
    let cases = [
        (config("http://login.example"), "oauth.issuer"),
        (config("not a url"), "oauth.issuer"),
        (OAuthConfig { audience: "guild".into(), ..config("https://login.example") }, "oauth.audience"),
        (OAuthConfig { algorithms: vec!["HS256".into()], ..config("https://login.example") }, "oauth.algorithms"),
        (OAuthConfig { algorithms: vec!["XS999".into()], ..config("https://login.example") }, "oauth.algorithms"),
        (OAuthConfig { leeway_s: LEEWAY_S_MAX + 1, ..config("https://login.example") }, "oauth.leeway_s"),
        (OAuthConfig { keys_max: 0, ..config("https://login.example") }, "oauth.keys_max"),
    ];
    for (config, field) in cases {
        assert_eq!(config.validate().expect_err(field).field, field);
    }
}

#[test]
fn the_metadata_lives_at_the_well_known_uri_of_the_audience() {
    assert_eq!(metadata_url("https://guild.test/mcp"), "https://guild.test/.well-known/oauth-protected-resource/mcp");
    assert_eq!(metadata_url("https://guild.test"), "https://guild.test/.well-known/oauth-protected-resource");
    assert_eq!(
        metadata_url("https://guild.test:8443/"),
        "https://guild.test:8443/.well-known/oauth-protected-resource"
    );
}

#[test]
fn scopes_come_from_scope_or_scp_and_name_tools() {
    let oauth = OAuth::new(config("https://login.example")).expect("oauth");
    let from = |claims: serde_json::Value| oauth.scopes(claims.as_object().expect("object"));
    let one = from(serde_json::json!({ "scope": "openid guild:tools:echo" }));
    assert!(one.call("echo") && !one.call("wc") && !one.admin() && one.any());
    let all = from(serde_json::json!({ "scp": ["guild:tools", "guild:admin"] }));
    assert!(all.call("wc") && !all.admin(), "access tokens get no admin unless oauth.admin says so");
    let admitting = OAuth::new(OAuthConfig { admin: true, ..config("https://login.example") }).expect("oauth");
    assert!(admitting.scopes(serde_json::json!({ "scope": "guild:admin" }).as_object().expect("object")).admin());
    let none = from(serde_json::json!({ "scope": "openid profile guild:toolsx" }));
    assert!(!none.any(), "a near miss grants nothing");
}

#[tokio::test]
async fn a_token_is_checked_against_the_issuers_key_then_remembered_until_the_keys_change() {
    let (key, jwk) = es256_key("k1");
    let issuer = issuer(&[jwk]);
    let oauth = OAuth::new(OAuthConfig { jwks_refetch_min_ms: 0, ..config(&issuer.url) }).expect("oauth");
    let token = sign(&key, "k1", claims(&issuer.url));
    let verified = oauth.verify(&token).await.expect("a good token");
    assert_eq!((verified.tenant.as_str(), verified.subject.as_str()), ("alice", "agent-7"));
    assert!(verified.scopes.call("echo") && !verified.scopes.call("wc"));
    assert_eq!(oauth.remembered_len(), 1);

    let mut wrong = claims(&issuer.url);
    wrong["aud"] = "https://other.test".into();
    let refused = oauth.verify(&sign(&key, "k1", wrong)).await.expect_err("another audience");
    assert_eq!(refused, TokenError::Invalid("the token's audience is not this server".into()));

    // The issuer drops k1: once the keys are fetched again, the remembered token is not trusted.
    let (other, jwk2) = es256_key("k2");
    issuer.set("/jwks", serde_json::json!({ "keys": [jwk2] }).to_string());
    oauth.verify(&sign(&other, "k2", claims(&issuer.url))).await.expect("the new key is fetched for its kid");
    let refused = oauth.verify(&token).await.expect_err("k1 is gone");
    assert!(matches!(&refused, TokenError::Invalid(m) if m.contains("\"k1\"")), "{refused:?}");
}

#[tokio::test]
async fn hashed_subjects_are_recorded_as_blake3() {
    let (key, jwk) = es256_key("k1");
    let issuer = issuer(&[jwk]);
    let oauth =
        OAuth::new(OAuthConfig { subject_record: SubjectRecord::Blake3, ..config(&issuer.url) }).expect("oauth");
    let verified = oauth.verify(&sign(&key, "k1", claims(&issuer.url))).await.expect("token");
    assert_eq!(verified.subject, format!("blake3:{}", blake3::hash(b"agent-7").to_hex()));

    // With a key, hashing a list of candidates does not find it.
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("key"), "a key only the operator holds\n").expect("write");
    let keyed = OAuthConfig {
        subject_record: SubjectRecord::Blake3,
        subject_hash_key: Some(format!("file:{}", dir.path().join("key").display())),
        ..config(&issuer.url)
    };
    let oauth = OAuth::new(keyed).expect("oauth");
    let verified = oauth.verify(&sign(&key, "k1", claims(&issuer.url))).await.expect("token");
    let derived = blake3::derive_key("guild oauth subject pseudonym v1", b"a key only the operator holds");
    assert_eq!(verified.subject, format!("blake3:{}", blake3::keyed_hash(&derived, b"agent-7").to_hex()));
    let missing =
        OAuthConfig { subject_hash_key: Some("env:GUILD_TEST_NO_SUCH_VARIABLE".into()), ..config(&issuer.url) };
    assert_eq!(OAuth::new(missing).err().expect("unset").field, "oauth.subject_hash_key");
}

#[tokio::test]
async fn the_issuers_documents_and_tokens_are_bounded() {
    let keys: Vec<serde_json::Value> = (0..3).map(|i| es256_key(&format!("k{i}")).1).collect();
    let issuer = issuer(&keys);
    let oauth = OAuth::new(OAuthConfig { keys_max: 2, ..config(&issuer.url) }).expect("oauth");
    let error = oauth.prefetch().await.expect_err("too many keys");
    assert!(error.contains("oauth.keys_max"), "{error}");

    let oauth = OAuth::new(OAuthConfig { document_bytes_max: 64, ..config(&issuer.url) }).expect("oauth");
    let error = oauth.prefetch().await.expect_err("too large");
    assert!(error.contains("oauth.document_bytes_max"), "{error}");

    let oauth = OAuth::new(OAuthConfig { token_bytes_max: 32, ..config(&issuer.url) }).expect("oauth");
    let refused = oauth.verify(&"a".repeat(33)).await.expect_err("too long");
    assert!(matches!(&refused, TokenError::Invalid(m) if m.contains("oauth.token_bytes_max")), "{refused:?}");
}

#[tokio::test]
async fn an_issuer_naming_another_issuer_or_unreachable_gives_no_keys() {
    let (_, jwk) = es256_key("k1");
    let liar = issuer(&[jwk]);
    liar.set(
        "/.well-known/oauth-authorization-server",
        serde_json::json!({ "issuer": "https://evil.test" }).to_string(),
    );
    let oauth = OAuth::new(config(&liar.url)).expect("oauth");
    let error = oauth.prefetch().await.expect_err("metadata of another issuer");
    assert!(error.contains("RFC 8414"), "{error}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://127.0.0.1:{}", closed.local_addr().expect("addr").port());
    drop(closed);
    let oauth = OAuth::new(config(&url)).expect("oauth");
    let refused = oauth.verify(&sign(&es256_key("k1").0, "k1", claims(&url))).await.expect_err("no issuer");
    assert!(matches!(refused, TokenError::Unavailable(_)), "{refused:?}");
}

#[tokio::test]
async fn remembered_tokens_stay_within_their_bound() {
    let issuer = issuer(&[es256_key("k1").1]);
    let oauth = OAuth::new(OAuthConfig { verified_tokens_max: 2, ..config(&issuer.url) }).expect("oauth");
    oauth.prefetch().await.expect("keys");
    let now = now_unix_s();
    let verified = |expires_unix_s| Verified {
        tenant: "alice".into(),
        subject: "s".into(),
        scopes: Arc::new(Scopes { tools_all: true, tools: BTreeSet::new(), admin: false }),
        expires_unix_s,
    };
    oauth.remember([1; 32], verified(now - 3600), 0, now);
    oauth.remember([2; 32], verified(now + 600), 0, now);
    oauth.remember([3; 32], verified(now + 600), 0, now);
    assert_eq!(oauth.remembered_len(), 2, "the expired one made room");
    assert!(oauth.remembered(&[1; 32], now).is_none());
    oauth.remember([4; 32], verified(now + 600), 0, now);
    assert_eq!(oauth.remembered_len(), 2, "at the bound one goes");
    assert!(oauth.remembered(&[4; 32], now).is_some());
}

/// An RSA test key (2048 bits, made with `openssl genpkey` for these tests only).
const RSA_TEST_KEY: &[u8] = include_bytes!("testdata/test-only-rsa-2048.pem");

#[tokio::test]
async fn rsa_tokens_verify_and_a_key_pinned_to_one_algorithm_refuses_another() {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(RSA_TEST_KEY).expect("pem");
    let mut pinned = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).expect("jwk");
    pinned.common.key_id = Some("rsa".into());
    let mut open = pinned.clone();
    open.common.key_id = Some("rsa-any".into());
    open.common.key_algorithm = None;
    let issuer = issuer(&[serde_json::to_value(&pinned).expect("jwk"), serde_json::to_value(&open).expect("jwk")]);
    let algorithms = ["RS256", "PS256"].map(String::from).to_vec();
    let oauth = OAuth::new(OAuthConfig { algorithms, ..config(&issuer.url) }).expect("oauth");
    let sign_with = |alg, kid: &str| {
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims(&issuer.url), &key).expect("sign")
    };
    oauth.verify(&sign_with(Algorithm::RS256, "rsa")).await.expect("RS256");
    oauth.verify(&sign_with(Algorithm::PS256, "rsa-any")).await.expect("PS256 with a key that pins none");
    let refused = oauth.verify(&sign_with(Algorithm::PS256, "rsa")).await.expect_err("the key is RS256's");
    assert!(matches!(&refused, TokenError::Invalid(m) if m.contains("its key is for RS256")), "{refused:?}");
    // ES256 is not among this server's algorithms.
    let (es, _) = es256_key("es");
    let refused = oauth.verify(&sign(&es, "es", claims(&issuer.url))).await.expect_err("not accepted");
    assert!(matches!(&refused, TokenError::Invalid(m) if m.contains("oauth.algorithms")), "{refused:?}");
}

#[tokio::test]
async fn a_fetch_outlives_the_caller_that_started_it() {
    let (key, jwk) = es256_key("k1");
    let issuer = issuer(&[jwk]);
    issuer.delay_ms.store(300, std::sync::atomic::Ordering::SeqCst);
    let oauth = OAuth::new(config(&issuer.url)).expect("oauth");
    let token = sign(&key, "k1", claims(&issuer.url));
    // A client that gives up 50 ms in (its connection closed) does not cut the fetch short ...
    let gave_up = tokio::time::timeout(std::time::Duration::from_millis(50), oauth.verify(&token)).await;
    assert!(gave_up.is_err());
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    // ... so the next token is checked against the keys it brought, with no fetch of its own.
    let served = issuer.served();
    oauth.verify(&token).await.expect("the keys are held");
    assert_eq!(issuer.served(), served);
}

#[tokio::test]
async fn a_failing_issuer_is_asked_at_most_once_per_refetch_interval_and_tokens_get_unavailable() {
    let (key, jwk) = es256_key("k1");
    let issuer = issuer(&[jwk]);
    let oauth = OAuth::new(OAuthConfig { jwks_refetch_min_ms: 2000, ..config(&issuer.url) }).expect("oauth");
    oauth.prefetch().await.expect("keys");
    // The issuer breaks: a token of an unknown key is answered 503-like, not "not its key".
    issuer.set("/jwks", "not json");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let before = issuer.served();
    for n in 0..20 {
        let token = sign(&key, &format!("k{}", n + 2), claims(&issuer.url));
        let refused = oauth.verify(&token).await.expect_err("unknown key");
        assert!(matches!(refused, TokenError::Unavailable(_)), "{refused:?}");
    }
    assert_eq!(issuer.served() - before, 1, "one fetch in the refetch interval, failed or not");
    oauth.verify(&sign(&key, "k1", claims(&issuer.url))).await.expect("a held key still checks");
}

#[test]
fn a_subject_holds_at_most_its_places_and_gives_them_back() {
    let oauth = OAuth::new(OAuthConfig { subject_requests_max: 2, ..config("https://login.example") }).expect("oauth");
    let first = oauth.subject_slot("alice", "agent-7").expect("one");
    let _second = oauth.subject_slot("alice", "agent-7").expect("two");
    let refused = oauth.subject_slot("alice", "agent-7").err().expect("a third");
    assert!(refused.contains("oauth.subject_requests_max"), "{refused}");
    let _other = oauth.subject_slot("alice", "agent-8").expect("another subject has its own");
    let _same_name = oauth.subject_slot("bob", "agent-7").expect("and so has another tenant's");
    drop(first);
    let _again = oauth.subject_slot("alice", "agent-7").expect("a place given back");
    drop((_second, _other, _same_name, _again));
    assert!(oauth.subjects_in_flight.lock().expect("map").is_empty(), "no entry outlives its requests");
}
