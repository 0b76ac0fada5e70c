//! Who is calling: the bearer token's tenant (and, for an OAuth access token, its subject and
//! scopes), read from the request's headers by extractors that run before a single byte of the
//! body is read, for the REST API and MCP alike. A request they refuse gets one
//! [`AuthRejection`], whose response is the same on both surfaces.

use crate::daemon::Daemon;
use crate::oauth::{OAuth, SubjectSlot, TokenError};
use crate::principal::Bearer;
use crate::tenants::Tenant;
use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// Why a request was refused before its body was read. Each answers
/// `{"error": {"code", "message"}}` with the stable code below, counted in
/// `guild_api_errors_total{code}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthRejection {
    /// 401 `unauthorized`, with `WWW-Authenticate: Bearer`: no `Authorization: Bearer` header,
    /// a token no tenant holds, or (with `[oauth]`) an access token that failed a check, named in
    /// `error_description`. With `[oauth]` the challenge carries `resource_metadata`.
    Unauthorized {
        /// Why a presented token was refused; `None` when none was presented (or, without
        /// `[oauth]`, when it is no tenant's).
        why: Option<String>,
        /// The protected-resource metadata URL, with `[oauth]`.
        metadata: Option<Arc<str>>,
    },
    /// 403 `insufficient_scope`, with `WWW-Authenticate: Bearer error="insufficient_scope"`:
    /// the access token lacks the scope the request needs.
    InsufficientScope {
        /// The scope that would do.
        scope: String,
        /// The protected-resource metadata URL.
        metadata: Option<Arc<str>>,
    },
    /// 503 `auth_unavailable`, with `Retry-After: 5`: the OAuth issuer's keys cannot be fetched
    /// and none are held, so no access token can be checked.
    AuthUnavailable(String),
    /// 429 `too_many_requests`, with `Retry-After: 1`: the tenant already has
    /// `http.tenant_requests_max` requests in flight. The message names the setting.
    TooManyRequests(String),
    /// 403 `forbidden`: the route needs an admin tenant and the caller's is not one.
    NotAdmin {
        /// The caller's tenant.
        tenant: String,
    },
}

impl AuthRejection {
    /// The response's status.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope { .. } | Self::NotAdmin { .. } => StatusCode::FORBIDDEN,
            Self::AuthUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The stable error code.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized { .. } => "unauthorized",
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::AuthUnavailable(_) => "auth_unavailable",
            Self::TooManyRequests(_) => "too_many_requests",
            Self::NotAdmin { .. } => "forbidden",
        }
    }

    /// What to tell the caller.
    pub(crate) fn message(&self) -> String {
        match self {
            Self::Unauthorized { why: None, .. } => "missing or invalid bearer token".into(),
            Self::Unauthorized { why: Some(why), .. } => format!("the access token was refused: {why}"),
            Self::InsufficientScope { scope, .. } => {
                format!("the access token lacks the scope {scope:?} this request needs; ask the issuer for it")
            }
            Self::AuthUnavailable(why) => format!("access tokens cannot be checked now: {why}"),
            Self::TooManyRequests(message) => message.clone(),
            Self::NotAdmin { tenant } => {
                format!("tenant {tenant} is not an admin; this route (tool administration) needs an admin tenant")
            }
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 §3, RFC 9728 §5.1), if the answer has one.
    fn challenge(&self) -> Option<String> {
        let with_metadata = |mut params: Vec<String>, metadata: &Option<Arc<str>>| {
            if let Some(url) = metadata {
                params.push(format!("resource_metadata=\"{url}\""));
            }
            if params.is_empty() { "Bearer".to_string() } else { format!("Bearer {}", params.join(", ")) }
        };
        match self {
            Self::Unauthorized { why: None, metadata } => Some(with_metadata(Vec::new(), metadata)),
            Self::Unauthorized { why: Some(why), metadata } => Some(with_metadata(
                vec!["error=\"invalid_token\"".into(), format!("error_description=\"{}\"", quotable(why))],
                metadata,
            )),
            Self::InsufficientScope { scope, metadata } => Some(with_metadata(
                vec!["error=\"insufficient_scope\"".into(), format!("scope=\"{}\"", quotable(scope))],
                metadata,
            )),
            _ => None,
        }
    }
}

/// `text` fit for a quoted-string of a challenge: printable ASCII without `"` or `\`.
fn quotable(text: &str) -> String {
    text.chars().map(|c| if c == '"' || c == '\\' || !(' '..='~').contains(&c) { '\'' } else { c }).collect()
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code(), "message": self.message() } });
        let mut response = (self.status(), Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(self.code()));
        if let Some(challenge) = self.challenge().and_then(|c| HeaderValue::from_str(&c).ok()) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
        }
        match self {
            Self::TooManyRequests(_) => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            }
            Self::AuthUnavailable(_) => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(5u64));
            }
            _ => {}
        }
        response
    }
}

/// Marks an error response with its stable code, for `guild_api_errors_total`.
#[derive(Clone, Copy)]
pub(crate) struct ErrorCode(pub(crate) &'static str);

/// A request's places among those in flight, held while it is served: one of its tenant's
/// (`http.tenant_requests_max`) and, for an access token, one of its subject's
/// (`oauth.subject_requests_max`).
pub(crate) struct Places {
    _tenant: OwnedSemaphorePermit,
    _subject: Option<SubjectSlot>,
}

/// The caller, authenticated from the request's headers, with its places among requests in
/// flight.
pub(crate) struct Caller(pub(crate) Arc<Tenant>, pub(crate) Places, pub(crate) Bearer);

impl FromRequestParts<Arc<Daemon>> for Caller {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, daemon: &Arc<Daemon>) -> Result<Self, AuthRejection> {
        let (tenant, bearer) = authenticate(daemon, &parts.headers).await?;
        let places = places(daemon, &tenant, &bearer)?;
        Ok(Caller(tenant, places, bearer))
    }
}

/// A request's places among those in flight, for `tenant` and, with an access token, its
/// subject.
///
/// # Errors
/// [`AuthRejection::TooManyRequests`] when either has none left.
pub(crate) fn places(daemon: &Daemon, tenant: &Tenant, bearer: &Bearer) -> Result<Places, AuthRejection> {
    let subject = match (daemon.oauth(), &bearer.subject) {
        (Some(oauth), Some(subject)) => {
            Some(oauth.subject_slot(&tenant.name, subject).map_err(AuthRejection::TooManyRequests)?)
        }
        _ => None,
    };
    let tenant_place = tenant.request_slot().map_err(AuthRejection::TooManyRequests)?;
    Ok(Places { _tenant: tenant_place, _subject: subject })
}

/// An admin caller: [`Caller`], refused 403 when its tenant is not an admin or its access token
/// lacks the admin scope.
pub(crate) struct Admin(pub(crate) Arc<Tenant>, pub(crate) Places);

impl FromRequestParts<Arc<Daemon>> for Admin {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, daemon: &Arc<Daemon>) -> Result<Self, AuthRejection> {
        let Caller(tenant, slot, bearer) = Caller::from_request_parts(parts, daemon).await?;
        if !tenant.admin {
            return Err(AuthRejection::NotAdmin { tenant: tenant.name.clone() });
        }
        if !bearer.may_admin() {
            return Err(scope_missing(daemon, |o| o.scope_admin().to_string()));
        }
        Ok(Admin(tenant, slot))
    }
}

/// 403 `insufficient_scope` naming the scope `needed` picks (with `[oauth]`).
pub(crate) fn scope_missing(daemon: &Daemon, needed: impl Fn(&OAuth) -> String) -> AuthRejection {
    let oauth = daemon.oauth();
    AuthRejection::InsufficientScope {
        scope: oauth.map(&needed).unwrap_or_default(),
        metadata: oauth.map(|o| Arc::from(o.metadata_url())),
    }
}

/// The tenant and grant of the `Authorization: Bearer` token: a tenant's static token, or with
/// `[oauth]` an access token that passes every check and names a configured tenant.
pub(crate) async fn authenticate(daemon: &Daemon, headers: &HeaderMap) -> Result<(Arc<Tenant>, Bearer), AuthRejection> {
    let oauth = daemon.oauth();
    // The challenge's metadata URL is made only for a refusal, never on an accepted request.
    let refused =
        |why: Option<String>| AuthRejection::Unauthorized { why, metadata: oauth.map(|o| Arc::from(o.metadata_url())) };
    // The scheme is case-insensitive (RFC 7235 §2.1): `bearer` is `Bearer`.
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| refused(None))?;
    if let Some(tenant) = daemon.tenant_for(token) {
        return Ok((tenant, Bearer::tenant_token()));
    }
    let Some(oauth) = oauth else { return Err(refused(None)) };
    let verified = oauth.verify(token).await.map_err(|e| match e {
        TokenError::Invalid(why) => refused(Some(why)),
        TokenError::Unavailable(why) => AuthRejection::AuthUnavailable(why),
    })?;
    let tenant = daemon.tenant_named(&verified.tenant).ok_or_else(|| {
        refused(Some(format!("its tenant claim names {:?}, which is not a tenant here", verified.tenant)))
    })?;
    if verified.subject == tenant.name {
        // Bundles name a static token's runs with the tenant as subject: a subject spelled the
        // same would be taken for the tenant's static token.
        return Err(refused(Some(
            "its subject is spelled like its tenant's name, which names the tenant's static token".into(),
        )));
    }
    if !verified.scopes.any() {
        return Err(scope_missing(daemon, |o| o.scope_tools().to_string()));
    }
    Ok((tenant, Bearer::access_token(verified.subject, verified.scopes)))
}
