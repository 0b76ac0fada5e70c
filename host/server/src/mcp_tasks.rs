//! MCP tasks (the `io.modelcontextprotocol/tasks` extension): a `tools/call` from a client that
//! declares the extension and asks for it (`_meta` `"guild/task": true`) is answered at once as a
//! task whose id is the run's, and the run goes
//! on in its own task — a client that disconnects loses nothing. `tasks/get` reads the run from
//! this node's run table or, with `--redis`, from the durable job, so any API node answers it;
//! `tasks/cancel` stops the run, here or (with `--redis`) on its worker. When the run ends, the
//! session that started it is sent `notifications/tasks` with the task's final state (a session
//! of the 2025 generation, whose standalone stream carries it; rmcp cannot yet route it through
//! the 2026 generation's `subscriptions/listen`, where clients poll). A task answers only the
//! principal that started it; anyone else gets what an unknown task gets.

use crate::daemon::{Daemon, Rejection, RunRequest, Submitted};
use crate::principal::Bearer;
use crate::principal::Owner;
use crate::runs::{Finished, RunEntry, RunState};
use crate::tenants::Tenant;
use guild_runtime::CancellationToken;
use rmcp::ErrorData;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, CreateTaskResult, DetailedTask, GetTaskResult, JsonObject,
    ServerNotification, Task, TaskPayload, TaskStatus, TaskStatusNotification, TaskStatusNotificationParams,
};
use rmcp::service::{Peer, RequestContext, RoleServer};
use std::sync::Arc;

/// What a call's `_meta` says of its caller: the agent label (`guild/agent`) and the priority
/// asked for (`guild/priority`).
pub(crate) type CallLabels = (Option<String>, Option<u8>);

/// How often a client should poll `tasks/get`, ms.
pub const TASK_POLL_INTERVAL_MS: u64 = 500;

/// What a `tools/call`'s `_meta` holds, `true`, to be answered as a task.
pub const TASK_META_KEY: &str = "guild/task";

/// Whether this `tools/call` is answered as a task: the client declares the extension (per
/// request in the 2026 generation, or at `initialize`) and asks for it in the call's `_meta`
/// (`"guild/task": true`). Clients that declare the extension without polling for tasks (the
/// MCP Inspector's CLI does) keep getting direct answers.
pub(crate) fn wanted(context: &RequestContext<RoleServer>) -> bool {
    let declared = context.meta.client_capabilities().is_some_and(|c| c.supports_tasks())
        || context.peer.peer_info().is_some_and(|info| info.capabilities.supports_tasks());
    declared && context.meta.0.0.get(TASK_META_KEY).and_then(serde_json::Value::as_bool) == Some(true)
}

fn now() -> String {
    rmcp::task_manager::current_timestamp()
}

/// Whose a job in Redis is.
fn job_owner(status: &guild_queue::JobStatus) -> Owner<'_> {
    Owner { tenant: &status.tenant, subject: status.subject.as_deref() }
}

fn unknown(id: &str) -> ErrorData {
    ErrorData::invalid_params(format!("no task {id:?} of yours is known here"), None)
}

/// Start the call as a task: the run is accepted (or refused, as any call), and its id is the
/// task's.
///
/// # Errors
/// `invalid_params` for an unknown tool; a refusal (rate, queue, budget, …) is a task that
/// failed at once.
pub(crate) async fn start(
    daemon: &Arc<Daemon>,
    (tenant, bearer, (agent, priority)): (&Arc<Tenant>, &Bearer, CallLabels),
    request: CallToolRequestParams,
    peer: Peer<RoleServer>,
) -> Result<CreateTaskResult, ErrorData> {
    let cancel = CancellationToken::new();
    let run = RunRequest {
        tool: request.name.to_string(),
        input: serde_json::Value::Object(request.arguments.unwrap_or_default()),
        asynchronous: true,
        idempotency_key: None,
        cancel: Some(cancel.clone()),
        subject: bearer.subject.clone(),
        agent,
        priority,
    };
    let entry = match daemon.submit(tenant, run).await {
        Ok(
            Submitted::Accepted { entry, .. } | Submitted::Finished { entry, .. } | Submitted::Replayed { entry, .. },
        ) => entry,
        Err(Rejection::UnknownTool(name)) => {
            return Err(ErrorData::invalid_params(format!("no tool named {name:?} is registered"), None));
        }
        Err(rejection) => {
            return Err(ErrorData::invalid_request(crate::mcp_shapes::rejection_message(rejection), None));
        }
    };
    daemon.remember_task(&entry, cancel);
    announce_end(daemon.clone(), (tenant.clone(), bearer.clone()), &entry, peer);
    let at = now();
    let task =
        Task::new(entry.id.clone(), TaskStatus::Working, at.clone(), at).with_poll_interval_ms(TASK_POLL_INTERVAL_MS);
    Ok(CreateTaskResult::new(task))
}

/// Once the task's run ends, send the client `notifications/tasks` with what `tasks/get` answers
/// then. A client gone by then is not told (and loses nothing: `tasks/get` still answers).
fn announce_end(
    daemon: Arc<Daemon>,
    (tenant, bearer): (Arc<Tenant>, Bearer),
    entry: &RunEntry,
    peer: Peer<RoleServer>,
) {
    let (mut state, id) = (entry.state.clone(), entry.id.clone());
    tokio::spawn(async move {
        if state.wait_for(|s| matches!(s, RunState::Finished(_))).await.is_err() {
            return;
        }
        let Ok(got) = get(&daemon, (&tenant, &bearer), &id).await else { return };
        let note = TaskStatusNotification::new(TaskStatusNotificationParams::new(got.task));
        if let Err(e) = peer.send_notification(ServerNotification::TaskStatusNotification(note)).await {
            tracing::debug!(task = %id, error = %e, "the task's end was not announced; the client can poll");
        }
    });
}

/// The task `id`: working, or its result.
///
/// # Errors
/// `invalid_params` for a task that is not the caller's or not known; `internal_error` when
/// Redis cannot be read.
pub(crate) async fn get(
    daemon: &Daemon,
    (tenant, bearer): (&Tenant, &Bearer),
    id: &str,
) -> Result<GetTaskResult, ErrorData> {
    let at = now();
    let task =
        |status| Task::new(id.to_string(), status, at.clone(), at.clone()).with_poll_interval_ms(TASK_POLL_INTERVAL_MS);
    if let Some(entry) = daemon.runs().get(id) {
        if !bearer.owns(tenant, entry.owner()) {
            return Err(unknown(id));
        }
        let state = entry.state.borrow().clone();
        let payload = match state {
            RunState::Finished(finished) => {
                let output = crate::bundles::read_output(daemon, &finished);
                finished_payload(id, &finished, output, command(daemon, &entry.tool))
            }
            _ => TaskPayload::Working,
        };
        return Ok(GetTaskResult::new(DetailedTask::new(task(payload.status()), payload)));
    }
    let Some(remote) = daemon.remote() else { return Err(unknown(id)) };
    let status = remote.queue.status(id).await.map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
    let Some(status) = status.filter(|s| bearer.owns(tenant, job_owner(s))) else { return Err(unknown(id)) };
    let payload = match &status.result {
        Some(result) => {
            let finished = crate::remote::finished(result);
            finished_payload(id, &finished, result.output.clone(), command(daemon, &status.tool))
        }
        None => TaskPayload::Working,
    };
    Ok(GetTaskResult::new(DetailedTask::new(task(payload.status()), payload)))
}

/// Stop the task `id`: a run this node executes at once; a job in Redis at its worker's next
/// lease renewal (or when a worker takes it).
///
/// # Errors
/// `invalid_params` for a task that is not the caller's, not known, or already finished;
/// `internal_error` when Redis cannot be reached.
pub(crate) async fn cancel(daemon: &Daemon, (tenant, bearer): (&Tenant, &Bearer), id: &str) -> Result<(), ErrorData> {
    let not_running = || ErrorData::invalid_params(format!("task {id:?} has finished"), None);
    if let Some(entry) = daemon.runs().get(id) {
        if !bearer.owns(tenant, entry.owner()) {
            return Err(unknown(id));
        }
        if matches!(*entry.state.borrow(), RunState::Finished(_)) || !daemon.cancel_task(id) {
            return Err(not_running());
        }
        return Ok(());
    }
    // With Redis: the job's worker stops it at its next lease renewal.
    let Some(remote) = daemon.remote() else { return Err(unknown(id)) };
    let unavailable = |e: guild_queue::QueueError| ErrorData::internal_error(e.to_string(), None);
    let status = remote.queue.status(id).await.map_err(unavailable)?;
    let Some(status) = status.filter(|s| bearer.owns(tenant, job_owner(s))) else { return Err(unknown(id)) };
    if status.result.is_some() {
        return Err(not_running());
    }
    remote.queue.request_cancel(id).await.map_err(unavailable)
}

fn command(daemon: &Daemon, tool: &str) -> bool {
    daemon.tools().get(tool).is_some_and(|t| t.tool.is_command())
}

/// A finished run as a task's payload: cancelled, or completed with the call's result (a
/// failed run is a completed call whose result is an error, as a direct call answers it).
fn finished_payload(id: &str, finished: &Finished, output: Option<String>, command: bool) -> TaskPayload {
    if finished.error.as_ref().is_some_and(|f| f.code == guild_runtime::FailureCode::Cancelled) {
        return TaskPayload::Cancelled;
    }
    let result: CallToolResult = crate::mcp_shapes::finished_result(id, finished, output, command);
    match serde_json::to_value(result) {
        Ok(serde_json::Value::Object(result)) => TaskPayload::Completed { result },
        _ => TaskPayload::Completed { result: JsonObject::new() },
    }
}
