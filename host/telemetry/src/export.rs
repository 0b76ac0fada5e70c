//! Spans to the collector: the SDK's batch processor and OTLP/HTTP exporter, wrapped so that
//! every span that never reaches the collector is counted (`guild_telemetry_spans_dropped_total`)
//! and the queue between the two has the operator's bound, not the SDK's.
//!
//! The SDK drops a span silently when its queue is full and keeps the count to itself, so the
//! queue bound is enforced here, in front of it: a span is let through only while fewer than
//! `queue_spans_max` are between `on_end` and an export, and the SDK's own queue is sized so it
//! never fills first. A failed export (the collector down, a timeout) counts its whole batch.

use crate::TelemetryError;
use crate::settings::{ParentlessChoice, SamplerChoice, TelemetrySettings};
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Spans that never reached the collector since the process started: refused by a full queue,
/// or in a batch whose export failed.
static SPANS_DROPPED: AtomicU64 = AtomicU64::new(0);

/// `guild_telemetry_spans_dropped_total`: spans that never reached the collector since the
/// process started (0 while tracing is off).
pub fn spans_dropped() -> u64 {
    SPANS_DROPPED.load(Ordering::Relaxed)
}

/// How often a failing export is logged at most, ms: a collector that is down is said once a
/// minute, not once a batch.
pub const EXPORT_FAILURE_LOG_EVERY_MS: u64 = 60_000;

/// When an export failure was last logged (ms since the Unix epoch; 0: never).
static LAST_WARNED_MS: AtomicU64 = AtomicU64::new(0);

/// Log a failed export at warn, at most once every [`EXPORT_FAILURE_LOG_EVERY_MS`] (the count
/// of every lost span is in `guild_telemetry_spans_dropped_total`, and in the line).
fn warn_now_and_then(error: &str, dropped: u64) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let now = u64::try_from(now).unwrap_or(u64::MAX);
    let last = LAST_WARNED_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) < EXPORT_FAILURE_LOG_EVERY_MS
        || LAST_WARNED_MS.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
    {
        return;
    }
    tracing::warn!(
        %error,
        spans_dropped_total = dropped,
        "spans could not be sent to the OTLP collector and were dropped; runs go on (check the endpoint, \
         OTEL_EXPORTER_OTLP_HEADERS and the collector's logs; said at most once a minute)"
    );
}

/// Spans between `on_end` and an export.
#[derive(Debug, Default)]
struct Queue {
    waiting: AtomicUsize,
}

/// The SDK's batch processor behind a counted bound.
#[derive(Debug)]
struct BoundedProcessor {
    inner: BatchSpanProcessor,
    queue: Arc<Queue>,
    max: usize,
}

impl SpanProcessor for BoundedProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let before = self.queue.waiting.fetch_add(1, Ordering::AcqRel);
        if before >= self.max {
            self.queue.waiting.fetch_sub(1, Ordering::AcqRel);
            let dropped = SPANS_DROPPED.fetch_add(1, Ordering::Relaxed) + 1;
            warn_now_and_then(
                &format!("{} spans wait for export already (telemetry.queue_spans_max)", self.max),
                dropped,
            );
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what it takes off the queue and what it fails to deliver.
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    queue: Arc<Queue>,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let _ = self.queue.waiting.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(spans)));
        let result = self.inner.export(batch).await;
        if let Err(error) = &result {
            let dropped = SPANS_DROPPED.fetch_add(spans as u64, Ordering::Relaxed) + spans as u64;
            warn_now_and_then(&format!("{error}"), dropped);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The tracer provider `settings` describe: OTLP/HTTP protobuf, batched and bounded.
///
/// # Errors
/// [`TelemetryError::Exporter`] when the exporter cannot be built (a malformed endpoint).
pub(crate) fn provider(settings: &TelemetrySettings) -> Result<SdkTracerProvider, TelemetryError> {
    // reqwest is built without a TLS provider of its own: it takes the process's default, ring
    // (an `Err` means one was installed already, which then serves).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_timeout(Duration::from_millis(settings.export_timeout_ms));
    if let Some(url) = &settings.traces_endpoint {
        exporter = exporter.with_endpoint(url.clone());
    }
    // Headers (a collector's API key) come from OTEL_EXPORTER_OTLP_HEADERS, read by the exporter.
    let exporter = exporter.build().map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let queue = Arc::new(Queue::default());
    let exporter = CountingExporter { inner: exporter, queue: queue.clone() };
    // The SDK's queue holds what ours lets through plus a batch the worker has taken out of it
    // but not yet handed to the exporter: it never fills before ours.
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(settings.queue_spans_max + settings.batch_spans_max)
        .with_max_export_batch_size(settings.batch_spans_max)
        .with_scheduled_delay(Duration::from_millis(settings.scheduled_delay_ms))
        .build();
    let inner = BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
    let processor = BoundedProcessor { inner, queue, max: settings.queue_spans_max };
    let mut attributes = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
    attributes.extend(settings.resource_attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())));
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attributes(attributes)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler(settings.sampler))
        .with_id_generator(crate::sampling::PresetIds::default())
        .with_resource(resource)
        .build())
}

/// The sampler `choice` names.
pub(crate) fn sampler(choice: SamplerChoice) -> Sampler {
    let parentless = |choice: ParentlessChoice| match choice {
        ParentlessChoice::AlwaysOn => Sampler::AlwaysOn,
        ParentlessChoice::AlwaysOff => Sampler::AlwaysOff,
        ParentlessChoice::Ratio(ratio) => Sampler::TraceIdRatioBased(ratio),
    };
    match choice {
        SamplerChoice::AlwaysOn => Sampler::AlwaysOn,
        SamplerChoice::AlwaysOff => Sampler::AlwaysOff,
        SamplerChoice::Ratio(ratio) => Sampler::TraceIdRatioBased(ratio),
        SamplerChoice::ParentBased(inner) => Sampler::ParentBased(Box::new(parentless(inner))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::error::OTelSdkError;

    /// A collector that is down.
    #[derive(Debug)]
    struct Down;

    impl SpanExporter for Down {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            Err(OTelSdkError::InternalFailure("connection refused".into()))
        }
    }

    #[test]
    fn every_span_refused_by_the_full_queue_or_lost_in_a_failed_export_is_counted() {
        let before = spans_dropped();
        let queue = Arc::new(Queue::default());
        let exporter = CountingExporter { inner: Down, queue: queue.clone() };
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(8)
            .with_max_export_batch_size(4)
            .with_scheduled_delay(Duration::from_secs(60))
            .build();
        let inner = BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
        let provider =
            SdkTracerProvider::builder().with_span_processor(BoundedProcessor { inner, queue, max: 4 }).build();
        let tracer = provider.tracer("test");
        for _ in 0..10 {
            tracer.start("span").end();
        }
        let _ = provider.force_flush();
        assert_eq!(spans_dropped() - before, 10, "none reached the collector, each is counted once");
        let _ = provider.shutdown();
    }
}
