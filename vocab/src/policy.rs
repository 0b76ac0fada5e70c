//! The sandbox policy: what an operator grants (mounts, egress rules, secrets and where each may
//! be sent), what a tool asks for, and the effective policy a run gets, which is their
//! intersection. The GPU is not granted here: a tool that declares it may dispatch, within the
//! run's GPU limits and the host's GPU mode.

use crate::egress::{EgressRule, RuleError, Secret, SecretGrant};
use crate::info::{Access, Capabilities};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A host directory mapped into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// The directory on the host.
    pub host_path: PathBuf,
    /// Where the guest sees it: an absolute, normalised path such as `/data`.
    pub guest_path: String,
    /// Read-only or read-write.
    pub access: Access,
}

/// What an operator (or the `guild run` user) grants a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// Directories to mount.
    pub mounts: Vec<Mount>,
    /// Where outgoing HTTP may go. Empty: nowhere.
    #[serde(default)]
    pub egress: Vec<EgressRule>,
    /// Secret values; never serialized.
    #[serde(skip)]
    pub secrets: Vec<Secret>,
    /// Where each secret may be sent.
    #[serde(default)]
    pub secret_grants: Vec<SecretGrant>,
}

/// What the run actually gets: granted ∩ asked for. Recorded with the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectivePolicy {
    /// Directories mounted, each with the lesser of the granted and requested access.
    pub mounts: Vec<Mount>,
    /// The operator's egress rules; a request must match one of these …
    #[serde(default)]
    pub egress: Vec<EgressRule>,
    /// … and one of the hosts the tool declared.
    #[serde(default)]
    pub tool_hosts: Vec<EgressRule>,
    /// Secrets the tool declared and the operator granted (and defined), with where they may go.
    #[serde(default)]
    pub secret_grants: Vec<SecretGrant>,
}

/// Why a grant could not become a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The guest path is not absolute and normalised.
    #[error("guest path {guest_path:?} must be absolute and contain no `.`, `..` or empty parts")]
    GuestPath {
        /// The offending path.
        guest_path: String,
    },
    /// Two mounts claim the same guest path.
    #[error("guest path {guest_path} is mounted twice")]
    DuplicateMount {
        /// The path mounted twice.
        guest_path: String,
    },
    /// The host directory does not exist or is not a directory.
    #[error("cannot mount {host_path}: {reason}")]
    HostPath {
        /// The host path.
        host_path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The tool declares a host rule that does not parse.
    #[error("tool {tool} declares an invalid host: {error}")]
    ToolHost {
        /// The tool's name, from its `describe`.
        tool: String,
        /// The parse error.
        error: RuleError,
    },
    /// The tool did not ask for this mount.
    #[error("tool {tool} does not ask for a directory at {guest_path}; it asks for {asked}")]
    NotRequested {
        /// The tool's name.
        tool: String,
        /// The granted guest path.
        guest_path: String,
        /// What it does ask for, for the message.
        asked: String,
    },
}

impl EffectivePolicy {
    /// Intersect `grants` with what `tool` asks for in `capabilities`.
    ///
    /// # Errors
    /// [`PolicyError::GuestPath`] when a mount's guest path is not absolute and normalised;
    /// [`PolicyError::DuplicateMount`] when two mounts share one; [`PolicyError::NotRequested`]
    /// when the tool does not ask for a directory there; [`PolicyError::HostPath`] when the host
    /// directory cannot be resolved or is not a directory; [`PolicyError::ToolHost`] when a
    /// declared host does not parse as an [`EgressRule`].
    pub fn resolve(tool: &str, grants: &Grants, capabilities: &Capabilities) -> Result<Self, PolicyError> {
        let mut mounts: Vec<Mount> = Vec::with_capacity(grants.mounts.len());
        for mount in &grants.mounts {
            check_guest_path(&mount.guest_path)?;
            if mounts.iter().any(|m| m.guest_path == mount.guest_path) {
                return Err(PolicyError::DuplicateMount { guest_path: mount.guest_path.clone() });
            }
            let request = capabilities.dirs.iter().find(|d| d.guest_path == mount.guest_path).ok_or_else(|| {
                PolicyError::NotRequested {
                    tool: tool.to_string(),
                    guest_path: mount.guest_path.clone(),
                    asked: describe_requests(capabilities),
                }
            })?;
            let host_path = check_host_dir(&mount.host_path)?;
            mounts.push(Mount {
                host_path,
                guest_path: mount.guest_path.clone(),
                access: mount.access.min(request.access),
            });
        }
        let tool_hosts = capabilities
            .hosts
            .iter()
            .map(|h| EgressRule::parse(h).map_err(|error| PolicyError::ToolHost { tool: tool.to_string(), error }))
            .collect::<Result<Vec<_>, _>>()?;
        let egress = if tool_hosts.is_empty() { Vec::new() } else { grants.egress.clone() };
        let secret_grants = grants
            .secret_grants
            .iter()
            .filter(|g| {
                let declared = capabilities.secrets.iter().any(|s| *s == g.name || s == "*");
                declared && grants.secrets.iter().any(|s| s.name() == g.name)
            })
            .cloned()
            .collect();
        Ok(Self { mounts, egress, tool_hosts, secret_grants })
    }
}

fn describe_requests(capabilities: &Capabilities) -> String {
    if capabilities.dirs.is_empty() {
        return "no directories".to_string();
    }
    let asked: Vec<String> = capabilities.dirs.iter().map(|d| format!("{} ({})", d.guest_path, d.access)).collect();
    asked.join(", ")
}

fn check_guest_path(guest_path: &str) -> Result<(), PolicyError> {
    // Checked on the raw text: `Path::components` silently drops `.` parts, which would let
    // `/./data` through as `/data`.
    let valid = match guest_path.strip_prefix('/') {
        Some("") => true,
        Some(rest) => {
            rest.split('/').all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains('\0'))
        }
        None => false,
    };
    if valid { Ok(()) } else { Err(PolicyError::GuestPath { guest_path: guest_path.to_string() }) }
}

fn check_host_dir(host_path: &Path) -> Result<PathBuf, PolicyError> {
    let error = |reason: String| PolicyError::HostPath { host_path: host_path.display().to_string(), reason };
    let canonical = host_path.canonicalize().map_err(|e| error(e.to_string()))?;
    if !canonical.is_dir() {
        return Err(error("not a directory".to_string()));
    }
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::DirRequest;

    fn caps(dirs: &[(&str, Access)]) -> Capabilities {
        Capabilities {
            dirs: dirs
                .iter()
                .map(|(p, a)| DirRequest { guest_path: p.to_string(), access: *a, purpose: String::new() })
                .collect(),
            ..Capabilities::default()
        }
    }

    fn grant(host: &Path, guest: &str, access: Access) -> Grants {
        Grants {
            mounts: vec![Mount { host_path: host.to_path_buf(), guest_path: guest.into(), access }],
            ..Grants::default()
        }
    }

    #[test]
    fn access_is_the_lesser_of_grant_and_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = EffectivePolicy::resolve(
            "t",
            &grant(dir.path(), "/data", Access::ReadWrite),
            &caps(&[("/data", Access::ReadOnly)]),
        )
        .expect("allowed");
        assert_eq!(policy.mounts[0].access, Access::ReadOnly);
    }

    #[test]
    fn unrequested_mounts_are_denied_with_what_was_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = EffectivePolicy::resolve(
            "wc",
            &grant(dir.path(), "/other", Access::ReadOnly),
            &caps(&[("/data", Access::ReadOnly)]),
        )
        .expect_err("denied");
        assert!(err.to_string().contains("it asks for /data (read-only)"), "{err}");
    }

    #[test]
    fn bad_guest_paths_and_missing_dirs_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let asked = caps(&[("/data", Access::ReadOnly)]);
        for bad in ["data", "/data/../etc", "/data/", "/./data", "//data"] {
            let err = EffectivePolicy::resolve("t", &grant(dir.path(), bad, Access::ReadOnly), &asked);
            assert!(matches!(err, Err(PolicyError::GuestPath { .. })), "{bad}: {err:?}");
        }
        let missing = dir.path().join("nope");
        let err = EffectivePolicy::resolve("t", &grant(&missing, "/data", Access::ReadOnly), &asked);
        assert!(matches!(err, Err(PolicyError::HostPath { .. })), "{err:?}");
    }
}
