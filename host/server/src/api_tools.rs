//! The tool administration routes (admin tenants only): revisions, the rollout (check, start,
//! promote, rollback, status) and flags of a tool name. Every change answers with the tool's
//! record as it now stands, and is audited with who did it and why.

use crate::api_error::{ApiError, ApiResult, too_large};
use crate::auth::Admin;
use crate::daemon::Daemon;
use crate::registry::Named;
use crate::registry::RegisteredTool;
use crate::rollout::{Actor, ChangeError};
use crate::tenants::Tenant;
use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use guild_vocab::rollout::percent_to_bp;
use guild_vocab::{Candidate, GuardRails};
use serde::Deserialize;
use std::sync::Arc;

/// The header that carries a note for an uploaded revision.
pub(crate) const NOTE_HEADER: &str = "guild-note";

/// The tool administration routes.
pub(crate) fn routes(component_bytes_max: usize) -> axum::Router<Arc<Daemon>> {
    axum::Router::new()
        .route(
            "/v1/tools/{name}/revisions",
            get(revisions).post(upload_revision).layer(DefaultBodyLimit::max(component_bytes_max)),
        )
        .route("/v1/tools/{name}/rollout", get(rollout_status).post(start_rollout))
        .route("/v1/tools/{name}/rollout/check", post(check))
        .route("/v1/tools/{name}/rollout/promote", post(promote))
        .route("/v1/tools/{name}/rollout/rollback", post(rollback))
        .route("/v1/tools/{name}/flags", get(flags).put(set_flags))
}

pub(crate) fn describe_tool(tool: &RegisteredTool) -> serde_json::Value {
    let mut value = serde_json::to_value(tool.tool.info()).expect("tool info is plain data");
    if let Some(object) = value.as_object_mut() {
        object.insert("name".into(), tool.name.clone().into());
        object.insert("component".into(), tool.tool.digest().to_hex().into());
        object.insert("limits".into(), serde_json::to_value(&tool.limits).expect("limits are plain data"));
        object.insert("description".into(), tool.description().into());
        if let Some(setup) = tool.command_setup() {
            object.insert("command".into(), setup);
        }
    }
    value
}

fn change_error(error: ChangeError) -> ApiError {
    let status = match &error {
        ChangeError::Unknown(_) => StatusCode::NOT_FOUND,
        ChangeError::Rollout(guild_vocab::RolloutError::NoRevision { .. }) => StatusCode::NOT_FOUND,
        ChangeError::Rollout(guild_vocab::RolloutError::Invalid(_)) => StatusCode::BAD_REQUEST,
        ChangeError::Rollout(_) | ChangeError::Contended(_) | ChangeError::Gate(_) => StatusCode::CONFLICT,
        ChangeError::Store(_) | ChangeError::NotAudited(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, error.code(), error.to_string())
}

fn unknown(name: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unknown_tool", format!("no tool named {name:?} is registered"))
}

fn named(daemon: &Daemon, name: &str) -> ApiResult<Arc<Named>> {
    daemon.tools().named(name).ok_or_else(|| unknown(name))
}

/// A JSON request body (any content type: scripts often send none). An empty body is `{}`.
fn json_body<T: serde::de::DeserializeOwned>(body: Result<axum::body::Bytes, BytesRejection>) -> ApiResult<T> {
    let body = body.map_err(|e| too_large(e, "the default request body limit", 2 << 20))?;
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &body };
    serde_json::from_slice(text).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", format!("the body is not the JSON this route takes: {e}"))
    })
}

/// A name's record as the API shows it: revisions (with which are loaded here), current,
/// candidate, flags, generation.
fn record_body(named: &Named) -> serde_json::Value {
    let mut body = serde_json::to_value(&named.record).expect("a tool record is plain data");
    if let Some(revisions) = body.get_mut("revisions").and_then(|r| r.as_array_mut()) {
        for (shown, revision) in revisions.iter_mut().zip(&named.record.revisions) {
            let n = revision.revision;
            let state = if n == named.record.current {
                "current"
            } else if named.record.candidate.as_ref().is_some_and(|c| c.revision == n) {
                "candidate"
            } else if revision.rolled_back.is_some() {
                "rolled_back"
            } else {
                "available"
            };
            shown["state"] = state.into();
            shown["loaded"] = named.revision(n).is_some().into();
        }
    }
    body
}

/// `POST /v1/tools` and `POST /v1/tools/{name}/revisions`: add a component as a revision of
/// `name` (or of the name its `describe` gives). 201 with the tool when the revision is new,
/// 200 when the name already had that component.
pub(crate) async fn add_revision(
    daemon: &Arc<Daemon>,
    tenant: &Tenant,
    name: Option<String>,
    headers: &HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = body.map_err(|e| too_large(e, "component_bytes_max", daemon.component_bytes_max()))?;
    let note = headers.get(NOTE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let (tool, _) = daemon
        .runtime()
        .load(&body)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_component", e.to_string()))?;
    let name = name.unwrap_or_else(|| tool.info().name.clone());
    let actor = Actor { name: &tenant.name, reason: &note };
    let (revision, added, named) = daemon.add_revision(&name, &tool, &body, &actor).await.map_err(change_error)?;
    tracing::info!(tenant = %tenant.name, tool = %name, revision, added, component = %tool.digest(), "tool revision uploaded");
    let registered = named.revision(revision).unwrap_or_else(|| named.current());
    let mut body = describe_tool(registered);
    body["revision"] = revision.into();
    body["current_revision"] = named.record.current.into();
    let status = if added { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(body)).into_response())
}

async fn upload_revision(
    State(daemon): State<Arc<Daemon>>,
    Admin(tenant, _slot): Admin,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> ApiResult<Response> {
    add_revision(&daemon, &tenant, Some(name), &headers, body).await
}

async fn revisions(
    State(daemon): State<Arc<Daemon>>,
    Admin(_tenant, _slot): Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let named = named(&daemon, &name)?;
    Ok(Json(record_body(&named)))
}

async fn rollout_status(
    State(daemon): State<Arc<Daemon>>,
    Admin(_tenant, _slot): Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    rollout_state(&daemon, &name).map(Json).ok_or_else(|| unknown(&name))
}

/// Tool `name`'s revisions, flags and rollout with its guard window and shadow samples, as
/// `GET /v1/tools/{name}/rollout` shows them to an admin; `None` for no such tool.
pub(crate) fn rollout_state(daemon: &Daemon, name: &str) -> Option<serde_json::Value> {
    let named = daemon.tools().named(name)?;
    let mut body = record_body(&named);
    body["window"] = serde_json::to_value(daemon.rollout().guards.stats(name)).expect("plain data");
    body["shadow"] = serde_json::to_value(daemon.rollout().shadows.samples(name)).expect("plain data");
    Some(body)
}

/// Which revision a request names: its component digest or its number.
fn resolve(named: &Named, candidate: &str) -> ApiResult<u32> {
    let wanted = candidate.to_ascii_lowercase();
    let found = match candidate.parse::<u32>() {
        Ok(n) if named.record.revision(n).is_some() => Some(n),
        // A digest, or a prefix of at least 8 hex digits that names one revision.
        _ if wanted.len() >= 8 && wanted.bytes().all(|b| b.is_ascii_hexdigit()) => {
            let mut matching = named.record.revisions.iter().filter(|r| r.component.starts_with(&wanted));
            match (matching.next(), matching.next()) {
                (Some(one), None) => Some(one.revision),
                _ => None,
            }
        }
        _ => None,
    };
    found.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_revision",
            format!(
                "tool {:?} has no revision {candidate:?} (give a revision's number, or its component digest or a \
                 unique prefix of 8 or more hex digits; add a component with `guild tool upload`)",
                named.record.name
            ),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    /// The candidate: a revision's component digest or number.
    candidate: String,
    /// Share of calls it answers, percent.
    #[serde(default)]
    percent: f64,
    /// Share of the current revision's calls it shadows, percent.
    #[serde(default)]
    shadow_percent: f64,
    /// Only these tenants' calls.
    #[serde(default)]
    tenants: Vec<String>,
    /// Start even though the gate fails (audited).
    #[serde(default)]
    force: bool,
    /// Replace another revision that is the candidate now.
    #[serde(default)]
    replace: bool,
    /// Why, for the audit record.
    #[serde(default)]
    reason: String,
    /// Guard rails other than the defaults.
    #[serde(default)]
    guard: Option<GuardRails>,
}

async fn start_rollout(
    State(daemon): State<Arc<Daemon>>,
    Admin(tenant, _slot): Admin,
    Path(name): Path<String>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let body: StartBody = json_body(body)?;
    let named = named(&daemon, &name)?;
    let revision = resolve(&named, &body.candidate)?;
    if let Some(other) = named.record.candidate.as_ref().filter(|c| c.revision != revision)
        && !body.replace
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "revision {} is the candidate now; roll it back first, or replace it with --replace (\"replace\": true)",
                other.revision
            ),
        ));
    }
    let bad = |e: guild_vocab::RolloutError| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string());
    let ramp_bp = percent_to_bp("percent", body.percent).map_err(bad)?;
    let shadow_bp = percent_to_bp("shadow_percent", body.shadow_percent).map_err(bad)?;
    if let Some(unknown) = body.tenants.iter().find(|t| !daemon.tenants().iter().any(|k| &k.name == *t)) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_tenant",
            format!("no tenant is named {:?}", unknown.chars().take(128).collect::<String>()),
        ));
    }
    let actor = Actor { name: &tenant.name, reason: &body.reason };
    // A shadow-only rollout answers no caller: it needs no gate (the shadow is the check).
    let (gate_report, passed) = if ramp_bp == 0 {
        (None, true)
    } else {
        let gate = daemon.check_revision(&name, revision, None, None, &actor).await.map_err(change_error)?;
        if !gate.passed && !body.force {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "gate_failed",
                format!(
                    "revision {revision} fails the replay gate (report {}): {}; see `guild rollout check`, or start it with --force (\"force\": true; audited)",
                    gate.report_digest,
                    gate.failures.join("; ")
                ),
            ));
        }
        (Some(gate.report_digest.to_hex()), gate.passed)
    };
    let candidate = Candidate {
        revision,
        ramp_bp,
        shadow_bp,
        tenants: body.tenants,
        started_unix_ms: guild_queue::now_unix_ms(),
        started_by: tenant.name.clone(),
        gate_report,
        forced: !passed,
        guard: body.guard.unwrap_or_default(),
    };
    let named = daemon.start_rollout(&name, candidate, &actor).await.map_err(change_error)?;
    Ok(Json(record_body(&named)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    /// The candidate: a revision's component digest or number.
    candidate: String,
    /// How many of the newest recorded runs.
    #[serde(default)]
    last: Option<u64>,
    /// Only runs recorded within this many seconds.
    #[serde(default)]
    since_s: Option<u64>,
    /// Why, for the audit record.
    #[serde(default)]
    reason: String,
}

async fn check(
    State(daemon): State<Arc<Daemon>>,
    Admin(tenant, _slot): Admin,
    Path(name): Path<String>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let body: CheckBody = json_body(body)?;
    let named = named(&daemon, &name)?;
    let revision = resolve(&named, &body.candidate)?;
    let actor = Actor { name: &tenant.name, reason: &body.reason };
    let gate = daemon.check_revision(&name, revision, body.last, body.since_s, &actor).await.map_err(change_error)?;
    let table = gate.report.table();
    let mut answer = serde_json::to_value(&gate.report).expect("a gate report is plain data");
    answer["passed"] = gate.passed.into();
    answer["failures"] = serde_json::to_value(&gate.failures).expect("plain data");
    answer["report"] = gate.report_digest.to_hex().into();
    answer["signature"] = gate.signature_digest.to_hex().into();
    answer["candidate_revision"] = gate.candidate_revision.into();
    answer["current_revision"] = gate.current_revision.into();
    answer["table"] = table.into();
    Ok(Json(answer))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    #[serde(default)]
    force: bool,
    #[serde(default)]
    reason: String,
}

async fn promote(
    State(daemon): State<Arc<Daemon>>,
    Admin(tenant, _slot): Admin,
    Path(name): Path<String>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let body: PromoteBody = json_body(body)?;
    named(&daemon, &name)?;
    let actor = Actor { name: &tenant.name, reason: &body.reason };
    let named = daemon.promote(&name, body.force, &actor).await.map_err(change_error)?;
    Ok(Json(record_body(&named)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    /// Make this revision (digest or number) current at once; without: end the candidate's ramp.
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    reason: String,
}

async fn rollback(
    State(daemon): State<Arc<Daemon>>,
    Admin(tenant, _slot): Admin,
    Path(name): Path<String>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let body: RollbackBody = json_body(body)?;
    let named = named(&daemon, &name)?;
    let to = body.to.as_deref().map(|to| resolve(&named, to)).transpose()?;
    let actor = Actor { name: &tenant.name, reason: &body.reason };
    let named = daemon.rollback(&name, to, &actor, "admin").await.map_err(change_error)?;
    Ok(Json(record_body(&named)))
}

async fn flags(
    State(daemon): State<Arc<Daemon>>,
    Admin(_tenant, _slot): Admin,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let named = named(&daemon, &name)?;
    Ok(Json(serde_json::to_value(&named.record.flags).expect("flags are plain data")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagsBody {
    /// Switch the tool off (`true`) or back on.
    disabled: bool,
    /// Only for this tenant; without: for everyone.
    #[serde(default)]
    tenant: Option<String>,
    /// What callers are told (and the audit record keeps).
    #[serde(default)]
    reason: String,
}

async fn set_flags(
    State(daemon): State<Arc<Daemon>>,
    Admin(tenant, _slot): Admin,
    Path(name): Path<String>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let body: FlagsBody = json_body(body)?;
    named(&daemon, &name)?;
    if body.disabled && body.reason.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "say why the tool is disabled (--reason, `reason`): callers are told",
        ));
    }
    if let Some(who) = &body.tenant
        && !daemon.tenants().iter().any(|t| &t.name == who)
    {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_tenant", format!("no tenant is named {who:?}")));
    }
    let actor = Actor { name: &tenant.name, reason: &body.reason };
    let named = daemon.set_flag(&name, body.tenant.as_deref(), body.disabled, &actor).await.map_err(change_error)?;
    Ok(Json(serde_json::to_value(&named.record.flags).expect("flags are plain data")))
}
