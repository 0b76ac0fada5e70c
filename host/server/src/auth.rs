//! Who is calling: the bearer token's tenant, read from the request's headers by extractors that
//! run before a single byte of the body is read, for the REST API and MCP alike. A request they
//! refuse gets one [`AuthRejection`], whose response is the same on both surfaces.

use crate::daemon::Daemon;
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
    /// or a token no tenant holds.
    Unauthorized,
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
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::NotAdmin { .. } => StatusCode::FORBIDDEN,
        }
    }

    /// The stable error code.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::TooManyRequests(_) => "too_many_requests",
            Self::NotAdmin { .. } => "forbidden",
        }
    }

    /// What to tell the caller.
    pub(crate) fn message(&self) -> String {
        match self {
            Self::Unauthorized => "missing or invalid bearer token".into(),
            Self::TooManyRequests(message) => message.clone(),
            Self::NotAdmin { tenant } => {
                format!("tenant {tenant} is not an admin; this route (tool administration) needs an admin tenant")
            }
        }
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code(), "message": self.message() } });
        let mut response = (self.status(), Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(self.code()));
        match self {
            Self::Unauthorized => {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::TooManyRequests(_) => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            }
            Self::NotAdmin { .. } => {}
        }
        response
    }
}

/// Marks an error response with its stable code, for `guild_api_errors_total`.
#[derive(Clone, Copy)]
pub(crate) struct ErrorCode(pub(crate) &'static str);

/// The caller, authenticated from the request's headers. It holds one of the tenant's places
/// among requests in flight while the request is served.
pub(crate) struct Caller(pub(crate) Arc<Tenant>, pub(crate) OwnedSemaphorePermit);

impl FromRequestParts<Arc<Daemon>> for Caller {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, daemon: &Arc<Daemon>) -> Result<Self, AuthRejection> {
        let tenant = tenant_of(daemon, &parts.headers).ok_or(AuthRejection::Unauthorized)?;
        let slot = tenant.request_slot().map_err(AuthRejection::TooManyRequests)?;
        Ok(Caller(tenant, slot))
    }
}

/// An admin caller: [`Caller`], refused 403 when its tenant is not an admin.
pub(crate) struct Admin(pub(crate) Arc<Tenant>, pub(crate) OwnedSemaphorePermit);

impl FromRequestParts<Arc<Daemon>> for Admin {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, daemon: &Arc<Daemon>) -> Result<Self, AuthRejection> {
        let Caller(tenant, slot) = Caller::from_request_parts(parts, daemon).await?;
        if !tenant.admin {
            return Err(AuthRejection::NotAdmin { tenant: tenant.name.clone() });
        }
        Ok(Admin(tenant, slot))
    }
}

/// The tenant whose token the `Authorization: Bearer` header carries.
fn tenant_of(daemon: &Daemon, headers: &HeaderMap) -> Option<Arc<Tenant>> {
    let token = headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")?;
    daemon.tenant_for(token.trim())
}
