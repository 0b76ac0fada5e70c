//! Head sampling decided once per trace, at its root, so that an unsampled trace builds no span.
//!
//! The SDK's sampler runs when a span starts, but by then `tracing-opentelemetry` has built the
//! span: recorded its fields, allocated its attributes, looked up its parent, and it keeps
//! stamping the span's end time each time a task holding it yields. At a 1% ratio that is 99
//! roots built for every one kept. So a trace's root (the request, the MCP call, the job) is
//! started with [`root`], which asks the configured sampler first, with the caller's context
//! and the trace id the root will have:
//! - sampled: the root is built as any span, and the SDK, asking the same sampler about the same
//!   trace id, comes to the same decision;
//! - not sampled: no span at all. The trace's context (caller's trace id, a span id of its own,
//!   the sampled flag unset, the caller's `tracestate` and baggage) is carried instead in a
//!   task-local slot, set around each poll of the futures that run in the trace ([`Traced`]).
//!
//! A Guild span made with [`span!`](crate::span!) while that slot holds a context is
//! `Span::none()` at its call site, the subscriber not asked; with [`HeadSampled`] beside the
//! exporter, one made with `info_span!` is disabled for every layer at once. A Guild
//! span with no Guild span above it that was not started with [`root`] is built and offered to
//! the SDK's sampler, whose decision then holds for the whole local trace as well.
//!
//! A log line, a job and an upstream request made inside an unsampled trace still carry its
//! trace id, read from the slot, with the W3C sampled flag unset (`-00`), as the W3C Trace
//! Context asks of a participant that does not record.
//!
//! An earlier form carried the unsampled context in a bare marker span: entering and leaving it
//! on every poll, and the registry look-ups each Guild call site then made, cost the daemon 6% of
//! its throughput at 1% sampling against this slot (`benches/RESULTS.md`, 2026-12-01).
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
use tracing_subscriber::registry::{LookupSpan, Registry, SpanRef};

tokio::task_local! {
    /// The context of the unsampled trace the current task (or [`Traced::in_scope`] closure)
    /// runs in; `None` in a sampled trace's scope, unset outside any.
    static UNSAMPLED: Option<opentelemetry::Context>;
}

/// The unsampled trace's context this code runs in, if it runs in one.
pub(crate) fn unsampled_here() -> Option<opentelemetry::Context> {
    UNSAMPLED.try_with(Option::clone).ok().flatten()
}

/// Whether this code runs in an unsampled trace (no clone of its context).
pub(crate) fn in_unsampled() -> bool {
    UNSAMPLED.try_with(Option::is_some).unwrap_or(false)
}

/// The trace a task or a scope runs in: a span to instrument it with, and while that trace was
/// not sampled, its context (carried around each poll, since no span holds it). Made by
/// [`root`], [`carried`](crate::carried) and [`here`](crate::here).
#[derive(Debug, Clone)]
pub struct Traced {
    span: tracing::Span,
    /// `Some(context)`: an unsampled trace's; `None`: a sampled trace's (hiding any unsampled
    /// one around it). Only used when `scoped`.
    unsampled: Option<opentelemetry::Context>,
    /// Whether tracing is on: while it is off, a `Traced` is its span and nothing more.
    scoped: bool,
}

impl Traced {
    /// `span` alone, as while tracing is off.
    pub(crate) fn plain(span: tracing::Span) -> Self {
        Self { span, unsampled: None, scoped: false }
    }

    /// No trace: for work that belongs to none (or is not traced on purpose), and for any while
    /// tracing is off.
    pub fn none() -> Self {
        Self::plain(tracing::Span::none())
    }

    /// `span`, in the unsampled trace `unsampled` or (`None`) in its own sampled one.
    pub(crate) fn scoped(span: tracing::Span, unsampled: Option<opentelemetry::Context>) -> Self {
        Self { span, unsampled, scoped: true }
    }

    /// The span: disabled when the trace was not sampled or tracing is off, so recording on it
    /// costs nothing then. Entering it alone does not carry an unsampled trace: run the work with
    /// [`Traced::scope`] or [`Traced::in_scope`].
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// `future`, instrumented with the span and run in this trace: each of its polls, wherever
    /// it is polled, sees the trace's context (the async form of [`Traced::in_scope`]).
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        let future = tracing::Instrument::instrument(future, self.span);
        if self.scoped { UNSAMPLED.scope(self.unsampled, future).await } else { future.await }
    }

    /// `f()`, inside the span and this trace.
    pub fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        let _entered = self.span.enter();
        if self.scoped { UNSAMPLED.sync_scope(self.unsampled.clone(), f) } else { f() }
    }
}

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

    fn enabled(&self, _meta: &Metadata<'_>, cx: Context<'_, S>) -> bool {
        if in_unsampled() {
            return false;
        }
        let Some(current) = cx.current_span().id().cloned() else {
            return true;
        };
        // The current span is most often a Guild span (seen through this layer's filter,
        // without the dispatcher); else a log span, below the nearest one.
        if let Some(guild) = cx.span(&current)
            && let Some(Sampled(sampled)) = guild.extensions().get::<Sampled>()
        {
            return *sampled;
        }
        let Some(dispatch) = self.dispatch.get().and_then(WeakDispatch::upgrade) else {
            return true;
        };
        let Some(registry) = dispatch.downcast_ref::<Registry>() else {
            return true;
        };
        // A sampled span, or a parentless one the SDK's sampler decided on. None: this span is
        // a root, which the sampler decides once it has adopted its caller's context.
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

/// Start a trace's root span: the API request, the MCP call, the job, a span with no Guild span
/// above it. The sampler the exporter was built with decides now, with `caller` (the context the
/// call came with) as parent and the trace id the root will have (the caller's, else a fresh
/// one); `name` is what the sampler is told the span is called.
/// - Sampled: `build()`'s span, a child of `caller`, with that trace id.
/// - Not sampled: no span (`build` is not called, nothing is exported); what runs in the
///   returned [`Traced`] still has the trace's context: [`TraceContext::current`] and log lines
///   name the trace, with the sampled flag unset.
/// - Tracing off: `build()`'s span as it is (disabled at its call site).
///
/// Call it where no Guild span is current (at the top of a request or a task): a fresh root is
/// decided with no parent, as the SDK decides it only when nothing traced is current.
pub fn root(caller: Option<&TraceContext>, name: &str, build: impl FnOnce() -> tracing::Span) -> Traced {
    if !crate::exporting() {
        return Traced::plain(build());
    }
    // Built outside any unsampled trace around this call (its spans would be disabled).
    let build = || if in_unsampled() { UNSAMPLED.sync_scope(None, build) } else { build() };
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
        return Traced::scoped(span, None);
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
        return Traced::scoped(span, None);
    }
    let own = SpanContext::new(
        trace_id,
        RandomIdGenerator::default().new_span_id(),
        TraceFlags::default(),
        false,
        decision.trace_state,
    );
    Traced::scoped(tracing::Span::none(), Some(parent.with_remote_span_context(own)))
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
        // Guild's spans are all at INFO (see `exporter_layer`).
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
        // As `install` does once its subscriber exports (never unset: every test here exports).
        crate::set_exporting();
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

    /// A request's root, a child of the caller's `traceparent`.
    fn request(traceparent: &str) -> super::Traced {
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
    fn an_unsampled_root_builds_no_span_and_carries_the_callers_trace_state_and_baggage() {
        let spans = exported(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)), || {
            let caller = TraceContext {
                tracestate: Some("vendor=1".into()),
                baggage: Some("user=ada".into()),
                ..context(UNSAMPLED)
            };
            let root = crate::root(Some(&caller), "request", || panic!("an unsampled root is not built"));
            assert!(root.span().is_disabled(), "no span: the trace is carried beside it");
            root.in_scope(|| {
                assert!(tracing::info_span!(target: SPAN_TARGET, "execute_tool").is_disabled());
                let current = TraceContext::current().expect("the trace's context");
                assert_eq!(current.trace_id(), CALLER_TRACE);
                let own_span = current.traceparent.split('-').nth(2).expect("span id").to_string();
                assert_ne!(
                    own_span, "00f067aa0ba902b7",
                    "the root has a span id of its own, the caller's is its parent"
                );
                assert!(current.traceparent.ends_with("-00"), "{}", current.traceparent);
                assert_eq!(current.tracestate.as_deref(), Some("vendor=1"));
                assert_eq!(current.baggage.as_deref(), Some("user=ada"));
                let (trace, span) = crate::ids(&tracing::Span::current()).expect("ids");
                assert_eq!((trace.as_str(), span.as_str()), (CALLER_TRACE, own_span.as_str()));
                assert_eq!(crate::trace_of(&tracing::Span::current()), Some((CALLER_TRACE.to_string(), false)));
            });
            assert_eq!(TraceContext::current(), None, "outside the root, no trace");
        });
        assert!(spans.is_empty(), "{spans:?}");
    }

    #[test]
    fn a_malformed_context_from_a_job_starts_a_fresh_trace() {
        // A job's context is read from Redis without the checks a request's header gets.
        let garbage = TraceContext { traceparent: "00-not-a-trace-01".into(), tracestate: None, baggage: None };
        let spans = exported(Sampler::AlwaysOff, || {
            let root = crate::root(Some(&garbage), "job", || panic!("not sampled"));
            root.in_scope(|| {
                let current = TraceContext::current().expect("a trace of its own");
                assert_ne!(current.trace_id(), "0".repeat(32), "never the all-zero trace id");
                assert!(current.traceparent.ends_with("-00"), "{}", current.traceparent);
            });
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
                root.in_scope(|| {
                    let child = tracing::info_span!(target: SPAN_TARGET, "execute_tool");
                    if child.is_disabled() {
                        let id = TraceContext::current().expect("an unsampled root still names its trace");
                        dropped.push(u128::from_str_radix(id.trace_id(), 16).expect("hex"));
                    }
                });
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
            request(UNSAMPLED).in_scope(|| {
                let child = tracing::info_span!(target: SPAN_TARGET, "execute_tool");
                let _deeper = child.enter();
                let grandchild = tracing::info_span!(target: SPAN_TARGET, "guest run");
                assert!(child.is_disabled() && grandchild.is_disabled(), "an unsampled trace builds no span");
                let current = TraceContext::current().expect("the root's trace is still carried");
                assert_eq!(current.trace_id(), CALLER_TRACE);
                assert!(current.traceparent.ends_with("-00"), "not sampled, and says so: {}", current.traceparent);
            });
        });
        assert!(spans.is_empty(), "nothing of an unsampled trace is exported: {spans:?}");
    }

    #[test]
    fn a_task_carrying_an_unsampled_trace_stays_in_it_across_its_polls_and_its_own_tasks() {
        use tracing::instrument::WithSubscriber as _;
        let spans = exported(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)), || {
            let dispatch = tracing::dispatcher::get_default(tracing::Dispatch::clone);
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
            let tasks = request(UNSAMPLED).in_scope(|| {
                let _log = tracing::info_span!(target: "guild_test", "run").entered();
                let run = tracing::info_span!(target: SPAN_TARGET, "execute_tool");
                assert!(run.is_disabled());
                // What a spawned task runs in: the request's unsampled trace, since the run is
                // not traced; and what a task spawned from that one runs in.
                let task = |traced: super::Traced| {
                    let dispatch = dispatch.clone();
                    runtime.spawn(
                        traced
                            .scope(async {
                                for _ in 0..8 {
                                    tokio::task::yield_now().await;
                                    assert!(tracing::info_span!(target: SPAN_TARGET, "seal").is_disabled());
                                    let current = TraceContext::current().expect("the carried trace");
                                    assert_eq!(current.trace_id(), CALLER_TRACE);
                                }
                                crate::here()
                            })
                            .with_subscriber(dispatch),
                    )
                };
                [task(crate::carried(run)), task(crate::here())]
            });
            assert_eq!(TraceContext::current(), None, "the scope ends with the root");
            runtime.block_on(async {
                for handle in tasks {
                    let inner = handle.await.expect("task");
                    let nested = inner
                        .scope(async { TraceContext::current().map(|cx| cx.trace_id().to_string()) })
                        .with_subscriber(dispatch.clone());
                    assert_eq!(nested.await.as_deref(), Some(CALLER_TRACE), "here() inside carries it on");
                }
            });
        });
        assert!(spans.is_empty(), "{spans:?}");
    }

    #[test]
    fn below_a_log_span_a_sampled_traces_span_is_built_in_it_and_names_it() {
        let spans = exported(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)), || {
            request(SAMPLED).in_scope(|| {
                // A log span between: the sampling decision is looked up past it, then cached.
                let _log = tracing::info_span!(target: "guild_test", "run").entered();
                for name in ["execute_tool", "seal"] {
                    let child = tracing::info_span!(target: SPAN_TARGET, "child", otel.name = name);
                    assert!(!child.is_disabled(), "{name}: in a sampled trace, below a log span");
                }
                let current = TraceContext::current().expect("the log span's trace");
                assert_eq!(current.trace_id(), CALLER_TRACE);
                assert!(current.traceparent.ends_with("-01"), "{}", current.traceparent);
            });
        });
        let root = spans.iter().find(|s| s.name == "request").expect("the root");
        let children: Vec<_> = spans.iter().filter(|s| s.name != "request").collect();
        assert_eq!(children.len(), 2, "{spans:?}");
        assert!(children.iter().all(|c| c.parent_span_id == root.span_context.span_id()), "{spans:?}");
    }

    #[test]
    fn a_sampled_root_started_inside_an_unsampled_trace_keeps_its_children() {
        let spans = exported(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)), || {
            request(UNSAMPLED).in_scope(|| {
                let sampled = request(SAMPLED);
                assert!(!sampled.span().is_disabled(), "a root is decided by its own caller");
                sampled.in_scope(|| {
                    assert!(!tracing::info_span!(target: SPAN_TARGET, "execute_tool").is_disabled());
                    assert!(TraceContext::current().expect("sampled").traceparent.ends_with("-01"));
                });
                assert!(tracing::info_span!(target: SPAN_TARGET, "seal").is_disabled(), "and the outer one resumes");
            });
        });
        let names: Vec<_> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&"request") && names.contains(&"execute_tool"), "{names:?}");
    }

    #[test]
    fn spans_made_with_the_macro_are_none_in_an_unsampled_trace_and_kept_in_a_sampled_one() {
        let spans = exported(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)), || {
            request(UNSAMPLED).in_scope(|| {
                let skipped = crate::span!("execute_tool", guild.tool = "echo");
                assert!(skipped.is_none(), "not built at all: the subscriber is not asked");
                assert!(crate::span!(parent: None, "audit write").is_none());
                // A sampled root started here is built, and so is its child made with the macro.
                let sampled = crate::root(Some(&context(SAMPLED)), "request", || crate::span!("request"));
                assert!(!sampled.span().is_disabled());
                sampled.in_scope(|| assert!(!crate::span!("execute_tool", guild.tool = "echo").is_disabled()));
            });
        });
        let names: Vec<_> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&"request") && names.contains(&"execute_tool"), "{names:?}");
    }

    #[test]
    fn a_sampled_root_keeps_its_whole_tree_linked() {
        let spans = exported(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)), || {
            request(SAMPLED).in_scope(|| {
                let child = tracing::info_span!(target: SPAN_TARGET, "execute_tool");
                let _deeper = child.enter();
                let grandchild = tracing::info_span!(target: SPAN_TARGET, "guest run");
                assert!(!grandchild.is_disabled());
            });
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
