//! The `[telemetry]` config section and the standard `OTEL_*` variables, resolved into what
//! the exporter is built from. The section wins; a variable fills what it leaves unset (the
//! OpenTelemetry SDK specification's order: code over environment).

use crate::TelemetryError;
use std::collections::BTreeMap;

/// Spans waiting for export, at most; one more is dropped and counted
/// (`guild_telemetry_spans_dropped_total`). The OTLP batch processor's own default.
pub const QUEUE_SPANS_MAX_DEFAULT: usize = 2048;
/// Spans sent in one OTLP request, at most.
pub const BATCH_SPANS_MAX_DEFAULT: usize = 512;
/// How long one export may take before its spans are dropped, ms.
pub const EXPORT_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// How long a span waits for a batch to fill before the batch is sent anyway, ms.
pub const SCHEDULED_DELAY_MS_DEFAULT: u64 = 1_000;

/// The `[telemetry]` section of the daemon config. Every field is optional: with neither this
/// section's `endpoint` nor `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
/// set, tracing is off and costs nothing.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base address (`http://collector:4318`); spans go to
    /// `{endpoint}/v1/traces`. As `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: Option<String>,
    /// `http/protobuf`, the only protocol built in. As `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub protocol: Option<String>,
    /// The `service.name` resource attribute (default `guild`). As `OTEL_SERVICE_NAME`.
    pub service_name: Option<String>,
    /// `always_on`, `always_off`, `traceidratio`, `parentbased_always_on` (the default),
    /// `parentbased_always_off` or `parentbased_traceidratio`. As `OTEL_TRACES_SAMPLER`.
    pub sampler: Option<String>,
    /// The ratio of a `*traceidratio` sampler, 0 to 1. As `OTEL_TRACES_SAMPLER_ARG`.
    pub sampler_arg: Option<f64>,
    /// More resource attributes (`deployment.environment = "prod"`). As
    /// `OTEL_RESOURCE_ATTRIBUTES`, whose pairs this section's override.
    pub resource_attributes: BTreeMap<String, String>,
    /// Spans waiting for export, at most (default [`QUEUE_SPANS_MAX_DEFAULT`]).
    pub queue_spans_max: Option<usize>,
    /// Spans in one OTLP request, at most (default [`BATCH_SPANS_MAX_DEFAULT`]).
    pub batch_spans_max: Option<usize>,
    /// One export's time bound, ms (default [`EXPORT_TIMEOUT_MS_DEFAULT`]).
    pub export_timeout_ms: Option<u64>,
    /// The longest a finished span waits for its batch, ms (default [`SCHEDULED_DELAY_MS_DEFAULT`]).
    pub scheduled_delay_ms: Option<u64>,
}

/// Which traces are kept. A `ParentBased` sampler follows the caller's decision (the
/// `traceparent` flags) and applies its own only to traces that start here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerChoice {
    /// Every trace.
    AlwaysOn,
    /// None.
    AlwaysOff,
    /// This share of traces (0 to 1), chosen by trace id so every node agrees.
    Ratio(f64),
    /// The parent's decision; for a trace that starts here, the inner choice.
    ParentBased(ParentlessChoice),
}

/// A parent-based sampler's choice for traces that start here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParentlessChoice {
    /// Keep them.
    AlwaysOn,
    /// Drop them.
    AlwaysOff,
    /// Keep this share (0 to 1).
    Ratio(f64),
}

/// What tracing was configured to, once the section and the environment are read.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// The full traces URL (`…/v1/traces`), or `None` to let the exporter read
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` itself.
    pub traces_endpoint: Option<String>,
    /// Where spans go, for the start-up log line.
    pub shown_endpoint: String,
    /// `service.name`.
    pub service_name: String,
    /// The sampler.
    pub sampler: SamplerChoice,
    /// Resource attributes beyond `service.name` (the section's; the exporter adds
    /// `OTEL_RESOURCE_ATTRIBUTES`' own).
    pub resource_attributes: BTreeMap<String, String>,
    /// Spans waiting for export, at most.
    pub queue_spans_max: usize,
    /// Spans in one OTLP request, at most.
    pub batch_spans_max: usize,
    /// One export's time bound, ms.
    pub export_timeout_ms: u64,
    /// The longest a finished span waits for its batch, ms.
    pub scheduled_delay_ms: u64,
}

impl TelemetryConfig {
    /// Resolve the section against `env` (`OTEL_*` variables). `Ok(None)` when tracing is off:
    /// no endpoint anywhere, `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`.
    ///
    /// # Errors
    /// [`TelemetryError::Config`] naming the field or variable: a protocol other than
    /// `http/protobuf`, an unknown sampler, a ratio outside 0–1, a bound of 0, an endpoint that
    /// is not `http://` or `https://`.
    pub fn resolve(&self, env: impl Fn(&str) -> Option<String>) -> Result<Option<TelemetrySettings>, TelemetryError> {
        let var = |name: &str| env(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        match var("OTEL_SDK_DISABLED") {
            Some(v) if v.eq_ignore_ascii_case("true") => return Ok(None),
            Some(v) if !v.eq_ignore_ascii_case("false") => {
                return Err(TelemetryError::Config {
                    field: "OTEL_SDK_DISABLED".into(),
                    message: format!("{v:?} is not a boolean; set it to true or false"),
                });
            }
            _ => {}
        }
        if self.endpoint.is_none() && var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none")) {
            return Ok(None);
        }
        let (traces_endpoint, shown_endpoint) = match (&self.endpoint, var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
            (Some(base), _) => {
                let base = base.trim().trim_end_matches('/');
                check_url("telemetry.endpoint", base)?;
                let url = format!("{base}/v1/traces");
                (Some(url.clone()), url)
            }
            (None, Some(url)) => {
                check_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &url)?;
                (None, url)
            }
            (None, None) => match var("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(base) => {
                    check_url("OTEL_EXPORTER_OTLP_ENDPOINT", &base)?;
                    (None, format!("{}/v1/traces", base.trim_end_matches('/')))
                }
                None => return Ok(None),
            },
        };
        let (protocol, protocol_field) = match &self.protocol {
            Some(p) => (Some(p.clone()), "telemetry.protocol"),
            None => match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
                Some(p) => (Some(p), "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
                None => (var("OTEL_EXPORTER_OTLP_PROTOCOL"), "OTEL_EXPORTER_OTLP_PROTOCOL"),
            },
        };
        if let Some(protocol) = protocol.filter(|p| p != "http/protobuf") {
            return Err(TelemetryError::Config {
                field: protocol_field.into(),
                message: format!(
                    "protocol {protocol:?} is not built in: Guild exports OTLP over http/protobuf (a collector's port \
                     4318); set it to \"http/protobuf\""
                ),
            });
        }
        let service_name = match &self.service_name {
            Some(name) => name.clone(),
            None => var("OTEL_SERVICE_NAME").unwrap_or_else(|| "guild".to_string()),
        };
        let (sampler, sampler_field) = match &self.sampler {
            Some(s) => (Some(s.clone()), "telemetry.sampler"),
            None => (var("OTEL_TRACES_SAMPLER"), "OTEL_TRACES_SAMPLER"),
        };
        let (arg, arg_field) = match self.sampler_arg {
            Some(ratio) => (Some(ratio), "telemetry.sampler_arg"),
            None => match var("OTEL_TRACES_SAMPLER_ARG") {
                Some(text) => (
                    Some(text.parse::<f64>().map_err(|_| TelemetryError::Config {
                        field: "OTEL_TRACES_SAMPLER_ARG".into(),
                        message: format!("{text:?} is not a number; give a ratio from 0 to 1"),
                    })?),
                    "OTEL_TRACES_SAMPLER_ARG",
                ),
                None => (None, "OTEL_TRACES_SAMPLER_ARG"),
            },
        };
        let ratio = || -> Result<f64, TelemetryError> {
            let ratio = arg.unwrap_or(1.0);
            if !(0.0..=1.0).contains(&ratio) {
                return Err(TelemetryError::Config {
                    field: arg_field.into(),
                    message: format!("{ratio} is not a ratio; give a number from 0 to 1"),
                });
            }
            Ok(ratio)
        };
        let named = sampler.as_deref().unwrap_or("parentbased_always_on");
        // A ratio in the section with a sampler that takes none is a mistake to name; one in the
        // environment (shared by many services) is ignored, as the specification says.
        if arg.is_some() && arg_field == "telemetry.sampler_arg" && !named.ends_with("traceidratio") {
            return Err(TelemetryError::Config {
                field: arg_field.into(),
                message: format!(
                    "a ratio is given but the sampler is {named:?}, which takes none; set the sampler to \
                     parentbased_traceidratio (or traceidratio) for the ratio to apply"
                ),
            });
        }
        let sampler = match named {
            "always_on" => SamplerChoice::AlwaysOn,
            "always_off" => SamplerChoice::AlwaysOff,
            "traceidratio" => SamplerChoice::Ratio(ratio()?),
            "parentbased_always_on" => SamplerChoice::ParentBased(ParentlessChoice::AlwaysOn),
            "parentbased_always_off" => SamplerChoice::ParentBased(ParentlessChoice::AlwaysOff),
            "parentbased_traceidratio" => SamplerChoice::ParentBased(ParentlessChoice::Ratio(ratio()?)),
            other => {
                return Err(TelemetryError::Config {
                    field: sampler_field.into(),
                    message: format!(
                        "unknown sampler {other:?}; use always_on, always_off, traceidratio, parentbased_always_on, \
                         parentbased_always_off or parentbased_traceidratio"
                    ),
                });
            }
        };
        let bound = |value: Option<usize>, default: usize, field: &str| -> Result<usize, TelemetryError> {
            match value {
                Some(0) => Err(TelemetryError::Config {
                    field: format!("telemetry.{field}"),
                    message: "must be at least 1".into(),
                }),
                Some(n) => Ok(n),
                None => Ok(default),
            }
        };
        let queue_spans_max = bound(self.queue_spans_max, QUEUE_SPANS_MAX_DEFAULT, "queue_spans_max")?;
        let batch_spans_max =
            bound(self.batch_spans_max, BATCH_SPANS_MAX_DEFAULT, "batch_spans_max")?.min(queue_spans_max);
        let ms = |value: Option<u64>, default: u64, field: &str| -> Result<u64, TelemetryError> {
            let value = value.unwrap_or(default);
            if value == 0 {
                return Err(TelemetryError::Config {
                    field: format!("telemetry.{field}"),
                    message: "must be at least 1 ms".into(),
                });
            }
            Ok(value)
        };
        Ok(Some(TelemetrySettings {
            traces_endpoint,
            shown_endpoint,
            service_name,
            sampler,
            resource_attributes: self.resource_attributes.clone(),
            queue_spans_max,
            batch_spans_max,
            export_timeout_ms: ms(self.export_timeout_ms, EXPORT_TIMEOUT_MS_DEFAULT, "export_timeout_ms")?,
            scheduled_delay_ms: ms(self.scheduled_delay_ms, SCHEDULED_DELAY_MS_DEFAULT, "scheduled_delay_ms")?,
        }))
    }
}

fn check_url(field: &str, url: &str) -> Result<(), TelemetryError> {
    let lower = url.to_ascii_lowercase();
    if field != "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" && lower.trim_end_matches('/').ends_with("/v1/traces") {
        return Err(TelemetryError::Config {
            field: field.into(),
            message: format!(
                "{url:?} already ends in /v1/traces, which is appended to this base address; give the base \
                 (http://collector:4318), or the full URL in OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
            ),
        });
    }
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(());
    }
    Err(TelemetryError::Config {
        field: field.into(),
        message: format!("{url:?} is not an http:// or https:// address of an OTLP/HTTP collector"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn nothing_configured_is_off() {
        assert_eq!(TelemetryConfig::default().resolve(env(&[])).ok(), Some(None));
        let disabled = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "true")]);
        assert_eq!(TelemetryConfig::default().resolve(disabled).ok(), Some(None));
        let none = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_TRACES_EXPORTER", "none")]);
        assert_eq!(TelemetryConfig::default().resolve(none).ok(), Some(None));
    }

    #[test]
    fn the_section_wins_and_the_environment_fills_in() {
        let config = TelemetryConfig {
            endpoint: Some("http://127.0.0.1:4318/".into()),
            sampler: Some("parentbased_traceidratio".into()),
            ..TelemetryConfig::default()
        };
        let vars = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://elsewhere:4318"),
            ("OTEL_TRACES_SAMPLER", "always_off"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
            ("OTEL_SERVICE_NAME", "guild-eu"),
        ]);
        let settings = config.resolve(vars).ok().flatten().expect("on");
        assert_eq!(settings.traces_endpoint.as_deref(), Some("http://127.0.0.1:4318/v1/traces"));
        assert_eq!(settings.sampler, SamplerChoice::ParentBased(ParentlessChoice::Ratio(0.01)));
        assert_eq!(settings.service_name, "guild-eu");
        assert_eq!((settings.queue_spans_max, settings.batch_spans_max), (2048, 512));
    }

    #[test]
    fn bad_values_name_their_field() {
        type Case<'a> = (TelemetryConfig, &'a [(&'a str, &'a str)], &'a str);
        let cases: [Case<'_>; 8] = [
            (
                TelemetryConfig::default(),
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/v1/traces")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            (
                TelemetryConfig { endpoint: Some("http://c".into()), sampler_arg: Some(0.01), ..Default::default() },
                &[],
                "telemetry.sampler_arg",
            ),
            (
                TelemetryConfig { endpoint: Some("http://c".into()), ..Default::default() },
                &[("OTEL_SDK_DISABLED", "yes")],
                "OTEL_SDK_DISABLED",
            ),
            (TelemetryConfig::default(), &[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4318")], "OTEL_EXPORTER_OTLP_ENDPOINT"),
            (
                TelemetryConfig::default(),
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                TelemetryConfig {
                    endpoint: Some("http://c".into()),
                    sampler: Some("sometimes".into()),
                    ..Default::default()
                },
                &[],
                "telemetry.sampler",
            ),
            (
                TelemetryConfig {
                    endpoint: Some("http://c".into()),
                    sampler: Some("traceidratio".into()),
                    ..Default::default()
                },
                &[("OTEL_TRACES_SAMPLER_ARG", "2")],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (
                TelemetryConfig { endpoint: Some("http://c".into()), queue_spans_max: Some(0), ..Default::default() },
                &[],
                "telemetry.queue_spans_max",
            ),
        ];
        for (config, vars, field) in cases {
            match config.resolve(env(vars)) {
                Err(TelemetryError::Config { field: named, .. }) => assert_eq!(named, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
