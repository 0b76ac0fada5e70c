//! The issuer's signing keys: its JWKS, found through the issuer's metadata, fetched over HTTPS
//! with bounded time and size, cached by key id, and fetched again when it grows old or a token
//! names a key id it does not hold (at most once per `oauth.jwks_refetch_min_ms`, so unknown key
//! ids cannot make Guild hammer the issuer). One fetch runs at a time; callers that arrive
//! meanwhile wait for its result rather than start their own.

use super::{OAuthConfig, TokenError};
use crate::config::ConfigError;
use crate::config::oauth::secure_or_loopback;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One usable key.
#[derive(Clone)]
struct Key {
    decoding: Arc<DecodingKey>,
    /// The algorithm the JWK pins, if it pins one.
    alg: Option<Algorithm>,
    /// Its JWK as text: a key id whose text changed is a different key.
    text: String,
}

/// The keys as of one fetch.
#[derive(Default)]
struct KeySet {
    /// By key id; keys without one under `None`.
    keys: HashMap<Option<String>, Key>,
    /// When they were fetched; `None` before the first success.
    fetched: Option<Instant>,
    /// When the last fetch ended, successful or not.
    attempted: Option<Instant>,
    /// Why the last fetch failed; `None` when it succeeded.
    failed: Option<String>,
    /// Bumped whenever a key disappears or changes: tokens verified under an older generation
    /// are checked again.
    generation: u64,
}

/// Why the keys could not be fetched.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the OAuth issuer's keys cannot be fetched: {0}")]
pub(crate) struct FetchError(String);

/// The issuer's keys and how to fetch them.
pub(crate) struct KeyCache {
    issuer: String,
    client: reqwest::Client,
    document_bytes_max: usize,
    keys_max: usize,
    refetch_min: Duration,
    ttl: Duration,
    set: std::sync::RwLock<KeySet>,
    /// Held by the one fetch in progress.
    fetching: tokio::sync::Mutex<()>,
    /// The JWKS URL, once the issuer's metadata named it.
    jwks_uri: std::sync::Mutex<Option<reqwest::Url>>,
}

impl KeyCache {
    /// A cache for the issuer of `config`, holding no keys yet.
    ///
    /// # Errors
    /// [`ConfigError`] on `oauth.ca_files` or when the HTTP client cannot be built.
    pub(super) fn new(config: &OAuthConfig) -> Result<Self, ConfigError> {
        let tls =
            guild_runtime::egress::tls_config(&config.ca_files).map_err(|e| ConfigError::new("oauth.ca_files", e))?;
        let timeout = Duration::from_millis(config.fetch_timeout_ms);
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(Arc::unwrap_or_clone(tls))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| ConfigError::new("oauth", format!("the HTTP client for the issuer cannot be built: {e}")))?;
        Ok(Self {
            issuer: config.issuer.clone(),
            client,
            document_bytes_max: config.document_bytes_max,
            keys_max: config.keys_max,
            refetch_min: Duration::from_millis(config.jwks_refetch_min_ms),
            ttl: Duration::from_secs(config.jwks_ttl_s),
            set: std::sync::RwLock::new(KeySet::default()),
            fetching: tokio::sync::Mutex::new(()),
            jwks_uri: std::sync::Mutex::new(None),
        })
    }

    /// The key set's generation, if the keys are younger than `oauth.jwks_ttl_s`: a token
    /// remembered under this generation may be answered without a look at the keys; `None`
    /// sends it through [`KeyCache::key_for`], which fetches them again.
    pub(crate) fn fresh_generation(&self) -> Option<u64> {
        let set = self.read();
        set.fetched.is_some_and(|at| at.elapsed() < self.ttl).then_some(set.generation)
    }

    /// The key that checks a token with key id `kid` signed with `alg`, and the key set's
    /// generation it came from. The keys are fetched first when none are held or they are older
    /// than `oauth.jwks_ttl_s`, and again when `kid` is unknown — in every case no sooner than
    /// `oauth.jwks_refetch_min_ms` after the last fetch ended, successful or not, so neither
    /// unknown key ids nor a failing issuer make Guild hammer it.
    ///
    /// # Errors
    /// [`TokenError::Invalid`] when no held key has that id (or, without an id, no single key
    /// fits) or the key pins another algorithm; [`TokenError::Unavailable`] when the keys cannot
    /// be fetched and the key is not among those held, so whether it is the issuer's is unknown.
    pub(super) async fn key_for(
        self: &Arc<Self>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<(Arc<DecodingKey>, u64), TokenError> {
        let (stale, may_fetch) = {
            let set = self.read();
            let stale = set.fetched.is_none_or(|at| at.elapsed() >= self.ttl);
            if !stale && let Some(found) = Self::find(&set, kid, alg) {
                return found.map(|key| (key, set.generation));
            }
            (stale, set.attempted.is_none_or(|at| at.elapsed() >= self.refetch_min))
        };
        if may_fetch && let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, stale, "kept the OAuth issuer's keys held so far");
        }
        let set = self.read();
        match Self::find(&set, kid, alg) {
            Some(found) => found.map(|key| (key, set.generation)),
            // The last fetch failed (or none was made): whether the key is the issuer's is unknown.
            None if set.failed.is_some() || set.fetched.is_none() => Err(TokenError::Unavailable(
                set.failed.clone().unwrap_or_else(|| "the issuer's keys have not been fetched yet".into()),
            )),
            None => Err(TokenError::Invalid(match kid {
                Some(kid) => format!(
                    "the token's key id {kid:?} is not among the issuer's keys (fetched again at most every \
                         {} ms, oauth.jwks_refetch_min_ms)",
                    self.refetch_min.as_millis()
                ),
                None => "the token names no key id and the issuer has more than one key for its algorithm".into(),
            })),
        }
    }

    /// The key for `kid` and `alg` in `set`: `None` when there is none.
    fn find(set: &KeySet, kid: Option<&str>, alg: Algorithm) -> Option<Result<Arc<DecodingKey>, TokenError>> {
        let key = match kid {
            Some(kid) => set.keys.get(&Some(kid.to_string()))?,
            None => {
                let mut fitting = set.keys.values().filter(|k| k.alg.is_none_or(|a| a == alg));
                let only = fitting.next()?;
                if fitting.next().is_some() {
                    return None;
                }
                only
            }
        };
        Some(match key.alg {
            Some(pinned) if pinned != alg => {
                Err(TokenError::Invalid(format!("the token is signed with {alg:?} but its key is for {pinned:?}")))
            }
            _ => Ok(key.decoding.clone()),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeySet> {
        self.set.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Fetch the JWKS (discovering its URL first if need be) and put it in force. The fetch runs
    /// as a task of its own: a caller that goes away (a client closing its connection) does not
    /// cut it short. One runs at a time; a caller that waited for another's takes its result.
    ///
    /// # Errors
    /// [`FetchError`] saying which document could not be fetched or read; the keys held so far
    /// stay.
    pub(crate) async fn refresh(self: &Arc<Self>) -> Result<usize, FetchError> {
        let cache = self.clone();
        let fetch = tokio::spawn(async move {
            let asked = Instant::now();
            let _one = cache.fetching.lock().await;
            {
                let set = cache.read();
                if set.attempted.is_some_and(|at| at >= asked) {
                    return match &set.failed {
                        Some(why) => Err(FetchError(why.clone())),
                        None => Ok(set.keys.len()),
                    };
                }
            }
            let fetched = cache.fetch_keys().await;
            let mut set = cache.set.write().unwrap_or_else(|p| p.into_inner());
            set.attempted = Some(Instant::now());
            match fetched {
                Ok(keys) => {
                    let changed =
                        set.keys.iter().any(|(kid, old)| keys.get(kid).is_none_or(|new| new.text != old.text));
                    if changed {
                        set.generation += 1;
                    }
                    let count = keys.len();
                    set.keys = keys;
                    set.fetched = Some(Instant::now());
                    set.failed = None;
                    Ok(count)
                }
                Err(e) => {
                    set.failed = Some(e.0.clone());
                    Err(e)
                }
            }
        });
        fetch.await.unwrap_or_else(|e| Err(FetchError(format!("the fetch stopped: {e}"))))
    }

    /// The issuer's usable keys, from its JWKS.
    async fn fetch_keys(&self) -> Result<HashMap<Option<String>, Key>, FetchError> {
        let jwks_uri = self.jwks_uri().await?;
        let document = self.fetch(&jwks_uri).await?;
        let set: JwkSet =
            serde_json::from_slice(&document).map_err(|e| FetchError(format!("{jwks_uri} is not a JWK set ({e})")))?;
        if set.keys.len() > self.keys_max {
            return Err(FetchError(format!(
                "{jwks_uri} holds {} keys; at most {} are taken (oauth.keys_max)",
                set.keys.len(),
                self.keys_max
            )));
        }
        let keys: HashMap<Option<String>, Key> = set.keys.iter().filter_map(usable).collect();
        tracing::info!(keys = keys.len(), jwks_uri = %jwks_uri, "fetched the OAuth issuer's keys");
        Ok(keys)
    }

    /// The JWKS URL from the issuer's metadata: RFC 8414's
    /// `/.well-known/oauth-authorization-server` (inserted before the issuer's path), else OpenID
    /// Connect's `{issuer}/.well-known/openid-configuration`. The metadata must name the same
    /// issuer (RFC 8414 §3.3), and the JWKS URL must be https (or loopback http).
    async fn jwks_uri(&self) -> Result<reqwest::Url, FetchError> {
        if let Some(known) = self.jwks_uri.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(known);
        }
        let issuer = reqwest::Url::parse(&self.issuer).map_err(|e| FetchError(e.to_string()))?;
        let path = issuer.path().trim_end_matches('/');
        let origin = issuer.origin().ascii_serialization();
        let candidates = [
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
            format!("{origin}{path}/.well-known/openid-configuration"),
        ];
        let mut failures = Vec::new();
        for candidate in candidates {
            let document = match self.fetch_text(&candidate).await {
                Ok(document) => document,
                Err(e) => {
                    failures.push(e.0);
                    continue;
                }
            };
            let metadata: serde_json::Value =
                serde_json::from_slice(&document).map_err(|e| FetchError(format!("{candidate} is not JSON ({e})")))?;
            if metadata["issuer"].as_str() != Some(self.issuer.as_str()) {
                return Err(FetchError(format!(
                    "{candidate} names issuer {}, not {:?}; they must match exactly, a trailing slash \
                     included (RFC 8414 §3.3): set oauth.issuer to the issuer's own identifier",
                    metadata["issuer"], self.issuer
                )));
            }
            let jwks_uri = metadata["jwks_uri"]
                .as_str()
                .and_then(|u| reqwest::Url::parse(u).ok())
                .filter(secure_or_loopback)
                .ok_or_else(|| FetchError(format!("{candidate} names no https jwks_uri")))?;
            *self.jwks_uri.lock().unwrap_or_else(|p| p.into_inner()) = Some(jwks_uri.clone());
            return Ok(jwks_uri);
        }
        Err(FetchError(failures.join("; ")))
    }

    async fn fetch_text(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let url = reqwest::Url::parse(url).map_err(|e| FetchError(format!("{url}: {e}")))?;
        self.fetch(&url).await
    }

    /// GET `url`: its body when the answer is 200, read up to `oauth.document_bytes_max`.
    async fn fetch(&self, url: &reqwest::Url) -> Result<Vec<u8>, FetchError> {
        let mut response = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| FetchError(format!("GET {url}: {}", with_causes(&e))))?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(FetchError(format!("GET {url} answered {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) =
            response.chunk().await.map_err(|e| FetchError(format!("GET {url}: {}", with_causes(&e))))?
        {
            if body.len() + chunk.len() > self.document_bytes_max {
                return Err(FetchError(format!(
                    "GET {url}: the document is larger than {} bytes (oauth.document_bytes_max)",
                    self.document_bytes_max
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// An error and the errors under it, as one line (reqwest's own says only "error sending
/// request").
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// A JWK this server can check signatures with: not an encryption key, not a shared secret.
fn usable(jwk: &Jwk) -> Option<(Option<String>, Key)> {
    if jwk.common.public_key_use.as_ref().is_some_and(|u| *u != PublicKeyUse::Signature) {
        return None;
    }
    if matches!(jwk.algorithm, jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)) {
        return None;
    }
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    let alg = jwk.common.key_algorithm.and_then(|a| a.to_string().parse::<Algorithm>().ok());
    let text = serde_json::to_string(jwk).unwrap_or_default();
    Some((jwk.common.key_id.clone(), Key { decoding: Arc::new(decoding), alg, text }))
}
