//! W3C trace context across process boundaries: read from an HTTP request's headers or an MCP
//! request's `params._meta`, carried in a Redis job, written into an upstream request.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// `tracestate` longer than this is not carried, bytes (W3C Trace Context: vendors should
/// propagate at least 512 characters; a longer one may be cut).
pub const TRACESTATE_BYTES_MAX: usize = 512;
/// `baggage` longer than this is not carried, bytes (W3C Baggage: at least 8192 bytes).
pub const BAGGAGE_BYTES_MAX: usize = 8192;
/// A `traceparent` is 55 bytes in version 00; a longer one (a future version) is read up to here.
const TRACEPARENT_BYTES_MAX: usize = 256;

/// One call's place in a distributed trace, in its W3C text form: what a Redis job carries from
/// the API node to the worker, and what an upstream receives.
/// Read leniently (unknown fields are ignored): it rides along in jobs and results, and a node of
/// another version must never fail a job over it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TraceContext {
    /// `00-{32 hex trace id}-{16 hex parent span id}-{2 hex flags}`.
    pub traceparent: String,
    /// Vendors' entries, when the caller sent any (at most [`TRACESTATE_BYTES_MAX`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// W3C baggage, when the caller sent any (at most [`BAGGAGE_BYTES_MAX`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baggage: Option<String>,
}

struct Pairs<'a>(&'a [(&'a str, &'a str)]);

impl Extractor for Pairs<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(name, _)| name.eq_ignore_ascii_case(key)).map(|(_, value)| *value)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| *name).collect()
    }
}

#[derive(Default)]
struct Fields(Vec<(String, String)>);

impl Injector for Fields {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_string(), value));
    }
}

impl TraceContext {
    /// The context `get` finds (`traceparent`, `tracestate`, `baggage`, names matched without
    /// regard to case), when it holds a valid `traceparent`. An oversized `tracestate` or
    /// `baggage` is left out rather than refusing the call.
    pub fn from_fields<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<Self> {
        let traceparent = get("traceparent").map(str::trim).filter(|t| t.len() <= TRACEPARENT_BYTES_MAX)?;
        let pairs = [("traceparent", traceparent)];
        let parsed = TraceContextPropagator::new().extract(&Pairs(&pairs));
        if !parsed.span().span_context().is_valid() {
            return None;
        }
        let bounded = |name: &str, max: usize| get(name).map(str::trim).filter(|v| !v.is_empty() && v.len() <= max);
        Some(Self {
            traceparent: traceparent.to_string(),
            tracestate: bounded("tracestate", TRACESTATE_BYTES_MAX).map(str::to_string),
            baggage: bounded("baggage", BAGGAGE_BYTES_MAX).map(str::to_string),
        })
    }

    /// The context of `span` as a remote caller would see it: inside an unsampled trace, that
    /// trace's context, whatever `span` is (`None` while tracing is off, or for a span tracing
    /// does not record).
    pub fn of(span: &tracing::Span) -> Option<Self> {
        let cx = otel_context(span)?;
        let mut fields = Fields::default();
        TraceContextPropagator::new().inject_context(&cx, &mut fields);
        BaggagePropagator::new().inject_context(&cx, &mut fields);
        let take = |name: &str| fields.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        Some(Self {
            traceparent: take("traceparent")?,
            tracestate: take("tracestate").filter(|v| !v.is_empty() && v.len() <= TRACESTATE_BYTES_MAX),
            baggage: take("baggage").filter(|v| !v.is_empty() && v.len() <= BAGGAGE_BYTES_MAX),
        })
    }

    /// The context of the trace this code runs in: the unsampled one's, or the current span's.
    pub fn current() -> Option<Self> {
        Self::of(&tracing::Span::current())
    }

    /// Make `span` a child of this context (its trace, its caller's span as parent, its
    /// sampling decision and baggage). Does nothing while tracing is off.
    pub fn adopt(&self, span: &tracing::Span) {
        if span.is_disabled() {
            return;
        }
        let _ = span.set_parent(self.context());
    }

    /// This context as OpenTelemetry's: the caller's span as a remote parent, with its
    /// `tracestate` and baggage.
    pub(crate) fn context(&self) -> opentelemetry::Context {
        let mut pairs = vec![("traceparent", self.traceparent.as_str())];
        if let Some(state) = &self.tracestate {
            pairs.push(("tracestate", state));
        }
        if let Some(baggage) = &self.baggage {
            pairs.push(("baggage", baggage));
        }
        let cx = TraceContextPropagator::new().extract(&Pairs(&pairs));
        BaggagePropagator::new().extract_with_context(&cx, &Pairs(&pairs))
    }

    /// Only the `traceparent`: what a worker's result carries back (the caller's state and
    /// baggage stay with the job that brought them).
    pub fn parent_only(self) -> Self {
        Self { tracestate: None, baggage: None, ..self }
    }

    /// The 32-hex-digit trace id.
    pub fn trace_id(&self) -> &str {
        self.traceparent.split('-').nth(1).unwrap_or_default()
    }

    /// The headers an upstream request carries: `traceparent`, and `tracestate` when there is one
    /// (baggage stays inside: it may hold what the caller meant for Guild alone).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![("traceparent", self.traceparent.clone())];
        if let Some(state) = &self.tracestate {
            headers.push(("tracestate", state.clone()));
        }
        headers
    }
}

/// The trace and span id of `span` (inside an unsampled trace, that trace's, whatever `span`
/// is), as 32 and 16 hex digits; `None` while tracing is off.
pub fn ids(span: &tracing::Span) -> Option<(String, String)> {
    let cx = otel_context(span)?;
    let span = cx.span();
    let span_context = span.span_context();
    Some((hex(&span_context.trace_id().to_bytes()), hex(&span_context.span_id().to_bytes())))
}

/// The trace id of `span` (inside an unsampled trace, that trace's, whatever `span` is), as 32
/// hex digits, and whether that trace is sampled (its spans reach the collector); `None` while
/// tracing is off.
pub fn trace_of(span: &tracing::Span) -> Option<(String, bool)> {
    let cx = otel_context(span)?;
    let span = cx.span();
    let span_context = span.span_context();
    Some((hex(&span_context.trace_id().to_bytes()), span_context.is_sampled()))
}

/// `bytes` as lowercase hex, the W3C text form of a trace or span id, in one allocation (every
/// run formats its ids: `Display` grew its string as it wrote, and pushing each digit as a
/// `char` cost ten instructions a digit, both measurable parts of a run's cost with tracing on).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let digits: Vec<u8> =
        bytes.iter().flat_map(|byte| [DIGITS[usize::from(byte >> 4)], DIGITS[usize::from(byte & 0x0f)]]).collect();
    String::from_utf8(digits).expect("hex digits are ASCII")
}

/// The OpenTelemetry context `span` is in: inside an unsampled trace, that trace's (no span of
/// it exists); else its own, or for a log span that of the nearest Guild span above it. `None`
/// while tracing is off.
fn otel_context(span: &tracing::Span) -> Option<opentelemetry::Context> {
    if let Some(unsampled) = crate::sampling::unsampled_here() {
        return Some(unsampled);
    }
    span.with_subscriber(|(id, dispatch)| crate::sampling::context_near(id, dispatch)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_read_and_oversized_companions_are_left_out() {
        let state = "a=1".to_string();
        let long_state = "x".repeat(TRACESTATE_BYTES_MAX + 1);
        let long_baggage = "k=".to_string() + &"v".repeat(BAGGAGE_BYTES_MAX);
        let fields = [("TraceParent", PARENT), ("tracestate", state.as_str()), ("baggage", "user=ada")];
        let get = |name: &str| fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v);
        let context = TraceContext::from_fields(get).expect("valid");
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!((context.tracestate.as_deref(), context.baggage.as_deref()), (Some("a=1"), Some("user=ada")));

        let fields = [("traceparent", PARENT), ("tracestate", long_state.as_str()), ("baggage", long_baggage.as_str())];
        let get = |name: &str| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let context = TraceContext::from_fields(get).expect("still valid");
        assert_eq!((context.tracestate, context.baggage), (None, None));
    }

    #[test]
    fn a_malformed_traceparent_is_no_context() {
        for bad in ["", "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", &"0".repeat(300)] {
            assert_eq!(TraceContext::from_fields(|name| (name == "traceparent").then_some(bad)), None, "{bad}");
        }
    }

    #[test]
    fn ids_are_written_as_the_w3c_text_form() {
        use opentelemetry::trace::{SpanId, TraceId};
        for n in [0u128, 1, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736, u128::MAX] {
            let trace = TraceId::from_bytes(n.to_be_bytes());
            assert_eq!(hex(&trace.to_bytes()), trace.to_string());
            let low: [u8; 8] = n.to_be_bytes()[8..].try_into().expect("eight bytes");
            let span = SpanId::from_bytes(low);
            assert_eq!(hex(&span.to_bytes()), span.to_string());
        }
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }

    #[test]
    fn without_tracing_a_span_has_no_context() {
        assert_eq!(TraceContext::of(&tracing::Span::none()), None);
        assert_eq!(ids(&tracing::Span::none()), None);
    }
}
