//! Guild's OpenTelemetry traces.
//!
//! - [`TelemetryConfig`]: the `[telemetry]` config section, resolved with the standard `OTEL_*`
//!   variables into [`TelemetrySettings`] (or off, and then free).
//! - [`install`]: the process's `tracing` subscriber — log lines, and with tracing on an OTLP/HTTP
//!   exporter, batched and bounded, whose losses [`spans_dropped`] counts.
//! - [`TraceContext`]: W3C trace context in from HTTP headers and MCP `_meta`, through Redis
//!   jobs, out to upstreams.
//!
//! Spans are ordinary `tracing` spans with target [`SPAN_TARGET`]; their names and attributes
//! follow the OpenTelemetry semantic conventions (`otel.name`, `otel.kind`, `error.type`, the
//! MCP and GenAI attributes) plus Guild's own `guild.*` attributes.

use std::sync::atomic::{AtomicBool, Ordering};

mod context;
mod export;
mod logs;
mod sampling;
mod settings;

pub use context::{BAGGAGE_BYTES_MAX, TRACESTATE_BYTES_MAX, TraceContext, ids, trace_of};
pub use export::{EXPORT_FAILURE_LOG_EVERY_MS, spans_dropped};
pub use logs::{LogStyle, SHUTDOWN_WAIT_MS, install, shutdown};
pub use sampling::{Traced, root};
pub use settings::{
    BATCH_SPANS_MAX_DEFAULT, EXPORT_TIMEOUT_MS_DEFAULT, ParentlessChoice, QUEUE_SPANS_MAX_DEFAULT,
    SCHEDULED_DELAY_MS_DEFAULT, SamplerChoice, TelemetryConfig, TelemetrySettings,
};

/// A span attribute taken from what a caller or a guest sent (a path, a tool or kernel name, an
/// id) is cut to this many bytes: the export queue bounds spans by count, this bounds each.
pub const ATTRIBUTE_BYTES_MAX: usize = 256;

/// `text` cut to at most [`ATTRIBUTE_BYTES_MAX`] bytes, at a character boundary.
pub fn clip(text: &str) -> &str {
    if text.len() <= ATTRIBUTE_BYTES_MAX {
        return text;
    }
    let mut end = ATTRIBUTE_BYTES_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What a task spawned to carry on the current trace runs in: `span`, or while it is disabled
/// because its trace was not sampled, [`here`], so that the task's spans stay in this trace, and
/// unsampled with it, rather than start traces of their own. While tracing is off, `span` as it
/// is (the task's log lines keep their own spans).
pub fn carried(span: tracing::Span) -> Traced {
    if !exporting() {
        return Traced::plain(span);
    }
    if span.is_disabled() { here() } else { Traced::scoped(span, None) }
}

/// The trace this code runs in, for a task spawned to go on in it: the current span, and the
/// unsampled trace's context when this one was not sampled.
pub fn here() -> Traced {
    if !exporting() {
        return Traced::plain(tracing::Span::current());
    }
    Traced::scoped(tracing::Span::current(), sampling::unsampled_here())
}

/// The `tracing` target of every span Guild exports: `tracing::info_span!(target: SPAN_TARGET, …)`,
/// made with [`span!`]. Disabled at the call site while tracing is off.
pub const SPAN_TARGET: &str = "guild_otel";

/// Whether this process's subscriber exports traces ([`install`] with tracing on).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces. Read instead of asking the subscriber with
/// `tracing::enabled!`: with the exporter's per-layer filters a call site of Guild's target is
/// one they disagree on (the log layer never wants it, the exporter does), so every such question
/// went through every layer's filter, four times a run; this is one load.
///
/// Set by [`install`] once its subscriber, with the exporter, is the process's, and never unset.
/// What reads it then takes the tracing-on path whatever subscriber is current: under one without
/// the exporter (only a test makes one after installing), [`root`] finds no sampler and builds its
/// span as it would with tracing on, disabled by that subscriber's filters.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Record that this process exports traces.
pub(crate) fn set_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether this code runs in a trace that was not sampled: no span of it is built.
#[doc(hidden)]
pub fn in_unsampled_trace() -> bool {
    exporting() && sampling::in_unsampled()
}

/// A Guild span: `tracing::info_span!(target: SPAN_TARGET, …)` with the same arguments (a name,
/// optionally `parent:` first, then fields), except that inside a trace that was not sampled it
/// is [`tracing::Span::none`] at once. The sampling layer would disable it anyway, but only
/// after the subscriber had asked each layer's filter about it (about 150 instructions a span,
/// seven spans a run). The target is always [`SPAN_TARGET`]: a `target:` argument is refused.
/// Needs no `tracing` dependency of the caller's own.
#[macro_export]
macro_rules! span {
    ($($arg:tt)+) => {
        if $crate::in_unsampled_trace() {
            $crate::__tracing::Span::none()
        } else {
            $crate::__tracing::info_span!(target: $crate::SPAN_TARGET, $($arg)+)
        }
    };
}

/// `tracing`, for [`span!`]'s expansion in crates that name it otherwise or not at all.
#[doc(hidden)]
pub use tracing as __tracing;

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A `[telemetry]` field or `OTEL_*` variable that cannot be used.
    #[error("{field}: {message}")]
    Config {
        /// The field (`telemetry.sampler`) or variable (`OTEL_TRACES_SAMPLER`).
        field: String,
        /// What is wrong and what to set instead.
        message: String,
    },
    /// The OTLP exporter could not be built.
    #[error("the OTLP exporter could not start: {0}")]
    Exporter(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attribute_is_cut_to_its_bound_at_a_character_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(ATTRIBUTE_BYTES_MAX);
        let cut = clip(&long);
        assert!(cut.len() <= ATTRIBUTE_BYTES_MAX && cut.len() >= ATTRIBUTE_BYTES_MAX - 1, "{}", cut.len());
        assert!(long.starts_with(cut));
    }
}
