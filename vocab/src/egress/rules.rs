//! Egress rules and address screening, with no I/O: what a request may reach.
//!
//! A rule is `[METHODS ]SCHEME://HOST[:PORT][/PATH-PREFIX]`:
//! - `SCHEME` is `http`, `https` or `*`;
//! - `HOST` is a name (`api.example.com`), a wildcard (`*.example.com`: any subdomain, not the
//!   apex), an IP literal (`127.0.0.1`, `[::1]`) or a bracketed range (`[10.0.0.0/8]`);
//! - `PORT` is a number or `*`; omitted, it is the scheme's default (80, 443);
//! - `METHODS` is a comma-separated list (`GET,HEAD`); omitted, any method;
//! - `PATH-PREFIX` limits the request path by whole segments: `/v1` allows `/v1` and
//!   `/v1/users` but not `/v10`; `/v1/` allows only what is below `/v1/`. Requests are matched
//!   on their normalised path (see [`super::path`]), which is also the path that is sent.
//!
//! A name rule only ever reaches public addresses: a name that resolves to a private, loopback,
//! link-local, unique-local or metadata address is refused. Reaching such an address takes a
//! rule that names the address or its range.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Which schemes a rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemeRule {
    /// `http://`: plain HTTP only, default port 80.
    Http,
    /// `https://`: TLS only, default port 443.
    Https,
    /// `*://`: either scheme; with no port written, any port.
    Any,
}

/// Which hosts a rule allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    /// Any host name or address (`*`); addresses are still screened.
    Any,
    /// Exactly this name (lowercase, no trailing dot).
    Name(String),
    /// Any name ending in `.suffix`.
    Subdomains(String),
    /// Exactly this address.
    Ip(IpAddr),
    /// Any address in this range.
    Range {
        /// The range's network address, IPv4 or IPv6 (`10.0.0.0` in `[10.0.0.0/8]`).
        network: IpAddr,
        /// Its prefix length.
        prefix: u8,
    },
}

/// One egress rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    text: String,
    scheme: SchemeRule,
    host: HostRule,
    /// `None`: any port.
    port: Option<u16>,
    /// Empty: any method. Uppercase.
    methods: Vec<String>,
    path_prefix: Option<String>,
}

/// A rule that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "egress rule {rule:?} is invalid: {reason}; write e.g. https://api.example.com, https://*.example.com:8443, GET http://127.0.0.1:8080/v1"
)]
pub struct RuleError {
    rule: String,
    reason: String,
}

/// What a request is, for matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination<'a> {
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The host as the request names it (a name or an IP literal).
    pub host: &'a str,
    /// The port (defaulted from the scheme).
    pub port: u16,
    /// The HTTP method, uppercase (`GET`), as rules with methods compare it.
    pub method: &'a str,
    /// The request path, normalised ([`super::path::normalize`]).
    pub path: &'a str,
}

impl EgressRule {
    /// Parse a rule.
    ///
    /// # Errors
    /// [`RuleError`], quoting the rule and the reason, when `text` does not parse as a rule: a
    /// method that is not a word, a missing or unknown scheme, a path with `?` or `#` or one
    /// [`normalize`](super::path::normalize) refuses, a host that is neither a name, a wildcard, an
    /// IP literal nor a range, or a port that is not a number.
    pub fn parse(text: &str) -> Result<Self, RuleError> {
        let error = |reason: &str| RuleError { rule: text.to_string(), reason: reason.to_string() };
        let trimmed = text.trim();
        let (methods, rest) = match trimmed.split_once(' ') {
            Some((methods, rest)) => (methods, rest.trim()),
            None => ("", trimmed),
        };
        let methods: Vec<String> = methods.split(',').filter(|m| !m.is_empty()).map(str::to_ascii_uppercase).collect();
        if methods.iter().any(|m| !m.bytes().all(|b| b.is_ascii_uppercase())) {
            return Err(error("methods must be words such as GET or POST"));
        }
        let (scheme, rest) = rest.split_once("://").ok_or_else(|| error("missing scheme:// (http, https or *)"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => SchemeRule::Http,
            "https" => SchemeRule::Https,
            "*" => SchemeRule::Any,
            _ => return Err(error("the scheme must be http, https or *")),
        };
        let (authority, path_prefix) = match rest.find('/') {
            Some(i) if !rest.starts_with('[') || rest[..i].contains(']') => (&rest[..i], Some(rest[i..].to_string())),
            _ => split_bracketed_path(rest),
        };
        if path_prefix.as_deref().is_some_and(|p| p.contains(['?', '#'])) {
            return Err(error("a rule names a path only, without '?query' or '#fragment'"));
        }
        let path_prefix = match path_prefix {
            Some(prefix) => Some(super::path::normalize(&prefix).map_err(|e| error(&e.to_string()))?),
            None => None,
        };
        let (host, port) = split_port(authority).map_err(|reason| error(&reason))?;
        let host = parse_host(host).map_err(|reason| error(&reason))?;
        let port = match port {
            Some("*") => None,
            Some(p) => Some(p.parse::<u16>().map_err(|_| error("the port must be a number or *"))?),
            None => match scheme {
                SchemeRule::Http => Some(80),
                SchemeRule::Https => Some(443),
                SchemeRule::Any => None,
            },
        };
        Ok(Self { text: trimmed.to_string(), scheme, host, port, methods, path_prefix })
    }

    /// The rule as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the rule lets through only requests that change nothing upstream by their method:
    /// it names methods, and they are all `GET` or `HEAD`.
    pub fn only_reads(&self) -> bool {
        !self.methods.is_empty() && self.methods.iter().all(|m| m == "GET" || m == "HEAD")
    }

    /// Whether the rule names addresses (so a blocked address within it may be reached).
    pub fn names_address(&self, ip: IpAddr) -> bool {
        match &self.host {
            HostRule::Ip(allowed) => canonical_ip(*allowed) == canonical_ip(ip),
            HostRule::Range { network, prefix } => in_range(canonical_ip(ip), canonical_ip(*network), *prefix),
            _ => false,
        }
    }

    /// Whether `dest` is within this rule (by name; addresses are screened separately).
    pub fn matches(&self, dest: &Destination<'_>) -> bool {
        let scheme_ok = match self.scheme {
            SchemeRule::Http => dest.scheme == "http",
            SchemeRule::Https => dest.scheme == "https",
            SchemeRule::Any => true,
        };
        let host = dest.host.trim_end_matches('.').to_ascii_lowercase();
        let host_ok = match &self.host {
            HostRule::Any => !host.is_empty(),
            HostRule::Name(name) => host == *name,
            HostRule::Subdomains(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
            HostRule::Ip(_) | HostRule::Range { .. } => {
                parse_ip_literal(&host).is_some_and(|ip| self.names_address(ip))
            }
        };
        let port_ok = self.port.is_none_or(|p| p == dest.port);
        let method_ok = self.methods.is_empty() || self.methods.iter().any(|m| m == dest.method);
        let path_ok = self.path_prefix.as_deref().is_none_or(|prefix| super::path::within(dest.path, prefix));
        scheme_ok && host_ok && port_ok && method_ok && path_ok
    }
}

impl serde::Serialize for EgressRule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for EgressRule {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        EgressRule::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `[10.0.0.0/8]/path` style: the path starts after the closing bracket.
fn split_bracketed_path(rest: &str) -> (&str, Option<String>) {
    match rest.find(']') {
        Some(close) => match rest[close..].find('/') {
            Some(i) => (&rest[..close + i], Some(rest[close + i..].to_string())),
            None => (rest, None),
        },
        None => (rest, None),
    }
}

fn split_port(authority: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(inner) = authority.strip_prefix('[') {
        let close = inner.find(']').ok_or("unclosed [ in the host")?;
        let after = &inner[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err("unexpected text after ]".into()),
        };
        return Ok((&authority[..close + 2], port));
    }
    Ok(match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    })
}

fn parse_host(host: &str) -> Result<HostRule, String> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        if let Some((network, prefix)) = inner.split_once('/') {
            let network: IpAddr = network.parse().map_err(|_| format!("{network:?} is not an IP address"))?;
            let max = if network.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix.parse().ok().filter(|p| *p <= max).ok_or("the range's prefix length is invalid")?;
            return Ok(HostRule::Range { network, prefix });
        }
        return inner.parse().map(HostRule::Ip).map_err(|_| format!("{inner:?} is not an IP address"));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(HostRule::Ip(IpAddr::V4(ip)));
    }
    if host == "*" {
        return Ok(HostRule::Any);
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest.to_string()),
        None => (false, host),
    };
    let label_ok =
        |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if name.is_empty() || !name.split('.').all(label_ok) {
        return Err(format!("{name:?} is not a host name (use *.name for subdomains, [a.b.c.d/n] for ranges)"));
    }
    Ok(if wildcard { HostRule::Subdomains(name) } else { HostRule::Name(name) })
}

/// An IP literal as it appears in a URL host (`1.2.3.4`, `[::1]`).
pub fn parse_ip_literal(host: &str) -> Option<IpAddr> {
    let inner = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    inner.parse().ok()
}

/// IPv4-mapped and IPv4-compatible forms become the IPv4 address they carry.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn in_range(ip: IpAddr, network: IpAddr, prefix: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Why an address may not be reached without a rule naming it; `None` for a public address.
pub fn blocked_reason(ip: IpAddr) -> Option<&'static str> {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

fn blocked_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    let v4 = IpAddr::V4(ip);
    let within = |net: [u8; 4], prefix| in_range(v4, IpAddr::V4(Ipv4Addr::from(net)), prefix);
    Some(match () {
        _ if ip == Ipv4Addr::new(169, 254, 169, 254) => "a link-local/metadata address",
        _ if a == 0 => "an unspecified (\"this network\") address",
        _ if a == 127 => "a loopback address",
        _ if a == 10 || within([172, 16, 0, 0], 12) || (a == 192 && b == 168) => "a private address",
        _ if a == 169 && b == 254 => "a link-local address",
        _ if within([100, 64, 0, 0], 10) => "a shared (carrier-grade NAT) address",
        _ if a == 192 && b == 0 && c == 0 => "an IETF protocol address",
        _ if within([198, 18, 0, 0], 15) => "a benchmarking address",
        _ if (a, b, c) == (192, 0, 2) || (a, b, c) == (198, 51, 100) || (a, b, c) == (203, 0, 113) => {
            "a documentation address"
        }
        _ if a >= 224 => "a multicast, reserved or broadcast address",
        _ => return None,
    })
}

fn blocked_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    let v6 = IpAddr::V6(ip);
    let within = |net: Ipv6Addr, prefix| in_range(v6, IpAddr::V6(net), prefix);
    // Forms that embed an IPv4 address are judged by it.
    let embedded = |s: &[u16; 8]| {
        let ([a, b], [c, d]) = (s[6].to_be_bytes(), s[7].to_be_bytes());
        Ipv4Addr::new(a, b, c, d)
    };
    if within(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96)
        || segments[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified()
    {
        return blocked_v4(embedded(&segments)).or(Some("an IPv4-embedding address"));
    }
    if segments[0] == 0x2002 {
        // 6to4: the IPv4 address is the next two segments.
        let ([a, b], [c, d]) = (segments[1].to_be_bytes(), segments[2].to_be_bytes());
        return blocked_v4(Ipv4Addr::new(a, b, c, d));
    }
    Some(match () {
        _ if ip.is_unspecified() => "an unspecified address",
        _ if ip.is_loopback() => "a loopback address",
        _ if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) => "a link-local/metadata address",
        _ if within(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7) => "a unique-local (private) address",
        _ if within(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10) => "a link-local address",
        _ if within(Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10) => "a site-local address",
        _ if segments[0] >> 8 == 0xff => "a multicast address",
        _ if within(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32) => "a documentation address",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest<'a>(scheme: &'a str, host: &'a str, port: u16, method: &'a str, path: &'a str) -> Destination<'a> {
        Destination { scheme, host, port, method, path }
    }

    #[test]
    fn names_wildcards_ports_methods_and_paths() {
        let exact = EgressRule::parse("https://api.example.com").expect("rule");
        assert!(exact.matches(&dest("https", "API.example.com.", 443, "GET", "/")));
        assert!(!exact.matches(&dest("https", "api.example.com", 8443, "GET", "/")));
        assert!(!exact.matches(&dest("http", "api.example.com", 443, "GET", "/")));
        assert!(!exact.matches(&dest("https", "evil-api.example.com", 443, "GET", "/")));

        let wild = EgressRule::parse("https://*.example.com:*").expect("rule");
        assert!(wild.matches(&dest("https", "a.b.example.com", 8443, "GET", "/")));
        assert!(!wild.matches(&dest("https", "example.com", 443, "GET", "/")));
        assert!(!wild.matches(&dest("https", "example.com.evil.net", 443, "GET", "/")));

        let narrow = EgressRule::parse("GET,HEAD http://127.0.0.1:8080/v1/").expect("rule");
        assert!(narrow.matches(&dest("http", "127.0.0.1", 8080, "GET", "/v1/users")));
        assert!(!narrow.matches(&dest("http", "127.0.0.1", 8080, "POST", "/v1/users")));
        assert!(!narrow.matches(&dest("http", "127.0.0.1", 8080, "GET", "/v2")));
        let segment = EgressRule::parse("http://127.0.0.1:8080/v1").expect("rule");
        assert!(segment.matches(&dest("http", "127.0.0.1", 8080, "GET", "/v1")));
        assert!(!segment.matches(&dest("http", "127.0.0.1", 8080, "GET", "/v10")));
        let dotted = EgressRule::parse("http://127.0.0.1:8080/a/b/../v1/").expect("a prefix is normalised too");
        assert!(dotted.matches(&dest("http", "127.0.0.1", 8080, "GET", "/a/v1/x")));
        assert!(narrow.names_address("127.0.0.1".parse().expect("ip")));
        assert!(narrow.names_address("::ffff:127.0.0.1".parse().expect("ip")));

        let range = EgressRule::parse("http://[10.0.0.0/8]:*/api").expect("rule");
        assert!(range.matches(&dest("http", "10.1.2.3", 9000, "GET", "/api/x")));
        assert!(!range.matches(&dest("http", "11.1.2.3", 9000, "GET", "/api/x")));
        let v6 = EgressRule::parse("http://[::1]:8080").expect("rule");
        assert!(v6.matches(&dest("http", "[::1]", 8080, "GET", "/")));
    }

    #[test]
    fn bad_rules_say_what_to_write() {
        for bad in [
            "api.example.com",
            "ftp://x.com",
            "https://",
            "https://bad host",
            "https://x.com:99999",
            "https://[10.0.0.0/99]",
            "http://x.com/a%2fb",
            "https://x.com/search?q=1",
            "https://x.com/a#b",
        ] {
            let err = EgressRule::parse(bad).expect_err(bad);
            assert!(err.to_string().contains("write e.g."), "{err}");
        }
    }

    #[test]
    fn private_loopback_link_local_and_metadata_addresses_are_blocked() {
        let blocked = |s: &str| blocked_reason(s.parse().expect("ip"));
        assert_eq!(blocked("169.254.169.254"), Some("a link-local/metadata address"));
        assert_eq!(blocked("127.0.0.1"), Some("a loopback address"));
        assert_eq!(blocked("10.0.0.5"), Some("a private address"));
        assert_eq!(blocked("172.31.255.1"), Some("a private address"));
        assert_eq!(blocked("192.168.1.1"), Some("a private address"));
        assert_eq!(blocked("100.64.0.1"), Some("a shared (carrier-grade NAT) address"));
        assert_eq!(blocked("::1"), Some("a loopback address"));
        assert_eq!(blocked("::ffff:10.0.0.1"), Some("a private address"));
        assert_eq!(blocked("::ffff:169.254.169.254"), Some("a link-local/metadata address"));
        assert_eq!(blocked("64:ff9b::7f00:1"), Some("a loopback address"));
        assert_eq!(blocked("2002:7f00:1::"), Some("a loopback address"));
        assert_eq!(blocked("fd00:ec2::254"), Some("a link-local/metadata address"));
        assert_eq!(blocked("fc00::1"), Some("a unique-local (private) address"));
        assert_eq!(blocked("fe80::1"), Some("a link-local address"));
        assert_eq!(blocked("0.0.0.0"), Some("an unspecified (\"this network\") address"));
        assert_eq!(blocked("93.184.216.34"), None);
        assert_eq!(blocked("2606:4700::1111"), None);
        assert_eq!(blocked("172.32.0.1"), None);
    }
}
