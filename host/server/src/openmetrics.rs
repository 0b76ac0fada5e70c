//! The OpenMetrics text exposition of `/metrics`, served to a scraper that asks for it
//! (`Accept: application/openmetrics-text`). Unlike Prometheus text 0.0.4 it carries exemplars:
//! each bucket of `guild_run_duration_seconds` names the trace of the latest traced run that
//! landed in it, so a dashboard's latency panel links to that run's spans (and, through its
//! `guild.bundle.id`, to a bundle that replays it).

use prometheus::proto::{MetricFamily, MetricType};
use std::collections::HashMap;
use std::fmt::Write as _;

/// The `Content-Type` of the exposition.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Histogram series (label value sets) that keep exemplars, at most; a new series past it keeps
/// none (the families' own series are bounded by the registered tools and revisions).
pub(crate) const EXEMPLAR_SERIES_MAX: usize = 1024;

/// One traced observation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Exemplar {
    /// 32 hex digits.
    pub(crate) trace_id: String,
    /// The observed value (seconds).
    pub(crate) value: f64,
    /// When, seconds since the Unix epoch.
    pub(crate) unix_s: f64,
}

/// The exemplars of one histogram family: by the series' label values (in the family's label
/// order), one per bucket (the last one, `+Inf`, included).
#[derive(Debug, Default)]
pub(crate) struct Exemplars {
    series: HashMap<Vec<String>, Vec<Option<Exemplar>>>,
}

impl Exemplars {
    /// Keep `exemplar` as the one of the bucket its value falls in, among `bounds` (the
    /// histogram's upper bounds, `+Inf` implied after them), for the series `labels` (name and
    /// value pairs, in any order: a gathered family's labels come sorted by name).
    pub(crate) fn keep(&mut self, labels: &[(&str, &str)], bounds: &[f64], exemplar: Exemplar) {
        let mut labels = labels.to_vec();
        labels.sort_unstable();
        let key: Vec<String> = labels.iter().map(|(_, value)| (*value).to_string()).collect();
        if !self.series.contains_key(&key) && self.series.len() >= EXEMPLAR_SERIES_MAX {
            return;
        }
        let slots = self.series.entry(key).or_insert_with(|| vec![None; bounds.len() + 1]);
        let bucket = bounds.iter().position(|bound| exemplar.value <= *bound).unwrap_or(bounds.len());
        if let Some(slot) = slots.get_mut(bucket) {
            *slot = Some(exemplar);
        }
    }

    fn get(&self, labels: &[String], bucket: usize) -> Option<&Exemplar> {
        self.series.get(labels)?.get(bucket)?.as_ref()
    }
}

/// `families` in OpenMetrics text, with `exemplars` (by family name) on histogram buckets, ending
/// in `# EOF`.
pub(crate) fn encode(families: &[MetricFamily], exemplars: &HashMap<String, &Exemplars>) -> String {
    let mut out = String::new();
    for family in families {
        let name = family.name();
        let kind = family.get_field_type();
        // A counter's family is named without `_total`; its sample keeps it.
        let family_name = match kind {
            MetricType::COUNTER => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        let type_word = match kind {
            MetricType::COUNTER => "counter",
            MetricType::GAUGE => "gauge",
            MetricType::HISTOGRAM => "histogram",
            MetricType::SUMMARY => "summary",
            MetricType::UNTYPED => "unknown",
        };
        let _ = writeln!(out, "# TYPE {family_name} {type_word}");
        if !family.help().is_empty() {
            let _ = writeln!(out, "# HELP {family_name} {}", escape(family.help()));
        }
        let kept = exemplars.get(name);
        for metric in family.get_metric() {
            let labels: Vec<(&str, &str)> = metric.get_label().iter().map(|l| (l.name(), l.value())).collect();
            match kind {
                MetricType::COUNTER => {
                    sample(&mut out, &format!("{family_name}_total"), &labels, metric.get_counter().get_value());
                }
                MetricType::GAUGE => sample(&mut out, name, &labels, metric.get_gauge().get_value()),
                MetricType::HISTOGRAM => {
                    let histogram = metric.get_histogram();
                    let values: Vec<String> = labels.iter().map(|(_, v)| (*v).to_string()).collect();
                    let buckets = histogram.get_bucket();
                    for (index, bucket) in buckets.iter().enumerate() {
                        let le = number(bucket.upper_bound());
                        let mut with_le = labels.clone();
                        with_le.push(("le", &le));
                        sample_no_newline(
                            &mut out,
                            &format!("{name}_bucket"),
                            &with_le,
                            bucket.cumulative_count() as f64,
                        );
                        exemplar(&mut out, kept.and_then(|k| k.get(&values, index)));
                    }
                    let mut with_le = labels.clone();
                    with_le.push(("le", "+Inf"));
                    sample_no_newline(
                        &mut out,
                        &format!("{name}_bucket"),
                        &with_le,
                        histogram.get_sample_count() as f64,
                    );
                    exemplar(&mut out, kept.and_then(|k| k.get(&values, buckets.len())));
                    sample(&mut out, &format!("{name}_count"), &labels, histogram.get_sample_count() as f64);
                    sample(&mut out, &format!("{name}_sum"), &labels, histogram.get_sample_sum());
                }
                MetricType::SUMMARY | MetricType::UNTYPED => {}
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    sample_no_newline(out, name, labels, value);
    out.push('\n');
}

fn sample_no_newline(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape(value));
        }
        out.push('}');
    }
    let _ = write!(out, " {}", number(value));
}

fn exemplar(out: &mut String, exemplar: Option<&Exemplar>) {
    if let Some(e) = exemplar {
        let _ = write!(out, " # {{trace_id=\"{}\"}} {} {:.3}", escape(&e.trace_id), number(e.value), e.unix_s);
    }
    out.push('\n');
}

fn number(value: f64) -> String {
    if value.is_infinite() {
        return if value > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    if value.is_nan() {
        return "NaN".into();
    }
    format!("{value}")
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{HistogramOpts, HistogramVec, IntCounter, Registry};

    #[test]
    fn a_histogram_bucket_carries_the_trace_of_a_run_that_landed_in_it() {
        let registry = Registry::new_custom(Some("guild".into()), None).expect("registry");
        let bounds = [0.01, 0.1, 1.0];
        let runs = HistogramVec::new(
            HistogramOpts::new("run_duration_seconds", "Wall time.").buckets(bounds.to_vec()),
            &["tool"],
        )
        .expect("histogram");
        let count = IntCounter::new("runs_total", "Runs.").expect("counter");
        registry.register(Box::new(runs.clone())).expect("register");
        registry.register(Box::new(count.clone())).expect("register");
        runs.with_label_values(&["echo"]).observe(0.05);
        count.inc();
        let mut kept = Exemplars::default();
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736".to_string();
        kept.keep(
            &[("tool", "echo")],
            &bounds,
            Exemplar { trace_id: trace_id.clone(), value: 0.05, unix_s: 1_700_000_000.0 },
        );
        let exemplars = HashMap::from([("guild_run_duration_seconds".to_string(), &kept)]);
        let text = encode(&registry.gather(), &exemplars);
        assert!(text.contains("# TYPE guild_runs counter\n"), "{text}");
        assert!(text.contains("guild_runs_total 1\n"), "{text}");
        assert!(
            text.contains(&format!(
                "guild_run_duration_seconds_bucket{{tool=\"echo\",le=\"0.1\"}} 1 # {{trace_id=\"{trace_id}\"}} 0.05 1700000000.000\n"
            )),
            "{text}"
        );
        assert!(text.contains("guild_run_duration_seconds_bucket{tool=\"echo\",le=\"0.01\"} 0\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn exemplars_are_kept_for_a_bounded_number_of_series() {
        let mut kept = Exemplars::default();
        for n in 0..EXEMPLAR_SERIES_MAX + 10 {
            let tool = format!("tool-{n}");
            kept.keep(&[("tool", &tool)], &[1.0], Exemplar { trace_id: "t".into(), value: 0.5, unix_s: 0.0 });
        }
        assert_eq!(kept.series.len(), EXEMPLAR_SERIES_MAX);
    }
}
