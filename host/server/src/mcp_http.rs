//! `/mcp`: the MCP streamable HTTP transport (rmcp's tower service) behind the daemon's bearer
//! tokens. In front of rmcp, in order:
//! 1. authentication: a request without a valid token gets the API's 401;
//! 2. session binding: a session belongs to the principal that created it (its tenant, and an
//!    access token's subject), and an `Mcp-Session-Id` of another principal's session is replaced by one that can never exist, so rmcp answers it
//!    exactly as it answers an unknown session (404, or 202 for a DELETE that closes nothing);
//! 3. the frame screen ([`crate::jsonrpc`]): a body rmcp would refuse as plain text or misname
//!    gets a JSON-RPC error instead;
//! 4. the session limits: an `initialize` past `mcp.sessions_max` live sessions, or past
//!    `mcp.tenant_sessions_max` of the caller's tenant, gets 503. A session idle for
//!    `mcp.session_idle_ms` is closed and gives its place back (rmcp ends an idle session's
//!    worker but keeps its entry; the sweep here removes it).
//!
//! rmcp then checks `Host` and `Origin` against `[mcp]` (DNS rebinding) and hands each request,
//! with the caller's tenant in its extensions, to [`GuildMcp`].

use crate::auth::{Caller, ErrorCode};
use crate::daemon::Daemon;
use crate::http::HoldingBody;
use crate::jsonrpc::{self, Screened};
use crate::mcp::GuildMcp;
use crate::principal::Bearer;
use crate::tenants::Tenant;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, GetExtensions, JsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_server::session::local::{LocalSessionManager, LocalSessionManagerError};
use rmcp::transport::streamable_http_server::session::{ServerSseMessage, SessionId, SessionManager};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The header naming a session.
const SESSION_HEADER: &str = "mcp-session-id";
/// A session id no session ever has (rmcp's are random UUID v4s): what another tenant's id is
/// replaced by.
const NO_SESSION: &str = "00000000-0000-0000-0000-000000000000";

/// The `/mcp` route: authentication, session binding, the frame screen, then rmcp's service.
pub(crate) fn mcp_router(daemon: Arc<Daemon>) -> axum::Router<Arc<Daemon>> {
    let config = &daemon.mcp_config();
    let http = StreamableHttpServerConfig::default()
        .with_allowed_hosts(config.allowed_hosts.clone())
        .with_allowed_origins(config.allowed_origins.clone())
        .enforce_origin_validation()
        .with_max_request_body_bytes(daemon.request_bytes_max());
    let mut local = LocalSessionManager::default();
    local.session_config.keep_alive = Some(std::time::Duration::from_millis(config.session_idle_ms));
    let sessions = Arc::new(BoundSessions {
        inner: local,
        owners: Mutex::default(),
        slots: Arc::new(Semaphore::new(config.sessions_max)),
        sessions_max: config.sessions_max,
        seats: Arc::new(Mutex::default()),
        tenant_sessions_max: config.tenant_sessions_max,
        idle: std::time::Duration::from_millis(config.session_idle_ms),
    });
    let handler_daemon = daemon.clone();
    let service =
        StreamableHttpService::new(move || Ok(GuildMcp::per_request(handler_daemon.clone())), sessions.clone(), http);
    axum::Router::new()
        .route_service("/mcp", service)
        .layer(axum::middleware::from_fn_with_state((daemon.clone(), sessions), bind_and_screen))
        .layer(axum::middleware::from_fn_with_state(daemon, authenticate))
}

/// Put the bearer token's tenant in the request's extensions, or answer as the REST API does
/// (401, 429), before the body is read. The tenant's place among requests in flight is held
/// until the answer's last byte: a tool call's answer streams long after the response head.
async fn authenticate(State(daemon): State<Arc<Daemon>>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    match Caller::from_request_parts(&mut parts, &daemon).await {
        Ok(Caller(tenant, slot, bearer)) => {
            parts.extensions.insert(tenant);
            parts.extensions.insert(bearer);
            let response = next.run(Request::from_parts(parts, body)).await;
            response.map(|inner| Body::new(HoldingBody::new(inner, slot)))
        }
        Err(rejection) => rejection.into_response(),
    }
}

/// Bind sessions to tenants, screen JSON-RPC bodies, and bound the live sessions.
async fn bind_and_screen(
    State((daemon, sessions)): State<(Arc<Daemon>, Arc<BoundSessions>)>,
    request: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let (Some(tenant), Some(bearer)) =
        (parts.extensions.get::<Arc<Tenant>>().cloned(), parts.extensions.get::<Bearer>().cloned())
    else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let session = parts.headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    if let Some(id) = &session
        && !sessions.used_by(id, (&tenant.name, bearer.subject.as_deref()))
    {
        // Another principal's session is one this caller cannot name: rmcp answers it as unknown.
        parts.headers.insert(SESSION_HEADER, HeaderValue::from_static(NO_SESSION));
    }
    // Every POST body is screened, whatever its content type says: rmcp reads the type more
    // leniently than a prefix match would, and the session limit must hold for all of them.
    if parts.method != Method::POST {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let bytes = match axum::body::to_bytes(body, daemon.request_bytes_max()).await {
        Ok(bytes) => bytes,
        Err(_) => {
            let message = format!(
                "the body is larger than {} bytes (or was cut off); send less or raise request_bytes_max",
                daemon.request_bytes_max()
            );
            return rpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                jsonrpc::error(serde_json::Value::Null, jsonrpc::INVALID_REQUEST, message),
            );
        }
    };
    let message = match jsonrpc::screen(&bytes) {
        Screened::Pass(message) => message,
        Screened::Reply(answer) => {
            tracing::warn!(tenant = %tenant.name, "answered an MCP request rmcp would not: {}", answer["error"]["message"]);
            return rpc_error(StatusCode::BAD_REQUEST, "bad_request", answer);
        }
        Screened::Drop(reason) => {
            tracing::warn!(tenant = %tenant.name, reason = %reason, "refused an MCP notification or response");
            let mut response = StatusCode::BAD_REQUEST.into_response();
            response.extensions_mut().insert(ErrorCode("bad_request"));
            return response;
        }
    };
    // A call the access token has no scope for is refused as HTTP 403 with the scope that
    // would do (the MCP authorization spec's step-up), before any session work.
    if let Some(tool) = called_tool(&message)
        && !bearer.may_call(tool)
    {
        return crate::auth::scope_missing(&daemon, |o| o.scope_tool(tool)).into_response();
    }
    if session.is_none() && is_initialize(&message) {
        sessions.close_idle().await;
        let seat = match sessions.seat(&tenant.name) {
            Ok(seat) => seat,
            Err(text) => return sessions_full(&message, text),
        };
        let Ok(permit) = sessions.slots.clone().try_acquire_owned() else {
            let text = format!(
                "the limit of {} live MCP sessions is reached (mcp.sessions_max); end an idle session with DELETE or retry later",
                sessions.sessions_max
            );
            return sessions_full(&message, text);
        };
        parts.extensions.insert(SessionSlot(Arc::new(Mutex::new(Some(Place { _permit: permit, _seat: seat })))));
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// The 503 for an `initialize` past a session limit.
fn sessions_full(message: &ClientJsonRpcMessage, text: String) -> Response {
    let mut response = rpc_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "mcp_sessions_full",
        jsonrpc::error(initialize_id(message), -32000, text),
    );
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

/// The tool a `tools/call` request names.
fn called_tool(message: &ClientJsonRpcMessage) -> Option<&str> {
    match message {
        JsonRpcMessage::Request(request) => match &request.request {
            ClientRequest::CallToolRequest(call) => Some(&call.params.name),
            _ => None,
        },
        _ => None,
    }
}

fn is_initialize(message: &ClientJsonRpcMessage) -> bool {
    matches!(message, JsonRpcMessage::Request(request) if matches!(request.request, ClientRequest::InitializeRequest(_)))
}

fn initialize_id(message: &ClientJsonRpcMessage) -> serde_json::Value {
    match message {
        JsonRpcMessage::Request(request) => {
            serde_json::to_value(&request.id).expect("a request id is a number or a string")
        }
        _ => serde_json::Value::Null,
    }
}

/// A JSON-RPC error answered with an HTTP status, marked with its code for
/// `guild_api_errors_total` as the REST API's errors are.
fn rpc_error(status: StatusCode, code: &'static str, body: serde_json::Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    response.extensions_mut().insert(ErrorCode(code));
    response
}

/// A session's place: one of `sessions_max`, and one of its tenant's `tenant_sessions_max`.
struct Place {
    _permit: OwnedSemaphorePermit,
    _seat: Seat,
}

/// A place for one more live session, carried from the middleware to `initialize_session`.
#[derive(Clone)]
struct SessionSlot(Arc<Mutex<Option<Place>>>);

/// One of a tenant's sessions, counted until it is dropped.
struct Seat {
    seats: Arc<Mutex<HashMap<String, usize>>>,
    tenant: String,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut seats = self.seats.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = seats.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                seats.remove(&self.tenant);
            }
        }
    }
}

/// Who a session belongs to, when it was last used, and its place among the live ones.
struct Binding {
    tenant: String,
    /// The access token's subject; `None` for the tenant's static token.
    subject: Option<String>,
    last_used: std::time::Instant,
    _place: Option<Place>,
}

/// rmcp's local sessions, each bound to the tenant that initialized it, at most `sessions_max`
/// in all and `tenant_sessions_max` per tenant.
pub(crate) struct BoundSessions {
    inner: LocalSessionManager,
    /// One entry per live session: bounded by the slots.
    owners: Mutex<HashMap<SessionId, Binding>>,
    slots: Arc<Semaphore>,
    sessions_max: usize,
    /// Sessions (live or being initialized) per tenant.
    seats: Arc<Mutex<HashMap<String, usize>>>,
    tenant_sessions_max: usize,
    /// How long a session may go unused before it is closed.
    idle: std::time::Duration,
}

impl BoundSessions {
    /// Whether session `id` is the principal's (`tenant`, `subject`); if so it counts as used now.
    fn used_by(&self, id: &str, (tenant, subject): (&str, Option<&str>)) -> bool {
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        match owners.get_mut(id) {
            Some(binding) if binding.tenant == tenant && binding.subject.as_deref() == subject => {
                binding.last_used = std::time::Instant::now();
                true
            }
            _ => false,
        }
    }

    /// A seat for one more session of `tenant`, or the message saying it has them all.
    fn seat(&self, tenant: &str) -> Result<Seat, String> {
        let mut seats = self.seats.lock().unwrap_or_else(|p| p.into_inner());
        let count = seats.entry(tenant.to_string()).or_insert(0);
        if *count >= self.tenant_sessions_max {
            return Err(format!(
                "tenant {tenant} has {} live MCP sessions, its limit (mcp.tenant_sessions_max); end an idle one with \
                 DELETE or retry later",
                self.tenant_sessions_max
            ));
        }
        *count += 1;
        Ok(Seat { seats: self.seats.clone(), tenant: tenant.to_string() })
    }

    /// Close every session unused for longer than the idle limit, giving back its places.
    async fn close_idle(&self) {
        let idle: Vec<SessionId> = {
            let owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
            owners.iter().filter(|(_, b)| b.last_used.elapsed() > self.idle).map(|(id, _)| id.clone()).collect()
        };
        for id in idle {
            if let Err(e) = self.close_session(&id).await {
                tracing::debug!(session = %id, error = %e, "closing an idle MCP session failed");
            }
        }
    }
}

impl SessionManager for BoundSessions {
    type Error = LocalSessionManagerError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        self.inner.create_session().await
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<ServerJsonRpcMessage, Self::Error> {
        let parts = match &message {
            JsonRpcMessage::Request(request) => request.request.extensions().get::<axum::http::request::Parts>(),
            _ => None,
        };
        let tenant = parts.and_then(|p| p.extensions.get::<Arc<Tenant>>()).map(|t| t.name.clone());
        let subject = parts.and_then(|p| p.extensions.get::<Bearer>()).and_then(|b| b.subject.clone());
        let place = parts.and_then(|p| p.extensions.get::<SessionSlot>()).and_then(|s| s.0.lock().ok()?.take());
        let answer = self.inner.initialize_session(id, message).await?;
        if let Some(tenant) = tenant {
            let binding = Binding { tenant, subject, last_used: std::time::Instant::now(), _place: place };
            self.owners.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), binding);
        }
        Ok(answer)
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        self.inner.has_session(id).await
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        self.inner.close_session(id).await
    }

    async fn create_stream(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.create_stream(id, message).await
    }

    async fn accept_message(&self, id: &SessionId, message: ClientJsonRpcMessage) -> Result<(), Self::Error> {
        self.inner.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.create_standalone_stream(id).await
    }

    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.resume(id, last_event_id).await
    }
}
