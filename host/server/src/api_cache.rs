//! The result cache's administration routes (admin tenants only): `GET /v1/cache` — entries
//! and bytes held per cached tool, with its policy — and `DELETE /v1/cache` (every tool) or
//! `DELETE /v1/cache/{tool}`, which drop entries, audited with who did it.

use crate::api_error::{ApiError, ApiResult};
use crate::auth::Admin;
use crate::daemon::Daemon;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use guild_audit::AuditEvent;
use std::sync::Arc;

/// The cache routes.
pub(crate) fn routes() -> axum::Router<Arc<Daemon>> {
    axum::Router::new().route("/v1/cache", get(stats).delete(purge_all)).route("/v1/cache/{tool}", delete(purge_tool))
}

/// Every cached tool (the ones whose config turns caching on, and any still holding entries),
/// with what it holds: `{"tools": [{"tool", "entries", "bytes", "policy"}]}`.
async fn stats(State(daemon): State<Arc<Daemon>>, Admin(_tenant, _slot): Admin) -> ApiResult<Json<serde_json::Value>> {
    // With Redis, the fleet's shared entries; else this node's.
    let held: Vec<crate::cache::ToolCacheStats> = match daemon.remote() {
        Some(remote) => remote
            .queue
            .cache_stats()
            .await
            .map_err(unavailable)?
            .into_iter()
            .map(|s| crate::cache::ToolCacheStats {
                tool: s.tool,
                entries: usize::try_from(s.entries).unwrap_or(usize::MAX),
                bytes: s.bytes,
            })
            .collect(),
        None => daemon.cache().stats(),
    };
    let mut names: Vec<String> =
        daemon.tools().all().iter().filter(|t| t.cache.is_some()).map(|t| t.name.clone()).collect();
    names.extend(held.iter().map(|s| s.tool.clone()));
    names.sort();
    names.dedup();
    let tools: Vec<_> = names
        .iter()
        .map(|name| {
            let stats = held.iter().find(|s| &s.tool == name);
            let policy = daemon.tools().get(name).and_then(|t| t.cache.clone());
            serde_json::json!({
                "tool": name,
                "entries": stats.map_or(0, |s| s.entries),
                "bytes": stats.map_or(0, |s| s.bytes),
                "policy": policy,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "tools": tools })))
}

fn unavailable(e: guild_queue::QueueError) -> ApiError {
    ApiError {
        retry_after_s: Some(1),
        ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "queue_unavailable", format!("the shared cache: {e}"))
    }
}

/// Drop every tool's entries: `{"purged": N}`.
async fn purge_all(
    State(daemon): State<Arc<Daemon>>,
    Admin(tenant, _slot): Admin,
) -> ApiResult<Json<serde_json::Value>> {
    purge(&daemon, &tenant, None).await
}

/// Drop one tool's entries: `{"purged": N}` (0 for a tool with none, or no such tool).
async fn purge_tool(
    State(daemon): State<Arc<Daemon>>,
    Admin(tenant, _slot): Admin,
    Path(tool): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    purge(&daemon, &tenant, Some(&tool)).await
}

async fn purge(
    daemon: &Daemon,
    tenant: &crate::tenants::Tenant,
    tool: Option<&str>,
) -> ApiResult<Json<serde_json::Value>> {
    let purged = match daemon.remote() {
        Some(remote) => {
            usize::try_from(remote.queue.cache_purge(tool).await.map_err(unavailable)?).unwrap_or(usize::MAX)
        }
        None => daemon.cache().purge(tool),
    };
    let detail = match tool {
        Some(tool) => format!("{purged} entries of tool {tool}"),
        None => format!("{purged} entries of every tool"),
    };
    let event = AuditEvent { kind: "cache_purged".into(), actor: tenant.name.clone(), detail };
    daemon.record_event(event, tool.unwrap_or("*"), &tenant.name).await.map_err(|e| ApiError {
        retry_after_s: Some(1),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            format!("the purge was done, and its audit record failed: {e}"),
        )
    })?;
    Ok(Json(serde_json::json!({ "purged": purged })))
}
