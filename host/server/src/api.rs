//! Routes and error bodies; the caller is authenticated before its body is read, by the
//! extractors in `auth.rs`. Every error is `{"error": {"code", "message"}}`
//! (plus `field` for invalid input) with a stable code; 429 and 503 carry `Retry-After`.

use crate::api_error::{ApiError, ApiResult, too_large};
use crate::api_tools::describe_tool;
use crate::auth::{Admin, Caller, ErrorCode};
use crate::daemon::{Daemon, Rejection, RunRequest, Submitted};
use crate::principal::Owner;
use crate::runs::{Finished, FinishedBody, RunBody, RunEntry, RunState};
use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use guild_queue::QueueError;
use guild_replay::Digest;
use guild_runtime::FailureCode;
use serde::Deserialize;
use std::sync::Arc;

/// The OpenAPI document of this API (kept in the repo beside the code).
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

async fn count_errors(
    State(daemon): State<Arc<Daemon>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
        daemon.metrics().api_errors.with_label_values(&[code]).inc();
    }
    response
}

/// The request's server span (OpenTelemetry HTTP conventions: `{method} {route}`), a child of
/// the caller's W3C `traceparent` when it sent one. Probes and scrapes are not traced; while
/// tracing is off nothing is read or allocated.
async fn traced(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if !guild_telemetry::exporting() {
        return next.run(request).await;
    }
    let route = request.extensions().get::<axum::extract::MatchedPath>().cloned();
    let route = route.as_ref().map_or("", axum::extract::MatchedPath::as_str);
    // Probes and scrapes are not traced; an MCP request's server span is its `tools/call`
    // span, which takes this request's context (its `_meta`'s first).
    if matches!(route, "/healthz" | "/readyz" | "/metrics" | "/mcp") {
        return next.run(request).await;
    }
    let headers = request.headers();
    let caller = guild_telemetry::TraceContext::from_fields(|name| headers.get(name)?.to_str().ok());
    let traced = guild_telemetry::root(caller.as_ref(), "request", || {
        guild_telemetry::span!(
            "request",
            otel.name = %format_args!("{} {route}", request.method()),
            otel.kind = "server",
            http.request.method = %request.method(),
            http.route = %route,
            url.path = guild_telemetry::clip(request.uri().path()),
            http.response.status_code = tracing::field::Empty,
            error.r#type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    });
    let response = traced.clone().scope(next.run(request)).await;
    let span = traced.span();
    span.record("http.response.status_code", response.status().as_u16());
    if response.status().is_server_error() {
        span.record("error.type", response.status().as_str());
        span.record("otel.status_code", "ERROR");
    }
    response
}

/// The router over `daemon`.
pub fn router(daemon: Arc<Daemon>) -> axum::Router {
    let component_bytes_max = daemon.component_bytes_max();
    let request_bytes_max = daemon.request_bytes_max();
    let mut routes = axum::Router::new()
        .route("/healthz", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON) }))
        .route("/v1/tools", get(list_tools))
        .route("/v1/tools", post(upload_tool).layer(DefaultBodyLimit::max(component_bytes_max)))
        .merge(crate::api_tools::routes(component_bytes_max))
        .merge(crate::api_cache::routes())
        .route("/v1/runs", post(create_run).layer(DefaultBodyLimit::max(request_bytes_max)))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/bundles/{id}", get(get_bundle))
        .route("/v1/usage", get(get_usage))
        .merge(crate::mcp_http::mcp_router(daemon.clone()))
        .merge(crate::console::routes());
    // RFC 9728: where clients learn which issuer's tokens this server takes, for which scopes.
    for path in daemon.oauth().map(crate::oauth::OAuth::metadata_paths).unwrap_or_default() {
        routes = routes.route(&path, get(protected_resource));
    }
    routes
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route; see /openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route takes another method")
        })
        .layer(axum::middleware::from_fn_with_state(daemon.clone(), count_errors))
        .layer(axum::middleware::from_fn(traced))
        .with_state(daemon)
}

/// `GET /v1/usage`'s query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    tenant: Option<String>,
    tool: Option<String>,
    agent: Option<String>,
    /// Seconds since the Unix epoch.
    from: Option<u64>,
    /// Seconds since the Unix epoch.
    to: Option<u64>,
    group_by: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

/// `GET /v1/usage?tenant=&tool=&agent=&from=&to=&group_by=&format=`: what runs cost, from the usage
/// ledger. A caller sees its own tenant's (an access token only its own subject's runs); an
/// admin's static token any tenant's, or all of them.
async fn get_usage(
    State(daemon): State<Arc<Daemon>>,
    Caller(tenant, _slot, bearer): Caller,
    query: Result<axum::extract::Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message);
    let axum::extract::Query(q) = query.map_err(|e| bad(format!("the query is not a usage question: {e}")))?;
    let group = crate::usage::GroupBy::parse(q.group_by.as_deref().unwrap_or_default()).map_err(bad)?;
    let everyone = tenant.admin && bearer.subject.is_none();
    let filter = crate::usage::Filter {
        // Another tenant's usage, asked by a non-admin, is answered as none: as for a tenant
        // nobody has.
        tenant: if everyone { q.tenant.clone() } else { Some(tenant.name.clone()) },
        subject: bearer.subject.clone(),
        tool: q.tool,
        agent: q.agent,
        from_unix_s: q.from,
        to_unix_s: q.to,
    };
    let foreign = !everyone && q.tenant.as_ref().is_some_and(|t| *t != tenant.name);
    let rows = match foreign {
        true => Vec::new(),
        false => {
            let tenants: Vec<String> = daemon.tenants().iter().map(|t| t.name.clone()).collect();
            daemon.usage().answer(&filter, group, &tenants).await.map_err(|message| ApiError {
                retry_after_s: Some(1),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "queue_unavailable", message)
            })?
        }
    };
    match q.format.as_deref().unwrap_or("json") {
        "json" => Ok(Json(serde_json::json!({ "rows": rows })).into_response()),
        "csv" => Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], crate::usage::csv(&rows)).into_response()),
        other => Err(bad(format!("format {other:?} is not json or csv"))),
    }
}

/// `GET /.well-known/oauth-protected-resource`: the protected-resource metadata (with `[oauth]`).
async fn protected_resource(State(daemon): State<Arc<Daemon>>) -> Response {
    match daemon.oauth() {
        Some(oauth) => Json(oauth.metadata()).into_response(),
        None => ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route; see /openapi.json").into_response(),
    }
}

async fn readyz(State(daemon): State<Arc<Daemon>>) -> Response {
    let mut problems = Vec::new();
    if daemon.is_draining() {
        problems.push("draining: the daemon is shutting down".to_string());
    }
    if !daemon.audit().is_running() {
        problems.push("the audit log writer has stopped".to_string());
    }
    if let Err(e) = std::fs::metadata(daemon.store().root()) {
        problems.push(format!("the bundle store is not reachable: {e}"));
    }
    if let Some(remote) = daemon.remote()
        && let Err(e) = remote.queue.ping().await
    {
        problems.push(e.to_string());
    }
    if problems.is_empty() {
        Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "status": "not_ready", "problems": problems })))
            .into_response()
    }
}

async fn metrics(State(daemon): State<Arc<Daemon>>, headers: HeaderMap) -> Response {
    daemon.metrics().queue_depth.set(daemon.queue().depth() as i64);
    daemon.metrics().runs_in_flight.set(daemon.queue().in_flight() as i64);
    for tool in daemon.cache().stats() {
        daemon.metrics().cache.entries.with_label_values(&[&tool.tool]).set(tool.entries as i64);
        daemon
            .metrics()
            .cache
            .bytes
            .with_label_values(&[&tool.tool])
            .set(i64::try_from(tool.bytes).unwrap_or(i64::MAX));
    }
    daemon.metrics().show_breakers(&daemon.runtime().breaker_states());
    if let Some(remote) = daemon.remote() {
        match remote.queue.stats().await {
            Ok(stats) => daemon.metrics().redis.set(&stats),
            Err(_) => daemon.metrics().redis.up.set(0),
        }
    }
    // OpenMetrics (with exemplars) for a scraper that asks for it; else text 0.0.4.
    let accepts = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if accepts.contains("application/openmetrics-text") {
        let text = daemon.metrics().render_openmetrics();
        return ([(header::CONTENT_TYPE, crate::openmetrics::CONTENT_TYPE)], text).into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], daemon.metrics().render()).into_response()
}

async fn list_tools(
    State(daemon): State<Arc<Daemon>>,
    Caller(tenant, _slot, bearer): Caller,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(serde_json::json!({ "tools": tool_listing(&daemon, &tenant, &bearer) })))
}

/// The tools `tenant` (through `bearer`) may call, as `GET /v1/tools` lists them.
pub(crate) fn tool_listing(
    daemon: &Daemon,
    tenant: &crate::tenants::Tenant,
    bearer: &crate::principal::Bearer,
) -> Vec<serde_json::Value> {
    daemon
        .tools()
        .names()
        .iter()
        .filter(|n| tenant.tools.allows(&n.record.name) && bearer.may_call(&n.record.name))
        .map(|n| {
            let mut body = describe_tool(n.current());
            body["revision"] = n.record.current.into();
            if let Some(disabled) = n.record.disabled_for(&tenant.name) {
                body["disabled"] = disabled.reason.clone().into();
            }
            // What its grants let it do, as MCP's annotations say it.
            if let Some(annotations) = crate::mcp_shapes::annotations(n.current()) {
                body["annotations"] = serde_json::to_value(annotations).unwrap_or_default();
            }
            // Whether identical calls are answered from earlier runs, and for how long.
            if let Some(policy) = &n.current().cache {
                body["cache"] = serde_json::json!({ "ttl_s": policy.ttl_s });
            }
            body
        })
        .collect()
}

async fn upload_tool(
    State(daemon): State<Arc<Daemon>>,
    Admin(tenant, _slot): Admin,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> ApiResult<Response> {
    crate::api_tools::add_revision(&daemon, &tenant, None, &headers, body).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequestBody {
    tool: String,
    #[serde(default = "empty_object")]
    input: serde_json::Value,
    #[serde(default, rename = "async")]
    asynchronous: bool,
    #[serde(default)]
    idempotency_key: Option<String>,
    /// The caller's agent label (or the `Guild-Agent` header).
    #[serde(default)]
    agent: Option<String>,
    /// 0 to 9, higher first; none: the tenant's.
    #[serde(default)]
    priority: Option<u8>,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

/// Longest idempotency key accepted.
const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;

/// A `POST /v1/runs` body (and the `Idempotency-Key` and `Guild-Agent` headers) as a run request.
pub(crate) fn parse_run_request(
    body: &[u8],
    (header_key, header_agent): (Option<&str>, Option<&str>),
) -> ApiResult<RunRequest> {
    let body: RunRequestBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("the body is not a run request: {e}"))
    })?;
    let idempotency_key = body.idempotency_key.or(header_key.map(str::to_string));
    if idempotency_key.as_ref().is_some_and(|k| k.is_empty() || k.len() > IDEMPOTENCY_KEY_BYTES_MAX) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("an idempotency key must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes"),
        ));
    }
    if let (Some(body), Some(header)) = (&body.agent, header_agent)
        && body != header
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the body names agent {body:?} and the Guild-Agent header {header:?}; give one"),
        ));
    }
    let agent = body.agent.or(header_agent.map(str::to_string));
    if let Some(agent) = &agent {
        guild_queue::check_agent_label(agent).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e))?;
    }
    if let Some(priority) = body.priority
        && priority > guild_queue::PRIORITY_MAX
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("priority {priority}: use 0 to {}", guild_queue::PRIORITY_MAX),
        ));
    }
    Ok(RunRequest {
        priority: body.priority,
        tool: body.tool,
        input: body.input,
        asynchronous: body.asynchronous,
        idempotency_key,
        cancel: None,
        subject: None,
        agent,
    })
}

async fn create_run(
    State(daemon): State<Arc<Daemon>>,
    Caller(tenant, _slot, bearer): Caller,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = body.map_err(|e| too_large(e, "request_bytes_max", daemon.request_bytes_max()))?;
    let header_key = headers.get("idempotency-key").and_then(|v| v.to_str().ok());
    let header_agent = headers.get("guild-agent").map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let mut request = parse_run_request(&body, (header_key, header_agent))?;
    if !bearer.may_call(&request.tool) {
        let tool = request.tool.clone();
        return Ok(crate::auth::scope_missing(&daemon, |o| o.scope_tool(&tool)).into_response());
    }
    request.subject = bearer.subject;
    let submitted = daemon.submit(&tenant, request).await.map_err(rejection)?;
    let daemon = &daemon;
    Ok(match submitted {
        Submitted::Finished { entry, finished, output } => {
            if let Some(error) = not_started(&finished) {
                return Err(error);
            }
            Json(run_body(&entry, &RunState::Finished(finished), output)).into_response()
        }
        Submitted::Accepted { entry, replayed } => {
            let state = entry.state.borrow().clone();
            let mut response = (StatusCode::ACCEPTED, Json(run_body(&entry, &state, None))).into_response();
            response.headers_mut().insert(header::LOCATION, location(&entry.id));
            if replayed {
                response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            response
        }
        Submitted::Replayed { entry, finished, output } => {
            let output = output.or_else(|| crate::bundles::read_output(daemon, &finished));
            let mut response = Json(run_body(&entry, &RunState::Finished(finished), output)).into_response();
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            response
        }
    })
}

fn location(id: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("/v1/runs/{id}")).unwrap_or_else(|_| HeaderValue::from_static("/v1/runs"))
}

/// A run that never started (denied, bad limits, host failure) answers with its own status.
fn not_started(finished: &Finished) -> Option<ApiError> {
    let failure = finished.error.as_ref()?;
    let message = failure.message.clone();
    let status = match failure.code {
        FailureCode::Denied => StatusCode::FORBIDDEN,
        FailureCode::BadLimits => StatusCode::BAD_REQUEST,
        FailureCode::Busy => StatusCode::TOO_MANY_REQUESTS,
        FailureCode::HostFailure => StatusCode::INTERNAL_SERVER_ERROR,
        _ => return None,
    };
    let code = failure.code.as_str();
    let retry_after_s = (status == StatusCode::TOO_MANY_REQUESTS).then_some(1);
    Some(ApiError { retry_after_s, ..ApiError::new(status, code, message) })
}

fn rejection(rejection: Rejection) -> ApiError {
    match rejection {
        Rejection::Forbidden(message) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", message),
        Rejection::UnknownTool(name) => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_tool", format!("no tool named {name:?} is registered"))
        }
        Rejection::InvalidInput(invalid) => ApiError {
            field: Some(invalid.field.clone()),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", invalid.describe())
        },
        Rejection::KeyConflict { key, run } => ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            format!("idempotency key {key:?} already names run {run}, of a different request; use a new key"),
        ),
        Rejection::Tenant { tenant, refusal } => ApiError {
            retry_after_s: Some(refusal.retry_after_s()),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, refusal.code(), refusal.message(&tenant))
        },
        Rejection::Disabled { tool, reason } => ApiError::new(
            StatusCode::FORBIDDEN,
            "tool_disabled",
            format!("tool {tool:?} is disabled by the operator: {reason}"),
        ),
        Rejection::Queue(full) if full.draining => ApiError {
            retry_after_s: Some(full.retry_after_s),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "the daemon is shutting down; retry on another node",
            )
        },
        Rejection::Queue(full) => ApiError {
            retry_after_s: Some(full.retry_after_s),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                format!("the run queue is full ({} waiting); retry after {} s", full.depth, full.retry_after_s),
            )
        },
        Rejection::Unavailable { message, retry_after_s } => ApiError {
            retry_after_s: Some(retry_after_s),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "queue_unavailable", message)
        },
        rejection @ Rejection::NoCapableWorker { .. } => ApiError {
            retry_after_s: Some(5),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "waiting_for_capability",
                crate::mcp_shapes::rejection_message(rejection),
            )
        },
    }
}

/// The JSON a client sees for a run in this node's table, with the tool's output text.
fn run_body<'a>(entry: &'a RunEntry, state: &'a RunState, output: Option<String>) -> RunBody<'a> {
    let finished = match state {
        RunState::Finished(finished) => Some(FinishedBody::new(finished, output)),
        _ => None,
    };
    RunBody { id: &entry.id, status: state.word(), tool: &entry.tool, attempts: None, waiting_for: None, finished }
}

async fn get_run(
    State(daemon): State<Arc<Daemon>>,
    Caller(tenant, _slot, bearer): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    // Another tenant's run is answered exactly like one that does not exist.
    let unknown = || ApiError::new(StatusCode::NOT_FOUND, "unknown_run", "no such run is known to this node");
    let Some(entry) = daemon.runs().get(&id) else {
        // With --redis, any node answers for any job.
        let Some(remote) = daemon.remote() else { return Err(unknown()) };
        let status = match remote.queue.status(&id).await {
            Ok(status) => status.ok_or_else(unknown)?,
            // Unreadable, and nothing left says whose: answered as absent, to everyone.
            Err(QueueError::Corrupt(_)) => return Err(unknown()),
            Err(e) => return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "queue_unavailable", e.to_string())),
        };
        let owner = Owner { tenant: &status.tenant, subject: status.subject.as_deref() };
        daemon.authorize((&tenant, &bearer), Some(owner), "run", &id).await.map_err(|e| refused(e, unknown()))?;
        if let Some(reason) = &status.unreadable_result {
            let message = format!("the job finished, but this node cannot read its result ({reason})");
            return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "unreadable_result", message));
        }
        let body = crate::remote::run_body(&id, &status);
        return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
    };
    daemon.authorize((&tenant, &bearer), Some(entry.owner()), "run", &id).await.map_err(|e| refused(e, unknown()))?;
    let state = entry.state.borrow().clone();
    let output = match &state {
        RunState::Finished(finished) => crate::bundles::read_output(&daemon, finished),
        _ => None,
    };
    Ok(Json(run_body(&entry, &state, output)).into_response())
}

/// Why a caller may not see something: hidden (the same 404 as for nothing), or an admin's
/// look that could not be audited.
fn refused(error: crate::daemon::Hidden, unknown: ApiError) -> ApiError {
    match error {
        crate::daemon::Hidden::NotTheirs => unknown,
        crate::daemon::Hidden::NotAudited(message) => ApiError {
            retry_after_s: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                format!("an admin's read of another tenant's data is audited, and the audit log failed: {message}"),
            )
        },
    }
}

async fn get_bundle(
    State(daemon): State<Arc<Daemon>>,
    Caller(tenant, _slot, bearer): Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    // The same 404 for a malformed id, an id no node knows and another tenant's bundle. Only
    // full ids: a prefix would let a caller search the store.
    let unknown = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_bundle",
            "no such bundle is known to this node (bundles are named by their full 64-hex id, as runs return it)",
        )
    };
    let failed = |e: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "host_failure", e);
    let digest: Digest = id.parse().map_err(|_| unknown())?;
    let bundle = crate::bundles::find(&daemon, &digest).await.map_err(|e| match e {
        crate::bundles::FindError::Unavailable(message) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "queue_unavailable", message)
        }
        crate::bundles::FindError::Failed(message) => failed(message),
    })?;
    let bundle = bundle.ok_or_else(unknown)?;
    let owner = bundle.owner().await.map_err(failed)?;
    let owner = owner.as_ref().map(Owner::of_principal);
    daemon.authorize((&tenant, &bearer), owner, "bundle", &id).await.map_err(|e| refused(e, unknown()))?;
    Ok(bundle.stream())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document in the repo names every route the router serves, with the same methods.
    #[test]
    fn openapi_document_covers_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let routes = [
            ("/healthz", "get"),
            ("/readyz", "get"),
            ("/metrics", "get"),
            ("/openapi.json", "get"),
            ("/v1/tools", "get"),
            ("/v1/tools", "post"),
            ("/v1/tools/{name}/revisions", "get"),
            ("/v1/tools/{name}/revisions", "post"),
            ("/v1/tools/{name}/rollout", "get"),
            ("/v1/tools/{name}/rollout", "post"),
            ("/v1/tools/{name}/rollout/check", "post"),
            ("/v1/tools/{name}/rollout/promote", "post"),
            ("/v1/tools/{name}/rollout/rollback", "post"),
            ("/v1/tools/{name}/flags", "get"),
            ("/v1/tools/{name}/flags", "put"),
            ("/v1/runs", "post"),
            ("/v1/runs/{id}", "get"),
            ("/v1/bundles/{id}", "get"),
            ("/v1/cache", "get"),
            ("/v1/cache", "delete"),
            ("/v1/cache/{tool}", "delete"),
            ("/v1/usage", "get"),
            ("/mcp", "post"),
        ];
        for (path, method) in routes {
            assert!(doc["paths"][path][method].is_object(), "openapi.json lacks {method} {path}");
        }
        let documented: usize = doc["paths"]
            .as_object()
            .map(|p| p.values().map(|m| m.as_object().map_or(0, |m| m.len())).sum())
            .unwrap_or(0);
        assert_eq!(documented, routes.len(), "openapi.json documents a route the router does not serve");
    }
}
