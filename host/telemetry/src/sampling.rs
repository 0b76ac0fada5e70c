//! Head sampling decided once per trace, at its root, so that an unsampled trace costs one
//! bare span.
//!
//! The SDK's sampler runs when a span starts, but by then `tracing-opentelemetry` has built the
//! span: recorded its fields, allocated its attributes, looked up its parent, and it keeps
//! stamping the span's end time each time a task holding it yields. At a 1% ratio that is 99
//! roots built for every one kept. So a trace's root (the request, the MCP call, the job) is
//! started with [`root`], which asks the configured sampler first, with the caller's context
//! and the trace id the root will have:
//! - sampled: the root is built as any span, and the SDK, asking the same sampler about the same
//!   trace id, comes to the same decision;
//! - not sampled: the root is a bare marker span ([`UNSAMPLED_TARGET`]) that no layer but
//!   [`HeadSampled`] sees, carrying the trace's context (caller's trace id, a span id of its
//!   own, the sampled flag unset, the caller's `tracestate` and baggage) for what runs inside.
//!
//! With [`HeadSampled`] beside the exporter, a Guild span whose trace was not sampled is never
//! created at all (its call site returns a disabled span, as while tracing is off); a Guild span
//! with no Guild span above it that was not started with [`root`] is built and offered to the
//! SDK's sampler, whose decision then holds for the whole local trace as well.
//!
//! The unsampled root stays the current span for everything inside it, so a log line, a job and
//! an upstream request made inside still carry its trace id, with the W3C sampled flag unset
//! (`-00`), as the W3C Trace Context asks of a participant that does not record.
//!
//! A span declared `parent: None` is judged by the current Guild span like any other: declare
//! such roots where no Guild span is current (Guild's are in the audit writer's task).

use crate::{SPAN_TARGET, TraceContext};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, ShouldSample};
use std::cell::Cell;
use std::sync::OnceLock;
use tracing::dispatcher::WeakDispatch;
use tracing::subscriber::Interest;
use tracing::{Dispatch, Metadata, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Filter, Layer};
use tracing_subscriber::registry::{Extensions, LookupSpan, Registry, SpanRef};

/// The layer that disables, for every layer at once, a Guild span whose trace was not sampled;
/// it sees Guild's spans only ([`GuildSpans`]). A per-layer filter could not do this (the
/// registry still creates a span every per-layer filter refused), and a layer without a filter
/// of its own would turn every call site the other layers never want into one asked each time.
pub(crate) struct HeadSampled {
    /// The dispatcher this layer serves: how a span's OpenTelemetry context (and so its
    /// trace's sampling decision) is read.
    dispatch: OnceLock<WeakDispatch>,
    /// The sampler the exporter's provider was built with, asked by [`root`] before a root is.
    sampler: Sampler,
}

impl HeadSampled {
    /// The layer for a provider built with `sampler` and [`PresetIds`].
    pub(crate) fn new(sampler: Sampler) -> Self {
        Self { dispatch: OnceLock::new(), sampler }
    }
}

impl<S> Layer<S> for HeadSampled
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn enabled(&self, meta: &Metadata<'_>, cx: Context<'_, S>) -> bool {
        if meta.target() == UNSAMPLED_TARGET {
            return true;
        }
        let Some(current) = cx.current_span().id().cloned() else {
            return true;
        };
        // The current span is most often the trace's root or a Guild span (seen through this
        // layer's filter, without the dispatcher); else a log span, below the nearest one.
        if let Some(guild) = cx.span(&current)
            && let Some(sampled) = known(&guild.extensions())
        {
            return sampled;
        }
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
        if let Some(sampled) = known(&guild.extensions()) {
            return sampled;
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

/// The sampling decision a Guild span's extensions already hold: an unsampled root's, or one
/// cached when an earlier child asked.
fn known(extensions: &Extensions<'_>) -> Option<bool> {
    if extensions.get::<Unsampled>().is_some() {
        return Some(false);
    }
    extensions.get::<Sampled>().map(|Sampled(sampled)| *sampled)
}

/// The OpenTelemetry context of the nearest Guild span at or above span `id` (a log span may sit
/// between): what a log line, a job or an upstream request made there belongs to.
pub(crate) fn context_near(id: &tracing::span::Id, dispatch: &Dispatch) -> Option<opentelemetry::Context> {
    let guild = nearest_guild(dispatch.downcast_ref::<Registry>()?, id)?;
    if let Some(Unsampled(cx)) = guild.extensions().get::<Unsampled>() {
        return Some(cx.clone()).filter(|cx| cx.span().span_context().is_valid());
    }
    let guild = guild.id();
    tracing_opentelemetry::get_otel_context(&guild, dispatch).filter(|cx| cx.span().span_context().is_valid())
}

/// The nearest Guild span (or unsampled root) at or above span `id`: a log span may sit between.
fn nearest_guild<'a>(registry: &'a Registry, id: &tracing::span::Id) -> Option<SpanRef<'a, Registry>> {
    registry.span(id)?.scope().find(|span| {
        let target = span.metadata().target();
        target == SPAN_TARGET || target == UNSAMPLED_TARGET
    })
}

/// The `tracing` target of an unsampled trace's root: a marker span no layer but
/// [`HeadSampled`] sees (each log filter turns it off), carrying its trace's context.
pub(crate) const UNSAMPLED_TARGET: &str = "guild_unsampled";

/// An unsampled root's trace context: its trace id, its own span id, the sampled flag unset, and
/// the caller's `tracestate` and baggage.
struct Unsampled(opentelemetry::Context);

/// Start a trace's root span: the API request, the MCP call, the job, a span with no Guild span
/// above it. The sampler the exporter was built with decides now, with `caller` (the context the
/// call came with) as parent and the trace id the root will have (the caller's, else a fresh
/// one); `name` is what the sampler is told the span is called.
/// - Sampled: `build()`'s span, a child of `caller`, with that trace id.
/// - Not sampled: a bare marker span (`build` is not called, nothing is exported) that carries
///   the trace's context for what runs inside: [`TraceContext::current`] and log lines still
///   name the trace, with the sampled flag unset.
/// - Tracing off: `build()`'s span as it is (disabled at its call site).
///
/// Call it where no Guild span is current (at the top of a request or a task): a fresh root is
/// decided with no parent, as the SDK decides it only when nothing traced is current.
pub fn root(caller: Option<&TraceContext>, name: &str, build: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if !tracing::enabled!(target: SPAN_TARGET, tracing::Level::INFO) {
        return build();
    }
    // A context that came through Redis was not checked on the way in: an invalid one is none.
    let parent = caller.map(TraceContext::context).filter(|cx| cx.span().span_context().is_valid());
    let trace_id = match &parent {
        Some(parent) => parent.span().span_context().trace_id(),
        None => RandomIdGenerator::default().new_trace_id(),
    };
    let parent = parent.unwrap_or_default();
    let decision = tracing::dispatcher::get_default(|dispatch| {
        let layer = dispatch.downcast_ref::<HeadSampled>()?;
        Some(layer.sampler.should_sample(Some(&parent), trace_id, name, &SpanKind::Server, &[], &[]))
    });
    let Some(decision) = decision else {
        let span = build();
        if let Some(caller) = caller {
            caller.adopt(&span);
        }
        return span;
    };
    if decision.decision != SamplingDecision::Drop {
        let span = build();
        if parent.has_active_span() {
            let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&span, parent);
        } else {
            // Started here, on this thread, so that the SDK draws the trace id just decided on
            // (it asks the same sampler about it).
            let _preset = Preset::trace_id(trace_id);
            let _ = tracing_opentelemetry::OpenTelemetrySpanExt::context(&span);
        }
        return span;
    }
    let own = SpanContext::new(
        trace_id,
        RandomIdGenerator::default().new_span_id(),
        TraceFlags::default(),
        false,
        decision.trace_state,
    );
    let cx = parent.with_remote_span_context(own);
    let marker = tracing::info_span!(target: UNSAMPLED_TARGET, "unsampled trace");
    marker.with_subscriber(|(id, dispatch)| {
        if let Some(span) = dispatch.downcast_ref::<Registry>().and_then(|registry| registry.span(id)) {
            span.extensions_mut().insert(Unsampled(cx));
        }
    });
    marker
}

thread_local! {
    /// The trace id [`root`] decided on for a fresh trace, taken by the next trace id drawn on
    /// this thread.
    static PRESET_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// [`PRESET_TRACE_ID`] set for as long as this lives, cleared however the scope ends.
struct Preset;

impl Preset {
    fn trace_id(id: TraceId) -> Self {
        PRESET_TRACE_ID.set(Some(id));
        Self
    }
}

impl Drop for Preset {
    fn drop(&mut self) {
        PRESET_TRACE_ID.set(None);
    }
}

/// The provider's id generator: random ids, except that a root [`root`] decided to sample gets
/// the trace id the decision was made on.
#[derive(Debug, Default)]
pub(crate) struct PresetIds(RandomIdGenerator);

impl IdGenerator for PresetIds {
    fn new_trace_id(&self) -> TraceId {
        PRESET_TRACE_ID.take().unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

/// A Guild span's trace's sampling decision, kept on it once a child asked.
struct Sampled(bool);

/// [`HeadSampled`]'s filter: Guild's spans (target [`SPAN_TARGET`]) and unsampled roots
/// ([`UNSAMPLED_TARGET`]), nothing else.
pub(crate) struct GuildSpans;

impl GuildSpans {
    fn wants(meta: &Metadata<'_>) -> bool {
        meta.is_span() && (meta.target() == SPAN_TARGET || meta.target() == UNSAMPLED_TARGET)
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
        // Guild's spans and unsampled roots are all at INFO (see `exporter_layer`).
        Some(LevelFilter::INFO)
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
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(kept.clone())
            .with_sampler(sampler.clone())
            .with_id_generator(super::PresetIds::default())
            .build();
        let layers = crate::logs::exporter_layer(provider.tracer("test"), sampler);
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
        crate::root(Some(&context(traceparent)), "request", || tracing::info_span!(target: SPAN_TARGET, "request"))
    }

    /// Whether `sampler` keeps a fresh trace with id `trace_id`.
    fn keeps(sampler: &Sampler, trace_id: opentelemetry::trace::TraceId) -> bool {
        use opentelemetry_sdk::trace::ShouldSample;
        let kind = opentelemetry::trace::SpanKind::Server;
        let result = sampler.should_sample(None, trace_id, "request", &kind, &[], &[]);
        result.decision == opentelemetry_sdk::trace::SamplingDecision::RecordAndSample
    }

    #[test]
    fn the_exporters_layers_ask_for_no_level_below_info() {
        // A lower hint would make every `debug!` and `trace!` call site of every crate ask the
        // subscriber whether it is wanted, on every call, while tracing is on.
        let provider = SdkTracerProvider::builder().build();
        let layers = crate::logs::exporter_layer(provider.tracer("test"), Sampler::AlwaysOn);
        let subscriber = tracing_subscriber::registry().with(layers);
        let hint = tracing::Subscriber::max_level_hint(&subscriber);
        assert_eq!(hint, Some(tracing_subscriber::filter::LevelFilter::INFO));
    }

    #[test]
    fn an_unsampled_root_is_one_bare_span_that_carries_the_callers_trace_state_and_baggage() {
        let spans = exported(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)), || {
            let caller = TraceContext {
                tracestate: Some("vendor=1".into()),
                baggage: Some("user=ada".into()),
                ..context(UNSAMPLED)
            };
            let root = crate::root(Some(&caller), "request", || panic!("an unsampled root is not built"));
            assert!(!root.is_disabled(), "the marker is a span, so that what runs inside finds the trace");
            let _inside = root.enter();
            assert!(tracing::info_span!(target: SPAN_TARGET, "execute_tool").is_disabled());
            let current = TraceContext::current().expect("the marker's context");
            assert_eq!(current.trace_id(), CALLER_TRACE);
            let own_span = current.traceparent.split('-').nth(2).expect("span id");
            assert_ne!(own_span, "00f067aa0ba902b7", "the root has a span id of its own, the caller's is its parent");
            assert!(current.traceparent.ends_with("-00"), "{}", current.traceparent);
            assert_eq!(current.tracestate.as_deref(), Some("vendor=1"));
            assert_eq!(current.baggage.as_deref(), Some("user=ada"));
            let (trace, span) = crate::ids(&tracing::Span::current()).expect("ids");
            assert_eq!((trace.as_str(), span.as_str()), (CALLER_TRACE, own_span));
        });
        assert!(spans.is_empty(), "{spans:?}");
    }

    #[test]
    fn a_malformed_context_from_a_job_starts_a_fresh_trace() {
        // A job's context is read from Redis without the checks a request's header gets.
        let garbage = TraceContext { traceparent: "00-not-a-trace-01".into(), tracestate: None, baggage: None };
        let spans = exported(Sampler::AlwaysOff, || {
            let root = crate::root(Some(&garbage), "job", || panic!("not sampled"));
            let _inside = root.enter();
            let current = TraceContext::current().expect("a trace of its own");
            assert_ne!(current.trace_id(), "0".repeat(32), "never the all-zero trace id");
            assert!(current.traceparent.ends_with("-00"), "{}", current.traceparent);
        });
        assert!(spans.is_empty());
    }

    #[test]
    fn a_fresh_root_is_decided_on_the_trace_id_it_then_has() {
        const TRACES: usize = 400;
        let sampler = Sampler::TraceIdRatioBased(0.5);
        let mut dropped = Vec::new();
        let spans = exported(sampler.clone(), || {
            for _ in 0..TRACES {
                let root = crate::root(None, "request", || tracing::info_span!(target: SPAN_TARGET, "request"));
                let _inside = root.enter();
                let child = tracing::info_span!(target: SPAN_TARGET, "execute_tool");
                if child.is_disabled() {
                    let id = TraceContext::current().expect("an unsampled root still names its trace");
                    dropped.push(u128::from_str_radix(id.trace_id(), 16).expect("hex"));
                }
            }
        });
        let mut kept = std::collections::HashMap::<_, usize>::new();
        for span in &spans {
            *kept.entry(span.span_context.trace_id()).or_default() += 1;
        }
        assert!(kept.values().all(|&n| n == 2), "every kept trace is whole: {kept:?}");
        assert_eq!(kept.len() + dropped.len(), TRACES);
        // Decided once, not once here and again by the SDK on another id (which would keep ~1/4).
        assert!((120..=280).contains(&kept.len()), "about half kept: {}", kept.len());
        assert!(kept.keys().all(|&id| keeps(&sampler, id)), "each kept trace's own id is one the ratio keeps");
        assert!(dropped.iter().all(|&id| !keeps(&sampler, id.into())), "and each dropped one's, one it drops");
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
