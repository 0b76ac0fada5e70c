//! The Model Context Protocol face of the daemon, on the official Rust SDK (`rmcp`): every
//! registered tool the caller may use is an MCP tool with its `describe` schemas, and
//! `tools/call` goes through [`Daemon::submit`] — the same tenant checks, schema validation,
//! admission, queue, recording, audit record and metrics as `POST /v1/runs`. The transports are
//! stdio for `guild mcp` ([`serve_stdio`] here, on `mcp_stdio.rs`) and streamable HTTP at
//! `/mcp` (`mcp_http.rs`).

use crate::daemon::{Daemon, Rejection, RunRequest, Submitted};
use crate::mcp_shapes::{TOOLS_CURSOR_PREFIX, finished_result, mcp_tool, rejection_message, tool_error, tools_cursor};
use crate::mcp_tasks::CallLabels;
use crate::principal::Bearer;
use crate::tenants::Tenant;
use guild_runtime::CancellationToken;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, CustomRequest, CustomResult, ErrorCode,
    GetTaskParams, GetTaskResult, Implementation, ListResourcesResult, ListToolsResult, MetaObject,
    PaginatedRequestParams, ProgressNotificationParam, ProgressToken, ReadResourceRequestParams, ReadResourceResponse,
    ServerCapabilities, ServerConfig, SubscriptionFilter, Tool,
};
use rmcp::service::{NotificationContext, Peer, RequestContext, RoleServer, SubscriptionContext};
use rmcp::{ErrorData, ServerHandler};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The MCP requests a client may send a server: one whose params rmcp could not read is
/// answered as invalid params, not as an unknown method.
const STANDARD_REQUESTS: [&str; 13] = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
];

/// How often a run that the client asked progress for reports it.
pub const PROGRESS_INTERVAL_MS: u64 = 500;

/// Where a session's tenant comes from.
#[derive(Clone)]
enum Caller {
    /// Fixed for the session: stdio, where the client launched the process.
    Fixed(Arc<Tenant>),
    /// Per HTTP request: the bearer token's tenant, put in the request's extensions by the
    /// authentication layer in front of `/mcp`.
    PerRequest,
}

/// One MCP session's handler over the daemon.
#[derive(Clone)]
pub struct GuildMcp {
    daemon: Arc<Daemon>,
    caller: Caller,
}

impl GuildMcp {
    /// A handler whose every call is made as `tenant` (stdio).
    pub fn for_tenant(daemon: Arc<Daemon>, tenant: Arc<Tenant>) -> Self {
        Self { daemon, caller: Caller::Fixed(tenant) }
    }

    /// A handler that takes each request's tenant from its HTTP request (`/mcp`).
    pub(crate) fn per_request(daemon: Arc<Daemon>) -> Self {
        Self { daemon, caller: Caller::PerRequest }
    }

    /// The caller's tenant and what its bearer token grants: over HTTP both were put in the
    /// request's extensions by the authentication layer; a request without them is refused.
    fn caller(&self, context: &RequestContext<RoleServer>) -> Result<(Arc<Tenant>, Bearer), ErrorData> {
        match &self.caller {
            Caller::Fixed(tenant) => Ok((tenant.clone(), Bearer::tenant_token())),
            Caller::PerRequest => {
                let parts = context.extensions.get::<axum::http::request::Parts>();
                let tenant = parts.and_then(|parts| parts.extensions.get::<Arc<Tenant>>()).cloned();
                let bearer = parts.and_then(|parts| parts.extensions.get::<Bearer>()).cloned();
                tenant.zip(bearer).ok_or_else(|| ErrorData::invalid_request("missing or invalid bearer token", None))
            }
        }
    }

    async fn call(
        &self,
        (tenant, bearer, (agent, priority)): (&Arc<Tenant>, Bearer, CallLabels),
        request: CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let name = request.name.to_string();
        let input = serde_json::Value::Object(request.arguments.unwrap_or_default());
        let cancel = context.ct.child_token();
        let run = RunRequest {
            tool: name.clone(),
            input,
            asynchronous: false,
            idempotency_key: None,
            cancel: Some(cancel.clone()),
            subject: bearer.subject,
            agent,
            priority,
        };
        let registered = self.daemon.tools().get(&name);
        let timeout_ms = registered.as_ref().map_or(0, |t| t.limits.timeout_ms);
        let command = registered.is_some_and(|t| t.tool.is_command());
        let submitted = self.daemon.submit(tenant, run);
        let submitted = match context.meta.get_progress_token() {
            Some(token) => with_progress(submitted, &context.peer, token, timeout_ms, &cancel).await,
            None => submitted.await,
        };
        match submitted {
            Ok(Submitted::Finished { entry, finished, output }) => {
                Ok(finished_result(&entry.id, &finished, output, command))
            }
            // Neither happens for a synchronous call without an idempotency key.
            Ok(Submitted::Accepted { entry, .. } | Submitted::Replayed { entry, .. }) => {
                Err(ErrorData::internal_error(format!("run {} did not finish in this call", entry.id), None))
            }
            Err(Rejection::UnknownTool(name)) => {
                Err(ErrorData::invalid_params(format!("no tool named {name:?} is registered"), None))
            }
            Err(rejection) => Ok(tool_error(rejection_message(rejection), MetaObject::new())),
        }
    }
}

/// Serve MCP over this process's stdin and stdout, every call made as `tenant`, until the
/// client closes the stream (`guild mcp`). Every frame gets exactly one answer
/// (the frame screen in `jsonrpc.rs`), and what is written to stdout is flushed before this returns.
///
/// # Errors
/// When the session cannot start or the transport fails.
pub async fn serve_stdio(daemon: Arc<Daemon>, tenant: Arc<Tenant>) -> std::io::Result<()> {
    use rmcp::ServiceExt;
    let frame_bytes_max = daemon.request_bytes_max();
    let (transport, writer) =
        crate::mcp_stdio::GuardedStdio::new(tokio::io::stdin(), tokio::io::stdout(), frame_bytes_max);
    let running = GuildMcp::for_tenant(daemon, tenant)
        .serve(transport)
        .await
        .map_err(|e| std::io::Error::other(format!("the MCP session did not start: {e}")))?;
    running.waiting().await.map_err(std::io::Error::other)?;
    // The transport is gone; the writer ends once what it holds is on stdout.
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    Ok(())
}

/// Await `submitted`, telling the client how long the run has been going every
/// [`PROGRESS_INTERVAL_MS`] (its total is the tool's timeout, the longest a run can take).
async fn with_progress<F: Future>(
    submitted: F,
    peer: &Peer<RoleServer>,
    token: ProgressToken,
    timeout_ms: u64,
    cancel: &CancellationToken,
) -> F::Output {
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(PROGRESS_INTERVAL_MS));
    tokio::pin!(submitted);
    loop {
        tokio::select! {
            done = &mut submitted => return done,
            _ = ticks.tick(), if !cancel.is_cancelled() => {
                let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                let message = format!("running for {}", guild_runtime::human_ms(elapsed_ms));
                let mut progress =
                    ProgressNotificationParam::new(token.clone(), elapsed_ms as f64).with_message(message);
                if timeout_ms > 0 {
                    progress = progress.with_total(timeout_ms as f64);
                }
                // A client that went away is not a reason to stop the run.
                let _ = peer.notify_progress(progress).await;
            }
        }
    }
}

/// Announce tool list changes to one legacy (pre-2026) session until its client goes away.
async fn announce_legacy(mut changes: tokio::sync::watch::Receiver<u64>, peer: Peer<RoleServer>) {
    while changes.changed().await.is_ok() {
        if peer.notify_tool_list_changed().await.is_err() {
            return;
        }
    }
}

impl ServerHandler for GuildMcp {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .enable_resources()
            .enable_tasks()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("guild", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Guild runs each tool as a sandboxed WebAssembly component under hard limits. Every call \
                 leaves a signed replay bundle; its id is in the result's _meta as guild/bundle.",
            )
    }

    /// The tools the caller may use, by name, `mcp.tools_page_max` a page. The cursor names the
    /// last tool of the page before, so a page stays right when tools come and go between calls.
    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let (tenant, bearer) = self.caller(&context)?;
        let after = match request.and_then(|r| r.cursor) {
            Some(cursor) => Some(tools_cursor(&cursor).ok_or_else(|| {
                ErrorData::invalid_params("the cursor is not one tools/list gave; list from the start", None)
            })?),
            None => None,
        };
        let page_max = self.daemon.mcp_config().tools_page_max;
        let mut names = self.daemon.tools().names();
        names.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        let mut visible = names
            .iter()
            .filter(|n| tenant.tools.allows(&n.record.name) && n.record.disabled_for(&tenant.name).is_none())
            .filter(|n| bearer.may_call(&n.record.name))
            .filter(|n| after.as_deref().is_none_or(|after| n.record.name.as_str() > after));
        let tools: Vec<Tool> = visible.by_ref().take(page_max).map(|n| mcp_tool(n.current())).collect();
        let mut result = ListToolsResult::with_all_items(tools);
        if visible.next().is_some() {
            result.next_cursor = result.tools.last().map(|t| format!("{TOOLS_CURSOR_PREFIX}{}", t.name));
        }
        Ok(result)
    }

    /// The caller's runs' bundles, newest first (`mcp_resources.rs`).
    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let (tenant, bearer) = self.caller(&context)?;
        crate::mcp_resources::list(&self.daemon, (&tenant, &bearer), request.and_then(|r| r.cursor))
    }

    /// A bundle of the caller's: its summary, and its archive when it fits.
    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let (tenant, bearer) = self.caller(&context)?;
        crate::mcp_resources::read(&self.daemon, (&tenant, &bearer), &request.uri).await.map(ReadResourceResponse::from)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let (tenant, bearer) = self.caller(&context)?;
        // Over HTTP the screen in front of `/mcp` answered this with 403 already; stdio's
        // bearer grants every tool of its tenant.
        if !bearer.may_call(&request.name) {
            return Err(ErrorData::invalid_request(
                format!("the access token lacks the scope to call {:?}", request.name),
                None,
            ));
        }
        let labels = labels_of(&context)?;
        let traced = call_span(&request, &context);
        let called = async {
            // A client that takes tasks and asks for one gets it at once; the run goes on
            // without the connection.
            if crate::mcp_tasks::wanted(&context) {
                return crate::mcp_tasks::start(
                    &self.daemon,
                    (&tenant, &bearer, labels),
                    request,
                    context.peer.clone(),
                )
                .await
                .map(CallToolResponse::Task);
            }
            self.call((&tenant, bearer, labels), request, &context).await.map(CallToolResponse::from)
        };
        let called = traced.clone().scope(called).await;
        let span = traced.span();
        match &called {
            Err(error) => {
                span.record("error.type", error.code.0.to_string());
                span.record("otel.status_code", "ERROR");
            }
            Ok(CallToolResponse::Complete(result)) if result.is_error == Some(true) => {
                span.record("error.type", "tool_error");
                span.record("otel.status_code", "ERROR");
            }
            Ok(_) => {}
        }
        called
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        let (tenant, bearer) = self.caller(&context)?;
        crate::mcp_tasks::get(&self.daemon, (&tenant, &bearer), &request.task_id).await
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let (tenant, bearer) = self.caller(&context)?;
        crate::mcp_tasks::cancel(&self.daemon, (&tenant, &bearer), &request.task_id).await
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.daemon.tools().get(name).map(|t| mcp_tool(&t))
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        tokio::spawn(announce_legacy(self.daemon.watch_tools(), context.peer));
    }

    /// A request rmcp could not read as one of its types: a standard method with malformed
    /// params is `-32602 Invalid params` (the frame screen catches most of these first), any
    /// other method `-32601 Method not found`.
    async fn on_custom_request(
        &self,
        request: CustomRequest,
        _context: RequestContext<RoleServer>,
    ) -> Result<CustomResult, ErrorData> {
        let method = request.method.as_str();
        if STANDARD_REQUESTS.contains(&method) {
            return Err(ErrorData::invalid_params(format!("invalid params for {method}"), None));
        }
        Err(ErrorData::new(ErrorCode::METHOD_NOT_FOUND, format!("method not found: {method}"), None))
    }

    fn accepted_subscription_filter(&self, _requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        Some(SubscriptionFilter::builder().tools_list_changed().build())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), ErrorData> {
        let mut changes = self.daemon.watch_tools();
        loop {
            tokio::select! {
                () = context.cancelled() => return Ok(()),
                changed = changes.changed() => {
                    if changed.is_err() || context.sink().notify_tool_list_changed().await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// A `tools/call`'s trace: its server span, as the OpenTelemetry MCP conventions name it
/// (`tools/call {tool}`, `mcp.method.name`, `mcp.session.id`, `jsonrpc.request.id`,
/// `gen_ai.tool.name`), a child of the W3C trace context the client put in `params._meta`
/// (`traceparent`, `tracestate`, `baggage`) when it sent one; no span when the trace is not
/// sampled (its context is carried all the same).
fn call_span(request: &CallToolRequestParams, context: &RequestContext<RoleServer>) -> guild_telemetry::Traced {
    if !guild_telemetry::exporting() {
        return guild_telemetry::Traced::none();
    }
    let parts = context.extensions.get::<axum::http::request::Parts>();
    let session = parts.and_then(|parts| parts.headers.get("mcp-session-id")?.to_str().ok());
    // The context in `_meta`, else (over HTTP) the request's own headers.
    let caller = guild_telemetry::TraceContext::from_fields(|name| context.meta.get(name)?.as_str()).or_else(|| {
        let headers = &parts?.headers;
        guild_telemetry::TraceContext::from_fields(|name| headers.get(name)?.to_str().ok())
    });
    guild_telemetry::root(caller.as_ref(), "tools/call", || {
        guild_telemetry::span!(
            "mcp",
            otel.name = %format_args!("tools/call {}", guild_telemetry::clip(&request.name)),
            otel.kind = "server",
            mcp.method.name = "tools/call",
            mcp.session.id = session.map(guild_telemetry::clip),
            jsonrpc.request.id = guild_telemetry::clip(&context.id.to_string()),
            gen_ai.operation.name = "execute_tool",
            gen_ai.tool.name = guild_telemetry::clip(&request.name),
            error.r#type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    })
}

/// The caller's agent label and priority from the call's `_meta`, checked.
///
/// # Errors
/// `invalid_params` when the label is not a string or not a label, or the priority is not an
/// integer from 0 to 9.
fn labels_of(context: &RequestContext<RoleServer>) -> Result<CallLabels, ErrorData> {
    let priority = match context.meta.get("guild/priority") {
        None => None,
        Some(value) => Some(
            value.as_u64().and_then(|p| u8::try_from(p).ok()).filter(|p| *p <= guild_queue::PRIORITY_MAX).ok_or_else(
                || {
                    ErrorData::invalid_params(
                        format!("_meta guild/priority must be an integer from 0 to {}", guild_queue::PRIORITY_MAX),
                        None,
                    )
                },
            )?,
        ),
    };
    let Some(value) = context.meta.get("guild/agent") else { return Ok((None, priority)) };
    let label = value
        .as_str()
        .ok_or_else(|| ErrorData::invalid_params("_meta guild/agent must be a string: the agent's label", None))?;
    guild_queue::check_agent_label(label)
        .map_err(|e| ErrorData::invalid_params(format!("_meta guild/agent: {e}"), None))?;
    Ok((Some(label.to_string()), priority))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::Finished;

    /// A run that succeeded, with no bundle.
    fn succeeded() -> Finished {
        Finished {
            status: RunStatus::Succeeded,
            error: None,
            bundle: None,
            fuel_used_units: 1,
            wall_time_us: 1,
            revision: None,
            cache: None,
            cost: None,
            trace_id: None,
        }
    }
    use guild_runtime::{LimitHit, Outcome, RunStatus};

    #[test]
    fn a_failed_run_is_a_tool_error_with_its_bundle() {
        let bundle = guild_replay::Digest::of(b"bundle");
        let finished = Finished {
            status: RunStatus::Failed,
            error: Outcome::Limit(LimitHit::Timeout { limit_ms: 1000 }).failure(),
            bundle: Some(bundle),
            fuel_used_units: 7,
            wall_time_us: 1,
            revision: None,
            cache: None,
            cost: None,
            trace_id: None,
        };
        let result = serde_json::to_value(finished_result("run-1", &finished, None, false)).expect("serializes");
        assert_eq!(result["isError"], true);
        assert_eq!(result["content"][0]["text"], "timed out after 1s (raise --timeout)");
        assert_eq!(result["_meta"]["guild/bundle"], bundle.to_hex());
    }

    #[test]
    fn object_output_is_structured_and_text() {
        let finished = succeeded();
        let result = finished_result("r", &finished, Some(r#"{"n":1}"#.into()), false);
        let result = serde_json::to_value(result).expect("serializes");
        assert_eq!(result["structuredContent"], serde_json::json!({ "n": 1 }));
        assert_eq!(result["content"][0]["text"], r#"{"n":1}"#);
        assert_eq!(result["isError"], false);
        let array =
            serde_json::to_value(finished_result("r", &finished, Some("[1]".into()), false)).expect("serializes");
        assert!(array.get("structuredContent").is_none());
        assert_eq!(array["content"][0]["text"], "[1]");
    }

    #[test]
    fn a_command_that_exits_nonzero_is_an_error_result_that_keeps_its_output() {
        let finished = succeeded();
        let failed = r#"{"exit_code":2,"stdout":"","stderr":"no such file\n"}"#;
        let result = serde_json::to_value(finished_result("r", &finished, Some(failed.into()), true)).expect("json");
        assert_eq!(result["isError"], true);
        assert_eq!(result["_meta"]["guild/exit_code"], 2);
        assert_eq!(result["structuredContent"]["stderr"], "no such file\n");
        let ok = r#"{"exit_code":0,"stdout":"hi","stderr":""}"#;
        let result = serde_json::to_value(finished_result("r", &finished, Some(ok.into()), true)).expect("json");
        assert_eq!(result["isError"], false);
        assert_eq!(result["_meta"]["guild/exit_code"], 0);
        // A guild-tool's output that happens to hold an `exit_code` is not a command's.
        let tool = serde_json::to_value(finished_result("r", &finished, Some(failed.into()), false)).expect("json");
        assert_eq!(tool["isError"], false);
    }
}
