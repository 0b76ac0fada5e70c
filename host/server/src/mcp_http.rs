//! `/mcp`: the MCP streamable HTTP transport (rmcp's tower service) behind the daemon's bearer
//! tokens. A request without a valid token gets the API's 401 before rmcp sees it; rmcp then
//! checks `Host` and `Origin` against `[mcp]` in the config (DNS rebinding) and hands each
//! request, with the caller's tenant in its extensions, to [`GuildMcp`].

use crate::daemon::Daemon;
use crate::mcp::GuildMcp;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use std::sync::Arc;

/// The `/mcp` route: authentication, then rmcp's streamable HTTP service.
pub(crate) fn mcp_router(daemon: Arc<Daemon>) -> axum::Router<Arc<Daemon>> {
    let config = &daemon.mcp;
    let http = StreamableHttpServerConfig::default()
        .with_allowed_hosts(config.allowed_hosts.clone())
        .with_allowed_origins(config.allowed_origins.clone())
        .enforce_origin_validation()
        .with_max_request_body_bytes(daemon.request_bytes_max);
    let handler_daemon = daemon.clone();
    let service = StreamableHttpService::new(
        move || Ok(GuildMcp::per_request(handler_daemon.clone())),
        Arc::new(LocalSessionManager::default()),
        http,
    );
    axum::Router::new().route_service("/mcp", service).layer(axum::middleware::from_fn_with_state(daemon, authenticate))
}

/// Put the bearer token's tenant in the request's extensions, or answer 401.
async fn authenticate(State(daemon): State<Arc<Daemon>>, mut request: Request, next: Next) -> Response {
    let tenant = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| daemon.tenant_for(token.trim()));
    match tenant {
        Some(tenant) => {
            request.extensions_mut().insert(tenant);
            next.run(request).await
        }
        None => {
            daemon.metrics.api_errors.with_label_values(&["unauthorized"]).inc();
            let body = serde_json::json!({
                "error": { "code": "unauthorized", "message": "missing or invalid bearer token" }
            });
            let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}
