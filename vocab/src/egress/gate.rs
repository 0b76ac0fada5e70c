//! Keyed egress limits and upstream back-pressure, as the egress hook sees them: before a live
//! request it asks an [`EgressGate`] for room under every limit that applies — the upstream's
//! and each secret's the request carries — and after each answer it tells the gate what the
//! upstream said, so a `429` or `503` with `Retry-After` holds that upstream back for the whole
//! fleet until then. The host keeps the gate (in process, or in Redis); a replay asks nothing:
//! its refusals are on the tape.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

/// A future an [`EgressGate`] answers with.
pub type GateFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Room an admitted request holds under concurrency limits while it is in flight: kept until the
/// exchange ends, given back when dropped.
pub struct GatePass(Option<Box<dyn Send + Sync>>);

impl GatePass {
    /// Nothing held (no concurrency limit applies).
    pub fn free() -> Self {
        Self(None)
    }

    /// Holding `held` (given back as it drops).
    pub fn holding(held: impl Send + Sync + 'static) -> Self {
        Self(Some(Box::new(held)))
    }

    /// True when something is held.
    pub fn holds(&self) -> bool {
        self.0.is_some()
    }
}

impl std::fmt::Debug for GatePass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("GatePass").field(&self.holds()).finish()
    }
}

/// The host's egress limits and throttles.
pub trait EgressGate: Send + Sync {
    /// Before a live request to `upstream` ([`upstream_key`]) carrying the secrets named
    /// `secrets`: wait for room under every limit that applies, up to its bound. The pass holds
    /// the request's place under concurrency limits: keep it until the exchange ends.
    ///
    /// # Errors
    /// A [`GateRefusal`] naming the limit (and how long to wait for it), or the upstream's
    /// `Retry-After`, when waiting would pass the bound.
    fn admit<'a>(&'a self, upstream: &'a str, secrets: &'a [String]) -> GateFuture<'a, Result<GatePass, GateRefusal>>;

    /// `to.0`, the upstream, answered a request carrying the secrets named `to.1` with `status`, and
    /// `Retry-After` (ms) when it gave one: a `429` or `503` with one holds back the requests to
    /// that upstream carrying those secrets (or, carrying none, every request to it carrying
    /// none) until then.
    fn answered<'a>(
        &'a self,
        to: (&'a str, &'a [String]),
        status: u16,
        retry_after_ms: Option<u64>,
    ) -> GateFuture<'a, ()>;
}

/// Why a request may not go now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateRefusal {
    /// What to tell the operator: the limit, or the upstream's `Retry-After`, and what to change.
    pub reason: String,
    /// How long until the request could go, ms.
    pub retry_after_ms: u64,
}

/// `scheme://host:port` as the hook checked it: the scheme and host in lower case, a trailing
/// `.` dropped, an IP address written one way (`[::ffff:10.0.0.5]` is `10.0.0.5`), and the port
/// always written.
pub fn upstream_key(scheme: &str, host: &str, port: u16) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let host = match super::rules::parse_ip_literal(&host).map(super::rules::canonical_ip) {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => format!("[{v6}]"),
        None => host,
    };
    format!("{}://{host}:{port}", scheme.to_ascii_lowercase())
}

/// An upstream as an operator writes it (`https://api.github.com`, `http://10.0.0.5:8080`), as
/// its [`upstream_key`].
///
/// # Errors
/// A message saying what an upstream is written as.
pub fn parse_upstream(text: &str) -> Result<String, String> {
    let bad = || format!("{text:?} is not an upstream: write scheme://host[:port] (https://api.github.com)");
    let (scheme, rest) = text.split_once("://").ok_or_else(bad)?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return Err(bad()),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(bad());
    }
    let (host, port) = match authority.rfind(':') {
        Some(colon) if !authority[colon..].contains(']') => {
            (&authority[..colon], authority[colon + 1..].parse::<u16>().map_err(|_| bad())?)
        }
        _ => (authority, default_port),
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(upstream_key(scheme, host, port))
}

/// A `Retry-After` header's value as milliseconds from now: delay-seconds, or an HTTP date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`) against `now_unix_s`. `None` when it is neither.
pub fn retry_after_ms(value: &str, now_unix_s: u64) -> Option<u64> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More seconds than fit: as long as can be (the host caps a throttle anyway).
        return Some(value.parse::<u64>().map_or(u64::MAX, |seconds| seconds.saturating_mul(1000)));
    }
    // IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else { return None };
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|m| m == month)? as i64
        + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<Vec<_>>>()?;
    let [h, m, s] = hms.as_slice() else { return None };
    // A date a server could mean: the arithmetic below then cannot overflow.
    let plausible = (1970..=9999).contains(&year)
        && (1..=31).contains(&day)
        && (0..24).contains(h)
        && (0..60).contains(m)
        && (0..61).contains(s);
    if !plausible {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let at = days * 86_400 + h * 3600 + m * 60 + s;
    let now = i64::try_from(now_unix_s).ok()?;
    Some(u64::try_from(at.saturating_sub(now)).unwrap_or(0).saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_are_written_one_way() {
        assert_eq!(parse_upstream("HTTPS://API.GitHub.com").as_deref(), Ok("https://api.github.com:443"));
        assert_eq!(parse_upstream("http://[::ffff:127.0.0.1]:8080/").as_deref(), Ok("http://127.0.0.1:8080"));
        assert_eq!(upstream_key("http", "127.0.0.1", 8080), "http://127.0.0.1:8080");
        assert!(parse_upstream("ftp://x").is_err() && parse_upstream("https://x/path").is_err());
        assert!(parse_upstream("https://u@x").is_err() && parse_upstream("https://x:99999").is_err());
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        assert_eq!(retry_after_ms("2", 0), Some(2000));
        // 1994-11-06T08:49:37Z is 784111777.
        assert_eq!(retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_770), Some(7000));
        assert_eq!(retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", 784_111_800), Some(0), "a date past is now");
        assert_eq!(retry_after_ms("soon", 0), None);
        // Nothing a server sends makes the host overflow or panic.
        assert_eq!(retry_after_ms("Sun, 06 Nov 99999999999999999 08:49:37 GMT", 0), None);
        assert_eq!(retry_after_ms("Sun, 32 Nov 1994 08:49:37 GMT", 0), None);
        assert_eq!(retry_after_ms("99999999999999999999999", 0), Some(u64::MAX));
    }
}
