//! Routes, authentication and error bodies.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use guild_replay::{BlobStore, Digest, DirStore, archive};
use guild_runtime::{Grants, Limits, Outcome, RunError, Runtime, Tool, egress::EgressRule};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the daemon serves and to whom.
pub struct ServerConfig {
    /// blake3 digests of the accepted bearer tokens (tokens themselves are never kept).
    pub token_digests: Vec<Digest>,
    /// Registered tools, by name.
    pub tools: Vec<Arc<Tool>>,
    /// Limits every run gets.
    pub limits: Limits,
    /// Egress rules every run gets.
    pub egress: Vec<EgressRule>,
    /// Largest request body accepted.
    pub request_bytes_max: usize,
}

/// The daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

struct AppState {
    runtime: Arc<Runtime>,
    store: Arc<DirStore>,
    tools: BTreeMap<String, Arc<Tool>>,
    token_digests: Vec<Digest>,
    limits: Limits,
    egress: Vec<EgressRule>,
}

/// An API error: a status, a stable code and a message.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

/// The router for `config`, running tools on `runtime` and serving bundles from `store`.
pub fn router(config: ServerConfig, runtime: Arc<Runtime>, store: Arc<DirStore>) -> axum::Router {
    let tools = config.tools.iter().map(|t| (t.info().name.clone(), t.clone())).collect();
    let state = Arc::new(AppState {
        runtime,
        store,
        tools,
        token_digests: config.token_digests,
        limits: config.limits,
        egress: config.egress,
    });
    axum::Router::new()
        .route("/healthz", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/v1/tools", get(list_tools))
        .route("/v1/runs", post(create_run))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/bundles/{id}", get(get_bundle))
        .layer(axum::extract::DefaultBodyLimit::max(config.request_bytes_max))
        .with_state(state)
}

/// Serve `router` on `listener` until `shutdown` resolves, then finish the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await.map_err(ServerError::Serve)
}

fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let unauthorized = || ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or invalid bearer token");
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    let presented = blake3::hash(token.trim().as_bytes());
    // blake3::Hash compares in constant time.
    if state.token_digests.iter().any(|d| blake3::Hash::from(*d.as_bytes()) == presented) {
        Ok(())
    } else {
        Err(unauthorized())
    }
}

async fn list_tools(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    authenticate(&state, &headers)?;
    let tools: Vec<serde_json::Value> = state
        .tools
        .values()
        .map(|tool| {
            let mut value = serde_json::to_value(tool.info()).unwrap_or_default();
            if let Some(object) = value.as_object_mut() {
                object.insert("component".into(), tool.digest().to_hex().into());
            }
            value
        })
        .collect();
    Ok(Json(serde_json::json!({ "tools": tools })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    tool: String,
    #[serde(default = "empty_object")]
    input: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

async fn create_run(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    authenticate(&state, &headers)?;
    let request: RunRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("the body is not a run request: {e}"))
    })?;
    let tool = state.tools.get(&request.tool).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "unknown_tool", format!("no tool named {:?} is registered", request.tool))
    })?;
    let grants = Grants { egress: state.egress.clone(), ..Grants::default() };
    let input = request.input.to_string();
    let report = state.runtime.run(tool, &input, &grants, &state.limits).await.map_err(run_error)?;
    let (status, output, error) = match &report.outcome {
        Outcome::Output { output } => ("ok", serde_json::from_str(output).unwrap_or_default(), serde_json::Value::Null),
        other => ("error", serde_json::Value::Null, serde_json::to_value(other).unwrap_or_default()),
    };
    Ok(Json(serde_json::json!({
        "status": status,
        "tool": report.tool,
        "output": output,
        "error": error,
        "bundle": report.bundle,
        "fuel_used_units": report.fuel_used_units,
        "wall_time_us": report.wall_time.as_micros() as u64,
        "egress_denials": report.egress_denials,
    })))
}

fn run_error(error: RunError) -> ApiError {
    match error {
        RunError::Denied(_) => ApiError::new(StatusCode::FORBIDDEN, "denied", error.to_string()),
        RunError::Limits(_) => ApiError::new(StatusCode::BAD_REQUEST, "bad_limits", error.to_string()),
        RunError::Busy { .. } => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", error.to_string()),
        RunError::Host(_) | RunError::Record(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "host_failure", error.to_string())
        }
    }
}

/// A finished run, read back from its bundle (the run id is the bundle id), so any node that
/// shares the store can answer.
async fn get_run(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authenticate(&state, &headers)?;
    let not_found = |e: &dyn std::fmt::Display| ApiError::new(StatusCode::NOT_FOUND, "unknown_run", e.to_string());
    let id = state.store.resolve(&id).map_err(|e| not_found(&e))?;
    let (manifest, signature) = state.store.get_bundle(&id).map_err(|e| not_found(&e))?;
    let bundle = guild_replay::Bundle::open(state.store.as_ref(), &manifest, &signature, None)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "invalid_bundle", e.to_string()))?;
    let output = match &bundle.result.output {
        Some(blob) => {
            let bytes = state
                .store
                .get(&blob.digest)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "invalid_bundle", e.to_string()))?;
            serde_json::from_slice(&bytes).unwrap_or_default()
        }
        None => serde_json::Value::Null,
    };
    Ok(Json(serde_json::json!({
        "id": bundle.id,
        "tool": bundle.action.tool.name,
        "tool_version": bundle.action.tool.version,
        "outcome": bundle.result.outcome,
        "output": output,
        "fuel_used_units": bundle.result.fuel_used_units,
        "bundle": bundle.id,
    })))
}

async fn get_bundle(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers)?;
    let not_found = |e: &dyn std::fmt::Display| ApiError::new(StatusCode::NOT_FOUND, "unknown_bundle", e.to_string());
    let id = state.store.resolve(&id).map_err(|e| not_found(&e))?;
    let (manifest, signature) = state.store.get_bundle(&id).map_err(|e| not_found(&e))?;
    let mut archive_bytes = Vec::new();
    archive::export(state.store.as_ref(), &manifest, &signature, &mut archive_bytes)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "host_failure", e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/zstd")], archive_bytes).into_response())
}
