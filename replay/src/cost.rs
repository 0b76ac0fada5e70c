//! What a run cost: the quantities its bundle records (fuel, wall time, memory, HTTP exchanges,
//! stored bytes), priced by a price table in an exact decimal currency. The same function
//! measures a run as it is sealed and a bundle read back, so `guild bundle cost` re-derives,
//! from the bundle alone, the figure the daemon answered with.

use crate::tape::{Effect, Event};
use crate::{Bundle, Digest};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::str::FromStr;

/// The priced quantities of one run, all from what its bundle records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantities {
    /// Fuel units burnt (`result.json`).
    pub fuel_units: u64,
    /// Wall time of the guest's call, µs (`exec.json`).
    pub wall_time_us: u64,
    /// Peak linear memory, bytes (`exec.json`).
    pub memory_bytes_peak: u64,
    /// Outgoing HTTP requests the guest made (the tape's exchanges, refused ones included).
    pub egress_requests: u64,
    /// Bytes of their request and response bodies (the tape's).
    pub egress_bytes: u64,
    /// Time its GPU dispatches took on a device, µs (`exec.json`).
    #[serde(default)]
    pub gpu_device_us: u64,
    /// Time its GPU dispatches took on the CPU reference (no adapter, or `--gpu cpu`), µs.
    #[serde(default)]
    pub gpu_cpu_us: u64,
    /// Bytes the bundle records ([`crate::Manifest::recorded_bytes`]): its blobs and its
    /// action, tape and result documents (not its exec record, which holds the cost, nor its
    /// manifest and signature).
    pub bundle_bytes: u64,
}

impl Quantities {
    /// Measure a run from what its bundle holds: `fuel_units` (`result.json`), the exec
    /// record's wall time, memory peak and GPU time (device, CPU reference), its tape's events
    /// and the bytes the bundle records.
    pub fn measure(
        fuel_units: u64,
        (wall_time_us, memory_bytes_peak, (gpu_device_us, gpu_cpu_us)): (u64, u64, (u64, u64)),
        events: &[Event],
        bundle_bytes: u64,
    ) -> Self {
        let (mut egress_requests, mut egress_bytes) = (0u64, 0u64);
        for event in events {
            if let Effect::Http { request, response, .. } = &event.effect {
                egress_requests += 1;
                egress_bytes = egress_bytes
                    .saturating_add(request.body_bytes)
                    .saturating_add(response.as_ref().map_or(0, |r| r.body_bytes));
            }
        }
        Self {
            fuel_units,
            wall_time_us,
            memory_bytes_peak,
            egress_requests,
            egress_bytes,
            gpu_device_us,
            gpu_cpu_us,
            bundle_bytes,
        }
    }

    /// The most a run under `limits` can use of each quantity: what a budget reserves before the
    /// run starts (tokens, which no limit bounds, aside). GPU time is bounded by the run's
    /// timeout, on a device or the CPU reference ([`PriceTable::price_worst`] prices it at the
    /// dearer).
    pub fn worst_case(limits: &guild_vocab::Limits) -> Self {
        let requests = u64::from(limits.http_requests_max);
        let per_request = limits.http_request_body_bytes_max.saturating_add(limits.http_response_bytes_max);
        Self {
            fuel_units: limits.fuel_units,
            wall_time_us: limits.timeout_ms.saturating_mul(1000),
            memory_bytes_peak: limits.memory_bytes_max,
            egress_requests: requests,
            egress_bytes: requests.saturating_mul(per_request),
            gpu_device_us: limits.timeout_ms.saturating_mul(1000),
            gpu_cpu_us: 0,
            bundle_bytes: limits.recording_bytes_max,
        }
    }

    /// Measure an opened bundle.
    pub fn of(bundle: &Bundle) -> Self {
        let exec = |field: &str| bundle.exec[field].as_u64().unwrap_or(0);
        Self::measure(
            bundle.result.fuel_used_units,
            (exec("wall_time_us"), exec("memory_bytes_peak"), (exec("gpu_device_us"), exec("gpu_cpu_us"))),
            bundle.tape.events(),
            bundle.manifest.recorded_bytes(),
        )
    }

    /// The cost its host priced it at as it sealed it, from its exec record (signed with it).
    pub fn recorded_cost(bundle: &Bundle) -> Option<Cost> {
        bundle.exec.get("cost").and_then(|cost| serde_json::from_value(cost.clone()).ok())
    }
}

/// One recorded HTTP exchange, as it is priced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exchange {
    /// The request's URL as the guest wrote it.
    pub url: String,
    /// The response body's blob (`None` for a request that got no response).
    pub response: Option<Digest>,
    /// Bytes of its request and response bodies.
    pub bytes: u64,
}

/// Each recorded HTTP exchange of `events`.
pub fn exchanges(events: &[Event]) -> impl Iterator<Item = Exchange> + '_ {
    events.iter().filter_map(|event| match &event.effect {
        Effect::Http { request, response, .. } => Some(Exchange {
            url: request.url.clone(),
            response: response.as_ref().map(|r| r.body),
            bytes: request.body_bytes.saturating_add(response.as_ref().map_or(0, |r| r.body_bytes)),
        }),
        _ => None,
    })
}

/// A price table: what each quantity costs, in one currency. Prices are decimal strings in the
/// configuration (`"0.000002"`), never floats, and apply per the unit their name ends in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    /// ISO 4217 code, three capital letters (`USD`, `EUR`), or a unit of the operator's own
    /// (`CREDIT`): letters only, 3 to 8.
    pub currency: String,
    /// Per million fuel units.
    #[serde(default)]
    pub fuel_per_million: Price,
    /// Per second of wall time a run held its slot.
    #[serde(default)]
    pub wall_second: Price,
    /// Per MiB of peak linear memory held for one second.
    #[serde(default)]
    pub memory_mib_second: Price,
    /// Per outgoing HTTP request.
    #[serde(default)]
    pub egress_request: Price,
    /// Per MiB of outgoing request and response bodies.
    #[serde(default)]
    pub egress_mib: Price,
    /// Per MiB of bundle stored.
    #[serde(default)]
    pub bundle_mib: Price,
    /// Per millisecond of GPU dispatches on a device.
    #[serde(default)]
    pub gpu_device_ms: Price,
    /// Per millisecond of GPU dispatches run on the CPU reference instead.
    #[serde(default)]
    pub gpu_cpu_ms: Price,
    /// Upstreams whose requests and bytes have prices of their own (instead of
    /// `egress_request` and `egress_mib`): the first whose URL prefix a request starts with.
    #[serde(default)]
    pub egress: Vec<EgressPrice>,
    /// LLM upstreams whose token usage is priced: read from the *recorded* response bodies, so
    /// a bundle re-derives the same counts.
    #[serde(default)]
    pub llm: Vec<LlmPrice>,
}

/// An upstream whose egress has prices of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressPrice {
    /// The URL prefix its requests start with (`https://api.github.com/`), as the guest wrote
    /// them; matched as [`LlmPrice::url`] is.
    pub url: String,
    /// Per request.
    #[serde(default)]
    pub request: Price,
    /// Per MiB of request and response bodies.
    #[serde(default)]
    pub mib: Price,
}

/// Whether `url` starts with `prefix` at a path or query boundary (or `prefix` ends in `/`),
/// both as an upstream reads them ([`canonical_url`]): so neither `HTTPS://API.EXAMPLE:443/v1`
/// nor `https://api.example/./v1` is a way around a count or a price.
fn url_matches(prefix: &str, url: &str) -> bool {
    let (Some(url), Some(prefix)) = (canonical_url(url), canonical_url(prefix)) else { return false };
    url.strip_prefix(prefix.as_str())
        .is_some_and(|rest| rest.is_empty() || prefix.ends_with('/') || rest.starts_with(['/', '?']))
}

/// `url` as the egress hook sends it: scheme and host in lower case (a trailing `.` of the host
/// dropped), the port written only when it is not the scheme's default (and without leading
/// zeros), the path normalised as egress rules see it ([`guild_vocab::egress::path::normalize`]),
/// the query as written, no fragment. `None` for what is no absolute `http(s)` URL, or a path
/// the hook refuses (such a request is never sent).
pub fn canonical_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(end);
    if authority.contains('@') {
        return None; // the hook refuses userinfo
    }
    let (host, port) = match authority.rfind(':') {
        Some(colon) if !authority[colon..].contains(']') => {
            let port: u16 = authority[colon + 1..].parse().ok()?;
            (&authority[..colon], port)
        }
        _ => (authority, default_port),
    };
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    if host.is_empty() {
        return None;
    }
    // An address is written one way: the hook reaches `[::ffff:127.0.0.1]` as `127.0.0.1`, and
    // `[0::1]` as `[::1]`.
    let host = match guild_vocab::egress::rules::parse_ip_literal(host).map(guild_vocab::egress::rules::canonical_ip) {
        Some(std::net::IpAddr::V4(v4)) => v4.to_string(),
        Some(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
        None => host.to_string(),
    };
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let path = if path.is_empty() { "/".to_string() } else { guild_vocab::egress::path::normalize(path).ok()? };
    let port = if port == default_port { String::new() } else { format!(":{port}") };
    Some(match query {
        Some(query) => format!("{scheme}://{host}{port}{path}?{query}"),
        None => format!("{scheme}://{host}{port}{path}"),
    })
}

/// An LLM upstream and its per-token prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmPrice {
    /// The URL prefix its requests start with (`https://api.openai.com/v1/`), as the guest wrote
    /// them.
    pub url: String,
    /// Where its responses say their usage: `openai` (`usage.prompt_tokens`,
    /// `usage.completion_tokens`) or `anthropic` (`usage.input_tokens`, `usage.output_tokens`).
    #[serde(default)]
    pub style: UsageStyle,
    /// A JSON pointer to the input-token count instead of the style's (`/meta/tokens/in`).
    #[serde(default)]
    pub input_pointer: Option<String>,
    /// A JSON pointer to the output-token count instead of the style's.
    #[serde(default)]
    pub output_pointer: Option<String>,
    /// Per input (prompt) token.
    #[serde(default)]
    pub input_token: Price,
    /// Per output (completion) token.
    #[serde(default)]
    pub output_token: Price,
    /// Refuse the guest a successful (2xx) answer that says no token usage — a stream asked
    /// for without `stream_options.include_usage`, say — so none goes uncounted. Name the
    /// endpoints that always report usage in `url` (`…/v1/chat/completions`) when you set it.
    #[serde(default)]
    pub usage_required: bool,
}

/// How an LLM upstream reports token usage in its response body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageStyle {
    /// `usage.prompt_tokens` and `usage.completion_tokens`.
    #[default]
    Openai,
    /// `usage.input_tokens` and `usage.output_tokens`.
    Anthropic,
}

/// Input and output tokens a run's exchanges with one LLM upstream used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCount {
    /// Input (prompt) tokens.
    pub input: u64,
    /// Output (completion) tokens.
    pub output: u64,
}

impl LlmPrice {
    /// Whether a request to `url` went to this upstream: `url` is the prefix itself or goes on
    /// past it at a path, query or fragment boundary (or the prefix ends in `/`).
    pub fn matches(&self, url: &str) -> bool {
        // Compared without case, so `HTTPS://API.EXAMPLE/v1` is not a way around the count.
        url_matches(&self.url, url)
    }

    /// The tokens one recorded response `body` says were used (0 where it does not say): a JSON
    /// document, or a stream of server-sent events (`data: {...}` lines), whose events'
    /// counts are running totals — the largest of each is taken (OpenAI's last chunk with
    /// `stream_options.include_usage`; Anthropic's `message_start` and `message_delta`).
    pub fn count(&self, body: &[u8]) -> TokenCount {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
            return self.count_value(&value);
        }
        let Ok(text) = std::str::from_utf8(body) else { return TokenCount::default() };
        text.lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .filter_map(|data| serde_json::from_str::<serde_json::Value>(data.trim()).ok())
            .fold(TokenCount::default(), |most, event| {
                let this = self.count_value(&event);
                TokenCount { input: most.input.max(this.input), output: most.output.max(this.output) }
            })
    }

    /// Whether `body` says its usage at all (one of the fields [`LlmPrice::count`] reads).
    pub fn reports_usage(&self, body: &[u8]) -> bool {
        let says = |value: &serde_json::Value| self.read_usage(value).is_some();
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
            return says(&value);
        }
        let Ok(text) = std::str::from_utf8(body) else { return false };
        text.lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .filter_map(|data| serde_json::from_str::<serde_json::Value>(data.trim()).ok())
            .any(|event| says(&event))
    }

    fn count_value(&self, value: &serde_json::Value) -> TokenCount {
        self.read_usage(value).unwrap_or_default()
    }

    /// The usage `value` says: at the configured pointers, or where the style's endpoints put
    /// it — `usage.prompt_tokens`/`completion_tokens` (chat completions) or
    /// `usage.input_tokens`/`output_tokens` (OpenAI's responses, Anthropic's messages), at the
    /// top or in a stream event's `message` or `response`. `None` when it says none.
    fn read_usage(&self, value: &serde_json::Value) -> Option<TokenCount> {
        let read = |pointer: &str| value.pointer(pointer).and_then(serde_json::Value::as_u64);
        if self.input_pointer.is_some() || self.output_pointer.is_some() {
            let input = self.input_pointer.as_deref().and_then(read);
            let output = self.output_pointer.as_deref().and_then(read);
            return (input.is_some() || output.is_some())
                .then(|| TokenCount { input: input.unwrap_or(0), output: output.unwrap_or(0) });
        }
        let pairs = match self.style {
            UsageStyle::Openai => [("prompt_tokens", "completion_tokens"), ("input_tokens", "output_tokens")],
            UsageStyle::Anthropic => [("input_tokens", "output_tokens"), ("prompt_tokens", "completion_tokens")],
        };
        for base in ["/usage", "/message/usage", "/response/usage"] {
            for (input, output) in pairs {
                let (i, o) = (read(&format!("{base}/{input}")), read(&format!("{base}/{output}")));
                if i.is_some() || o.is_some() {
                    return Some(TokenCount { input: i.unwrap_or(0), output: o.unwrap_or(0) });
                }
            }
        }
        None
    }
}

/// A non-negative exact decimal price, written as a string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Price(pub Decimal);

impl Serialize for Price {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.normalize().to_string())
    }
}

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Price::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Price {
    /// Parse a decimal string: digits with at most one point, not negative, at most 28 digits.
    ///
    /// # Errors
    /// A message saying what to write instead.
    pub fn parse(text: &str) -> Result<Self, String> {
        let value = Decimal::from_str_exact(text.trim())
            .map_err(|e| format!("{text:?} is not a decimal price ({e}); write it as a string such as \"0.000002\""))?;
        if value.is_sign_negative() {
            return Err(format!("{text:?} is negative; a price is 0 or more"));
        }
        Ok(Self(value))
    }
}

/// One priced quantity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostLine {
    /// `fuel`, `wall_time`, `memory`, `egress_requests`, `egress_bytes`, `bundle_bytes`.
    pub resource: String,
    /// How much, in `unit`.
    pub quantity: Price,
    /// `million fuel units`, `s`, `MiB·s`, `requests`, `MiB`.
    pub unit: String,
    /// The table's price per `unit`.
    pub unit_price: Price,
    /// `quantity × unit_price`, exact.
    pub amount: Price,
    /// For tokens: the LLM upstream (its URL prefix in the table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

/// What a run cost: its priced lines and their exact sum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cost {
    /// The table's currency.
    pub currency: String,
    /// The sum of the lines' amounts.
    pub total: Price,
    /// One line per resource the table prices (a zero price makes no line).
    pub lines: Vec<CostLine>,
}

/// One MiB, in bytes.
const MIB: u64 = 1 << 20;

impl PriceTable {
    /// Check the table.
    ///
    /// # Errors
    /// A message naming the currency when it is not 3 to 8 capital letters.
    pub fn validate(&self) -> Result<(), String> {
        let ok = (3..=8).contains(&self.currency.len()) && self.currency.bytes().all(|b| b.is_ascii_uppercase());
        if !ok {
            return Err(format!(
                "currency {:?} is not 3 to 8 capital letters (an ISO 4217 code such as USD)",
                self.currency
            ));
        }
        Ok(())
    }

    /// The tokens each of the table's LLM upstreams (in its order) was used for, from the
    /// recorded exchanges, the response bodies as `body` reads them from the bundle's store
    /// (`None`: the body cannot be read).
    pub fn count_tokens(&self, exchanges: &[Exchange], body: impl Fn(&Digest) -> Option<Vec<u8>>) -> Vec<TokenCount> {
        let mut counts = vec![TokenCount::default(); self.llm.len()];
        if self.llm.is_empty() {
            return counts;
        }
        for exchange in exchanges {
            let Some((index, llm)) = self.llm.iter().enumerate().find(|(_, llm)| llm.matches(&exchange.url)) else {
                continue;
            };
            let Some(bytes) = exchange.response.as_ref().and_then(&body) else { continue };
            let used = llm.count(&bytes);
            counts[index].input = counts[index].input.saturating_add(used.input);
            counts[index].output = counts[index].output.saturating_add(used.output);
        }
        counts
    }

    /// The requests and bytes of `exchanges` that went to each of the table's priced egress
    /// upstreams (in its order).
    fn egress_by_upstream(&self, exchanges: &[Exchange]) -> Vec<(u64, u64)> {
        let mut tallies = vec![(0u64, 0u64); self.egress.len()];
        for exchange in exchanges {
            if let Some(index) = self.egress.iter().position(|rule| url_matches(&rule.url, &exchange.url)) {
                tallies[index].0 += 1;
                tallies[index].1 = tallies[index].1.saturating_add(exchange.bytes);
            }
        }
        tallies
    }

    /// What a recorded run cost: `quantities`, the tokens of its `exchanges` (their response
    /// bodies read from `store`) and its egress to priced upstreams — the one way the runtime
    /// (as it seals a bundle) and `guild bundle cost` price a run. Also the token counts, per
    /// LLM upstream.
    pub fn price_recorded(
        &self,
        quantities: &Quantities,
        exchanges: &[Exchange],
        store: &dyn crate::BlobStore,
    ) -> (Cost, Vec<TokenCount>) {
        let tokens = self.count_tokens(exchanges, |digest| store.get(digest).ok());
        let egress = self.egress_by_upstream(exchanges);
        (self.price_parts(quantities, &tokens, &egress), tokens)
    }

    /// What `quantities` cost under this table (no tokens; all egress at the default prices).
    pub fn price(&self, q: &Quantities) -> Cost {
        self.price_with_tokens(q, &[])
    }

    /// The most a run under `limits` can cost (its tokens aside): its worst case, with its
    /// egress at the dearest of the default and the per-upstream prices and its GPU time at the
    /// dearer of device and CPU reference. What a money budget reserves.
    pub fn price_worst(&self, limits: &guild_vocab::Limits) -> Cost {
        let dearest = |default: Price, each: &dyn Fn(&EgressPrice) -> Price| {
            self.egress.iter().map(each).fold(default, |a, b| if b.0 > a.0 { b } else { a })
        };
        let table = Self {
            egress_request: dearest(self.egress_request, &|rule| rule.request),
            egress_mib: dearest(self.egress_mib, &|rule| rule.mib),
            gpu_device_ms: if self.gpu_cpu_ms.0 > self.gpu_device_ms.0 { self.gpu_cpu_ms } else { self.gpu_device_ms },
            egress: Vec::new(),
            llm: Vec::new(),
            ..self.clone()
        };
        table.price(&Quantities::worst_case(limits))
    }

    /// What `quantities` and `tokens` (per LLM upstream, as [`PriceTable::count_tokens`] gives
    /// them) cost under this table, all egress at the default prices.
    pub fn price_with_tokens(&self, q: &Quantities, tokens: &[TokenCount]) -> Cost {
        self.price_parts(q, tokens, &[])
    }

    /// What `q` and `tokens` cost, `egress` (requests and bytes per priced upstream, in the
    /// table's order) at their upstreams' prices and the rest of `q`'s egress at the defaults.
    fn price_parts(&self, q: &Quantities, tokens: &[TokenCount], egress: &[(u64, u64)]) -> Cost {
        let ratio = |n: u64, d: u64| Decimal::from(n) / Decimal::from(d);
        let seconds = ratio(q.wall_time_us, 1_000_000);
        let (upstream_requests, upstream_bytes) =
            egress.iter().fold((0u64, 0u64), |(r, b), (rr, bb)| (r.saturating_add(*rr), b.saturating_add(*bb)));
        let candidates = [
            ("fuel", ratio(q.fuel_units, 1_000_000), "million fuel units", self.fuel_per_million),
            ("wall_time", seconds, "s", self.wall_second),
            ("memory", ratio(q.memory_bytes_peak, MIB).saturating_mul(seconds), "MiB·s", self.memory_mib_second),
            (
                "egress_requests",
                Decimal::from(q.egress_requests.saturating_sub(upstream_requests)),
                "requests",
                self.egress_request,
            ),
            ("egress_bytes", ratio(q.egress_bytes.saturating_sub(upstream_bytes), MIB), "MiB", self.egress_mib),
            ("gpu_device", ratio(q.gpu_device_us, 1000), "ms", self.gpu_device_ms),
            ("gpu_cpu", ratio(q.gpu_cpu_us, 1000), "ms", self.gpu_cpu_ms),
            ("bundle_bytes", ratio(q.bundle_bytes, MIB), "MiB", self.bundle_mib),
        ];
        let line =
            |resource: &str, quantity: Decimal, unit: &str, unit_price: Price, upstream: Option<&str>| CostLine {
                resource: resource.to_string(),
                quantity: Price(quantity),
                unit: unit.to_string(),
                unit_price,
                amount: Price(quantity.saturating_mul(unit_price.0)),
                upstream: upstream.map(str::to_string),
            };
        let mut lines: Vec<CostLine> = candidates
            .into_iter()
            .filter(|(_, quantity, _, price)| !price.0.is_zero() && !quantity.is_zero())
            .map(|(resource, quantity, unit, unit_price)| line(resource, quantity, unit, unit_price, None))
            .collect();
        for (rule, (requests, bytes)) in self.egress.iter().zip(egress) {
            for (resource, quantity, unit, price) in [
                ("egress_requests", Decimal::from(*requests), "requests", rule.request),
                ("egress_bytes", ratio(*bytes, MIB), "MiB", rule.mib),
            ] {
                if !quantity.is_zero() && !price.0.is_zero() {
                    lines.push(line(resource, quantity, unit, price, Some(&rule.url)));
                }
            }
        }
        for (llm, used) in self.llm.iter().zip(tokens) {
            for (resource, count, price) in
                [("input_tokens", used.input, llm.input_token), ("output_tokens", used.output, llm.output_token)]
            {
                if count > 0 && !price.0.is_zero() {
                    lines.push(line(resource, Decimal::from(count), "tokens", price, Some(&llm.url)));
                }
            }
        }
        let total = lines.iter().fold(Decimal::ZERO, |sum, line| sum.saturating_add(line.amount.0));
        Cost { currency: self.currency.clone(), total: Price(total), lines }
    }
}

impl Cost {
    /// What it cost besides its tokens: what is charged to budgets when the run ends (its
    /// meter charged the tokens as their responses came in).
    pub fn amount_besides_tokens(&self) -> Decimal {
        self.total.0.saturating_sub(self.token_amount()).max(Decimal::ZERO)
    }

    /// What its token lines come to: the part of the total a token meter charged as the run's
    /// LLM responses came in.
    pub fn token_amount(&self) -> Decimal {
        self.lines
            .iter()
            .filter(|l| l.resource.ends_with("_tokens"))
            .fold(Decimal::ZERO, |sum, l| sum.saturating_add(l.amount.0))
    }
}

/// A future a [`TokenMeter`] answers with.
pub type MeterFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The token and money budgets a live run's LLM requests are held to, kept by the host that
/// admitted the run (in process, or in Redis for a fleet). The egress hook asks before each
/// request and reports each response; a replay asks nothing (its refusals are on the tape).
pub trait TokenMeter: Send + Sync {
    /// Before a request to `url`: whether it goes to a metered LLM upstream (its answer must
    /// then come uncompressed, so its usage can be read).
    ///
    /// # Errors
    /// The reason, naming the spent budget and the setting that raises it, when `url` goes to an
    /// LLM upstream and one of the run's budgets is spent.
    fn admit<'a>(&'a self, url: &'a str) -> MeterFuture<'a, Result<bool, String>>;

    /// After the answer to a request to `url` came in with `status` and `body`: charge the
    /// tokens it says were used (nothing when `url` is no LLM upstream's).
    ///
    /// # Errors
    /// The reason, when the upstream requires its answers to say their usage
    /// ([`LlmPrice::usage_required`]) and this successful one does not: the guest is then
    /// refused the answer.
    fn spent<'a>(&'a self, url: &'a str, status: u16, body: &'a [u8]) -> MeterFuture<'a, Result<(), String>>;
}

impl FromStr for Price {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Price::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PriceTable {
        toml_like(
            r#"{"currency": "USD", "fuel_per_million": "0.00002", "wall_second": "0.0001", "egress_request": "0.000001"}"#,
        )
    }

    fn toml_like(json: &str) -> PriceTable {
        serde_json::from_str(json).expect("a table")
    }

    #[test]
    fn ten_thousand_tiny_charges_sum_exactly() {
        let table = PriceTable { egress_request: Price::parse("0.0000001").expect("price"), ..table() };
        let one = table.price(&Quantities { egress_requests: 1, ..Quantities::default() });
        let mut sum = Decimal::ZERO;
        for _ in 0..10_000 {
            sum += one.total.0;
        }
        assert_eq!(sum, Decimal::from_str_exact("0.001").expect("decimal"), "no float ever rounded it");
        assert_eq!(serde_json::to_value(one.total).expect("json"), "0.0000001");
    }

    #[test]
    fn each_line_is_quantity_times_price_and_zero_prices_make_no_line() {
        let quantities =
            Quantities { fuel_units: 3_000_000, wall_time_us: 250_000, egress_requests: 2, ..Quantities::default() };
        let cost = table().price(&quantities);
        let amounts: Vec<(&str, String)> =
            cost.lines.iter().map(|l| (l.resource.as_str(), l.amount.0.normalize().to_string())).collect();
        assert_eq!(
            amounts,
            [("fuel", "0.00006".into()), ("wall_time", "0.000025".into()), ("egress_requests", "0.000002".into())]
        );
        assert_eq!(cost.total.0.normalize().to_string(), "0.000087");
    }

    #[test]
    fn token_counts_follow_the_style_or_the_pointers_and_match_by_prefix() {
        let llm = |style: UsageStyle, pointers: Option<(&str, &str)>| LlmPrice {
            url: "https://llm.example/v1".into(),
            style,
            input_pointer: pointers.map(|p| p.0.to_string()),
            output_pointer: pointers.map(|p| p.1.to_string()),
            input_token: Price::default(),
            output_token: Price::default(),
            usage_required: false,
        };
        let anthropic = br#"{"usage": {"input_tokens": 7, "output_tokens": 9}}"#;
        assert_eq!(llm(UsageStyle::Anthropic, None).count(anthropic), TokenCount { input: 7, output: 9 });
        // OpenAI's responses API names its fields as Anthropic does: both styles read both.
        assert_eq!(llm(UsageStyle::Openai, None).count(anthropic), TokenCount { input: 7, output: 9 });
        let responses_stream =
            br#"data: {"type":"response.completed","response":{"usage":{"input_tokens":4,"output_tokens":6}}}"#;
        assert_eq!(llm(UsageStyle::Openai, None).count(responses_stream), TokenCount { input: 4, output: 6 });
        assert!(!llm(UsageStyle::Openai, None).reports_usage(br#"{"choices":[]}"#));
        assert!(!llm(UsageStyle::Openai, None).reports_usage(b"data: {\"choices\":[]}\n\ndata: [DONE]\n"));
        let custom = br#"{"meta": {"tokens": {"in": 3, "out": 4}}}"#;
        let pointed = llm(UsageStyle::Openai, Some(("/meta/tokens/in", "/meta/tokens/out")));
        assert_eq!(pointed.count(custom), TokenCount { input: 3, output: 4 });
        assert_eq!(pointed.count(b"not json"), TokenCount::default());
        let upstream = llm(UsageStyle::Openai, None);
        assert!(upstream.matches("https://llm.example/v1/chat") && upstream.matches("https://llm.example/v1?x=1"));
        assert!(!upstream.matches("https://llm.example/v10/chat"), "a prefix ends at a boundary");
        assert!(upstream.matches("HTTPS://LLM.EXAMPLE/v1/chat"), "case is no way around the count");
        assert!(!upstream.matches("https://llm.example.evil/v1"));
        // Nor is any other way of writing the URL the hook sends the same.
        for url in [
            "https://llm.example:443/v1/chat",
            "https://llm.example:0443/v1/chat",
            "https://llm.example./v1/chat",
            "https://llm.example/./v1/chat",
            "https://llm.example/x/../v1/chat",
            "https://llm.example/%76%31/chat",
            "https://llm.example/v1/chat#frag",
        ] {
            assert!(upstream.matches(url), "{url}");
        }
        assert!(!upstream.matches("https://llm.example:8443/v1/chat"), "another port is another upstream");
        assert!(!upstream.matches("http://llm.example/v1/chat"), "another scheme too");
        assert_eq!(canonical_url("HTTP://[::1]:80/a/./b?q=1#f").as_deref(), Some("http://[::1]/a/b?q=1"));
        // An address however it is written.
        let local = LlmPrice { url: "http://127.0.0.1:8080/v1/".into(), ..upstream.clone() };
        for url in ["http://[::ffff:127.0.0.1]:8080/v1/chat", "http://[::FFFF:7f00:1]:8080/v1/chat"] {
            assert!(local.matches(url), "{url}");
        }
        let v6 = LlmPrice { url: "http://[::1]/v1/".into(), ..upstream.clone() };
        assert!(v6.matches("http://[0:0:0:0:0:0:0:1]/v1/chat"));

        // A stream of server-sent events: the largest running totals.
        let openai_stream = b"data: {\"choices\":[]}\n\ndata: {\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":8}}\n\ndata: [DONE]\n";
        assert_eq!(upstream.count(openai_stream), TokenCount { input: 5, output: 8 });
        let anthropic_stream = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n";
        assert_eq!(llm(UsageStyle::Anthropic, None).count(anthropic_stream), TokenCount { input: 25, output: 15 });
    }

    #[test]
    fn upstreams_with_egress_prices_of_their_own_are_priced_apart_and_gpu_time_by_where_it_ran() {
        let table = PriceTable {
            egress_request: Price::parse("0.001").expect("price"),
            gpu_device_ms: Price::parse("0.0002").expect("price"),
            gpu_cpu_ms: Price::parse("0.00001").expect("price"),
            egress: vec![EgressPrice {
                url: "https://api.github.com/".into(),
                request: Price::parse("0.01").expect("price"),
                mib: Price::default(),
            }],
            ..table()
        };
        let exchange = |url: &str| Exchange { url: url.into(), response: None, bytes: 10 };
        let exchanges =
            [exchange("https://api.github.com/repos"), exchange("HTTPS://API.GITHUB.COM/x"), exchange("https://x.io/")];
        let quantities = Quantities {
            egress_requests: 3,
            egress_bytes: 30,
            gpu_device_us: 1_500,
            gpu_cpu_us: 0,
            ..Quantities::default()
        };
        let (cost, _) = table.price_recorded(&quantities, &exchanges, &crate::store::MemoryStore::default());
        let lines: Vec<(&str, String, Option<&str>)> = cost
            .lines
            .iter()
            .map(|l| (l.resource.as_str(), l.amount.0.normalize().to_string(), l.upstream.as_deref()))
            .collect();
        assert_eq!(
            lines,
            [
                ("egress_requests", "0.001".into(), None),
                ("gpu_device", "0.0003".into(), None),
                ("egress_requests", "0.02".into(), Some("https://api.github.com/")),
            ],
            "two requests at the upstream's price, one at the default; 1.5 ms on a device; no CPU time, no line"
        );
        // The worst case prices every request at the dearest price and GPU time at the dearer.
        let limits = guild_vocab::Limits { http_requests_max: 2, timeout_ms: 1000, ..guild_vocab::Limits::default() };
        let worst = table.price_worst(&limits);
        let requests = worst.lines.iter().find(|l| l.resource == "egress_requests").expect("a line");
        assert_eq!(requests.unit_price.0.normalize().to_string(), "0.01");
        let gpu = worst.lines.iter().find(|l| l.resource == "gpu_device").expect("a line");
        assert_eq!(gpu.amount.0.normalize().to_string(), "0.2", "1000 ms at 0.0002");
    }

    #[test]
    fn prices_are_strings_not_floats_and_never_negative() {
        assert!(serde_json::from_str::<PriceTable>(r#"{"currency": "USD", "wall_second": 0.1}"#).is_err(), "a float");
        let negative = serde_json::from_str::<PriceTable>(r#"{"currency": "USD", "wall_second": "-1"}"#);
        assert!(negative.expect_err("negative").to_string().contains("negative"));
        assert!(toml_like(r#"{"currency": "usd"}"#).validate().is_err());
        assert!(toml_like(r#"{"currency": "CREDIT"}"#).validate().is_ok());
    }
}
