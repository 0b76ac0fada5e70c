//! The `wasi:http` hook of one run: every outgoing request is checked against the operator's
//! rules and the tool's declared hosts on its normalised path, its name resolved and each
//! address screened by the host, then sent (with the path that was checked) to the address that
//! passed — or, in a replay or a candidate check, answered from the tape (never sent). Each
//! exchange (or refusal) becomes a tape event.
//!
//! Nothing of a request is read or kept before it is admitted: a refused request is recorded
//! without its body (its body is never read), so a guest with no grant cannot make the host hold
//! anything but a small refusal, and those are bounded by the recording's own limit.

use super::connect::{self, Answer, Connections, header_pairs};
use super::rules::{Destination, EgressRule, blocked_reason, parse_ip_literal};
use super::secrets::{self, Secret, SecretGrant};
use crate::Limits;
use crate::record::{Lane, Recorder};
use bytes::Bytes;
use guild_replay::{Digest, Effect, HttpRequestRecord, HttpResponseRecord};
use guild_telemetry::SPAN_TARGET;
use http_body_util::{BodyExt, Full};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// Refusals whose reasons a run keeps for the operator (the count is kept past it).
pub(crate) const EGRESS_DENIALS_KEPT_MAX: usize = 16;

/// The guest-visible failure and the operator-visible reason.
struct Refusal {
    error: Error,
    reason: String,
}

impl Refusal {
    fn denied(reason: String) -> Self {
        Self { error: Error::HttpRequestDenied, reason }
    }
}

/// Error kinds (as [`error_kind`] names them) of refusals made before the request's body is
/// read: such a request is recorded without a body, and a replay does not read it either.
const REFUSED_BEFORE_BODY: [&str; 6] =
    ["denied", "address-prohibited", "not-found", "dns-timeout", "dns-error", "unavailable"];

/// Whether a recorded exchange was refused before its request's body was read.
fn refused_before_body(response: Option<&HttpResponseRecord>, error: Option<&str>) -> bool {
    response.is_none() && error.is_some_and(|e| REFUSED_BEFORE_BODY.contains(&e.split(':').next().unwrap_or_default()))
}

/// What a recorded exchange hands the guest again: its response (the body read from the
/// bundle), or its error.
fn recorded_answer(
    response: Option<HttpResponseRecord>,
    error: Option<String>,
    bodies: &HashMap<Digest, Bytes>,
) -> Result<Answer, Refusal> {
    match (response, error) {
        (Some(response), _) => {
            let body = bodies.get(&response.body).cloned().unwrap_or_default();
            Ok(Answer { status: response.status, headers: response.headers, body })
        }
        (None, Some(error)) => {
            let (kind, reason) = error.split_once(": ").unwrap_or((error.as_str(), ""));
            Err(Refusal { error: error_from_kind(kind), reason: reason.to_string() })
        }
        (None, None) => Err(Refusal::denied("replay: the recorded exchange has no outcome".into())),
    }
}

/// One run's egress state, shared by the hooks object wasmtime keeps and the runtime.
pub(crate) struct EgressRun {
    pub(crate) tool: String,
    pub(crate) operator_rules: Vec<EgressRule>,
    pub(crate) tool_rules: Vec<EgressRule>,
    pub(crate) limits: Limits,
    pub(crate) recorder: Option<Recorder>,
    /// In a replay: the response bodies the tape names.
    pub(crate) replay_bodies: Option<HashMap<Digest, Bytes>>,
    /// Where each granted secret may go, and the values (only ever used at send time).
    secret_grants: Vec<SecretGrant>,
    secrets: Vec<Secret>,
    breakers: Option<Arc<guild_breaker::Breakers>>,
    connections: Option<Arc<Connections>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The budgets its LLM requests are held to (live runs only).
    meter: Option<Arc<dyn guild_replay::cost::TokenMeter>>,
    /// The host's egress limits and upstream throttles (live runs only).
    gate: Option<Arc<dyn guild_vocab::egress::EgressGate>>,
    /// The longest a limit or throttle asked a refused request to wait, ms (0: none refused).
    throttled_ms: std::sync::atomic::AtomicU64,
    /// Requests a limit or a throttle refused.
    limited: AtomicU32,
    requests: AtomicU32,
    upstream_failures: AtomicU32,
    refusals: AtomicU32,
    /// The first [`EGRESS_DENIALS_KEPT_MAX`] refusals' reasons.
    denials: Mutex<Vec<String>>,
}

impl EgressRun {
    pub(crate) fn new(
        tool: String,
        operator_rules: Vec<EgressRule>,
        tool_rules: Vec<EgressRule>,
        limits: Limits,
        recorder: Option<Recorder>,
        replay_bodies: Option<HashMap<Digest, Bytes>>,
    ) -> Self {
        Self {
            tool,
            operator_rules,
            tool_rules,
            limits,
            recorder,
            replay_bodies,
            secret_grants: Vec::new(),
            secrets: Vec::new(),
            breakers: None,
            connections: None,
            tls: None,
            meter: None,
            gate: None,
            throttled_ms: std::sync::atomic::AtomicU64::new(0),
            limited: AtomicU32::new(0),
            requests: AtomicU32::new(0),
            upstream_failures: AtomicU32::new(0),
            refusals: AtomicU32::new(0),
            denials: Mutex::new(Vec::new()),
        }
    }

    /// Grant these secrets (already intersected with what the tool declared).
    pub(crate) fn with_secrets(mut self, grants: Vec<SecretGrant>, secrets: Vec<Secret>) -> Self {
        self.secret_grants = grants;
        self.secrets = secrets;
        self
    }

    /// Use the runtime's TLS configuration.
    pub(crate) fn with_tls(mut self, tls: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Hold its requests to the host's egress limits and throttles.
    pub(crate) fn with_gate(mut self, gate: Option<Arc<dyn guild_vocab::egress::EgressGate>>) -> Self {
        self.gate = gate;
        self
    }

    /// The longest a limit or an upstream's throttle asked a refused request to wait, ms.
    pub(crate) fn throttled_ms(&self) -> Option<u64> {
        Some(self.throttled_ms.load(Ordering::Relaxed)).filter(|ms| *ms > 0)
    }

    /// Requests a limit or an upstream's throttle refused.
    pub(crate) fn limited(&self) -> u32 {
        self.limited.load(Ordering::Relaxed)
    }

    /// Hold its LLM requests to `meter`'s budgets.
    pub(crate) fn with_meter(mut self, meter: Option<Arc<dyn guild_replay::cost::TokenMeter>>) -> Self {
        self.meter = meter;
        self
    }

    /// Share the runtime's circuit breakers and outgoing connections.
    pub(crate) fn with_network(
        mut self,
        breakers: Arc<guild_breaker::Breakers>,
        connections: Arc<Connections>,
    ) -> Self {
        self.breakers = Some(breakers);
        self.connections = Some(connections);
        self
    }

    /// The first refusals' reasons, for the operator.
    pub(crate) fn denials(&self) -> Vec<String> {
        self.denials.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Requests refused or failed, all of them.
    pub(crate) fn refusals(&self) -> u32 {
        self.refusals.load(Ordering::Relaxed)
    }

    /// Requests the guest attempted so far.
    pub(crate) fn requests(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests sent whose upstream answered 5xx, timed out or could not be reached.
    pub(crate) fn upstream_failures(&self) -> u32 {
        self.upstream_failures.load(Ordering::Relaxed)
    }

    fn note(&self, reason: &str) {
        self.refusals.fetch_add(1, Ordering::Relaxed);
        let mut denials = self.denials.lock().unwrap_or_else(|p| p.into_inner());
        if denials.len() < EGRESS_DENIALS_KEPT_MAX {
            denials.push(reason.to_string());
        }
    }

    async fn exchange(self: Arc<Self>, request: http::Request<WasiBody>) -> Result<http::Response<WasiBody>, Error> {
        let (parts, body) = request.into_parts();
        let mut record = HttpRequestRecord {
            method: parts.method.as_str().to_string(),
            url: parts.uri.to_string(),
            headers: header_pairs(&parts.headers),
            body: None,
            body_bytes: 0,
            host_added: Vec::new(),
        };
        let result = match &self.replay_bodies {
            Some(bodies) => self.answer_from_tape(&mut record, body, bodies).await,
            None => self.live(parts, body, &mut record).await,
        };
        let result = match (&self.meter, result, &self.replay_bodies) {
            // Charged from the body the tape keeps, as the run's cost will count it.
            (Some(meter), Ok(answer), None) => match meter.spent(&record.url, answer.status, &answer.body).await {
                Ok(()) => Ok(answer),
                // Not `denied`: the request was sent, and a replay compares its body.
                Err(reason) => {
                    Err(Refusal { error: Error::ConfigurationError, reason: format!("egress refused: {reason}") })
                }
            },
            (_, result, _) => result,
        };
        let (response, error) = match &result {
            Ok(answer) => {
                let span = tracing::Span::current();
                span.record("http.response.status_code", answer.status);
                span.record("http.response.body.size", answer.body.len());
                span.record("http.request.body.size", record.body_bytes);
                (Some(self.response_record(answer)), None)
            }
            Err(refusal) => {
                // A reason may quote what an upstream sent (a header's value): it goes to the
                // tape and the log only with every secret value taken out.
                let reason =
                    String::from_utf8_lossy(&secrets::scrub(refusal.reason.as_bytes(), &self.secrets)).into_owned();
                self.note(&reason);
                // On the request's span: the refusal and the rule or limit its reason names.
                tracing::info!(
                    target: SPAN_TARGET,
                    refusal = %reason,
                    kind = error_kind(&refusal.error),
                    "egress refused"
                );
                let span = tracing::Span::current();
                span.record("error.type", error_kind(&refusal.error));
                span.record("otel.status_code", "ERROR");
                (None, Some(format!("{}: {}", error_kind(&refusal.error), reason)))
            }
        };
        if let Some(recorder) = &self.recorder {
            recorder.record(Effect::Http { request: record, response, error });
        }
        match result {
            Ok(answer) => Ok(to_response(answer)),
            // The tape keeps only the error's kind, so the guest gets the kind's canonical value
            // live too: a replay hands it the very same one. The reason went to the host's log.
            Err(refusal) => Err(error_from_kind(error_kind(&refusal.error))),
        }
    }

    /// Read the request body within its cap, noting its digest (and, live, keeping it for the
    /// bundle) in `record`.
    async fn read_body(&self, body: WasiBody, record: &mut HttpRequestRecord, keep: bool) -> Result<Bytes, Refusal> {
        let limit = self.limits.http_request_body_bytes_max;
        let body = connect::collect_capped(body, limit).await.map_err(|error| Refusal {
            error,
            reason: format!("egress refused: the request body is larger than {limit} bytes"),
        })?;
        if body.is_empty() {
            return Ok(body);
        }
        record.body_bytes = body.len() as u64;
        record.body = match (&self.recorder, keep) {
            (Some(recorder), true) => Some(recorder.attach_blob(&body).ok_or_else(|| Refusal {
                // Not `denied`: a replay must read this request's body too, to compare it.
                error: Error::InternalError(Some("the run's recording is full".into())),
                reason: "egress refused: the run's recording is full (raise --recording-bytes)".into(),
            })?),
            _ => Some(Digest::of(&body)),
        };
        Ok(body)
    }

    fn response_record(&self, answer: &Answer) -> HttpResponseRecord {
        let body = match &self.recorder {
            // Past the recording's limit the guest is stopped as this call returns.
            Some(recorder) if self.replay_bodies.is_none() => {
                recorder.attach_blob(&answer.body).unwrap_or_else(|| Digest::of(&answer.body))
            }
            _ => Digest::of(&answer.body),
        };
        HttpResponseRecord {
            status: answer.status,
            headers: answer.headers.clone(),
            body,
            body_bytes: answer.body.len() as u64,
        }
    }

    /// The recorded answer to the same request, or a refusal the divergence check will name. A
    /// request the original run refused before reading its body is compared without its body.
    async fn answer_from_tape(
        &self,
        record: &mut HttpRequestRecord,
        body: WasiBody,
        bodies: &HashMap<Digest, Bytes>,
    ) -> Result<Answer, Refusal> {
        if let Some(recorder) = self.recorder.as_ref().filter(|r| r.is_candidate()) {
            return self.answer_candidate(recorder, record, body, bodies).await;
        }
        let expected = self.recorder.as_ref().and_then(Recorder::expected_next);
        let Some(Effect::Http { request, response, error }) = expected else {
            return Err(Refusal::denied("replay: the original run made no request here".into()));
        };
        if !refused_before_body(response.as_ref(), error.as_deref()) {
            self.read_body(body, record, false).await?;
        }
        // What the host added when it sent the request is not the guest's doing.
        record.host_added.clone_from(&request.host_added);
        if request != *record {
            return Err(Refusal::denied("replay: the original run made a different request here".into()));
        }
        recorded_answer(response, error, bodies)
    }

    /// A candidate revision's request, answered from the first recorded exchange not yet used
    /// with the same method, URL and body (headers may differ: a new revision may send others).
    /// One the tape lacks is refused as a denied request would be, and noted as a new effect.
    /// Nothing is ever sent.
    async fn answer_candidate(
        &self,
        recorder: &Recorder,
        record: &mut HttpRequestRecord,
        body: WasiBody,
        bodies: &HashMap<Digest, Bytes>,
    ) -> Result<Answer, Refusal> {
        self.read_body(body, record, false).await?;
        let asked: &HttpRequestRecord = record;
        let matched = recorder.take_matching(Lane::Http, |effect| match effect {
            Effect::Http { request, response, error } => {
                request.method == asked.method
                    && request.url == asked.url
                    && (request.body == asked.body || refused_before_body(response.as_ref(), error.as_deref()))
            }
            _ => false,
        });
        let Some(Effect::Http { response, error, .. }) = matched else {
            recorder.note_new_effect(Effect::Http { request: asked.clone(), response: None, error: None });
            return Err(Refusal::denied("candidate check: the recorded run made no such request".into()));
        };
        recorded_answer(response, error, bodies)
    }

    async fn live(
        &self,
        mut parts: http::request::Parts,
        body: WasiBody,
        record: &mut HttpRequestRecord,
    ) -> Result<Answer, Refusal> {
        let made = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if made > self.limits.http_requests_max {
            return Err(Refusal::denied(format!(
                "egress denied: more than {} requests in one run (raise --http-requests)",
                self.limits.http_requests_max
            )));
        }
        let uri = parts.uri.clone();
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            // `user@host` is checked as `host`, yet some servers and proxies read the part
            // before `@` (or before its first ':') as the host.
            return Err(Refusal::denied(
                "egress denied: the URL carries userinfo (user@host); send credentials in a header instead".into(),
            ));
        }
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let host = uri.host().unwrap_or_default().to_string();
        let default_port = if scheme == "http" { 80 } else { 443 };
        let port = uri.port_u16().unwrap_or(default_port);
        // The upstream is told exactly the host and port that were checked, whatever the guest
        // wrote (`:080`, a Host header of its own).
        let host_header = if port == default_port { host.clone() } else { format!("{host}:{port}") };
        let host_header = http::HeaderValue::from_str(&host_header)
            .map_err(|_| Refusal::denied(format!("egress denied: {host:?} is not a valid host")))?;
        parts.headers.insert(http::header::HOST, host_header);
        let method = parts.method.as_str().to_string();
        // Rules, secret grants and the upstream all see this one path.
        let path = super::path::normalize(uri.path()).map_err(|e| Refusal::denied(format!("egress denied: {e}")))?;
        let path_and_query = match uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.clone(),
        };
        let dest = Destination { scheme: &scheme, host: &host, port, method: &method, path: &path };
        let shown = format!("{scheme}://{host}:{port}");
        // The operator rules this request falls under: only they may let it reach an address
        // that is blocked by default (a rule naming 127.0.0.1:8080/public/ exempts that
        // address for that port and path, not for every other rule).
        let matching: Vec<&EgressRule> = self.operator_rules.iter().filter(|r| r.matches(&dest)).collect();
        if matching.is_empty() {
            return Err(Refusal::denied(format!(
                "egress denied: {} {shown}{} matches no rule (rules: {})",
                dest.method,
                dest.path,
                list(&self.operator_rules)
            )));
        }
        if !self.tool_rules.iter().any(|r| r.matches(&dest)) {
            return Err(Refusal::denied(format!(
                "egress denied: tool {} does not ask for {shown} (it asks for {})",
                self.tool,
                list(&self.tool_rules)
            )));
        }
        let metered = match &self.meter {
            // Asked of the URL as the guest wrote it: what the cost's token count reads.
            Some(meter) => {
                meter.admit(&record.url).await.map_err(|reason| Refusal::denied(format!("egress denied: {reason}")))?
            }
            None => false,
        };
        if metered {
            // An LLM's answer must come as its usage can be read from it.
            parts.headers.insert(http::header::ACCEPT_ENCODING, http::HeaderValue::from_static("identity"));
        }
        let secrets_used =
            self.fill_secrets(&mut parts.headers, &dest, &format!("{} {shown}{}", dest.method, dest.path))?;
        let upstream = guild_vocab::egress::gate::upstream_key(&scheme, &host, port);
        // Held until this function returns: the exchange, its answer read whole, is over then.
        // Asked before the body is read, as every refusal here is (a replay reads no body for
        // a request refused before it): a place is held while the guest writes its body too,
        // which the run's timeout bounds.
        let _pass = match &self.gate {
            // Waits here for room (up to the limit's bound); a refusal is the guest's denial.
            Some(gate) => Some(gate.admit(&upstream, &secrets_used).await.map_err(|refused| {
                self.throttled_ms.fetch_max(refused.retry_after_ms.max(1), Ordering::Relaxed);
                self.limited.fetch_add(1, Ordering::Relaxed);
                Refusal::denied(format!("egress denied: {}", refused.reason))
            })?),
            None => None,
        };
        if !self.secrets.is_empty() {
            // A run holding secrets takes only uncompressed responses: the host can then take
            // any secret an upstream reflects back out of what the guest sees.
            parts.headers.insert(http::header::ACCEPT_ENCODING, http::HeaderValue::from_static("identity"));
        }
        let attempt = match &self.breakers {
            Some(breakers) => breakers.admit(&shown).map_err(|open| Refusal {
                error: Error::DestinationUnavailable,
                reason: format!(
                    "egress refused: circuit open for {shown} after {} consecutive failures ({}); next try in {:.1}s",
                    open.failures,
                    open.last_error,
                    open.retry_after.as_secs_f64()
                ),
            })?,
            None => None,
        };
        let connect_timeout = Duration::from_millis(self.limits.http_connect_timeout_ms);
        // A resolution failure is the upstream's (the breaker's attempt, dropped, counts as
        // such if it was the probe).
        let addr = self.resolve(&host, port, connect_timeout, &matching).await?;
        let body = self.read_body(body, record, true).await?;
        // The upstream joins the run's trace: added after the guest's request was recorded,
        // and noted on the tape as the host's.
        if let Some(trace) = guild_telemetry::TraceContext::current() {
            // A `tracestate` of the guest's would not belong to the host's `traceparent`.
            parts.headers.remove("tracestate");
            for (name, value) in trace.headers() {
                if let Ok(header) = http::HeaderValue::from_str(&value) {
                    parts.headers.insert(name, header);
                    record.host_added.push((name.to_string(), value));
                }
            }
        }
        let request = http::Request::from_parts(parts, Full::new(body));
        let total = Duration::from_millis(self.limits.http_timeout_ms);
        let (Some(tls), Some(connections)) = (self.tls.clone(), &self.connections) else {
            let reason = "egress is not configured on this host".to_string();
            return Err(Refusal { error: Error::InternalError(Some(reason.clone())), reason });
        };
        let sent = connect::exchange(
            connections,
            tls,
            addr,
            &host,
            scheme == "https",
            request,
            &path_and_query,
            connect_timeout,
            self.limits.http_response_bytes_max,
        );
        let outcome = tokio::time::timeout(total, sent).await;
        if let (Some(gate), Ok(Ok(answer))) = (&self.gate, &outcome) {
            let retry_after = answer
                .headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))
                .and_then(|(_, value)| guild_vocab::egress::gate::retry_after_ms(value, now_unix_s()));
            gate.answered((&upstream, &secrets_used), answer.status, retry_after).await;
        }
        // A refusal for size is the guest's doing, not the upstream's; a host-wide connection
        // limit is the host's.
        let upstream_ok = match &outcome {
            Ok(Ok(answer)) => answer.status < 500,
            Ok(Err(Error::HttpResponseBodySize(_) | Error::InternalError(_))) => true,
            _ => false,
        };
        if !upstream_ok {
            self.upstream_failures.fetch_add(1, Ordering::Relaxed);
        }
        match attempt {
            Some(attempt) if upstream_ok => attempt.succeeded(),
            Some(attempt) => attempt.failed(&format!("{shown} failed")),
            None => {}
        }
        match outcome {
            Err(_) => Err(Refusal {
                error: Error::HttpResponseTimeout,
                reason: format!("{shown} did not answer within {}ms", total.as_millis()),
            }),
            Ok(Err(error)) => {
                let reason = format!("{shown}: {}", describe_error(&error));
                Err(Refusal { error, reason })
            }
            Ok(Ok(answer)) if metered && encoded(&answer).is_some() => Err(Refusal {
                error: Error::HttpResponseContentCoding(encoded(&answer)),
                reason: format!(
                    "egress refused: LLM upstream {shown} answered with content-encoding {}; a metered answer \
                     must come uncompressed so its token usage can be read",
                    encoded(&answer).unwrap_or_default()
                ),
            }),
            Ok(Ok(answer)) => self.checked_answer(answer, &shown),
        }
    }

    /// What the guest gets of an answer when the run holds secrets: every secret value the run
    /// was granted taken out (whichever request used it — an upstream may store a value and
    /// return it later), and a compressed body refused, since it could hide one.
    fn checked_answer(&self, answer: Answer, shown: &str) -> Result<Answer, Refusal> {
        if self.secrets.is_empty() {
            return Ok(answer);
        }
        // Any coding but `identity` (and, for transfer codings, `chunked`, which the client has
        // already undone) could hide a value from the scrubbing.
        let encoded = answer.headers.iter().find(|(name, value)| {
            let plain: &[&str] = if name.eq_ignore_ascii_case("content-encoding") {
                &["identity"]
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                &["identity", "chunked"]
            } else {
                return false;
            };
            value.split(',').map(str::trim).any(|coding| !plain.iter().any(|p| coding.eq_ignore_ascii_case(p)))
        });
        if let Some((name, encoding)) = encoded {
            return Err(Refusal {
                error: Error::HttpResponseContentCoding(Some(encoding.clone())),
                reason: format!(
                    "egress refused: {shown} answered with {} {encoding}; a run holding secrets takes \
                     only uncompressed responses, which the host can check for them",
                    name.to_ascii_lowercase()
                ),
            });
        }
        Ok(scrub_answer(answer, &self.secrets))
    }

    /// Replace each `{{secret:NAME}}` in header values, if this destination may receive it.
    fn fill_secrets(
        &self,
        headers: &mut http::HeaderMap,
        dest: &Destination<'_>,
        shown: &str,
    ) -> Result<Vec<String>, Refusal> {
        let mut used: Vec<Secret> = Vec::new();
        for value in headers.values_mut() {
            let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
            let names = secrets::placeholders(&text)
                .map_err(|e| Refusal::denied(format!("egress denied: malformed secret placeholder: {e}")))?;
            if names.is_empty() {
                continue;
            }
            for name in names {
                let grant = self.secret_grants.iter().find(|g| g.name == name).ok_or_else(|| {
                    Refusal::denied(format!(
                        "egress denied: secret {name} is not granted to this run (define it with --secret and grant it with --grant-secret {name}=RULE; the tool must declare it)"
                    ))
                })?;
                if !secrets::allows(grant, dest) {
                    return Err(Refusal::denied(format!(
                        "egress denied: secret {name} may not be sent to {shown} (granted for: {})",
                        list(&grant.rules)
                    )));
                }
                if let Some(secret) = self.secrets.iter().find(|s| s.name() == name)
                    && !used.iter().any(|u| u.name() == name)
                {
                    used.push(secret.clone());
                }
            }
            let filled = secrets::fill(&text, &used);
            *value = http::HeaderValue::from_str(&filled).map_err(|_| {
                Refusal::denied("egress denied: a header with a secret is not a valid header value".to_string())
            })?;
        }
        Ok(used.iter().map(|s| s.name().to_string()).collect())
    }

    /// Resolve `host` and pick the first address that is public or named by one of `matching`,
    /// the operator rules the request falls under.
    async fn resolve(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
        matching: &[&EgressRule],
    ) -> Result<SocketAddr, Refusal> {
        let candidates: Vec<IpAddr> = match parse_ip_literal(host) {
            Some(ip) => vec![ip],
            None => match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
                Err(_) => {
                    return Err(Refusal { error: Error::DnsTimeout, reason: format!("resolving {host} timed out") });
                }
                Ok(Err(e)) => {
                    let error = Error::DnsError { rcode: Some(e.to_string()), info_code: None };
                    return Err(Refusal { error, reason: format!("cannot resolve {host}: {e}") });
                }
                Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
            },
        };
        let mut refused = Vec::new();
        for ip in &candidates {
            match blocked_reason(*ip) {
                Some(reason) if !matching.iter().any(|r| r.names_address(*ip)) => refused.push((*ip, reason)),
                _ => return Ok(SocketAddr::new(*ip, port)),
            }
        }
        let (ip, reason) = refused.first().copied().ok_or_else(|| Refusal {
            error: Error::DestinationNotFound,
            reason: format!("{host} resolves to no address"),
        })?;
        let what = match parse_ip_literal(host) {
            Some(_) => format!("{ip} is {reason}"),
            None => format!("{host} resolves to {ip}, {reason}"),
        };
        Err(Refusal {
            error: Error::DestinationIpProhibited,
            reason: format!("egress denied: {what}; add a rule naming that address to allow it"),
        })
    }
}

/// Take secret values back out of what the guest will see.
fn scrub_answer(answer: Answer, used: &[Secret]) -> Answer {
    if used.is_empty() {
        return answer;
    }
    // A header named after a secret cannot keep its name with the placeholder in it (not a valid
    // name): it is left out.
    let headers = answer
        .headers
        .into_iter()
        .filter(|(k, _)| !secrets::in_header_name(k, used))
        .map(|(k, v)| (k, String::from_utf8_lossy(&secrets::scrub(v.as_bytes(), used)).into_owned()))
        .collect();
    Answer { status: answer.status, headers, body: Bytes::from(secrets::scrub(&answer.body, used)) }
}

fn list(rules: &[EgressRule]) -> String {
    if rules.is_empty() {
        return "none".into();
    }
    rules.iter().map(EgressRule::as_str).collect::<Vec<_>>().join(", ")
}

fn to_response(answer: Answer) -> http::Response<WasiBody> {
    let mut builder = http::Response::builder().status(answer.status);
    for (name, value) in &answer.headers {
        builder = builder.header(name, value);
    }
    let body = Full::new(answer.body).map_err(|never| match never {}).boxed_unsync();
    builder
        .body(body)
        .unwrap_or_else(|_| http::Response::new(Full::new(Bytes::new()).map_err(|never| match never {}).boxed_unsync()))
}

/// A stable name for the errors this hook produces, kept on the tape.
fn error_kind(error: &Error) -> &'static str {
    match error {
        Error::HttpRequestDenied => "denied",
        Error::DestinationIpProhibited => "address-prohibited",
        Error::DestinationNotFound => "not-found",
        Error::DnsTimeout => "dns-timeout",
        Error::DnsError { .. } => "dns-error",
        Error::ConnectionRefused => "connection-refused",
        Error::ConnectionTimeout => "connection-timeout",
        Error::HttpResponseTimeout => "response-timeout",
        Error::HttpResponseBodySize(_) => "response-too-large",
        Error::HttpRequestBodySize(_) => "request-too-large",
        Error::Tls(_) | Error::InvalidDnsNameError(_) => "tls",
        Error::DestinationUnavailable => "unavailable",
        Error::InternalError(_) => "host-busy",
        Error::HttpResponseContentCoding(_) => "content-coding",
        Error::ConfigurationError => "usage-missing",
        _ => "connection-failed",
    }
}

fn error_from_kind(kind: &str) -> Error {
    match kind {
        "denied" => Error::HttpRequestDenied,
        "address-prohibited" => Error::DestinationIpProhibited,
        "not-found" => Error::DestinationNotFound,
        "dns-timeout" => Error::DnsTimeout,
        "dns-error" => Error::DnsError { rcode: None, info_code: None },
        "connection-refused" => Error::ConnectionRefused,
        "connection-timeout" => Error::ConnectionTimeout,
        "response-timeout" => Error::HttpResponseTimeout,
        "response-too-large" => Error::HttpResponseBodySize(None),
        "request-too-large" => Error::HttpRequestBodySize(None),
        "tls" => Error::TlsProtocolError,
        "unavailable" => Error::DestinationUnavailable,
        "host-busy" => Error::InternalError(None),
        "content-coding" => Error::HttpResponseContentCoding(None),
        "usage-missing" => Error::ConfigurationError,
        _ => Error::ConnectionTerminated,
    }
}

fn describe_error(error: &Error) -> String {
    match error {
        Error::HttpResponseBodySize(Some(limit)) => {
            format!("response body larger than {limit} bytes (raise --http-response-bytes)")
        }
        Error::ConnectionRefused => "connection refused".into(),
        Error::ConnectionTimeout => "connect timed out".into(),
        other => format!("{other:?}"),
    }
}

/// The hooks object a run's store holds.
pub(crate) struct EgressHooks(pub(crate) Arc<EgressRun>);

type DriverFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

impl WasiHttpHooks for EgressHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: DriverFuture,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, DriverFuture), Error>> + Send> {
        let run = self.0.clone();
        // Made here, inside the guest's call, so its parent is the run's span: the future runs
        // on a task of its own (carried by the run's trace even when that was not sampled, so
        // the upstream still learns it). A run traces at most `http_requests_max` requests: the
        // ones past it are refused at once, and would only fill the export queue.
        let traced = if run.requests() < run.limits.http_requests_max {
            guild_telemetry::carried(request_span(&request))
        } else {
            guild_telemetry::Traced::none()
        };
        Box::new(traced.scope(async move {
            let response = run.exchange(request).await?;
            Ok((response, Box::new(async { Ok(()) }) as DriverFuture))
        }))
    }
}

/// An outgoing request's client span, named by its method as the OpenTelemetry HTTP conventions
/// name one; status, sizes and a refusal are recorded on it as the exchange goes.
fn request_span(request: &http::Request<WasiBody>) -> tracing::Span {
    let uri = request.uri();
    guild_telemetry::span!(
        "egress",
        otel.name = request.method().as_str(),
        otel.kind = "client",
        http.request.method = request.method().as_str(),
        server.address = guild_telemetry::clip(uri.host().unwrap_or_default()),
        server.port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("http") { 80 } else { 443 }),
        // The query may carry what the guest meant for the upstream alone, and userinfo a
        // credential: both left out.
        url.full = %format_args!(
            "{}://{}:{}{}",
            uri.scheme_str().unwrap_or("https"),
            guild_telemetry::clip(uri.host().unwrap_or_default()),
            uri.port_u16().unwrap_or(if uri.scheme_str() == Some("http") { 80 } else { 443 }),
            guild_telemetry::clip(uri.path())
        ),
        http.request.body.size = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        http.response.body.size = tracing::field::Empty,
        error.r#type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// The content coding an answer came in, other than `identity`.
fn encoded(answer: &Answer) -> Option<String> {
    answer
        .headers
        .iter()
        .find(|(name, value)| {
            name.eq_ignore_ascii_case("content-encoding") && !value.trim().eq_ignore_ascii_case("identity")
        })
        .map(|(_, value)| value.clone())
}

fn now_unix_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
