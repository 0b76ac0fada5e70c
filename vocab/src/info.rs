//! [`ToolInfo`]: what a tool's `describe` export says about it — name, version, schemas and the
//! capabilities it asks for — as the JSON `guild describe` prints and the tool catalogue lists.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Read-only or read-write. Ordered so that the lesser of two is the safer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// The tool may read files but not create, change or delete them.
    ReadOnly,
    /// The tool may also create, change and delete files (within the mount's write quota).
    ReadWrite,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::ReadOnly => "read-only",
            Access::ReadWrite => "read-write",
        })
    }
}

/// A directory a tool asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirRequest {
    /// Where the tool expects it, e.g. `/data`.
    pub guest_path: String,
    /// The most access it needs.
    pub access: Access,
    /// Why, for the operator.
    pub purpose: String,
}

/// Everything a tool asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Directories the tool needs mounted, by guest path; a grant for any other path is denied.
    pub dirs: Vec<DirRequest>,
    /// Hosts it calls, as egress rules (`scheme://host[:port]`, `*.` wildcards); a request must
    /// match one of these and an operator's rule.
    pub hosts: Vec<String>,
    /// Names of the secrets it may use as `{{secret:NAME}}` header placeholders (`*`: whichever
    /// the operator grants).
    pub secrets: Vec<String>,
    /// Whether it uses GPU kernels.
    pub gpu: bool,
}

/// What a tool says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    /// Short machine name, e.g. `wc`: what bundles, the audit log and the API name it by
    /// (never empty).
    pub name: String,
    /// The tool's own version, as its `describe` declares it (SDK tools: their crate's version).
    pub version: String,
    /// Description for people and agents.
    pub description: String,
    /// JSON Schema of the input.
    pub input_schema: serde_json::Value,
    /// JSON Schema of the output, if declared.
    pub output_schema: Option<serde_json::Value>,
    /// What it asks to be granted.
    pub capabilities: Capabilities,
}
