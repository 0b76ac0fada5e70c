//! Head sampling decided once per trace, at its root, so that an unsampled trace costs one span.
//!
//! The SDK's sampler runs when a span starts, but by then `tracing-opentelemetry` has built the
//! span: recorded its fields, allocated its attributes, looked up its parent. At a 1% ratio that
//! is 99 spans built for every one kept. With [`HeadSampled`] beside the exporter, a Guild span
//! whose trace was not sampled is never created at all (its call site returns a disabled span,
//! as while tracing is off). Only a trace's root (a span with no Guild span above it: the
//! request, the MCP call, the job) is built and offered to the sampler, with the caller's
//! context it adopted; its decision then holds for the whole local trace.
//!
//! The unsampled root stays the current span for everything inside it, so a log line, a job and
//! an upstream request made inside still carry its trace id, with the W3C sampled flag unset
//! (`-00`), as the W3C Trace Context asks of a participant that does not record.
//!
//! A span declared `parent: None` is judged by the current Guild span like any other: declare
//! such roots where no Guild span is current (Guild's are in the audit writer's task).

use crate::SPAN_TARGET;
use opentelemetry::trace::TraceContextExt;
use std::sync::OnceLock;
use tracing::dispatcher::WeakDispatch;
use tracing::subscriber::Interest;
use tracing::{Dispatch, Metadata, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Filter, Layer};
use tracing_subscriber::registry::{LookupSpan, Registry, SpanRef};

/// The layer that disables, for every layer at once, a Guild span whose trace was not sampled;
/// it sees Guild's spans only ([`GuildSpans`]). A per-layer filter could not do this (the
/// registry still creates a span every per-layer filter refused), and a layer without a filter
/// of its own would turn every call site the other layers never want into one asked each time.
#[derive(Default)]
pub(crate) struct HeadSampled {
    /// The dispatcher this layer serves: how a span's OpenTelemetry context (and so its
    /// trace's sampling decision) is read.
    dispatch: OnceLock<WeakDispatch>,
}

impl<S> Layer<S> for HeadSampled
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn enabled(&self, _meta: &Metadata<'_>, cx: Context<'_, S>) -> bool {
        let Some(current) = cx.current_span().id().cloned() else {
            return true;
        };
        let Some(dispatch) = self.dispatch.get().and_then(WeakDispatch::upgrade) else {
            return true;
        };
        let Some(registry) = dispatch.downcast_ref::<Registry>() else {
            return true;
        };
        // This trace's root or a sampled span in it, since the spans of an unsampled trace below
        // its root are never created. None: this span is a root, which the sampler decides once
        // it has adopted its caller's context.
        let Some(guild) = nearest_guild(registry, &current) else {
            return true;
        };
        if let Some(Sampled(sampled)) = guild.extensions().get::<Sampled>() {
            return *sampled;
        }
        let id = guild.id();
        drop(guild);
        let sampled = tracing_opentelemetry::get_otel_context(&id, &dispatch)
            .is_none_or(|cx| cx.span().span_context().is_sampled());
        // Kept on the span, so its other children are decided without asking the exporter.
        if let Some(span) = registry.span(&id) {
            span.extensions_mut().replace(Sampled(sampled));
        }
        sampled
    }
}

/// The OpenTelemetry context of the nearest Guild span at or above span `id` (a log span may sit
/// between): what a log line, a job or an upstream request made there belongs to.
pub(crate) fn context_near(id: &tracing::span::Id, dispatch: &Dispatch) -> Option<opentelemetry::Context> {
    let guild = nearest_guild(dispatch.downcast_ref::<Registry>()?, id)?.id();
    tracing_opentelemetry::get_otel_context(&guild, dispatch).filter(|cx| cx.span().span_context().is_valid())
}

/// The nearest Guild span at or above span `id`: a log span may sit between.
fn nearest_guild<'a>(registry: &'a Registry, id: &tracing::span::Id) -> Option<SpanRef<'a, Registry>> {
    registry.span(id)?.scope().find(|span| span.metadata().target() == SPAN_TARGET)
}

/// A Guild span's trace's sampling decision, kept on it once a child asked.
struct Sampled(bool);

/// [`HeadSampled`]'s filter: Guild's spans (target [`SPAN_TARGET`]), nothing else.
pub(crate) struct GuildSpans;

impl GuildSpans {
    fn wants(meta: &Metadata<'_>) -> bool {
        meta.is_span() && meta.target() == SPAN_TARGET
    }
}

impl<S> Filter<S> for GuildSpans {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        Self::wants(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        // A Guild span is decided each time, by the trace it would join.
        if Self::wants(meta) { Interest::sometimes() } else { Interest::never() }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }
}

#[cfg(test)]
mod tests {
    use crate::{SPAN_TARGET, TraceContext};
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// A collector that keeps what it is sent.
    #[derive(Debug, Clone, Default)]
    struct Kept(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Kept {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().expect("kept").extend(batch);
            Ok(())
        }
    }

    /// Run `f` under the exporter's layer with `sampler`, beside a log layer that keeps every
    /// span at info; the spans that were exported.
    fn exported(sampler: Sampler, f: impl FnOnce()) -> Vec<SpanData> {
        use tracing_subscriber::Layer as _;
        let kept = Kept::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(kept.clone()).with_sampler(sampler).build();
        let layers = crate::logs::exporter_layer(provider.tracer("test"));
        let logs = tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_filter(tracing_subscriber::filter::Targets::new().with_target("guild_test", tracing::Level::INFO));
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layers).with(logs));
        tracing::dispatcher::with_default(&dispatch, f);
        let _ = provider.force_flush();
        kept.0.lock().expect("kept").clone()
    }

    fn context(traceparent: &str) -> TraceContext {
        TraceContext::from_fields(|name| (name == "traceparent").then_some(traceparent)).expect("valid")
    }

    const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// A request's root span, a child of the caller's `traceparent`.
    fn request(traceparent: &str) -> tracing::Span {
        let root = tracing::info_span!(target: SPAN_TARGET, "request");
        context(traceparent).adopt(&root);
        root
    }

    #[test]
    fn inside_an_unsampled_root_no_span_is_built_and_the_trace_id_still_travels() {
        let spans = exported(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)), || {
            let root = request(UNSAMPLED);
            let _inside = root.enter();
            let child = tracing::info_span!(target: SPAN_TARGET, "execute_tool");
            let _deeper = child.enter();
            let grandchild = tracing::info_span!(target: SPAN_TARGET, "guest run");
            assert!(child.is_disabled() && grandchild.is_disabled(), "an unsampled trace builds its root only");
            let current = TraceContext::current().expect("the root is still current, with its trace");
            assert_eq!(current.trace_id(), CALLER_TRACE);
            assert!(current.traceparent.ends_with("-00"), "not sampled, and says so: {}", current.traceparent);
        });
        assert!(spans.is_empty(), "nothing of an unsampled trace is exported: {spans:?}");
    }

    #[test]
    fn a_task_carrying_an_unsampled_trace_stays_in_it_through_a_log_span() {
        let spans = exported(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)), || {
            let root = request(UNSAMPLED);
            let _inside = root.enter();
            let run = tracing::info_span!(target: SPAN_TARGET, "execute_tool");
            assert!(run.is_disabled());
            // What a spawned task is instrumented with: the request, since the run is not traced.
            let carried = crate::carried(run);
            let log = tracing::info_span!(target: "guild_test", "run");
            let dispatch = tracing::dispatcher::get_default(tracing::Dispatch::clone);
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    let _default = tracing::dispatcher::set_default(&dispatch);
                    let _log = log.enter();
                    let _carried = carried.enter();
                    let _inner_log = tracing::info_span!(target: "guild_test", "step").entered();
                    assert!(!log.is_disabled(), "the log layer keeps its span");
                    let stage = tracing::info_span!(target: SPAN_TARGET, "seal");
                    assert!(stage.is_disabled(), "below a log span, still in the unsampled trace");
                    let current = TraceContext::current().expect("the log span's trace");
                    assert_eq!(current.trace_id(), CALLER_TRACE);
                });
                // No log span this time: the carried span alone keeps the task in the trace.
                scope.spawn(|| {
                    let _default = tracing::dispatcher::set_default(&dispatch);
                    let _carried = carried.enter();
                    assert!(tracing::info_span!(target: SPAN_TARGET, "seal").is_disabled());
                    assert_eq!(
                        crate::ids(&tracing::Span::current()).map(|(trace, _)| trace).as_deref(),
                        Some(CALLER_TRACE)
                    );
                });
            });
        });
        assert!(spans.is_empty(), "{spans:?}");
    }

    #[test]
    fn a_sampled_root_keeps_its_whole_tree_linked() {
        let spans = exported(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)), || {
            let root = request(SAMPLED);
            let _inside = root.enter();
            let child = tracing::info_span!(target: SPAN_TARGET, "execute_tool");
            let _deeper = child.enter();
            let grandchild = tracing::info_span!(target: SPAN_TARGET, "guest run");
            assert!(!grandchild.is_disabled());
        });
        let by_name = |name: &str| spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("{name}: {spans:?}"));
        let (root, child, grandchild) = (by_name("request"), by_name("execute_tool"), by_name("guest run"));
        assert_eq!(root.parent_span_id.to_string(), "00f067aa0ba902b7", "the caller's span is the root's parent");
        assert_eq!(child.parent_span_id, root.span_context.span_id());
        assert_eq!(grandchild.parent_span_id, child.span_context.span_id());
        assert!(spans.iter().all(|s| s.span_context.trace_id().to_string() == CALLER_TRACE));
    }

    #[test]
    fn at_a_ratio_each_trace_is_kept_whole_or_not_at_all() {
        const TRACES: usize = 200;
        let spans = exported(Sampler::TraceIdRatioBased(0.5), || {
            for _ in 0..TRACES {
                let root = tracing::info_span!(target: SPAN_TARGET, "request");
                let _inside = root.enter();
                let child = tracing::info_span!(target: SPAN_TARGET, "execute_tool");
                let _deeper = child.enter();
                drop(tracing::info_span!(target: SPAN_TARGET, "seal"));
            }
        });
        let mut traces = std::collections::HashMap::<_, usize>::new();
        for span in &spans {
            *traces.entry(span.span_context.trace_id()).or_default() += 1;
        }
        assert!(traces.values().all(|&n| n == 3), "every kept trace has all three spans: {traces:?}");
        assert!(!traces.is_empty() && traces.len() < TRACES, "about half kept: {}", traces.len());
    }
}
