//! A run's spans (exported when tracing is on; see `guild-telemetry`): the run itself, named
//! as the OpenTelemetry GenAI conventions name a tool's execution, and the stages the pipeline
//! goes through — instantiate, the guest's `run`, each egress request, each GPU dispatch, the
//! seal. While tracing is off every one of them is disabled at its call site.

use guild_replay::Digest;
use tracing::Span;
use tracing::field::Empty;

/// The span of one run of `tool` (revision `revision`) for `tenant`: `execute_tool {tool}`, with
/// `gen_ai.operation.name = execute_tool`, `gen_ai.tool.name`, `gen_ai.tool.call.id` (the run
/// id) and Guild's `guild.run.id`, `guild.tool`, `guild.tool.revision`, `guild.tenant`;
/// [`record_end`] adds `guild.bundle.id`, `guild.fuel_used_units`, `guild.outcome` and, for a
/// run that did not succeed, `error.type`. Its parent is the current span.
pub fn run_span(run_id: &str, tool: &str, revision: Option<u32>, tenant: &str) -> Span {
    guild_telemetry::span!(
        "execute_tool",
        otel.name = %format_args!("execute_tool {tool}"),
        otel.kind = "internal",
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = %tool,
        gen_ai.tool.call.id = %run_id,
        guild.run.id = %run_id,
        guild.tool = %tool,
        guild.tool.revision = revision,
        guild.tenant = %tenant,
        guild.bundle.id = Empty,
        guild.fuel_used_units = Empty,
        guild.outcome = Empty,
        error.r#type = Empty,
        otel.status_code = Empty,
    )
}

/// Record how a run ended on its [`run_span`]: its outcome's label (`output`, `tool_error`,
/// `limit`, …, as `guild_runs_total` counts it), the fuel it burnt, its bundle, and for a run
/// that did not succeed `error.type` (its failure code) with an error status.
pub fn record_end(span: &Span, outcome: &str, fuel_used_units: u64, bundle: Option<&Digest>, error: Option<&str>) {
    if span.is_disabled() {
        return;
    }
    span.record("guild.outcome", outcome);
    span.record("guild.fuel_used_units", fuel_used_units);
    if let Some(bundle) = bundle {
        span.record("guild.bundle.id", tracing::field::display(bundle));
    }
    if let Some(error) = error {
        span.record("error.type", error);
        span.record("otel.status_code", "ERROR");
    }
}

/// A stage of the pipeline, a child of the current span (`instantiate`, `guest run`, `seal`, …).
pub(crate) fn stage(name: &'static str) -> Span {
    guild_telemetry::span!("stage", otel.name = name, guild.bundle.id = Empty)
}
