//! Bundles as MCP resources: each run's signed bundle is `guild://bundles/{id}`, readable only
//! by the tenant it ran for (an admin's read of another's is audited first, as over REST).
//! `resources/list` pages the caller's newest runs on this node, `MCP_RESOURCES_PAGE_MAX` at a
//! time; `resources/read` answers the bundle's summary as JSON and, when it fits in
//! `MCP_BUNDLE_BLOB_BYTES_MAX`, its `.tar.zst` archive (what `guild replay` takes) as a blob —
//! a larger one is fetched with `GET /v1/bundles/{id}`, which streams it.

use crate::bundles::{FindError, find};
use crate::daemon::{Daemon, Hidden};
use crate::principal::Bearer;
use crate::principal::Owner;
use crate::tenants::Tenant;
use base64::Engine;
use guild_replay::Digest;
use rmcp::ErrorData;
use rmcp::model::{ListResourcesResult, ReadResourceResult, Resource, ResourceContents};

/// What every bundle's URI starts with.
pub const BUNDLE_URI_PREFIX: &str = "guild://bundles/";
/// Resources one `resources/list` page holds.
pub const MCP_RESOURCES_PAGE_MAX: usize = 100;
/// Largest bundle archive a `resources/read` carries inline (base64 in the answer), bytes.
pub const MCP_BUNDLE_BLOB_BYTES_MAX: usize = 8 * 1024 * 1024;

/// The caller's newest runs that sealed a bundle, after `cursor` (a run id the page before
/// ended with).
///
/// # Errors
/// `invalid_params` for a cursor that names no run of the caller's here (any more).
pub(crate) fn list(
    daemon: &Daemon,
    (tenant, bearer): (&Tenant, &Bearer),
    cursor: Option<String>,
) -> Result<ListResourcesResult, ErrorData> {
    let runs = daemon
        .runs()
        .recent_bundles(|owner| bearer.owns(tenant, owner), cursor.as_deref(), MCP_RESOURCES_PAGE_MAX + 1)
        .ok_or_else(|| ErrorData::invalid_params("the cursor names no run this node still lists; list again", None))?;
    let more = runs.len() > MCP_RESOURCES_PAGE_MAX;
    let page: Vec<_> = runs.into_iter().take(MCP_RESOURCES_PAGE_MAX).collect();
    let next = if more { page.last().map(|(entry, _)| entry.id.clone()) } else { None };
    let resources = page
        .iter()
        .filter_map(|(entry, finished)| {
            let bundle = finished.bundle?;
            let mut resource =
                Resource::new(format!("{BUNDLE_URI_PREFIX}{bundle}"), format!("{} run {}", entry.tool, entry.id))
                    .with_description(format!("the signed replay bundle of run {} ({})", entry.id, finished.label()));
            resource.mime_type = Some("application/json".into());
            Some(resource)
        })
        .collect();
    let mut result = ListResourcesResult::with_all_items(resources);
    result.next_cursor = next;
    Ok(result)
}

/// The bundle `uri` names: its summary, and its archive when it fits.
///
/// # Errors
/// `resource_not_found` — the same for a malformed URI, a bundle no store here holds and another
/// tenant's; `internal_error` when a store fails or an admin's read cannot be audited.
pub(crate) async fn read(
    daemon: &Daemon,
    (tenant, bearer): (&Tenant, &Bearer),
    uri: &str,
) -> Result<ReadResourceResult, ErrorData> {
    let unknown = || ErrorData::resource_not_found(format!("no resource {uri:?}"), None);
    let id: Digest = uri.strip_prefix(BUNDLE_URI_PREFIX).and_then(|hex| hex.parse().ok()).ok_or_else(unknown)?;
    let copy = match find(daemon, &id).await {
        Ok(Some(copy)) => copy,
        Ok(None) => return Err(unknown()),
        Err(FindError::Unavailable(e) | FindError::Failed(e)) => return Err(ErrorData::internal_error(e, None)),
    };
    let owner = copy.owner().await.map_err(|e| ErrorData::internal_error(e, None))?;
    match daemon.authorize((tenant, bearer), owner.as_ref().map(Owner::of_principal), "bundle", &id.to_hex()).await {
        Ok(()) => {}
        Err(Hidden::NotTheirs) => return Err(unknown()),
        Err(Hidden::NotAudited(e)) => return Err(ErrorData::internal_error(e, None)),
    }
    let (bundle, _) = crate::bundles::open(daemon, &id).await.map_err(|e| ErrorData::internal_error(e, None))?;
    let summary = serde_json::json!({
        "bundle": id.to_hex(),
        "tool": bundle.action.tool,
        "principal": bundle.action.principal,
        "action_digest": bundle.action.action_digest,
        "outcome": bundle.result.outcome,
        "output": bundle.result.output,
        "fuel_used_units": bundle.result.fuel_used_units,
        "tape_events": bundle.result.tape_events,
        "signer": bundle.signer.to_string(),
    });
    let mut contents =
        vec![ResourceContents::text(summary.to_string(), uri.to_string()).with_mime_type("application/json")];
    if let Some(archive) = copy.archive(MCP_BUNDLE_BLOB_BYTES_MAX).await {
        let blob = base64::engine::general_purpose::STANDARD.encode(archive);
        contents.push(ResourceContents::blob(blob, format!("{uri}.tar.zst")).with_mime_type("application/zstd"));
    }
    Ok(ReadResourceResult::new(contents))
}
