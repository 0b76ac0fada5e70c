//! [`Info`]: the name, description and capability requests a tool declares.

use crate::bindings::exports::guild::tool::tool as wit;
use crate::bindings::guild::tool::types as wit_types;

/// How a tool wants a directory mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The tool only reads: the host mounts the directory read-only.
    ReadOnly,
    /// The tool also creates, changes or deletes files; the operator may still grant less.
    ReadWrite,
}

/// What a tool declares about itself, built with chained calls.
#[derive(Debug, Clone)]
pub struct Info {
    name: String,
    version: Option<String>,
    description: String,
    dirs: Vec<(String, Access, String)>,
    hosts: Vec<String>,
    secrets: Vec<String>,
    gpu: bool,
}

impl Info {
    /// A tool named `name` (short, lowercase, e.g. `wc`) with a one- or two-sentence description.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: None,
            description: description.into(),
            dirs: Vec::new(),
            hosts: Vec::new(),
            secrets: Vec::new(),
            gpu: false,
        }
    }

    /// Override the version (by default the tool crate's `CARGO_PKG_VERSION`).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Ask for a directory mounted at `guest_path` with at most `access`.
    pub fn dir(mut self, guest_path: impl Into<String>, access: Access, purpose: impl Into<String>) -> Self {
        self.dirs.push((guest_path.into(), access, purpose.into()));
        self
    }

    /// Ask for egress to hosts matching `rule` (`scheme://host[:port]`, `*.` wildcards).
    pub fn host(mut self, rule: impl Into<String>) -> Self {
        self.hosts.push(rule.into());
        self
    }

    /// Ask to use the secret `name` as a `{{secret:NAME}}` header placeholder (`*`: whichever
    /// secrets the operator grants).
    pub fn secret(mut self, name: impl Into<String>) -> Self {
        self.secrets.push(name.into());
        self
    }

    /// Ask for GPU kernels.
    pub fn gpu(mut self) -> Self {
        self.gpu = true;
        self
    }

    pub(crate) fn into_wit(
        self,
        default_version: &str,
        input_schema: String,
        output_schema: Option<String>,
    ) -> wit::ToolInfo {
        let dirs = self
            .dirs
            .into_iter()
            .map(|(guest_path, access, purpose)| wit_types::DirRequest {
                guest_path,
                access: match access {
                    Access::ReadOnly => wit_types::Access::ReadOnly,
                    Access::ReadWrite => wit_types::Access::ReadWrite,
                },
                purpose,
            })
            .collect();
        wit::ToolInfo {
            name: self.name,
            version: self.version.unwrap_or_else(|| default_version.to_string()),
            description: self.description,
            input_schema,
            output_schema,
            capabilities: wit_types::Capabilities { dirs, hosts: self.hosts, secrets: self.secrets, gpu: self.gpu },
        }
    }
}
