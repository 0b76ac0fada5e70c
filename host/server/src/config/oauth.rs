//! `[oauth]`: which issuer's access tokens the daemon accepts and how they are checked, validated
//! at start with the field named. The resource server that uses it is `crate::oauth`.

use super::ConfigError;
use jsonwebtoken::Algorithm;
use serde::Deserialize;

/// Default claim naming a token's tenant.
pub const TENANT_CLAIM_DEFAULT: &str = "guild_tenant";
/// Default scope letting a token call every tool its tenant may call.
pub const SCOPE_TOOLS_DEFAULT: &str = "guild:tools";
/// Default scope letting a token of an admin tenant use the admin routes.
pub const SCOPE_ADMIN_DEFAULT: &str = "guild:admin";
/// Default skew allowed on `exp` and `nbf`, seconds.
pub const LEEWAY_S_DEFAULT: u64 = 60;
/// Largest skew allowed on `exp` and `nbf`, seconds: more would keep expired tokens alive.
pub const LEEWAY_S_MAX: u64 = 300;
/// Default least time between two fetches of the JWKS that unknown key ids cause, milliseconds.
pub const JWKS_REFETCH_MIN_MS_DEFAULT: u64 = 10_000;
/// Default age after which the JWKS is fetched again before its next use, seconds.
pub const JWKS_TTL_S_DEFAULT: u64 = 300;
/// Default time one fetch from the issuer (metadata or JWKS) may take, milliseconds.
pub const FETCH_TIMEOUT_MS_DEFAULT: u64 = 5000;
/// Default largest metadata or JWKS document read from the issuer, bytes.
pub const DOCUMENT_BYTES_MAX_DEFAULT: usize = 256 * 1024;
/// Default most keys kept from one JWKS.
pub const KEYS_MAX_DEFAULT: usize = 64;
/// Default longest access token accepted, bytes.
pub const TOKEN_BYTES_MAX_DEFAULT: usize = 16 * 1024;
/// Default most requests of one subject (tenant and `sub`) in flight at once.
pub const SUBJECT_REQUESTS_MAX_DEFAULT: usize = 64;
/// Default most verified tokens remembered (so a token's signature is checked once, not per call).
pub const VERIFIED_TOKENS_MAX_DEFAULT: usize = 10_000;

/// `[oauth]`: the issuer whose JWT access tokens are accepted, and how they are checked.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthConfig {
    /// The authorization server's issuer identifier, `https://…` (`http://` on loopback only).
    /// Its keys are found through `{issuer}/.well-known/oauth-authorization-server`, else
    /// `/.well-known/openid-configuration`.
    pub issuer: String,
    /// This server's canonical URI, the `aud` every token must name (`https://guild.example/mcp`).
    pub audience: String,
    /// The claim naming the token's tenant, which must be a configured tenant.
    pub tenant_claim: String,
    /// Skew allowed on `exp` and `nbf`, seconds (at most [`LEEWAY_S_MAX`]).
    pub leeway_s: u64,
    /// Signature algorithms accepted: any of RS256, RS384, RS512, PS256, PS384, PS512, ES256,
    /// ES384, EdDSA. HMAC is never accepted: a resource server holds no issuer secret.
    pub algorithms: Vec<String>,
    /// The scope that lets a token call every tool its tenant may call; `{scope_tools}:NAME`
    /// lets it call the tool NAME only.
    pub scope_tools: String,
    /// The scope that lets a token of an admin tenant use the admin routes.
    pub scope_admin: String,
    /// Whether access tokens may use the admin routes at all (with `scope_admin`, for an admin
    /// tenant). Off by default: an issuer then cannot grant what only the operator should.
    pub admin: bool,
    /// How a subject is written into audit records and bundles: `plain`, or `blake3` (its hash,
    /// `blake3:HEX`: a pseudonym, stable across runs, that does not spell out an e-mail address).
    pub subject_record: SubjectRecord,
    /// With `subject_record = "blake3"`: where the key of the hash comes from (`env:VAR` or
    /// `file:PATH`, the same on every node), so a list of candidate subjects cannot be hashed
    /// to reverse a pseudonym. Unset: the plain blake3 of the subject.
    pub subject_hash_key: Option<String>,
    /// Least time between two JWKS fetches that tokens with unknown key ids cause, milliseconds.
    pub jwks_refetch_min_ms: u64,
    /// Age after which the JWKS is fetched again before its next use, seconds.
    pub jwks_ttl_s: u64,
    /// Time one fetch from the issuer may take, milliseconds.
    pub fetch_timeout_ms: u64,
    /// Largest metadata or JWKS document read from the issuer, bytes.
    pub document_bytes_max: usize,
    /// Most keys kept from one JWKS; a larger set is refused whole.
    pub keys_max: usize,
    /// Longest access token accepted, bytes.
    pub token_bytes_max: usize,
    /// Most verified tokens remembered until they expire.
    pub verified_tokens_max: usize,
    /// Most requests of one subject in flight at once (429 past it), within its tenant's
    /// `http.tenant_requests_max`: one agent cannot take all of its tenant's places.
    pub subject_requests_max: usize,
    /// PEM files of CA certificates trusted for the issuer besides the webpki roots (a private
    /// CA's issuer).
    pub ca_files: Vec<std::path::PathBuf>,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            tenant_claim: TENANT_CLAIM_DEFAULT.into(),
            leeway_s: LEEWAY_S_DEFAULT,
            algorithms: ["RS256", "ES256", "EdDSA"].map(String::from).to_vec(),
            scope_tools: SCOPE_TOOLS_DEFAULT.into(),
            scope_admin: SCOPE_ADMIN_DEFAULT.into(),
            admin: false,
            subject_record: SubjectRecord::Plain,
            subject_hash_key: None,
            jwks_refetch_min_ms: JWKS_REFETCH_MIN_MS_DEFAULT,
            jwks_ttl_s: JWKS_TTL_S_DEFAULT,
            fetch_timeout_ms: FETCH_TIMEOUT_MS_DEFAULT,
            document_bytes_max: DOCUMENT_BYTES_MAX_DEFAULT,
            keys_max: KEYS_MAX_DEFAULT,
            token_bytes_max: TOKEN_BYTES_MAX_DEFAULT,
            verified_tokens_max: VERIFIED_TOKENS_MAX_DEFAULT,
            subject_requests_max: SUBJECT_REQUESTS_MAX_DEFAULT,
            ca_files: Vec::new(),
        }
    }
}

/// How a token's subject is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectRecord {
    /// As the token says it.
    Plain,
    /// `blake3:` and the hex blake3 of it.
    Blake3,
}

/// The algorithms `[oauth] algorithms` may name.
const ALGORITHMS: [(&str, Algorithm); 9] = [
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

impl OAuthConfig {
    /// Check the section, naming the field that is wrong.
    ///
    /// # Errors
    /// [`ConfigError`] for a missing or non-absolute issuer or audience, an `http://` issuer off
    /// loopback, an unknown algorithm, a leeway past [`LEEWAY_S_MAX`], or a zero bound.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let issuer = reqwest::Url::parse(&self.issuer).map_err(|e| {
            ConfigError::new(
                "oauth.issuer",
                format!("{:?} is not a URL ({e}); give the issuer identifier, https://…", self.issuer),
            )
        })?;
        if !secure_or_loopback(&issuer) {
            return Err(ConfigError::new(
                "oauth.issuer",
                format!("{} is not https; an issuer is reached over https (plain http only on loopback)", self.issuer),
            ));
        }
        if issuer.query().is_some() || issuer.fragment().is_some() {
            return Err(ConfigError::new("oauth.issuer", "an issuer identifier has no query or fragment (RFC 8414)"));
        }
        if reqwest::Url::parse(&self.audience).is_err() {
            return Err(ConfigError::new(
                "oauth.audience",
                format!(
                    "{:?} is not an absolute URI; give this server's canonical URI, e.g. https://guild.example/mcp",
                    self.audience
                ),
            ));
        }
        if self.tenant_claim.is_empty() || self.scope_tools.is_empty() || self.scope_admin.is_empty() {
            return Err(ConfigError::new(
                "oauth.tenant_claim",
                "tenant_claim, scope_tools and scope_admin must not be empty",
            ));
        }
        self.accepted()?;
        if self.leeway_s > LEEWAY_S_MAX {
            return Err(ConfigError::new("oauth.leeway_s", format!("is {}; at most {LEEWAY_S_MAX}", self.leeway_s)));
        }
        let bounds = [
            ("oauth.fetch_timeout_ms", self.fetch_timeout_ms),
            ("oauth.jwks_ttl_s", self.jwks_ttl_s),
            ("oauth.document_bytes_max", self.document_bytes_max as u64),
            ("oauth.keys_max", self.keys_max as u64),
            ("oauth.token_bytes_max", self.token_bytes_max as u64),
            ("oauth.verified_tokens_max", self.verified_tokens_max as u64),
            ("oauth.subject_requests_max", self.subject_requests_max as u64),
        ];
        if let Some((field, _)) = bounds.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::new(*field, "must be at least 1"));
        }
        Ok(())
    }

    /// The algorithms accepted.
    pub(crate) fn accepted(&self) -> Result<Vec<Algorithm>, ConfigError> {
        if self.algorithms.is_empty() {
            return Err(ConfigError::new("oauth.algorithms", "name at least one algorithm, e.g. [\"ES256\"]"));
        }
        self.algorithms
            .iter()
            .map(|name| {
                if name.starts_with("HS") {
                    return Err(ConfigError::new(
                        "oauth.algorithms",
                        format!("{name} is HMAC, which is never accepted: a resource server holds no issuer secret; use the issuer's public-key algorithm (RS256, ES256, EdDSA, …)"),
                    ));
                }
                ALGORITHMS.iter().find(|(n, _)| n == name).map(|(_, a)| *a).ok_or_else(|| {
                    let known: Vec<&str> = ALGORITHMS.iter().map(|(n, _)| *n).collect();
                    ConfigError::new("oauth.algorithms", format!("unknown algorithm {name:?}; use any of {known:?}"))
                })
            })
            .collect()
    }
}

/// Whether `url` is `https://`, or `http://` to a loopback host (tests, a local issuer).
pub(crate) fn secure_or_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    url.scheme() == "https" || (url.scheme() == "http" && loopback)
}
