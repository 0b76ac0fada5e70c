//! The process's one `tracing` subscriber: log lines on stderr, and with tracing on, spans to
//! the exporter and each log line inside a traced span marked with its trace and span ids.

use crate::sampling::{GuildSpans, HeadSampled};
use crate::{SPAN_TARGET, TelemetryError, TelemetrySettings};
use std::sync::OnceLock;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStyle {
    /// One JSON object a line.
    Json,
    /// Text, coloured only for a person at a terminal.
    Text,
}

/// The dispatcher installed, kept so a log line can look up its span's trace context (inside
/// an event's dispatch, `tracing`'s own current dispatcher is not reachable).
static DISPATCH: OnceLock<tracing::Dispatch> = OnceLock::new();
/// The exporter's provider, flushed by [`shutdown`].
static PROVIDER: OnceLock<opentelemetry_sdk::trace::SdkTracerProvider> = OnceLock::new();

/// Install the process's subscriber, once: log lines on stderr in `style`, filtered by
/// `GUILD_LOG` (an `EnvFilter`, default `info`); with `settings`, Guild's spans are exported as
/// OTLP and log lines carry `trace_id` and `span_id`. Without them, Guild's spans are disabled
/// at their call sites and cost nothing. A second call does nothing and returns `Ok(false)`.
///
/// # Errors
/// [`TelemetryError::Exporter`] when the exporter cannot be built.
pub fn install(style: LogStyle, settings: Option<&TelemetrySettings>) -> Result<bool, TelemetryError> {
    if DISPATCH.get().is_some() {
        return Ok(false);
    }
    let filter = || {
        let filter = EnvFilter::try_from_env("GUILD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
        // Guild's spans are for the exporter; log lines name their run by field.
        match format!("{SPAN_TARGET}=off").parse() {
            Ok(directive) => filter.add_directive(directive),
            Err(_) => filter,
        }
    };
    let traced_filter = || traced_log_filter(filter());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let dispatch = match settings {
        None => {
            let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
            let fmt = match style {
                LogStyle::Json => {
                    fmt.json().with_current_span(true).with_span_list(false).with_filter(filter()).boxed()
                }
                LogStyle::Text => fmt.with_ansi(ansi).with_filter(filter()).boxed(),
            };
            tracing::Dispatch::new(tracing_subscriber::registry().with(fmt))
        }
        Some(settings) => {
            let provider = crate::export::provider(settings)?;
            let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "guild");
            let _ = PROVIDER.set(provider);
            let otel = exporter_layer(tracer, crate::export::sampler(settings.sampler));
            let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
            let fmt = match style {
                LogStyle::Json => fmt
                    .json()
                    .event_format(WithTraceIds {
                        inner: tracing_subscriber::fmt::format().json().with_current_span(true).with_span_list(false),
                        json: true,
                    })
                    .with_filter(traced_filter())
                    .boxed(),
                LogStyle::Text => fmt
                    .with_ansi(false)
                    .event_format(WithTraceIds { inner: tracing_subscriber::fmt::format(), json: false })
                    .with_filter(traced_filter())
                    .boxed(),
            };
            tracing::Dispatch::new(tracing_subscriber::registry().with(otel).with(fmt))
        }
    };
    if tracing::dispatcher::set_global_default(dispatch.clone()).is_err() {
        return Ok(false);
    }
    if settings.is_some() {
        crate::set_exporting();
    }
    let _ = DISPATCH.set(dispatch);
    Ok(true)
}

/// The log layer's filter while tracing is on: `directives`, asked only about what is not a Guild
/// span. Each Guild span's call site asks every layer's filter each time (its trace decides it),
/// and this answers by target without walking the directives; it hints no level the directives
/// do not.
fn traced_log_filter<S>(directives: EnvFilter) -> impl tracing_subscriber::layer::Filter<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    use tracing_subscriber::filter::FilterExt as _;
    tracing_subscriber::filter::filter_fn(|meta| meta.target() != SPAN_TARGET)
        .with_max_level_hint(tracing_subscriber::filter::LevelFilter::TRACE)
        .and(directives)
}

/// The layers that hand Guild's spans to `tracer` (of a provider built with `sampler` and
/// [`PresetIds`](crate::sampling::PresetIds)): the exporter's, under [`HeadSampled`]. Add them
/// to the registry before any other layer (the sampling decision is read from the exporter's
/// spans).
pub(crate) fn exporter_layer<S>(
    tracer: opentelemetry_sdk::trace::Tracer,
    sampler: opentelemetry_sdk::trace::Sampler,
) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let spans = tracing_subscriber::filter::Targets::new()
        .with_target(SPAN_TARGET, tracing::Level::INFO)
        .with_default(tracing::Level::WARN);
    // Guild's spans are all at INFO: a wider level here would raise the process's max level
    // hint, and every `debug!` and `trace!` call site in every crate would then be asked
    // whether it is wanted instead of skipped by one comparison.
    // No busy/idle timing, source location or thread attributes: each costs every span time on
    // the hot path, and the conventions do not ask for them. No OpenTelemetry context made
    // current on each entry either: a span's parent and context are read from `tracing`'s own.
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_filter(spans)
        .and_then(HeadSampled::new(sampler).with_filter(GuildSpans))
}

/// How long the process waits at exit for its last spans to be sent.
pub const SHUTDOWN_WAIT_MS: u64 = 2_000;

/// Send what spans are waiting and stop the exporter, within [`SHUTDOWN_WAIT_MS`] (a collector
/// that is down delays an exit no longer). Call once, as the process ends, outside any async
/// runtime.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown_with_timeout(std::time::Duration::from_millis(SHUTDOWN_WAIT_MS));
    }
}

/// A log line's formatter, adding the current span's trace and span ids.
struct WithTraceIds<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        // An unsampled trace's, else the nearest Guild span's.
        let cx = match (crate::sampling::unsampled_here(), ctx.current_span().id(), DISPATCH.get()) {
            (Some(unsampled), _, _) => Some(unsampled),
            (None, Some(id), Some(dispatch)) => crate::sampling::context_near(id, dispatch),
            _ => None,
        };
        let ids = cx.map(|cx| {
            use opentelemetry::trace::TraceContextExt;
            let span = cx.span();
            let span = span.span_context();
            (span.trace_id(), span.span_id())
        });
        let Some((trace_id, span_id)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.trim_end_matches('\n');
        if self.json && body.ends_with('}') {
            let body = &body[..body.len() - 1];
            writeln!(writer, "{body},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}")
        } else {
            writeln!(writer, "{body} trace_id={trace_id} span_id={span_id}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traced_log_filter_leaves_guild_spans_out_and_hints_the_directives_level() {
        let logs = tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_filter(traced_log_filter(EnvFilter::new("warn,guild_test=info")));
        let subscriber = tracing_subscriber::registry().with(logs);
        // A wider hint would make every `debug!` call site ask whether it is wanted.
        let hint = tracing::Subscriber::max_level_hint(&subscriber);
        assert_eq!(hint, Some(tracing_subscriber::filter::LevelFilter::INFO));
        tracing::subscriber::with_default(subscriber, || {
            // Other tests of this binary register and drop dispatchers on their own threads; a
            // call site's cached interest may have been computed without this one (tracing-core
            // caches it process-wide), so it is computed again with this one in place.
            tracing::callsite::rebuild_interest_cache();
            assert!(tracing::info_span!(target: SPAN_TARGET, "guild span").is_disabled());
            assert!(!tracing::info_span!(target: "guild_test", "log span").is_disabled());
            assert!(tracing::info_span!(target: "other", "below warn").is_disabled());
        });
    }
}
