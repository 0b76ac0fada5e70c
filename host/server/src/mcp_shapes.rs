//! What MCP clients see of Guild's tools and runs: a registered tool as `tools/list` lists it
//! (schemas, `_meta`, annotations derived from its effective policy) with the paging cursor, and
//! a finished run as a `tools/call` result (or a refusal's text). Shared by the MCP server
//! (`mcp.rs`), its tasks (`mcp_tasks.rs`) and the REST tool listing.

use crate::daemon::Rejection;
use crate::registry::RegisteredTool;
use crate::runs::Finished;
use rmcp::model::{CallToolResult, ContentBlock, JsonObject, MetaObject, Tool, ToolAnnotations};
use std::sync::Arc;

/// A finished run as an MCP result: the output as structured content (when it is an object,
/// as MCP requires) and as text; anything else as a tool error with the CLI's message. The
/// bundle id and run id are in `_meta` either way. A WASI `command` that exited with a nonzero
/// code succeeded as a run (its exit code is part of its output), but the result says
/// `isError: true` (and `guild/exit_code`), so an agent notices the program failed.
pub(crate) fn finished_result(run: &str, finished: &Finished, output: Option<String>, command: bool) -> CallToolResult {
    let mut meta = MetaObject::new();
    meta.0.insert("guild/run".into(), run.into());
    if let Some(bundle) = finished.bundle {
        meta.0.insert("guild/bundle".into(), bundle.to_hex().into());
    }
    meta.0.insert("guild/fuel_used_units".into(), finished.fuel_used_units.into());
    if let Some(revision) = finished.revision {
        meta.0.insert("guild/revision".into(), revision.into());
    }
    meta.0.insert("guild/wall_time_us".into(), finished.wall_time_us.into());
    if let Some(cost) = &finished.cost {
        meta.0.insert("guild/cost".into(), serde_json::to_value(cost.as_ref()).unwrap_or_default());
    }
    if let Some(cache) = &finished.cache {
        meta.0.insert("guild/cached".into(), cache.cached().into());
        meta.0.insert("guild/cache".into(), cache.to_string().into());
    }
    let Some(output) = output else {
        let message = match finished.message() {
            "" => "the run failed".to_string(),
            message => message.to_string(),
        };
        meta.0.insert("guild/error".into(), finished.error.clone().map(serde_json::Value::from).unwrap_or_default());
        return tool_error(message, meta);
    };
    let mut result = match serde_json::from_str::<serde_json::Value>(&output) {
        Ok(value @ serde_json::Value::Object(_)) => CallToolResult::structured(value),
        _ => CallToolResult::success(vec![ContentBlock::text(output.clone())]),
    };
    // `structured` also fills in the text; keep exactly the tool's own JSON text.
    if command && let Some(code) = result.structured_content.as_ref().and_then(|o| o["exit_code"].as_i64()) {
        meta.0.insert("guild/exit_code".into(), code.into());
        if code != 0 {
            result.is_error = Some(true);
        }
    }
    result.content = vec![ContentBlock::text(output)];
    result.with_meta(Some(meta))
}

pub(crate) fn tool_error(message: String, meta: MetaObject) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)]).with_meta(Some(meta))
}

/// The HTTP API's message for a refused request, as the text of an MCP tool error.
pub(crate) fn rejection_message(rejection: Rejection) -> String {
    match rejection {
        Rejection::Forbidden(message) => message,
        Rejection::UnknownTool(name) => format!("no tool named {name:?} is registered"),
        Rejection::InvalidInput(invalid) => invalid.describe(),
        Rejection::KeyConflict { key, run } => format!("idempotency key {key:?} already names run {run}"),
        Rejection::Tenant { tenant, refusal } => refusal.message(&tenant),
        Rejection::Disabled { tool, reason } => {
            format!("tool_disabled: tool {tool:?} is disabled by the operator: {reason}")
        }
        Rejection::Queue(full) if full.draining => "the daemon is shutting down; retry on another node".into(),
        Rejection::Queue(full) => {
            format!("the run queue is full ({} waiting); retry after {} s", full.depth, full.retry_after_s)
        }
        Rejection::Unavailable { message, .. } => message,
        Rejection::NoCapableWorker { tool, lane } => format!(
            "no live worker has what tool {tool:?} needs ({lane}): a sync call would wait for one without end; call \
             it async (it waits, and GET /v1/runs/{{id}} says waiting_for_capability), or start a worker with it"
        ),
    }
}

/// A registered tool as MCP lists it, its component digest and version in `_meta`. The output schema is given only when it describes an
/// object: MCP's structured content is always one.
pub fn mcp_tool(tool: &RegisteredTool) -> Tool {
    let info = tool.tool.info();
    let mut input_schema = match &info.input_schema {
        serde_json::Value::Object(schema) => schema.clone(),
        _ => JsonObject::new(),
    };
    // MCP arguments are always an object, and clients before 2026 require the schema to say so
    // at its root (a tagged enum's schema is a `oneOf` of objects with no root `type`).
    input_schema.entry("type").or_insert_with(|| "object".into());
    let mut listed = Tool::new(tool.name.clone(), tool.description(), Arc::new(input_schema));
    if let Some(serde_json::Value::Object(schema)) = &info.output_schema
        && schema.get("type").and_then(|t| t.as_str()) == Some("object")
    {
        listed = listed.with_raw_output_schema(Arc::new(schema.clone()));
    }
    if let Some(annotations) = annotations(tool) {
        listed = listed.with_annotations(annotations);
    }
    let mut meta = MetaObject::new();
    meta.0.insert("guild/component".into(), tool.tool.digest().to_hex().into());
    meta.0.insert("guild/version".into(), info.version.clone().into());
    if let Some(setup) = tool.command_setup() {
        meta.0.insert("guild/command".into(), setup);
    }
    listed.with_meta(meta)
}

/// What a `tools/list` cursor starts with: then the name of the last tool of the page before.
pub(crate) const TOOLS_CURSOR_PREFIX: &str = "after:";

/// Longest tool name a cursor may carry, bytes (tool names are far shorter).
const TOOLS_CURSOR_NAME_BYTES_MAX: usize = 256;

/// The tool name a `tools/list` cursor continues after.
pub(crate) fn tools_cursor(cursor: &str) -> Option<String> {
    let name = cursor.strip_prefix(TOOLS_CURSOR_PREFIX)?;
    (!name.is_empty() && name.len() <= TOOLS_CURSOR_NAME_BYTES_MAX).then(|| name.to_string())
}

/// The tool's annotations, as facts of what its grants let it do (they change when the grants
/// do, and the config reload that changes them sends `list_changed`):
/// - `readOnlyHint`: no writable mount, and any egress only by `GET`/`HEAD` (every operator rule
///   or every host the tool declares names only those methods);
/// - `destructiveHint`: the opposite — it may write files or send requests that change things;
/// - `idempotentHint`: read-only, or cached with nothing that keeps its runs from being cached
///   (no writable mount, no network host);
/// - `openWorldHint`: it may reach a network host (an operator rule and a declared host).
///
/// `None` when the grants do not fit the tool (its runs are refused anyway).
pub(crate) fn annotations(tool: &RegisteredTool) -> Option<ToolAnnotations> {
    let policy = tool.tool.effective_policy(&tool.grants).ok()?;
    let writes = policy.mounts.iter().any(|m| m.access == guild_runtime::Access::ReadWrite);
    let open_world = !policy.egress.is_empty() && !policy.tool_hosts.is_empty();
    let egress_reads_only =
        !open_world || policy.egress.iter().all(|r| r.only_reads()) || policy.tool_hosts.iter().all(|r| r.only_reads());
    let read_only = !writes && egress_reads_only;
    Some(
        ToolAnnotations::new()
            .read_only(read_only)
            .destructive(!read_only)
            // Cached, a repeated call is the first run's answer — unless its runs can never be
            // cached (they write or reach the network), and then each call acts again.
            .idempotent(read_only || (tool.cache.is_some() && !writes && !open_world))
            .open_world(open_world),
    )
}
