//! What one run calls, resolved from its tool's [`Entry`] and its policy, and how the call is
//! made: a `guild-tool`'s `run`, a command component's `wasi:cli/run`, or a preview-1 module's
//! `_start` (on wasmtime-wasi's preview 1, or adapted into a component for a run granted a
//! writable mount, whose write quota only the component's filesystem charges); and a command's
//! side of it (its input as the store sees it, its exit as an output).

use super::{Entry, Runtime, Tool};
use crate::Limits;
use crate::bindings::exports::guild::tool::tool as wit;
use crate::command::{Capture, CommandInput, CommandIo, InputRefused, Passthrough, command_output};
use crate::error::RunError;
use crate::state::HostState;
use crate::trace::stage;
use guild_vocab::{Access, EffectivePolicy, Outcome};
use tracing::Instrument as _;
use wasmtime::Store;

impl Runtime {
    /// What a run of `tool` under `policy` calls: a preview-1 module runs on wasmtime-wasi's
    /// preview 1, unless the policy grants a writable mount, whose write quota only the adapted
    /// component's filesystem charges (see [`super::types::Preview1`]).
    pub(super) async fn call_for<'a>(&self, tool: &'a Tool, policy: &EffectivePolicy) -> Result<Call<'a>, RunError> {
        Ok(match &tool.entry {
            Entry::Tool(pre) => Call::Tool(pre),
            Entry::Command(pre, _) => Call::Command(pre.clone()),
            Entry::Preview1(module, _) if policy.mounts.iter().any(|m| m.access == Access::ReadWrite) => {
                Call::Command(self.adapted(module).await.map_err(|e| {
                    RunError::Host(format!(
                        "this preview-1 module runs with a writable mount only as an adapted component, and it could not be adapted ({e}); mount it read-only"
                    ))
                })?)
            }
            Entry::Preview1(module, _) => Call::Preview1(&module.module),
        })
    }
}

/// What the guest's entry point returned.
pub(super) enum Returned {
    /// A `guild-tool`'s `run`.
    Tool(Result<String, wit::ToolError>),
    /// A command's `wasi:cli/run`: `Err` is exit code 1.
    Command(Result<(), ()>),
}

/// What one run instantiates and calls.
pub(super) enum Call<'a> {
    /// A `guild-tool` component's `run`.
    Tool(&'a crate::bindings::GuildToolPre<HostState>),
    /// A command component's `wasi:cli/run` (a preview-1 module adapted, too).
    Command(wasmtime_wasi::p2::bindings::CommandPre<HostState>),
    /// A preview-1 module's `_start`.
    Preview1(&'a wasmtime::InstancePre<HostState>),
}

pub(super) async fn call_entry(
    call: &Call<'_>,
    store: &mut Store<HostState>,
    input: &str,
) -> wasmtime::Result<Returned> {
    match call {
        Call::Tool(pre) => {
            let instance = pre.instantiate_async(&mut *store).instrument(stage("instantiate")).await?;
            let run = instance.guild_tool_tool().call_run(&mut *store, input);
            run.instrument(stage("guest run")).await.map(Returned::Tool)
        }
        Call::Command(pre) => {
            let instance = pre.instantiate_async(&mut *store).instrument(stage("instantiate")).await?;
            let run = instance.wasi_cli_run().call_run(&mut *store);
            run.instrument(stage("guest run")).await.map(Returned::Command)
        }
        Call::Preview1(pre) => {
            let instance = pre.instantiate_async(&mut *store).instrument(stage("instantiate")).await?;
            let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
            // Returning from `_start` is exit code 0; `proc_exit(n)` comes back as `I32Exit(n)`.
            let run = start.call_async(&mut *store, ());
            run.instrument(stage("guest run")).await.map(|()| Returned::Command(Ok(())))
        }
    }
}

/// A command's input as its store sees it; `None` for a `guild-tool` component.
pub(super) fn command_io(
    tool: &Tool,
    input: &str,
    limits: &Limits,
    passthrough: Option<&Passthrough>,
) -> Result<Option<CommandIo>, InputRefused> {
    let Some(config) = tool.command_config() else { return Ok(None) };
    CommandInput::parse(input, config)?.into_io(&tool.info.name, limits, passthrough).map(Some)
}

/// The output of a command that exited with `code`.
pub(super) fn exited(code: i32, captured: Option<&(Capture, Capture)>) -> Outcome {
    let (stdout, stderr) = captured.map(|(out, err)| (out.take(), err.take())).unwrap_or_default();
    Outcome::Output { output: command_output(code, &stdout, &stderr) }
}
