//! The OAuth 2.1 resource server: `/mcp` and the REST API accept JWT access tokens from one
//! configured issuer besides the tenants' static tokens. A token is checked against the
//! issuer's keys (found through its metadata, RFC 8414 or OpenID discovery, and cached by key
//! id), its issuer, its audience (this server's canonical URI, RFC 8707), its expiry and
//! not-before with a bounded skew; its `sub` becomes the call's subject and a claim names its
//! tenant. The protected-resource metadata (RFC 9728) that tells clients all this is served from
//! [`OAuth::metadata`].

mod keys;
mod verify;

pub use verify::install as install_crypto_provider;

use jsonwebtoken::Algorithm;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::ConfigError;
pub use crate::config::oauth::*;
pub(crate) use keys::KeyCache;

/// What a verified token grants besides its tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scopes {
    /// Every tool the tenant may call.
    tools_all: bool,
    /// These tools only.
    tools: BTreeSet<String>,
    /// The admin routes (for an admin tenant).
    admin: bool,
}

impl Scopes {
    /// Whether the token may call `tool`.
    pub fn call(&self, tool: &str) -> bool {
        self.tools_all || self.tools.contains(tool)
    }

    /// Whether the token may use the admin routes.
    pub fn admin(&self) -> bool {
        self.admin
    }

    /// Whether it grants anything here.
    pub fn any(&self) -> bool {
        self.tools_all || self.admin || !self.tools.is_empty()
    }
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The tenant its claim names (not yet checked against the configured tenants).
    pub tenant: String,
    /// Its subject, as [`OAuthConfig::subject_record`] says to record it.
    pub subject: String,
    /// What it grants.
    pub scopes: Arc<Scopes>,
    /// Its `exp`, seconds since the Unix epoch.
    expires_unix_s: u64,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// 401 with `error="invalid_token"`: the token is malformed, signed by an unknown key,
    /// expired, not yet valid, or for another issuer, audience or tenant.
    #[error("{0}")]
    Invalid(String),
    /// 503: the issuer's keys could not be fetched and none are cached.
    #[error("{0}")]
    Unavailable(String),
}

/// The resource server: the configuration, the issuer's keys, and the tokens already verified.
pub struct OAuth {
    config: OAuthConfig,
    /// The key of the subject's hash (`subject_hash_key`), derived for this one use.
    subject_key: Option<[u8; 32]>,
    algorithms: Vec<Algorithm>,
    keys: Arc<KeyCache>,
    /// Verified tokens by the blake3 of their text, until they expire.
    verified: Mutex<HashMap<[u8; 32], (Verified, u64)>>,
    /// The protected-resource metadata document's URL.
    metadata_url: String,
    /// Requests in flight per (tenant, subject). An entry leaves when its count drops to zero,
    /// so there are never more entries than requests in flight (`http.connections_max`).
    subjects_in_flight: Arc<Mutex<HashMap<(String, String), usize>>>,
}

/// One of a subject's places among requests in flight, given back when dropped.
pub(crate) struct SubjectSlot {
    in_flight: Arc<Mutex<HashMap<(String, String), usize>>>,
    key: (String, String),
}

impl Drop for SubjectSlot {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = in_flight.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.key);
            }
        }
    }
}

impl OAuth {
    /// The resource server for a validated `config`.
    ///
    /// # Errors
    /// [`ConfigError`] when the HTTP client for the issuer cannot be built.
    pub fn new(config: OAuthConfig) -> Result<Self, ConfigError> {
        let algorithms = config.accepted()?;
        verify::install();
        let keys = Arc::new(KeyCache::new(&config)?);
        let metadata_url = metadata_url(&config.audience);
        let subject_key = config.subject_hash_key.as_deref().map(read_subject_key).transpose()?;
        Ok(Self {
            config,
            subject_key,
            algorithms,
            keys,
            verified: Mutex::new(HashMap::new()),
            metadata_url,
            subjects_in_flight: Arc::default(),
        })
    }

    /// Fetch the issuer's keys now (at start), so the first call does not wait for them.
    ///
    /// # Errors
    /// What went wrong, as text; calls fetch them again later.
    pub async fn prefetch(&self) -> Result<usize, String> {
        self.keys.refresh().await.map_err(|e| e.to_string())
    }

    /// The URL of this server's protected-resource metadata (RFC 9728 §3.1), for
    /// `WWW-Authenticate: Bearer resource_metadata="…"`.
    pub(crate) fn metadata_url(&self) -> &str {
        &self.metadata_url
    }

    /// A place among the requests in flight of `subject` (as recorded) in `tenant`.
    ///
    /// # Errors
    /// A message naming `oauth.subject_requests_max` when the subject has that many already.
    pub(crate) fn subject_slot(&self, tenant: &str, subject: &str) -> Result<SubjectSlot, String> {
        let key = (tenant.to_string(), subject.to_string());
        let mut in_flight = self.subjects_in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let count = in_flight.entry(key.clone()).or_insert(0);
        if *count >= self.config.subject_requests_max {
            return Err(format!(
                "subject {subject:?} of tenant {tenant} has {} requests in flight already (oauth.subject_requests_max); wait for one to finish",
                self.config.subject_requests_max
            ));
        }
        *count += 1;
        Ok(SubjectSlot { in_flight: self.subjects_in_flight.clone(), key })
    }

    /// The scope a token needs to call any tool.
    pub(crate) fn scope_tools(&self) -> &str {
        &self.config.scope_tools
    }

    /// The scope a token needs to call `tool` alone.
    pub(crate) fn scope_tool(&self, tool: &str) -> String {
        format!("{}:{tool}", self.config.scope_tools)
    }

    /// The scope a token needs for the admin routes.
    pub(crate) fn scope_admin(&self) -> &str {
        &self.config.scope_admin
    }

    /// The protected-resource metadata document (RFC 9728 §2).
    pub(crate) fn metadata(&self) -> serde_json::Value {
        serde_json::json!({
            "resource": self.config.audience,
            "authorization_servers": [self.config.issuer],
            "bearer_methods_supported": ["header"],
            "scopes_supported": [self.config.scope_tools, self.config.scope_admin],
            "resource_signing_alg_values_supported": self.config.algorithms,
        })
    }

    /// The paths the metadata is served at: the RFC 9728 well-known URI of the audience, and the
    /// bare `/.well-known/oauth-protected-resource` that clients try first.
    pub(crate) fn metadata_paths(&self) -> Vec<String> {
        let mut paths = vec![WELL_KNOWN.to_string()];
        if let Ok(url) = reqwest::Url::parse(&self.metadata_url)
            && url.path() != WELL_KNOWN
        {
            paths.push(url.path().to_string());
        }
        paths
    }

    /// Check `token`: its signature against the issuer's keys, then `iss`, `aud`, `exp`, `nbf`
    /// (with [`OAuthConfig::leeway_s`]), `sub` and the tenant claim. A token checked before
    /// and not yet expired is answered from memory.
    ///
    /// # Errors
    /// [`TokenError::Invalid`] saying which check failed; [`TokenError::Unavailable`] when the
    /// issuer's keys cannot be had.
    pub async fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        if token.len() > self.config.token_bytes_max {
            return Err(TokenError::Invalid(format!(
                "the token is longer than {} bytes (oauth.token_bytes_max)",
                self.config.token_bytes_max
            )));
        }
        let digest = *blake3::hash(token.as_bytes()).as_bytes();
        let now = now_unix_s();
        if let Some(known) = self.remembered(&digest, now) {
            return Ok(known);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Invalid(format!("the token is not a JWT ({e})")))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::Invalid(format!(
                "the token is signed with {:?}, which this server does not accept (oauth.algorithms)",
                header.alg
            )));
        }
        let (key, generation) = self.keys.key_for(header.kid.as_deref(), header.alg).await?;
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway_s;
        let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation)
            .map_err(|e| TokenError::Invalid(describe(&e)))?
            .claims;
        let verified = self.verified_from(&claims)?;
        self.remember(digest, verified.clone(), generation, now);
        Ok(verified)
    }

    /// The subject, tenant and scopes of a token whose standard claims have been checked.
    fn verified_from(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Result<Verified, TokenError> {
        let text = |name: &str| claims.get(name).and_then(serde_json::Value::as_str).filter(|s| !s.is_empty());
        let subject = text("sub").ok_or_else(|| TokenError::Invalid("the token has no `sub`".into()))?;
        let tenant = text(&self.config.tenant_claim).ok_or_else(|| {
            TokenError::Invalid(format!("the token has no `{}` claim naming its tenant", self.config.tenant_claim))
        })?;
        let expires_unix_s = claims.get("exp").and_then(serde_json::Value::as_u64).unwrap_or(0);
        let subject = match self.config.subject_record {
            SubjectRecord::Plain => subject.to_string(),
            SubjectRecord::Blake3 => {
                let hash = match &self.subject_key {
                    Some(key) => blake3::keyed_hash(key, subject.as_bytes()),
                    None => blake3::hash(subject.as_bytes()),
                };
                format!("blake3:{}", hash.to_hex())
            }
        };
        Ok(Verified { tenant: tenant.to_string(), subject, scopes: Arc::new(self.scopes(claims)), expires_unix_s })
    }

    /// The Guild scopes among the token's `scope` (space-separated, RFC 8693 / 9068) or `scp`
    /// (a list, as some issuers write it).
    fn scopes(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Scopes {
        let mut granted: Vec<&str> = Vec::new();
        if let Some(scope) = claims.get("scope").and_then(serde_json::Value::as_str) {
            granted.extend(scope.split(' ').filter(|s| !s.is_empty()));
        }
        match claims.get("scp") {
            Some(serde_json::Value::String(s)) => granted.extend(s.split(' ').filter(|s| !s.is_empty())),
            Some(serde_json::Value::Array(list)) => granted.extend(list.iter().filter_map(serde_json::Value::as_str)),
            _ => {}
        }
        let prefix = format!("{}:", self.config.scope_tools);
        Scopes {
            tools_all: granted.contains(&self.config.scope_tools.as_str()),
            tools: granted.iter().filter_map(|s| s.strip_prefix(&prefix)).map(str::to_string).collect(),
            admin: self.config.admin && granted.contains(&self.config.scope_admin.as_str()),
        }
    }

    /// A token verified before, unless it has expired since, a key changed, or the keys are
    /// older than `oauth.jwks_ttl_s`.
    fn remembered(&self, digest: &[u8; 32], now: u64) -> Option<Verified> {
        let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        let (known, generation) = verified.get(digest)?;
        let fresh = known.expires_unix_s.saturating_add(self.config.leeway_s) >= now;
        // Keys past their age are fetched again (through `key_for`) before any token is trusted.
        (fresh && self.keys.fresh_generation() == Some(*generation)).then(|| known.clone())
    }

    /// Remember a verified token with the key set's generation it was checked under. At the
    /// bound, expired entries and those of older key sets go first, then an arbitrary one.
    fn remember(&self, digest: [u8; 32], verified: Verified, generation: u64, now: u64) {
        let mut remembered = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if remembered.len() >= self.config.verified_tokens_max {
            let (leeway, current) = (self.config.leeway_s, self.keys.fresh_generation());
            remembered.retain(|_, (v, g)| Some(*g) == current && v.expires_unix_s.saturating_add(leeway) >= now);
            if remembered.len() >= self.config.verified_tokens_max
                && let Some(victim) = remembered.keys().next().copied()
            {
                remembered.remove(&victim);
            }
        }
        remembered.insert(digest, (verified, generation));
    }

    /// How many verified tokens are remembered.
    #[cfg(test)]
    fn remembered_len(&self) -> usize {
        self.verified.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The key of the subjects' hash from `source` (`env:VAR` or `file:PATH`).
///
/// # Errors
/// [`ConfigError`] on `oauth.subject_hash_key` when the source is malformed, unreadable or empty.
fn read_subject_key(source: &str) -> Result<[u8; 32], ConfigError> {
    let field = "oauth.subject_hash_key";
    let source = guild_runtime::egress::SecretSource::parse(source).map_err(|e| ConfigError::new(field, e))?;
    let secret = guild_runtime::egress::Secret::read("oauth_subject_hash_key", &source)
        .map_err(|e| ConfigError::new(field, e))?;
    // The value reaches nothing but this derivation: `fill` is the one way a secret is read.
    let material = guild_runtime::egress::secrets::fill("{{secret:oauth_subject_hash_key}}", &[secret]);
    Ok(blake3::derive_key("guild oauth subject pseudonym v1", material.as_bytes()))
}

/// The RFC 9728 well-known path.
const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The metadata URL of `resource`: the well-known path inserted between its origin and its path.
fn metadata_url(resource: &str) -> String {
    match reqwest::Url::parse(resource) {
        Ok(url) => {
            let path = url.path().trim_end_matches('/');
            format!("{}{WELL_KNOWN}{path}", url.origin().ascii_serialization())
        }
        Err(_) => WELL_KNOWN.to_string(),
    }
}

/// Seconds since the Unix epoch.
fn now_unix_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

/// What a failed check means, for the caller.
fn describe(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidAudience => "the token's audience is not this server".into(),
        ErrorKind::InvalidIssuer => "the token is from another issuer".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no `{claim}`"),
        ErrorKind::InvalidAlgorithm => "the token's algorithm does not match its key".into(),
        other => format!("the token was not accepted ({other:?})"),
    }
}

#[cfg(test)]
mod tests;
