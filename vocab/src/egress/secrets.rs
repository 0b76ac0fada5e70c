//! Secrets that never enter the sandbox. An operator defines a secret's value and grants it to
//! egress rules; a tool writes `{{secret:NAME}}` in a header value; the host fills the value in
//! at send time, only for a destination the grant covers, and takes it back out of anything the
//! response carries to the guest. Bundles, logs and errors only ever hold the placeholder.

use super::rules::{Destination, EgressRule};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A secret's value, kept out of `Debug`, `Display` and serialization.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    name: String,
    value: String,
}

impl Secret {
    /// A secret named `name` (letters, digits, `_`) with `value`.
    ///
    /// # Errors
    /// A message when `name` fails [`check_name`] or `value` is empty.
    pub fn new(name: &str, value: String) -> Result<Self, String> {
        check_name(name)?;
        if value.is_empty() {
            return Err(format!("secret {name} is empty"));
        }
        Ok(Self { name: name.to_string(), value })
    }

    /// The name a tool writes in a `{{secret:NAME}}` placeholder and a grant refers to; unlike
    /// the value, safe to log.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Read the secret `name` from where `source` says (a file's trailing newline removed).
    ///
    /// # Errors
    /// A message, naming the secret, when the environment variable is not set (or not Unicode) or
    /// the file cannot be read as UTF-8 text; then as [`Secret::new`].
    pub fn read(name: &str, source: &SecretSource) -> Result<Self, String> {
        let value = match source {
            SecretSource::Env(var) => {
                std::env::var(var).map_err(|_| format!("secret {name}: environment variable {var} is not set"))?
            }
            SecretSource::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("secret {name}: cannot read {}: {e}", path.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        };
        Self::new(name, value)
    }
}

/// Where a secret's value comes from: `env:VARIABLE` or `file:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable of the host process.
    Env(String),
    /// A file (its trailing newline removed).
    File(std::path::PathBuf),
}

impl SecretSource {
    /// Parse `env:VARIABLE` or `file:PATH`.
    ///
    /// # Errors
    /// A message when `text` is neither `env:` nor `file:` followed by something.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            Some(("env", var)) if !var.is_empty() => Ok(Self::Env(var.to_string())),
            Some(("file", path)) if !path.is_empty() => Ok(Self::File(path.into())),
            _ => Err("the source must be env:VARIABLE or file:PATH".into()),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}, <redacted>)", self.name)
    }
}

/// Which destinations a secret may be sent to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretGrant {
    /// The secret's name.
    pub name: String,
    /// Where it may go.
    pub rules: Vec<EgressRule>,
}

/// A secret name: `[A-Za-z_][A-Za-z0-9_]*`, at most 64 characters.
///
/// # Errors
/// A message when `name` is empty, longer than 64 bytes, starts with a digit or holds anything but
/// ASCII letters, digits and `_`.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a secret name (letters, digits and _, starting with a letter)"))
    }
}

const OPEN: &str = "{{secret:";
const CLOSE: &str = "}}";

/// The secret names a header value refers to.
///
/// # Errors
/// A message when a `{{secret:` is not closed by `}}`, or the name inside one fails [`check_name`].
pub fn placeholders(value: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let end = after.find(CLOSE).ok_or_else(|| "an unclosed {{secret:".to_string())?;
        let name = &after[..end];
        check_name(name)?;
        names.push(name);
        rest = &after[end + CLOSE.len()..];
    }
    Ok(names)
}

/// Fill in every placeholder of `value` from `secrets`, which the caller has checked.
pub fn fill(value: &str, secrets: &[Secret]) -> String {
    let mut out = value.to_string();
    for secret in secrets {
        out = out.replace(&format!("{OPEN}{}{CLOSE}", secret.name), &secret.value);
    }
    out
}

/// Replace any secret value in `text` by its placeholder.
pub fn scrub(text: &[u8], secrets: &[Secret]) -> Vec<u8> {
    let mut out = text.to_vec();
    for secret in secrets {
        let needle = secret.value.as_bytes();
        let placeholder = format!("{OPEN}{}{CLOSE}", secret.name);
        let mut scrubbed = Vec::with_capacity(out.len());
        let mut i = 0;
        while i < out.len() {
            if out[i..].starts_with(needle) {
                scrubbed.extend_from_slice(placeholder.as_bytes());
                i += needle.len();
            } else {
                scrubbed.push(out[i]);
                i += 1;
            }
        }
        out = scrubbed;
    }
    out
}

/// Whether a header name holds any secret value. Header names travel in lower case, so the
/// value is looked for in lower case too.
pub fn in_header_name(name: &str, secrets: &[Secret]) -> bool {
    let name = name.to_ascii_lowercase();
    secrets.iter().any(|s| name.contains(&s.value.to_ascii_lowercase()))
}

/// Whether `grant` allows `dest`.
pub fn allows(grant: &SecretGrant, dest: &Destination<'_>) -> bool {
    grant.rules.iter().any(|rule| rule.matches(dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_fill_and_scrub() {
        let token = Secret::new("TOKEN", "s3cr3t".into()).expect("secret");
        assert_eq!(placeholders("Bearer {{secret:TOKEN}}").expect("ok"), ["TOKEN"]);
        assert!(placeholders("Bearer {{secret:TOKEN").is_err());
        assert!(placeholders("{{secret:bad-name}}").is_err());
        assert_eq!(fill("Bearer {{secret:TOKEN}}", std::slice::from_ref(&token)), "Bearer s3cr3t");
        assert_eq!(scrub(b"echo: Bearer s3cr3t!", std::slice::from_ref(&token)), b"echo: Bearer {{secret:TOKEN}}!");
        assert_eq!(format!("{token:?}"), "Secret(TOKEN, <redacted>)");
        assert!(in_header_name("x-s3cr3t-echo", std::slice::from_ref(&token)));
        let upper = Secret::new("UPPER", "S3cr3T".into()).expect("secret");
        assert!(in_header_name("x-s3cr3t", std::slice::from_ref(&upper)));
        assert!(!in_header_name("x-echo", std::slice::from_ref(&token)));
    }
}
