//! OAuth: `guild serve` as an OAuth 2.1 resource server, tried against an issuer started here (a
//! small loopback server publishing its metadata and JWKS and signing access tokens with keys
//! made for the test): the MCP Python SDK calls tools with a bearer JWT and the subject lands in
//! the audit log and the bundles; every bad token is refused with its status and challenge; a
//! key rotated at the issuer is picked up; an access token's tenant is held to its own runs.

use crate::Guild;
use crate::daemon::{Daemon, Reply, config_file, token_digest};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use guild_test_artifacts::HOSTILE;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// This server's canonical URI in these tests: the audience every token must name.
const AUDIENCE: &str = "https://guild.test/mcp";
/// Where the protected-resource metadata of [`AUDIENCE`] is (RFC 9728 §3.1).
const METADATA: &str = "https://guild.test/.well-known/oauth-protected-resource/mcp";

/// A signing key of the issuer's.
struct Key {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl Key {
    /// A new ES256 (P-256) or EdDSA (Ed25519) key.
    fn new(kid: &str, alg: Algorithm) -> Self {
        let (rcgen_alg, kty) = match alg {
            Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, "EC"),
            _ => (&rcgen::PKCS_ED25519, "OKP"),
        };
        let pair = rcgen::KeyPair::generate_for(rcgen_alg).expect("key");
        let raw = pair.public_key_raw();
        let pem = pair.serialize_pem();
        let (encoding, jwk) = if kty == "EC" {
            let jwk = json!({ "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65]) });
            (EncodingKey::from_ec_pem(pem.as_bytes()).expect("pem"), jwk)
        } else {
            let jwk = json!({ "kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "alg": "EdDSA",
                "x": URL_SAFE_NO_PAD.encode(raw) });
            (EncodingKey::from_ed_pem(pem.as_bytes()).expect("pem"), jwk)
        };
        Self { kid: kid.to_string(), alg, encoding, jwk }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }
}

/// The issuer: RFC 8414 metadata and a JWKS on loopback, with keys that can be rotated.
struct Issuer {
    url: String,
    published: Arc<Mutex<Vec<Value>>>,
    jwks_fetches: Arc<Mutex<usize>>,
}

impl Issuer {
    fn start(keys: &[&Key]) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://127.0.0.1:{}", listener.local_addr().expect("addr").port());
        let published = Arc::new(Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()));
        let jwks_fetches = Arc::new(Mutex::new(0));
        let (keys, fetches, issuer) = (published.clone(), jwks_fetches.clone(), url.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = [0u8; 4096];
                let read = stream.read(&mut request).unwrap_or(0);
                let text = String::from_utf8_lossy(&request[..read]).to_string();
                let path = text.split(' ').nth(1).unwrap_or_default().to_string();
                let body = match path.as_str() {
                    "/.well-known/oauth-authorization-server" => {
                        Some(json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/jwks.json") }))
                    }
                    "/jwks.json" => {
                        *fetches.lock().expect("count") += 1;
                        Some(json!({ "keys": *keys.lock().expect("keys") }))
                    }
                    _ => None,
                };
                let (status, body) = match body {
                    Some(body) => ("200 OK", body.to_string()),
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
        Self { url, published, jwks_fetches }
    }

    /// Publish `keys` instead of the keys published so far.
    fn publish(&self, keys: &[&Key]) {
        *self.published.lock().expect("keys") = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    fn jwks_fetches(&self) -> usize {
        *self.jwks_fetches.lock().expect("count")
    }

    /// Claims a good token of `tenant` for `sub` with `scope` has.
    fn claims(&self, tenant: &str, sub: &str, scope: &str) -> Value {
        json!({ "iss": self.url, "aud": AUDIENCE, "sub": sub, "guild_tenant": tenant, "scope": scope,
            "iat": now_s(), "exp": now_s() + 600 })
    }
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("time").as_secs()
}

/// A config with `[oauth]` for `issuer` and the tenants `tenants` (TOML), besides the echo and
/// wc tools.
fn config(guild: &Guild, issuer: &Issuer, tenants: &str) -> String {
    let text = format!(
        r#"
[[tools]]
path = "{echo}"

[[tools]]
path = "{wc}"

[oauth]
issuer = "{issuer}"
audience = "{AUDIENCE}"
jwks_refetch_min_ms = 0

{tenants}
"#,
        echo = guild_test_artifacts::ECHO,
        wc = guild_test_artifacts::WC,
        issuer = issuer.url,
    );
    config_file(guild.home(), &text)
}

/// Alice holds no static token (OAuth only); bob, an admin, has one; both may call every tool.
fn two_tenants() -> String {
    format!(
        "[[tenants]]\nname = \"alice\"\ntools = [\"*\"]\n\n[[tenants]]\nname = \"bob\"\ntoken_blake3 = \"{}\"\n\
         tools = [\"*\"]\nadmin = true\n",
        token_digest("bob-token")
    )
}

fn echo(daemon: &Daemon, token: &str) -> Reply {
    daemon.run(token, json!({ "tool": "echo", "input": { "message": "hi" } }))
}

fn challenge(reply: &Reply) -> String {
    reply.headers.get("www-authenticate").cloned().unwrap_or_default()
}

#[test]
fn the_python_sdk_calls_tools_with_an_access_token_and_its_subject_is_recorded() {
    let guild = Guild::new();
    let key = Key::new("k1", Algorithm::ES256);
    let issuer = Issuer::start(&[&key]);
    let data = crate::tree(&[("a.txt", "guild runs tools\n")]);
    let dir = crate::mount(data.path(), "/data", "ro");
    // No config file (the example tools) and no tenants: the default (admin) tenant, named by
    // the token's claim. `[oauth]` comes from the environment, as a container would set it.
    let env = [
        ("GUILD_OAUTH__ISSUER", issuer.url.as_str()),
        ("GUILD_OAUTH__AUDIENCE", AUDIENCE),
        ("GUILD_OAUTH__SUBJECT_RECORD", "plain"),
        // The upload (an admin route) needs access tokens to be let into the admin routes.
        ("GUILD_OAUTH__ADMIN", "true"),
    ];
    let daemon = Daemon::start(&guild, &["--dir", &dir], &env);
    let claims = issuer.claims("default", "agent-7@example.com", "guild:tools guild:admin");
    let token = key.sign(&claims);
    let url = format!("http://127.0.0.1:{}/mcp", daemon.port);

    let report = crate::mcp::client(&["http", &url, &token, HOSTILE]);
    crate::mcp::check_report(&report);
    crate::mcp::replay_every_run(&guild, &guild.home().join("audit.log"));

    let log = std::fs::read_to_string(guild.home().join("audit.log")).expect("audit log");
    let runs: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON"))
        .filter(|r| r.get("event").is_none())
        .collect();
    assert!(runs.len() >= 8, "{} runs", runs.len());
    for run in &runs {
        assert_eq!(run["subject"], "agent-7@example.com", "every run names its subject: {run}");
        assert_eq!(run["tenant"], "default");
    }
    let bundle = runs[0]["bundle"].as_str().expect("bundle");
    let inspect = guild.run(&["bundle", "inspect", bundle]);
    assert_eq!(inspect.code, 0, "{inspect:?}");
    assert!(inspect.stdout.contains(r#"tenant "default" · subject "agent-7@example.com""#), "{}", inspect.stdout);
}

#[test]
fn bad_access_tokens_are_refused_with_their_status_and_challenge() {
    let guild = Guild::new();
    let (es, ed) = (Key::new("es", Algorithm::ES256), Key::new("ed", Algorithm::EdDSA));
    let issuer = Issuer::start(&[&es, &ed]);
    let daemon = Daemon::start(&guild, &["--config", &config(&guild, &issuer, &two_tenants())], &[]);
    let good = issuer.claims("alice", "agent-7", "guild:tools");

    // Both algorithms work, and bob's static token still does.
    for key in [&es, &ed] {
        let reply = echo(&daemon, &key.sign(&good));
        assert_eq!(reply.status, 200, "{:?}: {}", key.alg, String::from_utf8_lossy(&reply.body));
    }
    assert_eq!(echo(&daemon, "bob-token").status, 200);

    // The metadata names the issuer and the scopes; a bare request is told where it is.
    let metadata = daemon.call("GET", "/.well-known/oauth-protected-resource/mcp", "", "").json();
    assert_eq!(metadata["resource"], AUDIENCE);
    assert_eq!(metadata["authorization_servers"], json!([issuer.url]));
    assert_eq!(metadata["scopes_supported"], json!(["guild:tools", "guild:admin"]));
    let bare = daemon.call("POST", "/v1/runs", "", "{}");
    assert_eq!((bare.status, bare.code().as_str()), (401, "unauthorized"));
    assert_eq!(challenge(&bare), format!("Bearer resource_metadata=\"{METADATA}\""));

    let with = |field: &str, value: Value| {
        let mut claims = good.clone();
        claims[field] = value;
        claims
    };
    let stranger = Key::new("stranger", Algorithm::ES256);
    let refused = [
        ("another audience", es.sign(&with("aud", json!("https://other.test/mcp"))), "audience"),
        ("expired", es.sign(&with("exp", json!(now_s() - 600))), "expired"),
        ("not yet valid", es.sign(&with("nbf", json!(now_s() + 600))), "not valid yet"),
        ("another issuer", es.sign(&with("iss", json!("https://evil.test"))), "another issuer"),
        ("an unknown key", stranger.sign(&good), "not among the issuer's keys"),
        ("an unknown tenant", es.sign(&with("guild_tenant", json!("mallory"))), "not a tenant here"),
        ("no tenant", es.sign(&with("guild_tenant", Value::Null)), "guild_tenant"),
        ("not a JWT", "bob-token-but-wrong".to_string(), "not a JWT"),
    ];
    for (what, token, says) in refused {
        let reply = echo(&daemon, &token);
        assert_eq!((reply.status, reply.code().as_str()), (401, "unauthorized"), "{what}");
        let challenge = challenge(&reply);
        assert!(challenge.starts_with("Bearer error=\"invalid_token\", error_description=\""), "{what}: {challenge}");
        assert!(challenge.contains(says), "{what}: {challenge}");
        assert!(challenge.ends_with(&format!("resource_metadata=\"{METADATA}\"")), "{what}: {challenge}");
    }

    // Scopes: none of Guild's, one tool's, no admin scope.
    let no_scope = es.sign(&with("scope", json!("openid profile")));
    let reply = echo(&daemon, &no_scope);
    assert_eq!((reply.status, reply.code().as_str()), (403, "insufficient_scope"));
    assert!(challenge(&reply).starts_with("Bearer error=\"insufficient_scope\", scope=\"guild:tools\""));
    let echo_only = es.sign(&with("scope", json!("guild:tools:echo")));
    assert_eq!(echo(&daemon, &echo_only).status, 200, "its one tool");
    let reply = daemon.run(&echo_only, json!({ "tool": "wc", "input": {} }));
    assert_eq!((reply.status, reply.code().as_str()), (403, "insufficient_scope"));
    assert!(challenge(&reply).contains("scope=\"guild:tools:wc\""), "{}", challenge(&reply));
    let call = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"wc","arguments":{}}}"#;
    let headers = [("accept", "application/json, text/event-stream"), ("content-type", "application/json")];
    let reply = daemon.call_with("POST", "/mcp", &echo_only, call, &headers);
    assert_eq!(reply.status, 403, "over MCP too: {}", String::from_utf8_lossy(&reply.body));
    assert!(challenge(&reply).contains("scope=\"guild:tools:wc\""), "{}", challenge(&reply));
    let listed = daemon.call("GET", "/v1/tools", &echo_only, "").json();
    let names: Vec<&str> =
        listed["tools"].as_array().expect("tools").iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["echo"], "only the tools its scopes name are listed");
    // An admin tenant's token with the admin scope: the admin routes stay closed to access
    // tokens unless `[oauth] admin = true`.
    let mut admin = with("guild_tenant", json!("bob"));
    admin["scope"] = json!("guild:tools guild:admin");
    let reply = daemon.call("POST", "/v1/tools", &es.sign(&admin), "");
    assert_eq!((reply.status, reply.code().as_str()), (403, "insufficient_scope"));
    assert!(challenge(&reply).contains("scope=\"guild:admin\""), "{}", challenge(&reply));
}

#[test]
fn a_key_rotated_at_the_issuer_is_picked_up_and_the_old_one_dropped() {
    let guild = Guild::new();
    let (old, new) = (Key::new("2026-11", Algorithm::ES256), Key::new("2026-12", Algorithm::ES256));
    let issuer = Issuer::start(&[&old]);
    let daemon = Daemon::start(&guild, &["--config", &config(&guild, &issuer, &two_tenants())], &[]);
    let claims = issuer.claims("alice", "agent-7", "guild:tools");
    let before = old.sign(&claims);
    assert_eq!(echo(&daemon, &before).status, 200);
    assert_eq!(echo(&daemon, &before).status, 200, "answered from the verified token");
    let fetched = issuer.jwks_fetches();

    issuer.publish(&[&new]);
    let after = new.sign(&claims);
    let reply = echo(&daemon, &after);
    assert_eq!(reply.status, 200, "a token of the new key: {}", String::from_utf8_lossy(&reply.body));
    assert!(issuer.jwks_fetches() > fetched, "the unknown key id made the daemon fetch the keys again");
    let reply = echo(&daemon, &before);
    assert_eq!(reply.status, 401, "the dropped key's token, verified before, is not trusted any more");
    assert!(challenge(&reply).contains("not among the issuer's keys"), "{}", challenge(&reply));
}

#[test]
fn an_access_token_sees_only_its_own_tenants_runs() {
    let guild = Guild::new();
    let key = Key::new("k1", Algorithm::ES256);
    let issuer = Issuer::start(&[&key]);
    let daemon = Daemon::start(&guild, &["--config", &config(&guild, &issuer, &two_tenants())], &[]);
    let alice = key.sign(&issuer.claims("alice", "agent-7", "guild:tools"));
    let bob = key.sign(&issuer.claims("bob", "agent-7", "guild:tools"));
    let run = echo(&daemon, &alice).json();
    let id = run["id"].as_str().expect("id");
    let bundle = run["bundle"].as_str().expect("bundle");
    assert_eq!(daemon.call("GET", &format!("/v1/runs/{id}"), &alice, "").status, 200);
    for path in [format!("/v1/runs/{id}"), format!("/v1/bundles/{bundle}")] {
        let theirs = daemon.call("GET", &path, &bob, "");
        let nobodys = daemon.call("GET", &path.replace(id, &"0".repeat(32)).replace(bundle, &"0".repeat(64)), &bob, "");
        assert_eq!((theirs.status, theirs.code()), (404, nobodys.code()), "{path}");
    }
    // The same subject in bob's tenant is another principal, even though bob is an admin tenant:
    // an access token is let into admin reads only with `[oauth] admin = true`. Bob's static
    // admin token reads it, and the read is audited.
    assert_eq!(daemon.call("GET", &format!("/v1/runs/{id}"), "bob-token", "").status, 200);
    let log = std::fs::read_to_string(guild.home().join("audit.log")).expect("audit log");
    assert!(log.contains("admin_read") && log.contains(&format!("run {id}")), "{log}");
}

#[test]
fn an_access_token_sees_only_its_own_subjects_runs_and_sessions() {
    let guild = Guild::new();
    let key = Key::new("k1", Algorithm::ES256);
    let issuer = Issuer::start(&[&key]);
    let daemon = Daemon::start(&guild, &["--config", &config(&guild, &issuer, &two_tenants())], &[]);
    // Leaked: the MCP session helper keeps its token for the test's life.
    let token = |tenant: &str, sub: &str| -> &'static str {
        Box::leak(key.sign(&issuer.claims(tenant, sub, "guild:tools")).into_boxed_str())
    };
    let (seven, eight) = (token("bob", "agent-7"), token("bob", "agent-8"));
    let call = json!({ "tool": "echo", "input": { "message": "mine" }, "idempotency_key": "k" });
    let run = daemon.run(seven, call.clone()).json();
    let (id, bundle) = (run["id"].as_str().expect("id"), run["bundle"].as_str().expect("bundle"));
    assert_eq!(daemon.call("GET", &format!("/v1/runs/{id}"), seven, "").status, 200);
    assert_eq!(daemon.call("GET", &format!("/v1/runs/{id}"), "bob-token", "").status, 200, "the tenant's own token");
    for path in [format!("/v1/runs/{id}"), format!("/v1/bundles/{bundle}")] {
        let theirs = daemon.call("GET", &path, eight, "");
        let nobodys =
            daemon.call("GET", &path.replace(id, &"0".repeat(32)).replace(bundle, &"0".repeat(64)), eight, "");
        assert_eq!((theirs.status, theirs.code()), (404, nobodys.code()), "another subject: {path}");
    }
    // An idempotency key is its subject's: the same key from another subject is another run.
    let other = daemon.run(eight, call).json();
    assert_ne!(other["id"], run["id"], "{other}");

    // MCP: another subject cannot name the session, nor list the bundle.
    let sevens = crate::isolation::McpSession::open(&daemon, seven);
    let list = json!({ "jsonrpc": "2.0", "id": 4, "method": "resources/list" });
    let reply = sevens.post_as(eight, &list);
    assert_eq!(reply.status, 404, "another subject's session is unknown: {}", String::from_utf8_lossy(&reply.body));
    let eights = crate::isolation::McpSession::open(&daemon, eight);
    let listed = crate::isolation::messages(&eights.post_as(eight, &list));
    let uris: Vec<String> = listed[0]["result"]["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["uri"].as_str().map(str::to_string))
        .collect();
    assert!(!uris.iter().any(|u| u.ends_with(bundle)), "{uris:?}");
    assert_eq!(uris.len(), 1, "its own run only: {uris:?}");

    // What a subject holds is shown to an auditor, never obeyed by the terminal.
    let odd = token("bob", "agent-9\u{1b}[2J\nfor       tenant ops");
    let run = echo(&daemon, odd).json();
    let inspect = guild.run(&["bundle", "inspect", run["bundle"].as_str().expect("bundle")]);
    assert!(!inspect.stdout.contains('\u{1b}'), "{:?}", inspect.stdout);
    assert!(inspect.stdout.contains(r#"subject "agent-9\u{1b}[2J\nfor"#), "{}", inspect.stdout);

    // A subject spelled like its tenant would pass for the tenant's static token.
    let reply = echo(&daemon, token("bob", "bob"));
    assert_eq!(reply.status, 401);
    assert!(challenge(&reply).contains("spelled like its tenant"), "{}", challenge(&reply));
}

#[test]
fn one_subject_cannot_take_all_of_its_tenants_places() {
    let guild = Guild::new();
    let key = Key::new("k1", Algorithm::ES256);
    let issuer = Issuer::start(&[&key]);
    let text = format!(
        "[[tools]]\npath = \"{hostile}\"\n\n[tools.limits]\ntimeout_ms = 3000\n\n[[tools]]\npath = \"{echo}\"\n\n\
         [oauth]\nissuer = \"{url}\"\naudience = \"{AUDIENCE}\"\nsubject_requests_max = 1\n\n{tenants}",
        hostile = guild_test_artifacts::HOSTILE,
        echo = guild_test_artifacts::ECHO,
        url = issuer.url,
        tenants = two_tenants(),
    );
    let daemon = Daemon::start(&guild, &["--config", &config_file(guild.home(), &text)], &[]);
    let seven = key.sign(&issuer.claims("alice", "agent-7", "guild:tools"));
    let eight = key.sign(&issuer.claims("alice", "agent-8", "guild:tools"));
    let port = daemon.port;
    let busy = seven.clone();
    let sleeping = std::thread::spawn(move || {
        let body = json!({ "tool": "hostile", "input": { "attack": "sleep" } }).to_string();
        crate::daemon::call(port, "POST", "/v1/runs", &busy, body.as_bytes(), &[]).status
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let reply = echo(&daemon, &seven);
    assert_eq!((reply.status, reply.code().as_str()), (429, "too_many_requests"));
    assert!(String::from_utf8_lossy(&reply.body).contains("oauth.subject_requests_max"));
    assert_eq!(echo(&daemon, &eight).status, 200, "another subject of the tenant is served");
    assert_eq!(sleeping.join().expect("the sleeping call"), 200, "the run ended at its timeout");
    assert_eq!(echo(&daemon, &seven).status, 200, "its place came back");
}

#[test]
fn without_the_issuers_keys_access_tokens_get_503_and_static_tokens_still_work() {
    let guild = Guild::new();
    let key = Key::new("k1", Algorithm::ES256);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://127.0.0.1:{}", closed.local_addr().expect("addr").port());
    let gone = Issuer { url, published: Arc::default(), jwks_fetches: Arc::default() };
    drop(closed);
    let daemon = Daemon::start(&guild, &["--config", &config(&guild, &gone, &two_tenants())], &[]);
    let reply = echo(&daemon, &key.sign(&gone.claims("alice", "agent-7", "guild:tools")));
    assert_eq!((reply.status, reply.code().as_str()), (503, "auth_unavailable"));
    assert_eq!(reply.headers.get("retry-after").map(String::as_str), Some("5"));
    assert_eq!(echo(&daemon, "bob-token").status, 200);
}
