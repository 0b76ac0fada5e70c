//! Request paths as an upstream will act on them. Egress rules and secret grants are matched
//! against the normalised path, and exactly that path is what the host sends: a guest cannot
//! write `/public/../private` (or `/public/%2e%2e/private`) to pass a `/public/` rule while the
//! server serves `/private`.
//!
//! Normalising, in order:
//! 1. percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded (`%2e` is `.`,
//!    `%41` is `A`); other escapes are kept, with their hex digits in upper case;
//! 2. dot segments are removed as RFC 3986 §5.2.4 says (`/a/./b/../c` is `/a/c`; `..` never
//!    climbs above the root).
//!
//! What servers read in different ways is refused rather than guessed at: an encoded `/` or
//! `\` (`%2F`, `%5C`), a raw `\`, an encoded NUL, a `%25` that would decode to another escape
//! (double encoding), an empty segment (`//`, which some servers collapse before resolving
//! `..`), a dot segment with parameters (`..;`, which some servers read as `..`), and a path
//! that does not start with `/`.

/// A path that cannot be normalised unambiguously, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the request path {path:?} is ambiguous: {reason}; send a path without it")]
pub struct AmbiguousPath {
    /// The path as the guest wrote it.
    pub path: String,
    /// What servers would read differently.
    pub reason: &'static str,
}

/// The path the upstream will act on.
///
/// # Errors
/// [`AmbiguousPath`], with the reason, when servers could read `path` in more than one way: it does
/// not start with `/`; it holds a `\`, a `%` without two hex digits, an encoded `/`, `\` or NUL, a
/// double encoding, an empty segment or a dot segment with parameters.
pub fn normalize(path: &str) -> Result<String, AmbiguousPath> {
    let refuse = |reason| Err(AmbiguousPath { path: path.to_string(), reason });
    if !path.starts_with('/') {
        return refuse("it does not start with '/'");
    }
    if path.contains('\\') {
        return refuse("it holds a backslash, which some servers read as '/'");
    }
    let decoded = match decode_unreserved(path) {
        Ok(decoded) => decoded,
        Err(reason) => return refuse(reason),
    };
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() && i != last {
            return refuse("it holds an empty segment ('//'), which some servers collapse before resolving '..'");
        }
        if segment.starts_with(".;") || segment.starts_with("..;") {
            return refuse("it holds a dot segment with parameters ('..;'), which some servers read as '..'");
        }
    }
    Ok(remove_dot_segments(&decoded))
}

/// Whether `path` (normalised) is within `prefix` (normalised): the same path, or below it. A
/// prefix ending in `/` matches only below it; `/v1` matches `/v1` and `/v1/users`, never `/v10`.
pub fn within(path: &str, prefix: &str) -> bool {
    if prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn hex(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Decode escapes of unreserved characters; refuse escapes servers decode in different ways.
fn decode_unreserved(path: &str) -> Result<String, &'static str> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i] as char);
            i += 1;
            continue;
        }
        let (Some(high), Some(low)) = (bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b)))
        else {
            return Err("it holds a '%' that is not followed by two hex digits");
        };
        let byte = high * 16 + low;
        match byte {
            b'/' => return Err("it holds an encoded '/' (%2F), which some servers decode before routing"),
            b'\\' => return Err("it holds an encoded backslash (%5C), which some servers read as '/'"),
            0 => return Err("it holds an encoded NUL (%00)"),
            b'%' if bytes.get(i + 3).is_some_and(|b| hex(*b).is_some())
                && bytes.get(i + 4).is_some_and(|b| hex(*b).is_some()) =>
            {
                return Err("it holds a double-encoded escape (%25XX), which some servers decode twice");
            }
            byte if is_unreserved(byte) => out.push(byte as char),
            _ => {
                out.push('%');
                out.push(char::from(bytes[i + 1]).to_ascii_uppercase());
                out.push(char::from(bytes[i + 2]).to_ascii_uppercase());
            }
        }
        i += 3;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 for an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut output: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    output.pop();
                }
                // `/a/b/..` is `/a/`: a trailing dot segment leaves a directory.
                if i == last {
                    output.push("");
                }
            }
            other => output.push(other),
        }
    }
    format!("/{}", output.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_and_unreserved_escapes_are_resolved() {
        let cases = [
            ("/", "/"),
            ("/public/file.txt", "/public/file.txt"),
            ("/public/../private.txt", "/private.txt"),
            ("/public/%2e%2e/private.txt", "/private.txt"),
            ("/public/%2E%2E/private.txt", "/private.txt"),
            ("/public/.%2e/private.txt", "/private.txt"),
            ("/public/./a/./b", "/public/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/%7euser/%41", "/~user/A"),
            ("/a%20b/%e2%82%ac", "/a%20b/%E2%82%AC"),
            ("/dir/", "/dir/"),
            ("/100%25", "/100%25"),
        ];
        for (path, expected) in cases {
            assert_eq!(normalize(path).as_deref(), Ok(expected), "{path}");
        }
    }

    #[test]
    fn what_servers_read_differently_is_refused() {
        for path in [
            "/public/..%2fprivate.txt",
            "/public/..%2Fprivate.txt",
            "/public/..%5cprivate.txt",
            "/public\\..\\private.txt",
            "/public/%252e%252e/private.txt",
            "/public//../private.txt",
            "/public/..;/private.txt",
            "/public/.;x/private.txt",
            "/a%00b",
            "/a%zz",
            "/a%2",
            "relative",
            "",
        ] {
            assert!(normalize(path).is_err(), "{path} must be refused");
        }
        let error = normalize("/public/..%2fx").expect_err("encoded slash");
        assert!(error.to_string().contains("%2F"), "{error}");
    }

    #[test]
    fn a_prefix_matches_whole_segments() {
        assert!(within("/v1", "/v1"));
        assert!(within("/v1/users", "/v1"));
        assert!(!within("/v10", "/v1"));
        assert!(!within("/v1", "/v1/"));
        assert!(within("/v1/", "/v1/"));
        assert!(within("/v1/users", "/v1/"));
        assert!(within("/anything", "/"));
        assert!(!within("/private.txt", "/public/"));
    }
}
